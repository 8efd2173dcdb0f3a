#include "nft.h"

#include <arpa/inet.h>
#include <errno.h>
#include <nftables/libnftables.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "common/cleanup.h"

/* Addresses that are never a sandbox's destination, whatever its policy:
 * "this network", the host's loopback, link-local (cloud metadata lives at
 * 169.254.169.254), multicast, reserved and broadcast; in IPv6 the
 * unspecified and loopback addresses, v4-mapped and NAT64 forms (the same v4
 * targets by another name), link-local, multicast and the EC2 metadata
 * address. The sandbox pools are added at start-up: other sandboxes. The
 * host's own addresses never reach this chain: packets for them go through
 * the input hook, where everything from a sandbox is dropped. */
static const char blocked4[] = "0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3";
static const char blocked6[] = "::/127, ::ffff:0:0/96, 64:ff9b::/96, 64:ff9b:1::/48, 2002::/16, fe80::/10, "
                               "ff00::/8, fd00:ec2::254";
/* Private ranges: the LAN or VPC around the host. Mode internet does not
 * reach them unless a CIDR lists them: "internet" must not mean "the
 * company's database". */
static const char private4[] = "10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.168.0.0/16";
static const char private6[] = "fc00::/7";

#define REJECT "reject with icmpx type admin-prohibited"
#define ADMITTED_MAX 4096 /* DNS-admitted addresses held per sandbox */

struct limit_chain {
        char name[48];
};

struct moat_nft {
        pthread_mutex_t lock;
        struct nft_ctx *ctx;
        char table[16];
        char prefix[16];
        uint32_t next_generation;
        struct limit_chain *limit_chains; /* per limit value, made on first use */
        size_t limit_chain_count;
};

static int run(struct moat_nft *nft, const char *commands, struct moat_error **err)
{
        if (nft_run_cmd_from_buffer(nft->ctx, commands) == 0)
                return 0;
        return moat_error_set(err, MOAT_ERROR_SYSTEM, 0, "network_setup_failed", "nftables: %.700s",
                              nft_ctx_get_error_buffer(nft->ctx));
}

/* A batch of nft commands built with printf-style appends. */
struct batch {
        char *text;
        size_t size;
        FILE *stream;
};

static int batch_open(struct batch *batch)
{
        memset(batch, 0, sizeof(*batch));
        batch->stream = open_memstream(&batch->text, &batch->size);
        return batch->stream ? 0 : -1;
}

static const char *batch_text(struct batch *batch)
{
        fflush(batch->stream);
        return batch->text;
}

static void batch_close(struct batch *batch)
{
        if (batch->stream)
                fclose(batch->stream);
        free(batch->text);
        memset(batch, 0, sizeof(*batch));
}

static void format_address(int family, const void *address, char *buffer, size_t size)
{
        inet_ntop(family, address, buffer, size);
}

