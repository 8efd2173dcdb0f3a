/* The NDJSON output reader: lines split across reads, several lines in one
 * read, the exit event, errors mid-stream, truncation and the line bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "client/output_stream.h"

struct collected {
        char stdout_bytes[256];
        size_t stdout_length;
        char stderr_bytes[256];
        size_t stderr_length;
        int exits;
        struct moat_exit_status status;
        int stop_after; /* on_data calls before returning -1; 0: never */
        int data_calls;
};

static int collect_data(void *userdata, enum moat_output_stream stream, const unsigned char *data, size_t length)
{
        struct collected *c = userdata;
        char *target = stream == MOAT_OUTPUT_STDOUT ? c->stdout_bytes : c->stderr_bytes;
        size_t *target_length = stream == MOAT_OUTPUT_STDOUT ? &c->stdout_length : &c->stderr_length;

        assert_true(*target_length + length <= sizeof(c->stdout_bytes));
        memcpy(target + *target_length, data, length);
        *target_length += length;
        if (c->stop_after && ++c->data_calls >= c->stop_after)
                return -1;
        return 0;
}

static void collect_exit(void *userdata, const struct moat_exit_status *status)
{
        struct collected *c = userdata;

        c->exits++;
        c->status = *status;
}

static const char stream_text[] = "{\"stream\":\"stdout\",\"data\":\"aGVsbG8K\"}\n"
                                  "{\"stream\":\"stderr\",\"data\":\"b29wcwo=\"}\n"
                                  "\n"
                                  "{\"stream\":\"stdout\",\"data\":\"AP8=\"}\n"
                                  "{\"exit_code\":137,\"signal\":9,\"timed_out\":false,\"oom_killed\":true}\n";

/* Feed text in pieces of `step` bytes; returns the reader's finish result. */
static int feed_in_steps(const char *text, size_t length, size_t step, struct collected *c, struct moat_error **err)
{
        struct moat_output_handler handler = { collect_data, collect_exit, c };
        struct moat_ndjson_reader reader;
        int r = 0;

        moat_ndjson_reader_init(&reader, &handler);
        for (size_t offset = 0; r == 0 && offset < length; offset += step) {
                size_t piece = length - offset < step ? length - offset : step;
                r = moat_ndjson_reader_feed(&reader, text + offset, piece, err);
        }
        if (r == 0)
                r = moat_ndjson_reader_finish(&reader, err);
        moat_ndjson_reader_release(&reader);
        return r;
}

static void test_every_split_gives_the_same_events(void **state)
{
        /* Every read size from 1 byte to the whole stream: lines cut anywhere,
         * many lines in one read. */
        for (size_t step = 1; step <= sizeof(stream_text); step++) {
                struct collected c = { 0 };
                struct moat_error *err = NULL;

                assert_int_equal(feed_in_steps(stream_text, sizeof(stream_text) - 1, step, &c, &err), 0);
                assert_null(err);
                assert_int_equal(c.stdout_length, 8);
                assert_memory_equal(c.stdout_bytes, "hello\n\x00\xff", 8);
                assert_int_equal(c.stderr_length, 5);
                assert_memory_equal(c.stderr_bytes, "oops\n", 5);
                assert_int_equal(c.exits, 1);
                assert_int_equal(c.status.exit_code, 137);
                assert_int_equal(c.status.signal, 9);
                assert_false(c.status.timed_out);
                assert_true(c.status.oom_killed);
        }
}

static void test_crlf_and_unknown_events_are_tolerated(void **state)
{
        static const char text[] = "{\"stream\":\"stdout\",\"data\":\"aGk=\"}\r\n"
                                   "{\"future_event\":{\"x\":1}}\n"
                                   "{\"stream\":\"stdlog\",\"data\":\"aGk=\"}\n"
                                   "{\"exit_code\":0,\"signal\":null,\"timed_out\":false,\"oom_killed\":false}\n";
        struct collected c = { 0 };
        struct moat_error *err = NULL;

        assert_int_equal(feed_in_steps(text, sizeof(text) - 1, 7, &c, &err), 0);
        assert_int_equal(c.stdout_length, 2);
        assert_int_equal(c.stderr_length, 0);
        assert_int_equal(c.status.exit_code, 0);
        assert_int_equal(c.status.signal, 0);
}

