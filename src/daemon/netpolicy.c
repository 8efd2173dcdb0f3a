#include "netpolicy.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *net_mode_name(enum net_mode mode)
{
        switch (mode) {
        case NET_MODE_ALLOW:
                return "allow";
        case NET_MODE_INTERNET:
                return "internet";
        case NET_MODE_NONE:
        default:
                return "none";
        }
}

bool net_cidr_parse(const char *text, struct net_cidr *ret)
{
        char address[INET6_ADDRSTRLEN + 1];
        const char *slash = strchr(text, '/');
        size_t length = slash ? (size_t)(slash - text) : strlen(text);
        unsigned long prefix;
        unsigned max;

        if (length == 0 || length >= sizeof(address))
                return false;
        memcpy(address, text, length);
        address[length] = '\0';
        memset(ret, 0, sizeof(*ret));
        if (inet_pton(AF_INET, address, ret->address) == 1) {
                ret->family = AF_INET;
                max = 32;
        } else if (inet_pton(AF_INET6, address, ret->address) == 1) {
                ret->family = AF_INET6;
                max = 128;
        } else {
                return false;
        }
        prefix = max;
        if (slash) {
                char *end;

                if (!isdigit((unsigned char)slash[1]))
                        return false;
                errno = 0;
                prefix = strtoul(slash + 1, &end, 10);
                if (errno || *end || prefix > max)
                        return false;
        }
        ret->prefix = (uint8_t)prefix;
        for (unsigned bit = prefix; bit < max; bit++)
                ret->address[bit / 8] &= (uint8_t)~(0x80u >> (bit % 8));
        return true;
}

void net_cidr_format(const struct net_cidr *cidr, char *buffer, size_t size)
{
        char address[INET6_ADDRSTRLEN];

        inet_ntop(cidr->family, cidr->address, address, sizeof(address));
        snprintf(buffer, size, "%s/%u", address, cidr->prefix);
}

/* Letters, digits, '-' (not first or last) and '_' in labels of 1..63 bytes, 253 bytes in all,
 * optionally "*." first. Names are ASCII: an internationalised name is given
 * in its xn-- form, as DNS carries it. */
bool net_cidr_covers(const struct net_cidr *outer, const struct net_cidr *inner)
{
        if (outer->family != inner->family || outer->prefix > inner->prefix)
                return false;
        for (unsigned bit = 0; bit < outer->prefix; bit++) {
                uint8_t mask = (uint8_t)(0x80 >> (bit % 8));
                if ((outer->address[bit / 8] & mask) != (inner->address[bit / 8] & mask))
                        return false;
        }
        return true;
}

static bool domain_valid(const char *name)
{
        size_t length = strlen(name), label = 0;

        if (strncmp(name, "*.", 2) == 0) {
                name += 2;
                length -= 2;
        }
        if (length == 0 || length > NET_DOMAIN_MAX)
                return false;
        for (const char *p = name; *p; p++) {
                if (*p == '.') {
                        /* Labels neither empty nor ending in '-'. */
                        if (label == 0 || p[-1] == '-')
                                return false;
                        label = 0;
                        continue;
                }
                if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '_'))
                        return false;
                if (*p == '-' && label == 0) /* nor starting with it */
                        return false;
                if (++label > 63)
                        return false;
        }
        return label > 0 && name[length - 1] != '-';
}

/* Lower-case copy without the trailing dot; NULL if too long. */
static char *normalize_name(const char *name, char *buffer, size_t size)
{
        size_t length = strlen(name);

        if (length > 0 && name[length - 1] == '.')
                length--;
        if (length >= size)
                return NULL;
        for (size_t i = 0; i < length; i++)
                buffer[i] = (char)tolower((unsigned char)name[i]);
        buffer[length] = '\0';
        return buffer;
}

void net_policy_clear(struct net_policy *policy)
{
        for (size_t i = 0; i < policy->domain_count; i++)
                free(policy->domains[i]);
        free(policy->domains);
        free(policy->cidrs);
        memset(policy, 0, sizeof(*policy));
}

int net_policy_copy(const struct net_policy *from, struct net_policy *to)
{
        struct net_policy copy = *from;

        copy.cidrs = NULL;
        copy.domains = NULL;
        copy.cidr_count = copy.domain_count = 0;
        if (from->cidr_count) {
                copy.cidrs = calloc(from->cidr_count, sizeof(*copy.cidrs));
                if (!copy.cidrs)
                        goto fail;
                memcpy(copy.cidrs, from->cidrs, from->cidr_count * sizeof(*copy.cidrs));
                copy.cidr_count = from->cidr_count;
        }
        if (from->domain_count) {
                copy.domains = calloc(from->domain_count, sizeof(*copy.domains));
                if (!copy.domains)
                        goto fail;
                for (; copy.domain_count < from->domain_count; copy.domain_count++)
                        if (!(copy.domains[copy.domain_count] = strdup(from->domains[copy.domain_count])))
                                goto fail;
        }
        *to = copy;
        return 0;
fail:
        net_policy_clear(&copy);
        return -1;
}

