/* Spawn (parent side), reap, exit reporting, signals. */
#include "process.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "control.h"
#include "io.h"
#include "pty.h"
#include "spawn.h"

struct process process_table[MOAT_INIT_PROCESSES_MAX];

/* Decoded in place from the control connection's payload buffer; static because
 * it is 64 KiB of pointers. The child reads it while init is suspended. */
static struct moat_spawn_spec spawn_spec;

struct process *process_find(uint32_t handle)
{
        if (handle == 0)
                return NULL;
        for (size_t i = 0; i < MOAT_INIT_PROCESSES_MAX; i++)
                if (process_table[i].state != PROCESS_FREE && process_table[i].cookie == handle)
                        return &process_table[i];
        return NULL;
}

/* The reaped pid belongs to the slot that has not exited yet: a slot whose
 * process exited keeps its (stale) pid until EXIT is sent, and the kernel may
 * already have given that pid to a new process. */
static struct process *process_find_unreaped(pid_t pid)
{
        for (size_t i = 0; i < MOAT_INIT_PROCESSES_MAX; i++)
                if (process_table[i].state != PROCESS_FREE && !process_table[i].exited &&
                    process_table[i].pid == pid)
                        return &process_table[i];
        return NULL;
}

size_t process_live_count(void)
{
        size_t n = 0;

        for (size_t i = 0; i < MOAT_INIT_PROCESSES_MAX; i++)
                n += process_table[i].state == PROCESS_STARTING || process_table[i].state == PROCESS_RUNNING;
        return n;
}

