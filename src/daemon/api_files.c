/* /v1/sandboxes/{id}/files/...: the files API. The operations are in
 * files.c; this file parses requests and streams the large replies (file
 * content, tar archives) with backpressure: at most FILES_STREAM_BATCH bytes
 * per stream are buffered in moatd, and the next batch is read only once the
 * client has taken the previous one. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <sys/inotify.h>

#include "api.h"
#include "cell/cell.h"
#include "common/cleanup.h"
#include "files.h"
#include "sandbox.h"

#define FILES_READ_PIECE (64 * 1024)
#define FILES_STREAM_BATCH (1024 * 1024)
#define FILES_ARCHIVE_DEPTH_MAX 64

/* ---- request helpers ---- */

static struct sandbox *find_sandbox(struct api_call *call)
{
        struct sandbox *s = sandbox_find(call->daemon, call->params[0]);

        if (!s)
                api_reply_new_error(call->request, MOAT_ERROR_NOT_FOUND, NULL, "no sandbox `%.64s`", call->params[0]);
        else
                sandbox_touch(s);
        return s;
}

static void reply_error(struct api_call *call, struct moat_error *err)
{
        api_reply_error(call->request, err);
        moat_error_free(err);
}

/* evhttp decodes %00 into a NUL that silently ends the C string: look for it
 * in the raw query so "/etc/passwd%00.txt" is refused, not truncated. */
static bool query_has_nul(struct api_call *call)
{
        const char *uri = evhttp_request_get_uri(call->request);
        const char *query = uri ? strchr(uri, '?') : NULL;

        return query && strcasestr(query, "%00");
}

static int query_path(struct api_call *call, const char *key, const char **ret_path, struct moat_error **err)
{
        const char *path = api_query(call, key);

        if (query_has_nul(call))
                return moat_error_invalid(err, "`%s` must not contain NUL", key);
        if (files_path_check(path, err) < 0)
                return -1;
        *ret_path = path;
        return 0;
}

static int parse_bool(const char *text, bool fallback, const char *key, bool *ret, struct moat_error **err)
{
        if (!text) {
                *ret = fallback;
                return 0;
        }
        if (strcmp(text, "1") == 0 || strcmp(text, "true") == 0) {
                *ret = true;
                return 0;
        }
        if (strcmp(text, "0") == 0 || strcmp(text, "false") == 0) {
                *ret = false;
                return 0;
        }
        return moat_error_invalid(err, "`%s` must be true/false or 1/0", key);
}

static int parse_u64(const char *text, const char *key, uint64_t *ret, struct moat_error **err)
{
        char *end;
        unsigned long long value;

        if (!text || !text[0] || text[0] == '-' || text[0] == '+')
                return moat_error_invalid(err, "`%s` must be a non-negative integer", key);
        errno = 0;
        value = strtoull(text, &end, 10);
        if (errno || *end || value > INT64_MAX)
                return moat_error_invalid(err, "`%s` must be a non-negative integer", key);
        *ret = value;
        return 0;
}

/* An octal mode string ("644", "0755"). Permission bits and sticky only:
 * setuid/setgid files planted from outside are refused. */
static int parse_mode_text(const char *text, mode_t *ret, struct moat_error **err)
{
        char *end;
        unsigned long value;

        if (!text[0] || strlen(text) > 5 || strspn(text, "01234567") != strlen(text))
                return moat_error_invalid(err, "`mode` must be an octal string like \"0644\"");
        value = strtoul(text, &end, 8);
        if (value & ~01777ul)
                return moat_error_invalid(err, "`mode` may hold permission bits and sticky only (<= 01777)");
        *ret = (mode_t)value;
        return 0;
}

static int json_mode(json_t *body, mode_t fallback, mode_t *ret, struct moat_error **err)
{
        json_t *value = json_object_get(body, "mode");

        if (!value || json_is_null(value)) {
                *ret = fallback;
                return 0;
        }
        if (json_is_string(value))
                return parse_mode_text(json_string_value(value), ret, err);
        if (json_is_integer(value) && json_integer_value(value) >= 0 && json_integer_value(value) <= 01777) {
                *ret = (mode_t)json_integer_value(value);
                return 0;
        }
        return moat_error_invalid(err, "`mode` must be an octal string like \"0644\" or an integer <= 1023");
}

static int json_path(json_t *body, const char *key, const char **ret, struct moat_error **err)
{
        json_t *value = json_object_get(body, key);

        if (!json_is_string(value))
                return moat_error_invalid(err, "`%s` must be a string", key);
        if (strlen(json_string_value(value)) != json_string_length(value))
                return moat_error_invalid(err, "`%s` must not contain NUL", key);
        if (files_path_check(json_string_value(value), err) < 0)
                return -1;
        *ret = json_string_value(value);
        return 0;
}

static int json_flag(json_t *body, const char *key, bool *ret, struct moat_error **err)
{
        json_t *value = json_object_get(body, key);

        if (!value || json_is_null(value)) {
                *ret = false;
                return 0;
        }
        if (!json_is_boolean(value))
                return moat_error_invalid(err, "`%s` must be a boolean", key);
        *ret = json_is_true(value);
        return 0;
}