static int get_limit(const json_t *object, const char *key, uint32_t max, uint32_t fallback, uint32_t *ret,
                     struct moat_error **err)
{
        const json_t *value = json_object_get(object, key);

        *ret = fallback;
        if (!value || json_is_null(value))
                return 0;
        if (!json_is_integer(value) || json_integer_value(value) < 0 || json_integer_value(value) > max)
                return moat_error_invalid(err, "`network.%s` must be an integer between 0 and %u", key, max);
        *ret = (uint32_t)json_integer_value(value);
        return 0;
}

static int add_entry(struct net_policy *policy, const char *text, struct moat_error **err)
{
        char name[NET_DOMAIN_MAX + 3];
        struct net_cidr cidr;

        if (net_cidr_parse(text, &cidr)) {
                for (size_t i = 0; i < policy->cidr_count; i++)
                        if (memcmp(&policy->cidrs[i], &cidr, sizeof(cidr)) == 0)
                                return 0;
                policy->cidrs[policy->cidr_count++] = cidr;
                return 0;
        }
        if (!normalize_name(text, name, sizeof(name)) || !domain_valid(name))
                return moat_error_invalid(err,
                                          "`network.allow` entry \"%.64s\" is neither a CIDR (10.1.0.0/16, "
                                          "2001:db8::/32, 192.0.2.7) nor a domain name (pypi.org, *.github.com)",
                                          text);
        for (size_t i = 0; i < policy->domain_count; i++)
                if (strcmp(policy->domains[i], name) == 0)
                        return 0;
        if (!(policy->domains[policy->domain_count] = strdup(name)))
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "strdup");
        policy->domain_count++;
        return 0;
}

static int parse_mode(const char *text, enum net_mode *ret, struct moat_error **err)
{
        if (strcmp(text, "none") == 0)
                *ret = NET_MODE_NONE;
        else if (strcmp(text, "allow") == 0)
                *ret = NET_MODE_ALLOW;
        else if (strcmp(text, "internet") == 0)
                *ret = NET_MODE_INTERNET;
        else
                return moat_error_invalid(err, "`network.mode` must be \"none\", \"allow\" or \"internet\"");
        return 0;
}

static int parse_object(const json_t *value, struct net_policy *policy, struct moat_error **err)
{
        static const char *const fields[] = {"mode", "allow", "bandwidth_mbps", "max_connections", NULL};
        const json_t *mode = json_object_get(value, "mode"), *allow = json_object_get(value, "allow"), *entry;
        const char *key;
        json_t *member;
        size_t index;

        json_object_foreach((json_t *)value, key, member) {
                bool known = false;

                for (const char *const *f = fields; *f; f++)
                        known |= strcmp(*f, key) == 0;
                if (!known)
                        return moat_error_invalid(err, "unknown field `network.%.64s`", key);
        }
        if (!json_is_string(mode))
                return moat_error_invalid(err, "`network.mode` is required: \"none\", \"allow\" or \"internet\"");
        if (parse_mode(json_string_value(mode), &policy->mode, err) < 0)
                return -1;
        if (get_limit(value, "bandwidth_mbps", NET_BANDWIDTH_MBPS_MAX, 0, &policy->bandwidth_mbps, err) < 0 ||
            get_limit(value, "max_connections", NET_MAX_CONNECTIONS_MAX, NET_MAX_CONNECTIONS_DEFAULT,
                      &policy->max_connections, err) < 0)
                return -1;
        if (policy->max_connections == 0)
                return moat_error_invalid(err, "`network.max_connections` must be at least 1");
        if (!allow || json_is_null(allow)) {
                if (policy->mode == NET_MODE_ALLOW)
                        return moat_error_invalid(err, "`network.allow` must list CIDRs or domain names in mode allow");
                return 0;
        }
        if (!json_is_array(allow) || json_array_size(allow) > NET_POLICY_ENTRIES_MAX)
                return moat_error_invalid(err, "`network.allow` must be an array of at most %d strings",
                                          NET_POLICY_ENTRIES_MAX);
        if (policy->mode == NET_MODE_NONE && json_array_size(allow) > 0)
                return moat_error_invalid(err, "`network.allow` needs mode \"allow\" or \"internet\"");
        policy->cidrs = calloc(json_array_size(allow) + 1, sizeof(*policy->cidrs));
        policy->domains = calloc(json_array_size(allow) + 1, sizeof(*policy->domains));
        if (!policy->cidrs || !policy->domains)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "calloc");
        json_array_foreach(allow, index, entry) {
                if (!json_is_string(entry) || json_string_length(entry) == 0 ||
                    json_string_length(entry) > NET_DOMAIN_MAX + 2 ||
                    strlen(json_string_value(entry)) != json_string_length(entry))
                        return moat_error_invalid(err, "`network.allow[%zu]` must be a non-empty string of at most "
                                                  "%d bytes", index, NET_DOMAIN_MAX + 2);
                if (add_entry(policy, json_string_value(entry), err) < 0)
                        return -1;
        }
        /* Internet mode reaches public addresses; a name adds nothing there,
         * since every name resolves. Only CIDRs (private ranges) widen it. */
        if (policy->mode == NET_MODE_INTERNET && policy->domain_count > 0)
                return moat_error_invalid(err, "in mode internet `network.allow` may list only CIDRs (the private "
                                          "ranges to reach besides the internet)");
        return 0;
}

