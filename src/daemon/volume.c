/* Volumes: ext4 image files on loop devices, mounted under the data dir.
 * See volume.h for the layout. Why a filesystem image and not a directory:
 * the size limit is the filesystem's own (a write past it is ENOSPC inside
 * the sandbox; the host disk never gives more than the image's size), and
 * ownership inside is stored as the sandbox sees it (0..65535), whatever host
 * range each sandbox maps it to. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/loop.h>
#include <linux/openat2.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "image_store.h"
#include "log.h"
#include "sandbox.h"
#include "volume.h"

extern char **environ;

/* One daemon per process: the records hang here rather than in struct moatd
 * (daemon.h belongs to the loop's owner; see the report). */
static struct volume *volumes;
static unsigned volume_count;
static char volumes_dir[1100];

bool volume_name_valid(const char *name)
{
        size_t length = strlen(name);

        if (length == 0 || length > VOLUME_NAME_MAX)
                return false;
        if (!((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= '0' && name[0] <= '9')))
                return false;
        for (size_t i = 1; i < length; i++) {
                char c = name[i];
                if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
                        return false;
        }
        return strstr(name, "..") == NULL;
}

struct volume *volume_list_head(void)
{
        return volumes;
}

struct volume *volume_find(const char *name, struct moat_error **err)
{
        for (struct volume *v = volumes; v; v = v->next)
                if (strcmp(v->name, name) == 0)
                        return v;
        moat_error_set(err, MOAT_ERROR_NOT_FOUND, 0, "volume_not_found", "no volume `%s`", name);
        return NULL;
}

json_t *volume_to_json(const struct volume *volume)
{
        struct statvfs st;
        json_int_t used = 0;

        if (volume->data_fd >= 0 && fstatvfs(volume->data_fd, &st) == 0)
                used = (json_int_t)((st.f_blocks - st.f_bfree) * st.f_frsize);
        return json_pack("{s:s,s:I,s:I,s:I}", "name", volume->name, "size_mib", (json_int_t)volume->size_mib,
                         "created_at", (json_int_t)volume->created_at, "used_bytes", used);
}

/* ---- attaching ------------------------------------------------------- */

static int run_mkfs(const char *image_path, uint32_t size_mib, struct moat_error **err)
{
        static const char *const candidates[] = { "/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4" };
        const char *mkfs = NULL;
        posix_spawn_file_actions_t actions;
        pid_t pid;
        int status, r;

        for (size_t i = 0; i < MOAT_ARRAY_SIZE(candidates) && !mkfs; i++)
                if (access(candidates[i], X_OK) == 0)
                        mkfs = candidates[i];
        if (!mkfs)
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, ENOENT, "mkfs_missing",
                                      "mkfs.ext4 not found (install e2fsprogs)");
        /* An argv, no shell: the path holds a client-chosen name. -m 0: no
         * blocks reserved for root, the whole size is the volume's.
         * root_owner=0:0: the root directory is sandbox root's in every
         * sandbox. The journal stays: it is what makes an fsync'd write
         * survive a host crash. */
        char *argv[12] = { (char *)mkfs, "-q", "-F", "-m", "0", "-E", "root_owner=0:0" };
        unsigned argc = 7;

        /* The journal is allocated on the host at once: past 16 GiB mke2fs
         * would give it up to 1 GiB; 64 MiB is plenty for a volume. */
        if (size_mib >= 16384) {
                argv[argc++] = "-J";
                argv[argc++] = "size=64";
        }
        argv[argc++] = "--";
        argv[argc++] = (char *)image_path;
        argv[argc] = NULL;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
        r = posix_spawn(&pid, mkfs, &actions, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&actions);
        if (r != 0)
                return moat_error_system(err, r, "spawn `%s`", mkfs);
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return moat_error_system(err, errno, "waitpid mkfs.ext4");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                return moat_error_set(err, MOAT_ERROR_SYSTEM, 0, NULL, "mkfs.ext4 `%s` failed (status %d)",
                                      image_path, status);
        return 0;
}

