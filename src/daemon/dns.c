/* The per-sandbox DNS resolver: see dns.h for what it defends against.
 *
 * One query's life: a datagram arrives on a listener's socket; it is parsed
 * (ldns) and checked (standard query, one IN question, a plain host name the
 * sandbox may resolve); a fresh query with a random id goes to the first
 * upstream on a fresh connect()ed UDP socket; a reply that matches is turned
 * into a brand-new answer holding only the records on the chain of allowed
 * names, every address in it admitted through the hook, then sent. A timeout
 * or a broken upstream moves on to the next one; a truncated reply is asked
 * again over TCP; after the last upstream the client gets SERVFAIL.
 *
 * Ownership: a listener owns its socket and its queries; a query owns its
 * packets, its upstream socket and its events. A query is freed as soon as it
 * is answered, possibly from inside one of its own event callbacks, which
 * libevent allows in a single-threaded base (event_free of the running event);
 * nothing touches the query after that. */
#include "dns.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/event.h>
#include <ldns/ldns.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/cleanup.h"

/* Client queries are small (a name of at most 255 bytes plus an EDNS
 * record); anything larger is not a query we serve. */
#define MOAT_DNS_MAX_QUERY 4096
/* Datagrams read per wake-up of a listener, so one busy sandbox cannot starve
 * the rest of the loop. */
#define MOAT_DNS_READS_PER_WAKE 32
#define MOAT_DNS_TCP_MAX (2 + 65535)

struct moat_dns_upstream {
        struct sockaddr_storage address;
        socklen_t address_length;
};

struct moat_dns {
        struct event_base *base;
        struct moat_dns_upstream upstreams[MOAT_DNS_MAX_UPSTREAMS];
        size_t upstream_count;
};

struct moat_dns_query;

struct moat_dns_listener {
        struct moat_dns *dns;
        int fd;
        struct event *read_event;
        struct moat_dns_hooks hooks;
        void *ctx;
        struct moat_dns_query *queries; /* in flight, doubly linked */
        size_t in_flight;
};

struct moat_dns_query {
        struct moat_dns_listener *listener;
        struct moat_dns_query *previous, *next;
        struct sockaddr_storage client;
        socklen_t client_length;
        ldns_pkt *client_query;   /* its id, RD bit and question go into the answer */
        ldns_pkt *upstream_query; /* what goes upstream: fresh id, RD, same question */
        uint8_t *upstream_wire;   /* upstream_query in wire format, for the current attempt */
        size_t upstream_wire_length;
        size_t upstream_index;
        int fd; /* the current attempt's socket */
        struct event *io_event;
        struct event *timer;
        /* TCP retry after a truncated reply: length-prefixed query and reply. */
        bool tcp;
        uint8_t *tcp_buffer;
        size_t tcp_sent, tcp_received;
};

/* ---- names ---- */

/* The name as the hooks see it: lower case, no trailing dot. NULL unless
 * every label is made of letters, digits, '-' and '_': a label holding a dot
 * or other bytes would print as an escape ("a\.b") that an allow-list suffix
 * match could misread (defends against "x\.allowed.example" passing as a
 * name under allowed.example while it really lives under "example"). */
static char *dns_name_normalize(const ldns_rdf *dname)
{
        _cleanup_free_ char *text = NULL;
        ldns_buffer *buffer;
        ldns_rdf *copy;
        size_t length;

        if (!dname || ldns_rdf_get_type(dname) != LDNS_RDF_TYPE_DNAME)
                return NULL;
        copy = ldns_rdf_clone(dname);
        if (!copy)
                return NULL;
        ldns_dname2canonical(copy);
        /* Not ldns_rdf2str: it allocates 64 KiB per name. */
        buffer = ldns_buffer_new(LDNS_MAX_DOMAINLEN * 4 + 2);
        if (buffer && ldns_rdf2buffer_str_dname(buffer, copy) == LDNS_STATUS_OK)
                text = ldns_buffer_export2str(buffer);
        ldns_buffer_free(buffer);
        ldns_rdf_deep_free(copy);
        if (!text)
                return NULL;
        length = strlen(text);
        if (length > 0 && text[length - 1] == '.')
                text[--length] = '\0';
        if (length == 0 || length > 253)
                return NULL; /* the root or nonsense: nothing a sandbox needs */
        for (size_t i = 0; i < length; i++) {
                char c = text[i];
                if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
                        return NULL;
                if (c == '.' && (i == 0 || text[i - 1] == '.'))
                        return NULL;
        }
        return TAKE_PTR(text);
}

static uint32_t dns_ttl_clamp(uint32_t ttl)
{
        if (ttl < MOAT_DNS_TTL_MIN)
                return MOAT_DNS_TTL_MIN;
        if (ttl > MOAT_DNS_TTL_MAX)
                return MOAT_DNS_TTL_MAX;
        return ttl;
}

