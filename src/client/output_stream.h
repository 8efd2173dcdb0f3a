/* The exec output stream: NDJSON lines, one event each (docs/API.md):
 *   {"stream":"stdout"|"stderr","data":"<base64>"}
 *   {"exit_code":0,"signal":null,"timed_out":false,"oom_killed":false}
 * The reader is pure (bytes in, callbacks out) so it can be tested without a
 * daemon; client.c feeds it what libcurl receives. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"

/* Bound on one line, so a broken or hostile server cannot make us buffer
 * without limit. The server sends output in chunks far smaller than this. */
#define MOAT_NDJSON_LINE_MAX (4u << 20)

enum moat_output_stream {
        MOAT_OUTPUT_STDOUT = 1,
        MOAT_OUTPUT_STDERR = 2,
};

struct moat_exit_status {
        int exit_code;   /* 128+n when killed by signal n, 124 on exec timeout */
        int signal;      /* 0 when not killed by a signal */
        bool timed_out;
        bool oom_killed;
};

struct moat_output_handler {
        /* Called for every decoded chunk; return <0 to stop the stream. */
        int (*on_data)(void *userdata, enum moat_output_stream stream, const unsigned char *data,
                       size_t length);
        /* Called once, for the final event. */
        void (*on_exit)(void *userdata, const struct moat_exit_status *status);
        void *userdata;
};

struct moat_ndjson_reader {
        const struct moat_output_handler *handler;
        char *line;            /* the incomplete line carried between feeds */
        size_t line_length;
        size_t line_capacity;
        bool exited;           /* the exit event was seen */
};

void moat_ndjson_reader_init(struct moat_ndjson_reader *reader, const struct moat_output_handler *handler);
/* Feed bytes as they arrive; complete lines are dispatched at once. */
int moat_ndjson_reader_feed(struct moat_ndjson_reader *reader, const char *bytes, size_t length,
                            struct moat_error **err);
/* The stream ended: a partial line or a missing exit event is an error
 * (the connection was cut, or the daemon went away). */
int moat_ndjson_reader_finish(struct moat_ndjson_reader *reader, struct moat_error **err);
void moat_ndjson_reader_release(struct moat_ndjson_reader *reader);

/* Decode and dispatch one line (without its newline). Blank lines and events
 * of unknown shape are ignored, so the server may add event types. An
 * {"error":{...}} line (the server failing mid-stream) becomes *err. */
int moat_output_event_dispatch(const char *line, size_t length, const struct moat_output_handler *handler,
                               bool *ret_exited, struct moat_error **err);