/* The JSON object body, with only the known fields. */
static json_t *json_body(struct api_call *call, const char *const *fields, struct moat_error **err)
{
        size_t length;
        const char *data = api_body(call->request, &length);
        json_error_t json_error;
        json_t *body = json_loadb(data, length, 0, &json_error);
        const char *key;
        json_t *value;

        if (!body || !json_is_object(body)) {
                json_decref(body);
                moat_error_invalid(err, "the body must be a JSON object");
                return NULL;
        }
        json_object_foreach(body, key, value) {
                bool known = false;

                for (size_t i = 0; fields[i]; i++)
                        known |= strcmp(key, fields[i]) == 0;
                if (!known) {
                        moat_error_invalid(err, "unknown field `%.64s`", key);
                        json_decref(body);
                        return NULL;
                }
        }
        return body;
}

/* Finds the running sandbox and opens its root; replies on failure. */
static int open_root(struct api_call *call, struct sandbox **ret_sandbox)
{
        struct sandbox *s = find_sandbox(call);
        struct moat_error *err = NULL;
        int root_fd;

        if (!s)
                return -1;
        root_fd = files_root_open(s, &err);
        if (root_fd < 0) {
                reply_error(call, err);
                return -1;
        }
        if (ret_sandbox)
                *ret_sandbox = s;
        return root_fd;
}

/* The sandbox's root user, in host ids: what removals, moves and chmods
 * act as. */
static struct files_owner sandbox_root(const struct sandbox *s)
{
        return (struct files_owner){s->host_id_base, s->host_id_base};
}

/* ---- content: GET (streamed) ---- */

struct content_stream {
        struct api_hold *hold;
        int fd;
        uint64_t remaining;
};

static void content_stream_free(struct content_stream *stream)
{
        if (stream->fd >= 0)
                close(stream->fd);
        free(stream);
}

static void on_content_gone(void *arg)
{
        content_stream_free(arg);
}

static void content_pump(void *arg)
{
        struct content_stream *stream = arg;
        struct evbuffer *batch = evbuffer_new();
        bool done = false;

        if (!batch) {
                api_hold_stream_end(stream->hold);
                content_stream_free(stream);
                return;
        }
        /* Read in pieces until a batch is full; the next batch waits for
         * the client to take this one (the drained callback). */
        while (evbuffer_get_length(batch) < FILES_STREAM_BATCH) {
                struct evbuffer_iovec vector;
                size_t want = stream->remaining < FILES_READ_PIECE ? stream->remaining : FILES_READ_PIECE;
                ssize_t n;

                if (want == 0) {
                        done = true;
                        break;
                }
                if (evbuffer_reserve_space(batch, (ev_ssize_t)want, &vector, 1) < 1) {
                        done = true;
                        break;
                }
                do
                        n = read(stream->fd, vector.iov_base, want);
                while (n < 0 && errno == EINTR);
                if (n <= 0) {
                        /* End of file, or a read error: the stream ends
                         * (a reader comparing with stat's size sees it). */
                        done = true;
                        break;
                }
                vector.iov_len = (size_t)n;
                evbuffer_commit_space(batch, &vector, 1);
                stream->remaining -= (uint64_t)n;
        }
        if (evbuffer_get_length(batch) > 0)
                api_hold_stream_chunk(stream->hold, batch, done ? NULL : content_pump, done ? NULL : stream);
        evbuffer_free(batch);
        if (done) {
                api_hold_stream_end(stream->hold);
                content_stream_free(stream);
        }
}

void api_files_content_get(struct api_call *call)
{
        struct moat_error *err = NULL;
        struct content_stream *stream;
        const char *path;
        uint64_t offset = 0, length = UINT64_MAX;
        _cleanup_close_ int root_fd = -1, fd = -1;

        if (query_path(call, "path", &path, &err) < 0 ||
            (api_query(call, "offset") && parse_u64(api_query(call, "offset"), "offset", &offset, &err) < 0) ||
            (api_query(call, "length") && parse_u64(api_query(call, "length"), "length", &length, &err) < 0))
                return reply_error(call, err);
        root_fd = open_root(call, NULL);
        if (root_fd < 0)
                return;
        fd = files_open_for_read(root_fd, path, &err);
        if (fd < 0)
                return reply_error(call, err);
        if (offset > 0 && lseek(fd, (off_t)offset, SEEK_SET) < 0)
                return reply_error(call, (moat_error_system(&err, errno, "seek `%.512s`", path), err));
        stream = calloc(1, sizeof(*stream));
        if (!stream)
                return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        stream->fd = TAKE_FD(fd);
        stream->remaining = length;
        stream->hold = api_hold_new(call->daemon, call->request, on_content_gone, stream);
        if (!stream->hold) {
                content_stream_free(stream);
                return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        }
        api_hold_stream_start(stream->hold, "application/octet-stream");
        content_pump(stream);
}

/* ---- content: PUT (chunked upload) ---- */

