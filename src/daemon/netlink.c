#include "netlink.h"

#include <errno.h>
#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One request, one acknowledgement (or the kernel's error). */
static int talk(struct nlmsghdr *request, mnl_cb_t callback, void *data, const char *what, const char *name,
                struct moat_error **err)
{
        char buffer[MNL_SOCKET_BUFFER_SIZE];
        struct mnl_socket *socket = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
        unsigned port;
        ssize_t length;
        int r = 0;

        if (!socket)
                return moat_error_set(err, MOAT_ERROR_SYSTEM, errno, "network_setup_failed", "netlink socket");
        if (mnl_socket_bind(socket, 0, MNL_SOCKET_AUTOPID) < 0) {
                r = moat_error_set(err, MOAT_ERROR_SYSTEM, errno, "network_setup_failed", "netlink bind");
                goto out;
        }
        port = mnl_socket_get_portid(socket);
        request->nlmsg_seq = (uint32_t)time(NULL);
        request->nlmsg_flags |= NLM_F_ACK;
        if (mnl_socket_sendto(socket, request, request->nlmsg_len) < 0) {
                r = moat_error_set(err, MOAT_ERROR_SYSTEM, errno, "network_setup_failed", "netlink send");
                goto out;
        }
        for (;;) {
                length = mnl_socket_recvfrom(socket, buffer, sizeof(buffer));
                if (length < 0) {
                        r = moat_error_set(err, MOAT_ERROR_SYSTEM, errno, "network_setup_failed", "netlink receive");
                        goto out;
                }
                r = mnl_cb_run(buffer, (size_t)length, request->nlmsg_seq, port, callback, data);
                if (r < 0) {
                        r = moat_error_set(err, MOAT_ERROR_SYSTEM, errno, "network_setup_failed", "%s %s", what,
                                           name);
                        goto out;
                }
                if (r == MNL_CB_STOP) {
                        r = 0;
                        goto out;
                }
        }
out:
        mnl_socket_close(socket);
        return r;
}

static struct nlmsghdr *link_request(char *buffer, uint16_t type, uint16_t flags, const char *name)
{
        struct nlmsghdr *request = mnl_nlmsg_put_header(buffer);
        struct ifinfomsg *info;

        request->nlmsg_type = type;
        request->nlmsg_flags = NLM_F_REQUEST | flags;
        info = mnl_nlmsg_put_extra_header(request, sizeof(*info));
        info->ifi_family = AF_UNSPEC;
        if (name)
                mnl_attr_put_strz(request, IFLA_IFNAME, name);
        return request;
}

int moat_link_veth_create(const char *host_name, const char *peer_name, int peer_netns_fd, struct moat_error **err)
{
        char buffer[MNL_SOCKET_BUFFER_SIZE];
        struct nlmsghdr *request = link_request(buffer, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, host_name);
        struct nlattr *linkinfo, *data, *peer;
        struct ifinfomsg *peer_info;

        linkinfo = mnl_attr_nest_start(request, IFLA_LINKINFO);
        mnl_attr_put_strz(request, IFLA_INFO_KIND, "veth");
        data = mnl_attr_nest_start(request, IFLA_INFO_DATA);
        peer = mnl_attr_nest_start(request, VETH_INFO_PEER);
        /* The peer's ifinfomsg sits inside the attribute, then its own
         * attributes: its name and the namespace it is born in. */
        peer_info = mnl_nlmsg_get_payload_tail(request);
        memset(peer_info, 0, sizeof(*peer_info));
        peer_info->ifi_family = AF_UNSPEC;
        request->nlmsg_len += MNL_ALIGN(sizeof(*peer_info));
        mnl_attr_put_strz(request, IFLA_IFNAME, peer_name);
        mnl_attr_put_u32(request, IFLA_NET_NS_FD, (uint32_t)peer_netns_fd);
        mnl_attr_nest_end(request, peer);
        mnl_attr_nest_end(request, data);
        mnl_attr_nest_end(request, linkinfo);
        return talk(request, NULL, NULL, "create veth", host_name, err);
}

static int interface_index(const char *name, struct moat_error **err)
{
        unsigned index = if_nametoindex(name);

        if (index == 0)
                return moat_error_set(err, MOAT_ERROR_SYSTEM, errno, "network_setup_failed", "interface %s", name);
        return (int)index;
}

int moat_link_address_add(const char *name, int family, const void *address, unsigned prefix,
                          struct moat_error **err)
{
        char buffer[MNL_SOCKET_BUFFER_SIZE];
        struct nlmsghdr *request = mnl_nlmsg_put_header(buffer);
        struct ifaddrmsg *message;
        int index = interface_index(name, err);

        if (index < 0)
                return -1;
        request->nlmsg_type = RTM_NEWADDR;
        request->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE;
        message = mnl_nlmsg_put_extra_header(request, sizeof(*message));
        message->ifa_family = (uint8_t)family;
        message->ifa_prefixlen = (uint8_t)prefix;
        message->ifa_scope = RT_SCOPE_UNIVERSE;
        message->ifa_index = (uint32_t)index;
        if (family == AF_INET6)
                message->ifa_flags = IFA_F_NODAD;
        mnl_attr_put(request, IFA_LOCAL, family == AF_INET ? 4 : 16, address);
        mnl_attr_put(request, IFA_ADDRESS, family == AF_INET ? 4 : 16, address);
        if (family == AF_INET6)
                mnl_attr_put_u32(request, IFA_FLAGS, IFA_F_NODAD);
        return talk(request, NULL, NULL, "add address to", name, err);
}

