#include "tree_copy.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "sha256.h"

#define DEPTH_MAX 256
#define COPY_BUFFER (128 * 1024)

struct walk {
        const struct tree_copy_options *options;
        struct sha256 *hash;
        char *buffer;
        char path[4096]; /* relative path of the current entry, for the digest and messages */
        struct tree_copy_result *result;
};

static int compare_names(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The directory's entry names, sorted: the digest must not depend on the
 * order readdir happens to return. */
static int list_names(int dir_fd, char ***ret_names, size_t *ret_count, struct moat_error **err)
{
        int fd = dup(dir_fd);
        DIR *dir;
        struct dirent *entry;
        char **names = NULL;
        size_t count = 0, capacity = 0;

        if (fd < 0 || !(dir = fdopendir(fd))) {
                if (fd >= 0)
                        close(fd);
                return moat_error_system(err, errno, "read directory");
        }
        rewinddir(dir);
        while ((entry = readdir(dir))) {
                if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
                        continue;
                if (count == capacity) {
                        char **grown = realloc(names, (capacity = capacity ? capacity * 2 : 32) * sizeof(*names));
                        if (!grown)
                                goto nomem;
                        names = grown;
                }
                if (!(names[count] = strdup(entry->d_name)))
                        goto nomem;
                count++;
        }
        closedir(dir);
        if (count > 1) /* qsort(NULL, 0) is undefined */
                qsort(names, count, sizeof(*names), compare_names);
        *ret_names = names;
        *ret_count = count;
        return 0;
nomem:
        closedir(dir);
        for (size_t i = 0; i < count; i++)
                free(names[i]);
        free(names);
        return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "list directory");
}

static void hash_header(struct walk *walk, char type, const struct stat *st, uid_t uid, gid_t gid)
{
        char header[128];
        int n = snprintf(header, sizeof(header), "%c %o %u %u %lld ", type, (unsigned)(st->st_mode & 07777),
                         (unsigned)uid, (unsigned)gid, (long long)(S_ISREG(st->st_mode) ? st->st_size : 0));

        sha256_update(walk->hash, walk->path, strlen(walk->path) + 1);
        sha256_update(walk->hash, header, (size_t)n);
}

static void map_owner(const struct walk *walk, const struct stat *st, uid_t *uid, gid_t *gid)
{
        const struct tree_copy_options *o = walk->options;

        *uid = st->st_uid;
        *gid = st->st_gid;
        if (o->id_count == 0)
                return;
        *uid = st->st_uid >= o->id_base && st->st_uid - o->id_base < o->id_count ? st->st_uid - o->id_base : 65534;
        *gid = st->st_gid >= o->id_base && st->st_gid - o->id_base < o->id_count ? st->st_gid - o->id_base : 65534;
}

static int copy_xattrs(int source_fd, int target_fd, struct walk *walk, struct moat_error **err)
{
        char names[4096], value[4096];
        ssize_t length = flistxattr(source_fd, names, sizeof(names));

        if (length < 0)
                return errno == ENOTSUP || errno == ERANGE ? 0 : moat_error_system(err, errno, "list xattrs of `%s`", walk->path);
        for (char *name = names; name < names + length; name += strlen(name) + 1) {
                ssize_t size;

                /* Only the overlay's opaque mark (written by the kernel; the
                 * overlay refuses user.overlay.* from its users) and plain
                 * user.* attributes. security.* (file capabilities with a
                 * sandbox's root id baked in, SELinux labels) and trusted.*
                 * are dropped. */
                if (strncmp(name, "user.", 5) != 0)
                        continue;
                if (strncmp(name, "user.overlay.", 13) == 0 && strcmp(name, "user.overlay.opaque") != 0)
                        continue;
                size = fgetxattr(source_fd, name, value, sizeof(value));
                if (size < 0)
                        continue;
                sha256_update(walk->hash, name, strlen(name) + 1);
                sha256_update(walk->hash, value, (size_t)size);
                if (fsetxattr(target_fd, name, value, (size_t)size, 0) < 0)
                        return moat_error_system(err, errno, "set xattr %s on `%s`", name, walk->path);
        }
        return 0;
}

