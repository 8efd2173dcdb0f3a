#include "image_build.h"

#include <ctype.h>
#include <errno.h>
#include <linux/openat2.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "client/client.h"
#include "client/output_stream.h"
#include "common/cleanup.h"
#include "image_build_spec.h"
#include "image_debian.h"
#include "image_store.h"
#include "log.h"
#include "oci_layer.h"
#include "request.h"
#include "tree_copy.h"

#define CONTEXT_MAX IMAGE_BUILD_CONTEXT_MAX

struct build {
        struct moatd *daemon;
        struct api_hold *hold;
        pthread_t thread;
        int pipe[2]; /* the thread's NDJSON events -> loop */
        struct event *pipe_event;
        struct evbuffer *partial;
        char socket_path[PATH_MAX];
        char images_dir[PATH_MAX];
        char context_dir[PATH_MAX]; /* extracted upload, or "" */
        char *name;
        json_t *spec; /* {"from", "steps"} */
        bool failed;
        bool deferring;  /* in run_step: hold the error event until clean-up */
        json_t *deferred;
};

static unsigned builds_running;

/* ---- running a function on the loop from the build thread ---- */

struct loop_call {
        void (*fn)(void *arg);
        void *arg;
        pthread_mutex_t lock;
        pthread_cond_t done_cond;
        bool done;
};

static void on_loop_call(evutil_socket_t fd, short what, void *arg)
{
        struct loop_call *call = arg;

        call->fn(call->arg);
        pthread_mutex_lock(&call->lock);
        call->done = true;
        pthread_cond_signal(&call->done_cond);
        pthread_mutex_unlock(&call->lock);
}

static void loop_call(struct moatd *daemon, void (*fn)(void *), void *arg)
{
        struct loop_call call = {.fn = fn, .arg = arg};
        struct timeval now = {0, 0};

        pthread_mutex_init(&call.lock, NULL);
        pthread_cond_init(&call.done_cond, NULL);
        if (event_base_once(daemon->base, -1, EV_TIMEOUT, on_loop_call, &call, &now) == 0) {
                pthread_mutex_lock(&call.lock);
                while (!call.done)
                        pthread_cond_wait(&call.done_cond, &call.lock);
                pthread_mutex_unlock(&call.lock);
        }
        pthread_mutex_destroy(&call.lock);
        pthread_cond_destroy(&call.done_cond);
}

/* ---- events to the client ---- */

static void emit(struct build *build, json_t *event)
{
        char *text = event ? json_dumps(event, JSON_COMPACT) : NULL;

        json_decref(event);
        if (!text)
                return;
        /* One write per line: lines under PIPE_BUF never interleave. Longer
         * ones are whole anyway: only this thread writes. */
        {
                size_t length = strlen(text);
                char *line = malloc(length + 2);

                if (line) {
                        memcpy(line, text, length);
                        line[length] = '\n';
                        for (size_t done = 0; done < length + 1;) {
                                ssize_t n = write(build->pipe[1], line + done, length + 1 - done);
                                if (n < 0 && errno != EINTR)
                                        break;
                                if (n > 0)
                                        done += (size_t)n;
                        }
                        free(line);
                }
        }
        free(text);
}

static void emit_log(struct build *build, int step, const char *text, size_t length)
{
        /* Output is bytes; the stream is JSON text: invalid UTF-8 is
         * replaced, never dropped silently. */
        char *copy = malloc(length + 1);

        if (!copy)
                return;
        while (length > 0 && text[length - 1] == '\r') /* CRLF output, progress bars */
                length--;
        for (size_t i = 0; i < length; i++)
                copy[i] = (unsigned char)text[i] < 0x80 && (text[i] >= 0x20 || text[i] == '\t') ? text[i] : '?';
        copy[length] = '\0';
        emit(build, json_pack("{s:i, s:s}", "step", step, "log", copy));
        free(copy);
}

static int fail(struct build *build, int step, const struct moat_error *error)
{
        json_t *event = json_pack("{s:{s:s, s:s}, s:i}", "error", "code", error->code, "message", error->message,
                                  "step", step);

        build->failed = true;
        /* Inside a step the event waits until the step's sandbox is gone:
         * a client that stops reading at the error sees a clean store. */
        if (build->deferring) {
                if (!build->deferred)
                        build->deferred = event;
                else
                        json_decref(event);
                return -1;
        }
        emit(build, event);
        return -1;
}

