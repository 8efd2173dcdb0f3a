/* posture: the sandbox's security posture seen from inside, for
 * tests/security/test_posture.py (gVisor's sandbox-posture idea, and
 * Firecracker's check that the seccomp filter holds on every thread).
 *
 * Static, libc + pthreads only, so it runs in any image. It first makes a
 * few threads of its own and forks a child that makes threads too (all of
 * them created after the exec that started this program: a thread must
 * inherit the filter, the capability sets and no_new_privs), then prints one
 * JSON object per line:
 *
 *   {"kind":"task", ...}     every thread of every process it can see under
 *                            /proc/<pid>/task/<tid> (status fields: Uid, Cap*,
 *                            NoNewPrivs, Seccomp...)
 *   {"kind":"process", ...}  per process: cwd, root, exe, open fds (target,
 *                            is-directory, opened by posture itself), environ
 *                            (or the errno that denied each of them)
 *   {"kind":"thread_self"}   what each of posture's own threads read from
 *                            /proc/thread-self/status, including one thread
 *                            made after the /proc walk
 *   {"kind":"mount", ...}    every line of /proc/self/mountinfo
 *   {"kind":"dev", ...}      every entry of /dev, /dev/pts, /dev/shm (type,
 *                            major:minor, mode, link target)
 *   {"kind":"masked", ...}   each masked path: type, entries or bytes read
 *   {"kind":"readonly", ...} access(W_OK) of each read-only path
 *   {"kind":"self", ...}     cwd and uid map of posture itself
 *   {"kind":"end"}
 *
 * Then, so that the test can look at the same processes from the host, it
 * keeps every process and thread alive until --wait-file exists (or
 * --wait-seconds pass), and exits 0.
 *
 * Options: --threads N (own threads, default 3), --no-fork, --scope
 * all|self (self: only posture's own processes; for the host run, which
 * must not print the host's hundreds of processes), --wait-file PATH,
 * --wait-seconds S (default 0: exit at once).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 16
#define STATUS_TEXT_MAX 8192

/* The status fields the test asserts on; the rest of status is noise. */
static const char *const status_fields[] = {
        "Name", "Tgid", "Pid", "PPid", "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff",
        "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters",
};

/* Fds posture made itself (pipes to its threads and child): the test does
 * not count them against the sandbox. */
static int own_fds[8];
static size_t own_fd_count;

static void own_fd_add(int fd)
{
        if (own_fd_count < sizeof(own_fds) / sizeof(own_fds[0]))
                own_fds[own_fd_count++] = fd;
}

static void json_string(FILE *out, const char *s, size_t length)
{
        fputc('"', out);
        for (size_t i = 0; i < length; i++) {
                unsigned char c = (unsigned char)s[i];

                if (c == '"' || c == '\\')
                        fprintf(out, "\\%c", c);
                else if (c < 0x20 || c >= 0x7f)
                        fprintf(out, "\\u%04x", c);
                else
                        fputc(c, out);
        }
        fputc('"', out);
}

static void json_cstring(FILE *out, const char *s)
{
        json_string(out, s, strlen(s));
}

static void json_errno(FILE *out, const char *key, int errno_value)
{
        fprintf(out, ",\"%s\":", key);
        json_cstring(out, strerrorname_np(errno_value) ? strerrorname_np(errno_value) : "E?");
}

/* Reads a whole small file; returns its length or -errno. */
static ssize_t read_file(const char *path, char *buffer, size_t size)
{
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        size_t used = 0;

        if (fd < 0)
                return -errno;
        while (used < size - 1) {
                ssize_t n = read(fd, buffer + used, size - 1 - used);

                if (n < 0) {
                        int saved = errno;

                        if (saved == EINTR)
                                continue;
                        close(fd);
                        return -saved;
                }
                if (n == 0)
                        break;
                used += (size_t)n;
        }
        close(fd);
        buffer[used] = '\0';
        return (ssize_t)used;
}