void api_files_content_put(struct api_call *call)
{
        struct moat_error *err = NULL;
        struct sandbox *s;
        struct files_owner owner;
        struct files_write w = {.mode = 0644, .owner = &owner};
        const char *offset_text = api_query(call, "offset");
        const char *mode_text = api_query(call, "mode");
        struct evbuffer *input = evhttp_request_get_input_buffer(call->request);
        size_t length = evbuffer_get_length(input);
        _cleanup_free_ struct evbuffer_iovec *pieces = NULL;
        int count;
        _cleanup_close_ int root_fd = -1;
        int64_t size;

        if (query_path(call, "path", &w.path, &err) < 0 ||
            (offset_text && parse_u64(offset_text, "offset", &w.offset, &err) < 0) ||
            /* A single request (no offset) is a whole upload: final by default. */
            parse_bool(api_query(call, "final"), offset_text == NULL, "final", &w.final, &err) < 0 ||
            parse_bool(api_query(call, "append"), false, "append", &w.append, &err) < 0 ||
            parse_bool(api_query(call, "mkdirs"), false, "mkdirs", &w.make_dirs, &err) < 0 ||
            (mode_text && parse_mode_text(mode_text, &w.mode, &err) < 0))
                return reply_error(call, err);
        w.upload_id = api_query(call, "upload");
        root_fd = open_root(call, &s);
        if (root_fd < 0)
                return;
        if (files_owner_resolve(s, root_fd, api_query(call, "user"), &owner, &err) < 0)
                return reply_error(call, err);
        /* The body's pieces as libevent holds them, written with writev:
         * no copy of up to 8 MiB per chunk. */
        count = length ? evbuffer_peek(input, -1, NULL, NULL, 0) : 0;
        if (count > 0) {
                pieces = calloc((size_t)count, sizeof(*pieces));
                if (!pieces)
                        return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
                count = evbuffer_peek(input, -1, NULL, pieces, count);
        }
        size = files_write_chunk(s, root_fd, &w, (const struct iovec *)pieces, count > 0 ? (size_t)count : 0, &err);
        if (size < 0)
                return reply_error(call, err);
        api_reply_json(call->request, w.final || w.append ? 201 : 200,
                       json_pack("{s:s,s:I,s:b}", "path", w.path, "size", (json_int_t)size, "final",
                                 w.final || w.append));
}

/* ---- stat, list ---- */

void api_files_stat(struct api_call *call)
{
        struct moat_error *err = NULL;
        struct sandbox *s;
        const char *path;
        _cleanup_close_ int root_fd = -1;
        json_t *object;

        if (query_path(call, "path", &path, &err) < 0)
                return reply_error(call, err);
        root_fd = open_root(call, &s);
        if (root_fd < 0)
                return;
        object = files_stat(root_fd, path, s->host_id_base, &err);
        if (!object)
                return reply_error(call, err);
        api_reply_json(call->request, 200, object);
}

void api_files_list(struct api_call *call)
{
        struct moat_error *err = NULL;
        struct sandbox *s;
        const char *path;
        uint64_t depth = 1;
        _cleanup_close_ int root_fd = -1;
        json_t *object;

        if (query_path(call, "path", &path, &err) < 0 ||
            (api_query(call, "depth") && parse_u64(api_query(call, "depth"), "depth", &depth, &err) < 0))
                return reply_error(call, err);
        if (depth < 1 || depth > FILES_LIST_DEPTH_MAX)
                return api_reply_new_error(call->request, MOAT_ERROR_INVALID_ARGUMENT, NULL,
                                           "`depth` must be 1..%d", FILES_LIST_DEPTH_MAX);
        root_fd = open_root(call, &s);
        if (root_fd < 0)
                return;
        object = files_list(root_fd, path, (unsigned)depth, s->host_id_base, &err);
        if (!object)
                return reply_error(call, err);
        api_reply_json(call->request, 200, object);
}

/* ---- mkdir, remove, move, chmod ---- */

void api_files_mkdir(struct api_call *call)
{
        static const char *const fields[] = {"path", "parents", "mode", "user", NULL};
        struct moat_error *err = NULL;
        struct sandbox *s;
        struct files_owner owner;
        json_t *body = json_body(call, fields, &err);
        json_t *user;
        const char *path;
        bool parents;
        mode_t mode;
        _cleanup_close_ int root_fd = -1;

        if (!body)
                return reply_error(call, err);
        user = json_object_get(body, "user");
        if (json_path(body, "path", &path, &err) < 0 || json_flag(body, "parents", &parents, &err) < 0 ||
            json_mode(body, 0755, &mode, &err) < 0 || (user && !json_is_string(user) && !json_is_null(user) &&
                                                       moat_error_invalid(&err, "`user` must be a string") < 0)) {
                json_decref(body);
                return reply_error(call, err);
        }
        root_fd = open_root(call, &s);
        if (root_fd >= 0) {
                if (files_owner_resolve(s, root_fd, json_string_value(user), &owner, &err) < 0 ||
                    files_mkdir(root_fd, path, parents, mode, &owner, &err) < 0)
                        reply_error(call, err);
                else
                        api_reply_json(call->request, 201, json_pack("{s:s}", "path", path));
        }
        json_decref(body);
}

