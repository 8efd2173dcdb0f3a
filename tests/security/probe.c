/* probe: the attacker's view of the kernel surface, for the adversarial
 * suite (tests/security/test_kernel_surface.py, test_escapes.py).
 *
 * Static and libc-only, so it runs in any image. Every subcommand prints one
 * line per attempt, "<name>\t<outcome>", where outcome is "ok", an errno name
 * (EPERM, EINVAL...) or "signal=<n>" when the attempt's process was killed.
 * Each attempt runs in a forked child, so a seccomp KILL (SIGSYS) or any other
 * fatal signal is seen and does not end the probe.
 *
 * The same binary runs inside a sandbox and on the host (as root, no filter):
 * the arguments of every call are chosen HARMLESS and INVALID, so that a call
 * which gets past the seccomp filter into the kernel is answered by the
 * kernel with something other than EPERM (EINVAL, EBADF, EFAULT, ENOENT...),
 * and so that running it as host root changes nothing. The test compares
 * both runs: EPERM in the sandbox where the host says EINVAL proves the
 * filter answered.
 *
 * Subcommands:
 *   syscalls       denied (and a few allowed) syscalls with harmless arguments
 *   abi            i386 (int $0x80) and x32 entry points
 *   sockets        socket(family, type, 0) for every family and 4 types
 *   exe            CVE-2019-5736 class: write/truncate/seal /proc/{self,1}/exe
 *   fds            every visible process's cwd, root and fds (+ "../.." walks):
 *                  device and inode, to be compared with the host's directories
 * "probe --sandbox-caps <subcommand>" first reduces its capabilities to the
 * sandbox's set (for an unfiltered baseline in a user namespace on the host).
 *
 *   cat PATH...    file contents; stat PATH...: type, rdev, mode (no shell needed)
 *   ids            real/effective/saved uid, capabilities, no_new_privs (run
 *                  as a setuid-root or file-capability copy of itself)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* x86_64 numbers of syscalls that older headers may lack. */
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif
#ifndef SYS_fspick
#define SYS_fspick 433
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif
#ifndef SYS_io_uring_enter
#define SYS_io_uring_enter 426
#endif
#ifndef SYS_io_uring_register
#define SYS_io_uring_register 427
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_quotactl_fd
#define SYS_quotactl_fd 443
#endif
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_memfd_secret
#define SYS_memfd_secret 447
#endif
#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif
#ifndef SYS_set_mempolicy_home_node
#define SYS_set_mempolicy_home_node 450
#endif
#ifndef SYS_statmount
#define SYS_statmount 457
#endif
#ifndef SYS_listmount
#define SYS_listmount 458
#endif
#ifndef SYS_lsm_get_self_attr
#define SYS_lsm_get_self_attr 459
#endif
#ifndef SYS_lsm_set_self_attr
#define SYS_lsm_set_self_attr 460
#endif
#ifndef SYS_lsm_list_modules
#define SYS_lsm_list_modules 461
#endif
#ifndef SYS_mseal
#define SYS_mseal 462
#endif
#ifndef SYS_open_tree_attr
#define SYS_open_tree_attr 467
#endif
#ifndef SYS_kcmp
#define SYS_kcmp 312
#endif

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#define X32_SYSCALL_BIT 0x40000000L
/* A path that exists nowhere: lookups fail with ENOENT. */
#define NOWHERE "/nonexistent-moat-probe/x"

static void print_outcome(const char *name, const char *outcome)
{
        printf("%s\t%s\n", name, outcome);
        fflush(stdout);
}

/* "ok", the errno's name, or "errno=<n>" for one glibc cannot name. */
static const char *errno_outcome(long result, int error, char *buffer, size_t size)
{
        const char *name;

        if (result >= 0)
                return "ok";
        name = strerrorname_np(error);
        if (name)
                return name;
        snprintf(buffer, size, "errno=%d", error);
        return buffer;
}

/* Runs attempt() in a child and reports how the child ended: the attempt's
 * outcome is passed back as the exit status (0 = ok, 1..254 = errno). */
static void run_attempt(const char *name, long (*attempt)(void))
{
        char buffer[32];
        int status;
        pid_t pid;

        fflush(stdout);
        pid = fork();
        if (pid < 0) {
                print_outcome(name, "fork-failed");
                return;
        }
        if (pid == 0) {
                long r;
                errno = 0;
                r = attempt();
                _exit(r >= 0 ? 0 : (errno > 0 && errno < 255 ? errno : 255));
        }
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        if (WIFSIGNALED(status)) {
                snprintf(buffer, sizeof(buffer), "signal=%d", WTERMSIG(status));
                print_outcome(name, buffer);
        } else if (WEXITSTATUS(status) == 0) {
                print_outcome(name, "ok");
        } else {
                print_outcome(name, errno_outcome(-1, WEXITSTATUS(status), buffer, sizeof(buffer)));
        }
}

