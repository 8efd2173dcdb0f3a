/* Resource limits through cgroups, v2 where the host is pure cgroup2, v1
 * otherwise (detected at run time). Each sandbox gets one cgroup per
 * hierarchy: "<base>/<id>", where base is "<moatd's own cgroup>/moat" or
 * "<options->cgroup_parent>". Sandboxes are never placed elsewhere in the
 * host's hierarchy, so moatd only ever touches the subtree it was given.
 *
 * Defends against: a sandbox exhausting host memory (memory limit, no swap
 * beyond it), fork bombs (pids.max), CPU starvation of the host (quota). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>
#include <linux/magic.h>

#include "../common/cleanup.h"
#include "cell_internal.h"

#define CGROUP_ROOT "/sys/fs/cgroup"
#define CPU_PERIOD_US 100000ULL

static const struct {
        const char *controller;
        unsigned role;
} v1_controllers[] = {
        { "memory", MOAT_CGROUP_ROLE_MEMORY },
        { "pids", MOAT_CGROUP_ROLE_PIDS },
        { "cpu", MOAT_CGROUP_ROLE_CPU },
        { "cpuacct", MOAT_CGROUP_ROLE_CPUACCT },
};

static int join_path(char *out, size_t size, const char *a, const char *b, struct moat_error **err)
{
        int n = snprintf(out, size, "%s%s%s", a, (b[0] == '/' || a[strlen(a) - 1] == '/') ? "" : "/", b);
        if (n < 0 || (size_t)n >= size)
                return moat_error_invalid(err, "cgroup path `%s/%s` is too long", a, b);
        return 0;
}

static int make_dir(const char *path, struct moat_error **err)
{
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
                return moat_error_system(err, errno, "mkdir `%s`", path);
        return 0;
}

/* The base under which sandbox cgroups are made; remembered if we made it,
 * so that a clean shutdown removes it again (moat_cgroup_remove_bases). */
static int make_base(struct moat_cgroup_hierarchy *h, struct moat_error **err)
{
        if (mkdir(h->base, 0755) == 0) {
                h->base_created = true;
                return 0;
        }
        if (errno != EEXIST)
                return moat_error_system(err, errno, "mkdir `%s`", h->base);
        return 0;
}

void moat_cgroup_remove_bases(struct moat_cell_runtime *runtime)
{
        /* Only if empty: rmdir refuses a cgroup with children or tasks. */
        for (unsigned i = 0; i < runtime->hierarchy_count; i++)
                if (runtime->hierarchies[i].base_created)
                        rmdir(runtime->hierarchies[i].base);
}

/* Does a comma-separated option list contain word? */
static bool options_have(const char *options, const char *word)
{
        size_t length = strlen(word);
        for (const char *p = options; p && *p;) {
                const char *comma = strchr(p, ',');
                size_t n = comma ? (size_t)(comma - p) : strlen(p);
                if (n == length && strncmp(p, word, n) == 0)
                        return true;
                p = comma ? comma + 1 : NULL;
        }
        return false;
}

/* Our own cgroup path in the hierarchy whose /proc/self/cgroup controller
 * field is exactly `controllers` ("" for the v2 line). */
static int own_cgroup_path(const char *controllers, char *out, size_t size, struct moat_error **err)
{
        _cleanup_fclose_ FILE *f = fopen("/proc/self/cgroup", "re");
        char line[4096];

        if (!f)
                return moat_error_system(err, errno, "open `/proc/self/cgroup`");
        while (fgets(line, sizeof(line), f)) {
                char *first = strchr(line, ':'), *second;
                if (!first)
                        continue;
                second = strchr(first + 1, ':');
                if (!second)
                        continue;
                *second = '\0';
                if (strcmp(first + 1, controllers) != 0)
                        continue;
                second[1 + strcspn(second + 1, "\n")] = '\0';
                if ((size_t)snprintf(out, size, "%s", second + 1) >= size)
                        return moat_error_invalid(err, "own cgroup path is too long");
                return 0;
        }
        return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, "cgroup_unavailable",
                              "no `%s` line in /proc/self/cgroup", controllers[0] ? controllers : "0::");
}

