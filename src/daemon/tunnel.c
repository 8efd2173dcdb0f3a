#include "tunnel.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/cleanup.h"
#include "netns.h"

#define TUNNEL_LISTEN_BACKLOG 128
#define TUNNEL_TOKEN_MAX 256
/* How long the sandbox may take to accept, and a client to take our error
 * reply: neither may pin a connection slot for ever. */
#define TUNNEL_CONNECT_TIMEOUT_SECONDS 10
#define TUNNEL_REPLY_TIMEOUT_SECONDS 10
/* After an error reply, how long we keep reading (and dropping) what the
 * client still sends, so that closing does not reset the connection and
 * destroy the reply before the client has read it. */
#define TUNNEL_LINGER_SECONDS 2
/* Back-off after accept() fails for lack of file descriptors: the listening
 * socket stays readable, and retrying at once would spin. */
#define TUNNEL_ACCEPT_RETRY_MS 500

enum connection_state {
        CONNECTION_READING_HEAD, /* token mode: waiting for the whole request head */
        CONNECTION_CONNECTING,   /* connecting to the sandbox; the client is not read */
        CONNECTION_SPLICING,     /* bytes flow both ways */
        CONNECTION_REPLYING,     /* writing the tunnel's own error reply */
        CONNECTION_LINGERING,    /* reply sent: dropping input until the client closes */
        CONNECTION_CLOSED,       /* waiting to be freed at the end of the loop iteration */
};

struct connection_side {
        struct bufferevent *buffer; /* owns the socket */
        bool read_done;             /* end of stream read from this side */
        bool write_shut;            /* shutdown(SHUT_WR) done towards this side */
        bool read_paused;           /* not read: the other side's queue is full */
};

struct tunnel_connection {
        struct moat_tunnel *tunnel;
        struct tunnel_connection *previous, *next;
        enum connection_state state;
        struct connection_side client, sandbox;
        struct event *deadline; /* head, then connect deadline */
};

struct moat_tunnel {
        struct event_base *base;
        struct evconnlistener *listener;
        struct event *accept_retry;
        struct event *reap; /* frees closed connections, outside their callbacks */
        int netns_fd;
        uint16_t host_port;
        uint16_t sandbox_port;
        char *token; /* NULL: public */
        size_t token_length;
        struct timeval head_timeout;
        uint64_t to_sandbox, from_sandbox;
        unsigned connection_count;
        struct tunnel_connection *connections; /* open ones */
        struct tunnel_connection *closed;      /* to free in reap */
};

static void connection_read(struct bufferevent *buffer, void *data);
static void connection_write(struct bufferevent *buffer, void *data);
static void connection_event(struct bufferevent *buffer, short what, void *data);

/* ---- lifetime ---- */

/* Close both sockets now and queue the record to be freed by the reap event:
 * the caller may be one of this connection's callbacks, several frames deep,
 * and must still be able to look at conn->state after this returns. */
static void connection_close(struct tunnel_connection *conn)
{
        struct moat_tunnel *tunnel = conn->tunnel;

        if (conn->state == CONNECTION_CLOSED)
                return;
        conn->state = CONNECTION_CLOSED;
        /* bufferevent_free clears the callbacks first: nothing of libevent
         * calls back into conn after this. */
        if (conn->client.buffer)
                bufferevent_free(conn->client.buffer);
        if (conn->sandbox.buffer)
                bufferevent_free(conn->sandbox.buffer);
        conn->client.buffer = conn->sandbox.buffer = NULL;
        if (conn->deadline)
                event_free(conn->deadline);
        conn->deadline = NULL;

        if (conn->previous)
                conn->previous->next = conn->next;
        else
                tunnel->connections = conn->next;
        if (conn->next)
                conn->next->previous = conn->previous;
        tunnel->connection_count--;
        conn->previous = NULL;
        conn->next = tunnel->closed;
        tunnel->closed = conn;
        event_active(tunnel->reap, EV_TIMEOUT, 0);
}

static void tunnel_reap(evutil_socket_t fd, short what, void *data)
{
        struct moat_tunnel *tunnel = data;

        while (tunnel->closed) {
                struct tunnel_connection *conn = tunnel->closed;

                tunnel->closed = conn->next;
                free(conn);
        }
}

/* ---- error replies (token mode) ---- */

/* Answer the client with a JSON error, then close. The sandbox side, if any,
 * is dropped now; the client's unread input is discarded. */