int net_policy_parse(const json_t *value, struct net_policy *ret, struct moat_error **err)
{
        struct net_policy policy = {.mode = NET_MODE_NONE, .max_connections = NET_MAX_CONNECTIONS_DEFAULT};

        if (!value || json_is_null(value)) {
                *ret = policy;
                return 0;
        }
        if (json_is_string(value)) {
                if (strcmp(json_string_value(value), "allow") == 0)
                        return moat_error_invalid(err, "`network` \"allow\" needs a list: {\"mode\": \"allow\", "
                                                  "\"allow\": [...]}");
                if (parse_mode(json_string_value(value), &policy.mode, err) < 0)
                        return -1;
                *ret = policy;
                return 0;
        }
        if (!json_is_object(value))
                return moat_error_invalid(err, "`network` must be an object or \"none\" / \"internet\"");
        if (parse_object(value, &policy, err) < 0) {
                net_policy_clear(&policy);
                return -1;
        }
        *ret = policy;
        return 0;
}

json_t *net_policy_to_json(const struct net_policy *policy)
{
        json_t *allow = json_array();
        char text[INET6_ADDRSTRLEN + 8];

        if (!allow)
                return NULL;
        for (size_t i = 0; i < policy->cidr_count; i++) {
                net_cidr_format(&policy->cidrs[i], text, sizeof(text));
                json_array_append_new(allow, json_string(text));
        }
        for (size_t i = 0; i < policy->domain_count; i++)
                json_array_append_new(allow, json_string(policy->domains[i]));
        return json_pack("{s:s, s:o, s:I, s:I}", "mode", net_mode_name(policy->mode), "allow", allow,
                         "bandwidth_mbps", (json_int_t)policy->bandwidth_mbps, "max_connections",
                         (json_int_t)policy->max_connections);
}

bool net_policy_name_allowed(const struct net_policy *policy, const char *asked)
{
        char name[NET_DOMAIN_MAX + 2];
        size_t length;

        if (policy->mode == NET_MODE_INTERNET)
                return true;
        if (policy->mode != NET_MODE_ALLOW || !normalize_name(asked, name, sizeof(name)))
                return false;
        length = strlen(name);
        for (size_t i = 0; i < policy->domain_count; i++) {
                const char *pattern = policy->domains[i];

                if (strncmp(pattern, "*.", 2) == 0) {
                        /* "*.x.com": the name must end in ".x.com" with at
                         * least one label before it. */
                        size_t suffix = strlen(pattern) - 1; /* ".x.com" */

                        if (length > suffix && strcmp(name + length - suffix, pattern + 1) == 0)
                                return true;
                } else if (strcmp(name, pattern) == 0) {
                        return true;
                }
        }
        return false;
}

int net_ports_parse(const json_t *value, struct net_port *ports, size_t *ret_count, struct moat_error **err)
{
        const json_t *entry;
        size_t index, count = 0;

        *ret_count = 0;
        if (!value || json_is_null(value))
                return 0;
        if (!json_is_array(value) || json_array_size(value) > NET_PORTS_MAX)
                return moat_error_invalid(err, "`ports` must be an array of at most %d ports", NET_PORTS_MAX);
        json_array_foreach(value, index, entry) {
                const json_t *port = entry, *public = NULL;
                struct net_port parsed = {0};

                if (json_is_object(entry)) {
                        const char *key;
                        json_t *member;

                        json_object_foreach((json_t *)entry, key, member)
                                if (strcmp(key, "port") != 0 && strcmp(key, "public") != 0)
                                        return moat_error_invalid(err, "unknown field `ports[%zu].%.64s`", index, key);
                        port = json_object_get(entry, "port");
                        public = json_object_get(entry, "public");
                        if (public && !json_is_boolean(public))
                                return moat_error_invalid(err, "`ports[%zu].public` must be a boolean", index);
                }
                if (!json_is_integer(port) || json_integer_value(port) < 1 || json_integer_value(port) > 65535)
                        return moat_error_invalid(err, "`ports[%zu]` must be a port number 1-65535 or "
                                                  "{\"port\": n, \"public\": bool}", index);
                parsed.port = (uint16_t)json_integer_value(port);
                parsed.public = public && json_is_true(public);
                for (size_t i = 0; i < count; i++)
                        if (ports[i].port == parsed.port)
                                return moat_error_invalid(err, "`ports` lists %u twice", parsed.port);
                ports[count++] = parsed;
        }
        *ret_count = count;
        return 0;
}
