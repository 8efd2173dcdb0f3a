/* The child side of SPAWN, between fork() and execve(). Nothing here allocates
 * (init is single-threaded, but the rule keeps this path obviously safe); a
 * failing step writes a fixed-size spawn_report to the CLOEXEC pipe and
 * _exits, and init turns it into SPAWN_FAILED. */
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

extern char **environ;

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
        sigset_t none;

        /* init blocks the signals it reads through signalfd and ignores
         * SIGPIPE; both would be inherited across execve. */
        for (int sig = 1; sig < NSIG; sig++)
                signal(sig, SIG_DFL);
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
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

        /* execvpe searches the caller's PATH, so the new environment must be
         * the current one. */
        environ = build_env(spec, &user);
        execvpe(spec->argv[0], (char *const *)spec->argv, environ);
        fail(report_fd, errno, "execvp `%s`", spec->argv[0]);
}
