#include "api.h"
#include "image_build.h"

#include <ctype.h>
#include <errno.h>
#include <sys/queue.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "api_route.h"
#include "log.h"
#include "request.h"

#define API_HEADERS_MAX (16 * 1024)
/* Seconds a client may stall while sending a request or reading a reply
 * before its connection is dropped; held requests (waits) do not read or
 * write and are not subject to it. */
#define API_IO_TIMEOUT_S 60
#define API_STREAM_TIMEOUT_S (24 * 3600)
/* Requests held open at once (each keeps a connection and its fd); past it,
 * requests that would be held get 429. */
#define API_HOLDS_MAX 4096

struct api_hold {
        struct api_hold *next, *prev;
        struct moatd *daemon;
        struct evhttp_request *request;
        struct evhttp_connection *connection;
        api_hold_gone_fn gone;
        void *gone_arg;
        api_hold_drained_fn drained;
        void *drained_arg;
        bool streaming;
        /* Watches the client's socket for a hang-up while nothing is sent:
         * libevent 2.1 stops reading a connection once the request is ours
         * and notices a close only after a reply starts. */
        struct event *hangup;
};

/* ---- error replies ---- */

int api_error_status(const struct moat_error *error, const char **ret_reason)
{
        if (strcmp(error->code, "payload_too_large") == 0) {
                *ret_reason = "Payload Too Large";
                return 413;
        }
        if (strcmp(error->code, "method_not_allowed") == 0) {
                *ret_reason = "Method Not Allowed";
                return 405;
        }
        switch (error->kind) {
        case MOAT_ERROR_INVALID_ARGUMENT:
                *ret_reason = "Bad Request";
                return 400;
        case MOAT_ERROR_NOT_FOUND:
                *ret_reason = "Not Found";
                return 404;
        case MOAT_ERROR_CONFLICT:
                *ret_reason = "Conflict";
                return 409;
        case MOAT_ERROR_LIMIT_EXCEEDED:
                *ret_reason = "Too Many Requests";
                return 429;
        case MOAT_ERROR_TIMEOUT:
                *ret_reason = "Gateway Timeout";
                return 504;
        case MOAT_ERROR_UNAVAILABLE:
                *ret_reason = "Service Unavailable";
                return 503;
        case MOAT_ERROR_SYSTEM:
        case MOAT_ERROR_INTERNAL:
                break;
        }
        *ret_reason = "Internal Server Error";
        return 500;
}

json_t *api_error_json(const struct moat_error *error)
{
        return json_pack("{s:{s:s,s:s}}", "error", "code", error->code, "message", error->message);
}

void api_set_json_headers(struct evhttp_request *request)
{
        struct evkeyvalq *headers = evhttp_request_get_output_headers(request);

        evhttp_remove_header(headers, "Content-Type");
        evhttp_add_header(headers, "Content-Type", "application/json");
}

static const char *reason_for(int status)
{
        switch (status) {
        case 200:
                return "OK";
        case 201:
                return "Created";
        default:
                return "";
        }
}

/* Serialise body (consumed) as one JSON line and send it. If that fails
 * there is no memory for JSON either: a bare fallback status is all we can
 * send. */
static void send_json(struct evhttp_request *request, int status, const char *reason, json_t *body,
                      int fallback_status, const char *fallback_reason)
{
        struct evbuffer *buffer = evbuffer_new();
        char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;

        if (body)
                json_decref(body);
        if (!buffer || !text) {
                free(text);
                if (buffer)
                        evbuffer_free(buffer);
                evhttp_send_error(request, fallback_status, fallback_reason);
                return;
        }
        evbuffer_add(buffer, text, strlen(text));
        evbuffer_add(buffer, "\n", 1);
        free(text);
        api_set_json_headers(request);
        evhttp_send_reply(request, status, reason, buffer);
        evbuffer_free(buffer);
}

void api_reply_json(struct evhttp_request *request, int status, json_t *body)
{
        send_json(request, status, reason_for(status), body, 500, "out of memory");
}

void api_reply_error(struct evhttp_request *request, const struct moat_error *error)
{
        const char *reason;
        int status = api_error_status(error, &reason);

        send_json(request, status, reason, api_error_json(error), status, reason);
}

