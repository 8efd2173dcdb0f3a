/* Network policies and exposed ports (src/daemon/netpolicy.c, and their
 * place in the create body and PUT /network): every validation rule, the
 * name matching the DNS resolver relies on, CIDR normalisation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netpolicy.h"
#include "request.h"

static int parse(const char *json, struct net_policy *policy)
{
        struct moat_error *err = NULL;
        int r = request_parse_network(json, strlen(json), policy, &err);

        if (r < 0) {
                assert_non_null(err);
                assert_string_equal(err->code, "invalid_argument");
                moat_error_free(err);
        }
        return r;
}

static void expect_rejected(const char *json)
{
        struct net_policy policy;

        if (parse(json, &policy) == 0) {
                net_policy_clear(&policy);
                fail_msg("accepted: %s", json);
        }
}

static void test_modes(void **state)
{
        struct net_policy p;

        assert_int_equal(parse("\"none\"", &p), 0);
        assert_int_equal(p.mode, NET_MODE_NONE);
        assert_int_equal(p.max_connections, NET_MAX_CONNECTIONS_DEFAULT);
        assert_int_equal(p.bandwidth_mbps, 0);
        net_policy_clear(&p);
        assert_int_equal(parse("\"internet\"", &p), 0);
        assert_int_equal(p.mode, NET_MODE_INTERNET);
        net_policy_clear(&p);
        assert_int_equal(parse("{\"mode\": \"allow\", \"allow\": [\"pypi.org\"], \"bandwidth_mbps\": 100, "
                               "\"max_connections\": 10}",
                               &p),
                         0);
        assert_int_equal(p.mode, NET_MODE_ALLOW);
        assert_int_equal(p.bandwidth_mbps, 100);
        assert_int_equal(p.max_connections, 10);
        net_policy_clear(&p);

        expect_rejected("\"allow\"");                     /* a list is needed */
        expect_rejected("\"foo\"");
        expect_rejected("{\"mode\": \"foo\"}");
        expect_rejected("{}");
        expect_rejected("{\"mode\": \"allow\"}");
        expect_rejected("{\"mode\": \"none\", \"allow\": [\"10.0.0.0/8\"]}");
        expect_rejected("{\"mode\": \"internet\", \"allow\": [\"pypi.org\"]}"); /* only CIDRs widen internet */
        expect_rejected("{\"mode\": \"allow\", \"allow\": [\"a.b\"], \"extra\": 1}");
        expect_rejected("{\"mode\": \"allow\", \"allow\": \"a.b\"}");
        expect_rejected("{\"mode\": \"allow\", \"allow\": [\"a.b\"], \"bandwidth_mbps\": -1}");
        expect_rejected("{\"mode\": \"allow\", \"allow\": [\"a.b\"], \"bandwidth_mbps\": 100001}");
        expect_rejected("{\"mode\": \"allow\", \"allow\": [\"a.b\"], \"max_connections\": 0}");
        expect_rejected("{\"mode\": \"allow\", \"allow\": [\"a.b\"], \"max_connections\": 1.5}");
        expect_rejected("[]");
        expect_rejected("7");
        expect_rejected("{\"mode\": \"allow\", \"allow\": [\"a.b\"]");
        expect_rejected("");
}

static void test_entries(void **state)
{
        static const char *const bad[] = {
                "300.1.1.1/8", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/8x", "2001:db8::/129",
                "*", "*.", "a..b", ".a", "a b", "a/b", "*.*.a", "a.*.b", "-", "http://pypi.org", "",
                "a\\u0001b", "\\u00e9t\\u00e9.fr",
        };
        char json[512];

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                snprintf(json, sizeof(json), "{\"mode\": \"allow\", \"allow\": [\"%s\"]}", bad[i]);
                expect_rejected(json);
        }
        /* a 64-byte label, a 254-byte name */
        snprintf(json, sizeof(json), "{\"mode\": \"allow\", \"allow\": [\"%064d.com\"]}", 0);
        expect_rejected(json);
        {
                char name[300];

                memset(name, 'a', sizeof(name));
                for (int i = 60; i < 254; i += 61)
                        name[i] = '.';
                name[254] = '\0';
                snprintf(json, sizeof(json), "{\"mode\": \"allow\", \"allow\": [\"%s\"]}", name);
                expect_rejected(json);
        }
        /* too many entries */
        {
                size_t size = 16 * (NET_POLICY_ENTRIES_MAX + 2) + 64, used;
                char *big = malloc(size);

                assert_non_null(big);
                used = (size_t)snprintf(big, size, "{\"mode\": \"allow\", \"allow\": [");
                for (int i = 0; i <= NET_POLICY_ENTRIES_MAX; i++)
                        used += (size_t)snprintf(big + used, size - used, "%s\"h%d.x\"", i ? "," : "", i);
                snprintf(big + used, size - used, "]}");
                expect_rejected(big);
                free(big);
        }
}

