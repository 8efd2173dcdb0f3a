/* Base64 decoding of output events: valid inputs decode exactly, anything
 * malformed is rejected rather than guessed around. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "client/base64.h"

static long decode(const char *text, unsigned char *out)
{
        return moat_base64_decode(text, strlen(text), out);
}

static void test_decodes_rfc4648_vectors(void **state)
{
        static const struct {
                const char *encoded, *decoded;
        } vectors[] = {
                { "", "" },         { "Zg==", "f" },     { "Zm8=", "fo" },         { "Zm9v", "foo" },
                { "Zm9vYg==", "foob" }, { "Zm9vYmE=", "fooba" }, { "Zm9vYmFy", "foobar" }, { "aGVsbG8K", "hello\n" },
        };
        unsigned char out[64];

        for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
                long length = decode(vectors[i].encoded, out);

                assert_int_equal(length, strlen(vectors[i].decoded));
                assert_memory_equal(out, vectors[i].decoded, (size_t)length);
        }
}

static void test_decodes_binary_bytes(void **state)
{
        unsigned char out[8];

        /* 0x00 0xff 0xfe 0x80: NUL and high bytes survive. */
        assert_int_equal(decode("AP/+gA==", out), 4);
        assert_int_equal(out[0], 0x00);
        assert_int_equal(out[1], 0xff);
        assert_int_equal(out[2], 0xfe);
        assert_int_equal(out[3], 0x80);
}

static void test_rejects_malformed_input(void **state)
{
        static const char *const bad[] = {
                "Zg",       /* unpadded */
                "Zg=",      /* short */
                "Z===",     /* too much padding */
                "Zg==Zg==", /* padding in the middle */
                "Zm9v\n",   /* newline */
                "Zm-v",     /* URL-safe alphabet */
                "Zm 9",     /* space */
                "=Zm9",     /* padding first */
                "Zg=a",     /* data after padding */
        };
        unsigned char out[64];

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                assert_int_equal(decode(bad[i], out), -1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_decodes_rfc4648_vectors),
                cmocka_unit_test(test_decodes_binary_bytes),
                cmocka_unit_test(test_rejects_malformed_input),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