int moat_nft_open(const struct moat_nft_options *options, struct moat_nft **ret, struct moat_error **err)
{
        struct moat_nft *nft = calloc(1, sizeof(*nft));
        char pool4[64], pool6[64];
        struct batch batch;
        const char *p;
        int r;

        if (!nft)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "calloc");
        pthread_mutex_init(&nft->lock, NULL);
        snprintf(nft->table, sizeof(nft->table), "%s", options->prefix);
        snprintf(nft->prefix, sizeof(nft->prefix), "%s", options->prefix);
        /* A random start: conntrack entries of an earlier run (same interface
         * names, same addresses) never carry a mark a new sandbox accepts. */
        if (getrandom(&nft->next_generation, sizeof(nft->next_generation), 0) != sizeof(nft->next_generation))
                nft->next_generation = (uint32_t)time(NULL);
        nft->next_generation |= 1;
        nft->ctx = nft_ctx_new(NFT_CTX_DEFAULT);
        if (!nft->ctx) {
                free(nft);
                return moat_error_set(err, MOAT_ERROR_SYSTEM, 0, "network_setup_failed", "nft_ctx_new failed");
        }
        nft_ctx_buffer_output(nft->ctx);
        nft_ctx_buffer_error(nft->ctx);
        net_cidr_format(options->pool4, pool4, sizeof(pool4));
        net_cidr_format(options->pool6, pool6, sizeof(pool6));
        p = nft->prefix;

        if (batch_open(&batch) < 0) {
                moat_nft_close(nft);
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "open_memstream");
        }
        /* "add" then "delete" empties a table left by a crashed run without
         * failing when there is none. */
        fprintf(batch.stream, "add table inet %s\ndelete table inet %s\n", nft->table, nft->table);
        fprintf(batch.stream,
                "table inet %s {\n"
                "  map mode { type ifname : verdict; }\n"
                "  map generation { type ifname : mark; }\n"
                "  set current { type ifname . mark; }\n"
                "  set allow4 { type ifname . ipv4_addr; flags interval; }\n"
                "  set allow6 { type ifname . ipv6_addr; flags interval; }\n"
                "  set dns4 { type ifname . ipv4_addr; flags timeout; }\n"
                "  set dns6 { type ifname . ipv6_addr; flags timeout; }\n"
                "  set blocked4 { type ipv4_addr; flags interval; elements = { %s, %s } }\n"
                "  set blocked6 { type ipv6_addr; flags interval; elements = { %s, %s } }\n"
                "  set private4 { type ipv4_addr; flags interval; elements = { %s } }\n"
                "  set private6 { type ipv6_addr; flags interval; elements = { %s } }\n"
                "  map connlimit { type ifname : verdict; }\n"
                "  map bandwidth_out { type ifname : verdict; }\n"
                "  map bandwidth_in { type ifname : verdict; }\n",
                p, blocked4, pool4, blocked6, pool6, private4, private6);
        fprintf(batch.stream,
                /* What a sandbox's policy lets through. A new connection is
                 * stamped with the sandbox's current generation. */
                "  chain allowlist {\n"
                "    iifname . ip daddr @allow4 ct mark set iifname map @generation accept\n"
                "    iifname . ip6 daddr @allow6 ct mark set iifname map @generation accept\n"
                /* DNS rebinding: an allowed name whose answer points into
                 * the LAN opens nothing there; only a listed CIDR does. */
                "    ip daddr @private4 " REJECT "\n"
                "    ip6 daddr @private6 " REJECT "\n"
                "    iifname . ip daddr @dns4 ct mark set iifname map @generation accept\n"
                "    iifname . ip6 daddr @dns6 ct mark set iifname map @generation accept\n"
                "    " REJECT "\n"
                "  }\n"
                "  chain internet {\n"
                "    ip daddr @private4 goto allowlist\n"
                "    ip6 daddr @private6 goto allowlist\n"
                "    ct mark set iifname map @generation accept\n"
                "  }\n"
                /* Every packet a sandbox sends through its veth. */
                "  chain from_sandbox {\n"
                "    iifname vmap @bandwidth_out\n"
                /* Fast path: a flow admitted under the current policy. After
                 * a policy change the mark is stale and the flow is judged
                 * again below. */
                "    iifname . ct mark @current accept\n"
                /* Other sandboxes, whatever the pools. */
                "    oifname \"%s-*\" " REJECT "\n"
                "    ip daddr @blocked4 " REJECT "\n"
                "    ip6 daddr @blocked6 " REJECT "\n"
                "    ct state new iifname vmap @connlimit\n"
                "    iifname vmap @mode\n"
                "    " REJECT "\n"
                "  }\n"
                /* Nothing starts a connection into a sandbox: not the LAN,
                 * not another sandbox. Replies come back. */
                "  chain to_sandbox {\n"
                "    oifname vmap @bandwidth_in\n"
                "    ct state established,related accept\n"
                "    drop\n"
                "  }\n"
                "  chain forward {\n"
                "    type filter hook forward priority filter - 10; policy accept;\n"
                "    iifname \"%s-*\" jump from_sandbox\n"
                "    oifname \"%s-*\" jump to_sandbox\n"
                "  }\n"
                /* The host itself (every address it has, every service on
                 * it) is unreachable from a sandbox: moatd's resolver lives
                 * inside the sandbox's namespace, so nothing is needed here
                 * but IPv6 neighbour discovery on the veth. */
                "  chain input {\n"
                "    type filter hook input priority filter - 10; policy accept;\n"
                "    iifname \"%s-*\" jump input_from_sandbox\n"
                "  }\n"
                "  chain input_from_sandbox {\n"
                "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept\n"
                "    " REJECT "\n"
                "  }\n"
                /* Host processes (other users on the host) do not connect
                 * into sandboxes either: exposed ports go through moatd. */
                "  chain output {\n"
                "    type filter hook output priority filter - 10; policy accept;\n"
                "    oifname \"%s-*\" meta l4proto { tcp, udp } ct state new drop\n"
                "  }\n"
                "  chain postrouting {\n"
                "    type nat hook postrouting priority srcnat; policy accept;\n"
                "    oifname != \"%s-*\" ip saddr %s masquerade\n"
                "    oifname != \"%s-*\" ip6 saddr %s masquerade\n"
                "  }\n"
                "}\n",
                p, p, p, p, p, p, pool4, p, pool6);
        r = run(nft, batch_text(&batch), err);
        batch_close(&batch);
        if (r < 0) {
                nft_ctx_free(nft->ctx);
                free(nft);
                return -1;
        }
        *ret = nft;
        return 0;
}