/* The value of "Field:" in the text of a status file, or NULL; its length in
 * *ret_length. */
static const char *status_value(const char *text, const char *field, size_t *ret_length)
{
        size_t n = strlen(field);

        for (const char *line = text; *line;) {
                const char *end = strchr(line, '\n');

                if (!end)
                        end = line + strlen(line);
                if (strncmp(line, field, n) == 0 && line[n] == ':') {
                        const char *value = line + n + 1;

                        while (value < end && (*value == ' ' || *value == '\t'))
                                value++;
                        *ret_length = (size_t)(end - value);
                        return value;
                }
                line = *end ? end + 1 : end;
        }
        return NULL;
}

/* `"status":{...}` from the text of a status file. */
static void print_status_fields(FILE *out, const char *text)
{
        bool first = true;

        fputs(",\"status\":{", out);
        for (size_t f = 0; f < sizeof(status_fields) / sizeof(status_fields[0]); f++) {
                size_t length;
                const char *value = status_value(text, status_fields[f], &length);

                if (!value)
                        continue;
                fprintf(out, "%s\"%s\":", first ? "" : ",", status_fields[f]);
                json_string(out, value, length);
                first = false;
        }
        fputc('}', out);
}

/* ---- posture's own threads ------------------------------------------------ */

struct thread_report {
        pid_t tid;
        bool late;
        char status[STATUS_TEXT_MAX];
        ssize_t status_length;
};

static struct thread_report thread_reports[MAX_THREADS + 1];
static pthread_barrier_t threads_ready;
static int release_pipe[2] = { -1, -1 };  /* threads and child block on its read end */

static void report_own_status(struct thread_report *report)
{
        report->tid = gettid();
        report->status_length = read_file("/proc/thread-self/status", report->status, sizeof(report->status));
}

static void *early_thread(void *argument)
{
        struct thread_report *report = argument;
        char byte;

        report_own_status(report);
        pthread_barrier_wait(&threads_ready);
        /* Stay alive (visible in /proc/<pid>/task) until posture exits. */
        while (read(release_pipe[0], &byte, 1) < 0 && errno == EINTR)
                ;
        return NULL;
}

static void *late_thread(void *argument)
{
        report_own_status(argument);
        return NULL;
}

static void *child_thread(void *argument)
{
        char byte;

        (void)argument;
        while (read(release_pipe[0], &byte, 1) < 0 && errno == EINTR)
                ;
        return NULL;
}

/* The forked child: two threads of its own, then "ready" on ready_fd, then
 * it waits to be killed (or for posture to die). */
static _Noreturn void child_main(int ready_fd)
{
        pthread_t threads[2];

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (int i = 0; i < 2; i++)
                if (pthread_create(&threads[i], NULL, child_thread, NULL) != 0)
                        _exit(3);
        /* Give both threads time to exist in /proc before saying ready. */
        for (int tries = 0; tries < 200; tries++) {
                char path[64];
                DIR *tasks;
                int count = 0;

                snprintf(path, sizeof(path), "/proc/%d/task", getpid());
                tasks = opendir(path);
                if (tasks) {
                        for (struct dirent *entry; (entry = readdir(tasks));)
                                count += entry->d_name[0] != '.';
                        closedir(tasks);
                }
                if (count >= 3)
                        break;
                usleep(5000);
        }
        if (write(ready_fd, "r", 1) != 1)
                _exit(4);
        for (;;)
                pause();
}

/* ---- the /proc walk ------------------------------------------------------- */

static bool is_own_fd(int fd)
{
        for (size_t i = 0; i < own_fd_count; i++)
                if (own_fds[i] == fd)
                        return true;
        return false;
}

static void print_link(FILE *out, const char *key, const char *path)
{
        char target[PATH_MAX];
        ssize_t n = readlink(path, target, sizeof(target) - 1);

        if (n < 0) {
                json_errno(out, key, errno);
                return;
        }
        fprintf(out, ",\"%s\":", key);
        json_string(out, target, (size_t)n);
}

