/* The C client of moatd's HTTP API (docs/API.md), over its unix socket.
 *
 * Every call makes its own libcurl handle, so a client may be used from two
 * threads at once (the CLI forwards stdin on one while it streams output on
 * the other) and from inside another call's callback. Library code never
 * prints: failures come back as a struct moat_error built from the server's
 * {"error":{"code","message"}} or from the transport. */
#pragma once
#include <jansson.h>
#include <signal.h>
#include <stddef.h>

#include "client/output_stream.h"
#include "common/error.h"

#define MOAT_CLIENT_DEFAULT_SOCKET "/run/moat/moatd.sock"
/* Bound on a non-streaming response body: a hostile or broken server cannot
 * make the client allocate without limit. /run returns at most 2 x 16 MiB. */
#define MOAT_CLIENT_RESPONSE_MAX (64u << 20)

struct moat_client;

/* The socket to use: the explicit path, else $MOAT_SOCKET (passed in, so the
 * order is testable), else the default. Empty strings count as unset. */
const char *moat_client_socket_choose(const char *explicit_path, const char *environment_value);

/* explicit_socket may be NULL (see moat_client_socket_choose). */
int moat_client_new(const char *explicit_socket, struct moat_client **ret_client, struct moat_error **err);
void moat_client_free(struct moat_client *client);
const char *moat_client_socket(const struct moat_client *client);

/* When *flag becomes non-zero (set from a signal handler), calls in progress
 * stop within about a second with code "interrupted". */
void moat_client_set_cancel_flag(struct moat_client *client, volatile sig_atomic_t *flag);

/* One request. body may be NULL (no body). On a 2xx status returns the status
 * and *ret_response (if non-NULL) holds the parsed JSON (NULL for an empty
 * body). Otherwise returns -1 with *err from the server's error object. */
int moat_client_request(struct moat_client *client, const char *method, const char *path, json_t *body,
                        json_t **ret_response, struct moat_error **err);

/* POST raw bytes (stdin), with the same result as moat_client_request. */
int moat_client_post_raw(struct moat_client *client, const char *path, const void *data, size_t length,
                         json_t **ret_response, struct moat_error **err);

/* A JSON event of an NDJSON response; return <0 (with *err) to stop reading. */
typedef int (*moat_client_event_fn)(void *userdata, json_t *event, struct moat_error **err);
#define MOAT_CLIENT_EVENT_LINE_MAX (1u << 20)

/* POST body (JSON) and call on_event for each line of a 2xx NDJSON answer
 * (image pulls, builds), as it arrives. A non-2xx answer is *err as for
 * moat_client_request. No overall timeout: such streams run for minutes
 * and show their progress. */
int moat_client_post_events(struct moat_client *client, const char *path, json_t *body, moat_client_event_fn on_event,
                            void *userdata, struct moat_error **err);

/* GET an NDJSON output stream, calling handler for each event until the exit
 * event. Returns 0 once the exit event was delivered. */
int moat_client_stream_output(struct moat_client *client, const char *path,
                              const struct moat_output_handler *handler, struct moat_error **err);

/* Percent-encode one path segment (an id or a name the user typed), so it can
 * never change the route ("../", "?", "#"). Returns NULL on allocation failure. */
char *moat_client_escape_segment(const char *segment);

/* The error kind for an HTTP status and the server's code. */
enum moat_error_kind moat_client_error_kind(long status, const char *code);
/* Build *err from an error response body ({"error":{"code","message"}}), or
 * from the status alone when the body has no such object. Returns -1. */
int moat_client_error_from_response(long status, json_t *body, struct moat_error **err);
