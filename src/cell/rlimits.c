/* Resource limits of init (inherited by everything it spawns). Set from the
 * parent with prlimit() before the child runs: inside its user namespace the
 * child could lower but never raise a hard limit. Defends against: core dumps
 * writing sandbox memory to disk (CORE 0), unbounded fd use beyond a sane
 * ceiling (NOFILE). Memory, processes and CPU are bounded by the cgroup. */
#include <errno.h>
#include <sys/resource.h>

#include "../common/cleanup.h"
#include "cell_internal.h"

static const struct {
        int resource;
        const char *name;
        rlim_t soft, hard;
} sandbox_rlimits[] = {
        { RLIMIT_NOFILE, "NOFILE", 65536, 65536 },
        { RLIMIT_CORE, "CORE", 0, 0 },
        { RLIMIT_SIGPENDING, "SIGPENDING", 65536, 65536 },
        { RLIMIT_MSGQUEUE, "MSGQUEUE", 819200, 819200 },
};

int moat_rlimits_apply(pid_t pid, struct moat_error **err)
{
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(sandbox_rlimits); i++) {
                struct rlimit limit = { sandbox_rlimits[i].soft, sandbox_rlimits[i].hard }, old;
                if (prlimit(pid, sandbox_rlimits[i].resource, &limit, NULL) == 0)
                        continue;
                /* Raising a hard limit needs CAP_SYS_RESOURCE, which moatd may
                 * lack (e.g. itself in a container): then keep the inherited
                 * ceiling, which is moatd's own. */
                if (errno != EPERM || prlimit(pid, sandbox_rlimits[i].resource, NULL, &old) < 0 ||
                    old.rlim_max >= limit.rlim_max)
                        return moat_error_system(err, errno, "prlimit RLIMIT_%s", sandbox_rlimits[i].name);
                limit.rlim_max = old.rlim_max;
                if (limit.rlim_cur > limit.rlim_max)
                        limit.rlim_cur = limit.rlim_max;
                if (prlimit(pid, sandbox_rlimits[i].resource, &limit, NULL) < 0)
                        return moat_error_system(err, errno, "prlimit RLIMIT_%s", sandbox_rlimits[i].name);
        }
        return 0;
}
