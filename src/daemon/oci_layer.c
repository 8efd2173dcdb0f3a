/* Layer extraction. The tar is never trusted: every path is cleaned (no
 * absolute paths, no ".."), and every directory on the way to an entry is
 * opened one component at a time with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV) and
 * O_NOFOLLOW, so a symlink planted by an earlier entry ("a -> /etc", then
 * "a/passwd") can never redirect a write outside the layer directory. The
 * final component is created with *at() calls that do not follow symlinks
 * (O_CREAT|O_EXCL|O_NOFOLLOW, symlinkat, mknodat, linkat without
 * AT_SYMLINK_FOLLOW). libarchive is only used to decompress and parse; its
 * archive_write_disk is not used, because its path checks are string based
 * and we want the kernel to enforce "beneath this directory" on every open.
 *
 * The stream: fd -> [sha256: digest] -> libarchive "raw" reader with the gzip
 * and zstd filters (decompression only) -> [sha256: diff_id] -> libarchive tar
 * reader. One pass, nothing buffered beyond 64 KiB. Only gzip and zstd are
 * enabled: libarchive runs external programs for some other filters (lrzip,
 * lzop, grzip), which a hostile blob must not be able to trigger. */
#include "oci_layer.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <linux/openat2.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "sha256.h"

#define STREAM_BUFFER_SIZE (64 * 1024)
#define OVERLAY_OPAQUE_XATTR "user.overlay.opaque"
#define WHITEOUT_PREFIX ".wh."
#define WHITEOUT_META_PREFIX ".wh..wh."
#define WHITEOUT_OPAQUE ".wh..wh..opq"

/* ---- the input stream ---------------------------------------------------- */

struct layer_stream {
        int fd;
        struct sha256 *digest;  /* bytes as stored */
        struct sha256 *diff_id; /* bytes after decompression */
        struct archive *decompressor;
        struct archive *tar;
        char read_error[256]; /* why the fd read failed, if it did */
        char fd_buffer[STREAM_BUFFER_SIZE];
        char tar_buffer[STREAM_BUFFER_SIZE];
};

static la_ssize_t stream_read_fd(struct archive *archive, void *opaque, const void **buffer)
{
        struct layer_stream *stream = opaque;
        ssize_t n;

        do
                n = read(stream->fd, stream->fd_buffer, sizeof(stream->fd_buffer));
        while (n < 0 && errno == EINTR);
        if (n < 0) {
                snprintf(stream->read_error, sizeof(stream->read_error), "read: %s", strerror(errno));
                archive_set_error(archive, errno, "read: %s", strerror(errno));
                return -1;
        }
        sha256_update(stream->digest, stream->fd_buffer, (size_t)n);
        *buffer = stream->fd_buffer;
        return n;
}

static la_ssize_t stream_read_decompressed(struct archive *archive, void *opaque, const void **buffer)
{
        struct layer_stream *stream = opaque;
        la_ssize_t n = archive_read_data(stream->decompressor, stream->tar_buffer, sizeof(stream->tar_buffer));

        if (n < 0) {
                archive_set_error(archive, EIO, "decompressing: %s",
                                  archive_error_string(stream->decompressor));
                return -1;
        }
        sha256_update(stream->diff_id, stream->tar_buffer, (size_t)n);
        *buffer = stream->tar_buffer;
        return n;
}

static void layer_stream_close(struct layer_stream *stream)
{
        if (stream->tar)
                archive_read_free(stream->tar);
        if (stream->decompressor)
                archive_read_free(stream->decompressor);
        sha256_free(stream->digest);
        sha256_free(stream->diff_id);
        free(stream);
}

static void layer_stream_closep(struct layer_stream **stream)
{
        if (*stream)
                layer_stream_close(*stream);
}

static int bad_layer(struct moat_error **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad_layer(struct moat_error **err, const char *fmt, ...)
{
        char message[900];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(message, sizeof(message), fmt, ap);
        va_end(ap);
        return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, OCI_ERROR_BAD_LAYER, "%s", message);
}

