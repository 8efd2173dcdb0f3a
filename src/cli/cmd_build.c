/* moat image build: a Dockerfile (the subset of dockerfile.h) and the files
 * its COPY steps name, sent to POST /v1/images/build; the build's events are
 * printed as they stream.
 *
 *   moat image build -f FILE [--name NAME] [--json] [CONTEXT_DIR]
 *
 * stderr gets the progress ("step 2/5 RUN make", "  | <output line>",
 * "step 3/5 cached COPY ..."), stdout the image id alone (or the image object
 * with --json), so scripts can take it. */
#include <archive.h>
#include <archive_entry.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "common/cleanup.h"
#include "dockerfile.h"
#include "output.h"

/* moatd's bounds (src/daemon/image_build.c): the decoded context tar, and a
 * body of at most 8 MiB. Checked here first, so the user hears the reason
 * rather than a 413. */
#define BUILD_CONTEXT_MAX (6u << 20)
#define BUILD_CONTEXT_ENTRIES_MAX 100000u
#define BUILD_CONTEXT_DEPTH_MAX 128
/* Bound on one event line: a log line is at most 4 KiB, the last event one
 * image object. */

static const char build_usage[] =
        "Usage: moat image build [-f FILE] [--name NAME] [--json] [CONTEXT_DIR]\n"
        "  Build an image from a Dockerfile (FROM, RUN, COPY, ENV, WORKDIR, USER).\n"
        "  -f FILE      the Dockerfile (default CONTEXT_DIR/Dockerfile; - for stdin)\n"
        "  --name NAME  the image's name (default <context dir name>:latest)\n"
        "  --json       print the image object instead of its id\n"
        "  CONTEXT_DIR  where COPY sources are taken from (default .)\n"
        "Steps are cached: rebuilding an unchanged file runs nothing again.\n";

/* ---- the context tar ---- */

struct context_paths {
        char **paths; /* relative to the context, sorted, unique at the end */
        size_t count, capacity;
};

static void context_paths_release(struct context_paths *list)
{
        for (size_t i = 0; i < list->count; i++)
                free(list->paths[i]);
        free(list->paths);
        memset(list, 0, sizeof(*list));
}

static int context_paths_add(struct context_paths *list, const char *path, struct moat_error **err)
{
        if (list->count >= BUILD_CONTEXT_ENTRIES_MAX)
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "context_too_large",
                                      "the COPY sources hold more than %u files", BUILD_CONTEXT_ENTRIES_MAX);
        if (list->count == list->capacity) {
                size_t capacity = list->capacity ? list->capacity * 2 : 64;
                char **grown = realloc(list->paths, capacity * sizeof(*grown));

                if (!grown)
                        return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
                list->paths = grown;
                list->capacity = capacity;
        }
        list->paths[list->count] = strdup(path);
        if (!list->paths[list->count])
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
        list->count++;
        return 0;
}

/* Every entry below the directory `path` (opened as dir_fd), recursively.
 * Symlinks are listed, never followed. */
static int context_walk(struct context_paths *list, int dir_fd, const char *path, int depth,
                        struct moat_error **err)
{
        _cleanup_close_ int fd = dup(dir_fd);
        DIR *dir;
        struct dirent *entry;
        int r = 0;

        if (depth > BUILD_CONTEXT_DEPTH_MAX)
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "context_too_large",
                                      "`%.200s` is nested deeper than %d directories", path, BUILD_CONTEXT_DEPTH_MAX);
        if (fd < 0 || !(dir = fdopendir(fd)))
                return moat_error_system(err, errno, "read the directory `%.200s`", path);
        fd = -1; /* the DIR owns it now */
        rewinddir(dir);
        while (r == 0 && (errno = 0, entry = readdir(dir))) {
                char child[PATH_MAX];

                if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
                        continue;
                if (snprintf(child, sizeof(child), "%s%s%s", strcmp(path, ".") == 0 ? "" : path,
                             strcmp(path, ".") == 0 ? "" : "/", entry->d_name) >= (int)sizeof(child)) {
                        r = moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "invalid_argument",
                                           "a path in `%.200s` is too long", path);
                        break;
                }
                r = context_paths_add(list, child, err);
                if (r == 0 && entry->d_type == DT_DIR) {
                        _cleanup_close_ int child_fd =
                                openat(dirfd(dir), entry->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

                        if (child_fd < 0)
                                r = moat_error_system(err, errno, "open `%.200s`", child);
                        else
                                r = context_walk(list, child_fd, child, depth + 1, err);
                }
        }
        if (r == 0 && errno != 0)
                r = moat_error_system(err, errno, "read the directory `%.200s`", path);
        closedir(dir);
        return r;
}

