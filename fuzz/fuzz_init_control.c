/* The moatd -> init direction of the wire protocol: the fuzz bytes are a
 * control connection's byte stream as moat-init reads it. Framing is done the
 * way src/init/control.c's read_frames does (16-byte header through
 * moat_frame_header_decode, then `length` payload bytes), and each frame gets
 * the checks control.c's dispatch makes before it acts: HELLO first and only
 * once with our version, SIGNAL numbers 1..64, init->moatd types refused.
 *
 * What dispatch then does is not run: SPAWN forks and execs, STDIN/SIGNAL/
 * CREDIT/RESIZE act on live processes. Instead, for SPAWN, everything the
 * spawn path parses before it forks and in the child before execve is run
 * here: moat_spawn_decode on the payload, then the user spec through
 * moat_passwd_resolve_user / moat_passwd_user_groups against a passwd and a
 * group file the harness wrote (in the sandbox those files belong to the
 * workload, the spec to moatd). Nothing is ever executed. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/passwd.h"
#include "common/protocol.h"
#include "fuzz.h"

static char passwd_path[4200], group_path[4200];
static struct moat_spawn_spec spec; /* ~64 KiB: not on the stack */

static void write_file(const char *path, const char *text)
{
        FILE *f = fopen(path, "w");

        if (!f || fputs(text, f) < 0 || fclose(f) != 0)
                abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        /* Made once and kept for the whole run; removed at exit. */
        const char *dir = fuzz_scratch_new();

        snprintf(passwd_path, sizeof(passwd_path), "%s/passwd", dir);
        snprintf(group_path, sizeof(group_path), "%s/group", dir);
        write_file(passwd_path, "root:x:0:0:root:/root:/bin/bash\n"
                                "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
                                "user:x:1000:1000::/home/user:/bin/sh\n"
                                "broken:x:notanumber:1::/:/bin/sh\n"
                                "long:x:4294967294:4294967294:" /* the largest valid id */
                                ":/home/long:/bin/sh\n");
        write_file(group_path, "root:x:0:\nusers:x:100:user,daemon\nwheel:x:10:user\nbad:x:-1:user\n");
        return 0;
}

static void check_spawn(const uint8_t *payload, size_t length)
{
        struct moat_passwd_user user;
        gid_t groups[MOAT_PASSWD_GROUPS_MAX];

        if (moat_spawn_decode(payload, length, &spec) < 0)
                return;
        /* What the decoder promises (protocol.h): argc >= 1, both lists
         * NULL-terminated, every string inside the payload. */
        if (spec.argc < 1 || spec.argc > MOAT_SPAWN_ARGV_MAX || spec.envc > MOAT_SPAWN_ENV_MAX ||
            spec.argv[spec.argc] || spec.env[spec.envc] || !spec.user || !spec.cwd)
                abort();
        for (uint32_t i = 0; i < spec.argc; i++)
                if ((const uint8_t *)spec.argv[i] < payload ||
                    (const uint8_t *)spec.argv[i] + strlen(spec.argv[i]) >= payload + length)
                        abort();
        for (uint32_t i = 0; i < spec.envc; i++)
                if ((const uint8_t *)spec.env[i] < payload ||
                    (const uint8_t *)spec.env[i] + strlen(spec.env[i]) >= payload + length)
                        abort();
        if (moat_passwd_resolve_user(passwd_path, spec.user, &user) == 0 && user.known &&
            moat_passwd_user_groups(group_path, user.name, user.gid, groups) < 1)
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        bool hello_done = false;

        while (size >= MOAT_FRAME_HEADER_SIZE) {
                struct moat_frame_header h;
                const uint8_t *payload = data + MOAT_FRAME_HEADER_SIZE;

                if (moat_frame_header_decode(data, &h) < 0)
                        return 0; /* init closes the connection */
                if (h.length > MOAT_FRAME_PAYLOAD_MAX)
                        abort(); /* init's payload buffer is this big */
                if (size - MOAT_FRAME_HEADER_SIZE < h.length)
                        return 0; /* waits for the rest, then sees EOF */
                data += MOAT_FRAME_HEADER_SIZE + h.length;
                size -= MOAT_FRAME_HEADER_SIZE + h.length;

                if (h.type == MOAT_FRAME_HELLO) {
                        /* dispatch reads a u32 version from the payload. */
                        if (h.length < 4)
                                abort();
                        if (hello_done || moat_get_u32(payload) != MOAT_PROTOCOL_VERSION)
                                return 0;
                        hello_done = true;
                        continue;
                }
                if (!hello_done)
                        return 0;
                switch (h.type) {
                case MOAT_FRAME_SPAWN:
                        check_spawn(payload, h.length);
                        break;
                case MOAT_FRAME_STDIN:
                        if (h.length == 0)
                                abort(); /* io_stdin_push: STDIN carries bytes */
                        break;
                case MOAT_FRAME_SIGNAL:
                        if (h.aux < 1 || h.aux > 64)
                                return 0;
                        break;
                case MOAT_FRAME_STDIN_CLOSE:
                case MOAT_FRAME_CREDIT:
                case MOAT_FRAME_RESIZE:
                        break;
                default:
                        return 0; /* init -> moatd types are a protocol violation */
                }
        }
        return 0;
}