/* The fd is borrowed, not closed. */
static struct layer_stream *layer_stream_open(int fd, struct moat_error **err)
{
        struct layer_stream *stream = calloc(1, sizeof(*stream));
        struct archive_entry *raw_entry;
        int r;

        if (!stream) {
                moat_error_system(err, ENOMEM, "layer stream");
                return NULL;
        }
        stream->fd = fd;
        stream->digest = sha256_new();
        stream->diff_id = sha256_new();
        stream->decompressor = archive_read_new();
        stream->tar = archive_read_new();
        if (!stream->digest || !stream->diff_id || !stream->decompressor || !stream->tar) {
                layer_stream_close(stream);
                moat_error_system(err, ENOMEM, "layer stream");
                return NULL;
        }
        if (archive_read_support_filter_gzip(stream->decompressor) != ARCHIVE_OK ||
            archive_read_support_filter_zstd(stream->decompressor) != ARCHIVE_OK ||
            archive_read_support_format_raw(stream->decompressor) != ARCHIVE_OK ||
            archive_read_support_format_tar(stream->tar) != ARCHIVE_OK) {
                /* ARCHIVE_WARN here would mean "via an external program". */
                moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "libarchive lacks built-in gzip/zstd/tar support");
                layer_stream_close(stream);
                return NULL;
        }
        r = archive_read_open(stream->decompressor, stream, NULL, stream_read_fd, NULL);
        if (r == ARCHIVE_OK)
                r = archive_read_next_header(stream->decompressor, &raw_entry);
        if (r != ARCHIVE_OK) {
                if (stream->read_error[0])
                        moat_error_system(err, 0, "layer: %s", stream->read_error);
                else
                        bad_layer(err, "layer: not a tar, tar.gz or tar.zst stream: %s",
                                  archive_error_string(stream->decompressor) ?: "empty");
                layer_stream_close(stream);
                return NULL;
        }
        if (archive_read_open(stream->tar, stream, NULL, stream_read_decompressed, NULL) != ARCHIVE_OK) {
                bad_layer(err, "layer: %s", archive_error_string(stream->tar) ?: "cannot read tar");
                layer_stream_close(stream);
                return NULL;
        }
        return stream;
}

/* After the tar's end marker: hash what is left of the decompressed stream
 * (tar padding) and of the fd, so diff_id and digest cover every byte. */
static int layer_stream_drain(struct layer_stream *stream, struct moat_error **err)
{
        const void *unused;
        la_ssize_t n;

        while ((n = stream_read_decompressed(stream->tar, stream, &unused)) > 0)
                ;
        if (n < 0)
                return bad_layer(err, "layer: %s", archive_error_string(stream->tar));
        while ((n = stream_read_fd(stream->decompressor, stream, &unused)) > 0)
                ;
        if (n < 0)
                return moat_error_system(err, 0, "layer: %s", stream->read_error);
        return 0;
}

/* ---- safe path handling -------------------------------------------------- */

/* Normalise a tar path into out: drop "." and empty components; refuse
 * absolute paths and ".." anywhere, so no later step has to reason about
 * lexical escapes. An empty result means the layer root itself. */
static int layer_path_clean(const char *raw, char *out, size_t size, struct moat_error **err)
{
        size_t length = 0;
        const char *p = raw;

        if (!raw || !raw[0])
                return bad_layer(err, "layer: entry without a name");
        if (raw[0] == '/')
                return bad_layer(err, "layer: absolute path `%s`", raw);
        while (*p) {
                const char *end = strchrnul(p, '/');
                size_t n = (size_t)(end - p);

                if (n == 2 && p[0] == '.' && p[1] == '.')
                        return bad_layer(err, "layer: path `%s` has a `..` component", raw);
                if (n > 0 && !(n == 1 && p[0] == '.')) {
                        if (length + n + 2 > size)
                                return bad_layer(err, "layer: path `%.200s...` is too long", raw);
                        if (length > 0)
                                out[length++] = '/';
                        memcpy(out + length, p, n);
                        length += n;
                }
                p = *end ? end + 1 : end;
        }
        out[length] = '\0';
        return 0;
}

