/* Image archive loading. The directory was unpacked from an untrusted
 * archive, so: every file is opened with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_MAGICLINKS) relative to it (docker save uses relative symlinks
 * between layer directories, which stay allowed; one that leads out is
 * refused by the kernel); digests must be "sha256:" plus 64 lowercase hex
 * digits before they are turned into a path; JSON blobs are size-bounded and
 * every blob is hashed and compared before anything from it is trusted. */
#include "oci_image.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "sha256.h"

#define MEDIA_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define MEDIA_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MEDIA_OCI_CONFIG "application/vnd.oci.image.config.v1+json"
#define MEDIA_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define MEDIA_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"
#define MEDIA_DOCKER_CONFIG "application/vnd.docker.container.image.v1+json"
#define MEDIA_DOCKER_LAYER_TAR "application/vnd.docker.image.rootfs.diff.tar"

/* What oci_layer_apply can read: plain, gzip or zstd tars. */
static const char *const layer_media_types[] = {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        MEDIA_DOCKER_LAYER_TAR,
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
};

#define MAX_INDEX_DEPTH 2

/* jansson provides json_decrefp. */
#define _cleanup_json_ __attribute__((cleanup(json_decrefp)))

static int image_error(struct moat_error **err, const char *code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static int image_error(struct moat_error **err, const char *code, const char *fmt, ...)
{
        char message[900];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(message, sizeof(message), fmt, ap);
        va_end(ap);
        return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, code, "%s", message);
}

static bool media_type_is(const char *media_type, const char *a, const char *b)
{
        return media_type && (strcmp(media_type, a) == 0 || strcmp(media_type, b) == 0);
}

/* "sha256:<64 hex>" -> hex. Anything else is refused before it can become a
 * path component ("sha256:../../x"). */
static int digest_hex(const char *digest, const char **hex, struct moat_error **err)
{
        if (!digest)
                return image_error(err, OCI_ERROR_BAD_IMAGE, "image: descriptor without a digest");
        if (strncmp(digest, "sha256:", 7) != 0) {
                if (strchr(digest, ':') && !strchr(digest, '/'))
                        return image_error(err, OCI_ERROR_BAD_IMAGE, "image: unsupported digest algorithm in `%.100s`",
                                           digest);
                return image_error(err, OCI_ERROR_BAD_IMAGE, "image: malformed digest `%.100s`", digest);
        }
        if (!sha256_hex_valid(digest + 7))
                return image_error(err, OCI_ERROR_BAD_IMAGE, "image: malformed digest `%.100s`", digest);
        *hex = digest + 7;
        return 0;
}

/* A path from manifest.json: relative, no ".." (the kernel also enforces
 * "beneath" at open; this gives a clearer error). */
static int relative_path_check(const char *path, struct moat_error **err)
{
        if (!path || !path[0] || path[0] == '/' || strlen(path) >= 4096)
                return image_error(err, OCI_ERROR_BAD_IMAGE, "image: invalid path `%.100s`", path ? path : "");
        for (const char *p = path; *p;) {
                const char *end = strchrnul(p, '/');

                if (end - p == 2 && p[0] == '.' && p[1] == '.')
                        return image_error(err, OCI_ERROR_BAD_IMAGE, "image: path `%.100s` leaves the image", path);
                p = *end ? end + 1 : end;
        }
        return 0;
}

static int image_open_file(int dir_fd, const char *relative, struct moat_error **err)
{
        struct open_how how = {
                .flags = O_RDONLY | O_CLOEXEC,
                .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
        };
        _cleanup_close_ int fd = (int)syscall(SYS_openat2, dir_fd, relative, &how, sizeof(how));
        struct stat st;

        if (fd < 0) {
                if (errno == ENOENT)
                        return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, OCI_ERROR_MISSING_BLOB,
                                              "image: `%.200s` is missing", relative);
                if (errno == EXDEV || errno == ELOOP || errno == ENOTDIR)
                        return image_error(err, OCI_ERROR_BAD_IMAGE, "image: `%.200s` leads out of the image",
                                           relative);
                return moat_error_system(err, errno, "open `%.200s`", relative);
        }
        if (fstat(fd, &st) < 0)
                return moat_error_system(err, errno, "stat `%.200s`", relative);
        if (!S_ISREG(st.st_mode))
                return image_error(err, OCI_ERROR_BAD_IMAGE, "image: `%.200s` is not a regular file", relative);
        return TAKE_FD(fd);
}

