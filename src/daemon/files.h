/* File operations on a running sandbox, done by moatd itself (no code runs
 * inside the sandbox) through a directory fd of the sandbox's root:
 * /proc/<init pid>/root. Every path is resolved by the kernel with
 * openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) relative to that fd, so
 * symlinks are interpreted inside the sandbox's root, `..` stops at it, and a
 * symlink swapped between two steps cannot redirect an operation to the
 * host: there is no "check, then use" by path anywhere in this file.
 *
 * Operations on a name (mkdir, unlink, rename, chmod) open the parent with
 * RESOLVE_IN_ROOT and act with *at() calls on the final component, never
 * following a symlink there.
 *
 * Errors use the shared kinds: invalid_argument for bad paths, not_found,
 * conflict with codes is_a_directory / not_a_directory / already_exists /
 * not_empty, limit_exceeded with code disk_full when the sandbox's writable
 * layer (a tmpfs of its disk size) is full. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <jansson.h>

#include "common/error.h"

#define FILES_PATH_MAX 4096
#define FILES_LIST_ENTRIES_MAX 100000
#define FILES_LIST_DEPTH_MAX 16
#define FILES_UPLOAD_ID_MAX 64

struct sandbox;
struct event_base;

/* The owner of files that an operation creates, in host ids. */
struct files_owner {
        uid_t uid;
        gid_t gid;
};

/* A path from a client: absolute, non-empty, at most FILES_PATH_MAX bytes.
 * (A NUL cannot reach here inside a C string; the API checks the decoded
 * length against strlen.) */
int files_path_check(const char *path, struct moat_error **err);

/* O_PATH fd of the running sandbox's root directory. Fails with conflict
 * sandbox_not_running if the sandbox has no live init. */
int files_root_open(struct sandbox *sandbox, struct moat_error **err);

/* Resolve `user` (NULL: the sandbox's configured user, else root) with the
 * sandbox's own /etc/passwd, read through root_fd, into host ids. */
int files_owner_resolve(struct sandbox *sandbox, int root_fd, const char *user, struct files_owner *ret_owner,
                        struct moat_error **err);

/* Whether fd is on a kernel filesystem (procfs, sysfs, cgroupfs, ...),
 * which the files API never reads, writes or descends into. */
bool files_on_kernel_filesystem(int fd);

/* openat2 under the sandbox root (a kernel filesystem is refused with 409
 * kernel_filesystem). Returns the fd. */
int files_open(int root_fd, const char *path, int flags, mode_t mode, struct moat_error **err);

/* The file to read: a regular file opened O_RDONLY (is_a_directory otherwise). */
int files_open_for_read(int root_fd, const char *path, struct moat_error **err);

json_t *files_stat(int root_fd, const char *path, uint32_t id_base, struct moat_error **err);
/* {"entries":[...]}, each entry a stat object plus "path". */
json_t *files_list(int root_fd, const char *path, unsigned depth, uint32_t id_base, struct moat_error **err);
int files_mkdir(int root_fd, const char *path, bool parents, mode_t mode, const struct files_owner *owner,
                struct moat_error **err);
/* `actor`: the identity the change is made as (see files.c: the kernel
 * refuses changes by an id the sandbox's filesystems cannot map); the
 * sandbox's root: files_owner_resolve(sandbox, root_fd, "root", ...). */
int files_remove(int root_fd, const char *path, bool recursive, const struct files_owner *actor,
                 struct moat_error **err);
int files_move(int root_fd, const char *from, const char *to, bool overwrite, const struct files_owner *actor,
               struct moat_error **err);
int files_chmod(int root_fd, const char *path, mode_t mode, const struct files_owner *actor, struct moat_error **err);

/* One chunk of an upload. offset 0 starts the temp file (truncating it),
 * later chunks must start at its size (conflict offset_mismatch otherwise);
 * `final` renames the temp onto the path. With `append` the data is appended
 * to the target itself (no temp; partial data stays on failure). A write
 * that fills the disk removes the temp. Returns the bytes the file now holds
 * (the upload's size so far). */
struct files_write {
        const char *path;
        const char *upload_id; /* [A-Za-z0-9_-]{1,64} */
        uint64_t offset;
        bool final;
        bool append;
        bool make_dirs;
        mode_t mode;
        const struct files_owner *owner;
};
/* The data is `count` pieces (the request body as libevent holds it,
 * written without copying it together first). */
int64_t files_write_chunk(struct sandbox *sandbox, int root_fd, const struct files_write *write,
                          const struct iovec *pieces, size_t count, struct moat_error **err);

/* Uploads that were started and not finished: swept after
 * FILES_UPLOAD_STALE_S of inactivity. */
#define FILES_UPLOAD_STALE_S 600
void files_uploads_sweep(struct event_base *base);

/* Extract a tar archive (in memory) beneath the directory `path`. Regular
 * files, directories and symlinks only; every entry is created fd-relative to
 * the directory with RESOLVE_BENEATH, so no entry lands outside it. */
int files_archive_extract(int root_fd, const char *path, const void *data, size_t length,
                          const struct files_owner *owner, struct moat_error **err);

/* The error for an errno of an operation on `path`. Returns -1. */
int files_error_from_errno(struct moat_error **err, int errno_value, const char *operation, const char *path);
