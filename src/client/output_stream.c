#include "output_stream.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "client.h"
#include "common/cleanup.h"


void moat_ndjson_reader_init(struct moat_ndjson_reader *reader, const struct moat_output_handler *handler)
{
        *reader = (struct moat_ndjson_reader){ .handler = handler };
}

void moat_ndjson_reader_release(struct moat_ndjson_reader *reader)
{
        free(reader->line);
        reader->line = NULL;
        reader->line_length = reader->line_capacity = 0;
}

static int dispatch_data(json_t *event, const struct moat_output_handler *handler, struct moat_error **err)
{
        const char *stream_name = json_string_value(json_object_get(event, "stream"));
        json_t *data = json_object_get(event, "data");
        enum moat_output_stream stream;
        _cleanup_free_ unsigned char *bytes = NULL;
        long decoded;

        if (strcmp(stream_name, "stdout") == 0)
                stream = MOAT_OUTPUT_STDOUT;
        else if (strcmp(stream_name, "stderr") == 0)
                stream = MOAT_OUTPUT_STDERR;
        else
                return 0; /* a stream we do not know: not ours to print */
        if (!json_is_string(data))
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, "bad_stream",
                                      "output event without a string `data`");
        bytes = malloc(MOAT_BASE64_DECODED_MAX(json_string_length(data)));
        if (!bytes)
                return moat_error_system(err, ENOMEM, "decode output");
        decoded = moat_base64_decode(json_string_value(data), json_string_length(data), bytes);
        if (decoded < 0)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, "bad_stream",
                                      "output event with invalid base64 `data`");
        if (decoded > 0 && handler->on_data &&
            handler->on_data(handler->userdata, stream, bytes, (size_t)decoded) < 0)
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, "aborted", "output stream stopped by the reader");
        return 0;
}

static void dispatch_exit(json_t *event, const struct moat_output_handler *handler)
{
        json_t *exit_code = json_object_get(event, "exit_code");
        json_t *signal = json_object_get(event, "signal");
        struct moat_exit_status status = {
                .exit_code = json_is_integer(exit_code) ? (int)json_integer_value(exit_code) : 255,
                .signal = json_is_integer(signal) ? (int)json_integer_value(signal) : 0,
                .timed_out = json_is_true(json_object_get(event, "timed_out")),
                .oom_killed = json_is_true(json_object_get(event, "oom_killed")),
        };

        if (handler->on_exit)
                handler->on_exit(handler->userdata, &status);
}

int moat_output_event_dispatch(const char *line, size_t length, const struct moat_output_handler *handler,
                               bool *ret_exited, struct moat_error **err)
{
        _cleanup_(json_decrefp) json_t *event = NULL;
        json_error_t json_error;

        while (length > 0 && (line[length - 1] == '\r' || line[length - 1] == ' '))
                length--;
        if (length == 0)
                return 0;
        event = json_loadb(line, length, JSON_REJECT_DUPLICATES, &json_error);
        if (!json_is_object(event))
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, "bad_stream",
                                      "output stream line is not a JSON object: %s", json_error.text);
        if (json_object_get(event, "error"))
                return moat_client_error_from_response(200, event, err);
        if (json_is_string(json_object_get(event, "stream")))
                return dispatch_data(event, handler, err);
        if (json_object_get(event, "exit_code")) {
                dispatch_exit(event, handler);
                *ret_exited = true;
        }
        return 0;
}

static int reader_append(struct moat_ndjson_reader *reader, const char *bytes, size_t length,
                         struct moat_error **err)
{
        if (length > MOAT_NDJSON_LINE_MAX - reader->line_length)
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "bad_stream",
                                      "output stream line longer than %u bytes", MOAT_NDJSON_LINE_MAX);
        if (reader->line_length + length > reader->line_capacity) {
                size_t capacity = reader->line_capacity ? reader->line_capacity : 4096;
                char *grown;

                while (capacity < reader->line_length + length)
                        capacity *= 2;
                grown = realloc(reader->line, capacity);
                if (!grown)
                        return moat_error_system(err, ENOMEM, "buffer output line");
                reader->line = grown;
                reader->line_capacity = capacity;
        }
        memcpy(reader->line + reader->line_length, bytes, length);
        reader->line_length += length;
        return 0;
}

int moat_ndjson_reader_feed(struct moat_ndjson_reader *reader, const char *bytes, size_t length,
                            struct moat_error **err)
{
        while (length > 0) {
                const char *newline = memchr(bytes, '\n', length);
                size_t chunk = newline ? (size_t)(newline - bytes) : length;

                if (!newline)
                        return reader_append(reader, bytes, chunk, err);
                if (reader->line_length == 0) {
                        /* The common case: a whole line inside one read, no copy. */
                        if (moat_output_event_dispatch(bytes, chunk, reader->handler, &reader->exited, err) < 0)
                                return -1;
                } else {
                        size_t line_length;

                        if (reader_append(reader, bytes, chunk, err) < 0)
                                return -1;
                        line_length = reader->line_length;
                        reader->line_length = 0;
                        if (moat_output_event_dispatch(reader->line, line_length, reader->handler,
                                                       &reader->exited, err) < 0)
                                return -1;
                }
                bytes += chunk + 1;
                length -= chunk + 1;
        }
        return 0;
}

int moat_ndjson_reader_finish(struct moat_ndjson_reader *reader, struct moat_error **err)
{
        if (reader->line_length > 0)
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, "stream_truncated",
                                      "output stream ended in the middle of an event");
        if (!reader->exited)
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, "stream_truncated",
                                      "output stream ended before the exit event");
        return 0;
}