/* ---- answers ---- */

/* The client's question as a single RR, or NULL when it does not have exactly one. */
static ldns_rr *dns_single_question(const ldns_pkt *pkt)
{
        ldns_rr_list *question = ldns_pkt_question(pkt);

        if (!question || ldns_rr_list_rr_count(question) != 1)
                return NULL;
        return ldns_rr_list_rr(question, 0);
}

/* A new answer header for client_query: its id and RD bit, its question when it
 * has exactly one, RA set. */
static ldns_pkt *dns_answer_new(const ldns_pkt *client_query, ldns_pkt_rcode rcode)
{
        ldns_pkt *answer = ldns_pkt_new();
        ldns_rr *question = dns_single_question(client_query);

        if (!answer)
                return NULL;
        ldns_pkt_set_id(answer, ldns_pkt_id(client_query));
        ldns_pkt_set_qr(answer, true);
        ldns_pkt_set_opcode(answer, ldns_pkt_get_opcode(client_query));
        ldns_pkt_set_rd(answer, ldns_pkt_rd(client_query));
        ldns_pkt_set_ra(answer, true);
        ldns_pkt_set_rcode(answer, rcode);
        if (question) {
                ldns_rr *copy = ldns_rr_clone(question);
                if (!copy || !ldns_pkt_push_rr(answer, LDNS_SECTION_QUESTION, copy)) {
                        ldns_rr_free(copy);
                        ldns_pkt_free(answer);
                        return NULL;
                }
        }
        return answer;
}

/* Serialize into out (MOAT_DNS_MAX_RESPONSE bytes; NULL: only measure).
 * Returns the length, or -1 when it does not fit. A small growable buffer
 * rather than ldns_pkt2wire, which allocates 64 KiB per call: answers are
 * serialized once per record while the size bound is found. */
static int dns_answer_serialize(const ldns_pkt *answer, uint8_t *out)
{
        ldns_buffer *buffer = ldns_buffer_new(MOAT_DNS_MAX_RESPONSE);
        int length = -1;

        if (!buffer)
                return -1;
        if (ldns_pkt2buffer_wire(buffer, answer) == LDNS_STATUS_OK && ldns_buffer_status_ok(buffer) &&
            ldns_buffer_position(buffer) <= MOAT_DNS_MAX_RESPONSE) {
                length = (int)ldns_buffer_position(buffer);
                if (out)
                        memcpy(out, ldns_buffer_begin(buffer), (size_t)length);
        }
        ldns_buffer_free(buffer);
        return length;
}

static int dns_error_answer(const ldns_pkt *client_query, ldns_pkt_rcode rcode, uint8_t *out)
{
        ldns_pkt *answer = dns_answer_new(client_query, rcode);
        int length;

        if (!answer)
                return -1;
        length = dns_answer_serialize(answer, out);
        ldns_pkt_free(answer);
        return length;
}

static bool dns_rr_is_address(const ldns_rr *rr, int *ret_family, const uint8_t **ret_address)
{
        ldns_rdf *rdata;

        if (ldns_rr_rd_count(rr) != 1)
                return false;
        rdata = ldns_rr_rdf(rr, 0);
        if (ldns_rr_get_type(rr) == LDNS_RR_TYPE_A && ldns_rdf_size(rdata) == 4) {
                *ret_family = AF_INET;
        } else if (ldns_rr_get_type(rr) == LDNS_RR_TYPE_AAAA && ldns_rdf_size(rdata) == 16) {
                *ret_family = AF_INET6;
        } else {
                return false;
        }
        *ret_address = ldns_rdf_data(rdata);
        return true;
}

/* The records of reply's answer section the sandbox may see, in chain order:
 * those owned by the question name, then, while a CNAME points to a name the
 * sandbox may resolve, those owned by its target. A CNAME to any other name is
 * kept but ends the chain: its target's records (whose addresses the sandbox
 * could otherwise connect to) are dropped. */