int moat_link_up(const char *name, struct moat_error **err)
{
        char buffer[MNL_SOCKET_BUFFER_SIZE];
        struct nlmsghdr *request = link_request(buffer, RTM_NEWLINK, 0, name);
        struct ifinfomsg *info = mnl_nlmsg_get_payload(request);

        info->ifi_change = IFF_UP;
        info->ifi_flags = IFF_UP;
        return talk(request, NULL, NULL, "bring up", name, err);
}

int moat_link_default_route(const char *name, int family, const void *gateway, struct moat_error **err)
{
        char buffer[MNL_SOCKET_BUFFER_SIZE];
        struct nlmsghdr *request = mnl_nlmsg_put_header(buffer);
        struct rtmsg *route;
        int index = interface_index(name, err);

        if (index < 0)
                return -1;
        request->nlmsg_type = RTM_NEWROUTE;
        request->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE;
        route = mnl_nlmsg_put_extra_header(request, sizeof(*route));
        route->rtm_family = (uint8_t)family;
        route->rtm_dst_len = 0;
        route->rtm_table = RT_TABLE_MAIN;
        route->rtm_protocol = RTPROT_STATIC;
        route->rtm_scope = RT_SCOPE_UNIVERSE;
        route->rtm_type = RTN_UNICAST;
        mnl_attr_put(request, RTA_GATEWAY, family == AF_INET ? 4 : 16, gateway);
        mnl_attr_put_u32(request, RTA_OIF, (uint32_t)index);
        return talk(request, NULL, NULL, "default route on", name, err);
}

int moat_link_delete(const char *name, struct moat_error **err)
{
        char buffer[MNL_SOCKET_BUFFER_SIZE];
        struct nlmsghdr *request = link_request(buffer, RTM_DELLINK, 0, name);

        return talk(request, NULL, NULL, "delete", name, err);
}

struct link_bytes {
        uint64_t rx, tx;
        bool found;
};

static int stats_attribute(const struct nlattr *attribute, void *data)
{
        struct link_bytes *bytes = data;

        if (mnl_attr_get_type(attribute) == IFLA_STATS64 &&
            mnl_attr_get_payload_len(attribute) >= sizeof(struct rtnl_link_stats64)) {
                struct rtnl_link_stats64 stats;

                memcpy(&stats, mnl_attr_get_payload(attribute), sizeof(stats));
                bytes->rx = stats.rx_bytes;
                bytes->tx = stats.tx_bytes;
                bytes->found = true;
        }
        return MNL_CB_OK;
}

static int stats_message(const struct nlmsghdr *message, void *data)
{
        return mnl_attr_parse(message, sizeof(struct ifinfomsg), stats_attribute, data);
}

int moat_link_bytes(const char *name, uint64_t *rx, uint64_t *tx, struct moat_error **err)
{
        char buffer[MNL_SOCKET_BUFFER_SIZE];
        struct nlmsghdr *request = link_request(buffer, RTM_GETLINK, 0, name);
        struct link_bytes bytes = {0};

        if (talk(request, stats_message, &bytes, "statistics of", name, err) < 0)
                return -1;
        *rx = bytes.rx;
        *tx = bytes.tx;
        return 0;
}

struct sweep {
        const char *prefix;
        char (*names)[IFNAMSIZ];
        size_t count, capacity;
};

static int sweep_attribute(const struct nlattr *attribute, void *data)
{
        struct sweep *sweep = data;
        const char *name;

        if (mnl_attr_get_type(attribute) != IFLA_IFNAME || mnl_attr_validate(attribute, MNL_TYPE_STRING) < 0)
                return MNL_CB_OK;
        name = mnl_attr_get_str(attribute);
        if (strncmp(name, sweep->prefix, strlen(sweep->prefix)) != 0 || strlen(name) >= IFNAMSIZ)
                return MNL_CB_OK;
        if (sweep->count == sweep->capacity) {
                size_t capacity = sweep->capacity ? sweep->capacity * 2 : 16;
                void *grown = realloc(sweep->names, capacity * sizeof(*sweep->names));

                if (!grown)
                        return MNL_CB_ERROR;
                sweep->names = grown;
                sweep->capacity = capacity;
        }
        strcpy(sweep->names[sweep->count++], name);
        return MNL_CB_OK;
}

static int sweep_message(const struct nlmsghdr *message, void *data)
{
        return mnl_attr_parse(message, sizeof(struct ifinfomsg), sweep_attribute, data);
}

int moat_link_sweep(const char *prefix, struct moat_error **err)
{
        char buffer[MNL_SOCKET_BUFFER_SIZE];
        struct nlmsghdr *request = link_request(buffer, RTM_GETLINK, NLM_F_DUMP, NULL);
        struct sweep sweep = {.prefix = prefix};
        int deleted = 0;

        if (talk(request, sweep_message, &sweep, "list", "interfaces", err) < 0) {
                free(sweep.names);
                return -1;
        }
        /* Deleting one end of a veth removes both, so a name gone by the time
         * we get to it is not an error. */
        for (size_t i = 0; i < sweep.count; i++)
                if (moat_link_delete(sweep.names[i], NULL) == 0)
                        deleted++;
        free(sweep.names);
        return deleted;
}
