/* DNS message parsing in the sandbox resolver (src/daemon/dns.c). Both sides
 * are untrusted: the query comes from the sandbox, the answer from an
 * upstream server the sandbox may influence (by querying names it controls).
 * The first byte picks the path:
 *   0: the rest is a query datagram from the sandbox
 *      (moat_dns_handle_query_for_test: triage, error answers, forwarding);
 *   1: u16 big-endian query length, the query, then an upstream reply
 *      (moat_dns_answer_for_test: reply matching, answer rebuilding, hooks);
 *   2: the same two messages through the real sockets: the query is handled,
 *      and if the resolver forwarded it, the reply (its id patched to the
 *      forwarded query's) is sent back from the upstream's socket and the
 *      event loop delivers it. If the resolver then retries over TCP (the
 *      reply was truncated), the upstream's TCP listener accepts and sends
 *      the reply again, framed by a u16 length, or (bit 2 of the first byte)
 *      as raw bytes, whose first two then act as the length.
 * Every socket is on 127.0.0.1 and owned by the harness (the "upstream" is a
 * socket nobody else reads): no network. The hooks check what dns.h
 * promises: names lower-case without a trailing dot, A/AAAA only, clamped
 * TTLs. A listener is made per input, so no query stays in flight. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dns.h"
#include "fuzz.h"

static struct event_base *base;
static struct moat_dns *dns;
static int upstream_fd = -1, upstream_tcp_fd = -1, sink_fd = -1;
static struct sockaddr_in sink_address;

static bool hook_name_allowed(void *ctx, const char *name)
{
        size_t length = strlen(name);

        if (length > 253 || (length && name[length - 1] == '.'))
                abort();
        for (const char *p = name; *p; p++)
                if (isupper((unsigned char)*p))
                        abort();
        return strcmp(name, "allowed") == 0 ||
               (length >= 11 && strcmp(name + length - 11, "example.com") == 0);
}

static int hook_admit(void *ctx, const char *name, int family, const void *addr, uint32_t ttl)
{
        if ((family != AF_INET && family != AF_INET6) || !addr || ttl < MOAT_DNS_TTL_MIN || ttl > MOAT_DNS_TTL_MAX)
                abort();
        if (!hook_name_allowed(ctx, name))
                abort(); /* only names on the allowed chain are admitted */
        return strncmp(name, "deny", 4) == 0 ? -1 : 0;
}

static const struct moat_dns_hooks hooks = {.name_allowed = hook_name_allowed, .admit = hook_admit};

static int bind_loopback(struct sockaddr_in *ret)
{
        struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t length = sizeof(address);
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

        if (fd < 0 || bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0 ||
            getsockname(fd, (struct sockaddr *)&address, &length) < 0)
                abort();
        if (ret)
                *ret = address;
        return fd;
}

static void drain(int fd)
{
        char buffer[4096];

        while (recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT) >= 0)
                ;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        struct sockaddr_in upstream_address;
        char upstream[64];
        const char *upstreams[] = {upstream, NULL};
        struct moat_error *err = NULL;

        base = event_base_new();
        if (!base)
                abort();
        upstream_fd = bind_loopback(&upstream_address);
        /* The TCP side of the same upstream (same port: separate spaces). */
        upstream_tcp_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (upstream_tcp_fd < 0 ||
            bind(upstream_tcp_fd, (struct sockaddr *)&upstream_address, sizeof(upstream_address)) < 0 ||
            listen(upstream_tcp_fd, 8) < 0)
                abort();
        sink_fd = bind_loopback(&sink_address);
        snprintf(upstream, sizeof(upstream), "127.0.0.1:%u", ntohs(upstream_address.sin_port));
        if (moat_dns_new(base, upstreams, &dns, &err) < 0) {
                fprintf(stderr, "moat_dns_new: %s\n", err->message);
                abort();
        }
        return 0;
}