static void connection_reply(struct tunnel_connection *conn, int status, const char *reason, const char *code,
                             const char *message)
{
        struct bufferevent *client = conn->client.buffer;
        struct timeval reply_timeout = {TUNNEL_REPLY_TIMEOUT_SECONDS, 0};
        char body[256];
        int body_length;

        if (conn->sandbox.buffer) {
                bufferevent_free(conn->sandbox.buffer);
                conn->sandbox.buffer = NULL;
        }
        event_del(conn->deadline);
        conn->state = CONNECTION_REPLYING;
        bufferevent_disable(client, EV_READ);
        evbuffer_drain(bufferevent_get_input(client), evbuffer_get_length(bufferevent_get_input(client)));
        evbuffer_drain(bufferevent_get_output(client), evbuffer_get_length(bufferevent_get_output(client)));
        /* code and message are fixed strings of ours: nothing to escape. */
        body_length =
            snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n", code, message);
        if (body_length < 0 || (size_t)body_length >= sizeof(body) ||
            evbuffer_add_printf(bufferevent_get_output(client),
                                "HTTP/1.1 %d %s\r\n"
                                "Content-Type: application/json\r\n"
                                "Content-Length: %d\r\n"
                                "Connection: close\r\n"
                                "\r\n"
                                "%s",
                                status, reason, body_length, body) < 0) {
                connection_close(conn);
                return;
        }
        /* A client that never reads must not hold the slot for ever. */
        bufferevent_set_timeouts(client, NULL, &reply_timeout);
        bufferevent_setwatermark(client, EV_WRITE, 0, 0);
        bufferevent_enable(client, EV_WRITE);
}

/* The reply is written: half-close, then read and drop until the client
 * closes or TUNNEL_LINGER_SECONDS pass. Closing at once while the client's
 * request body is still unread would make the kernel send a reset, which
 * can destroy the reply in the client's receive queue before it reads it. */
static void connection_linger(struct tunnel_connection *conn)
{
        struct timeval linger = {TUNNEL_LINGER_SECONDS, 0};
        struct bufferevent *client = conn->client.buffer;

        if (shutdown(bufferevent_getfd(client), SHUT_WR) < 0) {
                connection_close(conn);
                return;
        }
        conn->state = CONNECTION_LINGERING;
        bufferevent_disable(client, EV_WRITE);
        bufferevent_set_timeouts(client, &linger, NULL);
        bufferevent_enable(client, EV_READ);
}

/* The sandbox side cannot be reached: token clients speak HTTP and get a
 * 502 or 504 saying so; public ones may speak anything, so they are closed. */
static void connection_sandbox_failed(struct tunnel_connection *conn, bool timed_out)
{
        if (!conn->tunnel->token)
                connection_close(conn);
        else if (timed_out)
                connection_reply(conn, 504, "Gateway Timeout", "timeout",
                                 "the sandbox did not accept the connection in time");
        else
                connection_reply(conn, 502, "Bad Gateway", "sandbox_unreachable",
                                 "nothing in the sandbox accepts connections on this port");
}

/* ---- splicing ---- */

static struct connection_side *side_of(struct tunnel_connection *conn, struct bufferevent *buffer)
{
        return buffer == conn->client.buffer ? &conn->client : &conn->sandbox;
}

static struct connection_side *other_side(struct tunnel_connection *conn, struct connection_side *side)
{
        return side == &conn->client ? &conn->sandbox : &conn->client;
}

/* Move what `from` has read to `to`'s output queue, without copying. Stop
 * reading `from` while that queue is over MOAT_TUNNEL_QUEUE_HIGH: this is
 * what keeps a fast sender and a slow receiver from growing moatd's memory
 * without bound; the TCP window then pushes back on the sender. */
static void connection_forward(struct tunnel_connection *conn, struct connection_side *from,
                               struct connection_side *to)
{
        struct evbuffer *input = bufferevent_get_input(from->buffer);
        struct evbuffer *output = bufferevent_get_output(to->buffer);
        size_t length = evbuffer_get_length(input);

        if (length == 0)
                return;
        if (evbuffer_add_buffer(output, input) < 0) {
                connection_close(conn);
                return;
        }
        if (from == &conn->client)
                conn->tunnel->to_sandbox += length;
        else
                conn->tunnel->from_sandbox += length;
        if (evbuffer_get_length(output) >= MOAT_TUNNEL_QUEUE_HIGH) {
                bufferevent_disable(from->buffer, EV_READ);
                from->read_paused = true;
        }
}

