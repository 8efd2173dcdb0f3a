/* Host checks (see hostcheck.h). Each probe runs in a forked child that is
 * killed by alarm() if it hangs, so a probe can neither leak state into the
 * caller (namespaces, mounts, cgroups, seccomp filters) nor stall start-up. */
#include "hostcheck.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/magic.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cleanup.h"

#define CGROUP_ROOT "/sys/fs/cgroup"
/* A probe child that has not finished by then is stuck: SIGALRM kills it. */
#define PROBE_ALARM_SECONDS 2

/* What a probe child reports: the step that failed and its errno. */
struct probe_result {
        int error;       /* 0: the probe succeeded */
        char step[96];   /* e.g. "mount overlay" */
};

typedef void (*probe_body)(struct probe_result *result, void *userdata);

static void probe_fail(struct probe_result *result, const char *step)
{
        result->error = errno ? errno : EINVAL;
        snprintf(result->step, sizeof(result->step), "%s", step);
}

static void check_set(struct moat_hostcheck *check, const char *name, enum moat_hostcheck_status status,
                      const char *fix, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void check_set(struct moat_hostcheck *check, const char *name, enum moat_hostcheck_status status,
                      const char *fix, const char *fmt, ...)
{
        va_list ap;

        check->name = name;
        check->status = status;
        va_start(ap, fmt);
        vsnprintf(check->detail, sizeof(check->detail), fmt, ap);
        va_end(ap);
        snprintf(check->fix, sizeof(check->fix), "%s", fix ? fix : "");
}

static int write_file(const char *path, const char *text)
{
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
        size_t length = strlen(text);

        if (fd < 0)
                return -1;
        if (write(fd, text, length) != (ssize_t)length)
                return -1;
        return 0;
}

/* First line of a small file, without its newline; -1 if unreadable. */
static int read_line(const char *path, char *buffer, size_t size)
{
        _cleanup_fclose_ FILE *f = fopen(path, "re");

        if (!f || !fgets(buffer, (int)size, f))
                return -1;
        buffer[strcspn(buffer, "\n")] = '\0';
        return 0;
}

static long read_number(const char *path)
{
        char line[64];

        if (read_line(path, line, sizeof(line)) < 0)
                return -1;
        return strtol(line, NULL, 10);
}

/* Run body in a forked child joined to userns_fd (if >= 0) and unshared into
 * unshare_flags. The child is killed if it outlives PROBE_ALARM_SECONDS. */
static void probe_run(probe_body body, void *userdata, int userns_fd, int unshare_flags,
                      struct probe_result *ret_result)
{
        int pipe_fds[2];
        struct probe_result result = { .error = EIO, .step = "probe child died" };
        pid_t pid;
        int status;

        if (pipe2(pipe_fds, O_CLOEXEC) < 0) {
                probe_fail(ret_result, "pipe2");
                return;
        }
        pid = fork();
        if (pid < 0) {
                probe_fail(ret_result, "fork");
                close(pipe_fds[0]);
                close(pipe_fds[1]);
                return;
        }
        if (pid == 0) {
                struct probe_result child = { 0 };

                close(pipe_fds[0]);
                signal(SIGALRM, SIG_DFL); /* the caller may ignore it; the child must die */
                alarm(PROBE_ALARM_SECONDS);
                if (userns_fd >= 0) {
                        /* Become the namespace's root (host uid: the mapped one),
                         * as a sandbox's setup code is. */
                        if (setns(userns_fd, CLONE_NEWUSER) < 0)
                                probe_fail(&child, "setns user namespace");
                        else if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
                                probe_fail(&child, "become root in the user namespace");
                }
                if (!child.error && unshare_flags && unshare(unshare_flags) < 0)
                        probe_fail(&child, "unshare");
                if (!child.error)
                        body(&child, userdata);
                if (write(pipe_fds[1], &child, sizeof(child)) < 0)
                        _exit(2);
                _exit(0);
        }
        close(pipe_fds[1]);
        if (read(pipe_fds[0], &result, sizeof(result)) != sizeof(result))
                result = (struct probe_result){ .error = EIO, .step = "probe child died (timeout or crash)" };
        close(pipe_fds[0]);
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        *ret_result = result;
}

/* A user namespace with uid/gid 0 mapped to one unprivileged host id (or our
 * own id when not root), kept alive by the returned fd after its first
 * process exits. This is the real probe of "can we make a user namespace and
 * write its uid_map". Returns the fd, or -1 with ret_step and ret_error. */
static int userns_create(const char **ret_step, int *ret_error)
{
        int to_child[2], to_parent[2];
        char path[64], map[64], byte = 0;
        int fd = -1, status;
        pid_t pid;

        if (pipe2(to_child, O_CLOEXEC) < 0)
                return *ret_step = "pipe2", *ret_error = errno, -1;
        if (pipe2(to_parent, O_CLOEXEC) < 0) {
                *ret_step = "pipe2", *ret_error = errno;
                close(to_child[0]);
                close(to_child[1]);
                return -1;
        }
        pid = fork();
        if (pid == 0) {
                signal(SIGALRM, SIG_DFL);
                alarm(PROBE_ALARM_SECONDS);
                byte = unshare(CLONE_NEWUSER) < 0 ? (char)errno : 0;
                if (write(to_parent[1], &byte, 1) != 1 || byte)
                        _exit(1);
                /* Wait until the parent has mapped us and opened our namespace. */
                if (read(to_child[0], &byte, 1) < 0)
                        _exit(1);
                _exit(0);
        }
        close(to_child[0]);
        close(to_parent[1]);
        if (pid < 0) {
                *ret_step = "fork", *ret_error = errno;
                goto out;
        }
        if (read(to_parent[0], &byte, 1) != 1 || byte) {
                *ret_step = "unshare(CLONE_NEWUSER)", *ret_error = byte ? byte : EIO;
                goto out;
        }
        /* The sandbox's ids are never the host's root: map to nobody (65534)
         * when we are root, or to ourselves when we are not (all we may). */
        snprintf(path, sizeof(path), "/proc/%d/setgroups", (int)pid);
        if (geteuid() != 0 && write_file(path, "deny") < 0) {
                *ret_step = "write setgroups", *ret_error = errno;
                goto out;
        }
        snprintf(path, sizeof(path), "/proc/%d/uid_map", (int)pid);
        snprintf(map, sizeof(map), "0 %u 1\n", geteuid() == 0 ? 65534u : (unsigned)geteuid());
        if (write_file(path, map) < 0) {
                *ret_step = "write uid_map", *ret_error = errno;
                goto out;
        }
        snprintf(path, sizeof(path), "/proc/%d/gid_map", (int)pid);
        snprintf(map, sizeof(map), "0 %u 1\n", geteuid() == 0 ? 65534u : (unsigned)getegid());
        if (write_file(path, map) < 0) {
                *ret_step = "write gid_map", *ret_error = errno;
                goto out;
        }
        snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                *ret_step = "open ns/user", *ret_error = errno;
out:
        close(to_child[1]); /* lets the child exit */
        close(to_parent[0]);
        if (pid > 0) {
                kill(pid, SIGKILL);
                while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                        ;
        }
        return fd;
}

static void check_root(struct moat_hostcheck *check)
{
        if (geteuid() == 0)
                check_set(check, "root", MOAT_HOSTCHECK_OK, NULL, "running as root");
        else
                check_set(check, "root", MOAT_HOSTCHECK_FAIL, "run moatd as root: sudo moatd",
                          "running as uid %u; moatd needs root to create cgroups, map id ranges and set up networks",
                          (unsigned)geteuid());
}

static void check_user_namespaces(struct moat_hostcheck *check, int userns_fd, const char *step, int error)
{
        long max = read_number("/proc/sys/user/max_user_namespaces");
        long debian_switch = read_number("/proc/sys/kernel/unprivileged_userns_clone");
        long apparmor = read_number("/proc/sys/kernel/apparmor_restrict_unprivileged_userns");

        if (max == 0) {
                check_set(check, "user_namespaces", MOAT_HOSTCHECK_FAIL,
                          "sysctl -w user.max_user_namespaces=15000 (persist in /etc/sysctl.d/99-moat.conf)",
                          "user.max_user_namespaces is 0: user namespaces are disabled");
                return;
        }
        if (userns_fd < 0) {
                const char *fix = "enable user namespaces: sysctl -w user.max_user_namespaces=15000";

                if (geteuid() != 0 && debian_switch == 0)
                        fix = "sysctl -w kernel.unprivileged_userns_clone=1, or run as root";
                else if (geteuid() != 0 && apparmor == 1)
                        fix = "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or run as root";
                check_set(check, "user_namespaces", MOAT_HOSTCHECK_FAIL, fix, "probe failed at %s: %s", step,
                          strerror(error));
                return;
        }
        if (geteuid() != 0 && (debian_switch == 0 || apparmor == 1))
                check_set(check, "user_namespaces", MOAT_HOSTCHECK_WARN,
                          "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or run moatd as root)",
                          "user namespaces work, but unprivileged use is restricted (%s)",
                          debian_switch == 0 ? "kernel.unprivileged_userns_clone=0"
                                             : "kernel.apparmor_restrict_unprivileged_userns=1");
        else
                check_set(check, "user_namespaces", MOAT_HOSTCHECK_OK, NULL,
                          "user namespace created and uid_map written (max %ld)", max);
}

struct idmap_probe {
        const char *directory;
        int userns_fd;
};

static void idmap_probe_body(struct probe_result *result, void *userdata)
{
        struct idmap_probe *probe = userdata;
        struct mount_attr attr = { .attr_set = MOUNT_ATTR_IDMAP, .userns_fd = (__u64)probe->userns_fd };
        _cleanup_close_ int tree = -1;

        /* A detached copy of the mount: it vanishes with the fd, so the probe
         * never changes any mount table. */
        tree = (int)syscall(SYS_open_tree, AT_FDCWD, probe->directory, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
        if (tree < 0)
                return probe_fail(result, "open_tree");
        if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
                return probe_fail(result, "mount_setattr(MOUNT_ATTR_IDMAP)");
}

static void check_idmapped_mounts(struct moat_hostcheck *check, int userns_fd)
{
        char directory[] = "/tmp/moat-hostcheck-XXXXXX";
        struct idmap_probe probe = { .directory = directory, .userns_fd = userns_fd };
        struct probe_result result = { 0 };

        if (userns_fd < 0) {
                check_set(check, "idmapped_mounts", MOAT_HOSTCHECK_FAIL, "fix user_namespaces first",
                          "not probed: no user namespace");
                return;
        }
        if (!mkdtemp(directory)) {
                check_set(check, "idmapped_mounts", MOAT_HOSTCHECK_FAIL, "make /tmp writable",
                          "mkdtemp in /tmp: %s", strerror(errno));
                return;
        }
        probe_run(idmap_probe_body, &probe, -1, 0, &result);
        rmdir(directory);
        if (result.error)
                check_set(check, "idmapped_mounts", MOAT_HOSTCHECK_FAIL,
                          "use Linux >= 5.19 with /tmp and the data dir on a filesystem that supports idmapped "
                          "mounts (ext4, xfs, btrfs, tmpfs >= 6.3), and run as root",
                          "probe failed at %s: %s", result.step, strerror(result.error));
        else
                check_set(check, "idmapped_mounts", MOAT_HOSTCHECK_OK, NULL, "idmapped mount of a /tmp directory");
}

static bool filesystem_listed(const char *name)
{
        _cleanup_fclose_ FILE *f = fopen("/proc/filesystems", "re");
        char line[128];

        while (f && fgets(line, sizeof(line), f)) {
                char *field = strrchr(line, '\t');

                field = field ? field + 1 : line;
                field[strcspn(field, "\n")] = '\0';
                if (strcmp(field, name) == 0)
                        return true;
        }
        return false;
}

/* Inside a fresh user + mount namespace: a private tmpfs on /tmp (our copy
 * of the mount table only, never propagated back to the host). */
static int private_tmpfs(struct probe_result *result)
{
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
                return probe_fail(result, "make mounts private"), -1;
        if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755") < 0)
                return probe_fail(result, "mount tmpfs"), -1;
        return 0;
}

static void overlay_probe_body(struct probe_result *result, void *userdata)
{
        if (private_tmpfs(result) < 0)
                return;
        if (mkdir("/tmp/lower", 0755) < 0 || mkdir("/tmp/upper", 0755) < 0 || mkdir("/tmp/work", 0755) < 0 ||
            mkdir("/tmp/merged", 0755) < 0)
                return probe_fail(result, "mkdir overlay dirs");
        if (mount("overlay", "/tmp/merged", "overlay", 0,
                  "lowerdir=/tmp/lower,upperdir=/tmp/upper,workdir=/tmp/work") < 0)
                return probe_fail(result, "mount overlay");
}

static void check_overlayfs(struct moat_hostcheck *check, int userns_fd)
{
        struct probe_result result = { 0 };
        bool listed = filesystem_listed("overlay");

        if (userns_fd < 0) {
                check_set(check, "overlayfs", MOAT_HOSTCHECK_FAIL, "fix user_namespaces first",
                          "not probed: no user namespace");
                return;
        }
        probe_run(overlay_probe_body, NULL, userns_fd, CLONE_NEWNS, &result);
        if (result.error)
                check_set(check, "overlayfs", MOAT_HOSTCHECK_FAIL,
                          listed ? "use Linux >= 5.11 (overlayfs inside user namespaces)" : "modprobe overlay",
                          "overlay %s /proc/filesystems; probe failed at %s: %s", listed ? "in" : "not in",
                          result.step, strerror(result.error));
        else
                check_set(check, "overlayfs", MOAT_HOSTCHECK_OK, NULL,
                          "overlay over tmpfs mounted inside a user namespace");
}

static void seccomp_probe_body(struct probe_result *result, void *userdata)
{
        /* Fail getppid() with errno 77, allow everything else. */
        struct sock_filter filter[] = {
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 77),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog program = { .len = MOAT_ARRAY_SIZE(filter), .filter = filter };

        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
                return probe_fail(result, "PR_SET_NO_NEW_PRIVS");
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program, 0, 0) < 0)
                return probe_fail(result, "PR_SET_SECCOMP");
        errno = 0;
        if (syscall(SYS_getppid) != -1 || errno != 77) {
                errno = ENOSYS;
                return probe_fail(result, "filter did not apply");
        }
}

