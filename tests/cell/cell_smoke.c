/* Isolation-cell smoke test (needs root): builds a `host`-style cell around
 * a real payload, runs a shell in it through the control socket, checks what
 * the sandbox sees, destroys it and checks nothing is left; then times
 * create and destroy. Exits non-zero on any failure.
 *
 * usage: cell-smoke <init binary> [iterations] */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cell/cell_internal.h"
#include "common/protocol.h"

static int failures;

#define CHECK(condition, ...)                                         \
        do {                                                          \
                if (!(condition)) {                                   \
                        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
                        fprintf(stderr, __VA_ARGS__);                 \
                        fputc('\n', stderr);                          \
                        failures++;                                   \
                }                                                     \
        } while (0)

static double now_ms(void)
{
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void write_text(const char *path, const char *text)
{
        FILE *f = fopen(path, "w");
        if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
                perror(path);
                exit(1);
        }
}

static void make_lower(const char *lower)
{
        static const char *const dirs[] = { "", "/etc", "/usr", "/proc", "/dev", "/sys", "/tmp", "/root", "/home" };
        static const char *const links[][2] = {
                { "usr/bin", "/bin" }, { "usr/lib", "/lib" }, { "usr/lib64", "/lib64" }, { "usr/sbin", "/sbin" }
        };
        char path[512];

        for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
                snprintf(path, sizeof(path), "%s%s", lower, dirs[i]);
                if (mkdir(path, 0755) < 0 && errno != EEXIST) {
                        perror(path);
                        exit(1);
                }
        }
        for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
                snprintf(path, sizeof(path), "%s%s", lower, links[i][1]);
                if (symlink(links[i][0], path) < 0) {
                        perror(path);
                        exit(1);
                }
        }
        snprintf(path, sizeof(path), "%s/etc/passwd", lower);
        write_text(path, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n");
        snprintf(path, sizeof(path), "%s/etc/group", lower);
        write_text(path, "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n");
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        (void)st;
        (void)flag;
        (void)ftw;
        return remove(path);
}

static int connect_control(const char *path)
{
        struct sockaddr_un address = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        snprintf(address.sun_path, sizeof(address.sun_path), "%s", path);
        if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
                perror("connect control socket");
                return -1;
        }
        /* HELLO first, as moatd does; HELLO_ACK is skipped by run_shell(). */
        uint8_t hello[MOAT_FRAME_HEADER_SIZE + 4];
        struct moat_frame_header h = { .length = 4, .type = MOAT_FRAME_HELLO };
        moat_frame_header_encode(&h, hello);
        moat_put_u32(hello + MOAT_FRAME_HEADER_SIZE, MOAT_PROTOCOL_VERSION);
        if (write(fd, hello, sizeof(hello)) != (ssize_t)sizeof(hello)) {
                perror("send HELLO");
                close(fd);
                return -1;
        }
        return fd;
}

static int read_all(int fd, void *data, size_t length)
{
        uint8_t *p = data;
        while (length) {
                ssize_t n = read(fd, p, length);
                if (n <= 0)
                        return -1;
                p += n;
                length -= (size_t)n;
        }
        return 0;
}

/* SPAWN `/bin/sh -c script`, collect its output until EXIT. Returns the
 * exit code, or -1000 on a protocol failure. */
static int run_shell(int control, const char *script, char *output, size_t output_size, bool echo)
{
        static uint8_t buffer[MOAT_FRAME_PAYLOAD_MAX];
        const char *argv[] = { "/bin/sh", "-c", script, NULL };
        const char *env[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL };
        uint8_t header[MOAT_FRAME_HEADER_SIZE];
        struct moat_frame_header h = { .type = MOAT_FRAME_SPAWN, .aux = 7 };
        long length = moat_spawn_encode(buffer, sizeof(buffer), 0, 0, 0, "", "/", argv, env);
        size_t used = 0;

        if (length < 0)
                return -1000;
        h.length = (uint32_t)length;
        moat_frame_header_encode(&h, header);
        if (write(control, header, sizeof(header)) != sizeof(header) || write(control, buffer, (size_t)length) != length)
                return -1000;
        output[0] = '\0';
        for (;;) {
                if (read_all(control, header, sizeof(header)) < 0 || moat_frame_header_decode(header, &h) < 0 ||
                    read_all(control, buffer, h.length) < 0)
                        return -1000;
                if (h.type == MOAT_FRAME_OUTPUT) {
                        if (echo)
                                fwrite(buffer, 1, h.length, stdout);
                        size_t n = h.length < output_size - 1 - used ? h.length : output_size - 1 - used;
                        memcpy(output + used, buffer, n);
                        used += n;
                        output[used] = '\0';
                } else if (h.type == MOAT_FRAME_EXIT) {
                        return (int)moat_get_u32(buffer);
                } else if (h.type == MOAT_FRAME_SPAWN_FAILED) {
                        return -1000;
                }
        }
}

