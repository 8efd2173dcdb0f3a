/* The per-sandbox DNS resolver (src/daemon/dns.c) against real sockets on
 * 127.0.0.1: a fake upstream (a thread answering from a tiny zone built with
 * ldns, over UDP and TCP), a listener, and a client sending queries. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <ldns/ldns.h>
#include <netinet/in.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dns.h"

/* ---- the fake upstream ---- */

struct fake_upstream {
        int udp_fd, tcp_fd, stop_pipe[2];
        uint16_t port;
        pthread_t thread;
        pthread_mutex_t lock;
        int udp_queries, tcp_queries;
        bool last_rd, last_edns;
        uint16_t last_id;
};

static struct fake_upstream upstream;
static int silent_fd = -1; /* bound, never read: an upstream that does not answer */
static uint16_t silent_port;

static void add_record(ldns_pkt *pkt, ldns_pkt_section section, const char *text)
{
        ldns_rr *rr = NULL;

        if (ldns_rr_new_frm_str(&rr, text, 0, NULL, NULL) != LDNS_STATUS_OK) {
                fprintf(stderr, "bad test record %s\n", text);
                abort();
        }
        ldns_pkt_push_rr(pkt, section, rr);
}

static ldns_pkt *reply_new(const ldns_pkt *query, ldns_pkt_rcode rcode)
{
        ldns_pkt *reply = ldns_pkt_new();

        ldns_pkt_set_id(reply, ldns_pkt_id(query));
        ldns_pkt_set_qr(reply, true);
        ldns_pkt_set_rd(reply, ldns_pkt_rd(query));
        ldns_pkt_set_ra(reply, true);
        ldns_pkt_set_rcode(reply, rcode);
        ldns_pkt_push_rr(reply, LDNS_SECTION_QUESTION, ldns_rr_clone(ldns_rr_list_rr(ldns_pkt_question(query), 0)));
        return reply;
}

/* The zone. Returns the reply to send, or NULL for none. */
static ldns_pkt *zone_answer(const ldns_pkt *query, bool tcp)
{
        ldns_rr *question = ldns_rr_list_rr(ldns_pkt_question(query), 0);
        ldns_rr_type type = ldns_rr_get_type(question);
        char *name = ldns_rdf2str(ldns_rr_owner(question));
        ldns_pkt *reply = reply_new(query, LDNS_RCODE_NOERROR);

        if (strcmp(name, "good.test.") == 0) {
                if (type == LDNS_RR_TYPE_A)
                        add_record(reply, LDNS_SECTION_ANSWER, "good.test. 1 IN A 198.18.5.2");
                if (type == LDNS_RR_TYPE_AAAA)
                        add_record(reply, LDNS_SECTION_ANSWER, "good.test. 7200 IN AAAA 2001:db8::5");
                /* Not on the chain, and sections that must never reach the sandbox. */
                add_record(reply, LDNS_SECTION_ANSWER, "other.test. 300 IN A 198.18.5.77");
                add_record(reply, LDNS_SECTION_AUTHORITY, "test. 300 IN NS ns.test.");
                add_record(reply, LDNS_SECTION_ADDITIONAL, "ns.test. 300 IN A 198.18.5.99");
        } else if (strcmp(name, "alias.test.") == 0) {
                add_record(reply, LDNS_SECTION_ANSWER, "alias.test. 300 IN CNAME evil.test.");
                add_record(reply, LDNS_SECTION_ANSWER, "evil.test. 300 IN A 198.18.5.3");
        } else if (strcmp(name, "alias-ok.test.") == 0) {
                add_record(reply, LDNS_SECTION_ANSWER, "alias-ok.test. 0 IN CNAME good.test.");
                add_record(reply, LDNS_SECTION_ANSWER, "good.test. 1 IN A 198.18.5.2");
                add_record(reply, LDNS_SECTION_ANSWER, "good.test. 1 IN TXT \"on the chain\"");
        } else if (strcmp(name, "big.test.") == 0) {
                for (int i = 1; i <= 60; i++) {
                        char text[64];
                        snprintf(text, sizeof(text), "big.test. 60 IN A 198.18.6.%d", i);
                        add_record(reply, LDNS_SECTION_ANSWER, text);
                }
        } else if (strcmp(name, "huge.test.") == 0) {
                char text[1024], chunk[201];
                memset(chunk, 'x', 200);
                chunk[200] = '\0';
                snprintf(text, sizeof(text), "huge.test. 60 IN TXT \"%s\" \"%s\" \"%s\"", chunk, chunk, chunk);
                add_record(reply, LDNS_SECTION_ANSWER, text);
        } else if (strcmp(name, "tc.test.") == 0) {
                if (tcp)
                        add_record(reply, LDNS_SECTION_ANSWER, "tc.test. 30 IN A 198.18.5.4");
                else
                        ldns_pkt_set_tc(reply, true);
        } else if (strcmp(name, "nx.test.") == 0) {
                ldns_pkt_set_rcode(reply, LDNS_RCODE_NXDOMAIN);
                add_record(reply, LDNS_SECTION_AUTHORITY,
                           "test. 300 IN SOA ns.test. admin.test. 1 3600 600 86400 300");
        } else if (strcmp(name, "fail.test.") == 0) {
                ldns_pkt_set_rcode(reply, LDNS_RCODE_REFUSED);
        } else {
                ldns_pkt_set_rcode(reply, LDNS_RCODE_NXDOMAIN);
        }
        free(name);
        return reply;
}

