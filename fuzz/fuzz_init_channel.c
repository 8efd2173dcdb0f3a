/* The init -> moatd direction of the wire protocol: moatd's end of a
 * sandbox's control connection (src/daemon/init_channel.c). init runs next to
 * the workload, which can ptrace or replace it, so every byte it sends is
 * untrusted. The fuzz bytes are what "init" writes into one end of a
 * socketpair; init_channel_new owns the other end; the event loop runs until
 * `closed` fires (EOF, a protocol violation) or a bound on rounds is reached.
 *
 * The handlers record what they are told and check what moatd's handlers
 * rely on: OUTPUT carries 1..MOAT_OUTPUT_CHUNK_MAX bytes of a known
 * stream, SPAWN_FAILED's message is a short printable C string. One frame
 * shape makes a handler close the channel from inside the dispatch (what
 * sandbox.c does on a fatal frame), to exercise the deferred free. */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/protocol.h"
#include "fuzz.h"
#include "init_channel.h"

static struct event_base *base;

struct record {
        struct init_channel *channel;
        bool closed;      /* `closed` ran: the channel frees itself */
        bool closed_by_us; /* we called init_channel_close */
        size_t calls;
        size_t output_bytes;
};

/* The magic handle that makes a handler close the channel mid-dispatch. */
#define CLOSE_FROM_HANDLER 0xC105Eu

static void maybe_close(struct record *r, uint32_t handle)
{
        r->calls++;
        if (handle == CLOSE_FROM_HANDLER && !r->closed_by_us && !r->closed) {
                r->closed_by_us = true;
                init_channel_close(r->channel);
        }
}

static void on_hello(void *arg, uint32_t version, uint32_t live)
{
        struct record *r = arg;

        maybe_close(r, live);
        /* moatd answers a HELLO_ACK by spawning: queue a frame towards init. */
        if (!r->closed && !r->closed_by_us)
                init_channel_send(r->channel, MOAT_FRAME_STDIN_CLOSE, 0, version, 0, NULL, 0);
}

static void on_spawned(void *arg, uint32_t handle, uint32_t pid)
{
        maybe_close(arg, handle);
}

static void on_spawn_failed(void *arg, uint32_t cookie, int errno_value, const char *message)
{
        size_t length = strlen(message);

        if (length >= 512)
                abort();
        for (size_t i = 0; i < length; i++)
                if ((unsigned char)message[i] < 0x20)
                        abort();
        maybe_close(arg, cookie);
}

static void on_output(void *arg, uint32_t handle, int stream, const uint8_t *data, size_t length)
{
        struct record *r = arg;
        volatile uint8_t sink = 0;

        if (length == 0 || length > MOAT_OUTPUT_CHUNK_MAX ||
            (stream != MOAT_STREAM_STDOUT && stream != MOAT_STREAM_STDERR))
                abort();
        /* Touch every byte: ASan checks the span handed out is real. */
        for (size_t i = 0; i < length; i++)
                sink ^= data[i];
        (void)sink;
        r->output_bytes += length;
        maybe_close(r, handle);
}

static void on_exited(void *arg, uint32_t handle, int32_t exit_code, int32_t signal_number)
{
        maybe_close(arg, handle);
}

static void on_stdin_credit(void *arg, uint32_t handle, uint32_t bytes)
{
        maybe_close(arg, handle);
}

static void on_closed(void *arg, const char *why)
{
        struct record *r = arg;

        if (r->closed || !why)
                abort(); /* `closed` runs at most once, with a reason */
        r->closed = true;
}

static const struct init_channel_handlers handlers = {
        .hello = on_hello,
        .spawned = on_spawned,
        .spawn_failed = on_spawn_failed,
        .output = on_output,
        .exited = on_exited,
        .stdin_credit = on_stdin_credit,
        .closed = on_closed,
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        base = event_base_new();
        if (!base)
                abort();
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct record record = {0};
        struct moat_error *err = NULL;
        int pair[2];
        size_t written = 0;
        bool shut = false;

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) < 0)
                abort();
        record.channel = init_channel_new(base, pair[0], &handlers, &record, &err);
        if (!record.channel)
                abort();
        for (int round = 0; round < 10000 && !record.closed && !record.closed_by_us; round++) {
                if (written < size) {
                        ssize_t n = send(pair[1], data + written, size - written, MSG_NOSIGNAL);

                        if (n > 0)
                                written += (size_t)n;
                        else if (n < 0 && errno != EAGAIN)
                                written = size;
                }
                if (written == size && !shut) {
                        shutdown(pair[1], SHUT_WR);
                        shut = true;
                }
                event_base_loop(base, EVLOOP_NONBLOCK);
        }
        /* EOF always ends the channel; reaching the bound means it hung. */
        if (!record.closed && !record.closed_by_us)
                abort();
        close(pair[1]);
        return 0;
}
