/* File operations on a running sandbox through its root fd (see files.h). */
#include "files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <sys/vfs.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <event2/event.h>

#include "cell/cell.h"
#include "common/cleanup.h"
#include "common/passwd.h"
#include "sandbox.h"

/* Bounds of the recursive walks (remove -r, archive extraction): deeper
 * trees are refused rather than risking unbounded fd use. */
#define FILES_WALK_DEPTH_MAX 256
#define FILES_ARCHIVE_ENTRIES_MAX 100000

/* ---- errors and paths ---- */

int files_error_from_errno(struct moat_error **err, int errno_value, const char *operation, const char *path)
{
        switch (errno_value) {
        case ENOENT:
                return moat_error_set(err, MOAT_ERROR_NOT_FOUND, 0, NULL, "%s `%.512s`: no such file or directory",
                                      operation, path);
        case EISDIR:
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "is_a_directory", "%s `%.512s`: is a directory",
                                      operation, path);
        case ENOTDIR:
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "not_a_directory",
                                      "%s `%.512s`: a component is not a directory", operation, path);
        case EEXIST:
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "already_exists", "%s `%.512s`: already exists",
                                      operation, path);
        case ENOTEMPTY:
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "not_empty",
                                      "%s `%.512s`: directory not empty (use recursive)", operation, path);
        case ENOSPC:
        case EDQUOT:
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "disk_full",
                                      "%s `%.512s`: the sandbox's disk is full", operation, path);
        case ELOOP:
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "symlink_loop",
                                      "%s `%.512s`: too many levels of symbolic links", operation, path);
        case ENAMETOOLONG:
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, NULL, "%s `%.512s`: name too long",
                                      operation, path);
        case EROFS:
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "read_only", "%s `%.512s`: read-only file system",
                                      operation, path);
        case EBUSY:
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "busy", "%s `%.512s`: busy (a mount point?)",
                                      operation, path);
        case EXDEV:
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "cross_device",
                                      "%s `%.512s`: crosses a mount point", operation, path);
        default:
                return moat_error_system(err, errno_value, "%s `%.512s`", operation, path);
        }
}

int files_path_check(const char *path, struct moat_error **err)
{
        size_t length;

        if (!path || path[0] == '\0')
                return moat_error_invalid(err, "`path` is required");
        length = strlen(path);
        if (length > FILES_PATH_MAX)
                return moat_error_invalid(err, "`path` is longer than %d bytes", FILES_PATH_MAX);
        if (path[0] != '/')
                return moat_error_invalid(err, "`path` must be absolute (start with /)");
        /* Replies name the path in JSON, which holds only UTF-8: a path that
         * cannot be answered about is refused before anything is done. */
        {
                json_t *text = json_stringn(path, length);

                if (!text)
                        return moat_error_invalid(err, "`path` must be valid UTF-8");
                json_decref(text);
        }
        return 0;
}

int files_root_open(struct sandbox *sandbox, struct moat_error **err)
{
        char proc_path[64];
        struct pollfd pfd;
        _cleanup_close_ int fd = -1;

        if (sandbox->state != SANDBOX_RUNNING || !sandbox->cell || sandbox->cell->pid <= 0)
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "sandbox_not_running", "sandbox %s is not running",
                                      sandbox->id);
        snprintf(proc_path, sizeof(proc_path), "/proc/%d/root", (int)sandbox->cell->pid);
        fd = open(proc_path, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return moat_error_set(err, MOAT_ERROR_CONFLICT, errno, "sandbox_not_running", "open `%s`", proc_path);
        /* Defends against pid reuse: if init died before the open, the pid
         * may name another process by now. Its pidfd turns readable once it
         * exits, so an unreadable pidfd after the open proves the fd above is
         * init's root. */
        if (sandbox->cell->pidfd >= 0) {
                pfd = (struct pollfd){.fd = sandbox->cell->pidfd, .events = POLLIN};
                if (poll(&pfd, 1, 0) != 0)
                        return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "sandbox_not_running",
                                              "sandbox %s is stopping", sandbox->id);
        }
        return TAKE_FD(fd);
}

static int openat2_in_root(int root_fd, const char *path, int flags, mode_t mode)
{
        /* RESOLVE_IN_ROOT: root_fd is "/" for the walk (absolute symlinks and
         * ".." stay inside); RESOLVE_NO_MAGICLINKS: /proc/<pid>/fd/N style links
         * inside the sandbox could otherwise point at anything. */
        struct open_how how = {
                /* O_NOCTTY: opening a terminal node planted in (or bound
                 * into) the sandbox never makes it moatd's terminal
                 * (openat2 refuses it beside O_PATH, which opens nothing). */
                .flags = (uint64_t)(flags | O_CLOEXEC | ((flags & O_PATH) ? 0 : O_NOCTTY)),
                .mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
                .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        };
        int fd;

        /* EAGAIN: a concurrent rename made the kernel's ".." check unsafe;
         * it asks to retry. Bounded, so a rename loop cannot spin us. */
        for (int attempt = 0; attempt < 64; attempt++) {
                fd = (int)syscall(SYS_openat2, root_fd, path, &how, sizeof(how));
                if (fd >= 0 || errno != EAGAIN)
                        return fd;
        }
        return -1;
}

/* Kernel interfaces mounted in the sandbox (procfs, sysfs, cgroupfs, ...)
 * answer whoever opens them with that opener's credentials. moatd is host
 * root: through it /proc/kallsyms would show real kernel addresses,
 * /proc/1/environ and /proc/1/maps init's secrets, and writes would act with
 * host capabilities, all refused to the workload itself. The files API
 * serves the sandbox's files; kernel interfaces are read from inside (exec). */
