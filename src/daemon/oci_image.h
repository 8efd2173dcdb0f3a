/* Reading an image archive that was unpacked into a staging directory: an OCI
 * image layout (oci-layout, index.json, blobs/sha256/...) or a `docker save`
 * (manifest.json, <config>.json, <id>/layer.tar or blobs/...). Everything the
 * image references is verified against its content address before it is
 * returned; nothing is opened outside the directory. */
#pragma once
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

/* Error codes (struct moat_error.code) set here, besides "system". */
#define OCI_ERROR_DIGEST_MISMATCH "digest_mismatch"     /* a blob's sha256 or size is not what was referenced */
#define OCI_ERROR_UNSUPPORTED_MEDIA_TYPE "unsupported_media_type"
#define OCI_ERROR_MISSING_BLOB "missing_blob"           /* referenced file absent */
#define OCI_ERROR_BAD_IMAGE "bad_image"                 /* malformed JSON, unsafe path, bad digest syntax */
#define OCI_ERROR_PLATFORM_NOT_FOUND "platform_not_found" /* no linux/amd64 manifest */
#define OCI_ERROR_TAG_NOT_FOUND "tag_not_found"

/* Hard bounds. */
#define OCI_IMAGE_MAX_JSON_SIZE (4 * 1024 * 1024) /* index, manifest, config */
#define OCI_IMAGE_MAX_LAYERS 256
#define OCI_IMAGE_MAX_ENV 4096

struct oci_image_layer {
        char digest[72];      /* "sha256:<hex>" of the blob as stored (verified) */
        char diff_id[72];     /* "sha256:<hex>" of the uncompressed tar, from the config */
        char path[4096];      /* the blob file: <dir>/<relative> (use oci_image_open_layer) */
        char relative[4096];  /* the same, relative to the image directory */
        char media_type[128]; /* as referenced; docker save layers: ...rootfs.diff.tar */
        uint64_t size;        /* bytes of the blob */
};

struct oci_image {
        char *dir;
        size_t layer_count;
        struct oci_image_layer *layers; /* bottom first */
        json_t *config;                 /* the whole config JSON (owned) */
        char **env;                     /* "K=V" strings */
        size_t env_count;
        char *workdir, *user;           /* NULL when unset */
        json_t *entrypoint, *cmd;       /* arrays of strings, or NULL (borrowed from config) */
};

/* Load and verify the image in dir. tag selects by the OCI annotation
 * org.opencontainers.image.ref.name (or a docker RepoTags entry); NULL takes
 * the only one, or the linux/amd64 one of a multi-platform index, or the
 * first. Every blob (index, manifest, config, layers) is hashed and compared
 * with its digest: digest_mismatch on difference. */
int oci_image_load(const char *dir, const char *tag, struct oci_image **ret, struct moat_error **err);
void oci_image_free(struct oci_image *image);

/* Open layer `index` for reading, beneath the image directory (a symlink in
 * the archive cannot lead out of it). Returns an fd. */
int oci_image_open_layer(const struct oci_image *image, size_t index, struct moat_error **err);

static inline void oci_image_freep(struct oci_image **image)
{
        oci_image_free(*image);
}
#define _cleanup_oci_image_ __attribute__((cleanup(oci_image_freep)))
