/* Validation of request bodies (src/daemon/request.c): every rule of
 * docs/API.md's limits table, checked on the exact boundary. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"
#include "request.h"

#define HOST_CORES 4.0

static int parse_sandbox(const char *body, struct sandbox_request *r)
{
        struct moat_error *err = NULL;
        int ret = request_parse_sandbox(body, strlen(body), HOST_CORES, r, &err);

        if (ret < 0) {
                assert_non_null(err);
                assert_int_equal(err->kind, MOAT_ERROR_INVALID_ARGUMENT);
                assert_string_equal(err->code, "invalid_argument");
                moat_error_free(err);
        } else {
                assert_null(err);
        }
        return ret;
}

static void expect_sandbox_rejected(const char *body)
{
        struct sandbox_request r;

        if (parse_sandbox(body, &r) == 0) {
                sandbox_request_clear(&r);
                fail_msg("accepted: %s", body);
        }
}

static void expect_sandbox_accepted(const char *body)
{
        struct sandbox_request r;

        if (parse_sandbox(body, &r) < 0)
                fail_msg("rejected: %s", body);
        sandbox_request_clear(&r);
}

static void test_sandbox_defaults(void **state)
{
        struct sandbox_request r;

        assert_int_equal(parse_sandbox("", &r), 0);
        assert_string_equal(r.image, "host");
        assert_true(r.cpu == 1.0);
        assert_int_equal(r.memory_mib, 512);
        assert_int_equal(r.disk_mib, 1024);
        assert_int_equal(r.pids, 512);
        assert_int_equal(r.timeout_s, 300);
        assert_int_equal(r.idle_timeout_s, 0);
        assert_null(r.workdir); /* the image's, else "/" and "root", at create */
        assert_null(r.user);
        assert_int_equal(json_object_size(r.env), 0);
        assert_int_equal(json_object_size(r.tags), 0);
        assert_null(r.entrypoint);
        sandbox_request_clear(&r);

        assert_int_equal(parse_sandbox("{\"cpu\": 0.5, \"memory\": 64, \"env\": {\"A_1\": \"x=y\"},"
                                       " \"entrypoint\": [\"sh\", \"-c\", \"true\"], \"idle_timeout\": 5}",
                                       &r),
                         0);
        assert_true(r.cpu == 0.5);
        assert_int_equal(r.memory_mib, 64);
        assert_int_equal(r.idle_timeout_s, 5);
        assert_string_equal(json_string_value(json_object_get(r.env, "A_1")), "x=y");
        assert_int_equal(json_array_size(r.entrypoint), 3);
        sandbox_request_clear(&r);
}

static void test_sandbox_malformed(void **state)
{
        expect_sandbox_rejected("{");
        expect_sandbox_rejected("[]");
        expect_sandbox_rejected("null");
        expect_sandbox_rejected("{\"memory\": 64, \"memory\": 128}"); /* duplicate key */
        expect_sandbox_rejected("{\"bogus\": 1}");                   /* unknown field */
        expect_sandbox_rejected("{\"Image\": \"host\"}");            /* names are case-sensitive */
}

static void test_sandbox_types(void **state)
{
        expect_sandbox_rejected("{\"image\": 1}");
        expect_sandbox_rejected("{\"cpu\": \"1\"}");
        expect_sandbox_rejected("{\"memory\": 64.5}");
        expect_sandbox_rejected("{\"memory\": \"64\"}");
        expect_sandbox_rejected("{\"disk\": true}");
        expect_sandbox_rejected("{\"pids\": []}");
        expect_sandbox_rejected("{\"timeout\": {}}");
        expect_sandbox_rejected("{\"idle_timeout\": \"5\"}");
        expect_sandbox_rejected("{\"env\": []}");
        expect_sandbox_rejected("{\"env\": {\"A\": 1}}");
        expect_sandbox_rejected("{\"workdir\": 5}");
        expect_sandbox_rejected("{\"user\": 0}");
        expect_sandbox_rejected("{\"tags\": [\"a\"]}");
        expect_sandbox_rejected("{\"tags\": {\"a\": 1}}");
        expect_sandbox_rejected("{\"entrypoint\": \"sh\"}");
        expect_sandbox_rejected("{\"image_command\": 1}");
        expect_sandbox_rejected("{\"image_command\": true, \"entrypoint\": [\"sh\"]}");
        expect_sandbox_accepted("{\"image_command\": true}");
        expect_sandbox_accepted("{\"image_command\": false, \"entrypoint\": [\"sh\"]}");
        expect_sandbox_rejected("{\"entrypoint\": [1]}");
        expect_sandbox_rejected("{\"entrypoint\": []}");
        expect_sandbox_rejected("{\"entrypoint\": [\"\"]}");
}

