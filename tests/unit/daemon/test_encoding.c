/* Encodings of src/daemon/encoding.c: base64 (RFC 4648 vectors), UTF-8
 * validation, output NDJSON lines, timestamps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "encoding.h"

static void test_base64_vectors(void **state)
{
        static const char *const vectors[][2] = {
                {"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},         {"foo", "Zm9v"},
                {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"},
        };
        char out[16];

        for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
                size_t n = strlen(vectors[i][0]);
                encoding_base64_encode((const uint8_t *)vectors[i][0], n, out);
                assert_string_equal(out, vectors[i][1]);
                assert_int_equal(encoding_base64_length(n), strlen(vectors[i][1]));
        }
        static const uint8_t binary[] = {0x00, 0xff, 0xfe, 0x3e, 0x3f};
        encoding_base64_encode(binary, sizeof(binary), out);
        assert_string_equal(out, "AP/+Pj8=");
}

static void test_utf8(void **state)
{
        static const char *const valid[] = {"", "ascii\n", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                            "\xf4\x8f\xbf\xbf"};
        static const char *const invalid[] = {
                "\xff",             "\xc3",             /* truncated */
                "\xc0\xaf",         /* overlong '/' */ "\xe0\x80\xaf",     /* overlong */
                "\xed\xa0\x80",     /* surrogate */    "\xf4\x90\x80\x80", /* > U+10FFFF */
                "\x80",             "\xe2\x82",         "a\xe2\x28\xa1",
        };

        for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++)
                assert_true(encoding_utf8_valid((const uint8_t *)valid[i], strlen(valid[i])));
        for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++)
                assert_false(encoding_utf8_valid((const uint8_t *)invalid[i], strlen(invalid[i])));
        /* NUL is valid UTF-8 (JSON escapes it). */
        assert_true(encoding_utf8_valid((const uint8_t *)"a\0b", 3));
}

static void test_output_line(void **state)
{
        static const uint8_t data[] = "hello\n";
        char *line = malloc(encoding_output_line_max(6) + 1);
        size_t n = encoding_output_line(line, 1, data, 6);
        json_t *parsed;

        line[n] = '\0';
        assert_string_equal(line, "{\"stream\":\"stdout\",\"data\":\"aGVsbG8K\"}\n");
        assert_true(n <= encoding_output_line_max(6));
        n = encoding_output_line(line, 2, data, 0);
        line[n] = '\0';
        assert_string_equal(line, "{\"stream\":\"stderr\",\"data\":\"\"}\n");
        free(line);

        /* A large binary chunk: one line, valid JSON, within the bound. */
        size_t big = 48 * 1024 + 1;
        uint8_t *bytes = malloc(big);
        for (size_t i = 0; i < big; i++)
                bytes[i] = (uint8_t)(i * 7);
        line = malloc(encoding_output_line_max(big) + 1);
        n = encoding_output_line(line, 2, bytes, big);
        assert_true(n <= encoding_output_line_max(big));
        assert_int_equal(line[n - 1], '\n');
        assert_null(memchr(line, '\n', n - 1));
        parsed = json_loadb(line, n, 0, NULL);
        assert_non_null(parsed);
        assert_string_equal(json_string_value(json_object_get(parsed, "stream")), "stderr");
        assert_int_equal(json_string_length(json_object_get(parsed, "data")), encoding_base64_length(big));
        json_decref(parsed);
        free(line);
        free(bytes);
}

static void test_time(void **state)
{
        char out[ENCODING_TIME_MAX];

        encoding_format_time(0, out);
        assert_string_equal(out, "1970-01-01T00:00:00.000Z");
        encoding_format_time(1795559495123LL, out);
        assert_string_equal(out, "2026-11-24T22:31:35.123Z");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_base64_vectors),
                cmocka_unit_test(test_utf8),
                cmocka_unit_test(test_output_line),
                cmocka_unit_test(test_time),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