static struct moat_cell_config make_config(const char *id, const char *lower)
{
        struct moat_cell_config config = {
                .id = id,
                .hostname = "smokebox",
                .lowers = { lower },
                .lower_count = 1,
                .bind_host_usr = true,
                .memory_bytes = 256ull << 20,
                .disk_bytes = 64ull << 20,
                .pids_max = 256,
                .cpu_millis = 500,
                .host_id_base = 1700000000,
                .id_count = 65536,
        };
        return config;
}

static int compare_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;
        return (x > y) - (x < y);
}

static const char checked_script[] =
        "id; hostname; grep -E 'Cap|NoNewPrivs|Seccomp' /proc/self/status; ls -l /usr/bin/env; "
        "tr '\\0' ' ' < /proc/1/cmdline; echo; touch /etc/x && echo wrote; "
        "cat /etc/hosts; ls /dev | tr '\\n' ' '; echo; "
        "unshare -U true 2>/dev/null && echo ESCAPE_NESTED_USERNS; "
        "unshare -m true 2>/dev/null && echo ESCAPE_MOUNTNS; "
        "mount -t tmpfs x /tmp 2>/dev/null && echo ESCAPE_MOUNT; "
        "echo x > /proc/sys/kernel/domainname 2>/dev/null && echo ESCAPE_PROC_SYS; "
        "echo h > /proc/sysrq-trigger 2>/dev/null && echo ESCAPE_SYSRQ; "
        "test -s /proc/kcore && echo ESCAPE_KCORE; "
        "touch /usr/moat-x 2>/dev/null && echo ESCAPE_USR_WRITABLE; "
        "test $(ls /proc | grep -c '^[0-9]') -lt 8 && echo pidns_ok; "
        "grep -E '^0::|:memory:' /proc/self/cgroup; "
        "ip link 2>/dev/null | grep -c '^[0-9]' ; "
        "exit 3";

