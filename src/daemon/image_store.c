#include "image_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <openssl/evp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "encoding.h"
#include "ids.h"
#include "log.h"
#include "request.h"
#include "sandbox.h"
#include "tree_copy.h"
#include "workers.h"

int image_path(char *out, size_t size, const char *fmt, ...)
{
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(out, size, fmt, ap);
        va_end(ap);
        if (n < 0 || (size_t)n >= size) {
                errno = ENAMETOOLONG;
                return -1;
        }
        return 0;
}

static bool layer_id_valid(const char *id)
{
        if (strcmp(id, IMAGE_HOST_LAYER) == 0)
                return true;
        if (strlen(id) != 64)
                return false;
        for (const char *p = id; *p; p++)
                if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
                        return false;
        return true;
}

static void layer_dir(struct moatd *daemon, const char *id, char out[PATH_MAX])
{
        if (strcmp(id, IMAGE_HOST_LAYER) == 0)
                image_path(out, PATH_MAX, "%s/%s/rootfs", daemon->images_dir, IMAGE_HOST_NAME);
        else
                image_path(out, PATH_MAX, "%s/layers/%s/rootfs", daemon->images_dir, id);
}

/* ---- files ---- */

/* Write JSON to path atomically: a reader sees the old file or the new one. */
static int write_json_atomic(const char *path, json_t *value, struct moat_error **err)
{
        char temporary[PATH_MAX];
        int fd;

        image_path(temporary, sizeof(temporary), "%s.tmp", path);
        fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return moat_error_system(err, errno, "create `%s`", temporary);
        if (json_dumpfd(value, fd, JSON_COMPACT | JSON_SORT_KEYS) < 0 || fsync(fd) < 0) {
                close(fd);
                unlink(temporary);
                return moat_error_system(err, errno ? errno : EIO, "write `%s`", temporary);
        }
        close(fd);
        if (rename(temporary, path) < 0) {
                unlink(temporary);
                return moat_error_system(err, errno, "rename `%s`", temporary);
        }
        return 0;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
        return (type == FTW_DP ? rmdir(path) : unlink(path)) < 0 && errno != ENOENT ? -1 : 0;
}

int image_store_remove_tree(const char *path, struct moat_error **err)
{
        if (nftw(path, remove_entry, 64, FTW_DEPTH | FTW_PHYS) < 0 && errno != ENOENT)
                return moat_error_system(err, errno, "remove `%s`", path);
        return 0;
}

static void remove_tree_run(void *path)
{
        image_store_remove_tree(path, NULL);
}

/* Rename out of the way at once, delete on a worker. */
static void remove_later(struct moatd *daemon, const char *path)
{
        static unsigned counter;
        char doomed[PATH_MAX];
        char *job;

        if (image_path(doomed, sizeof(doomed), "%s/.old-%lld-%u", daemon->images_dir, (long long)moatd_now_ms(),
                       counter++) < 0 ||
            rename(path, doomed) < 0)
                return;
        job = strdup(doomed);
        if (!job || worker_pool_submit(daemon->workers, remove_tree_run, free, job, NULL) < 0) {
                free(job);
                image_store_remove_tree(doomed, NULL);
        }
}

/* nftw's callback takes no argument: the running total is per thread. */
static __thread uint64_t tree_size;
static int add_size(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
        if (type == FTW_F || type == FTW_SL)
                tree_size += (uint64_t)st->st_size;
        return 0;
}

int image_store_write_meta(const char *image_dir, struct moat_error **err)
{
        char id[MOAT_ID_MAX], path[PATH_MAX], rootfs[PATH_MAX], created[ENCODING_TIME_MAX];
        json_t *meta;
        int r;

        if (moat_id_generate("img-", id, err) < 0)
                return -1;
        image_path(rootfs, sizeof(rootfs), "%s/rootfs", image_dir);
        tree_size = 0;
        nftw(rootfs, add_size, 64, FTW_PHYS);
        encoding_format_time(moatd_now_ms(), created);
        meta = json_pack("{s:s,s:s,s:I}", "id", id, "created_at", created, "size", (json_int_t)tree_size);
        image_path(path, sizeof(path), "%s/image.json", image_dir);
        r = meta ? json_dump_file(meta, path, JSON_COMPACT) : -1;
        if (meta)
                json_decref(meta);
        if (r < 0)
                return moat_error_system(err, errno, "write `%s`", path);
        return 0;
}

