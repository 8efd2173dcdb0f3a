/* Network interfaces through rtnetlink (libmnl): the veth pair that joins a
 * sandbox's namespace to the host, its addresses and routes, its byte
 * counters, and the sweep of pairs a crashed moatd left. No `ip` is spawned.
 *
 * Each function acts in the network namespace of the calling thread (see
 * netns.h to enter a sandbox's). */
#pragma once
#include <stdint.h>

#include "common/error.h"

/* A veth pair: host_name here, peer_name inside the namespace peer_netns_fd. */
int moat_link_veth_create(const char *host_name, const char *peer_name, int peer_netns_fd, struct moat_error **err);

/* Put address/prefix (family AF_INET or AF_INET6) on the interface. IPv6
 * addresses skip duplicate address detection: the link has two ends, both
 * ours. */
int moat_link_address_add(const char *name, int family, const void *address, unsigned prefix,
                          struct moat_error **err);
int moat_link_up(const char *name, struct moat_error **err);
/* A default route through gateway on the interface. */
int moat_link_default_route(const char *name, int family, const void *gateway, struct moat_error **err);
int moat_link_delete(const char *name, struct moat_error **err);

/* Bytes received and sent by the interface. */
int moat_link_bytes(const char *name, uint64_t *rx, uint64_t *tx, struct moat_error **err);

/* Delete every interface whose name starts with prefix. Returns how many. */
int moat_link_sweep(const char *prefix, struct moat_error **err);
