#include "net.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "dns.h"
#include "log.h"
#include "netlink.h"
#include "netns.h"
#include "nft.h"
#include "tunnel.h"

#define SLOTS_MAX 65536
#define TOKEN_BYTES 32

struct moat_net {
        struct event_base *base;
        char prefix[16];
        char tunnel_address[64];
        struct net_cidr pool4, pool6;
        struct moat_nft *nft;
        struct moat_dns *dns;
        char unavailable[512]; /* why modes with a network cannot be served, or "" */

        pthread_mutex_t lock; /* slots and forwarding, taken on workers and the loop */
        uint8_t *slots;       /* bitmap: veth index in use */
        unsigned slot_count;
};

struct exposed_port {
        struct net_port port;
        char token[TOKEN_BYTES * 2 + 1];
        struct moat_tunnel *tunnel;
};

struct moat_net_sandbox {
        struct moat_net *net;
        int netns_fd;
        int slot; /* -1: no veth yet */
        char ifname[IFNAMSIZ];
        struct net_policy policy;    /* the live policy, read by the DNS hooks on the loop */
        struct moat_nft_sandbox nft; /* what nft.c installed */
        struct moat_dns_listener *dns_listener;
        struct exposed_port ports[NET_PORTS_MAX];
        size_t port_count;
        uint64_t tunnel_rx_closed, tunnel_tx_closed; /* bytes of tunnels already closed */
};

/* ---- start-up ---- */

static int write_file(const char *path, const char *value)
{
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
        size_t length = strlen(value);

        if (fd < 0 || write(fd, value, length) != (ssize_t)length)
                return -1;
        return 0;
}

static int read_flag(const char *path)
{
        char value[8] = "";
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);

        if (fd < 0 || read(fd, value, sizeof(value) - 1) <= 0)
                return -1;
        return atoi(value);
}

/* Sandboxes with a network need the host to forward their packets. Turning
 * IPv6 forwarding on makes the kernel stop accepting router advertisements
 * on interfaces set to accept_ra=1, which would drop the host's own IPv6
 * default route on the next expiry: those interfaces are moved to
 * accept_ra=2 (accept even when forwarding) first. Logged, since it is a
 * host-wide change (docs/SECURITY.md says what it means). */
static void ensure_forwarding(struct moat_net *net)
{
        if (read_flag("/proc/sys/net/ipv4/ip_forward") != 1) {
                if (write_file("/proc/sys/net/ipv4/ip_forward", "1") < 0)
                        log_warn("cannot enable IPv4 forwarding: sandboxes will have no network");
                else
                        log_warn("enabled IPv4 forwarding (net.ipv4.ip_forward=1) for sandbox networks");
        }
        if (read_flag("/proc/sys/net/ipv6/conf/all/forwarding") != 1) {
                DIR *dir = opendir("/proc/sys/net/ipv6/conf");
                struct dirent *entry;
                char path[512];

                while (dir && (entry = readdir(dir))) {
                        if (entry->d_name[0] == '.' || strcmp(entry->d_name, "all") == 0)
                                continue;
                        snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/accept_ra", entry->d_name);
                        if (read_flag(path) == 1)
                                write_file(path, "2");
                }
                if (dir)
                        closedir(dir);
                if (write_file("/proc/sys/net/ipv6/conf/all/forwarding", "1") < 0)
                        log_warn("cannot enable IPv6 forwarding: sandboxes will have no IPv6 network");
                else
                        log_warn("enabled IPv6 forwarding (net.ipv6.conf.all.forwarding=1) for sandbox networks");
        }
}