int image_store_copy(char *const argv[])
{
        extern char **environ;
        pid_t pid;
        int status, r;

        /* An argv, no shell: paths are never interpreted. */
        r = posix_spawn(&pid, "/bin/cp", NULL, NULL, argv, environ);
        if (r != 0) {
                errno = r;
                return -1;
        }
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return -1;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                errno = EIO;
                return -1;
        }
        return 0;
}

/* ---- layers (workers) ---- */

int layer_staging_new(const char *images_dir, char out[PATH_MAX], struct moat_error **err)
{
        char rootfs[PATH_MAX];

        if (image_path(out, PATH_MAX, "%s/.tmp-layer-XXXXXX", images_dir) < 0 || !mkdtemp(out))
                return moat_error_system(err, errno, "mkdtemp in `%s`", images_dir);
        image_path(rootfs, sizeof(rootfs), "%s/rootfs", out);
        if (mkdir(rootfs, 0755) < 0) {
                int saved = errno;

                image_store_remove_tree(out, NULL);
                return moat_error_system(err, saved, "mkdir `%s`", rootfs);
        }
        return 0;
}

int layer_commit(const char *images_dir, const char *staging, const char *layer_id, uint64_t size,
                 const char *source, struct moat_error **err)
{
        char path[PATH_MAX], final[PATH_MAX], created[ENCODING_TIME_MAX];
        json_t *meta;
        int r;

        if (!layer_id_valid(layer_id) || strcmp(layer_id, IMAGE_HOST_LAYER) == 0) {
                image_store_remove_tree(staging, NULL);
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "bad layer id `%.80s`", layer_id);
        }
        encoding_format_time(moatd_now_ms(), created);
        meta = json_pack("{s:s,s:I,s:s,s:s}", "id", layer_id, "size", (json_int_t)size, "created_at", created,
                         "source", source);
        image_path(path, sizeof(path), "%s/layer.json", staging);
        r = meta ? write_json_atomic(path, meta, err) : moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "json");
        json_decref(meta);
        if (r < 0)
                goto fail;
        chmod(staging, 0755);
        image_path(final, sizeof(final), "%s/layers/%s", images_dir, layer_id);
        /* Content-addressed: the same id is the same content. The first one
         * in stays; a concurrent or repeated copy is dropped. */
        if (renameat2(AT_FDCWD, staging, AT_FDCWD, final, RENAME_NOREPLACE) < 0) {
                if (errno == EEXIST || errno == ENOTEMPTY) {
                        image_store_remove_tree(staging, NULL);
                        return 0;
                }
                moat_error_system(err, errno, "rename `%s`", staging);
                goto fail;
        }
        return 0;
fail:
        image_store_remove_tree(staging, NULL);
        return -1;
}

