/* /v1/volumes: create, list, inspect, delete persistent volumes, and read,
 * write, list and remove their files from outside any sandbox. Every path is
 * resolved inside the volume's data directory by volume_open() (openat2 with
 * RESOLVE_IN_ROOT): what a sandbox planted there cannot lead moatd out. */
#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api.h"
#include "common/cleanup.h"
#include "log.h"
#include "volume.h"

/* Listing a directory: bounded so one request cannot build a huge reply. */
#define VOLUME_LIST_ENTRIES_MAX 10000
/* Recursive remove: bounded depth (no unbounded recursion on the stack). */
#define VOLUME_REMOVE_DEPTH_MAX 64

static void reply_error(struct api_call *call, struct moat_error *err)
{
        api_reply_error(call->request, err);
        moat_error_free(err);
}

/* The volume named by the route's {name}, or NULL once a reply is sent. */
static struct volume *volume_of(struct api_call *call)
{
        struct moat_error *err = NULL;
        _cleanup_free_ char *name = api_param_decode(call, 0);
        struct volume *volume;

        if (!name || !volume_name_valid(name)) {
                api_reply_new_error(call->request, MOAT_ERROR_INVALID_ARGUMENT, "invalid_volume_name",
                                    "volume names are [a-z0-9][a-z0-9_.-]{0,62}");
                return NULL;
        }
        volume = volume_find(name, &err);
        if (!volume)
                reply_error(call, err);
        return volume;
}

void api_volumes_create(struct api_call *call)
{
        struct moat_error *err = NULL;
        size_t length;
        const char *body = api_body(call->request, &length);
        json_error_t json_error;
        json_t *root = json_loadb(body ? body : "", length, JSON_REJECT_DUPLICATES, &json_error);
        const char *name = NULL;
        json_int_t size = VOLUME_SIZE_MIB_DEFAULT;
        struct volume *volume;

        if (!root || json_unpack_ex(root, &json_error, JSON_STRICT, "{s:s,s?I}", "name", &name, "size_mib", &size) < 0) {
                api_reply_new_error(call->request, MOAT_ERROR_INVALID_ARGUMENT, NULL,
                                    "body must be {\"name\": string, \"size_mib\": integer}: %s", json_error.text);
                json_decref(root);
                return;
        }
        if (size < 1 || size > VOLUME_SIZE_MIB_MAX) {
                api_reply_new_error(call->request, MOAT_ERROR_INVALID_ARGUMENT, NULL, "size_mib must be 1..%u",
                                    VOLUME_SIZE_MIB_MAX);
                json_decref(root);
                return;
        }
        volume = volume_create(call->daemon, name, (uint32_t)size, &err);
        json_decref(root);
        if (!volume) {
                reply_error(call, err);
                return;
        }
        log_info("volume %s created (%u MiB)", volume->name, volume->size_mib);
        api_reply_json(call->request, 201, volume_to_json(volume));
}

void api_volumes_list(struct api_call *call)
{
        json_t *list = json_array();

        for (struct volume *v = volume_list_head(); v; v = v->next)
                json_array_append_new(list, volume_to_json(v));
        api_reply_json(call->request, 200, json_pack("{s:o}", "volumes", list));
}

void api_volumes_get(struct api_call *call)
{
        struct volume *volume = volume_of(call);

        if (volume)
                api_reply_json(call->request, 200, volume_to_json(volume));
}

void api_volumes_delete(struct api_call *call)
{
        struct moat_error *err = NULL;
        struct volume *volume = volume_of(call);
        char name[VOLUME_NAME_MAX + 1];

        if (!volume)
                return;
        snprintf(name, sizeof(name), "%s", volume->name);
        if (volume_delete(call->daemon, name, &err) < 0) {
                reply_error(call, err);
                return;
        }
        log_info("volume %s deleted", name);
        api_reply_json(call->request, 200, json_pack("{s:s,s:b}", "name", name, "deleted", 1));
}

/* ?path=P, required. */
static const char *path_of(struct api_call *call)
{
        const char *path = api_query(call, "path");

        if (!path || path[0] != '/' || strlen(path) >= PATH_MAX) {
                api_reply_new_error(call->request, MOAT_ERROR_INVALID_ARGUMENT, "invalid_path",
                                    "?path= must be an absolute path inside the volume");
                return NULL;
        }
        return path;
}

/* GET .../files/content?path=P: the file's bytes. libevent sends them from
 * the fd (sendfile) in chunks as the socket drains: a large file is never
 * held in moatd's memory. */