static int compare_paths(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The paths the tar holds: every copy source, its parent directories, and
 * what a directory source holds; sorted and unique, so the same files always
 * make the same bytes. */
static int context_collect(const json_t *spec, int context_fd, struct context_paths *list, struct moat_error **err)
{
        const json_t *step;
        size_t index, kept = 0;

        json_array_foreach(json_object_get(spec, "steps"), index, step) {
                const char *source = json_string_value(json_object_get(json_object_get(step, "copy"), "src"));
                _cleanup_close_ int fd = -1;
                struct stat st;
                char parent[PATH_MAX];

                if (!source)
                        continue;
                /* The parents, so the tar is complete on its own. */
                snprintf(parent, sizeof(parent), "%s", source);
                for (char *slash = strchr(parent, '/'); slash; slash = strchr(slash + 1, '/')) {
                        *slash = '\0';
                        if (context_paths_add(list, parent, err) < 0)
                                return -1;
                        *slash = '/';
                }
                if (strcmp(source, ".") != 0 && context_paths_add(list, source, err) < 0)
                        return -1;
                fd = dockerfile_open_beneath(context_fd, source, O_RDONLY);
                if (fd < 0 || fstat(fd, &st) < 0)
                        return moat_error_system(err, errno, "COPY source `%.200s`", source);
                if (S_ISDIR(st.st_mode) && context_walk(list, fd, source, 0, err) < 0)
                        return -1;
        }
        if (list->count == 0)
                return 0;
        qsort(list->paths, list->count, sizeof(*list->paths), compare_paths);
        for (size_t i = 0; i < list->count; i++) {
                if (kept > 0 && strcmp(list->paths[kept - 1], list->paths[i]) == 0) {
                        free(list->paths[i]);
                        continue;
                }
                list->paths[kept++] = list->paths[i];
        }
        list->count = kept;
        return 0;
}

struct memory_sink {
        unsigned char *data;
        size_t length, capacity;
        bool too_large;
};

static la_ssize_t memory_sink_write(struct archive *archive, void *userdata, const void *buffer, size_t length)
{
        struct memory_sink *sink = userdata;

        if (length > BUILD_CONTEXT_MAX - sink->length) {
                sink->too_large = true;
                archive_set_error(archive, EFBIG, "the build context is larger than %u bytes", BUILD_CONTEXT_MAX);
                return -1;
        }
        if (sink->length + length > sink->capacity) {
                size_t capacity = sink->capacity ? sink->capacity : 65536;
                unsigned char *grown;

                while (capacity < sink->length + length)
                        capacity *= 2;
                grown = realloc(sink->data, capacity);
                if (!grown) {
                        archive_set_error(archive, ENOMEM, "out of memory");
                        return -1;
                }
                sink->data = grown;
                sink->capacity = capacity;
        }
        memcpy(sink->data + sink->length, buffer, length);
        sink->length += length;
        return (la_ssize_t)length;
}

static void archive_write_freep(struct archive **archive)
{
        if (*archive)
                archive_write_free(*archive);
}

static void archive_entry_freep(struct archive_entry **entry)
{
        if (*entry)
                archive_entry_free(*entry);
}

/* One path of the context into the tar. Owners are 0:0 (the image's root;
 * moatd forces that too) and times 0: the tar depends only on the paths,
 * types, modes and contents, so the same files make the same upload. */
static int context_write_entry(struct archive *archive, int context_fd, const char *path, struct moat_error **err)
{
        _cleanup_(archive_entry_freep) struct archive_entry *entry = archive_entry_new();
        _cleanup_close_ int fd = dockerfile_open_beneath(context_fd, path, O_PATH);
        struct stat st;

        if (!entry)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
        if (fd < 0 || fstat(fd, &st) < 0)
                return moat_error_system(err, errno, "read `%.200s` of the build context", path);
        archive_entry_set_pathname(entry, path);
        archive_entry_set_perm(entry, st.st_mode & 07777);
        archive_entry_set_uid(entry, 0);
        archive_entry_set_gid(entry, 0);
        archive_entry_set_mtime(entry, 0, 0);
        if (S_ISDIR(st.st_mode)) {
                archive_entry_set_filetype(entry, AE_IFDIR);
        } else if (S_ISLNK(st.st_mode)) {
                char target[PATH_MAX];
                ssize_t length = readlinkat(fd, "", target, sizeof(target) - 1);

                if (length < 0)
                        return moat_error_system(err, errno, "readlink `%.200s`", path);
                target[length] = '\0';
                /* Kept as a link: inside the image it points wherever it
                 * points there; the CLI never reads through it. */
                archive_entry_set_filetype(entry, AE_IFLNK);
                archive_entry_set_symlink(entry, target);
        } else if (S_ISREG(st.st_mode)) {
                archive_entry_set_filetype(entry, AE_IFREG);
                archive_entry_set_size(entry, st.st_size);
        } else {
                fprintf(stderr, "moat image build: skipping `%s`: not a file, directory or symlink\n", path);
                return 0;
        }
        if (archive_write_header(archive, entry) != ARCHIVE_OK)
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "context_too_large", "tar `%.200s`: %s", path,
                                      archive_error_string(archive));
        if (S_ISREG(st.st_mode)) {
                _cleanup_close_ int file = dockerfile_open_beneath(context_fd, path, O_RDONLY);
                char buffer[65536];
                off_t left = st.st_size;

                if (file < 0)
                        return moat_error_system(err, errno, "open `%.200s`", path);
                /* Exactly st_size bytes: a file that grows meanwhile is cut,
                 * one that shrinks is padded (libarchive), the tar stays whole. */
                while (left > 0) {
                        ssize_t n = read(file, buffer, left < (off_t)sizeof(buffer) ? (size_t)left : sizeof(buffer));

                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n < 0)
                                return moat_error_system(err, errno, "read `%.200s`", path);
                        if (n == 0)
                                break;
                        if (archive_write_data(archive, buffer, (size_t)n) < 0)
                                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "context_too_large",
                                                      "tar `%.200s`: %s", path, archive_error_string(archive));
                        left -= n;
                }
        }
        return 0;
}