static void check_seccomp(struct moat_hostcheck *check)
{
        struct probe_result result = { 0 };
        char actions[256] = "";
        int mode = prctl(PR_GET_SECCOMP, 0, 0, 0, 0);

        if (read_line("/proc/sys/kernel/seccomp/actions_avail", actions, sizeof(actions)) < 0 ||
            !strstr(actions, "errno") || !strstr(actions, "kill_process")) {
                check_set(check, "seccomp", MOAT_HOSTCHECK_FAIL, "use a kernel built with CONFIG_SECCOMP_FILTER=y",
                          "seccomp actions missing (actions_avail: `%s`)", actions);
                return;
        }
        probe_run(seccomp_probe_body, NULL, -1, 0, &result);
        if (result.error)
                check_set(check, "seccomp", MOAT_HOSTCHECK_FAIL, "use a kernel built with CONFIG_SECCOMP_FILTER=y",
                          "probe failed at %s: %s", result.step, strerror(result.error));
        else if (mode == 2)
                check_set(check, "seccomp", MOAT_HOSTCHECK_WARN,
                          "run moatd outside a seccomp-confined container, or allow the syscalls moat needs",
                          "filters work, but moatd itself already runs under a seccomp filter (a container?)");
        else
                check_set(check, "seccomp", MOAT_HOSTCHECK_OK, NULL, "filter loaded in a child (actions: %s)", actions);
}

