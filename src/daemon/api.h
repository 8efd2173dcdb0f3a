/* The HTTP side: routing, JSON bodies and error replies (the one table that
 * maps an error kind to a status), and requests held open across loop
 * iterations (waits, output streams) whose client may disappear. */
#pragma once
#include <sys/queue.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "common/error.h"
#include "daemon.h"

struct api_call {
        struct moatd *daemon;
        struct evhttp_request *request;
        const char *params[2]; /* the {id} segments of the route */
        struct evkeyvalq query;
};

int api_start(struct moatd *daemon, struct moat_error **err);
void api_stop(struct moatd *daemon);

void api_reply_json(struct evhttp_request *request, int status, json_t *body /* stolen */);
void api_reply_error(struct evhttp_request *request, const struct moat_error *error);
/* Reply with a fresh error; convenience for handlers. */
void api_reply_new_error(struct evhttp_request *request, enum moat_error_kind kind, const char *code,
                         const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* The status and reason for an error (the API.md table). */
int api_error_status(const struct moat_error *error, const char **ret_reason);
json_t *api_error_json(const struct moat_error *error);

/* The request body, contiguous; length in *ret_length. */
const char *api_body(struct evhttp_request *request, size_t *ret_length);
/* A query value or NULL. */
/* The route's %-encoded segment `index` decoded, or NULL when it does not
 * decode or decodes to a NUL byte (which would end the name early: `host%00x`
 * must not act on `host`). The caller frees it. */
char *api_param_decode(const struct api_call *call, int index);
const char *api_query(struct api_call *call, const char *key);
/* The optional `?timeout=S` of a wait: -1 (none) or seconds. Replies 400 and
 * returns -1 if it is malformed. */
int api_query_timeout(struct api_call *call, double *ret_seconds);
/* Sets the Content-Type and other common headers. */
void api_set_json_headers(struct evhttp_request *request);

/* A request kept open across iterations. `gone` runs (once) if the client
 * disconnects first; the owner must then drop its pointer to the hold, which
 * the API frees. Every other end goes through one of the reply/end calls,
 * which free the hold. */
typedef void (*api_hold_gone_fn)(void *arg);
typedef void (*api_hold_drained_fn)(void *arg);
/* True when no more requests may be held open. */
bool api_holds_full(const struct moatd *daemon);
struct api_hold *api_hold_new(struct moatd *daemon, struct evhttp_request *request, api_hold_gone_fn gone,
                              void *arg);
struct evhttp_request *api_hold_request(struct api_hold *hold);
void api_hold_set_gone(struct api_hold *hold, api_hold_gone_fn gone, void *arg);
void api_hold_reply_json(struct api_hold *hold, int status, json_t *body);
void api_hold_reply_error(struct api_hold *hold, const struct moat_error *error);
void api_hold_stream_start(struct api_hold *hold, const char *content_type);
/* Sends buffer's content; `drained` runs once it has all been written. */
void api_hold_stream_chunk(struct api_hold *hold, struct evbuffer *buffer, api_hold_drained_fn drained, void *arg);
void api_hold_stream_end(struct api_hold *hold);

/* Route handlers. */
void api_health(struct api_call *call);
void api_sandboxes_create(struct api_call *call);
void api_sandboxes_list(struct api_call *call);
void api_sandboxes_get(struct api_call *call);
void api_sandboxes_delete(struct api_call *call);
void api_sandboxes_wait(struct api_call *call);
void api_sandboxes_set_network(struct api_call *call);
void api_sandboxes_metrics(struct api_call *call);
void api_exec_create(struct api_call *call);
void api_exec_list(struct api_call *call);
void api_exec_get(struct api_call *call);
void api_exec_output(struct api_call *call);
void api_exec_stdin(struct api_call *call);
void api_exec_stdin_close(struct api_call *call);
void api_exec_signal(struct api_call *call);
void api_exec_wait(struct api_call *call);
void api_exec_run(struct api_call *call);
void api_images_list(struct api_call *call);
void api_images_import(struct api_call *call);
void api_images_delete(struct api_call *call);
void api_images_get(struct api_call *call);
void api_images_prune(struct api_call *call);
void api_images_pull(struct api_call *call);
void api_sandboxes_snapshot(struct api_call *call);
/* api_files.c */
void api_files_content_get(struct api_call *call);
void api_files_content_put(struct api_call *call);
void api_files_stat(struct api_call *call);
void api_files_list(struct api_call *call);
void api_files_mkdir(struct api_call *call);
void api_files_remove(struct api_call *call);
void api_files_move(struct api_call *call);
void api_files_chmod(struct api_call *call);
void api_files_archive_get(struct api_call *call);
void api_files_archive_put(struct api_call *call);
void api_files_watch(struct api_call *call);
/* api_volumes.c */
void api_volumes_create(struct api_call *call);
void api_volumes_list(struct api_call *call);
void api_volumes_get(struct api_call *call);
void api_volumes_delete(struct api_call *call);
void api_volumes_content_get(struct api_call *call);
void api_volumes_content_put(struct api_call *call);
void api_volumes_list_files(struct api_call *call);
void api_volumes_remove_file(struct api_call *call);