bool files_on_kernel_filesystem(int fd)
{
        static const unsigned long kernel_filesystems[] = {
                PROC_SUPER_MAGIC,   SYSFS_MAGIC,     CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, DEBUGFS_MAGIC,
                TRACEFS_MAGIC,      SECURITYFS_MAGIC, BPF_FS_MAGIC,      SELINUX_MAGIC,       SMACK_MAGIC,
                PSTOREFS_MAGIC,     EFIVARFS_MAGIC,  BINFMTFS_MAGIC,     NSFS_MAGIC,          DEVPTS_SUPER_MAGIC,
                0x65735543 /* fusectl */, 0x62656570 /* configfs */,
        };
        struct statfs st;

        if (fstatfs(fd, &st) < 0)
                return true; /* cannot tell: refuse */
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(kernel_filesystems); i++)
                if ((unsigned long)st.f_type == kernel_filesystems[i])
                        return true;
        return false;
}

int files_open(int root_fd, const char *path, int flags, mode_t mode, struct moat_error **err)
{
        int fd = openat2_in_root(root_fd, path, flags, mode);

        if (fd < 0)
                return files_error_from_errno(err, errno, "open", path);
        if (files_on_kernel_filesystem(fd)) {
                close(fd);
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "kernel_filesystem",
                                      "`%.512s` is on a kernel filesystem (/proc, /sys, ...): read it from inside the "
                                      "sandbox with an exec",
                                      path);
        }
        return fd;
}

/* Split `path` into its parent (opened as a directory under the root) and
 * final component. The final component must be a real name: not empty, ".",
 * or ".." ("/" itself has no parent to act in). */
static int open_parent(int root_fd, const char *path, char ret_name[NAME_MAX + 1], struct moat_error **err)
{
        _cleanup_free_ char *copy = strdup(path);
        char *end, *slash, *name;

        if (!copy)
                return moat_error_system(err, ENOMEM, "strdup");
        end = copy + strlen(copy);
        while (end > copy + 1 && end[-1] == '/')
                *--end = '\0';
        slash = strrchr(copy, '/');
        name = slash + 1;
        if (name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
                return moat_error_invalid(err, "`%.512s` does not name a file (it ends in /, . or ..)", path);
        if (strlen(name) > NAME_MAX)
                return files_error_from_errno(err, ENAMETOOLONG, "open", path);
        snprintf(ret_name, NAME_MAX + 1, "%s", name);
        if (slash == copy)
                slash[1] = '\0';
        else
                *slash = '\0';
        return files_open(root_fd, copy, O_PATH | O_DIRECTORY, 0, err);
}


/* ---- acting as the sandbox user ----
 *
 * The sandbox's filesystems (its tmpfs layers) belong to its user namespace,
 * where host uid 0 has no mapping: the kernel refuses to create an inode
 * owned by an unmapped id (EOVERFLOW). So creations run with this thread's
 * filesystem ids set to the owner's host ids; the new inode is then owned
 * by the sandbox user from its first instant (no window where it is
 * host-root-owned). Changing fsuid away from 0 drops the filesystem
 * capabilities from the effective set; they are raised again (moatd keeps
 * them permitted), so permission checks stay those of host root, as for
 * every other operation here. Only the calling thread is affected, and it is
 * restored before returning to the loop. */
struct acting_identity {
        bool active;
};

static int capabilities_raise_effective(void)
{
        struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3};
        struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];

        if (syscall(SYS_capget, &header, data) < 0)
                return -1;
        for (size_t i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
                data[i].effective = data[i].permitted;
        return (int)syscall(SYS_capset, &header, data);
}

static int identity_enter(struct acting_identity *identity, const struct files_owner *owner,
                          struct moat_error **err)
{
        identity->active = false;
        if (!owner)
                return 0;
        setfsgid(owner->gid);
        setfsuid(owner->uid);
        if ((uid_t)setfsuid((uid_t)-1) != owner->uid || capabilities_raise_effective() < 0) {
                setfsuid(0);
                setfsgid(0);
                return moat_error_system(err, errno ? errno : EPERM, "act as uid %u", (unsigned)owner->uid);
        }
        identity->active = true;
        return 0;
}

static void identity_leave(struct acting_identity *identity)
{
        if (!identity->active)
                return;
        /* Back to fsuid 0: the kernel restores the filesystem capabilities. */
        setfsuid(0);
        setfsgid(0);
        (void)capabilities_raise_effective();
        identity->active = false;
}

#define _cleanup_identity_ _cleanup_(identity_leave)

/* ---- owners ---- */

int files_owner_resolve(struct sandbox *sandbox, int root_fd, const char *user, struct files_owner *ret_owner,
                        struct moat_error **err)
{
        struct moat_passwd_user resolved;
        char fd_path[64];
        const char *spec = user ? user : sandbox->config.user;
        _cleanup_close_ int passwd_fd = -1;
        int r;

        if (!spec || strcmp(spec, "root") == 0 || strcmp(spec, "") == 0) {
                *ret_owner = (struct files_owner){sandbox->host_id_base, sandbox->host_id_base};
                return 0;
        }
        /* The sandbox's own passwd, opened through the root so a symlinked
         * /etc/passwd cannot make us parse a host file; the parser then reads
         * the already-open file through its fd. */
        passwd_fd = openat2_in_root(root_fd, "/etc/passwd", O_RDONLY | O_NONBLOCK, 0);
        snprintf(fd_path, sizeof(fd_path), passwd_fd >= 0 ? "/proc/self/fd/%d" : "/nonexistent", passwd_fd);
        r = moat_passwd_resolve_user(fd_path, spec, &resolved);
        if (r == -ENOENT)
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "unknown_user",
                                      "no user `%.64s` in the sandbox's /etc/passwd", spec);
        if (r < 0)
                return moat_error_invalid(err, "`user` must be a user name or uid[:gid]");
        if (resolved.uid >= SANDBOX_ID_COUNT || resolved.gid >= SANDBOX_ID_COUNT)
                return moat_error_invalid(err, "user `%.64s` has an id outside the sandbox's range", spec);
        *ret_owner = (struct files_owner){sandbox->host_id_base + resolved.uid, sandbox->host_id_base + resolved.gid};
        return 0;
}

/* ---- stat and list ---- */

static const char *type_name(mode_t mode)
{
        if (S_ISREG(mode))
                return "file";
        if (S_ISDIR(mode))
                return "dir";
        if (S_ISLNK(mode))
                return "symlink";
        return "other";
}

