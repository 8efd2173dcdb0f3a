/* Option parsing of run/create/exec and the request bodies built from it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "options.h"

#define ARGV(...) ((char *[]){ __VA_ARGS__, NULL })
#define ARGC(...) ((int)(sizeof((char *[]){ __VA_ARGS__ }) / sizeof(char *)))
#define PARSE_CREATE(mode, options, error, ...) \
        moat_options_parse_create(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), mode, options, error, sizeof(error))
#define PARSE_EXEC(options, error, ...) \
        moat_options_parse_exec(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), options, error, sizeof(error))

static void test_run_parses_every_option(void **state)
{
        struct moat_create_options o;
        char error[256] = "";

        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "--image", "deb", "--cpu", "0.5",
                                      "--memory=256", "--disk", "64", "--pids", "100", "--timeout", "30", "-e",
                                      "A=1", "--env=B=x=y", "-w", "/srv", "-u", "nobody", "--tag", "k=v", "--json",
                                      "-i", "--", "echo", "-n", "hi"),
                         MOAT_OPTIONS_OK);
        assert_string_equal(o.image, "deb");
        assert_true(o.cpu == 0.5);
        assert_int_equal(o.memory, 256);
        assert_int_equal(o.disk, 64);
        assert_int_equal(o.pids, 100);
        assert_int_equal(o.timeout, 30);
        assert_int_equal(o.env.count, 2);
        assert_string_equal(o.env.items[1], "B=x=y");
        assert_string_equal(o.workdir, "/srv");
        assert_string_equal(o.user, "nobody");
        assert_int_equal(o.tags.count, 1);
        assert_true(o.json);
        assert_true(o.interactive);
        /* Options of the command are the command's, after "--". */
        assert_int_equal(o.command_count, 3);
        assert_string_equal(o.command[0], "echo");
        assert_string_equal(o.command[1], "-n");

        json_auto_t *body = moat_options_create_body(&o, false);
        assert_non_null(body);
        assert_string_equal(json_string_value(json_object_get(body, "image")), "deb");
        assert_true(json_real_value(json_object_get(body, "cpu")) == 0.5);
        assert_int_equal(json_integer_value(json_object_get(body, "memory")), 256);
        assert_string_equal(json_string_value(json_object_get(json_object_get(body, "env"), "B")), "x=y");
        assert_string_equal(json_string_value(json_object_get(json_object_get(body, "tags"), "k")), "v");
        assert_null(json_object_get(body, "entrypoint"));
        moat_create_options_release(&o);
}

static void test_command_without_dashes_stops_option_parsing(void **state)
{
        struct moat_create_options o;
        char error[256];

        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "ls", "-l", "--json"), MOAT_OPTIONS_OK);
        assert_false(o.json);
        assert_int_equal(o.command_count, 3);
        moat_create_options_release(&o);
}

static void test_create_sends_entrypoint_and_defaults_nothing(void **state)
{
        struct moat_create_options o;
        char error[256];

        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_CREATE, &o, error, "create"), MOAT_OPTIONS_OK);
        assert_int_equal(o.command_count, 0);
        json_auto_t *empty = moat_options_create_body(&o, true);
        assert_int_equal(json_object_size(empty), 0); /* the server owns the defaults */
        moat_create_options_release(&o);

        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_CREATE, &o, error, "create", "--", "sleep", "60"),
                         MOAT_OPTIONS_OK);
        json_auto_t *body = moat_options_create_body(&o, true);
        json_t *entrypoint = json_object_get(body, "entrypoint");
        assert_int_equal(json_array_size(entrypoint), 2);
        assert_string_equal(json_string_value(json_array_get(entrypoint, 1)), "60");
        moat_create_options_release(&o);
}

static void test_bad_flags_are_usage_errors(void **state)
{
        struct moat_create_options o;
        char error[256];

        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "--bogus", "--", "true"),
                         MOAT_OPTIONS_USAGE);
        assert_non_null(strstr(error, "--bogus"));
        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "-x", "true"), MOAT_OPTIONS_USAGE);
        assert_non_null(strstr(error, "-x"));
        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "--memory"), MOAT_OPTIONS_USAGE);
        assert_non_null(strstr(error, "needs a value"));
        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "--memory", "12x", "true"),
                         MOAT_OPTIONS_USAGE);
        assert_non_null(strstr(error, "12x"));
        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "--cpu", "-1", "true"), MOAT_OPTIONS_USAGE);
        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "--cpu", "nan", "true"),
                         MOAT_OPTIONS_USAGE);
        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "--pids", "99999999999999999999", "true"),
                         MOAT_OPTIONS_USAGE);
        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "-e", "=v", "true"), MOAT_OPTIONS_USAGE);
        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "--tag", "novalue", "true"),
                         MOAT_OPTIONS_USAGE);
        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "--cpu", "1"), MOAT_OPTIONS_USAGE);
        assert_non_null(strstr(error, "missing command"));
        /* With an image and no command: the image's own command. */
        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "--image", "x"), MOAT_OPTIONS_OK);
        assert_int_equal(o.command_count, 0);
        moat_create_options_release(&o);
        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_CREATE, &o, error, "create", "-i"), MOAT_OPTIONS_USAGE);
        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_RUN, &o, error, "run", "-h"), MOAT_OPTIONS_HELP);
}