/* ---- syscalls ------------------------------------------------------------ */

/* Every attempt: arguments invalid for the kernel, harmless as host root. */
static long try_bpf(void) { return syscall(SYS_bpf, 0x7fff, NULL, 0); } /* unknown command: EINVAL */
static long try_perf_event_open(void) { return syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0); } /* EFAULT */
static long try_userfaultfd(void) { return syscall(SYS_userfaultfd, 0xffffffffL); } /* bad flags: EINVAL */
static long try_keyctl(void) { return syscall(SYS_keyctl, 0x7fff, 0, 0, 0, 0); } /* unknown op: EOPNOTSUPP */
static long try_add_key(void) { return syscall(SYS_add_key, NULL, NULL, NULL, 0, 0); } /* EFAULT */
static long try_request_key(void) { return syscall(SYS_request_key, NULL, NULL, NULL, 0); } /* EFAULT */
static long try_kexec_load(void) { return syscall(SYS_kexec_load, 0, 0, NULL, 0xffffffffL); }
static long try_kexec_file_load(void) { return syscall(SYS_kexec_file_load, -1, -1, 0, NULL, 0xffffffffL); }
static long try_init_module(void) { return syscall(SYS_init_module, NULL, 0, ""); }
static long try_finit_module(void) { return syscall(SYS_finit_module, -1, "", 0xffffffffL); }
static long try_delete_module(void) { return syscall(SYS_delete_module, "moat-probe-none", 0); }
static long try_mount(void) { return syscall(SYS_mount, "none", NOWHERE, "tmpfs", 0, NULL); } /* ENOENT */
static long try_umount2(void) { return syscall(SYS_umount2, NOWHERE, 0xffffffffL); } /* bad flags: EINVAL */
static long try_pivot_root(void) { return syscall(SYS_pivot_root, NOWHERE, NOWHERE); }
static long try_setns(void) { return syscall(SYS_setns, -1, 0); } /* EBADF */
static long try_fsopen(void) { return syscall(SYS_fsopen, "moat-probe-nofs", 0xffffffffL); }
static long try_fsconfig(void) { return syscall(SYS_fsconfig, -1, 0x7fff, NULL, NULL, 0); } /* EINVAL */
static long try_fsmount(void) { return syscall(SYS_fsmount, -1, 0xffffffffL, 0); }
static long try_fspick(void) { return syscall(SYS_fspick, -1, "", 0xffffffffL); } /* bad flags: EINVAL */
static long try_open_tree(void) { return syscall(SYS_open_tree, -1, "", 0xffffffffL); } /* EINVAL */
static long try_open_tree_attr(void) { return syscall(SYS_open_tree_attr, -1, "", 0xffffffffL, NULL, 0); }
static long try_move_mount(void) { return syscall(SYS_move_mount, -1, "", -1, "", 0xffffffffL); }
static long try_mount_setattr(void) { return syscall(SYS_mount_setattr, -1, "", 0xffffffffL, NULL, 0); }
static long try_statmount(void) { return syscall(SYS_statmount, NULL, NULL, 0, 0xffffffffL); }
static long try_listmount(void) { return syscall(SYS_listmount, NULL, NULL, 0, 0xffffffffL); }
static long try_open_by_handle_at(void) { return syscall(SYS_open_by_handle_at, -1, NULL, 0); }
static long try_io_uring_setup(void) { return syscall(SYS_io_uring_setup, 0, NULL); } /* EINVAL/EFAULT */
static long try_io_uring_enter(void) { return syscall(SYS_io_uring_enter, -1, 0, 0, 0, NULL, 0); } /* EBADF */
static long try_io_uring_register(void) { return syscall(SYS_io_uring_register, -1, 0, NULL, 0); } /* EBADF */
static long try_modify_ldt(void)
{
        /* write_ldt with a wrong size: EINVAL. modify_ldt returns its result
         * truncated to 32 bits, so the kernel's -EINVAL arrives as a large
         * positive number; the filter's EPERM arrives as -1/errno. */
        long r = syscall(SYS_modify_ldt, 1, NULL, 0);
        if (r > 0 && (int)r < 0 && (int)r > -4096) {
                errno = -(int)r;
                return -1;
        }
        return r;
}
static long try_memfd_secret(void) { return syscall(SYS_memfd_secret, 0xffffffffL); } /* EINVAL */
static long try_quotactl(void) { return syscall(SYS_quotactl, 0, NOWHERE, 0, NULL); }
static long try_quotactl_fd(void) { return syscall(SYS_quotactl_fd, -1, 0, 0, NULL); } /* EBADF */
static long try_swapon(void) { return syscall(SYS_swapon, NOWHERE, 0); }
static long try_swapoff(void) { return syscall(SYS_swapoff, NOWHERE); }
static long try_reboot(void) { return syscall(SYS_reboot, 0, 0, 0, NULL); } /* bad magic: EINVAL */
static long try_acct(void) { return syscall(SYS_acct, NOWHERE); }
static long try_syslog(void) { return syscall(SYS_syslog, 0x7fff, NULL, 0); } /* unknown type: EINVAL */
static long try_lookup_dcookie(void) { return syscall(SYS_lookup_dcookie, 0, NULL, 0); }
static long try_nfsservctl(void) { return syscall(SYS_nfsservctl, 0, NULL, NULL); }
static long try_vhangup(void)
{
        /* Without a controlling terminal vhangup has nothing to hang up: the
         * host run must not hang up the terminal of whoever runs the test. */
        setsid();
        return syscall(SYS_vhangup);
}
static long try_iopl(void) { return syscall(SYS_iopl, 4); } /* level > 3: EINVAL */
static long try_ioperm(void) { return syscall(SYS_ioperm, 0, 0, 1); } /* num 0: EINVAL */
static long try_create_module(void) { return syscall(SYS_create_module, NULL, 0); }
static long try_get_kernel_syms(void) { return syscall(SYS_get_kernel_syms, NULL); }
static long try_query_module(void) { return syscall(SYS_query_module, NULL, 0, NULL, 0, NULL); }
static long try_uselib(void) { return syscall(SYS_uselib, NOWHERE); }
static long try_ustat(void) { return syscall(SYS_ustat, 0, NULL); }
static long try_sysfs(void) { return syscall(SYS_sysfs, 0x7fff, 0, 0); } /* unknown option: EINVAL */
static long try_sysctl(void) { return syscall(SYS__sysctl, NULL); }
static long try_settimeofday(void)
{
        struct timeval invalid = { .tv_sec = 0, .tv_usec = 2000000 }; /* EINVAL */
        return syscall(SYS_settimeofday, &invalid, NULL);
}
static long try_clock_settime(void)
{
        struct timespec zero = { 0, 0 };
        return syscall(SYS_clock_settime, (clockid_t)0x7fff, &zero); /* unknown clock: EINVAL */
}
static long try_adjtimex_set(void)
{
        /* ADJ_TICK with a tick 10% off: EINVAL for host root (nothing
         * changes), EPERM without CAP_SYS_TIME. adjtimex itself is allowed by
         * the filter (reading the clock state), so the capability answers. */
        struct timex timex = { .modes = ADJ_TICK, .tick = 1 };
        return syscall(SYS_adjtimex, &timex);
}
static long try_clock_adjtime_set(void)
{
        struct timex timex = { .modes = ADJ_TICK, .tick = 1 };
        return syscall(SYS_clock_adjtime, CLOCK_REALTIME, &timex);
}
static long try_sethostname(void)
{
        static const char name[100] = "moat-probe";
        return syscall(SYS_sethostname, name, sizeof(name)); /* len > 64: EINVAL */
}
static long try_setdomainname(void)
{
        static const char name[100] = "moat-probe";
        return syscall(SYS_setdomainname, name, sizeof(name));
}
static long try_mbind(void) { return syscall(SYS_mbind, NULL, 0, 0x7fff, NULL, 0, 0); } /* EINVAL */
static long try_set_mempolicy(void) { return syscall(SYS_set_mempolicy, 0x7fff, NULL, 0); } /* EINVAL */
static long try_get_mempolicy(void) { return syscall(SYS_get_mempolicy, NULL, NULL, 0, NULL, 0xffffffffL); }
static long try_move_pages(void) { return syscall(SYS_move_pages, 0, 0, NULL, NULL, NULL, 0xffffffffL); }
static long try_migrate_pages(void) { return syscall(SYS_migrate_pages, 0, 0x7fffffffL, NULL, NULL); }
static long try_set_mempolicy_home_node(void) { return syscall(SYS_set_mempolicy_home_node, 0, 0, 0, 0x7fff); }
static long try_fanotify_init(void) { return syscall(SYS_fanotify_init, 0xffffffffL, 0xffffffffL); }
static long try_lsm_get_self_attr(void) { return syscall(SYS_lsm_get_self_attr, 0x7fff, NULL, NULL, 0xffffffffL); }
static long try_lsm_set_self_attr(void) { return syscall(SYS_lsm_set_self_attr, 0x7fff, NULL, 0, 0xffffffffL); }
static long try_lsm_list_modules(void) { return syscall(SYS_lsm_list_modules, NULL, NULL, 0xffffffffL); }
static long try_process_madvise(void) { return syscall(SYS_process_madvise, -1, NULL, 0, 0, 0); } /* EBADF */
static long try_chroot(void) { return syscall(SYS_chroot, NOWHERE); }
static long try_mseal(void) { return syscall(SYS_mseal, 1, 0, 0xffffffffL); } /* EINVAL */
static long try_personality_read_implies_exec(void) { return syscall(SYS_personality, 0x0400000L); }
static long try_personality_addr_no_randomize(void) { return syscall(SYS_personality, 0x0040000L); }
static long clone_with(unsigned long flags)
{
        /* raw clone without a new stack: the child runs on a copy of ours,
         * like fork, and leaves at once. */
        long pid = syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, 0);
        if (pid == 0)
                _exit(0);
        if (pid > 0)
                waitpid((pid_t)pid, NULL, 0);
        return pid;
}
static long try_clone_newuser(void) { return clone_with(CLONE_NEWUSER); }
static long try_clone_newns(void) { return clone_with(CLONE_NEWNS); }
static long try_clone_newnet(void) { return clone_with(CLONE_NEWNET); }
static long try_clone_newpid(void) { return clone_with(CLONE_NEWPID); }
static long try_clone_newuts(void) { return clone_with(CLONE_NEWUTS); }
static long try_clone_newipc(void) { return clone_with(CLONE_NEWIPC); }
static long try_clone_newcgroup(void) { return clone_with(CLONE_NEWCGROUP); }
static long try_clone_plain(void) { return clone_with(0); }
static long try_clone3(void) { return syscall(SYS_clone3, NULL, 0); } /* size 0: EINVAL */
static long try_unshare_newuser(void) { return syscall(SYS_unshare, CLONE_NEWUSER); }
static long try_unshare_newns(void) { return syscall(SYS_unshare, CLONE_NEWNS); }
static long try_unshare_newnet(void) { return syscall(SYS_unshare, CLONE_NEWNET); }
static long try_unshare_newpid(void) { return syscall(SYS_unshare, CLONE_NEWPID); }
static long try_unshare_newuts(void) { return syscall(SYS_unshare, CLONE_NEWUTS); }
static long try_unshare_newipc(void) { return syscall(SYS_unshare, CLONE_NEWIPC); }
static long try_unshare_newcgroup(void) { return syscall(SYS_unshare, CLONE_NEWCGROUP); }
static long try_unshare_newtime(void) { return syscall(SYS_unshare, CLONE_NEWTIME); }
static long try_unshare_files(void) { return syscall(SYS_unshare, CLONE_FILES); }
/* Allowed by the filter (Docker allows them): shown so the test sees the
 * filter is not simply denying everything. */
