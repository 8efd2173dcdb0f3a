/* The sandbox's network namespace starts with only a down loopback device.
 * Bringing "lo" up is all the "none" network mode needs; it is one ioctl, no
 * netlink library. */
#include <errno.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cell_internal.h"

int moat_network_loopback_up(struct moat_child_report *report)
{
        struct ifreq request;
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        int saved;

        if (fd < 0)
                return moat_child_fail(report, MOAT_STEP_LOOPBACK, errno, "socket", "AF_INET");
        memset(&request, 0, sizeof(request));
        memcpy(request.ifr_name, "lo", 3);
        if (ioctl(fd, SIOCGIFFLAGS, &request) < 0)
                goto fail;
        request.ifr_flags |= IFF_UP;
        if (ioctl(fd, SIOCSIFFLAGS, &request) < 0)
                goto fail;
        close(fd);
        return 0;
fail:
        saved = errno;
        close(fd);
        return moat_child_fail(report, MOAT_STEP_LOOPBACK, saved, "ioctl", "lo");
}
