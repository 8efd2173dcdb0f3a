/* The child between clone3() and execveat(moat-init): the isolation
 * sequence as an ordered checklist, one call per step.
 *
 * moatd is multithreaded, and the child is a clone of one of its threads —
 * sharing moatd's memory (CLONE_VM, see start_child() in cell.c) or a copy of
 * it: another thread may hold the malloc or stdio lock, and with shared
 * memory any write would land in moatd, so nothing here allocates, takes a
 * lock or writes anything but its own stack and the report. Everything the child needs was
 * formatted by the parent into struct moat_child_plan. A failing step fills
 * a fixed-size report, sends it over the sync socket and _exit()s; the parent
 * turns it into a struct moat_error. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cell_internal.h"

static const char *const step_names[] = {
        [MOAT_STEP_SIGNALS] = "reset signals",
        [MOAT_STEP_WAIT_PARENT] = "wait for parent",
        [MOAT_STEP_CGROUP_NAMESPACE] = "cgroup namespace",
        [MOAT_STEP_MOUNT_PRIVATE] = "private mounts",
        [MOAT_STEP_SCRATCH_TMPFS] = "scratch tmpfs",
        [MOAT_STEP_IDENTITY] = "switch to sandbox root",
        [MOAT_STEP_OVERLAY] = "overlay rootfs",
        [MOAT_STEP_HOST_USR] = "host /usr",
        [MOAT_STEP_PROC] = "/proc",
        [MOAT_STEP_DEV] = "/dev",
        [MOAT_STEP_SYS] = "/sys",
        [MOAT_STEP_TMP] = "/tmp",
        [MOAT_STEP_ETC_FILES] = "/etc files",
        [MOAT_STEP_LOOPBACK] = "loopback",
        [MOAT_STEP_HOSTNAME] = "hostname",
        [MOAT_STEP_PIVOT_ROOT] = "pivot_root",
        [MOAT_STEP_MASK_PATHS] = "masked paths",
        [MOAT_STEP_STDIO] = "stdio",
        [MOAT_STEP_CAPABILITIES] = "capabilities",
        [MOAT_STEP_NO_NEW_PRIVS] = "no_new_privs",
        [MOAT_STEP_SECCOMP] = "seccomp",
        [MOAT_STEP_EXEC] = "exec init",
};

const char *moat_child_step_name(int step)
{
        if (step <= 0 || (size_t)step >= sizeof(step_names) / sizeof(step_names[0]) || !step_names[step])
                return "unknown step";
        return step_names[step];
}

bool moat_child_append(char *buffer, size_t size, const char *text)
{
        size_t used = strnlen(buffer, size);

        while (*text && used + 1 < size)
                buffer[used++] = *text++;
        buffer[used < size ? used : size - 1] = '\0';
        return *text == '\0';
}

bool moat_child_append_unsigned(char *buffer, size_t size, unsigned long long value)
{
        char digits[24];
        size_t n = sizeof(digits) - 1;

        digits[n] = '\0';
        do {
                digits[--n] = (char)('0' + value % 10);
                value /= 10;
        } while (value);
        return moat_child_append(buffer, size, digits + n);
}

int moat_child_fail(struct moat_child_report *report, int step, int errno_value, const char *syscall_name,
                    const char *path)
{
        report->step = step;
        report->errno_value = errno_value;
        report->syscall[0] = '\0';
        report->path[0] = '\0';
        moat_child_append(report->syscall, sizeof(report->syscall), syscall_name ? syscall_name : "");
        moat_child_append(report->path, sizeof(report->path), path ? path : "");
        return -1;
}

/* Signal state is inherited from the moatd thread that cloned us: blocked
 * signals and ignored dispositions would otherwise survive execve into
 * init and everything it spawns. */
static int reset_signals(struct moat_child_report *report)
{
        sigset_t none;
        struct sigaction default_action = { .sa_handler = SIG_DFL };

        for (int signal_number = 1; signal_number < NSIG; signal_number++)
                sigaction(signal_number, &default_action, NULL); /* fails harmlessly for KILL/STOP/internal */
        sigemptyset(&none);
        if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
                return moat_child_fail(report, MOAT_STEP_SIGNALS, errno, "sigprocmask", "");
        return 0;
}

/* Block until the parent has written our id maps, put us in our cgroups and
 * made the idmapped mounts, which arrive here as SCM_RIGHTS. */