/* Attach image_path to a free loop device; returns the open loop fd (the
 * caller keeps it open until the filesystem is mounted: with AUTOCLEAR the
 * device detaches itself on the last close once nothing mounts it, so a
 * crash between attach and mount leaks no loop device). */
static int loop_attach(const char *image_path, char device[64], struct moat_error **err)
{
        _cleanup_close_ int control = -1, backing = -1;

        control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
        if (control < 0)
                return moat_error_system(err, errno, "open `/dev/loop-control`");
        backing = open(image_path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (backing < 0)
                return moat_error_system(err, errno, "open `%s`", image_path);
        /* Another process may take the device between GET_FREE and
         * CONFIGURE (EBUSY): try again with the next free one. */
        for (int attempt = 0; attempt < 16; attempt++) {
                struct loop_config config = { .fd = (uint32_t)backing };
                int number = ioctl(control, LOOP_CTL_GET_FREE);
                int fd;

                if (number < 0)
                        return moat_error_system(err, errno, "ioctl LOOP_CTL_GET_FREE");
                snprintf(device, 64, "/dev/loop%d", number);
                fd = open(device, O_RDWR | O_CLOEXEC);
                if (fd < 0)
                        return moat_error_system(err, errno, "open `%s`", device);
                config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
                /* For `losetup -a` only; the kernel truncates it anyway. */
                {
                        size_t n = strlen(image_path);
                        if (n >= sizeof(config.info.lo_file_name))
                                n = sizeof(config.info.lo_file_name) - 1;
                        memcpy(config.info.lo_file_name, image_path, n);
                }
                if (ioctl(fd, LOOP_CONFIGURE, &config) == 0)
                        return fd;
                int saved = errno;
                close(fd);
                if (saved != EBUSY)
                        return moat_error_system(err, saved, "ioctl LOOP_CONFIGURE `%s`", device);
        }
        return moat_error_system(err, EBUSY, "no free loop device for `%s`", image_path);
}

/* Is path the root of a mount? (statx reports it without parsing mountinfo.) */
static bool is_mount_point(const char *path)
{
        struct statx st;

        if (statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &st) < 0)
                return false;
        return (st.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (st.stx_attributes & STATX_ATTR_MOUNT_ROOT);
}

/* Mount the volume's image at <dir>/mnt (unless a previous moatd left it
 * mounted: a second loop device on the same image would corrupt it while
 * sandboxes of that moatd still write through the first) and open data. */
static int volume_attach(struct volume *volume, bool fresh, struct moat_error **err)
{
        char image[1300], mnt[1300], device[64];

        snprintf(image, sizeof(image), "%s/disk.img", volume->dir);
        snprintf(mnt, sizeof(mnt), "%s/mnt", volume->dir);
        if (mkdir(mnt, 0700) < 0 && errno != EEXIST)
                return moat_error_system(err, errno, "mkdir `%s`", mnt);
        if (!is_mount_point(mnt)) {
                _cleanup_close_ int loop_fd = loop_attach(image, device, err);
                if (loop_fd < 0)
                        return -1;
                /* nosuid, nodev: a setuid binary or a device node a sandbox
                 * made in its volume means nothing on the host side. */
                if (mount(device, mnt, "ext4", MS_NOSUID | MS_NODEV, "errors=remount-ro") < 0)
                        return moat_error_system(err, errno, "mount `%s` on `%s`", device, mnt);
        }
        if (fresh) {
                /* 0755 root: sandbox root decides who else may write. */
                if (mkdir(volume->data_path, 0755) < 0 && errno != EEXIST) {
                        int saved = errno;
                        umount2(mnt, MNT_DETACH);
                        return moat_error_system(err, saved, "mkdir `%s`", volume->data_path);
                }
        }
        volume->data_fd = open(volume->data_path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (volume->data_fd < 0) {
                int saved = errno;
                umount2(mnt, MNT_DETACH);
                return moat_error_system(err, saved, "open `%s`", volume->data_path);
        }
        return 0;
}

/* Unmount; the loop device detaches itself (AUTOCLEAR). lazy: detach at once
 * (at exit, a sandbox still holding a clone keeps the filesystem alive
 * until it dies). */
static int volume_detach(struct volume *volume, bool lazy, struct moat_error **err)
{
        char mnt[1300];

        snprintf(mnt, sizeof(mnt), "%s/mnt", volume->dir);
        if (volume->data_fd >= 0) {
                close(volume->data_fd);
                volume->data_fd = -1;
        }
        if (!is_mount_point(mnt))
                return 0;
        if (umount2(mnt, lazy ? MNT_DETACH : 0) < 0)
                return moat_error_system(err, errno, "umount `%s`", mnt);
        return 0;
}

/* ---- the registry ---------------------------------------------------- */

static int write_meta(const struct volume *volume, struct moat_error **err)
{
        char path[1300], temporary[1310];
        _cleanup_free_ char *text = NULL;
        _cleanup_close_ int fd = -1;
        size_t length;
        json_t *meta = json_pack("{s:s,s:I,s:I}", "name", volume->name, "size_mib", (json_int_t)volume->size_mib,
                                 "created_at", (json_int_t)volume->created_at);

        text = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
        json_decref(meta);
        if (!text)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "encode volume.json");
        snprintf(path, sizeof(path), "%s/volume.json", volume->dir);
        snprintf(temporary, sizeof(temporary), "%s/volume.json.tmp", volume->dir);
        fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return moat_error_system(err, errno, "open `%s`", temporary);
        length = strlen(text);
        /* volume.json is written last and atomically: a volume without it
         * is half-made and removed at the next start. */
        if (write(fd, text, length) != (ssize_t)length || fsync(fd) < 0)
                return moat_error_system(err, errno, "write `%s`", temporary);
        if (rename(temporary, path) < 0)
                return moat_error_system(err, errno, "rename `%s`", path);
        return 0;
}

static struct volume *volume_new(const char *name)
{
        struct volume *volume = calloc(1, sizeof(*volume));

        if (!volume)
                return NULL;
        snprintf(volume->name, sizeof(volume->name), "%s", name);
        snprintf(volume->dir, sizeof(volume->dir), "%s/%s", volumes_dir, name);
        snprintf(volume->data_path, sizeof(volume->data_path), "%s/mnt/data", volume->dir);
        volume->data_fd = -1;
        return volume;
}

/* Remove a volume's directory once nothing is mounted on it. */
static void remove_volume_dir(const char *dir)
{
        char mnt[1300];

        snprintf(mnt, sizeof(mnt), "%s/mnt", dir);
        /* Never walk into a mounted volume: that would delete its data. */
        if (is_mount_point(mnt))
                return;
        image_store_remove_tree(dir, NULL);
}

struct volume *volume_create(struct moatd *daemon, const char *name, uint32_t size_mib, struct moat_error **err)
{
        struct volume *volume;
        char image[1300];
        _cleanup_close_ int fd = -1;
        struct timespec now;

        (void)daemon;
        if (!volume_name_valid(name)) {
                moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "invalid_volume_name",
                               "volume names are [a-z0-9][a-z0-9_.-]{0,62}");
                return NULL;
        }
        if (size_mib < 1 || size_mib > VOLUME_SIZE_MIB_MAX) {
                moat_error_invalid(err, "size_mib must be 1..%u", VOLUME_SIZE_MIB_MAX);
                return NULL;
        }
        for (struct volume *v = volumes; v; v = v->next)
                if (strcmp(v->name, name) == 0) {
                        moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "volume_exists", "volume `%s` exists", name);
                        return NULL;
                }
        if (volume_count >= VOLUME_COUNT_MAX) {
                moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL, "at most %u volumes", VOLUME_COUNT_MAX);
                return NULL;
        }
        volume = volume_new(name);
        if (!volume) {
                moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate volume");
                return NULL;
        }
        clock_gettime(CLOCK_REALTIME, &now);
        volume->size_mib = size_mib;
        volume->created_at = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
        /* A leftover directory without volume.json (not in the registry) is
         * a half-made volume of a crashed create. */
        remove_volume_dir(volume->dir);
        if (mkdir(volume->dir, 0700) < 0) {
                moat_error_system(err, errno, "mkdir `%s`", volume->dir);
                goto fail;
        }
        snprintf(image, sizeof(image), "%s/disk.img", volume->dir);
        fd = open(image, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        /* Sparse: size is a cap, not a reservation. */
        if (fd < 0 || ftruncate(fd, (off_t)size_mib << 20) < 0) {
                moat_error_system(err, errno, "create `%s`", image);
                goto fail_dir;
        }
        if (run_mkfs(image, size_mib, err) < 0 || volume_attach(volume, true, err) < 0)
                goto fail_dir;
        if (write_meta(volume, err) < 0) {
                volume_detach(volume, true, NULL);
                goto fail_dir;
        }
        volume->next = volumes;
        volumes = volume;
        volume_count++;
        return volume;
fail_dir:
        remove_volume_dir(volume->dir);
fail:
        free(volume);
        return NULL;
}

