/* moat cp LOCAL ID:/path   and   moat cp ID:/path LOCAL
 *
 * Files go through the files API's content route (uploads in 4 MiB chunks,
 * published under their name by the last one; downloads streamed to disk).
 * Directories go as tar archives through the archive route: an upload is
 * built in memory (the route takes at most 8 MiB), a download is streamed to
 * a temp file and extracted with libarchive's safety checks (no absolute
 * paths, no "..", no writing through symlinks).
 *
 * The client library has no raw PUT or streamed raw GET yet, so the two
 * transfers are done here with libcurl on the client's socket (see
 * transfer()); they belong in src/client once it grows them. */
#include <archive.h>
#include <archive_entry.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "common/cleanup.h"

#define CP_CHUNK (4 * 1024 * 1024)
#define CP_ARCHIVE_MAX (8 * 1024 * 1024)
#define CP_ERROR_BODY_MAX (64 * 1024)

static const char cp_usage[] =
        "Usage: moat cp LOCAL ID:/PATH\n"
        "       moat cp ID:/PATH LOCAL\n"
        "Copy a file or a directory into or out of a running sandbox.\n"
        "A directory's contents land in the destination directory (created if missing).\n";

/* "ID:/path" (the id has no '/'); NULL if `arg` is a local path. */
static const char *remote_path_of(const char *arg, char ret_id[128])
{
        const char *colon = strchr(arg, ':');
        const char *slash = strchr(arg, '/');

        if (!colon || colon == arg || (slash && slash < colon) || (size_t)(colon - arg) >= 128)
                return NULL;
        memcpy(ret_id, arg, (size_t)(colon - arg));
        ret_id[colon - arg] = '\0';
        return colon + 1;
}

/* ---- HTTP ---- */

struct sink {
        CURL *curl;
        FILE *file;        /* 2xx bodies go here, if set */
        char *error_body;  /* other bodies are kept for the error message */
        size_t error_length;
        long status;
};

static size_t on_body(char *data, size_t size, size_t count, void *arg)
{
        struct sink *sink = arg;
        size_t length = size * count;

        /* The status is known before the first body byte: it tells a
         * file's bytes from an error object. */
        if (sink->status == 0)
                curl_easy_getinfo(sink->curl, CURLINFO_RESPONSE_CODE, &sink->status);
        if (sink->file && sink->status < 300)
                return fwrite(data, 1, length, sink->file) == length ? length : 0;
        if (sink->error_length + length > CP_ERROR_BODY_MAX)
                return length; /* enough for a message */
        char *grown = realloc(sink->error_body, sink->error_length + length + 1);
        if (!grown)
                return 0;
        sink->error_body = grown;
        memcpy(grown + sink->error_length, data, length);
        sink->error_length += length;
        grown[sink->error_length] = '\0';
        return length;
}

/* One request on moatd's socket. A 2xx body goes to `out` (if set). */
static int transfer(struct moat_client *client, const char *method, const char *path, const void *body,
                    size_t body_length, FILE *out, struct moat_error **err)
{
        CURL *curl = curl_easy_init();
        struct curl_slist *headers = NULL;
        struct sink sink = {.curl = curl, .file = out};
        _cleanup_free_ char *url = NULL;
        CURLcode code;
        long status = 0;
        int r = 0;

        if (!curl || asprintf(&url, "http://localhost%s", path) < 0) {
                if (curl)
                        curl_easy_cleanup(curl);
                url = NULL;
                return moat_error_system(err, ENOMEM, "curl");
        }
        headers = curl_slist_append(headers, "Content-Type: application/octet-stream");
        headers = curl_slist_append(headers, "Expect:");
        curl_easy_setopt(curl, CURLOPT_UNIX_SOCKET_PATH, moat_client_socket(client));
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, &sink);
        if (body) {
                curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
                curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_length);
        }
        code = curl_easy_perform(curl);
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        if (code != CURLE_OK && status == 0) {
                r = moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, NULL, "cannot reach moatd at %s: %s",
                                   moat_client_socket(client), curl_easy_strerror(code));
        } else if (status >= 300) {
                json_t *doc = sink.error_body ? json_loads(sink.error_body, 0, NULL) : NULL;

                r = moat_client_error_from_response(status, doc, err);
                json_decref(doc);
        } else if (code != CURLE_OK) {
                r = moat_error_system(err, errno, "transfer %s: %s", path, curl_easy_strerror(code));
        }
        free(sink.error_body);
        curl_slist_free_all(headers);
        curl_easy_cleanup(curl);
        return r;
}

