/* /v1/images: list, inspect, import (on a worker), delete, prune; and
 * POST /v1/sandboxes/{id}/snapshot, which turns a sandbox's writable layer
 * into an image. Blocking work runs on workers; the records change only here,
 * on the loop. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <limits.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api.h"
#include "cell/cell.h"
#include "encoding.h"
#include "image_debian.h"
#include "image_oci.h"
#include "image_store.h"
#include "oci_image.h"
#include "registry.h"
#include "log.h"
#include "request.h"
#include "sandbox.h"
#include "workers.h"

void api_images_list(struct api_call *call)
{
        struct moat_error *err = NULL;
        json_t *list = image_store_list(call->daemon, &err);

        if (!list) {
                api_reply_error(call->request, err);
                moat_error_free(err);
                return;
        }
        api_reply_json(call->request, 200, list);
}

/* Image references hold '/' and ':' ("127.0.0.1:5000/team/app:v2"), which a
 * route segment cannot: GET/DELETE /v1/images/{ref} take it %-encoded, and
 * /v1/images?ref= too. */
static char *ref_of(struct api_call *call)
{
        char *ref = api_param_decode(call, 0);

        if (!ref || !ref[0] || strlen(ref) > REQUEST_IMAGE_NAME_MAX) {
                free(ref);
                api_reply_new_error(call->request, MOAT_ERROR_INVALID_ARGUMENT, NULL, "bad image reference");
                return NULL;
        }
        return ref;
}

void api_images_get(struct api_call *call)
{
        struct moat_error *err = NULL;
        char *ref = ref_of(call);
        struct image_record *image;

        if (!ref)
                return;
        image = image_store_find(call->daemon, ref, &err);
        free(ref);
        if (!image) {
                api_reply_error(call->request, err);
                moat_error_free(err);
                return;
        }
        api_reply_json(call->request, 200, image_to_json(call->daemon, image));
}

void api_images_delete(struct api_call *call)
{
        struct moat_error *err = NULL;
        char *ref = ref_of(call);

        if (!ref)
                return;
        if (image_store_delete(call->daemon, ref, &err) < 0) {
                api_reply_error(call->request, err);
                moat_error_free(err);
        } else {
                api_reply_json(call->request, 200, json_pack("{s:s,s:b}", "name", ref, "deleted", 1));
        }
        free(ref);
}

void api_images_prune(struct api_call *call)
{
        struct moat_error *err = NULL;
        json_t *result = image_store_prune(call->daemon, &err);

        if (!result) {
                api_reply_error(call->request, err);
                moat_error_free(err);
                return;
        }
        api_reply_json(call->request, 200, result);
}

/* ---- jobs that make a layer on a worker, then an image on the loop ---- */

struct layer_job {
        struct moatd *daemon;
        struct api_hold *hold;
        char images_dir[4096];
        char *path, *name;
        /* snapshot */
        int upper_fd;
        uid_t id_base;
        char sandbox_id[64];
        /* results */
        char (*layers)[72]; /* the base image's, then the new one */
        size_t layer_count;
        json_t *config;
        char parent[32];
        uint64_t started_us;
        struct moat_error *err;
};

static uint64_t monotonic_us(void)
{
        struct timespec now;

        clock_gettime(CLOCK_MONOTONIC, &now);
        return (uint64_t)now.tv_sec * 1000000u + (uint64_t)now.tv_nsec / 1000u;
}

static void layer_job_free(struct layer_job *job)
{
        if (job->upper_fd >= 0)
                close(job->upper_fd);
        free(job->layers);
        json_decref(job->config);
        moat_error_free(job->err);
        free(job->path);
        free(job->name);
        free(job);
}

static void on_job_client_gone(void *arg)
{
        struct layer_job *job = arg;

        job->hold = NULL; /* the work finishes anyway */
}

static void import_run(void *arg)
{
        struct layer_job *job = arg;
        uint64_t size;

        layer_import_directory(job->images_dir, job->path, job->layers[job->layer_count - 1], &size, &job->err);
}

