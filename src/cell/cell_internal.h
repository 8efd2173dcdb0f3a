/* Internal interfaces between the files of src/cell. Not for moatd.
 *
 * Two kinds of functions live here:
 *  - parent side (moatd, may allocate, report with struct moat_error);
 *  - child side (between clone3() and execveat(): must not allocate, must
 *    not take locks; they fill a fixed-size struct moat_child_report and
 *    return -1). Child-side functions are marked "child:". */
#pragma once
#include <linux/filter.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "cell.h"

enum moat_cgroup_version {
        MOAT_CGROUP_V1 = 1,
        MOAT_CGROUP_V2 = 2,
};

/* Which limits a hierarchy carries (v1: one per mounted controller set;
 * v2: one hierarchy carrying all of them). */
enum moat_cgroup_role {
        MOAT_CGROUP_ROLE_MEMORY = 1u << 0,
        MOAT_CGROUP_ROLE_PIDS = 1u << 1,
        MOAT_CGROUP_ROLE_CPU = 1u << 2,
        MOAT_CGROUP_ROLE_CPUACCT = 1u << 3,
};

#define MOAT_CGROUP_HIERARCHY_MAX 4

struct moat_cgroup_hierarchy {
        unsigned roles;
        char base[PATH_MAX / 2]; /* absolute dir under which "<id>" is made */
        bool base_created;       /* made by this runtime: removed at shutdown if empty */
};

struct moat_cell_runtime {
        enum moat_cgroup_version cgroup_version;
        struct moat_cgroup_hierarchy hierarchies[MOAT_CGROUP_HIERARCHY_MAX];
        unsigned hierarchy_count;
        bool has_memsw;        /* v1: memory.memsw.* exists (swap accounting on) */
        bool has_kmem_tcp;     /* v1: memory.kmem.tcp.* exists (socket buffers capped) */
        bool has_cgroup_kill;  /* v2: cgroup.kill exists */
        bool has_memory_peak;  /* v2: memory.peak exists */

        char sandboxes_dir[256];     /* <run_dir>/sandboxes: control sockets */
        char rootfs_mountpoint[256]; /* <run_dir>/rootfs: empty dir each child mounts its tmpfs on */

        int init_memfd; /* sealed copy of moat-init, executed by every sandbox */

        struct sock_fprog seccomp_program; /* built once; the child only loads it */
        unsigned last_capability;          /* /proc/sys/kernel/cap_last_cap */
};

/* ---- the child's failure record ------------------------------------- */

enum moat_child_step {
        MOAT_STEP_SIGNALS = 1,
        MOAT_STEP_WAIT_PARENT,
        MOAT_STEP_CGROUP_NAMESPACE,
        MOAT_STEP_MOUNT_PRIVATE,
        MOAT_STEP_SCRATCH_TMPFS,
        MOAT_STEP_IDENTITY,
        MOAT_STEP_OVERLAY,
        MOAT_STEP_HOST_USR,
        MOAT_STEP_PROC,
        MOAT_STEP_DEV,
        MOAT_STEP_SYS,
        MOAT_STEP_TMP,
        MOAT_STEP_ETC_FILES,
        MOAT_STEP_LOOPBACK,
        MOAT_STEP_HOSTNAME,
        MOAT_STEP_PIVOT_ROOT,
        MOAT_STEP_MASK_PATHS,
        MOAT_STEP_STDIO,
        MOAT_STEP_CAPABILITIES,
        MOAT_STEP_NO_NEW_PRIVS,
        MOAT_STEP_SECCOMP,
        MOAT_STEP_EXEC,
};

/* Sent by the child over the sync socket when a step fails; then it _exit()s.
 * Fixed size so it is one SOCK_SEQPACKET message and needs no allocation. */
struct moat_child_report {
        int32_t step;
        int32_t errno_value;
        char syscall[32];
        char path[224];
};

const char *moat_child_step_name(int step);

/* child: fill the report (bounded copies, no allocation) and return -1. */
int moat_child_fail(struct moat_child_report *report, int step, int errno_value,
                    const char *syscall_name, const char *path);

/* child: append text / an unsigned number to a fixed buffer; always
 * NUL-terminates; returns false if it did not fit. */
bool moat_child_append(char *buffer, size_t size, const char *text);
bool moat_child_append_unsigned(char *buffer, size_t size, unsigned long long value);

/* ---- everything the child needs, prepared by the parent before clone ----- */

#define MOAT_OVERLAY_OPTIONS_MAX 2048

struct moat_child_plan {
        const struct moat_cell_runtime *runtime;
        const struct moat_cell_config *config;
        int sync_fd;    /* the child's end of the sync socketpair */
        int control_fd; /* listening control socket handed to init */
        int sysfs_fd;   /* join_netns: a detached sysfs of that namespace, or -1 */

