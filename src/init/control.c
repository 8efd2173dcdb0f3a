/* The control connection.
 *
 * One connection at a time: a new one replaces the old (how a restarted moatd
 * re-attaches). On replacement:
 *  - queued frames are kept and delivered to the new peer, a half-sent frame
 *    from its first byte (the old peer could not use a partial frame);
 *  - STDIN_CREDIT and HELLO_ACK frames meant for the old peer are removed;
 *  - output credit starts over at MOAT_INITIAL_OUTPUT_CREDIT per stream, less
 *    the OUTPUT bytes of that stream still queued, because the new peer starts
 *    with empty buffers and must never receive more than its initial credit;
 *  - stdin bytes the old peer sent but the process has not read are dropped:
 *    the new peer starts with the full MOAT_INITIAL_STDIN_CREDIT and has no
 *    record of what the old one sent, so keeping them could overflow the bound.
 * Nothing is sent on a connection before its HELLO; HELLO_ACK goes first. */
#include "control.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/protocol.h"
#include "io.h"
#include "loop.h"
#include "process.h"

/* Producers only add a frame while the queue is <= MOAT_INIT_OUTQUEUE_MAX, so
 * one OUTPUT frame plus a HELLO_ACK above that always fits. */
#define OUTQUEUE_CAPACITY (MOAT_INIT_OUTQUEUE_MAX + 2 * (MOAT_FRAME_HEADER_SIZE + MOAT_OUTPUT_CHUNK_MAX))
#define HELLO_ACK_SIZE (MOAT_FRAME_HEADER_SIZE + 8)
/* The largest frame one incoming frame can produce (SPAWN_FAILED). */
#define RESPONSE_MAX (MOAT_FRAME_HEADER_SIZE + 4 + 1024)
#define FRAMES_PER_WAKEUP 64

static struct loop_watch listener;
static struct loop_watch connection = { .fd = -1 };
static bool hello_done;

static uint8_t in_header[MOAT_FRAME_HEADER_SIZE];
static size_t in_header_got;
static struct moat_frame_header in_frame;
static uint8_t in_payload[MOAT_FRAME_PAYLOAD_MAX];
static size_t in_payload_got;

static uint8_t outqueue[OUTQUEUE_CAPACITY];
static size_t out_start, out_end; /* queued frames are outqueue[out_start, out_end) */
static size_t out_sent;           /* bytes of the queue already written to the socket */

static size_t queued(void)
{
        return out_end - out_start;
}

static size_t frame_size_at(size_t offset)
{
        return MOAT_FRAME_HEADER_SIZE + moat_get_u32(outqueue + offset);
}

void control_init(int listen_fd)
{
        loop_watch_init(&listener, listen_fd, loop_tag(LOOP_TAG_LISTEN, 0));
        loop_watch_set(&listener, EPOLLIN);
}

bool control_can_send(size_t bytes)
{
        return queued() <= MOAT_INIT_OUTQUEUE_MAX && OUTQUEUE_CAPACITY - queued() >= bytes + HELLO_ACK_SIZE;
}

static uint8_t *reserve(size_t bytes)
{
        if (OUTQUEUE_CAPACITY - out_end < bytes) {
                memmove(outqueue, outqueue + out_start, queued());
                out_end -= out_start;
                out_start = 0;
        }
        return outqueue + out_end;
}

static void put_header(uint8_t *at, uint16_t type, uint16_t flags, uint32_t handle, uint32_t aux, size_t length)
{
        struct moat_frame_header h = {
                .length = (uint32_t)length, .type = type, .flags = flags, .handle = handle, .aux = aux,
        };

        moat_frame_header_encode(&h, at);
}

void control_send(uint16_t type, uint16_t flags, uint32_t handle, uint32_t aux, const void *payload, size_t length)
{
        uint8_t *at = reserve(MOAT_FRAME_HEADER_SIZE + length);

        put_header(at, type, flags, handle, aux, length);
        if (length)
                memcpy(at + MOAT_FRAME_HEADER_SIZE, payload, length);
        out_end += MOAT_FRAME_HEADER_SIZE + length;
}