void api_reply_new_error(struct evhttp_request *request, enum moat_error_kind kind, const char *code,
                         const char *fmt, ...)
{
        struct moat_error error = {.kind = kind};
        va_list ap;

        snprintf(error.code, sizeof(error.code), "%s", code ? code : moat_error_kind_code(kind));
        va_start(ap, fmt);
        vsnprintf(error.message, sizeof(error.message), fmt, ap);
        va_end(ap);
        api_reply_error(request, &error);
}

const char *api_body(struct evhttp_request *request, size_t *ret_length)
{
        struct evbuffer *input = evhttp_request_get_input_buffer(request);
        size_t length = evbuffer_get_length(input);
        const char *data;

        *ret_length = length;
        if (length == 0)
                return "";
        data = (const char *)evbuffer_pullup(input, -1);
        return data ? data : "";
}

char *api_param_decode(const struct api_call *call, int index)
{
        size_t length = 0;
        char *decoded = evhttp_uridecode(call->params[index], 0, &length);

        if (decoded && strlen(decoded) != length) {
                free(decoded);
                return NULL;
        }
        return decoded;
}

const char *api_query(struct api_call *call, const char *key)
{
        return evhttp_find_header(&call->query, key);
}

/* ---- held requests ---- */

static void hold_unlink(struct api_hold *hold)
{
        hold->daemon->hold_count--;
        if (hold->prev)
                hold->prev->next = hold->next;
        else
                hold->daemon->holds = hold->next;
        if (hold->next)
                hold->next->prev = hold->prev;
        hold->next = hold->prev = NULL;
}

static void hold_release(struct api_hold *hold)
{
        hold_unlink(hold);
        if (hold->hangup)
                event_free(hold->hangup);
        if (hold->connection && hold->streaming)
                evhttp_connection_set_timeout(hold->connection, API_IO_TIMEOUT_S);
        if (hold->connection)
                evhttp_connection_set_closecb(hold->connection, NULL, NULL);
        free(hold);
}

/* The client went away. Tell the owner, then let libevent free the request:
 * replying to a request whose connection is gone frees it. */
static void hold_abandon(struct api_hold *hold)
{
        struct evhttp_request *request = hold->request;
        bool streaming = hold->streaming;
        api_hold_gone_fn gone = hold->gone;
        void *arg = hold->gone_arg;

        hold_release(hold);
        if (gone)
                gone(arg);
        if (streaming)
                evhttp_send_reply_end(request);
        else
                evhttp_send_reply(request, 400, "Bad Request", NULL);
}

static void on_connection_closed(struct evhttp_connection *connection, void *arg)
{
        struct api_hold *hold = arg;

        /* libevent detached the pending request from the connection before
         * calling us (it is ours until we reply), so the request is valid. */
        hold->connection = NULL;
        hold_abandon(hold);
}

/* The client hung up on a held request that has no reply started: tell the
 * owner, then free the connection (and with it the request). */
static void on_hangup(evutil_socket_t fd, short what, void *arg)
{
        struct api_hold *hold = arg;
        struct evhttp_connection *connection = hold->connection;
        api_hold_gone_fn gone = hold->gone;
        void *gone_arg = hold->gone_arg;

        hold_release(hold);
        if (gone)
                gone(gone_arg);
        if (connection)
                evhttp_connection_free(connection);
}

static void watch_hangup(struct api_hold *hold)
{
        struct bufferevent *bev = hold->connection ? evhttp_connection_get_bufferevent(hold->connection) : NULL;
        evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;

        if (fd < 0)
                return;
        /* EV_CLOSED (EPOLLRDHUP) fires on the peer's close or shutdown only,
         * not on pipelined bytes, which stay for libevent to read later. A
         * failure only loses the early notice, not correctness. */
        hold->hangup = event_new(hold->daemon->base, fd, EV_CLOSED | EV_PERSIST, on_hangup, hold);
        if (hold->hangup && event_add(hold->hangup, NULL) < 0) {
                event_free(hold->hangup);
                hold->hangup = NULL;
        }
}

bool api_holds_full(const struct moatd *daemon)
{
        return daemon->hold_count >= API_HOLDS_MAX;
}

struct api_hold *api_hold_new(struct moatd *daemon, struct evhttp_request *request, api_hold_gone_fn gone,
                              void *arg)
{
        struct api_hold *hold = calloc(1, sizeof(*hold));

        if (!hold)
                return NULL;
        hold->daemon = daemon;
        hold->request = request;
        hold->gone = gone;
        hold->gone_arg = arg;
        hold->connection = evhttp_request_get_connection(request);
        if (hold->connection)
                evhttp_connection_set_closecb(hold->connection, on_connection_closed, hold);
        hold->next = daemon->holds;
        if (daemon->holds)
                daemon->holds->prev = hold;
        daemon->holds = hold;
        daemon->hold_count++;
        watch_hangup(hold);
        return hold;
}

