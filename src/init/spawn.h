/* The forked child of a SPAWN, up to execve(). */
#pragma once
#include "common/protocol.h"

/* What the child reports through the CLOEXEC pipe when a step fails: the errno
 * and a message prefix ("execvp `python4`"); init appends strerror. Fixed size,
 * so the child never allocates and init reads it in one read(). */
struct spawn_report {
        int32_t errno_value;
        char message[500];
};

struct spawn_fds {
        int stdin_fd;  /* read end, or -1 for /dev/null */
        int stdout_fd; /* write ends; with a pty all three are the slave */
        int stderr_fd;
        int report_fd;
        int pty_slave; /* -1 without a pty */
};

_Noreturn void spawn_child_run(const struct moat_spawn_spec *spec, const struct spawn_fds *fds);