static int open_beneath(int dir_fd, const char *name, int flags)
{
        struct open_how how = {
                .flags = (uint64_t)(flags | O_NOFOLLOW | O_CLOEXEC),
                /* Defence in depth over O_NOFOLLOW: no symlink, no /proc
                 * magic link, no mount crossing, nothing above dir_fd. */
                .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
        };

        return (int)syscall(SYS_openat2, dir_fd, name, &how, sizeof(how));
}

/* Open the directory `path` (cleaned, relative, "" = root) one component at a
 * time. With create, missing directories are made (root-owned, 0755: tars
 * often omit parents). A component that is a symlink or not a directory is
 * refused, not followed. Returns an owned fd. */
static int layer_open_directory(int root_fd, const char *path, bool create, struct moat_error **err)
{
        _cleanup_close_ int current = fcntl(root_fd, F_DUPFD_CLOEXEC, 3);
        char copy[OCI_LAYER_MAX_PATH + 1];
        char *component, *save = NULL;

        if (current < 0)
                return moat_error_system(err, errno, "dup");
        snprintf(copy, sizeof(copy), "%s", path);
        for (component = strtok_r(copy, "/", &save); component; component = strtok_r(NULL, "/", &save)) {
                int next = open_beneath(current, component, O_RDONLY | O_DIRECTORY);

                if (next < 0 && errno == ENOENT && create) {
                        if (mkdirat(current, component, 0755) < 0 && errno != EEXIST)
                                return moat_error_system(err, errno, "mkdir `%s` in layer", path);
                        next = open_beneath(current, component, O_RDONLY | O_DIRECTORY);
                        /* Undo the umask; created dirs are later overridden by
                         * the tar's own entry for them, if it has one. */
                        if (next >= 0 && fchmod(next, 0755) < 0) {
                                close(next);
                                return moat_error_system(err, errno, "chmod `%s` in layer", path);
                        }
                }
                if (next < 0) {
                        if (errno == ELOOP || errno == ENOTDIR || errno == EXDEV || errno == ENOENT)
                                return bad_layer(err, "layer: `%s` is not a directory inside the layer "
                                                      "(symlink or missing)", path);
                        return moat_error_system(err, errno, "open `%s` in layer", path);
                }
                close(current);
                current = next;
        }
        return TAKE_FD(current);
}

/* Split a cleaned path into its parent (written into parent) and base name. */
static const char *layer_path_split(const char *path, char parent[OCI_LAYER_MAX_PATH + 1])
{
        const char *slash = strrchr(path, '/');

        if (!slash) {
                parent[0] = '\0';
                return path;
        }
        memcpy(parent, path, (size_t)(slash - path));
        parent[slash - path] = '\0';
        return slash + 1;
}

/* Make room for a new entry `name` in parent_fd: a later tar entry replaces
 * an earlier one. Returns 1 if an existing directory is kept (new entry is a
 * directory too), 0 otherwise. */
static int layer_clear_existing(int parent_fd, const char *name, bool new_is_directory, const char *path,
                                struct moat_error **err)
{
        struct stat st;

