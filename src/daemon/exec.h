/* Execs: processes started in a sandbox through its init. Each has bounded
 * per-stream output buffers fed by init under credit (common/protocol.h) and
 * drained by at most one HTTP reader per stream, a bounded stdin queue, an
 * optional timeout, and waiters. A client disconnect detaches a reader or a
 * waiter; it never touches the process. Loop thread only. */
#pragma once
#include <event2/http.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "common/protocol.h"
#include "ids.h"
#include "request.h"

struct sandbox;
struct api_hold;
struct output_reader;
struct exec_waiter;
struct run_collector;
struct exec;

#define EXEC_OUTPUT_BUDGET (1024 * 1024)   /* per stream: buffered + credit init still holds */
/* Bytes charged per buffered chunk: what a chunk costs beyond its bytes (its
 * struct and two malloc headers), the same as the credit init spends per
 * OUTPUT frame, so memory per stream stays within ~2x the budget whatever
 * the frame sizes. */
#define EXEC_CHUNK_OVERHEAD MOAT_OUTPUT_FRAME_CHARGE
#define EXEC_CREDIT_GRANT_MIN (64 * 1024)  /* no CREDIT frame for less (unless idle) */
#define EXEC_STDIN_QUEUE_MAX (4 * 1024 * 1024)
#define EXEC_RUN_OUTPUT_MAX (16 * 1024 * 1024)
/* All /run requests together: many concurrent ones must not hold 32 MiB each. */
#define EXEC_RUN_OUTPUT_TOTAL_MAX (256 * 1024 * 1024)
#define EXEC_READER_BATCH (48 * 1024)      /* raw bytes per chunk sent to a reader */
#define EXEC_SPAWN_TIMEOUT_S 30            /* init must answer a SPAWN within this */
#define EXEC_INIT_QUEUE_MAX (4 * 1024 * 1024) /* bytes queued towards init before new execs get 429 */

enum exec_state { EXEC_STARTING, EXEC_RUNNING, EXEC_EXITED };

struct output_chunk {
        struct output_chunk *next;
        uint64_t sequence; /* global order of arrival across both streams */
        size_t offset, length, capacity;
        uint8_t *data;
};

struct output_stream {
        struct output_chunk *head, *tail;
        size_t bytes, chunks;
        uint64_t received, granted; /* granted includes init's initial credit */
        struct output_reader *reader;
};

typedef void (*exec_spawn_done_fn)(struct exec *exec, const struct moat_error *error, void *arg);

struct exec {
        struct exec *next, *prev;
        struct sandbox *sandbox;
        char id[MOAT_ID_MAX];
        uint32_t pid;    /* OS pid in the sandbox: what clients see */
        uint32_t cookie; /* the handle init names this process by: never reused in a sandbox */
        json_t *argv;
        char *tag;
        enum exec_state state;
        int exit_code, signal;
        bool timed_out, oom_killed;
        bool output_dropped; /* unread output evicted after exit (sandbox output budget) */
        bool credit_withheld; /* waiting for room in the sandbox output budget */
        bool discarding;      /* timed out: output past the budget is dropped, so init can drain and report the exit */
        int64_t started_at, ended_at;
        uint64_t oom_kills_at_start;
        uint32_t timeout_s;
        struct event *timeout_timer;
        struct event *spawn_timer; /* while STARTING */

        struct output_stream streams[2]; /* [0] stdout, [1] stderr */
        uint64_t next_sequence;
        int last_stream;

        bool stdin_pipe, stdin_close_requested, stdin_close_sent;
        struct evbuffer *stdin_queue;
        uint64_t stdin_unacknowledged;

        exec_spawn_done_fn spawn_done;
        void *spawn_done_arg;
        struct exec_waiter *waiters;
        struct run_collector *collector;
};

/* Sends SPAWN; done runs on SPAWNED (error NULL) or failure. On failure the
 * exec is freed right after done returns. Returns NULL (and *err) if the
 * request cannot even be sent. */
struct exec *exec_start(struct sandbox *sandbox, const struct exec_request *request, exec_spawn_done_fn done,
                        void *arg, struct moat_error **err);
struct exec *exec_find(struct sandbox *sandbox, const char *id);
json_t *exec_to_json(const struct exec *exec);
void exec_free(struct exec *exec);

/* Frames from init, routed by the sandbox. Return -1 on a protocol violation. */
void exec_on_spawned(struct sandbox *sandbox, uint32_t handle, uint32_t pid);
void exec_on_spawn_failed(struct sandbox *sandbox, uint32_t cookie, int errno_value, const char *message);
int exec_on_output(struct sandbox *sandbox, uint32_t handle, int stream, const uint8_t *data, size_t length);
void exec_on_exited(struct sandbox *sandbox, uint32_t handle, int32_t exit_code, int32_t signal);
void exec_on_stdin_credit(struct sandbox *sandbox, uint32_t handle, uint32_t bytes);
/* The sandbox stopped: every exec not yet exited ends as killed. */
void exec_end_all(struct sandbox *sandbox, bool oom);

/* HTTP operations. Each replies on request itself. */
void exec_attach_reader(struct exec *exec, struct evhttp_request *request, const char *stream_filter);
void exec_write_stdin(struct exec *exec, struct evhttp_request *request, const char *data, size_t length);
void exec_close_stdin(struct exec *exec, struct evhttp_request *request);
void exec_send_signal(struct exec *exec, struct evhttp_request *request, int signal);
void exec_wait(struct exec *exec, struct evhttp_request *request, double timeout_s);
/* POST /run: start, collect, reply. */
void exec_run(struct sandbox *sandbox, struct exec_request *request, struct evhttp_request *http_request);