        char scratch_tmpfs_options[96];
        char overlay_options[MOAT_OVERLAY_OPTIONS_MAX];
        char hosts[256];
        char hostname_file[80];

        char control_fd_text[16];
        const char *init_argv[4];
        const char *init_envp[2];
};

/* rootfs.c, child. In order: make the copied mount tree private and mount
 * the scratch tmpfs (returns its fd; done while still host uid 0 so the
 * root-only run dir can be walked); build the tree under it (overlay over
 * the idmapped lowers, /usr, /proc, /dev, /sys, /tmp, /etc files; returns
 * the new root's fd); pivot_root into it; mask /proc and /sys paths. */
int moat_rootfs_mount_scratch(const struct moat_child_plan *plan, struct moat_child_report *report);
int moat_rootfs_build(const struct moat_child_plan *plan, int scratch_fd, const int *mount_fds,
                      unsigned mount_fd_count, struct moat_child_report *report);
int moat_rootfs_pivot(int root_fd, struct moat_child_report *report);
int moat_rootfs_mask_paths(struct moat_child_report *report);
/* rootfs.c, parent: the strings the child needs, formatted before clone. */
int moat_rootfs_build_plan(struct moat_child_plan *plan, struct moat_error **err);

/* child.c: the child's ordered checklist; never returns. */
/* The first message of every child on the sync socket: "I run; send go". */
#define MOAT_CHILD_READY 'R'
/* The parent's last message: the control socket listens; exec init. */
#define MOAT_CHILD_LISTENING 'L'
/* child -> parent, with the scratch tmpfs's fd (SCM_RIGHTS): moatd reads the
 * sandbox's writable layer through it (snapshots). */
#define MOAT_CHILD_SCRATCH 'S'

__attribute__((noreturn)) void moat_child_main(const struct moat_child_plan *plan);

/* cgroup.c: remove the bases this runtime made, if empty (shutdown). */
void moat_cgroup_remove_bases(struct moat_cell_runtime *runtime);

/* network.c, child: bring up "lo" in the new network namespace. */
int moat_network_loopback_up(struct moat_child_report *report);

/* capabilities.c, child: reduce every capability set to the sandbox set. */
int moat_capabilities_drop(unsigned last_capability, struct moat_child_report *report);
extern const char *const moat_capabilities_kept_names[];

/* rlimits.c, parent: applied with prlimit() to the not-yet-running child,
 * because inside a user namespace the child could not raise a hard limit. */
int moat_rlimits_apply(pid_t pid, struct moat_error **err);

/* seccomp.c */
int moat_seccomp_build(struct sock_fprog *ret_program, struct moat_error **err);
void moat_seccomp_free(struct sock_fprog *program);
int moat_seccomp_load(const struct sock_fprog *program, struct moat_child_report *report); /* child */

/* userns.c, parent: write uid_map/gid_map of the child. */
int moat_userns_write_maps(pid_t pid, uid_t host_id_base, uint32_t id_count, struct moat_error **err);

/* idmap.c, parent: a detached, read-only, idmapped clone of the tree at
 * path, mapped through the user namespace userns_fd. */
int moat_idmap_open_tree(const char *path, int userns_fd, struct moat_error **err);

/* cgroup.c, parent */
int moat_cgroup_runtime_detect(struct moat_cell_runtime *runtime, const char *cgroup_parent,
                               struct moat_error **err);
int moat_cgroup_create(struct moat_cell *cell, const struct moat_cell_config *config, struct moat_error **err);
int moat_cgroup_attach(const struct moat_cell *cell, pid_t pid, struct moat_error **err);
/* SIGKILL everything in the cell's cgroups (v2: cgroup.kill; v1: each
 * listed pid). Does not wait. */
void moat_cgroup_kill(const struct moat_cell *cell);
int moat_cgroup_remove(struct moat_cell *cell, struct moat_error **err);
int moat_cgroup_read_stats(const struct moat_cell *cell, struct moat_cell_stats *stats, struct moat_error **err);
/* Fill cell->cgroup_paths for id without creating anything. */
int moat_cgroup_paths(struct moat_cell *cell, const char *id, struct moat_error **err);
/* v2 with CLONE_INTO_CGROUP: an O_DIRECTORY fd of the cell's cgroup, or -1. */
int moat_cgroup_open_v2(const struct moat_cell *cell, struct moat_error **err);

/* Small file helpers shared by the parent side. */
int moat_write_file(const char *path, const char *text, struct moat_error **err);
int moat_write_file_at(int dir_fd, const char *name, const char *text, struct moat_error **err);
int moat_read_file(const char *path, char *buffer, size_t size, struct moat_error **err);