uint8_t *control_reserve_output(size_t max)
{
        return reserve(MOAT_FRAME_HEADER_SIZE + max) + MOAT_FRAME_HEADER_SIZE;
}

void control_commit_output(uint32_t handle, uint16_t stream, size_t length)
{
        put_header(outqueue + out_end, MOAT_FRAME_OUTPUT, stream, handle, 0, length);
        out_end += MOAT_FRAME_HEADER_SIZE + length;
}

/* HELLO_ACK must precede everything still queued from before the connection. */
static void send_hello_ack_first(void)
{
        uint8_t payload[8];

        moat_put_u32(payload, MOAT_PROTOCOL_VERSION);
        moat_put_u32(payload + 4, (uint32_t)process_live_count());
        if (out_start < HELLO_ACK_SIZE) {
                memmove(outqueue + HELLO_ACK_SIZE, outqueue + out_start, queued());
                out_end = out_end - out_start + HELLO_ACK_SIZE;
                out_start = HELLO_ACK_SIZE;
        }
        out_start -= HELLO_ACK_SIZE;
        put_header(outqueue + out_start, MOAT_FRAME_HELLO_ACK, 0, 0, 0, 8);
        memcpy(outqueue + out_start + MOAT_FRAME_HEADER_SIZE, payload, 8);
}

/* Drop frames addressed to the old peer and charge still-queued output against
 * the fresh credit (see the comment at the top). */
static void filter_queue_for_new_connection(void)
{
        size_t read_at = out_start, write_at = out_start;

        while (read_at < out_end) {
                size_t size = frame_size_at(read_at);
                uint16_t type = moat_get_u16(outqueue + read_at + 4);

                if (type == MOAT_FRAME_OUTPUT) {
                        struct process *p = process_find(moat_get_u32(outqueue + read_at + 8));
                        uint16_t stream = moat_get_u16(outqueue + read_at + 6);
                        size_t bytes = size - MOAT_FRAME_HEADER_SIZE + MOAT_OUTPUT_FRAME_CHARGE;

                        if (p && (stream == MOAT_STREAM_STDOUT || stream == MOAT_STREAM_STDERR)) {
                                struct process_output *o = &p->out[stream - 1];

                                o->credit = o->credit > bytes ? o->credit - bytes : 0;
                        }
                }
                if (type != MOAT_FRAME_STDIN_CREDIT && type != MOAT_FRAME_HELLO_ACK) {
                        memmove(outqueue + write_at, outqueue + read_at, size);
                        write_at += size;
                }
                read_at += size;
        }
        out_end = write_at;
        out_sent = 0;
}

static void close_connection(const char *why)
{
        if (connection.fd < 0)
                return;
        if (why)
                fprintf(stderr, "moat-init: closing control connection: %s\n", why);
        loop_watch_close(&connection);
        hello_done = false;
        in_header_got = 0;
        in_payload_got = 0;
        /* A half-written frame is resent whole on the next connection. */
        out_sent = 0;
}