static bool is_filesystem(const char *path, long magic)
{
        struct statfs fs;

        return statfs(path, &fs) == 0 && fs.f_type == magic;
}

/* Our cgroup path in one hierarchy: "" -> the v2 line ("0::"), else the v1
 * line listing controller. */
static int own_cgroup(const char *controller, char *buffer, size_t size)
{
        _cleanup_fclose_ FILE *f = fopen("/proc/self/cgroup", "re");
        char line[4096];

        while (f && fgets(line, sizeof(line), f)) {
                char *controllers = strchr(line, ':'), *path;

                if (!controllers || !(path = strchr(controllers + 1, ':')))
                        continue;
                *path++ = '\0';
                controllers++;
                path[strcspn(path, "\n")] = '\0';
                if (*controller == '\0' ? strcmp(line, "0") == 0 && *controllers == '\0' : ({
                            bool found = false;
                            for (char *save = NULL, *name = strtok_r(controllers, ",", &save); name;
                                 name = strtok_r(NULL, ",", &save))
                                    found |= strcmp(name, controller) == 0;
                            found;
                    })) {
                        snprintf(buffer, size, "%s", path);
                        return 0;
                }
        }
        return -1;
}

/* Can we make (and remove) a child cgroup under directory? That is the
 * delegation moatd needs: sandboxes live under "<own cgroup>/moat". */
