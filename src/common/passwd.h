/* A small reader of the sandbox's /etc/passwd and /etc/group.
 *
 * moat-init resolves the user of a spawned process in the forked child, between
 * fork() and execve(), where nothing may allocate (style.md). So this parser
 * uses fixed buffers only, streams the file line by line, and reports failure
 * as a negative errno instead of a struct moat_error.
 *
 * The files belong to the workload (sandbox root can rewrite them), so every
 * line is untrusted: malformed or over-long lines are skipped, numbers are
 * parsed strictly, and a file that is not a regular file (a FIFO planted to
 * block us, a device) is treated as missing. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define MOAT_PASSWD_SPEC_MAX 256
#define MOAT_PASSWD_NAME_MAX 256
#define MOAT_PASSWD_HOME_MAX 1024
#define MOAT_PASSWD_GROUPS_MAX 256 /* supplementary groups beyond this are ignored */

struct moat_passwd_user {
        uid_t uid;
        gid_t gid;
        bool known; /* the user has a passwd entry (or is root): name and home are set */
        char name[MOAT_PASSWD_NAME_MAX];
        char home[MOAT_PASSWD_HOME_MAX];
};

/* Resolve a user spec: "" or "root" (0:0), a name from passwd_path, a numeric
 * "uid", or "user:gid" where user is a name or a uid and gid is numeric (it
 * overrides the passwd group). A uid without a passwd entry gets gid 0 and
 * home "/", like runc. Returns 0, -ENOENT (name not found) or -EINVAL (spec
 * malformed or too long). */
int moat_passwd_resolve_user(const char *passwd_path, const char *spec, struct moat_passwd_user *ret_user);

/* The groups to set with setgroups(): the primary gid first, then every group
 * of group_path that lists `name` as a member, without duplicates, at most
 * MOAT_PASSWD_GROUPS_MAX. A missing group file yields just the primary gid.
 * Returns the count (>= 1). */
size_t moat_passwd_user_groups(const char *group_path, const char *name, gid_t primary,
                               gid_t ret_groups[MOAT_PASSWD_GROUPS_MAX]);

/* Strict decimal id: digits only, no sign, fits 32 bits, not (uint32)-1.
 * Returns 0 or -EINVAL. Exposed for tests. */
int moat_passwd_parse_id(const char *s, unsigned int *ret_id);