/* An OCI layout or docker-save directory, or a tar of one. */
static void import_oci_run(void *arg)
{
        struct layer_job *job = arg;
        char (*layers)[72] = calloc(OCI_IMAGE_MAX_LAYERS, sizeof(*layers));
        json_t *config = NULL;
        size_t count = 0;

        if (!layers) {
                moat_error_set(&job->err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate layers");
                return;
        }
        if (image_oci_import(job->images_dir, job->path, -1, layers, &count, &config, &job->err) == 0) {
                free(job->layers);
                job->layers = layers;
                job->layer_count = count;
                json_decref(job->config);
                job->config = config;
                return;
        }
        free(layers);
}

static void snapshot_run(void *arg)
{
        struct layer_job *job = arg;
        uint64_t size;

        layer_import_upper(job->images_dir, job->upper_fd, job->id_base, 65536, job->layers[job->layer_count - 1],
                           &size, &job->err);
        close(job->upper_fd);
        job->upper_fd = -1;
}

static void layer_job_done(void *arg)
{
        struct layer_job *job = arg;
        struct moatd *daemon = job->daemon;
        struct image_record *image = NULL;

        daemon->image_jobs--;
        if (!job->err)
                image_store_add(daemon, job->name, job->layers, job->layer_count, job->config,
                                job->parent[0] ? job->parent : NULL, &image, &job->err);
        if (job->err) {
                log_warn("image %s: %s", job->name ? job->name : job->sandbox_id, job->err->message);
                if (job->hold)
                        api_hold_reply_error(job->hold, job->err);
        } else {
                json_t *body = image_to_json(daemon, image);

                if (job->sandbox_id[0])
                        json_object_set_new(body, "snapshot_ms", json_real((monotonic_us() - job->started_us) / 1e3));
                log_info("image %s (%s) made from %s", image->id, job->name ? job->name : "no name",
                         job->sandbox_id[0] ? job->sandbox_id : job->path);
                if (job->hold)
                        api_hold_reply_json(job->hold, 201, body);
                else
                        json_decref(body);
        }
        layer_job_free(job);
        moatd_maybe_exit(daemon);
}

static struct layer_job *layer_job_new(struct api_call *call, size_t base_layers)
{
        struct layer_job *job = calloc(1, sizeof(*job));

        if (!job)
                return NULL;
        job->daemon = call->daemon;
        job->upper_fd = -1;
        job->started_us = monotonic_us();
        snprintf(job->images_dir, sizeof(job->images_dir), "%s", call->daemon->images_dir);
        job->layers = calloc(base_layers + 1, sizeof(*job->layers));
        job->layer_count = base_layers + 1;
        if (!job->layers) {
                free(job);
                return NULL;
        }
        return job;
}

static void layer_job_submit(struct api_call *call, struct layer_job *job, void (*run)(void *))
{
        struct moat_error *err = NULL;

        job->hold = api_hold_new(call->daemon, call->request, on_job_client_gone, job);
        if (!job->hold) {
                api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
                layer_job_free(job);
                return;
        }
        if (worker_pool_submit(call->daemon->workers, run, layer_job_done, job, &err) < 0) {
                api_hold_reply_error(job->hold, err);
                moat_error_free(err);
                layer_job_free(job);
                return;
        }
        call->daemon->image_jobs++;
}

void api_images_import(struct api_call *call)
{
        struct moat_error *err = NULL;
        size_t length;
        const char *body = api_body(call->request, &length);
        struct layer_job *job = layer_job_new(call, 0);
        struct stat st;

        if (!job)
                return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        if (request_parse_image_import(body, length, &job->path, &job->name, &err) < 0)
                goto fail;
        if (strcmp(job->name, IMAGE_HOST_NAME) == 0 || strncmp(job->name, "img-", 4) == 0) {
                moat_error_set(&err, MOAT_ERROR_CONFLICT, 0, NULL, "image name `%s` is reserved", job->name);
                goto fail;
        }
        if (image_store_find(call->daemon, job->name, NULL)) {
                moat_error_set(&err, MOAT_ERROR_CONFLICT, 0, NULL, "image `%s` exists", job->name);
                goto fail;
        }
        if (stat(job->path, &st) < 0 || !(S_ISDIR(st.st_mode) || S_ISREG(st.st_mode))) {
                moat_error_invalid(&err, "`%s` is neither a directory nor a file", job->path);
                goto fail;
        }
        job->config = json_object();
        layer_job_submit(call, job, image_oci_looks_like(job->path) ? import_oci_run : import_run);
        return;
fail:
        api_reply_error(call->request, err);
        moat_error_free(err);
        layer_job_free(job);
}

/* POST /v1/sandboxes/{id}/snapshot {"name": optional}: the sandbox's
 * filesystem as it is now (its image plus its changes, deletions included)
 * becomes a new image. The sandbox keeps running. */
void api_sandboxes_snapshot(struct api_call *call)
{
        struct moat_error *err = NULL;
        size_t length;
        const char *body = api_body(call->request, &length);
        struct sandbox *s = sandbox_find(call->daemon, call->params[0]);
        struct image_record *image;
        struct layer_job *job;
        json_t *root = NULL, *name;

        if (!s)
                return api_reply_new_error(call->request, MOAT_ERROR_NOT_FOUND, NULL, "no sandbox `%.64s`",
                                           call->params[0]);
        if (length) {
                root = json_loadb(body, length, JSON_REJECT_DUPLICATES, NULL);
                name = json_object_get(root, "name");
                if (!json_is_object(root) || json_object_size(root) > (name ? 1u : 0u) ||
                    (name && !json_is_null(name) &&
                     (!json_is_string(name) || !request_image_name_valid(json_string_value(name))))) {
                        json_decref(root);
                        return api_reply_new_error(call->request, MOAT_ERROR_INVALID_ARGUMENT, NULL,
                                                   "body: {\"name\": optional image name}");
                }
        }
        if (s->state != SANDBOX_RUNNING || !s->cell) {
                json_decref(root);
                return api_reply_new_error(call->request, MOAT_ERROR_CONFLICT, "sandbox_not_running",
                                           "sandbox %s is not running", s->id);
        }
        image = image_store_find(call->daemon, s->image_id, &err);
        if (!image || image->layer_count >= IMAGE_LAYERS_MAX) {
                json_decref(root);
                if (!err)
                        moat_error_set(&err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL, "image %s has %d layers already",
                                       s->image_id, IMAGE_LAYERS_MAX);
                api_reply_error(call->request, err);
                moat_error_free(err);
                return;
        }
        job = layer_job_new(call, image->layer_count);
        if (!job) {
                json_decref(root);
                return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        }
        memcpy(job->layers, image->layers, image->layer_count * sizeof(*job->layers));
        job->config = json_incref(image->config);
        snprintf(job->parent, sizeof(job->parent), "%s", image->id);
        snprintf(job->sandbox_id, sizeof(job->sandbox_id), "%s", s->id);
        job->id_base = s->host_id_base;
        name = json_object_get(root, "name");
        if (json_is_string(name) && !(job->name = strdup(json_string_value(name)))) {
                json_decref(root);
                layer_job_free(job);
                return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        }
        json_decref(root);
        sandbox_touch(s);
        job->upper_fd = moat_cell_upper_open(s->cell, &err);
        if (job->upper_fd < 0) {
                api_reply_error(call->request, err);
                moat_error_free(err);
                layer_job_free(job);
                return;
        }
        layer_job_submit(call, job, snapshot_run);
}

/* ---- POST /v1/images/pull: NDJSON progress, then the image ---- */

struct pull_job {
        struct moatd *daemon;
        struct api_hold *hold;
        int pipe[2]; /* worker's progress lines -> loop */
        struct event *progress_event;
        struct evbuffer *partial; /* a progress line not finished yet */
        char images_dir[4096];
        char *ref, *name;
        char release[32];
        bool slim;
        char *username, *password;
        char (*layers)[72];
        size_t layer_count;
        json_t *config;
        struct moat_error *err;
};

static void pull_send(struct pull_job *job, json_t *event)
{
        struct evbuffer *buffer;
        char *text;

        if (!event)
                return;
        text = json_dumps(event, JSON_COMPACT);
        json_decref(event);
        if (!text || !job->hold || !(buffer = evbuffer_new())) {
                free(text);
                return;
        }
        evbuffer_add_printf(buffer, "%s\n", text);
        free(text);
        api_hold_stream_chunk(job->hold, buffer, NULL, NULL);
        evbuffer_free(buffer);
}

/* Forward whole lines the worker wrote as {"progress": "..."}. */
static void pull_drain(struct pull_job *job)
{
        char chunk[4096];
        ssize_t n;

        while ((n = read(job->pipe[0], chunk, sizeof(chunk))) > 0)
                evbuffer_add(job->partial, chunk, (size_t)n);
        for (;;) {
                size_t length;
                char *line = evbuffer_readln(job->partial, &length, EVBUFFER_EOL_LF);

                if (!line)
                        break;
                if (length > 0 && encoding_utf8_valid((const uint8_t *)line, length))
                        pull_send(job, json_pack("{s:s}", "progress", line));
                free(line);
        }
        /* A runaway line without a newline is cut, not buffered forever. */
        if (evbuffer_get_length(job->partial) > 64 * 1024)
                evbuffer_drain(job->partial, evbuffer_get_length(job->partial));
}

static void on_pull_progress(evutil_socket_t fd, short what, void *arg)
{
        pull_drain(arg);
}

static void pull_progress(void *ctx, const char *what, const char *digest, uint64_t done, uint64_t total)
{
        struct pull_job *job = ctx;
        char line[256];
        int n;

        /* A blob reports often while it downloads: every 8 MiB and at the end. */
        if (strcmp(what, "blob") == 0 && done != total && done % (8u << 20) > (256u << 10))
                return;
        n = snprintf(line, sizeof(line), "%s %s %llu/%llu\n", what, digest ? digest : "",
                     (unsigned long long)done, (unsigned long long)total);
        if (n > 0)
                (void)!write(job->pipe[1], line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/* Registries on this host's loopback (tests, a local mirror) speak plain
 * HTTP; every other registry must be HTTPS with a verified certificate. */
static bool loopback_registry(const char *ref)
{
        return strncmp(ref, "127.", 4) == 0 || strncmp(ref, "localhost:", 10) == 0 ||
               strncmp(ref, "localhost/", 10) == 0 || strncmp(ref, "[::1]", 5) == 0;
}

static void pull_run(void *arg)
{
        struct pull_job *job = arg;
        char rootfs[PATH_MAX], blobs[PATH_MAX], layout[PATH_MAX];
        struct registry_options options = {0};
        struct registry_progress progress = {.on_event = pull_progress, .ctx = job};
        uint64_t size;

        job->layers = calloc(OCI_IMAGE_MAX_LAYERS, sizeof(*job->layers));
        if (!job->layers) {
                moat_error_set(&job->err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate layers");
                return;
        }
        if (job->release[0]) {
                if (image_debian_build(IMAGE_DEBIAN_CACHE_DEFAULT, job->release, job->slim, job->pipe[1], rootfs,
                                       &job->err) < 0)
                        return;
                (void)!write(job->pipe[1], "importing the tree as a layer\n", 30);
                if (layer_import_directory(job->images_dir, rootfs, job->layers[0], &size, &job->err) < 0)
                        return;
                job->layer_count = 1;
                job->config = json_pack("{s:[s], s:s, s:[s]}", "env",
                                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                        "workdir", "/", "cmd", "bash");
                return;
        }
        /* A registry image: blobs into the store's blob cache (verified,
         * resumable), a layout of hard links to them in staging, then the
         * same import as a local OCI layout. */
        image_path(blobs, sizeof(blobs), "%s/blobs", job->images_dir);
        if (mkdir(blobs, 0700) < 0 && errno != EEXIST) {
                moat_error_system(&job->err, errno, "mkdir `%s`", blobs);
                return;
        }
        if (layer_staging_new(job->images_dir, layout, &job->err) < 0)
                return;
        options.insecure_http = loopback_registry(job->ref);
        options.username = job->username;
        options.password = job->password;
        options.blob_cache_dir = blobs;
        strncat(layout, "/rootfs", sizeof(layout) - strlen(layout) - 1);
        if (registry_pull(job->ref, &options, &progress, layout, &job->err) == 0)
                image_oci_import(job->images_dir, layout, job->pipe[1], job->layers, &job->layer_count,
                                 &job->config, &job->err);
        *strrchr(layout, '/') = '\0';
        image_store_remove_tree(layout, NULL);
}

static void pull_job_free(struct pull_job *job)
{
        if (job->progress_event)
                event_free(job->progress_event);
        if (job->partial)
                evbuffer_free(job->partial);
        for (int i = 0; i < 2; i++)
                if (job->pipe[i] >= 0)
                        close(job->pipe[i]);
        json_decref(job->config);
        moat_error_free(job->err);
        free(job->layers);
        free(job->ref);
        free(job->name);
        free(job->username);
        if (job->password) {
                explicit_bzero(job->password, strlen(job->password));
                free(job->password);
        }
        free(job);
}

static void pull_done(void *arg)
{
        struct pull_job *job = arg;
        struct moatd *daemon = job->daemon;
        struct image_record *image = NULL;

        daemon->image_jobs--;
        close(job->pipe[1]);
        job->pipe[1] = -1;
        pull_drain(job);
        if (!job->err)
                image_store_add(daemon, job->name, job->layers, job->layer_count, job->config, NULL, &image,
                                &job->err);
        if (job->err) {
                log_warn("pull %s: %s", job->ref, job->err->message);
                pull_send(job, json_pack("{s:{s:s,s:s}}", "error", "code", job->err->code, "message",
                                         job->err->message));
        } else {
                log_info("image %s pulled as %s (%s)", job->ref, job->name, image->id);
                pull_send(job, json_pack("{s:o}", "image", image_to_json(daemon, image)));
        }
        if (job->hold)
                api_hold_stream_end(job->hold);
        pull_job_free(job);
        moatd_maybe_exit(daemon);
}

static void on_pull_client_gone(void *arg)
{
        struct pull_job *job = arg;

        job->hold = NULL; /* the pull finishes anyway, and is cached */
}

void api_images_pull(struct api_call *call)
{
        static const char *const fields[] = {"ref", "name", "username", "password", NULL};
        struct moat_error *err = NULL;
        size_t length;
        const char *body = api_body(call->request, &length);
        struct pull_job *job = calloc(1, sizeof(*job));
        json_t *root = NULL, *ref, *name;
        const char *key;
        json_t *value;

        if (!job)
                return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        job->pipe[0] = job->pipe[1] = -1;
        job->daemon = call->daemon;
        snprintf(job->images_dir, sizeof(job->images_dir), "%s", call->daemon->images_dir);
        root = json_loadb(body, length, JSON_REJECT_DUPLICATES, NULL);
        ref = json_object_get(root, "ref");
        name = json_object_get(root, "name");
        if (!json_is_object(root) || !json_is_string(ref) || !request_image_name_valid(json_string_value(ref)) ||
            (name && !json_is_null(name) &&
             (!json_is_string(name) || !request_image_name_valid(json_string_value(name))))) {
                moat_error_invalid(&err, "body: {\"ref\": \"debian:bookworm-slim\", \"name\": optional}");
                goto fail;
        }
        json_object_foreach(root, key, value) {
                bool known = false;

                for (const char *const *f = fields; *f; f++)
                        known |= strcmp(*f, key) == 0;
                if (!known) {
                        moat_error_invalid(&err, "unknown field `%.64s`", key);
                        goto fail;
                }
        }
        job->ref = strdup(json_string_value(ref));
        job->name = strdup(json_is_string(name) ? json_string_value(name) : json_string_value(ref));
        if (!job->ref || !job->name) {
                moat_error_set(&err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
                goto fail;
        }
        if (strcmp(job->name, IMAGE_HOST_NAME) == 0 || strncmp(job->name, "img-", 4) == 0) {
                moat_error_set(&err, MOAT_ERROR_CONFLICT, 0, NULL, "image name `%s` is reserved", job->name);
                goto fail;
        }
        if (!image_debian_ref(job->ref, job->release, &job->slim)) {
                struct registry_reference parsed;
                json_t *username = json_object_get(root, "username"), *password = json_object_get(root, "password");

                if (registry_reference_parse(job->ref, &parsed, &err) < 0)
                        goto fail;
                if ((username && !json_is_string(username)) || (password && !json_is_string(password))) {
                        moat_error_invalid(&err, "`username` and `password` are strings");
                        goto fail;
                }
                job->username = username ? strdup(json_string_value(username)) : NULL;
                job->password = password ? strdup(json_string_value(password)) : NULL;
        }
        if (pipe2(job->pipe, O_CLOEXEC) < 0 || fcntl(job->pipe[0], F_SETFL, O_NONBLOCK) < 0 ||
            !(job->partial = evbuffer_new()) ||
            !(job->progress_event = event_new(call->daemon->base, job->pipe[0], EV_READ | EV_PERSIST,
                                              on_pull_progress, job)) ||
            event_add(job->progress_event, NULL) < 0) {
                moat_error_system(&err, errno, "progress pipe");
                goto fail;
        }
        job->hold = api_hold_new(call->daemon, call->request, on_pull_client_gone, job);
        if (!job->hold) {
                moat_error_set(&err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
                goto fail;
        }
        if (worker_pool_submit(call->daemon->workers, pull_run, pull_done, job, &err) < 0) {
                api_hold_reply_error(job->hold, err);
                moat_error_free(err);
                pull_job_free(job);
                json_decref(root);
                return;
        }
        call->daemon->image_jobs++;
        api_hold_stream_start(job->hold, "application/x-ndjson");
        pull_send(job, json_pack("{s:s}", "progress", "pulling"));
        json_decref(root);
        return;
fail:
        api_reply_error(call->request, err);
        moat_error_free(err);
        json_decref(root);
        pull_job_free(job);
}