/* Forward the end of stream: shutdown(SHUT_WR) towards `to` once its queue is
 * written. Close the connection when both directions are finished. */
static void connection_shut_write(struct tunnel_connection *conn, struct connection_side *to)
{
        if (to->write_shut || evbuffer_get_length(bufferevent_get_output(to->buffer)) > 0)
                return;
        if (shutdown(bufferevent_getfd(to->buffer), SHUT_WR) < 0) {
                connection_close(conn);
                return;
        }
        to->write_shut = true;
        if (conn->client.write_shut && conn->sandbox.write_shut)
                connection_close(conn);
}

/* ---- the request head (token mode) ---- */

enum head_verdict { HEAD_ADMITTED, HEAD_DENIED, HEAD_MALFORMED };

/* Compare a client-supplied value with the token in time that depends on the
 * token's length only, never on how long a prefix matches: defends against
 * recovering the token byte by byte from response times. */
static bool token_matches(const struct moat_tunnel *tunnel, const char *value, size_t value_length)
{
        unsigned char difference = value_length != tunnel->token_length;

        for (size_t i = 0; i < tunnel->token_length; i++)
                difference |=
                    (unsigned char)tunnel->token[i] ^ (unsigned char)(i < value_length ? value[i] : 0);
        return difference == 0;
}

/* Is "moat_token=<token>" one of the parameters of the request-target's
 * query? Parameters are compared as sent (tokens need no percent-encoding). */
static bool query_has_token(const struct moat_tunnel *tunnel, const char *target, size_t target_length)
{
        static const char name[] = "moat_token=";
        const char *query = memchr(target, '?', target_length);
        const char *end = target + target_length;
        bool found = false;

        if (!query)
                return false;
        query++;
        {
                const char *fragment = memchr(query, '#', (size_t)(end - query));
                if (fragment)
                        end = fragment;
        }
        while (query <= end) {
                const char *ampersand = memchr(query, '&', (size_t)(end - query));
                const char *parameter_end = ampersand ? ampersand : end;
                size_t length = (size_t)(parameter_end - query);

                /* Every parameter is compared (no early return) so timing
                 * does not depend on where a match is. */
                if (length >= sizeof(name) - 1 && memcmp(query, name, sizeof(name) - 1) == 0)
                        found |= token_matches(tunnel, query + sizeof(name) - 1, length - (sizeof(name) - 1));
                query = parameter_end + 1;
        }
        return found;
}

static void trim_whitespace(const char **start, const char **end)
{
        while (*start < *end && (**start == ' ' || **start == '\t'))
                (*start)++;
        while (*end > *start && ((*end)[-1] == ' ' || (*end)[-1] == '\t' || (*end)[-1] == '\r'))
                (*end)--;
}

/* head is the request head, request line to the empty line included. */
static enum head_verdict head_check(const struct moat_tunnel *tunnel, const char *head, size_t head_length)
{
        static const char header_name[] = "X-Moat-Token";
        const char *end = head + head_length;
        const char *line_end = memchr(head, '\n', head_length);
        const char *first_space, *second_space, *line;
        bool admitted = false;

        if (!line_end)
                return HEAD_MALFORMED;
        /* Request line: METHOD SP request-target SP HTTP-version. */
        first_space = memchr(head, ' ', (size_t)(line_end - head));
        if (!first_space || first_space == head)
                return HEAD_MALFORMED;
        second_space = memchr(first_space + 1, ' ', (size_t)(line_end - first_space - 1));
        if (!second_space || second_space == first_space + 1 || (size_t)(line_end - second_space - 1) < 5 ||
            memcmp(second_space + 1, "HTTP/", 5) != 0)
                return HEAD_MALFORMED;
        admitted |= query_has_token(tunnel, first_space + 1, (size_t)(second_space - first_space - 1));