static void send_packet(int fd, const ldns_pkt *pkt, const struct sockaddr *to, socklen_t to_length)
{
        uint8_t *wire = NULL;
        size_t length = 0;

        assert_int_equal(ldns_pkt2wire(&wire, pkt, &length), LDNS_STATUS_OK);
        (void)sendto(fd, wire, length, 0, to, to_length);
        free(wire);
}

static void upstream_serve_udp(void)
{
        uint8_t buffer[4096];
        struct sockaddr_storage from;
        socklen_t from_length = sizeof(from);
        ssize_t n = recvfrom(upstream.udp_fd, buffer, sizeof(buffer), 0, (struct sockaddr *)&from, &from_length);
        ldns_pkt *query = NULL, *reply;
        char *name;

        if (n <= 0 || ldns_wire2pkt(&query, buffer, (size_t)n) != LDNS_STATUS_OK)
                return;
        pthread_mutex_lock(&upstream.lock);
        upstream.udp_queries++;
        upstream.last_rd = ldns_pkt_rd(query);
        upstream.last_edns = ldns_pkt_edns(query) || ldns_pkt_arcount(query) > 0;
        upstream.last_id = ldns_pkt_id(query);
        pthread_mutex_unlock(&upstream.lock);

        name = ldns_rdf2str(ldns_rr_owner(ldns_rr_list_rr(ldns_pkt_question(query), 0)));
        if (strcmp(name, "spoof.test.") == 0) {
                /* Two forgeries before the real answer: a wrong id, a wrong question. */
                ldns_pkt *forged = reply_new(query, LDNS_RCODE_NOERROR);
                ldns_pkt_set_id(forged, (uint16_t)(ldns_pkt_id(query) + 1));
                add_record(forged, LDNS_SECTION_ANSWER, "spoof.test. 300 IN A 6.6.6.6");
                send_packet(upstream.udp_fd, forged, (struct sockaddr *)&from, from_length);
                ldns_pkt_free(forged);

                ldns_pkt *other_question = ldns_pkt_query_new(ldns_dname_new_frm_str("spoof2.test."),
                                                              LDNS_RR_TYPE_A, LDNS_RR_CLASS_IN, 0);
                ldns_pkt_set_id(other_question, ldns_pkt_id(query));
                forged = reply_new(other_question, LDNS_RCODE_NOERROR);
                add_record(forged, LDNS_SECTION_ANSWER, "spoof.test. 300 IN A 6.6.6.7");
                send_packet(upstream.udp_fd, forged, (struct sockaddr *)&from, from_length);
                ldns_pkt_free(forged);
                ldns_pkt_free(other_question);

                reply = reply_new(query, LDNS_RCODE_NOERROR);
                add_record(reply, LDNS_SECTION_ANSWER, "spoof.test. 300 IN A 198.18.5.5");
        } else {
                reply = zone_answer(query, false);
        }
        free(name);
        send_packet(upstream.udp_fd, reply, (struct sockaddr *)&from, from_length);
        ldns_pkt_free(reply);
        ldns_pkt_free(query);
}

static void upstream_serve_tcp(void)
{
        struct timeval timeout = {.tv_sec = 2};
        uint8_t length_prefix[2], buffer[65535], *wire = NULL;
        ldns_pkt *query = NULL, *reply;
        size_t wire_length = 0;
        int fd = accept(upstream.tcp_fd, NULL, NULL);
        uint16_t length;

        if (fd < 0)
                return;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
        if (recv(fd, length_prefix, 2, MSG_WAITALL) != 2)
                goto out;
        length = ldns_read_uint16(length_prefix);
        if (recv(fd, buffer, length, MSG_WAITALL) != length || ldns_wire2pkt(&query, buffer, length) != LDNS_STATUS_OK)
                goto out;
        pthread_mutex_lock(&upstream.lock);
        upstream.tcp_queries++;
        pthread_mutex_unlock(&upstream.lock);
        reply = zone_answer(query, true);
        ldns_pkt2wire(&wire, reply, &wire_length);
        ldns_write_uint16(length_prefix, (uint16_t)wire_length);
        (void)send(fd, length_prefix, 2, MSG_NOSIGNAL);
        (void)send(fd, wire, wire_length, MSG_NOSIGNAL);
        free(wire);
        ldns_pkt_free(reply);
out:
        ldns_pkt_free(query);
        close(fd);
}

static void *upstream_run(void *arg)
{
        for (;;) {
                struct pollfd fds[3] = {
                        {.fd = upstream.udp_fd, .events = POLLIN},
                        {.fd = upstream.tcp_fd, .events = POLLIN},
                        {.fd = upstream.stop_pipe[0], .events = POLLIN},
                };
                if (poll(fds, 3, -1) < 0)
                        continue;
                if (fds[2].revents)
                        return NULL;
                if (fds[0].revents & POLLIN)
                        upstream_serve_udp();
                if (fds[1].revents & POLLIN)
                        upstream_serve_tcp();
        }
}

static int bind_loopback(int type, uint16_t port, uint16_t *ret_port)
{
        struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
        socklen_t length = sizeof(address);
        int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0), one = 1;

        assert_true(fd >= 0);
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        assert_int_equal(bind(fd, (struct sockaddr *)&address, sizeof(address)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&address, &length), 0);
        if (ret_port)
                *ret_port = ntohs(address.sin_port);
        return fd;
}