static int detect_v2(struct moat_cell_runtime *runtime, const char *cgroup_parent, struct moat_error **err)
{
        struct moat_cgroup_hierarchy *h = &runtime->hierarchies[0];
        char own[PATH_MAX / 2], own_dir[PATH_MAX / 2], path[PATH_MAX];

        runtime->cgroup_version = MOAT_CGROUP_V2;
        runtime->hierarchy_count = 1;
        h->roles = MOAT_CGROUP_ROLE_MEMORY | MOAT_CGROUP_ROLE_PIDS | MOAT_CGROUP_ROLE_CPU | MOAT_CGROUP_ROLE_CPUACCT;

        if (cgroup_parent) {
                if (join_path(h->base, sizeof(h->base), CGROUP_ROOT, cgroup_parent, err) < 0 ||
                    make_base(h, err) < 0)
                        return -1;
        } else {
                if (own_cgroup_path("", own, sizeof(own), err) < 0 ||
                    join_path(own_dir, sizeof(own_dir), CGROUP_ROOT, own, err) < 0)
                        return -1;
                /* "No internal processes": a cgroup that distributes
                 * controllers to children may not hold processes itself, so
                 * moatd moves into a leaf of its own before enabling them. */
                if (join_path(path, sizeof(path), own_dir, "moatd", err) < 0 || make_dir(path, err) < 0)
                        return -1;
                if (join_path(path, sizeof(path), path, "cgroup.procs", err) < 0 ||
                    moat_write_file(path, "0", err) < 0)
                        return moat_error_wrap(err, "move moatd into its own leaf cgroup");
                if (join_path(path, sizeof(path), own_dir, "cgroup.subtree_control", err) < 0 ||
                    moat_write_file(path, "+memory +pids +cpu", err) < 0)
                        return moat_error_wrap(err, "enable cgroup controllers");
                if (join_path(h->base, sizeof(h->base), own_dir, "moat", err) < 0 || make_base(h, err) < 0)
                        return -1;
        }
        if (join_path(path, sizeof(path), h->base, "cgroup.subtree_control", err) < 0 ||
            moat_write_file(path, "+memory +pids +cpu", err) < 0)
                return moat_error_wrap(err, "enable cgroup controllers for sandboxes");

        join_path(path, sizeof(path), h->base, "cgroup.kill", err);
        /* cgroup.kill lives in non-root cgroups only; probe a parent that
         * has it the same way a sandbox cgroup will. */
        runtime->has_cgroup_kill = access(path, F_OK) == 0;
        join_path(path, sizeof(path), h->base, "memory.peak", err);
        runtime->has_memory_peak = access(path, F_OK) == 0;
        return 0;
}