static void print_fds(FILE *out, int pid, bool is_posture)
{
        char path[64];
        DIR *directory;
        bool first = true;

        snprintf(path, sizeof(path), "/proc/%d/fd", pid);
        directory = opendir(path);
        if (!directory) {
                json_errno(out, "fds_error", errno);
                return;
        }
        fputs(",\"fds\":[", out);
        for (struct dirent *entry; (entry = readdir(directory));) {
                char link_path[384], target[PATH_MAX];
                struct stat st;
                ssize_t n;
                int fd;

                if (entry->d_name[0] == '.')
                        continue;
                fd = atoi(entry->d_name);
                /* The directory stream of this very walk is not the sandbox's. */
                if (is_posture && pid == getpid() && fd == dirfd(directory))
                        continue;
                snprintf(link_path, sizeof(link_path), "%s/%s", path, entry->d_name);
                n = readlink(link_path, target, sizeof(target) - 1);
                fprintf(out, "%s{\"fd\":%d", first ? "" : ",", fd);
                first = false;
                if (n >= 0) {
                        fputs(",\"target\":", out);
                        json_string(out, target, (size_t)n);
                } else {
                        json_errno(out, "target_error", errno);
                }
                if (stat(link_path, &st) == 0)
                        fprintf(out, ",\"directory\":%s", S_ISDIR(st.st_mode) ? "true" : "false");
                fprintf(out, ",\"posture\":%s}", is_posture && is_own_fd(fd) ? "true" : "false");
        }
        fputc(']', out);
        closedir(directory);
}

static void print_environ(FILE *out, int pid)
{
        char path[64];
        static char buffer[65536];
        ssize_t n;
        bool first = true;

        snprintf(path, sizeof(path), "/proc/%d/environ", pid);
        n = read_file(path, buffer, sizeof(buffer));
        if (n < 0) {
                json_errno(out, "environ_error", (int)-n);
                return;
        }
        fputs(",\"environ\":[", out);
        for (ssize_t i = 0; i < n;) {
                size_t length = strnlen(buffer + i, (size_t)(n - i));

                fputs(first ? "" : ",", out);
                json_string(out, buffer + i, length);
                first = false;
                i += (ssize_t)length + 1;
        }
        fputc(']', out);
}

static void print_process(FILE *out, int pid, bool is_posture)
{
        char path[64];

        fprintf(out, "{\"kind\":\"process\",\"pid\":%d,\"posture\":%s", pid, is_posture ? "true" : "false");
        snprintf(path, sizeof(path), "/proc/%d/cwd", pid);
        print_link(out, "cwd", path);
        snprintf(path, sizeof(path), "/proc/%d/root", pid);
        print_link(out, "root", path);
        snprintf(path, sizeof(path), "/proc/%d/exe", pid);
        print_link(out, "exe", path);
        print_fds(out, pid, is_posture);
        print_environ(out, pid);
        fputs("}\n", out);
}

static void print_tasks(FILE *out, int pid)
{
        char path[64];
        DIR *tasks;

        snprintf(path, sizeof(path), "/proc/%d/task", pid);
        tasks = opendir(path);
        if (!tasks) {
                fprintf(out, "{\"kind\":\"task\",\"pid\":%d,\"tid\":null", pid);
                json_errno(out, "error", errno);
                fputs("}\n", out);
                return;
        }
        for (struct dirent *entry; (entry = readdir(tasks));) {
                static char status[STATUS_TEXT_MAX];
                char status_path[384];
                ssize_t n;

                if (entry->d_name[0] == '.')
                        continue;
                snprintf(status_path, sizeof(status_path), "%s/%s/status", path, entry->d_name);
                fprintf(out, "{\"kind\":\"task\",\"pid\":%d,\"tid\":%d", pid, atoi(entry->d_name));
                n = read_file(status_path, status, sizeof(status));
                if (n < 0)
                        json_errno(out, "error", (int)-n);
                else
                        print_status_fields(out, status);
                fputs("}\n", out);
        }
        closedir(tasks);
}

