/* The Dockerfile subset of `moat image build` (src/cli/dockerfile.h): every
 * instruction form, continuations, and the errors with their line numbers.
 * dockerfile_resolve_copies runs against a real directory tree in /tmp. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dockerfile.h"

/* Parse text; the spec as compact JSON with sorted keys (or NULL). */
static char *parse(const char *text, struct moat_error **err)
{
        json_t *spec = NULL;
        char *dumped;

        if (dockerfile_parse(text, strlen(text), &spec, err) < 0) {
                assert_null(spec);
                return NULL;
        }
        assert_non_null(spec);
        dumped = json_dumps(spec, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(spec);
        return dumped;
}

static void expect_spec(const char *text, const char *expected)
{
        struct moat_error *err = NULL;
        char *got = parse(text, &err);

        if (!got)
                fail_msg("parse failed: %s", err ? err->message : "?");
        assert_string_equal(got, expected);
        free(got);
}

/* The parse fails, with code invalid_dockerfile and a message holding each
 * of the given fragments (a "line N:" prefix among them). */
static void expect_error(const char *text, const char *fragment, const char *other_fragment)
{
        struct moat_error *err = NULL;
        char *got = parse(text, &err);

        if (got)
                fail_msg("parse succeeded: %s", got);
        assert_non_null(err);
        assert_string_equal(err->code, "invalid_dockerfile");
        if (!strstr(err->message, fragment))
                fail_msg("`%s` not in `%s`", fragment, err->message);
        if (other_fragment && !strstr(err->message, other_fragment))
                fail_msg("`%s` not in `%s`", other_fragment, err->message);
        moat_error_free(err);
}

static void test_from_and_comments(void **state)
{
        expect_spec("FROM host\n", "{\"from\":\"host\",\"steps\":[]}");
        expect_spec("# syntax comment\n\n   \n  from debian:bookworm-slim AS base  \n# end\n",
                    "{\"from\":\"debian:bookworm-slim\",\"steps\":[]}");
        expect_spec("\r\nFROM host\r\n", "{\"from\":\"host\",\"steps\":[]}");
        expect_error("", "no FROM", NULL);
        expect_error("# only a comment\n", "no FROM", NULL);
        expect_error("RUN true\nFROM host\n", "line 1:", "first instruction must be FROM");
        expect_error("FROM host\nFROM other\n", "line 2:", "multi-stage");
        expect_error("FROM\n", "line 1:", "FROM needs an image");
        expect_error("FROM a b\n", "line 1:", "optionally `AS name`");
        expect_error("FROM --platform=linux/arm64 host\n", "line 1:", "--platform");
}

static void test_run_forms(void **state)
{
        expect_spec("FROM host\nRUN echo hi && echo \"x y\"\n",
                    "{\"from\":\"host\",\"steps\":[{\"run\":\"echo hi && echo \\\"x y\\\"\"}]}");
        /* Exec form: every word single-quoted, a quote inside escaped. */
        expect_spec("FROM host\nRUN [\"echo\", \"it's $HOME\", \"a b\"]\n",
                    "{\"from\":\"host\",\"steps\":[{\"run\":\"'echo' 'it'\\\\''s $HOME' 'a b'\"}]}");
        /* Not a valid JSON array: the shell form, as Docker does. */
        expect_spec("FROM host\nRUN [ -d /tmp ] && echo yes\n",
                    "{\"from\":\"host\",\"steps\":[{\"run\":\"[ -d /tmp ] && echo yes\"}]}");
        expect_error("FROM host\n\nRUN\n", "line 3:", "RUN needs a command");
        expect_error("FROM host\nRUN --mount=type=cache,target=/x make\n", "line 2:", "--mount");
}

static void test_continuations(void **state)
{
        /* The backslash-newline goes; what surrounds it stays; comment and
         * blank lines inside are dropped; blanks after the backslash are
         * allowed. The instruction's line is its first. */
        expect_spec("FROM host\nRUN apt-get update && \\\n    apt-get install -y x \\   \n# a comment\n\n    && true\n",
                    "{\"from\":\"host\",\"steps\":[{\"run\":\"apt-get update &&     apt-get install -y x     && "
                    "true\"}]}");
        expect_spec("FROM \\\nhost\nENV A=1 \\\n    B=2\n",
                    "{\"from\":\"host\",\"steps\":[{\"env\":{\"A\":\"1\",\"B\":\"2\"}}]}");
        /* A continuation cut by the end of the file ends the instruction. */
        expect_spec("FROM host\nRUN echo a \\", "{\"from\":\"host\",\"steps\":[{\"run\":\"echo a\"}]}");
        expect_error("FROM host\nRUN echo a \\\n  b\nBOGUS x\n", "line 4:", "unknown instruction `BOGUS`");
        expect_error("FROM host\nRUN echo \\\n  more\nCOPY \\\n  --chown=1:1 a /b\n", "line 4:", "--chown");
}

static void test_env_forms(void **state)
{
        expect_spec("FROM host\nENV A=1 B=\"two words\" C='single $x' D=a\\ b E=\n",
                    "{\"from\":\"host\",\"steps\":[{\"env\":{\"A\":\"1\",\"B\":\"two words\",\"C\":\"single $x\","
                    "\"D\":\"a b\",\"E\":\"\"}}]}");
        expect_spec("FROM host\nENV GREETING hello big world\n",
                    "{\"from\":\"host\",\"steps\":[{\"env\":{\"GREETING\":\"hello big world\"}}]}");
        expect_spec("FROM host\nENV Q \"quoted value\"\n",
                    "{\"from\":\"host\",\"steps\":[{\"env\":{\"Q\":\"quoted value\"}}]}");
        expect_spec("FROM host\nENV X=\"a\\\"b\"\n", "{\"from\":\"host\",\"steps\":[{\"env\":{\"X\":\"a\\\"b\"}}]}");
        expect_error("FROM host\nENV\n", "line 2:", "ENV needs");
        expect_error("FROM host\nENV LONELY\n", "line 2:", "needs a value");
        expect_error("FROM host\nENV 1BAD=x\n", "line 2:", "not a valid name");
        expect_error("FROM host\nENV A-B value\n", "line 2:", "not a valid name");
        expect_error("FROM host\nENV A=1 junk\n", "line 2:", "`junk` is not KEY=VALUE");
        expect_error("FROM host\nENV A=\"open\n", "line 2:", "unterminated double quote");
}

static void test_workdir_user(void **state)
{
        expect_spec("FROM host\nWORKDIR /app\nWORKDIR src/./x/../y/\nWORKDIR /\nUSER nobody\nUSER 1000:1000\n",
                    "{\"from\":\"host\",\"steps\":[{\"workdir\":\"/app\"},{\"workdir\":\"/app/src/y\"},"
                    "{\"workdir\":\"/\"},{\"user\":\"nobody\"},{\"user\":\"1000:1000\"}]}");
        expect_spec("FROM host\nWORKDIR /../../etc\n", "{\"from\":\"host\",\"steps\":[{\"workdir\":\"/etc\"}]}");
        expect_error("FROM host\nWORKDIR\n", "line 2:", "WORKDIR needs a path");
        expect_error("FROM host\nUSER\n", "line 2:", "USER takes one");
        expect_error("FROM host\nUSER a b\n", "line 2:", "USER takes one");
}

static void test_copy_forms(void **state)
{
        expect_spec("FROM host\nCOPY app.py /srv/app.py\n",
                    "{\"from\":\"host\",\"steps\":[{\"copy\":{\"dest\":\"/srv/app.py\",\"line\":2,\"src\":\"app.py\"}}]}");
        /* Several sources: one step each, into a directory dest; relative
         * dests follow WORKDIR; sources are normalised. */
        expect_spec("FROM host\nWORKDIR /app\nCOPY ./a.txt dir/ b/./c ./\n",
                    "{\"from\":\"host\",\"steps\":[{\"workdir\":\"/app\"},"
                    "{\"copy\":{\"dest\":\"/app/\",\"line\":3,\"src\":\"a.txt\"}},"
                    "{\"copy\":{\"dest\":\"/app/\",\"line\":3,\"src\":\"dir\"}},"
                    "{\"copy\":{\"dest\":\"/app/\",\"line\":3,\"src\":\"b/c\"}}]}");
        expect_spec("FROM host\nCOPY . /\n", "{\"from\":\"host\",\"steps\":[{\"copy\":{\"dest\":\"/\",\"line\":2,\"src\":\".\"}}]}");
        expect_spec("FROM host\nCOPY [\"with space.txt\", \"/opt/x y/\"]\n",
                    "{\"from\":\"host\",\"steps\":[{\"copy\":{\"dest\":\"/opt/x y/\",\"line\":2,\"src\":\"with space.txt\"}}]}");
        expect_error("FROM host\nCOPY onlyone\n", "line 2:", "a source and a destination");
        expect_error("FROM host\nCOPY a b /not-a-dir\n", "line 2:", "ending with /");
        expect_error("FROM host\nCOPY ../secret /x\n", "line 2:", "outside the build context");
        expect_error("FROM host\nCOPY a/../../secret /x\n", "line 2:", "outside the build context");
        expect_error("FROM host\nCOPY /etc/passwd /x\n", "line 2:", "is absolute");
        expect_error("FROM host\nCOPY *.py /x/\n", "line 2:", "wildcards");
        expect_error("FROM host\nCOPY --chown=app a /x\n", "line 2:", "--chown is not supported");
        expect_error("FROM host\nCOPY --from=builder /a /x\n", "line 2:", "--from is not supported");
        expect_error("FROM host\nCOPY --chmod=600 a /x\n", "line 2:", "not supported");
}

static void test_unsupported_and_unknown(void **state)
{
        expect_error("FROM host\nCMD [\"sh\"]\n", "line 2:", "CMD is not supported");
        expect_error("FROM host\n\n\nadd x /y\n", "line 4:", "use COPY");
        expect_error("FROM host\nARG X=1\n", "line 2:", "ARG is not supported");
        expect_error("FROM host\nFROBNICATE now\n", "line 2:", "unknown instruction `FROBNICATE`");
        expect_error("FROM host\nRUN true\n\x01\n", "line 3:", "unknown instruction");
}

static void test_limits(void **state)
{
        char *text = malloc(64 * 1024);
        size_t used = 0;
        struct moat_error *err = NULL;
        json_t *spec = NULL;

        assert_non_null(text);
        used += (size_t)sprintf(text + used, "FROM host\n");
        for (int i = 0; i < DOCKERFILE_STEPS_MAX; i++)
                used += (size_t)sprintf(text + used, "RUN echo %d\n", i);
        assert_int_equal(dockerfile_parse(text, used, &spec, &err), 0);
        assert_int_equal(json_array_size(json_object_get(spec, "steps")), DOCKERFILE_STEPS_MAX);
        json_decref(spec);
        spec = NULL;
        used += (size_t)sprintf(text + used, "RUN echo one too many\n");
        assert_int_equal(dockerfile_parse(text, used, &spec, &err), -1);
        assert_non_null(strstr(err->message, "line 52:"));
        moat_error_free(err);
        err = NULL;
        /* A NUL, invalid UTF-8, an oversized file: refused whole. */
        assert_int_equal(dockerfile_parse("FROM host\0RUN x\n", 16, &spec, &err), -1);
        assert_non_null(strstr(err->message, "NUL"));
        moat_error_free(err);
        err = NULL;
        assert_int_equal(dockerfile_parse("FROM host\nRUN echo \xff\xfe\n", 21, &spec, &err), -1);
        assert_non_null(strstr(err->message, "UTF-8"));
        moat_error_free(err);
        err = NULL;
        assert_int_equal(dockerfile_parse(text, DOCKERFILE_SIZE_MAX + 1, &spec, &err), -1);
        assert_non_null(strstr(err->message, "larger than"));
        moat_error_free(err);
        assert_null(spec);
        free(text);
}

static void test_shell_quote(void **state)
{
        char *quoted = dockerfile_shell_quote("a'b c");

        assert_string_equal(quoted, "'a'\\''b c'");
        free(quoted);
        quoted = dockerfile_shell_quote("");
        assert_string_equal(quoted, "''");
        free(quoted);
}

/* ---- resolve against a real context directory ---- */

static void write_file(const char *path, const char *text)
{
        FILE *f = fopen(path, "w");

        assert_non_null(f);
        fputs(text, f);
        fclose(f);
}

static void test_resolve_copies(void **state)
{
        char root[] = "/tmp/moat-test-dockerfile-XXXXXX", path[1024], context[600];
        struct moat_error *err = NULL;
        json_t *spec = NULL;
        int context_fd;
        char *dumped;
        const char *text = "FROM host\nWORKDIR /app\nCOPY f.txt sub ./\nCOPY f.txt /etc/renamed\nCOPY sub/ /data/\n";

        assert_non_null(mkdtemp(root));
        snprintf(context, sizeof(context), "%s/context", root);
        assert_int_equal(mkdir(context, 0755), 0);
        snprintf(path, sizeof(path), "%s/f.txt", context);
        write_file(path, "file\n");
        snprintf(path, sizeof(path), "%s/sub", context);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof(path), "%s/outside", root);
        write_file(path, "secret\n");
        snprintf(path, sizeof(path), "%s/escape", context);
        assert_int_equal(symlink("../outside", path), 0);
        snprintf(path, sizeof(path), "%s/abs", context);
        assert_int_equal(symlink("/etc", path), 0);
        context_fd = open(context, O_RDONLY | O_DIRECTORY);
        assert_true(context_fd >= 0);

        assert_int_equal(dockerfile_parse(text, strlen(text), &spec, &err), 0);
        assert_int_equal(dockerfile_resolve_copies(spec, context_fd, &err), 0);
        dumped = json_dumps(json_object_get(spec, "steps"), JSON_COMPACT | JSON_SORT_KEYS);
        /* A file into a dir dest gets its name; a directory's dest loses the slash. */
        assert_string_equal(dumped, "[{\"workdir\":\"/app\"},{\"copy\":{\"dest\":\"/app/f.txt\",\"src\":\"f.txt\"}},"
                                    "{\"copy\":{\"dest\":\"/app\",\"src\":\"sub\"}},"
                                    "{\"copy\":{\"dest\":\"/etc/renamed\",\"src\":\"f.txt\"}},"
                                    "{\"copy\":{\"dest\":\"/data\",\"src\":\"sub\"}}]");
        free(dumped);
        json_decref(spec);

        /* A symlink source (to outside, to an absolute path, or on the way)
         * and a missing one are refused. */
        {
                static const char *const refused[][2] = {
                        {"FROM host\nCOPY escape /x\n", "line 2: COPY source `escape` is a symlink"},
                        {"FROM host\n\nCOPY abs/passwd /x\n", "line 3: COPY source `abs/passwd` passes through a symlink"},
                        {"FROM host\nCOPY missing /x\n", "line 2: COPY source `missing` does not exist"},
                };

                for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
                        spec = NULL;
                        assert_int_equal(dockerfile_parse(refused[i][0], strlen(refused[i][0]), &spec, &err), 0);
                        assert_int_equal(dockerfile_resolve_copies(spec, context_fd, &err), -1);
                        if (!strstr(err->message, refused[i][1]))
                                fail_msg("`%s` not in `%s`", refused[i][1], err->message);
                        moat_error_free(err);
                        err = NULL;
                        json_decref(spec);
                }
        }
        /* The symlink to outside is there and does lead out: the refusal
         * above is the check, not an accident of the tree. */
        snprintf(path, sizeof(path), "%s/escape", context);
        assert_int_equal(access(path, R_OK), 0);
        close(context_fd);
        snprintf(path, sizeof(path), "rm -rf '%s'", root);
        assert_int_equal(system(path), 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_from_and_comments),
                cmocka_unit_test(test_run_forms),
                cmocka_unit_test(test_continuations),
                cmocka_unit_test(test_env_forms),
                cmocka_unit_test(test_workdir_user),
                cmocka_unit_test(test_copy_forms),
                cmocka_unit_test(test_unsupported_and_unknown),
                cmocka_unit_test(test_limits),
                cmocka_unit_test(test_shell_quote),
                cmocka_unit_test(test_resolve_copies),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
