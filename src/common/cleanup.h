/* Ownership helpers in the systemd style: an owning local carries a cleanup
 * attribute; TAKE_PTR/TAKE_FD hand it on and leave the local empty. */
#pragma once
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static inline void moat_freep(void *p)
{
        free(*(void **)p);
}
static inline void moat_closep(int *fd)
{
        if (*fd >= 0) {
                int saved = errno;
                close(*fd);
                errno = saved;
        }
}
static inline void moat_fclosep(FILE **f)
{
        if (*f)
                fclose(*f);
}

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _cleanup_free_ _cleanup_(moat_freep)
#define _cleanup_close_ _cleanup_(moat_closep)
#define _cleanup_fclose_ _cleanup_(moat_fclosep)

#define TAKE_PTR(p)                         \
        ({                                  \
                __typeof__(p) _taken_ = (p); \
                (p) = NULL;                 \
                _taken_;                    \
        })
#define TAKE_FD(fd)                 \
        ({                          \
                int _taken_ = (fd); \
                (fd) = -1;          \
                _taken_;            \
        })

#define MOAT_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
