#include "exec.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cell/cell.h"
#include "common/cleanup.h"
#include "common/protocol.h"
#include "encoding.h"
#include "init_channel.h"
#include "log.h"
#include "sandbox.h"

struct output_reader {
        struct exec *exec;
        struct api_hold *hold;
        unsigned mask; /* bit 0 stdout, bit 1 stderr */
        bool in_flight;
};

struct exec_waiter {
        struct exec_waiter *next;
        struct exec *exec;
        struct api_hold *hold;
        struct event *timer;
};

struct run_collector {
        struct exec *exec;
        struct moatd *daemon;
        struct api_hold *hold;
        struct evbuffer *out[2];
        size_t held; /* counted in daemon->run_output_held */
        bool over_limit;
};

static void reader_pump(struct output_reader *reader);
static void leave_starting(struct exec *exec);
static void collector_pull(struct run_collector *collector);
static void collector_finish(struct run_collector *collector);

/* ---- lookup ---- */

struct exec *exec_find(struct sandbox *sandbox, const char *id)
{
        for (struct exec *e = sandbox->execs; e; e = e->next)
                if (strcmp(e->id, id) == 0)
                        return e;
        return NULL;
}

/* By handle, never by pid: a pid is reused once init reaps the process, while
 * its output and EXIT may still be on the way. The scan is over at most
 * MOAT_INIT_PROCESSES_MAX + SANDBOX_EXITED_EXECS_MAX records. */
static struct exec *find_running(struct sandbox *sandbox, uint32_t handle)
{
        for (struct exec *e = sandbox->execs; e; e = e->next)
                if (e->state == EXEC_RUNNING && e->cookie == handle)
                        return e;
        return NULL;
}

static struct exec *find_starting(struct sandbox *sandbox, uint32_t cookie)
{
        for (struct exec *e = sandbox->execs; e; e = e->next)
                if (e->state == EXEC_STARTING && e->cookie == cookie)
                        return e;
        return NULL;
}

/* ---- JSON ---- */

json_t *exec_to_json(const struct exec *exec)
{
        char started[ENCODING_TIME_MAX], ended[ENCODING_TIME_MAX];
        bool exited = exec->state == EXEC_EXITED;

        encoding_format_time(exec->started_at, started);
        encoding_format_time(exec->ended_at, ended);
        return json_pack("{s:s,s:s,s:I,s:O,s:s?,s:s,s:o,s:o,s:b,s:b,s:s,s:o,s:b}", "id", exec->id, "sandbox_id",
                         exec->sandbox->id, "pid", (json_int_t)exec->pid, "argv", exec->argv, "tag", exec->tag,
                         "state", exited ? "exited" : exec->state == EXEC_RUNNING ? "running" : "starting",
                         "exit_code", exited ? json_integer(exec->exit_code) : json_null(), "signal",
                         exited && exec->signal ? json_integer(exec->signal) : json_null(), "timed_out",
                         exec->timed_out, "oom_killed", exec->oom_killed, "started_at", started, "ended_at",
                         exited ? json_string(ended) : json_null(), "output_dropped", exec->output_dropped);
}

static json_t *exit_event_json(const struct exec *exec)
{
        return json_pack("{s:i,s:o,s:b,s:b}", "exit_code", exec->exit_code, "signal",
                         exec->signal ? json_integer(exec->signal) : json_null(), "timed_out", exec->timed_out,
                         "oom_killed", exec->oom_killed);
}

/* ---- credit ---- */

static bool can_talk_to_init(const struct exec *exec)
{
        return exec->state == EXEC_RUNNING && exec->sandbox->channel && exec->sandbox->state == SANDBOX_RUNNING;
}

/* Keep buffered bytes (plus a charge per chunk, so a flood of 1-byte writes
 * cannot multiply memory) plus the credit init still holds within the
 * budget: that is what bounds moatd's memory per stream. */
static bool evict_exited_output(struct sandbox *sandbox);

static void grant_credit(struct exec *exec, int index)
{
        struct sandbox *sandbox = exec->sandbox;
        struct output_stream *s = &exec->streams[index];
        uint64_t cost = s->bytes + s->chunks * EXEC_CHUNK_OVERHEAD, outstanding = s->granted - s->received, grant;

        /* A timed-out exec's output past the budget is dropped on arrival,
         * not buffered: only what init holds counts. */
        if (exec->discarding)
                cost = 0;
        if (!can_talk_to_init(exec) || cost + outstanding >= EXEC_OUTPUT_BUDGET)
                return;
        grant = EXEC_OUTPUT_BUDGET - cost - outstanding;
        if (grant < EXEC_CREDIT_GRANT_MIN && outstanding > 0)
                return;
        /* The sandbox-wide budget: unread output of many execs must not add
         * up without bound. Output nobody can read any more (exited, no
         * reader) goes first; a running process just waits (backpressure). */
        while (!exec->discarding && sandbox->output_buffered >= SANDBOX_OUTPUT_BUDGET && evict_exited_output(sandbox))
                ;
        if (!exec->discarding && sandbox->output_buffered >= SANDBOX_OUTPUT_BUDGET) {
                exec->credit_withheld = true;
                sandbox->output_starved = true;
                return;
        }
        if (grant > UINT32_MAX)
                grant = UINT32_MAX;
        if (init_channel_send(sandbox->channel, MOAT_FRAME_CREDIT, (uint16_t)(index + 1), exec->cookie,
                              (uint32_t)grant, NULL, 0) == 0)
                s->granted += grant;
}