static void test_sandbox_ranges(void **state)
{
        expect_sandbox_accepted("{\"cpu\": 0.01}");
        expect_sandbox_rejected("{\"cpu\": 0.009}");
        expect_sandbox_accepted("{\"cpu\": 4}");
        expect_sandbox_rejected("{\"cpu\": 4.01}"); /* more than the host has */
        expect_sandbox_rejected("{\"cpu\": -1}");
        expect_sandbox_accepted("{\"memory\": 8}");
        expect_sandbox_rejected("{\"memory\": 7}");
        expect_sandbox_accepted("{\"memory\": 65536}");
        expect_sandbox_rejected("{\"memory\": 65537}");
        expect_sandbox_accepted("{\"disk\": 1}");
        expect_sandbox_rejected("{\"disk\": 0}");
        expect_sandbox_rejected("{\"disk\": 65537}");
        expect_sandbox_accepted("{\"pids\": 8}");
        expect_sandbox_rejected("{\"pids\": 7}");
        expect_sandbox_rejected("{\"pids\": 32769}");
        expect_sandbox_accepted("{\"timeout\": 86400}");
        expect_sandbox_rejected("{\"timeout\": 0}");
        expect_sandbox_rejected("{\"timeout\": 86401}");
        expect_sandbox_rejected("{\"timeout\": -5}");
        expect_sandbox_rejected("{\"timeout\": 99999999999999999999}");
        expect_sandbox_rejected("{\"idle_timeout\": 0}");
        expect_sandbox_rejected("{\"idle_timeout\": 86401}");
        expect_sandbox_accepted("{\"idle_timeout\": null}");
}

static void test_sandbox_strings(void **state)
{
        /* NUL in any string: jansson refuses \u0000 unless asked, and so do we. */
        expect_sandbox_rejected("{\"workdir\": \"/a\\u0000b\"}");
        expect_sandbox_rejected("{\"env\": {\"A\": \"x\\u0000y\"}}");
        expect_sandbox_rejected("{\"env\": {\"A\\u0000B\": \"x\"}}");
        expect_sandbox_rejected("{\"tags\": {\"k\": \"\\u0000\"}}");
        expect_sandbox_rejected("{\"entrypoint\": [\"a\\u0000\"]}");
        expect_sandbox_rejected("{\"user\": \"ro\\u0000ot\"}");
        /* A raw NUL byte in the body. */
        {
                static const char body[] = "{\"workdir\": \"/a\0b\"}";
                struct sandbox_request r;
                struct moat_error *err = NULL;
                assert_int_equal(request_parse_sandbox(body, sizeof(body) - 1, HOST_CORES, &r, &err), -1);
                moat_error_free(err);
        }
        expect_sandbox_rejected("{\"workdir\": \"relative\"}");
        expect_sandbox_accepted("{\"workdir\": \"/home/user\"}");
        expect_sandbox_rejected("{\"image\": \"Host\"}");
        expect_sandbox_rejected("{\"image\": \"../etc\"}");
        expect_sandbox_rejected("{\"image\": \"\"}");
        expect_sandbox_accepted("{\"image\": \"bench-rootfs_1.2\"}");
        expect_sandbox_rejected("{\"user\": \"\"}");
        expect_sandbox_rejected("{\"user\": \"-x\"}");
        expect_sandbox_rejected("{\"user\": \"a b\"}");
        expect_sandbox_accepted("{\"user\": \"1000:1000\"}");
        expect_sandbox_accepted("{\"user\": \"user\"}");
}