void api_volumes_content_get(struct api_call *call)
{
        struct moat_error *err = NULL;
        struct volume *volume = volume_of(call);
        const char *path = volume ? path_of(call) : NULL;
        struct evbuffer *buffer;
        struct stat st;
        int fd;

        if (!path)
                return;
        /* Symlinks are followed, inside the volume only (volume_open). */
        fd = volume_open(volume, path, O_RDONLY | O_NONBLOCK, 0, &err);
        if (fd < 0) {
                reply_error(call, err);
                return;
        }
        /* Regular files only: a FIFO a sandbox made would block the loop,
         * a directory has no content. */
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                close(fd);
                api_reply_new_error(call->request, MOAT_ERROR_INVALID_ARGUMENT, "not_a_file",
                                    "`%s` is not a regular file", path);
                return;
        }
        buffer = evbuffer_new();
        /* evbuffer_add_file takes the fd, even on failure. */
        if (!buffer || evbuffer_add_file(buffer, fd, 0, st.st_size) < 0) {
                if (buffer)
                        evbuffer_free(buffer);
                else
                        close(fd);
                api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "buffer `%s`", path);
                return;
        }
        evhttp_add_header(evhttp_request_get_output_headers(call->request), "Content-Type",
                          "application/octet-stream");
        evhttp_send_reply(call->request, 200, "OK", buffer);
        evbuffer_free(buffer);
}

/* PUT .../files/content?path=P: replace the whole file with the body. Written
 * to a temporary name in the same directory, fsync'd, then renamed over: a
 * reader (or a crash) sees the old file or the new one, never half of it; a
 * full volume fails with ENOSPC and leaves the old file. */
void api_volumes_content_put(struct api_call *call)
{
        struct moat_error *err = NULL;
        struct volume *volume = volume_of(call);
        const char *path = volume ? path_of(call) : NULL;
        _cleanup_close_ int parent = -1, fd = -1;
        char name[256], temporary[300];
        size_t length;
        const char *body;
        struct stat st;

        if (!path)
                return;
        parent = volume_open_parent(volume, path, name, &err);
        if (parent < 0) {
                reply_error(call, err);
                return;
        }
        /* O_PATH parent: reopen it as a real directory for *at() calls. */
        {
                int directory = openat(parent, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (directory < 0) {
                        api_reply_new_error(call->request, MOAT_ERROR_SYSTEM, NULL, "open parent of `%s`", path);
                        return;
                }
                close(parent);
                parent = directory;
        }
        if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
                api_reply_new_error(call->request, MOAT_ERROR_INVALID_ARGUMENT, "is_a_directory",
                                    "`%s` is a directory", path);
                return;
        }
        body = api_body(call->request, &length);
        snprintf(temporary, sizeof(temporary), ".moat-upload-%d-%.200s", (int)getpid(), name);
        fd = openat(parent, temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0) {
                moat_error_set(&err, errno == EROFS || errno == ENOSPC ? MOAT_ERROR_LIMIT_EXCEEDED : MOAT_ERROR_SYSTEM,
                               errno, errno == ENOSPC ? "volume_full" : NULL, "create `%s`", path);
                reply_error(call, err);
                return;
        }
        for (size_t done = 0; done < length;) {
                ssize_t n = write(fd, body + done, length - done);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        int saved = n < 0 ? errno : EIO;
                        unlinkat(parent, temporary, 0);
                        moat_error_set(&err, saved == ENOSPC || saved == EDQUOT ? MOAT_ERROR_LIMIT_EXCEEDED
                                                                                : MOAT_ERROR_SYSTEM,
                                       saved, saved == ENOSPC || saved == EDQUOT ? "volume_full" : NULL, "write `%s`",
                                       path);
                        reply_error(call, err);
                        return;
                }
                done += (size_t)n;
        }
        /* fsync before rename: the reply means the data is on disk. */
        if (fsync(fd) < 0 || renameat(parent, temporary, parent, name) < 0) {
                int saved = errno;
                unlinkat(parent, temporary, 0);
                moat_error_set(&err, saved == ENOSPC ? MOAT_ERROR_LIMIT_EXCEEDED : MOAT_ERROR_SYSTEM, saved,
                               saved == ENOSPC ? "volume_full" : NULL, "write `%s`", path);
                reply_error(call, err);
                return;
        }
        fsync(parent);
        api_reply_json(call->request, 200, json_pack("{s:s,s:I}", "path", path, "size", (json_int_t)length));
}

static const char *type_name(mode_t mode)
{
        return S_ISREG(mode) ? "file" : S_ISDIR(mode) ? "dir" : S_ISLNK(mode) ? "symlink" : "other";
}

