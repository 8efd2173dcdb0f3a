/* Validation of request bodies and query values: JSON text in, a checked
 * struct or an invalid_argument error out. Pure (no daemon state), so the unit
 * tests exercise every rule of docs/API.md directly. Everything a client
 * controls is bounded here, before any of it reaches a sandbox. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "netpolicy.h"

#define REQUEST_BODY_MAX (1024 * 1024)
/* Bodies between REQUEST_BODY_MAX and this are read, then refused with our
 * JSON 413; past it libevent refuses them itself (plain 413) without
 * buffering more. */
#define REQUEST_BODY_HARD_MAX (8 * 1024 * 1024)
#define REQUEST_ARGV_MAX 4096
#define REQUEST_ENV_MAX 4096
#define REQUEST_ARGV_ENV_BYTES_MAX (512 * 1024)
#define REQUEST_TAGS_MAX 32
#define REQUEST_TAG_KEY_MAX 64
#define REQUEST_TAG_VALUE_MAX 256
#define REQUEST_WORKDIR_MAX 4096
#define REQUEST_USER_MAX 64
#define REQUEST_EXEC_TAG_MAX 64
#define REQUEST_IMAGE_NAME_MAX 200
#define REQUEST_SECONDS_MAX 86400

#define REQUEST_VOLUMES_MAX 16
#define REQUEST_VOLUME_TARGET_MAX 256

/* One "volumes" entry: mount volume `name` at `target` (absolute, normalized). */
struct request_volume {
        char *target;
        char *name;
        bool read_only;
};

struct sandbox_request {
        char *image;
        double cpu;           /* cores */
        uint32_t memory_mib;
        uint32_t disk_mib;
        uint32_t pids;
        uint32_t timeout_s;      /* lifetime */
        uint32_t idle_timeout_s; /* 0: none */
        json_t *env;             /* object of strings; never NULL after parsing */
        char *workdir;
        char *user;
        json_t *tags;       /* object of strings; never NULL after parsing */
        json_t *entrypoint; /* array of strings, or NULL */
        bool image_command; /* no entrypoint given: run the image's Entrypoint + Cmd */
        struct net_policy network;
        struct net_port ports[NET_PORTS_MAX];
        size_t port_count;
        struct request_volume volumes[REQUEST_VOLUMES_MAX];
        size_t volume_count;
};

struct exec_request {
        json_t *argv; /* non-empty array of strings */
        json_t *env;  /* object of strings, or NULL */
        char *workdir; /* NULL: the sandbox's */
        char *user;    /* NULL: the sandbox's */
        uint32_t timeout_s; /* 0: none */
        bool stdin_pipe;
        char *tag;
        char *stdin_data; /* /run only: bytes sent then closed */
        size_t stdin_length;
};

/* host_cores bounds `cpu`. */
int request_parse_sandbox(const char *body, size_t length, double host_cores, struct sandbox_request *ret,
                          struct moat_error **err);
void sandbox_request_clear(struct sandbox_request *request);

/* The body of PUT /v1/sandboxes/{id}/network: a network object (or "none",
 * "internet"). */
int request_parse_network(const char *body, size_t length, struct net_policy *ret, struct moat_error **err);

/* one_shot: the body of /run (`cmd` allowed, `stdin` is a string); shell is
 * the interpreter `cmd` runs with ("bash" or "sh"). */
int request_parse_exec(const char *body, size_t length, bool one_shot, const char *shell, struct exec_request *ret,
                       struct moat_error **err);
void exec_request_clear(struct exec_request *request);

/* {"signal": 15} or {"signal": "SIGTERM"} (or "TERM"). */
int request_parse_signal(const char *body, size_t length, int *ret_signal, struct moat_error **err);
/* "SIGTERM", "TERM" -> 15; -1 if unknown. */
int request_signal_from_name(const char *name);

/* {"path": "/abs/dir", "name": "x"}; the path's existence is checked later. */
int request_parse_image_import(const char *body, size_t length, char **ret_path, char **ret_name,
                               struct moat_error **err);
/* [a-z0-9][a-z0-9._:/@-]{0,199}, no ".." or "//" */
bool request_image_name_valid(const char *name);

/* A volume mount target: absolute, normalized (no "//", ".", "..", trailing
 * "/"), not "/", not under /proc, /sys or /dev, at most 256 bytes. */
bool request_volume_target_valid(const char *target);

/* `?timeout=S`: a number of seconds in [0, 86400]. */
int request_parse_seconds(const char *value, double *ret_seconds, struct moat_error **err);
/* `?tag=k=v`: split at the first '='. */
int request_parse_tag_filter(const char *value, char **ret_key, char **ret_value, struct moat_error **err);

/* Env validation shared with the merge at exec time. */
bool request_env_key_valid(const char *key);
/* Bytes an argv array and env object take once encoded ("K=V\0" per entry). */
size_t request_argv_env_bytes(const json_t *argv, const json_t *env);