int moat_net_init(const struct moat_net_options *options, struct moat_net **ret, struct moat_error **err)
{
        struct moat_net *net;
        struct moat_nft_options nft_options;
        struct moat_error *local = NULL;
        char interface_prefix[24];
        unsigned slots4, slots6;
        int swept;

        if (!options->prefix[0] || strlen(options->prefix) > 8)
                return moat_error_invalid(err, "--net-prefix must be 1 to 8 characters");
        for (const char *p = options->prefix; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')))
                        return moat_error_invalid(err, "--net-prefix may hold only a-z and 0-9");
        net = calloc(1, sizeof(*net));
        if (!net)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "calloc");
        pthread_mutex_init(&net->lock, NULL);
        net->base = options->base;
        snprintf(net->prefix, sizeof(net->prefix), "%s", options->prefix);
        snprintf(net->tunnel_address, sizeof(net->tunnel_address), "%s", options->tunnel_address);
        if (!net_cidr_parse(options->pool4, &net->pool4) || net->pool4.family != AF_INET ||
            net->pool4.prefix > 30 || net->pool4.prefix < 8) {
                moat_error_invalid(err, "--net-pool4 must be an IPv4 CIDR from /8 to /30");
                goto fail;
        }
        if (!net_cidr_parse(options->pool6, &net->pool6) || net->pool6.family != AF_INET6 ||
            net->pool6.prefix > 63 || net->pool6.prefix < 32) {
                moat_error_invalid(err, "--net-pool6 must be an IPv6 CIDR from /32 to /63");
                goto fail;
        }
        /* A /31 per sandbox in IPv4, a /64 in IPv6. */
        slots4 = net->pool4.prefix <= 15 ? SLOTS_MAX : 1u << (31 - net->pool4.prefix);
        slots6 = 64 - net->pool6.prefix >= 16 ? SLOTS_MAX : 1u << (64 - net->pool6.prefix);
        net->slot_count = slots4 < slots6 ? slots4 : slots6;
        net->slots = calloc(net->slot_count / 8 + 1, 1);
        if (!net->slots) {
                moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "calloc");
                goto fail;
        }
        if (moat_netns_init(err) < 0)
                goto fail;
        /* A crashed moatd's veths: their sandboxes are gone (reaped at start),
         * and so, with their namespaces, are the peers; a host end may stay. */
        snprintf(interface_prefix, sizeof(interface_prefix), "%s-", net->prefix);
        swept = moat_link_sweep(interface_prefix, err);
        if (swept < 0)
                goto fail;
        if (swept > 0)
                log_info("removed %d network interfaces left by an earlier moatd", swept);
        /* Without nftables or a DNS upstream, moatd still serves sandboxes
         * in mode none (and exposed ports); the other modes are refused with
         * the reason, never run unenforced. */
        nft_options = (struct moat_nft_options){.prefix = net->prefix, .pool4 = &net->pool4, .pool6 = &net->pool6};
        if (moat_nft_open(&nft_options, &net->nft, &local) < 0 ||
            moat_dns_new(net->base, options->dns_upstreams, &net->dns, &local) < 0) {
                snprintf(net->unavailable, sizeof(net->unavailable), "%.500s", local->message);
                log_warn("sandbox networks (modes allow and internet) are unavailable: %s", local->message);
                moat_error_free(local);
        }
        *ret = net;
        return 0;
fail:
        moat_net_free(net);
        return -1;
}

void moat_net_free(struct moat_net *net)
{
        if (!net)
                return;
        moat_dns_free(net->dns);
        moat_nft_close(net->nft);
        free(net->slots);
        pthread_mutex_destroy(&net->lock);
        free(net);
}

/* ---- addresses ---- */

static void slot_addresses(const struct moat_net *net, int slot, int family, bool sandbox_side, uint8_t *address)
{
        if (family == AF_INET) {
                uint32_t base;

                memcpy(&base, net->pool4.address, 4);
                base = ntohl(base) + (uint32_t)slot * 2 + (sandbox_side ? 1 : 0);
                base = htonl(base);
                memcpy(address, &base, 4);
        } else {
                memcpy(address, net->pool6.address, 16);
                address[6] |= (uint8_t)(slot >> 8);
                address[7] |= (uint8_t)slot;
                address[15] = sandbox_side ? 2 : 1;
        }
}

