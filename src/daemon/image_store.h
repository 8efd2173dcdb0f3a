/* Images, as layers and manifests under <data-dir>/images:
 *
 *   layers/<64 hex>/rootfs       a layer: a directory tree, used read-only as
 *   layers/<64 hex>/layer.json   an overlay lower. The name is its content
 *                                address (the digest of the tree, or an OCI
 *                                layer's diff_id), so equal layers are stored
 *                                once.
 *   manifests/<image id>.json    an image: its layers (bottom first), config
 *                                (env, workdir, user, entrypoint, cmd), parent,
 *                                creation time, size.
 *   names.json                   {"name": "image id"}: tags. A name moves to
 *                                the newest image given it.
 *   host/rootfs                  the `host` image's skeleton (image_host.c);
 *                                it is the layer named "host".
 *
 * Everything is written under .tmp-* and renamed into place complete, so a
 * crash never leaves a half layer or manifest; start-up removes .tmp-* and
 * .old-*. The records live in memory on the loop thread; workers only build
 * and commit layer directories. */
#pragma once
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "daemon.h"

#define IMAGE_HOST_NAME "host"
#define IMAGE_HOST_LAYER "host"
#define IMAGE_LAYERS_MAX 60 /* the cell takes 64 lowers; a sandbox adds none, builds add one per step */

struct image_record {
        struct image_record *next;
        char id[32];             /* "img-" + 16 hex of the manifest's digest */
        char (*layers)[72];      /* bottom first: 64 hex, or "host" */
        size_t layer_count;
        json_t *config;          /* {"env": ["K=V"], "workdir", "user", "entrypoint", "cmd"} */
        char parent[32];         /* "" if none */
        int64_t created_ms;
        uint64_t size;           /* bytes in its layers */
};

/* Start-up: directories, leftovers, the records. */
int image_store_load(struct moatd *daemon, struct moat_error **err);
void image_store_free_all(struct moatd *daemon);

/* By name ("debian:bookworm"), or by id ("img-..."). NULL: not_found. */
struct image_record *image_store_find(struct moatd *daemon, const char *ref, struct moat_error **err);

/* The cell's lowers for an image: top-most first, into paths[] (each
 * PATH_MAX); *host_usr says whether the host's /usr is bound over it. */
int image_store_lowers(struct moatd *daemon, const struct image_record *image, char (*paths)[PATH_MAX],
                       unsigned *count, bool *host_usr, struct moat_error **err);
/* "bash" if the image has it, else "sh": what /run's `cmd` runs with. */
const char *image_store_shell(struct moatd *daemon, const struct image_record *image);
/* A config value: a string ("workdir", "user") or NULL. */
const char *image_config_string(const struct image_record *image, const char *key);

/* Register an image made of these layers (which must be committed) and
 * config, and point `name` (may be NULL) at it. An image with the same
 * layers and config is the same image. Loop thread. */
int image_store_add(struct moatd *daemon, const char *name, char (*layers)[72], size_t layer_count,
                    json_t *config, const char *parent, struct image_record **ret, struct moat_error **err);

/* Remove a name; the image goes with its last name (and its layers with
 * their last image) unless in_use says a sandbox still uses it. By id:
 * every name of it. */
int image_store_delete(struct moatd *daemon, const char *ref, struct moat_error **err);
/* Images without names and layers without images, not in use. */
json_t *image_store_prune(struct moatd *daemon, struct moat_error **err);

json_t *image_to_json(struct moatd *daemon, const struct image_record *image);
/* {"images": [...], "disk_usage": {...}} */
json_t *image_store_list(struct moatd *daemon, struct moat_error **err);

/* Workers. A staging directory (images/.tmp-XXXXXX, holding rootfs/) for a
 * new layer; then commit it as layers/<id> (an existing layer of that id
 * wins, the staging copy is dropped), or drop it. */
int layer_staging_new(const char *images_dir, char out[PATH_MAX], struct moat_error **err);
int layer_commit(const char *images_dir, const char *staging, const char *layer_id, uint64_t size,
                 const char *source, struct moat_error **err);
/* Blocking (worker): copy directory `source` into a new layer; its id out. */
int layer_import_directory(const char *images_dir, const char *source, char layer_id[72], uint64_t *size,
                           struct moat_error **err);
/* Blocking (worker): a sandbox's writable layer (upper_fd, owned by host ids
 * from id_base) into a new layer. */
int layer_import_upper(const char *images_dir, int upper_fd, uid_t id_base, uint32_t id_count, char layer_id[72],
                       uint64_t *size, struct moat_error **err);

/* Write image.json for a finished host image directory (image_host.c). */
int image_store_write_meta(const char *image_dir, struct moat_error **err);
/* rm -rf of a directory tree we created, without following symlinks. */
int image_store_remove_tree(const char *path, struct moat_error **err);
/* snprintf for paths: the data dir's length is bounded at start-up, so a
 * truncated path is a bug; it still never runs off the buffer. */
int image_path(char *out, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Runs `cp` with argv (no shell) and waits; -1 with errno on failure. */
int image_store_copy(char *const argv[]);

/* Start-up: make sure the `host` image exists and is current (image_host.c). */
int image_host_ensure(struct moatd *daemon, struct moat_error **err);