static void walk_processes(FILE *out, bool all, pid_t child)
{
        DIR *proc = opendir("/proc");

        if (!proc) {
                fprintf(out, "{\"kind\":\"error\",\"what\":\"opendir /proc\"");
                json_errno(out, "error", errno);
                fputs("}\n", out);
                return;
        }
        /* Posture's own walk, not something the sandbox left open. */
        own_fd_add(dirfd(proc));
        for (struct dirent *entry; (entry = readdir(proc));) {
                int pid = atoi(entry->d_name);
                bool is_posture = pid == getpid() || (child > 0 && pid == child);

                if (pid <= 0 || (!all && !is_posture))
                        continue;
                print_tasks(out, pid);
                print_process(out, pid, is_posture);
        }
        own_fd_count--;
        closedir(proc);
}

/* ---- mounts, /dev, masked and read-only paths ----------------------------- */

/* Every mountinfo line, split into the fields the test needs. */
static void print_mounts(FILE *out)
{
        static char text[1 << 20];
        ssize_t n = read_file("/proc/self/mountinfo", text, sizeof(text));

        if (n < 0) {
                fputs("{\"kind\":\"error\",\"what\":\"mountinfo\"", out);
                json_errno(out, "error", (int)-n);
                fputs("}\n", out);
                return;
        }
        for (char *line = text, *next; *line; line = next) {
                char *fields[16], *save = NULL;
                size_t count = 0, separator = 0;

                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';
                else
                        next = line + strlen(line);
                for (char *field = strtok_r(line, " ", &save); field && count < 16;
                     field = strtok_r(NULL, " ", &save)) {
                        if (strcmp(field, "-") == 0)
                                separator = count;
                        fields[count++] = field;
                }
                /* id parent major:minor root point options [optional...] - fstype source super */
                if (separator < 6 || separator + 3 >= count)
                        continue;
                fputs("{\"kind\":\"mount\",\"id\":", out);
                fputs(fields[0], out);
                fputs(",\"parent\":", out);
                fputs(fields[1], out);
                fputs(",\"device\":", out);
                json_cstring(out, fields[2]);
                fputs(",\"root\":", out);
                json_cstring(out, fields[3]);
                fputs(",\"point\":", out);
                json_cstring(out, fields[4]);
                fputs(",\"options\":", out);
                json_cstring(out, fields[5]);
                fputs(",\"fstype\":", out);
                json_cstring(out, fields[separator + 1]);
                fputs(",\"source\":", out);
                json_cstring(out, fields[separator + 2]);
                fputs(",\"super\":", out);
                json_cstring(out, fields[separator + 3]);
                fputs("}\n", out);
        }
}

static void print_dev_entry(FILE *out, const char *directory, const char *name)
{
        char path[PATH_MAX];
        struct stat st;
        const char *type;

        snprintf(path, sizeof(path), "%s/%s", directory, name);
        fputs("{\"kind\":\"dev\",\"path\":", out);
        json_cstring(out, path);
        if (lstat(path, &st) < 0) {
                json_errno(out, "error", errno);
                fputs("}\n", out);
                return;
        }
        type = S_ISCHR(st.st_mode) ? "c" : S_ISBLK(st.st_mode) ? "b" : S_ISDIR(st.st_mode) ? "d"
             : S_ISLNK(st.st_mode) ? "l" : S_ISREG(st.st_mode) ? "f" : S_ISSOCK(st.st_mode) ? "s" : "p";
        fprintf(out, ",\"type\":\"%s\",\"mode\":%u,\"uid\":%u,\"gid\":%u", type,
                (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid, (unsigned)st.st_gid);
        if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))
                fprintf(out, ",\"major\":%u,\"minor\":%u", major(st.st_rdev), minor(st.st_rdev));
        if (S_ISLNK(st.st_mode))
                print_link(out, "target", path);
        fputs("}\n", out);
}