static int slot_take(struct moat_net *net, struct moat_error **err)
{
        int slot = -1;

        pthread_mutex_lock(&net->lock);
        for (unsigned i = 0; i < net->slot_count; i++)
                if (!(net->slots[i / 8] & (1u << (i % 8)))) {
                        net->slots[i / 8] |= (uint8_t)(1u << (i % 8));
                        slot = (int)i;
                        break;
                }
        ensure_forwarding(net);
        pthread_mutex_unlock(&net->lock);
        if (slot < 0)
                moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL, "all %u sandbox network slots are in use",
                               net->slot_count);
        return slot;
}

static void slot_give(struct moat_net *net, int slot)
{
        pthread_mutex_lock(&net->lock);
        net->slots[slot / 8] &= (uint8_t)~(1u << (slot % 8));
        pthread_mutex_unlock(&net->lock);
}

/* The veth, both ends addressed and up, the sandbox's default routes. The
 * host end is "<prefix>-<slot>": prefixes hold no '-', so the rules' match on
 * "<prefix>-*" never takes in another moatd's interfaces ("moat1-3" is not
 * "moat-*"). */
static int attach_veth(struct moat_net_sandbox *sandbox, struct moat_error **err)
{
        struct moat_net *net = sandbox->net;
        uint8_t host4[4], peer4[4], host6[16], peer6[16];
        char path[128];
        int slot, r;

        if (net->unavailable[0])
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, "network_unavailable",
                                      "sandbox networks are unavailable on this host: %s", net->unavailable);
        slot = slot_take(net, err);
        if (slot < 0)
                return -1;
        snprintf(sandbox->ifname, sizeof(sandbox->ifname), "%.8s-%u", net->prefix, (unsigned)slot & 0xffff);
        slot_addresses(net, slot, AF_INET, false, host4);
        slot_addresses(net, slot, AF_INET, true, peer4);
        slot_addresses(net, slot, AF_INET6, false, host6);
        slot_addresses(net, slot, AF_INET6, true, peer6);
        if (moat_link_veth_create(sandbox->ifname, "eth0", sandbox->netns_fd, err) < 0) {
                slot_give(net, slot);
                return -1;
        }
        sandbox->slot = slot;
        /* The host end never takes router advertisements from a sandbox. */
        snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/accept_ra", sandbox->ifname);
        write_file(path, "0");
        if (moat_link_address_add(sandbox->ifname, AF_INET, host4, 31, err) < 0 ||
            moat_link_address_add(sandbox->ifname, AF_INET6, host6, 64, err) < 0 ||
            moat_link_up(sandbox->ifname, err) < 0)
                return -1;
        if (moat_netns_enter(sandbox->netns_fd, err) < 0)
                return -1;
        r = moat_link_address_add("eth0", AF_INET, peer4, 31, err) < 0 ||
            moat_link_address_add("eth0", AF_INET6, peer6, 64, err) < 0 || moat_link_up("eth0", err) < 0 ||
            moat_link_default_route("eth0", AF_INET, host4, err) < 0 ||
            moat_link_default_route("eth0", AF_INET6, host6, err) < 0 ? -1 : 0;
        moat_netns_leave();
        if (r < 0)
                return -1;
        snprintf(sandbox->nft.ifname, sizeof(sandbox->nft.ifname), "%s", sandbox->ifname);
        return 0;
}

/* ---- lifecycle ---- */

int moat_net_sandbox_create(struct moat_net *net, const struct net_policy *policy, struct moat_net_sandbox **ret,
                            struct moat_error **err)
{
        struct moat_net_sandbox *sandbox = calloc(1, sizeof(*sandbox));

        if (!sandbox)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "calloc");
        sandbox->net = net;
        sandbox->slot = -1;
        sandbox->netns_fd = moat_netns_create(err);
        if (sandbox->netns_fd < 0)
                goto fail;
        if (net_policy_copy(policy, &sandbox->policy) < 0) {
                moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "copy network policy");
                goto fail;
        }
        if (policy->mode != NET_MODE_NONE &&
            (attach_veth(sandbox, err) < 0 || moat_nft_sandbox_apply(net->nft, &sandbox->nft, policy, err) < 0))
                goto fail;
        *ret = sandbox;
        return 0;