static int import_tree(const char *images_dir, int source_fd, const struct tree_copy_options *options,
                       const char *source_name, char layer_id[72], uint64_t *size, struct moat_error **err)
{
        char staging[PATH_MAX], rootfs[PATH_MAX];
        struct tree_copy_result result;
        _cleanup_close_ int target_fd = -1;

        if (layer_staging_new(images_dir, staging, err) < 0)
                return -1;
        image_path(rootfs, sizeof(rootfs), "%s/rootfs", staging);
        target_fd = open(rootfs, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (target_fd < 0 || tree_copy(source_fd, target_fd, options, &result, err) < 0) {
                if (target_fd < 0)
                        moat_error_system(err, errno, "open `%s`", rootfs);
                image_store_remove_tree(staging, NULL);
                return -1;
        }
        snprintf(layer_id, 72, "%s", result.digest);
        *size = result.bytes;
        return layer_commit(images_dir, staging, layer_id, result.bytes, source_name, err);
}

int layer_import_directory(const char *images_dir, const char *source, char layer_id[72], uint64_t *size,
                           struct moat_error **err)
{
        struct tree_copy_options options = {0};
        _cleanup_close_ int fd = open(source, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        if (fd < 0)
                return moat_error_invalid(err, "`%s` is not a directory", source);
        return import_tree(images_dir, fd, &options, "directory", layer_id, size, err);
}

int layer_import_upper(const char *images_dir, int upper_fd, uid_t id_base, uint32_t id_count, char layer_id[72],
                       uint64_t *size, struct moat_error **err)
{
        struct tree_copy_options options = {.id_base = id_base, .id_count = id_count};

        return import_tree(images_dir, upper_fd, &options, "snapshot", layer_id, size, err);
}

/* ---- records (loop) ---- */

static void record_free(struct image_record *image)
{
        if (!image)
                return;
        free(image->layers);
        json_decref(image->config);
        free(image);
}

static uint64_t layer_size(struct moatd *daemon, const char *id)
{
        char path[PATH_MAX];
        json_t *meta, *size;
        uint64_t value = 0;

        if (strcmp(id, IMAGE_HOST_LAYER) == 0)
                return 0;
        image_path(path, sizeof(path), "%s/layers/%s/layer.json", daemon->images_dir, id);
        meta = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
        size = json_object_get(meta, "size");
        if (json_is_integer(size) && json_integer_value(size) > 0)
                value = (uint64_t)json_integer_value(size);
        json_decref(meta);
        return value;
}

static json_t *record_manifest(const struct image_record *image)
{
        json_t *layers = json_array();
        char created[ENCODING_TIME_MAX];

        for (size_t i = 0; layers && i < image->layer_count; i++)
                json_array_append_new(layers, json_string(image->layers[i]));
        encoding_format_time(image->created_ms, created);
        return json_pack("{s:s, s:o, s:O, s:s?, s:s, s:I}", "id", image->id, "layers", layers, "config",
                         image->config, "parent", image->parent[0] ? image->parent : NULL, "created_at", created,
                         "size", (json_int_t)image->size);
}

/* "2026-11-24T22:31:35.123Z" back to milliseconds; now if unreadable. */
static int64_t parse_time(const char *text)
{
        struct tm tm = {0};
        const char *rest = text ? strptime(text, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
        int millis = 0;

        if (!rest)
                return moatd_now_ms();
        if (*rest == '.')
                millis = atoi(rest + 1);
        return (int64_t)timegm(&tm) * 1000 + millis;
}

static struct image_record *record_from_manifest(struct moatd *daemon, json_t *manifest)
{
        struct image_record *image = calloc(1, sizeof(*image));
        json_t *layers = json_object_get(manifest, "layers"), *layer;
        const char *id = json_string_value(json_object_get(manifest, "id"));
        const char *parent = json_string_value(json_object_get(manifest, "parent"));
        const char *created = json_string_value(json_object_get(manifest, "created_at"));
        json_t *config = json_object_get(manifest, "config");
        size_t index;

        if (!image || !id || strlen(id) >= sizeof(image->id) || !json_is_array(layers) ||
            json_array_size(layers) == 0 || json_array_size(layers) > IMAGE_LAYERS_MAX || !json_is_object(config))
                goto fail;
        snprintf(image->id, sizeof(image->id), "%s", id);
        if (parent)
                snprintf(image->parent, sizeof(image->parent), "%.31s", parent);
        image->layers = calloc(json_array_size(layers), sizeof(*image->layers));
        if (!image->layers)
                goto fail;
        json_array_foreach(layers, index, layer) {
                if (!json_is_string(layer) || !layer_id_valid(json_string_value(layer)))
                        goto fail;
                snprintf(image->layers[index], sizeof(image->layers[index]), "%s", json_string_value(layer));
                image->size += layer_size(daemon, image->layers[index]);
        }
        image->layer_count = json_array_size(layers);
        image->config = json_incref(config);
        image->created_ms = parse_time(created);
        return image;
fail:
        record_free(image);
        return NULL;
}

static int save_names(struct moatd *daemon, struct moat_error **err)
{
        char path[PATH_MAX];

        image_path(path, sizeof(path), "%s/names.json", daemon->images_dir);
        return write_json_atomic(path, daemon->image_names, err);
}

static void remove_leftovers(struct moatd *daemon)
{
        DIR *dir = opendir(daemon->images_dir);
        struct dirent *entry;
        char path[PATH_MAX];

        if (!dir)
                return;
        /* Half-built layers and deleted trees of a moatd that crashed. */
        while ((entry = readdir(dir)))
                if ((strncmp(entry->d_name, ".tmp-", 5) == 0 || strncmp(entry->d_name, ".old-", 5) == 0) &&
                    image_path(path, sizeof(path), "%s/%s", daemon->images_dir, entry->d_name) == 0)
                        image_store_remove_tree(path, NULL);
        closedir(dir);
}

int image_store_load(struct moatd *daemon, struct moat_error **err)
{
        char path[PATH_MAX];
        DIR *dir;
        struct dirent *entry;

        remove_leftovers(daemon);
        for (int i = 0; i < 2; i++) {
                image_path(path, sizeof(path), "%s/%s", daemon->images_dir, i ? "manifests" : "layers");
                if (mkdir(path, 0700) < 0 && errno != EEXIST)
                        return moat_error_system(err, errno, "mkdir `%s`", path);
        }
        image_path(path, sizeof(path), "%s/names.json", daemon->images_dir);
        daemon->image_names = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(daemon->image_names)) {
                json_decref(daemon->image_names);
                daemon->image_names = json_object();
        }
        image_path(path, sizeof(path), "%s/manifests", daemon->images_dir);
        dir = opendir(path);
        while (dir && (entry = readdir(dir))) {
                char file[PATH_MAX];
                json_t *manifest;
                struct image_record *image;

                if (entry->d_name[0] == '.' || !strstr(entry->d_name, ".json"))
                        continue;
                image_path(file, sizeof(file), "%s/%s", path, entry->d_name);
                manifest = json_load_file(file, JSON_REJECT_DUPLICATES, NULL);
                image = manifest ? record_from_manifest(daemon, manifest) : NULL;
                json_decref(manifest);
                if (!image) {
                        log_warn("ignoring unreadable image manifest `%s`", file);
                        continue;
                }
                image->next = daemon->images;
                daemon->images = image;
        }
        if (dir)
                closedir(dir);
        return 0;
}

void image_store_free_all(struct moatd *daemon)
{
        while (daemon->images) {
                struct image_record *next = daemon->images->next;

                record_free(daemon->images);
                daemon->images = next;
        }
        json_decref(daemon->image_names);
        daemon->image_names = NULL;
}

static struct image_record *find_id(struct moatd *daemon, const char *id)
{
        for (struct image_record *image = daemon->images; image; image = image->next)
                if (strcmp(image->id, id) == 0)
                        return image;
        return NULL;
}

/* The built-in `host` image: its record is made on first use. */
static struct image_record *host_record(struct moatd *daemon)
{
        struct image_record *image = find_id(daemon, "img-host");

        if (image)
                return image;
        image = calloc(1, sizeof(*image));
        if (!image || !(image->layers = calloc(1, sizeof(*image->layers)))) {
                free(image);
                return NULL;
        }
        snprintf(image->id, sizeof(image->id), "img-host");
        snprintf(image->layers[0], sizeof(image->layers[0]), IMAGE_HOST_LAYER);
        image->layer_count = 1;
        image->config = json_object();
        image->created_ms = moatd_now_ms();
        image->next = daemon->images;
        daemon->images = image;
        return image;
}

struct image_record *image_store_find(struct moatd *daemon, const char *ref, struct moat_error **err)
{
        json_t *id;
        struct image_record *image = NULL;

        if (strcmp(ref, IMAGE_HOST_NAME) == 0 || strcmp(ref, "img-host") == 0)
                image = host_record(daemon);
        else if (strncmp(ref, "img-", 4) == 0)
                image = find_id(daemon, ref);
        else if ((id = json_object_get(daemon->image_names, ref)) && json_is_string(id))
                image = find_id(daemon, json_string_value(id));
        if (!image)
                moat_error_set(err, MOAT_ERROR_NOT_FOUND, 0, "image_not_found", "no image `%.200s`", ref);
        return image;
}

int image_store_lowers(struct moatd *daemon, const struct image_record *image, char (*paths)[PATH_MAX],
                       unsigned *count, bool *host_usr, struct moat_error **err)
{
        *host_usr = false;
        *count = 0;
        for (size_t i = image->layer_count; i-- > 0;) {
                struct stat st;

                layer_dir(daemon, image->layers[i], paths[*count]);
                if (stat(paths[*count], &st) < 0 || !S_ISDIR(st.st_mode))
                        return moat_error_set(err, MOAT_ERROR_NOT_FOUND, 0, "image_not_found",
                                              "layer %s of image %s is missing", image->layers[i], image->id);
                if (strcmp(image->layers[i], IMAGE_HOST_LAYER) == 0)
                        *host_usr = true;
                (*count)++;
        }
        return 0;
}

const char *image_store_shell(struct moatd *daemon, const struct image_record *image)
{
        static const char *const candidates[] = {"usr/bin/bash", "bin/bash"};
        char path[PATH_MAX], dir[PATH_MAX];
        struct stat st;

        for (size_t i = 0; i < image->layer_count; i++) {
                if (strcmp(image->layers[i], IMAGE_HOST_LAYER) == 0)
                        return "bash"; /* host /usr is bound over the image's /usr */
                layer_dir(daemon, image->layers[i], dir);
                for (size_t c = 0; c < MOAT_ARRAY_SIZE(candidates); c++) {
                        /* lstat: a symlink in an image must not be followed on the host. */
                        image_path(path, sizeof(path), "%s/%s", dir, candidates[c]);
                        if (lstat(path, &st) == 0 && (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)))
                                return "bash";
                }
        }
        return "sh";
}

const char *image_config_string(const struct image_record *image, const char *key)
{
        return json_string_value(json_object_get(image->config, key));
}

static void manifest_id(char (*layers)[72], size_t layer_count, json_t *config, char out[32])
{
        EVP_MD_CTX *hash = EVP_MD_CTX_new();
        unsigned char digest[EVP_MAX_MD_SIZE];
        unsigned length = 0;
        char *text = json_dumps(config, JSON_COMPACT | JSON_SORT_KEYS);

        EVP_DigestInit_ex(hash, EVP_sha256(), NULL);
        for (size_t i = 0; i < layer_count; i++)
                EVP_DigestUpdate(hash, layers[i], strlen(layers[i]) + 1);
        if (text)
                EVP_DigestUpdate(hash, text, strlen(text));
        EVP_DigestFinal_ex(hash, digest, &length);
        EVP_MD_CTX_free(hash);
        free(text);
        memcpy(out, "img-", 4);
        for (unsigned i = 0; i < 8; i++)
                snprintf(out + 4 + i * 2, 3, "%02x", digest[i]);
}

int image_store_add(struct moatd *daemon, const char *name, char (*layers)[72], size_t layer_count,
                    json_t *config, const char *parent, struct image_record **ret, struct moat_error **err)
{
        struct image_record *image;
        char id[32], path[PATH_MAX];
        json_t *manifest;

        if (layer_count == 0 || layer_count > IMAGE_LAYERS_MAX)
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL, "an image has 1 to %d layers",
                                      IMAGE_LAYERS_MAX);
        if (name && (!request_image_name_valid(name) || strcmp(name, IMAGE_HOST_NAME) == 0 ||
                     strncmp(name, "img-", 4) == 0))
                return moat_error_invalid(err, "`%.200s` is not a valid image name", name);
        manifest_id(layers, layer_count, config, id);
        image = find_id(daemon, id);
        if (!image) {
                image = calloc(1, sizeof(*image));
                if (!image || !(image->layers = calloc(layer_count, sizeof(*image->layers)))) {
                        free(image);
                        return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate image");
                }
                snprintf(image->id, sizeof(image->id), "%s", id);
                memcpy(image->layers, layers, layer_count * sizeof(*layers));
                image->layer_count = layer_count;
                image->config = json_incref(config);
                if (parent)
                        snprintf(image->parent, sizeof(image->parent), "%s", parent);
                image->created_ms = moatd_now_ms();
                for (size_t i = 0; i < layer_count; i++)
                        image->size += layer_size(daemon, layers[i]);
                manifest = record_manifest(image);
                image_path(path, sizeof(path), "%s/manifests/%s.json", daemon->images_dir, id);
                if (!manifest || write_json_atomic(path, manifest, err) < 0) {
                        json_decref(manifest);
                        record_free(image);
                        return err && *err ? -1 : moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "json");
                }
                json_decref(manifest);
                image->next = daemon->images;
                daemon->images = image;
        }
        if (name) {
                json_object_set_new(daemon->image_names, name, json_string(id));
                if (save_names(daemon, err) < 0)
                        return -1;
        }
        if (ret)
                *ret = image;
        return 0;
}

