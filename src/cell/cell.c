/* The isolation cell's lifecycle: create (cgroups, control socket, clone3
 * into new namespaces, the parent's half of the set-up, wait for init's
 * exec), kill, reap, stats, destroy, and reaping what a crashed moatd left.
 * The child's half is the checklist in child.c. */
#include <ctype.h>
#include <errno.h>
#include <linux/securebits.h>
#include <sys/prctl.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/cleanup.h"
#include "cell_internal.h"

#define CHILD_SETUP_TIMEOUT_MS 10000
#define CHILD_STACK_SIZE (256 * 1024)
#define MIN_DISK_BYTES (1024ULL * 1024)
#define MIN_ID_COUNT 1024u

static bool valid_name(const char *name, size_t max, const char *extra)
{
        size_t length;

        if (!name)
                return false;
        length = strnlen(name, max + 1);
        if (length == 0 || length > max || name[0] == '.' || name[0] == '-')
                return false;
        for (size_t i = 0; i < length; i++)
                if (!isalnum((unsigned char)name[i]) && !strchr(extra, name[i]))
                        return false;
        return true;
}

static int validate_config(const struct moat_cell_config *config, struct moat_error **err)
{
        if (!config)
                return moat_error_invalid(err, "no cell config");
        if (!valid_name(config->id, sizeof(((struct moat_cell *)0)->id) - 1, "-_."))
                return moat_error_invalid(err, "sandbox id must be 1-63 characters of [A-Za-z0-9._-]");
        if (!valid_name(config->hostname, 64, "-."))
                return moat_error_invalid(err, "hostname must be 1-64 characters of [A-Za-z0-9.-]");
        if (config->lower_count == 0 || config->lower_count > MOAT_CELL_LOWER_MAX)
                return moat_error_invalid(err, "a cell needs 1 to %d image layers", MOAT_CELL_LOWER_MAX);
        for (unsigned i = 0; i < config->lower_count; i++)
                if (!config->lowers[i] || config->lowers[i][0] != '/' || strlen(config->lowers[i]) >= PATH_MAX)
                        return moat_error_invalid(err, "image layer %u is not an absolute path", i);
        /* Every mount fd travels in the one "go" message, whose size the
         * child's receive buffer fixes. */
        if (config->bind_count > MOAT_CELL_BIND_MAX ||
            config->lower_count + (config->bind_host_usr ? 1u : 0u) + config->bind_count > MOAT_CELL_LOWER_MAX + 1)
                return moat_error_invalid(err, "too many image layers and volumes (at most %d mounts)",
                                          MOAT_CELL_LOWER_MAX + 1);
        for (unsigned i = 0; i < config->bind_count; i++)
                if (!config->binds[i].source_dir || config->binds[i].source_dir[0] != '/' || !config->binds[i].target ||
                    config->binds[i].target[0] != '/' || strlen(config->binds[i].target) >= 256)
                        return moat_error_invalid(err, "volume %u needs an absolute source and target", i);
        if (config->disk_bytes < MIN_DISK_BYTES)
                return moat_error_invalid(err, "disk_bytes must be at least 1 MiB");
        /* Host id 0 would make sandbox root host root. */
        if (config->host_id_base == 0 || config->id_count < MIN_ID_COUNT ||
            (uint64_t)config->host_id_base + config->id_count > UINT32_MAX - 1)
                return moat_error_invalid(err, "the id range must start above 0 and hold at least %u ids",
                                          MIN_ID_COUNT);
        if (config->cpu_millis != 0 && config->cpu_millis < 10)
                return moat_error_invalid(err, "cpu_millis must be 0 (unlimited) or at least 10");
        return 0;
}

/* The listening socket init inherits. Root-only (0600 in a 0700 dir): only
 * moatd may talk to init; a sandbox never sees it (it is outside its
 * filesystem view). The socket is made before the clone, so the child
 * inherits it; it is bound by the parent's half after "go", while the child
 * builds its rootfs: creating the socket's inode can take half a
 * millisecond on a journalled run dir, and nobody connects before init
 * runs. */