static int detect_v1(struct moat_cell_runtime *runtime, const char *cgroup_parent, struct moat_error **err)
{
        _cleanup_fclose_ FILE *f = fopen("/proc/self/mountinfo", "re");
        char line[4096];
        unsigned found = 0;

        runtime->cgroup_version = MOAT_CGROUP_V1;
        if (!f)
                return moat_error_system(err, errno, "open `/proc/self/mountinfo`");
        while (fgets(line, sizeof(line), f) && runtime->hierarchy_count < MOAT_CGROUP_HIERARCHY_MAX) {
                char root[PATH_MAX / 2], mountpoint[PATH_MAX / 2], fstype[32], super_options[512];
                char own[PATH_MAX / 2], controllers[128] = "";
                const char *relative;
                struct moat_cgroup_hierarchy *h;
                unsigned roles = 0;
                char *dash = strstr(line, " - ");

                if (!dash || sscanf(line, "%*s %*s %*s %2047s %2047s", root, mountpoint) != 2 ||
                    sscanf(dash + 3, "%31s %*s %511s", fstype, super_options) != 2 ||
                    strcmp(fstype, "cgroup") != 0)
                        continue;
                for (size_t i = 0; i < MOAT_ARRAY_SIZE(v1_controllers); i++) {
                        if (!options_have(super_options, v1_controllers[i].controller) ||
                            (found & v1_controllers[i].role))
                                continue;
                        roles |= v1_controllers[i].role;
                }
                if (!roles)
                        continue;
                /* /proc/self/cgroup names the hierarchy by all its controllers
                 * in the kernel's order, which is the super options' order. */
                controllers[0] = '\0';
                for (char *p = super_options; *p;) {
                        char *comma = strchr(p, ',');
                        size_t n = comma ? (size_t)(comma - p) : strlen(p);
                        bool is_controller = !(n == 2 && strncmp(p, "rw", 2) == 0) &&
                                             !(n == 2 && strncmp(p, "ro", 2) == 0) && strncmp(p, "name=", 5) != 0 &&
                                             !(n == 15 && strncmp(p, "clone_children", 14) == 0) &&
                                             strncmp(p, "release_agent=", 14) != 0 && strncmp(p, "noprefix", 8) != 0 &&
                                             strncmp(p, "xattr", 5) != 0 && strncmp(p, "cpuset_v2_mode", 14) != 0;
                        if (is_controller && n + strlen(controllers) + 2 < sizeof(controllers)) {
                                if (controllers[0])
                                        strcat(controllers, ",");
                                strncat(controllers, p, n);
                        }
                        if (!comma)
                                break;
                        p = comma + 1;
                }
                if (own_cgroup_path(controllers, own, sizeof(own), err) < 0)
                        return -1;

                h = &runtime->hierarchies[runtime->hierarchy_count];
                h->roles = roles;
                if (cgroup_parent) {
                        if (join_path(h->base, sizeof(h->base), mountpoint, cgroup_parent, err) < 0)
                                return -1;
                } else {
                        char own_dir[PATH_MAX / 2];
                        /* In a container the mount's root may be a sub-path
                         * of the hierarchy; our path is then below it. */
                        size_t root_length = strcmp(root, "/") == 0 ? 0 : strlen(root);
                        if (root_length && strncmp(own, root, root_length) != 0)
                                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, "cgroup_unavailable",
                                                      "own cgroup `%s` is outside the mounted `%s`", own,
                                                      mountpoint);
                        relative = own + root_length;
                        if (join_path(own_dir, sizeof(own_dir), mountpoint, relative[0] ? relative : "/", err) < 0 ||
                            join_path(h->base, sizeof(h->base), own_dir, "moat", err) < 0)
                                return -1;
                }
                if (make_base(h, err) < 0)
                        return -1;
                found |= roles;
                runtime->hierarchy_count++;
        }
        if ((found & (MOAT_CGROUP_ROLE_MEMORY | MOAT_CGROUP_ROLE_PIDS)) !=
            (MOAT_CGROUP_ROLE_MEMORY | MOAT_CGROUP_ROLE_PIDS))
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, "cgroup_unavailable",
                                      "the memory and pids cgroup controllers are required");
        for (unsigned i = 0; i < runtime->hierarchy_count; i++) {
                if (runtime->hierarchies[i].roles & MOAT_CGROUP_ROLE_MEMORY) {
                        char path[PATH_MAX];
                        join_path(path, sizeof(path), runtime->hierarchies[i].base, "memory.memsw.limit_in_bytes",
                                  err);
                        runtime->has_memsw = access(path, F_OK) == 0;
                        join_path(path, sizeof(path), runtime->hierarchies[i].base, "memory.kmem.tcp.limit_in_bytes",
                                  NULL);
                        runtime->has_kmem_tcp = access(path, F_OK) == 0;
                }
        }
        return 0;
}

int moat_cgroup_runtime_detect(struct moat_cell_runtime *runtime, const char *cgroup_parent,
                               struct moat_error **err)
{
        struct statfs st;

        if (cgroup_parent && (cgroup_parent[0] == '\0' || strstr(cgroup_parent, "..")))
                return moat_error_invalid(err, "cgroup_parent `%s` is not a plain path", cgroup_parent);
        if (statfs(CGROUP_ROOT, &st) < 0)
                return moat_error_system(err, errno, "statfs `%s`", CGROUP_ROOT);
        /* Pure v2 only: on a hybrid host the controllers live in v1. */
        if (st.f_type == CGROUP2_SUPER_MAGIC)
                return detect_v2(runtime, cgroup_parent, err);
        return detect_v1(runtime, cgroup_parent, err);
}