/* Hash the file and compare with expected_hex; expected_size < 0: unknown. */
static int image_verify_file(int fd, const char *relative, const char *expected_hex, long long expected_size,
                             uint64_t *ret_size, struct moat_error **err)
{
        char hex[SHA256_HEX_LENGTH + 1];
        struct stat st;

        if (fstat(fd, &st) < 0)
                return moat_error_system(err, errno, "stat `%.200s`", relative);
        if (expected_size >= 0 && st.st_size != expected_size)
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, OCI_ERROR_DIGEST_MISMATCH,
                                      "image: `%.200s` has %lld bytes, %lld expected", relative,
                                      (long long)st.st_size, expected_size);
        if (sha256_file_hex(fd, hex, err) < 0)
                return moat_error_wrap(err, "hash `%.200s`", relative);
        if (strcmp(hex, expected_hex) != 0)
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, OCI_ERROR_DIGEST_MISMATCH,
                                      "image: `%.200s` has sha256:%s, sha256:%s expected", relative, hex,
                                      expected_hex);
        if (ret_size)
                *ret_size = (uint64_t)st.st_size;
        return 0;
}

/* Read a bounded JSON file; when expected_hex is set, verify it first. */
static json_t *image_read_json(int dir_fd, const char *relative, const char *expected_hex, long long expected_size,
                               struct moat_error **err)
{
        _cleanup_close_ int fd = image_open_file(dir_fd, relative, err);
        _cleanup_free_ char *text = NULL;
        json_error_t json_error;
        struct stat st;
        size_t length = 0;
        json_t *json;

        if (fd < 0)
                return NULL;
        if (fstat(fd, &st) < 0) {
                moat_error_system(err, errno, "stat `%.200s`", relative);
                return NULL;
        }
        if (st.st_size > OCI_IMAGE_MAX_JSON_SIZE) {
                moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL, "image: `%.200s` is larger than %d bytes",
                               relative, OCI_IMAGE_MAX_JSON_SIZE);
                return NULL;
        }
        if (expected_hex) {
                if (image_verify_file(fd, relative, expected_hex, expected_size, NULL, err) < 0)
                        return NULL;
                if (lseek(fd, 0, SEEK_SET) < 0) {
                        moat_error_system(err, errno, "seek `%.200s`", relative);
                        return NULL;
                }
        }
        text = malloc((size_t)st.st_size + 1);
        if (!text) {
                moat_error_system(err, ENOMEM, "read `%.200s`", relative);
                return NULL;
        }
        while (length < (size_t)st.st_size) {
                ssize_t n = read(fd, text + length, (size_t)st.st_size - length);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        moat_error_system(err, errno, "read `%.200s`", relative);
                        return NULL;
                }
                if (n == 0)
                        break;
                length += (size_t)n;
        }
        json = json_loadb(text, length, JSON_REJECT_DUPLICATES, &json_error);
        if (!json)
                image_error(err, OCI_ERROR_BAD_IMAGE, "image: `%.200s` is not valid JSON: %s", relative,
                            json_error.text);
        return json;
}

static const char *json_string_at(json_t *object, const char *key)
{
        return json_string_value(json_object_get(object, key));
}

static long long descriptor_size(json_t *descriptor)
{
        json_t *size = json_object_get(descriptor, "size");

        return json_is_integer(size) && json_integer_value(size) >= 0 ? (long long)json_integer_value(size) : -1;
}

static bool platform_is_linux_amd64(json_t *descriptor)
{
        json_t *platform = json_object_get(descriptor, "platform");

        return json_is_object(platform) && json_string_at(platform, "os") &&
               strcmp(json_string_at(platform, "os"), "linux") == 0 && json_string_at(platform, "architecture") &&
               strcmp(json_string_at(platform, "architecture"), "amd64") == 0;
}

static bool descriptor_has_tag(json_t *descriptor, const char *tag)
{
        json_t *annotations = json_object_get(descriptor, "annotations");
        const char *names[] = {json_string_at(annotations, "org.opencontainers.image.ref.name"),
                               json_string_at(annotations, "io.containerd.image.name")};

        for (size_t i = 0; i < MOAT_ARRAY_SIZE(names); i++) {
                size_t n = names[i] ? strlen(names[i]) : 0, t = strlen(tag);

                if (!names[i])
                        continue;
                /* "ubuntu:22.04" matches "22.04", "ubuntu:22.04" and
                 * "docker.io/library/ubuntu:22.04". */
                if (strcmp(names[i], tag) == 0 ||
                    (n > t && strcmp(names[i] + n - t, tag) == 0 && strchr(":/", names[i][n - t - 1])))
                        return true;
        }
        return false;
}