static int bind_control_socket(int fd, const char *path, struct moat_error **err)
{
        struct sockaddr_un address = { .sun_family = AF_UNIX };

        if (strlen(path) >= sizeof(address.sun_path))
                return moat_error_invalid(err, "control socket path `%s` is too long", path);
        memcpy(address.sun_path, path, strlen(path) + 1);
        if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
                if (errno == EADDRINUSE)
                        return moat_error_set(err, MOAT_ERROR_CONFLICT, errno, "sandbox_exists", "bind `%s`", path);
                return moat_error_system(err, errno, "bind `%s`", path);
        }
        /* Before listen(): until then nobody can connect anyway. */
        if (chmod(path, 0600) < 0 || listen(fd, 8) < 0) {
                int saved = errno;
                unlink(path);
                return moat_error_system(err, saved, "chmod/listen `%s`", path);
        }
        return 0;
}

/* The "go" message: one byte plus the idmapped mount fds. */
static int send_go(int sync_fd, const int *fds, unsigned count, struct moat_error **err)
{
        union {
                char buffer[CMSG_SPACE(sizeof(int) * (MOAT_CELL_LOWER_MAX + 1))];
                struct cmsghdr align;
        } control;
        char byte = 'G';
        struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
        struct msghdr message = { .msg_iov = &iov, .msg_iovlen = 1 };

        if (count) {
                memset(&control, 0, sizeof(control));
                message.msg_control = control.buffer;
                message.msg_controllen = CMSG_SPACE(sizeof(int) * count);
                struct cmsghdr *c = CMSG_FIRSTHDR(&message);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int) * count);
                memcpy(CMSG_DATA(c), fds, sizeof(int) * count);
        }
        if (sendmsg(sync_fd, &message, MSG_NOSIGNAL) != 1)
                return moat_error_system(err, errno, "send go to child");
        return 0;
}

/* The child's failure report, if one is waiting on the sync socket (the
 * child failed a step and exited): returns 1 with *err set from it, else 0.
 * Used when the parent's half fails on a closed socket (EPIPE), so the
 * error names the child's step instead of the broken pipe it caused. */
static int take_child_report(int sync_fd, struct moat_error **err)
{
        struct moat_child_report report;

        ssize_t n = recv(sync_fd, &report, sizeof(report), MSG_DONTWAIT);

        if (n < 0 && errno == ECONNRESET) /* see wait_for_child() */
                n = recv(sync_fd, &report, sizeof(report), MSG_DONTWAIT);
        if (n != (ssize_t)sizeof(report))
                return 0;
        report.syscall[sizeof(report.syscall) - 1] = '\0';
        report.path[sizeof(report.path) - 1] = '\0';
        moat_error_set(err, MOAT_ERROR_SYSTEM, report.errno_value, "cell_setup_failed",
                       "sandbox set-up failed at step `%s`: %s `%s`", moat_child_step_name(report.step),
                       report.syscall, report.path);
        return 1;
}

/* Wait until the child execs init (the sync socket reaches EOF: it was
 * CLOEXEC) or reports a failed step. */