        if (fstatat(parent_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                if (errno == ENOENT)
                        return 0;
                return moat_error_system(err, errno, "stat `%s` in layer", path);
        }
        if (S_ISDIR(st.st_mode)) {
                if (new_is_directory)
                        return 1;
                if (unlinkat(parent_fd, name, AT_REMOVEDIR) < 0) {
                        if (errno == ENOTEMPTY || errno == EEXIST)
                                return bad_layer(err, "layer: `%s` replaces a non-empty directory", path);
                        return moat_error_system(err, errno, "rmdir `%s` in layer", path);
                }
                return 0;
        }
        if (unlinkat(parent_fd, name, 0) < 0)
                return moat_error_system(err, errno, "unlink `%s` in layer", path);
        return 0;
}

/* ---- extraction ---------------------------------------------------------- */

enum extract_mode {
        EXTRACT_LAYER,   /* image layer: owners, modes, xattrs, whiteouts */
        EXTRACT_ARCHIVE, /* outer image archive: plain files owned by root */
};

struct directory_time {
        char *path;
        struct timespec mtime;
};

struct extract {
        int root_fd;
        enum extract_mode mode;
        struct directory_time *directory_times;
        size_t directory_time_count, directory_time_capacity;
        uint64_t size, entries;
        uint64_t max_size; /* 0: unbounded */
};

/* Which xattrs a layer may carry. An allow list, because the kernel gives
 * meaning to many namespaces: trusted.* (overlayfs' own metadata with the
 * default mount options), security.selinux/ima/evm (host LSM labels). The
 * user.overlay.* names are overlayfs' metadata in our userxattr mounts: a tar
 * carrying them could forge whiteouts, opaque directories, redirects or
 * metacopy, so only our own whiteout conversion may write them.
 * security.capability is kept (images ship e.g. ping with cap_net_raw): the
 * overlay is idmapped into the sandbox's user namespace, so the capability is
 * scoped to that namespace there. Written here by host root, it is a v2
 * capability on the host path, which is why the store must stay unreachable
 * for other host users (the data dir is 0700). */
/* user.* only. user.overlay.* from a tar would forge whiteouts and opaque
 * directories; security.capability written by moatd (host root) would be a
 * file capability valid on the host for a file in the store, and trusted.*
 * and security.* else are not the image's to set. */
static bool layer_xattr_allowed(const char *name)
{
        if (strncmp(name, "user.overlay.", strlen("user.overlay.")) == 0)
                return false;
        return strncmp(name, "user.", strlen("user.")) == 0;
}

static int entry_owner(const struct extract *x, struct archive_entry *entry, const char *path, uid_t *uid, gid_t *gid,
                       struct moat_error **err)
{
        la_int64_t u = archive_entry_uid(entry), g = archive_entry_gid(entry);

        if (x->mode == EXTRACT_ARCHIVE) {
                *uid = 0;
                *gid = 0;
                return 0;
        }
        /* Numeric ids only, never names: the ids are the sandbox's. (uid_t)-1
         * means "leave unchanged" to chown, so it is refused too. */
        if (u < 0 || u >= (la_int64_t)UINT32_MAX || g < 0 || g >= (la_int64_t)UINT32_MAX)
                return bad_layer(err, "layer: `%s` has an invalid owner %lld:%lld", path, (long long)u,
                                 (long long)g);
        *uid = (uid_t)u;
        *gid = (gid_t)g;
        return 0;
}

static struct timespec entry_mtime(struct archive_entry *entry)
{
        struct timespec t = {0, 0};

        if (archive_entry_mtime_is_set(entry)) {
                t.tv_sec = archive_entry_mtime(entry);
                t.tv_nsec = archive_entry_mtime_nsec(entry);
                if (t.tv_nsec < 0 || t.tv_nsec >= 1000000000)
                        t.tv_nsec = 0;
        }
        return t;
}

/* Owner, then mode (chown clears setuid bits), then xattrs (chown clears
 * security.capability), then times. fd is an open file or directory. */
static int layer_apply_metadata(struct extract *x, int fd, struct archive_entry *entry, const char *path,
                                struct moat_error **err)
{
        mode_t mode = archive_entry_perm(entry) & (x->mode == EXTRACT_LAYER ? 07777 : 0755);
        struct timespec times[2];
        const char *name;
        const void *value;
        size_t size;
        uid_t uid;
        gid_t gid;