static long try_kcmp(void) { return syscall(SYS_kcmp, getpid(), getpid(), 0 /* KCMP_FILE */, 0, 0); }
static long try_pidfd_getfd(void) { return syscall(SYS_pidfd_getfd, -1, 0, 0); } /* EBADF */
static long try_landlock(void) { return syscall(SYS_landlock_create_ruleset, NULL, 0, 1 /* VERSION */); }
static long try_name_to_handle_at(void) { return syscall(SYS_name_to_handle_at, -1, NOWHERE, NULL, NULL, 0); }
static long try_personality_query(void) { return syscall(SYS_personality, 0xffffffffL); }
static long try_getpid(void) { return syscall(SYS_getpid); }

struct attempt {
        const char *name;
        long (*attempt)(void);
};

static const struct attempt syscall_attempts[] = {
        { "bpf", try_bpf },
        { "perf_event_open", try_perf_event_open },
        { "userfaultfd", try_userfaultfd },
        { "keyctl", try_keyctl },
        { "add_key", try_add_key },
        { "request_key", try_request_key },
        { "kexec_load", try_kexec_load },
        { "kexec_file_load", try_kexec_file_load },
        { "init_module", try_init_module },
        { "finit_module", try_finit_module },
        { "delete_module", try_delete_module },
        { "mount", try_mount },
        { "umount2", try_umount2 },
        { "pivot_root", try_pivot_root },
        { "setns", try_setns },
        { "fsopen", try_fsopen },
        { "fsconfig", try_fsconfig },
        { "fsmount", try_fsmount },
        { "fspick", try_fspick },
        { "open_tree", try_open_tree },
        { "open_tree_attr", try_open_tree_attr },
        { "move_mount", try_move_mount },
        { "mount_setattr", try_mount_setattr },
        { "statmount", try_statmount },
        { "listmount", try_listmount },
        { "open_by_handle_at", try_open_by_handle_at },
        { "io_uring_setup", try_io_uring_setup },
        { "io_uring_enter", try_io_uring_enter },
        { "io_uring_register", try_io_uring_register },
        { "modify_ldt", try_modify_ldt },
        { "memfd_secret", try_memfd_secret },
        { "quotactl", try_quotactl },
        { "quotactl_fd", try_quotactl_fd },
        { "swapon", try_swapon },
        { "swapoff", try_swapoff },
        { "reboot", try_reboot },
        { "acct", try_acct },
        { "syslog", try_syslog },
        { "lookup_dcookie", try_lookup_dcookie },
        { "nfsservctl", try_nfsservctl },
        { "vhangup", try_vhangup },
        { "iopl", try_iopl },
        { "ioperm", try_ioperm },
        { "create_module", try_create_module },
        { "get_kernel_syms", try_get_kernel_syms },
        { "query_module", try_query_module },
        { "uselib", try_uselib },
        { "ustat", try_ustat },
        { "sysfs", try_sysfs },
        { "_sysctl", try_sysctl },
        { "settimeofday", try_settimeofday },
        { "clock_settime", try_clock_settime },
        { "adjtimex(set)", try_adjtimex_set },
        { "clock_adjtime(set)", try_clock_adjtime_set },
        { "sethostname", try_sethostname },
        { "setdomainname", try_setdomainname },
        { "mbind", try_mbind },
        { "set_mempolicy", try_set_mempolicy },
        { "get_mempolicy", try_get_mempolicy },
        { "move_pages", try_move_pages },
        { "migrate_pages", try_migrate_pages },
        { "set_mempolicy_home_node", try_set_mempolicy_home_node },
        { "fanotify_init", try_fanotify_init },
        { "lsm_get_self_attr", try_lsm_get_self_attr },
        { "lsm_set_self_attr", try_lsm_set_self_attr },
        { "lsm_list_modules", try_lsm_list_modules },
        { "process_madvise", try_process_madvise },
        { "chroot", try_chroot },
        { "mseal", try_mseal },
        { "personality(READ_IMPLIES_EXEC)", try_personality_read_implies_exec },
        { "personality(ADDR_NO_RANDOMIZE)", try_personality_addr_no_randomize },
        { "clone(NEWUSER)", try_clone_newuser },
        { "clone(NEWNS)", try_clone_newns },
        { "clone(NEWNET)", try_clone_newnet },
        { "clone(NEWPID)", try_clone_newpid },
        { "clone(NEWUTS)", try_clone_newuts },
        { "clone(NEWIPC)", try_clone_newipc },
        { "clone(NEWCGROUP)", try_clone_newcgroup },
        { "clone3", try_clone3 },
        { "unshare(NEWUSER)", try_unshare_newuser },
        { "unshare(NEWNS)", try_unshare_newns },
        { "unshare(NEWNET)", try_unshare_newnet },
        { "unshare(NEWPID)", try_unshare_newpid },
        { "unshare(NEWUTS)", try_unshare_newuts },
        { "unshare(NEWIPC)", try_unshare_newipc },
        { "unshare(NEWCGROUP)", try_unshare_newcgroup },
        { "unshare(NEWTIME)", try_unshare_newtime },
        /* allowed by the filter: */
        { "clone(plain)", try_clone_plain },
        { "unshare(FILES)", try_unshare_files },
        { "personality(query)", try_personality_query },
        { "kcmp", try_kcmp },
        { "pidfd_getfd", try_pidfd_getfd },
        { "landlock_create_ruleset", try_landlock },
        { "name_to_handle_at", try_name_to_handle_at },
        { "getpid", try_getpid },
};