static void spawn_failed(uint32_t cookie, int errno_value, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void spawn_failed(uint32_t cookie, int errno_value, const char *fmt, ...)
{
        uint8_t payload[4 + 1024];
        va_list ap;
        int n;

        moat_put_u32(payload, (uint32_t)errno_value);
        va_start(ap, fmt);
        n = vsnprintf((char *)payload + 4, sizeof(payload) - 4, fmt, ap);
        va_end(ap);
        if (n < 0)
                n = 0;
        if ((size_t)n > sizeof(payload) - 5)
                n = (int)(sizeof(payload) - 5);
        control_send(MOAT_FRAME_SPAWN_FAILED, 0, 0, cookie, payload, 4 + (size_t)n);
}

static void process_free(struct process *p)
{
        loop_watch_close(&p->report);
        loop_watch_close(&p->out[0].watch);
        loop_watch_close(&p->out[1].watch);
        io_stdin_discard(p);
        loop_watch_close(&p->in);
        if (p->pty_master >= 0)
                close(p->pty_master);
        memset(p, 0, sizeof(*p));
        p->state = PROCESS_FREE;
}

static void set_nonblocking(int fd)
{
        int flags = fcntl(fd, F_GETFL);

        if (flags >= 0)
                fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* The child's ends, closed in init once forked. */
struct child_ends {
        int stdin_read, stdout_write, stderr_write, report_write, pty_slave;
};

static void child_ends_close(struct child_ends *c)
{
        int *fds[] = { &c->stdin_read, &c->stdout_write, &c->stderr_write, &c->report_write, &c->pty_slave };

        for (size_t i = 0; i < MOAT_ARRAY_SIZE(fds); i++)
                if (*fds[i] >= 0) {
                        close(*fds[i]);
                        *fds[i] = -1;
                }
}

/* Make the pipes or the pty. 0, or -errno with *step naming what failed. */
static int make_channels(struct process *p, uint32_t flags, struct child_ends *c, const char **step)
{
        int fds[2], slot = (int)(p - process_table);

        if (pipe2(fds, O_CLOEXEC) < 0)
                return *step = "pipe", -errno;
        loop_watch_init(&p->report, fds[0], loop_tag(LOOP_TAG_REPORT, (uint32_t)slot));
        c->report_write = fds[1];

        if (flags & MOAT_SPAWN_PTY) {
                int master, r;

                r = pty_open(spawn_spec.rows, spawn_spec.cols, &master, &c->pty_slave);
                if (r < 0)
                        return *step = "open pty", r;
                p->pty = true;
                p->pty_master = master;
                /* Separate descriptions for reading and writing, so each has
                 * its own epoll interest. */
                loop_watch_init(&p->out[0].watch, fcntl(master, F_DUPFD_CLOEXEC, 3),
                                loop_tag(LOOP_TAG_STDOUT, (uint32_t)slot));
                loop_watch_init(&p->in, fcntl(master, F_DUPFD_CLOEXEC, 3), loop_tag(LOOP_TAG_STDIN, (uint32_t)slot));
                if (p->out[0].watch.fd < 0 || p->in.fd < 0)
                        return *step = "dup pty", -errno;
                return 0;
        }
        if (pipe2(fds, O_CLOEXEC) < 0)
                return *step = "pipe", -errno;
        loop_watch_init(&p->out[0].watch, fds[0], loop_tag(LOOP_TAG_STDOUT, (uint32_t)slot));
        c->stdout_write = fds[1];
        if (pipe2(fds, O_CLOEXEC) < 0)
                return *step = "pipe", -errno;
        loop_watch_init(&p->out[1].watch, fds[0], loop_tag(LOOP_TAG_STDERR, (uint32_t)slot));
        c->stderr_write = fds[1];
        if (flags & MOAT_SPAWN_STDIN) {
                if (pipe2(fds, O_CLOEXEC) < 0)
                        return *step = "pipe", -errno;
                c->stdin_read = fds[0];
                loop_watch_init(&p->in, fds[1], loop_tag(LOOP_TAG_STDIN, (uint32_t)slot));
        }
        /* Only init's ends are non-blocking: a child that floods stdout must
         * block in write(2) when nobody reads. */
        set_nonblocking(p->out[0].watch.fd);
        set_nonblocking(p->out[1].watch.fd);
        if (p->in.fd >= 0)
                set_nonblocking(p->in.fd);
        return 0;
}

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#else
#define ASAN_UNPOISON_MEMORY_REGION(address, size) ((void)(address), (void)(size))
#endif

static struct spawn_fds child_fds;
static char child_stack[512 * 1024] __attribute__((aligned(64)));

/* The user field as SPAWN gives it: "", "root", "0" or "0:0" stay root. */
static bool spawn_runs_as_root(const char *user)
{
        return user[0] == '\0' || strcmp(user, "root") == 0 || strcmp(user, "0") == 0 || strcmp(user, "0:0") == 0;
}

static int spawn_child_entry(void *unused)
{
        spawn_child_run(&spawn_spec, &child_fds);
}

void process_spawn(uint32_t cookie, const uint8_t *payload, size_t length)
{
        struct child_ends c = { -1, -1, -1, -1, -1 };
        int flags;
        struct process *p = NULL;
        const char *step = NULL;
        pid_t pid;
        int r;

        if (moat_spawn_decode(payload, length, &spawn_spec) < 0) {
                spawn_failed(cookie, EINVAL, "invalid spawn spec");
                return;
        }
        /* The cookie becomes the handle every later frame names: it must be
         * unambiguous. */
        if (cookie == 0) {
                spawn_failed(cookie, EINVAL, "cookie 0 is not a valid handle");
                return;
        }
        if (process_find(cookie)) {
                spawn_failed(cookie, EEXIST, "handle %u is in use", cookie);
                return;
        }
        for (size_t i = 0; i < MOAT_INIT_PROCESSES_MAX && !p; i++)
                if (process_table[i].state == PROCESS_FREE)
                        p = &process_table[i];
        if (!p) {
                spawn_failed(cookie, EAGAIN, "too many processes (at most %d)", MOAT_INIT_PROCESSES_MAX);
                return;
        }
        memset(p, 0, sizeof(*p));
        p->report.fd = p->out[0].watch.fd = p->out[1].watch.fd = p->in.fd = p->pty_master = -1;
        p->cookie = cookie;
        p->out[0].credit = p->out[1].credit = MOAT_INITIAL_OUTPUT_CREDIT;

        r = make_channels(p, spawn_spec.flags, &c, &step);
        if (r < 0) {
                child_ends_close(&c);
                process_free(p);
                spawn_failed(cookie, -r, "%s: %s", step, strerror(-r));
                return;
        }
        child_fds = (struct spawn_fds){
                .stdin_fd = c.stdin_read,
                .stdout_fd = c.stdout_write,
                .stderr_fd = c.stderr_write,
                .report_fd = c.report_write,
                .pty_slave = c.pty_slave,
        };
        /* vfork semantics (see spawn.c): we resume once the child has exec'd
         * or failed, so one static stack serves every spawn. Not for a
         * process that becomes another user: between its setuid() and its
         * execve() that user's other processes could SIGSTOP it, and with it
         * init, which would wait for the vfork for ever. Such a child gets a
         * copy of init instead (fork semantics, on the same static stack's
         * copy). */
        flags = SIGCHLD;
        if (spawn_runs_as_root(spawn_spec.user))
                flags |= CLONE_VM | CLONE_VFORK;
        /* The last child left its frames' redzones poisoned on this stack
         * (it exec'd or _exited mid-call); under AddressSanitizer they would
         * read as errors in the next child. No-op in a normal build. */
        ASAN_UNPOISON_MEMORY_REGION(child_stack, sizeof(child_stack));
        pid = clone(spawn_child_entry, child_stack + sizeof(child_stack), flags, NULL);
        if (pid < 0) {
                r = errno;
                child_ends_close(&c);
                process_free(p);
                spawn_failed(cookie, r, "clone: %s", strerror(r));
                return;
        }
        child_ends_close(&c);
        p->pid = pid;
        p->state = PROCESS_STARTING;
}

void process_on_report(struct process *p)
{
        struct spawn_report report;
        char message[1024];
        ssize_t n;

        if (p->state != PROCESS_STARTING || !control_can_send(MOAT_FRAME_HEADER_SIZE + 4 + sizeof(message)))
                return;
        do
                n = read(p->report.fd, &report, sizeof(report));
        while (n < 0 && errno == EINTR);
        if (n < 0 && errno == EAGAIN)
                return;
        loop_watch_close(&p->report);
        if (n == 0) {
                /* EOF: the CLOEXEC write end closed in a successful execve. */
                p->state = PROCESS_RUNNING;
                control_send(MOAT_FRAME_SPAWNED, 0, p->cookie, (uint32_t)p->pid, NULL, 0);
                return;
        }
        if (n == (ssize_t)sizeof(report)) {
                report.message[sizeof(report.message) - 1] = '\0';
                snprintf(message, sizeof(message), "%s: %s", report.message, strerror(report.errno_value));
                spawn_failed(p->cookie, report.errno_value, "%s", message);
        } else {
                spawn_failed(p->cookie, EIO, "spawn report truncated");
        }
        /* The child _exits; its pipes carry nothing the peer asked for. */
        p->state = PROCESS_FAILED;
        loop_watch_close(&p->out[0].watch);
        loop_watch_close(&p->out[1].watch);
        loop_watch_close(&p->in);
}

void process_reap_all(void)
{
        for (;;) {
                struct process *p;
                int status;
                pid_t pid = waitpid(-1, &status, WNOHANG);

                if (pid < 0 && errno == EINTR)
                        continue;
                if (pid <= 0)
                        return;
                /* Orphans reparented to us are reaped and not reported. */
                p = process_find_unreaped(pid);
                if (!p)
                        continue;
                p->exited = true;
                if (WIFSIGNALED(status)) {
                        p->exit_code = -1;
                        p->exit_signal = WTERMSIG(status);
                } else {
                        p->exit_code = WEXITSTATUS(status);
                        p->exit_signal = 0;
                }
        }
}

void process_signal(uint32_t handle, int sig)
{
        struct process *p = process_find(handle);

        /* setsid() made the process a group leader: signal its whole group, so
         * a shell's children get it too. Only processes not yet reaped, so a
         * reused pid can not hit an unrelated process. */
        if (p && !p->exited && (p->state == PROCESS_RUNNING || p->state == PROCESS_STARTING))
                kill(-p->pid, sig);
}

void process_resize(uint32_t handle, uint16_t rows, uint16_t cols)
{
        struct process *p = process_find(handle);

        if (p && p->pty_master >= 0)
                pty_resize(p->pty_master, rows, cols);
}

/* After the process exited: send what is readable now, then close. Grandchildren
 * holding the pipe open must not delay EXIT, so EAGAIN ends the stream too. */
static bool drain_exited(struct process *p)
{
        bool done = true;

        for (int s = 0; s < 2; s++) {
                struct process_output *o = &p->out[s];
                enum io_read_result r;

                if (o->watch.fd < 0)
                        continue;
                while ((r = io_read_output(p, s)) == IO_READ_DATA)
                        ;
                if (r == IO_READ_BLOCKED)
                        done = false; /* wait for credit or queue room */
                else
                        loop_watch_close(&o->watch);
        }
        return done;
}

static void pump_one(struct process *p)
{
        uint8_t payload[8];

        if (p->state == PROCESS_STARTING && p->exited)
                process_on_report(p);
        if (p->state == PROCESS_FAILED) {
                if (p->exited)
                        process_free(p);
                return;
        }
        if (p->state != PROCESS_RUNNING)
                return;
        if (p->in.fd >= 0 || p->stdin_credit_pending)
                io_stdin_write(p);
        if (!io_stdin_flush_credit(p) && p->exited)
                return;
        if (!p->exited || !drain_exited(p))
                return;
        if (!control_can_send(MOAT_FRAME_HEADER_SIZE + sizeof(payload)))
                return;
        moat_put_u32(payload, (uint32_t)p->exit_code);
        moat_put_u32(payload + 4, (uint32_t)p->exit_signal);
        control_send(MOAT_FRAME_EXIT, 0, p->cookie, 0, payload, sizeof(payload));
        process_free(p);
}

void process_pump_all(void)
{
        for (size_t i = 0; i < MOAT_INIT_PROCESSES_MAX; i++)
                if (process_table[i].state != PROCESS_FREE)
                        pump_one(&process_table[i]);
}

void process_update_interest_all(void)
{
        bool room = control_can_send(MOAT_FRAME_HEADER_SIZE + MOAT_OUTPUT_CHUNK_MAX);

        for (size_t i = 0; i < MOAT_INIT_PROCESSES_MAX; i++) {
                struct process *p = &process_table[i];

                if (p->state == PROCESS_FREE)
                        continue;
                loop_watch_set(&p->report, room ? EPOLLIN : 0);
                for (int s = 0; s < 2; s++)
                        loop_watch_set(&p->out[s].watch,
                                       p->state == PROCESS_RUNNING && room && p->out[s].credit > MOAT_OUTPUT_FRAME_CHARGE
                                               ? EPOLLIN
                                               : 0);
                loop_watch_set(&p->in, p->state == PROCESS_RUNNING && p->stdin_end > p->stdin_start ? EPOLLOUT : 0);
        }
}

void process_reset_for_connection(void)
{
        for (size_t i = 0; i < MOAT_INIT_PROCESSES_MAX; i++) {
                struct process *p = &process_table[i];

                if (p->state == PROCESS_FREE)
                        continue;
                p->out[0].credit = p->out[1].credit = MOAT_INITIAL_OUTPUT_CREDIT;
                io_stdin_discard(p);
                p->stdin_credit_pending = 0;
        }
}