static void test_env_keys(void **state)
{
        assert_true(request_env_key_valid("PATH"));
        assert_true(request_env_key_valid("_x9"));
        assert_false(request_env_key_valid(""));
        assert_false(request_env_key_valid("9A"));
        assert_false(request_env_key_valid("A=B"));
        assert_false(request_env_key_valid("A-B"));
        assert_false(request_env_key_valid("A B"));
        assert_false(request_env_key_valid("Ä"));
        expect_sandbox_rejected("{\"env\": {\"A=B\": \"x\"}}");
        expect_sandbox_rejected("{\"env\": {\"\": \"x\"}}");
        expect_sandbox_rejected("{\"env\": {\"1A\": \"x\"}}");
}

static char *tags_body(int count, int key_length, int value_length)
{
        size_t size = (size_t)count * (size_t)(key_length + value_length + 16) + 32;
        char *body = malloc(size), *p = body;

        p += sprintf(p, "{\"tags\": {");
        for (int i = 0; i < count; i++) {
                p += sprintf(p, "%s\"%0*d\": \"", i ? "," : "", key_length, i);
                memset(p, 'v', (size_t)value_length);
                p += value_length;
                p += sprintf(p, "\"");
        }
        sprintf(p, "}}");
        return body;
}

static void test_tags(void **state)
{
        char *body;

        body = tags_body(32, 64, 256);
        expect_sandbox_accepted(body);
        free(body);
        body = tags_body(33, 4, 1);
        expect_sandbox_rejected(body);
        free(body);
        body = tags_body(1, 65, 1);
        expect_sandbox_rejected(body);
        free(body);
        body = tags_body(1, 4, 257);
        expect_sandbox_rejected(body);
        free(body);
        expect_sandbox_rejected("{\"tags\": {\"\": \"v\"}}");
}

/* {"entrypoint": ["x", ... count], "env": {...}} */
static char *argv_body(int count, size_t argument_length)
{
        size_t size = (size_t)count * (argument_length + 4) + 64;
        char *body = malloc(size), *p = body;

        p += sprintf(p, "{\"entrypoint\": [");
        for (int i = 0; i < count; i++) {
                p += sprintf(p, "%s\"", i ? "," : "");
                memset(p, 'a', argument_length);
                p += argument_length;
                *p++ = '"';
        }
        sprintf(p, "]}");
        return body;
}

static void test_argv_limits(void **state)
{
        char *body;

        body = argv_body(4096, 1);
        expect_sandbox_accepted(body);
        free(body);
        body = argv_body(4097, 1);
        expect_sandbox_rejected(body);
        free(body);
        /* 512 KiB together: 2 entries of 256 KiB - 1 (+ NUL each) fit... */
        body = argv_body(2, 256 * 1024 - 1);
        expect_sandbox_accepted(body);
        free(body);
        /* ...one byte more does not. */
        body = argv_body(2, 256 * 1024);
        expect_sandbox_rejected(body);
        free(body);
}

static int parse_exec(const char *body, bool one_shot, struct exec_request *r)
{
        struct moat_error *err = NULL;
        int ret = request_parse_exec(body, strlen(body), one_shot, "bash", r, &err);

        if (ret < 0) {
                assert_int_equal(err->kind, MOAT_ERROR_INVALID_ARGUMENT);
                moat_error_free(err);
        }
        return ret;
}

