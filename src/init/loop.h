/* The one epoll instance of moat-init, and level-triggered watches whose
 * interest set is recomputed every loop iteration (so flow control is a pure
 * function of state: "read this pipe iff it holds credit and the socket queue
 * is short"). */
#pragma once
#include <stdint.h>

enum loop_tag_kind {
        LOOP_TAG_LISTEN = 1,
        LOOP_TAG_CONNECTION,
        LOOP_TAG_SIGNAL,
        LOOP_TAG_STDOUT,
        LOOP_TAG_STDERR,
        LOOP_TAG_STDIN,
        LOOP_TAG_REPORT,
};

struct loop_watch {
        int fd;          /* -1 when closed */
        uint32_t events; /* what epoll currently watches (0 = not registered) */
        uint64_t tag;
};

static inline uint64_t loop_tag(enum loop_tag_kind kind, uint32_t slot)
{
        return (uint64_t)kind << 32 | slot;
}

int loop_init(void);
int loop_fd(void);
void loop_watch_init(struct loop_watch *w, int fd, uint64_t tag);
/* Make epoll watch exactly `events` (0 = none) on w->fd. */
void loop_watch_set(struct loop_watch *w, uint32_t events);
/* Unregister and close; w->fd becomes -1. */
void loop_watch_close(struct loop_watch *w);