static int command_syscalls(void)
{
        for (size_t i = 0; i < sizeof(syscall_attempts) / sizeof(syscall_attempts[0]); i++)
                run_attempt(syscall_attempts[i].name, syscall_attempts[i].attempt);
        return 0;
}

/* ---- abi ------------------------------------------------------------------ */

/* getpid through the i386 entry point: the 32-bit syscall table (getpid is
 * 20 there). A 64-bit process may use int $0x80 when the kernel has
 * IA32_EMULATION; seccomp sees AUDIT_ARCH_I386, which the filter does not
 * list, so the process must be killed. */
static long try_int80_getpid(void)
{
        long result = 20;
        __asm__ volatile("int $0x80" : "+a"(result) : : "memory", "r8", "r9", "r10", "r11");
        if (result < 0 && result > -4096) {
                errno = (int)-result;
                return -1;
        }
        return result == getpid() ? 0 : (errno = EPROTO, -1);
}

/* The same through int $0x80 with a syscall the 64-bit table denies
 * (i386 unshare = 310, CLONE_NEWUSER): a filter that forgot the
 * architecture check would let it through. */
static long try_int80_unshare(void)
{
        long result = 310;
        __asm__ volatile("int $0x80" : "+a"(result) : "b"((long)CLONE_NEWUSER) : "memory", "r8", "r9", "r10",
                         "r11");
        if (result < 0 && result > -4096) {
                errno = (int)-result;
                return -1;
        }
        return result;
}