struct evhttp_request *api_hold_request(struct api_hold *hold)
{
        return hold->request;
}

void api_hold_set_gone(struct api_hold *hold, api_hold_gone_fn gone, void *arg)
{
        hold->gone = gone;
        hold->gone_arg = arg;
}

void api_hold_reply_json(struct api_hold *hold, int status, json_t *body)
{
        struct evhttp_request *request = hold->request;

        hold_release(hold);
        api_reply_json(request, status, body);
}

void api_hold_reply_error(struct api_hold *hold, const struct moat_error *error)
{
        struct evhttp_request *request = hold->request;

        hold_release(hold);
        api_reply_error(request, error);
}

void api_hold_stream_start(struct api_hold *hold, const char *content_type)
{
        struct evkeyvalq *headers = evhttp_request_get_output_headers(hold->request);

        evhttp_add_header(headers, "Content-Type", content_type);
        evhttp_add_header(headers, "Cache-Control", "no-store");
        hold->streaming = true;
        /* From here libevent watches the connection itself (it is writing). */
        if (hold->hangup) {
                event_free(hold->hangup);
                hold->hangup = NULL;
        }
        /* A process may be quiet for longer than any I/O timeout; a stream
         * lasts until it exits or the client leaves (which we notice). */
        if (hold->connection)
                evhttp_connection_set_timeout(hold->connection, API_STREAM_TIMEOUT_S);
        evhttp_send_reply_start(hold->request, 200, "OK");
}

static void on_chunk_written(struct evhttp_connection *connection, void *arg)
{
        struct api_hold *hold = arg;
        api_hold_drained_fn drained = hold->drained;

        hold->drained = NULL;
        if (drained)
                drained(hold->drained_arg);
}

void api_hold_stream_chunk(struct api_hold *hold, struct evbuffer *buffer, api_hold_drained_fn drained, void *arg)
{
        hold->drained = drained;
        hold->drained_arg = arg;
        evhttp_send_reply_chunk_with_cb(hold->request, buffer, on_chunk_written, hold);
}

void api_hold_stream_end(struct api_hold *hold)
{
        struct evhttp_request *request = hold->request;

        hold_release(hold);
        evhttp_send_reply_end(request);
}

/* ---- routing ---- */

struct route {
        enum evhttp_cmd_type method;
        const char *pattern; /* segments; "*" matches one id/name segment */
        void (*handler)(struct api_call *call);
        bool may_hold; /* may keep the request open (counts against API_HOLDS_MAX) */
        bool large_body; /* bodies up to REQUEST_BODY_HARD_MAX (an image build's upload) */
};