static int group_setup(void **state)
{
        /* The TCP retry goes to the same address and port: find a port free
         * for both (a UDP port's TCP twin may be taken). */
        for (int attempt = 0;; attempt++) {
                struct sockaddr_in address = {.sin_family = AF_INET};
                assert_true(attempt < 100);
                upstream.udp_fd = bind_loopback(SOCK_DGRAM, 0, &upstream.port);
                upstream.tcp_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                assert_true(upstream.tcp_fd >= 0);
                address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                address.sin_port = htons(upstream.port);
                if (bind(upstream.tcp_fd, (struct sockaddr *)&address, sizeof(address)) == 0)
                        break;
                close(upstream.tcp_fd);
                close(upstream.udp_fd);
        }
        assert_int_equal(listen(upstream.tcp_fd, 16), 0);
        assert_int_equal(pipe(upstream.stop_pipe), 0);
        pthread_mutex_init(&upstream.lock, NULL);
        assert_int_equal(pthread_create(&upstream.thread, NULL, upstream_run, NULL), 0);
        silent_fd = bind_loopback(SOCK_DGRAM, 0, &silent_port);
        return 0;
}

static int group_teardown(void **state)
{
        assert_int_equal(write(upstream.stop_pipe[1], "x", 1), 1);
        pthread_join(upstream.thread, NULL);
        close(upstream.udp_fd);
        close(upstream.tcp_fd);
        close(upstream.stop_pipe[0]);
        close(upstream.stop_pipe[1]);
        close(silent_fd);
        pthread_mutex_destroy(&upstream.lock);
        return 0;
}

static int upstream_udp_queries(void)
{
        int n;
        pthread_mutex_lock(&upstream.lock);
        n = upstream.udp_queries;
        pthread_mutex_unlock(&upstream.lock);
        return n;
}

/* ---- the sandbox side: hooks, listener, client ---- */

struct admitted {
        char name[256];
        int family;
        uint8_t address[16];
        uint32_t ttl;
};

struct fixture {
        struct event_base *base;
        struct moat_dns *dns;
        struct moat_dns_listener *listener;
        int client_fd;
        uint16_t listener_port;
        /* hooks' state */
        bool allow_everything, fail_admit, freed, admitted_evil;
        int hook_calls_after_free;
        int admit_count;
        struct admitted admits[64];
        /* exchange() */
        uint8_t reply[65536];
        ssize_t reply_length;
};

static bool hook_name_allowed(void *ctx, const char *name)
{
        struct fixture *f = ctx;
        size_t length = strlen(name);

        if (f->freed)
                f->hook_calls_after_free++;
        if (f->allow_everything)
                return true;
        if (strcmp(name, "evil.test") == 0 || (length > 10 && strcmp(name + length - 10, ".evil.test") == 0))
                return false;
        return strncmp(name, "denied", 6) != 0;
}

static int hook_admit(void *ctx, const char *name, int family, const void *address, uint32_t ttl)
{
        struct fixture *f = ctx;
        struct admitted *a;

        if (f->freed)
                f->hook_calls_after_free++;
        if (strcmp(name, "evil.test") == 0)
                f->admitted_evil = true;
        /* The fuzz test admits many: keep the last ones. */
        a = &f->admits[f->admit_count++ % (int)(sizeof(f->admits) / sizeof(f->admits[0]))];
        snprintf(a->name, sizeof(a->name), "%s", name);
        a->family = family;
        memcpy(a->address, address, family == AF_INET ? 4 : 16);
        a->ttl = ttl;
        return f->fail_admit ? -1 : 0;
}

static const struct moat_dns_hooks hooks = {.name_allowed = hook_name_allowed, .admit = hook_admit};

static struct fixture *fixture_new(const char *const *upstreams)
{
        struct fixture *f = calloc(1, sizeof(*f));
        struct moat_error *err = NULL;
        struct sockaddr_in address = {.sin_family = AF_INET};
        int listener_fd;

        f->base = event_base_new();
        assert_non_null(f->base);
        assert_int_equal(moat_dns_new(f->base, upstreams, &f->dns, &err), 0);
        listener_fd = bind_loopback(SOCK_DGRAM, 0, &f->listener_port);
        assert_int_equal(moat_dns_listen(f->dns, listener_fd, &hooks, f, &f->listener, &err), 0);
        f->client_fd = bind_loopback(SOCK_DGRAM, 0, NULL);
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        address.sin_port = htons(f->listener_port);
        assert_int_equal(connect(f->client_fd, (struct sockaddr *)&address, sizeof(address)), 0);
        return f;
}

static void fixture_free(struct fixture *f)
{
        moat_dns_listener_free(f->listener);
        f->freed = true;
        moat_dns_free(f->dns);
        event_base_free(f->base);
        close(f->client_fd);
        free(f);
}

static char upstream_address[32], silent_address[32], refused_address[32];

static const char *const *good_upstream(void)
{
        static const char *list[2];
        snprintf(upstream_address, sizeof(upstream_address), "127.0.0.1:%u", upstream.port);
        list[0] = upstream_address;
        return list;
}

