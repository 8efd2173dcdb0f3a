/* The sandbox's filesystem view, built by the child inside its own mount
 * namespace (so every mount vanishes with the sandbox: nothing to clean up
 * on the host), then entered with pivot_root.
 *
 *   scratch tmpfs (size = disk_bytes, charged to the sandbox's memory cgroup)
 *     lower/<i>   idmapped read-only image layers, moved in from the parent
 *     upper/ work/  the private writable layer
 *     root/       overlay(lower/0:..., upper) = the sandbox's /
 *       usr       host /usr, idmapped, read-only (the `host` image)
 *       proc      a fresh procfs of the sandbox's pid namespace
 *       dev       tmpfs: null zero full random urandom tty bound from the host,
 *                 private devpts, shm, fd/stdin/stdout/stderr links
 *       sys       a fresh sysfs of its network namespace, read-only
 *       tmp       mode 1777 on the overlay
 *       etc/hosts, etc/hostname, etc/resolv.conf  generated
 *       <target>  each volume: an idmapped clone of its data dir, from the parent
 *
 * Every path inside the image is resolved with openat2(RESOLVE_IN_ROOT |
 * RESOLVE_NO_SYMLINKS) from the new root and mounted through its fd.
 * Defends against: a crafted image whose dev/proc/etc entries are symlinks
 * pointing at host paths, steering our mounts or writes onto the host view
 * (the runc CVE-2021-30465 class). */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../common/cleanup.h"
#include "cell_internal.h"

#define NOSUID_NODEV_NOEXEC (MS_NOSUID | MS_NODEV | MS_NOEXEC)

/* ---- parent side ---------------------------------------------------- */

int moat_rootfs_build_plan(struct moat_child_plan *plan, struct moat_error **err)
{
        const struct moat_cell_config *config = plan->config;
        size_t used;
        int n;

        snprintf(plan->scratch_tmpfs_options, sizeof(plan->scratch_tmpfs_options),
                 "size=%llu,mode=0755,uid=0,gid=0", (unsigned long long)config->disk_bytes);
        /* Relative paths: the child mounts with its cwd at the scratch root.
         * userxattr: overlay in a user namespace keeps its metadata in
         * user.overlay.* xattrs (trusted.* needs host CAP_SYS_ADMIN). */
        n = snprintf(plan->overlay_options, sizeof(plan->overlay_options), "lowerdir=");
        used = (size_t)n;
        for (unsigned i = 0; i < config->lower_count; i++) {
                n = snprintf(plan->overlay_options + used, sizeof(plan->overlay_options) - used, "%slower/%u",
                             i ? ":" : "", i);
                used += (size_t)n;
        }
        n = snprintf(plan->overlay_options + used, sizeof(plan->overlay_options) - used,
                     ",upperdir=upper,workdir=work,userxattr");
        if (n < 0 || used + (size_t)n >= sizeof(plan->overlay_options))
                return moat_error_invalid(err, "too many image layers");
        snprintf(plan->hosts, sizeof(plan->hosts),
                 "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n",
                 config->hostname);
        snprintf(plan->hostname_file, sizeof(plan->hostname_file), "%s\n", config->hostname);
        return 0;
}

/* ---- child side: no allocation from here on ------------------------- */

/* "/proc/self/fd/<fd>[/<name>]": a mount target that is exactly the
 * directory or file we opened, never a path re-resolved by name. */
static bool fd_path(char *out, size_t size, int fd, const char *name)
{
        out[0] = '\0';
        return moat_child_append(out, size, "/proc/self/fd/") && moat_child_append_unsigned(out, size, (unsigned)fd) &&
               (!name || (moat_child_append(out, size, "/") && moat_child_append(out, size, name)));
}

static int open_in_root(int root_fd, const char *path, int flags)
{
        struct open_how how = {
                .flags = (uint64_t)(flags | O_CLOEXEC | O_NOFOLLOW),
                .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        };
        return (int)syscall(SYS_openat2, root_fd, path, &how, sizeof(how));
}

/* An existing or new directory of the image, opened without following any
 * symlink. */
static int open_directory(int root_fd, const char *name, mode_t mode, int step, struct moat_child_report *report)
{
        int fd;

        if (mkdirat(root_fd, name, mode) < 0 && errno != EEXIST)
                return moat_child_fail(report, step, errno, "mkdirat", name);
        fd = open_in_root(root_fd, name, O_PATH | O_DIRECTORY);
        if (fd < 0)
                return moat_child_fail(report, step, errno, "openat2", name);
        return fd;
}

