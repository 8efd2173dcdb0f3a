/* Volumes: named, persistent, size-limited filesystems that outlive the
 * sandboxes which mount them. Each is an ext4 image file attached to a loop
 * device and mounted under the data dir; sandboxes get an idmapped clone of
 * its `data` directory (see src/cell/rootfs.c), moatd reads and writes the
 * same directory for the files API of a volume.
 *
 *   <data>/volumes/<name>/volume.json  {name, size_mib, created_at}: the registry
 *   <data>/volumes/<name>/disk.img     sparse ext4 image, its size = the limit
 *   <data>/volumes/<name>/mnt          where it is mounted (nosuid, nodev)
 *   <data>/volumes/<name>/mnt/data     the directory sandboxes and clients see
 *
 * The records live on the loop thread only. Attaching (mkfs, loop, mount)
 * blocks for tens of milliseconds and is done in place: a volume create is
 * rare and bounded (see docs). */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "daemon.h"

#define VOLUME_NAME_MAX 63
#define VOLUME_SIZE_MIB_DEFAULT 1024u
#define VOLUME_SIZE_MIB_MAX 1048576u
#define VOLUME_COUNT_MAX 1024u

struct volume {
        struct volume *next;
        char name[VOLUME_NAME_MAX + 1];
        uint32_t size_mib;
        int64_t created_at; /* ms since the epoch */
        char dir[1280];       /* <data>/volumes/<name> (the data dir is at most 1024 bytes) */
        char data_path[1296]; /* <dir>/mnt/data: what a sandbox mounts */
        int data_fd;          /* O_PATH directory fd of data_path: the root of every outside access */
};

/* [a-z0-9][a-z0-9_.-]{0,62}, and not containing "..". */
bool volume_name_valid(const char *name);

/* Start-up: attach and mount every volume under <data_dir>/volumes (reusing a
 * mount a crashed moatd left), remove half-made ones. */
int volume_registry_load(struct moatd *daemon, struct moat_error **err);
/* Exit: unmount every volume (its loop device detaches itself). */
void volume_registry_close(struct moatd *daemon);

/* NULL with a 404 volume_not_found error if there is none. */
struct volume *volume_find(const char *name, struct moat_error **err);
/* The first record (then ->next), for listing. */
struct volume *volume_list_head(void);

/* Make, attach and mount a new volume. 409 volume_exists, 400 for a bad
 * name or size. */
struct volume *volume_create(struct moatd *daemon, const char *name, uint32_t size_mib, struct moat_error **err);
/* Unmount, detach, remove. 409 volume_in_use while a sandbox that is not
 * torn down mounts it. */
int volume_delete(struct moatd *daemon, const char *name, struct moat_error **err);

/* {name, size_mib, created_at, used_bytes} */
json_t *volume_to_json(const struct volume *volume);

/* Resolve path (absolute, as a client names it inside the volume) below the
 * volume's data directory with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS):
 * a symlink in the volume resolves inside the volume, never on the host. */
int volume_open(const struct volume *volume, const char *path, int flags, mode_t mode, struct moat_error **err);
/* Split path into its parent (opened as a directory, as above) and its last
 * component, copied into name (which must not be "." or ".."). */
int volume_open_parent(const struct volume *volume, const char *path, char name[256], struct moat_error **err);