static void print_dev(FILE *out)
{
        static const char *const directories[] = { "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue" };

        for (size_t d = 0; d < sizeof(directories) / sizeof(directories[0]); d++) {
                DIR *directory = opendir(directories[d]);

                if (!directory)
                        continue;
                for (struct dirent *entry; (entry = readdir(directory));)
                        if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0)
                                print_dev_entry(out, directories[d], entry->d_name);
                closedir(directory);
        }
}

static void print_masked(FILE *out, const char *path)
{
        struct stat st;
        struct statvfs vfs;

        fputs("{\"kind\":\"masked\",\"path\":", out);
        json_cstring(out, path);
        if (stat(path, &st) < 0) {
                json_errno(out, "error", errno);
                fputs("}\n", out);
                return;
        }
        if (statvfs(path, &vfs) == 0)
                fprintf(out, ",\"readonly\":%s", vfs.f_flag & ST_RDONLY ? "true" : "false");
        if (S_ISDIR(st.st_mode)) {
                DIR *directory = opendir(path);
                int entries = 0;

                fputs(",\"type\":\"d\"", out);
                if (!directory) {
                        json_errno(out, "open_error", errno);
                } else {
                        for (struct dirent *entry; (entry = readdir(directory));)
                                entries += strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0;
                        closedir(directory);
                        fprintf(out, ",\"entries\":%d", entries);
                }
        } else {
                static char buffer[4096];
                ssize_t n;

                fprintf(out, ",\"type\":\"%s\"", S_ISCHR(st.st_mode) ? "c" : "f");
                if (S_ISCHR(st.st_mode))
                        fprintf(out, ",\"major\":%u,\"minor\":%u", major(st.st_rdev), minor(st.st_rdev));
                n = read_file(path, buffer, sizeof(buffer));
                if (n < 0)
                        json_errno(out, "open_error", (int)-n);
                else
                        fprintf(out, ",\"bytes\":%zd", n);
        }
        fputs("}\n", out);
}

static void print_readonly(FILE *out, const char *path)
{
        struct statvfs vfs;

        fputs("{\"kind\":\"readonly\",\"path\":", out);
        json_cstring(out, path);
        if (access(path, W_OK) == 0)
                fputs(",\"write\":\"ok\"", out);
        else
                json_errno(out, "write", errno);
        if (statvfs(path, &vfs) == 0)
                fprintf(out, ",\"readonly\":%s", vfs.f_flag & ST_RDONLY ? "true" : "false");
        else
                json_errno(out, "statvfs_error", errno);
        fputs("}\n", out);
}

static void print_self(FILE *out)
{
        static char map[4096];
        ssize_t n;

        fputs("{\"kind\":\"self\",\"pid\":", out);
        fprintf(out, "%d,\"uid\":%u,\"euid\":%u", getpid(), getuid(), geteuid());
        print_link(out, "cwd", "/proc/self/cwd");
        n = read_file("/proc/self/uid_map", map, sizeof(map));
        if (n >= 0) {
                fputs(",\"uid_map\":", out);
                json_string(out, map, (size_t)n);
        }
        fputs(",\"isatty\":[", out);
        for (int fd = 0; fd < 3; fd++)
                fprintf(out, "%s%s", fd ? "," : "", isatty(fd) ? "true" : "false");
        fputs("]}\n", out);
}

static void print_thread_report(FILE *out, const struct thread_report *report)
{
        fprintf(out, "{\"kind\":\"thread_self\",\"pid\":%d,\"tid\":%d,\"late\":%s", getpid(), report->tid,
                report->late ? "true" : "false");
        if (report->status_length < 0)
                json_errno(out, "error", (int)-report->status_length);
        else
                print_status_fields(out, report->status);
        fputs("}\n", out);
}

/* ---- main ----------------------------------------------------------------- */