static long long sandbox_id(uint32_t host_id, uint32_t id_base)
{
        /* Ids outside the sandbox's range show as the overflow id, like the
         * kernel does inside a user namespace. */
        if (host_id < id_base || host_id - id_base >= SANDBOX_ID_COUNT)
                return 65534;
        return host_id - id_base;
}

/* The stat object of `name` in dir_fd (not following a final symlink). */
static json_t *stat_json(int dir_fd, const char *name, const char *display_name, uint32_t id_base, int *ret_errno)
{
        struct stat st;
        char mode_text[16], target[FILES_PATH_MAX + 1];
        json_t *object;

        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW | (name[0] ? 0 : AT_EMPTY_PATH)) < 0) {
                *ret_errno = errno;
                return NULL;
        }
        snprintf(mode_text, sizeof(mode_text), "%04o", (unsigned)(st.st_mode & 07777));
        object = json_pack("{s:s,s:s,s:I,s:s,s:I,s:I,s:f,s:n}", "name", display_name, "type", type_name(st.st_mode),
                           "size", (json_int_t)st.st_size, "mode", mode_text, "uid",
                           (json_int_t)sandbox_id(st.st_uid, id_base), "gid", (json_int_t)sandbox_id(st.st_gid, id_base),
                           "mtime", (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9, "symlink_target");
        if (!object) {
                *ret_errno = ENOMEM;
                return NULL;
        }
        if (S_ISLNK(st.st_mode)) {
                ssize_t n = readlinkat(dir_fd, name, target, sizeof(target) - 1);

                if (n >= 0) {
                        target[n] = '\0';
                        json_object_set_new(object, "symlink_target", json_stringn(target, (size_t)n));
                }
        }
        return object;
}

static const char *base_name(const char *path)
{
        const char *slash = strrchr(path, '/');

        return slash && slash[1] ? slash + 1 : path;
}

json_t *files_stat(int root_fd, const char *path, uint32_t id_base, struct moat_error **err)
{
        char name[NAME_MAX + 1];
        _cleanup_close_ int parent_fd = -1, self_fd = -1;
        json_t *object;
        int errno_value = 0;

        if (strspn(path, "/") == strlen(path)) {
                /* "/" has no parent: stat the root itself. */
                object = stat_json(root_fd, "", "/", id_base, &errno_value);
        } else {
                struct moat_error *parent_err = NULL;

                parent_fd = open_parent(root_fd, path, name, &parent_err);
                if (parent_fd < 0 && parent_err->kind == MOAT_ERROR_INVALID_ARGUMENT) {
                        /* "/a/.." and friends: resolve the whole path instead. */
                        moat_error_free(parent_err);
                        self_fd = files_open(root_fd, path, O_PATH, 0, err);
                        if (self_fd < 0)
                                return NULL;
                        object = stat_json(self_fd, "", base_name(path), id_base, &errno_value);
                } else if (parent_fd < 0) {
                        *err = parent_err;
                        return NULL;
                } else {
                        object = stat_json(parent_fd, name, name, id_base, &errno_value);
                }
        }
        if (!object) {
                files_error_from_errno(err, errno_value, "stat", path);
                return NULL;
        }
        return object;
}

struct list_walk {
        json_t *entries;
        uint32_t id_base;
        size_t count;
};

static int list_dir(struct list_walk *walk, int dir_fd, const char *display_path, unsigned depth_left,
                    struct moat_error **err)
{
        _cleanup_close_ int fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        DIR *dir;
        struct dirent *entry;
        int r = 0;

        if (fd < 0)
                return files_error_from_errno(err, errno, "list", display_path);
        dir = fdopendir(fd);
        if (!dir)
                return files_error_from_errno(err, errno, "list", display_path);
        fd = -1;
        while ((entry = readdir(dir))) {
                _cleanup_free_ char *child_path = NULL;
                json_t *object;
                int errno_value = 0;

                if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
                        continue;
                if (++walk->count > FILES_LIST_ENTRIES_MAX) {
                        r = moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "too_many_entries",
                                           "more than %d entries under `%.512s`: list a smaller tree or less depth",
                                           FILES_LIST_ENTRIES_MAX, display_path);
                        break;
                }
                if (asprintf(&child_path, "%s%s%s", display_path,
                             display_path[strlen(display_path) - 1] == '/' ? "" : "/", entry->d_name) < 0) {
                        child_path = NULL;
                        r = moat_error_system(err, ENOMEM, "asprintf");
                        break;
                }
                object = stat_json(dirfd(dir), entry->d_name, entry->d_name, walk->id_base, &errno_value);
                if (!object) {
                        if (errno_value == ENOENT)
                                continue; /* removed while we listed */
                        r = files_error_from_errno(err, errno_value, "stat", child_path);
                        break;
                }
                json_object_set_new(object, "path", json_string(child_path));
                json_array_append_new(walk->entries, object);
                if (depth_left > 1 && strcmp(json_string_value(json_object_get(object, "type")), "dir") == 0) {
                        /* O_NOFOLLOW: a directory swapped for a symlink since
                         * the stat is not descended into. */
                        _cleanup_close_ int child_fd =
                                openat(dirfd(dir), entry->d_name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

                        if (child_fd < 0 || files_on_kernel_filesystem(child_fd))
                                continue; /* listed, not descended into: see files_on_kernel_filesystem */
                        r = list_dir(walk, child_fd, child_path, depth_left - 1, err);
                        if (r < 0)
                                break;
                }
        }
        closedir(dir);
        return r;
}

