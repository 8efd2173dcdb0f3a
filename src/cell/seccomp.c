/* The seccomp filter: an allowlist at least as strict as Docker's default
 * profile. Built once with libseccomp at runtime init and exported as raw
 * BPF, so the child between clone() and execve() only calls seccomp(2).
 *
 * Defends against: kernel attack surface reachable from an unprivileged
 * process (io_uring, bpf, perf_event_open, userfaultfd, keyrings, ...),
 * nested user namespaces (which would hand the workload a fresh set of full
 * capabilities over new namespaces and with it the mount/netfilter attack
 * surface), the 32-bit and x32 syscall tables (killed as a bad
 * architecture), and anything added to the kernel after this list was
 * written (default: EPERM). */
#include <errno.h>
#include <linux/netlink.h>
#include <linux/seccomp.h>
#include <stdbool.h>
#include <sched.h>
#include <seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../common/cleanup.h"
#include "cell_internal.h"

/* Docker's unconditional allowlist (moby profiles/seccomp/default.json),
 * minus io_uring_*, modify_ldt and memfd_secret. Names that do not exist on
 * this architecture are skipped. */
static const char *const allowed_syscalls[] = {
        "accept", "accept4", "access", "adjtimex", "alarm", "arch_prctl", "bind", "brk", "cachestat", "capget",
        "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
        "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64",
        "close", "close_range", "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create",
        "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
        "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat",
        "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat",
        "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr",
        "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
        "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
        "futex_wake", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
        "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername",
        "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid", "getresgid32",
        "getresuid", "getresuid32", "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname",
        "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr",
        "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl",
        "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set",
        "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
        "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr",
        "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
        "map_shadow_stack", "membarrier", "memfd_create", "mincore", "mkdir", "mkdirat", "mknod", "mknodat",
        "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
        "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink",
        "mremap", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
        "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2", "pause",
        "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll",
        "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64", "process_mrelease",
        "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
        "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages",
        "removexattr", "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction",
        "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
        "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr", "sched_getparam",
        "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
        "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
        "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget", "semop", "semtimedop",
        "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid",
        "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer",
        "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
        "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid", "setsockopt",
        "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt",
        "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall",
        "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
        "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
        "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
        "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
        "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat",
        "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid",
        "write", "writev",
        /* Docker allows these on kernels >= 4.8, where ptrace can no longer
         * be used to bypass seccomp. They act only on the sandbox's own
         * processes (same user namespace, no CAP_SYS_PTRACE). */
        "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
};

/* Namespace flags in clone()/unshare() flags: a workload may create
 * threads and processes, never namespaces. (CLONE_NEWTIME shares its bit
 * with CSIGNAL in clone(), so it is only checked for unshare.) */
#define NAMESPACE_FLAGS                                                                                       \
        ((uint64_t)(CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | \
                    CLONE_NEWNET))
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

/* personality(): only the values Docker allows (Linux, PER_LINUX32,
 * UNAME26, both, and the query). Others (e.g. READ_IMPLIES_EXEC,
 * ADDR_NO_RANDOMIZE) weaken exploit mitigations. */
static const uint64_t allowed_personalities[] = { 0x0, 0x8, 0x20000, 0x20008, 0xffffffff };

static int add_rule(scmp_filter_ctx ctx, uint32_t action, const char *name, unsigned count,
                    const struct scmp_arg_cmp *compare, struct moat_error **err)
{
        int number = seccomp_syscall_resolve_name(name);
        int r;

        if (number < 0)
                return 0; /* not on this architecture */
        r = seccomp_rule_add_array(ctx, action, number, count, compare);
        if (r < 0)
                return moat_error_system(err, -r, "seccomp_rule_add `%s`", name);
        return 0;
}

static void release_context(scmp_filter_ctx *ctx)
{
        if (*ctx)
                seccomp_release(*ctx);
}

