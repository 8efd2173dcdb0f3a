/* A minimal TCP throughput meter for the network benchmark (net_bench.py).
 *
 *   netperf server ADDR PORT          accept one connection at a time, read
 *                                     and discard; after each, print one
 *                                     JSON line with what it received
 *   netperf client ADDR PORT SECONDS  write 256 KiB buffers for SECONDS, then
 *                                     print {"bytes": n, "seconds": s,
 *                                     "gbit_per_s": x}
 *
 * ADDR is a numeric IPv4 or IPv6 address (fe80::1%eth0 for a link-local one).
 *
 * The binary is copied into sandboxes whose /usr may lack anything the host
 * has, so it must link statically: that is why addresses are parsed with
 * inet_pton and never getaddrinfo, which in a static glibc binary would try to
 * dlopen NSS modules at run time.
 *
 * The client's byte count is what the server acknowledged receiving, not what
 * was queued: after SECONDS it half-closes and waits for the server to close
 * (which the server does once it has read everything), so megabytes still
 * sitting in socket buffers are not counted as delivered and the clock covers
 * their delivery.
 *
 * Every blocking step has a deadline, so a network that silently drops
 * packets (a sandbox whose policy does not allow the server) fails in seconds
 * instead of hanging the benchmark.
 *
 * A benchmark tool, not product code: it exits on the first error. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BUFFER_SIZE (256 * 1024)
/* How long connect() may take before the path is declared unreachable. */
#define CONNECT_TIMEOUT_MS 5000
/* How long one read or write may stall before the peer is declared gone. */
#define STALL_TIMEOUT_S 15
/* Longest run the client accepts: a typo should not block for a day. */
#define MAX_SECONDS 3600.0

static char buffer[BUFFER_SIZE];

static _Noreturn void die(const char *what)
{
        fprintf(stderr, "netperf: %s: %s\n", what, strerror(errno));
        exit(1);
}

static _Noreturn void die_message(const char *message)
{
        fprintf(stderr, "netperf: %s\n", message);
        exit(1);
}

static _Noreturn void usage(void)
{
        fprintf(stderr,
                "usage: netperf server ADDR PORT\n"
                "       netperf client ADDR PORT SECONDS\n");
        exit(2);
}

static double now_seconds(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ADDR + PORT into a sockaddr; IPv6 may carry a %scope (name or number). */
static socklen_t parse_address(const char *address, const char *port_text,
                               struct sockaddr_storage *ret_address)
{
        char *end;
        errno = 0;
        unsigned long port = strtoul(port_text, &end, 10);
        if (errno != 0 || end == port_text || *end != '\0' || port == 0 || port > 65535) {
                fprintf(stderr, "netperf: bad port '%s' (1-65535)\n", port_text);
                exit(2);
        }

        memset(ret_address, 0, sizeof(*ret_address));
        struct sockaddr_in *v4 = (struct sockaddr_in *)ret_address;
        if (inet_pton(AF_INET, address, &v4->sin_addr) == 1) {
                v4->sin_family = AF_INET;
                v4->sin_port = htons((uint16_t)port);
                return sizeof(*v4);
        }

        char host[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
        if (strlen(address) >= sizeof(host)) {
                fprintf(stderr, "netperf: bad address '%s'\n", address);
                exit(2);
        }
        strcpy(host, address);
        uint32_t scope = 0;
        char *percent = strchr(host, '%');
        if (percent != NULL) {
                *percent = '\0';
                const char *scope_text = percent + 1;
                scope = if_nametoindex(scope_text);
                if (scope == 0) {
                        errno = 0;
                        unsigned long number = strtoul(scope_text, &end, 10);
                        if (errno != 0 || end == scope_text || *end != '\0' ||
                            number == 0 || number > UINT32_MAX) {
                                fprintf(stderr, "netperf: unknown scope '%s'\n", scope_text);
                                exit(2);
                        }
                        scope = (uint32_t)number;
                }
        }
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ret_address;
        if (inet_pton(AF_INET6, host, &v6->sin6_addr) != 1) {
                fprintf(stderr, "netperf: '%s' is not a numeric IPv4 or IPv6 address\n",
                        address);
                exit(2);
        }
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        v6->sin6_scope_id = scope;
        return sizeof(*v6);
}

static void set_stall_timeouts(int fd)
{
        struct timeval timeout = { .tv_sec = STALL_TIMEOUT_S };
        if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout)) < 0)
                die("setsockopt(SO_RCVTIMEO/SO_SNDTIMEO)");
}

static void print_result(uint64_t bytes, double seconds)
{
        double gbit_per_s = seconds > 0 ? (double)bytes * 8 / seconds / 1e9 : 0;
        printf("{\"bytes\": %" PRIu64 ", \"seconds\": %.6f, \"gbit_per_s\": %.4f}\n",
               bytes, seconds, gbit_per_s);
        fflush(stdout);
}