int moat_cgroup_paths(struct moat_cell *cell, const char *id, struct moat_error **err)
{
        const struct moat_cell_runtime *runtime = cell->runtime;

        for (unsigned i = 0; i < runtime->hierarchy_count; i++)
                if (join_path(cell->cgroup_paths[i], sizeof(cell->cgroup_paths[i]), runtime->hierarchies[i].base, id,
                              err) < 0)
                        return -1;
        cell->cgroup_count = runtime->hierarchy_count;
        return 0;
}

static int write_limit(const char *dir, const char *file, unsigned long long value, bool unlimited,
                       const char *unlimited_text, struct moat_error **err)
{
        char path[PATH_MAX], text[64];

        if (join_path(path, sizeof(path), dir, file, err) < 0)
                return -1;
        if (unlimited)
                snprintf(text, sizeof(text), "%s", unlimited_text);
        else
                snprintf(text, sizeof(text), "%llu", value);
        return moat_write_file(path, text, err);
}

static int apply_v1(const struct moat_cell *cell, unsigned index, const struct moat_cell_config *config,
                    struct moat_error **err)
{
        const struct moat_cell_runtime *runtime = cell->runtime;
        const char *dir = cell->cgroup_paths[index];
        unsigned roles = runtime->hierarchies[index].roles;
        bool no_memory_limit = config->memory_bytes == 0;

        if (roles & MOAT_CGROUP_ROLE_MEMORY) {
                if (write_limit(dir, "memory.limit_in_bytes", config->memory_bytes, no_memory_limit, "-1", err) < 0)
                        return -1;
                /* memsw = memory + swap: equal to the memory limit means no
                 * swap beyond it. Without swap accounting, discourage swap. */
                if (runtime->has_memsw) {
                        if (write_limit(dir, "memory.memsw.limit_in_bytes", config->memory_bytes, no_memory_limit,
                                        "-1", err) < 0)
                                return -1;
                } else {
                        struct moat_error *ignored = NULL;
                        write_limit(dir, "memory.swappiness", 0, false, "", &ignored);
                        moat_error_free(ignored);
                }
                /* v1 charges TCP socket buffers to a counter of their own,
                 * unlimited by default and outside memory.limit_in_bytes: a
                 * sandbox holding a few hundred loopback connections full
                 * could pin gigabytes of host memory (and stall every TCP
                 * user on the host at net.ipv4.tcp_mem). Capped at the memory
                 * limit; v2 counts socket memory in memory.max itself. */
                if (!no_memory_limit && runtime->has_kmem_tcp &&
                    write_limit(dir, "memory.kmem.tcp.limit_in_bytes", config->memory_bytes, false, "", err) < 0)
                        return -1;
        }
        if ((roles & MOAT_CGROUP_ROLE_PIDS) &&
            write_limit(dir, "pids.max", config->pids_max, config->pids_max == 0, "max", err) < 0)
                return -1;
        if ((roles & MOAT_CGROUP_ROLE_CPU) && config->cpu_millis) {
                if (write_limit(dir, "cpu.cfs_period_us", CPU_PERIOD_US, false, "", err) < 0 ||
                    write_limit(dir, "cpu.cfs_quota_us", config->cpu_millis * CPU_PERIOD_US / 1000, false, "", err) < 0)
                        return -1;
        }
        return 0;
}

static int apply_v2(const struct moat_cell *cell, const struct moat_cell_config *config, struct moat_error **err)
{
        const char *dir = cell->cgroup_paths[0];
        char path[PATH_MAX], text[64];

        if (write_limit(dir, "memory.max", config->memory_bytes, config->memory_bytes == 0, "max", err) < 0)
                return -1;
        /* No swap at all: the memory limit is the whole budget. */
        if (join_path(path, sizeof(path), dir, "memory.swap.max", err) < 0)
                return -1;
        if (access(path, F_OK) == 0 && moat_write_file(path, "0", err) < 0)
                return -1;
        if (write_limit(dir, "pids.max", config->pids_max, config->pids_max == 0, "max", err) < 0)
                return -1;
        if (config->cpu_millis) {
                snprintf(text, sizeof(text), "%llu %llu", config->cpu_millis * CPU_PERIOD_US / 1000, CPU_PERIOD_US);
                if (join_path(path, sizeof(path), dir, "cpu.max", err) < 0 || moat_write_file(path, text, err) < 0)
                        return -1;
        }
        return 0;
}