        if (entry_owner(x, entry, path, &uid, &gid, err) < 0)
                return -1;
        if (fchown(fd, uid, gid) < 0)
                return moat_error_system(err, errno, "chown `%s` in layer", path);
        if (fchmod(fd, mode) < 0)
                return moat_error_system(err, errno, "chmod `%s` in layer", path);
        if (x->mode == EXTRACT_LAYER) {
                archive_entry_xattr_reset(entry);
                while (archive_entry_xattr_next(entry, &name, &value, &size) == ARCHIVE_OK) {
                        if (!name || !layer_xattr_allowed(name))
                                continue;
                        if (fsetxattr(fd, name, value, size, 0) < 0) {
                                if (errno == EINVAL || errno == ERANGE || errno == E2BIG || errno == EPERM)
                                        return bad_layer(err, "layer: xattr `%s` on `%s` refused: %s", name, path,
                                                         strerror(errno));
                                return moat_error_system(err, errno, "setxattr `%s` on `%s` in layer", name, path);
                        }
                }
        }
        times[0] = times[1] = entry_mtime(entry);
        if (futimens(fd, times) < 0)
                return moat_error_system(err, errno, "set times of `%s` in layer", path);
        return 0;
}

static int layer_copy_data(struct extract *x, struct archive *tar, int fd, struct archive_entry *entry,
                           const char *path, struct moat_error **err)
{
        la_int64_t end = 0;

        for (;;) {
                const void *block;
                size_t length;
                la_int64_t offset;
                int r = archive_read_data_block(tar, &block, &length, &offset);

                if (r == ARCHIVE_EOF)
                        break;
                if (r != ARCHIVE_OK)
                        return bad_layer(err, "layer: data of `%s`: %s", path,
                                         archive_error_string(tar) ?: "read error");
                if (offset < 0)
                        return bad_layer(err, "layer: data of `%s` at a negative offset", path);
                for (size_t done = 0; done < length;) {
                        ssize_t n = pwrite(fd, (const char *)block + done, length - done, offset + (off_t)done);

                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                return moat_error_system(err, errno, "write `%s` in layer", path);
                        }
                        done += (size_t)n;
                }
                x->size += length;
                if (x->max_size && x->size > x->max_size)
                        return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, OCI_ERROR_LAYER_TOO_LARGE,
                                              "layer: more than %llu bytes of files",
                                              (unsigned long long)x->max_size);
                if (offset + (la_int64_t)length > end)
                        end = offset + (la_int64_t)length;
        }
        /* A sparse file's tail hole. It takes no disk space here, but counts
         * toward the limit: a copy-up in the sandbox would materialise it. */
        if (archive_entry_size_is_set(entry) && archive_entry_size(entry) > end) {
                x->size += (uint64_t)(archive_entry_size(entry) - end);
                if (x->max_size && x->size > x->max_size)
                        return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, OCI_ERROR_LAYER_TOO_LARGE,
                                              "layer: more than %llu bytes of files",
                                              (unsigned long long)x->max_size);
                if (ftruncate(fd, archive_entry_size(entry)) < 0)
                        return moat_error_system(err, errno, "truncate `%s` in layer", path);
        }
        return 0;
}

static int layer_remember_directory_time(struct extract *x, const char *path, struct archive_entry *entry,
                                         struct moat_error **err)
{
        if (x->directory_time_count == x->directory_time_capacity) {
                size_t capacity = x->directory_time_capacity ? 2 * x->directory_time_capacity : 64;
                struct directory_time *grown = realloc(x->directory_times, capacity * sizeof(*grown));

                if (!grown)
                        return moat_error_system(err, ENOMEM, "layer");
                x->directory_times = grown;
                x->directory_time_capacity = capacity;
        }
        x->directory_times[x->directory_time_count].path = strdup(path);
        if (!x->directory_times[x->directory_time_count].path)
                return moat_error_system(err, ENOMEM, "layer");
        x->directory_times[x->directory_time_count++].mtime = entry_mtime(entry);
        return 0;
}

/* Creating children changed the directories' mtimes: set them last. A
 * directory that a later entry replaced is skipped. */
