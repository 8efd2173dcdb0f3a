/* Copy a directory tree from one directory fd to another, never following a
 * symlink and never leaving either tree, while computing a digest of what
 * was copied (paths in sorted order, types, modes, owners, sizes, contents,
 * link targets): the content address of a layer. The source may be a tree a
 * sandbox controls and is changing while we read (its writable layer); every
 * step is an *at() call relative to a directory fd we opened ourselves with
 * O_NOFOLLOW, so a path swapped for a symlink mid-walk leads nowhere. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/error.h"

struct tree_copy_options {
        /* Owners in the source are host ids base..base+count-1 (a sandbox's
         * mapping); they are written as 0..count-1. Ids outside the range
         * become 65534. count 0: copy owners unchanged. */
        uid_t id_base;
        uint32_t id_count;
};

struct tree_copy_result {
        char digest[65]; /* sha256 hex */
        uint64_t bytes;  /* of regular files */
        uint64_t entries;
};

/* Overlay whiteouts (character devices 0:0) are copied as whiteouts, and the
 * user.overlay.opaque xattr of directories is kept; other device nodes are
 * skipped (a layer holds files, not handles on hardware). */
int tree_copy(int source_dir_fd, int target_dir_fd, const struct tree_copy_options *options,
              struct tree_copy_result *result, struct moat_error **err);

/* One regular file, source_dir_fd/name to target_dir_fd/target_name (which
 * must not exist), with the digest of just that file (the path hashed is
 * name). Not a regular file: an error. */
int tree_copy_file(int source_dir_fd, const char *name, int target_dir_fd, const char *target_name,
                   const struct tree_copy_options *options, struct tree_copy_result *result, struct moat_error **err);