static int try_child_cgroup(const char *directory, char *failure, size_t size)
{
        char child[4096];

        snprintf(child, sizeof(child), "%s/moat-hostcheck-%d", directory, (int)getpid());
        if (mkdir(child, 0755) < 0) {
                snprintf(failure, size, "mkdir %.160s: %s", child, strerror(errno));
                return -1;
        }
        if (rmdir(child) < 0) {
                snprintf(failure, size, "rmdir %.160s: %s", child, strerror(errno));
                return -1;
        }
        return 0;
}

static bool in_user_namespace(void)
{
        char line[128];
        unsigned long inside, outside, count;

        /* The initial namespace maps all 2^32-1 ids from 0 to 0. */
        if (read_line("/proc/self/uid_map", line, sizeof(line)) < 0 ||
            sscanf(line, "%lu %lu %lu", &inside, &outside, &count) != 3)
                return false;
        return !(inside == 0 && outside == 0 && count == 4294967295UL);
}

static void check_cgroups(struct moat_hostcheck *check)
{
        static const char *const needed[] = { "memory", "pids", "cpu" };
        const char *container = in_user_namespace() ? " (inside a user namespace: an unprivileged container?)" : "";
        char path[4096], own[2048], failure[256] = "", missing[64] = "";
        bool v2 = is_filesystem(CGROUP_ROOT, CGROUP2_SUPER_MAGIC);
        bool hybrid = !v2 && is_filesystem(CGROUP_ROOT "/unified", CGROUP2_SUPER_MAGIC);
        const char *layout = v2 ? "v2" : hybrid ? "hybrid (v1 controllers)" : "v1";
        int failed = 0;

        if (v2) {
                char controllers[512] = "";

                if (own_cgroup("", own, sizeof(own)) < 0) {
                        check_set(check, "cgroups", MOAT_HOSTCHECK_FAIL, "mount cgroup2 on /sys/fs/cgroup",
                                  "no cgroup v2 line in /proc/self/cgroup");
                        return;
                }
                snprintf(path, sizeof(path), CGROUP_ROOT "%s/cgroup.controllers", strcmp(own, "/") ? own : "");
                read_line(path, controllers, sizeof(controllers));
                for (size_t i = 0; i < MOAT_ARRAY_SIZE(needed); i++) {
                        char padded[520], word[32];

                        snprintf(padded, sizeof(padded), " %s ", controllers);
                        snprintf(word, sizeof(word), " %s ", needed[i]);
                        if (!strstr(padded, word))
                                snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing), " %s",
                                         needed[i]);
                }
                snprintf(path, sizeof(path), CGROUP_ROOT "%s", strcmp(own, "/") ? own : "");
                failed = try_child_cgroup(path, failure, sizeof(failure));
        } else {
                for (size_t i = 0; i < MOAT_ARRAY_SIZE(needed); i++) {
                        snprintf(path, sizeof(path), CGROUP_ROOT "/%s", needed[i]);
                        if (!is_filesystem(path, CGROUP_SUPER_MAGIC) || own_cgroup(needed[i], own, sizeof(own)) < 0) {
                                snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing), " %s",
                                         needed[i]);
                                continue;
                        }
                        snprintf(path, sizeof(path), CGROUP_ROOT "/%s%s", needed[i], strcmp(own, "/") ? own : "");
                        if (!failed && try_child_cgroup(path, failure, sizeof(failure)) < 0)
                                failed = -1;
                }
        }
        if (*missing)
                check_set(check, "cgroups", MOAT_HOSTCHECK_FAIL,
                          v2 ? "enable the controllers for moatd's cgroup: run moatd as a systemd service with "
                               "Delegate=yes, or echo '+memory +pids +cpu' > /sys/fs/cgroup/cgroup.subtree_control"
                             : "mount the missing v1 controllers (or boot with systemd.unified_cgroup_hierarchy=1)",
                          "layout %s; missing controllers:%s%s", layout, missing, container);
        else if (failed)
                check_set(check, "cgroups", MOAT_HOSTCHECK_FAIL,
                          *container ? "run the container with a writable, delegated cgroup (e.g. docker run "
                                       "--cgroupns=private --privileged), or run moatd on the host"
                                     : "give moatd a writable cgroup: run it as root, or as a systemd service with "
                                       "Delegate=yes",
                          "layout %s; own cgroup not writable: %s%s", layout, failure, container);
        else
                check_set(check, "cgroups", *container ? MOAT_HOSTCHECK_WARN : MOAT_HOSTCHECK_OK,
                          *container ? "none needed; limits are nested inside the container's" : NULL,
                          "layout %s; memory, pids, cpu available; own cgroup delegated%s", layout, container);
}