static bool image_named(struct moatd *daemon, const struct image_record *image)
{
        const char *key;
        json_t *value;

        json_object_foreach(daemon->image_names, key, value)
                if (strcmp(json_string_value(value), image->id) == 0)
                        return true;
        return false;
}

static bool layer_referenced(struct moatd *daemon, const char *layer)
{
        for (struct image_record *image = daemon->images; image; image = image->next)
                for (size_t i = 0; i < image->layer_count; i++)
                        if (strcmp(image->layers[i], layer) == 0)
                                return true;
        return false;
}

/* Drop an image record with no name and no sandbox, then its layers that
 * no image references. Returns bytes freed. */
static uint64_t forget_image(struct moatd *daemon, struct image_record *image)
{
        struct image_record **p;
        char path[PATH_MAX];
        uint64_t freed = 0;

        if (strcmp(image->id, "img-host") == 0 || image_named(daemon, image) || sandbox_image_in_use(daemon, image->id))
                return 0;
        for (p = &daemon->images; *p && *p != image; p = &(*p)->next)
                ;
        if (*p)
                *p = image->next;
        image_path(path, sizeof(path), "%s/manifests/%s.json", daemon->images_dir, image->id);
        unlink(path);
        for (size_t i = 0; i < image->layer_count; i++) {
                if (strcmp(image->layers[i], IMAGE_HOST_LAYER) == 0 || layer_referenced(daemon, image->layers[i]))
                        continue;
                freed += layer_size(daemon, image->layers[i]);
                image_path(path, sizeof(path), "%s/layers/%s", daemon->images_dir, image->layers[i]);
                remove_later(daemon, path);
        }
        record_free(image);
        return freed;
}