static int copy_file_as(int source_dir, const char *name, int target_dir, const char *target_name,
                        struct walk *walk, struct moat_error **err)
{
        _cleanup_close_ int in = openat(source_dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        _cleanup_close_ int out = -1;
        struct stat now;
        uid_t uid;
        gid_t gid;

        /* The entry may have been replaced since fstatat: judge what we opened. */
        if (in < 0 || fstat(in, &now) < 0 || !S_ISREG(now.st_mode))
                return in < 0 && errno == ENOENT ? 0 : moat_error_system(err, errno ? errno : EIO, "open `%s`", walk->path);
        map_owner(walk, &now, &uid, &gid);
        hash_header(walk, 'f', &now, uid, gid);
        out = openat(target_dir, target_name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (out < 0)
                return moat_error_system(err, errno, "create `%s`", walk->path);
        for (;;) {
                ssize_t n = read(in, walk->buffer, COPY_BUFFER);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return moat_error_system(err, errno, "read `%s`", walk->path);
                if (n == 0)
                        break;
                sha256_update(walk->hash, walk->buffer, (size_t)n);
                for (ssize_t done = 0; done < n;) {
                        ssize_t w = write(out, walk->buffer + done, (size_t)(n - done));
                        if (w < 0 && errno != EINTR)
                                return moat_error_system(err, errno, "write `%s`", walk->path);
                        if (w > 0)
                                done += w;
                }
                walk->result->bytes += (uint64_t)n;
        }
        if (copy_xattrs(in, out, walk, err) < 0 || fchown(out, uid, gid) < 0 ||
            fchmod(out, now.st_mode & 07777) < 0 ||
            futimens(out, (struct timespec[]){now.st_atim, now.st_mtim}) < 0)
                return err && *err ? -1 : moat_error_system(err, errno, "set attributes of `%s`", walk->path);
        return 0;
}

static int copy_file(int source_dir, int target_dir, const char *name, const struct stat *st, struct walk *walk,
                     struct moat_error **err)
{
        return copy_file_as(source_dir, name, target_dir, name, walk, err);
}

static int copy_directory(int source_fd, int target_fd, int depth, struct walk *walk, struct moat_error **err);

static int copy_entry(int source_dir, int target_dir, const char *name, int depth, struct walk *walk,
                      struct moat_error **err)
{
        size_t path_length = strlen(walk->path);
        struct stat st;
        uid_t uid;
        gid_t gid;
        int r = 0;

        if (path_length + strlen(name) + 2 > sizeof(walk->path))
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, NULL, "path too long under `%s`", walk->path);
        snprintf(walk->path + path_length, sizeof(walk->path) - path_length, "%s%s", path_length ? "/" : "", name);
        if (fstatat(source_dir, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                r = errno == ENOENT ? 0 : moat_error_system(err, errno, "stat `%s`", walk->path);
                goto out;
        }
        walk->result->entries++;
        map_owner(walk, &st, &uid, &gid);
        if (S_ISDIR(st.st_mode)) {
                _cleanup_close_ int in = -1, out = -1;

                hash_header(walk, 'd', &st, uid, gid);
                if (mkdirat(target_dir, name, 0700) < 0) {
                        r = moat_error_system(err, errno, "mkdir `%s`", walk->path);
                        goto out;
                }
                in = openat(source_dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                out = openat(target_dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (in < 0 || out < 0) {
                        r = in < 0 && errno == ENOENT ? 0 : moat_error_system(err, errno, "open `%s`", walk->path);
                        goto out;
                }
                if (copy_xattrs(in, out, walk, err) < 0 || copy_directory(in, out, depth + 1, walk, err) < 0 ||
                    fchown(out, uid, gid) < 0 || fchmod(out, st.st_mode & 07777) < 0 ||
                    futimens(out, (struct timespec[]){st.st_atim, st.st_mtim}) < 0)
                        r = err && *err ? -1 : moat_error_system(err, errno, "set attributes of `%s`", walk->path);
        } else if (S_ISREG(st.st_mode)) {
                r = copy_file(source_dir, target_dir, name, &st, walk, err);
        } else if (S_ISLNK(st.st_mode)) {
                char target[4096];
                ssize_t n = readlinkat(source_dir, name, target, sizeof(target) - 1);

                if (n < 0) {
                        r = errno == ENOENT ? 0 : moat_error_system(err, errno, "readlink `%s`", walk->path);
                        goto out;
                }
                target[n] = '\0';
                hash_header(walk, 'l', &st, uid, gid);
                sha256_update(walk->hash, target, (size_t)n + 1);
                if (symlinkat(target, target_dir, name) < 0 || fchownat(target_dir, name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0 ||
                    utimensat(target_dir, name, (struct timespec[]){st.st_atim, st.st_mtim}, AT_SYMLINK_NOFOLLOW) < 0)
                        r = moat_error_system(err, errno, "symlink `%s`", walk->path);
        } else if (S_ISCHR(st.st_mode) && major(st.st_rdev) == 0 && minor(st.st_rdev) == 0) {
                /* An overlay whiteout: the path is deleted in this layer. */
                hash_header(walk, 'w', &st, 0, 0);
                if (mknodat(target_dir, name, S_IFCHR | 0000, makedev(0, 0)) < 0)
                        r = moat_error_system(err, errno, "whiteout `%s`", walk->path);
        } else if (S_ISFIFO(st.st_mode)) {
                hash_header(walk, 'p', &st, uid, gid);
                if (mkfifoat(target_dir, name, st.st_mode & 07777) < 0 ||
                    fchownat(target_dir, name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
                        r = moat_error_system(err, errno, "mkfifo `%s`", walk->path);
        }
        /* Sockets and device nodes: skipped. */
out:
        walk->path[path_length] = '\0';
        return r;
}

static int copy_directory(int source_fd, int target_fd, int depth, struct walk *walk, struct moat_error **err)
{
        char **names = NULL;
        size_t count = 0;
        int r = 0;

        if (depth > DEPTH_MAX)
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, NULL, "directories nested deeper than %d "
                                      "at `%s`", DEPTH_MAX, walk->path);
        if (list_names(source_fd, &names, &count, err) < 0)
                return -1;
        for (size_t i = 0; i < count && r == 0; i++)
                r = copy_entry(source_fd, target_fd, names[i], depth, walk, err);
        for (size_t i = 0; i < count; i++)
                free(names[i]);
        free(names);
        return r;
}

/* A walk's hash and copy buffer; walk_end frees whatever walk_start made,
 * even when it failed half-way. */
static int walk_start(struct walk *walk, const struct tree_copy_options *options, struct tree_copy_result *result,
                      struct moat_error **err)
{
        *walk = (struct walk){.options = options, .result = result};
        memset(result, 0, sizeof(*result));
        walk->hash = sha256_new();
        walk->buffer = malloc(COPY_BUFFER);
        if (!walk->hash || !walk->buffer)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "start sha256");
        return 0;
}

static void walk_end(struct walk *walk)
{
        sha256_free(walk->hash);
        free(walk->buffer);
}

int tree_copy(int source_dir_fd, int target_dir_fd, const struct tree_copy_options *options,
              struct tree_copy_result *result, struct moat_error **err)
{
        struct walk walk;
        struct stat st;
        int r = -1;

        if (walk_start(&walk, options, result, err) < 0)
                goto out;
        if (fstat(source_dir_fd, &st) < 0) {
                moat_error_system(err, errno, "stat source");
                goto out;
        }
        {
                uid_t uid;
                gid_t gid;

                map_owner(&walk, &st, &uid, &gid);
                hash_header(&walk, 'd', &st, uid, gid);
                if (copy_xattrs(source_dir_fd, target_dir_fd, &walk, err) < 0 ||
                    copy_directory(source_dir_fd, target_dir_fd, 0, &walk, err) < 0)
                        goto out;
                if (fchown(target_dir_fd, uid, gid) < 0 || fchmod(target_dir_fd, st.st_mode & 07777) < 0) {
                        moat_error_system(err, errno, "set attributes of the layer root");
                        goto out;
                }
        }
        sha256_final_hex(walk.hash, result->digest);
        r = 0;
out:
        walk_end(&walk);
        return r;
}

int tree_copy_file(int source_dir_fd, const char *name, int target_dir_fd, const char *target_name,
                   const struct tree_copy_options *options, struct tree_copy_result *result, struct moat_error **err)
{
        struct walk walk;
        int r = -1;

        if (walk_start(&walk, options, result, err) < 0)
                goto out;
        snprintf(walk.path, sizeof(walk.path), "%s", name);
        result->entries = 1;
        if (copy_file_as(source_dir_fd, name, target_dir_fd, target_name, &walk, err) < 0)
                goto out;
        sha256_final_hex(walk.hash, result->digest);
        r = 0;
out:
        walk_end(&walk);
        return r;
}
