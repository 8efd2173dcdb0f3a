/* The DNS resolver moatd runs for each networked sandbox.
 *
 * A sandbox in "allow" mode may reach only the addresses its allow list names.
 * Domain names in that list become addresses here: the sandbox's resolv.conf
 * points at a UDP socket moatd binds inside the sandbox's network namespace,
 * and every A/AAAA record the sandbox is told is first admitted (added to the
 * sandbox's nftables set for the record's TTL) through a hook.
 *
 * What it defends against:
 * - DNS exfiltration: a query for a name the sandbox may not resolve is
 *   answered NXDOMAIN here and never leaves the host, so labels of a query
 *   cannot carry data to an attacker's authoritative server.
 * - CNAME tricks: an allowed name aliased to a disallowed one yields no
 *   addresses of the disallowed name, so "allowed.example CNAME evil" cannot
 *   open the firewall to evil's addresses.
 * - Glue and extra records: the answer is rebuilt from scratch (never the
 *   upstream's bytes) with only the records on the chain of allowed names;
 *   authority and additional sections are dropped.
 * - Resource exhaustion: bounded queries in flight per sandbox, bounded
 *   time per upstream, bounded response size.
 *
 * Single-threaded: everything runs on the event_base given to moat_dns_new. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "../common/error.h"

struct event_base;

struct moat_dns;          /* daemon-wide: upstream servers */
struct moat_dns_listener; /* one per sandbox */

struct moat_dns_hooks {
        /* May this sandbox resolve NAME? name is lower-case ASCII, no trailing dot. */
        bool (*name_allowed)(void *ctx, const char *name);
        /* An A (family AF_INET, addr = 4 bytes) or AAAA (AF_INET6, 16 bytes) record the sandbox
         * is about to be told. Called BEFORE the answer is sent; returns 0, or -1 to fail the
         * query with SERVFAIL. ttl is already clamped (see below). */
        int (*admit)(void *ctx, const char *name, int family, const void *addr, uint32_t ttl);
};

#define MOAT_DNS_TTL_MIN 2 /* seconds: a TTL-0 answer is still usable for the connect that follows */
#define MOAT_DNS_TTL_MAX 3600

/* Bounds. */
#define MOAT_DNS_MAX_UPSTREAMS 8
#define MOAT_DNS_MAX_IN_FLIGHT 64          /* per listener; more get REFUSED */
#define MOAT_DNS_UPSTREAM_TIMEOUT_MS 2000  /* per upstream (and again for its TCP retry) */
#define MOAT_DNS_MAX_RESPONSE 512          /* bytes: plain DNS over UDP, no EDNS */
#define MOAT_DNS_MAX_CHAIN 8               /* CNAMEs followed from the question name */

/* upstreams: NULL-terminated array of "1.2.3.4", "1.2.3.4:5353", "::1",
 * "[::1]:5353"; NULL or empty → the nameservers in /etc/resolv.conf (error if
 * none). The upstream sockets are created in the calling thread's network
 * namespace (the host's). */
int moat_dns_new(struct event_base *base, const char *const *upstreams, struct moat_dns **ret,
                 struct moat_error **err);
/* Free the resolver. Every listener must have been freed before. NULL is fine. */
void moat_dns_free(struct moat_dns *dns);

/* Serve queries arriving on udp_fd (a bound UDP socket, usually created inside
 * a sandbox's netns; the listener owns and closes it, also on failure). hooks
 * is copied; both hooks are required. ctx is passed to the hooks and is never
 * used after moat_dns_listener_free returns. */
int moat_dns_listen(struct moat_dns *dns, int udp_fd, const struct moat_dns_hooks *hooks, void *ctx,
                    struct moat_dns_listener **ret, struct moat_error **err);
/* Cancels its in-flight queries; no hook is called after it returns. NULL is
 * fine. Must not be called from inside one of this listener's hooks. */
void moat_dns_listener_free(struct moat_dns_listener *listener);

/* Number of queries this listener is waiting on upstreams for. */
size_t moat_dns_listener_in_flight(const struct moat_dns_listener *listener);

/* For tests and fuzzing: handle one datagram as if it had arrived on the
 * listener's socket from `from` (answers are sent to `from`). */
void moat_dns_handle_query_for_test(struct moat_dns_listener *listener, const uint8_t *datagram,
                                    size_t length, const struct sockaddr *from, socklen_t from_length);

/* For tests and fuzzing: the answer the listener would send to client query
 * `query` given upstream reply `reply` (both wire format), hooks included.
 * Writes at most MOAT_DNS_MAX_RESPONSE bytes to out. Returns the length, or -1
 * when the query or the reply is not one the resolver would accept. */
int moat_dns_answer_for_test(struct moat_dns_listener *listener, const uint8_t *query, size_t query_length,
                             const uint8_t *reply, size_t reply_length, uint8_t *out);
