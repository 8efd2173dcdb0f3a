/* OCI image manifest / index / config parsing (src/daemon/oci_image.c): an
 * uploaded image archive, once extracted, is a directory of JSON documents
 * and blobs that oci_image_load reads and verifies. Every reference in it is
 * content-addressed, which a fuzzer cannot forge, so the input is split into
 * documents and the harness computes the addresses:
 *
 *   byte 0        bit 0: OCI layout (oci-layout + index.json) or docker save
 *                 (manifest.json); bit 1: load with tag "latest" or NULL
 *   then          up to four parts separated by "\n=====\n":
 *                 top (index.json / manifest.json), manifest, config, layer
 *
 * Before a part is written, "$LAYER", "$CONFIG" and "$MANIFEST" in it become
 * the sha256 hex of the layer / config / manifest part (each written
 * already), and "$LAYER_SIZE", "$CONFIG_SIZE", "$MANIFEST_SIZE" their sizes.
 * Each blob is stored as blobs/sha256/<hex>; config and layer also as
 * <hex>.json and <hex>/layer.tar, where a classic docker save keeps them.
 * Everything is written into a fresh tmpfs directory, removed after each
 * input. On success every layer is opened through oci_image_open_layer. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "oci_image.h"
#include "sha256.h"

#define SEPARATOR "\n=====\n"
#define PARTS 4

struct part {
        const char *data;
        size_t size;
};

struct blob {
        char hex[SHA256_HEX_LENGTH + 1];
        char size[24];
};

static void write_file(const char *dir, const char *name, const void *data, size_t size)
{
        char path[8192];
        int fd;

        snprintf(path, sizeof(path), "%s/%s", dir, name);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) || close(fd) < 0)
                abort();
}

/* text with the placeholders of the blobs made so far replaced. */
static char *substitute(const struct part *part, const struct blob *layer, const struct blob *config,
                        const struct blob *manifest, size_t *ret_size)
{
        static const char *const names[] = {"$LAYER_SIZE", "$CONFIG_SIZE", "$MANIFEST_SIZE",
                                            "$LAYER",      "$CONFIG",      "$MANIFEST"};
        const char *values[] = {layer ? layer->size : NULL,    config ? config->size : NULL,
                                manifest ? manifest->size : NULL, layer ? layer->hex : NULL,
                                config ? config->hex : NULL,   manifest ? manifest->hex : NULL};
        /* Each placeholder is at least 6 bytes and becomes at most 64. */
        char *out = malloc(part->size * 11 + 1);
        size_t length = 0;

        if (!out)
                abort();
        for (size_t i = 0; i < part->size;) {
                bool replaced = false;

                for (size_t n = 0; n < 6 && !replaced; n++) {
                        size_t name_length = strlen(names[n]);

                        if (values[n] && part->size - i >= name_length &&
                            memcmp(part->data + i, names[n], name_length) == 0) {
                                memcpy(out + length, values[n], strlen(values[n]));
                                length += strlen(values[n]);
                                i += name_length;
                                replaced = true;
                        }
                }
                if (!replaced)
                        out[length++] = part->data[i++];
        }
        out[length] = '\0';
        *ret_size = length;
        return out;
}

static void store_blob(const char *dir, const char *data, size_t size, const char *extra_name, struct blob *ret)
{
        struct sha256 *hash = sha256_new();
        char name[256];

        if (!hash)
                abort();
        sha256_update(hash, data, size);
        sha256_final_hex(hash, ret->hex);
        sha256_free(hash);
        snprintf(ret->size, sizeof(ret->size), "%zu", size);
        snprintf(name, sizeof(name), "blobs/sha256/%s", ret->hex);
        write_file(dir, name, data, size);
        if (extra_name) {
                if (strcmp(extra_name, "layer.tar") == 0) {
                        snprintf(name, sizeof(name), "%s/%s", dir, ret->hex);
                        if (mkdir(name, 0755) < 0 && errno != EEXIST)
                                abort();
                        snprintf(name, sizeof(name), "%s/layer.tar", ret->hex);
                } else {
                        snprintf(name, sizeof(name), "%s%s", ret->hex, extra_name);
                }
                write_file(dir, name, data, size);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct part parts[PARTS] = {{0}};
        struct blob layer, config, manifest;
        const char *dir, *cursor, *end;
        char path[8192], *text;
        size_t text_size, count = 0;
        struct oci_image *image = NULL;
        struct moat_error *err = NULL;
        bool oci, tagged;

        if (size < 1)
                return 0;
        oci = !(data[0] & 1);
        tagged = data[0] & 2;
        cursor = (const char *)data + 1;
        end = (const char *)data + size;
        while (count < PARTS) {
                const char *next = count + 1 < PARTS ? memmem(cursor, (size_t)(end - cursor), SEPARATOR,
                                                             strlen(SEPARATOR))
                                                     : NULL;

                parts[count].data = cursor;
                parts[count].size = (size_t)((next ? next : end) - cursor);
                count++;
                if (!next)
                        break;
                cursor = next + strlen(SEPARATOR);
        }

        dir = fuzz_scratch_new();
        snprintf(path, sizeof(path), "%s/blobs", dir);
        if (mkdir(path, 0755) < 0)
                abort();
        snprintf(path, sizeof(path), "%s/blobs/sha256", dir);
        if (mkdir(path, 0755) < 0)
                abort();

        store_blob(dir, parts[3].data ? parts[3].data : "", parts[3].size, "layer.tar", &layer);
        text = substitute(&parts[2], &layer, NULL, NULL, &text_size);
        store_blob(dir, text, text_size, ".json", &config);
        free(text);
        text = substitute(&parts[1], &layer, &config, NULL, &text_size);
        store_blob(dir, text, text_size, NULL, &manifest);
        free(text);
        text = substitute(&parts[0], &layer, &config, &manifest, &text_size);
        if (oci) {
                static const char layout[] = "{\"imageLayoutVersion\": \"1.0.0\"}";

                write_file(dir, "oci-layout", layout, strlen(layout));
                write_file(dir, "index.json", text, text_size);
        } else {
                write_file(dir, "manifest.json", text, text_size);
        }
        free(text);

        if (oci_image_load(dir, tagged ? "latest" : NULL, &image, &err) == 0) {
                for (size_t i = 0; i < image->layer_count; i++) {
                        struct moat_error *layer_err = NULL;
                        int fd = oci_image_open_layer(image, i, &layer_err);

                        if (fd >= 0)
                                close(fd);
                        moat_error_free(layer_err);
                }
                oci_image_free(image);
        }
        moat_error_free(err);
        fuzz_scratch_clear();
        return 0;
}
