/* Unit tests of the moatd <-> init wire codec (src/common/protocol.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/protocol.h"

static struct moat_spawn_spec spec; /* 64 KiB: not on the stack */

static int decode_header(uint32_t length, uint16_t type, uint16_t flags)
{
        struct moat_frame_header h = { .length = length, .type = type, .flags = flags, .handle = 1, .aux = 2 };
        struct moat_frame_header out;
        uint8_t buf[MOAT_FRAME_HEADER_SIZE];

        moat_frame_header_encode(&h, buf);
        return moat_frame_header_decode(buf, &out);
}

static void test_header_round_trip(void **state)
{
        struct moat_frame_header h = { .length = 12345, .type = MOAT_FRAME_SPAWN, .flags = 0xbeef,
                                       .handle = 0xdeadbeef, .aux = 0x01020304 };
        struct moat_frame_header out = { 0 };
        uint8_t buf[MOAT_FRAME_HEADER_SIZE];

        moat_frame_header_encode(&h, buf);
        /* Little-endian on the wire, whatever the host. */
        assert_int_equal(buf[0], 0x39);
        assert_int_equal(buf[1], 0x30);
        assert_int_equal(buf[4], MOAT_FRAME_SPAWN);
        assert_int_equal(buf[12], 0x04);
        assert_int_equal(moat_frame_header_decode(buf, &out), 0);
        assert_memory_equal(&h, &out, sizeof(h));
}

static void test_header_length_rules(void **state)
{
        /* HELLO: exactly 4. */
        assert_int_equal(decode_header(4, MOAT_FRAME_HELLO, 0), 0);
        assert_int_equal(decode_header(0, MOAT_FRAME_HELLO, 0), -1);
        assert_int_equal(decode_header(8, MOAT_FRAME_HELLO, 0), -1);
        /* HELLO_ACK, EXIT: exactly 8. */
        assert_int_equal(decode_header(8, MOAT_FRAME_HELLO_ACK, 0), 0);
        assert_int_equal(decode_header(7, MOAT_FRAME_HELLO_ACK, 0), -1);
        assert_int_equal(decode_header(8, MOAT_FRAME_EXIT, 0), 0);
        assert_int_equal(decode_header(9, MOAT_FRAME_EXIT, 0), -1);
        /* STDIN: > 0, up to the payload maximum. */
        assert_int_equal(decode_header(1, MOAT_FRAME_STDIN, 0), 0);
        assert_int_equal(decode_header(MOAT_FRAME_PAYLOAD_MAX, MOAT_FRAME_STDIN, 0), 0);
        assert_int_equal(decode_header(0, MOAT_FRAME_STDIN, 0), -1);
        /* OUTPUT: 1..chunk max, stream 1 or 2. */
        assert_int_equal(decode_header(1, MOAT_FRAME_OUTPUT, MOAT_STREAM_STDOUT), 0);
        assert_int_equal(decode_header(MOAT_OUTPUT_CHUNK_MAX, MOAT_FRAME_OUTPUT, MOAT_STREAM_STDERR), 0);
        assert_int_equal(decode_header(MOAT_OUTPUT_CHUNK_MAX + 1, MOAT_FRAME_OUTPUT, MOAT_STREAM_STDOUT), -1);
        assert_int_equal(decode_header(0, MOAT_FRAME_OUTPUT, MOAT_STREAM_STDOUT), -1);
        assert_int_equal(decode_header(1, MOAT_FRAME_OUTPUT, 0), -1);
        assert_int_equal(decode_header(1, MOAT_FRAME_OUTPUT, 3), -1);
        /* CREDIT: empty, stream 1 or 2. */
        assert_int_equal(decode_header(0, MOAT_FRAME_CREDIT, MOAT_STREAM_STDOUT), 0);
        assert_int_equal(decode_header(0, MOAT_FRAME_CREDIT, MOAT_STREAM_STDERR), 0);
        assert_int_equal(decode_header(0, MOAT_FRAME_CREDIT, 0), -1);
        assert_int_equal(decode_header(4, MOAT_FRAME_CREDIT, MOAT_STREAM_STDOUT), -1);
        /* SPAWN_FAILED: at least the errno. */
        assert_int_equal(decode_header(4, MOAT_FRAME_SPAWN_FAILED, 0), 0);
        assert_int_equal(decode_header(100, MOAT_FRAME_SPAWN_FAILED, 0), 0);
        assert_int_equal(decode_header(3, MOAT_FRAME_SPAWN_FAILED, 0), -1);
        /* SPAWN: anything up to the maximum (the spec decoder validates). */
        assert_int_equal(decode_header(0, MOAT_FRAME_SPAWN, 0), 0);
        assert_int_equal(decode_header(MOAT_FRAME_PAYLOAD_MAX, MOAT_FRAME_SPAWN, 0), 0);
        /* The empty ones. */
        const uint16_t empty[] = { MOAT_FRAME_STDIN_CLOSE, MOAT_FRAME_SIGNAL, MOAT_FRAME_RESIZE,
                                   MOAT_FRAME_SPAWNED, MOAT_FRAME_STDIN_CREDIT };
        for (size_t i = 0; i < sizeof(empty) / sizeof(empty[0]); i++) {
                assert_int_equal(decode_header(0, empty[i], 0), 0);
                assert_int_equal(decode_header(1, empty[i], 0), -1);
        }
}