static ldns_rr_list *dns_chain_records(struct moat_dns_listener *listener, const ldns_rdf *qname,
                                       const ldns_pkt *reply)
{
        ldns_rr_list *records = ldns_pkt_answer(reply);
        ldns_rr_list *kept = ldns_rr_list_new();
        const ldns_rdf *chain[MOAT_DNS_MAX_CHAIN + 1];
        size_t chain_length = 0;

        if (!kept)
                return NULL;
        chain[chain_length++] = qname;
        for (;;) {
                const ldns_rdf *current = chain[chain_length - 1];
                const ldns_rdf *target = NULL;
                _cleanup_free_ char *target_name = NULL;
                bool loop = false;

                for (size_t i = 0; records && i < ldns_rr_list_rr_count(records); i++) {
                        ldns_rr *rr = ldns_rr_list_rr(records, i);
                        ldns_rr_type type = ldns_rr_get_type(rr);
                        ldns_rr *copy;

                        if (ldns_rr_get_class(rr) != LDNS_RR_CLASS_IN)
                                continue;
                        /* Pseudo-records have no business in an answer. */
                        if (type == LDNS_RR_TYPE_OPT || type == LDNS_RR_TYPE_TSIG)
                                continue;
                        if (ldns_dname_compare(ldns_rr_owner(rr), current) != 0)
                                continue;
                        if (type == LDNS_RR_TYPE_CNAME) {
                                /* A name has one CNAME; a second one could fork the chain. */
                                if (target || ldns_rr_rd_count(rr) != 1)
                                        continue;
                                target = ldns_rr_rdf(rr, 0);
                                if (ldns_rdf_get_type(target) != LDNS_RDF_TYPE_DNAME) {
                                        target = NULL;
                                        continue;
                                }
                        }
                        copy = ldns_rr_clone(rr);
                        if (!copy || !ldns_rr_list_push_rr(kept, copy)) {
                                ldns_rr_free(copy);
                                ldns_rr_list_deep_free(kept);
                                return NULL;
                        }
                }
                if (!target || chain_length == MOAT_DNS_MAX_CHAIN + 1)
                        break;
                for (size_t i = 0; i < chain_length; i++)
                        if (ldns_dname_compare(chain[i], target) == 0)
                                loop = true;
                if (loop)
                        break;
                /* The defence against CNAME tricks: follow only to allowed names. */
                target_name = dns_name_normalize(target);
                if (!target_name || !listener->hooks.name_allowed(listener->ctx, target_name))
                        break;
                chain[chain_length++] = target;
        }
        return kept;
}

/* The answer to client_query from an upstream reply (NULL: SERVFAIL), into out.
 * Decides the records kept (chain, size bound) first, then admits their
 * addresses, then serializes, so no address is admitted that the sandbox is
 * not told and none is told that was not admitted. Returns the length or -1. */
static int dns_build_answer(struct moat_dns_listener *listener, const ldns_pkt *client_query,
                            const ldns_pkt *reply, uint8_t *out)
{
        ldns_rr *question = dns_single_question(client_query);
        ldns_pkt_rcode rcode;
        ldns_rr_list *kept, *answer_records;
        ldns_pkt *answer;
        int length;

        if (!question)
                return -1;
        if (!reply)
                return dns_error_answer(client_query, LDNS_RCODE_SERVFAIL, out);
        rcode = ldns_pkt_get_rcode(reply);
        if (rcode != LDNS_RCODE_NOERROR && rcode != LDNS_RCODE_NXDOMAIN)
                return dns_error_answer(client_query, LDNS_RCODE_SERVFAIL, out);

        kept = dns_chain_records(listener, ldns_rr_owner(question), reply);
        if (!kept)
                return dns_error_answer(client_query, LDNS_RCODE_SERVFAIL, out);
        answer = dns_answer_new(client_query, rcode);
        if (!answer) {
                ldns_rr_list_deep_free(kept);
                return -1;
        }
        /* Plain DNS over UDP: at most 512 bytes. Records are dropped from the
         * end; TC only when not even the first one fits. */
        for (size_t i = 0; i < ldns_rr_list_rr_count(kept); i++) {
                ldns_rr *rr = ldns_rr_clone(ldns_rr_list_rr(kept, i));

                if (!rr || !ldns_pkt_push_rr(answer, LDNS_SECTION_ANSWER, rr)) {
                        ldns_rr_free(rr);
                        break;
                }
                ldns_rr_set_ttl(rr, dns_ttl_clamp(ldns_rr_ttl(rr)));
                if (dns_answer_serialize(answer, NULL) < 0) {
                        ldns_rr_free(ldns_rr_list_pop_rr(ldns_pkt_answer(answer)));
                        ldns_pkt_set_ancount(answer, ldns_pkt_ancount(answer) - 1);
                        if (i == 0)
                                ldns_pkt_set_tc(answer, true);
                        break;
                }
        }
        ldns_rr_list_deep_free(kept);

        /* Admit every address the sandbox is about to be told, before telling it:
         * the firewall must already let the connect that follows through. */
        answer_records = ldns_pkt_answer(answer);
        for (size_t i = 0; answer_records && i < ldns_rr_list_rr_count(answer_records); i++) {
                ldns_rr *rr = ldns_rr_list_rr(answer_records, i);
                _cleanup_free_ char *owner = NULL;
                const uint8_t *address;
                int family;

                if (!dns_rr_is_address(rr, &family, &address))
                        continue;
                owner = dns_name_normalize(ldns_rr_owner(rr));
                if (!owner ||
                    listener->hooks.admit(listener->ctx, owner, family, address, ldns_rr_ttl(rr)) < 0) {
                        ldns_pkt_free(answer);
                        return dns_error_answer(client_query, LDNS_RCODE_SERVFAIL, out);
                }
        }
        length = dns_answer_serialize(answer, out);
        ldns_pkt_free(answer);
        return length;
}