static int wait_for_child(struct moat_cell *cell, int sync_fd, struct moat_error **err)
{
        struct moat_child_report report;
        struct pollfd p = { .fd = sync_fd, .events = POLLIN };
        siginfo_t info = { 0 };
        ssize_t n;
        int r;

        do
                r = poll(&p, 1, CHILD_SETUP_TIMEOUT_MS);
        while (r < 0 && errno == EINTR);
        if (r == 0)
                return moat_error_set(err, MOAT_ERROR_TIMEOUT, 0, "cell_setup_timeout",
                                      "sandbox set-up did not finish in %d ms", CHILD_SETUP_TIMEOUT_MS);
        if (r < 0)
                return moat_error_system(err, errno, "poll sync socket");
        n = recv(sync_fd, &report, sizeof(report), 0);
        /* A child that exits with our "listening" byte unread leaves
         * ECONNRESET pending on our end, which the kernel reports (once)
         * before the queued report: read again for the report. */
        if (n < 0 && errno == ECONNRESET)
                n = recv(sync_fd, &report, sizeof(report), MSG_DONTWAIT);
        if (n == (ssize_t)sizeof(report)) {
                report.syscall[sizeof(report.syscall) - 1] = '\0';
                report.path[sizeof(report.path) - 1] = '\0';
                return moat_error_set(err, MOAT_ERROR_SYSTEM, report.errno_value, "cell_setup_failed",
                                      "sandbox set-up failed at step `%s`: %s `%s`",
                                      moat_child_step_name(report.step), report.syscall, report.path);
        }
        if (n != 0)
                return moat_error_system(err, n < 0 ? errno : EPROTO, "read child report");
        /* EOF: exec'd, or died without a word (e.g. killed). */
        if (waitid((idtype_t)P_PIDFD, (id_t)cell->pidfd, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid)
                return moat_error_set(err, MOAT_ERROR_SYSTEM, 0, "cell_setup_failed",
                                      "sandbox init exited during set-up (code %d, status %d)", info.si_code,
                                      info.si_status);
        return 0;
}

static void close_all(int *fds, unsigned count)
{
        for (unsigned i = 0; i < count; i++)
                if (fds[i] >= 0)
                        close(fds[i]);
}

/* The parent's half, between clone3 and "go": everything that needs real
 * root on the host. */
/* A volume: like an image layer (idmapped through the sandbox's user
 * namespace, nosuid, nodev) but writable unless read_only. The idmap is the
 * identity of the sandbox's view: sandbox uid 1000 reads and writes on-disk
 * uid 1000 in every sandbox, which is what makes a volume shared. nosuid,
 * nodev: a setuid file or device node planted in a volume grants nothing.
 * Defends against: a sandbox's files landing owned by its host range (which
 * another sandbox could not use), and host-id ownership leaking in. */
static int open_volume_tree(const struct moat_cell_bind *bind, int userns_fd, struct moat_error **err)
{
        _cleanup_close_ int tree = -1;
        struct mount_attr attr = {
                .attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV |
                            (bind->read_only ? MOUNT_ATTR_RDONLY : 0),
                .userns_fd = (uint64_t)userns_fd,
        };

        tree = (int)syscall(SYS_open_tree, AT_FDCWD, bind->source_dir,
                            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_SYMLINK_NOFOLLOW);
        if (tree < 0)
                return moat_error_system(err, errno, "open_tree `%s`", bind->source_dir);
        if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
                return moat_error_set(err, MOAT_ERROR_SYSTEM, errno, "idmap_unsupported",
                                      "mount_setattr(MOUNT_ATTR_IDMAP) `%s`", bind->source_dir);
        return TAKE_FD(tree);
}

/* The sandbox's user namespace is owned by the euid of the thread that
 * clones it. Owned by host root (moatd), every per-user count the kernel keeps
 * up the namespace chain (inotify instances and watches, among others) would
 * land on host root's own: one sandbox could exhaust root's 128 inotify
 * instances, and with them systemd's, moatd's and every other sandbox's. So
 * this thread clones as the sandbox's own host uid (owner_uid), which nothing
 * else on the host uses: each sandbox gets counts of its own.
 *
 * Raw syscalls, for this thread only (glibc's setresuid would switch every
 * thread of moatd). SECBIT_NO_SETUID_FIXUP keeps the capabilities this
 * thread needs (cgroup placement, namespace creation where an LSM requires
 * CAP_SYS_ADMIN); the fsuid stays 0, so the child's early set-up resolves
 * moatd's 0700 directories as before. The child starts with the default
 * securebits: creating a user namespace resets them.
 *
 * The same identity lets the parent's half set the child's rlimits: as the
 * namespace's owner it holds every capability there, which prlimit() on the
 * child asks for now that their uids differ (moatd may lack CAP_SYS_RESOURCE
 * itself, in a container). */
struct owner_identity {
        int securebits;
};

static int owner_identity_enter(struct owner_identity *saved, uid_t owner_uid)
{
        saved->securebits = prctl(PR_GET_SECUREBITS);
        if (saved->securebits < 0)
                return -errno;
        if (prctl(PR_SET_SECUREBITS, (unsigned long)saved->securebits | SECBIT_NO_SETUID_FIXUP) < 0)
                return -errno;
        if (syscall(SYS_setresuid, (uid_t)-1, owner_uid, (uid_t)-1) < 0) {
                int r = -errno;
                prctl(PR_SET_SECUREBITS, (unsigned long)saved->securebits);
                return r;
        }
        syscall(SYS_setfsuid, 0);
        return 0;
}

static void owner_identity_leave(const struct owner_identity *saved)
{
        /* Back to euid (and so fsuid) 0; the capabilities never left. */
        syscall(SYS_setresuid, (uid_t)-1, 0, (uid_t)-1);
        prctl(PR_SET_SECUREBITS, (unsigned long)saved->securebits);
}

static int prepare_child(struct moat_cell *cell, const struct moat_cell_config *config, int sync_fd,
                         struct moat_error **err)
{
        int mount_fds[MOAT_CELL_LOWER_MAX + 1];
        unsigned count = 0;
        _cleanup_close_ int userns_fd = -1;
        char path[64];
        int r = -1;

        if (moat_userns_write_maps(cell->pid, config->host_id_base, config->id_count, err) < 0)
                return -1;
        if (cell->runtime->cgroup_version == MOAT_CGROUP_V1 && moat_cgroup_attach(cell, cell->pid, err) < 0)
                return -1;
        {
                struct owner_identity saved;
                int failed = owner_identity_enter(&saved, config->host_id_base);

                if (failed < 0)
                        return moat_error_system(err, -failed, "act as the namespace's owner");
                failed = moat_rlimits_apply(cell->pid, err);
                owner_identity_leave(&saved);
                if (failed < 0)
                        return -1;
        }
        snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)cell->pid);
        userns_fd = open(path, O_RDONLY | O_CLOEXEC);
        if (userns_fd < 0)
                return moat_error_system(err, errno, "open `%s`", path);
        for (unsigned i = 0; i < config->lower_count; i++) {
                mount_fds[count] = moat_idmap_open_tree(config->lowers[i], userns_fd, err);
                if (mount_fds[count] < 0)
                        goto out;
                count++;
        }
        if (config->bind_host_usr) {
                mount_fds[count] = moat_idmap_open_tree("/usr", userns_fd, err);
                if (mount_fds[count] < 0)
                        goto out;
                count++;
        }
        for (unsigned i = 0; i < config->bind_count; i++) {
                mount_fds[count] = open_volume_tree(&config->binds[i], userns_fd, err);
                if (mount_fds[count] < 0)
                        goto out;
                count++;
        }
        r = send_go(sync_fd, mount_fds, count, err);