static int fail_text(struct build *build, int step, const char *code, const char *message)
{
        struct moat_error error = {.kind = MOAT_ERROR_INVALID_ARGUMENT};

        snprintf(error.code, sizeof(error.code), "%s", code);
        snprintf(error.message, sizeof(error.message), "%s", message);
        return fail(build, step, &error);
}

/* ---- loop-side helpers ---- */

struct image_view {
        struct moatd *daemon;
        const char *ref;
        char id[32];
        char (*layers)[72];
        size_t layer_count;
        json_t *config;
        /* for add */
        const char *name;
        const char *parent;
        struct moat_error *err;
};

static void view_find(void *arg)
{
        struct image_view *view = arg;
        struct image_record *image = image_store_find(view->daemon, view->ref, NULL);

        if (!image)
                return;
        snprintf(view->id, sizeof(view->id), "%s", image->id);
        view->layers = calloc(image->layer_count + 1, sizeof(*view->layers));
        if (!view->layers)
                return;
        memcpy(view->layers, image->layers, image->layer_count * sizeof(*view->layers));
        view->layer_count = image->layer_count;
        view->config = json_deep_copy(image->config);
}

static void view_add(void *arg)
{
        struct image_view *view = arg;
        struct image_record *image = NULL;

        if (image_store_add(view->daemon, view->name, view->layers, view->layer_count, view->config, view->parent,
                            &image, &view->err) == 0)
                snprintf(view->id, sizeof(view->id), "%s", image->id);
}

static void view_clear(struct image_view *view)
{
        free(view->layers);
        json_decref(view->config);
        moat_error_free(view->err);
        memset(view, 0, sizeof(*view));
}

/* images/build-cache.json: {"<step key>": "<image id>"}. */
struct cache_op {
        struct moatd *daemon;
        const char *key;
        char image_id[32];
        bool store;
};

static void cache_run(void *arg)
{
        struct cache_op *op = arg;
        char path[PATH_MAX], temporary[PATH_MAX];
        json_t *cache;

        image_path(path, sizeof(path), "%s/build-cache.json", op->daemon->images_dir);
        cache = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(cache)) {
                json_decref(cache);
                cache = json_object();
        }
        if (!op->store) {
                const char *id = json_string_value(json_object_get(cache, op->key));

                /* A cached image that was pruned since is a miss. */
                if (id && image_store_find(op->daemon, id, NULL))
                        snprintf(op->image_id, sizeof(op->image_id), "%s", id);
                json_decref(cache);
                return;
        }
        json_object_set_new(cache, op->key, json_string(op->image_id));
        image_path(temporary, sizeof(temporary), "%s.tmp", path);
        if (json_dump_file(cache, temporary, JSON_COMPACT) == 0)
                rename(temporary, path);
        json_decref(cache);
}

/* ---- steps ---- */

static void key_next(char key[65], const char *previous, const json_t *step, const char *content_digest)
{
        EVP_MD_CTX *hash = EVP_MD_CTX_new();
        unsigned char digest[EVP_MAX_MD_SIZE];
        unsigned length = 0;
        char *text = json_dumps(step, JSON_COMPACT | JSON_SORT_KEYS);

        EVP_DigestInit_ex(hash, EVP_sha256(), NULL);
        EVP_DigestUpdate(hash, previous, strlen(previous));
        if (text)
                EVP_DigestUpdate(hash, text, strlen(text));
        if (content_digest)
                EVP_DigestUpdate(hash, content_digest, strlen(content_digest));
        EVP_DigestFinal_ex(hash, digest, &length);
        EVP_MD_CTX_free(hash);
        free(text);
        for (int i = 0; i < 32; i++)
                snprintf(key + i * 2, 3, "%02x", digest[i]);
}

struct step_output {
        struct build *build;
        int step;
        char line[4096];
        size_t length;
        struct moat_exit_status status;
        bool exited;
};