        for (line = line_end + 1; line < end; line = line_end + 1) {
                const char *colon, *value, *value_end;

                line_end = memchr(line, '\n', (size_t)(end - line));
                if (!line_end)
                        break;
                colon = memchr(line, ':', (size_t)(line_end - line));
                if (!colon)
                        continue; /* the empty line, or junk the sandbox may judge */
                if ((size_t)(colon - line) != sizeof(header_name) - 1 ||
                    strncasecmp(line, header_name, sizeof(header_name) - 1) != 0)
                        continue;
                value = colon + 1;
                value_end = line_end;
                trim_whitespace(&value, &value_end);
                admitted |= token_matches(tunnel, value, (size_t)(value_end - value));
        }
        return admitted ? HEAD_ADMITTED : HEAD_DENIED;
}

/* Length of the head (through its empty line) in data, or 0 if it is not all
 * there yet. Bare LF line ends are accepted as well as CRLF. */
static size_t head_length_of(const char *data, size_t length)
{
        for (size_t i = 0; i + 1 < length; i++) {
                if (data[i] != '\n')
                        continue;
                if (data[i + 1] == '\n')
                        return i + 2;
                if (data[i + 1] == '\r' && i + 2 < length && data[i + 2] == '\n')
                        return i + 3;
        }
        return 0;
}

static void connection_connect_sandbox(struct tunnel_connection *conn);

static void connection_read_head(struct tunnel_connection *conn)
{
        struct evbuffer *input = bufferevent_get_input(conn->client.buffer);
        size_t available = evbuffer_get_length(input);
        size_t window = available < MOAT_TUNNEL_HEAD_MAX ? available : MOAT_TUNNEL_HEAD_MAX;
        const char *data = (const char *)evbuffer_pullup(input, (ev_ssize_t)window);
        size_t head_length;

        if (!data) {
                connection_close(conn);
                return;
        }
        head_length = head_length_of(data, window);
        if (head_length == 0) {
                /* The bound on what a client may make us hold before it is
                 * authenticated. */
                if (available >= MOAT_TUNNEL_HEAD_MAX)
                        connection_reply(conn, 431, "Request Header Fields Too Large", "headers_too_large",
                                         "the request head is over 16 KiB");
                return;
        }
        switch (head_check(conn->tunnel, data, head_length)) {
        case HEAD_MALFORMED:
                connection_reply(conn, 400, "Bad Request", "bad_request", "the request line is not HTTP");
                return;
        case HEAD_DENIED:
                connection_reply(
                    conn, 401, "Unauthorized", "unauthorized",
                    "this port needs the sandbox's token: header X-Moat-Token or query parameter moat_token");
                return;
        case HEAD_ADMITTED:
                connection_connect_sandbox(conn);
                return;
        }
}

/* ---- connecting to the sandbox ---- */

static void connection_deadline(evutil_socket_t fd, short what, void *data)
{
        struct tunnel_connection *conn = data;

        if (conn->state == CONNECTION_READING_HEAD)
                /* Slow-loris: a client trickling its head would otherwise
                 * hold a connection slot indefinitely. */
                connection_reply(conn, 408, "Request Timeout", "request_timeout",
                                 "the request head did not arrive in time");
        else if (conn->state == CONNECTION_CONNECTING)
                connection_sandbox_failed(conn, true);
}

static void connection_connect_sandbox(struct tunnel_connection *conn)
{
        struct moat_tunnel *tunnel = conn->tunnel;
        struct timeval connect_timeout = {TUNNEL_CONNECT_TIMEOUT_SECONDS, 0};
        struct sockaddr_in address = {
            .sin_family = AF_INET,
            .sin_port = htons(tunnel->sandbox_port),
            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
        };
        int fd;

        conn->state = CONNECTION_CONNECTING;
        /* Nothing more is read from the client until the sandbox side is up:
         * the bytes already read (at most the head and one read) wait. */
        bufferevent_disable(conn->client.buffer, EV_READ);
        /* The socket lives in the sandbox's network namespace: 127.0.0.1 is
         * the sandbox's loopback, not the host's. */
        fd = moat_netns_socket(tunnel->netns_fd, AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                connection_sandbox_failed(conn, false);
                return;
        }
        conn->sandbox.buffer = bufferevent_socket_new(tunnel->base, fd, BEV_OPT_CLOSE_ON_FREE);
        if (!conn->sandbox.buffer) {
                close(fd);
                connection_sandbox_failed(conn, false);
                return;
        }
        /* Callbacks are set after the call: a connect that fails at once is
         * reported by the return value only, not also through the event
         * callback from inside this function. */
        if (bufferevent_socket_connect(conn->sandbox.buffer, (struct sockaddr *)&address, sizeof(address)) <
            0) {
                connection_sandbox_failed(conn, false);
                return;
        }
        bufferevent_setcb(conn->sandbox.buffer, connection_read, connection_write, connection_event, conn);
        bufferevent_setwatermark(conn->sandbox.buffer, EV_WRITE, MOAT_TUNNEL_QUEUE_LOW, 0);
        event_add(conn->deadline, &connect_timeout);
}