/* The tar of every path the COPY steps need, in *ret_sink. */
static int context_tar(const json_t *spec, int context_fd, struct memory_sink *ret_sink, struct moat_error **err)
{
        _cleanup_(archive_write_freep) struct archive *archive = archive_write_new();
        struct context_paths list = {0};
        int r = -1;

        if (!archive)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
        /* pax only where ustar cannot say it (long names): plain tar otherwise. */
        if (archive_write_set_format_pax_restricted(archive) != ARCHIVE_OK ||
            archive_write_set_bytes_in_last_block(archive, 1) != ARCHIVE_OK ||
            archive_write_open(archive, ret_sink, NULL, memory_sink_write, NULL) != ARCHIVE_OK) {
                moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "tar: %s", archive_error_string(archive));
                goto out;
        }
        if (context_collect(spec, context_fd, &list, err) < 0)
                goto out;
        for (size_t i = 0; i < list.count; i++)
                if (context_write_entry(archive, context_fd, list.paths[i], err) < 0)
                        goto out;
        if (archive_write_close(archive) != ARCHIVE_OK) {
                moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "context_too_large", "tar: %s",
                               archive_error_string(archive));
                goto out;
        }
        r = 0;
out:
        if (r < 0 && ret_sink->too_large) {
                moat_error_free(err ? *err : NULL);
                if (err)
                        *err = NULL;
                moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "context_too_large",
                               "the files the COPY steps name make a tar larger than %u MiB (moatd's limit)",
                               BUILD_CONTEXT_MAX >> 20);
        }
        context_paths_release(&list);
        return r;
}