out:
        close_all(mount_fds, count);
        return r;
}

/* The parent's half runs beside the child: on a helper thread when the
 * cloning thread is suspended (CLONE_VFORK), inline otherwise. It waits for
 * the child's "ready" byte, then does what needs host root and says "go". */
struct parent_half {
        struct moat_cell *cell;
        const struct moat_cell_config *config;
        int sync_fd;
        int control_fd; /* bound and listening once "go" is sent */
        pid_t child_pid; /* written by the kernel (CLONE_PARENT_SETTID) before the child runs */
        struct moat_error *err;
        int result;
};

static uint64_t monotonic_us(void)
{
        struct timespec now;

        clock_gettime(CLOCK_MONOTONIC, &now);
        return (uint64_t)now.tv_sec * 1000000u + (uint64_t)now.tv_nsec / 1000u;
}

/* The child's 'S' message with its scratch fd. Anything else is its failure
 * report (or nothing: it died), which stays for wait_for_child() to read:
 * MSG_PEEK until we know. */
static int receive_scratch(struct moat_cell *cell, int sync_fd, struct moat_error **err)
{
        char byte = 0;
        struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
        union {
                struct cmsghdr header;
                char buffer[CMSG_SPACE(sizeof(int))];
        } control;
        struct msghdr message = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer,
                                  .msg_controllen = sizeof(control.buffer) };
        struct pollfd p = { .fd = sync_fd, .events = POLLIN };
        struct cmsghdr *cmsg;
        ssize_t n;
        int r;

        do
                r = poll(&p, 1, CHILD_SETUP_TIMEOUT_MS);
        while (r < 0 && errno == EINTR);
        if (r <= 0)
                return moat_error_set(err, MOAT_ERROR_SYSTEM, r < 0 ? errno : ETIMEDOUT, "cell_setup_failed",
                                      "sandbox child did not send its scratch fd");
        n = recv(sync_fd, &byte, 1, MSG_PEEK);
        if (n != 1 || byte != MOAT_CHILD_SCRATCH)
                return moat_error_set(err, MOAT_ERROR_SYSTEM, 0, "cell_setup_failed",
                                      "sandbox child failed before its scratch fd");
        memset(&control, 0, sizeof(control));
        n = recvmsg(sync_fd, &message, MSG_CMSG_CLOEXEC);
        cmsg = CMSG_FIRSTHDR(&message);
        if (n != 1 || !cmsg || cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS ||
            cmsg->cmsg_len != CMSG_LEN(sizeof(int)))
                return moat_error_set(err, MOAT_ERROR_SYSTEM, EPROTO, "cell_setup_failed", "bad scratch message");
        memcpy(&cell->scratch_fd, CMSG_DATA(cmsg), sizeof(int));
        return 0;
}