static void on_client_readable(evutil_socket_t fd, short what, void *arg)
{
        struct fixture *f = arg;

        f->reply_length = recv(fd, f->reply, sizeof(f->reply), MSG_DONTWAIT);
        event_base_loopbreak(f->base);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
        event_base_loopbreak(arg);
}

/* Run the loop until the client gets a datagram or timeout_ms passes.
 * Returns the parsed reply, or NULL. */
static ldns_pkt *wait_reply(struct fixture *f, int timeout_ms)
{
        struct event *readable = event_new(f->base, f->client_fd, EV_READ, on_client_readable, f);
        struct event *deadline = evtimer_new(f->base, on_deadline, f->base);
        struct timeval timeout = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
        ldns_pkt *reply = NULL;

        f->reply_length = -1;
        event_add(readable, NULL);
        event_add(deadline, &timeout);
        event_base_dispatch(f->base);
        event_free(readable);
        event_free(deadline);
        if (f->reply_length > 0)
                assert_int_equal(ldns_wire2pkt(&reply, f->reply, (size_t)f->reply_length), LDNS_STATUS_OK);
        return reply;
}

static void send_raw(struct fixture *f, const void *data, size_t length)
{
        assert_int_equal(send(f->client_fd, data, length, 0), (ssize_t)length);
}

static uint8_t *query_wire(const char *name, ldns_rr_type type, uint16_t id, bool edns, size_t *ret_length)
{
        ldns_pkt *query = ldns_pkt_query_new(ldns_dname_new_frm_str(name), type, LDNS_RR_CLASS_IN, LDNS_RD);
        uint8_t *wire = NULL;

        assert_non_null(query);
        ldns_pkt_set_id(query, id);
        if (edns) {
                ldns_pkt_set_edns_udp_size(query, 4096);
                ldns_pkt_set_edns_do(query, true);
        }
        assert_int_equal(ldns_pkt2wire(&wire, query, ret_length), LDNS_STATUS_OK);
        ldns_pkt_free(query);
        return wire;
}

static ldns_pkt *ask(struct fixture *f, const char *name, ldns_rr_type type, int timeout_ms)
{
        size_t length;
        uint8_t *wire = query_wire(name, type, 0x1234, true, &length);

        send_raw(f, wire, length);
        free(wire);
        return wait_reply(f, timeout_ms);
}

static void assert_ipv4(const ldns_rr *rr, const char *expected)
{
        char text[INET_ADDRSTRLEN];

        assert_int_equal(ldns_rr_get_type(rr), LDNS_RR_TYPE_A);
        inet_ntop(AF_INET, ldns_rdf_data(ldns_rr_rdf(rr, 0)), text, sizeof(text));
        assert_string_equal(text, expected);
}

static void assert_admitted(const struct admitted *a, const char *name, int family, const char *address,
                            uint32_t ttl)
{
        char text[INET6_ADDRSTRLEN];

        assert_string_equal(a->name, name);
        assert_int_equal(a->family, family);
        inet_ntop(family, a->address, text, sizeof(text));
        assert_string_equal(text, address);
        assert_int_equal(a->ttl, ttl);
}

/* ---- tests ---- */

static void test_allowed_name(void **state)
{
        struct fixture *f = fixture_new(good_upstream());
        int before = upstream_udp_queries();
        ldns_pkt *reply = ask(f, "GoOd.TeSt.", LDNS_RR_TYPE_A, 3000);
        char *question;

        assert_non_null(reply);
        assert_int_equal(ldns_pkt_id(reply), 0x1234);
        assert_true(ldns_pkt_qr(reply));
        assert_true(ldns_pkt_ra(reply));
        assert_true(ldns_pkt_rd(reply));
        assert_false(ldns_pkt_tc(reply));
        assert_int_equal(ldns_pkt_get_rcode(reply), LDNS_RCODE_NOERROR);
        /* The client's own question, spelling included. */
        question = ldns_rdf2str(ldns_rr_owner(ldns_rr_list_rr(ldns_pkt_question(reply), 0)));
        assert_string_equal(question, "GoOd.TeSt.");
        free(question);
        /* Only the chain: no stray answer record, no authority, no glue. */
        assert_int_equal(ldns_pkt_ancount(reply), 1);
        assert_int_equal(ldns_pkt_nscount(reply), 0);
        assert_int_equal(ldns_pkt_arcount(reply), 0);
        assert_false(ldns_pkt_edns(reply));
        assert_ipv4(ldns_rr_list_rr(ldns_pkt_answer(reply), 0), "198.18.5.2");
        /* TTL 1 is clamped up to the minimum. */
        assert_int_equal(ldns_rr_ttl(ldns_rr_list_rr(ldns_pkt_answer(reply), 0)), MOAT_DNS_TTL_MIN);
        assert_int_equal(f->admit_count, 1);
        assert_admitted(&f->admits[0], "good.test", AF_INET, "198.18.5.2", MOAT_DNS_TTL_MIN);
        /* The upstream saw a fresh query: RD, no EDNS of the client's. */
        assert_int_equal(upstream_udp_queries(), before + 1);
        pthread_mutex_lock(&upstream.lock);
        assert_true(upstream.last_rd);
        assert_false(upstream.last_edns);
        pthread_mutex_unlock(&upstream.lock);
        ldns_pkt_free(reply);

        /* AAAA, TTL 7200 clamped down to the maximum. */
        reply = ask(f, "good.test.", LDNS_RR_TYPE_AAAA, 3000);
        assert_non_null(reply);
        assert_int_equal(ldns_pkt_ancount(reply), 1);
        assert_int_equal(ldns_rr_ttl(ldns_rr_list_rr(ldns_pkt_answer(reply), 0)), MOAT_DNS_TTL_MAX);
        assert_int_equal(f->admit_count, 2);
        assert_admitted(&f->admits[1], "good.test", AF_INET6, "2001:db8::5", MOAT_DNS_TTL_MAX);
        ldns_pkt_free(reply);
        fixture_free(f);
}