int moat_cgroup_create(struct moat_cell *cell, const struct moat_cell_config *config, struct moat_error **err)
{
        const struct moat_cell_runtime *runtime = cell->runtime;
        bool has_cpu = false;

        for (unsigned i = 0; i < runtime->hierarchy_count; i++)
                has_cpu |= (runtime->hierarchies[i].roles & MOAT_CGROUP_ROLE_CPU) != 0;
        if (config->cpu_millis && !has_cpu)
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, "cgroup_unavailable",
                                      "a CPU quota was asked for but the cpu controller is not available");
        if (moat_cgroup_paths(cell, config->id, err) < 0)
                return -1;
        cell->cgroup_count = 0;
        for (unsigned i = 0; i < runtime->hierarchy_count; i++) {
                if (mkdir(cell->cgroup_paths[i], 0755) < 0) {
                        if (errno == EEXIST)
                                return moat_error_set(err, MOAT_ERROR_CONFLICT, EEXIST, "sandbox_exists",
                                                      "cgroup `%s` already exists", cell->cgroup_paths[i]);
                        return moat_error_system(err, errno, "mkdir `%s`", cell->cgroup_paths[i]);
                }
                cell->cgroup_count = i + 1; /* made: removed on failure */
                if (runtime->cgroup_version == MOAT_CGROUP_V1 ? apply_v1(cell, i, config, err)
                                                              : apply_v2(cell, config, err))
                        return -1;
        }
        return 0;
}

int moat_cgroup_open_v2(const struct moat_cell *cell, struct moat_error **err)
{
        int fd;

        if (cell->runtime->cgroup_version != MOAT_CGROUP_V2)
                return -1;
        fd = open(cell->cgroup_paths[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return moat_error_system(err, errno, "open `%s`", cell->cgroup_paths[0]);
        return fd;
}

int moat_cgroup_attach(const struct moat_cell *cell, pid_t pid, struct moat_error **err)
{
        char path[PATH_MAX], text[32];

        snprintf(text, sizeof(text), "%d", (int)pid);
        for (unsigned i = 0; i < cell->cgroup_count; i++)
                if (join_path(path, sizeof(path), cell->cgroup_paths[i], "cgroup.procs", err) < 0 ||
                    moat_write_file(path, text, err) < 0)
                        return -1;
        return 0;
}

/* Kill every process listed in a cgroup (v1 has no cgroup.kill). Only used
 * for orphans: a live cell is killed through its init's pid namespace. */
static void kill_listed_processes(const char *dir)
{
        char path[PATH_MAX];
        _cleanup_fclose_ FILE *f = NULL;
        long pid;

        if ((size_t)snprintf(path, sizeof(path), "%s/cgroup.procs", dir) >= sizeof(path))
                return;
        f = fopen(path, "re");
        if (!f)
                return;
        while (fscanf(f, "%ld", &pid) == 1)
                if (pid > 1)
                        kill((pid_t)pid, SIGKILL);
}

void moat_cgroup_kill(const struct moat_cell *cell)
{
        char path[PATH_MAX];

        for (unsigned i = 0; i < cell->cgroup_count; i++) {
                if (cell->runtime->cgroup_version == MOAT_CGROUP_V2 && cell->runtime->has_cgroup_kill &&
                    (size_t)snprintf(path, sizeof(path), "%s/cgroup.kill", cell->cgroup_paths[i]) < sizeof(path)) {
                        struct moat_error *ignored = NULL;
                        moat_write_file(path, "1", &ignored);
                        moat_error_free(ignored);
                } else {
                        kill_listed_processes(cell->cgroup_paths[i]);
                }
        }
}

/* rmdir each cgroup, retrying while the kernel still counts exiting tasks
 * (EBUSY), for at most about two seconds in total. */
int moat_cgroup_remove(struct moat_cell *cell, struct moat_error **err)
{
        struct timespec start, now;

        clock_gettime(CLOCK_MONOTONIC, &start);
        for (unsigned i = cell->cgroup_count; i > 0; i--) {
                const char *dir = cell->cgroup_paths[i - 1];
                for (unsigned attempt = 0;; attempt++) {
                        if (rmdir(dir) == 0 || errno == ENOENT)
                                break;
                        if (errno != EBUSY)
                                return moat_error_system(err, errno, "rmdir `%s`", dir);
                        clock_gettime(CLOCK_MONOTONIC, &now);
                        if ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) > 2000000000L)
                                return moat_error_set(err, MOAT_ERROR_TIMEOUT, EBUSY, "cgroup_busy",
                                                      "rmdir `%s`: still in use after 2 s", dir);
                        if (attempt % 64 == 63)
                                kill_listed_processes(dir);
                        /* Tasks leave the cgroup asynchronously after exit. */
                        nanosleep(&(struct timespec){ .tv_nsec = 200000 }, NULL);
                }
                cell->cgroup_count = i - 1;
        }
        return 0;
}

