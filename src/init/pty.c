#include "pty.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "common/cleanup.h"

int pty_resize(int master, uint16_t rows, uint16_t cols)
{
        struct winsize ws = { .ws_row = rows, .ws_col = cols };

        if (rows == 0 || cols == 0)
                return 0; /* no size given: keep the kernel's default */
        return ioctl(master, TIOCSWINSZ, &ws) < 0 ? -errno : 0;
}

int pty_open(uint16_t rows, uint16_t cols, int *ret_master, int *ret_slave)
{
        _cleanup_close_ int master = -1, slave = -1;
        char name[128];

        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
        if (master < 0)
                return -errno;
        if (grantpt(master) < 0 || unlockpt(master) < 0 || ptsname_r(master, name, sizeof(name)) != 0)
                return -errno;
        /* O_NOCTTY: init must never acquire a controlling terminal; the child
         * takes it with TIOCSCTTY after setsid(). */
        slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (slave < 0)
                return -errno;
        pty_resize(master, rows, cols);
        *ret_master = TAKE_FD(master);
        *ret_slave = TAKE_FD(slave);
        return 0;
}