fail:
        moat_net_sandbox_destroy(sandbox);
        return -1;
}

int moat_net_sandbox_netns_fd(const struct moat_net_sandbox *sandbox)
{
        return sandbox->netns_fd;
}

const struct net_policy *moat_net_sandbox_policy(const struct moat_net_sandbox *sandbox)
{
        return &sandbox->policy;
}

static bool dns_name_allowed(void *ctx, const char *name)
{
        struct moat_net_sandbox *sandbox = ctx;

        return net_policy_name_allowed(&sandbox->policy, name);
}

static int dns_admit(void *ctx, const char *name, int family, const void *address, uint32_t ttl)
{
        struct moat_net_sandbox *sandbox = ctx;
        struct moat_error *err = NULL;

        if (moat_nft_sandbox_admit(sandbox->net->nft, &sandbox->nft, name, family, address, ttl, &err) < 0) {
                log_warn("%s: admit %s: %s", sandbox->ifname, name, err->message);
                moat_error_free(err);
                return -1;
        }
        return 0;
}

static const struct moat_dns_hooks dns_hooks = {.name_allowed = dns_name_allowed, .admit = dns_admit};

/* moatd's resolver, on 127.0.0.53:53 inside the sandbox's namespace: the
 * sandbox reaches it over its own loopback, so no host address or port is
 * open to sandboxes at all. */
static int start_dns(struct moat_net_sandbox *sandbox, struct moat_error **err)
{
        struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(53)};
        int fd;

        if (sandbox->dns_listener)
                return 0;
        fd = moat_netns_socket(sandbox->netns_fd, AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return moat_error_system(err, -fd, "DNS socket in the sandbox's namespace");
        inet_pton(AF_INET, "127.0.0.53", &address.sin_addr);
        if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
                int saved = errno;

                close(fd);
                return moat_error_system(err, saved, "bind 127.0.0.53:53 in the sandbox's namespace");
        }
        return moat_dns_listen(sandbox->net->dns, fd, &dns_hooks, sandbox, &sandbox->dns_listener, err);
}

static int random_token(char *text)
{
        uint8_t bytes[TOKEN_BYTES];

        if (getrandom(bytes, sizeof(bytes), 0) != sizeof(bytes))
                return -1;
        for (size_t i = 0; i < sizeof(bytes); i++)
                snprintf(text + i * 2, 3, "%02x", bytes[i]);
        return 0;
}

int moat_net_sandbox_start(struct moat_net_sandbox *sandbox, const struct net_port *ports, size_t port_count,
                           struct moat_error **err)
{
        /* The resolver's address is taken in every mode, before any workload
         * runs: a sandbox in mode none answers NXDOMAIN at once, and cannot
         * squat 127.0.0.53:53 for a later change of policy. */
        if (sandbox->net->dns && start_dns(sandbox, err) < 0)
                return -1;
        for (size_t i = 0; i < port_count && i < NET_PORTS_MAX; i++) {
                struct exposed_port *p = &sandbox->ports[sandbox->port_count];
                struct moat_tunnel_options options = {.bind_address = sandbox->net->tunnel_address,
                                                      .netns_fd = sandbox->netns_fd,
                                                      .sandbox_port = ports[i].port};

                memset(p, 0, sizeof(*p));
                p->port = ports[i];
                if (!p->port.public) {
                        if (random_token(p->token) < 0)
                                return moat_error_system(err, errno, "getrandom");
                        options.token = p->token;
                }
                if (moat_tunnel_open(sandbox->net->base, &options, &p->tunnel, err) < 0)
                        return moat_error_wrap(err, "expose port %u", p->port.port);
                sandbox->port_count++;
        }
        return 0;
}

void moat_net_sandbox_stop(struct moat_net_sandbox *sandbox)
{
        if (!sandbox)
                return;
        moat_dns_listener_free(sandbox->dns_listener);
        sandbox->dns_listener = NULL;
        for (size_t i = 0; i < sandbox->port_count; i++) {
                uint64_t to_sandbox, from_sandbox;

                moat_tunnel_bytes(sandbox->ports[i].tunnel, &to_sandbox, &from_sandbox);
                sandbox->tunnel_rx_closed += to_sandbox;
                sandbox->tunnel_tx_closed += from_sandbox;
                moat_tunnel_close(sandbox->ports[i].tunnel);
                sandbox->ports[i].tunnel = NULL;
        }
        sandbox->port_count = 0;
}

