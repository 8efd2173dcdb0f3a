/* tar/OCI layer parsing: the fuzz bytes are an image layer (plain, gzip or
 * zstd tar, as a registry or an uploaded archive delivers it) on a memfd,
 * applied by oci_layer_apply_limited into a fresh empty directory (tmpfs),
 * which is removed whole after each input. The first byte's low bit picks the
 * other reader of the same bytes: oci_archive_extract, the outer `docker
 * save` / OCI layout archive and the build context. The harness then checks
 * the promise both make: nothing was created outside the directory (its
 * sibling "outside" stays empty, their parent holds just the two). */
#include <dirent.h>
#include <stdbool.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "oci_layer.h"

/* Small: a gzip bomb must hit the limit, not fill tmpfs. */
#define FUZZ_LAYER_MAX_SIZE (8u * 1024 * 1024)

static size_t directory_entries(const char *path)
{
        DIR *dir = opendir(path);
        struct dirent *entry;
        size_t count = 0;

        if (!dir)
                abort();
        while ((entry = readdir(dir)))
                if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0)
                        count++;
        closedir(dir);
        return count;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        const char *scratch;
        char target[4300], outside[4300], parent[4300], fd_path[64];
        struct oci_layer_result result;
        struct moat_error *err = NULL;
        bool archive;
        int fd;

        if (size < 1)
                return 0;
        archive = data[0] & 1;
        data++;
        size--;
        scratch = fuzz_scratch_new();
        snprintf(target, sizeof(target), "%s/target/sub", scratch);
        snprintf(outside, sizeof(outside), "%s/target/outside", scratch);
        snprintf(parent, sizeof(parent), "%s/target", scratch);
        if (mkdir(parent, 0755) < 0 || mkdir(target, 0755) < 0 || mkdir(outside, 0755) < 0)
                abort();
        fd = memfd_create("layer", MFD_CLOEXEC);
        if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) || lseek(fd, 0, SEEK_SET) < 0)
                abort();
        if (archive) {
                snprintf(fd_path, sizeof(fd_path), "/proc/self/fd/%d", fd);
                (void)oci_archive_extract(fd_path, target, FUZZ_LAYER_MAX_SIZE, &err);
        } else {
                (void)oci_layer_apply_limited(fd, target, FUZZ_LAYER_MAX_SIZE, &result, &err);
        }
        moat_error_free(err);
        close(fd);
        /* An entry escaped the directory it was applied into. */
        if (directory_entries(outside) != 0 || directory_entries(parent) != 2)
                abort();
        fuzz_scratch_clear();
        return 0;
}
