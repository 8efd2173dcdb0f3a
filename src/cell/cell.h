/* The isolation cell: everything between "moatd decided to create a sandbox"
 * and "moat-init runs as PID 1 inside it", and the teardown after. Knows
 * nothing of HTTP, JSON or SQLite.
 *
 * Threading: moat_cell_runtime_init() once at start-up on the main thread.
 * moat_cell_create() and moat_cell_destroy() block for milliseconds and are
 * meant for a worker thread; they are safe to call concurrently. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/error.h"

struct moat_cell_runtime; /* process-wide: cgroup layout, seccomp program, init binary */

struct moat_cell_runtime_options {
        const char *init_path;     /* the static moat-init binary to run as PID 1 */
        const char *run_dir;       /* e.g. /run/moat: per-sandbox control sockets live here */
        const char *cgroup_parent; /* NULL: "<moatd's own cgroup>/moat" per hierarchy */
};

int moat_cell_runtime_init(const struct moat_cell_runtime_options *options,
                           struct moat_cell_runtime **ret_runtime, struct moat_error **err);
void moat_cell_runtime_free(struct moat_cell_runtime *runtime);
/* "v1" or "v2": which cgroup layout the runtime detected. */
const char *moat_cell_runtime_cgroup_version(const struct moat_cell_runtime *runtime);

#define MOAT_CELL_LOWER_MAX 64
#define MOAT_CELL_BIND_MAX 16

/* A directory of the host (a volume's data dir) mounted into the sandbox at
 * target through an idmapped clone: ids stored 0..65535 on disk appear as
 * the same ids inside every sandbox, whatever host range each one uses. */
struct moat_cell_bind {
        const char *source_dir;
        const char *target; /* absolute, normalized; created inside the new root */
        bool read_only;
};

struct moat_cell_config {
        const char *id;       /* sandbox id: names the cgroup and the control socket */
        const char *hostname; /* <= 64 bytes */
        /* Read-only image layers, top-most first, each a directory holding a root
         * filesystem. Presented through idmapped mounts so files owned by host
         * root appear owned by sandbox root. */
        const char *lowers[MOAT_CELL_LOWER_MAX];
        unsigned lower_count;
        bool bind_host_usr; /* the `host` image: host /usr read-only over /usr */
        struct moat_cell_bind binds[MOAT_CELL_BIND_MAX]; /* volumes, mounted last, in order */
        unsigned bind_count;
        uint64_t memory_bytes; /* memory limit; swap is not allowed beyond it */
        uint64_t disk_bytes;   /* size of the private writable layer */
        uint32_t pids_max;
        uint32_t cpu_millis;   /* CPU quota in thousandths of a core; 0 = unlimited */
        /* Join this network namespace instead of making one (moatd makes it,
         * so the host, not the sandbox, owns it: see src/daemon/netns.h).
         * Its loopback must already be up. */
        bool join_netns;
        int netns_fd;
        uid_t host_id_base;    /* sandbox uid/gid 0 maps to this host id */
        uint32_t id_count;     /* ... and this many ids are mapped (65536) */
};

/* Where moat_cell_create() spent its time, in microseconds: moatd logs it
 * at debug level, so a slow create can be explained without a profiler. */
struct moat_cell_timings {
        uint32_t cgroup_us;      /* cgroups made, limits written */
        uint32_t setup_us;       /* control socket, child plan, sync pair */
        uint32_t child_us;       /* clone3 until the child exec'd init: its whole checklist */
        uint32_t parent_half_us; /* of which the parent's half: id maps, cgroup attach, idmapped mounts */
        uint32_t confirm_us;     /* reading the exec confirmation */
};

struct moat_cell {
        char id[64];
        pid_t pid;    /* host pid of moat-init (PID 1 of the sandbox) */
        int pidfd;    /* pollable: readable once init has exited */
        char control_path[256]; /* unix socket init listens on */
        bool control_bound;     /* control_path exists and is this cell's */
        /* O_PATH fd of the sandbox's scratch tmpfs: "upper" in it is the
         * sandbox's writable layer (see moat_cell_upper_open). -1 if none. */
        int scratch_fd;
        struct moat_cell_runtime *runtime;
        char cgroup_paths[4][256]; /* per hierarchy; [0] only on v2 */
        unsigned cgroup_count;
        bool reaped;
        int exit_status; /* wait status of init once reaped */
        struct moat_cell_timings timings;
};

/* Build the sandbox and start moat-init in it. On success init is running
 * and listening on cell->control_path. On failure nothing is left behind. */
int moat_cell_create(struct moat_cell_runtime *runtime, const struct moat_cell_config *config,
                     struct moat_cell **ret_cell, struct moat_error **err);

/* SIGKILL every process in the sandbox (init first: the kernel then kills the
 * whole pid namespace). Never blocks. Safe to call repeatedly. */
void moat_cell_kill(struct moat_cell *cell);

/* Reap init if it has exited (non-blocking). Returns true once reaped. */
bool moat_cell_try_reap(struct moat_cell *cell);

/* Kill, reap, wait for the cgroup to empty, remove the cgroups, the control
 * socket. Blocks (bounded, a few ms). Frees the cell. */
int moat_cell_destroy(struct moat_cell *cell, struct moat_error **err);

/* A directory fd of the sandbox's writable overlay layer (its changes to the
 * image: new and changed files, whiteouts for deletions), for moatd to read.
 * Its contents are the sandbox's: walk it without following symlinks. */
int moat_cell_upper_open(const struct moat_cell *cell, struct moat_error **err);

struct moat_cell_stats {
        uint64_t memory_current, memory_peak; /* bytes */
        uint64_t cpu_usage_ns;
        uint64_t oom_kills; /* processes killed by the OOM killer in this cell */
        uint32_t pids_current;
};
int moat_cell_read_stats(const struct moat_cell *cell, struct moat_cell_stats *stats, struct moat_error **err);

/* Remove leftovers of a sandbox this daemon no longer tracks (after a crash):
 * kill its cgroups' processes and remove them, and the control socket. */
int moat_cell_reap_orphan(struct moat_cell_runtime *runtime, const char *id, struct moat_error **err);