static void pivot_root_probe_body(struct probe_result *result, void *userdata)
{
        if (private_tmpfs(result) < 0)
                return;
        if (mkdir("/tmp/old", 0755) < 0)
                return probe_fail(result, "mkdir /tmp/old");
        if (syscall(SYS_pivot_root, "/tmp", "/tmp/old") < 0)
                return probe_fail(result, "pivot_root");
        if (umount2("/old", MNT_DETACH) < 0)
                return probe_fail(result, "umount old root");
}

static void check_pivot_root(struct moat_hostcheck *check, int userns_fd)
{
        struct probe_result result = { 0 };

        if (userns_fd < 0) {
                check_set(check, "pivot_root", MOAT_HOSTCHECK_FAIL, "fix user_namespaces first",
                          "not probed: no user namespace");
                return;
        }
        probe_run(pivot_root_probe_body, NULL, userns_fd, CLONE_NEWNS, &result);
        if (result.error)
                check_set(check, "pivot_root", MOAT_HOSTCHECK_FAIL,
                          "boot from a real root filesystem, not initramfs/rootfs (pivot_root is refused there)",
                          "probe failed at %s: %s", result.step, strerror(result.error));
        else
                check_set(check, "pivot_root", MOAT_HOSTCHECK_OK, NULL, "pivot_root into a tmpfs in a mount namespace");
}