static char *route(const char *sandbox_id, const char *what, const char *sandbox_path, const char *extra)
{
        _cleanup_free_ char *id = moat_client_escape_segment(sandbox_id);
        _cleanup_free_ char *escaped = NULL;
        char *path = NULL;
        CURL *curl = curl_easy_init();

        if (!id || !curl) {
                if (curl)
                        curl_easy_cleanup(curl);
                return NULL;
        }
        escaped = curl_easy_escape(curl, sandbox_path, 0);
        curl_easy_cleanup(curl);
        if (!escaped || asprintf(&path, "/v1/sandboxes/%s/files/%s?path=%s%s", id, what, escaped, extra ? extra : "") < 0)
                return NULL;
        return path;
}

/* ---- upload ---- */

static int upload_file(struct moat_client *client, const char *sandbox_id, const char *local, const char *remote,
                       mode_t mode, struct moat_error **err)
{
        _cleanup_close_ int fd = open(local, O_RDONLY | O_CLOEXEC);
        _cleanup_free_ char *buffer = malloc(CP_CHUNK);
        unsigned char random_bytes[8];
        char upload_id[17];
        uint64_t offset = 0;

        if (fd < 0)
                return moat_error_system(err, errno, "open `%s`", local);
        if (!buffer)
                return moat_error_system(err, ENOMEM, "malloc");
        if (getrandom(random_bytes, sizeof(random_bytes), 0) != sizeof(random_bytes))
                return moat_error_system(err, errno, "getrandom");
        for (size_t i = 0; i < sizeof(random_bytes); i++)
                snprintf(upload_id + 2 * i, 3, "%02x", random_bytes[i]);
        for (;;) {
                size_t filled = 0;
                ssize_t n;
                bool final;
                _cleanup_free_ char *extra = NULL, *path = NULL;

                while (filled < CP_CHUNK && (n = read(fd, buffer + filled, CP_CHUNK - filled)) != 0) {
                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n < 0)
                                return moat_error_system(err, errno, "read `%s`", local);
                        filled += (size_t)n;
                }
                /* The last chunk is the one that did not fill up (a file of
                 * an exact multiple ends with an empty final chunk). */
                final = filled < CP_CHUNK;
                if (asprintf(&extra, "&upload=%s&offset=%llu&final=%d&mode=%o", upload_id, (unsigned long long)offset,
                             final ? 1 : 0, (unsigned)(mode & 0777)) < 0) {
                        extra = NULL;
                        return moat_error_system(err, ENOMEM, "asprintf");
                }
                path = route(sandbox_id, "content", remote, extra);
                if (!path)
                        return moat_error_system(err, ENOMEM, "route");
                if (transfer(client, "PUT", path, filled ? buffer : "", filled, NULL, err) < 0)
                        return -1;
                offset += filled;
                if (final)
                        return 0;
        }
}

static la_ssize_t on_archive_memory_write(struct archive *writer, void *arg, const void *data, size_t length)
{
        struct { char *data; size_t length; } *memory = arg;
        char *grown;

        if (memory->length + length > CP_ARCHIVE_MAX) {
                archive_set_error(writer, EFBIG, "the directory's archive exceeds %d MiB", CP_ARCHIVE_MAX >> 20);
                return -1;
        }
        grown = realloc(memory->data, memory->length + length);
        if (!grown)
                return -1;
        memcpy(grown + memory->length, data, length);
        memory->data = grown;
        memory->length += length;
        return (la_ssize_t)length;
}

/* A batch: a tar in memory, sent as one request when it nears moatd's
 * request cap. */
struct batch {
        struct archive *writer;
        struct { char *data; size_t length; } memory;
};