static char *base64_encode(const unsigned char *data, size_t length)
{
        static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        char *out = malloc((length + 2) / 3 * 4 + 1), *o = out;
        size_t i;

        if (!out)
                return NULL;
        for (i = 0; i + 2 < length; i += 3) {
                unsigned v = (unsigned)data[i] << 16 | (unsigned)data[i + 1] << 8 | data[i + 2];

                *o++ = alphabet[v >> 18 & 63];
                *o++ = alphabet[v >> 12 & 63];
                *o++ = alphabet[v >> 6 & 63];
                *o++ = alphabet[v & 63];
        }
        if (i < length) {
                unsigned v = (unsigned)data[i] << 16 | (i + 1 < length ? (unsigned)data[i + 1] << 8 : 0);

                *o++ = alphabet[v >> 18 & 63];
                *o++ = alphabet[v >> 12 & 63];
                *o++ = i + 1 < length ? alphabet[v >> 6 & 63] : '=';
                *o++ = '=';
        }
        *o = '\0';
        return out;
}

/* ---- the event stream ---- */

struct build_stream {
        const json_t *steps; /* of the spec, to describe a step */
        json_t *image;
        struct moat_error *error; /* the error event (the stream is read on to its end) */
};

/* "RUN make all" etc.: one line, at most about 100 characters. */
static void step_describe(const json_t *step, char *out, size_t size)
{
        const char *kind = NULL;
        json_t *value = NULL;
        char text[160] = "";
        size_t index;
        json_t *entry;
        const char *key;

        json_object_foreach((json_t *)step, key, value) {
                kind = key;
                break;
        }
        if (!kind) {
                snprintf(out, size, "?");
                return;
        }
        if (json_is_string(value)) {
                snprintf(text, sizeof(text), "%s", json_string_value(value));
        } else if (strcmp(kind, "copy") == 0) {
                snprintf(text, sizeof(text), "%s %s", json_string_value(json_object_get(value, "src")) ?: "",
                         json_string_value(json_object_get(value, "dest")) ?: "");
        } else if (json_is_array(value)) {
                json_array_foreach(value, index, entry) {
                        size_t used = strlen(text);

                        snprintf(text + used, sizeof(text) - used, "%s%s", index ? (strcmp(kind, "run") ? " " : "; ")
                                                                                 : "",
                                 json_string_value(entry) ?: "");
                }
        } else if (json_is_object(value)) {
                json_object_foreach(value, key, entry) {
                        size_t used = strlen(text);

                        snprintf(text + used, sizeof(text) - used, "%s%s=%s", used ? " " : "", key,
                                 json_string_value(entry) ?: "");
                }
        }
        for (char *p = text; *p; p++)
                if (*p == '\n' || *p == '\t')
                        *p = ' ';
        if (strlen(text) > 96)
                strcpy(text + 93, "...");
        {
                char upper[32];
                size_t i;

                for (i = 0; kind[i] && i + 1 < sizeof(upper); i++)
                        upper[i] = (char)toupper((unsigned char)kind[i]);
                upper[i] = '\0';
                snprintf(out, size, "%s %s", upper, text);
        }
}