static int on_step_data(void *userdata, enum moat_output_stream stream, const unsigned char *data, size_t length)
{
        struct step_output *out = userdata;

        for (size_t i = 0; i < length; i++) {
                if (data[i] == '\n' || out->length == sizeof(out->line) - 1) {
                        emit_log(out->build, out->step, out->line, out->length);
                        out->length = 0;
                        if (data[i] == '\n')
                                continue;
                }
                out->line[out->length++] = (char)data[i];
        }
        return 0;
}

static void on_step_exit(void *userdata, const struct moat_exit_status *status)
{
        struct step_output *out = userdata;

        out->status = *status;
        out->exited = true;
}

/* Run argv in a build sandbox of `base`, then snapshot it. The new image id
 * goes to new_id. */
static int run_step(struct build *build, struct moat_client *client, int step, const char *base, json_t *argv,
                    const char *user, char new_id[32])
{
        struct moat_error *err = NULL;
        json_t *sandbox = NULL, *exec = NULL, *image = NULL, *body;
        _cleanup_free_ char *sandbox_path = NULL, *output_path = NULL, *snapshot_path = NULL;
        const char *sandbox_id, *exec_id;
        struct step_output out = {.build = build, .step = step};
        struct moat_output_handler handler = {.on_data = on_step_data, .on_exit = on_step_exit, .userdata = &out};
        int r = -1;

        build->deferring = true;
        /* The build's own sandbox: the image so far, internet egress (the
         * package mirror), generous limits, its own lifetime. */
        body = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i}", "image", base, "network", "internet", "memory", 4096,
                         "disk", 8192, "pids", 4096, "timeout", 3600);
        if (moat_client_request(client, "POST", "/v1/sandboxes", body, &sandbox, &err) < 0) {
                json_decref(body);
                build->deferring = false;
                fail(build, step, err);
                moat_error_free(err);
                return -1;
        }
        json_decref(body);
        sandbox_id = json_string_value(json_object_get(sandbox, "id"));
        if (!sandbox_id || asprintf(&sandbox_path, "/v1/sandboxes/%s", sandbox_id) < 0)
                goto out;
        body = json_pack("{s:O, s:s?}", "argv", argv, "user", user);
        if (asprintf(&output_path, "%s/execs", sandbox_path) < 0) {
                json_decref(body);
                goto out;
        }
        moat_client_request(client, "POST", output_path, body, &exec, &err);
        json_decref(body);
        free(output_path);
        output_path = NULL;
        exec_id = json_string_value(json_object_get(exec, "id"));
        if (!exec_id) {
                if (err)
                        fail(build, step, err);
                goto out;
        }
        if (asprintf(&output_path, "%s/execs/%s/output", sandbox_path, exec_id) < 0)
                goto out;
        if (moat_client_stream_output(client, output_path, &handler, &err) < 0) {
                fail(build, step, err);
                goto out;
        }
        if (out.length)
                emit_log(build, step, out.line, out.length);
        if (!out.exited || out.status.exit_code != 0) {
                char message[160];

                snprintf(message, sizeof(message), "the command exited with code %d",
                         out.exited ? out.status.exit_code : -1);
                fail_text(build, step, "build_step_failed", message);
                goto out;
        }
        if (asprintf(&snapshot_path, "%s/snapshot", sandbox_path) < 0)
                goto out;
        if (moat_client_request(client, "POST", snapshot_path, NULL, &image, &err) < 0) {
                fail(build, step, err);
                goto out;
        }
        snprintf(new_id, 32, "%s", json_string_value(json_object_get(image, "id")) ?: "");
        r = new_id[0] ? 0 : -1;
out:
        moat_error_free(err);
        err = NULL;
        if (sandbox_path)
                moat_client_request(client, "DELETE", sandbox_path, NULL, NULL, &err);
        moat_error_free(err);
        build->deferring = false;
        if (build->deferred) {
                emit(build, build->deferred);
                build->deferred = NULL;
        }
        json_decref(sandbox);
        json_decref(exec);
        json_decref(image);
        return r;
}

/* Open a path of the build context, which came from the client: resolved
 * beneath the context directory, no symlink followed. */
