#include "init_channel.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/protocol.h"

/* Frames dispatched per read callback: a flood of tiny frames from init must
 * not hold the loop (and every other sandbox and client) for long. */
#define FRAMES_PER_CALLBACK 256

struct init_channel {
        struct bufferevent *bev;
        struct event *resume; /* continues dispatching after the budget ran out */
        struct init_channel_handlers handlers;
        void *arg;
        bool dispatching;
        bool closed;
};

int init_channel_connect(const char *path, struct moat_error **err)
{
        struct sockaddr_un address = {.sun_family = AF_UNIX};
        _cleanup_close_ int fd = -1;

        if (strlen(path) >= sizeof(address.sun_path))
                return moat_error_invalid(err, "control socket path `%s` too long", path);
        strcpy(address.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return moat_error_system(err, errno, "socket");
        if (connect(fd, (struct sockaddr *)&address, sizeof(address)) < 0)
                return moat_error_system(err, errno, "connect `%s`", path);
        if (evutil_make_socket_nonblocking(fd) < 0)
                return moat_error_system(err, errno, "make `%s` non-blocking", path);
        return TAKE_FD(fd);
}

static void channel_free(struct init_channel *channel)
{
        if (channel->resume)
                event_free(channel->resume);
        bufferevent_free(channel->bev);
        free(channel);
}

static void fail(struct init_channel *channel, const char *why)
{
        if (channel->closed)
                return;
        channel->closed = true;
        bufferevent_disable(channel->bev, EV_READ | EV_WRITE);
        channel->handlers.closed(channel->arg, why);
}

static void dispatch(struct init_channel *channel, const struct moat_frame_header *h, const uint8_t *payload)
{
        const struct init_channel_handlers *on = &channel->handlers;

        switch (h->type) {
        case MOAT_FRAME_HELLO_ACK:
                on->hello(channel->arg, moat_get_u32(payload), moat_get_u32(payload + 4));
                break;
        case MOAT_FRAME_SPAWNED:
                on->spawned(channel->arg, h->handle, h->aux); /* cookie = handle, OS pid */
                break;
        case MOAT_FRAME_SPAWN_FAILED: {
                char message[512];
                size_t n = h->length - 4 < sizeof(message) - 1 ? h->length - 4 : sizeof(message) - 1;
                memcpy(message, payload + 4, n);
                message[n] = '\0';
                /* Init's text reaches clients: cut it at the first NUL/control byte. */
                for (size_t i = 0; i < n; i++)
                        if ((unsigned char)message[i] < 0x20)
                                message[i] = '\0';
                on->spawn_failed(channel->arg, h->aux, (int)moat_get_u32(payload), message);
                break;
        }
        case MOAT_FRAME_OUTPUT:
                on->output(channel->arg, h->handle, h->flags, payload, h->length);
                break;
        case MOAT_FRAME_EXIT:
                on->exited(channel->arg, h->handle, (int32_t)moat_get_u32(payload), (int32_t)moat_get_u32(payload + 4));
                break;
        case MOAT_FRAME_STDIN_CREDIT:
                on->stdin_credit(channel->arg, h->handle, h->aux);
                break;
        default:
                fail(channel, "unexpected frame type from init");
                break;
        }
}

static void on_read(struct bufferevent *bev, void *arg)
{
        struct init_channel *channel = arg;
        struct evbuffer *input = bufferevent_get_input(bev);

        int budget = FRAMES_PER_CALLBACK;

        channel->dispatching = true;
        while (!channel->closed) {
                uint8_t header_bytes[MOAT_FRAME_HEADER_SIZE];
                struct moat_frame_header h;
                uint8_t *frame;

                if (evbuffer_copyout(input, header_bytes, sizeof(header_bytes)) < (ssize_t)sizeof(header_bytes))
                        break;
                if (budget-- == 0) {
                        /* More is buffered: let other events run, then go on. */
                        event_active(channel->resume, EV_TIMEOUT, 0);
                        break;
                }
                if (moat_frame_header_decode(header_bytes, &h) < 0) {
                        fail(channel, "malformed frame from init");
                        break;
                }
                if (evbuffer_get_length(input) < MOAT_FRAME_HEADER_SIZE + (size_t)h.length)
                        break;
                frame = evbuffer_pullup(input, (ev_ssize_t)(MOAT_FRAME_HEADER_SIZE + h.length));
                if (!frame) {
                        fail(channel, "out of memory reading a frame");
                        break;
                }
                dispatch(channel, &h, frame + MOAT_FRAME_HEADER_SIZE);
                if (!channel->closed)
                        evbuffer_drain(input, MOAT_FRAME_HEADER_SIZE + h.length);
        }
        channel->dispatching = false;
        if (channel->closed)
                channel_free(channel);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
        struct init_channel *channel = arg;

        on_read(channel->bev, channel);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
        struct init_channel *channel = arg;

        if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
                fail(channel, (what & BEV_EVENT_EOF) ? "init closed the control connection"
                                                     : "control connection error");
                channel_free(channel);
        }
}

struct init_channel *init_channel_new(struct event_base *base, int fd, const struct init_channel_handlers *handlers,
                                      void *arg, struct moat_error **err)
{
        struct init_channel *channel = calloc(1, sizeof(*channel));

        if (!channel) {
                close(fd);
                moat_error_system(err, ENOMEM, "allocate init channel");
                return NULL;
        }
        channel->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
        channel->resume = event_new(base, -1, 0, on_resume, channel);
        if (!channel->bev || !channel->resume) {
                if (channel->bev)
                        bufferevent_free(channel->bev);
                else
                        close(fd);
                if (channel->resume)
                        event_free(channel->resume);
                free(channel);
                moat_error_system(err, ENOMEM, "bufferevent_socket_new");
                return NULL;
        }
        channel->handlers = *handlers;
        channel->arg = arg;
        /* Never buffer more than one maximal frame ahead from init. */
        bufferevent_setwatermark(channel->bev, EV_READ, 0, 2 * (MOAT_FRAME_HEADER_SIZE + MOAT_FRAME_PAYLOAD_MAX));
        bufferevent_setcb(channel->bev, on_read, NULL, on_event, channel);
        bufferevent_enable(channel->bev, EV_READ | EV_WRITE);
        return channel;
}

int init_channel_send(struct init_channel *channel, uint16_t type, uint16_t flags, uint32_t handle, uint32_t aux,
                      const void *payload, size_t length)
{
        struct moat_frame_header h = {
                .length = (uint32_t)length, .type = type, .flags = flags, .handle = handle, .aux = aux};
        uint8_t header_bytes[MOAT_FRAME_HEADER_SIZE];

        if (channel->closed || length > MOAT_FRAME_PAYLOAD_MAX)
                return -1;
        moat_frame_header_encode(&h, header_bytes);
        if (bufferevent_write(channel->bev, header_bytes, sizeof(header_bytes)) < 0)
                return -1;
        if (length && bufferevent_write(channel->bev, payload, length) < 0)
                return -1;
        return 0;
}

size_t init_channel_pending(const struct init_channel *channel)
{
        return evbuffer_get_length(bufferevent_get_output(channel->bev));
}

void init_channel_close(struct init_channel *channel)
{
        /* Already failed: whoever reported the failure frees it. */
        if (!channel || channel->closed)
                return;
        channel->closed = true;
        bufferevent_disable(channel->bev, EV_READ | EV_WRITE);
        if (!channel->dispatching)
                channel_free(channel);
}