/* Buffered output went down: execs whose credit was withheld get it now. */
static void release_withheld_credit(struct sandbox *sandbox)
{
        if (!sandbox->output_starved || sandbox->output_buffered >= SANDBOX_OUTPUT_BUDGET)
                return;
        sandbox->output_starved = false;
        for (struct exec *e = sandbox->execs; e; e = e->next)
                if (e->credit_withheld) {
                        e->credit_withheld = false;
                        grant_credit(e, 0);
                        grant_credit(e, 1);
                }
}

/* ---- buffers ---- */

static void chunk_free(struct output_chunk *chunk)
{
        free(chunk->data);
        free(chunk);
}

static int buffer_append(struct exec *exec, int index, const uint8_t *data, size_t length)
{
        struct output_stream *s = &exec->streams[index];
        struct output_chunk *tail = s->tail;

        /* Consecutive output of one stream grows the same chunk, which keeps
         * the chunk count (and the per-chunk charge) low. */
        if (tail && exec->last_stream == index && tail->length + length <= 64 * 1024) {
                if (tail->capacity - tail->length < length) {
                        size_t capacity = tail->capacity * 2;
                        uint8_t *grown;
                        if (capacity < tail->length + length)
                                capacity = tail->length + length;
                        if (capacity > 64 * 1024)
                                capacity = 64 * 1024;
                        grown = realloc(tail->data, capacity);
                        if (!grown)
                                return -1;
                        tail->data = grown;
                        tail->capacity = capacity;
                }
                memcpy(tail->data + tail->length, data, length);
                tail->length += length;
                s->bytes += length;
                exec->sandbox->output_buffered += length;
                return 0;
        }
        struct output_chunk *chunk = calloc(1, sizeof(*chunk));
        if (!chunk)
                return -1;
        chunk->data = malloc(length);
        if (!chunk->data) {
                free(chunk);
                return -1;
        }
        memcpy(chunk->data, data, length);
        chunk->length = chunk->capacity = length;
        chunk->sequence = exec->next_sequence++;
        if (s->tail)
                s->tail->next = chunk;
        else
                s->head = chunk;
        s->tail = chunk;
        s->bytes += length;
        s->chunks++;
        exec->sandbox->output_buffered += length + EXEC_CHUNK_OVERHEAD;
        exec->last_stream = index;
        return 0;
}

/* Removes up to max bytes from the head chunk of stream index; returns a
 * pointer to them (valid until the next buffer call) and their count. */
static size_t buffer_take(struct exec *exec, int index, size_t max, uint8_t *out)
{
        struct output_stream *s = &exec->streams[index];
        struct output_chunk *head = s->head;
        size_t n;

        if (!head)
                return 0;
        n = head->length - head->offset;
        if (n > max)
                n = max;
        memcpy(out, head->data + head->offset, n);
        head->offset += n;
        s->bytes -= n;
        exec->sandbox->output_buffered -= n;
        if (head->offset == head->length) {
                s->head = head->next;
                if (!s->head) {
                        s->tail = NULL;
                        if (exec->last_stream == index)
                                exec->last_stream = -1;
                }
                s->chunks--;
                exec->sandbox->output_buffered -= EXEC_CHUNK_OVERHEAD;
                chunk_free(head);
        }
        release_withheld_credit(exec->sandbox);
        return n;
}

static void buffers_free(struct exec *exec)
{
        for (int i = 0; i < 2; i++) {
                struct output_chunk *c = exec->streams[i].head, *next;
                for (; c; c = next) {
                        next = c->next;
                        chunk_free(c);
                }
                exec->sandbox->output_buffered -=
                        exec->streams[i].bytes + exec->streams[i].chunks * EXEC_CHUNK_OVERHEAD;
                exec->streams[i].head = exec->streams[i].tail = NULL;
                exec->streams[i].bytes = exec->streams[i].chunks = 0;
        }
        exec->last_stream = -1;
        release_withheld_credit(exec->sandbox);
}

/* Drops the buffered output of the exec that exited first among those nobody
 * reads; its record says so (output_dropped). False if there is none. */
static bool evict_exited_output(struct sandbox *sandbox)
{
        struct exec *victim = NULL;

        for (struct exec *e = sandbox->execs; e; e = e->next)
                if (e->state == EXEC_EXITED && (e->streams[0].head || e->streams[1].head) &&
                    !e->streams[0].reader && !e->streams[1].reader && !e->collector &&
                    (!victim || e->ended_at < victim->ended_at))
                        victim = e;
        if (!victim)
                return false;
        victim->output_dropped = true;
        buffers_free(victim);
        return true;
}

/* Which of the reader's streams has the oldest buffered chunk; -1 if none. */
static int oldest_stream(struct exec *exec, unsigned mask)
{
        int best = -1;

        for (int i = 0; i < 2; i++) {
                if (!(mask & (1u << i)) || !exec->streams[i].head)
                        continue;
                if (best < 0 || exec->streams[i].head->sequence < exec->streams[best].head->sequence)
                        best = i;
        }
        return best;
}

/* ---- readers (GET .../output) ---- */