/* Is reply the answer to sent? Same id, a response, same single question. */
static bool dns_reply_matches(const ldns_pkt *reply, const ldns_pkt *sent, bool check_id)
{
        ldns_rr *asked = dns_single_question(sent), *answered = dns_single_question(reply);

        if (check_id && ldns_pkt_id(reply) != ldns_pkt_id(sent))
                return false;
        if (!ldns_pkt_qr(reply) || ldns_pkt_get_opcode(reply) != LDNS_PACKET_QUERY)
                return false;
        if (!asked || !answered)
                return false;
        return ldns_rr_get_type(asked) == ldns_rr_get_type(answered) &&
               ldns_rr_get_class(asked) == ldns_rr_get_class(answered) &&
               ldns_dname_compare(ldns_rr_owner(asked), ldns_rr_owner(answered)) == 0;
}

/* ---- queries ---- */

static void dns_send_to_client(struct moat_dns_listener *listener, const struct sockaddr *client,
                               socklen_t client_length, const uint8_t *data, int length)
{
        if (length <= 0)
                return;
        /* Best effort, as UDP is: a full socket buffer drops the answer and the
         * client retries. Never block the loop on one sandbox. */
        (void)sendto(listener->fd, data, (size_t)length, MSG_DONTWAIT | MSG_NOSIGNAL, client, client_length);
}

static void dns_query_close_attempt(struct moat_dns_query *query)
{
        if (query->io_event) {
                event_free(query->io_event);
                query->io_event = NULL;
        }
        if (query->timer)
                event_del(query->timer);
        if (query->fd >= 0) {
                close(query->fd);
                query->fd = -1;
        }
        free(query->tcp_buffer);
        query->tcp_buffer = NULL;
        free(query->upstream_wire);
        query->upstream_wire = NULL;
        query->tcp = false;
        query->tcp_sent = query->tcp_received = 0;
}

static void dns_query_free(struct moat_dns_query *query)
{
        struct moat_dns_listener *listener;

        if (!query)
                return;
        listener = query->listener;
        dns_query_close_attempt(query);
        if (query->timer)
                event_free(query->timer);
        if (query->previous)
                query->previous->next = query->next;
        else if (listener->queries == query)
                listener->queries = query->next;
        if (query->next)
                query->next->previous = query->previous;
        listener->in_flight--;
        ldns_pkt_free(query->client_query);
        ldns_pkt_free(query->upstream_query);
        free(query);
}

/* Answer the client (reply NULL: SERVFAIL) and free the query. */
static void dns_query_finish(struct moat_dns_query *query, const ldns_pkt *reply)
{
        struct moat_dns_listener *listener = query->listener;
        uint8_t out[MOAT_DNS_MAX_RESPONSE];
        int length;

        length = dns_build_answer(listener, query->client_query, reply, out);
        dns_send_to_client(listener, (const struct sockaddr *)&query->client, query->client_length, out, length);
        dns_query_free(query);
}

static void dns_query_try_upstream(struct moat_dns_query *query);
static void dns_query_start_tcp(struct moat_dns_query *query);

static void dns_query_next_upstream(struct moat_dns_query *query)
{
        dns_query_close_attempt(query);
        query->upstream_index++;
        dns_query_try_upstream(query);
}

static void dns_query_on_timeout(evutil_socket_t fd, short what, void *arg)
{
        dns_query_next_upstream(arg);
}

/* A reply from the current upstream, over UDP or TCP. Returns true when it
 * ended the attempt (the query may be freed), false when it was ignored. */
static bool dns_query_on_reply(struct moat_dns_query *query, const uint8_t *data, size_t length)
{
        ldns_pkt *reply = NULL;

        if (ldns_wire2pkt(&reply, data, length) != LDNS_STATUS_OK) {
                /* A truncated UDP reply may be cut mid-record, which ldns rightly
                 * refuses to parse; its header still says "ask over TCP". */
                if (!query->tcp && length >= LDNS_HEADER_SIZE && LDNS_QR_WIRE(data) && LDNS_TC_WIRE(data) &&
                    LDNS_ID_WIRE(data) == ldns_pkt_id(query->upstream_query)) {
                        dns_query_start_tcp(query);
                        return true;
                }
                return false;
        }
        /* Defends against stray or forged datagrams: only the answer to the
         * question we asked, under the id we chose, is believed. */
        if (!dns_reply_matches(reply, query->upstream_query, true)) {
                ldns_pkt_free(reply);
                return false;
        }
        if (ldns_pkt_tc(reply) && !query->tcp) {
                ldns_pkt_free(reply);
                dns_query_start_tcp(query);
                return true;
        }
        dns_query_finish(query, reply);
        ldns_pkt_free(reply);
        return true;
}