/* From an index's manifests: those with the tag (all if tag is NULL); of
 * several, the linux/amd64 one if any has a platform, else the first. */
static json_t *index_choose(json_t *index, const char *tag, struct moat_error **err)
{
        json_t *manifests = json_object_get(index, "manifests"), *descriptor, *first = NULL;
        bool any_platform = false;
        size_t i, candidates = 0;

        if (!json_is_array(manifests)) {
                image_error(err, OCI_ERROR_BAD_IMAGE, "image: index without manifests");
                return NULL;
        }
        json_array_foreach(manifests, i, descriptor) {
                if (!json_is_object(descriptor) || (tag && !descriptor_has_tag(descriptor, tag)))
                        continue;
                candidates++;
                if (!first)
                        first = descriptor;
                if (json_object_get(descriptor, "platform"))
                        any_platform = true;
        }
        if (!first) {
                if (tag)
                        moat_error_set(err, MOAT_ERROR_NOT_FOUND, 0, OCI_ERROR_TAG_NOT_FOUND,
                                       "image: no manifest tagged `%.200s`", tag);
                else
                        image_error(err, OCI_ERROR_BAD_IMAGE, "image: index lists no manifest");
                return NULL;
        }
        if (candidates == 1 || !any_platform)
                return first;
        json_array_foreach(manifests, i, descriptor) {
                if (json_is_object(descriptor) && (!tag || descriptor_has_tag(descriptor, tag)) &&
                    platform_is_linux_amd64(descriptor))
                        return descriptor;
        }
        image_error(err, OCI_ERROR_PLATFORM_NOT_FOUND, "image: no linux/amd64 manifest in the index");
        return NULL;
}

static char *json_string_dup(json_t *object, const char *key, struct moat_error **err, bool *failed)
{
        json_t *value = json_object_get(object, key);
        char *copy;

        if (!value || json_is_null(value))
                return NULL;
        if (!json_is_string(value)) {
                image_error(err, OCI_ERROR_BAD_IMAGE, "image: config `%s` is not a string", key);
                *failed = true;
                return NULL;
        }
        copy = strdup(json_string_value(value));
        if (!copy) {
                moat_error_system(err, ENOMEM, "image config");
                *failed = true;
        }
        return copy;
}

static int string_array_check(json_t *value, const char *key, struct moat_error **err)
{
        json_t *item;
        size_t i;

        if (!json_is_array(value) || json_array_size(value) > OCI_IMAGE_MAX_ENV)
                return image_error(err, OCI_ERROR_BAD_IMAGE, "image: config `%s` is not an array of strings", key);
        json_array_foreach(value, i, item) {
                if (!json_is_string(item))
                        return image_error(err, OCI_ERROR_BAD_IMAGE, "image: config `%s` is not an array of strings",
                                           key);
        }
        return 0;
}

