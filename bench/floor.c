/* The floors under every runtime in the benchmark, measured in-process so
 * nothing but the kernel work itself is on the clock:
 *
 *   fork_exec    fork + execve("/bin/true") + waitpid
 *   clone7_exec  clone into 7 new namespaces (user, mnt, pid, net, uts, ipc,
 *                cgroup) + execve("/bin/true") + waitpid
 *
 * No sandbox can start a process faster than fork_exec, and none that gives
 * it its own namespaces faster than clone7_exec; the report measures every
 * runtime's distance from them.
 *
 *   floor N OUT_DIR    writes OUT_DIR/floor_fork_exec.ns and
 *                      OUT_DIR/floor_clone7_exec.ns, one sample (ns) a line
 *
 * A benchmark load generator, not product code: it exits on the first error. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 5

static char *const true_argv[] = { "/bin/true", NULL };
static char *const empty_env[] = { NULL };

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
        fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
        exit(1);
}

static void wait_success(pid_t pid)
{
        int status;
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        die("waitpid");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "floor: /bin/true did not exit 0 (status %#x)\n", status);
                exit(1);
        }
}

static void fork_exec_once(void)
{
        pid_t pid = fork();
        if (pid < 0)
                die("fork");
        if (pid == 0) {
                execve(true_argv[0], true_argv, empty_env);
                _exit(127);
        }
        wait_success(pid);
}

static int clone_child(void *unused)
{
        (void)unused;
        execve(true_argv[0], true_argv, empty_env);
        _exit(127);
}

static void clone7_exec_once(void)
{
        /* The child only execs, so a small stack is plenty; it is allocated
         * once and reused because the child is gone before the next clone. */
        static char *stack;
        const size_t stack_size = 64 * 1024;
        if (!stack) {
                stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
                if (stack == MAP_FAILED)
                        die("mmap stack");
        }
        int flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET |
                    CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP | SIGCHLD;
        pid_t pid = clone(clone_child, stack + stack_size, flags, NULL);
        if (pid < 0)
                die("clone(7 namespaces)");
        wait_success(pid);
}

static void measure(const char *name, void (*once)(void), long n, const char *out_dir)
{
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s.ns", out_dir, name);
        uint64_t *samples = calloc((size_t)n, sizeof(*samples));
        if (!samples)
                die("calloc");
        for (int i = 0; i < WARMUP; i++)
                once();
        for (long i = 0; i < n; i++) {
                uint64_t start = now_ns();
                once();
                samples[i] = now_ns() - start;
        }
        FILE *f = fopen(path, "w");
        if (!f)
                die(path);
        for (long i = 0; i < n; i++)
                fprintf(f, "%llu\n", (unsigned long long)samples[i]);
        if (fclose(f) != 0)
                die(path);
        free(samples);
}

int main(int argc, char **argv)
{
        if (argc != 3) {
                fprintf(stderr, "usage: floor N OUT_DIR\n");
                return 2;
        }
        long n = strtol(argv[1], NULL, 10);
        if (n <= 0) {
                fprintf(stderr, "floor: N must be a positive integer\n");
                return 2;
        }
        measure("floor_fork_exec", fork_exec_once, n, argv[2]);
        measure("floor_clone7_exec", clone7_exec_once, n, argv[2]);
        return 0;
}