/* GET .../files/list?path=P: one level, entries sorted by name. */
void api_volumes_list_files(struct api_call *call)
{
        struct moat_error *err = NULL;
        struct volume *volume = volume_of(call);
        const char *path = volume ? path_of(call) : NULL;
        json_t *entries;
        struct dirent *entry;
        DIR *dir;
        int fd;

        if (!path)
                return;
        fd = volume_open(volume, path, O_RDONLY | O_DIRECTORY, 0, &err);
        if (fd < 0) {
                reply_error(call, err);
                return;
        }
        dir = fdopendir(fd);
        if (!dir) {
                close(fd);
                api_reply_new_error(call->request, MOAT_ERROR_SYSTEM, NULL, "fdopendir `%s`", path);
                return;
        }
        entries = json_array();
        while ((entry = readdir(dir))) {
                struct stat st;
                json_t *item;

                if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
                        continue;
                if (json_array_size(entries) >= VOLUME_LIST_ENTRIES_MAX) {
                        closedir(dir);
                        json_decref(entries);
                        api_reply_new_error(call->request, MOAT_ERROR_LIMIT_EXCEEDED, NULL,
                                            "`%s` has more than %d entries", path, VOLUME_LIST_ENTRIES_MAX);
                        return;
                }
                if (fstatat(dirfd(dir), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        continue; /* removed meanwhile */
                item = json_pack("{s:s,s:s,s:I,s:i,s:i,s:i,s:I}", "name", entry->d_name, "type", type_name(st.st_mode),
                                 "size", (json_int_t)st.st_size, "mode", (int)(st.st_mode & 07777), "uid",
                                 (int)st.st_uid, "gid", (int)st.st_gid, "mtime", (json_int_t)st.st_mtime);
                if (item && S_ISLNK(st.st_mode)) {
                        char target[PATH_MAX];
                        ssize_t n = readlinkat(dirfd(dir), entry->d_name, target, sizeof(target) - 1);
                        if (n >= 0) {
                                target[n] = '\0';
                                json_object_set_new(item, "link_target", json_string(target));
                        }
                }
                json_array_append_new(entries, item);
        }
        closedir(dir);
        api_reply_json(call->request, 200, json_pack("{s:s,s:o}", "path", path, "entries", entries));
}

/* Remove name in directory parent; a directory only when recursive (its
 * contents first, never following a symlink: O_NOFOLLOW on every open). */
static int remove_entry(int parent, const char *name, bool recursive, unsigned depth, struct moat_error **err)
{
        struct stat st;

        if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return moat_error_set(err, errno == ENOENT ? MOAT_ERROR_NOT_FOUND : MOAT_ERROR_SYSTEM, errno,
                                      errno == ENOENT ? "file_not_found" : NULL, "stat `%s`", name);
        if (!S_ISDIR(st.st_mode)) {
                if (unlinkat(parent, name, 0) < 0)
                        return moat_error_system(err, errno, "unlink `%s`", name);
                return 0;
        }
        if (unlinkat(parent, name, AT_REMOVEDIR) == 0)
                return 0;
        if (errno != ENOTEMPTY && errno != EEXIST)
                return moat_error_system(err, errno, "rmdir `%s`", name);
        if (!recursive)
                return moat_error_set(err, MOAT_ERROR_CONFLICT, ENOTEMPTY, "directory_not_empty",
                                      "`%s` is not empty (use recursive)", name);
        if (depth >= VOLUME_REMOVE_DEPTH_MAX)
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL, "directories nested deeper than %d",
                                      VOLUME_REMOVE_DEPTH_MAX);
        {
                int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
                struct dirent *entry;
                int r = 0;

                if (!dir) {
                        if (fd >= 0)
                                close(fd);
                        return moat_error_system(err, errno, "open `%s`", name);
                }
                while (r == 0 && (entry = readdir(dir)))
                        if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0)
                                r = remove_entry(dirfd(dir), entry->d_name, true, depth + 1, err);
                closedir(dir);
                if (r < 0)
                        return -1;
        }
        if (unlinkat(parent, name, AT_REMOVEDIR) < 0)
                return moat_error_system(err, errno, "rmdir `%s`", name);
        return 0;
}

/* POST .../files/remove {"path": P, "recursive": false} */
void api_volumes_remove_file(struct api_call *call)
{
        struct moat_error *err = NULL;
        struct volume *volume = volume_of(call);
        size_t length;
        const char *body;
        json_error_t json_error;
        json_t *root;
        const char *path = NULL;
        int recursive = 0;
        char name[256];
        int parent, directory;

        if (!volume)
                return;
        body = api_body(call->request, &length);
        root = json_loadb(body ? body : "", length, JSON_REJECT_DUPLICATES, &json_error);
        if (!root || json_unpack_ex(root, &json_error, JSON_STRICT, "{s:s,s?b}", "path", &path, "recursive",
                                    &recursive) < 0) {
                api_reply_new_error(call->request, MOAT_ERROR_INVALID_ARGUMENT, NULL,
                                    "body must be {\"path\": string, \"recursive\": bool}");
                json_decref(root);
                return;
        }
        parent = volume_open_parent(volume, path, name, &err);
        if (parent >= 0) {
                directory = openat(parent, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                close(parent);
                if (directory < 0)
                        moat_error_system(&err, errno, "open parent of `%s`", path);
                else if (remove_entry(directory, name, recursive != 0, 0, &err) == 0)
                        api_reply_json(call->request, 200, json_pack("{s:s,s:b}", "path", path, "removed", 1));
                if (directory >= 0)
                        close(directory);
        }
        if (err)
                reply_error(call, err);
        json_decref(root);
}