json_t *files_list(int root_fd, const char *path, unsigned depth, uint32_t id_base, struct moat_error **err)
{
        struct list_walk walk = {.entries = json_array(), .id_base = id_base};
        _cleanup_close_ int dir_fd = -1;
        struct stat st;

        if (!walk.entries) {
                moat_error_system(err, ENOMEM, "json");
                return NULL;
        }
        dir_fd = files_open(root_fd, path, O_PATH, 0, err);
        if (dir_fd < 0)
                goto fail;
        if (fstat(dir_fd, &st) < 0) {
                files_error_from_errno(err, errno, "stat", path);
                goto fail;
        }
        if (!S_ISDIR(st.st_mode)) {
                files_error_from_errno(err, ENOTDIR, "list", path);
                goto fail;
        }
        if (list_dir(&walk, dir_fd, path, depth, err) < 0)
                goto fail;
        return json_pack("{s:o}", "entries", walk.entries);
fail:
        json_decref(walk.entries);
        return NULL;
}

/* ---- mkdir, remove, move, chmod ---- */

static int mkdir_one(int root_fd, const char *path, mode_t mode, const struct files_owner *owner, bool exist_ok,
                     struct moat_error **err)
{
        char name[NAME_MAX + 1];
        _cleanup_close_ int parent_fd = open_parent(root_fd, path, name, err);
        _cleanup_close_ int dir_fd = -1;

        if (parent_fd < 0)
                return -1;
        if (mkdirat(parent_fd, name, mode) < 0) {
                struct stat st;

                /* Is what exists a directory (or a symlink to one)? Asked
                 * through the root: a symlink there must resolve in the
                 * sandbox, not on the host (fstatat would follow it here). */
                if (errno == EEXIST && exist_ok) {
                        _cleanup_close_ int existing_fd = openat2_in_root(root_fd, path, O_PATH, 0);

                        if (existing_fd >= 0 && fstat(existing_fd, &st) == 0 && S_ISDIR(st.st_mode))
                                return 0;
                        errno = EEXIST;
                }
                if (errno == EEXIST && exist_ok)
                        return files_error_from_errno(err, ENOTDIR, "mkdir", path);
                return files_error_from_errno(err, errno, "mkdir", path);
        }
        /* Own it by the sandbox user through an fd of the new directory
         * (O_NOFOLLOW: if it was swapped for a symlink meanwhile we chown
         * nothing rather than the link's target). */
        dir_fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dir_fd < 0)
                return files_error_from_errno(err, errno, "mkdir", path);
        if (owner && fchown(dir_fd, owner->uid, owner->gid) < 0)
                return moat_error_system(err, errno, "chown `%.512s`", path);
        if (fchmod(dir_fd, mode) < 0)
                return moat_error_system(err, errno, "chmod `%.512s`", path);
        return 0;
}

static int mkdir_as_owner(int root_fd, const char *path, bool parents, mode_t mode, const struct files_owner *owner,
                          struct moat_error **err)
{
        _cleanup_free_ char *copy = NULL;

        if (!parents)
                return mkdir_one(root_fd, path, mode, owner, false, err);
        copy = strdup(path);
        if (!copy)
                return moat_error_system(err, ENOMEM, "strdup");
        /* Each prefix in turn, each resolved afresh under the root. */
        for (char *p = copy + 1;; p++) {
                if (*p == '/' || *p == '\0') {
                        char saved = *p;

                        *p = '\0';
                        if (p[-1] != '/' && mkdir_one(root_fd, copy, saved ? 0755 : mode, owner, true, err) < 0)
                                return -1;
                        *p = saved;
                        if (!saved)
                                break;
                }
        }
        return 0;
}

int files_mkdir(int root_fd, const char *path, bool parents, mode_t mode, const struct files_owner *owner,
                struct moat_error **err)
{
        _cleanup_identity_ struct acting_identity identity = {false};

        if (identity_enter(&identity, owner, err) < 0)
                return -1;
        return mkdir_as_owner(root_fd, path, parents, mode, owner, err);
}

/* Remove everything inside the directory dir_fd, fd-relative, never
 * following a symlink (a symlink is unlinked, not descended into). */
static int remove_tree_contents(int dir_fd, const char *path, unsigned depth, struct moat_error **err)
{
        _cleanup_close_ int fd = -1;
        DIR *dir;
        struct dirent *entry;
        int r = 0;

        if (depth > FILES_WALK_DEPTH_MAX)
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "too_deep", "`%.512s`: deeper than %d levels",
                                      path, FILES_WALK_DEPTH_MAX);
        fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return files_error_from_errno(err, errno, "remove", path);
        dir = fdopendir(fd);
        if (!dir)
                return files_error_from_errno(err, errno, "remove", path);
        fd = -1;
        while ((entry = readdir(dir))) {
                if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
                        continue;
                if (unlinkat(dirfd(dir), entry->d_name, 0) == 0 || errno == ENOENT)
                        continue;
                if (errno == EISDIR || errno == EPERM) {
                        _cleanup_close_ int child_fd =
                                openat(dirfd(dir), entry->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

                        if (child_fd < 0) {
                                r = files_error_from_errno(err, errno, "remove", path);
                                break;
                        }
                        r = remove_tree_contents(child_fd, path, depth + 1, err);
                        if (r < 0)
                                break;
                        if (unlinkat(dirfd(dir), entry->d_name, AT_REMOVEDIR) < 0 && errno != ENOENT) {
                                r = files_error_from_errno(err, errno, "remove", path);
                                break;
                        }
                        continue;
                }
                r = files_error_from_errno(err, errno, "remove", path);
                break;
        }
        closedir(dir);
        return r;
}