static void nothing(struct probe_result *result, void *userdata)
{
}

static void check_network_namespaces(struct moat_hostcheck *check, int userns_fd)
{
        struct probe_result result = { 0 };

        /* As root, moatd creates network namespaces from the host's user
         * namespace; otherwise only inside our own can we try. */
        probe_run(nothing, NULL, geteuid() == 0 ? -1 : userns_fd, CLONE_NEWNET, &result);
        if (result.error)
                check_set(check, "network_namespaces", MOAT_HOSTCHECK_FAIL,
                          "use a kernel built with CONFIG_NET_NS=y, and run moatd as root",
                          "probe failed at %s: %s", result.step, strerror(result.error));
        else
                check_set(check, "network_namespaces", MOAT_HOSTCHECK_OK, NULL, "unshare(CLONE_NEWNET) in a child");
}

int moat_hostcheck_run(struct moat_hostcheck *checks, size_t capacity, size_t *ret_count)
{
        struct moat_hostcheck all[MOAT_HOSTCHECK_MAX] = { 0 };
        const char *userns_step = NULL;
        int userns_error = 0, failures = 0;
        _cleanup_close_ int userns_fd = userns_create(&userns_step, &userns_error);
        size_t count = 0;

        check_root(&all[count++]);
        check_user_namespaces(&all[count++], userns_fd, userns_step, userns_error);
        check_idmapped_mounts(&all[count++], userns_fd);
        check_overlayfs(&all[count++], userns_fd);
        check_seccomp(&all[count++]);
        check_cgroups(&all[count++]);
        check_pivot_root(&all[count++], userns_fd);
        check_network_namespaces(&all[count++], userns_fd);

        /* Failures are counted over every check, even those that do not fit. */
        for (size_t i = 0; i < count; i++) {
                failures += all[i].status == MOAT_HOSTCHECK_FAIL;
                if (i < capacity)
                        checks[i] = all[i];
        }
        *ret_count = count < capacity ? count : capacity;
        return failures;
}

const char *moat_hostcheck_status_name(enum moat_hostcheck_status status)
{
        switch (status) {
        case MOAT_HOSTCHECK_OK:
                return "ok";
        case MOAT_HOSTCHECK_WARN:
                return "warn";
        case MOAT_HOSTCHECK_FAIL:
                return "fail";
        }
        return "fail";
}

void moat_hostcheck_print(FILE *out, const struct moat_hostcheck *checks, size_t count)
{
        static const char *const labels[] = { "ok", "WARN", "FAIL" };

        for (size_t i = 0; i < count; i++) {
                fprintf(out, "%-5s %-19s %s\n", labels[checks[i].status], checks[i].name, checks[i].detail);
                if (checks[i].status != MOAT_HOSTCHECK_OK && checks[i].fix[0])
                        fprintf(out, "      %-19s fix: %s\n", "", checks[i].fix);
        }
}