static void test_exec(void **state)
{
        struct exec_request r;

        assert_int_equal(parse_exec("{\"argv\": [\"ls\", \"-l\"], \"stdin\": true, \"timeout\": 5, \"tag\": \"t\"}",
                                    false, &r),
                         0);
        assert_true(r.stdin_pipe);
        assert_int_equal(r.timeout_s, 5);
        assert_string_equal(r.tag, "t");
        exec_request_clear(&r);

        assert_int_equal(parse_exec("{}", false, &r), -1);
        assert_int_equal(parse_exec("{\"argv\": []}", false, &r), -1);
        assert_int_equal(parse_exec("{\"cmd\": \"ls\"}", false, &r), -1); /* cmd is /run's */
        assert_int_equal(parse_exec("{\"argv\": [\"ls\"], \"stdin\": \"x\"}", false, &r), -1);
        assert_int_equal(parse_exec("{\"argv\": [\"ls\"], \"timeout\": 0}", false, &r), -1);
        assert_int_equal(parse_exec("{\"argv\": [\"ls\"], \"timeout\": 86401}", false, &r), -1);
        assert_int_equal(parse_exec("{\"argv\": [\"ls\"], \"workdir\": \"tmp\"}", false, &r), -1);
        assert_int_equal(parse_exec("{\"argv\": [\"ls\"], \"env\": {\"A-B\": \"1\"}}", false, &r), -1);
        assert_int_equal(parse_exec("{\"argv\": [\"ls\"], \"extra\": 1}", false, &r), -1);

        char tag[128];
        snprintf(tag, sizeof(tag), "{\"argv\": [\"ls\"], \"tag\": \"%065d\"}", 0);
        assert_int_equal(parse_exec(tag, false, &r), -1);
        snprintf(tag, sizeof(tag), "{\"argv\": [\"ls\"], \"tag\": \"%064d\"}", 0);
        assert_int_equal(parse_exec(tag, false, &r), 0);
        exec_request_clear(&r);
}

static void test_run(void **state)
{
        struct exec_request r;

        assert_int_equal(parse_exec("{\"cmd\": \"echo hi\", \"stdin\": \"data\"}", true, &r), 0);
        assert_int_equal(json_array_size(r.argv), 3);
        assert_string_equal(json_string_value(json_array_get(r.argv, 0)), "bash");
        assert_string_equal(json_string_value(json_array_get(r.argv, 1)), "-lc");
        assert_string_equal(json_string_value(json_array_get(r.argv, 2)), "echo hi");
        assert_true(r.stdin_pipe);
        assert_int_equal(r.stdin_length, 4);
        assert_memory_equal(r.stdin_data, "data", 4);
        exec_request_clear(&r);

        assert_int_equal(parse_exec("{\"cmd\": \"x\", \"argv\": [\"y\"]}", true, &r), -1);
        assert_int_equal(parse_exec("{\"cmd\": \"\"}", true, &r), -1);
        assert_int_equal(parse_exec("{\"cmd\": 5}", true, &r), -1);
        assert_int_equal(parse_exec("{\"argv\": [\"y\"], \"stdin\": true}", true, &r), -1);
        assert_int_equal(parse_exec("{}", true, &r), -1);
}

static void test_signals(void **state)
{
        struct moat_error *err = NULL;
        int signal_number = 0;

        assert_int_equal(request_signal_from_name("SIGTERM"), SIGTERM);
        assert_int_equal(request_signal_from_name("TERM"), SIGTERM);
        assert_int_equal(request_signal_from_name("SIGKILL"), SIGKILL);
        assert_int_equal(request_signal_from_name("SIGWINCH"), SIGWINCH);
        assert_int_equal(request_signal_from_name("sigterm"), -1);
        assert_int_equal(request_signal_from_name("SIG"), -1);
        assert_int_equal(request_signal_from_name(""), -1);

        assert_int_equal(request_parse_signal("{\"signal\": 9}", 13, &signal_number, &err), 0);
        assert_int_equal(signal_number, 9);
        assert_int_equal(request_parse_signal("{\"signal\": \"SIGINT\"}", 20, &signal_number, &err), 0);
        assert_int_equal(signal_number, SIGINT);
        static const char *const bad[] = {"{\"signal\": 0}", "{\"signal\": 65}", "{\"signal\": -9}",
                                          "{\"signal\": \"SIGNOPE\"}", "{\"signal\": 1.5}", "{}",
                                          "{\"signal\": 9, \"x\": 1}", "{\"signal\": [9]}"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                assert_int_equal(request_parse_signal(bad[i], strlen(bad[i]), &signal_number, &err), -1);
                assert_int_equal(err->kind, MOAT_ERROR_INVALID_ARGUMENT);
                moat_error_free(err);
                err = NULL;
        }
}

