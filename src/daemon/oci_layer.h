/* Applying one OCI/Docker image layer (a tar, plain, gzip or zstd) into an
 * empty directory of the image store, in overlayfs format, without ever
 * writing outside that directory. Also the outer `docker save` / OCI layout
 * archive, extracted with the same safety rules. */
#pragma once
#include <stdint.h>

#include "common/error.h"

/* Error codes (struct moat_error.code) set here. */
#define OCI_ERROR_BAD_LAYER "bad_layer"       /* unsafe or malformed entry, corrupt data */
#define OCI_ERROR_LAYER_TOO_LARGE "limit_exceeded"

/* Hard bounds on what one layer may hold. */
#define OCI_LAYER_MAX_ENTRIES 1000000
#define OCI_LAYER_MAX_PATH 4095

struct oci_layer_result {
        char diff_id[65]; /* sha256 hex of the uncompressed tar stream */
        char digest[65];  /* sha256 hex of the bytes read from fd (as stored/sent) */
        uint64_t size;    /* bytes of regular-file data written */
        uint64_t entries; /* tar entries applied */
};

/* Apply the layer read from fd (to its end) into dir, an EMPTY directory the
 * caller created inside the store. Converts OCI whiteouts to overlayfs ones:
 * ".wh.NAME" becomes a character device 0:0 "NAME"; ".wh..wh..opq" in D
 * becomes the xattr user.overlay.opaque="y" on D (our overlays mount with
 * userxattr). Keeps mode (setuid included: overlays mount nosuid), numeric
 * uid/gid, mtime, and the xattrs user.* (but not user.overlay.*) and
 * security.capability; drops every other xattr.
 *
 * Entries: regular files, directories, symlinks (stored, never followed),
 * hardlinks to earlier entries of the same layer, fifos, whiteouts. Refused
 * with "bad_layer": absolute paths, ".." components, a parent reached through
 * a symlink, hardlink targets that are absolute / have ".." / go through a
 * symlink, device nodes, sockets, an empty or corrupt stream.
 *
 * On failure dir may hold a partial tree: the caller removes it. Nothing is
 * ever created or changed outside dir. result is filled only on success. */
int oci_layer_apply(int fd, const char *dir, struct oci_layer_result *result, struct moat_error **err);
/* The same, refusing (limit_exceeded) once more than max_size bytes of file
 * data (sparse holes included) would be written: a small gzip blob can
 * decompress to terabytes. max_size 0: unbounded. */
int oci_layer_apply_limited(int fd, const char *dir, uint64_t max_size, struct oci_layer_result *result,
                            struct moat_error **err);

/* Extract an outer archive (`docker save` tar, or an OCI layout tar; plain,
 * gzip or zstd) into dir, an empty staging directory. Same path rules as
 * layers; no whiteout conversion; every file is owned by root with mode
 * masked to 0755 (no setuid), no xattrs; only regular files, directories,
 * symlinks and hardlinks are accepted. max_size as for
 * oci_layer_apply_limited (0: unbounded). */
int oci_archive_extract(const char *tar_path, const char *dir, uint64_t max_size, struct moat_error **err);
