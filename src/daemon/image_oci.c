#include "image_oci.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "image_store.h"
#include "oci_image.h"
#include "oci_layer.h"

bool image_oci_looks_like(const char *path)
{
        char probe[PATH_MAX];
        struct stat st;

        if (stat(path, &st) < 0)
                return false;
        if (S_ISREG(st.st_mode))
                return true;
        if (!S_ISDIR(st.st_mode))
                return false;
        image_path(probe, sizeof(probe), "%s/oci-layout", path);
        if (access(probe, F_OK) == 0)
                return true;
        image_path(probe, sizeof(probe), "%s/manifest.json", path);
        return access(probe, F_OK) == 0;
}

static void say(int fd, const char *what, const char *subject)
{
        char line[512];
        int n = snprintf(line, sizeof(line), "%s %s\n", what, subject);

        if (fd >= 0 && n > 0)
                (void)!write(fd, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static json_t *config_of(const struct oci_image *image)
{
        json_t *env = json_array();

        for (size_t i = 0; env && i < image->env_count; i++)
                json_array_append_new(env, json_string(image->env[i]));
        return json_pack("{s:o, s:s?, s:s?, s:O?, s:O?}", "env", env, "workdir", image->workdir, "user", image->user,
                         "entrypoint", image->entrypoint, "cmd", image->cmd);
}

int image_oci_import(const char *images_dir, const char *path, int progress_fd, char (*layers)[72],
                     size_t *layer_count, json_t **config, struct moat_error **err)
{
        _cleanup_oci_image_ struct oci_image *image = NULL;
        char unpacked[PATH_MAX] = "";
        const char *dir = path;
        struct stat st;
        int r = -1;

        *layer_count = 0;
        *config = NULL;
        if (stat(path, &st) < 0)
                return moat_error_invalid(err, "`%s` does not exist", path);
        if (S_ISREG(st.st_mode)) {
                /* A `docker save` or OCI layout tar: unpacked (safely) into
                 * the store's staging area first. */
                say(progress_fd, "unpacking", path);
                if (layer_staging_new(images_dir, unpacked, err) < 0)
                        return -1;
                strncat(unpacked, "/rootfs", sizeof(unpacked) - strlen(unpacked) - 1);
                if (oci_archive_extract(path, unpacked, IMAGE_OCI_LAYER_MAX_BYTES, err) < 0)
                        goto out;
                dir = unpacked;
        }
        if (oci_image_load(dir, NULL, &image, err) < 0)
                goto out;
        if (image->layer_count == 0 || image->layer_count > IMAGE_LAYERS_MAX) {
                moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "bad_image", "an image needs 1 to %d layers",
                               IMAGE_LAYERS_MAX);
                goto out;
        }
        for (size_t i = 0; i < image->layer_count; i++) {
                char staging[PATH_MAX], rootfs[PATH_MAX];
                struct oci_layer_result result;
                _cleanup_close_ int fd = -1;

                say(progress_fd, "layer", image->layers[i].digest);
                fd = oci_image_open_layer(image, i, err);
                if (fd < 0 || layer_staging_new(images_dir, staging, err) < 0)
                        goto out;
                image_path(rootfs, sizeof(rootfs), "%s/rootfs", staging);
                if (oci_layer_apply_limited(fd, rootfs, IMAGE_OCI_LAYER_MAX_BYTES, &result, err) < 0) {
                        image_store_remove_tree(staging, NULL);
                        goto out;
                }
                /* The layer must be the one the config names: its diff_id. */
                if (image->layers[i].diff_id[0] && strcmp(image->layers[i].diff_id + 7, result.diff_id) != 0) {
                        image_store_remove_tree(staging, NULL);
                        moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, OCI_ERROR_DIGEST_MISMATCH,
                                       "layer %zu unpacks to sha256:%s, the config says %s", i, result.diff_id,
                                       image->layers[i].diff_id);
                        goto out;
                }
                if (layer_commit(images_dir, staging, result.diff_id, result.size, "oci", err) < 0)
                        goto out;
                snprintf(layers[i], 72, "%s", result.diff_id);
                (*layer_count)++;
        }
        *config = config_of(image);
        r = *config ? 0 : moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "config");
out:
        if (unpacked[0]) {
                *strrchr(unpacked, '/') = '\0';
                image_store_remove_tree(unpacked, NULL);
        }
        return r;
}