static uint64_t read_number(const char *dir, const char *file)
{
        char path[PATH_MAX], text[64];
        struct moat_error *ignored = NULL;

        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path) ||
            moat_read_file(path, text, sizeof(text), &ignored) <= 0) {
                moat_error_free(ignored);
                return 0;
        }
        return strtoull(text, NULL, 10);
}

/* The value of "key <number>" in a flat keyed file such as memory.events. */
static uint64_t read_keyed(const char *dir, const char *file, const char *key)
{
        char path[PATH_MAX], text[4096];
        struct moat_error *ignored = NULL;
        size_t key_length = strlen(key);

        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path) ||
            moat_read_file(path, text, sizeof(text), &ignored) <= 0) {
                moat_error_free(ignored);
                return 0;
        }
        for (char *line = text; line && *line;) {
                char *next = strchr(line, '\n');
                if (strncmp(line, key, key_length) == 0 && line[key_length] == ' ')
                        return strtoull(line + key_length + 1, NULL, 10);
                line = next ? next + 1 : NULL;
        }
        return 0;
}

int moat_cgroup_read_stats(const struct moat_cell *cell, struct moat_cell_stats *stats, struct moat_error **err)
{
        const struct moat_cell_runtime *runtime = cell->runtime;

        memset(stats, 0, sizeof(*stats));
        if (cell->cgroup_count == 0)
                return moat_error_set(err, MOAT_ERROR_NOT_FOUND, 0, "sandbox_not_running", "cell has no cgroups");
        if (runtime->cgroup_version == MOAT_CGROUP_V2) {
                const char *dir = cell->cgroup_paths[0];
                stats->memory_current = read_number(dir, "memory.current");
                stats->memory_peak = runtime->has_memory_peak ? read_number(dir, "memory.peak") : 0;
                stats->cpu_usage_ns = read_keyed(dir, "cpu.stat", "usage_usec") * 1000;
                stats->oom_kills = read_keyed(dir, "memory.events", "oom_kill");
                stats->pids_current = (uint32_t)read_number(dir, "pids.current");
                return 0;
        }
        for (unsigned i = 0; i < cell->cgroup_count; i++) {
                const char *dir = cell->cgroup_paths[i];
                unsigned roles = runtime->hierarchies[i].roles;
                if (roles & MOAT_CGROUP_ROLE_MEMORY) {
                        stats->memory_current = read_number(dir, "memory.usage_in_bytes");
                        stats->memory_peak = read_number(dir, "memory.max_usage_in_bytes");
                        stats->oom_kills = read_keyed(dir, "memory.oom_control", "oom_kill");
                }
                if (roles & MOAT_CGROUP_ROLE_CPUACCT)
                        stats->cpu_usage_ns = read_number(dir, "cpuacct.usage");
                if (roles & MOAT_CGROUP_ROLE_PIDS)
                        stats->pids_current = (uint32_t)read_number(dir, "pids.current");
        }
        return 0;
}
