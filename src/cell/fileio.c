/* Small whole-file helpers for cgroup and /proc control files (parent side). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "../common/cleanup.h"
#include "cell_internal.h"

int moat_write_file_at(int dir_fd, const char *name, const char *text, struct moat_error **err)
{
        _cleanup_close_ int fd = openat(dir_fd, name, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
        size_t length = strlen(text);
        ssize_t written;

        if (fd < 0)
                return moat_error_system(err, errno, "open `%s`", name);
        /* Control files take one write; a short write is an error. */
        written = write(fd, text, length);
        if (written < 0)
                return moat_error_system(err, errno, "write `%s` to `%s`", text, name);
        if ((size_t)written != length)
                return moat_error_system(err, EIO, "short write to `%s`", name);
        return 0;
}

int moat_write_file(const char *path, const char *text, struct moat_error **err)
{
        return moat_write_file_at(AT_FDCWD, path, text, err);
}

int moat_read_file(const char *path, char *buffer, size_t size, struct moat_error **err)
{
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        size_t total = 0;

        if (fd < 0)
                return moat_error_system(err, errno, "open `%s`", path);
        while (total + 1 < size) {
                ssize_t n = read(fd, buffer + total, size - 1 - total);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return moat_error_system(err, errno, "read `%s`", path);
                }
                if (n == 0)
                        break;
                total += (size_t)n;
        }
        buffer[total] = '\0';
        return (int)total;
}
