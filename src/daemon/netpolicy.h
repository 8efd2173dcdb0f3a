/* A sandbox's network policy and exposed ports, as the API states them:
 * parsed and validated from JSON, written back as JSON, and the one place
 * that decides whether a DNS name is allowed. Pure (no daemon state), so the
 * unit tests cover every rule directly. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#define NET_POLICY_ENTRIES_MAX 256
#define NET_DOMAIN_MAX 253
#define NET_PORTS_MAX 16
#define NET_MAX_CONNECTIONS_DEFAULT 1024
#define NET_MAX_CONNECTIONS_MAX 65536
#define NET_BANDWIDTH_MBPS_MAX 100000

enum net_mode {
        NET_MODE_NONE,     /* loopback only */
        NET_MODE_ALLOW,    /* the listed CIDRs and domain names only */
        NET_MODE_INTERNET, /* public addresses through NAT; private ranges only if listed */
};

struct net_cidr {
        int family; /* AF_INET or AF_INET6 */
        uint8_t address[16];
        uint8_t prefix;
};

struct net_policy {
        enum net_mode mode;
        struct net_cidr *cidrs;
        size_t cidr_count;
        char **domains; /* lower-case, no trailing dot; "*.example.com" for a wildcard */
        size_t domain_count;
        uint32_t bandwidth_mbps;  /* each direction; 0: unlimited */
        uint32_t max_connections; /* concurrent outbound connections */
};

struct net_port {
        uint16_t port;
        bool public; /* reachable without the token */
};

/* value: the request's "network" member (an object, "none", "internet", or
 * NULL for the default: none). */
int net_policy_parse(const json_t *value, struct net_policy *ret, struct moat_error **err);
void net_policy_clear(struct net_policy *policy);
int net_policy_copy(const struct net_policy *from, struct net_policy *to);
json_t *net_policy_to_json(const struct net_policy *policy);
const char *net_mode_name(enum net_mode mode);

/* name: as asked, any case, with or without the trailing dot. "*.x.com"
 * allows every name below x.com (any depth) but not x.com itself. */
bool net_policy_name_allowed(const struct net_policy *policy, const char *name);

/* value: the request's "ports" member: [8080, {"port": 8081, "public": true}]. */
int net_ports_parse(const json_t *value, struct net_port *ports, size_t *ret_count, struct moat_error **err);

/* "10.1.0.0/16", "2001:db8::/32", "198.18.0.5" (a host). Host bits are
 * cleared. Returns false if text is not a CIDR. */
bool net_cidr_parse(const char *text, struct net_cidr *ret);
/* "10.1.0.0/16" */
void net_cidr_format(const struct net_cidr *cidr, char *buffer, size_t size);
/* Whether every address of inner is in outer (CIDR blocks either nest or are
 * disjoint, so two blocks overlap exactly when one covers the other). */
bool net_cidr_covers(const struct net_cidr *outer, const struct net_cidr *inner);