static void test_cidrs(void **state)
{
        struct net_cidr c;
        char text[64];

        assert_true(net_cidr_parse("10.1.2.3/16", &c));
        net_cidr_format(&c, text, sizeof(text));
        assert_string_equal(text, "10.1.0.0/16"); /* host bits cleared */
        assert_true(net_cidr_parse("198.18.0.5", &c));
        net_cidr_format(&c, text, sizeof(text));
        assert_string_equal(text, "198.18.0.5/32");
        assert_true(net_cidr_parse("2001:db8::1/32", &c));
        net_cidr_format(&c, text, sizeof(text));
        assert_string_equal(text, "2001:db8::/32");
        assert_true(net_cidr_parse("0.0.0.0/0", &c));
        assert_int_equal(c.prefix, 0);
        assert_false(net_cidr_parse("10.0.0.1/ 8", &c));
        assert_false(net_cidr_parse("pypi.org", &c));
}

static bool covers(const char *outer, const char *inner)
{
        struct net_cidr a, b;

        assert_true(net_cidr_parse(outer, &a));
        assert_true(net_cidr_parse(inner, &b));
        return net_cidr_covers(&a, &b);
}

static void test_cidr_covers(void **state)
{
        (void)state;
        assert_true(covers("10.0.0.0/8", "10.1.0.0/16"));
        assert_true(covers("10.0.0.0/8", "10.0.0.0/8"));
        assert_true(covers("0.0.0.0/0", "192.0.2.7"));
        assert_false(covers("10.1.0.0/16", "10.0.0.0/8"));
        assert_false(covers("10.0.0.0/8", "11.0.0.0/8"));
        assert_false(covers("10.0.0.0/8", "::/0"));
        assert_true(covers("2001:db8::/32", "2001:db8:1::/48"));
        assert_false(covers("2001:db8::/33", "2001:db8:8000::/48"));
}

static void test_names(void **state)
{
        struct net_policy p;

        assert_int_equal(parse("{\"mode\": \"allow\", \"allow\": [\"PyPI.org.\", \"*.github.com\", "
                               "\"10.0.0.0/8\", \"pypi.org\"]}",
                               &p),
                         0);
        assert_int_equal(p.domain_count, 2); /* normalised, duplicates folded */
        assert_int_equal(p.cidr_count, 1);
        assert_true(net_policy_name_allowed(&p, "pypi.org"));
        assert_true(net_policy_name_allowed(&p, "PYPI.ORG."));
        assert_false(net_policy_name_allowed(&p, "files.pypi.org"));
        assert_false(net_policy_name_allowed(&p, "pypi.org.evil.com"));
        assert_false(net_policy_name_allowed(&p, "evilpypi.org"));
        assert_true(net_policy_name_allowed(&p, "api.github.com"));
        assert_true(net_policy_name_allowed(&p, "a.b.github.com"));
        assert_false(net_policy_name_allowed(&p, "github.com")); /* the wildcard needs a label */
        assert_false(net_policy_name_allowed(&p, "xgithub.com"));
        assert_false(net_policy_name_allowed(&p, ".github.com"));
        assert_false(net_policy_name_allowed(&p, ""));
        {
                json_t *j = net_policy_to_json(&p);
                char *text = json_dumps(j, JSON_COMPACT);

                assert_string_equal(text, "{\"mode\":\"allow\",\"allow\":[\"10.0.0.0/8\",\"pypi.org\",\"*.github.com\"],"
                                          "\"bandwidth_mbps\":0,\"max_connections\":1024}");
                free(text);
                json_decref(j);
        }
        net_policy_clear(&p);
        assert_int_equal(parse("\"internet\"", &p), 0);
        assert_true(net_policy_name_allowed(&p, "anything.example"));
        net_policy_clear(&p);
        assert_int_equal(parse("\"none\"", &p), 0);
        assert_false(net_policy_name_allowed(&p, "pypi.org"));
        net_policy_clear(&p);
}

static int parse_ports(const char *json, struct net_port *ports, size_t *count)
{
        struct moat_error *err = NULL;
        json_t *value = json_loads(json, JSON_DECODE_ANY, NULL);
        int r;

        assert_non_null(value);
        r = net_ports_parse(value, ports, count, &err);
        json_decref(value);
        moat_error_free(err);
        return r;
}

static void test_ports(void **state)
{
        struct net_port ports[NET_PORTS_MAX];
        size_t count;

        assert_int_equal(parse_ports("[8080, {\"port\": 80, \"public\": true}, {\"port\": 1}]", ports, &count), 0);
        assert_int_equal(count, 3);
        assert_int_equal(ports[0].port, 8080);
        assert_false(ports[0].public);
        assert_true(ports[1].public);
        assert_int_equal(parse_ports("[0]", ports, &count), -1);
        assert_int_equal(parse_ports("[65536]", ports, &count), -1);
        assert_int_equal(parse_ports("[80, 80]", ports, &count), -1);
        assert_int_equal(parse_ports("[\"80\"]", ports, &count), -1);
        assert_int_equal(parse_ports("[{\"port\": 80, \"public\": 1}]", ports, &count), -1);
        assert_int_equal(parse_ports("[{\"port\": 80, \"other\": 1}]", ports, &count), -1);
        assert_int_equal(parse_ports("80", ports, &count), -1);
        assert_int_equal(parse_ports("[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]", ports, &count), -1);
        assert_int_equal(parse_ports("[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]", ports, &count), 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_modes), cmocka_unit_test(test_entries), cmocka_unit_test(test_cidrs), cmocka_unit_test(test_cidr_covers),
                cmocka_unit_test(test_names), cmocka_unit_test(test_ports),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