/* getpid through the x32 numbering (64-bit entry, bit 30 set). */
static long try_x32_getpid(void) { return syscall(SYS_getpid | X32_SYSCALL_BIT); }
static long try_x32_bpf(void) { return syscall(SYS_bpf | X32_SYSCALL_BIT, 0x7fff, NULL, 0); }

static int command_abi(void)
{
        run_attempt("i386:getpid", try_int80_getpid);
        run_attempt("i386:unshare(NEWUSER)", try_int80_unshare);
        run_attempt("x32:getpid", try_x32_getpid);
        run_attempt("x32:bpf", try_x32_bpf);
        run_attempt("x86_64:getpid", try_getpid);
        return 0;
}

/* ---- sockets --------------------------------------------------------------- */

static int socket_family;
static int socket_type;
static int socket_protocol;

static long try_socket(void)
{
        int fd = socket(socket_family, socket_type, socket_protocol);
        if (fd >= 0)
                close(fd);
        return fd;
}

static int command_sockets(void)
{
        static const struct { int type; const char *name; } types[] = {
                { SOCK_STREAM, "STREAM" }, { SOCK_DGRAM, "DGRAM" }, { SOCK_RAW, "RAW" },
                { SOCK_SEQPACKET, "SEQPACKET" },
        };
        char name[64];

        for (int family = 0; family <= AF_MAX; family++)
                for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
                        socket_family = family;
                        socket_type = types[t].type;
                        snprintf(name, sizeof(name), "socket:%d:%s", family, types[t].name);
                        run_attempt(name, try_socket);
                }
        /* Raw IP needs a protocol (0 is EPROTONOSUPPORT): ICMP and ICMPv6,
         * what a ping or a packet forger would open. */
        socket_type = SOCK_RAW;
        socket_family = AF_INET;
        socket_protocol = 1;
        run_attempt("socket:2:RAW:ICMP", try_socket);
        socket_family = AF_INET6;
        socket_protocol = 58;
        run_attempt("socket:10:RAW:ICMPV6", try_socket);
        return 0;
}