void control_on_listen(void)
{
        for (;;) {
                int fd = accept4(listener.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

                if (fd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        if (errno != EAGAIN)
                                fprintf(stderr, "moat-init: accept: %m\n");
                        return;
                }
                close_connection(NULL);
                loop_watch_init(&connection, fd, loop_tag(LOOP_TAG_CONNECTION, 0));
                process_reset_for_connection();
                filter_queue_for_new_connection();
        }
}

/* Apply one complete frame. -1 = protocol violation. */
static int dispatch(const struct moat_frame_header *h, const uint8_t *payload)
{
        if (h->type == MOAT_FRAME_HELLO) {
                if (hello_done || moat_get_u32(payload) != MOAT_PROTOCOL_VERSION)
                        return -1;
                hello_done = true;
                send_hello_ack_first();
                return 0;
        }
        if (!hello_done)
                return -1;
        switch (h->type) {
        case MOAT_FRAME_SPAWN:
                process_spawn(h->aux, payload, h->length);
                return 0;
        case MOAT_FRAME_STDIN:
                return io_stdin_push(h->handle, payload, h->length);
        case MOAT_FRAME_STDIN_CLOSE:
                io_stdin_close(h->handle);
                return 0;
        case MOAT_FRAME_SIGNAL:
                if (h->aux < 1 || h->aux > 64)
                        return -1;
                process_signal(h->handle, (int)h->aux);
                return 0;
        case MOAT_FRAME_CREDIT:
                io_output_credit(h->handle, h->flags, h->aux);
                return 0;
        case MOAT_FRAME_RESIZE:
                process_resize(h->handle, (uint16_t)(h->aux >> 16), (uint16_t)h->aux);
                return 0;
        default: /* init -> moatd types are not accepted from moatd */
                return -1;
        }
}

/* Read into dst; 1 when `want` bytes are complete, 0 to wait, -1 closed. */
static int read_some(uint8_t *dst, size_t *got, size_t want)
{
        while (*got < want) {
                ssize_t n = recv(connection.fd, dst + *got, want - *got, 0);

                if (n > 0) {
                        *got += (size_t)n;
                        continue;
                }
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return 0;
                close_connection(n == 0 ? NULL : "recv failed");
                return -1;
        }
        return 1;
}

static void read_frames(void)
{
        for (int budget = FRAMES_PER_WAKEUP; budget > 0 && connection.fd >= 0; budget--) {
                int r;

                /* Backpressure: stop taking requests while our answers cannot be
                 * queued. Before HELLO there are no answers but HELLO_ACK. */
                if (hello_done && !control_can_send(RESPONSE_MAX))
                        return;
                if (in_header_got < MOAT_FRAME_HEADER_SIZE) {
                        r = read_some(in_header, &in_header_got, MOAT_FRAME_HEADER_SIZE);
                        if (r <= 0)
                                return;
                        if (moat_frame_header_decode(in_header, &in_frame) < 0) {
                                close_connection("malformed frame header");
                                return;
                        }
                        in_payload_got = 0;
                }
                r = read_some(in_payload, &in_payload_got, in_frame.length);
                if (r <= 0)
                        return;
                in_header_got = 0;
                if (dispatch(&in_frame, in_payload) < 0) {
                        close_connection("protocol violation");
                        return;
                }
        }
}

void control_flush(void)
{
        if (connection.fd < 0 || !hello_done)
                return;
        while (out_sent < queued()) {
                ssize_t n = send(connection.fd, outqueue + out_start + out_sent, queued() - out_sent,
                                 MSG_NOSIGNAL | MSG_DONTWAIT);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                close_connection("send failed");
                        break;
                }
                out_sent += (size_t)n;
        }
        /* Retire whole frames only, so a replacement connection can resend a
         * partial one from its start. */
        while (out_start < out_end) {
                size_t size = frame_size_at(out_start);

                if (out_sent < size)
                        break;
                out_start += size;
                out_sent -= size;
        }
        if (out_start == out_end)
                out_start = out_end = out_sent = 0;
}

void control_on_connection(uint32_t events)
{
        if (connection.fd < 0)
                return;
        if (events & EPOLLIN)
                read_frames();
        if (connection.fd >= 0 && (events & (EPOLLHUP | EPOLLERR)) && !(events & EPOLLIN))
                close_connection(NULL);
        control_flush();
}

void control_update_interest(void)
{
        uint32_t events = 0;

        if (connection.fd < 0)
                return;
        if (!hello_done || control_can_send(RESPONSE_MAX))
                events |= EPOLLIN;
        if (hello_done && out_sent < queued())
                events |= EPOLLOUT;
        loop_watch_set(&connection, events);
}