static void test_header_unknown_types(void **state)
{
        for (uint32_t t = 0; t <= 0xffff; t++) {
                bool known = (t >= 1 && t <= 7) || (t >= 64 && t <= 69);

                assert_int_equal(moat_frame_type_known((uint16_t)t), known);
                if (!known)
                        assert_int_equal(decode_header(0, (uint16_t)t, 0), -1);
        }
}

static void test_header_oversize(void **state)
{
        assert_int_equal(decode_header(MOAT_FRAME_PAYLOAD_MAX + 1, MOAT_FRAME_SPAWN, 0), -1);
        assert_int_equal(decode_header(MOAT_FRAME_PAYLOAD_MAX + 1, MOAT_FRAME_STDIN, 0), -1);
        assert_int_equal(decode_header(UINT32_MAX, MOAT_FRAME_STDIN, 0), -1);
}

static void test_header_decode_failure_leaves_output(void **state)
{
        struct moat_frame_header out = { .length = 77 };
        uint8_t buf[MOAT_FRAME_HEADER_SIZE] = { 0 };

        assert_int_equal(moat_frame_header_decode(buf, &out), -1);
        assert_int_equal(out.length, 77);
}

static uint8_t payload[MOAT_FRAME_PAYLOAD_MAX + 16];

static void test_spawn_round_trip(void **state)
{
        const char *argv[] = { "/bin/sh", "-c", "echo hi", "", NULL };
        const char *env[] = { "A=1", "EMPTY=", NULL };
        long n = moat_spawn_encode(payload, sizeof(payload), MOAT_SPAWN_STDIN | MOAT_SPAWN_PTY, 24, 80, "alice",
                                   "/home/alice", argv, env);

        assert_true(n > 16);
        assert_int_equal(moat_spawn_decode(payload, (size_t)n, &spec), 0);
        assert_int_equal(spec.flags, MOAT_SPAWN_STDIN | MOAT_SPAWN_PTY);
        assert_int_equal(spec.rows, 24);
        assert_int_equal(spec.cols, 80);
        assert_string_equal(spec.user, "alice");
        assert_string_equal(spec.cwd, "/home/alice");
        assert_int_equal(spec.argc, 4);
        for (int i = 0; i < 4; i++)
                assert_string_equal(spec.argv[i], argv[i]);
        assert_null(spec.argv[4]);
        assert_int_equal(spec.envc, 2);
        assert_string_equal(spec.env[0], "A=1");
        assert_string_equal(spec.env[1], "EMPTY=");
        assert_null(spec.env[2]);
}

static void test_spawn_defaults_and_no_env(void **state)
{
        const char *argv[] = { "true", NULL };
        long n = moat_spawn_encode(payload, sizeof(payload), 0, 0, 0, NULL, NULL, argv, NULL);

        assert_int_equal(n, 16 + 1 + 1 + 5);
        assert_int_equal(moat_spawn_decode(payload, (size_t)n, &spec), 0);
        assert_string_equal(spec.user, "");
        assert_string_equal(spec.cwd, "");
        assert_int_equal(spec.envc, 0);
        assert_null(spec.env[0]);
}

static void test_spawn_encode_limits(void **state)
{
        const char *argv[] = { "true", NULL };
        const char *none[] = { NULL };
        static const char *many[MOAT_SPAWN_ARGV_MAX + 2];

        assert_int_equal(moat_spawn_encode(payload, sizeof(payload), 0, 0, 0, "", "", none, NULL), -1);
        assert_int_equal(moat_spawn_encode(payload, sizeof(payload), 0, 0, 0, "", "", NULL, NULL), -1);
        /* Too small a buffer: -1, never an overflow. */
        for (size_t cap = 0; cap < 23; cap++)
                assert_int_equal(moat_spawn_encode(payload, cap, 0, 0, 0, "", "", argv, NULL), -1);
        assert_int_equal(moat_spawn_encode(payload, 23, 0, 0, 0, "", "", argv, NULL), 23);
        for (size_t i = 0; i < MOAT_SPAWN_ARGV_MAX + 1; i++)
                many[i] = "x";
        assert_int_equal(moat_spawn_encode(payload, sizeof(payload), 0, 0, 0, "", "", many, NULL), -1);
        assert_int_equal(moat_spawn_encode(payload, sizeof(payload), 0, 0, 0, "", "", argv, many), -1);
        many[MOAT_SPAWN_ARGV_MAX] = NULL;
        assert_true(moat_spawn_encode(payload, sizeof(payload), 0, 0, 0, "", "", many, many) > 0);
}