/* ---- exe: CVE-2019-5736 class ---------------------------------------------- */

static const char *exe_path;

static long try_open_exe_write(void) { return open(exe_path, O_WRONLY); }
static long try_open_exe_rdwr(void) { return open(exe_path, O_RDWR); }
static long try_truncate_exe(void) { return truncate(exe_path, 0); }
/* Read-only fd, then the operations that would change the file behind it. */
static long try_exe_fd_write(void)
{
        int fd = open(exe_path, O_RDONLY);
        if (fd < 0)
                return -1;
        return write(fd, "", 1);
}
static long try_exe_fd_ftruncate(void)
{
        int fd = open(exe_path, O_RDONLY);
        if (fd < 0)
                return -1;
        return ftruncate(fd, 0);
}
static long try_exe_fd_add_seals(void)
{
        int fd = open(exe_path, O_RDONLY);
        if (fd < 0)
                return -1;
        /* Removing seals is impossible; adding one would prove the fd is a
         * memfd that accepts changes (F_SEAL_SEAL must already be set). */
        return fcntl(fd, F_ADD_SEALS, F_SEAL_GROW);
}
static long try_exe_fd_get_seals(void)
{
        int fd = open(exe_path, O_RDONLY);
        long seals;
        if (fd < 0)
                return -1;
        seals = fcntl(fd, F_GET_SEALS);
        if (seals < 0)
                return -1;
        /* Report the seals as the outcome line of its own. */
        printf("%s:seals\t%ld\n", exe_path, seals);
        fflush(stdout);
        return 0;
}
/* Reopening the fd through /proc/self/fd/N for writing (the 2019 trick). */
static long try_exe_reopen_write(void)
{
        char path[64];
        int fd = open(exe_path, O_PATH);
        if (fd < 0)
                return -1;
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        return open(path, O_WRONLY);
}
static long try_exe_mmap_shared_write(void)
{
        int fd = open(exe_path, O_RDONLY);
        void *map;
        if (fd < 0)
                return -1;
        map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        return map == MAP_FAILED ? -1 : 0;
}