static void test_non_utf8_arguments_give_no_body(void **state)
{
        struct moat_create_options o;
        char error[256];

        assert_int_equal(PARSE_CREATE(MOAT_OPTIONS_CREATE, &o, error, "create", "-e", "K=\xff", "--", "true"),
                         MOAT_OPTIONS_OK);
        assert_null(moat_options_create_body(&o, true));
        moat_create_options_release(&o);
}

static void test_exec_parses_id_and_command(void **state)
{
        struct moat_exec_options o;
        char error[256];

        assert_int_equal(PARSE_EXEC(&o, error, "exec", "-i", "-e", "A=1", "-w", "/tmp", "--timeout", "5", "sb-1",
                                    "--", "cat", "-"),
                         MOAT_OPTIONS_OK);
        assert_true(o.interactive);
        assert_string_equal(o.sandbox_id, "sb-1");
        assert_int_equal(o.command_count, 2);
        assert_string_equal(o.command[0], "cat");
        json_auto_t *body = moat_options_exec_body(&o);
        assert_true(json_is_true(json_object_get(body, "stdin")));
        assert_int_equal(json_integer_value(json_object_get(body, "timeout")), 5);
        assert_string_equal(json_string_value(json_array_get(json_object_get(body, "argv"), 1)), "-");
        moat_exec_options_release(&o);

        /* "--" is optional. */
        assert_int_equal(PARSE_EXEC(&o, error, "exec", "sb-2", "true"), MOAT_OPTIONS_OK);
        assert_false(o.interactive);
        assert_string_equal(o.command[0], "true");
        json_auto_t *plain = moat_options_exec_body(&o);
        assert_null(json_object_get(plain, "stdin"));
        moat_exec_options_release(&o);
}

static void test_exec_usage_errors(void **state)
{
        struct moat_exec_options o;
        char error[256];

        assert_int_equal(PARSE_EXEC(&o, error, "exec"), MOAT_OPTIONS_USAGE);
        assert_non_null(strstr(error, "missing sandbox id"));
        assert_int_equal(PARSE_EXEC(&o, error, "exec", "sb-1"), MOAT_OPTIONS_USAGE);
        assert_non_null(strstr(error, "missing command"));
        assert_int_equal(PARSE_EXEC(&o, error, "exec", "sb-1", "--"), MOAT_OPTIONS_USAGE);
        assert_int_equal(PARSE_EXEC(&o, error, "exec", "--timeout", "0", "sb-1", "true"), MOAT_OPTIONS_USAGE);
        assert_int_equal(PARSE_EXEC(&o, error, "exec", "--image", "x", "sb-1", "true"), MOAT_OPTIONS_USAGE);
}

static void test_numbers_are_strict(void **state)
{
        long value;
        double real;

        assert_int_equal(moat_options_parse_positive_long("42", &value), 0);
        assert_int_equal(value, 42);
        assert_int_equal(moat_options_parse_positive_long("", &value), -1);
        assert_int_equal(moat_options_parse_positive_long("0", &value), -1);
        assert_int_equal(moat_options_parse_positive_long("+5", &value), -1);
        assert_int_equal(moat_options_parse_positive_long(" 5", &value), -1);
        assert_int_equal(moat_options_parse_positive_long("5 ", &value), -1);
        assert_int_equal(moat_options_parse_positive_double("0.01", &real), 0);
        assert_int_equal(moat_options_parse_positive_double("inf", &real), -1);
        assert_int_equal(moat_options_parse_positive_double("1e999", &real), -1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_run_parses_every_option),
                cmocka_unit_test(test_command_without_dashes_stops_option_parsing),
                cmocka_unit_test(test_create_sends_entrypoint_and_defaults_nothing),
                cmocka_unit_test(test_bad_flags_are_usage_errors),
                cmocka_unit_test(test_non_utf8_arguments_give_no_body),
                cmocka_unit_test(test_exec_parses_id_and_command),
                cmocka_unit_test(test_exec_usage_errors),
                cmocka_unit_test(test_numbers_are_strict),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