/* The runtime settings and rootfs.diff_ids of a (verified) config. */
static int image_parse_config(struct oci_image *image, struct moat_error **err)
{
        json_t *config = json_object_get(image->config, "config"), *rootfs = json_object_get(image->config, "rootfs");
        json_t *diff_ids = json_object_get(rootfs, "diff_ids"), *value;
        const char *os = json_string_at(image->config, "os");
        const char *architecture = json_string_at(image->config, "architecture");
        bool failed = false;
        size_t i;

        if (!json_is_object(image->config))
                return image_error(err, OCI_ERROR_BAD_IMAGE, "image: config is not an object");
        if ((os && strcmp(os, "linux") != 0) || (architecture && strcmp(architecture, "amd64") != 0))
                return image_error(err, OCI_ERROR_PLATFORM_NOT_FOUND, "image: built for %.50s/%.50s, not linux/amd64",
                                   os ?: "?", architecture ?: "?");
        if (!json_is_array(diff_ids) || json_array_size(diff_ids) != image->layer_count)
                return image_error(err, OCI_ERROR_BAD_IMAGE, "image: config rootfs.diff_ids does not match the %zu layers",
                                   image->layer_count);
        json_array_foreach(diff_ids, i, value) {
                const char *hex;

                if (digest_hex(json_string_value(value), &hex, err) < 0)
                        return moat_error_wrap(err, "config rootfs.diff_ids");
                snprintf(image->layers[i].diff_id, sizeof(image->layers[i].diff_id), "sha256:%s", hex);
        }
        if (!config || json_is_null(config))
                return 0;
        if (!json_is_object(config))
                return image_error(err, OCI_ERROR_BAD_IMAGE, "image: config `config` is not an object");
        image->workdir = json_string_dup(config, "WorkingDir", err, &failed);
        image->user = json_string_dup(config, "User", err, &failed);
        if (failed)
                return -1;
        value = json_object_get(config, "Env");
        if (value && !json_is_null(value)) {
                json_t *item;

                if (string_array_check(value, "Env", err) < 0)
                        return -1;
                image->env = calloc(json_array_size(value) + 1, sizeof(char *));
                if (!image->env)
                        return moat_error_system(err, ENOMEM, "image config");
                json_array_foreach(value, i, item) {
                        image->env[i] = strdup(json_string_value(item));
                        if (!image->env[i])
                                return moat_error_system(err, ENOMEM, "image config");
                        image->env_count++;
                }
        }
        value = json_object_get(config, "Entrypoint");
        if (value && !json_is_null(value)) {
                if (string_array_check(value, "Entrypoint", err) < 0)
                        return -1;
                image->entrypoint = value;
        }
        value = json_object_get(config, "Cmd");
        if (value && !json_is_null(value)) {
                if (string_array_check(value, "Cmd", err) < 0)
                        return -1;
                image->cmd = value;
        }
        return 0;
}

static int image_set_layer_path(struct oci_image *image, struct oci_image_layer *layer, const char *relative,
                                struct moat_error **err)
{
        if (snprintf(layer->relative, sizeof(layer->relative), "%s", relative) >= (int)sizeof(layer->relative) ||
            snprintf(layer->path, sizeof(layer->path), "%s/%s", image->dir, relative) >= (int)sizeof(layer->path))
                return image_error(err, OCI_ERROR_BAD_IMAGE, "image: layer path too long");
        return 0;
}

static int image_allocate_layers(struct oci_image *image, size_t count, struct moat_error **err)
{
        if (count == 0 || count > OCI_IMAGE_MAX_LAYERS)
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, OCI_ERROR_BAD_IMAGE,
                                      "image: %zu layers (1 to %d allowed)", count, OCI_IMAGE_MAX_LAYERS);
        image->layers = calloc(count, sizeof(*image->layers));
        if (!image->layers)
                return moat_error_system(err, ENOMEM, "image");
        image->layer_count = count;
        return 0;
}

static int layer_media_type_supported(const char *media_type)
{
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(layer_media_types); i++)
                if (media_type && strcmp(media_type, layer_media_types[i]) == 0)
                        return 1;
        return 0;
}