/* Answer the resolver's TCP retry, if it made one. */
static void serve_tcp(const uint8_t *reply, size_t reply_length, bool raw)
{
        uint8_t request[2 + 65535], frame[2 + 65535];
        size_t frame_length = 0, got = 0, sent = 0;
        int connection = -1;

        for (int round = 0; round < 64; round++) {
                if (connection < 0)
                        connection = accept4(upstream_tcp_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (connection < 0) {
                        if (round >= 4)
                                return; /* no retry over TCP */
                        event_base_loop(base, EVLOOP_NONBLOCK);
                        continue;
                }
                if (frame_length == 0) {
                        ssize_t n = recv(connection, request + got, sizeof(request) - got, MSG_DONTWAIT);

                        if (n > 0)
                                got += (size_t)n;
                        /* The whole length-prefixed query arrived: answer with its id. */
                        if (got >= 2 + 2 && got >= 2 + (size_t)(request[0] << 8 | request[1])) {
                                size_t length = reply_length > 65535 ? 65535 : reply_length;

                                if (raw) {
                                        memcpy(frame, reply, length);
                                        frame_length = length;
                                } else {
                                        frame[0] = (uint8_t)(length >> 8);
                                        frame[1] = (uint8_t)length;
                                        memcpy(frame + 2, reply, length);
                                        if (length >= 2)
                                                memcpy(frame + 2, request + 2, 2);
                                        frame_length = 2 + length;
                                }
                        }
                }
                if (frame_length && sent < frame_length) {
                        ssize_t n = send(connection, frame + sent, frame_length - sent, MSG_DONTWAIT | MSG_NOSIGNAL);

                        if (n > 0)
                                sent += (size_t)n;
                        if (sent == frame_length)
                                shutdown(connection, SHUT_WR);
                }
                event_base_loop(base, EVLOOP_NONBLOCK);
        }
        if (connection >= 0)
                close(connection);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct moat_dns_listener *listener = NULL;
        struct moat_error *err = NULL;
        const uint8_t *query = NULL, *reply = NULL;
        size_t query_length = 0, reply_length = 0;
        uint8_t out[MOAT_DNS_MAX_RESPONSE];
        int mode;

        if (size < 1)
                return 0;
        mode = data[0] % 3;
        if (mode == 0) {
                query = data + 1;
                query_length = size - 1;
        } else {
                if (size < 3)
                        return 0;
                query_length = (size_t)data[1] << 8 | data[2];
                if (query_length > size - 3)
                        query_length = size - 3;
                query = data + 3;
                reply = query + query_length;
                reply_length = size - 3 - query_length;
        }
        if (moat_dns_listen(dns, bind_loopback(NULL), &hooks, NULL, &listener, &err) < 0)
                abort();
        if (mode == 1) {
                int length = moat_dns_answer_for_test(listener, query, query_length, reply, reply_length, out);

                if (length > MOAT_DNS_MAX_RESPONSE)
                        abort();
        } else {
                moat_dns_handle_query_for_test(listener, query, query_length, (struct sockaddr *)&sink_address,
                                               sizeof(sink_address));
                if (mode == 2 && reply_length >= 2) {
                        struct sockaddr_storage from;
                        socklen_t from_length = sizeof(from);
                        uint8_t forwarded[4096], *patched = malloc(reply_length);
                        ssize_t n = recvfrom(upstream_fd, forwarded, sizeof(forwarded), MSG_DONTWAIT,
                                             (struct sockaddr *)&from, &from_length);

                        if (!patched)
                                abort();
                        if (n >= 2) {
                                memcpy(patched, reply, reply_length);
                                memcpy(patched, forwarded, 2); /* the transaction id */
                                sendto(upstream_fd, patched, reply_length, 0, (struct sockaddr *)&from,
                                       from_length);
                                for (int round = 0; round < 4; round++)
                                        event_base_loop(base, EVLOOP_NONBLOCK);
                                serve_tcp(patched, reply_length, data[0] & 4);
                        }
                        free(patched);
                }
        }
        moat_dns_listener_free(listener);
        drain(upstream_fd);
        drain(sink_fd);
        return 0;
}
