/* Network namespaces that moatd makes and holds for its sandboxes.
 *
 * moatd, not the sandbox, creates each sandbox's network namespace, so the
 * namespace is owned by the host's user namespace: root inside the sandbox
 * has no CAP_NET_ADMIN over its own network. It cannot change its addresses,
 * routes or sysctls, and the in-namespace netfilter code (a steady source of
 * kernel privilege escalations reachable from unprivileged user namespaces)
 * is out of its reach. moatd keeps an fd to the namespace: through it, it
 * opens sockets inside the sandbox's network (exposed ports, the DNS
 * resolver) without any address on the host side.
 *
 * setns(CLONE_NEWNET) applies to the calling thread only, so every function
 * here enters the namespace on the calling thread and returns to the host's
 * before it returns. */
#pragma once
#include <stddef.h>

#include "../common/error.h"

/* Remember the host's network namespace (the thread's at start-up). Call once
 * on the main thread before any other function here. */
int moat_netns_init(struct moat_error **err);

/* A new network namespace with its loopback up, ICMP echo sockets allowed for
 * every group and every port bindable without privilege (as on a host where
 * the sandbox's root were root). Returns an O_CLOEXEC fd to it. */
int moat_netns_create(struct moat_error **err);

/* socket(domain, type, protocol) created inside the namespace netns_fd: the
 * socket stays bound to that namespace for its whole life. Returns the fd, or
 * -errno. */
int moat_netns_socket(int netns_fd, int domain, int type, int protocol);

/* Enter netns_fd on this thread / return to the host's. For callers that must
 * do several things inside (netlink set-up of a sandbox's interfaces). */
int moat_netns_enter(int netns_fd, struct moat_error **err);
void moat_netns_leave(void);
