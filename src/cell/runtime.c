/* Process-wide set-up done once at moatd start: the cgroup layout, the
 * seccomp program, the sealed in-memory copy of moat-init, and the run-dir
 * layout. Everything here may be slow; moat_cell_create() then only uses it. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/cleanup.h"
#include "cell_internal.h"

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif

static int make_dir(const char *path, mode_t mode, struct moat_error **err)
{
        if (mkdir(path, mode) < 0 && errno != EEXIST)
                return moat_error_system(err, errno, "mkdir `%s`", path);
        return 0;
}

/* Copy moat-init into a sealed memfd. Every sandbox executes this memfd, so
 * the binary never appears in a sandbox's filesystem and, being sealed, can
 * never be rewritten through /proc/<pid>/exe (the runc CVE-2019-5736 class),
 * nor replaced on the host disk under a running daemon. */
static int load_init_memfd(const char *init_path, struct moat_error **err)
{
        _cleanup_close_ int source = open(init_path, O_RDONLY | O_CLOEXEC);
        _cleanup_close_ int memfd = -1;
        struct stat st;
        off_t copied = 0;

        if (source < 0)
                return moat_error_set(err, MOAT_ERROR_NOT_FOUND, errno, "init_not_found", "open init `%s`",
                                      init_path);
        if (fstat(source, &st) < 0)
                return moat_error_system(err, errno, "fstat `%s`", init_path);
        if (!S_ISREG(st.st_mode) || st.st_size <= 0)
                return moat_error_invalid(err, "init `%s` is not a non-empty regular file", init_path);

        /* MFD_EXEC: kernels with vm.memfd_noexec would otherwise refuse exec. */
        memfd = memfd_create("moat-init", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
        if (memfd < 0 && errno == EINVAL)
                memfd = memfd_create("moat-init", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (memfd < 0)
                return moat_error_system(err, errno, "memfd_create");
        while (copied < st.st_size) {
                ssize_t n = sendfile(memfd, source, NULL, (size_t)(st.st_size - copied));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return moat_error_system(err, errno, "copy `%s` into memfd", init_path);
                }
                if (n == 0)
                        return moat_error_system(err, EIO, "`%s` shrank while copying", init_path);
                copied += n;
        }
        if (fcntl(memfd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0)
                return moat_error_system(err, errno, "seal init memfd");
        return TAKE_FD(memfd);
}

static unsigned read_last_capability(void)
{
        char text[32];
        struct moat_error *ignored = NULL;

        if (moat_read_file("/proc/sys/kernel/cap_last_cap", text, sizeof(text), &ignored) <= 0) {
                moat_error_free(ignored);
                return 40; /* CAP_CHECKPOINT_RESTORE: the last one of kernel 5.9+ */
        }
        return (unsigned)strtoul(text, NULL, 10);
}

int moat_cell_runtime_init(const struct moat_cell_runtime_options *options,
                           struct moat_cell_runtime **ret_runtime, struct moat_error **err)
{
        struct moat_cell_runtime *runtime;
        int n1, n2;

        if (!options || !options->init_path || !options->run_dir || options->run_dir[0] != '/')
                return moat_error_invalid(err, "runtime options need init_path and an absolute run_dir");
        runtime = calloc(1, sizeof(*runtime));
        if (!runtime)
                return moat_error_system(err, ENOMEM, "allocate cell runtime");
        runtime->init_memfd = -1;

        n1 = snprintf(runtime->sandboxes_dir, sizeof(runtime->sandboxes_dir), "%s/sandboxes", options->run_dir);
        n2 = snprintf(runtime->rootfs_mountpoint, sizeof(runtime->rootfs_mountpoint), "%s/rootfs",
                      options->run_dir);
        if (n1 < 0 || (size_t)n1 >= sizeof(runtime->sandboxes_dir) || n2 < 0 ||
            (size_t)n2 >= sizeof(runtime->rootfs_mountpoint)) {
                moat_error_invalid(err, "run_dir `%s` is too long", options->run_dir);
                goto fail;
        }
        /* run_dir and sandboxes/ are root-only: the control sockets in them
         * are moatd's private channel to each init. rootfs/ only ever holds
         * mounts inside each sandbox's own mount namespace; on the host it
         * stays an empty directory. */
        if (make_dir(options->run_dir, 0700, err) < 0 || make_dir(runtime->sandboxes_dir, 0700, err) < 0 ||
            make_dir(runtime->rootfs_mountpoint, 0700, err) < 0)
                goto fail;

        if (moat_cgroup_runtime_detect(runtime, options->cgroup_parent, err) < 0)
                goto fail;
        if (moat_seccomp_build(&runtime->seccomp_program, err) < 0)
                goto fail;
        runtime->init_memfd = load_init_memfd(options->init_path, err);
        if (runtime->init_memfd < 0)
                goto fail;
        runtime->last_capability = read_last_capability();

        *ret_runtime = runtime;
        return 0;
fail:
        moat_cell_runtime_free(runtime);
        return -1;
}

void moat_cell_runtime_free(struct moat_cell_runtime *runtime)
{
        if (!runtime)
                return;
        if (runtime->init_memfd >= 0)
                close(runtime->init_memfd);
        moat_cgroup_remove_bases(runtime);
        moat_seccomp_free(&runtime->seccomp_program);
        free(runtime);
}

const char *moat_cell_runtime_cgroup_version(const struct moat_cell_runtime *runtime)
{
        return runtime && runtime->cgroup_version == MOAT_CGROUP_V2 ? "v2" : "v1";
}