int volume_delete(struct moatd *daemon, const char *name, struct moat_error **err)
{
        struct volume **link, *volume;

        for (link = &volumes; *link && strcmp((*link)->name, name) != 0; link = &(*link)->next)
                ;
        volume = *link;
        if (!volume)
                return moat_error_set(err, MOAT_ERROR_NOT_FOUND, 0, "volume_not_found", "no volume `%s`", name);
        if (sandbox_volume_in_use(daemon, name))
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "volume_in_use",
                                      "volume `%s` is mounted by a sandbox", name);
        if (volume_detach(volume, false, err) < 0) {
                /* Still mounted (EBUSY: a sandbox being torn down right
                 * now): keep the record usable. */
                volume->data_fd = open(volume->data_path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if ((*err)->errno_value == EBUSY) {
                        (*err)->kind = MOAT_ERROR_CONFLICT;
                        snprintf((*err)->code, sizeof((*err)->code), "volume_in_use");
                }
                return -1;
        }
        remove_volume_dir(volume->dir);
        *link = volume->next;
        volume_count--;
        free(volume);
        return 0;
}

static int load_one(const char *name, struct moat_error **err)
{
        char path[1300];
        json_error_t json_error;
        json_t *meta;
        json_int_t size = 0, created = 0;
        const char *recorded = NULL;
        struct volume *volume;

        if (!volume_name_valid(name))
                return 0; /* not ours */
        volume = volume_new(name);
        if (!volume)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate volume");
        snprintf(path, sizeof(path), "%s/volume.json", volume->dir);
        meta = json_load_file(path, 0, &json_error);
        if (!meta || json_unpack(meta, "{s:s,s:I,s:I}", "name", &recorded, "size_mib", &size, "created_at", &created) < 0 ||
            strcmp(recorded, name) != 0 || size < 1 || size > VOLUME_SIZE_MIB_MAX) {
                log_warn("volume `%s`: no valid volume.json: removing the half-made volume", name);
                json_decref(meta);
                volume_detach(volume, true, NULL);
                remove_volume_dir(volume->dir);
                free(volume);
                return 0;
        }
        json_decref(meta);
        volume->size_mib = (uint32_t)size;
        volume->created_at = created;
        if (volume_attach(volume, false, err) < 0) {
                free(volume);
                return moat_error_wrap(err, "volume `%s`", name);
        }
        volume->next = volumes;
        volumes = volume;
        volume_count++;
        return 0;
}