static int remove_as_actor(int root_fd, const char *path, bool recursive, struct moat_error **err)
{
        char name[NAME_MAX + 1];
        _cleanup_close_ int parent_fd = open_parent(root_fd, path, name, err);
        struct stat st;

        if (parent_fd < 0)
                return -1;
        if (fstatat(parent_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return files_error_from_errno(err, errno, "remove", path);
        if (!S_ISDIR(st.st_mode)) {
                if (unlinkat(parent_fd, name, 0) < 0)
                        return files_error_from_errno(err, errno, "remove", path);
                return 0;
        }
        if (recursive) {
                _cleanup_close_ int dir_fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

                if (dir_fd < 0)
                        return files_error_from_errno(err, errno, "remove", path);
                if (remove_tree_contents(dir_fd, path, 0, err) < 0)
                        return -1;
        }
        if (unlinkat(parent_fd, name, AT_REMOVEDIR) < 0)
                return files_error_from_errno(err, errno, "remove", path);
        return 0;
}

int files_remove(int root_fd, const char *path, bool recursive, const struct files_owner *actor,
                 struct moat_error **err)
{
        _cleanup_identity_ struct acting_identity identity = {false};

        if (identity_enter(&identity, actor, err) < 0)
                return -1;
        return remove_as_actor(root_fd, path, recursive, err);
}

static int move_as_actor(int root_fd, const char *from, const char *to, bool overwrite, struct moat_error **err)
{
        char from_name[NAME_MAX + 1], to_name[NAME_MAX + 1];
        _cleanup_close_ int from_parent = open_parent(root_fd, from, from_name, err);
        _cleanup_close_ int to_parent = -1;

        if (from_parent < 0)
                return -1;
        to_parent = open_parent(root_fd, to, to_name, err);
        if (to_parent < 0)
                return -1;
        if (renameat2(from_parent, from_name, to_parent, to_name, overwrite ? 0 : RENAME_NOREPLACE) < 0)
                return files_error_from_errno(err, errno, "move", errno == ENOENT ? from : to);
        return 0;
}

int files_move(int root_fd, const char *from, const char *to, bool overwrite, const struct files_owner *actor,
               struct moat_error **err)
{
        _cleanup_identity_ struct acting_identity identity = {false};

        if (identity_enter(&identity, actor, err) < 0)
                return -1;
        return move_as_actor(root_fd, from, to, overwrite, err);
}

static int chmod_as_actor(int root_fd, const char *path, mode_t mode, struct moat_error **err)
{
        char name[NAME_MAX + 1];
        _cleanup_close_ int parent_fd = open_parent(root_fd, path, name, err);
        _cleanup_close_ int fd = -1;
        char fd_path[64];

        if (parent_fd < 0)
                return -1;
        /* O_PATH|O_NOFOLLOW opens the final component itself; a symlink there
         * is refused (Linux symlinks have no mode), never followed. */
        fd = openat(parent_fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return files_error_from_errno(err, errno, "chmod", path);
        {
                struct stat st;

                if (fstat(fd, &st) < 0)
                        return files_error_from_errno(err, errno, "chmod", path);
                if (S_ISLNK(st.st_mode))
                        return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "is_a_symlink",
                                              "chmod `%.512s`: is a symbolic link", path);
                /* The device nodes in the sandbox's /dev are binds of the
                 * host's own: a chmod there would change the host's
                 * /dev/null. Regular files and directories only. */
                if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
                        return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "not_a_regular_file",
                                              "chmod `%.512s`: not a regular file or directory", path);
                if (files_on_kernel_filesystem(fd))
                        return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "kernel_filesystem",
                                              "chmod `%.512s`: on a kernel filesystem", path);
        }
        /* fchmod does not take O_PATH fds; the /proc/self/fd link of our own
         * fd names exactly the inode opened above. */
        snprintf(fd_path, sizeof(fd_path), "/proc/self/fd/%d", fd);
        if (chmod(fd_path, mode) < 0)
                return files_error_from_errno(err, errno, "chmod", path);
        return 0;
}

int files_chmod(int root_fd, const char *path, mode_t mode, const struct files_owner *actor,
                struct moat_error **err)
{
        _cleanup_identity_ struct acting_identity identity = {false};

        if (identity_enter(&identity, actor, err) < 0)
                return -1;
        return chmod_as_actor(root_fd, path, mode, err);
}

int files_open_for_read(int root_fd, const char *path, struct moat_error **err)
{
        _cleanup_close_ int fd = files_open(root_fd, path, O_RDONLY | O_NONBLOCK, 0, err);
        struct stat st;

        if (fd < 0)
                return -1;
        if (fstat(fd, &st) < 0)
                return files_error_from_errno(err, errno, "stat", path);
        if (S_ISDIR(st.st_mode))
                return files_error_from_errno(err, EISDIR, "read", path);
        /* A FIFO or device planted by the workload could block the loop or
         * never end. */
        if (!S_ISREG(st.st_mode))
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "not_a_regular_file",
                                      "read `%.512s`: not a regular file", path);
        if (fcntl(fd, F_SETFL, 0) < 0)
                return moat_error_system(err, errno, "fcntl");
        return TAKE_FD(fd);
}

/* ---- uploads ---- */

struct pending_upload {
        struct pending_upload *next;
        struct moatd *daemon;
        char sandbox_id[MOAT_ID_MAX];
        char *parent_path;
        char temp_name[NAME_MAX + 1];
        time_t last_active;
};

static struct pending_upload *pending_uploads;
static struct event *sweep_timer;

static uint64_t name_hash(const char *name)
{
        uint64_t hash = 14695981039346656037ull; /* FNV-1a */

        for (; *name; name++)
                hash = (hash ^ (unsigned char)*name) * 1099511628211ull;
        return hash;
}

static bool upload_id_valid(const char *id)
{
        size_t length = strlen(id);

        return length > 0 && length <= FILES_UPLOAD_ID_MAX &&
               strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == length;
}

static void pending_forget(const char *sandbox_id, const char *temp_name)
{
        for (struct pending_upload **p = &pending_uploads; *p;) {
                struct pending_upload *upload = *p;

                if (strcmp(upload->sandbox_id, sandbox_id) == 0 && strcmp(upload->temp_name, temp_name) == 0) {
                        *p = upload->next;
                        free(upload->parent_path);
                        free(upload);
                } else {
                        p = &upload->next;
                }
        }
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
        files_uploads_sweep(arg);
}

