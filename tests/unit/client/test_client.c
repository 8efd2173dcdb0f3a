/* Client pieces that need no daemon: socket discovery order, path escaping,
 * error mapping, and a refused connection becoming a clear error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "output.h"

static void test_socket_discovery_order(void **state)
{
        assert_string_equal(moat_client_socket_choose("/a.sock", "/env.sock"), "/a.sock");
        assert_string_equal(moat_client_socket_choose(NULL, "/env.sock"), "/env.sock");
        assert_string_equal(moat_client_socket_choose("", "/env.sock"), "/env.sock");
        assert_string_equal(moat_client_socket_choose(NULL, NULL), MOAT_CLIENT_DEFAULT_SOCKET);
        assert_string_equal(moat_client_socket_choose(NULL, ""), "/run/moat/moatd.sock");
}

static void test_client_new_reads_the_environment(void **state)
{
        struct moat_client *client = NULL;
        struct moat_error *err = NULL;
        char long_path[200];

        setenv("MOAT_SOCKET", "/tmp/from-env.sock", 1);
        assert_int_equal(moat_client_new(NULL, &client, &err), 0);
        assert_string_equal(moat_client_socket(client), "/tmp/from-env.sock");
        moat_client_free(client);
        assert_int_equal(moat_client_new("/tmp/explicit.sock", &client, &err), 0);
        assert_string_equal(moat_client_socket(client), "/tmp/explicit.sock");
        moat_client_free(client);
        unsetenv("MOAT_SOCKET");

        /* Longer than sun_path: refused, not silently cut. */
        memset(long_path, 'a', sizeof(long_path) - 1);
        long_path[0] = '/';
        long_path[sizeof(long_path) - 1] = '\0';
        assert_int_equal(moat_client_new(long_path, &client, &err), -1);
        assert_int_equal(err->kind, MOAT_ERROR_INVALID_ARGUMENT);
        moat_error_free(err);
}

static void test_unreachable_daemon_is_a_clear_error(void **state)
{
        struct moat_client *client = NULL;
        struct moat_error *err = NULL;
        char path[] = "/tmp/moat-client-test-XXXXXX";

        /* A path where nothing listens. */
        assert_non_null(mkdtemp(path));
        char socket_path[64];
        snprintf(socket_path, sizeof(socket_path), "%s/none.sock", path);
        assert_int_equal(moat_client_new(socket_path, &client, &err), 0);
        assert_int_equal(moat_client_request(client, "GET", "/v1/health", NULL, NULL, &err), -1);
        assert_string_equal(err->code, "daemon_unreachable");
        assert_non_null(strstr(err->message, socket_path));
        moat_error_free(err);
        moat_client_free(client);
        rmdir(path);
}

static void test_escape_segment(void **state)
{
        char *escaped = moat_client_escape_segment("sb-1_a.b~c");
        assert_string_equal(escaped, "sb-1_a.b~c");
        free(escaped);
        escaped = moat_client_escape_segment("../x?y#z k=v/\xff");
        assert_string_equal(escaped, "..%2Fx%3Fy%23z%20k%3Dv%2F%FF");
        free(escaped);
}

static void test_error_from_response(void **state)
{
        struct moat_error *err = NULL;
        json_auto_t *body = json_pack("{s{ss ss}}", "error", "code", "exec_not_found", "message", "no such file");

        assert_int_equal(moat_client_error_from_response(404, body, &err), -1);
        assert_int_equal(err->kind, MOAT_ERROR_NOT_FOUND);
        assert_string_equal(err->code, "exec_not_found");
        assert_string_equal(err->message, "no such file");
        moat_error_free(err);
        err = NULL;

        /* No error object (a proxy's HTML page): kind from the status. */
        assert_int_equal(moat_client_error_from_response(503, NULL, &err), -1);
        assert_int_equal(err->kind, MOAT_ERROR_UNAVAILABLE);
        assert_string_equal(err->code, "unavailable");
        moat_error_free(err);

        /* Specific codes the client does not know map by status. */
        assert_int_equal(moat_client_error_kind(409, "sandbox_not_running"), MOAT_ERROR_CONFLICT);
        assert_int_equal(moat_client_error_kind(429, "output_too_large"), MOAT_ERROR_LIMIT_EXCEEDED);
        assert_int_equal(moat_client_error_kind(413, "payload_too_large"), MOAT_ERROR_LIMIT_EXCEEDED);
        assert_int_equal(moat_client_error_kind(500, "internal"), MOAT_ERROR_INTERNAL);
        assert_int_equal(moat_client_error_kind(500, "weird"), MOAT_ERROR_SYSTEM);
}

static void test_age_and_timestamps(void **state)
{
        char age[16];

        assert_int_equal(moat_output_parse_timestamp("1970-01-01T00:01:00.123Z"), 60);
        assert_int_equal(moat_output_parse_timestamp("garbage"), -1);
        assert_int_equal(moat_output_parse_timestamp(NULL), -1);
        moat_output_format_age(42, age, sizeof(age));
        assert_string_equal(age, "42s");
        moat_output_format_age(600, age, sizeof(age));
        assert_string_equal(age, "10m");
        moat_output_format_age(3 * 3600, age, sizeof(age));
        assert_string_equal(age, "3h");
        moat_output_format_age(5 * 86400, age, sizeof(age));
        assert_string_equal(age, "5d");
        moat_output_format_age(-5, age, sizeof(age));
        assert_string_equal(age, "0s");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_socket_discovery_order),
                cmocka_unit_test(test_client_new_reads_the_environment),
                cmocka_unit_test(test_unreachable_daemon_is_a_clear_error),
                cmocka_unit_test(test_escape_segment),
                cmocka_unit_test(test_error_from_response),
                cmocka_unit_test(test_age_and_timestamps),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
