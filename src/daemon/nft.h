/* Egress enforcement in nftables, on the host: one table per moatd
 * ("inet <prefix>"), a static ruleset written once at start-up, and each
 * sandbox present only as elements keyed by its host-side interface name:
 * its mode, its policy generation, its allowed CIDRs and the addresses its
 * DNS answers admitted (with their TTL as the element timeout).
 *
 * Why elements and not a chain and sets per sandbox: libnftables reads the
 * whole table before each command, so with a chain per sandbox every change
 * costs time linear in the number of sandboxes (measured 10 ms at 300), while
 * an element change in a static ruleset stays at 0.15 ms. The partition of
 * the shared sets by interface name is exact: a packet's input interface is
 * set by the kernel from the veth it came through, which the sandbox cannot
 * choose.
 *
 * Thread-safe: one mutex around the libnftables context. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "common/error.h"
#include "netpolicy.h"

struct moat_nft;

struct moat_nft_options {
        const char *prefix;           /* table name; host-side interfaces are "<prefix>-<slot>" */
        const struct net_cidr *pool4; /* sandbox addresses: always blocked as destinations, NATed as sources */
        const struct net_cidr *pool6;
};

/* Replaces a table of the same name left by an earlier run (a crash) with a
 * fresh ruleset. */
int moat_nft_open(const struct moat_nft_options *options, struct moat_nft **ret, struct moat_error **err);
/* Deletes the table (every sandbox's elements with it). */
void moat_nft_close(struct moat_nft *nft);

struct moat_nft_admitted {
        int family;
        uint8_t address[16];
        time_t expires; /* CLOCK_MONOTONIC seconds */
        char *name;     /* the DNS name it was admitted for */
};

/* One sandbox's state in the table. Zero-initialise, set ifname, then apply. */
struct moat_nft_sandbox {
        char ifname[16];
        uint32_t generation;      /* 0: nothing installed */
        struct net_policy policy; /* as installed */
        struct moat_nft_admitted *admitted;
        size_t admitted_count;
};

/* Install the policy, or replace the installed one, in one transaction: no
 * packet ever sees half of either. Connections are re-checked against the new
 * policy on their next packet (the generation changes); addresses admitted by
 * DNS stay while their name is still allowed. Mode none removes everything. */
int moat_nft_sandbox_apply(struct moat_nft *nft, struct moat_nft_sandbox *sandbox, const struct net_policy *policy,
                           struct moat_error **err);
/* Allow address for ttl seconds (an answer of moatd's DNS resolver). */
int moat_nft_sandbox_admit(struct moat_nft *nft, struct moat_nft_sandbox *sandbox, const char *name, int family,
                           const void *address, uint32_t ttl, struct moat_error **err);
/* Remove every element of the sandbox; frees its state. */
void moat_nft_sandbox_remove(struct moat_nft *nft, struct moat_nft_sandbox *sandbox);