void moat_nft_close(struct moat_nft *nft)
{
        char command[64];

        if (!nft)
                return;
        snprintf(command, sizeof(command), "delete table inet %s\n", nft->table);
        nft_run_cmd_from_buffer(nft->ctx, command);
        nft_ctx_free(nft->ctx);
        free(nft->limit_chains);
        pthread_mutex_destroy(&nft->lock);
        free(nft);
}

/* The chain (and its dynamic set) enforcing one limit value, made on first
 * use and kept: there are few distinct values. kind: "connlimit",
 * "bandwidth_out", "bandwidth_in". */
static int limit_chain(struct moat_nft *nft, const char *kind, uint32_t value, char *name, size_t size,
                       struct moat_error **err)
{
        struct limit_chain *grown;
        char commands[1024];
        const char *key = strcmp(kind, "bandwidth_in") == 0 ? "oifname" : "iifname";
        uint64_t kbytes = (uint64_t)value * 125; /* Mbit/s to kbytes/s */
        uint64_t burst = kbytes / 10 > 64 ? kbytes / 10 : 64;

        snprintf(name, size, "%s_%u", kind, value);
        for (size_t i = 0; i < nft->limit_chain_count; i++)
                if (strcmp(nft->limit_chains[i].name, name) == 0)
                        return 0;
        if (strcmp(kind, "connlimit") == 0)
                snprintf(commands, sizeof(commands),
                         "add set inet %s %s { type ifname; flags dynamic; size 65536; }\n"
                         "add chain inet %s %s\n"
                         "add rule inet %s %s add @%s { %s ct count over %u } " REJECT "\n",
                         nft->table, name, nft->table, name, nft->table, name, name, key, value);
        else /* bandwidth: a policer per sandbox, in each direction */
                snprintf(commands, sizeof(commands),
                         "add set inet %s %s { type ifname; flags dynamic; size 65536; }\n"
                         "add chain inet %s %s\n"
                         "add rule inet %s %s update @%s { %s limit rate over %llu kbytes/second burst %llu "
                         "kbytes } drop\n",
                         nft->table, name, nft->table, name, nft->table, name, name, key,
                         (unsigned long long)kbytes, (unsigned long long)burst);
        if (run(nft, commands, err) < 0)
                return -1;
        grown = realloc(nft->limit_chains, (nft->limit_chain_count + 1) * sizeof(*grown));
        if (!grown)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "realloc");
        nft->limit_chains = grown;
        snprintf(grown[nft->limit_chain_count++].name, sizeof(grown->name), "%s", name);
        return 0;
}

static void write_cidr_elements(FILE *out, const char *verb, const char *table, const struct moat_nft_sandbox *sandbox,
                                const struct net_policy *policy)
{
        char cidr[64];

        for (size_t i = 0; i < policy->cidr_count; i++) {
                bool covered = false;

                /* An interval set refuses overlapping elements (and a
                 * concatenated one cannot auto-merge): a block inside another
                 * of the list, or a repeat of an earlier one, adds nothing. */
                for (size_t j = 0; j < policy->cidr_count && !covered; j++)
                        covered = j != i && net_cidr_covers(&policy->cidrs[j], &policy->cidrs[i]) &&
                                  (!net_cidr_covers(&policy->cidrs[i], &policy->cidrs[j]) || j < i);
                if (covered)
                        continue;
                net_cidr_format(&policy->cidrs[i], cidr, sizeof(cidr));
                fprintf(out, "%s element inet %s %s { \"%s\" . %s }\n", verb, table,
                        policy->cidrs[i].family == AF_INET ? "allow4" : "allow6", sandbox->ifname, cidr);
        }
}

/* The elements a sandbox with this policy and generation has in the static
 * maps, added or deleted. */