void files_uploads_sweep(struct event_base *base)
{
        time_t now = time(NULL);

        for (struct pending_upload **p = &pending_uploads; *p;) {
                struct pending_upload *upload = *p;
                struct sandbox *sandbox;

                if (now - upload->last_active < FILES_UPLOAD_STALE_S) {
                        p = &upload->next;
                        continue;
                }
                sandbox = sandbox_find(upload->daemon, upload->sandbox_id);
                /* A stopped sandbox's writable layer goes with its teardown;
                 * only a running one needs the temp removed. */
                if (sandbox && sandbox->state == SANDBOX_RUNNING) {
                        struct files_owner actor = {sandbox->host_id_base, sandbox->host_id_base};
                        struct moat_error *err = NULL;
                        _cleanup_close_ int root_fd = files_root_open(sandbox, &err);
                        _cleanup_free_ char *temp_path = NULL;

                        if (root_fd >= 0 && asprintf(&temp_path, "%s/%s", upload->parent_path, upload->temp_name) >= 0)
                                (void)files_remove(root_fd, temp_path, false, &actor, &err);
                        else
                                temp_path = NULL;
                        moat_error_free(err);
                }
                *p = upload->next;
                free(upload->parent_path);
                free(upload);
        }
        if (!pending_uploads && sweep_timer) {
                event_free(sweep_timer);
                sweep_timer = NULL;
        }
}

static void pending_touch(struct sandbox *sandbox, const char *path, const char *temp_name)
{
        struct pending_upload *upload;
        const char *slash = strrchr(path, '/');

        for (upload = pending_uploads; upload; upload = upload->next)
                if (strcmp(upload->sandbox_id, sandbox->id) == 0 && strcmp(upload->temp_name, temp_name) == 0) {
                        upload->last_active = time(NULL);
                        return;
                }
        upload = calloc(1, sizeof(*upload));
        if (!upload)
                return; /* only the stale sweep is lost */
        upload->daemon = sandbox->daemon;
        snprintf(upload->sandbox_id, sizeof(upload->sandbox_id), "%s", sandbox->id);
        upload->parent_path = slash == path ? strdup("/") : strndup(path, (size_t)(slash - path));
        snprintf(upload->temp_name, sizeof(upload->temp_name), "%s", temp_name);
        upload->last_active = time(NULL);
        if (!upload->parent_path) {
                free(upload);
                return;
        }
        upload->next = pending_uploads;
        pending_uploads = upload;
        if (!sweep_timer) {
                struct timeval every = {60, 0};

                sweep_timer = event_new(sandbox->daemon->base, -1, EV_PERSIST, on_sweep, sandbox->daemon->base);
                if (sweep_timer)
                        event_add(sweep_timer, &every);
        }
}

/* writev until every piece is written. Consumes a copy of the vector. */
static int write_pieces(int fd, const struct iovec *pieces, size_t count)
{
        struct iovec vector[64];

        while (count > 0) {
                size_t batch = count < MOAT_ARRAY_SIZE(vector) ? count : MOAT_ARRAY_SIZE(vector);
                size_t first = 0;

                memcpy(vector, pieces, batch * sizeof(*vector));
                while (first < batch) {
                        ssize_t n = writev(fd, vector + first, (int)(batch - first));

                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                return -1;
                        }
                        while (first < batch && (size_t)n >= vector[first].iov_len) {
                                n -= (ssize_t)vector[first].iov_len;
                                first++;
                        }
                        if (first < batch) {
                                vector[first].iov_base = (char *)vector[first].iov_base + n;
                                vector[first].iov_len -= (size_t)n;
                        }
                }
                pieces += batch;
                count -= batch;
        }
        return 0;
}

static int write_all(int fd, const char *data, size_t length)
{
        while (length > 0) {
                ssize_t n = write(fd, data, length);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -1;
                }
                data += n;
                length -= (size_t)n;
        }
        return 0;
}

