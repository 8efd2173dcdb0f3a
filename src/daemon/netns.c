#include "netns.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <unistd.h>

#include "../common/cleanup.h"

static int host_netns_fd = -1;

int moat_netns_init(struct moat_error **err)
{
        if (host_netns_fd >= 0)
                return 0;
        host_netns_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (host_netns_fd < 0)
                return moat_error_system(err, errno, "open /proc/thread-self/ns/net");
        return 0;
}

void moat_netns_leave(void)
{
        /* Failing to return would leave this thread's later sockets, links
         * and sysctls inside a sandbox's network: never carry on from that. */
        if (setns(host_netns_fd, CLONE_NEWNET) < 0) {
                fprintf(stderr, "moatd: cannot return to the host network namespace: %s\n", strerror(errno));
                abort();
        }
}

int moat_netns_enter(int netns_fd, struct moat_error **err)
{
        if (host_netns_fd < 0)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "moat_netns_init was not called");
        if (setns(netns_fd, CLONE_NEWNET) < 0)
                return moat_error_system(err, errno, "setns(CLONE_NEWNET)");
        return 0;
}

int moat_netns_socket(int netns_fd, int domain, int type, int protocol)
{
        int fd, saved;

        if (host_netns_fd < 0)
                return -EINVAL;
        if (setns(netns_fd, CLONE_NEWNET) < 0)
                return -errno;
        fd = socket(domain, type, protocol);
        saved = errno;
        moat_netns_leave();
        return fd < 0 ? -saved : fd;
}

/* Write a sysctl of the namespace this thread is in: /proc/sys/net resolves
 * against the opener's network namespace. */
static int write_sysctl(const char *path, const char *value, struct moat_error **err)
{
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
        size_t length = strlen(value);

        if (fd < 0)
                return moat_error_system(err, errno, "open %s", path);
        if (write(fd, value, length) != (ssize_t)length)
                return moat_error_system(err, errno, "write %s", path);
        return 0;
}

static int loopback_up(struct moat_error **err)
{
        struct ifreq request;
        _cleanup_close_ int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

        if (fd < 0)
                return moat_error_system(err, errno, "socket");
        memset(&request, 0, sizeof(request));
        memcpy(request.ifr_name, "lo", 3);
        if (ioctl(fd, SIOCGIFFLAGS, &request) < 0)
                return moat_error_system(err, errno, "SIOCGIFFLAGS lo");
        request.ifr_flags |= IFF_UP;
        if (ioctl(fd, SIOCSIFFLAGS, &request) < 0)
                return moat_error_system(err, errno, "SIOCSIFFLAGS lo");
        return 0;
}

int moat_netns_create(struct moat_error **err)
{
        int fd;

        if (host_netns_fd < 0)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "moat_netns_init was not called");
        if (unshare(CLONE_NEWNET) < 0)
                return moat_error_system(err, errno, "unshare(CLONE_NEWNET)");
        fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                moat_error_system(err, errno, "open /proc/thread-self/ns/net");
                goto fail;
        }
        /* Ping without CAP_NET_RAW (which sandboxes never have): ICMP echo
         * datagram sockets for every group. The range is in host gids, as
         * moatd writes it; it covers every sandbox's mapped range. */
        if (write_sysctl("/proc/sys/net/ipv4/ping_group_range", "0 2147483647", err) < 0 ||
            /* Root in the sandbox has no CAP_NET_BIND_SERVICE over this
             * namespace (the host owns it); let any port be bound, as Docker
             * does. Nothing outside the namespace is reachable through it. */
            write_sysctl("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0", err) < 0 ||
            loopback_up(err) < 0)
                goto fail;
        moat_netns_leave();
        return fd;
fail:
        if (fd >= 0)
                close(fd);
        moat_netns_leave();
        return -1;
}