static void reader_detach(struct output_reader *reader)
{
        for (int i = 0; i < 2; i++)
                if (reader->exec->streams[i].reader == reader)
                        reader->exec->streams[i].reader = NULL;
}

static void on_reader_gone(void *arg)
{
        struct output_reader *reader = arg;

        /* The client went away; the process and its unread output stay. */
        reader_detach(reader);
        free(reader);
}

static void on_reader_drained(void *arg)
{
        struct output_reader *reader = arg;

        reader->in_flight = false;
        reader_pump(reader);
}

/* The last line: the exit event; then the stream ends and the reader goes. */
static void reader_finish(struct output_reader *reader)
{
        struct evbuffer *batch = evbuffer_new();
        json_t *event = exit_event_json(reader->exec);
        char *text = event ? json_dumps(event, JSON_COMPACT) : NULL;

        if (event)
                json_decref(event);
        if (batch && text) {
                evbuffer_add(batch, text, strlen(text));
                evbuffer_add(batch, "\n", 1);
                api_hold_stream_chunk(reader->hold, batch, NULL, NULL);
        }
        free(text);
        if (batch)
                evbuffer_free(batch);
        reader_detach(reader);
        api_hold_stream_end(reader->hold);
        free(reader);
}

static void reader_pump(struct output_reader *reader)
{
        static uint8_t raw[EXEC_READER_BATCH];
        static char line[40 + (EXEC_READER_BATCH + 2) / 3 * 4];
        struct exec *exec = reader->exec;
        struct evbuffer *batch;
        size_t total = 0;
        bool drained[2] = {false, false};
        int index;

        if (reader->in_flight)
                return;
        batch = evbuffer_new();
        if (!batch)
                return;
        while (total < EXEC_READER_BATCH && (index = oldest_stream(exec, reader->mask)) >= 0) {
                size_t n = buffer_take(exec, index, EXEC_READER_BATCH - total, raw);
                size_t line_length = encoding_output_line(line, index + 1, raw, n);
                evbuffer_add(batch, line, line_length);
                total += n;
                drained[index] = true;
        }
        for (int i = 0; i < 2; i++)
                if (drained[i])
                        grant_credit(exec, i);
        if (total > 0) {
                reader->in_flight = true;
                api_hold_stream_chunk(reader->hold, batch, on_reader_drained, reader);
                evbuffer_free(batch);
                return;
        }
        evbuffer_free(batch);
        if (exec->state == EXEC_EXITED)
                reader_finish(reader);
}