int main(int argc, char **argv)
{
        char temp[] = "/tmp/cell-smoke-XXXXXX", lower[256], run_dir[256], id[64], output[65536];
        char cgroup_paths[MOAT_CGROUP_HIERARCHY_MAX][256], control_path[256];
        struct moat_cell_runtime_options options = { 0 };
        struct moat_cell_runtime *runtime = NULL;
        struct moat_cell *cell = NULL;
        struct moat_error *err = NULL;
        struct moat_cell_config config;
        struct moat_cell_stats stats;
        int iterations = argc > 2 ? atoi(argv[2]) : 20;
        unsigned cgroup_count;
        pid_t init_pid;
        double t0;

        if (argc < 2) {
                fprintf(stderr, "usage: cell-smoke <init binary> [iterations]\n");
                return 2;
        }
        if (geteuid() != 0) {
                fprintf(stderr, "SKIP: cell-smoke needs root\n");
                return 77;
        }
        if (!mkdtemp(temp)) {
                perror("mkdtemp");
                return 1;
        }
        chmod(temp, 0755);
        snprintf(lower, sizeof(lower), "%s/lower", temp);
        snprintf(run_dir, sizeof(run_dir), "%s/run", temp);
        make_lower(lower);

        options.init_path = argv[1];
        options.run_dir = run_dir;
        t0 = now_ms();
        if (moat_cell_runtime_init(&options, &runtime, &err) < 0) {
                fprintf(stderr, "FAIL runtime init: [%s] %s\n", err->code, err->message);
                return 1;
        }
        printf("runtime init: %.2f ms, cgroup %s\n", now_ms() - t0, moat_cell_runtime_cgroup_version(runtime));

        /* Bad input: clear errors, nothing made. */
        snprintf(id, sizeof(id), "../escape");
        config = make_config(id, lower);
        CHECK(moat_cell_create(runtime, &config, &cell, &err) < 0 && err->kind == MOAT_ERROR_INVALID_ARGUMENT,
              "bad id accepted");
        moat_error_free(err);
        err = NULL;
        snprintf(id, sizeof(id), "smoke-bad-%d", (int)getpid());
        config = make_config(id, "/nonexistent/layer");
        CHECK(moat_cell_create(runtime, &config, &cell, &err) < 0, "missing layer accepted");
        if (err)
                printf("expected error: [%s] %s\n", err->code, err->message);
        moat_error_free(err);
        err = NULL;

        snprintf(id, sizeof(id), "smoke-%d", (int)getpid());
        config = make_config(id, lower);
        t0 = now_ms();
        if (moat_cell_create(runtime, &config, &cell, &err) < 0) {
                fprintf(stderr, "FAIL create: [%s] %s\n", err->code, err->message);
                return 1;
        }
        printf("create: %.2f ms (init pid %d, control %s)\n", now_ms() - t0, (int)cell->pid, cell->control_path);

        int control = connect_control(cell->control_path);
        CHECK(control >= 0, "connect");
        int code = control >= 0 ? run_shell(control, checked_script, output, sizeof(output), true) : -1000;
        CHECK(code == 3, "shell exit code %d, want 3", code);
        CHECK(strstr(output, "uid=0(root) gid=0(root)"), "not root in the sandbox");
        CHECK(strstr(output, "smokebox\n"), "hostname");
        CHECK(strstr(output, "NoNewPrivs:\t1"), "no_new_privs");
        CHECK(strstr(output, "Seccomp:\t2"), "seccomp filter mode");
        CHECK(strstr(output, "CapEff:\t00000000a00405fb"), "effective capabilities");
        CHECK(strstr(output, "CapBnd:\t00000000a00405fb"), "bounding capabilities");
        CHECK(strstr(output, "CapAmb:\t0000000000000000"), "ambient capabilities");
        CHECK(strstr(output, " root root ") && strstr(output, "/usr/bin/env"), "idmapped /usr owner");
        CHECK(strstr(output, "moat-init --control-fd"), "PID 1 is init");
        CHECK(strstr(output, "wrote\n"), "writable overlay");
        CHECK(strstr(output, "127.0.1.1\tsmokebox"), "/etc/hosts");
        CHECK(strstr(output, "null") && strstr(output, "ptmx") && strstr(output, "urandom"), "/dev");
        CHECK(!strstr(output, "ESCAPE_"), "a sandbox escape marker was printed");
        CHECK(strstr(output, "pidns_ok"), "host pids visible");
        CHECK(strstr(output, ":memory:/\n") || strstr(output, "0::/\n"), "cgroup namespace root");

        /* Seccomp, from inside: clone3 -> ENOSYS, io_uring_setup/bpf ->
         * EPERM, an x32 syscall kills the process (bad architecture). */
        if (control >= 0 && access("/usr/bin/python3", X_OK) == 0) {
                code = run_shell(control,
                                 "python3 -c 'import ctypes; l=ctypes.CDLL(None, use_errno=True); s=l.syscall; "
                                 "print(\"clone3\", s(435, 0, 0), ctypes.get_errno()); "
                                 "print(\"io_uring_setup\", s(425, 1, 0), ctypes.get_errno()); "
                                 "print(\"bpf\", s(321, 0, 0, 0), ctypes.get_errno()); "
                                 "print(\"setns\", s(308, 0, 0), ctypes.get_errno())'; "
                                 "python3 -c 'import ctypes; ctypes.CDLL(None).syscall(0x40000000 | 39); print(\"x32 alive\")'; "
                                 "echo x32 status $?",
                                 output, sizeof(output), true);
                CHECK(strstr(output, "clone3 -1 38\n"), "clone3 must be ENOSYS");
                CHECK(strstr(output, "io_uring_setup -1 1\n"), "io_uring_setup must be EPERM");
                CHECK(strstr(output, "bpf -1 1\n"), "bpf must be EPERM");
                CHECK(strstr(output, "setns -1 1\n"), "setns must be EPERM");
                CHECK(strstr(output, "x32 status 159") && !strstr(output, "x32 alive"), "x32 syscall not killed");
        }

        /* Seen from the host: init runs as the sandbox's host uid. */
        {
                char path[64], status[4096], want[64];
                snprintf(path, sizeof(path), "/proc/%d/status", (int)cell->pid);
                snprintf(want, sizeof(want), "Uid:\t%u\t", config.host_id_base);
                CHECK(moat_read_file(path, status, sizeof(status), &err) > 0 && strstr(status, want),
                      "init's host uid is not host_id_base");
                moat_error_free(err);
                err = NULL;
        }
        CHECK(moat_cell_read_stats(cell, &stats, &err) == 0 && stats.memory_current > 0 && stats.pids_current >= 1,
              "stats");
        printf("stats: memory %llu peak %llu cpu %llu ns pids %u oom %llu\n",
               (unsigned long long)stats.memory_current, (unsigned long long)stats.memory_peak,
               (unsigned long long)stats.cpu_usage_ns, stats.pids_current, (unsigned long long)stats.oom_kills);
        if (control >= 0)
                close(control);

        /* Destroy, then check nothing is left. */
        init_pid = cell->pid;
        cgroup_count = cell->cgroup_count;
        for (unsigned i = 0; i < cgroup_count; i++)
                snprintf(cgroup_paths[i], sizeof(cgroup_paths[i]), "%s", cell->cgroup_paths[i]);
        snprintf(control_path, sizeof(control_path), "%s", cell->control_path);
        t0 = now_ms();
        CHECK(moat_cell_destroy(cell, &err) == 0, "destroy: %s", err ? err->message : "");
        printf("destroy: %.2f ms\n", now_ms() - t0);
        for (unsigned i = 0; i < cgroup_count; i++)
                CHECK(access(cgroup_paths[i], F_OK) < 0 && errno == ENOENT, "cgroup %s left", cgroup_paths[i]);
        CHECK(access(control_path, F_OK) < 0 && errno == ENOENT, "control socket left");
        CHECK(kill(init_pid, 0) < 0 && errno == ESRCH, "init still exists");

        /* Timing: create -> spawn true -> destroy, median of N. */
        if (iterations > 0) {
                double *creates = calloc((size_t)iterations, sizeof(double));
                double *destroys = calloc((size_t)iterations, sizeof(double));
                double *totals = calloc((size_t)iterations, sizeof(double));
                for (int i = 0; i < iterations && !failures; i++) {
                        snprintf(id, sizeof(id), "smoke-%d-%d", (int)getpid(), i);
                        config = make_config(id, lower);
                        double start = now_ms();
                        if (moat_cell_create(runtime, &config, &cell, &err) < 0) {
                                CHECK(0, "create %d: %s", i, err->message);
                                break;
                        }
                        creates[i] = now_ms() - start;
                        control = connect_control(cell->control_path);
                        CHECK(control >= 0 && run_shell(control, "exec true", output, sizeof(output), false) == 0,
                              "exec true");
                        close(control);
                        double before_destroy = now_ms();
                        CHECK(moat_cell_destroy(cell, &err) == 0, "destroy %d", i);
                        destroys[i] = now_ms() - before_destroy;
                        totals[i] = now_ms() - start;
                }
                if (!failures) {
                        qsort(creates, (size_t)iterations, sizeof(double), compare_double);
                        qsort(destroys, (size_t)iterations, sizeof(double), compare_double);
                        qsort(totals, (size_t)iterations, sizeof(double), compare_double);
                        printf("%d iterations: median create %.2f ms, destroy %.2f ms, "
                               "create->exec true->destroy %.2f ms (min %.2f, max %.2f)\n",
                               iterations, creates[iterations / 2], destroys[iterations / 2], totals[iterations / 2],
                               totals[0], totals[iterations - 1]);
                }
                free(creates);
                free(destroys);
                free(totals);
        }

        /* The runtime's base cgroups: removed if nobody else uses them. */
        for (unsigned i = 0; i < runtime->hierarchy_count; i++)
                rmdir(runtime->hierarchies[i].base);
        moat_cell_runtime_free(runtime);
        nftw(temp, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        if (failures) {
                fprintf(stderr, "cell-smoke: %d check(s) failed\n", failures);
                return 1;
        }
        printf("cell-smoke: all checks passed\n");
        return 0;
}