static void layer_restore_directory_times(struct extract *x)
{
        for (size_t i = x->directory_time_count; i-- > 0;) {
                struct timespec times[2] = {x->directory_times[i].mtime, x->directory_times[i].mtime};
                struct moat_error *ignored = NULL;
                _cleanup_close_ int fd = layer_open_directory(x->root_fd, x->directory_times[i].path, false, &ignored);

                moat_error_free(ignored);
                if (fd >= 0)
                        (void)futimens(fd, times);
        }
}

static void extract_releasep(struct extract *x)
{
        for (size_t i = 0; i < x->directory_time_count; i++)
                free(x->directory_times[i].path);
        free(x->directory_times);
        moat_closep(&x->root_fd);
}

/* ".wh.NAME" -> character device 0:0 NAME; ".wh..wh..opq" -> opaque xattr on
 * the directory. Per the OCI spec a whiteout hides only lower layers, so if
 * this layer already has NAME, NAME stays. Other ".wh..wh." names are aufs
 * bookkeeping and carry no content: skipped. */
static int layer_apply_whiteout(struct extract *x, const char *parent, const char *base, const char *path,
                                struct moat_error **err)
{
        _cleanup_close_ int parent_fd = layer_open_directory(x->root_fd, parent, true, err);
        const char *name = base + strlen(WHITEOUT_PREFIX);
        struct stat st;