void exec_attach_reader(struct exec *exec, struct evhttp_request *request, const char *stream_filter)
{
        struct output_reader *reader;
        unsigned mask;

        if (!stream_filter)
                mask = 3;
        else if (strcmp(stream_filter, "stdout") == 0)
                mask = 1;
        else if (strcmp(stream_filter, "stderr") == 0)
                mask = 2;
        else
                return api_reply_new_error(request, MOAT_ERROR_INVALID_ARGUMENT, NULL,
                                           "`stream` must be stdout or stderr");
        if (exec->collector)
                return api_reply_new_error(request, MOAT_ERROR_CONFLICT, NULL,
                                           "the output of a /run exec goes to its /run request");
        for (int i = 0; i < 2; i++)
                if ((mask & (1u << i)) && exec->streams[i].reader)
                        return api_reply_new_error(request, MOAT_ERROR_CONFLICT, NULL,
                                                   "%s of %s already has a reader", i ? "stderr" : "stdout",
                                                   exec->id);
        reader = calloc(1, sizeof(*reader));
        if (!reader)
                return api_reply_new_error(request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        reader->exec = exec;
        reader->mask = mask;
        reader->hold = api_hold_new(exec->sandbox->daemon, request, on_reader_gone, reader);
        if (!reader->hold) {
                free(reader);
                return api_reply_new_error(request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        }
        for (int i = 0; i < 2; i++)
                if (mask & (1u << i))
                        exec->streams[i].reader = reader;
        api_hold_stream_start(reader->hold, "application/x-ndjson");
        reader_pump(reader);
}

static void notify_readers(struct exec *exec)
{
        struct output_reader *readers[2] = {exec->streams[0].reader, exec->streams[1].reader};

        if (exec->collector) {
                collector_pull(exec->collector);
                return;
        }
        if (readers[0])
                reader_pump(readers[0]);
        /* The same reader may own both streams; it may also have finished. */
        if (readers[1] && readers[1] != readers[0] && exec->streams[1].reader == readers[1])
                reader_pump(readers[1]);
}

/* ---- waiters ---- */

static void waiter_free(struct exec_waiter *waiter)
{
        struct exec_waiter **p;

        for (p = &waiter->exec->waiters; *p; p = &(*p)->next)
                if (*p == waiter) {
                        *p = waiter->next;
                        break;
                }
        if (waiter->timer)
                event_free(waiter->timer);
        free(waiter);
}

static void waiter_reply(struct exec_waiter *waiter)
{
        struct api_hold *hold = waiter->hold;
        json_t *body = exec_to_json(waiter->exec);

        waiter_free(waiter);
        api_hold_reply_json(hold, 200, body);
}

static void on_waiter_timeout(evutil_socket_t fd, short what, void *arg)
{
        waiter_reply(arg);
}

static void on_waiter_gone(void *arg)
{
        waiter_free(arg);
}

void exec_wait(struct exec *exec, struct evhttp_request *request, double timeout_s)
{
        struct exec_waiter *waiter;

        if (exec->state == EXEC_EXITED || timeout_s == 0)
                return api_reply_json(request, 200, exec_to_json(exec));
        waiter = calloc(1, sizeof(*waiter));
        if (!waiter)
                return api_reply_new_error(request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        waiter->exec = exec;
        if (timeout_s > 0) {
                struct timeval tv = {.tv_sec = (time_t)timeout_s,
                                     .tv_usec = (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6)};
                waiter->timer = evtimer_new(exec->sandbox->daemon->base, on_waiter_timeout, waiter);
                if (!waiter->timer || evtimer_add(waiter->timer, &tv) < 0) {
                        if (waiter->timer)
                                event_free(waiter->timer);
                        free(waiter);
                        return api_reply_new_error(request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
                }
        }
        waiter->hold = api_hold_new(exec->sandbox->daemon, request, on_waiter_gone, waiter);
        if (!waiter->hold) {
                if (waiter->timer)
                        event_free(waiter->timer);
                free(waiter);
                return api_reply_new_error(request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        }
        waiter->next = exec->waiters;
        exec->waiters = waiter;
}

/* ---- stdin ---- */

static void stdin_flush(struct exec *exec)
{
        static uint8_t chunk[64 * 1024];

        if (!can_talk_to_init(exec))
                return;
        while (evbuffer_get_length(exec->stdin_queue) > 0 &&
               exec->stdin_unacknowledged < MOAT_INITIAL_STDIN_CREDIT) {
                size_t n = MOAT_INITIAL_STDIN_CREDIT - exec->stdin_unacknowledged;
                if (n > sizeof(chunk))
                        n = sizeof(chunk);
                n = (size_t)evbuffer_remove(exec->stdin_queue, chunk, n);
                if (n == 0 || init_channel_send(exec->sandbox->channel, MOAT_FRAME_STDIN, 0, exec->cookie, 0, chunk,
                                                n) < 0)
                        return;
                exec->stdin_unacknowledged += n;
        }
        if (exec->stdin_close_requested && !exec->stdin_close_sent &&
            evbuffer_get_length(exec->stdin_queue) == 0) {
                if (init_channel_send(exec->sandbox->channel, MOAT_FRAME_STDIN_CLOSE, 0, exec->cookie, 0, NULL, 0) == 0)
                        exec->stdin_close_sent = true;
        }
}

static int stdin_check(struct exec *exec, struct moat_error **err)
{
        if (!exec->stdin_pipe)
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, NULL, "%s was started without `stdin: true`",
                                      exec->id);
        if (exec->stdin_close_requested)
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "stdin_closed", "stdin of %s is closed",
                                      exec->id);
        if (exec->state == EXEC_EXITED)
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, NULL, "%s has exited", exec->id);
        return 0;
}

void exec_write_stdin(struct exec *exec, struct evhttp_request *request, const char *data, size_t length)
{
        struct moat_error *err = NULL;

        if (stdin_check(exec, &err) < 0) {
                api_reply_error(request, err);
                moat_error_free(err);
                return;
        }
        if (evbuffer_get_length(exec->stdin_queue) + exec->stdin_unacknowledged + length > EXEC_STDIN_QUEUE_MAX)
                return api_reply_new_error(request, MOAT_ERROR_LIMIT_EXCEEDED, NULL,
                                           "more than %d bytes of stdin are queued for %s", EXEC_STDIN_QUEUE_MAX,
                                           exec->id);
        if (length && evbuffer_add(exec->stdin_queue, data, length) < 0)
                return api_reply_new_error(request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        stdin_flush(exec);
        api_reply_json(request, 200, json_pack("{s:I}", "written", (json_int_t)length));
}

void exec_close_stdin(struct exec *exec, struct evhttp_request *request)
{
        struct moat_error *err = NULL;

        if (stdin_check(exec, &err) < 0) {
                api_reply_error(request, err);
                moat_error_free(err);
                return;
        }
        exec->stdin_close_requested = true;
        stdin_flush(exec);
        api_reply_json(request, 200, json_object());
}

void exec_on_stdin_credit(struct sandbox *sandbox, uint32_t handle, uint32_t bytes)
{
        struct exec *exec = find_running(sandbox, handle);

        if (!exec)
                return;
        exec->stdin_unacknowledged -= bytes < exec->stdin_unacknowledged ? bytes : exec->stdin_unacknowledged;
        stdin_flush(exec);
}

/* ---- signals and timeout ---- */

static void send_signal(struct exec *exec, int signal)
{
        if (can_talk_to_init(exec))
                init_channel_send(exec->sandbox->channel, MOAT_FRAME_SIGNAL, 0, exec->cookie, (uint32_t)signal, NULL,
                                  0);
}

void exec_send_signal(struct exec *exec, struct evhttp_request *request, int signal)
{
        if (exec->state != EXEC_RUNNING || !can_talk_to_init(exec))
                return api_reply_new_error(request, MOAT_ERROR_CONFLICT, NULL, "%s is not running", exec->id);
        send_signal(exec, signal);
        api_reply_json(request, 200, json_object());
}

static void on_exec_timeout(evutil_socket_t fd, short what, void *arg)
{
        struct exec *exec = arg;

        if (exec->state != EXEC_RUNNING)
                return;
        exec->timed_out = true;
        send_signal(exec, SIGKILL);
        /* init reports the exit once it has drained the process's pipes; if
         * nobody reads the output, the budget would hold that back for
         * ever. From here on what does not fit is dropped instead
         * (output_dropped), so a wait on a timed-out exec always ends. */
        exec->discarding = true;
        grant_credit(exec, 0);
        grant_credit(exec, 1);
}

/* ---- lifecycle ---- */

static void finish(struct exec *exec)
{
        struct sandbox *sandbox = exec->sandbox;

        exec->ended_at = moatd_now_ms();
        if (exec->timeout_timer)
                evtimer_del(exec->timeout_timer);
        evbuffer_drain(exec->stdin_queue, evbuffer_get_length(exec->stdin_queue));
        while (exec->waiters)
                waiter_reply(exec->waiters);
        notify_readers(exec);
        if (exec->collector)
                collector_finish(exec->collector);
        if (sandbox->live_exec_count > 0)
                sandbox->live_exec_count--;
        sandbox_touch(sandbox);
}

static bool prune_one_exited(struct sandbox *sandbox);

static unsigned exited_count(const struct sandbox *sandbox)
{
        return sandbox->exec_count - sandbox->live_exec_count - sandbox->starting_exec_count;
}

void exec_on_exited(struct sandbox *sandbox, uint32_t handle, int32_t exit_code, int32_t signal)
{
        struct exec *exec = find_running(sandbox, handle);

        if (!exec)
                return;
        exec->state = EXEC_EXITED;
        if (signal > 0 && signal < 128) {
                exec->signal = signal;
                exec->exit_code = 128 + signal;
        } else {
                exec->exit_code = exit_code & 0xff;
        }
        if (exec->timed_out)
                exec->exit_code = 124;
        /* The OOM killer sends SIGKILL; a new kill in the cgroup while this
         * process lived is the evidence it was the victim. */
        if (signal == SIGKILL && sandbox_oom_kills(sandbox) > exec->oom_kills_at_start)
                exec->oom_killed = true;
        finish(exec);
        if (exec == sandbox->entrypoint) {
                if (exec->oom_killed)
                        sandbox_stop(sandbox, SANDBOX_END_OOM, true, exec->exit_code);
                else
                        sandbox_stop(sandbox, SANDBOX_END_EXITED, true, exec->exit_code);
                return;
        }
        while (exited_count(sandbox) > SANDBOX_EXITED_EXECS_MAX && prune_one_exited(sandbox))
                ;
}

void exec_end_all(struct sandbox *sandbox, bool oom)
{
        struct exec *exec = sandbox->execs, *next;
        static const struct moat_error stopped = {
                .kind = MOAT_ERROR_CONFLICT, .code = "sandbox_not_running", .message = "the sandbox stopped"};

        for (; exec; exec = next) {
                next = exec->next;
                if (exec->state == EXEC_STARTING) {
                        leave_starting(exec);
                        exec->state = EXEC_EXITED;
                        if (exec->spawn_done)
                                exec->spawn_done(exec, &stopped, exec->spawn_done_arg);
                        exec->spawn_done = NULL;
                        exec_free(exec);
                } else if (exec->state == EXEC_RUNNING) {
                        /* Killed with the sandbox: report it as SIGKILL. */
                        exec->state = EXEC_EXITED;
                        exec->signal = SIGKILL;
                        exec->exit_code = exec->timed_out ? 124 : 128 + SIGKILL;
                        exec->oom_killed = oom;
                        finish(exec);
                }
        }
}

static void leave_starting(struct exec *exec)
{
        if (exec->state != EXEC_STARTING)
                return;
        if (exec->sandbox->starting_exec_count > 0)
                exec->sandbox->starting_exec_count--;
        if (exec->spawn_timer) {
                event_free(exec->spawn_timer);
                exec->spawn_timer = NULL;
        }
}

static void on_spawn_timeout(evutil_socket_t fd, short what, void *arg)
{
        struct exec *exec = arg;
        struct sandbox *sandbox = exec->sandbox;

        /* An init that does not answer a SPAWN is stuck or hostile: nothing
         * else it says can be trusted either. Stopping the sandbox fails
         * this exec (and every other) with sandbox_not_running. */
        log_warn("sandbox %s: init did not answer the spawn of %s within %d s", sandbox->id, exec->id,
                 EXEC_SPAWN_TIMEOUT_S);
        sandbox_stop(sandbox, SANDBOX_END_ERROR, false, 0);
}

int exec_on_output(struct sandbox *sandbox, uint32_t handle, int stream, const uint8_t *data, size_t length)
{
        struct exec *exec = find_running(sandbox, handle);
        struct output_stream *s;

        if (!exec)
                return -1;
        s = &exec->streams[stream - 1];
        s->received += length + MOAT_OUTPUT_FRAME_CHARGE;
        /* Init may not send more than it was granted: that is the bound on
         * our memory, and init is not trusted to respect it by itself. */
        if (s->received > s->granted)
                return -1;
        if (exec->discarding && (s->bytes + s->chunks * EXEC_CHUNK_OVERHEAD >= EXEC_OUTPUT_BUDGET ||
                                 exec->sandbox->output_buffered >= SANDBOX_OUTPUT_BUDGET)) {
                exec->output_dropped = true;
                grant_credit(exec, stream - 1);
                return 0;
        }
        if (buffer_append(exec, stream - 1, data, length) < 0)
                return -1;
        if (exec->discarding)
                grant_credit(exec, stream - 1);
        notify_readers(exec);
        return 0;
}

void exec_on_spawned(struct sandbox *sandbox, uint32_t handle, uint32_t pid)
{
        struct exec *exec = find_starting(sandbox, handle);
        exec_spawn_done_fn done;

        if (!exec)
                return;
        leave_starting(exec);
        exec->state = EXEC_RUNNING;
        exec->pid = pid;
        exec->started_at = moatd_now_ms();
        exec->oom_kills_at_start = sandbox_oom_kills(sandbox);
        sandbox->live_exec_count++;
        if (exec->timeout_s) {
                struct timeval tv = {.tv_sec = exec->timeout_s};
                exec->timeout_timer = evtimer_new(sandbox->daemon->base, on_exec_timeout, exec);
                if (exec->timeout_timer)
                        evtimer_add(exec->timeout_timer, &tv);
        }
        grant_credit(exec, 0);
        grant_credit(exec, 1);
        stdin_flush(exec);
        done = exec->spawn_done;
        exec->spawn_done = NULL;
        if (done)
                done(exec, NULL, exec->spawn_done_arg);
}

void exec_on_spawn_failed(struct sandbox *sandbox, uint32_t cookie, int errno_value, const char *message)
{
        struct exec *exec = find_starting(sandbox, cookie);
        struct moat_error error = {0};
        exec_spawn_done_fn done;

        if (!exec)
                return;
        leave_starting(exec);
        /* A missing or non-executable argv[0] is the client's to fix. */
        if (errno_value == ENOENT || errno_value == EACCES || errno_value == ENOTDIR || errno_value == ENOEXEC) {
                error.kind = MOAT_ERROR_NOT_FOUND;
                snprintf(error.code, sizeof(error.code), "exec_not_found");
        } else if (errno_value == EAGAIN) {
                /* init's process table is full: a limit, like ours. */
                error.kind = MOAT_ERROR_LIMIT_EXCEEDED;
                snprintf(error.code, sizeof(error.code), "limit_exceeded");
        } else {
                error.kind = MOAT_ERROR_SYSTEM;
                snprintf(error.code, sizeof(error.code), "system");
        }
        snprintf(error.message, sizeof(error.message), "%s", message[0] ? message : strerror(errno_value));
        exec->state = EXEC_EXITED;
        done = exec->spawn_done;
        exec->spawn_done = NULL;
        if (done)
                done(exec, &error, exec->spawn_done_arg);
        exec_free(exec);
}

static int build_env(struct sandbox *sandbox, const struct exec_request *request, char ***ret_env,
                     struct moat_error **err)
{
        json_t *merged = json_deep_copy(sandbox->config.env);
        const char *key;
        json_t *value;
        char **env;
        size_t n = 0;

        if (!merged)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "copy env");
        if (request->env)
                json_object_update(merged, request->env);
        if (json_object_size(merged) > REQUEST_ENV_MAX ||
            request_argv_env_bytes(request->argv, merged) > REQUEST_ARGV_ENV_BYTES_MAX) {
                json_decref(merged);
                return moat_error_invalid(err, "argv and the merged env exceed %d entries or %d bytes",
                                          REQUEST_ENV_MAX, REQUEST_ARGV_ENV_BYTES_MAX);
        }
        env = calloc(json_object_size(merged) + 1, sizeof(*env));
        if (!env) {
                json_decref(merged);
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate env");
        }
        json_object_foreach(merged, key, value) {
                if (asprintf(&env[n], "%s=%s", key, json_string_value(value)) < 0) {
                        env[n] = NULL;
                        break;
                }
                n++;
        }
        json_decref(merged);
        *ret_env = env;
        return 0;
}

static void strv_free(char **v)
{
        if (!v)
                return;
        for (char **p = v; *p; p++)
                free(*p);
        free(v);
}

static int send_spawn(struct sandbox *sandbox, struct exec *exec, const struct exec_request *request,
                      struct moat_error **err)
{
        const char *user = request->user ? request->user : sandbox->config.user;
        const char *cwd = request->workdir ? request->workdir : sandbox->config.workdir;
        size_t argc = json_array_size(request->argv);
        _cleanup_free_ const char **argv = calloc(argc + 1, sizeof(*argv));
        _cleanup_free_ uint8_t *payload = NULL;
        char **env = NULL;
        long length;

        if (!argv)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate argv");
        for (size_t i = 0; i < argc; i++)
                argv[i] = json_string_value(json_array_get(request->argv, i));
        if (build_env(sandbox, request, &env, err) < 0)
                return -1;
        payload = malloc(MOAT_FRAME_PAYLOAD_MAX);
        if (!payload) {
                strv_free(env);
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate spawn frame");
        }
        /* "" asks init for root without a passwd lookup: images without
         * /etc/passwd still run as root. */
        length = moat_spawn_encode(payload, MOAT_FRAME_PAYLOAD_MAX, request->stdin_pipe ? MOAT_SPAWN_STDIN : 0, 0,
                                   0, strcmp(user, "root") == 0 ? "" : user, cwd, argv, (const char *const *)env);
        strv_free(env);
        if (length < 0)
                return moat_error_invalid(err, "the exec does not fit in a spawn request");
        if (init_channel_send(sandbox->channel, MOAT_FRAME_SPAWN, 0, 0, exec->cookie, payload, (size_t)length) < 0)
                return moat_error_set(err, MOAT_ERROR_SYSTEM, 0, NULL, "send spawn request to init");
        return 0;
}

/* Forget the oldest exited exec nobody reads, to bound the records kept. */
static bool prune_one_exited(struct sandbox *sandbox)
{
        struct exec *oldest = NULL;

        for (struct exec *e = sandbox->execs; e; e = e->next)
                if (e->state == EXEC_EXITED && !e->streams[0].reader && !e->streams[1].reader && !e->waiters &&
                    !e->collector && e != sandbox->entrypoint)
                        oldest = e;
        if (!oldest)
                return false;
        exec_free(oldest);
        return true;
}

struct exec *exec_start(struct sandbox *sandbox, const struct exec_request *request, exec_spawn_done_fn done,
                        void *arg, struct moat_error **err)
{
        struct exec *exec;

        if (sandbox->state != SANDBOX_RUNNING || !sandbox->channel) {
                moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "sandbox_not_running", "sandbox %s is not running",
                               sandbox->id);
                return NULL;
        }
        /* Starting execs count: each holds a queued SPAWN of up to 1 MiB. */
        if (sandbox->live_exec_count + sandbox->starting_exec_count >= MOAT_INIT_PROCESSES_MAX) {
                moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL, "sandbox %s runs %d execs already",
                               sandbox->id, MOAT_INIT_PROCESSES_MAX);
                return NULL;
        }
        /* An init that stopped reading must not make us queue without bound. */
        if (init_channel_pending(sandbox->channel) > EXEC_INIT_QUEUE_MAX) {
                moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL,
                               "sandbox %s: init is not keeping up; retry later", sandbox->id);
                return NULL;
        }
        while (exited_count(sandbox) >= SANDBOX_EXITED_EXECS_MAX && prune_one_exited(sandbox))
                ;
        if (exited_count(sandbox) >= SANDBOX_EXITED_EXECS_MAX) {
                moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL,
                               "sandbox %s keeps %d exited execs that are still watched", sandbox->id,
                               SANDBOX_EXITED_EXECS_MAX);
                return NULL;
        }
        exec = calloc(1, sizeof(*exec));
        if (!exec) {
                moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate exec");
                return NULL;
        }
        exec->sandbox = sandbox;
        exec->argv = json_incref(request->argv);
        exec->tag = request->tag ? strdup(request->tag) : NULL;
        exec->stdin_queue = evbuffer_new();
        exec->timeout_s = request->timeout_s;
        exec->stdin_pipe = request->stdin_pipe;
        exec->last_stream = -1;
        exec->cookie = ++sandbox->next_cookie;
        exec->spawn_done = done;
        exec->spawn_done_arg = arg;
        exec->started_at = moatd_now_ms();
        for (int i = 0; i < 2; i++)
                exec->streams[i].granted = MOAT_INITIAL_OUTPUT_CREDIT;
        if (!exec->stdin_queue || (request->tag && !exec->tag) ||
            moat_id_generate("ex-", exec->id, err) < 0 || send_spawn(sandbox, exec, request, err) < 0) {
                if (!*err)
                        moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate exec");
                exec->sandbox = NULL;
                json_decref(exec->argv);
                free(exec->tag);
                if (exec->stdin_queue)
                        evbuffer_free(exec->stdin_queue);
                free(exec);
                return NULL;
        }
        exec->next = sandbox->execs;
        if (sandbox->execs)
                sandbox->execs->prev = exec;
        sandbox->execs = exec;
        sandbox->exec_count++;
        sandbox->starting_exec_count++;
        exec->spawn_timer = evtimer_new(sandbox->daemon->base, on_spawn_timeout, exec);
        if (exec->spawn_timer)
                evtimer_add(exec->spawn_timer, &(struct timeval){.tv_sec = EXEC_SPAWN_TIMEOUT_S});
        return exec;
}