static int build_event(void *userdata, json_t *event, struct moat_error **err)
{
        struct build_stream *stream = userdata;
        json_t *value, *step_value;
        size_t step_count = json_array_size(stream->steps);

        if (stream->error)
                return 0; /* after the error event: read to the end */
        step_value = json_object_get(event, "step");
        if (json_is_object(value = json_object_get(event, "error"))) {
                json_int_t step = json_integer_value(step_value);

                moat_client_error_from_response(500, event, &stream->error);
                if (json_is_integer(step_value) && step >= 0 && (size_t)step < step_count) {
                        char description[128];

                        step_describe(json_array_get(stream->steps, (size_t)step), description, sizeof(description));
                        moat_error_wrap(&stream->error, "step %lld/%zu %s", (long long)step + 1, step_count,
                                        description);
                }
                /* Not an abort: moatd ends the stream once the failed step is
                 * cleaned up (its sandbox, its staging directory), so the
                 * command returns when the store is settled. */
                return 0;
        }
        if (json_is_string(value = json_object_get(event, "progress"))) {
                fprintf(stderr, "%s\n", json_string_value(value));
        } else if (json_is_string(value = json_object_get(event, "log"))) {
                fprintf(stderr, "  | %s\n", json_string_value(value));
        } else if (json_is_object(value = json_object_get(event, "image")) && !step_value) {
                json_decref(stream->image);
                stream->image = json_incref(value);
        } else if (json_is_boolean(value = json_object_get(event, "cached")) && json_is_integer(step_value)) {
                json_int_t step = json_integer_value(step_value);
                char description[128] = "?";

                if (step >= 0 && (size_t)step < step_count)
                        step_describe(json_array_get(stream->steps, (size_t)step), description, sizeof(description));
                fprintf(stderr, "step %lld/%zu %s%s\n", (long long)step + 1, step_count,
                        json_is_true(value) ? "cached " : "", description);
        }
        /* The end of a step, and kinds added later: nothing to print. */
        fflush(stderr);
        return 0;
}

/* POST the body and follow the stream. Returns the final image object (new
 * reference) or NULL with *err. */
static json_t *build_post(struct moat_client *client, json_t *body, const json_t *steps, struct moat_error **err)
{
        struct build_stream stream = {.steps = steps};

        if (moat_client_post_events(client, "/v1/images/build", body, build_event, &stream, err) < 0) {
                moat_error_free(stream.error);
        } else if (stream.error) {
                *err = TAKE_PTR(stream.error);
        } else if (!stream.image) {
                moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, "transport",
                               "the build stream ended before the image (did moatd stop?)");
        }
        if (*err) {
                json_decref(stream.image);
                return NULL;
        }
        return stream.image;
}

/* ---- the command ---- */

static char *read_dockerfile(const char *path, size_t *ret_length, struct moat_error **err)
{
        _cleanup_close_ int fd = strcmp(path, "-") == 0 ? dup(STDIN_FILENO) : open(path, O_RDONLY | O_CLOEXEC);
        _cleanup_free_ char *text = NULL;
        size_t length = 0;

        if (fd < 0) {
                moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, errno, "invalid_argument", "open the Dockerfile `%s`",
                               path);
                return NULL;
        }
        text = malloc(DOCKERFILE_SIZE_MAX + 2);
        if (!text) {
                moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
                return NULL;
        }
        /* One byte more than allowed: the parser then reports the size. */
        while (length < DOCKERFILE_SIZE_MAX + 1) {
                ssize_t n = read(fd, text + length, DOCKERFILE_SIZE_MAX + 1 - length);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, errno, "invalid_argument",
                                       "read the Dockerfile `%s`", path);
                        return NULL;
                }
                if (n == 0)
                        break;
                length += (size_t)n;
        }
        text[length] = '\0';
        *ret_length = length;
        return TAKE_PTR(text);
}

/* "<context dir's name>:latest", made a valid image name. */
static void default_name(const char *context_dir, char *out, size_t size)
{
        char absolute[PATH_MAX], name[64];
        const char *base;
        size_t length = 0;

        base = realpath(context_dir, absolute) ? strrchr(absolute, '/') + 1 : "";
        for (const char *p = base; *p && length + 1 < sizeof(name); p++) {
                char c = (char)tolower((unsigned char)*p);

                if (!(islower((unsigned char)c) || isdigit((unsigned char)c) || c == '-' || c == '_' || c == '.'))
                        c = '-';
                /* A name starts with [a-z0-9] and holds no "..". */
                if ((length == 0 && !isalnum((unsigned char)c)) || (c == '.' && length && name[length - 1] == '.'))
                        continue;
                name[length++] = c;
        }
        name[length] = '\0';
        snprintf(out, size, "%s:latest", length ? name : "build");
}

