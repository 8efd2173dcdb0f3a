/* Option parsing for `moat run`, `moat create` and `moat exec`, kept pure
 * (argv in, struct or message out; nothing printed, no daemon) so the unit
 * tests can drive it. Strings point into argv; only the lists are allocated. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct moat_string_list {
        const char **items;
        size_t count;
        size_t capacity;
};

enum moat_options_mode {
        MOAT_OPTIONS_RUN,    /* options + required CMD */
        MOAT_OPTIONS_CREATE, /* options + optional ENTRYPOINT */
};

struct moat_create_options {
        const char *image;
        double cpu;                   /* 0: server default */
        long memory, disk, pids;      /* MiB, MiB, count; 0: server default */
        long timeout;                 /* seconds; 0: server default */
        struct moat_string_list env;  /* "K=V" */
        struct moat_string_list tags; /* "k=v" */
        const char *workdir;
        const char *user;
        const char *network;          /* --network SPEC (see moat_options_network) */
        long ports[16];               /* --port / --public-port, in order */
        bool ports_public[16];
        size_t port_count;
        struct moat_string_list volumes; /* --volume NAME:/path[:ro], checked by moat_options_volume */
        bool json;
        bool interactive;             /* run -i: forward our stdin */
        char **command;               /* run: CMD ARGS; create: ENTRYPOINT (may be empty) */
        size_t command_count;
};

struct moat_exec_options {
        struct moat_string_list env;
        const char *workdir;
        const char *user;
        long timeout;
        bool interactive;
        bool json;
        const char *sandbox_id;
        char **command;
        size_t command_count;
};

/* Results of the parsers. */
enum moat_options_result {
        MOAT_OPTIONS_OK = 0,
        MOAT_OPTIONS_HELP = 1,   /* -h/--help: print usage, exit 0 */
        MOAT_OPTIONS_USAGE = -1, /* bad flags: message in error, exit 2 */
};

/* argv[0] is the command's own name ("run"). */
enum moat_options_result moat_options_parse_create(int argc, char **argv, enum moat_options_mode mode,
                                                   struct moat_create_options *ret_options, char *error,
                                                   size_t error_size);
enum moat_options_result moat_options_parse_exec(int argc, char **argv, struct moat_exec_options *ret_options,
                                                 char *error, size_t error_size);
void moat_create_options_release(struct moat_create_options *options);
void moat_exec_options_release(struct moat_exec_options *options);

/* Strict number parsing: the whole string, positive, no overflow. */
int moat_options_parse_positive_long(const char *text, long *ret_value);
int moat_options_parse_positive_double(const char *text, double *ret_value);
/* "K=V" with a non-empty K. */
bool moat_options_is_pair(const char *text);
int moat_string_list_append(struct moat_string_list *list, const char *item);

/* "none", "internet", "allow:ENTRY,ENTRY,..." (CIDRs and domain names) to
 * the API's network object. NULL with a message in error if malformed. */
json_t *moat_options_network(const char *spec, char *error, size_t error_size);

/* "NAME:/path" or "NAME:/path:ro" split into the volume name, the mount path
 * and whether read-only (the create body's "volumes" entry). -1 if malformed
 * or a part does not fit its buffer. */
int moat_options_volume(const char *spec, char *name, size_t name_size, char *path, size_t path_size,
                        bool *ret_read_only);

/* "K=V" strings to a JSON object (later keys win). NULL on allocation failure. */
json_t *moat_options_pairs_to_object(const struct moat_string_list *pairs);
/* The JSON bodies of POST /v1/sandboxes and POST .../execs. with_entrypoint:
 * send options->command as the sandbox's entrypoint (create), not for run. */
json_t *moat_options_create_body(const struct moat_create_options *options, bool with_entrypoint);
json_t *moat_options_exec_body(const struct moat_exec_options *options);