/* A valid payload for the mutation tests below. */
static size_t valid_spawn(void)
{
        const char *argv[] = { "ls", "-l", NULL };
        const char *env[] = { "X=y", NULL };
        long n = moat_spawn_encode(payload, sizeof(payload), MOAT_SPAWN_STDIN, 1, 2, "bob", "/tmp", argv, env);

        assert_true(n > 0);
        return (size_t)n;
}

static void test_spawn_truncated(void **state)
{
        size_t n = valid_spawn();

        for (size_t len = 0; len < n; len++)
                assert_int_equal(moat_spawn_decode(payload, len, &spec), -1);
        assert_int_equal(moat_spawn_decode(payload, n, &spec), 0);
}

static void test_spawn_unterminated(void **state)
{
        size_t n = valid_spawn();

        payload[n - 1] = 'z'; /* the last env string loses its NUL */
        assert_int_equal(moat_spawn_decode(payload, n, &spec), -1);
}

static void test_spawn_extra_bytes(void **state)
{
        size_t n = valid_spawn();

        payload[n] = '\0';
        assert_int_equal(moat_spawn_decode(payload, n + 1, &spec), -1);
        payload[n] = 'a';
        assert_int_equal(moat_spawn_decode(payload, n + 1, &spec), -1);
}

static void test_spawn_counts(void **state)
{
        size_t n = valid_spawn();

        moat_put_u32(payload + 8, 0); /* argc 0 */
        assert_int_equal(moat_spawn_decode(payload, n, &spec), -1);
        moat_put_u32(payload + 8, MOAT_SPAWN_ARGV_MAX + 1);
        assert_int_equal(moat_spawn_decode(payload, n, &spec), -1);
        moat_put_u32(payload + 8, UINT32_MAX);
        assert_int_equal(moat_spawn_decode(payload, n, &spec), -1);
        moat_put_u32(payload + 8, 2);
        moat_put_u32(payload + 12, MOAT_SPAWN_ENV_MAX + 1);
        assert_int_equal(moat_spawn_decode(payload, n, &spec), -1);
        moat_put_u32(payload + 12, UINT32_MAX);
        assert_int_equal(moat_spawn_decode(payload, n, &spec), -1);
        /* Counts that do not match the strings present. */
        moat_put_u32(payload + 12, 2);
        assert_int_equal(moat_spawn_decode(payload, n, &spec), -1);
        moat_put_u32(payload + 12, 0);
        assert_int_equal(moat_spawn_decode(payload, n, &spec), -1);
        moat_put_u32(payload + 12, 1);
        assert_int_equal(moat_spawn_decode(payload, n, &spec), 0);
}

static void test_spawn_bad_flags(void **state)
{
        size_t n = valid_spawn();

        moat_put_u32(payload, 0x4);
        assert_int_equal(moat_spawn_decode(payload, n, &spec), -1);
        moat_put_u32(payload, 0x80000000u);
        assert_int_equal(moat_spawn_decode(payload, n, &spec), -1);
        moat_put_u32(payload, MOAT_SPAWN_STDIN | MOAT_SPAWN_PTY);
        assert_int_equal(moat_spawn_decode(payload, n, &spec), 0);
}

static void test_spawn_relative_cwd_and_empty_argv0(void **state)
{
        const char *argv[] = { "ls", NULL };
        const char *empty_argv0[] = { "", "x", NULL };
        long n = moat_spawn_encode(payload, sizeof(payload), 0, 0, 0, "", "tmp", argv, NULL);

        assert_true(n > 0);
        assert_int_equal(moat_spawn_decode(payload, (size_t)n, &spec), -1);
        n = moat_spawn_encode(payload, sizeof(payload), 0, 0, 0, "", "./tmp", argv, NULL);
        assert_int_equal(moat_spawn_decode(payload, (size_t)n, &spec), -1);
        n = moat_spawn_encode(payload, sizeof(payload), 0, 0, 0, "", "/", argv, NULL);
        assert_int_equal(moat_spawn_decode(payload, (size_t)n, &spec), 0);
        n = moat_spawn_encode(payload, sizeof(payload), 0, 0, 0, "", "", empty_argv0, NULL);
        assert_true(n > 0);
        assert_int_equal(moat_spawn_decode(payload, (size_t)n, &spec), -1);
}