static int64_t write_chunk_as_owner(struct sandbox *sandbox, int root_fd, const struct files_write *w,
                                    const struct iovec *pieces, size_t count, struct moat_error **err)
{
        size_t length = 0;
        char name[NAME_MAX + 1], temp_name[NAME_MAX + 1];
        _cleanup_close_ int parent_fd = -1, fd = -1;
        struct stat st;
        _cleanup_free_ char *parent_path = NULL;

        for (size_t i = 0; i < count; i++)
                length += pieces[i].iov_len;
        if (w->upload_id && !upload_id_valid(w->upload_id))
                return moat_error_invalid(err, "`upload` must be 1..%d of [A-Za-z0-9_-]", FILES_UPLOAD_ID_MAX);
        if (!w->upload_id && (w->offset > 0 || !w->final) && !w->append)
                return moat_error_invalid(err, "a chunked upload (offset > 0 or final=0) needs an `upload` id");
        parent_fd = open_parent(root_fd, w->path, name, err);
        if (parent_fd < 0 && w->make_dirs && *err && (*err)->kind == MOAT_ERROR_NOT_FOUND) {
                const char *slash = strrchr(w->path, '/');

                moat_error_free(*err);
                *err = NULL;
                parent_path = strndup(w->path, (size_t)(slash - w->path));
                if (!parent_path)
                        return moat_error_system(err, ENOMEM, "strndup");
                if (mkdir_as_owner(root_fd, parent_path, true, 0755, w->owner, err) < 0)
                        return -1;
                parent_fd = open_parent(root_fd, w->path, name, err);
        }
        if (parent_fd < 0)
                return -1;
        /* A directory (or a symlink to one) at the target: refuse before
         * writing anything. */
        {
                /* Through the root, so a symlink at the target resolves in
                 * the sandbox (a bare fstatat would follow it on the host). */
                _cleanup_close_ int existing_fd = openat2_in_root(root_fd, w->path, O_PATH, 0);

                if (existing_fd >= 0 && fstat(existing_fd, &st) == 0 && S_ISDIR(st.st_mode))
                        return files_error_from_errno(err, EISDIR, "write", w->path);
        }

        if (w->append) {
                /* Appending writes the target itself (a log, a resumable
                 * stream): partial data is the caller's choice here. */
                /* O_NONBLOCK|O_NOCTTY, then the type on the opened fd: a
                 * FIFO planted by the workload must not block the loop, and
                 * a device node (the host's, bound in) is not a file to
                 * append to. */
                if (fstatat(parent_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st.st_mode))
                        return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "not_a_regular_file",
                                              "append to `%.512s`: not a regular file", w->path);
                fd = openat(parent_fd, name, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC,
                            w->mode);
                if (fd < 0)
                        return files_error_from_errno(err, errno, "write", w->path);
                if (fstat(fd, &st) < 0)
                        return files_error_from_errno(err, errno, "write", w->path);
                if (!S_ISREG(st.st_mode))
                        return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "not_a_regular_file",
                                              "append to `%.512s`: not a regular file", w->path);
                if (fcntl(fd, F_SETFL, O_APPEND) < 0)
                        return moat_error_system(err, errno, "fcntl");
                if (st.st_size == 0 && st.st_uid == 0 && w->owner && fchown(fd, w->owner->uid, w->owner->gid) < 0)
                        return moat_error_system(err, errno, "chown `%.512s`", w->path);
                if (write_pieces(fd, pieces, count) < 0)
                        return files_error_from_errno(err, errno, "write", w->path);
                return (int64_t)st.st_size + (int64_t)length;
        }

        /* The upload goes to a temp name beside the target, deterministic
         * per (target name, upload id) so later chunks find it, and renamed
         * over the target by the final chunk: a half-uploaded file is never
         * visible under its name, and a full disk leaves nothing behind. */
        snprintf(temp_name, sizeof(temp_name), ".moat-upload-%s-%016llx", w->upload_id ? w->upload_id : "single",
                 (unsigned long long)name_hash(name));
        if (w->offset == 0) {
                fd = openat(parent_fd, temp_name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
        } else {
                fd = openat(parent_fd, temp_name, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
                if (fd < 0 && errno == ENOENT)
                        return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "offset_mismatch",
                                              "no upload `%s` of `%.512s` in progress (start it with offset=0)",
                                              w->upload_id, w->path);
        }
        if (fd < 0)
                return files_error_from_errno(err, errno, "write", w->path);
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                unlinkat(parent_fd, temp_name, 0);
                return moat_error_system(err, errno, "stat the upload of `%.512s`", w->path);
        }
        if ((uint64_t)st.st_size != w->offset)
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "offset_mismatch",
                                      "upload `%s` of `%.512s` holds %lld bytes, the chunk starts at %llu",
                                      w->upload_id ? w->upload_id : "", w->path, (long long)st.st_size,
                                      (unsigned long long)w->offset);
        if (w->offset == 0 && w->owner && fchown(fd, w->owner->uid, w->owner->gid) < 0) {
                unlinkat(parent_fd, temp_name, 0);
                return moat_error_system(err, errno, "chown `%.512s`", w->path);
        }
        if (lseek(fd, 0, SEEK_END) < 0 || write_pieces(fd, pieces, count) < 0) {
                int saved = errno;

                unlinkat(parent_fd, temp_name, 0);
                pending_forget(sandbox->id, temp_name);
                return files_error_from_errno(err, saved, "write", w->path);
        }
        if (!w->final) {
                pending_touch(sandbox, w->path, temp_name);
                return (int64_t)w->offset + (int64_t)length;
        }
        if (fchmod(fd, w->mode) < 0) {
                unlinkat(parent_fd, temp_name, 0);
                return moat_error_system(err, errno, "chmod `%.512s`", w->path);
        }
        if (renameat(parent_fd, temp_name, parent_fd, name) < 0) {
                int saved = errno;

                unlinkat(parent_fd, temp_name, 0);
                pending_forget(sandbox->id, temp_name);
                return files_error_from_errno(err, saved, "write", w->path);
        }
        pending_forget(sandbox->id, temp_name);
        return (int64_t)w->offset + (int64_t)length;
}

int64_t files_write_chunk(struct sandbox *sandbox, int root_fd, const struct files_write *w,
                          const struct iovec *pieces, size_t count, struct moat_error **err)
{
        _cleanup_identity_ struct acting_identity identity = {false};

        if (identity_enter(&identity, w->owner, err) < 0)
                return -1;
        return write_chunk_as_owner(sandbox, root_fd, w, pieces, count, err);
}

/* ---- archive extraction ---- */

/* A tar member name we accept: relative, no "..", no empty path. Leading
 * "./" is allowed (tar -C dir . writes it). */
static bool archive_name_safe(const char *name)
{
        const char *p = name;

        if (!name[0] || name[0] == '/' || strlen(name) > FILES_PATH_MAX)
                return false;
        while (*p) {
                size_t n = strcspn(p, "/");

                if (n == 2 && p[0] == '.' && p[1] == '.')
                        return false;
                p += n;
                while (*p == '/')
                        p++;
        }
        return true;
}

/* Open the parent directory of `relative` beneath dir_fd, creating missing
 * directories; RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS: no entry can reach
 * outside the target directory, neither by ".." nor through a symlink an
 * earlier entry (or the sandbox) planted. */