static int batch_open(struct batch *batch, struct moat_error **err)
{
        batch->memory.data = NULL;
        batch->memory.length = 0;
        batch->writer = archive_write_new();
        if (!batch->writer)
                return moat_error_system(err, ENOMEM, "archive");
        archive_write_set_format_pax_restricted(batch->writer);
        archive_write_set_bytes_in_last_block(batch->writer, 1);
        if (archive_write_open2(batch->writer, &batch->memory, NULL, on_archive_memory_write, NULL, NULL) !=
            ARCHIVE_OK)
                return moat_error_system(err, ENOMEM, "archive");
        return 0;
}

/* Close the batch and send it (if it holds anything); leaves it closed. */
static int batch_send(struct batch *batch, struct moat_client *client, const char *sandbox_id, const char *remote,
                      bool entries, struct moat_error **err)
{
        _cleanup_free_ char *path = NULL;
        int r = 0;

        if (!batch->writer)
                return 0;
        if (archive_write_close(batch->writer) != ARCHIVE_OK)
                r = moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL, "archive: %s",
                                   archive_error_string(batch->writer));
        archive_write_free(batch->writer);
        batch->writer = NULL;
        if (r == 0 && entries) {
                path = route(sandbox_id, "archive", remote, NULL);
                r = path ? transfer(client, "PUT", path, batch->memory.data ? batch->memory.data : "",
                                    batch->memory.length, NULL, err)
                         : moat_error_system(err, ENOMEM, "route");
        }
        free(batch->memory.data);
        batch->memory.data = NULL;
        batch->memory.length = 0;
        return r;
}

/* The directory's contents beneath remote: tar batches under moatd's 8 MiB
 * request cap, a file bigger than a batch through the chunked file upload. */
static int upload_dir(struct moat_client *client, const char *sandbox_id, const char *local, const char *remote,
                      struct moat_error **err)
{
        struct batch batch = {0};
        struct archive *disk = archive_read_disk_new();
        struct archive_entry *entry;
        size_t prefix = strlen(local), in_batch = 0;
        const size_t batch_max = CP_ARCHIVE_MAX * 3 / 4;
        int r = 0;

        if (!disk) {
                r = moat_error_system(err, ENOMEM, "archive");
                goto out;
        }
        archive_read_disk_set_symlink_physical(disk); /* archive symlinks, never follow them */
        if (archive_read_disk_open(disk, local) != ARCHIVE_OK) {
                r = moat_error_system(err, archive_errno(disk), "archive `%s`: %s", local, archive_error_string(disk));
                goto out;
        }
        if (batch_open(&batch, err) < 0) {
                r = -1;
                goto out;
        }
        for (;;) {
                int status;
                const char *name;
                int64_t size;

                entry = archive_entry_new();
                status = archive_read_next_header2(disk, entry);
                if (status == ARCHIVE_EOF) {
                        archive_entry_free(entry);
                        break;
                }
                if (status != ARCHIVE_OK) {
                        r = moat_error_system(err, archive_errno(disk), "read `%s`: %s", local,
                                              archive_error_string(disk));
                        archive_entry_free(entry);
                        goto out;
                }
                archive_read_disk_descend(disk);
                /* Names relative to the directory: its contents, not itself. */
                name = archive_entry_pathname(entry) + prefix;
                while (*name == '/')
                        name++;
                if (*name == '\0') {
                        archive_entry_free(entry);
                        continue;
                }
                archive_entry_set_pathname(entry, name);
                size = archive_entry_filetype(entry) == AE_IFREG ? archive_entry_size(entry) : 0;
                if ((size_t)size + 4096 > batch_max) {
                        /* Too big for any batch: what came before (its
                         * directories included) goes first, then the file. */
                        _cleanup_free_ char *target = NULL;

                        if (batch_send(&batch, client, sandbox_id, remote, in_batch > 0, err) < 0 ||
                            batch_open(&batch, err) < 0 || asprintf(&target, "%s/%s", remote, name) < 0 ||
                            upload_file(client, sandbox_id, archive_entry_sourcepath(entry), target,
                                        archive_entry_perm(entry), err) < 0) {
                                archive_entry_free(entry);
                                r = -1;
                                goto out;
                        }
                        in_batch = 0;
                        archive_entry_free(entry);
                        continue;
                }
                if (batch.memory.length + (size_t)size + 4096 > batch_max && in_batch > 0) {
                        if (batch_send(&batch, client, sandbox_id, remote, true, err) < 0 ||
                            batch_open(&batch, err) < 0) {
                                archive_entry_free(entry);
                                r = -1;
                                goto out;
                        }
                        in_batch = 0;
                }
                if (archive_write_header(batch.writer, entry) != ARCHIVE_OK) {
                        r = moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL, "archive `%s`: %s", local,
                                           archive_error_string(batch.writer));
                        archive_entry_free(entry);
                        goto out;
                }
                in_batch++;
                if (size > 0) {
                        _cleanup_close_ int fd = open(archive_entry_sourcepath(entry), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
                        char buffer[65536];
                        ssize_t n;

                        if (fd < 0) {
                                r = moat_error_system(err, errno, "open `%s`", archive_entry_sourcepath(entry));
                                archive_entry_free(entry);
                                goto out;
                        }
                        while ((n = read(fd, buffer, sizeof(buffer))) > 0)
                                if (archive_write_data(batch.writer, buffer, (size_t)n) < 0) {
                                        r = moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL, "archive `%s`: %s",
                                                           local, archive_error_string(batch.writer));
                                        archive_entry_free(entry);
                                        goto out;
                                }
                }
                archive_entry_free(entry);
        }
        /* The last batch; an empty directory still gets its target made. */
        r = batch_send(&batch, client, sandbox_id, remote, true, err);
