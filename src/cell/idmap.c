/* Idmapped mounts: image layers (and host /usr) are stored owned as in the
 * image, root = host uid 0. A detached clone of the tree, idmapped through
 * the sandbox's user namespace, shows those files owned by sandbox root
 * without copying or chowning anything, and is read-only, nosuid and nodev.
 * Defends against: a sandbox writing to a shared layer (read-only mount, and
 * the overlay sends writes to the private upper), setuid or device files in
 * a layer acting on the host's ids. */
#include <errno.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../common/cleanup.h"
#include "cell_internal.h"

int moat_idmap_open_tree(const char *path, int userns_fd, struct moat_error **err)
{
        _cleanup_close_ int tree = -1;
        struct mount_attr attr = {
                .attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                .userns_fd = (uint64_t)userns_fd,
        };

        tree = (int)syscall(SYS_open_tree, AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
        if (tree < 0)
                return moat_error_system(err, errno, "open_tree `%s`", path);
        /* Recursive: every mount below path gets the same treatment, or the
         * call fails (for example a filesystem without idmap support); we
         * then fail rather than present a layer with the host's ownership. */
        if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof(attr)) < 0)
                return moat_error_set(err, MOAT_ERROR_SYSTEM, errno, "idmap_unsupported",
                                      "mount_setattr(MOUNT_ATTR_IDMAP) `%s`", path);
        return TAKE_FD(tree);
}