int moat_cell_upper_open(const struct moat_cell *cell, struct moat_error **err)
{
        int fd;

        if (cell->scratch_fd < 0)
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "sandbox_not_running",
                                      "sandbox `%s` has no writable layer", cell->id);
        /* O_NOFOLLOW: "upper" is ours (made before the sandbox ran) but the
         * tree under it is the sandbox's. */
        fd = openat(cell->scratch_fd, "upper", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return moat_error_system(err, errno, "open the writable layer of `%s`", cell->id);
        return fd;
}

static void *parent_half_run(void *arg)
{
        struct parent_half *half = arg;
        uint64_t started;
        struct pollfd p = { .fd = half->sync_fd, .events = POLLIN };
        char byte = 0;
        int r;

        do
                r = poll(&p, 1, CHILD_SETUP_TIMEOUT_MS);
        while (r < 0 && errno == EINTR);
        if (r <= 0 || recv(half->sync_fd, &byte, 1, 0) != 1 || byte != MOAT_CHILD_READY) {
                half->result = moat_error_set(&half->err, MOAT_ERROR_SYSTEM, r < 0 ? errno : 0, "cell_setup_failed",
                                              "sandbox child did not start");
                return NULL;
        }
        half->cell->pid = __atomic_load_n(&half->child_pid, __ATOMIC_ACQUIRE);
        started = monotonic_us();
        half->result = prepare_child(half->cell, half->config, half->sync_fd, &half->err);
        if (half->result == 0) {
                half->result = bind_control_socket(half->control_fd, half->cell->control_path, &half->err);
                /* Only a socket we bound is ours to unlink. */
                half->cell->control_bound = half->result == 0;
                if (half->result == 0)
                        half->result = receive_scratch(half->cell, half->sync_fd, &half->err);
                /* The child waits for this before it execs init, which
                 * refuses a control fd that is not listening yet. */
                if (half->result == 0 && send(half->sync_fd, &(char){ MOAT_CHILD_LISTENING }, 1, MSG_NOSIGNAL) != 1)
                        half->result = moat_error_system(&half->err, errno, "send listening to child");
        }
        half->cell->timings.parent_half_us = (uint32_t)(monotonic_us() - started);
        /* The child waits for "go" forever; without it, it must die (which
         * also releases a vfork-suspended parent). */
        if (half->result < 0)
                kill(half->cell->pid, SIGKILL);
        return NULL;
}

static int child_entry(void *plan)
{
        moat_child_main(plan);
}

#if defined(__SANITIZE_ADDRESS__)
#define MOAT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOAT_SANITIZED 1
#endif
#endif

/* Not under AddressSanitizer: a child sharing our memory would update the
 * shared shadow memory from another stack and corrupt the parent's view. */
#if defined(__x86_64__) && !defined(MOAT_SANITIZED)
/* clone3 onto a fresh stack, calling fn(arg) there in the child. glibc has no
 * public clone3 wrapper, and a child on a new stack cannot return into C
 * code that addresses the parent's frame, so the switch happens here. */
static long clone3_on_stack(struct clone_args *args, int (*fn)(void *), void *arg)
{
        register long call_fn __asm__("r12") = (long)fn;
        register long call_arg __asm__("r13") = (long)arg;
        long ret;

        __asm__ volatile("syscall\n\t"
                         "test %%rax, %%rax\n\t"
                         "jnz 1f\n\t"
                         "xor %%ebp, %%ebp\n\t"
                         "mov %%r13, %%rdi\n\t"
                         "call *%%r12\n\t"
                         "mov %%eax, %%edi\n\t"
                         "mov %[exit], %%eax\n\t"
                         "syscall\n\t"
                         "hlt\n"
                         "1:\n\t"
                         : "=a"(ret)
                         : "0"((long)SYS_clone3), "D"(args), "S"(sizeof(*args)), "r"(call_fn), "r"(call_arg),
                           [exit] "i"(SYS_exit)
                         : "rcx", "r11", "memory");
        return ret;
}
#define HAVE_CLONE3_ON_STACK 1
#endif