static void connection_sandbox_connected(struct tunnel_connection *conn)
{
        event_del(conn->deadline);
        conn->state = CONNECTION_SPLICING;
        /* The head read for the token check goes on unchanged. */
        connection_forward(conn, &conn->client, &conn->sandbox);
        if (conn->state != CONNECTION_SPLICING)
                return;
        if (!conn->client.read_paused)
                bufferevent_enable(conn->client.buffer, EV_READ);
        bufferevent_enable(conn->sandbox.buffer, EV_READ | EV_WRITE);
}

/* ---- bufferevent callbacks ---- */

static void connection_read(struct bufferevent *buffer, void *data)
{
        struct tunnel_connection *conn = data;
        struct connection_side *side = side_of(conn, buffer);

        switch (conn->state) {
        case CONNECTION_READING_HEAD:
                connection_read_head(conn);
                return;
        case CONNECTION_SPLICING:
                connection_forward(conn, side, other_side(conn, side));
                return;
        case CONNECTION_LINGERING:
                evbuffer_drain(bufferevent_get_input(buffer),
                               evbuffer_get_length(bufferevent_get_input(buffer)));
                return;
        default:
                return;
        }
}

/* Called when `buffer`'s output queue has dropped to the low watermark (or,
 * for a reply, emptied). */
static void connection_write(struct bufferevent *buffer, void *data)
{
        struct tunnel_connection *conn = data;
        struct connection_side *side, *other;

        if (conn->state == CONNECTION_REPLYING) {
                if (evbuffer_get_length(bufferevent_get_output(buffer)) == 0)
                        connection_linger(conn);
                return;
        }
        if (conn->state != CONNECTION_SPLICING)
                return;
        side = side_of(conn, buffer);
        other = other_side(conn, side);
        if (other->read_paused &&
            evbuffer_get_length(bufferevent_get_output(buffer)) <= MOAT_TUNNEL_QUEUE_LOW) {
                other->read_paused = false;
                if (!other->read_done)
                        bufferevent_enable(other->buffer, EV_READ);
        }
        if (other->read_done)
                connection_shut_write(conn, side);
}

static void connection_event(struct bufferevent *buffer, short what, void *data)
{
        struct tunnel_connection *conn = data;
        struct connection_side *side = side_of(conn, buffer);

        if (what & BEV_EVENT_CONNECTED) {
                if (conn->state == CONNECTION_CONNECTING && side == &conn->sandbox)
                        connection_sandbox_connected(conn);
                return;
        }
        if (conn->state == CONNECTION_CONNECTING && side == &conn->sandbox) {
                connection_sandbox_failed(conn, false);
                return;
        }
        if (conn->state == CONNECTION_SPLICING && what == (BEV_EVENT_READING | BEV_EVENT_EOF)) {
                side->read_done = true;
                connection_forward(conn, side, other_side(conn, side));
                if (conn->state == CONNECTION_SPLICING)
                        connection_shut_write(conn, other_side(conn, side));
                return;
        }
        /* An error either way, a timeout, or the client leaving before its
         * head was complete or while we reply. */
        connection_close(conn);
}

/* ---- accepting ---- */