static int mount_on_fd(const char *source, int target_fd, const char *name, const char *type, unsigned long flags,
                       const char *data, int step, struct moat_child_report *report)
{
        char target[96];

        if (!fd_path(target, sizeof(target), target_fd, name))
                return moat_child_fail(report, step, ENAMETOOLONG, "mount", name ? name : "");
        if (mount(source, target, type, flags, data) < 0)
                return moat_child_fail(report, step, errno, "mount", name ? name : type ? type : source);
        return 0;
}

int moat_rootfs_mount_scratch(const struct moat_child_plan *plan, struct moat_child_report *report)
{
        const char *mountpoint = plan->runtime->rootfs_mountpoint;
        int fd;

        /* Private, recursively: nothing we mount propagates back to the host
         * (or to other sandboxes), and host mount events do not leak in. */
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
                return moat_child_fail(report, MOAT_STEP_MOUNT_PRIVATE, errno, "mount", "/ (MS_PRIVATE)");
        if (mount("moat", mountpoint, "tmpfs", MS_NOSUID | MS_NODEV, plan->scratch_tmpfs_options) < 0)
                return moat_child_fail(report, MOAT_STEP_SCRATCH_TMPFS, errno, "mount tmpfs", mountpoint);
        fd = open(mountpoint, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return moat_child_fail(report, MOAT_STEP_SCRATCH_TMPFS, errno, "open", mountpoint);
        return fd;
}

static int build_overlay(const struct moat_child_plan *plan, int scratch_fd, const int *mount_fds,
                         struct moat_child_report *report)
{
        static const char *const dirs[] = { "upper", "work", "lower", "root" };
        char name[32];

        if (fchdir(scratch_fd) < 0)
                return moat_child_fail(report, MOAT_STEP_OVERLAY, errno, "fchdir", "scratch");
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(dirs); i++)
                if (mkdirat(scratch_fd, dirs[i], 0755) < 0)
                        return moat_child_fail(report, MOAT_STEP_OVERLAY, errno, "mkdirat", dirs[i]);
        for (unsigned i = 0; i < plan->config->lower_count; i++) {
                name[0] = '\0';
                moat_child_append(name, sizeof(name), "lower/");
                moat_child_append_unsigned(name, sizeof(name), i);
                if (mkdirat(scratch_fd, name, 0755) < 0)
                        return moat_child_fail(report, MOAT_STEP_OVERLAY, errno, "mkdirat", name);
                if (syscall(SYS_move_mount, mount_fds[i], "", scratch_fd, name, MOVE_MOUNT_F_EMPTY_PATH) < 0)
                        return moat_child_fail(report, MOAT_STEP_OVERLAY, errno, "move_mount", plan->config->lowers[i]);
        }
        /* nosuid, nodev: defence in depth beside no_new_privs and the
         * kernel's own nodev for user-namespace mounts. */
        if (mount("overlay", "root", "overlay", MS_NOSUID | MS_NODEV, plan->overlay_options) < 0)
                return moat_child_fail(report, MOAT_STEP_OVERLAY, errno, "mount overlay", plan->overlay_options);
        return 0;
}

