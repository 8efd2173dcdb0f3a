/* Host checks: can this kernel and this process host moat sandboxes?
 * `moat doctor` prints them; moatd runs them at start and refuses to start,
 * with the same text, when any fails. Every probe runs in a forked child so
 * nothing it creates (namespaces, mounts, cgroups) outlives it; the whole run
 * takes tens of milliseconds. No HTTP, JSON or SQLite here (cell/ rule). */
#pragma once
#include <stddef.h>
#include <stdio.h>

enum moat_hostcheck_status {
        MOAT_HOSTCHECK_OK,
        MOAT_HOSTCHECK_WARN, /* works, but degraded or worth knowing */
        MOAT_HOSTCHECK_FAIL, /* moatd cannot run sandboxes */
};

struct moat_hostcheck {
        const char *name;   /* stable, e.g. "user_namespaces" */
        enum moat_hostcheck_status status;
        char detail[256];   /* what was found */
        char fix[512];      /* the exact command or setting that fixes it; empty when ok */
};

/* Enough room for every check moat_hostcheck_run performs. */
#define MOAT_HOSTCHECK_MAX 16

/* Run all checks into checks[0..capacity); *ret_count is how many were
 * written. Returns the number of failed checks (0: the host is usable). */
int moat_hostcheck_run(struct moat_hostcheck *checks, size_t capacity, size_t *ret_count);

const char *moat_hostcheck_status_name(enum moat_hostcheck_status status);

/* The human report, one block per check:
 *   ok    user_namespaces   user namespaces work (probe: uid_map written)
 *   FAIL  cgroups           ...
 *         fix: sysctl -w ...
 * Used verbatim by `moat doctor` and by moatd's refusal to start. */
void moat_hostcheck_print(FILE *out, const struct moat_hostcheck *checks, size_t count);