static void test_denied_name_never_leaves(void **state)
{
        static const char *const names[] = {
                "secret-data.evil.test.", "EVIL.test.", "denied.example.",
                /* one label "x.good" under "test": not a name under good.test */
                "x\\.good.test.",
                /* bytes a name cannot hold */
                "a\\000b.good.test.", "*.good.test.",
        };
        struct fixture *f = fixture_new(good_upstream());
        int before = upstream_udp_queries();

        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
                ldns_pkt *reply = ask(f, names[i], LDNS_RR_TYPE_A, 3000);
                assert_non_null(reply);
                assert_int_equal(ldns_pkt_get_rcode(reply), LDNS_RCODE_NXDOMAIN);
                assert_int_equal(ldns_pkt_ancount(reply), 0);
                ldns_pkt_free(reply);
        }
        assert_int_equal(upstream_udp_queries(), before);
        assert_int_equal(f->admit_count, 0);
        fixture_free(f);
}

static void test_cname_to_denied_name(void **state)
{
        struct fixture *f = fixture_new(good_upstream());
        ldns_pkt *reply = ask(f, "alias.test.", LDNS_RR_TYPE_A, 3000);

        assert_non_null(reply);
        assert_int_equal(ldns_pkt_get_rcode(reply), LDNS_RCODE_NOERROR);
        /* The CNAME itself, nothing after it. */
        assert_int_equal(ldns_pkt_ancount(reply), 1);
        assert_int_equal(ldns_rr_get_type(ldns_rr_list_rr(ldns_pkt_answer(reply), 0)), LDNS_RR_TYPE_CNAME);
        assert_int_equal(f->admit_count, 0);
        ldns_pkt_free(reply);
        fixture_free(f);
}

static void test_cname_to_allowed_name(void **state)
{
        struct fixture *f = fixture_new(good_upstream());
        ldns_pkt *reply = ask(f, "alias-ok.test.", LDNS_RR_TYPE_A, 3000);
        ldns_rr_list *answer;

        assert_non_null(reply);
        answer = ldns_pkt_answer(reply);
        assert_int_equal(ldns_rr_list_rr_count(answer), 3);
        assert_int_equal(ldns_rr_get_type(ldns_rr_list_rr(answer, 0)), LDNS_RR_TYPE_CNAME);
        assert_int_equal(ldns_rr_ttl(ldns_rr_list_rr(answer, 0)), MOAT_DNS_TTL_MIN); /* was 0 */
        assert_ipv4(ldns_rr_list_rr(answer, 1), "198.18.5.2");
        assert_int_equal(ldns_rr_get_type(ldns_rr_list_rr(answer, 2)), LDNS_RR_TYPE_TXT);
        assert_int_equal(f->admit_count, 1);
        assert_admitted(&f->admits[0], "good.test", AF_INET, "198.18.5.2", MOAT_DNS_TTL_MIN);
        ldns_pkt_free(reply);
        fixture_free(f);
}

static void test_admit_failure(void **state)
{
        struct fixture *f = fixture_new(good_upstream());
        ldns_pkt *reply;

        f->fail_admit = true;
        reply = ask(f, "good.test.", LDNS_RR_TYPE_A, 3000);
        assert_non_null(reply);
        assert_int_equal(ldns_pkt_get_rcode(reply), LDNS_RCODE_SERVFAIL);
        assert_int_equal(ldns_pkt_ancount(reply), 0);
        assert_int_equal(ldns_pkt_id(reply), 0x1234);
        ldns_pkt_free(reply);
        fixture_free(f);
}

static void test_upstream_rcodes_and_forgeries(void **state)
{
        struct fixture *f = fixture_new(good_upstream());
        ldns_pkt *reply;

        reply = ask(f, "nx.test.", LDNS_RR_TYPE_A, 3000);
        assert_non_null(reply);
        assert_int_equal(ldns_pkt_get_rcode(reply), LDNS_RCODE_NXDOMAIN);
        assert_int_equal(ldns_pkt_nscount(reply), 0); /* no SOA: authority is dropped */
        ldns_pkt_free(reply);

        reply = ask(f, "fail.test.", LDNS_RR_TYPE_A, 3000);
        assert_non_null(reply);
        assert_int_equal(ldns_pkt_get_rcode(reply), LDNS_RCODE_SERVFAIL);
        ldns_pkt_free(reply);

        /* A reply with the wrong id and one for another question are ignored. */
        reply = ask(f, "spoof.test.", LDNS_RR_TYPE_A, 3000);
        assert_non_null(reply);
        assert_int_equal(ldns_pkt_ancount(reply), 1);
        assert_ipv4(ldns_rr_list_rr(ldns_pkt_answer(reply), 0), "198.18.5.5");
        assert_int_equal(f->admit_count, 1);
        assert_admitted(&f->admits[0], "spoof.test", AF_INET, "198.18.5.5", 300);
        ldns_pkt_free(reply);
        fixture_free(f);
}