/* Start the child. Where we can (x86_64), it shares moatd's memory and this
 * thread sleeps until it execs init (CLONE_VM | CLONE_VFORK, as posix_spawn
 * does): no copy of the daemon's page tables, no copy-on-write faults after,
 * about 1 ms less per create on a VM. The child's writes to errno land in
 * this suspended thread's TLS, harmlessly; the parent's half runs on a helper
 * thread meanwhile. Elsewhere, a fork-style clone3 and the half inline.
 * Returns the child's pid or -errno, with half->result set. */
static long start_child(struct clone_args *args, struct moat_child_plan *plan, struct parent_half *half,
                        int *parent_sync_end)
{
        long pid;

#ifdef HAVE_CLONE3_ON_STACK
        pthread_t helper;
        void *stack = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                           -1, 0);
        int r;

        if (stack == MAP_FAILED)
                return -errno;
        r = pthread_create(&helper, NULL, parent_half_run, half);
        if (r != 0) {
                munmap(stack, CHILD_STACK_SIZE);
                return -r;
        }
        args->flags |= CLONE_VM | CLONE_VFORK | CLONE_PARENT_SETTID;
        args->parent_tid = (uint64_t)(uintptr_t)&half->child_pid;
        args->stack = (uint64_t)(uintptr_t)stack;
        args->stack_size = CHILD_STACK_SIZE;
        {
                struct owner_identity saved;

                pid = owner_identity_enter(&saved, plan->config->host_id_base);
                if (pid == 0) {
                        pid = clone3_on_stack(args, child_entry, plan);
                        owner_identity_leave(&saved);
                }
        }
        /* Here the child has exec'd init or died. Dropping our copy of its
         * sync end lets the helper see EOF if it is still waiting. */
        close(*parent_sync_end);
        *parent_sync_end = -1;
        pthread_join(helper, NULL);
        munmap(stack, CHILD_STACK_SIZE);
        if (pid < 0 && half->result == 0)
                half->result = -1;
        return pid;
#else
        {
                struct owner_identity saved;

                pid = owner_identity_enter(&saved, plan->config->host_id_base);
                if (pid < 0)
                        return pid;
                pid = syscall(SYS_clone3, args, sizeof(*args));
                if (pid == 0)
                        moat_child_main(plan); /* never returns */
                if (pid < 0)
                        pid = -errno;
                owner_identity_leave(&saved);
                if (pid < 0)
                        return pid;
        }
        close(*parent_sync_end);
        *parent_sync_end = -1;
        half->child_pid = (pid_t)pid;
        parent_half_run(half);
        return pid;
#endif
}

static void leave_network(int *host_netns_fd, int *sysfs_fd);

/* The child is born in the calling thread's network namespace, so this
 * thread enters the one moatd made for the sandbox for the length of the
 * clone. The sandbox's sysfs is mounted here too, in that namespace, since the
 * sandbox (which does not own it) may not mount one. */