out:
        if (disk)
                archive_read_free(disk);
        if (batch.writer)
                archive_write_free(batch.writer);
        free(batch.memory.data);
        return r;
}

/* ---- download ---- */

static int download_file(struct moat_client *client, const char *sandbox_id, const char *remote, const char *local,
                         struct moat_error **err)
{
        _cleanup_free_ char *path = route(sandbox_id, "content", remote, NULL);
        _cleanup_fclose_ FILE *out = NULL;
        struct stat st;
        const char *target = local;
        _cleanup_free_ char *joined = NULL;
        const char *slash = strrchr(remote, '/');

        if (!path)
                return moat_error_system(err, ENOMEM, "route");
        /* Into an existing directory: keep the file's name, like cp. */
        if (stat(local, &st) == 0 && S_ISDIR(st.st_mode)) {
                if (asprintf(&joined, "%s/%s", local, slash ? slash + 1 : remote) < 0) {
                        joined = NULL;
                        return moat_error_system(err, ENOMEM, "asprintf");
                }
                target = joined;
        }
        out = fopen(target, "wbe");
        if (!out)
                return moat_error_system(err, errno, "open `%s`", target);
        if (transfer(client, "GET", path, NULL, 0, out, err) < 0) {
                fclose(TAKE_PTR(out));
                unlink(target);
                return -1;
        }
        if (fflush(out) != 0)
                return moat_error_system(err, errno, "write `%s`", target);
        return 0;
}

/* Extracts into the current directory (the caller changed into the
 * destination): the secure options then refuse any absolute entry. */
static int extract_archive(FILE *tar, struct moat_error **err)
{
        struct archive *reader = archive_read_new();
        struct archive *writer = archive_write_disk_new();
        struct archive_entry *entry;
        int r = 0;

        if (!reader || !writer) {
                r = moat_error_system(err, ENOMEM, "archive");
                goto out;
        }
        archive_read_support_format_tar(reader);
        /* No absolute paths, no "..", never write through a symlink. */
        archive_write_disk_set_options(writer, ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_PERM |
                                                       ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                                       ARCHIVE_EXTRACT_SECURE_SYMLINKS |
                                                       ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS);
        if (archive_read_open_FILE(reader, tar) != ARCHIVE_OK) {
                r = moat_error_system(err, 0, "archive: %s", archive_error_string(reader));
                goto out;
        }
        while (archive_read_next_header(reader, &entry) == ARCHIVE_OK) {
                const char *target = archive_entry_pathname(entry);
                const void *block;
                size_t size;
                la_int64_t offset;
                int status;

                if (archive_write_header(writer, entry) != ARCHIVE_OK) {
                        r = moat_error_system(err, archive_errno(writer), "extract `%s`: %s", target,
                                              archive_error_string(writer));
                        goto out;
                }
                while ((status = archive_read_data_block(reader, &block, &size, &offset)) == ARCHIVE_OK)
                        if (archive_write_data_block(writer, block, size, offset) != ARCHIVE_OK) {
                                r = moat_error_system(err, archive_errno(writer), "extract `%s`: %s", target,
                                                      archive_error_string(writer));
                                goto out;
                        }
                if (status != ARCHIVE_EOF) {
                        r = moat_error_system(err, 0, "archive: %s", archive_error_string(reader));
                        goto out;
                }
                archive_write_finish_entry(writer);
        }
out:
        if (reader)
                archive_read_free(reader);
        if (writer)
                archive_write_free(writer);
        return r;
}