static void test_size_bound(void **state)
{
        struct fixture *f = fixture_new(good_upstream());
        ldns_pkt *reply = ask(f, "big.test.", LDNS_RR_TYPE_A, 3000);

        assert_non_null(reply);
        assert_true(f->reply_length <= MOAT_DNS_MAX_RESPONSE);
        assert_false(ldns_pkt_tc(reply));
        assert_true(ldns_pkt_ancount(reply) > 10 && ldns_pkt_ancount(reply) < 60);
        /* Admitted exactly what the sandbox was told, from the front. */
        assert_int_equal(f->admit_count, ldns_pkt_ancount(reply));
        assert_admitted(&f->admits[0], "big.test", AF_INET, "198.18.6.1", 60);
        ldns_pkt_free(reply);

        /* A single record larger than 512 bytes: nothing fits, TC. */
        reply = ask(f, "huge.test.", LDNS_RR_TYPE_TXT, 3000);
        assert_non_null(reply);
        assert_true(ldns_pkt_tc(reply));
        assert_int_equal(ldns_pkt_ancount(reply), 0);
        ldns_pkt_free(reply);
        fixture_free(f);
}

static void test_truncated_upstream_retries_over_tcp(void **state)
{
        struct fixture *f = fixture_new(good_upstream());
        int tcp_before;
        ldns_pkt *reply;

        pthread_mutex_lock(&upstream.lock);
        tcp_before = upstream.tcp_queries;
        pthread_mutex_unlock(&upstream.lock);
        reply = ask(f, "tc.test.", LDNS_RR_TYPE_A, 3000);
        assert_non_null(reply);
        assert_false(ldns_pkt_tc(reply));
        assert_int_equal(ldns_pkt_ancount(reply), 1);
        assert_ipv4(ldns_rr_list_rr(ldns_pkt_answer(reply), 0), "198.18.5.4");
        assert_int_equal(f->admit_count, 1);
        assert_admitted(&f->admits[0], "tc.test", AF_INET, "198.18.5.4", 30);
        pthread_mutex_lock(&upstream.lock);
        assert_int_equal(upstream.tcp_queries, tcp_before + 1);
        pthread_mutex_unlock(&upstream.lock);
        ldns_pkt_free(reply);
        fixture_free(f);
}

static void test_malformed_queries(void **state)
{
        struct fixture *f = fixture_new(good_upstream());
        int before = upstream_udp_queries();
        uint8_t garbage[300];
        ldns_pkt *query, *reply;
        uint8_t *wire;
        size_t length;

        /* Not DNS at all, or cut short: dropped without a word. */
        send_raw(f, "", 0);
        send_raw(f, "\x12\x34", 2);
        for (size_t i = 0; i < sizeof(garbage); i++)
                garbage[i] = (uint8_t)(i * 7 + 3);
        send_raw(f, garbage, sizeof(garbage));
        wire = query_wire("good.test.", LDNS_RR_TYPE_A, 7, false, &length);
        send_raw(f, wire, length - 3);
        /* A response: never answered (no reply loops). */
        wire[2] |= 0x80;
        send_raw(f, wire, length);
        free(wire);
        assert_null(wait_reply(f, 300));

        /* Another opcode: NOTIMP. */
        query = ldns_pkt_query_new(ldns_dname_new_frm_str("good.test."), LDNS_RR_TYPE_A, LDNS_RR_CLASS_IN, 0);
        ldns_pkt_set_opcode(query, LDNS_PACKET_STATUS);
        ldns_pkt2wire(&wire, query, &length);
        send_raw(f, wire, length);
        free(wire);
        reply = wait_reply(f, 1000);
        assert_non_null(reply);
        assert_int_equal(ldns_pkt_get_rcode(reply), LDNS_RCODE_NOTIMPL);
        ldns_pkt_free(reply);

        /* Two questions: FORMERR. */
        ldns_pkt_set_opcode(query, LDNS_PACKET_QUERY);
        ldns_pkt_push_rr(query, LDNS_SECTION_QUESTION,
                         ldns_rr_clone(ldns_rr_list_rr(ldns_pkt_question(query), 0)));
        ldns_pkt2wire(&wire, query, &length);
        send_raw(f, wire, length);
        free(wire);
        ldns_pkt_free(query);
        reply = wait_reply(f, 1000);
        assert_non_null(reply);
        assert_int_equal(ldns_pkt_get_rcode(reply), LDNS_RCODE_FORMERR);
        ldns_pkt_free(reply);

        /* Class CH: FORMERR. */
        query = ldns_pkt_query_new(ldns_dname_new_frm_str("version.bind."), LDNS_RR_TYPE_TXT, LDNS_RR_CLASS_CH, 0);
        ldns_pkt2wire(&wire, query, &length);
        send_raw(f, wire, length);
        free(wire);
        ldns_pkt_free(query);
        reply = wait_reply(f, 1000);
        assert_non_null(reply);
        assert_int_equal(ldns_pkt_get_rcode(reply), LDNS_RCODE_FORMERR);
        ldns_pkt_free(reply);

        /* Zone transfer: refused. */
        reply = ask(f, "good.test.", LDNS_RR_TYPE_AXFR, 1000);
        assert_non_null(reply);
        assert_int_equal(ldns_pkt_get_rcode(reply), LDNS_RCODE_REFUSED);
        ldns_pkt_free(reply);

        assert_int_equal(upstream_udp_queries(), before);
        /* Still serving. */
        reply = ask(f, "good.test.", LDNS_RR_TYPE_A, 3000);
        assert_non_null(reply);
        assert_int_equal(ldns_pkt_ancount(reply), 1);
        ldns_pkt_free(reply);
        fixture_free(f);
}