void exec_free(struct exec *exec)
{
        struct sandbox *sandbox = exec->sandbox;

        if (exec->state == EXEC_RUNNING && sandbox->live_exec_count > 0)
                sandbox->live_exec_count--;
        leave_starting(exec);
        exec->state = EXEC_EXITED;
        while (exec->waiters)
                waiter_reply(exec->waiters);
        for (int i = 0; i < 2; i++) {
                struct output_reader *reader = exec->streams[i].reader;
                if (reader)
                        reader_finish(reader); /* ends the stream with the exit event */
        }
        if (exec->collector)
                collector_finish(exec->collector);
        if (exec->prev)
                exec->prev->next = exec->next;
        else if (sandbox->execs == exec)
                sandbox->execs = exec->next;
        if (exec->next)
                exec->next->prev = exec->prev;
        sandbox->exec_count--;
        if (sandbox->entrypoint == exec)
                sandbox->entrypoint = NULL;
        if (exec->timeout_timer)
                event_free(exec->timeout_timer);
        buffers_free(exec);
        evbuffer_free(exec->stdin_queue);
        json_decref(exec->argv);
        free(exec->tag);
        free(exec);
}

/* ---- /run ---- */

static json_t *stream_fields(json_t *body, const char *name, struct evbuffer *buffer)
{
        size_t length = evbuffer_get_length(buffer);
        const uint8_t *data = length ? evbuffer_pullup(buffer, -1) : (const uint8_t *)"";
        char key[32];

        snprintf(key, sizeof(key), "%s_base64", name);
        if (encoding_utf8_valid(data, length)) {
                json_object_set_new(body, name, json_stringn((const char *)data, length));
                json_object_set_new(body, key, json_null());
        } else {
                char *encoded = malloc(encoding_base64_length(length) + 1);
                if (encoded)
                        encoding_base64_encode(data, length, encoded);
                json_object_set_new(body, name, json_null());
                json_object_set_new(body, key, encoded ? json_string(encoded) : json_null());
                free(encoded);
        }
        return body;
}