void api_files_remove(struct api_call *call)
{
        static const char *const fields[] = {"path", "recursive", NULL};
        struct moat_error *err = NULL;
        struct sandbox *s;
        json_t *body = json_body(call, fields, &err);
        const char *path;
        bool recursive;
        _cleanup_close_ int root_fd = -1;

        if (!body)
                return reply_error(call, err);
        if (json_path(body, "path", &path, &err) < 0 || json_flag(body, "recursive", &recursive, &err) < 0) {
                json_decref(body);
                return reply_error(call, err);
        }
        root_fd = open_root(call, &s);
        if (root_fd >= 0) {
                struct files_owner actor = sandbox_root(s);

                if (files_remove(root_fd, path, recursive, &actor, &err) < 0)
                        reply_error(call, err);
                else
                        api_reply_json(call->request, 200, json_pack("{s:s}", "path", path));
        }
        json_decref(body);
}

void api_files_move(struct api_call *call)
{
        static const char *const fields[] = {"from", "to", "overwrite", NULL};
        struct moat_error *err = NULL;
        struct sandbox *s;
        json_t *body = json_body(call, fields, &err);
        const char *from, *to;
        bool overwrite;
        _cleanup_close_ int root_fd = -1;

        if (!body)
                return reply_error(call, err);
        if (json_path(body, "from", &from, &err) < 0 || json_path(body, "to", &to, &err) < 0 ||
            json_flag(body, "overwrite", &overwrite, &err) < 0) {
                json_decref(body);
                return reply_error(call, err);
        }
        root_fd = open_root(call, &s);
        if (root_fd >= 0) {
                struct files_owner actor = sandbox_root(s);

                if (files_move(root_fd, from, to, overwrite, &actor, &err) < 0)
                        reply_error(call, err);
                else
                        api_reply_json(call->request, 200, json_pack("{s:s,s:s}", "from", from, "to", to));
        }
        json_decref(body);
}

void api_files_chmod(struct api_call *call)
{
        static const char *const fields[] = {"path", "mode", NULL};
        struct moat_error *err = NULL;
        struct sandbox *s;
        json_t *body = json_body(call, fields, &err);
        const char *path;
        mode_t mode;
        _cleanup_close_ int root_fd = -1;

        if (!body)
                return reply_error(call, err);
        if (json_path(body, "path", &path, &err) < 0 ||
            (!json_object_get(body, "mode") && moat_error_invalid(&err, "`mode` is required") < 0) ||
            json_mode(body, 0, &mode, &err) < 0) {
                json_decref(body);
                return reply_error(call, err);
        }
        root_fd = open_root(call, &s);
        if (root_fd >= 0) {
                struct files_owner actor = sandbox_root(s);

                if (files_chmod(root_fd, path, mode, &actor, &err) < 0)
                        reply_error(call, err);
                else
                        api_reply_json(call->request, 200, json_pack("{s:s}", "path", path));
        }
        json_decref(body);
}

/* ---- archive: GET (a tar stream of a directory) ---- */

/* A depth-first walk kept as explicit state so it can stop whenever a batch
 * is full and resume when the client has read it. Every step is
 * fd-relative and never follows a symlink: symlinks are archived as links. */
struct archive_stream {
        struct api_hold *hold;
        struct archive *writer;
        struct evbuffer *pending; /* what libarchive wrote, not yet sent */
        uint32_t id_base;
        unsigned depth;
        DIR *dirs[FILES_ARCHIVE_DEPTH_MAX];
        char *prefixes[FILES_ARCHIVE_DEPTH_MAX]; /* "" or "a/b/" */
        int file_fd;
        uint64_t file_left;
};

static void archive_stream_free(struct archive_stream *stream)
{
        while (stream->depth > 0) {
                stream->depth--;
                closedir(stream->dirs[stream->depth]);
                free(stream->prefixes[stream->depth]);
        }
        if (stream->file_fd >= 0)
                close(stream->file_fd);
        if (stream->writer)
                archive_write_free(stream->writer);
        if (stream->pending)
                evbuffer_free(stream->pending);
        free(stream);
}

static void on_archive_gone(void *arg)
{
        struct archive_stream *stream = arg;

        /* archive_write_free would flush into `pending`: harmless. */
        archive_stream_free(stream);
}

static la_ssize_t on_archive_write(struct archive *writer, void *arg, const void *data, size_t length)
{
        struct archive_stream *stream = arg;

        if (evbuffer_add(stream->pending, data, length) < 0)
                return -1;
        return (la_ssize_t)length;
}

static int archive_push_dir(struct archive_stream *stream, int dir_fd, const char *prefix)
{
        int fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        DIR *dir;

        if (fd < 0)
                return -1;
        dir = fdopendir(fd);
        if (!dir) {
                close(fd);
                return -1;
        }
        stream->prefixes[stream->depth] = strdup(prefix);
        if (!stream->prefixes[stream->depth]) {
                closedir(dir);
                return -1;
        }
        stream->dirs[stream->depth++] = dir;
        return 0;
}

static long long archive_id(uint32_t host_id, uint32_t id_base)
{
        if (host_id < id_base || host_id - id_base >= SANDBOX_ID_COUNT)
                return 65534;
        return host_id - id_base;
}

/* One directory entry of the top directory into the archive. Entries that
 * vanish or change type meanwhile are skipped. Returns -1 only on a
 * writer failure. */
