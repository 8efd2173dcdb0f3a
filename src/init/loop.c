#include "loop.h"

#include <errno.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <unistd.h>

static int epoll_fd = -1;

int loop_init(void)
{
        epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        return epoll_fd < 0 ? -errno : 0;
}

int loop_fd(void)
{
        return epoll_fd;
}

void loop_watch_init(struct loop_watch *w, int fd, uint64_t tag)
{
        w->fd = fd;
        w->events = 0;
        w->tag = tag;
}

void loop_watch_set(struct loop_watch *w, uint32_t events)
{
        struct epoll_event ev = { .events = events, .data.u64 = w->tag };
        int op;

        if (w->fd < 0 || events == w->events)
                return;
        op = w->events == 0 ? EPOLL_CTL_ADD : events == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
        if (epoll_ctl(epoll_fd, op, w->fd, &ev) < 0) {
                fprintf(stderr, "moat-init: epoll_ctl fd %d: %m\n", w->fd);
                return;
        }
        w->events = events;
}

void loop_watch_close(struct loop_watch *w)
{
        if (w->fd < 0)
                return;
        loop_watch_set(w, 0);
        close(w->fd);
        w->fd = -1;
}
