/* /v1/images: list, import (on a worker), delete. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "image_store.h"
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

struct import_job {
        struct moatd *daemon;
        struct api_hold *hold;
        char images_dir[4096];
        char *path, *name;
        struct moat_error *err;
};

static void import_run(void *arg)
{
        struct import_job *job = arg;

        image_store_import(job->images_dir, job->path, job->name, &job->err);
}

static void import_done(void *arg)
{
        struct import_job *job = arg;
        struct moatd *daemon = job->daemon;

        daemon->image_jobs--;
        if (job->err) {
                log_warn("image import `%s` from `%s`: %s", job->name, job->path, job->err->message);
                if (job->hold)
                        api_hold_reply_error(job->hold, job->err);
        } else {
                struct moat_error *err = NULL;
                json_t *image = image_store_get(job->daemon, job->name, &err);
                log_info("image `%s` imported from `%s`", job->name, job->path);
                if (job->hold) {
                        if (image)
                                api_hold_reply_json(job->hold, 201, image);
                        else
                                api_hold_reply_error(job->hold, err);
                } else if (image) {
                        json_decref(image);
                }
                moat_error_free(err);
        }
        moat_error_free(job->err);
        free(job->path);
        free(job->name);
        free(job);
        moatd_maybe_exit(daemon);
}

static void on_import_client_gone(void *arg)
{
        struct import_job *job = arg;

        job->hold = NULL; /* the import finishes anyway */
}

void api_images_import(struct api_call *call)
{
        struct import_job *job = calloc(1, sizeof(*job));
        struct moat_error *err = NULL;
        size_t length;
        const char *body = api_body(call->request, &length);
        char rootfs[4096];

        if (!job)
                return api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        job->daemon = call->daemon;
        snprintf(job->images_dir, sizeof(job->images_dir), "%s", call->daemon->images_dir);
        if (request_parse_image_import(body, length, &job->path, &job->name, &err) < 0)
                goto fail;
        if (image_store_rootfs(call->daemon, job->name, rootfs, NULL) == 0) {
                moat_error_set(&err, MOAT_ERROR_CONFLICT, 0, NULL, "image `%s` exists", job->name);
                goto fail;
        }
        job->hold = api_hold_new(call->daemon, call->request, on_import_client_gone, job);
        if (!job->hold) {
                moat_error_set(&err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "out of memory");
                goto fail;
        }
        if (worker_pool_submit(call->daemon->workers, import_run, import_done, job, &err) < 0) {
                api_hold_reply_error(job->hold, err);
                moat_error_free(err);
                free(job->path);
                free(job->name);
                free(job);
                return;
        }
        call->daemon->image_jobs++;
        return;
fail:
        api_reply_error(call->request, err);
        moat_error_free(err);
        free(job->path);
        free(job->name);
        free(job);
}

void api_images_delete(struct api_call *call)
{
        const char *name = call->params[0];
        struct moat_error *err = NULL;

        if (strcmp(name, IMAGE_HOST_NAME) == 0)
                return api_reply_new_error(call->request, MOAT_ERROR_CONFLICT, NULL,
                                           "the host image cannot be deleted");
        if (sandbox_image_in_use(call->daemon, name))
                return api_reply_new_error(call->request, MOAT_ERROR_CONFLICT, "image_in_use",
                                           "image `%.64s` is used by a running sandbox", name);
        if (image_store_delete(call->daemon, name, &err) < 0) {
                api_reply_error(call->request, err);
                moat_error_free(err);
                return;
        }
        api_reply_json(call->request, 200, json_pack("{s:s,s:b}", "name", name, "deleted", 1));
}