static void test_upstream_timeout(void **state)
{
        const char *silent_only[] = {silent_address, NULL};
        const char *fallbacks[] = {refused_address, silent_address, upstream_address, NULL};
        struct fixture *f;
        ldns_pkt *reply;
        uint16_t unused_port;
        int unused_fd;

        snprintf(silent_address, sizeof(silent_address), "127.0.0.1:%u", silent_port);
        good_upstream();
        /* A port nobody listens on: ICMP unreachable, the next upstream at once. */
        unused_fd = bind_loopback(SOCK_DGRAM, 0, &unused_port);
        close(unused_fd);
        snprintf(refused_address, sizeof(refused_address), "127.0.0.1:%u", unused_port);

        f = fixture_new(silent_only);
        reply = ask(f, "good.test.", LDNS_RR_TYPE_A, 1500);
        assert_null(reply); /* still waiting on the silent upstream */
        reply = wait_reply(f, 1500);
        assert_non_null(reply);
        assert_int_equal(ldns_pkt_get_rcode(reply), LDNS_RCODE_SERVFAIL);
        assert_int_equal(moat_dns_listener_in_flight(f->listener), 0);
        ldns_pkt_free(reply);
        fixture_free(f);

        f = fixture_new(fallbacks);
        reply = ask(f, "good.test.", LDNS_RR_TYPE_A, 3500);
        assert_non_null(reply);
        assert_int_equal(ldns_pkt_get_rcode(reply), LDNS_RCODE_NOERROR);
        assert_int_equal(ldns_pkt_ancount(reply), 1);
        ldns_pkt_free(reply);
        fixture_free(f);
}

static void on_timeout_exit(evutil_socket_t fd, short what, void *arg)
{
        event_base_loopbreak(arg);
}

static void test_in_flight_bound_and_free(void **state)
{
        const char *silent_then_good[] = {silent_address, upstream_address, NULL};
        struct fixture *f;
        ldns_pkt *reply;
        uint8_t buffer[512];
        struct event *deadline;
        struct timeval timeout = {.tv_sec = 2, .tv_usec = 500000};

        snprintf(silent_address, sizeof(silent_address), "127.0.0.1:%u", silent_port);
        good_upstream();
        f = fixture_new(silent_then_good);
        for (uint16_t id = 1; id <= MOAT_DNS_MAX_IN_FLIGHT + 1; id++) {
                size_t length;
                uint8_t *wire = query_wire("good.test.", LDNS_RR_TYPE_A, id, false, &length);
                send_raw(f, wire, length);
                free(wire);
        }
        reply = wait_reply(f, 1000);
        assert_non_null(reply);
        assert_int_equal(ldns_pkt_get_rcode(reply), LDNS_RCODE_REFUSED);
        assert_int_equal(ldns_pkt_id(reply), MOAT_DNS_MAX_IN_FLIGHT + 1);
        ldns_pkt_free(reply);
        assert_int_equal(moat_dns_listener_in_flight(f->listener), MOAT_DNS_MAX_IN_FLIGHT);

        /* Free with 64 queries in flight, then run past their timeout: no hook
         * may run (ctx is gone for the caller) and nothing reaches the client. */
        moat_dns_listener_free(f->listener);
        f->listener = NULL;
        f->freed = true;
        deadline = evtimer_new(f->base, on_timeout_exit, f->base);
        event_add(deadline, &timeout);
        event_base_dispatch(f->base);
        event_free(deadline);
        assert_int_equal(f->hook_calls_after_free, 0);
        assert_int_equal(f->admit_count, 0);
        assert_true(recv(f->client_fd, buffer, sizeof(buffer), MSG_DONTWAIT) < 0);
        fixture_free(f);
}

static void test_upstream_configuration(void **state)
{
        static const char *const good[] = {"1.2.3.4", "1.2.3.4:5353", "::1", "[::1]:5353", NULL};
        static const char *const bad[] = {"1.2.3.4:0", "1.2.3.4:99999", "[::1", "[::1]x", "example.com",
                                          "1.2.3.4:", "1.2.3.4:+53", "", "[]:53"};
        struct event_base *base = event_base_new();
        struct moat_error *err = NULL;
        struct moat_dns *dns = NULL;

        assert_int_equal(moat_dns_new(base, good, &dns, &err), 0);
        moat_dns_free(dns);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                const char *list[] = {bad[i], NULL};
                dns = NULL;
                assert_int_equal(moat_dns_new(base, list, &dns, &err), -1);
                assert_null(dns);
                assert_non_null(err);
                assert_string_equal(err->code, "invalid_argument");
                moat_error_free(err);
                err = NULL;
        }
        /* Nothing given: /etc/resolv.conf, which names at least one here, or an error. */
        if (moat_dns_new(base, NULL, &dns, &err) == 0) {
                moat_dns_free(dns);
        } else {
                assert_string_equal(err->code, "no_dns_upstream");
                moat_error_free(err);
        }
        event_base_free(base);
}