static int write_sandbox_elements(struct moat_nft *nft, FILE *out, const char *verb,
                                  const struct moat_nft_sandbox *sandbox, const struct net_policy *policy,
                                  uint32_t generation, struct moat_error **err)
{
        const char *t = nft->table, *ifname = sandbox->ifname;
        char chain[48];

        if (policy->mode == NET_MODE_NONE)
                return 0;
        fprintf(out, "%s element inet %s mode { \"%s\" : goto %s }\n", verb, t, ifname,
                policy->mode == NET_MODE_INTERNET ? "internet" : "allowlist");
        fprintf(out, "%s element inet %s generation { \"%s\" : 0x%08x }\n", verb, t, ifname, generation);
        fprintf(out, "%s element inet %s current { \"%s\" . 0x%08x }\n", verb, t, ifname, generation);
        if (limit_chain(nft, "connlimit", policy->max_connections, chain, sizeof(chain), err) < 0)
                return -1;
        fprintf(out, "%s element inet %s connlimit { \"%s\" : jump %s }\n", verb, t, ifname, chain);
        if (policy->bandwidth_mbps) {
                if (limit_chain(nft, "bandwidth_out", policy->bandwidth_mbps, chain, sizeof(chain), err) < 0)
                        return -1;
                fprintf(out, "%s element inet %s bandwidth_out { \"%s\" : jump %s }\n", verb, t, ifname, chain);
                if (limit_chain(nft, "bandwidth_in", policy->bandwidth_mbps, chain, sizeof(chain), err) < 0)
                        return -1;
                fprintf(out, "%s element inet %s bandwidth_in { \"%s\" : jump %s }\n", verb, t, ifname, chain);
        }
        write_cidr_elements(out, verb, t, sandbox, policy);
        return 0;
}

static void admitted_element(const struct moat_nft *nft, const struct moat_nft_sandbox *sandbox,
                             const struct moat_nft_admitted *a, char *buffer, size_t size)
{
        char address[INET6_ADDRSTRLEN];

        format_address(a->family, a->address, address, sizeof(address));
        snprintf(buffer, size, "inet %s %s { \"%s\" . %s", nft->table, a->family == AF_INET ? "dns4" : "dns6",
                 sandbox->ifname, address);
}

static time_t monotonic_seconds(void)
{
        struct timespec now;

        clock_gettime(CLOCK_MONOTONIC, &now);
        return now.tv_sec;
}

static void admitted_free(struct moat_nft_admitted *a)
{
        free(a->name);
        a->name = NULL;
}

/* Delete admitted addresses: each in its own command, since the kernel may
 * have expired it already (which fails a batch). keep: NULL to delete all,
 * else a policy whose names stay. */
static void drop_admitted(struct moat_nft *nft, struct moat_nft_sandbox *sandbox, const struct net_policy *keep)
{
        time_t now = monotonic_seconds();
        size_t kept = 0;
        char element[256], command[320];

        for (size_t i = 0; i < sandbox->admitted_count; i++) {
                struct moat_nft_admitted *a = &sandbox->admitted[i];

                if (a->expires > now && keep && net_policy_name_allowed(keep, a->name)) {
                        sandbox->admitted[kept++] = *a;
                        continue;
                }
                if (a->expires >= now) {
                        admitted_element(nft, sandbox, a, element, sizeof(element));
                        snprintf(command, sizeof(command), "delete element %s }\n", element);
                        nft_run_cmd_from_buffer(nft->ctx, command);
                }
                admitted_free(a);
        }
        sandbox->admitted_count = kept;
        if (!kept) {
                free(sandbox->admitted);
                sandbox->admitted = NULL;
        }
}

/* The limiters' per-sandbox state in their dynamic sets; absent if never
 * hit, so each is its own command. */
static void drop_limiter_state(struct moat_nft *nft, const struct moat_nft_sandbox *sandbox,
                               const struct net_policy *policy)
{
        char command[160];

        if (policy->mode == NET_MODE_NONE)
                return;
        snprintf(command, sizeof(command), "delete element inet %s connlimit_%u { \"%s\" }\n", nft->table,
                 policy->max_connections, sandbox->ifname);
        nft_run_cmd_from_buffer(nft->ctx, command);
        if (!policy->bandwidth_mbps)
                return;
        snprintf(command, sizeof(command), "delete element inet %s bandwidth_out_%u { \"%s\" }\n", nft->table,
                 policy->bandwidth_mbps, sandbox->ifname);
        nft_run_cmd_from_buffer(nft->ctx, command);
        snprintf(command, sizeof(command), "delete element inet %s bandwidth_in_%u { \"%s\" }\n", nft->table,
                 policy->bandwidth_mbps, sandbox->ifname);
        nft_run_cmd_from_buffer(nft->ctx, command);
}

int moat_nft_sandbox_apply(struct moat_nft *nft, struct moat_nft_sandbox *sandbox, const struct net_policy *policy,
                           struct moat_error **err)
{
        struct net_policy copy;
        struct batch batch;
        uint32_t generation;
        int r = -1;