static void dns_query_on_udp_readable(evutil_socket_t fd, short what, void *arg)
{
        struct moat_dns_query *query = arg;
        uint8_t buffer[65536];

        for (int i = 0; i < MOAT_DNS_READS_PER_WAKE; i++) {
                ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);

                if (n < 0) {
                        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                                return;
                        /* ICMP port unreachable and friends: this upstream is down. */
                        dns_query_next_upstream(query);
                        return;
                }
                if (dns_query_on_reply(query, buffer, (size_t)n))
                        return;
        }
}

static void dns_query_on_tcp_readable(evutil_socket_t fd, short what, void *arg)
{
        struct moat_dns_query *query = arg;
        size_t wanted = 2, message_length;
        ssize_t n;

        if (query->tcp_received >= 2)
                wanted = 2 + (size_t)ldns_read_uint16(query->tcp_buffer);
        n = recv(fd, query->tcp_buffer + query->tcp_received, wanted - query->tcp_received, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                return;
        if (n <= 0) {
                dns_query_next_upstream(query);
                return;
        }
        query->tcp_received += (size_t)n;
        if (query->tcp_received < 2)
                return;
        message_length = ldns_read_uint16(query->tcp_buffer);
        if (message_length < LDNS_HEADER_SIZE) {
                dns_query_next_upstream(query);
                return;
        }
        if (query->tcp_received < 2 + message_length)
                return;
        /* One message per connection: anything but the answer is a broken upstream. */
        if (!dns_query_on_reply(query, query->tcp_buffer + 2, message_length))
                dns_query_next_upstream(query);
}

static void dns_query_on_tcp_writable(evutil_socket_t fd, short what, void *arg)
{
        struct moat_dns_query *query = arg;
        struct moat_dns *dns = query->listener->dns;
        size_t total = 2 + query->upstream_wire_length;
        int socket_error = 0;
        socklen_t socket_error_length = sizeof(socket_error);
        ssize_t n;

        if (query->tcp_sent == 0 &&
            (getsockopt(fd, SOL_SOCKET, SO_ERROR, &socket_error, &socket_error_length) < 0 || socket_error)) {
                dns_query_next_upstream(query);
                return;
        }
        n = send(fd, query->tcp_buffer + query->tcp_sent, total - query->tcp_sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                return;
        if (n <= 0) {
                dns_query_next_upstream(query);
                return;
        }
        query->tcp_sent += (size_t)n;
        if (query->tcp_sent < total)
                return;
        /* Sent: from now on the same buffer receives the reply. */
        event_free(query->io_event);
        query->io_event = event_new(dns->base, fd, EV_READ | EV_PERSIST, dns_query_on_tcp_readable, query);
        if (!query->io_event || event_add(query->io_event, NULL) < 0)
                dns_query_next_upstream(query);
}

static int dns_arm_timer(struct moat_dns_query *query)
{
        struct timeval timeout = {
                .tv_sec = MOAT_DNS_UPSTREAM_TIMEOUT_MS / 1000,
                .tv_usec = (MOAT_DNS_UPSTREAM_TIMEOUT_MS % 1000) * 1000,
        };

        return event_add(query->timer, &timeout);
}

/* The upstream said "truncated": ask the same upstream, same id, over TCP. */
static void dns_query_start_tcp(struct moat_dns_query *query)
{
        struct moat_dns *dns = query->listener->dns;
        const struct moat_dns_upstream *upstream = &dns->upstreams[query->upstream_index];
        uint8_t *wire = TAKE_PTR(query->upstream_wire);
        size_t wire_length = query->upstream_wire_length;
        int fd;

        dns_query_close_attempt(query);
        query->upstream_wire = wire;
        query->tcp = true;
        query->tcp_buffer = malloc(MOAT_DNS_TCP_MAX);
        if (!query->tcp_buffer)
                goto fail;
        ldns_write_uint16(query->tcp_buffer, (uint16_t)wire_length);
        memcpy(query->tcp_buffer + 2, wire, wire_length);
        fd = socket(upstream->address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                goto fail;
        query->fd = fd;
        if (connect(fd, (const struct sockaddr *)&upstream->address, upstream->address_length) < 0 &&
            errno != EINPROGRESS)
                goto fail;
        query->io_event = event_new(dns->base, fd, EV_WRITE | EV_PERSIST, dns_query_on_tcp_writable, query);
        if (!query->io_event || event_add(query->io_event, NULL) < 0 || dns_arm_timer(query) < 0)
                goto fail;
        return;
fail:
        dns_query_next_upstream(query);
}

/* Send the query to upstream number upstream_index, or answer SERVFAIL when
 * none is left. */
static void dns_query_try_upstream(struct moat_dns_query *query)
{
        struct moat_dns *dns = query->listener->dns;

        for (; query->upstream_index < dns->upstream_count; query->upstream_index++) {
                const struct moat_dns_upstream *upstream = &dns->upstreams[query->upstream_index];
                uint16_t id;
                int fd;

                /* A fresh unpredictable id and (kernel-chosen, randomized) source
                 * port per attempt defend against off-path answer forgery. */
                if (getrandom(&id, sizeof(id), 0) != sizeof(id))
                        break;
                ldns_pkt_set_id(query->upstream_query, id);
                free(query->upstream_wire);
                query->upstream_wire = NULL;
                if (ldns_pkt2wire(&query->upstream_wire, query->upstream_query, &query->upstream_wire_length) !=
                    LDNS_STATUS_OK)
                        break;
                fd = socket(upstream->address.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (fd < 0)
                        break;
                query->fd = fd;
                /* connect(): the kernel hands us only this upstream's datagrams. */
                if (connect(fd, (const struct sockaddr *)&upstream->address, upstream->address_length) < 0 ||
                    send(fd, query->upstream_wire, query->upstream_wire_length, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
                        dns_query_close_attempt(query);
                        continue;
                }
                query->io_event = event_new(dns->base, fd, EV_READ | EV_PERSIST, dns_query_on_udp_readable, query);
                if (!query->io_event || event_add(query->io_event, NULL) < 0 || dns_arm_timer(query) < 0)
                        break;
                return;
        }
        dns_query_finish(query, NULL);
}

static int dns_query_start(struct moat_dns_listener *listener, ldns_pkt *client_query, const ldns_rr *question,
                           const struct sockaddr *from, socklen_t from_length)
{
        struct moat_dns_query *query;
        ldns_rdf *name;

        if (from_length > sizeof(query->client))
                return -1;
        query = calloc(1, sizeof(*query));
        if (!query)
                return -1;
        query->listener = listener;
        query->fd = -1;
        memcpy(&query->client, from, from_length);
        query->client_length = from_length;
        query->timer = evtimer_new(listener->dns->base, dns_query_on_timeout, query);
        name = ldns_rdf_clone(ldns_rr_owner(question));
        if (name)
                ldns_dname2canonical(name);
        /* A fresh query: nothing of the client's (EDNS options, flags, extra
         * sections) travels upstream but the question itself. */
        query->upstream_query = name ? ldns_pkt_query_new(name, ldns_rr_get_type(question), LDNS_RR_CLASS_IN, LDNS_RD)
                                     : NULL;
        if (!query->timer || !query->upstream_query) {
                if (!query->upstream_query)
                        ldns_rdf_deep_free(name);
                if (query->timer)
                        event_free(query->timer);
                ldns_pkt_free(query->upstream_query);
                free(query);
                return -1;
        }
        query->client_query = client_query;
        query->next = listener->queries;
        if (listener->queries)
                listener->queries->previous = query;
        listener->queries = query;
        listener->in_flight++;
        dns_query_try_upstream(query);
        return 0;
}

/* ---- listeners ---- */

/* What to do with a parsed client datagram. */
enum dns_triage {
        DNS_TRIAGE_DROP = -1,    /* no answer at all */
        DNS_TRIAGE_STARTED = -2, /* forwarded: the query owns the packet now */
};

/* Returns an rcode to answer with at once, or a dns_triage. */
static int dns_triage(struct moat_dns_listener *listener, ldns_pkt *query, const struct sockaddr *from,
                      socklen_t from_length)
{
        _cleanup_free_ char *name = NULL;
        ldns_rr *question;
        ldns_rr_type type;

        /* A response is never answered: answering it could start an endless
         * ping-pong with another resolver (or with ourselves via a forged source). */
        if (ldns_pkt_qr(query))
                return DNS_TRIAGE_DROP;
        if (ldns_pkt_get_opcode(query) != LDNS_PACKET_QUERY)
                return LDNS_RCODE_NOTIMPL;
        question = dns_single_question(query);
        if (!question || ldns_rr_get_class(question) != LDNS_RR_CLASS_IN)
                return LDNS_RCODE_FORMERR;
        type = ldns_rr_get_type(question);
        /* Zone transfers and pseudo-types are not lookups a sandbox needs. */
        if (type == LDNS_RR_TYPE_AXFR || type == LDNS_RR_TYPE_IXFR || type == LDNS_RR_TYPE_OPT ||
            type == LDNS_RR_TYPE_TSIG || type == LDNS_RR_TYPE_MAILA || type == LDNS_RR_TYPE_MAILB)
                return LDNS_RCODE_REFUSED;
        /* The defence against exfiltration: a name the sandbox may not resolve
         * is answered here and never leaves the host. */
        name = dns_name_normalize(ldns_rr_owner(question));
        if (!name || !listener->hooks.name_allowed(listener->ctx, name))
                return LDNS_RCODE_NXDOMAIN;
        if (listener->in_flight >= MOAT_DNS_MAX_IN_FLIGHT)
                return LDNS_RCODE_REFUSED;
        if (dns_query_start(listener, query, question, from, from_length) < 0)
                return LDNS_RCODE_SERVFAIL;
        return DNS_TRIAGE_STARTED;
}

void moat_dns_handle_query_for_test(struct moat_dns_listener *listener, const uint8_t *datagram, size_t length,
                                    const struct sockaddr *from, socklen_t from_length)
{
        uint8_t out[MOAT_DNS_MAX_RESPONSE];
        ldns_pkt *query = NULL;
        int rcode;

        /* Not even a DNS message: no answer, nothing to reflect. */
        if (length < LDNS_HEADER_SIZE || ldns_wire2pkt(&query, datagram, length) != LDNS_STATUS_OK)
                return;
        rcode = dns_triage(listener, query, from, from_length);
        if (rcode == DNS_TRIAGE_STARTED)
                return;
        if (rcode != DNS_TRIAGE_DROP)
                dns_send_to_client(listener, from, from_length, out,
                                   dns_error_answer(query, (ldns_pkt_rcode)rcode, out));
        ldns_pkt_free(query);
}

static void dns_listener_on_readable(evutil_socket_t fd, short what, void *arg)
{
        struct moat_dns_listener *listener = arg;
        uint8_t buffer[MOAT_DNS_MAX_QUERY];

        for (int i = 0; i < MOAT_DNS_READS_PER_WAKE; i++) {
                struct sockaddr_storage from;
                socklen_t from_length = sizeof(from);
                ssize_t n = recvfrom(fd, buffer, sizeof(buffer), MSG_DONTWAIT | MSG_TRUNC, (struct sockaddr *)&from,
                                     &from_length);

                if (n < 0)
                        return; /* EAGAIN, or an ICMP error from an earlier answer: nothing to do */
                if ((size_t)n > sizeof(buffer))
                        continue; /* oversized: not a query we serve */
                moat_dns_handle_query_for_test(listener, buffer, (size_t)n, (struct sockaddr *)&from, from_length);
        }
}

int moat_dns_listen(struct moat_dns *dns, int udp_fd, const struct moat_dns_hooks *hooks, void *ctx,
                    struct moat_dns_listener **ret, struct moat_error **err)
{
        _cleanup_close_ int fd = udp_fd;
        struct moat_dns_listener *listener;

        if (!dns || fd < 0 || !hooks || !hooks->name_allowed || !hooks->admit || !ret)
                return moat_error_invalid(err, "dns listen: a resolver, a socket and both hooks are required");
        listener = calloc(1, sizeof(*listener));
        if (!listener)
                return moat_error_system(err, ENOMEM, "dns listener");
        listener->dns = dns;
        listener->hooks = *hooks;
        listener->ctx = ctx;
        listener->fd = -1;
        listener->read_event = event_new(dns->base, fd, EV_READ | EV_PERSIST, dns_listener_on_readable, listener);
        if (!listener->read_event || event_add(listener->read_event, NULL) < 0) {
                if (listener->read_event)
                        event_free(listener->read_event);
                free(listener);
                return moat_error_system(err, ENOMEM, "dns listener: event");
        }
        listener->fd = TAKE_FD(fd);
        *ret = listener;
        return 0;
}

void moat_dns_listener_free(struct moat_dns_listener *listener)
{
        if (!listener)
                return;
        /* Freeing a query frees its events: no hook runs after this. */
        while (listener->queries)
                dns_query_free(listener->queries);
        event_free(listener->read_event);
        if (listener->fd >= 0)
                close(listener->fd);
        free(listener);
}

size_t moat_dns_listener_in_flight(const struct moat_dns_listener *listener)
{
        return listener->in_flight;
}

int moat_dns_answer_for_test(struct moat_dns_listener *listener, const uint8_t *query, size_t query_length,
                             const uint8_t *reply, size_t reply_length, uint8_t *out)
{
        ldns_pkt *query_packet = NULL, *reply_packet = NULL;
        int length = -1;

        if (ldns_wire2pkt(&query_packet, query, query_length) != LDNS_STATUS_OK)
                return -1;
        if (ldns_wire2pkt(&reply_packet, reply, reply_length) == LDNS_STATUS_OK &&
            dns_reply_matches(reply_packet, query_packet, false))
                length = dns_build_answer(listener, query_packet, reply_packet, out);
        ldns_pkt_free(query_packet);
        ldns_pkt_free(reply_packet);
        return length;
}

/* ---- upstreams ---- */

/* "1.2.3.4", "1.2.3.4:5353", "::1", "[::1]:5353". */
static int dns_upstream_parse(const char *text, struct moat_dns_upstream *ret, struct moat_error **err)
{
        char host[INET6_ADDRSTRLEN + 1];
        const char *port_text = NULL, *colon;
        unsigned long port = 53;
        size_t host_length;

        if (!text || strlen(text) > 64)
                return moat_error_invalid(err, "dns upstream: invalid address");
        if (text[0] == '[') {
                const char *end = strchr(text, ']');
                if (!end)
                        return moat_error_invalid(err, "dns upstream `%s`: missing ]", text);
                host_length = (size_t)(end - text - 1);
                if (end[1] == ':')
                        port_text = end + 2;
                else if (end[1] != '\0')
                        return moat_error_invalid(err, "dns upstream `%s`: junk after ]", text);
                text++;
        } else {
                colon = strchr(text, ':');
                host_length = strlen(text);
                if (colon && !strchr(colon + 1, ':')) { /* one colon: IPv4 with a port */
                        host_length = (size_t)(colon - text);
                        port_text = colon + 1;
                }
        }
        if (host_length == 0 || host_length >= sizeof(host))
                return moat_error_invalid(err, "dns upstream `%s`: invalid address", text);
        memcpy(host, text, host_length);
        host[host_length] = '\0';
        if (port_text) {
                char *end;
                if (!isdigit((unsigned char)port_text[0]))
                        return moat_error_invalid(err, "dns upstream `%s`: invalid port", text);
                errno = 0;
                port = strtoul(port_text, &end, 10);
                if (errno || *end != '\0' || port == 0 || port > 65535)
                        return moat_error_invalid(err, "dns upstream `%s`: invalid port", text);
        }
        memset(ret, 0, sizeof(*ret));
        struct sockaddr_in *v4 = (struct sockaddr_in *)&ret->address;
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ret->address;
        if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
                v4->sin_family = AF_INET;
                v4->sin_port = htons((uint16_t)port);
                ret->address_length = sizeof(*v4);
        } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
                v6->sin6_family = AF_INET6;
                v6->sin6_port = htons((uint16_t)port);
                ret->address_length = sizeof(*v6);
        } else {
                return moat_error_invalid(err, "dns upstream `%s`: not an IP address", text);
        }
        return 0;
}

/* The "nameserver" lines of /etc/resolv.conf. Entries we cannot use (a scoped
 * IPv6 address, more than MOAT_DNS_MAX_UPSTREAMS) are skipped. */
static int dns_upstreams_from_resolv_conf(struct moat_dns *dns, const char *path, struct moat_error **err)
{
        _cleanup_fclose_ FILE *file = fopen(path, "re");
        _cleanup_free_ char *line = NULL;
        size_t line_size = 0;

        if (!file)
                return moat_error_system(err, errno, "open `%s`", path);
        while (getline(&line, &line_size, file) >= 0 && dns->upstream_count < MOAT_DNS_MAX_UPSTREAMS) {
                char keyword[16], address[65];
                struct moat_error *ignored = NULL;

                if (sscanf(line, " %15s %64s", keyword, address) != 2 || strcmp(keyword, "nameserver") != 0)
                        continue;
                if (dns_upstream_parse(address, &dns->upstreams[dns->upstream_count], &ignored) == 0)
                        dns->upstream_count++;
                moat_error_free(ignored);
        }
        if (dns->upstream_count == 0)
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "no_dns_upstream",
                                      "`%s` names no usable nameserver", path);
        return 0;
}

int moat_dns_new(struct event_base *base, const char *const *upstreams, struct moat_dns **ret,
                 struct moat_error **err)
{
        _cleanup_free_ struct moat_dns *dns = NULL;

        if (!base || !ret)
                return moat_error_invalid(err, "dns: an event base is required");
        dns = calloc(1, sizeof(*dns));
        if (!dns)
                return moat_error_system(err, ENOMEM, "dns");
        dns->base = base;
        if (upstreams && upstreams[0]) {
                for (size_t i = 0; upstreams[i]; i++) {
                        if (i == MOAT_DNS_MAX_UPSTREAMS)
                                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, NULL,
                                                      "at most %d dns upstreams", MOAT_DNS_MAX_UPSTREAMS);
                        if (dns_upstream_parse(upstreams[i], &dns->upstreams[i], err) < 0)
                                return -1;
                        dns->upstream_count++;
                }
        } else if (dns_upstreams_from_resolv_conf(dns, "/etc/resolv.conf", err) < 0) {
                return -1;
        }
        *ret = TAKE_PTR(dns);
        return 0;
}

void moat_dns_free(struct moat_dns *dns)
{
        free(dns);
}