static const struct route routes[] = {
        {EVHTTP_REQ_GET, "v1/health", api_health},
        {EVHTTP_REQ_POST, "v1/sandboxes", api_sandboxes_create, true},
        {EVHTTP_REQ_GET, "v1/sandboxes", api_sandboxes_list},
        {EVHTTP_REQ_GET, "v1/sandboxes/*", api_sandboxes_get},
        {EVHTTP_REQ_DELETE, "v1/sandboxes/*", api_sandboxes_delete, true},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/wait", api_sandboxes_wait, true},
        {EVHTTP_REQ_PUT, "v1/sandboxes/*/network", api_sandboxes_set_network},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/metrics", api_sandboxes_metrics},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/run", api_exec_run, true},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/execs", api_exec_create, true},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/execs", api_exec_list},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/execs/*", api_exec_get},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/execs/*/output", api_exec_output, true},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/execs/*/stdin", api_exec_stdin},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/execs/*/stdin/close", api_exec_stdin_close},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/execs/*/signal", api_exec_signal},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/execs/*/wait", api_exec_wait, true},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/snapshot", api_sandboxes_snapshot, true},
        /* files (api_files.c) */
        {EVHTTP_REQ_GET, "v1/sandboxes/*/files/content", api_files_content_get, true},
        {EVHTTP_REQ_PUT, "v1/sandboxes/*/files/content", api_files_content_put, true, true},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/files/stat", api_files_stat},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/files/list", api_files_list},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/files/mkdir", api_files_mkdir},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/files/remove", api_files_remove},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/files/move", api_files_move},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/files/chmod", api_files_chmod},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/files/archive", api_files_archive_get, true},
        {EVHTTP_REQ_PUT, "v1/sandboxes/*/files/archive", api_files_archive_put, true, true},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/files/watch", api_files_watch, true},
        /* volumes (api_volumes.c) */
        {EVHTTP_REQ_POST, "v1/volumes", api_volumes_create},
        {EVHTTP_REQ_GET, "v1/volumes", api_volumes_list},
        {EVHTTP_REQ_GET, "v1/volumes/*", api_volumes_get},
        {EVHTTP_REQ_DELETE, "v1/volumes/*", api_volumes_delete},
        {EVHTTP_REQ_GET, "v1/volumes/*/files/content", api_volumes_content_get, true},
        {EVHTTP_REQ_PUT, "v1/volumes/*/files/content", api_volumes_content_put, true, true},
        {EVHTTP_REQ_GET, "v1/volumes/*/files/list", api_volumes_list_files},
        {EVHTTP_REQ_POST, "v1/volumes/*/files/remove", api_volumes_remove_file},
        {EVHTTP_REQ_GET, "v1/images", api_images_list},
        {EVHTTP_REQ_POST, "v1/images/import", api_images_import, true},
        {EVHTTP_REQ_POST, "v1/images/prune", api_images_prune},
        {EVHTTP_REQ_POST, "v1/images/pull", api_images_pull, true},
        {EVHTTP_REQ_POST, "v1/images/build", api_images_build, true, true},
        {EVHTTP_REQ_GET, "v1/images/*", api_images_get},
        {EVHTTP_REQ_DELETE, "v1/images/*", api_images_delete},
};

static const char *method_name(enum evhttp_cmd_type method)
{
        switch (method) {
        case EVHTTP_REQ_GET:
                return "GET";
        case EVHTTP_REQ_POST:
                return "POST";
        case EVHTTP_REQ_DELETE:
                return "DELETE";
        case EVHTTP_REQ_PUT:
                return "PUT";
        default:
                return "?";
        }
}

static struct api_hold *hold_find(struct moatd *daemon, struct evhttp_request *request)
{
        for (struct api_hold *hold = daemon->holds; hold; hold = hold->next)
                if (hold->request == request)
                        return hold;
        return NULL;
}

/* RFC 9110 field-name: a token. libevent keeps "Content-Length " (space
 * before the colon) as a different header, which it then ignores. */
static bool header_name_valid(const char *name)
{
        if (!name[0])
                return false;
        for (const char *c = name; *c; c++)
                if (!isalnum((unsigned char)*c) && !strchr("!#$%&'*+-.^_`|~", *c))
                        return false;
        return true;
}

/* Request smuggling: a message whose length the client and libevent could
 * read differently (two Content-Lengths, a Transfer-Encoding libevent does
 * not decode, both framings at once, a header name libevent ignores) would
 * let bytes of its body run as the next request on the connection. Such a
 * request is refused and its connection closed (RFC 9112 section 6.3). */
static const char *framing_problem(struct evhttp_request *request)
{
        struct evkeyvalq *headers = evhttp_request_get_input_headers(request);
        const char *encoding = NULL;
        struct evkeyval *header;
        int lengths = 0;

        TAILQ_FOREACH(header, headers, next) {
                if (!header_name_valid(header->key))
                        return "malformed header name";
                if (strcasecmp(header->key, "Content-Length") == 0) {
                        lengths++;
                } else if (strcasecmp(header->key, "Transfer-Encoding") == 0) {
                        if (encoding)
                                return "more than one Transfer-Encoding";
                        encoding = header->value + strspn(header->value, " \t");
                }
        }
        if (lengths > 1)
                return "more than one Content-Length";
        if (encoding && (strncasecmp(encoding, "chunked", 7) != 0 || encoding[7 + strspn(encoding + 7, " \t")]))
                return "unsupported Transfer-Encoding (only chunked)";
        if (encoding && lengths)
                return "both Content-Length and Transfer-Encoding";
        return NULL;
}

/* Answer and close the connection: whatever follows on it is not trusted
 * to be a request. */
static void reply_and_close(struct evhttp_request *request, const char *code, const char *message)
{
        evhttp_add_header(evhttp_request_get_output_headers(request), "Connection", "close");
        api_reply_new_error(request, MOAT_ERROR_INVALID_ARGUMENT, code, "%s", message);
}