static uint32_t fuzz_state = 12345;
static uint32_t fuzz_random(void)
{
        fuzz_state ^= fuzz_state << 13;
        fuzz_state ^= fuzz_state >> 17;
        fuzz_state ^= fuzz_state << 5;
        return fuzz_state;
}

static size_t mutate(uint8_t *data, size_t length, size_t capacity)
{
        switch (fuzz_random() % 4) {
        case 0: /* flip bits */
                for (int i = 0, n = 1 + (int)(fuzz_random() % 4); i < n && length; i++)
                        data[fuzz_random() % length] ^= (uint8_t)(1u << (fuzz_random() % 8));
                return length;
        case 1: /* cut */
                return length ? fuzz_random() % length : 0;
        case 2: /* random bytes */
                length = fuzz_random() % capacity;
                for (size_t i = 0; i < length; i++)
                        data[i] = (uint8_t)fuzz_random();
                return length;
        default: /* overwrite a byte with an interesting value */
                if (length)
                        data[fuzz_random() % length] = (uint8_t[]){0, 0xff, 0xc0, 0x3f, 1}[fuzz_random() % 5];
                return length;
        }
}

static void test_fuzz(void **state)
{
        static const char *const names[] = {"good.test.", "alias.test.", "alias-ok.test.", "big.test.", "evil.test.",
                                            "tc.test."};
        const char *silent_only[] = {silent_address, NULL};
        const char *iterations_text = getenv("MOAT_DNS_FUZZ_ITERATIONS");
        long iterations = iterations_text ? atol(iterations_text) : 100000;
        struct sockaddr_in sink = {.sin_family = AF_INET};
        uint16_t sink_port;
        int sink_fd = bind_loopback(SOCK_DGRAM, 0, &sink_port);
        struct fixture *f;

        snprintf(silent_address, sizeof(silent_address), "127.0.0.1:%u", silent_port);
        f = fixture_new(silent_only);
        sink.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sink.sin_port = htons(sink_port);
        for (long i = 0; i < iterations; i++) {
                uint8_t data[600], out[MOAT_DNS_MAX_RESPONSE];
                size_t length;
                uint8_t *wire = query_wire(names[i % 6], (ldns_rr_type)(i % 2 ? LDNS_RR_TYPE_A : LDNS_RR_TYPE_AAAA),
                                           (uint16_t)i, i % 3 == 0, &length);

                memcpy(data, wire, length);
                free(wire);
                length = mutate(data, length, sizeof(data));
                f->allow_everything = i % 2;
                moat_dns_handle_query_for_test(f->listener, data, length, (struct sockaddr *)&sink, sizeof(sink));
                assert_true(moat_dns_listener_in_flight(f->listener) <= MOAT_DNS_MAX_IN_FLIGHT);

                /* The reply path: mutated upstream answers for a fixed question. */
                if (i % 2 == 0) {
                        static const char *const reply_names[] = {"good.test.", "alias.test.", "alias-ok.test.",
                                                                  "big.test."};
                        uint8_t *query = query_wire(reply_names[(i / 2) % 4], LDNS_RR_TYPE_A, 99, false, &length);
                        ldns_pkt *query_packet = NULL, *reply;
                        uint8_t *reply_wire = NULL;
                        size_t reply_length = 0;
                        int answer_length;

                        ldns_wire2pkt(&query_packet, query, length);
                        reply = zone_answer(query_packet, true);
                        ldns_pkt2wire(&reply_wire, reply, &reply_length);
                        if (reply_length <= sizeof(data)) {
                                memcpy(data, reply_wire, reply_length);
                                reply_length = mutate(data, reply_length, sizeof(data));
                                answer_length = moat_dns_answer_for_test(f->listener, query, length, data,
                                                                         reply_length, out);
                                assert_true(answer_length <= MOAT_DNS_MAX_RESPONSE);
                        }
                        free(reply_wire);
                        ldns_pkt_free(reply);
                        ldns_pkt_free(query_packet);
                        free(query);
                }
                if (i % 1000 == 0)
                        event_base_loop(f->base, EVLOOP_NONBLOCK);
        }
        /* The CNAME defence holds under fuzzing too: evil.test never admitted. */
        assert_false(f->admitted_evil);
        fixture_free(f);
        close(sink_fd);
}

int main(void)
{
        /* ldns's *2wire and *2str helpers allocate 64 KiB per call; without
         * this, glibc grows and trims the heap on each, and the fuzz loop
         * spends its time in brk(). */
        mallopt(M_TRIM_THRESHOLD, 16 << 20);
        mallopt(M_TOP_PAD, 1 << 20);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_allowed_name),
                cmocka_unit_test(test_denied_name_never_leaves),
                cmocka_unit_test(test_cname_to_denied_name),
                cmocka_unit_test(test_cname_to_allowed_name),
                cmocka_unit_test(test_admit_failure),
                cmocka_unit_test(test_upstream_rcodes_and_forgeries),
                cmocka_unit_test(test_size_bound),
                cmocka_unit_test(test_truncated_upstream_retries_over_tcp),
                cmocka_unit_test(test_malformed_queries),
                cmocka_unit_test(test_upstream_timeout),
                cmocka_unit_test(test_in_flight_bound_and_free),
                cmocka_unit_test(test_upstream_configuration),
                cmocka_unit_test(test_fuzz),
        };
        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
