/* The child side of SPAWN, between clone() and execve().
 *
 * The child shares init's memory (CLONE_VM | CLONE_VFORK, as posix_spawn
 * does): init is suspended until the child execs or exits, and no page table
 * is copied. On this project's VM-hosted test machine that is 1.2 ms less per
 * exec than fork(). It also means the child must leave init's memory as it
 * found it: nothing here allocates, takes a lock or changes a global that
 * init reads later (the environment is passed to execve explicitly, never
 * through `environ`). A failing step writes a fixed-size spawn_report to the
 * CLOEXEC pipe and _exits; init turns it into SPAWN_FAILED. */
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "common/passwd.h"

#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define REPORT_FD 3

static const char *env_with_defaults[MOAT_SPAWN_ENV_MAX + 8];
static char env_home[MOAT_PASSWD_HOME_MAX + 8];
static char env_user[MOAT_PASSWD_NAME_MAX + 8];
static char env_logname[MOAT_PASSWD_NAME_MAX + 16];

static _Noreturn void fail(int report_fd, int errno_value, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static _Noreturn void fail(int report_fd, int errno_value, const char *fmt, ...)
{
        struct spawn_report report = { .errno_value = errno_value };
        va_list ap;
        ssize_t ignored;

        va_start(ap, fmt);
        vsnprintf(report.message, sizeof(report.message), fmt, ap);
        va_end(ap);
        ignored = write(report_fd, &report, sizeof(report));
        (void)ignored;
        _exit(127);
}

static bool env_has(const struct moat_spawn_spec *spec, const char *name)
{
        size_t n = strlen(name);

        for (uint32_t i = 0; i < spec->envc; i++)
                if (strncmp(spec->env[i], name, n) == 0 && spec->env[i][n] == '=')
                        return true;
        return false;
}

static char **build_env(const struct moat_spawn_spec *spec, const struct moat_passwd_user *user)
{
        size_t n = 0;

        for (uint32_t i = 0; i < spec->envc; i++)
                env_with_defaults[n++] = spec->env[i];
        if (!env_has(spec, "PATH"))
                env_with_defaults[n++] = DEFAULT_PATH;
        if (!env_has(spec, "HOME")) {
                snprintf(env_home, sizeof(env_home), "HOME=%s", user->home[0] ? user->home : "/");
                env_with_defaults[n++] = env_home;
        }
        if (user->known && !env_has(spec, "USER")) {
                snprintf(env_user, sizeof(env_user), "USER=%s", user->name);
                env_with_defaults[n++] = env_user;
        }
        if (user->known && !env_has(spec, "LOGNAME")) {
                snprintf(env_logname, sizeof(env_logname), "LOGNAME=%s", user->name);
                env_with_defaults[n++] = env_logname;
        }
        env_with_defaults[n] = NULL;
        return (char **)env_with_defaults;
}

static void reset_signals(void)
{
        struct sigaction default_action = { .sa_handler = SIG_DFL };
        sigset_t none;

        /* init blocks the signals it reads through signalfd and ignores
         * SIGPIPE (main.c); both would be inherited across execve. Handlers
         * init does not have need no reset: execve resets caught signals. */
        sigaction(SIGPIPE, &default_action, NULL);
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
}

static const char *env_value(char *const *env, const char *name)
{
        size_t n = strlen(name);

        for (; *env; env++)
                if (strncmp(*env, name, n) == 0 && (*env)[n] == '=')
                        return *env + n + 1;
        return NULL;
}

/* execvpe(3) without its use of `environ` (shared with init here) and with
 * its error rule: the first EACCES wins over later ENOENTs. Returns the errno
 * to report. */
static int exec_search(const char *file, char *const *argv, char *const *env)
{
        char path[4096];
        const char *dirs, *end;
        int result = ENOENT;

        if (strchr(file, '/')) {
                execve(file, argv, env);
                return errno;
        }
        dirs = env_value(env, "PATH");
        if (!dirs)
                dirs = DEFAULT_PATH + 5;
        for (; ; dirs = end + 1) {
                size_t dir_length, file_length = strlen(file);

                end = strchrnul(dirs, ':');
                dir_length = (size_t)(end - dirs);
                if (dir_length + 1 + file_length + 1 <= sizeof(path)) {
                        /* An empty entry means the current directory. */
                        if (dir_length)
                                memcpy(path, dirs, dir_length);
                        else
                                path[dir_length++] = '.';
                        path[dir_length] = '/';
                        memcpy(path + dir_length + 1, file, file_length + 1);
                        execve(path, argv, env);
                        if (errno == EACCES)
                                result = EACCES;
                        else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE && errno != ENODEV &&
                                 errno != ETIMEDOUT)
                                return errno;
                }
                if (*end == '\0')
                        break;
        }
        return result;
}