static void api_dispatch(struct evhttp_request *request, void *arg)
{
        struct moatd *daemon = arg;
        const struct evhttp_uri *uri;
        const char *path, *query;
        char storage[2][API_ROUTE_PARAM_MAX];
        struct api_call call = {.daemon = daemon, .request = request};
        enum evhttp_cmd_type method;
        const char *problem;
        bool path_known = false;

        /* libevent calls back without a URI when a request failed after it
         * was handed to us (the client reset a held request) or before (the
         * body exceeded the limit). */
        if (!evhttp_request_get_uri(request)) {
                struct api_hold *hold = hold_find(daemon, request);
                if (hold)
                        hold_abandon(hold);
                else if (evhttp_request_get_response_code(request) == 413)
                        api_reply_new_error(request, MOAT_ERROR_LIMIT_EXCEEDED, "payload_too_large",
                                            "request body exceeds %d bytes", REQUEST_BODY_MAX);
                else
                        api_reply_new_error(request, MOAT_ERROR_INVALID_ARGUMENT, NULL, "malformed request");
                return;
        }
        if ((problem = framing_problem(request))) {
                reply_and_close(request, "bad_framing", problem);
                return;
        }
        /* Only GET, POST, PUT and DELETE are routed. HEAD and CONNECT
         * replies carry no body (libevent frames them without one, so a
         * client would read ours as the next response); the rest (OPTIONS,
         * TRACE, PATCH) get the JSON error and their connection closed. */
        method = evhttp_request_get_command(request);
        if (method == EVHTTP_REQ_HEAD || method == EVHTTP_REQ_CONNECT) {
                /* libevent keeps a CONNECT's connection open whatever we say,
                 * so that reply states its empty length itself. */
                evhttp_add_header(evhttp_request_get_output_headers(request),
                                  method == EVHTTP_REQ_CONNECT ? "Content-Length" : "Connection",
                                  method == EVHTTP_REQ_CONNECT ? "0" : "close");
                evhttp_send_reply(request, 405, "Method Not Allowed", NULL);
                return;
        }
        if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_POST && method != EVHTTP_REQ_PUT &&
            method != EVHTTP_REQ_DELETE) {
                evhttp_add_header(evhttp_request_get_output_headers(request), "Connection", "close");
                api_reply_new_error(request, MOAT_ERROR_INVALID_ARGUMENT, "method_not_allowed",
                                    "only GET, POST, PUT and DELETE are served");
                return;
        }
        /* The body limit is enforced here, not by libevent: libevent 2.1
         * answers its own limit with an HTML page, and every error we send is
         * JSON. libevent's limit (REQUEST_BODY_HARD_MAX) only stops a client
         * from making us buffer without bound. */
        uri = evhttp_request_get_evhttp_uri(request);
        path = uri ? evhttp_uri_get_path(uri) : NULL;
        if (!path || path[0] != '/') {
                api_reply_new_error(request, MOAT_ERROR_INVALID_ARGUMENT, NULL, "malformed request path");
                return;
        }
        query = evhttp_uri_get_query(uri);
        TAILQ_INIT(&call.query);
        if (query && evhttp_parse_query_str(query, &call.query) < 0) {
                api_reply_new_error(request, MOAT_ERROR_INVALID_ARGUMENT, NULL, "malformed query string");
                return;
        }
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(routes); i++) {
                if (!api_route_match(routes[i].pattern, path + 1, storage, call.params))
                        continue;
                path_known = true;
                if (routes[i].method != evhttp_request_get_command(request))
                        continue;
                if (evbuffer_get_length(evhttp_request_get_input_buffer(request)) >
                    (routes[i].large_body ? REQUEST_BODY_HARD_MAX : REQUEST_BODY_MAX)) {
                        api_reply_new_error(request, MOAT_ERROR_LIMIT_EXCEEDED, "payload_too_large",
                                            "request body exceeds %d bytes",
                                            routes[i].large_body ? REQUEST_BODY_HARD_MAX : REQUEST_BODY_MAX);
                } else if (daemon->shutting_down && routes[i].handler != api_health) {
                        api_reply_new_error(request, MOAT_ERROR_UNAVAILABLE, NULL, "moatd is shutting down");
                } else if (routes[i].may_hold && api_holds_full(daemon)) {
                        api_reply_new_error(request, MOAT_ERROR_LIMIT_EXCEEDED, NULL,
                                            "%d requests are held open already; retry later", API_HOLDS_MAX);
                } else {
                        log_debug("%s %s", method_name(evhttp_request_get_command(request)), path);
                        routes[i].handler(&call);
                }
                evhttp_clear_headers(&call.query);
                return;
        }
        evhttp_clear_headers(&call.query);
        if (path_known)
                api_reply_new_error(request, MOAT_ERROR_INVALID_ARGUMENT, "method_not_allowed",
                                    "method not allowed on %.200s", path);
        else
                api_reply_new_error(request, MOAT_ERROR_NOT_FOUND, NULL, "no route %.200s", path);
}