static int wait_for_parent(int sync_fd, int *mount_fds, unsigned *mount_fd_count, struct moat_child_report *report)
{
        char byte;
        union {
                char buffer[CMSG_SPACE(sizeof(int) * (MOAT_CELL_LOWER_MAX + 1))];
                struct cmsghdr align;
        } control;
        struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
        struct msghdr message = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = control.buffer,
                .msg_controllen = sizeof(control.buffer),
        };
        ssize_t n;

        do
                n = recvmsg(sync_fd, &message, MSG_CMSG_CLOEXEC);
        while (n < 0 && errno == EINTR);
        if (n != 1 || byte != 'G')
                return moat_child_fail(report, MOAT_STEP_WAIT_PARENT, n < 0 ? errno : EPIPE, "recvmsg", "sync");
        *mount_fd_count = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                        continue;
                unsigned count = (unsigned)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                if (count > MOAT_CELL_LOWER_MAX + 1)
                        count = MOAT_CELL_LOWER_MAX + 1;
                memcpy(mount_fds, CMSG_DATA(c), count * sizeof(int));
                *mount_fd_count = count;
        }
        if (message.msg_flags & MSG_CTRUNC)
                return moat_child_fail(report, MOAT_STEP_WAIT_PARENT, EPROTO, "recvmsg", "truncated mount fds");
        return 0;
}

/* Become sandbox root (host_id_base) for real: until now we carried moatd's
 * credentials, which are unmapped in our namespace. Supplementary groups are
 * dropped: moatd's host group 0 would otherwise still grant group access on
 * host files. */
static int become_sandbox_root(struct moat_child_report *report)
{
        if (setresgid(0, 0, 0) < 0)
                return moat_child_fail(report, MOAT_STEP_IDENTITY, errno, "setresgid", "0");
        if (setgroups(0, NULL) < 0)
                return moat_child_fail(report, MOAT_STEP_IDENTITY, errno, "setgroups", "");
        if (setresuid(0, 0, 0) < 0)
                return moat_child_fail(report, MOAT_STEP_IDENTITY, errno, "setresuid", "0");
        return 0;
}

static int set_hostname(const char *hostname, struct moat_child_report *report)
{
        if (sethostname(hostname, strlen(hostname)) < 0)
                return moat_child_fail(report, MOAT_STEP_HOSTNAME, errno, "sethostname", hostname);
        return 0;
}

/* init's stdin/stdout/stderr: /dev/null of the sandbox, never moatd's own
 * (a log file or terminal of the host). */
static int redirect_stdio(int control_fd, struct moat_child_report *report)
{
        int fd;

        /* A session of our own, without a controlling terminal. Otherwise
         * init would keep moatd's session and terminal (moatd started from a
         * shell), and a workload that gets hold of init could open /dev/tty
         * and read or inject keystrokes on the operator's terminal. */
        if (setsid() < 0)
                return moat_child_fail(report, MOAT_STEP_STDIO, errno, "setsid", "");
        fd = open("/dev/null", O_RDWR | O_CLOEXEC);

        if (fd < 0)
                return moat_child_fail(report, MOAT_STEP_STDIO, errno, "open", "/dev/null");
        for (int target = 0; target < 3; target++)
                if (dup2(fd, target) < 0)
                        return moat_child_fail(report, MOAT_STEP_STDIO, errno, "dup2", "/dev/null");
        if (fd > 2)
                close(fd);
        /* The control socket is the one fd init inherits on purpose. */
        if (fcntl(control_fd, F_SETFD, 0) < 0)
                return moat_child_fail(report, MOAT_STEP_STDIO, errno, "fcntl", "control fd");
        return 0;
}

static int set_no_new_privs(struct moat_child_report *report)
{
        /* No execve() may gain privileges (setuid bits, file capabilities),
         * and it is what allows an unprivileged seccomp filter. */
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
                return moat_child_fail(report, MOAT_STEP_NO_NEW_PRIVS, errno, "prctl", "PR_SET_NO_NEW_PRIVS");
        return 0;
}

/* The control socket is bound and made to listen by the parent's half while
 * we build the rootfs; init must not start before it listens. */
/* Hand moatd an fd of the scratch tmpfs (upper and work dirs live there): it
 * stays reachable to moatd, and only to moatd, after pivot_root hides it. */