static void collector_release(struct run_collector *collector)
{
        collector->daemon->run_output_held -= collector->held;
        collector->held = 0;
        for (int k = 0; k < 2; k++)
                if (collector->out[k])
                        evbuffer_drain(collector->out[k], evbuffer_get_length(collector->out[k]));
}

static void collector_free(struct run_collector *collector)
{
        if (collector->daemon)
                collector_release(collector);
        if (collector->exec)
                collector->exec->collector = NULL;
        for (int i = 0; i < 2; i++)
                if (collector->out[i])
                        evbuffer_free(collector->out[i]);
        free(collector);
}

static void on_collector_gone(void *arg)
{
        struct run_collector *collector = arg;

        /* The process keeps running; its output is drained and dropped. */
        collector->hold = NULL;
}

static void collector_pull(struct run_collector *collector)
{
        static uint8_t raw[64 * 1024];
        struct exec *exec = collector->exec;

        for (int i = 0; i < 2; i++) {
                size_t n;
                bool any = false;
                bool daemon_full = false;
                while ((n = buffer_take(exec, i, sizeof(raw), raw)) > 0) {
                        any = true;
                        if (collector->over_limit)
                                continue;
                        if (collector->daemon->run_output_held + n > EXEC_RUN_OUTPUT_TOTAL_MAX) {
                                daemon_full = true;
                                break;
                        }
                        evbuffer_add(collector->out[i], raw, n);
                        collector->held += n;
                        collector->daemon->run_output_held += n;
                }
                if (any)
                        grant_credit(exec, i);
                if (!collector->over_limit &&
                    (daemon_full || evbuffer_get_length(collector->out[i]) > EXEC_RUN_OUTPUT_MAX)) {
                        collector->over_limit = true;
                        send_signal(exec, SIGKILL);
                        if (collector->hold) {
                                struct moat_error error = {.kind = MOAT_ERROR_LIMIT_EXCEEDED,
                                                           .code = "output_too_large"};
                                if (daemon_full)
                                        snprintf(error.message, sizeof(error.message),
                                                 "one-shot runs hold %d bytes of output across the daemon; use "
                                                 "the streaming API", EXEC_RUN_OUTPUT_TOTAL_MAX);
                                else
                                        snprintf(error.message, sizeof(error.message),
                                                 "%s exceeded %d bytes; use the streaming API",
                                                 i ? "stderr" : "stdout", EXEC_RUN_OUTPUT_MAX);
                                api_hold_reply_error(collector->hold, &error);
                                collector->hold = NULL;
                        }
                        collector_release(collector);
                }
        }
}