static bool file_exists(const char *path)
{
        struct stat st;

        return stat(path, &st) == 0;
}

int main(int argc, char **argv)
{
        static const char *const masked[] = {
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/proc/interrupts", "/proc/config.gz", "/sys/firmware", "/sys/devices/virtual/powercap",
        };
        static const char *const readonly[] = {
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger", "/sys",
        };
        int thread_count = 3, wait_seconds = 0, ready_pipe[2];
        bool fork_child = true, all = true;
        const char *wait_file = NULL;
        pthread_t threads[MAX_THREADS + 1];
        pid_t child = -1;
        FILE *out = stdout;
        char byte;

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
                        thread_count = atoi(argv[++i]);
                else if (strcmp(argv[i], "--no-fork") == 0)
                        fork_child = false;
                else if (strcmp(argv[i], "--scope") == 0 && i + 1 < argc)
                        all = strcmp(argv[++i], "self") != 0;
                else if (strcmp(argv[i], "--wait-file") == 0 && i + 1 < argc)
                        wait_file = argv[++i];
                else if (strcmp(argv[i], "--wait-seconds") == 0 && i + 1 < argc)
                        wait_seconds = atoi(argv[++i]);
                else {
                        fprintf(stderr, "posture: bad argument %s\n", argv[i]);
                        return 2;
                }
        }
        if (thread_count < 0 || thread_count > MAX_THREADS)
                thread_count = 3;

        if (pipe2(release_pipe, O_CLOEXEC) < 0 || pipe2(ready_pipe, O_CLOEXEC) < 0) {
                perror("posture: pipe2");
                return 1;
        }
        own_fd_add(release_pipe[0]);
        own_fd_add(release_pipe[1]);
        own_fd_add(ready_pipe[0]);
        own_fd_add(ready_pipe[1]);

        if (fork_child) {
                fflush(NULL);
                child = fork();
                if (child < 0) {
                        perror("posture: fork");
                        return 1;
                }
                if (child == 0)
                        child_main(ready_pipe[1]);
        }

        pthread_barrier_init(&threads_ready, NULL, (unsigned)thread_count + 1);
        for (int i = 0; i < thread_count; i++)
                if (pthread_create(&threads[i], NULL, early_thread, &thread_reports[i]) != 0) {
                        fprintf(stderr, "posture: pthread_create failed\n");
                        return 1;
                }
        pthread_barrier_wait(&threads_ready);
        if (fork_child && read(ready_pipe[0], &byte, 1) != 1) {
                fprintf(stderr, "posture: child did not get ready\n");
                return 1;
        }

        walk_processes(out, all, child);

        /* A thread born after everything above: it must still carry the
         * filter and the reduced capability sets. */
        thread_reports[thread_count].late = true;
        if (pthread_create(&threads[thread_count], NULL, late_thread, &thread_reports[thread_count]) != 0 ||
            pthread_join(threads[thread_count], NULL) != 0) {
                fprintf(stderr, "posture: late thread failed\n");
                return 1;
        }
        for (int i = 0; i <= thread_count; i++)
                print_thread_report(out, &thread_reports[i]);

        print_self(out);
        print_mounts(out);
        print_dev(out);
        for (size_t i = 0; i < sizeof(masked) / sizeof(masked[0]); i++)
                print_masked(out, masked[i]);
        for (size_t i = 0; i < sizeof(readonly) / sizeof(readonly[0]); i++)
                print_readonly(out, readonly[i]);
        fputs("{\"kind\":\"end\"}\n", out);
        fflush(out);

        /* Hold every process and thread still while the host looks at them. */
        for (int waited_ms = 0; waited_ms < wait_seconds * 1000; waited_ms += 20) {
                if (wait_file && file_exists(wait_file))
                        break;
                usleep(20000);
        }
        if (child > 0) {
                kill(child, SIGKILL);
                waitpid(child, NULL, 0);
        }
        return 0;
}
