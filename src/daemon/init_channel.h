/* The control connection to one sandbox's moat-init: a bufferevent on the
 * unix socket, framing from common/protocol.h. Every frame from init is
 * validated (moat_frame_header_decode) before it is dispatched: init runs
 * next to the workload and is not trusted. */
#pragma once
#include <event2/event.h>
#include <stdint.h>

#include "common/error.h"

struct init_channel;

struct init_channel_handlers {
        void (*hello)(void *arg, uint32_t version, uint32_t live_processes);
        /* Per-process frames name the process by its handle (the SPAWN
         * cookie, common/protocol.h); SPAWNED also carries the OS pid. */
        void (*spawned)(void *arg, uint32_t handle, uint32_t pid);
        void (*spawn_failed)(void *arg, uint32_t cookie, int errno_value, const char *message);
        void (*output)(void *arg, uint32_t handle, int stream, const uint8_t *data, size_t length);
        void (*exited)(void *arg, uint32_t handle, int32_t exit_code, int32_t signal);
        void (*stdin_credit)(void *arg, uint32_t handle, uint32_t bytes);
        /* The connection ended (EOF, error, or a protocol violation). */
        void (*closed)(void *arg, const char *why);
};

/* Connect to the control socket (blocking, bounded: the socket is local and
 * already listening). Returns the fd. Safe on a worker thread. */
int init_channel_connect(const char *path, struct moat_error **err);
/* Takes ownership of fd. */
struct init_channel *init_channel_new(struct event_base *base, int fd, const struct init_channel_handlers *handlers,
                                      void *arg, struct moat_error **err);
int init_channel_send(struct init_channel *channel, uint16_t type, uint16_t flags, uint32_t handle, uint32_t aux,
                      const void *payload, size_t length);
/* Bytes queued towards init and not yet written. */
size_t init_channel_pending(const struct init_channel *channel);
/* Close and free; safe from inside a handler (freed after dispatch). No
 * handler runs after this. */
void init_channel_close(struct init_channel *channel);
