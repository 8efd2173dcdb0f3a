/* HTTP request parsing, as moatd does it: the fuzz bytes are one client
 * connection's bytes (any number of pipelined requests). libevent's evhttp,
 * configured as api_start configures it (body and header limits, lingering
 * close, every method allowed), parses them; the callback does what
 * api_dispatch does before a handler runs — URI and path checks, query
 * string, route matching with moatd's own matcher (api_route_match) — and
 * then runs the request decoder of the matched route on the body and the
 * query decoders on ?timeout= and ?tag=.
 *
 * Not the real api_dispatch: it needs a whole daemon (store, cells, image
 * store), and its handlers act on sandboxes. So the route table below mirrors
 * api.c's `routes` (method, pattern) with, instead of the handler, the
 * decoder that handler runs on the body; keep the two in step.
 *
 * Transport: an abstract unix socket (no file, no network) that the evhttp
 * server listens on and the harness connects to, since libevent has no public
 * call to serve an already-connected socketpair end. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "api_route.h"
#include "decode.h"
#include "fuzz.h"
#include "request.h"

struct fuzz_route {
        enum evhttp_cmd_type method;
        const char *pattern;
        enum fuzz_decoder body;
};

static const struct fuzz_route routes[] = {
        {EVHTTP_REQ_GET, "v1/health", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/sandboxes", FUZZ_DECODE_SANDBOX},
        {EVHTTP_REQ_GET, "v1/sandboxes", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_GET, "v1/sandboxes/*", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_DELETE, "v1/sandboxes/*", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/wait", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_PUT, "v1/sandboxes/*/network", FUZZ_DECODE_NETWORK},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/metrics", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/run", FUZZ_DECODE_RUN},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/execs", FUZZ_DECODE_EXEC},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/execs", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/execs/*", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/execs/*/output", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/execs/*/stdin", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/execs/*/stdin/close", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/execs/*/signal", FUZZ_DECODE_SIGNAL},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/execs/*/wait", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/snapshot", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/files/content", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_PUT, "v1/sandboxes/*/files/content", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/files/stat", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/files/list", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/files/mkdir", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/files/remove", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/files/move", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/sandboxes/*/files/chmod", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/files/archive", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_PUT, "v1/sandboxes/*/files/archive", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_GET, "v1/sandboxes/*/files/watch", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/volumes", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_GET, "v1/volumes", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_GET, "v1/volumes/*", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_DELETE, "v1/volumes/*", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_GET, "v1/volumes/*/files/content", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_PUT, "v1/volumes/*/files/content", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_GET, "v1/volumes/*/files/list", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/volumes/*/files/remove", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_GET, "v1/images", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/images/import", FUZZ_DECODE_IMAGE_IMPORT},
        {EVHTTP_REQ_POST, "v1/images/prune", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/images/pull", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_POST, "v1/images/build", FUZZ_DECODE_BUILD_SPEC},
        {EVHTTP_REQ_GET, "v1/images/*", FUZZ_DECODE_NONE},
        {EVHTTP_REQ_DELETE, "v1/images/*", FUZZ_DECODE_NONE},
};

static struct event_base *base;
static struct evhttp *http;
static struct sockaddr_un address;
static socklen_t address_length;

static void reply(struct evhttp_request *request, int status)
{
        evhttp_send_reply(request, status, status == 200 ? "OK" : "Bad Request", NULL);
}

static void dispatch(struct evhttp_request *request, void *arg)
{
        const struct evhttp_uri *uri;
        const char *path, *query, *value;
        char storage[2][API_ROUTE_PARAM_MAX];
        const char *params[2] = {NULL, NULL};
        struct evkeyvalq query_values;

        if (!evhttp_request_get_uri(request))
                return reply(request, 400);
        uri = evhttp_request_get_evhttp_uri(request);
        path = uri ? evhttp_uri_get_path(uri) : NULL;
        if (!path || path[0] != '/')
                return reply(request, 400);
        query = evhttp_uri_get_query(uri);
        TAILQ_INIT(&query_values);
        if (query && evhttp_parse_query_str(query, &query_values) < 0)
                return reply(request, 400);
        if ((value = evhttp_find_header(&query_values, "timeout")))
                fuzz_decode(FUZZ_DECODE_SECONDS, value, strlen(value));
        if ((value = evhttp_find_header(&query_values, "tag")))
                fuzz_decode(FUZZ_DECODE_TAG_FILTER, value, strlen(value));
        for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
                struct evbuffer *input = evhttp_request_get_input_buffer(request);
                size_t length = evbuffer_get_length(input);
                const char *body;

                if (!api_route_match(routes[i].pattern, path + 1, storage, params) ||
                    routes[i].method != evhttp_request_get_command(request))
                        continue;
                /* Captured segments are NUL-terminated and bounded. */
                for (int p = 0; p < 2; p++)
                        if (params[p] && strlen(params[p]) >= API_ROUTE_PARAM_MAX)
                                abort();
                if (length > REQUEST_BODY_MAX)
                        break;
                body = length ? (const char *)evbuffer_pullup(input, -1) : "";
                fuzz_decode(routes[i].body, body ? body : "", length);
                evhttp_clear_headers(&query_values);
                return reply(request, 200);
        }
        evhttp_clear_headers(&query_values);
        reply(request, 404);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        struct evconnlistener *listener;
        int fd;

        base = event_base_new();
        http = base ? evhttp_new(base) : NULL;
        if (!http)
                abort();
        evhttp_set_max_body_size(http, REQUEST_BODY_HARD_MAX);
        evhttp_set_flags(http, EVHTTP_SERVER_LINGERING_CLOSE);
        evhttp_set_max_headers_size(http, 16 * 1024);
        evhttp_set_timeout(http, 60);
        evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD |
                                                 EVHTTP_REQ_PUT | EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS |
                                                 EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT);
        evhttp_set_gencb(http, dispatch, NULL);

        /* Abstract address: nothing on the file system to clean up. */
        address.sun_family = AF_UNIX;
        address_length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
                                     (size_t)snprintf(address.sun_path + 1, sizeof(address.sun_path) - 1,
                                                      "moat-fuzz-http-%d", (int)getpid()));
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&address, address_length) < 0 || listen(fd, 16) < 0)
                abort();
        listener = evconnlistener_new(base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE, -1, fd);
        if (!listener || !evhttp_bind_listener(http, listener))
                abort();
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        int client = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        size_t written = 0;
        bool shut = false;
        char buffer[65536];

        if (client < 0 || connect(client, (struct sockaddr *)&address, address_length) < 0)
                abort();
        if (fcntl(client, F_SETFL, O_NONBLOCK) < 0)
                abort();
        /* Write the request bytes, end our side, and read replies until the
         * server closes the connection; bounded, so a server that waits for
         * more cannot hang the fuzzer (the connection is then closed). */
        for (int round = 0; round < 10000; round++) {
                ssize_t n;

                if (written < size) {
                        n = send(client, data + written, size - written, MSG_NOSIGNAL);
                        if (n > 0)
                                written += (size_t)n;
                        else if (n < 0 && errno != EAGAIN)
                                written = size; /* the server closed early */
                }
                if (written == size && !shut) {
                        shutdown(client, SHUT_WR);
                        shut = true;
                }
                event_base_loop(base, EVLOOP_NONBLOCK);
                n = recv(client, buffer, sizeof(buffer), 0);
                if (n == 0 || (n < 0 && errno != EAGAIN))
                        break;
        }
        close(client);
        /* Let the server see the close and free the connection. */
        for (int round = 0; round < 4; round++)
                event_base_loop(base, EVLOOP_NONBLOCK);
        return 0;
}