/* OCI layout: index.json -> [index ->] manifest -> config + layers. */
static int image_load_oci(struct oci_image *image, int dir_fd, const char *tag, struct moat_error **err)
{
        _cleanup_json_ json_t *layout = image_read_json(dir_fd, "oci-layout", NULL, -1, err);
        _cleanup_json_ json_t *index = NULL, *manifest = NULL;
        json_t *descriptor, *layers, *config_descriptor;
        const char *media_type, *hex;
        char relative[128];
        size_t i;

        if (!layout)
                return -1;
        if (!json_string_at(layout, "imageLayoutVersion") ||
            strcmp(json_string_at(layout, "imageLayoutVersion"), "1.0.0") != 0)
                return image_error(err, OCI_ERROR_BAD_IMAGE, "image: unsupported oci-layout version");
        /* index.json is the one file that is not content-addressed. */
        index = image_read_json(dir_fd, "index.json", NULL, -1, err);
        if (!index)
                return -1;
        for (int depth = 0;; depth++) {
                descriptor = index_choose(index, depth == 0 ? tag : NULL, err);
                if (!descriptor)
                        return -1;
                media_type = json_string_at(descriptor, "mediaType");
                if (digest_hex(json_string_at(descriptor, "digest"), &hex, err) < 0)
                        return -1;
                snprintf(relative, sizeof(relative), "blobs/sha256/%s", hex);
                if (media_type_is(media_type, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)) {
                        manifest = image_read_json(dir_fd, relative, hex, descriptor_size(descriptor), err);
                        if (!manifest)
                                return -1;
                        break;
                }
                if (!media_type_is(media_type, MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)) {
                        image_error(err, OCI_ERROR_UNSUPPORTED_MEDIA_TYPE, "image: manifest media type `%.100s`",
                                    media_type ?: "(none)");
                        return -1;
                }
                if (depth + 1 >= MAX_INDEX_DEPTH) {
                        image_error(err, OCI_ERROR_BAD_IMAGE, "image: indexes nested too deep");
                        return -1;
                }
                json_t *nested = image_read_json(dir_fd, relative, hex, descriptor_size(descriptor), err);
                if (!nested)
                        return -1;
                json_decref(index);
                index = nested;
        }

        config_descriptor = json_object_get(manifest, "config");
        media_type = json_string_at(config_descriptor, "mediaType");
        if (!media_type_is(media_type, MEDIA_OCI_CONFIG, MEDIA_DOCKER_CONFIG)) {
                image_error(err, OCI_ERROR_UNSUPPORTED_MEDIA_TYPE, "image: config media type `%.100s`",
                            media_type ?: "(none)");
                return -1;
        }
        if (digest_hex(json_string_at(config_descriptor, "digest"), &hex, err) < 0)
                return -1;
        snprintf(relative, sizeof(relative), "blobs/sha256/%s", hex);
        image->config = image_read_json(dir_fd, relative, hex, descriptor_size(config_descriptor), err);
        if (!image->config)
                return -1;

        layers = json_object_get(manifest, "layers");
        if (!json_is_array(layers)) {
                image_error(err, OCI_ERROR_BAD_IMAGE, "image: manifest without layers");
                return -1;
        }
        if (image_allocate_layers(image, json_array_size(layers), err) < 0)
                return -1;
        json_array_foreach(layers, i, descriptor) {
                struct oci_image_layer *layer = &image->layers[i];
                _cleanup_close_ int fd = -1;

                media_type = json_string_at(descriptor, "mediaType");
                if (!layer_media_type_supported(media_type)) {
                        image_error(err, OCI_ERROR_UNSUPPORTED_MEDIA_TYPE, "image: layer %zu media type `%.100s`", i,
                                    media_type ?: "(none)");
                        return -1;
                }
                if (digest_hex(json_string_at(descriptor, "digest"), &hex, err) < 0)
                        return -1;
                snprintf(relative, sizeof(relative), "blobs/sha256/%s", hex);
                snprintf(layer->digest, sizeof(layer->digest), "sha256:%s", hex);
                snprintf(layer->media_type, sizeof(layer->media_type), "%s", media_type);
                if (image_set_layer_path(image, layer, relative, err) < 0)
                        return -1;
                fd = image_open_file(dir_fd, relative, err);
                if (fd < 0 || image_verify_file(fd, relative, hex, descriptor_size(descriptor), &layer->size, err) < 0)
                        return -1;
        }
        return image_parse_config(image, err);
}

static bool docker_entry_has_tag(json_t *entry, const char *tag)
{
        json_t *tags = json_object_get(entry, "RepoTags"), *item;
        size_t i;

        json_array_foreach(tags, i, item) {
                const char *name = json_string_value(item);
                size_t n = name ? strlen(name) : 0, t = strlen(tag);

                if (name && (strcmp(name, tag) == 0 || (n > t && strcmp(name + n - t, tag) == 0 && name[n - t - 1] == ':')))
                        return true;
        }
        return false;
}

/* The hex name of a content-addressed docker save file: "<hex>.json" or
 * "blobs/sha256/<hex>"; NULL if the name carries no digest. */
static const char *docker_name_hex(const char *path, char hex[SHA256_HEX_LENGTH + 1])
{
        const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        size_t n = strlen(base);

        if (n >= 5 && strcmp(base + n - 5, ".json") == 0)
                n -= 5;
        if (n != SHA256_HEX_LENGTH)
                return NULL;
        memcpy(hex, base, n);
        hex[n] = '\0';
        return sha256_hex_valid(hex) ? hex : NULL;
}

/* docker save: manifest.json = [{Config, RepoTags, Layers}]. Layer files are
 * not named by digest in the classic format (<v1 id>/layer.tar, an
 * uncompressed tar), so they are verified against the config's diff_ids. */