static void tunnel_accept(struct evconnlistener *listener, evutil_socket_t fd, struct sockaddr *address,
                          int address_length, void *data)
{
        struct moat_tunnel *tunnel = data;
        struct tunnel_connection *conn;

        /* Accepted then closed rather than left in the backlog: a full
         * backlog would also stall clients within the limit. */
        if (tunnel->connection_count >= MOAT_TUNNEL_MAX_CONNECTIONS) {
                close(fd);
                return;
        }
        conn = calloc(1, sizeof(*conn));
        if (!conn) {
                close(fd);
                return;
        }
        conn->tunnel = tunnel;
        conn->state = CONNECTION_READING_HEAD;
        conn->client.buffer = bufferevent_socket_new(tunnel->base, fd, BEV_OPT_CLOSE_ON_FREE);
        conn->deadline = evtimer_new(tunnel->base, connection_deadline, conn);
        if (!conn->client.buffer || !conn->deadline) {
                if (conn->client.buffer)
                        bufferevent_free(conn->client.buffer);
                else
                        close(fd);
                if (conn->deadline)
                        event_free(conn->deadline);
                free(conn);
                return;
        }
        bufferevent_setcb(conn->client.buffer, connection_read, connection_write, connection_event, conn);
        bufferevent_setwatermark(conn->client.buffer, EV_WRITE, MOAT_TUNNEL_QUEUE_LOW, 0);
        conn->next = tunnel->connections;
        if (conn->next)
                conn->next->previous = conn;
        tunnel->connections = conn;
        tunnel->connection_count++;

        if (!tunnel->token) {
                connection_connect_sandbox(conn);
                return;
        }
        event_add(conn->deadline, &tunnel->head_timeout);
        bufferevent_enable(conn->client.buffer, EV_READ);
}

static void tunnel_accept_retry(evutil_socket_t fd, short what, void *data)
{
        struct moat_tunnel *tunnel = data;

        evconnlistener_enable(tunnel->listener);
}

static void tunnel_accept_error(struct evconnlistener *listener, void *data)
{
        struct moat_tunnel *tunnel = data;
        struct timeval retry = {0, TUNNEL_ACCEPT_RETRY_MS * 1000};

        /* Out of descriptors or memory: pause rather than spin on a
         * listening socket that stays readable. */
        evconnlistener_disable(listener);
        event_add(tunnel->accept_retry, &retry);
}

/* ---- the tunnel ---- */

static int tunnel_listen(const char *bind_address, uint16_t *ret_port, struct moat_error **err)
{
        struct sockaddr_storage address = {0};
        socklen_t address_length;
        struct sockaddr_in *ipv4 = (struct sockaddr_in *)&address;
        struct sockaddr_in6 *ipv6 = (struct sockaddr_in6 *)&address;
        _cleanup_close_ int fd = -1;

        if (inet_pton(AF_INET, bind_address, &ipv4->sin_addr) == 1) {
                ipv4->sin_family = AF_INET;
                address_length = sizeof(*ipv4);
        } else if (inet_pton(AF_INET6, bind_address, &ipv6->sin6_addr) == 1) {
                ipv6->sin6_family = AF_INET6;
                address_length = sizeof(*ipv6);
        } else {
                return moat_error_invalid(err, "tunnel address `%s` is not an IPv4 or IPv6 address",
                                          bind_address);
        }
        fd = socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return moat_error_system(err, errno, "socket");
        if (address.ss_family == AF_INET6) {
                /* "::" means IPv6 only: exposing on IPv4 too is a separate,
                 * explicit choice of address. */
                int one = 1;
                if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
                        return moat_error_system(err, errno, "setsockopt IPV6_V6ONLY");
        }
        if (bind(fd, (struct sockaddr *)&address, address_length) < 0)
                return moat_error_system(err, errno, "bind %s port 0", bind_address);
        if (listen(fd, TUNNEL_LISTEN_BACKLOG) < 0)
                return moat_error_system(err, errno, "listen");
        address_length = sizeof(address);
        if (getsockname(fd, (struct sockaddr *)&address, &address_length) < 0)
                return moat_error_system(err, errno, "getsockname");
        *ret_port = ntohs(address.ss_family == AF_INET ? ipv4->sin_port : ipv6->sin6_port);
        return TAKE_FD(fd);
}

static bool token_is_valid(const char *token)
{
        size_t length = strlen(token);

        if (length == 0 || length > TUNNEL_TOKEN_MAX)
                return false;
        /* It must survive as an HTTP header value and a query parameter. */
        for (size_t i = 0; i < length; i++)
                if (token[i] <= ' ' || token[i] > '~' || token[i] == '&' || token[i] == '#')
                        return false;
        return true;
}

int moat_tunnel_open(struct event_base *base, const struct moat_tunnel_options *options,
                     struct moat_tunnel **ret, struct moat_error **err)
{
        struct moat_tunnel *tunnel;
        int listen_fd;
        uint16_t host_port = 0;

        if (!base || !options || !options->bind_address || options->netns_fd < 0)
                return moat_error_invalid(err, "tunnel: missing event base, address or network namespace");
        if (options->sandbox_port == 0)
                return moat_error_invalid(err, "tunnel: sandbox port 0");
        if (options->token && !token_is_valid(options->token))
                return moat_error_invalid(err, "tunnel: the token must be 1 to %d printable ASCII characters",
                                          TUNNEL_TOKEN_MAX);