static int listen_unix(const char *path, struct moat_error **err)
{
        struct sockaddr_un address = {.sun_family = AF_UNIX};
        _cleanup_close_ int fd = -1;
        struct stat st;

        if (strlen(path) >= sizeof(address.sun_path))
                return moat_error_invalid(err, "socket path `%s` is too long", path);
        strcpy(address.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return moat_error_system(err, errno, "socket");
        /* A stale socket from a previous run is removed; a live one means
         * another moatd serves it, and stealing its path would orphan it. */
        if (lstat(path, &st) == 0) {
                _cleanup_close_ int probe = -1;
                if (!S_ISSOCK(st.st_mode))
                        return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, NULL, "`%s` exists and is not a socket",
                                              path);
                probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (probe >= 0 && connect(probe, (struct sockaddr *)&address, sizeof(address)) == 0)
                        return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, NULL,
                                              "another moatd is listening on `%s`", path);
                if (unlink(path) < 0)
                        return moat_error_system(err, errno, "unlink `%s`", path);
        }
        if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0)
                return moat_error_system(err, errno, "bind `%s`", path);
        /* Anyone who can connect controls sandboxes: owner and group only. */
        if (chmod(path, 0660) < 0)
                return moat_error_system(err, errno, "chmod `%s`", path);
        if (listen(fd, SOMAXCONN) < 0) /* bursts of clients wait, not fail */
                return moat_error_system(err, errno, "listen `%s`", path);
        return TAKE_FD(fd);
}

int api_start(struct moatd *daemon, struct moat_error **err)
{
        struct evconnlistener *listener;
        int fd = listen_unix(daemon->options.socket_path, err);

        if (fd < 0)
                return -1;
        daemon->http = evhttp_new(daemon->base);
        if (!daemon->http) {
                close(fd);
                return moat_error_system(err, ENOMEM, "evhttp_new");
        }
        evhttp_set_max_body_size(daemon->http, REQUEST_BODY_HARD_MAX);
        /* Past the limit, read and drop the rest of the body before replying
         * 413, so a client still writing it sees the reply, not EPIPE. */
        evhttp_set_flags(daemon->http, EVHTTP_SERVER_LINGERING_CLOSE);
        evhttp_set_max_headers_size(daemon->http, API_HEADERS_MAX);
        evhttp_set_timeout(daemon->http, API_IO_TIMEOUT_S);
        /* Every method reaches the router, which answers 405 in JSON;
         * libevent would answer the ones it filters with an HTML 501. */
        evhttp_set_allowed_methods(daemon->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE |
                                                         EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT | EVHTTP_REQ_PATCH |
                                                         EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                                         EVHTTP_REQ_CONNECT);
        evhttp_set_gencb(daemon->http, api_dispatch, daemon);
        listener = evconnlistener_new(daemon->base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE, -1, fd);
        if (!listener) {
                close(fd);
                return moat_error_system(err, errno, "evconnlistener_new");
        }
        if (!evhttp_bind_listener(daemon->http, listener)) {
                evconnlistener_free(listener);
                return moat_error_system(err, errno, "evhttp_bind_listener");
        }
        return 0;
}

void api_stop(struct moatd *daemon)
{
        if (daemon->http) {
                evhttp_free(daemon->http);
                daemon->http = NULL;
        }
        unlink(daemon->options.socket_path);
}

int api_query_timeout(struct api_call *call, double *ret_seconds)
{
        const char *timeout = api_query(call, "timeout");
        struct moat_error *err = NULL;
        double seconds = -1;

        if (timeout && request_parse_seconds(timeout, &seconds, &err) < 0) {
                api_reply_error(call->request, err);
                moat_error_free(err);
                return -1;
        }
        *ret_seconds = seconds;
        return 0;
}