static int mount_host_usr(int root_fd, int usr_fd, struct moat_child_report *report)
{
        _cleanup_close_ int target = open_directory(root_fd, "usr", 0755, MOAT_STEP_HOST_USR, report);

        if (target < 0)
                return -1;
        if (syscall(SYS_move_mount, usr_fd, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
                return moat_child_fail(report, MOAT_STEP_HOST_USR, errno, "move_mount", "/usr");
        return 0;
}

static int mount_proc(int root_fd, struct moat_child_report *report)
{
        _cleanup_close_ int target = open_directory(root_fd, "proc", 0555, MOAT_STEP_PROC, report);

        if (target < 0)
                return -1;
        /* A procfs of the sandbox's own pid namespace: host processes are
         * invisible. The dangerous files are masked after pivot_root. */
        return mount_on_fd("proc", target, NULL, "proc", NOSUID_NODEV_NOEXEC, NULL, MOAT_STEP_PROC, report);
}

/* Device nodes cannot be made in a user namespace (no mknod), so the few a
 * program needs are bind-mounted from the host's /dev. Nothing else of the
 * host's /dev (disks, /dev/mem, /dev/kmsg, ...) is reachable. */
static const char *const host_devices[] = { "null", "zero", "full", "random", "urandom", "tty" };

static const struct {
        const char *name, *target;
} dev_links[] = {
        { "ptmx", "pts/ptmx" },      { "fd", "/proc/self/fd" },         { "stdin", "/proc/self/fd/0" },
        { "stdout", "/proc/self/fd/1" }, { "stderr", "/proc/self/fd/2" },
};

static int mount_dev(int root_fd, struct moat_child_report *report)
{
        _cleanup_close_ int target = open_directory(root_fd, "dev", 0755, MOAT_STEP_DEV, report);
        _cleanup_close_ int dev_fd = -1;
        struct mount_attr device_attr = { .attr_set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC };
        char source[32];

        if (target < 0 ||
            mount_on_fd("tmpfs", target, NULL, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=65536,nr_inodes=64",
                        MOAT_STEP_DEV, report) < 0)
                return -1;
        dev_fd = open_in_root(root_fd, "dev", O_PATH | O_DIRECTORY);
        if (dev_fd < 0)
                return moat_child_fail(report, MOAT_STEP_DEV, errno, "openat2", "dev");
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(host_devices); i++) {
                int fd = openat(dev_fd, host_devices[i], O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0666);
                if (fd < 0)
                        return moat_child_fail(report, MOAT_STEP_DEV, errno, "openat", host_devices[i]);
                close(fd);
                source[0] = '\0';
                moat_child_append(source, sizeof(source), "/dev/");
                moat_child_append(source, sizeof(source), host_devices[i]);
                if (mount_on_fd(source, dev_fd, host_devices[i], NULL, MS_BIND, NULL, MOAT_STEP_DEV, report) < 0)
                        return -1;
                /* A device bind needs dev, but nothing else: nosuid and
                 * noexec, so every writable mount in the sandbox carries at
                 * least those (the posture test checks it). */
                if (syscall(SYS_mount_setattr, dev_fd, host_devices[i], AT_SYMLINK_NOFOLLOW, &device_attr,
                            sizeof(device_attr)) < 0)
                        return moat_child_fail(report, MOAT_STEP_DEV, errno, "mount_setattr", host_devices[i]);
        }
        /* A new devpts instance: the sandbox's ptys are its own, and host
         * ttys are not reachable through it. */
        if (mkdirat(dev_fd, "pts", 0755) < 0 || mkdirat(dev_fd, "shm", 01777) < 0)
                return moat_child_fail(report, MOAT_STEP_DEV, errno, "mkdirat", "dev/pts, dev/shm");
        if (mount_on_fd("devpts", dev_fd, "pts", "devpts", MS_NOSUID | MS_NOEXEC,
                        "newinstance,ptmxmode=0666,mode=0620,gid=5", MOAT_STEP_DEV, report) < 0)
                return -1;
        /* POSIX shared memory: tmpfs pages are charged to the memory cgroup. */
        if (mount_on_fd("shm", dev_fd, "shm", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=1777,size=67108864",
                        MOAT_STEP_DEV, report) < 0)
                return -1;
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(dev_links); i++)
                if (symlinkat(dev_links[i].target, dev_fd, dev_links[i].name) < 0)
                        return moat_child_fail(report, MOAT_STEP_DEV, errno, "symlinkat", dev_links[i].name);
        return 0;
}

/* Every sandbox asks moatd's resolver, which moatd serves on this address
 * inside the sandbox's own network namespace (in mode none it answers
 * NXDOMAIN to everything, at once). */
#define MOAT_RESOLV_CONF "# moat: moatd's resolver, inside this sandbox's network namespace\nnameserver 127.0.0.53\n" \
                         "options edns0\n"