        tunnel = calloc(1, sizeof(*tunnel));
        if (!tunnel)
                return moat_error_system(err, ENOMEM, "tunnel");
        tunnel->base = base;
        tunnel->netns_fd = -1;
        tunnel->sandbox_port = options->sandbox_port;
        tunnel->head_timeout.tv_sec =
            options->head_timeout_ms ? options->head_timeout_ms / 1000 : MOAT_TUNNEL_HEAD_TIMEOUT_SECONDS;
        tunnel->head_timeout.tv_usec =
            options->head_timeout_ms ? (options->head_timeout_ms % 1000) * 1000 : 0;
        if (options->token) {
                tunnel->token = strdup(options->token);
                if (!tunnel->token) {
                        moat_error_system(err, ENOMEM, "tunnel");
                        goto fail;
                }
                tunnel->token_length = strlen(tunnel->token);
        }
        tunnel->netns_fd = fcntl(options->netns_fd, F_DUPFD_CLOEXEC, 3);
        if (tunnel->netns_fd < 0) {
                moat_error_system(err, errno, "tunnel: dup network namespace fd");
                goto fail;
        }
        tunnel->reap = event_new(base, -1, 0, tunnel_reap, tunnel);
        tunnel->accept_retry = evtimer_new(base, tunnel_accept_retry, tunnel);
        if (!tunnel->reap || !tunnel->accept_retry) {
                moat_error_system(err, ENOMEM, "tunnel: event_new");
                goto fail;
        }
        listen_fd = tunnel_listen(options->bind_address, &host_port, err);
        if (listen_fd < 0)
                goto fail;
        /* Backlog 0: the socket is already listening. Accepted sockets are
         * non-blocking and close-on-exec (accept4). */
        tunnel->listener = evconnlistener_new(base, tunnel_accept, tunnel,
                                              LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, listen_fd);
        if (!tunnel->listener) {
                close(listen_fd);
                moat_error_system(err, errno, "tunnel: evconnlistener_new");
                goto fail;
        }
        evconnlistener_set_error_cb(tunnel->listener, tunnel_accept_error);
        tunnel->host_port = host_port;
        *ret = tunnel;
        return 0;
fail:
        moat_tunnel_close(tunnel);
        return -1;
}

uint16_t moat_tunnel_host_port(const struct moat_tunnel *tunnel)
{
        return tunnel->host_port;
}

void moat_tunnel_bytes(const struct moat_tunnel *tunnel, uint64_t *to_sandbox, uint64_t *from_sandbox)
{
        if (to_sandbox)
                *to_sandbox = tunnel->to_sandbox;
        if (from_sandbox)
                *from_sandbox = tunnel->from_sandbox;
}

unsigned moat_tunnel_connection_count(const struct moat_tunnel *tunnel)
{
        return tunnel->connection_count;
}

static uint64_t buffered(struct bufferevent *buffer)
{
        if (!buffer)
                return 0;
        return evbuffer_get_length(bufferevent_get_input(buffer)) +
               evbuffer_get_length(bufferevent_get_output(buffer));
}

uint64_t moat_tunnel_queued_bytes(const struct moat_tunnel *tunnel)
{
        uint64_t total = 0;

        for (const struct tunnel_connection *conn = tunnel->connections; conn; conn = conn->next)
                total += buffered(conn->client.buffer) + buffered(conn->sandbox.buffer);
        return total;
}

void moat_tunnel_close(struct moat_tunnel *tunnel)
{
        if (!tunnel)
                return;
        if (tunnel->listener)
                evconnlistener_free(tunnel->listener);
        while (tunnel->connections)
                connection_close(tunnel->connections);
        if (tunnel->reap) {
                tunnel_reap(-1, 0, tunnel);
                event_free(tunnel->reap);
        }
        if (tunnel->accept_retry)
                event_free(tunnel->accept_retry);
        if (tunnel->netns_fd >= 0)
                close(tunnel->netns_fd);
        if (tunnel->token) {
                /* Do not leave the secret in freed memory for a later
                 * allocation (or a core dump) to show. */
                explicit_bzero(tunnel->token, tunnel->token_length);
                free(tunnel->token);
        }
        free(tunnel);
}