int moat_seccomp_build(struct sock_fprog *ret_program, struct moat_error **err)
{
        __attribute__((cleanup(release_context))) scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
        _cleanup_close_ int memfd = -1;
        struct sock_filter *filter;
        struct stat st;
        int r;

        if (!ctx)
                return moat_error_system(err, ENOMEM, "seccomp_init");
        /* i386 and x32 are not in the filter: any syscall made through them
         * kills the whole process. */
        r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
        if (r == 0)
                r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0); /* the child sets it itself */
        if (r < 0)
                return moat_error_system(err, -r, "seccomp_attr_set");

        for (size_t i = 0; i < MOAT_ARRAY_SIZE(allowed_syscalls); i++)
                if (add_rule(ctx, SCMP_ACT_ALLOW, allowed_syscalls[i], 0, NULL, err) < 0)
                        return -1;

        struct scmp_arg_cmp no_namespace_clone = SCMP_A0(SCMP_CMP_MASKED_EQ, NAMESPACE_FLAGS, 0);
        struct scmp_arg_cmp no_namespace_unshare = SCMP_A0(SCMP_CMP_MASKED_EQ, NAMESPACE_FLAGS | CLONE_NEWTIME, 0);
        if (add_rule(ctx, SCMP_ACT_ALLOW, "clone", 1, &no_namespace_clone, err) < 0 ||
            add_rule(ctx, SCMP_ACT_ALLOW, "unshare", 1, &no_namespace_unshare, err) < 0)
                return -1;
        /* Socket families: an allowlist. Everything else (packet, XDP, vsock,
         * bluetooth, AppleTalk, ...) is kernel attack surface no workload
         * here needs; it fails with the default EPERM. */
        static const int allowed_families[] = { AF_UNIX, AF_INET, AF_INET6 };
        for (size_t i = 0; i < sizeof(allowed_families) / sizeof(allowed_families[0]); i++) {
                struct scmp_arg_cmp family = SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)allowed_families[i]);
                if (add_rule(ctx, SCMP_ACT_ALLOW, "socket", 1, &family, err) < 0)
                        return -1;
        }
        /* Netlink: only NETLINK_ROUTE (getifaddrs, `ip addr`) and
         * NETLINK_SOCK_DIAG (`ss`), both confined to the sandbox's own
         * network namespace. The rest is refused as a kernel without the
         * protocol would (EPROTONOSUPPORT), so tools fall back: among them
         * NETLINK_KOBJECT_UEVENT, whose untagged events (block and loop
         * devices, other sandboxes' volumes) reach every namespace owned by
         * the host's user namespace, as the sandbox's is; and netfilter,
         * crypto, xfrm, generic and connector families, kernel attack
         * surface no workload here needs. */
        for (int protocol = 0; protocol < 32; protocol++) {
                bool allowed = protocol == NETLINK_ROUTE || protocol == NETLINK_SOCK_DIAG;
                struct scmp_arg_cmp netlink[] = {
                        SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)AF_NETLINK),
                        SCMP_A2(SCMP_CMP_EQ, (scmp_datum_t)protocol),
                };
                if (add_rule(ctx, allowed ? SCMP_ACT_ALLOW : SCMP_ACT_ERRNO(EPROTONOSUPPORT), "socket", 2, netlink,
                             err) < 0)
                        return -1;
        }

        /* clone3 passes its flags in memory, which seccomp cannot read:
         * ENOSYS makes glibc fall back to clone(), whose flags we check. */
        if (add_rule(ctx, SCMP_ACT_ERRNO(ENOSYS), "clone3", 0, NULL, err) < 0)
                return -1;
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(allowed_personalities); i++) {
                struct scmp_arg_cmp persona = SCMP_A0(SCMP_CMP_EQ, allowed_personalities[i]);
                if (add_rule(ctx, SCMP_ACT_ALLOW, "personality", 1, &persona, err) < 0)
                        return -1;
        }

        memfd = memfd_create("moat-seccomp", MFD_CLOEXEC);
        if (memfd < 0)
                return moat_error_system(err, errno, "memfd_create");
        r = seccomp_export_bpf(ctx, memfd);
        if (r < 0)
                return moat_error_system(err, -r, "seccomp_export_bpf");
        if (fstat(memfd, &st) < 0)
                return moat_error_system(err, errno, "fstat seccomp memfd");
        if (st.st_size <= 0 || st.st_size % sizeof(struct sock_filter) != 0 ||
            st.st_size / sizeof(struct sock_filter) > BPF_MAXINSNS)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "seccomp program has a bad size %lld",
                                      (long long)st.st_size);
        filter = malloc((size_t)st.st_size);
        if (!filter)
                return moat_error_system(err, ENOMEM, "allocate seccomp program");
        if (pread(memfd, filter, (size_t)st.st_size, 0) != st.st_size) {
                free(filter);
                return moat_error_system(err, errno ? errno : EIO, "read seccomp program");
        }
        ret_program->filter = filter;
        ret_program->len = (unsigned short)(st.st_size / sizeof(struct sock_filter));
        return 0;
}

void moat_seccomp_free(struct sock_fprog *program)
{
        free(program->filter);
        program->filter = NULL;
        program->len = 0;
}

/* child: the last step before execveat(), so the filter never has to allow
 * what the set-up itself needs (mount, pivot_root, ...). */
int moat_seccomp_load(const struct sock_fprog *program, struct moat_child_report *report)
{
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, program) < 0)
                return moat_child_fail(report, MOAT_STEP_SECCOMP, errno, "seccomp", "SECCOMP_SET_MODE_FILTER");
        return 0;
}