static int download_dir(struct moat_client *client, const char *sandbox_id, const char *remote, const char *local,
                        struct moat_error **err)
{
        _cleanup_free_ char *path = route(sandbox_id, "archive", remote, NULL);
        _cleanup_fclose_ FILE *tar = tmpfile();

        if (!path || !tar)
                return moat_error_system(err, errno ? errno : ENOMEM, "temp file");
        if (transfer(client, "GET", path, NULL, 0, tar, err) < 0)
                return -1;
        if (fflush(tar) != 0 || fseek(tar, 0, SEEK_SET) != 0)
                return moat_error_system(err, errno, "temp file");
        if (mkdir(local, 0755) < 0 && errno != EEXIST)
                return moat_error_system(err, errno, "mkdir `%s`", local);
        if (chdir(local) < 0)
                return moat_error_system(err, errno, "chdir `%s`", local);
        return extract_archive(tar, err);
}

/* The remote path's type, from the stat route. */
static int remote_type(struct moat_client *client, const char *sandbox_id, const char *remote, char ret_type[16],
                       struct moat_error **err)
{
        _cleanup_free_ char *path = route(sandbox_id, "stat", remote, NULL);
        json_t *info = NULL;
        const char *type;

        if (!path)
                return moat_error_system(err, ENOMEM, "route");
        if (moat_client_request(client, "GET", path, NULL, &info, err) < 0)
                return -1;
        type = json_string_value(json_object_get(info, "type"));
        snprintf(ret_type, 16, "%s", type ? type : "");
        json_decref(info);
        return 0;
}

int moat_cmd_cp(struct moat_cli *cli, int argc, char **argv)
{
        struct moat_error *err = NULL;
        struct moat_client *client;
        char source_id[128], destination_id[128], type[16];
        const char *source_remote, *destination_remote;
        struct stat st;

        if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
                fputs(cp_usage, stdout);
                return 0;
        }
        if (argc != 3)
                return moat_cli_usage_error("cp", "needs a source and a destination");
        source_remote = remote_path_of(argv[1], source_id);
        destination_remote = remote_path_of(argv[2], destination_id);
        if (!!source_remote == !!destination_remote)
                return moat_cli_usage_error("cp", "exactly one of source and destination must be ID:/PATH");
        client = moat_cli_client(cli, &err);
        if (!client)
                return moat_cli_fail(err);
        if (destination_remote) {
                if (stat(argv[1], &st) < 0) {
                        moat_error_system(&err, errno, "stat `%s`", argv[1]);
                        return moat_cli_fail(err);
                }
                if (S_ISDIR(st.st_mode)) {
                        if (upload_dir(client, destination_id, argv[1], destination_remote, &err) < 0)
                                return moat_cli_fail(err);
                } else if (upload_file(client, destination_id, argv[1], destination_remote, st.st_mode, &err) < 0) {
                        return moat_cli_fail(err);
                }
                return 0;
        }
        if (remote_type(client, source_id, source_remote, type, &err) < 0)
                return moat_cli_fail(err);
        if (strcmp(type, "dir") == 0 ? download_dir(client, source_id, source_remote, argv[2], &err) < 0
                                     : download_file(client, source_id, source_remote, argv[2], &err) < 0)
                return moat_cli_fail(err);
        return 0;
}
