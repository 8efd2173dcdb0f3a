/* Times a command-line runtime (crun, runc, runsc, bwrap) starting `true`:
 * N iterations of fork + exec of the runtime's command + wait, each timed
 * with CLOCK_MONOTONIC. Doing the loop here rather than in the shell keeps
 * the shell's own forks (date, counters) off the clock.
 *
 *   cmd_bench [-s STATE_TEMPLATE] [-c CLEANUP] NAME N OUT_DIR -- ARGV...
 *
 * Every "{id}" in ARGV, STATE_TEMPLATE and CLEANUP becomes a per-iteration
 * unique container id (NAME-PID-I). If STATE_TEMPLATE is given and that path
 * still exists after the command returned (the runtime left the container's
 * state behind), CLEANUP (split on spaces) runs and its time is counted as
 * part of the iteration: teardown is part of "start and tear down". Five
 * untimed warm-up iterations run first.
 *
 * Writes OUT_DIR/NAME.ns (one sample in ns a line) on success. On the first
 * failing iteration it writes OUT_DIR/NAME.skip with the reason and exits 1;
 * the runtime's stderr is kept in OUT_DIR/NAME.stderr.
 *
 * A benchmark load generator, not product code. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 5
#define MAX_ARGS 64

static const char *name;
static const char *out_dir;

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Records why this runtime produced no numbers, for the report, and exits. */
__attribute__((format(printf, 1, 2), noreturn))
static void fail(const char *fmt, ...)
{
        char reason[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(reason, sizeof(reason), fmt, ap);
        va_end(ap);
        fprintf(stderr, "cmd_bench: %s: %s\n", name, reason);
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s.skip", out_dir, name);
        FILE *f = fopen(path, "w");
        if (f) {
                fprintf(f, "failed: %s\n", reason);
                fclose(f);
        }
        exit(1);
}

/* Returns a malloc'd copy of template with every "{id}" replaced by id. */
static char *substitute(const char *template, const char *id)
{
        size_t id_len = strlen(id), count = 0;
        for (const char *p = template; (p = strstr(p, "{id}")); p += 4)
                count++;
        char *out = malloc(strlen(template) + count * id_len + 1);
        if (!out)
                fail("out of memory");
        char *o = out;
        for (const char *p = template; *p;) {
                if (strncmp(p, "{id}", 4) == 0) {
                        memcpy(o, id, id_len);
                        o += id_len;
                        p += 4;
                } else {
                        *o++ = *p++;
                }
        }
        *o = '\0';
        return out;
}

/* Runs argv to completion with stdout discarded and stderr appended to
 * stderr_fd; returns its wait status. */
static int run_command(char **argv, int stderr_fd)
{
        pid_t pid = fork();
        if (pid < 0)
                fail("fork: %s", strerror(errno));
        if (pid == 0) {
                int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
                if (null_fd < 0 || dup2(null_fd, 0) < 0 || dup2(null_fd, 1) < 0 ||
                    dup2(stderr_fd, 2) < 0)
                        _exit(126);
                execvp(argv[0], argv);
                _exit(127);
        }
        int status;
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        fail("waitpid: %s", strerror(errno));
        return status;
}

struct iteration {
        char **argv_template;
        int argc;
        const char *state_template;
        const char *cleanup_template;
        int stderr_fd;
};

static void free_args(char **args)
{
        for (int i = 0; args[i]; i++)
                free(args[i]);
}

/* One start-and-tear-down of the runtime under container id `id`. */
static void iterate(const struct iteration *it, const char *id)
{
        char *args[MAX_ARGS + 1] = { 0 };
        for (int i = 0; i < it->argc; i++)
                args[i] = substitute(it->argv_template[i], id);
        int status = run_command(args, it->stderr_fd);
        free_args(args);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                fail("container %s: %s %s %d (see %s/%s.stderr)", id, it->argv_template[0],
                     WIFEXITED(status) ? "exited" : "killed by signal",
                     WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), out_dir, name);

        if (!it->state_template)
                return;
        char *state = substitute(it->state_template, id);
        struct stat st;
        int left_behind = stat(state, &st) == 0;
        free(state);
        if (!left_behind || !it->cleanup_template)
                return;
        char *line = substitute(it->cleanup_template, id);
        char *cleanup[MAX_ARGS + 1] = { 0 };
        int n = 0;
        for (char *save, *tok = strtok_r(line, " ", &save); tok && n < MAX_ARGS;
             tok = strtok_r(NULL, " ", &save))
                cleanup[n++] = tok;
        status = run_command(cleanup, it->stderr_fd);
        free(line);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                fail("cleanup of %s failed (status %#x)", id, status);
}

int main(int argc, char **argv)
{
        struct iteration it = { 0 };
        int opt;
        while ((opt = getopt(argc, argv, "+s:c:")) != -1) {
                switch (opt) {
                case 's': it.state_template = optarg; break;
                case 'c': it.cleanup_template = optarg; break;
                default: goto usage;
                }
        }
        if (argc - optind < 5 || strcmp(argv[optind + 3], "--") != 0)
                goto usage;
        name = argv[optind];
        long n = strtol(argv[optind + 1], NULL, 10);
        out_dir = argv[optind + 2];
        it.argv_template = &argv[optind + 4];
        it.argc = argc - optind - 4;
        if (n <= 0 || it.argc > MAX_ARGS)
                goto usage;

        char path[4096];
        snprintf(path, sizeof(path), "%s/%s.stderr", out_dir, name);
        it.stderr_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
        if (it.stderr_fd < 0)
                fail("open %s: %s", path, strerror(errno));

        uint64_t *samples = calloc((size_t)n, sizeof(*samples));
        if (!samples)
                fail("out of memory");
        char id[128];
        for (int i = 0; i < WARMUP; i++) {
                snprintf(id, sizeof(id), "%s-%d-w%d", name, (int)getpid(), i);
                iterate(&it, id);
        }
        for (long i = 0; i < n; i++) {
                snprintf(id, sizeof(id), "%s-%d-%ld", name, (int)getpid(), i);
                uint64_t start = now_ns();
                iterate(&it, id);
                samples[i] = now_ns() - start;
        }

        snprintf(path, sizeof(path), "%s/%s.ns", out_dir, name);
        FILE *f = fopen(path, "w");
        if (!f)
                fail("open %s: %s", path, strerror(errno));
        for (long i = 0; i < n; i++)
                fprintf(f, "%llu\n", (unsigned long long)samples[i]);
        if (fclose(f) != 0)
                fail("write %s: %s", path, strerror(errno));
        free(samples);
        return 0;

usage:
        fprintf(stderr, "usage: cmd_bench [-s STATE_TEMPLATE] [-c CLEANUP] NAME N OUT_DIR -- ARGV...\n");
        return 2;
}
