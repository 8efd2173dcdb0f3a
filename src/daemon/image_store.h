/* Images: <data-dir>/images/<name>/rootfs plus <name>/image.json
 * ({"id", "created_at", "size"}). A name is visible only once its directory
 * is complete: imports are built under images/.tmp-* and renamed in. */
#pragma once
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>

#include "common/error.h"
#include "daemon.h"

#define IMAGE_HOST_NAME "host"

/* The rootfs directory of image `name`; not_found if it does not exist. */
int image_store_rootfs(struct moatd *daemon, const char *name, char out[PATH_MAX], struct moat_error **err);
/* "bash" if the image has it, else "sh": what /run's `cmd` runs with. */
const char *image_store_shell(struct moatd *daemon, const char *name);
/* {"images": [...]} */
json_t *image_store_list(struct moatd *daemon, struct moat_error **err);
json_t *image_store_get(struct moatd *daemon, const char *name, struct moat_error **err);
/* Blocking (worker): copy `source` into a new image `name`. */
int image_store_import(const char *images_dir, const char *source, const char *name, struct moat_error **err);
/* Remove image `name` (the caller checked it is not in use). */
int image_store_delete(struct moatd *daemon, const char *name, struct moat_error **err);
/* Write image.json for a finished image directory. */
int image_store_write_meta(const char *image_dir, struct moat_error **err);
/* rm -rf of a directory tree we created, without following symlinks. */
int image_store_remove_tree(const char *path, struct moat_error **err);

/* snprintf for paths: the data dir's length is bounded at start-up, so a
 * truncated path is a bug; it still never runs off the buffer. */
int image_path(char *out, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Runs `cp` with argv (no shell) and waits; -1 with errno on failure. */
int image_store_copy(char *const argv[]);

/* Start-up: remove images/.tmp-* and .old-* left by a crash. */
void image_store_remove_leftovers(struct moatd *daemon);

/* Start-up: make sure the `host` image exists and is current (image_host.c). */
int image_host_ensure(struct moatd *daemon, struct moat_error **err);