int volume_registry_load(struct moatd *daemon, struct moat_error **err)
{
        struct dirent *entry;
        DIR *dir;

        snprintf(volumes_dir, sizeof(volumes_dir), "%s/volumes", daemon->options.data_dir);
        if (mkdir(volumes_dir, 0700) < 0 && errno != EEXIST)
                return moat_error_system(err, errno, "mkdir `%s`", volumes_dir);
        dir = opendir(volumes_dir);
        if (!dir)
                return moat_error_system(err, errno, "opendir `%s`", volumes_dir);
        while ((entry = readdir(dir))) {
                struct moat_error *one = NULL;

                if (entry->d_name[0] == '.')
                        continue;
                /* A volume that cannot be attached is logged and skipped:
                 * the others (and every sandbox without it) still work. */
                if (load_one(entry->d_name, &one) < 0) {
                        log_warn("%s", one->message);
                        moat_error_free(one);
                }
        }
        closedir(dir);
        return 0;
}

void volume_registry_close(struct moatd *daemon)
{
        (void)daemon;
        while (volumes) {
                struct volume *volume = volumes;
                struct moat_error *err = NULL;
                volumes = volume->next;
                if (volume_detach(volume, true, &err) < 0) {
                        log_warn("%s", err->message);
                        moat_error_free(err);
                }
                free(volume);
        }
        volume_count = 0;
}

