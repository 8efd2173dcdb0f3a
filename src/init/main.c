/* moat-init: PID 1 of a sandbox. `moat-init --control-fd N`, N a listening
 * unix SOCK_STREAM socket. It never exits on its own: if PID 1 exits the
 * kernel kills the sandbox, and that is moatd's call (SIGKILL). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "control.h"
#include "io.h"
#include "loop.h"
#include "process.h"

#define EVENTS_PER_WAIT 64

static int usage(void)
{
        fprintf(stderr, "usage: moat-init --control-fd N\n");
        return 2;
}

static int parse_fd(const char *s)
{
        char *end;
        long v;

        errno = 0;
        v = strtol(s, &end, 10);
        if (errno || end == s || *end || v < 0 || v > 1 << 20)
                return -1;
        return (int)v;
}

/* Fill 0-2 with /dev/null if the cell left them closed, so no pipe or socket
 * we open later lands there and gets dup2'ed over in a child. */
static void occupy_standard_fds(void)
{
        for (int fd = 0; fd < 3; fd++)
                if (fcntl(fd, F_GETFD) < 0) {
                        int n = open("/dev/null", O_RDWR | O_NOCTTY);

                        if (n >= 0 && n != fd) {
                                dup2(n, fd);
                                close(n);
                        }
                }
}

static int check_listening_socket(int fd)
{
        int accepting = 0, type = 0;
        socklen_t len = sizeof(accepting);

        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) < 0 || !accepting)
                return -1;
        len = sizeof(type);
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM)
                return -1;
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        return 0;
}

/* PID 1 has no default signal actions, but in tests we are not PID 1 and must
 * not die from a stray SIGTERM/SIGINT/SIGHUP either: they are blocked and
 * read (and ignored) through the signalfd. SIGPIPE is ignored: a peer that
 * disconnects mid-write is an EPIPE, not a death. */
static int setup_signals(void)
{
        sigset_t mask;
        int fd;

        signal(SIGPIPE, SIG_IGN);
        sigemptyset(&mask);
        sigaddset(&mask, SIGCHLD);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGQUIT);
        sigaddset(&mask, SIGUSR1);
        sigaddset(&mask, SIGUSR2);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return -1;
        fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
        return fd;
}

static void on_signalfd(int fd)
{
        struct signalfd_siginfo info[16];

        while (read(fd, info, sizeof(info)) > 0)
                ;
        /* SIGCHLD coalesces: reap everything that is ready. */
        process_reap_all();
}

static void dispatch(const struct epoll_event *ev, int signal_fd)
{
        uint32_t kind = (uint32_t)(ev->data.u64 >> 32), slot = (uint32_t)ev->data.u64;
        struct process *p = slot < MOAT_INIT_PROCESSES_MAX ? &process_table[slot] : NULL;

        switch (kind) {
        case LOOP_TAG_LISTEN:
                control_on_listen();
                break;
        case LOOP_TAG_CONNECTION:
                control_on_connection(ev->events);
                break;
        case LOOP_TAG_SIGNAL:
                on_signalfd(signal_fd);
                break;
        /* A process event may be stale (its slot freed or reused earlier in this
         * batch); every handler only tries non-blocking work, so that is harmless. */
        case LOOP_TAG_STDOUT:
        case LOOP_TAG_STDERR:
                if (p && p->state == PROCESS_RUNNING)
                        io_on_output_ready(p, kind == LOOP_TAG_STDOUT ? 0 : 1);
                break;
        case LOOP_TAG_STDIN:
                if (p && p->state == PROCESS_RUNNING)
                        io_stdin_write(p);
                break;
        case LOOP_TAG_REPORT:
                if (p)
                        process_on_report(p);
                break;
        }
}

int main(int argc, char **argv)
{
        struct epoll_event events[EVENTS_PER_WAIT];
        struct loop_watch signal_watch;
        int control_fd, signal_fd;

        if (argc != 3 || strcmp(argv[1], "--control-fd") != 0)
                return usage();
        control_fd = parse_fd(argv[2]);
        if (control_fd < 0 || check_listening_socket(control_fd) < 0) {
                fprintf(stderr, "moat-init: --control-fd %s is not a listening stream socket\n", argv[2]);
                return 2;
        }
        /* Not dumpable: ptrace, /proc/1/mem, process_vm_* and pidfd_getfd on
         * init then need CAP_SYS_PTRACE, which sandbox root does not have.
         * Defends the control connection (forged frames, a stolen socket) and
         * init itself (frozen or steered) against the workload. */
        prctl(PR_SET_DUMPABLE, 0);
        occupy_standard_fds();
        /* Outside a PID namespace (tests) we are not PID 1; still adopt and
         * reap every orphaned descendant. */
        if (getpid() != 1 && prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
                fprintf(stderr, "moat-init: PR_SET_CHILD_SUBREAPER: %m\n");
        signal_fd = setup_signals();
        if (signal_fd < 0 || loop_init() < 0) {
                fprintf(stderr, "moat-init: setup: %m\n");
                return 1;
        }
        loop_watch_init(&signal_watch, signal_fd, loop_tag(LOOP_TAG_SIGNAL, 0));
        loop_watch_set(&signal_watch, EPOLLIN);
        control_init(control_fd);
        for (size_t i = 0; i < MOAT_INIT_PROCESSES_MAX; i++)
                process_table[i].state = PROCESS_FREE;

        for (;;) {
                int n;

                process_update_interest_all();
                control_update_interest();
                n = epoll_wait(loop_fd(), events, EVENTS_PER_WAIT, -1);
                if (n < 0) {
                        if (errno != EINTR) {
                                fprintf(stderr, "moat-init: epoll_wait: %m\n");
                                usleep(10000); /* never exit; do not spin either */
                        }
                        continue;
                }
                for (int i = 0; i < n; i++)
                        dispatch(&events[i], signal_fd);
                process_pump_all();
                control_flush();
        }
}