static int enter_network(int netns_fd, int *host_netns_fd, int *sysfs_fd, struct moat_error **err)
{
        int fs_fd;

        *host_netns_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (*host_netns_fd < 0)
                return moat_error_system(err, errno, "open /proc/thread-self/ns/net");
        if (setns(netns_fd, CLONE_NEWNET) < 0) {
                moat_error_system(err, errno, "setns(CLONE_NEWNET)");
                goto fail;
        }
        fs_fd = (int)syscall(SYS_fsopen, "sysfs", FSOPEN_CLOEXEC);
        if (fs_fd < 0 || syscall(SYS_fsconfig, fs_fd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
                moat_error_system(err, errno, "fsopen sysfs");
                goto fail_fs;
        }
        /* Read-only with nosuid,nodev,noexec: set by host root, so they are
         * locked for the sandbox, which can never remount it writable. */
        *sysfs_fd = (int)syscall(SYS_fsmount, fs_fd, FSMOUNT_CLOEXEC,
                                 MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
        if (*sysfs_fd < 0) {
                moat_error_system(err, errno, "fsmount sysfs");
                goto fail_fs;
        }
        close(fs_fd);
        return 0;
fail_fs:
        if (fs_fd >= 0)
                close(fs_fd);
fail:
        leave_network(host_netns_fd, sysfs_fd);
        return -1;
}

static void leave_network(int *host_netns_fd, int *sysfs_fd)
{
        if (*sysfs_fd >= 0)
                close(*sysfs_fd);
        *sysfs_fd = -1;
        if (*host_netns_fd < 0)
                return;
        /* Staying inside would put every later socket of this worker thread in
         * the sandbox's network. */
        if (setns(*host_netns_fd, CLONE_NEWNET) < 0)
                abort();
        close(*host_netns_fd);
        *host_netns_fd = -1;
}

static void abandon_cell(struct moat_cell *cell)
{
        struct moat_error *ignored = NULL;

        if (cell->pidfd >= 0) {
                moat_cell_kill(cell);
                while (!cell->reaped && waitpid(cell->pid, &cell->exit_status, __WALL) < 0 && errno == EINTR)
                        ;
                cell->reaped = true;
        }
        moat_cgroup_remove(cell, &ignored);
        moat_error_free(ignored);
        if (cell->control_bound)
                unlink(cell->control_path);
        if (cell->pidfd >= 0)
                close(cell->pidfd);
        if (cell->scratch_fd >= 0)
                close(cell->scratch_fd);
        free(cell);
}

int moat_cell_create(struct moat_cell_runtime *runtime, const struct moat_cell_config *config,
                     struct moat_cell **ret_cell, struct moat_error **err)
{
        struct moat_cell *cell = NULL;
        struct moat_child_plan plan = { .sysfs_fd = -1 };
        _cleanup_close_ int control_fd = -1, cgroup_fd = -1;
        int host_netns_fd = -1;
        int sync_fds[2] = { -1, -1 };
        struct clone_args args = { 0 };
        struct parent_half half;
        uint64_t mark;
        long pid;

        if (!runtime || !ret_cell)
                return moat_error_invalid(err, "no runtime or result pointer");
        if (validate_config(config, err) < 0)
                return -1;
        cell = calloc(1, sizeof(*cell));
        if (!cell)
                return moat_error_system(err, ENOMEM, "allocate cell");
        cell->runtime = runtime;
        cell->pidfd = -1;
        cell->scratch_fd = -1;
        snprintf(cell->id, sizeof(cell->id), "%s", config->id);

        mark = monotonic_us();
        if (moat_cgroup_create(cell, config, err) < 0)
                goto fail;
        cell->timings.cgroup_us = (uint32_t)(monotonic_us() - mark);
        mark = monotonic_us();
        if ((size_t)snprintf(cell->control_path, sizeof(cell->control_path), "%s/%s.sock", runtime->sandboxes_dir,
                             config->id) >= sizeof(cell->control_path)) {
                moat_error_invalid(err, "control socket path is too long");
                goto fail;
        }
        control_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (control_fd < 0) {
                moat_error_system(err, errno, "socket");
                goto fail;
        }

        plan.runtime = runtime;
        plan.config = config;
        plan.control_fd = control_fd;
        snprintf(plan.control_fd_text, sizeof(plan.control_fd_text), "%d", control_fd);
        plan.init_argv[0] = "moat-init";
        plan.init_argv[1] = "--control-fd";
        plan.init_argv[2] = plan.control_fd_text;
        plan.init_envp[0] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        if (moat_rootfs_build_plan(&plan, err) < 0)
                goto fail;
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sync_fds) < 0) {
                moat_error_system(err, errno, "socketpair");
                goto fail;
        }
        plan.sync_fd = sync_fds[1];

        args.flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_PIDFD;
        if (!config->join_netns)
                args.flags |= CLONE_NEWNET;
        args.pidfd = (uint64_t)(uintptr_t)&cell->pidfd;
        args.exit_signal = SIGCHLD;
        /* v2: born inside its cgroup, so not one page is charged elsewhere. */
        cgroup_fd = moat_cgroup_open_v2(cell, err);
        if (cgroup_fd >= 0) {
                args.flags |= CLONE_INTO_CGROUP;
                args.cgroup = (uint64_t)cgroup_fd;
        } else if (runtime->cgroup_version == MOAT_CGROUP_V2) {
                goto fail;
        }
        half = (struct parent_half){
                .cell = cell, .config = config, .sync_fd = sync_fds[0], .control_fd = control_fd };
        cell->timings.setup_us = (uint32_t)(monotonic_us() - mark);
        mark = monotonic_us();
        if (config->join_netns && enter_network(config->netns_fd, &host_netns_fd, &plan.sysfs_fd, err) < 0)
                goto fail;
        pid = start_child(&args, &plan, &half, &sync_fds[1]);
        if (config->join_netns)
                leave_network(&host_netns_fd, &plan.sysfs_fd);
        cell->timings.child_us = (uint32_t)(monotonic_us() - mark);
        if (pid < 0) {
                moat_error_free(half.err);
                moat_error_system(err, (int)-pid, "clone3");
                goto fail;
        }
        cell->pid = (pid_t)pid;
        if (half.result < 0) {
                if (err && !*err && !take_child_report(sync_fds[0], err))
                        *err = TAKE_PTR(half.err);
                moat_error_free(half.err);
                moat_error_wrap(err, "create sandbox `%s`", config->id);
                goto fail;
        }
        mark = monotonic_us();
        if (wait_for_child(cell, sync_fds[0], err) < 0) {
                moat_error_wrap(err, "create sandbox `%s`", config->id);
                goto fail;
        }
        close(sync_fds[0]);
        cell->timings.confirm_us = (uint32_t)(monotonic_us() - mark);
        *ret_cell = cell;
        return 0;
fail:
        close_all(sync_fds, 2);
        abandon_cell(cell);
        return -1;
}