static void test_seconds_and_filters(void **state)
{
        struct moat_error *err = NULL;
        char *key = NULL, *value = NULL;
        double seconds;

        assert_int_equal(request_parse_seconds("2.5", &seconds, &err), 0);
        assert_true(seconds == 2.5);
        assert_int_equal(request_parse_seconds("0", &seconds, &err), 0);
        static const char *const bad[] = {"", "-1", "86401", "abc", "1x", "nan", "inf"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                assert_int_equal(request_parse_seconds(bad[i], &seconds, &err), -1);
                moat_error_free(err);
                err = NULL;
        }
        assert_int_equal(request_parse_tag_filter("k=v=w", &key, &value, &err), 0);
        assert_string_equal(key, "k");
        assert_string_equal(value, "v=w");
        free(key);
        free(value);
        assert_int_equal(request_parse_tag_filter("novalue", &key, &value, &err), -1);
        moat_error_free(err);
        err = NULL;
        assert_int_equal(request_parse_tag_filter("=v", &key, &value, &err), -1);
        moat_error_free(err);
}

static void test_image_import(void **state)
{
        struct moat_error *err = NULL;
        char *path = NULL, *name = NULL;
        static const char good[] = "{\"path\": \"/srv/rootfs\", \"name\": \"bench-rootfs\"}";

        assert_int_equal(request_parse_image_import(good, strlen(good), &path, &name, &err), 0);
        assert_string_equal(path, "/srv/rootfs");
        assert_string_equal(name, "bench-rootfs");
        free(path);
        free(name);
        static const char *const bad[] = {"{\"path\": \"rel\", \"name\": \"x\"}", "{\"path\": \"/a\"}",
                                          "{\"path\": \"/a\", \"name\": \"../x\"}",
                                          "{\"path\": \"/a\", \"name\": \"x\", \"y\": 1}",
                                          "{\"path\": \"/a\\u0000\", \"name\": \"x\"}"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                assert_int_equal(request_parse_image_import(bad[i], strlen(bad[i]), &path, &name, &err), -1);
                moat_error_free(err);
                err = NULL;
        }
}

static void test_ids(void **state)
{
        struct moat_error *err = NULL;
        char a[MOAT_ID_MAX], b[MOAT_ID_MAX];

        assert_int_equal(moat_id_generate("sb-", a, &err), 0);
        assert_int_equal(moat_id_generate("sb-", b, &err), 0);
        assert_int_equal(strlen(a), 3 + 16);
        assert_true(moat_id_valid("sb-", a));
        assert_string_not_equal(a, b);
        assert_false(moat_id_valid("ex-", a));
        assert_false(moat_id_valid("sb-", "sb-0123456789abcde"));   /* 15 digits */
        assert_false(moat_id_valid("sb-", "sb-0123456789abcdef0")); /* 17 digits */
        assert_false(moat_id_valid("sb-", "sb-0123456789ABCDEF"));  /* upper case */
        assert_false(moat_id_valid("sb-", "sb-../../../etc/pas"));
        assert_true(moat_id_valid("ex-", "ex-0123456789abcdef"));

        unsigned long long value, seen_high = 0;
        for (int i = 0; i < 1000; i++) {
                assert_int_equal(moat_random_below(10, &value, &err), 0);
                assert_true(value < 10);
                if (value >= 5)
                        seen_high++;
        }
        /* Both halves occur (the chance this fails by luck is 2^-1000). */
        assert_true(seen_high > 0 && seen_high < 1000);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_sandbox_defaults), cmocka_unit_test(test_sandbox_malformed),
                cmocka_unit_test(test_sandbox_types),    cmocka_unit_test(test_sandbox_ranges),
                cmocka_unit_test(test_sandbox_strings),  cmocka_unit_test(test_env_keys),
                cmocka_unit_test(test_tags),             cmocka_unit_test(test_argv_limits),
                cmocka_unit_test(test_exec),             cmocka_unit_test(test_run),
                cmocka_unit_test(test_signals),          cmocka_unit_test(test_seconds_and_filters),
                cmocka_unit_test(test_image_import),     cmocka_unit_test(test_ids),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