static void test_spawn_oversize(void **state)
{
        assert_int_equal(moat_spawn_decode(payload, MOAT_FRAME_PAYLOAD_MAX + 1, &spec), -1);
}

/* Whatever the bytes, decode either fails or yields a spec whose strings all
 * lie inside the buffer and are terminated there. Run under ASan in CI for
 * out-of-bounds reads; here the checks themselves must hold. */
static void check_spec_inside(const uint8_t *buf, size_t len)
{
        const char *strings[2] = { spec.user, spec.cwd };

        for (int i = 0; i < 2; i++) {
                assert_true((const uint8_t *)strings[i] >= buf && (const uint8_t *)strings[i] < buf + len);
                assert_true((const uint8_t *)strings[i] + strlen(strings[i]) < buf + len);
        }
        assert_true(spec.argc >= 1 && spec.argc <= MOAT_SPAWN_ARGV_MAX);
        for (uint32_t i = 0; i < spec.argc; i++)
                assert_true((const uint8_t *)spec.argv[i] + strlen(spec.argv[i]) < buf + len);
        assert_null(spec.argv[spec.argc]);
        for (uint32_t i = 0; i < spec.envc; i++)
                assert_true((const uint8_t *)spec.env[i] + strlen(spec.env[i]) < buf + len);
        assert_null(spec.env[spec.envc]);
}

static void test_decoder_robustness_random(void **state)
{
        uint32_t seed = 12345;
        size_t base = valid_spawn(), accepted = 0;
        uint8_t *copy = malloc(4096), *exact;

        assert_non_null(copy);
        memcpy(copy, payload, base);
        for (int iteration = 0; iteration < 200000; iteration++) {
                size_t len = base;

                memcpy(payload, copy, base);
                seed = seed * 1103515245u + 12345u;
                for (int m = 0; m < 1 + (int)(seed >> 28); m++) {
                        seed = seed * 1103515245u + 12345u;
                        if (len == 0)
                                break;
                        switch (seed >> 30) {
                        case 0: /* flip a byte */
                                payload[(seed >> 8) % len] ^= (uint8_t)(1u << ((seed >> 4) & 7));
                                break;
                        case 1: /* set a byte to a boundary value */
                                payload[(seed >> 8) % len] = (seed & 1) ? 0 : 0xff;
                                break;
                        case 2: /* truncate */
                                len = len > 1 ? (seed >> 8) % len : len;
                                break;
                        case 3: /* extend with junk */
                                if (len < 4000)
                                        payload[len++] = (uint8_t)(seed >> 8);
                                break;
                        }
                }
                /* An exact-size heap copy, so a read past the end is a real
                 * overrun that ASan (the sanitizer build) reports. */
                exact = malloc(len ? len : 1);
                assert_non_null(exact);
                memcpy(exact, payload, len);
                if (moat_spawn_decode(exact, len, &spec) == 0) {
                        accepted++;
                        check_spec_inside(exact, len);
                }
                struct moat_frame_header h;
                if (len >= MOAT_FRAME_HEADER_SIZE && moat_frame_header_decode(exact, &h) == 0)
                        assert_true(h.length <= MOAT_FRAME_PAYLOAD_MAX && moat_frame_type_known(h.type));
                free(exact);
        }
        /* The mutations must not be so blunt that nothing decodes. */
        assert_true(accepted > 100);
        free(copy);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_header_round_trip),
                cmocka_unit_test(test_header_length_rules),
                cmocka_unit_test(test_header_unknown_types),
                cmocka_unit_test(test_header_oversize),
                cmocka_unit_test(test_header_decode_failure_leaves_output),
                cmocka_unit_test(test_spawn_round_trip),
                cmocka_unit_test(test_spawn_defaults_and_no_env),
                cmocka_unit_test(test_spawn_encode_limits),
                cmocka_unit_test(test_spawn_truncated),
                cmocka_unit_test(test_spawn_unterminated),
                cmocka_unit_test(test_spawn_extra_bytes),
                cmocka_unit_test(test_spawn_counts),
                cmocka_unit_test(test_spawn_bad_flags),
                cmocka_unit_test(test_spawn_relative_cwd_and_empty_argv0),
                cmocka_unit_test(test_spawn_oversize),
                cmocka_unit_test(test_decoder_robustness_random),
        };
        return cmocka_run_group_tests_name("protocol", tests, NULL, NULL);
}
