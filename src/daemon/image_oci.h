/* OCI images into the store: an image layout or `docker save` directory
 * (or a tar of either, or what a registry pull wrote) becomes layers
 * (each verified against its diff_id) and a config. Blocking: workers. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"

#define IMAGE_OCI_LAYER_MAX_BYTES (64ull * 1024 * 1024 * 1024) /* unpacked, per layer: a gzip bomb stops here */

/* layers: room for OCI_IMAGE_MAX_LAYERS entries. *config: {"env", "workdir",
 * "user", "entrypoint", "cmd"}. progress_fd: lines for the client, or -1. */
int image_oci_import(const char *images_dir, const char *path, int progress_fd, char (*layers)[72],
                     size_t *layer_count, json_t **config, struct moat_error **err);
/* True if path is an OCI layout or docker-save directory, or a regular file
 * (taken as a tar of one). */
bool image_oci_looks_like(const char *path);