static int archive_parent(int dir_fd, char *relative, char **ret_name, const struct files_owner *owner)
{
        struct open_how how = {.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
                               .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
        char *slash;
        int fd;

        while (relative[0] && relative[strlen(relative) - 1] == '/')
                relative[strlen(relative) - 1] = '\0';
        slash = strrchr(relative, '/');
        if (!slash) {
                *ret_name = relative;
                return fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
        }
        *slash = '\0';
        *ret_name = slash + 1;
        fd = (int)syscall(SYS_openat2, dir_fd, relative, &how, sizeof(how));
        if (fd >= 0 || errno != ENOENT)
                return fd;
        /* Create the missing parents one level at a time. */
        for (char *p = relative;; p++) {
                if (*p == '/' || *p == '\0') {
                        char saved = *p;

                        *p = '\0';
                        fd = (int)syscall(SYS_openat2, dir_fd, relative, &how, sizeof(how));
                        if (fd < 0 && errno == ENOENT) {
                                char *inner_slash = strrchr(relative, '/');
                                _cleanup_close_ int inner_parent = -1;
                                const char *inner_name = relative;

                                if (inner_slash) {
                                        *inner_slash = '\0';
                                        inner_parent = (int)syscall(SYS_openat2, dir_fd, relative, &how, sizeof(how));
                                        *inner_slash = '/';
                                        inner_name = inner_slash + 1;
                                } else {
                                        inner_parent = fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
                                }
                                if (inner_parent < 0 || (mkdirat(inner_parent, inner_name, 0755) < 0 && errno != EEXIST))
                                        return -1;
                                if (owner && fchownat(inner_parent, inner_name, owner->uid, owner->gid,
                                                      AT_SYMLINK_NOFOLLOW) < 0)
                                        return -1;
                                fd = (int)syscall(SYS_openat2, dir_fd, relative, &how, sizeof(how));
                        }
                        *p = saved;
                        if (fd < 0)
                                return -1;
                        if (!saved)
                                return fd;
                        close(fd);
                }
        }
}

static int extract_entry(struct archive *reader, struct archive_entry *entry, int dir_fd,
                         const struct files_owner *owner, const char *display_path, struct moat_error **err)
{
        _cleanup_free_ char *relative = strdup(archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "");
        _cleanup_close_ int parent_fd = -1, fd = -1;
        mode_t type = archive_entry_filetype(entry);
        mode_t mode = archive_entry_perm(entry) & 0777; /* no setuid/setgid/sticky from a client's tar */
        char *name;

        if (!relative)
                return moat_error_system(err, ENOMEM, "strdup");
        if (!archive_name_safe(relative))
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "bad_archive",
                                      "archive entry `%.256s`: absolute or with `..`", relative);
        while (strncmp(relative, "./", 2) == 0)
                memmove(relative, relative + 2, strlen(relative + 2) + 1);
        if (relative[0] == '\0' || strcmp(relative, ".") == 0)
                return 0; /* the target directory itself */
        parent_fd = archive_parent(dir_fd, relative, &name, owner);
        if (parent_fd < 0)
                return files_error_from_errno(err, errno == EXDEV || errno == ELOOP ? EXDEV : errno, "extract",
                                              display_path);
        if (name[0] == '\0' || strcmp(name, ".") == 0)
                return 0;
        if (type == AE_IFDIR) {
                if (mkdirat(parent_fd, name, mode | 0700) < 0 && errno != EEXIST)
                        return files_error_from_errno(err, errno, "extract", display_path);
                fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (fd < 0)
                        return files_error_from_errno(err, errno, "extract", display_path);
                if (owner && fchown(fd, owner->uid, owner->gid) < 0)
                        return moat_error_system(err, errno, "chown");
                if (fchmod(fd, mode | 0700) < 0)
                        return moat_error_system(err, errno, "chmod");
                return 0;
        }
        if (type != AE_IFREG && type != AE_IFLNK)
                return 0; /* devices, fifos, hardlinks: not extracted */
        /* Replace whatever non-directory is there; a symlink is removed,
         * never written through. */
        if (unlinkat(parent_fd, name, 0) < 0 && errno != ENOENT)
                return files_error_from_errno(err, errno, "extract", display_path);
        if (type == AE_IFLNK) {
                const char *target = archive_entry_symlink(entry);

                if (!target || symlinkat(target, parent_fd, name) < 0)
                        return files_error_from_errno(err, target ? errno : EINVAL, "extract", display_path);
                if (owner && fchownat(parent_fd, name, owner->uid, owner->gid, AT_SYMLINK_NOFOLLOW) < 0)
                        return moat_error_system(err, errno, "chown");
                return 0;
        }
        fd = openat(parent_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0)
                return files_error_from_errno(err, errno, "extract", display_path);
        if (owner && fchown(fd, owner->uid, owner->gid) < 0)
                return moat_error_system(err, errno, "chown");
        for (;;) {
                char buffer[65536];
                la_ssize_t n = archive_read_data(reader, buffer, sizeof(buffer));

                if (n == 0)
                        break;
                if (n < 0)
                        return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "bad_archive", "archive: %s",
                                              archive_error_string(reader));
                if (write_all(fd, buffer, (size_t)n) < 0) {
                        int saved = errno;

                        unlinkat(parent_fd, name, 0);
                        return files_error_from_errno(err, saved, "extract", display_path);
                }
        }
        if (fchmod(fd, mode) < 0)
                return moat_error_system(err, errno, "chmod");
        return 0;
}

int files_archive_extract(int root_fd, const char *path, const void *data, size_t length,
                          const struct files_owner *owner, struct moat_error **err)
{
        struct archive *reader = archive_read_new();
        struct archive_entry *entry;
        _cleanup_close_ int dir_fd = -1;
        _cleanup_identity_ struct acting_identity identity = {false};
        size_t count = 0;
        int r = 0;

        if (!reader || identity_enter(&identity, owner, err) < 0) {
                archive_read_free(reader);
                return reader ? -1 : moat_error_system(err, ENOMEM, "archive_read_new");
        }
        dir_fd = files_open(root_fd, path, O_PATH | O_DIRECTORY, 0, err);
        if (dir_fd < 0) {
                archive_read_free(reader);
                return -1;
        }
        archive_read_support_format_tar(reader);
        archive_read_support_format_gnutar(reader);
        archive_read_support_filter_gzip(reader);
        if (archive_read_open_memory(reader, data, length) != ARCHIVE_OK) {
                r = moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "bad_archive", "not a tar archive: %s",
                                   archive_error_string(reader));
                archive_read_free(reader);
                return r;
        }
        for (;;) {
                int status = archive_read_next_header(reader, &entry);

                if (status == ARCHIVE_EOF)
                        break;
                if (status != ARCHIVE_OK && status != ARCHIVE_WARN) {
                        r = moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "bad_archive", "archive: %s",
                                           archive_error_string(reader));
                        break;
                }
                if (++count > FILES_ARCHIVE_ENTRIES_MAX) {
                        r = moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "too_many_entries",
                                           "more than %d archive entries", FILES_ARCHIVE_ENTRIES_MAX);
                        break;
                }
                r = extract_entry(reader, entry, dir_fd, owner, path, err);
                if (r < 0)
                        break;
        }
        archive_read_free(reader);
        return r;
}