static void setup_stdio(const struct spawn_fds *fds, int report_fd)
{
        int in = fds->stdin_fd, out = fds->stdout_fd, err = fds->stderr_fd;

        if (fds->pty_slave >= 0) {
                /* Our own session (setsid above) takes the pty as its
                 * controlling terminal, so ^C and job control reach it. */
                if (ioctl(fds->pty_slave, TIOCSCTTY, 0) < 0)
                        fail(report_fd, errno, "ioctl TIOCSCTTY");
                in = out = err = fds->pty_slave;
        } else if (in < 0) {
                in = open("/dev/null", O_RDONLY | O_NOCTTY | O_CLOEXEC);
                if (in < 0)
                        fail(report_fd, errno, "open `/dev/null`");
        }
        /* init keeps 0-2 occupied, so every source fd here is >= 3 and no
         * dup2 clobbers a source still needed. dup2 clears CLOEXEC. */
        if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
                fail(report_fd, errno, "dup2");
}

_Noreturn void spawn_child_run(const struct moat_spawn_spec *spec, const struct spawn_fds *fds)
{
        gid_t groups[MOAT_PASSWD_GROUPS_MAX];
        struct moat_passwd_user user;
        int report_fd = fds->report_fd;
        const char *dir;
        size_t ngroups;
        int r;

        reset_signals();
        /* Own session and process group: SIGNAL goes to the group, and a pty
         * can become the controlling terminal. */
        if (setsid() < 0)
                fail(report_fd, errno, "setsid");
        setup_stdio(fds, report_fd);
        if (report_fd != REPORT_FD) {
                if (dup3(report_fd, REPORT_FD, O_CLOEXEC) < 0)
                        fail(report_fd, errno, "dup3");
                report_fd = REPORT_FD;
        }
        /* Nothing of init's (the control socket, other processes' pipes) may
         * leak into the workload. */
        if (close_range(REPORT_FD + 1, ~0U, 0) < 0)
                fail(report_fd, errno, "close_range");

        r = moat_passwd_resolve_user("/etc/passwd", spec->user, &user);
        if (r < 0)
                fail(report_fd, -r, "user `%s`", spec->user);
        ngroups = user.known ? moat_passwd_user_groups("/etc/group", user.name, user.gid, groups) : 0;
        /* Order matters: groups and gid while we still have CAP_SETGID, uid
         * last. A non-root init (tests) can only keep its own identity. */
        if (geteuid() == 0 || user.uid != geteuid() || user.gid != getegid()) {
                if (setgroups(ngroups, groups) < 0)
                        fail(report_fd, errno, "setgroups");
                if (setgid(user.gid) < 0)
                        fail(report_fd, errno, "setgid %u", (unsigned)user.gid);
                if (setuid(user.uid) < 0)
                        fail(report_fd, errno, "setuid %u", (unsigned)user.uid);
        }

        if (spec->cwd[0]) {
                if (chdir(spec->cwd) < 0)
                        fail(report_fd, errno, "chdir `%s`", spec->cwd);
        } else {
                dir = user.home[0] ? user.home : "/";
                if (chdir(dir) < 0 && chdir("/") < 0)
                        fail(report_fd, errno, "chdir `/`");
        }

        r = exec_search(spec->argv[0], (char *const *)spec->argv, build_env(spec, &user));
        fail(report_fd, r, "execvp `%s`", spec->argv[0]);
}
