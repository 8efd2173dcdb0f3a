/* Output under credit, stdin through a bounded queue. */
#include "io.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "control.h"

/* Chunks read per readiness event, so one busy process cannot starve others. */
#define CHUNKS_PER_WAKEUP 4
/* Credit saturates here instead of wrapping (moatd may grant generously). */
#define CREDIT_MAX ((uint64_t)1 << 40)

enum io_read_result io_read_output(struct process *p, int stream_index)
{
        struct process_output *o = &p->out[stream_index];
        size_t want;
        uint8_t *dst;
        ssize_t n;

        if (o->watch.fd < 0)
                return IO_READ_END;
        /* Each frame spends its length plus the per-frame charge. */
        if (o->credit <= MOAT_OUTPUT_FRAME_CHARGE || !control_can_send(MOAT_FRAME_HEADER_SIZE + MOAT_OUTPUT_CHUNK_MAX))
                return IO_READ_BLOCKED;
        want = o->credit - MOAT_OUTPUT_FRAME_CHARGE < MOAT_OUTPUT_CHUNK_MAX
                       ? (size_t)(o->credit - MOAT_OUTPUT_FRAME_CHARGE)
                       : MOAT_OUTPUT_CHUNK_MAX;
        dst = control_reserve_output(want);
        do
                n = read(o->watch.fd, dst, want);
        while (n < 0 && errno == EINTR);
        if (n > 0) {
                control_commit_output(p->cookie, (uint16_t)(stream_index + 1), (size_t)n);
                o->credit -= (uint64_t)n + MOAT_OUTPUT_FRAME_CHARGE;
                return IO_READ_DATA;
        }
        if (n < 0 && errno == EAGAIN)
                return IO_READ_EMPTY;
        /* EOF, or EIO from a pty master whose slave side is gone. */
        loop_watch_close(&o->watch);
        return IO_READ_END;
}

void io_on_output_ready(struct process *p, int stream_index)
{
        if (p->state != PROCESS_RUNNING)
                return;
        for (int i = 0; i < CHUNKS_PER_WAKEUP; i++)
                if (io_read_output(p, stream_index) != IO_READ_DATA)
                        return;
}

void io_output_credit(uint32_t handle, uint16_t stream, uint32_t bytes)
{
        struct process *p = process_find(handle);
        struct process_output *o;

        /* Unknown handle: it just exited; the peer learns from EXIT. */
        if (!p || (stream != MOAT_STREAM_STDOUT && stream != MOAT_STREAM_STDERR))
                return;
        o = &p->out[stream - 1];
        o->credit = o->credit + bytes > CREDIT_MAX ? CREDIT_MAX : o->credit + bytes;
}

int io_stdin_push(uint32_t handle, const uint8_t *data, size_t length)
{
        struct process *p = process_find(handle);
        size_t queued;

        if (!p || p->state != PROCESS_RUNNING)
                return 0; /* gone: the peer stops on EXIT */
        queued = p->stdin_end - p->stdin_start;
        if (queued + length > MOAT_INITIAL_STDIN_CREDIT)
                return -1; /* more than its credit: a protocol violation */
        if (p->in.fd < 0 || p->stdin_close_requested) {
                /* No stdin, or already closed: the bytes go nowhere, but the
                 * credit comes back so the peer's accounting stays exact. */
                p->stdin_credit_pending += length;
                return 0;
        }
        if (!p->stdin_buffer) {
                p->stdin_buffer = malloc(MOAT_INITIAL_STDIN_CREDIT);
                if (!p->stdin_buffer)
                        return 0; /* keep the connection; the bytes are lost */
                p->stdin_start = p->stdin_end = 0;
        }
        if (MOAT_INITIAL_STDIN_CREDIT - p->stdin_end < length) {
                memmove(p->stdin_buffer, p->stdin_buffer + p->stdin_start, queued);
                p->stdin_start = 0;
                p->stdin_end = queued;
        }
        memcpy(p->stdin_buffer + p->stdin_end, data, length);
        p->stdin_end += length;
        io_stdin_write(p);
        return 0;
}

void io_stdin_discard(struct process *p)
{
        free(p->stdin_buffer);
        p->stdin_buffer = NULL;
        p->stdin_start = p->stdin_end = 0;
}

void io_stdin_write(struct process *p)
{
        while (p->in.fd >= 0 && p->stdin_end > p->stdin_start) {
                ssize_t n = write(p->in.fd, p->stdin_buffer + p->stdin_start, p->stdin_end - p->stdin_start);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return;
                if (n <= 0) {
                        /* EPIPE: the process closed stdin. Credit it all back. */
                        p->stdin_credit_pending += p->stdin_end - p->stdin_start;
                        io_stdin_discard(p);
                        loop_watch_close(&p->in);
                        return;
                }
                p->stdin_start += (size_t)n;
                p->stdin_credit_pending += (uint64_t)n;
        }
        if (p->stdin_end == p->stdin_start)
                io_stdin_discard(p);
        if (p->in.fd >= 0 && p->stdin_close_requested) {
                /* A pty has no half-close: send the EOF character (^D) instead;
                 * the terminal is canonical unless the program changed it. */
                if (p->pty) {
                        ssize_t ignored = write(p->in.fd, "\x04", 1);
                        (void)ignored;
                }
                loop_watch_close(&p->in);
        }
}

void io_stdin_close(uint32_t handle)
{
        struct process *p = process_find(handle);

        if (!p || p->state != PROCESS_RUNNING)
                return;
        p->stdin_close_requested = true;
        io_stdin_write(p);
}

bool io_stdin_flush_credit(struct process *p)
{
        uint32_t bytes;

        if (!p->stdin_credit_pending)
                return true;
        if (!control_can_send(MOAT_FRAME_HEADER_SIZE))
                return false;
        bytes = p->stdin_credit_pending > UINT32_MAX ? UINT32_MAX : (uint32_t)p->stdin_credit_pending;
        control_send(MOAT_FRAME_STDIN_CREDIT, 0, p->cookie, bytes, NULL, 0);
        p->stdin_credit_pending -= bytes;
        return p->stdin_credit_pending == 0;
}