int moat_cmd_image_build(struct moat_cli *cli, int argc, char **argv)
{
        const char *file = NULL, *name = NULL, *context_dir = NULL;
        _cleanup_free_ char *text = NULL, *dockerfile_path = NULL, *encoded = NULL;
        _cleanup_close_ int context_fd = -1;
        struct memory_sink sink = {0};
        struct moat_error *err = NULL;
        struct moat_client *client;
        json_auto_t *spec = NULL, *image = NULL;
        bool json = cli->json;
        char default_image_name[80];
        size_t length = 0;

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
                        fputs(build_usage, stdout);
                        return 0;
                } else if (strcmp(argv[i], "--json") == 0) {
                        json = true;
                } else if (strcmp(argv[i], "-f") == 0 || strcmp(argv[i], "--file") == 0) {
                        if (i + 1 >= argc)
                                return moat_cli_usage_error("image build", "-f needs a file");
                        file = argv[++i];
                } else if (strncmp(argv[i], "--file=", 7) == 0) {
                        file = argv[i] + 7;
                } else if (strcmp(argv[i], "--name") == 0 || strcmp(argv[i], "-t") == 0) {
                        if (i + 1 >= argc)
                                return moat_cli_usage_error("image build", "--name needs a value");
                        name = argv[++i];
                } else if (strncmp(argv[i], "--name=", 7) == 0) {
                        name = argv[i] + 7;
                } else if (argv[i][0] == '-' && argv[i][1]) {
                        fprintf(stderr, "moat image build: unknown option `%s`\n%s", argv[i], build_usage);
                        return MOAT_EXIT_USAGE;
                } else if (!context_dir) {
                        context_dir = argv[i];
                } else {
                        fprintf(stderr, "moat image build: one CONTEXT_DIR only\n%s", build_usage);
                        return MOAT_EXIT_USAGE;
                }
        }
        if (!context_dir)
                context_dir = ".";
        if (!file) {
                if (asprintf(&dockerfile_path, "%s/Dockerfile", context_dir) < 0)
                        return moat_cli_fail(NULL);
                file = dockerfile_path;
        }
        if (!name) {
                default_name(context_dir, default_image_name, sizeof(default_image_name));
                name = default_image_name;
        }

        text = read_dockerfile(file, &length, &err);
        if (!text || dockerfile_parse(text, length, &spec, &err) < 0) {
                moat_error_wrap(&err, "%s", file);
                return moat_cli_fail(err);
        }
        context_fd = open(context_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (context_fd < 0) {
                moat_error_set(&err, MOAT_ERROR_INVALID_ARGUMENT, errno, "invalid_argument",
                               "the build context `%s`", context_dir);
                return moat_cli_fail(err);
        }
        if (dockerfile_resolve_copies(spec, context_fd, &err) < 0 || context_tar(spec, context_fd, &sink, &err) < 0) {
                free(sink.data);
                return moat_cli_fail(err);
        }
        if (sink.length > 0) {
                encoded = base64_encode(sink.data, sink.length);
                free(sink.data);
                if (!encoded)
                        return moat_cli_fail(NULL);
                json_object_set_new(spec, "context", json_string(encoded));
        }
        if (json_object_set_new(spec, "name", json_string(name)) < 0)
                return moat_cli_usage_error("image build", "--name must be valid UTF-8");
        free(encoded);
        encoded = NULL;
        client = moat_cli_client(cli, &err);
        if (!client)
                return moat_cli_fail(err);
        image = build_post(client, spec, json_object_get(spec, "steps"), &err);
        if (!image)
                return moat_cli_fail(err);
        if (json)
                moat_output_json(image, stdout);
        else
                printf("%s\n", json_string_value(json_object_get(image, "id")) ?: "");
        return 0;
}