static int image_load_docker(struct oci_image *image, int dir_fd, const char *tag, struct moat_error **err)
{
        _cleanup_json_ json_t *manifest = image_read_json(dir_fd, "manifest.json", NULL, -1, err);
        json_t *entry = NULL, *item, *layers;
        const char *config_path, *expected;
        char hex[SHA256_HEX_LENGTH + 1];
        size_t i;

        if (!manifest)
                return -1;
        if (!json_is_array(manifest) || json_array_size(manifest) == 0) {
                image_error(err, OCI_ERROR_BAD_IMAGE, "image: manifest.json is not a non-empty array");
                return -1;
        }
        json_array_foreach(manifest, i, item) {
                if (!tag || docker_entry_has_tag(item, tag)) {
                        entry = item;
                        break;
                }
        }
        if (!entry) {
                moat_error_set(err, MOAT_ERROR_NOT_FOUND, 0, OCI_ERROR_TAG_NOT_FOUND, "image: no image tagged `%.200s`",
                               tag);
                return -1;
        }
        config_path = json_string_at(entry, "Config");
        if (relative_path_check(config_path, err) < 0)
                return -1;
        if (!docker_name_hex(config_path, hex)) {
                image_error(err, OCI_ERROR_BAD_IMAGE, "image: config `%.200s` is not named by its digest", config_path);
                return -1;
        }
        image->config = image_read_json(dir_fd, config_path, hex, -1, err);
        if (!image->config)
                return -1;
        layers = json_object_get(entry, "Layers");
        if (!json_is_array(layers)) {
                image_error(err, OCI_ERROR_BAD_IMAGE, "image: manifest.json entry without Layers");
                return -1;
        }
        if (image_allocate_layers(image, json_array_size(layers), err) < 0)
                return -1;
        /* diff_ids first: they are what classic layer.tar files are checked against. */
        if (image_parse_config(image, err) < 0)
                return -1;
        json_array_foreach(layers, i, item) {
                struct oci_image_layer *layer = &image->layers[i];
                const char *path = json_string_value(item);
                _cleanup_close_ int fd = -1;

                if (relative_path_check(path, err) < 0 || image_set_layer_path(image, layer, path, err) < 0)
                        return -1;
                expected = docker_name_hex(path, hex) ?: layer->diff_id + 7;
                snprintf(layer->digest, sizeof(layer->digest), "sha256:%s", expected);
                snprintf(layer->media_type, sizeof(layer->media_type), "%s", MEDIA_DOCKER_LAYER_TAR);
                fd = image_open_file(dir_fd, path, err);
                if (fd < 0 || image_verify_file(fd, path, expected, -1, &layer->size, err) < 0)
                        return -1;
        }
        return 0;
}

int oci_image_load(const char *dir, const char *tag, struct oci_image **ret, struct moat_error **err)
{
        _cleanup_oci_image_ struct oci_image *image = calloc(1, sizeof(*image));
        _cleanup_close_ int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int r;

        if (!image || !(image->dir = strdup(dir)))
                return moat_error_system(err, ENOMEM, "image");
        if (dir_fd < 0)
                return moat_error_system(err, errno, "open `%s`", dir);
        /* docker save >= 25 writes both; the OCI layout is content-addressed
         * throughout, so it wins. */
        if (faccessat(dir_fd, "oci-layout", F_OK, AT_SYMLINK_NOFOLLOW) == 0)
                r = image_load_oci(image, dir_fd, tag, err);
        else if (faccessat(dir_fd, "manifest.json", F_OK, AT_SYMLINK_NOFOLLOW) == 0)
                r = image_load_docker(image, dir_fd, tag, err);
        else
                r = image_error(err, OCI_ERROR_BAD_IMAGE, "image: neither an OCI layout nor a docker save archive");
        if (r < 0)
                return -1;
        *ret = TAKE_PTR(image);
        return 0;
}

void oci_image_free(struct oci_image *image)
{
        if (!image)
                return;
        for (size_t i = 0; i < image->env_count; i++)
                free(image->env[i]);
        free(image->env);
        free(image->workdir);
        free(image->user);
        free(image->layers);
        free(image->dir);
        json_decref(image->config); /* entrypoint and cmd are borrowed from it */
        free(image);
}

int oci_image_open_layer(const struct oci_image *image, size_t index, struct moat_error **err)
{
        _cleanup_close_ int dir_fd = -1;

        if (index >= image->layer_count)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "layer %zu of %zu", index,
                                      image->layer_count);
        dir_fd = open(image->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd < 0)
                return moat_error_system(err, errno, "open `%s`", image->dir);
        return image_open_file(dir_fd, image->layers[index].relative, err);
}