        if (parent_fd < 0)
                return -1;
        if (strcmp(base, WHITEOUT_OPAQUE) == 0) {
                if (fsetxattr(parent_fd, OVERLAY_OPAQUE_XATTR, "y", 1, 0) < 0)
                        return moat_error_system(err, errno, "setxattr " OVERLAY_OPAQUE_XATTR " on `%s`", parent);
                return 0;
        }
        if (strncmp(base, WHITEOUT_META_PREFIX, strlen(WHITEOUT_META_PREFIX)) == 0)
                return 0;
        if (!name[0] || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
                return bad_layer(err, "layer: whiteout `%s` names no file", path);
        if (fstatat(parent_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
                return 0;
        if (errno != ENOENT)
                return moat_error_system(err, errno, "stat `%s` in layer", path);
        if (mknodat(parent_fd, name, S_IFCHR | 0, makedev(0, 0)) < 0)
                return moat_error_system(err, errno, "mknod whiteout `%s` in layer", path);
        return 0;
}

static int layer_apply_hardlink(struct extract *x, int parent_fd, const char *base, const char *path,
                                const char *raw_target, struct moat_error **err)
{
        char target[OCI_LAYER_MAX_PATH + 1], target_parent[OCI_LAYER_MAX_PATH + 1];
        _cleanup_close_ int target_parent_fd = -1;
        const char *target_base;

        if (layer_path_clean(raw_target, target, sizeof(target), err) < 0)
                return moat_error_wrap(err, "hardlink `%s`", path);
        if (!target[0])
                return bad_layer(err, "layer: hardlink `%s` to the layer root", path);
        if (strcmp(target, path) == 0)
                return bad_layer(err, "layer: hardlink `%s` to itself", path);
        target_base = layer_path_split(target, target_parent);
        /* The target's directories are walked like any other path: a symlink
         * on the way ("b -> /etc", link to "b/shadow") is refused. */
        target_parent_fd = layer_open_directory(x->root_fd, target_parent, false, err);
        if (target_parent_fd < 0)
                return moat_error_wrap(err, "hardlink `%s`", path);
        if (layer_clear_existing(parent_fd, base, false, path, err) < 0)
                return -1;
        /* flags 0: if the target is itself a symlink, link the symlink, never
         * what it points to. */
        if (linkat(target_parent_fd, target_base, parent_fd, base, 0) < 0) {
                if (errno == ENOENT || errno == EPERM || errno == EXDEV)
                        return bad_layer(err, "layer: hardlink `%s` -> `%s`: no such file in the layer", path,
                                         target);
                return moat_error_system(err, errno, "link `%s` in layer", path);
        }
        return 0;
}

static int layer_apply_entry(struct extract *x, struct archive *tar, struct archive_entry *entry,
                             struct moat_error **err)
{
        char path[OCI_LAYER_MAX_PATH + 1], parent[OCI_LAYER_MAX_PATH + 1];
        _cleanup_close_ int parent_fd = -1, fd = -1;
        mode_t type = archive_entry_filetype(entry);
        const char *hardlink = archive_entry_hardlink(entry);
        const char *base;
        uid_t uid;
        gid_t gid;
        int r;

        if (layer_path_clean(archive_entry_pathname(entry), path, sizeof(path), err) < 0)
                return -1;
        base = layer_path_split(path, parent);

        if (!path[0]) {
                /* "./": the layer root's own metadata. */
                if (type != AE_IFDIR || hardlink)
                        return bad_layer(err, "layer: the root entry is not a directory");
                if (x->mode == EXTRACT_ARCHIVE)
                        return 0;
                return layer_apply_metadata(x, x->root_fd, entry, ".", err);
        }
        if (x->mode == EXTRACT_LAYER && strncmp(base, WHITEOUT_PREFIX, strlen(WHITEOUT_PREFIX)) == 0)
                return layer_apply_whiteout(x, parent, base, path, err);

        parent_fd = layer_open_directory(x->root_fd, parent, true, err);
        if (parent_fd < 0)
                return -1;
        if (hardlink)
                return layer_apply_hardlink(x, parent_fd, base, path, hardlink, err);

        switch (type) {
        case AE_IFREG:
                if (layer_clear_existing(parent_fd, base, false, path, err) < 0)
                        return -1;
                fd = openat(parent_fd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
                if (fd < 0)
                        return moat_error_system(err, errno, "create `%s` in layer", path);
                if (layer_copy_data(x, tar, fd, entry, path, err) < 0)
                        return -1;
                return layer_apply_metadata(x, fd, entry, path, err);
        case AE_IFDIR:
                r = layer_clear_existing(parent_fd, base, true, path, err);
                if (r < 0)
                        return -1;
                if (r == 0 && mkdirat(parent_fd, base, 0700) < 0)
                        return moat_error_system(err, errno, "mkdir `%s` in layer", path);
                fd = open_beneath(parent_fd, base, O_RDONLY | O_DIRECTORY);
                if (fd < 0)
                        return moat_error_system(err, errno, "open `%s` in layer", path);
                if (layer_apply_metadata(x, fd, entry, path, err) < 0)
                        return -1;
                return layer_remember_directory_time(x, path, entry, err);
        case AE_IFLNK: {
                const char *target = archive_entry_symlink(entry);
                struct timespec times[2];

                /* The target is stored verbatim, whatever it says ("/etc",
                 * "../../x"): extraction never follows a symlink, and inside
                 * the sandbox it resolves against the sandbox's root. */
                if (!target || !target[0])
                        return bad_layer(err, "layer: symlink `%s` without a target", path);
                if (layer_clear_existing(parent_fd, base, false, path, err) < 0)
                        return -1;
                if (symlinkat(target, parent_fd, base) < 0)
                        return moat_error_system(err, errno, "symlink `%s` in layer", path);
                if (entry_owner(x, entry, path, &uid, &gid, err) < 0)
                        return -1;
                if (fchownat(parent_fd, base, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
                        return moat_error_system(err, errno, "chown `%s` in layer", path);
                times[0] = times[1] = entry_mtime(entry);
                if (utimensat(parent_fd, base, times, AT_SYMLINK_NOFOLLOW) < 0)
                        return moat_error_system(err, errno, "set times of `%s` in layer", path);
                return 0;
        }
        case AE_IFIFO: {
                struct timespec times[2];

                if (x->mode != EXTRACT_LAYER)
                        break;
                if (layer_clear_existing(parent_fd, base, false, path, err) < 0)
                        return -1;
                if (mknodat(parent_fd, base, S_IFIFO | 0600, 0) < 0)
                        return moat_error_system(err, errno, "mkfifo `%s` in layer", path);
                if (entry_owner(x, entry, path, &uid, &gid, err) < 0)
                        return -1;
                /* No symlink can replace the fifo in between: only this
                 * thread writes into the staging directory. */
                if (fchownat(parent_fd, base, uid, gid, AT_SYMLINK_NOFOLLOW) < 0 ||
                    fchmodat(parent_fd, base, archive_entry_perm(entry) & 07777, 0) < 0)
                        return moat_error_system(err, errno, "set owner/mode of `%s` in layer", path);
                times[0] = times[1] = entry_mtime(entry);
                if (utimensat(parent_fd, base, times, AT_SYMLINK_NOFOLLOW) < 0)
                        return moat_error_system(err, errno, "set times of `%s` in layer", path);
                return 0;
        }
        default:
                break;
        }
        /* Device nodes would give the sandbox raw access to host devices
         * (the overlay is not mounted nodev everywhere); sockets cannot be
         * meaningfully restored. Refusing is simpler and safer than skipping. */
        return bad_layer(err, "layer: `%s` has an unsupported file type 0%o", path, (unsigned)type);
}

static int extract_stream(int fd, const char *dir, enum extract_mode mode, uint64_t max_size,
                          struct oci_layer_result *result, struct moat_error **err)
{
        _cleanup_(extract_releasep) struct extract x = {.root_fd = -1, .mode = mode, .max_size = max_size};
        _cleanup_(layer_stream_closep) struct layer_stream *stream = NULL;
        struct archive_entry *entry;

        x.root_fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (x.root_fd < 0)
                return moat_error_system(err, errno, "open `%s`", dir);
        /* A 0-byte stream is refused here: the raw reader finds no data. */
        stream = layer_stream_open(fd, err);
        if (!stream)
                return -1;
        for (;;) {
                int r = archive_read_next_header(stream->tar, &entry);

                if (r == ARCHIVE_EOF)
                        break;
                /* ARCHIVE_WARN (e.g. an ignored malformed pax attribute)
                 * still yields an entry, which is validated like any other. */
                if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
                        if (stream->read_error[0])
                                return moat_error_system(err, 0, "layer: %s", stream->read_error);
                        return bad_layer(err, "layer: %s", archive_error_string(stream->tar) ?: "corrupt tar");
                }
                if (++x.entries > OCI_LAYER_MAX_ENTRIES)
                        return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, OCI_ERROR_LAYER_TOO_LARGE,
                                              "layer: more than %d entries", OCI_LAYER_MAX_ENTRIES);
                if (layer_apply_entry(&x, stream->tar, entry, err) < 0)
                        return -1;
        }
        if (layer_stream_drain(stream, err) < 0)
                return -1;
        layer_restore_directory_times(&x);
        if (result) {
                sha256_final_hex(stream->digest, result->digest);
                sha256_final_hex(stream->diff_id, result->diff_id);
                result->size = x.size;
                result->entries = x.entries;
        }
        return 0;
}

int oci_layer_apply(int fd, const char *dir, struct oci_layer_result *result, struct moat_error **err)
{
        return oci_layer_apply_limited(fd, dir, 0, result, err);
}

int oci_layer_apply_limited(int fd, const char *dir, uint64_t max_size, struct oci_layer_result *result,
                            struct moat_error **err)
{
        struct oci_layer_result computed;

        memset(&computed, 0, sizeof(computed));
        if (extract_stream(fd, dir, EXTRACT_LAYER, max_size, &computed, err) < 0)
                return -1;
        if (result)
                *result = computed;
        return 0;
}

int oci_archive_extract(const char *tar_path, const char *dir, uint64_t max_size, struct moat_error **err)
{
        _cleanup_close_ int fd = open(tar_path, O_RDONLY | O_CLOEXEC);

        if (fd < 0)
                return moat_error_system(err, errno, "open `%s`", tar_path);
        if (extract_stream(fd, dir, EXTRACT_ARCHIVE, max_size, NULL, err) < 0)
                return moat_error_wrap(err, "image archive `%s`", tar_path);
        return 0;
}