static void test_missing_exit_event_is_an_error(void **state)
{
        static const char text[] = "{\"stream\":\"stdout\",\"data\":\"aGk=\"}\n";
        struct collected c = { 0 };
        struct moat_error *err = NULL;

        assert_int_equal(feed_in_steps(text, sizeof(text) - 1, 4, &c, &err), -1);
        assert_non_null(err);
        assert_string_equal(err->code, "stream_truncated");
        moat_error_free(err);
}

static void test_partial_last_line_is_an_error(void **state)
{
        static const char text[] = "{\"exit_code\":0}\n{\"stream\":\"std";
        struct collected c = { 0 };
        struct moat_error *err = NULL;

        assert_int_equal(feed_in_steps(text, sizeof(text) - 1, 3, &c, &err), -1);
        assert_string_equal(err->code, "stream_truncated");
        moat_error_free(err);
}

static void test_bad_lines_are_errors(void **state)
{
        static const char *const bad[] = {
                "not json\n",
                "[1,2]\n",
                "{\"stream\":\"stdout\",\"data\":\"@@@@\"}\n",
                "{\"stream\":\"stdout\",\"data\":42}\n",
                "{\"stream\":\"stdout\",\"data\":\"aGk=\",\"data\":\"aGk=\"}\n", /* duplicate key */
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                struct collected c = { 0 };
                struct moat_error *err = NULL;

                assert_int_equal(feed_in_steps(bad[i], strlen(bad[i]), 5, &c, &err), -1);
                assert_non_null(err);
                assert_string_equal(err->code, "bad_stream");
                moat_error_free(err);
        }
}

static void test_server_error_mid_stream(void **state)
{
        static const char text[] = "{\"error\":{\"code\":\"unavailable\",\"message\":\"shutting down\"}}\n";
        struct collected c = { 0 };
        struct moat_error *err = NULL;

        assert_int_equal(feed_in_steps(text, sizeof(text) - 1, 100, &c, &err), -1);
        assert_int_equal(err->kind, MOAT_ERROR_UNAVAILABLE);
        assert_string_equal(err->code, "unavailable");
        assert_string_equal(err->message, "shutting down");
        moat_error_free(err);
}

static void test_reader_can_stop_the_stream(void **state)
{
        struct collected c = { .stop_after = 1 };
        struct moat_error *err = NULL;

        assert_int_equal(feed_in_steps(stream_text, sizeof(stream_text) - 1, 1000, &c, &err), -1);
        assert_string_equal(err->code, "aborted");
        assert_int_equal(c.exits, 0);
        moat_error_free(err);
}

static void test_line_longer_than_the_bound_is_refused(void **state)
{
        struct collected c = { 0 };
        struct moat_output_handler handler = { collect_data, collect_exit, &c };
        struct moat_ndjson_reader reader;
        struct moat_error *err = NULL;
        size_t chunk = 1 << 20;
        char *filler = malloc(chunk);
        int r = 0;

        assert_non_null(filler);
        memset(filler, 'A', chunk);
        moat_ndjson_reader_init(&reader, &handler);
        /* No newline ever: the reader must stop at the bound, not grow. */
        for (size_t fed = 0; r == 0 && fed <= MOAT_NDJSON_LINE_MAX; fed += chunk)
                r = moat_ndjson_reader_feed(&reader, filler, chunk, &err);
        assert_int_equal(r, -1);
        assert_int_equal(err->kind, MOAT_ERROR_LIMIT_EXCEEDED);
        assert_true(reader.line_capacity <= MOAT_NDJSON_LINE_MAX);
        moat_error_free(err);
        moat_ndjson_reader_release(&reader);
        free(filler);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_every_split_gives_the_same_events),
                cmocka_unit_test(test_crlf_and_unknown_events_are_tolerated),
                cmocka_unit_test(test_missing_exit_event_is_an_error),
                cmocka_unit_test(test_partial_last_line_is_an_error),
                cmocka_unit_test(test_bad_lines_are_errors),
                cmocka_unit_test(test_server_error_mid_stream),
                cmocka_unit_test(test_reader_can_stop_the_stream),
                cmocka_unit_test(test_line_longer_than_the_bound_is_refused),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