static int command_exe(int argc, char **argv)
{
        static const struct attempt attempts[] = {
                { "open-wronly", try_open_exe_write }, { "open-rdwr", try_open_exe_rdwr },
                { "truncate", try_truncate_exe }, { "fd-write", try_exe_fd_write },
                { "fd-ftruncate", try_exe_fd_ftruncate }, { "fd-add-seals", try_exe_fd_add_seals },
                { "fd-get-seals", try_exe_fd_get_seals }, { "reopen-wronly", try_exe_reopen_write },
                { "mmap-shared-write", try_exe_mmap_shared_write },
        };
        char name[256];

        for (int i = 0; i < argc; i++) {
                exe_path = argv[i];
                for (size_t a = 0; a < sizeof(attempts) / sizeof(attempts[0]); a++) {
                        snprintf(name, sizeof(name), "%s:%s", argv[i], attempts[a].name);
                        run_attempt(name, attempts[a].attempt);
                }
        }
        return 0;
}

/* ---- fds: CVE-2024-21626 class --------------------------------------------- */

/* One line per object reachable through /proc: "obj <path> <major>:<minor>
 * <inode> <type>" (type d/f/o); for directories also the directory four
 * levels up from it, reached with openat(fd, "../../../.."). */
static void report_object(const char *path)
{
        struct stat st;
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

        if (fd < 0) {
                /* sockets, pipes and anon inodes cannot be reopened: stat
                 * through the link instead. */
                if (stat(path, &st) == 0)
                        printf("obj\t%s\t%u:%u\t%llu\t%c\n", path, major(st.st_dev), minor(st.st_dev),
                               (unsigned long long)st.st_ino, S_ISDIR(st.st_mode) ? 'd' : 'o');
                return;
        }
        if (fstat(fd, &st) == 0) {
                printf("obj\t%s\t%u:%u\t%llu\t%c\n", path, major(st.st_dev), minor(st.st_dev),
                       (unsigned long long)st.st_ino, S_ISDIR(st.st_mode) ? 'd' : S_ISREG(st.st_mode) ? 'f' : 'o');
                if (S_ISDIR(st.st_mode)) {
                        int up = openat(fd, "../../../../../../..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                        struct stat upst;
                        if (up >= 0 && fstat(up, &upst) == 0)
                                printf("obj\t%s/../../../../../../..\t%u:%u\t%llu\td\n", path, major(upst.st_dev),
                                       minor(upst.st_dev), (unsigned long long)upst.st_ino);
                        if (up >= 0)
                                close(up);
                }
        }
        close(fd);
}

static int command_fds(void)
{
        DIR *proc = opendir("/proc");
        struct dirent *entry;
        char path[1024];

        if (!proc) {
                perror("opendir /proc");
                return 1;
        }
        while ((entry = readdir(proc))) {
                DIR *fds;
                struct dirent *fd_entry;
                char *end;

                strtol(entry->d_name, &end, 10);
                if (*end || entry->d_name[0] == '\0' || entry->d_name[0] == '.')
                        continue;
                snprintf(path, sizeof(path), "/proc/%s/cwd", entry->d_name);
                report_object(path);
                snprintf(path, sizeof(path), "/proc/%s/root", entry->d_name);
                report_object(path);
                snprintf(path, sizeof(path), "/proc/%s/fd", entry->d_name);
                fds = opendir(path);
                if (!fds) {
                        printf("nofds\t%s\t%s\n", path, strerrorname_np(errno) ?: "?");
                        continue;
                }
                while ((fd_entry = readdir(fds))) {
                        if (fd_entry->d_name[0] == '.')
                                continue;
                        snprintf(path, sizeof(path), "/proc/%s/fd/%s", entry->d_name, fd_entry->d_name);
                        report_object(path);
                }
                closedir(fds);
        }
        closedir(proc);
        fflush(stdout);
        return 0;
}

/* ---- setuid / ids ---------------------------------------------------------- */

static int command_ids(void)
{
        uid_t real, effective, saved;
        char line[256];
        FILE *status;

        getresuid(&real, &effective, &saved);
        printf("uid\t%u %u %u\n", real, effective, saved);
        status = fopen("/proc/self/status", "r");
        while (status && fgets(line, sizeof(line), status))
                if (!strncmp(line, "CapEff:", 7) || !strncmp(line, "CapPrm:", 7) || !strncmp(line, "NoNewPrivs:", 11))
                        fputs(line, stdout);
        if (status)
                fclose(status);
        return 0;
}

/* The sandbox's capability set (docs/SECURITY.md layer 11): used with
 * --sandbox-caps on the host, inside a fresh user namespace, to learn what the
 * kernel itself would answer to the sandbox's root if the seccomp filter were
 * not there. */
static const int sandbox_capabilities[] = {
        CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_KILL, CAP_SETGID, CAP_SETUID,
        CAP_SETPCAP, CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_AUDIT_WRITE, CAP_SETFCAP,
};

static int keep_sandbox_capabilities(void)
{
        struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct data[2];
        uint64_t mask = 0;

        for (size_t i = 0; i < sizeof(sandbox_capabilities) / sizeof(sandbox_capabilities[0]); i++)
                mask |= 1ULL << sandbox_capabilities[i];
        for (int capability = 0; capability <= 63; capability++)
                if (!(mask & (1ULL << capability)) && prctl(PR_CAPBSET_DROP, capability) < 0 && errno != EINVAL)
                        return -1;
        memset(data, 0, sizeof(data));
        data[0].effective = data[0].permitted = (uint32_t)mask;
        data[1].effective = data[1].permitted = (uint32_t)(mask >> 32);
        return syscall(SYS_capset, &header, data) < 0 ? -1 : 0;
}

/* For images without a shell: file contents and lstat() of paths. */
static int command_cat(int argc, char **argv)
{
        char buffer[4096];
        for (int i = 0; i < argc; i++) {
                int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
                ssize_t n;
                if (fd < 0) {
                        printf("cat\t%s\t%s\n", argv[i], strerrorname_np(errno) ?: "?");
                        continue;
                }
                while ((n = read(fd, buffer, sizeof(buffer))) > 0)
                        fwrite(buffer, 1, (size_t)n, stdout);
                close(fd);
        }
        return 0;
}

static int command_stat(int argc, char **argv)
{
        for (int i = 0; i < argc; i++) {
                struct stat st;
                if (lstat(argv[i], &st) < 0) {
                        printf("stat\t%s\t%s\n", argv[i], strerrorname_np(errno) ?: "?");
                        continue;
                }
                printf("stat\t%s\t%s\t%u:%u\t%llo\n", argv[i],
                       S_ISLNK(st.st_mode) ? "link" : S_ISCHR(st.st_mode) ? "char" : S_ISDIR(st.st_mode) ? "dir"
                       : S_ISREG(st.st_mode) ? "file" : "other",
                       major(st.st_rdev), minor(st.st_rdev), (unsigned long long)(st.st_mode & 07777));
        }
        return 0;
}

int main(int argc, char **argv)
{
        if (argc > 1 && !strcmp(argv[1], "--sandbox-caps")) {
                if (keep_sandbox_capabilities() < 0) {
                        perror("probe: drop capabilities");
                        return 1;
                }
                argc--;
                argv++;
        }
        if (argc < 2) {
                fprintf(stderr, "usage: probe syscalls|abi|sockets|exe PATH...|fds|ids\n");
                return 2;
        }
        /* Our own children only: no zombies, and the output in order. */
        setvbuf(stdout, NULL, _IOLBF, 0);
        if (!strcmp(argv[1], "syscalls"))
                return command_syscalls();
        if (!strcmp(argv[1], "abi"))
                return command_abi();
        if (!strcmp(argv[1], "sockets"))
                return command_sockets();
        if (!strcmp(argv[1], "exe"))
                return command_exe(argc - 2, argv + 2);
        if (!strcmp(argv[1], "fds"))
                return command_fds();
        if (!strcmp(argv[1], "ids"))
                return command_ids();
        if (!strcmp(argv[1], "cat"))
                return command_cat(argc - 2, argv + 2);
        if (!strcmp(argv[1], "stat"))
                return command_stat(argc - 2, argv + 2);
        fprintf(stderr, "probe: unknown subcommand %s\n", argv[1]);
        return 2;
}