static int open_in_context(const struct build *build, const char *path, int flags)
{
        struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC | O_NOFOLLOW),
                               .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
        _cleanup_close_ int root = open(build->context_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        if (root < 0)
                return -1;
        while (*path == '/')
                path++;
        return (int)syscall(SYS_openat2, root, *path ? path : ".", &how, sizeof(how));
}

/* mkdir -p of dest's directories under the layer root; returns the fd of
 * the last one, and its final name in *leaf. */
static int make_parents(int root_fd, const char *dest, char *leaf, size_t leaf_size)
{
        char copy[PATH_MAX], *part, *save = NULL, *next;
        int fd = dup(root_fd);

        snprintf(copy, sizeof(copy), "%s", dest);
        part = strtok_r(copy, "/", &save);
        while (part && fd >= 0) {
                next = strtok_r(NULL, "/", &save);
                if (!next) {
                        snprintf(leaf, leaf_size, "%s", part);
                        return fd;
                }
                if (mkdirat(fd, part, 0755) < 0 && errno != EEXIST) {
                        close(fd);
                        return -1;
                }
                {
                        int child = openat(fd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

                        close(fd);
                        fd = child;
                }
                part = next;
        }
        leaf[0] = '\0';
        return fd;
}

/* A layer holding context path `src` at `dest`. */
static int copy_layer(struct build *build, int step, const char *src, const char *dest, char layer_id[72],
                      char digest_out[65])
{
        char staging[PATH_MAX], rootfs[PATH_MAX], leaf[NAME_MAX + 1];
        struct moat_error *err = NULL;
        struct tree_copy_result result;
        struct tree_copy_options options = {0};
        _cleanup_close_ int source = -1, root = -1, parent = -1, target = -1;
        struct stat st;

        if (!build->context_dir[0])
                return fail_text(build, step, "invalid_argument", "a copy step needs files: none were uploaded");
        source = open_in_context(build, src, O_RDONLY);
        if (source < 0 || fstat(source, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)))
                return fail_text(build, step, "invalid_argument", "copy: the source is not a file or directory of "
                                                                  "the uploaded context");
        if (dest[0] != '/' || strstr(dest, "..") || strlen(dest) > 1024)
                return fail_text(build, step, "invalid_argument", "copy: the destination must be an absolute path "
                                                                  "without ..");
        if (layer_staging_new(build->images_dir, staging, &err) < 0)
                return fail(build, step, err), moat_error_free(err), -1;
        image_path(rootfs, sizeof(rootfs), "%s/rootfs", staging);
        root = open(rootfs, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        parent = root >= 0 ? make_parents(root, dest, leaf, sizeof(leaf)) : -1;
        if (parent < 0)
                goto system_fail;
        if (S_ISDIR(st.st_mode) || !leaf[0]) {
                /* A directory's contents go into dest (made if missing). */
                if (leaf[0] && mkdirat(parent, leaf, 0755) < 0 && errno != EEXIST)
                        goto system_fail;
                target = leaf[0] ? openat(parent, leaf, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                                 : dup(parent);
                if (target < 0)
                        goto system_fail;
                if (!S_ISDIR(st.st_mode)) {
                        fail_text(build, step, "invalid_argument", "copy: a file needs a destination file name");
                        goto drop;
                }
                if (tree_copy(source, target, &options, &result, &err) < 0)
                        goto error_fail;
                /* tree_copy gave dest the context directory's mode; dest is
                 * a directory of the image, 0755 root. */
                fchmod(target, 0755);
        } else {
                /* One file, to dest. Only its own bytes make the digest,
                 * so a sibling in the context never invalidates the step. */
                _cleanup_close_ int context_parent = -1;
                const char *base = strrchr(src, '/') ? strrchr(src, '/') + 1 : src;
                char src_parent[PATH_MAX];

                snprintf(src_parent, sizeof(src_parent), "%.*s", (int)(base - src), src);
                context_parent = open_in_context(build, src_parent[0] ? src_parent : ".", O_RDONLY | O_DIRECTORY);
                if (context_parent < 0)
                        goto system_fail;
                if (tree_copy_file(context_parent, base, parent, leaf, &options, &result, &err) < 0)
                        goto error_fail;
        }
        snprintf(digest_out, 65, "%s", result.digest);
        {
                char id_text[200];
                EVP_MD_CTX *hash = EVP_MD_CTX_new();
                unsigned char digest[EVP_MAX_MD_SIZE];
                unsigned length = 0;

                /* The layer's address: what was copied and where. */
                snprintf(id_text, sizeof(id_text), "copy %s %.100s", result.digest, dest);
                EVP_DigestInit_ex(hash, EVP_sha256(), NULL);
                EVP_DigestUpdate(hash, id_text, strlen(id_text));
                EVP_DigestFinal_ex(hash, digest, &length);
                EVP_MD_CTX_free(hash);
                for (int i = 0; i < 32; i++)
                        snprintf(layer_id + i * 2, 3, "%02x", digest[i]);
        }
        if (layer_commit(build->images_dir, staging, layer_id, result.bytes, "copy", &err) < 0)
                return fail(build, step, err), moat_error_free(err), -1;
        return 0;
system_fail:
        moat_error_system(&err, errno, "copy into the layer");
error_fail:
        fail(build, step, err);
        moat_error_free(err);
drop:
        image_store_remove_tree(staging, NULL);
        return -1;
}

/* The config after an env/workdir/user step; NULL if the step is not one. */
static json_t *config_step(const json_t *config, const char *kind, const json_t *value)
{
        json_t *next = json_deep_copy(config);

        if (!next)
                return NULL;
        if (strcmp(kind, "workdir") == 0 || strcmp(kind, "user") == 0) {
                json_object_set(next, kind, (json_t *)value);
        } else if (strcmp(kind, "env") == 0) {
                json_t *env = json_object_get(next, "env"), *merged = json_array(), *entry;
                const char *key;
                size_t index;

                /* Later values of a key replace earlier ones. */
                json_array_foreach(env, index, entry) {
                        const char *text = json_string_value(entry), *equals = text ? strchr(text, '=') : NULL;

                        if (equals && !json_object_getn(value, text, (size_t)(equals - text)))
                                json_array_append(merged, entry);
                }
                json_object_foreach((json_t *)value, key, entry) {
                        char *pair = NULL;

                        if (asprintf(&pair, "%s=%s", key, json_string_value(entry)) >= 0)
                                json_array_append_new(merged, json_string(pair));
                        free(pair);
                }
                json_object_set_new(next, "env", merged);
        }
        return next;
}

static void *build_main(void *arg)
{
        struct build *build = arg;
        struct moat_client *client = NULL;
        struct moat_error *err = NULL;
        struct image_view view = {.daemon = build->daemon};
        const char *from = json_string_value(json_object_get(build->spec, "from"));
        json_t *steps = json_object_get(build->spec, "steps"), *step;
        char key[65], current[32];
        size_t index;

        if (moat_client_new(build->socket_path, &client, &err) < 0) {
                fail(build, -1, err);
                goto out;
        }
        view.ref = from;
        loop_call(build->daemon, view_find, &view);
        if (!view.id[0]) {
                char release[32];
                bool slim;

                /* A Debian base is pulled (built once per host) on first use. */
                if (!image_debian_ref(from, release, &slim)) {
                        fail_text(build, -1, "image_not_found", "the `from` image does not exist");
                        goto out;
                }
                emit(build, json_pack("{s:s}", "progress", "pulling the base image"));
                {
                        json_t *body = json_pack("{s:s}", "ref", from), *result = NULL;

                        /* The pull's NDJSON comes back as one body here. */
                        moat_client_request(client, "POST", "/v1/images/pull", body, &result, &err);
                        json_decref(body);
                        json_decref(result);
                        moat_error_free(err);
                        err = NULL;
                }
                view_clear(&view);
                view.daemon = build->daemon;
                view.ref = from;
                loop_call(build->daemon, view_find, &view);
                if (!view.id[0]) {
                        fail_text(build, -1, "image_not_found", "the `from` image could not be pulled");
                        goto out;
                }
        }
        snprintf(current, sizeof(current), "%s", view.id);
        key_next(key, "from", json_object_get(build->spec, "from"), view.id);
        view_clear(&view);

        json_array_foreach(steps, index, step) {
                const char *why, *kind = image_build_step_kind(step, &why);
                json_t *value = json_object_get(step, kind);
                struct cache_op cache = {.daemon = build->daemon, .key = key};
                char content[65] = "", copy_layer_id[72] = "", next[32] = "";
                int i = (int)index;

                if (strcmp(kind, "copy") == 0 &&
                    copy_layer(build, i, json_string_value(json_object_get(value, "src")),
                               json_string_value(json_object_get(value, "dest")), copy_layer_id, content) < 0)
                        goto out;
                key_next(key, key, step, content[0] ? content : NULL);
                loop_call(build->daemon, cache_run, &cache);
                if (cache.image_id[0]) {
                        snprintf(current, sizeof(current), "%s", cache.image_id);
                        emit(build, json_pack("{s:i, s:s, s:b, s:s}", "step", i, "kind", kind, "cached", 1, "image",
                                              current));
                        continue;
                }
                emit(build, json_pack("{s:i, s:s, s:b}", "step", i, "kind", kind, "cached", 0));
                view = (struct image_view){.daemon = build->daemon, .ref = current};
                loop_call(build->daemon, view_find, &view);
                if (!view.id[0]) {
                        fail_text(build, i, "image_not_found", "the image of the previous step disappeared");
                        goto out;
                }
                if (strcmp(kind, "run") == 0 || strcmp(kind, "apt_install") == 0) {
                        json_t *argv;
                        const char *user = json_string_value(json_object_get(view.config, "user"));

                        if (strcmp(kind, "apt_install") == 0) {
                                char *command = NULL, *packages = NULL;
                                size_t size = 0;
                                FILE *out = open_memstream(&packages, &size);
                                const json_t *package;
                                size_t p;

                                json_array_foreach(value, p, package)
                                        fprintf(out, " %s", json_string_value(package));
                                fclose(out);
                                if (asprintf(&command, "export DEBIAN_FRONTEND=noninteractive; apt-get update -q && "
                                                       "apt-get install -y -q --no-install-recommends%s && "
                                                       "apt-get clean && rm -rf /var/lib/apt/lists/*",
                                             packages) < 0)
                                        command = NULL;
                                free(packages);
                                argv = json_pack("[s,s,s]", "sh", "-c", command ? command : "false");
                                free(command);
                                user = "root"; /* installing packages needs root, whatever the image's user */
                        } else if (json_is_string(value)) {
                                argv = json_pack("[s,s,O]", "sh", "-c", value);
                        } else {
                                /* A list of commands: run in order, stop at the first failure. */
                                char *joined = NULL;
                                size_t size = 0;
                                FILE *out = open_memstream(&joined, &size);
                                const json_t *command;
                                size_t c;

                                fprintf(out, "set -e");
                                json_array_foreach(value, c, command)
                                        fprintf(out, "\n%s", json_string_value(command));
                                fclose(out);
                                argv = json_pack("[s,s,s]", "sh", "-c", joined ? joined : "false");
                                free(joined);
                        }
                        if (run_step(build, client, i, current, argv, user, next) < 0) {
                                json_decref(argv);
                                goto out;
                        }
                        json_decref(argv);
                } else {
                        if (strcmp(kind, "copy") == 0) {
                                char (*grown)[72] = realloc(view.layers, (view.layer_count + 1) * sizeof(*grown));

                                if (!grown || view.layer_count >= IMAGE_LAYERS_MAX) {
                                        fail_text(build, i, "limit_exceeded", "too many layers");
                                        goto out;
                                }
                                view.layers = grown;
                                snprintf(view.layers[view.layer_count++], 72, "%s", copy_layer_id);
                        } else {
                                json_t *config = config_step(view.config, kind, value);

                                json_decref(view.config);
                                view.config = config;
                        }
                        view.parent = current;
                        view.name = NULL;
                        loop_call(build->daemon, view_add, &view);
                        if (view.err) {
                                fail(build, i, view.err);
                                goto out;
                        }
                        snprintf(next, sizeof(next), "%s", view.id);
                }
                view_clear(&view);
                snprintf(current, sizeof(current), "%s", next);
                snprintf(cache.image_id, sizeof(cache.image_id), "%s", current);
                cache.store = true;
                loop_call(build->daemon, cache_run, &cache);
                emit(build, json_pack("{s:i, s:s, s:s}", "step", i, "kind", kind, "image", current));
        }
        /* The name goes to the last step's image. */
        view = (struct image_view){.daemon = build->daemon, .ref = current};
        loop_call(build->daemon, view_find, &view);
        view.name = build->name;
        view.parent = NULL;
        if (view.id[0])
                loop_call(build->daemon, view_add, &view);
        if (view.err)
                fail(build, -1, view.err);
out:
        view_clear(&view);
        moat_error_free(err);
        moat_client_free(client);
        /* The end of the event stream: the loop sees EOF. */
        close(build->pipe[1]);
        build->pipe[1] = -1;
        return NULL;
}

/* ---- the loop side: the request, the event stream ---- */

static void build_free(struct build *build)
{
        if (build->pipe_event)
                event_free(build->pipe_event);
        if (build->partial)
                evbuffer_free(build->partial);
        for (int i = 0; i < 2; i++)
                if (build->pipe[i] >= 0)
                        close(build->pipe[i]);
        if (build->context_dir[0]) {
                char parent[PATH_MAX];

                snprintf(parent, sizeof(parent), "%s", build->context_dir);
                *strrchr(parent, '/') = '\0';
                image_store_remove_tree(parent, NULL);
        }
        json_decref(build->spec);
        free(build->name);
        free(build);
}

static void forward_lines(struct build *build)
{
        for (;;) {
                size_t length;
                char *line = evbuffer_readln(build->partial, &length, EVBUFFER_EOL_LF);
                struct evbuffer *out;

                if (!line)
                        break;
                if (build->hold && (out = evbuffer_new())) {
                        evbuffer_add(out, line, length);
                        evbuffer_add(out, "\n", 1);
                        api_hold_stream_chunk(build->hold, out, NULL, NULL);
                        evbuffer_free(out);
                }
                free(line);
        }
}

static void on_build_events(evutil_socket_t fd, short what, void *arg)
{
        struct build *build = arg;
        char chunk[16384];
        ssize_t n;

        while ((n = read(fd, chunk, sizeof(chunk))) > 0)
                evbuffer_add(build->partial, chunk, (size_t)n);
        forward_lines(build);
        if (n == 0) {
                /* The thread closed its end: it is done. */
                struct moatd *daemon = build->daemon;

                pthread_join(build->thread, NULL);
                if (build->hold) {
                        if (!build->failed) {
                                struct image_record *image = image_store_find(daemon, build->name, NULL);
                                struct evbuffer *out = evbuffer_new();
                                json_t *event = image ? json_pack("{s:o}", "image", image_to_json(daemon, image))
                                                      : NULL;
                                char *text = event ? json_dumps(event, JSON_COMPACT) : NULL;

                                if (out && text) {
                                        evbuffer_add_printf(out, "%s\n", text);
                                        api_hold_stream_chunk(build->hold, out, NULL, NULL);
                                }
                                if (out)
                                        evbuffer_free(out);
                                free(text);
                                json_decref(event);
                        }
                        api_hold_stream_end(build->hold);
                }
                log_info("image build %s %s", build->name, build->failed ? "failed" : "done");
                builds_running--;
                daemon->image_jobs--;
                build_free(build);
                moatd_maybe_exit(daemon);
        }
}

static void on_build_client_gone(void *arg)
{
        struct build *build = arg;

        build->hold = NULL; /* the build goes on: its steps are cached */
}

/* The uploaded context (a base64 tar) extracted safely into a directory of
 * the store (removed with the build). */
static int extract_context(struct build *build, const char *base64, struct moat_error **err)
{
        char staging[PATH_MAX], tar_path[PATH_MAX];
        size_t length = strlen(base64), decoded_length;
        unsigned char *decoded;
        EVP_ENCODE_CTX *ctx;
        int n = 0, final = 0, fd;

        decoded = malloc(length / 4 * 3 + 4);
        ctx = EVP_ENCODE_CTX_new();
        if (!decoded || !ctx) {
                free(decoded);
                EVP_ENCODE_CTX_free(ctx);
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "decode context");
        }
        EVP_DecodeInit(ctx);
        if (EVP_DecodeUpdate(ctx, decoded, &n, (const unsigned char *)base64, (int)length) < 0 ||
            EVP_DecodeFinal(ctx, decoded + n, &final) < 0) {
                free(decoded);
                EVP_ENCODE_CTX_free(ctx);
                return moat_error_invalid(err, "`context` is not base64");
        }
        EVP_ENCODE_CTX_free(ctx);
        decoded_length = (size_t)(n + final);
        if (layer_staging_new(build->images_dir, staging, err) < 0) {
                free(decoded);
                return -1;
        }
        image_path(tar_path, sizeof(tar_path), "%s/context.tar", staging);
        image_path(build->context_dir, sizeof(build->context_dir), "%s/rootfs", staging);
        fd = open(tar_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, decoded, decoded_length) != (ssize_t)decoded_length) {
                if (fd >= 0)
                        close(fd);
                free(decoded);
                return moat_error_system(err, errno, "write the build context");
        }
        close(fd);
        free(decoded);
        if (oci_archive_extract(tar_path, build->context_dir, 1024ull * 1024 * 1024, err) < 0)
                return moat_error_wrap(err, "the build context");
        unlink(tar_path);
        return 0;
}

