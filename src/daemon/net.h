/* A sandbox's network, end to end: its namespace, its veth and addresses,
 * its nftables elements, the DNS resolver that admits names, its exposed
 * ports. The pieces live in netns.c, netlink.c, nft.c, dns.c and tunnel.c;
 * this file decides when each is made and unmade.
 *
 * Threads: moat_net_sandbox_create() and moat_net_sandbox_destroy() run on
 * workers (they block for a millisecond or two); start, stop, set_policy,
 * counters and tunnels_json run on the event loop. */
#pragma once
#include <event2/event.h>
#include <jansson.h>
#include <stdint.h>

#include "common/error.h"
#include "netpolicy.h"

struct moat_net;
struct moat_net_sandbox;

struct moat_net_options {
        struct event_base *base;
        const char *prefix;                /* nft table and host-side interface names; <= 8 chars */
        const char *pool4, *pool6;         /* CIDRs sandbox addresses come from */
        const char *const *dns_upstreams;  /* NULL: /etc/resolv.conf */
        const char *tunnel_address;        /* host address exposed ports listen on */
};

#define MOAT_NET_PREFIX_DEFAULT "moat"
#define MOAT_NET_POOL4_DEFAULT "10.89.0.0/16"
#define MOAT_NET_POOL6_DEFAULT "fd6d:6f61:7400::/48"
#define MOAT_NET_TUNNEL_ADDRESS_DEFAULT "127.0.0.1"

/* Start-up: removes what a crashed moatd with the same prefix left (veths,
 * the nft table) and installs a fresh ruleset. */
int moat_net_init(const struct moat_net_options *options, struct moat_net **ret, struct moat_error **err);
void moat_net_free(struct moat_net *net);

/* Worker: the namespace, and for modes with a network the veth, addresses,
 * routes and nft elements. */
int moat_net_sandbox_create(struct moat_net *net, const struct net_policy *policy,
                            struct moat_net_sandbox **ret, struct moat_error **err);
int moat_net_sandbox_netns_fd(const struct moat_net_sandbox *sandbox);
/* Loop: the DNS resolver (modes with a network) and the exposed ports. */
int moat_net_sandbox_start(struct moat_net_sandbox *sandbox, const struct net_port *ports, size_t port_count,
                           struct moat_error **err);
/* Loop: stop serving DNS and the ports. Idempotent. */
void moat_net_sandbox_stop(struct moat_net_sandbox *sandbox);
/* Worker: nft elements, veth, namespace. Frees the sandbox. */
void moat_net_sandbox_destroy(struct moat_net_sandbox *sandbox);

/* Loop: replace the live policy atomically (see nft.h). */
int moat_net_sandbox_set_policy(struct moat_net_sandbox *sandbox, const struct net_policy *policy,
                                struct moat_error **err);
const struct net_policy *moat_net_sandbox_policy(const struct moat_net_sandbox *sandbox);

struct moat_net_counters {
        uint64_t rx_bytes, tx_bytes;               /* through the veth, as the sandbox sees it */
        uint64_t tunnel_rx_bytes, tunnel_tx_bytes; /* into / out of the sandbox through exposed ports */
};
void moat_net_sandbox_counters(struct moat_net_sandbox *sandbox, struct moat_net_counters *counters);
/* [{"port", "host_port", "url", "public", "token"}] */
json_t *moat_net_sandbox_tunnels_json(const struct moat_net_sandbox *sandbox);