int image_store_delete(struct moatd *daemon, const char *ref, struct moat_error **err)
{
        struct image_record *image = image_store_find(daemon, ref, err);
        const char *key;
        json_t *value;
        void *tmp;

        if (!image)
                return -1;
        if (strcmp(image->id, "img-host") == 0)
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, NULL, "the host image cannot be deleted");
        if (sandbox_image_in_use(daemon, image->id))
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "image_in_use",
                                      "image `%.200s` is used by a sandbox that is not torn down yet", ref);
        if (strncmp(ref, "img-", 4) == 0) {
                json_object_foreach_safe(daemon->image_names, tmp, key, value)
                        if (strcmp(json_string_value(value), image->id) == 0)
                                json_object_del(daemon->image_names, key);
        } else {
                json_object_del(daemon->image_names, ref);
        }
        if (save_names(daemon, err) < 0)
                return -1;
        forget_image(daemon, image);
        return 0;
}

json_t *image_store_prune(struct moatd *daemon, struct moat_error **err)
{
        uint64_t freed = 0;
        unsigned images = 0, layers = 0;
        char path[PATH_MAX];
        DIR *dir;
        struct dirent *entry;

        for (struct image_record *image = daemon->images, *next; image; image = next) {
                next = image->next;
                if (strcmp(image->id, "img-host") != 0 && !image_named(daemon, image) &&
                    !sandbox_image_in_use(daemon, image->id)) {
                        freed += forget_image(daemon, image);
                        images++;
                }
        }
        /* Layers no manifest names (a crash between a layer's commit and its
         * image's manifest). */
        image_path(path, sizeof(path), "%s/layers", daemon->images_dir);
        dir = opendir(path);
        while (dir && (entry = readdir(dir))) {
                char layer[PATH_MAX];

                if (!layer_id_valid(entry->d_name) || layer_referenced(daemon, entry->d_name))
                        continue;
                freed += layer_size(daemon, entry->d_name);
                image_path(layer, sizeof(layer), "%s/%s", path, entry->d_name);
                remove_later(daemon, layer);
                layers++;
        }
        if (dir)
                closedir(dir);
        return json_pack("{s:i, s:i, s:I}", "images_removed", images, "layers_removed", layers, "bytes_freed",
                         (json_int_t)freed);
}