static void collector_finish(struct run_collector *collector)
{
        struct exec *exec = collector->exec;

        collector_pull(collector);
        if (collector->hold) {
                json_t *body = exit_event_json(exec);
                if (body) {
                        stream_fields(body, "stdout", collector->out[0]);
                        stream_fields(body, "stderr", collector->out[1]);
                }
                api_hold_reply_json(collector->hold, 200, body);
                collector->hold = NULL;
        }
        collector_free(collector);
}

static void on_run_spawned(struct exec *exec, const struct moat_error *error, void *arg)
{
        struct run_collector *collector = arg;

        if (error) {
                /* The exec is freed after this returns; so is the collector. */
                exec->collector = NULL;
                collector->exec = NULL;
                if (collector->hold)
                        api_hold_reply_error(collector->hold, error);
                collector->hold = NULL;
                collector_free(collector);
        }
}

void exec_run(struct sandbox *sandbox, struct exec_request *request, struct evhttp_request *http_request)
{
        struct moat_error *err = NULL;
        struct run_collector *collector = calloc(1, sizeof(*collector));
        struct exec *exec;

        if (!collector || !(collector->out[0] = evbuffer_new()) || !(collector->out[1] = evbuffer_new())) {
                if (collector)
                        collector_free(collector);
                return api_reply_new_error(http_request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        }
        exec = exec_start(sandbox, request, on_run_spawned, collector, &err);
        if (!exec) {
                collector_free(collector);
                api_reply_error(http_request, err);
                moat_error_free(err);
                return;
        }
        collector->exec = exec;
        collector->daemon = sandbox->daemon;
        exec->collector = collector;
        collector->hold = api_hold_new(sandbox->daemon, http_request, on_collector_gone, collector);
        if (!collector->hold) {
                api_reply_new_error(http_request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
                return; /* the collector drains the exec's output until it exits */
        }
        if (request->stdin_data) {
                evbuffer_add(exec->stdin_queue, request->stdin_data, request->stdin_length);
                exec->stdin_close_requested = true;
        }
}
