#include "image_store.h"
#include "workers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "encoding.h"
#include "ids.h"
#include "request.h"

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

int image_store_rootfs(struct moatd *daemon, const char *name, char out[PATH_MAX], struct moat_error **err)
{
        struct stat st;

        if (!request_image_name_valid(name))
                return moat_error_set(err, MOAT_ERROR_NOT_FOUND, 0, NULL, "no image `%.64s`", name);
        image_path(out, PATH_MAX, "%s/%s/rootfs", daemon->images_dir, name);
        if (stat(out, &st) < 0 || !S_ISDIR(st.st_mode))
                return moat_error_set(err, MOAT_ERROR_NOT_FOUND, 0, NULL, "no image `%s`", name);
        return 0;
}

const char *image_store_shell(struct moatd *daemon, const char *name)
{
        static const char *const candidates[] = {"usr/bin/bash", "bin/bash"};
        char path[PATH_MAX];
        struct stat st;

        if (strcmp(name, IMAGE_HOST_NAME) == 0)
                return "bash"; /* host /usr is bound over the image's /usr */
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(candidates); i++) {
                /* lstat: a symlink in an image must not be followed on the host. */
                image_path(path, sizeof(path), "%s/%s/rootfs/%s", daemon->images_dir, name, candidates[i]);
                if (lstat(path, &st) == 0 && (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)))
                        return "bash";
        }
        return "sh";
}

/* nftw's callback takes no argument: the running total is per thread, since
 * imports run on several workers at once. */
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

json_t *image_store_get(struct moatd *daemon, const char *name, struct moat_error **err)
{
        char path[PATH_MAX];
        json_t *meta, *image;

        if (image_store_rootfs(daemon, name, path, err) < 0)
                return NULL;
        image_path(path, sizeof(path), "%s/%s/image.json", daemon->images_dir, name);
        meta = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
        image = json_pack("{s:s,s:O?,s:O?,s:O?}", "name", name, "id", meta ? json_object_get(meta, "id") : NULL,
                          "created_at", meta ? json_object_get(meta, "created_at") : NULL, "size",
                          meta ? json_object_get(meta, "size") : NULL);
        if (meta)
                json_decref(meta);
        if (!image)
                moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate image");
        return image;
}

json_t *image_store_list(struct moatd *daemon, struct moat_error **err)
{
        DIR *dir = opendir(daemon->images_dir);
        json_t *images = json_array();
        struct dirent *entry;

        if (!dir || !images) {
                if (dir)
                        closedir(dir);
                if (images)
                        json_decref(images);
                moat_error_system(err, errno, "open `%s`", daemon->images_dir);
                return NULL;
        }
        while ((entry = readdir(dir))) {
                json_t *image;
                if (!request_image_name_valid(entry->d_name))
                        continue; /* also skips .tmp-* and .old-* */
                image = image_store_get(daemon, entry->d_name, NULL);
                if (image)
                        json_array_append_new(images, image);
        }
        closedir(dir);
        return json_pack("{s:o}", "images", images);
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

/* Images hold files, not devices: a device node in an image would give the
 * sandbox's root a handle on host hardware if a mount ever allowed it. */
static int remove_device(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
        if (type == FTW_F && (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode)))
                unlink(path);
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

static int run_copy(const char *source, const char *target, struct moat_error **err)
{
        char source_contents[PATH_MAX];
        char *argv[] = {"cp", "-a", "--no-target-directory", source_contents, (char *)target, NULL};

        image_path(source_contents, sizeof(source_contents), "%s/.", source);
        if (image_store_copy(argv) < 0)
                return moat_error_system(err, errno, "cp -a `%s`", source);
        return 0;
}

int image_store_import(const char *images_dir, const char *source, const char *name, struct moat_error **err)
{
        char temporary[PATH_MAX], rootfs[PATH_MAX], final[PATH_MAX];
        struct stat st;

        if (stat(source, &st) < 0 || !S_ISDIR(st.st_mode))
                return moat_error_invalid(err, "`%s` is not a directory", source);
        image_path(final, sizeof(final), "%s/%s", images_dir, name);
        if (lstat(final, &st) == 0)
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, NULL, "image `%s` exists", name);
        image_path(temporary, sizeof(temporary), "%s/.tmp-%s-XXXXXX", images_dir, name);
        if (!mkdtemp(temporary))
                return moat_error_system(err, errno, "mkdtemp in `%s`", images_dir);
        chmod(temporary, 0755);
        image_path(rootfs, sizeof(rootfs), "%s/rootfs", temporary);
        if (run_copy(source, rootfs, err) < 0)
                goto fail;
        nftw(rootfs, remove_device, 64, FTW_PHYS);
        if (image_store_write_meta(temporary, err) < 0)
                goto fail;
        /* RENAME_NOREPLACE: two imports of one name race; exactly one wins. */
        if (renameat2(AT_FDCWD, temporary, AT_FDCWD, final, RENAME_NOREPLACE) < 0) {
                if (errno == EEXIST)
                        moat_error_set(err, MOAT_ERROR_CONFLICT, 0, NULL, "image `%s` exists", name);
                else
                        moat_error_system(err, errno, "rename `%s`", temporary);
                goto fail;
        }
        return 0;
fail:
        image_store_remove_tree(temporary, NULL);
        return -1;
}

static void remove_tree_run(void *path)
{
        image_store_remove_tree(path, NULL);
}

int image_store_delete(struct moatd *daemon, const char *name, struct moat_error **err)
{
        char path[PATH_MAX], doomed[PATH_MAX];

        if (image_store_rootfs(daemon, name, path, err) < 0)
                return -1;
        image_path(path, sizeof(path), "%s/%s", daemon->images_dir, name);
        image_path(doomed, sizeof(doomed), "%s/.old-%s-%lld", daemon->images_dir, name, (long long)moatd_now_ms());
        /* Rename first so the name disappears at once, whole; the tree goes on
         * a worker (a large image takes seconds to unlink, and the loop must
         * not wait). If moatd dies first, start-up removes `.old-*` leftovers. */
        if (rename(path, doomed) < 0)
                return moat_error_system(err, errno, "rename `%s`", path);
        char *job = strdup(doomed);
        if (!job || worker_pool_submit(daemon->workers, remove_tree_run, free, job, NULL) < 0) {
                free(job);
                return image_store_remove_tree(doomed, err);
        }
        return 0;
}

void image_store_remove_leftovers(struct moatd *daemon)
{
        DIR *dir = opendir(daemon->images_dir);
        struct dirent *entry;
        char path[PATH_MAX];

        if (!dir)
                return;
        /* Half-built imports and deleted images of a moatd that crashed. */
        while ((entry = readdir(dir)))
                if ((strncmp(entry->d_name, ".tmp-", 5) == 0 || strncmp(entry->d_name, ".old-", 5) == 0) &&
                    image_path(path, sizeof(path), "%s/%s", daemon->images_dir, entry->d_name) == 0)
                        image_store_remove_tree(path, NULL);
        closedir(dir);
}
