/* The Dockerfile subset of `moat image build` (the format: dockerfile.h).
 *
 * Pure text to JSON, except dockerfile_resolve_copies, which looks at the
 * build context. The input is a file the user points us at but may have been
 * written by someone else: every size is bounded, every error names its line,
 * and nothing in it can make the CLI read outside the context directory. */
#include "dockerfile.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/cleanup.h"

#define DOCKERFILE_PATH_MAX 4096

struct parse_state {
        json_t *from;  /* the FROM image (string), NULL before FROM */
        json_t *steps; /* the spec's steps so far */
        char workdir[DOCKERFILE_PATH_MAX]; /* for relative WORKDIR and COPY dest */
        unsigned line;                     /* of the instruction being parsed */
};

static int parse_error(struct moat_error **err, unsigned line, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static int parse_error(struct moat_error **err, unsigned line, const char *fmt, ...)
{
        char message[900];
        va_list args;

        va_start(args, fmt);
        vsnprintf(message, sizeof(message), fmt, args);
        va_end(args);
        if (line)
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "invalid_dockerfile", "line %u: %s", line,
                                      message);
        return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "invalid_dockerfile", "%s", message);
}

static bool is_blank(char c)
{
        return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

static const char *skip_blanks(const char *p)
{
        while (*p && is_blank(*p))
                p++;
        return p;
}

char *dockerfile_shell_quote(const char *word)
{
        size_t quotes = 0, length = strlen(word);
        char *out, *o;

        for (const char *p = word; *p; p++)
                quotes += *p == '\'';
        out = malloc(length + quotes * 3 + 3);
        if (!out)
                return NULL;
        o = out;
        *o++ = '\'';
        for (const char *p = word; *p; p++) {
                if (*p == '\'') {
                        memcpy(o, "'\\''", 4); /* close, an escaped quote, reopen */
                        o += 4;
                } else {
                        *o++ = *p;
                }
        }
        *o++ = '\'';
        *o = '\0';
        return out;
}

/* A JSON array of at least min_count strings (the exec form), or NULL. */
static json_t *exec_form(const char *args, size_t min_count)
{
        json_t *array, *entry;
        size_t index;

        if (args[0] != '[')
                return NULL;
        array = json_loads(args, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_array(array) || json_array_size(array) < min_count) {
                json_decref(array);
                return NULL;
        }
        json_array_foreach(array, index, entry)
                if (!json_is_string(entry) || strlen(json_string_value(entry)) != json_string_length(entry)) {
                        json_decref(array);
                        return NULL;
                }
        return array;
}

/* Lexically resolve `path` against `base` (absolute): "." and empty parts
 * dropped, ".." goes up and stops at /. out gets an absolute path without a
 * trailing slash (but "/" itself). -1 if it does not fit. */
static int path_resolve(const char *base, const char *path, char *out, size_t size)
{
        char work[DOCKERFILE_PATH_MAX * 2 + 2];
        size_t length = 0;
        char *part, *save = NULL;

        if (snprintf(work, sizeof(work), "%s/%s", path[0] == '/' ? "" : base, path) >= (int)sizeof(work))
                return -1;
        out[0] = '\0';
        for (part = strtok_r(work, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
                if (strcmp(part, ".") == 0)
                        continue;
                if (strcmp(part, "..") == 0) {
                        char *slash = strrchr(out, '/');

                        if (slash) {
                                *slash = '\0';
                                length = (size_t)(slash - out);
                        }
                        continue;
                }
                if (length + 1 + strlen(part) + 1 > size)
                        return -1;
                out[length++] = '/';
                strcpy(out + length, part);
                length += strlen(part);
        }
        if (length == 0) {
                if (size < 2)
                        return -1;
                strcpy(out, "/");
        }
        return 0;
}

static int add_step(struct parse_state *state, json_t *step, struct moat_error **err)
{
        if (!step)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
        if (json_array_size(state->steps) >= DOCKERFILE_STEPS_MAX) {
                json_decref(step);
                return parse_error(err, state->line, "more than %d build steps (a COPY counts one per source)",
                                   DOCKERFILE_STEPS_MAX);
        }
        json_array_append_new(state->steps, step);
        return 0;
}

/* ---- one function per instruction ---- */

static int instruction_from(struct parse_state *state, const char *args, struct moat_error **err)
{
        char image[1024], as[16], stage[256], extra[2];
        int words;

        if (state->from)
                return parse_error(err, state->line, "a second FROM: multi-stage builds are not supported");
        if (strncmp(args, "--", 2) == 0)
                return parse_error(err, state->line, "FROM flags (--platform) are not supported");
        words = sscanf(args, "%1023s %15s %255s %1s", image, as, stage, extra);
        if (words < 1 || strlen(args) >= sizeof(image))
                return parse_error(err, state->line, "FROM needs an image (e.g. FROM debian:bookworm-slim)");
        if (words != 1 && !(words == 3 && strcasecmp(as, "AS") == 0))
                return parse_error(err, state->line, "FROM takes one image, optionally `AS name`");
        state->from = json_string(image);
        if (!state->from)
                return parse_error(err, state->line, "FROM: the image name is not valid UTF-8");
        return 0;
}

static int instruction_run(struct parse_state *state, const char *args, struct moat_error **err)
{
        json_t *argv = exec_form(args, 1), *word;
        _cleanup_free_ char *command = NULL;
        size_t size = 0, index;
        FILE *out;

        if (!args[0])
                return parse_error(err, state->line, "RUN needs a command");
        if (!argv) {
                if (strncmp(args, "--", 2) == 0)
                        return parse_error(err, state->line, "RUN flags (--mount, --network, ...) are not supported");
                return add_step(state, json_pack("{s:s}", "run", args), err);
        }
        /* Exec form: no shell expansion was asked for, so every word is
         * quoted; the daemon runs one shell command. */
        out = open_memstream(&command, &size);
        if (!out) {
                json_decref(argv);
                return moat_error_system(err, errno, "open_memstream");
        }
        json_array_foreach(argv, index, word) {
                _cleanup_free_ char *quoted = dockerfile_shell_quote(json_string_value(word));

                fprintf(out, "%s%s", index ? " " : "", quoted ? quoted : "''");
        }
        fclose(out);
        json_decref(argv);
        if (!command)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
        return add_step(state, json_pack("{s:s}", "run", command), err);
}

/* A COPY source, as the daemon wants it: relative to the context, no "..",
 * normalised ("./a//b/" -> "a/b", "./" -> "."). */
static int copy_source(struct parse_state *state, const char *source, char *out, size_t size,
                       struct moat_error **err)
{
        char work[DOCKERFILE_PATH_MAX];
        char *part, *save = NULL;
        size_t length = 0;

        if (!source[0])
                return parse_error(err, state->line, "COPY: an empty source");
        if (strlen(source) >= sizeof(work))
                return parse_error(err, state->line, "COPY: a source path is too long");
        if (source[0] == '/')
                return parse_error(err, state->line,
                                   "COPY source `%.200s` is absolute: sources are relative to the build context",
                                   source);
        if (strpbrk(source, "*?["))
                return parse_error(err, state->line, "COPY source `%.200s`: wildcards are not supported", source);
        strcpy(work, source);
        out[0] = '\0';
        for (part = strtok_r(work, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
                if (strcmp(part, "..") == 0)
                        return parse_error(err, state->line,
                                           "COPY source `%.200s` goes outside the build context (..)", source);
                if (strcmp(part, ".") == 0)
                        continue;
                length += (size_t)snprintf(out + length, size - length, "%s%s", length ? "/" : "", part);
        }
        if (length == 0)
                snprintf(out, size, ".");
        return 0;
}

static int instruction_copy(struct parse_state *state, const char *args, struct moat_error **err)
{
        _cleanup_(json_decrefp) json_t *words = exec_form(args, 2);
        char dest[DOCKERFILE_PATH_MAX];
        const char *dest_text;
        size_t count, dest_length;
        bool into_directory;

        if (!words && strncmp(args, "--", 2) == 0) {
                if (strncmp(args, "--chown", 7) == 0)
                        return parse_error(err, state->line, "COPY --chown is not supported: copied files are owned "
                                                             "by root; add `RUN chown ...` after the COPY");
                if (strncmp(args, "--from", 6) == 0)
                        return parse_error(err, state->line, "COPY --from is not supported (no multi-stage builds)");
                return parse_error(err, state->line, "COPY flags (--chmod, --link, ...) are not supported");
        }
        if (!words) {
                /* Shell form: words split on blanks (Docker does no quote
                 * processing here either; the JSON form is for spaces). */
                _cleanup_free_ char *copy = strdup(args);
                char *word, *save = NULL;

                words = json_array();
                if (!copy || !words)
                        return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
                for (word = strtok_r(copy, " \t\r\f\v", &save); word; word = strtok_r(NULL, " \t\r\f\v", &save))
                        if (json_array_append_new(words, json_string(word)) < 0)
                                return parse_error(err, state->line, "COPY: a path is not valid UTF-8");
        }
        count = json_array_size(words);
        if (count < 2)
                return parse_error(err, state->line, "COPY needs a source and a destination");
        dest_text = json_string_value(json_array_get(words, count - 1));
        dest_length = strlen(dest_text);
        if (dest_length == 0)
                return parse_error(err, state->line, "COPY: an empty destination");
        /* "dir/", "." and ".." name a directory to copy into. */
        into_directory = dest_text[dest_length - 1] == '/' || strcmp(dest_text, ".") == 0 ||
                         strcmp(dest_text, "..") == 0 ||
                         (dest_length >= 2 && strcmp(dest_text + dest_length - 2, "/.") == 0) ||
                         (dest_length >= 3 && strcmp(dest_text + dest_length - 3, "/..") == 0);
        if (count > 2 && !into_directory)
                return parse_error(err, state->line,
                                   "COPY with several sources needs a destination directory ending with /");
        if (path_resolve(state->workdir, dest_text, dest, sizeof(dest) - 1) < 0)
                return parse_error(err, state->line, "COPY: the destination is too long");
        if (into_directory && strcmp(dest, "/") != 0)
                strcat(dest, "/");
        for (size_t i = 0; i + 1 < count; i++) {
                char source[DOCKERFILE_PATH_MAX];

                if (copy_source(state, json_string_value(json_array_get(words, i)), source, sizeof(source), err) < 0)
                        return -1;
                /* "line" is for dockerfile_resolve_copies' errors; it removes it. */
                if (add_step(state,
                             json_pack("{s:{s:s, s:s, s:i}}", "copy", "src", source, "dest", dest, "line",
                                       (int)state->line),
                             err) < 0)
                        return -1;
        }
        return 0;
}

static bool env_key_valid(const char *key, size_t length)
{
        if (length == 0 || !(isalpha((unsigned char)key[0]) || key[0] == '_'))
                return false;
        for (size_t i = 1; i < length; i++)
                if (!(isalnum((unsigned char)key[i]) || key[i] == '_'))
                        return false;
        return true;
}

/* Read one value from *cursor: quotes removed, backslash escapes applied.
 * Stops at an unquoted blank when stop_at_blank. Writes into out (at least
 * strlen(*cursor) + 1 bytes). */
static int env_value(struct parse_state *state, const char **cursor, bool stop_at_blank, char *out,
                     struct moat_error **err)
{
        const char *p = *cursor;
        char quote = 0;

        while (*p) {
                if (quote) {
                        if (*p == quote) {
                                quote = 0;
                        } else if (quote == '"' && *p == '\\' && p[1]) {
                                *out++ = *++p;
                        } else {
                                *out++ = *p;
                        }
                } else if (*p == '"' || *p == '\'') {
                        quote = *p;
                } else if (*p == '\\' && p[1]) {
                        *out++ = *++p;
                } else if (stop_at_blank && is_blank(*p)) {
                        break;
                } else {
                        *out++ = *p;
                }
                p++;
        }
        *out = '\0';
        if (quote)
                return parse_error(err, state->line, "ENV: an unterminated %s quote",
                                   quote == '"' ? "double" : "single");
        *cursor = p;
        return 0;
}

static int instruction_env(struct parse_state *state, const char *args, struct moat_error **err)
{
        _cleanup_(json_decrefp) json_t *env = json_object();
        _cleanup_free_ char *value = malloc(strlen(args) + 1);
        const char *p = args;
        size_t first_word = strcspn(args, " \t\r\f\v");

        if (!env || !value)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
        if (!args[0])
                return parse_error(err, state->line, "ENV needs KEY=VALUE");
        if (!memchr(args, '=', first_word)) {
                /* Legacy `ENV KEY value words`: the rest of the line is the value. */
                char key[256];

                if (!env_key_valid(args, first_word) || first_word >= sizeof(key))
                        return parse_error(err, state->line, "ENV: `%.*s` is not a valid name ([A-Za-z_][A-Za-z0-9_]*)",
                                           (int)(first_word > 64 ? 64 : first_word), args);
                memcpy(key, args, first_word);
                key[first_word] = '\0';
                p = skip_blanks(args + first_word);
                if (!*p)
                        return parse_error(err, state->line, "ENV %s needs a value (ENV %s=value)", key, key);
                if (env_value(state, &p, false, value, err) < 0)
                        return -1;
                if (json_object_set_new(env, key, json_string(value)) < 0)
                        return parse_error(err, state->line, "ENV: the value of %s is not valid UTF-8", key);
                return add_step(state, json_pack("{s:O}", "env", env), err);
        }
        while (*(p = skip_blanks(p))) {
                size_t key_length = strcspn(p, "= \t\r\f\v");
                char key[256];

                if (p[key_length] != '=')
                        return parse_error(err, state->line, "ENV: `%.*s` is not KEY=VALUE",
                                           (int)(key_length > 64 ? 64 : key_length), p);
                if (!env_key_valid(p, key_length) || key_length >= sizeof(key))
                        return parse_error(err, state->line, "ENV: `%.*s` is not a valid name ([A-Za-z_][A-Za-z0-9_]*)",
                                           (int)(key_length > 64 ? 64 : key_length), p);
                memcpy(key, p, key_length);
                key[key_length] = '\0';
                p += key_length + 1;
                if (env_value(state, &p, true, value, err) < 0)
                        return -1;
                if (json_object_set_new(env, key, json_string(value)) < 0)
                        return parse_error(err, state->line, "ENV: the value of %s is not valid UTF-8", key);
        }
        return add_step(state, json_pack("{s:O}", "env", env), err);
}

static int instruction_workdir(struct parse_state *state, const char *args, struct moat_error **err)
{
        char resolved[DOCKERFILE_PATH_MAX];

        if (!args[0])
                return parse_error(err, state->line, "WORKDIR needs a path");
        if (path_resolve(state->workdir, args, resolved, sizeof(resolved)) < 0)
                return parse_error(err, state->line, "WORKDIR: the path is too long");
        snprintf(state->workdir, sizeof(state->workdir), "%s", resolved);
        return add_step(state, json_pack("{s:s}", "workdir", resolved), err);
}

static int instruction_user(struct parse_state *state, const char *args, struct moat_error **err)
{
        if (!args[0] || args[strcspn(args, " \t\r\f\v")])
                return parse_error(err, state->line, "USER takes one user name or uid[:gid]");
        if (strlen(args) > 256)
                return parse_error(err, state->line, "USER: the name is too long");
        return add_step(state, json_pack("{s:s}", "user", args), err);
}

/* Docker instructions this builder does not do: named in the error, so the
 * user learns it is a known gap rather than a typo. */
static const char *const unsupported_instructions[] = {
        "ADD", "ARG", "CMD", "ENTRYPOINT", "EXPOSE", "HEALTHCHECK", "LABEL", "MAINTAINER",
        "ONBUILD", "SHELL", "STOPSIGNAL", "VOLUME", NULL,
};

static int instruction(struct parse_state *state, char *text, struct moat_error **err)
{
        static const struct {
                const char *word;
                int (*parse)(struct parse_state *state, const char *args, struct moat_error **err);
        } table[] = {
                {"FROM", instruction_from}, {"RUN", instruction_run},         {"COPY", instruction_copy},
                {"ENV", instruction_env},   {"WORKDIR", instruction_workdir}, {"USER", instruction_user},
        };
        size_t word_length = strcspn(text, " \t\r\f\v");
        char *args = (char *)skip_blanks(text + word_length), *end = args + strlen(args);

        while (end > args && is_blank(end[-1]))
                *--end = '\0';
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(table); i++) {
                if (strlen(table[i].word) != word_length || strncasecmp(text, table[i].word, word_length) != 0)
                        continue;
                if (!state->from && table[i].parse != instruction_from)
                        return parse_error(err, state->line, "the first instruction must be FROM");
                return table[i].parse(state, args, err);
        }
        for (const char *const *word = unsupported_instructions; *word; word++)
                if (strlen(*word) == word_length && strncasecmp(text, *word, word_length) == 0)
                        return parse_error(err, state->line,
                                           "%s is not supported by moat image build (FROM, RUN, COPY, ENV, WORKDIR, "
                                           "USER are)%s",
                                           *word, strcmp(*word, "ADD") == 0 ? "; use COPY" : "");
        return parse_error(err, state->line, "unknown instruction `%.*s`", (int)(word_length > 32 ? 32 : word_length),
                           text);
}

/* A line that continues on the next: ends with a backslash, blanks after it
 * allowed. Cuts the backslash (and those blanks) off. */
static bool line_continues(char *line, size_t *length)
{
        size_t n = *length;

        while (n > 0 && is_blank(line[n - 1]))
                n--;
        if (n == 0 || line[n - 1] != '\\')
                return false;
        *length = n - 1;
        line[*length] = '\0';
        return true;
}

int dockerfile_parse(const char *text, size_t length, json_t **ret_spec, struct moat_error **err)
{
        struct parse_state state = {.workdir = "/"};
        _cleanup_free_ char *logical = NULL;
        size_t logical_length = 0;
        bool continuing = false;
        unsigned line_number = 0;
        const char *p = text, *end = text + length;
        int r = -1;

        if (length > DOCKERFILE_SIZE_MAX)
                return parse_error(err, 0, "the Dockerfile is larger than %u bytes", DOCKERFILE_SIZE_MAX);
        if (memchr(text, '\0', length))
                return parse_error(err, 0, "the Dockerfile holds a NUL byte: not a text file");
        {
                /* JSON strings are UTF-8: check once here, so that no later
                 * json_pack fails for a reason it cannot name. */
                json_t *check = json_stringn(text, length);

                if (!check)
                        return parse_error(err, 0, "the Dockerfile is not valid UTF-8");
                json_decref(check);
        }
        /* Every logical line is at most the whole file. */
        logical = malloc(length + 1);
        state.steps = json_array();
        if (!logical || !state.steps) {
                moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
                goto out;
        }
        while (p < end || continuing) {
                const char *newline = p < end ? memchr(p, '\n', (size_t)(end - p)) : NULL;
                size_t physical_length = p < end ? (newline ? (size_t)(newline - p) : (size_t)(end - p)) : 0;
                const char *content = p;
                bool at_end = p >= end;

                line_number++;
                p = newline ? newline + 1 : end;
                if (!at_end) {
                        const char *first = content;

                        while (first < content + physical_length && is_blank(*first))
                                first++;
                        /* Blank and comment lines are skipped, also in the
                         * middle of a continued instruction (as Docker does). */
                        if (first == content + physical_length || *first == '#')
                                continue;
                        if (!continuing) {
                                state.line = line_number;
                                logical_length = 0;
                                physical_length -= (size_t)(first - content);
                                content = first;
                        }
                        memcpy(logical + logical_length, content, physical_length);
                        logical_length += physical_length;
                        logical[logical_length] = '\0';
                        continuing = line_continues(logical, &logical_length);
                        if (continuing && p < end)
                                continue;
                }
                /* A complete instruction (or a continuation cut by the end of
                 * the file, which Docker accepts too). */
                continuing = false;
                if (logical_length == 0)
                        continue;
                if (instruction(&state, logical, err) < 0)
                        goto out;
                logical_length = 0;
        }
        if (!state.from) {
                parse_error(err, 0, "the Dockerfile has no FROM instruction");
                goto out;
        }
        *ret_spec = json_pack("{s:O, s:O}", "from", state.from, "steps", state.steps);
        if (!*ret_spec) {
                moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
                goto out;
        }
        r = 0;
out:
        json_decref(state.from);
        json_decref(state.steps);
        return r;
}

int dockerfile_open_beneath(int dir_fd, const char *path, int flags)
{
        /* RESOLVE_BENEATH: no "..", no absolute path, no magic link leaves
         * dir_fd; RESOLVE_NO_SYMLINKS: a symlink in the context (pointing at
         * /etc/shadow, or at ../secrets) never leads the CLI anywhere. The
         * daemon applies the same rule to what it extracts. */
        struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC | O_NOFOLLOW),
                               .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};

        _cleanup_close_ int current = -1;
        char copy[DOCKERFILE_PATH_MAX], *part, *next, *save = NULL;
        int fd = (int)syscall(SYS_openat2, dir_fd, path, &how, sizeof(how));

        if (fd >= 0 || errno != ENOSYS)
                return fd;
        /* No openat2 (a kernel before 5.6, or valgrind): the same walk by
         * hand, one O_NOFOLLOW component at a time; the paths here are
         * already checked to be relative and free of "..". */
        if (path[0] == '/' || strlen(path) >= sizeof(copy)) {
                errno = EXDEV;
                return -1;
        }
        strcpy(copy, path);
        current = dup(dir_fd);
        for (part = strtok_r(copy, "/", &save); part && current >= 0; part = next) {
                next = strtok_r(NULL, "/", &save);
                if (strcmp(part, "..") == 0) {
                        errno = EXDEV;
                        return -1;
                }
                struct stat st;

                fd = openat(current, part, next ? O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
                                                : flags | O_NOFOLLOW | O_CLOEXEC);
                /* A symlink on the way fails as ENOTDIR here: say ELOOP, as openat2 would. */
                if (fd < 0 && errno == ENOTDIR && fstatat(current, part, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                    S_ISLNK(st.st_mode))
                        errno = ELOOP;
                close(current);
                current = fd;
        }
        return TAKE_FD(current);
}

int dockerfile_resolve_copies(json_t *spec, int context_fd, struct moat_error **err)
{
        json_t *step;
        size_t index;

        json_array_foreach(json_object_get(spec, "steps"), index, step) {
                json_t *copy = json_object_get(step, "copy");
                const char *source = json_string_value(json_object_get(copy, "src"));
                const char *dest = json_string_value(json_object_get(copy, "dest"));
                char final_dest[DOCKERFILE_PATH_MAX + NAME_MAX + 2];
                _cleanup_close_ int fd = -1;
                struct stat st;
                size_t length;
                unsigned line;

                if (!copy)
                        continue;
                line = (unsigned)json_integer_value(json_object_get(copy, "line"));
                json_object_del(copy, "line"); /* the daemon's step has src and dest only */
                if (!source || !dest)
                        return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "a copy step without src or dest");
                fd = dockerfile_open_beneath(context_fd, source, O_PATH);
                if (fd < 0 && errno == ENOENT)
                        return parse_error(err, line, "COPY source `%.200s` does not exist in the build context",
                                           source);
                if (fd < 0 && (errno == ELOOP || errno == EXDEV))
                        return parse_error(err, line, "COPY source `%.200s` passes through a symlink: symlinks are "
                                                      "not followed out of the build context",
                                           source);
                if (fd < 0 || fstat(fd, &st) < 0)
                        return moat_error_system(err, errno, "line %u: COPY source `%.200s`", line, source);
                if (S_ISLNK(st.st_mode)) /* O_PATH | O_NOFOLLOW opens a last-component link itself */
                        return parse_error(err, line, "COPY source `%.200s` is a symlink: symlinks are not followed "
                                                      "out of the build context",
                                           source);
                length = strlen(dest);
                snprintf(final_dest, sizeof(final_dest), "%s", dest);
                if (S_ISREG(st.st_mode)) {
                        if (length > 0 && dest[length - 1] == '/') {
                                const char *slash = strrchr(source, '/');

                                snprintf(final_dest, sizeof(final_dest), "%s%s", dest, slash ? slash + 1 : source);
                        }
                } else if (S_ISDIR(st.st_mode)) {
                        if (length > 1 && dest[length - 1] == '/')
                                final_dest[length - 1] = '\0';
                } else {
                        return parse_error(err, line, "COPY source `%.200s` is not a regular file or a directory",
                                           source);
                }
                if (json_object_set_new(copy, "dest", json_string(final_dest)) < 0)
                        return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
        }
        return 0;
}
