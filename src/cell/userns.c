/* The sandbox's user namespace: sandbox ids 0..id_count-1 map to the host
 * range host_id_base..host_id_base+id_count-1, which belongs to this sandbox
 * alone. Defends against: sandbox root being host root (a kernel or mount
 * escape lands as an unprivileged uid), and sandboxes touching each other's
 * files or processes (no two share a host uid). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "../common/cleanup.h"
#include "cell_internal.h"

int moat_userns_write_maps(pid_t pid, uid_t host_id_base, uint32_t id_count, struct moat_error **err)
{
        static const char *const files[] = { "uid_map", "gid_map" };
        char path[64], line[64];
        int length = snprintf(line, sizeof(line), "0 %u %u\n", (unsigned)host_id_base, id_count);

        /* setgroups stays "allow": the map is written by a privileged parent,
         * and the child needs setgroups(0, NULL) to shed moatd's
         * supplementary groups (which would otherwise grant host gid 0). */
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(files); i++) {
                _cleanup_close_ int fd = -1;
                snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, files[i]);
                fd = open(path, O_WRONLY | O_CLOEXEC);
                if (fd < 0)
                        return moat_error_system(err, errno, "open `%s`", path);
                if (write(fd, line, (size_t)length) != length)
                        return moat_error_system(err, errno, "write `%s`", path);
        }
        return 0;
}