/* ---- paths inside a volume ------------------------------------------- */

static int check_path(const char *path, struct moat_error **err)
{
        size_t length = strnlen(path, PATH_MAX);

        if (length == 0 || path[0] != '/')
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "invalid_path", "path must be absolute");
        if (length >= PATH_MAX)
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "invalid_path", "path too long");
        return 0;
}

int volume_open(const struct volume *volume, const char *path, int flags, mode_t mode, struct moat_error **err)
{
        /* RESOLVE_IN_ROOT: "..", absolute symlinks and "/" all stay at the
         * volume's data dir, so a symlink a sandbox planted (say to
         * /etc/passwd) names the volume's own /etc/passwd, never the host's;
         * the kernel checks every step, so a swap between lookup and open
         * cannot redirect it. No magic links: /proc/self/... jumps. */
        struct open_how how = {
                .flags = (uint64_t)(flags | O_CLOEXEC),
                .mode = (flags & O_CREAT) ? mode : 0,
                .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
        };
        const char *relative;
        int fd;

        if (check_path(path, err) < 0)
                return -1;
        relative = path + strspn(path, "/");
        fd = (int)syscall(SYS_openat2, volume->data_fd, *relative ? relative : ".", &how, sizeof(how));
        if (fd < 0) {
                int saved = errno;
                if (saved == ENOENT)
                        return moat_error_set(err, MOAT_ERROR_NOT_FOUND, saved, "file_not_found", "`%s`", path);
                if (saved == ENOTDIR || saved == EISDIR || saved == ELOOP || saved == EXDEV)
                        return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, saved, "invalid_path", "`%s`", path);
                return moat_error_system(err, saved, "open `%s`", path);
        }
        return fd;
}

int volume_open_parent(const struct volume *volume, const char *path, char name[256], struct moat_error **err)
{
        char parent[PATH_MAX];
        size_t length;
        const char *slash;

        if (check_path(path, err) < 0)
                return -1;
        snprintf(parent, sizeof(parent), "%s", path);
        length = strlen(parent);
        while (length > 1 && parent[length - 1] == '/')
                parent[--length] = '\0';
        slash = strrchr(parent, '/');
        if (strlen(slash + 1) == 0 || strlen(slash + 1) > 255 || strcmp(slash + 1, ".") == 0 ||
            strcmp(slash + 1, "..") == 0)
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "invalid_path",
                                      "`%s` does not name a file in the volume", path);
        snprintf(name, 256, "%s", slash + 1);
        parent[slash - parent + 1] = '\0';
        return volume_open(volume, parent, O_PATH | O_DIRECTORY, 0, err);
}