void moat_net_sandbox_destroy(struct moat_net_sandbox *sandbox)
{
        if (!sandbox)
                return;
        moat_net_sandbox_stop(sandbox);
        if (sandbox->nft.generation || sandbox->nft.admitted_count)
                moat_nft_sandbox_remove(sandbox->net->nft, &sandbox->nft);
        net_policy_clear(&sandbox->nft.policy);
        if (sandbox->slot >= 0) {
                /* Deleting the host end deletes the pair; the namespace goes
                 * when its last process and our fd are gone. */
                moat_link_delete(sandbox->ifname, NULL);
                slot_give(sandbox->net, sandbox->slot);
        }
        if (sandbox->netns_fd >= 0)
                close(sandbox->netns_fd);
        net_policy_clear(&sandbox->policy);
        free(sandbox);
}

int moat_net_sandbox_set_policy(struct moat_net_sandbox *sandbox, const struct net_policy *policy,
                                struct moat_error **err)
{
        struct net_policy copy;

        if (net_policy_copy(policy, &copy) < 0)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "copy network policy");
        if (policy->mode != NET_MODE_NONE && sandbox->slot < 0 && attach_veth(sandbox, err) < 0)
                goto fail;
        if (sandbox->slot >= 0 && moat_nft_sandbox_apply(sandbox->net->nft, &sandbox->nft, policy, err) < 0)
                goto fail;
        /* The DNS hooks read this policy from now on: names allowed before
         * and not now are refused from the next query. */
        net_policy_clear(&sandbox->policy);
        sandbox->policy = copy;
        if (sandbox->net->dns && start_dns(sandbox, err) < 0)
                return -1;
        return 0;
fail:
        net_policy_clear(&copy);
        return -1;
}

void moat_net_sandbox_counters(struct moat_net_sandbox *sandbox, struct moat_net_counters *counters)
{
        uint64_t rx = 0, tx = 0;

        memset(counters, 0, sizeof(*counters));
        /* The host end receives what the sandbox sends. */
        if (sandbox->slot >= 0 && moat_link_bytes(sandbox->ifname, &rx, &tx, NULL) == 0) {
                counters->tx_bytes = rx;
                counters->rx_bytes = tx;
        }
        counters->tunnel_rx_bytes = sandbox->tunnel_rx_closed;
        counters->tunnel_tx_bytes = sandbox->tunnel_tx_closed;
        for (size_t i = 0; i < sandbox->port_count; i++) {
                uint64_t to_sandbox, from_sandbox;

                moat_tunnel_bytes(sandbox->ports[i].tunnel, &to_sandbox, &from_sandbox);
                counters->tunnel_rx_bytes += to_sandbox;
                counters->tunnel_tx_bytes += from_sandbox;
        }
}

json_t *moat_net_sandbox_tunnels_json(const struct moat_net_sandbox *sandbox)
{
        json_t *tunnels = json_array();
        bool v6 = strchr(sandbox->net->tunnel_address, ':') != NULL;

        for (size_t i = 0; tunnels && i < sandbox->port_count; i++) {
                const struct exposed_port *p = &sandbox->ports[i];
                uint16_t host_port = moat_tunnel_host_port(p->tunnel);
                char url[128];

                snprintf(url, sizeof(url), v6 ? "http://[%s]:%u" : "http://%s:%u", sandbox->net->tunnel_address,
                         host_port);
                json_array_append_new(tunnels,
                                      json_pack("{s:i, s:i, s:s, s:b, s:s?}", "port", (int)p->port.port, "host_port",
                                                (int)host_port, "url", url, "public", p->port.public, "token",
                                                p->port.public ? NULL : p->token));
        }
        return tunnels;
}