static int archive_add_entry(struct archive_stream *stream, const char *name)
{
        DIR *dir = stream->dirs[stream->depth - 1];
        _cleanup_free_ char *path = NULL;
        struct archive_entry *entry;
        struct stat st;
        char target[FILES_PATH_MAX + 1];
        int r = 0;

        if (fstatat(dirfd(dir), name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return 0;
        if (asprintf(&path, "%s%s", stream->prefixes[stream->depth - 1], name) < 0) {
                path = NULL;
                return -1;
        }
        if (strlen(path) > FILES_PATH_MAX)
                return 0;
        if (S_ISREG(st.st_mode)) {
                /* O_NOFOLLOW|O_NONBLOCK: a file swapped for a symlink or a
                 * FIFO since the stat is not opened/blocked on; fstat of the
                 * opened fd gives the size we promise in the header. */
                int fd = openat(dirfd(dir), name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);

                if (fd < 0)
                        return 0;
                if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                        close(fd);
                        return 0;
                }
                stream->file_fd = fd;
                stream->file_left = (uint64_t)st.st_size;
        } else if (S_ISLNK(st.st_mode)) {
                ssize_t n = readlinkat(dirfd(dir), name, target, sizeof(target) - 1);

                if (n < 0)
                        return 0;
                target[n] = '\0';
        } else if (!S_ISDIR(st.st_mode)) {
                return 0; /* devices, fifos, sockets are not archived */
        }
        entry = archive_entry_new();
        if (!entry)
                return -1;
        archive_entry_set_pathname(entry, path);
        archive_entry_copy_stat(entry, &st);
        archive_entry_set_uid(entry, archive_id(st.st_uid, stream->id_base));
        archive_entry_set_gid(entry, archive_id(st.st_gid, stream->id_base));
        if (S_ISLNK(st.st_mode))
                archive_entry_set_symlink(entry, target);
        if (!S_ISREG(st.st_mode))
                archive_entry_set_size(entry, 0);
        if (archive_write_header(stream->writer, entry) != ARCHIVE_OK)
                r = -1;
        archive_entry_free(entry);
        if (r == 0 && S_ISDIR(st.st_mode) && stream->depth < FILES_ARCHIVE_DEPTH_MAX) {
                _cleanup_close_ int child_fd = openat(dirfd(dir), name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                _cleanup_free_ char *prefix = NULL;

                if (child_fd >= 0 && files_on_kernel_filesystem(child_fd))
                        ; /* an entry, never its contents: see files_on_kernel_filesystem */
                else if (child_fd >= 0 && asprintf(&prefix, "%s/", path) >= 0)
                        (void)archive_push_dir(stream, child_fd, prefix);
                else if (child_fd >= 0)
                        prefix = NULL;
        }
        return r;
}

/* Produce archive bytes until a batch is pending or the walk is done.
 * Returns 1 when the archive is complete, 0 if more follows, -1 on error. */
static int archive_produce(struct archive_stream *stream)
{
        while (evbuffer_get_length(stream->pending) < FILES_STREAM_BATCH) {
                if (stream->file_fd >= 0) {
                        char piece[FILES_READ_PIECE];
                        size_t want = stream->file_left < sizeof(piece) ? stream->file_left : sizeof(piece);
                        ssize_t n = want ? read(stream->file_fd, piece, want) : 0;

                        if (n > 0 && archive_write_data(stream->writer, piece, (size_t)n) < 0)
                                return -1;
                        if (n > 0) {
                                stream->file_left -= (uint64_t)n;
                                continue;
                        }
                        /* Done, or the file shrank: libarchive pads the
                         * entry with zeros to the size in its header. */
                        close(stream->file_fd);
                        stream->file_fd = -1;
                        if (archive_write_finish_entry(stream->writer) != ARCHIVE_OK)
                                return -1;
                        continue;
                }
                if (stream->depth == 0) {
                        if (archive_write_close(stream->writer) != ARCHIVE_OK)
                                return -1;
                        return 1;
                }
                {
                        DIR *dir = stream->dirs[stream->depth - 1];
                        struct dirent *entry = readdir(dir);

                        if (!entry) {
                                stream->depth--;
                                closedir(dir);
                                free(stream->prefixes[stream->depth]);
                                continue;
                        }
                        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
                                continue;
                        if (archive_add_entry(stream, entry->d_name) < 0)
                                return -1;
                }
        }
        return 0;
}

static void archive_pump(void *arg)
{
        struct archive_stream *stream = arg;
        int status = archive_produce(stream);

        if (evbuffer_get_length(stream->pending) > 0)
                api_hold_stream_chunk(stream->hold, stream->pending, status == 0 ? archive_pump : NULL,
                                      status == 0 ? stream : NULL);
        if (status != 0) {
                /* On an error the tar simply ends early, without its end
                 * blocks: a strict reader reports the truncation. */
                api_hold_stream_end(stream->hold);
                archive_stream_free(stream);
        }
}

void api_files_archive_get(struct api_call *call)
{
        struct moat_error *err = NULL;
        struct sandbox *s;
        struct archive_stream *stream;
        const char *path;
        _cleanup_close_ int root_fd = -1, dir_fd = -1;
        struct stat st;

        if (query_path(call, "path", &path, &err) < 0)
                return reply_error(call, err);
        root_fd = open_root(call, &s);
        if (root_fd < 0)
                return;
        dir_fd = files_open(root_fd, path, O_PATH, 0, &err);
        if (dir_fd < 0)
                return reply_error(call, err);
        if (fstat(dir_fd, &st) < 0 || !S_ISDIR(st.st_mode))
                return reply_error(call, (files_error_from_errno(&err, ENOTDIR, "archive", path), err));
        stream = calloc(1, sizeof(*stream));
        if (!stream)
                return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        stream->file_fd = -1;
        stream->id_base = s->host_id_base;
        stream->pending = evbuffer_new();
        stream->writer = archive_write_new();
        if (!stream->pending || !stream->writer || archive_write_set_format_pax_restricted(stream->writer) != ARCHIVE_OK ||
            archive_write_set_bytes_in_last_block(stream->writer, 1) != ARCHIVE_OK ||
            archive_write_open2(stream->writer, stream, NULL, on_archive_write, NULL, NULL) != ARCHIVE_OK ||
            archive_push_dir(stream, dir_fd, "") < 0) {
                archive_stream_free(stream);
                return api_reply_new_error(call->request, MOAT_ERROR_SYSTEM, NULL, "cannot start the archive of `%.512s`",
                                           path);
        }
        stream->hold = api_hold_new(call->daemon, call->request, on_archive_gone, stream);
        if (!stream->hold) {
                archive_stream_free(stream);
                return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        }
        api_hold_stream_start(stream->hold, "application/x-tar");
        archive_pump(stream);
}

/* ---- archive: PUT (extract beneath a directory) ---- */

void api_files_archive_put(struct api_call *call)
{
        struct moat_error *err = NULL;
        struct sandbox *s;
        struct files_owner owner;
        const char *path;
        bool make_dirs;
        struct evbuffer *input = evhttp_request_get_input_buffer(call->request);
        size_t length = evbuffer_get_length(input);
        const void *data;
        _cleanup_close_ int root_fd = -1;

        if (query_path(call, "path", &path, &err) < 0 ||
            parse_bool(api_query(call, "mkdirs"), true, "mkdirs", &make_dirs, &err) < 0)
                return reply_error(call, err);
        if (length == 0)
                return api_reply_new_error(call->request, MOAT_ERROR_INVALID_ARGUMENT, "bad_archive",
                                           "the body must be a tar archive");
        root_fd = open_root(call, &s);
        if (root_fd < 0)
                return;
        if (files_owner_resolve(s, root_fd, api_query(call, "user"), &owner, &err) < 0)
                return reply_error(call, err);
        if (make_dirs && files_mkdir(root_fd, path, true, 0755, &owner, &err) < 0)
                return reply_error(call, err);
        data = evbuffer_pullup(input, -1);
        if (!data)
                return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        if (files_archive_extract(root_fd, path, data, length, &owner, &err) < 0)
                return reply_error(call, err);
        api_reply_json(call->request, 201, json_pack("{s:s}", "path", path));
}

/* ---- watch (inotify, NDJSON) ---- */

/* Watches one stream may hold (directories when recursive). */
#define FILES_WATCH_DIRS_MAX 8192
/* inotify events read per loop callback. */
#define FILES_WATCH_READ_MAX (64 * 1024)

struct watched_dir {
        int wd;
        char *path; /* as the sandbox sees it */
};

struct watch_stream {
        struct api_hold *hold;
        int root_fd;     /* the sandbox root: new subdirectories are resolved under it */
        int inotify_fd;
        int pidfd;       /* init's: readable when the sandbox stops, which ends the stream */
        struct event *inotify_event, *stop_event;
        bool recursive, in_flight, overflowed;
        struct watched_dir *dirs;
        size_t dir_count, dir_capacity;
};

static void watch_stream_free(struct watch_stream *watch)
{
        if (watch->inotify_event)
                event_free(watch->inotify_event);
        if (watch->stop_event)
                event_free(watch->stop_event);
        for (size_t i = 0; i < watch->dir_count; i++)
                free(watch->dirs[i].path);
        free(watch->dirs);
        if (watch->inotify_fd >= 0)
                close(watch->inotify_fd);
        if (watch->root_fd >= 0)
                close(watch->root_fd);
        if (watch->pidfd >= 0)
                close(watch->pidfd);
        free(watch);
}

static void on_watch_gone(void *arg)
{
        watch_stream_free(arg);
}

static const char *watched_path(struct watch_stream *watch, int wd)
{
        for (size_t i = 0; i < watch->dir_count; i++)
                if (watch->dirs[i].wd == wd)
                        return watch->dirs[i].path;
        return NULL;
}

static void watched_forget(struct watch_stream *watch, int wd)
{
        for (size_t i = 0; i < watch->dir_count; i++)
                if (watch->dirs[i].wd == wd) {
                        free(watch->dirs[i].path);
                        watch->dirs[i] = watch->dirs[--watch->dir_count];
                        return;
                }
}

/* Watch the directory dir_fd (already resolved under the sandbox root)
 * and, if recursive, the directories beneath it (fd-relative, never through
 * a symlink). inotify_add_watch takes a path: /proc/self/fd/N names
 * exactly the directory we opened, nothing is resolved again (so no
 * IN_DONT_FOLLOW: following that one magic link is the point). */
static int watch_add_tree(struct watch_stream *watch, int dir_fd, const char *path, unsigned depth,
                          struct moat_error **err)
{
        char fd_path[64];
        int wd;
        DIR *dir;
        struct dirent *entry;
        int listing_fd;

        if (watch->dir_count >= FILES_WATCH_DIRS_MAX)
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "too_many_entries",
                                      "more than %d directories to watch under `%.512s`", FILES_WATCH_DIRS_MAX, path);
        snprintf(fd_path, sizeof(fd_path), "/proc/self/fd/%d", dir_fd);
        wd = inotify_add_watch(watch->inotify_fd, fd_path,
                               IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |
                                       IN_ATTRIB | IN_DELETE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK);
        if (wd < 0)
                return errno == ENOSPC ? moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "too_many_entries",
                                                        "the host's inotify watch limit is reached")
                                       : files_error_from_errno(err, errno, "watch", path);
        if (!watched_path(watch, wd)) {
                if (watch->dir_count == watch->dir_capacity) {
                        size_t capacity = watch->dir_capacity ? watch->dir_capacity * 2 : 16;
                        struct watched_dir *grown = realloc(watch->dirs, capacity * sizeof(*grown));

                        if (!grown)
                                return moat_error_system(err, ENOMEM, "watch");
                        watch->dirs = grown;
                        watch->dir_capacity = capacity;
                }
                watch->dirs[watch->dir_count].wd = wd;
                watch->dirs[watch->dir_count].path = strdup(path);
                if (!watch->dirs[watch->dir_count].path)
                        return moat_error_system(err, ENOMEM, "watch");
                watch->dir_count++;
        }
        if (!watch->recursive || depth >= FILES_LIST_DEPTH_MAX)
                return 0;
        listing_fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (listing_fd < 0)
                return 0;
        dir = fdopendir(listing_fd);
        if (!dir) {
                close(listing_fd);
                return 0;
        }
        while ((entry = readdir(dir))) {
                _cleanup_close_ int child_fd = -1;
                _cleanup_free_ char *child_path = NULL;

                if (entry->d_type != DT_DIR || strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
                        continue;
                child_fd = openat(dirfd(dir), entry->d_name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (child_fd < 0 || files_on_kernel_filesystem(child_fd))
                        continue;
                if (asprintf(&child_path, "%s%s%s", path, path[strlen(path) - 1] == '/' ? "" : "/",
                             entry->d_name) < 0) {
                        child_path = NULL;
                        continue;
                }
                if (watch_add_tree(watch, child_fd, child_path, depth + 1, err) < 0) {
                        closedir(dir);
                        return -1;
                }
        }
        closedir(dir);
        return 0;
}

static void watch_send(struct watch_stream *watch, struct evbuffer *batch);

static void on_watch_drained(void *arg)
{
        struct watch_stream *watch = arg;

        watch->in_flight = false;
        /* Backpressure: inotify is read again only once the client took the
         * last batch; meanwhile the kernel queues (and reports an overflow
         * if its queue fills). */
        event_add(watch->inotify_event, NULL);
}

static void watch_send(struct watch_stream *watch, struct evbuffer *batch)
{
        if (evbuffer_get_length(batch) == 0)
                return;
        watch->in_flight = true;
        event_del(watch->inotify_event);
        api_hold_stream_chunk(watch->hold, batch, on_watch_drained, watch);
}

static void watch_append(struct evbuffer *batch, json_t *event)
{
        char *text = event ? json_dumps(event, JSON_COMPACT) : NULL;

        if (text) {
                evbuffer_add(batch, text, strlen(text));
                evbuffer_add(batch, "\n", 1);
        }
        free(text);
        json_decref(event);
}

static void watch_end(struct watch_stream *watch, const char *reason)
{
        struct evbuffer *batch = evbuffer_new();

        if (batch) {
                watch_append(batch, json_pack("{s:s,s:s}", "type", "end", "reason", reason));
                api_hold_stream_chunk(watch->hold, batch, NULL, NULL);
                evbuffer_free(batch);
        }
        api_hold_stream_end(watch->hold);
        watch_stream_free(watch);
}

static void on_watch_sandbox_stopped(evutil_socket_t fd, short what, void *arg)
{
        watch_end(arg, "sandbox_stopped");
}

static const char *inotify_type(uint32_t mask)
{
        if (mask & IN_CREATE)
                return "create";
        if (mask & IN_DELETE)
                return "delete";
        if (mask & IN_MOVED_FROM)
                return "move_from";
        if (mask & IN_MOVED_TO)
                return "move_to";
        if (mask & IN_CLOSE_WRITE)
                return "close_write";
        if (mask & IN_MODIFY)
                return "modify";
        if (mask & IN_ATTRIB)
                return "chmod";
        return NULL;
}

static void on_watch_readable(evutil_socket_t fd, short what, void *arg)
{
        struct watch_stream *watch = arg;
        static char buffer[FILES_WATCH_READ_MAX] __attribute__((aligned(__alignof__(struct inotify_event))));
        struct evbuffer *batch = evbuffer_new();
        bool top_gone = false;
        ssize_t n;

        if (!batch)
                return;
        n = read(watch->inotify_fd, buffer, sizeof(buffer));
        for (ssize_t offset = 0; n > 0 && offset < n;) {
                const struct inotify_event *event = (const struct inotify_event *)(buffer + offset);
                const char *directory = watched_path(watch, event->wd);
                const char *type = inotify_type(event->mask);
                _cleanup_free_ char *path = NULL;

                offset += (ssize_t)(sizeof(*event) + event->len);
                if (event->mask & IN_Q_OVERFLOW) {
                        watch_append(batch, json_pack("{s:s}", "type", "overflow"));
                        continue;
                }
                if (event->mask & (IN_IGNORED | IN_DELETE_SELF)) {
                        if (watch->dir_count > 0 && watch->dirs[0].wd == event->wd)
                                top_gone = true;
                        if (event->mask & IN_IGNORED)
                                watched_forget(watch, event->wd);
                        continue;
                }
                if (!directory || !type)
                        continue;
                if (asprintf(&path, "%s%s%s", directory, directory[strlen(directory) - 1] == '/' ? "" : "/",
                             event->len ? event->name : "") < 0) {
                        path = NULL;
                        continue;
                }
                watch_append(batch, json_pack("{s:s,s:s,s:b,s:I}", "type", type, "path", path, "is_dir",
                                              (event->mask & IN_ISDIR) != 0, "cookie", (json_int_t)event->cookie));
                /* A directory made (or moved in) under a recursive watch is
                 * watched too, resolved afresh under the sandbox root. */
                if (watch->recursive && (event->mask & IN_ISDIR) && (event->mask & (IN_CREATE | IN_MOVED_TO))) {
                        struct moat_error *err = NULL;
                        _cleanup_close_ int child_fd = files_open(watch->root_fd, path, O_PATH | O_DIRECTORY, 0, &err);

                        if (child_fd < 0 || watch_add_tree(watch, child_fd, path, 1, &err) < 0)
                                watch_append(batch, json_pack("{s:s,s:s,s:s}", "type", "warning", "path", path,
                                                              "message", err ? err->message : "cannot watch"));
                        moat_error_free(err);
                }
        }
        watch_send(watch, batch);
        evbuffer_free(batch);
        if (top_gone)
                watch_end(watch, "deleted");
}

void api_files_watch(struct api_call *call)
{
        struct moat_error *err = NULL;
        struct sandbox *s;
        struct watch_stream *watch;
        const char *path;
        bool recursive;
        _cleanup_close_ int dir_fd = -1;
        struct stat st;
        struct evbuffer *batch;

        if (query_path(call, "path", &path, &err) < 0 ||
            parse_bool(api_query(call, "recursive"), false, "recursive", &recursive, &err) < 0)
                return reply_error(call, err);
        watch = calloc(1, sizeof(*watch));
        if (!watch)
                return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        watch->inotify_fd = watch->pidfd = -1;
        watch->recursive = recursive;
        watch->root_fd = open_root(call, &s);
        if (watch->root_fd < 0) {
                watch_stream_free(watch);
                return;
        }
        dir_fd = files_open(watch->root_fd, path, O_PATH, 0, &err);
        if (dir_fd >= 0 && (fstat(dir_fd, &st) < 0 || !S_ISDIR(st.st_mode)))
                files_error_from_errno(&err, ENOTDIR, "watch", path);
        watch->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (!err && watch->inotify_fd < 0)
                files_error_from_errno(&err, errno, "inotify_init1", path);
        if (!err && s->cell->pidfd >= 0 && (watch->pidfd = fcntl(s->cell->pidfd, F_DUPFD_CLOEXEC, 0)) < 0)
                moat_error_system(&err, errno, "dup pidfd");
        if (err || watch_add_tree(watch, dir_fd, path, 0, &err) < 0) {
                watch_stream_free(watch);
                return reply_error(call, err);
        }
        watch->inotify_event = event_new(call->daemon->base, watch->inotify_fd, EV_READ | EV_PERSIST, on_watch_readable,
                                         watch);
        if (watch->pidfd >= 0)
                watch->stop_event = event_new(call->daemon->base, watch->pidfd, EV_READ, on_watch_sandbox_stopped, watch);
        batch = evbuffer_new();
        if (!watch->inotify_event || (watch->pidfd >= 0 && !watch->stop_event) || !batch ||
            !(watch->hold = api_hold_new(call->daemon, call->request, on_watch_gone, watch))) {
                if (batch)
                        evbuffer_free(batch);
                watch_stream_free(watch);
                return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        }
        if (watch->stop_event)
                event_add(watch->stop_event, NULL);
        api_hold_stream_start(watch->hold, "application/x-ndjson");
        /* "ready": every watch is in place; changes from here on are reported. */
        watch_append(batch, json_pack("{s:s,s:s,s:I}", "type", "ready", "path", path, "directories",
                                      (json_int_t)watch->dir_count));
        watch_send(watch, batch);
        evbuffer_free(batch);
}