void moat_cell_kill(struct moat_cell *cell)
{
        if (!cell)
                return;
        /* Killing PID 1 of a pid namespace makes the kernel kill every
         * other process in it. */
        if (cell->pidfd >= 0 && !cell->reaped)
                syscall(SYS_pidfd_send_signal, cell->pidfd, SIGKILL, NULL, 0);
        if (cell->runtime->cgroup_version == MOAT_CGROUP_V2)
                moat_cgroup_kill(cell);
}

bool moat_cell_try_reap(struct moat_cell *cell)
{
        int status;

        if (!cell)
                return false;
        if (!cell->reaped && waitpid(cell->pid, &status, WNOHANG | __WALL) == cell->pid) {
                cell->exit_status = status;
                cell->reaped = true;
        }
        return cell->reaped;
}

int moat_cell_destroy(struct moat_cell *cell, struct moat_error **err)
{
        int r = 0;

        if (!cell)
                return 0;
        moat_cell_kill(cell);
        while (!cell->reaped) {
                int status;
                pid_t got = waitpid(cell->pid, &status, __WALL);
                if (got == cell->pid) {
                        cell->exit_status = status;
                        cell->reaped = true;
                } else if (got < 0 && errno != EINTR) {
                        /* ECHILD: someone else reaped it; nothing to wait for. */
                        cell->reaped = true;
                }
        }
        if (moat_cgroup_remove(cell, err) < 0)
                r = moat_error_wrap(err, "destroy sandbox `%s`", cell->id);
        if (unlink(cell->control_path) < 0 && errno != ENOENT && r == 0)
                r = moat_error_system(err, errno, "unlink `%s`", cell->control_path);
        if (cell->pidfd >= 0)
                close(cell->pidfd);
        if (cell->scratch_fd >= 0)
                close(cell->scratch_fd);
        free(cell);
        return r;
}

int moat_cell_read_stats(const struct moat_cell *cell, struct moat_cell_stats *stats, struct moat_error **err)
{
        if (!cell || !stats)
                return moat_error_invalid(err, "no cell or stats");
        return moat_cgroup_read_stats(cell, stats, err);
}

int moat_cell_reap_orphan(struct moat_cell_runtime *runtime, const char *id, struct moat_error **err)
{
        _cleanup_free_ struct moat_cell *cell = NULL;
        char path[sizeof(cell->control_path)];

        if (!runtime)
                return moat_error_invalid(err, "no runtime");
        if (!valid_name(id, sizeof(cell->id) - 1, "-_."))
                return moat_error_invalid(err, "sandbox id must be 1-63 characters of [A-Za-z0-9._-]");
        cell = calloc(1, sizeof(*cell));
        if (!cell)
                return moat_error_system(err, ENOMEM, "allocate cell");
        cell->runtime = runtime;
        cell->pidfd = -1;
        if (moat_cgroup_paths(cell, id, err) < 0)
                return -1;
        /* Killing every listed process includes the orphan's init, which
         * takes its whole pid namespace with it. */
        moat_cgroup_kill(cell);
        if (moat_cgroup_remove(cell, err) < 0)
                return moat_error_wrap(err, "reap orphan `%s`", id);
        if ((size_t)snprintf(path, sizeof(path), "%s/%s.sock", runtime->sandboxes_dir, id) < sizeof(path) &&
            unlink(path) < 0 && errno != ENOENT)
                return moat_error_system(err, errno, "unlink `%s`", path);
        return 0;
}