void api_images_build(struct api_call *call)
{
        struct moat_error *err = NULL;
        size_t length;
        const char *body = api_body(call->request, &length);
        struct build *build = calloc(1, sizeof(*build));
        json_t *root = NULL, *steps, *name, *from, *context;

        if (!build)
                return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        build->pipe[0] = build->pipe[1] = -1;
        build->daemon = call->daemon;
        snprintf(build->images_dir, sizeof(build->images_dir), "%s", call->daemon->images_dir);
        snprintf(build->socket_path, sizeof(build->socket_path), "%s", call->daemon->options.socket_path);
        if (image_build_spec_parse(body, length, &root, &err) < 0)
                goto fail;
        name = json_object_get(root, "name");
        from = json_object_get(root, "from");
        steps = json_object_get(root, "steps");
        context = json_object_get(root, "context");
        if (builds_running >= IMAGE_BUILDS_MAX) {
                moat_error_set(&err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL, "%d builds are running; retry later",
                               IMAGE_BUILDS_MAX);
                goto fail;
        }
        if (json_is_string(context) && extract_context(build, json_string_value(context), &err) < 0)
                goto fail;
        build->name = strdup(json_string_value(name));
        build->spec = json_pack("{s:O, s:O}", "from", from, "steps", steps);
        if (!build->name || !build->spec || pipe2(build->pipe, O_CLOEXEC) < 0 ||
            fcntl(build->pipe[0], F_SETFL, O_NONBLOCK) < 0 || !(build->partial = evbuffer_new()) ||
            !(build->pipe_event = event_new(call->daemon->base, build->pipe[0], EV_READ | EV_PERSIST,
                                            on_build_events, build)) ||
            event_add(build->pipe_event, NULL) < 0) {
                moat_error_system(&err, errno ? errno : ENOMEM, "start the build");
                goto fail;
        }
        build->hold = api_hold_new(call->daemon, call->request, on_build_client_gone, build);
        if (!build->hold) {
                moat_error_set(&err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
                goto fail;
        }
        api_hold_stream_start(build->hold, "application/x-ndjson");
        if (pthread_create(&build->thread, NULL, build_main, build) != 0) {
                struct moat_error error = {.kind = MOAT_ERROR_INTERNAL, .code = "internal"};

                snprintf(error.message, sizeof(error.message), "cannot start a build thread");
                api_hold_stream_end(build->hold);
                build->hold = NULL;
                goto fail_quiet;
        }
        builds_running++;
        call->daemon->image_jobs++;
        json_decref(root);
        return;
fail:
        api_reply_error(call->request, err);
        moat_error_free(err);
fail_quiet:
        json_decref(root);
        build_free(build);
}