json_t *image_to_json(struct moatd *daemon, const struct image_record *image)
{
        json_t *names = json_array(), *layers = json_array(), *value;
        char created[ENCODING_TIME_MAX];
        const char *key;

        json_object_foreach(daemon->image_names, key, value)
                if (strcmp(json_string_value(value), image->id) == 0)
                        json_array_append_new(names, json_string(key));
        if (strcmp(image->id, "img-host") == 0)
                json_array_append_new(names, json_string(IMAGE_HOST_NAME));
        for (size_t i = 0; i < image->layer_count; i++)
                json_array_append_new(layers, json_string(image->layers[i]));
        encoding_format_time(image->created_ms, created);
        return json_pack("{s:s?, s:s, s:o, s:o, s:O, s:s?, s:s, s:I, s:b}", "name",
                         json_array_size(names) ? json_string_value(json_array_get(names, 0)) : NULL, "id",
                         image->id, "names", names, "layers", layers, "config", image->config, "parent",
                         image->parent[0] ? image->parent : NULL, "created_at", created, "size",
                         (json_int_t)image->size, "in_use", sandbox_image_in_use(daemon, image->id));
}

json_t *image_store_list(struct moatd *daemon, struct moat_error **err)
{
        json_t *images = json_array();
        uint64_t bytes = 0;
        unsigned layers = 0;
        char path[PATH_MAX];
        DIR *dir;
        struct dirent *entry;

        if (!images)
                return NULL;
        host_record(daemon);
        for (struct image_record *image = daemon->images; image; image = image->next)
                json_array_append_new(images, image_to_json(daemon, image));
        image_path(path, sizeof(path), "%s/layers", daemon->images_dir);
        dir = opendir(path);
        while (dir && (entry = readdir(dir))) {
                if (!layer_id_valid(entry->d_name))
                        continue;
                bytes += layer_size(daemon, entry->d_name);
                layers++;
        }
        if (dir)
                closedir(dir);
        return json_pack("{s:o, s:{s:i, s:I}}", "images", images, "disk_usage", "layers", layers, "bytes",
                         (json_int_t)bytes);
}