static int send_scratch(int sync_fd, int scratch_fd, struct moat_child_report *report)
{
        char byte = MOAT_CHILD_SCRATCH;
        struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
        union {
                struct cmsghdr header;
                char buffer[CMSG_SPACE(sizeof(int))];
        } control;
        struct msghdr message = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer,
                                  .msg_controllen = sizeof(control.buffer) };
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message);

        memset(&control, 0, sizeof(control));
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cmsg), &scratch_fd, sizeof(int));
        if (sendmsg(sync_fd, &message, MSG_NOSIGNAL) != 1)
                return moat_child_fail(report, MOAT_STEP_SCRATCH_TMPFS, errno, "sendmsg", "scratch fd");
        return 0;
}

static int wait_for_listening(int sync_fd, struct moat_child_report *report)
{
        char byte = 0;
        ssize_t n;

        do
                n = recv(sync_fd, &byte, 1, 0);
        while (n < 0 && errno == EINTR);
        if (n != 1 || byte != MOAT_CHILD_LISTENING)
                return moat_child_fail(report, MOAT_STEP_WAIT_PARENT, n < 0 ? errno : EPIPE, "recv", "listening");
        return 0;
}

static int exec_init(const struct moat_child_plan *plan, struct moat_child_report *report)
{
        syscall(SYS_execveat, plan->runtime->init_memfd, "", plan->init_argv, plan->init_envp, AT_EMPTY_PATH);
        return moat_child_fail(report, MOAT_STEP_EXEC, errno, "execveat", "moat-init memfd");
}

void moat_child_main(const struct moat_child_plan *plan)
{
        struct moat_child_report report = { 0 };
        int mount_fds[MOAT_CELL_LOWER_MAX + 1];
        unsigned mount_fd_count = 0;
        int scratch_fd = -1, root_fd = -1;

        /* Every fd inherited from moatd (other sandboxes' sockets, HTTP
         * clients, the database) is closed at exec; only the control socket
         * is made inheritable, in redirect_stdio(). */
        syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);
        /* Tell the parent's half we run (it learns our pid from the kernel). */
        if (send(plan->sync_fd, &(char){ MOAT_CHILD_READY }, 1, MSG_NOSIGNAL) != 1)
                _exit(127);

        if (reset_signals(&report) < 0 ||
            wait_for_parent(plan->sync_fd, mount_fds, &mount_fd_count, &report) < 0)
                goto fail;
        /* Our cgroup namespace root becomes our own sandbox cgroup: the
         * host's cgroup paths are not visible in /proc/self/cgroup. */
        if (unshare(CLONE_NEWCGROUP) < 0) {
                moat_child_fail(&report, MOAT_STEP_CGROUP_NAMESPACE, errno, "unshare", "CLONE_NEWCGROUP");
                goto fail;
        }
        scratch_fd = moat_rootfs_mount_scratch(plan, &report);
        if (scratch_fd < 0 || send_scratch(plan->sync_fd, scratch_fd, &report) < 0 ||
            become_sandbox_root(&report) < 0)
                goto fail;
        root_fd = moat_rootfs_build(plan, scratch_fd, mount_fds, mount_fd_count, &report);
        if (root_fd < 0)
                goto fail;
        for (unsigned i = 0; i < mount_fd_count; i++)
                close(mount_fds[i]);
        close(scratch_fd);
        if ((!plan->config->join_netns && moat_network_loopback_up(&report) < 0) || set_hostname(plan->config->hostname, &report) < 0 ||
            moat_rootfs_pivot(root_fd, &report) < 0 || moat_rootfs_mask_paths(&report) < 0 ||
            redirect_stdio(plan->control_fd, &report) < 0)
                goto fail;
        close(root_fd);
        if (moat_capabilities_drop(plan->runtime->last_capability, &report) < 0 || set_no_new_privs(&report) < 0 ||
            wait_for_listening(plan->sync_fd, &report) < 0 ||
            moat_seccomp_load(&plan->runtime->seccomp_program, &report) < 0)
                goto fail;
        exec_init(plan, &report);
fail:
        /* One SOCK_SEQPACKET message; if even that fails the parent sees EOF
         * with the child dead and reports an unknown failure. */
        send(plan->sync_fd, &report, sizeof(report), MSG_NOSIGNAL);
        _exit(127);
}