        if (net_policy_copy(policy, &copy) < 0)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "copy network policy");
        if (batch_open(&batch) < 0) {
                net_policy_clear(&copy);
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "open_memstream");
        }
        pthread_mutex_lock(&nft->lock);
        generation = nft->next_generation++;
        if (generation == 0)
                generation = nft->next_generation++;
        /* One transaction: the old elements out, the new in. */
        if (sandbox->generation &&
            write_sandbox_elements(nft, batch.stream, "delete", sandbox, &sandbox->policy, sandbox->generation,
                                   err) < 0)
                goto out;
        if (write_sandbox_elements(nft, batch.stream, "add", sandbox, &copy, generation, err) < 0)
                goto out;
        if (batch_text(&batch) && batch.size > 0 && run(nft, batch_text(&batch), err) < 0)
                goto out;
        if (sandbox->policy.max_connections != copy.max_connections ||
            sandbox->policy.bandwidth_mbps != copy.bandwidth_mbps || copy.mode == NET_MODE_NONE)
                drop_limiter_state(nft, sandbox, &sandbox->policy);
        net_policy_clear(&sandbox->policy);
        sandbox->policy = copy;
        memset(&copy, 0, sizeof(copy));
        sandbox->generation = sandbox->policy.mode == NET_MODE_NONE ? 0 : generation;
        drop_admitted(nft, sandbox, &sandbox->policy);
        r = 0;
out:
        pthread_mutex_unlock(&nft->lock);
        batch_close(&batch);
        net_policy_clear(&copy);
        return r;
}

int moat_nft_sandbox_admit(struct moat_nft *nft, struct moat_nft_sandbox *sandbox, const char *name, int family,
                           const void *address, uint32_t ttl, struct moat_error **err)
{
        struct moat_nft_admitted *a = NULL;
        char element[256], commands[1024];
        time_t now = monotonic_seconds();
        size_t length = family == AF_INET ? 4 : 16;
        int r = -1;

        pthread_mutex_lock(&nft->lock);
        if (sandbox->generation == 0 || sandbox->policy.mode != NET_MODE_ALLOW) {
                r = 0; /* internet mode reaches it anyway; none has no veth */
                goto out;
        }
        for (size_t i = 0; i < sandbox->admitted_count && !a; i++)
                if (sandbox->admitted[i].family == family && memcmp(sandbox->admitted[i].address, address, length) == 0)
                        a = &sandbox->admitted[i];
        if (!a) {
                /* Forget the expired first: the bound is on live ones. */
                size_t kept = 0;

                for (size_t i = 0; i < sandbox->admitted_count; i++) {
                        if (sandbox->admitted[i].expires < now)
                                admitted_free(&sandbox->admitted[i]);
                        else
                                sandbox->admitted[kept++] = sandbox->admitted[i];
                }
                sandbox->admitted_count = kept;
                if (kept >= ADMITTED_MAX) {
                        moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL,
                                       "more than %d addresses admitted by DNS are live", ADMITTED_MAX);
                        goto out;
                }
                if (kept % 64 == 0) {
                        struct moat_nft_admitted *grown = realloc(sandbox->admitted, (kept + 64) * sizeof(*grown));

                        if (!grown) {
                                moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "realloc");
                                goto out;
                        }
                        sandbox->admitted = grown;
                }
                a = &sandbox->admitted[sandbox->admitted_count];
                memset(a, 0, sizeof(*a));
                a->family = family;
                memcpy(a->address, address, length);
                if (!(a->name = strdup(name))) {
                        moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "strdup");
                        goto out;
                }
                sandbox->admitted_count++;
        }
        a->expires = now + ttl;
        admitted_element(nft, sandbox, a, element, sizeof(element));
        /* add (a no-op if present), delete, add: one transaction that sets the
         * timeout anew whether or not the element was there, on kernels that
         * cannot update an element's timeout in place. */
        snprintf(commands, sizeof(commands), "add element %s }\ndelete element %s }\nadd element %s timeout %us }\n",
                 element, element, element, ttl);
        r = run(nft, commands, err);
out:
        pthread_mutex_unlock(&nft->lock);
        return r;
}

void moat_nft_sandbox_remove(struct moat_nft *nft, struct moat_nft_sandbox *sandbox)
{
        struct batch batch;

        pthread_mutex_lock(&nft->lock);
        if (sandbox->generation && batch_open(&batch) == 0) {
                if (write_sandbox_elements(nft, batch.stream, "delete", sandbox, &sandbox->policy,
                                           sandbox->generation, NULL) == 0)
                        nft_run_cmd_from_buffer(nft->ctx, batch_text(&batch));
                batch_close(&batch);
                drop_limiter_state(nft, sandbox, &sandbox->policy);
        }
        drop_admitted(nft, sandbox, NULL);
        sandbox->generation = 0;
        net_policy_clear(&sandbox->policy);
        pthread_mutex_unlock(&nft->lock);
}