/* Read until EOF; returns the byte count. Errors end the connection, not
 * the server: one broken client must not stop the next measurement. */
static int drain(int fd, uint64_t *ret_bytes)
{
        uint64_t bytes = 0;
        for (;;) {
                ssize_t n = read(fd, buffer, sizeof(buffer));
                if (n == 0)
                        break;
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        *ret_bytes = bytes;
                        return -1;
                }
                bytes += (uint64_t)n;
        }
        *ret_bytes = bytes;
        return 0;
}

static _Noreturn void run_server(const char *address, const char *port)
{
        struct sockaddr_storage server_address;
        socklen_t length = parse_address(address, port, &server_address);

        int listener = socket(server_address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listener < 0)
                die("socket");
        int one = 1;
        if (setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
                die("setsockopt(SO_REUSEADDR)");
        if (bind(listener, (struct sockaddr *)&server_address, length) < 0)
                die("bind");
        if (listen(listener, 8) < 0)
                die("listen");
        /* The caller waits for this line before starting a client. */
        fprintf(stderr, "netperf: listening on %s port %s\n", address, port);

        for (;;) {
                int connection = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
                if (connection < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        die("accept");
                }
                set_stall_timeouts(connection);
                double start = now_seconds();
                uint64_t bytes;
                if (drain(connection, &bytes) < 0)
                        fprintf(stderr, "netperf: connection ended by error after %" PRIu64
                                " bytes: %s\n", bytes, strerror(errno));
                double seconds = now_seconds() - start;
                close(connection);
                print_result(bytes, seconds);
        }
}

/* connect() with a deadline: a dropped SYN otherwise retries for minutes. */
static void connect_with_deadline(int fd, const struct sockaddr_storage *address,
                                  socklen_t length)
{
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                die("fcntl(O_NONBLOCK)");
        if (connect(fd, (const struct sockaddr *)address, length) < 0) {
                if (errno != EINPROGRESS)
                        die("connect");
                struct pollfd pollfd = { .fd = fd, .events = POLLOUT };
                int ready;
                do
                        ready = poll(&pollfd, 1, CONNECT_TIMEOUT_MS);
                while (ready < 0 && errno == EINTR);
                if (ready < 0)
                        die("poll");
                if (ready == 0)
                        die_message("connect: no answer in 5 s (is the path allowed?)");
                int error = 0;
                socklen_t error_length = sizeof(error);
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &error_length) < 0)
                        die("getsockopt(SO_ERROR)");
                if (error != 0) {
                        errno = error;
                        die("connect");
                }
        }
        if (fcntl(fd, F_SETFL, flags) < 0)
                die("fcntl");
}

static int run_client(const char *address, const char *port, const char *seconds_text)
{
        char *end;
        errno = 0;
        double duration = strtod(seconds_text, &end);
        if (errno != 0 || end == seconds_text || *end != '\0' || !(duration > 0) ||
            duration > MAX_SECONDS) {
                fprintf(stderr, "netperf: bad SECONDS '%s' (0 < s <= %.0f)\n",
                        seconds_text, MAX_SECONDS);
                exit(2);
        }
        struct sockaddr_storage server_address;
        socklen_t length = parse_address(address, port, &server_address);

        int fd = socket(server_address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                die("socket");
        connect_with_deadline(fd, &server_address, length);
        set_stall_timeouts(fd);

        /* Pseudo-random-ish content, so nothing on the path can profit from
         * zeros (no compression on TCP today, but the cost is nil). */
        for (size_t i = 0; i < sizeof(buffer); i++)
                buffer[i] = (char)(i * 2654435761u >> 24);

        uint64_t bytes = 0;
        double start = now_seconds();
        double deadline = start + duration;
        while (now_seconds() < deadline) {
                size_t offset = 0;
                while (offset < sizeof(buffer)) {
                        ssize_t n = write(fd, buffer + offset, sizeof(buffer) - offset);
                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                die("write");
                        }
                        offset += (size_t)n;
                }
                bytes += sizeof(buffer);
        }
        /* Count only what the server read: half-close, then wait for its
         * close, which follows its last read. */
        if (shutdown(fd, SHUT_WR) < 0)
                die("shutdown");
        for (;;) {
                ssize_t n = read(fd, buffer, sizeof(buffer));
                if (n == 0)
                        break;
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        die("waiting for the server to close");
                }
        }
        double seconds = now_seconds() - start;
        close(fd);
        print_result(bytes, seconds);
        return 0;
}

int main(int argc, char **argv)
{
        /* A peer that vanishes must give EPIPE, reported, not a silent death. */
        signal(SIGPIPE, SIG_IGN);
        if (argc == 4 && strcmp(argv[1], "server") == 0)
                run_server(argv[2], argv[3]);
        if (argc == 5 && strcmp(argv[1], "client") == 0)
                return run_client(argv[2], argv[3], argv[4]);
        usage();
}