static int mount_sys(const struct moat_child_plan *plan, int root_fd, struct moat_child_report *report)
{
        _cleanup_close_ int target = open_directory(root_fd, "sys", 0555, MOAT_STEP_SYS, report);

        if (target < 0)
                return -1;
        /* A network namespace the host owns cannot be the subject of a sysfs
         * mount from inside the sandbox; moatd mounted one for it (read-only,
         * nosuid, nodev, noexec, locked so) before the clone. */
        if (plan->sysfs_fd >= 0) {
                if (syscall(SYS_move_mount, plan->sysfs_fd, "", target, "",
                            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
                        return moat_child_fail(report, MOAT_STEP_SYS, errno, "move_mount", "/sys");
                return 0;
        }
        /* Read-only: nothing under /sys may be changed from a sandbox. */
        return mount_on_fd("sysfs", target, NULL, "sysfs", MS_RDONLY | NOSUID_NODEV_NOEXEC, NULL, MOAT_STEP_SYS,
                           report);
}

static int make_tmp(int root_fd, struct moat_child_report *report)
{
        _cleanup_close_ int fd = -1;

        if (mkdirat(root_fd, "tmp", 01777) < 0 && errno != EEXIST)
                return moat_child_fail(report, MOAT_STEP_TMP, errno, "mkdirat", "tmp");
        fd = open_in_root(root_fd, "tmp", O_RDONLY | O_DIRECTORY);
        if (fd < 0)
                return moat_child_fail(report, MOAT_STEP_TMP, errno, "openat2", "tmp");
        /* mkdir applies moatd's umask; /tmp must be world-writable and sticky. */
        if (fchmod(fd, 01777) < 0)
                return moat_child_fail(report, MOAT_STEP_TMP, errno, "fchmod", "tmp");
        return 0;
}

/* Replace etc/<name> with a new regular file. The old entry is removed
 * first: if the image made it a symlink, we write our own file instead of
 * following the link. */
static int write_etc_file(int etc_fd, const char *name, const char *content, struct moat_child_report *report)
{
        size_t length = strlen(content);
        int fd;

        if (unlinkat(etc_fd, name, 0) < 0 && errno != ENOENT)
                return moat_child_fail(report, MOAT_STEP_ETC_FILES, errno, "unlinkat", name);
        fd = openat(etc_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0)
                return moat_child_fail(report, MOAT_STEP_ETC_FILES, errno, "openat", name);
        if (write(fd, content, length) != (ssize_t)length) {
                int saved = errno;
                close(fd);
                return moat_child_fail(report, MOAT_STEP_ETC_FILES, saved ? saved : EIO, "write", name);
        }
        close(fd);
        return 0;
}

static int write_etc_files(const struct moat_child_plan *plan, int root_fd, struct moat_child_report *report)
{
        _cleanup_close_ int etc_fd = open_directory(root_fd, "etc", 0755, MOAT_STEP_ETC_FILES, report);

        if (etc_fd < 0)
                return -1;
        if (write_etc_file(etc_fd, "hosts", plan->hosts, report) < 0 ||
            write_etc_file(etc_fd, "hostname", plan->hostname_file, report) < 0 ||
            write_etc_file(etc_fd, "resolv.conf", MOAT_RESOLV_CONF, report) < 0)
                return -1;
        return 0;
}

/* Mount a volume (an idmapped tree from the parent) on its target, made
 * inside the new root component by component. Each step is mkdirat + openat2
 * (RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS) relative to the previous
 * directory's fd, so a symlink the image placed anywhere on the path (say
 * /data -> /proc/self/root/etc) fails the set-up instead of steering the
 * mount onto another tree. Done before pivot_root: afterwards the sandbox
 * could not mount it (no CAP_SYS_ADMIN over the host's mounts). */
static int mount_volume(int root_fd, const struct moat_cell_bind *bind, int tree_fd, struct moat_child_report *report)
{
        char component[256];
        const char *p = bind->target;
        int directory = -1;

        while (*p == '/')
                p++;
        while (*p) {
                size_t n = strcspn(p, "/");
                int next;

                if (n >= sizeof(component)) {
                        if (directory >= 0)
                                close(directory);
                        return moat_child_fail(report, MOAT_STEP_OVERLAY, ENAMETOOLONG, "volume target", bind->target);
                }
                memcpy(component, p, n);
                component[n] = '\0';
                if (mkdirat(directory >= 0 ? directory : root_fd, component, 0755) < 0 && errno != EEXIST) {
                        int saved = errno;
                        if (directory >= 0)
                                close(directory);
                        return moat_child_fail(report, MOAT_STEP_OVERLAY, saved, "mkdirat volume target", bind->target);
                }
                next = open_in_root(directory >= 0 ? directory : root_fd, component, O_PATH | O_DIRECTORY);
                if (directory >= 0)
                        close(directory);
                if (next < 0)
                        return moat_child_fail(report, MOAT_STEP_OVERLAY, errno, "openat2 volume target", bind->target);
                directory = next;
                p += n;
                while (*p == '/')
                        p++;
        }
        if (directory < 0)
                return moat_child_fail(report, MOAT_STEP_OVERLAY, EINVAL, "volume target", bind->target);
        if (syscall(SYS_move_mount, tree_fd, "", directory, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0) {
                int saved = errno;
                close(directory);
                return moat_child_fail(report, MOAT_STEP_OVERLAY, saved, "move_mount volume", bind->target);
        }
        close(directory);
        return 0;
}

int moat_rootfs_build(const struct moat_child_plan *plan, int scratch_fd, const int *mount_fds,
                      unsigned mount_fd_count, struct moat_child_report *report)
{
        const struct moat_cell_config *config = plan->config;
        _cleanup_close_ int root_fd = -1;

        unsigned volumes_at = config->lower_count + (config->bind_host_usr ? 1u : 0u);

        if (mount_fd_count != volumes_at + config->bind_count)
                return moat_child_fail(report, MOAT_STEP_OVERLAY, EPROTO, "recvmsg", "mount fds");
        if (build_overlay(plan, scratch_fd, mount_fds, report) < 0)
                return -1;
        root_fd = open("root", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (root_fd < 0)
                return moat_child_fail(report, MOAT_STEP_OVERLAY, errno, "open", "root");
        if (config->bind_host_usr && mount_host_usr(root_fd, mount_fds[config->lower_count], report) < 0)
                return -1;
        if (mount_proc(root_fd, report) < 0 || mount_dev(root_fd, report) < 0 || mount_sys(plan, root_fd, report) < 0 ||
            make_tmp(root_fd, report) < 0 || write_etc_files(plan, root_fd, report) < 0)
                return -1;
        /* Last: a volume may sit under /tmp or /etc, made above. */
        for (unsigned i = 0; i < config->bind_count; i++)
                if (mount_volume(root_fd, &config->binds[i], mount_fds[volumes_at + i], report) < 0)
                        return -1;
        return TAKE_FD(root_fd);
}

int moat_rootfs_pivot(int root_fd, struct moat_child_report *report)
{
        /* pivot_root(".", "."): the old root is stacked under the new one and
         * detached at once, so no path to the host's tree remains (unlike
         * chroot, which a process with CAP_SYS_CHROOT can escape). */
        if (fchdir(root_fd) < 0)
                return moat_child_fail(report, MOAT_STEP_PIVOT_ROOT, errno, "fchdir", "root");
        if (syscall(SYS_pivot_root, ".", ".") < 0)
                return moat_child_fail(report, MOAT_STEP_PIVOT_ROOT, errno, "pivot_root", ".");
        if (umount2(".", MNT_DETACH) < 0)
                return moat_child_fail(report, MOAT_STEP_PIVOT_ROOT, errno, "umount2", "old root");
        if (chdir("/") < 0)
                return moat_child_fail(report, MOAT_STEP_PIVOT_ROOT, errno, "chdir", "/");
        return 0;
}

/* At least what Docker and runc do. Masked: hidden behind an empty
 * read-only tmpfs (directories) or /dev/null (files). They leak host
 * information (kernel memory, keyrings, timers of host processes, hardware)
 * or offer attack surface. */
static const char *const masked_paths[] = {
        "/proc/acpi",        "/proc/asound",     "/proc/kcore",      "/proc/keys",
        "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
        "/proc/scsi",        "/proc/interrupts", "/proc/config.gz",  "/sys/firmware",
        "/sys/devices/virtual/powercap",
};

/* Read-only: host-wide kernel knobs. Most are already refused to a non-init
 * user namespace; read-only makes that independent of each knob's checks. */
static const char *const read_only_paths[] = {
        "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
};

int moat_rootfs_mask_paths(struct moat_child_report *report)
{
        struct mount_attr read_only = { .attr_set = MOUNT_ATTR_RDONLY };
        struct mount_attr file_mask = { .attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC };
        struct stat st;

        for (size_t i = 0; i < MOAT_ARRAY_SIZE(masked_paths); i++) {
                const char *path = masked_paths[i];
                if (lstat(path, &st) < 0) {
                        if (errno == ENOENT)
                                continue;
                        return moat_child_fail(report, MOAT_STEP_MASK_PATHS, errno, "lstat", path);
                }
                if (S_ISDIR(st.st_mode) ? mount("tmpfs", path, "tmpfs", MS_RDONLY | NOSUID_NODEV_NOEXEC, "size=4k")
                                        : mount("/dev/null", path, NULL, MS_BIND, NULL))
                        return moat_child_fail(report, MOAT_STEP_MASK_PATHS, errno, "mount", path);
                /* A file mask reads as empty; read-only, nosuid, noexec so
                 * the mask itself offers nothing more than that. */
                if (!S_ISDIR(st.st_mode) &&
                    syscall(SYS_mount_setattr, AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, &file_mask, sizeof(file_mask)) < 0)
                        return moat_child_fail(report, MOAT_STEP_MASK_PATHS, errno, "mount_setattr", path);
        }
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(read_only_paths); i++) {
                const char *path = read_only_paths[i];
                if (mount(path, path, NULL, MS_BIND | MS_REC, NULL) < 0) {
                        if (errno == ENOENT)
                                continue;
                        return moat_child_fail(report, MOAT_STEP_MASK_PATHS, errno, "mount bind", path);
                }
                if (syscall(SYS_mount_setattr, AT_FDCWD, path, AT_RECURSIVE, &read_only, sizeof(read_only)) < 0)
                        return moat_child_fail(report, MOAT_STEP_MASK_PATHS, errno, "mount_setattr", path);
        }
        return 0;
}
