/* The moatd <-> moat-init wire protocol.
 *
 * Transport: a SOCK_STREAM unix socket. moat-init listens on it (the listening
 * fd is made by moatd before the sandbox exists and inherited by init, so the
 * socket lives outside the sandbox's filesystem view); moatd connects. A new
 * connection replaces the old one, which is how a restarted moatd re-attaches.
 *
 * Every frame is a 16-byte header followed by `length` payload bytes. Integers
 * are little-endian. A frame whose length exceeds MOAT_FRAME_PAYLOAD_MAX or
 * whose type is unknown is a protocol error: the receiver closes the
 * connection (init keeps running its processes; moatd marks the sandbox
 * broken). Neither side trusts the other's bytes: init is untrusted from
 * moatd's point of view once the workload runs, since the workload can ptrace
 * or replace it.
 *
 * Flow control (nothing is dropped, nothing grows without bound):
 *  - output: init reads a process's stdout/stderr pipe only while it holds
 *    more than MOAT_OUTPUT_FRAME_CHARGE credit for that stream; each OUTPUT
 *    frame spends its length plus MOAT_OUTPUT_FRAME_CHARGE (the charge stands
 *    for what moatd spends per frame beyond the bytes, so a flood of 1-byte
 *    frames cannot multiply moatd's memory against its budget). moatd grants
 *    credit (CREDIT) as its own per-stream buffer drains to clients. Initial
 *    credit per stream is MOAT_INITIAL_OUTPUT_CREDIT.
 *  - stdin: moatd may have at most MOAT_INITIAL_STDIN_CREDIT bytes of STDIN
 *    unacknowledged per process; init returns credit (STDIN_CREDIT) as the
 *    process reads from its pipe.
 *  - init also stops reading pipes while its outgoing socket queue exceeds
 *    MOAT_INIT_OUTQUEUE_MAX (for example while moatd is restarting).
 *
 * Handles: every per-process frame names its process by a handle, never by
 * its OS pid (a pid is reused as soon as the process is reaped, while init
 * may still hold its unsent output and EXIT). The handle is the SPAWN cookie:
 * moatd picks it, non-zero and never reused for one sandbox; init refuses a
 * SPAWN whose cookie is 0 or still in use (SPAWN_FAILED, EINVAL/EEXIST).
 *
 * Reconnection (a new connection replaces the old one):
 *  - frames queued for the old peer go to the new one; a peer must ignore
 *    SPAWNED/SPAWN_FAILED cookies it does not know;
 *  - output credit restarts at MOAT_INITIAL_OUTPUT_CREDIT per stream, less
 *    what is already queued for that stream;
 *  - stdin the old peer sent that the process has not yet read is dropped
 *    (the new peer cannot know what was sent).
 * SIGNAL numbers outside 1..64 are a protocol error.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MOAT_PROTOCOL_VERSION 1
#define MOAT_FRAME_HEADER_SIZE 16
#define MOAT_FRAME_PAYLOAD_MAX (1024 * 1024)
#define MOAT_OUTPUT_CHUNK_MAX (64 * 1024) /* init never sends bigger OUTPUT frames */
#define MOAT_INITIAL_OUTPUT_CREDIT (256 * 1024)
#define MOAT_OUTPUT_FRAME_CHARGE 128 /* credit each OUTPUT frame spends beyond its length */
#define MOAT_INITIAL_STDIN_CREDIT (256 * 1024)
#define MOAT_INIT_OUTQUEUE_MAX (1024 * 1024)
#define MOAT_SPAWN_ARGV_MAX 4096 /* argv entries */
#define MOAT_SPAWN_ENV_MAX 4096  /* env entries */
#define MOAT_INIT_PROCESSES_MAX 1024 /* live processes spawned through init */

enum moat_frame_type {
        /* moatd -> init */
        MOAT_FRAME_HELLO = 1,       /* payload: u32 protocol version */
        MOAT_FRAME_SPAWN = 2,       /* aux = cookie (the new process's handle); payload = spawn spec */
        MOAT_FRAME_STDIN = 3,       /* handle; payload = bytes (length > 0) */
        MOAT_FRAME_STDIN_CLOSE = 4, /* handle */
        MOAT_FRAME_SIGNAL = 5,      /* handle; aux = signal; sent to the process group */
        MOAT_FRAME_CREDIT = 6,      /* handle; flags = stream; aux = bytes granted */
        MOAT_FRAME_RESIZE = 7,      /* handle; aux = rows << 16 | cols (pty processes) */

        /* init -> moatd */
        MOAT_FRAME_HELLO_ACK = 64,    /* payload: u32 protocol version, u32 live processes */
        MOAT_FRAME_SPAWNED = 65,      /* handle = the cookie; aux = OS pid (in the sandbox) */
        MOAT_FRAME_SPAWN_FAILED = 66, /* aux = cookie; payload: u32 errno, then message bytes */
        MOAT_FRAME_OUTPUT = 67,       /* handle; flags = stream; payload = bytes (length > 0) */
        MOAT_FRAME_EXIT = 68,         /* handle; payload: i32 exit code (-1 if signalled), i32 signal */
        MOAT_FRAME_STDIN_CREDIT = 69, /* handle; aux = bytes the process consumed */
};

enum moat_stream {
        MOAT_STREAM_STDOUT = 1,
        MOAT_STREAM_STDERR = 2,
};

struct moat_frame_header {
        uint32_t length;
        uint16_t type;
        uint16_t flags;
        /* The process a per-process frame is about: its handle (see "Handles"
         * above), never its pid. */
        uint32_t handle;
        uint32_t aux;
};

/* Spawn spec flags. */
#define MOAT_SPAWN_STDIN 0x1u /* give the process a stdin pipe (else /dev/null) */
#define MOAT_SPAWN_PTY 0x2u   /* run on a new pty (stdout carries the terminal) */

/* A decoded SPAWN payload. Strings point into the payload buffer, which must
 * outlive this struct. argv and env are NULL-terminated. */
struct moat_spawn_spec {
        uint32_t flags;
        uint16_t rows, cols; /* pty size */
        const char *user;    /* "" = root; a name from the sandbox's /etc/passwd, or "uid[:gid]" */
        const char *cwd;     /* absolute path in the sandbox; "" = the user's home or / */
        uint32_t argc, envc;
        const char *argv[MOAT_SPAWN_ARGV_MAX + 1];
        const char *env[MOAT_SPAWN_ENV_MAX + 1];
};

/* Header codec. decode returns -1 if the type is unknown or the length is out
 * of range for the type. */
void moat_frame_header_encode(const struct moat_frame_header *h, uint8_t out[MOAT_FRAME_HEADER_SIZE]);
int moat_frame_header_decode(const uint8_t in[MOAT_FRAME_HEADER_SIZE], struct moat_frame_header *h);
bool moat_frame_type_known(uint16_t type);

/* Spawn spec codec. Layout: u32 flags, u16 rows, u16 cols, u32 argc, u32 envc,
 * then NUL-terminated strings: user, cwd, argv[argc], env[envc]; nothing after.
 * encode writes at most cap bytes and returns the length, or -1 if it does not
 * fit or a count exceeds its maximum. decode validates everything (counts,
 * termination, argc >= 1, no trailing bytes) and returns -1 on any violation. */
long moat_spawn_encode(uint8_t *out, size_t cap, uint32_t flags, uint16_t rows, uint16_t cols,
                       const char *user, const char *cwd, const char *const *argv, const char *const *env);
int moat_spawn_decode(const uint8_t *payload, size_t length, struct moat_spawn_spec *spec);

/* Little-endian helpers. */
static inline void moat_put_u32(uint8_t *p, uint32_t v)
{
        p[0] = (uint8_t)v;
        p[1] = (uint8_t)(v >> 8);
        p[2] = (uint8_t)(v >> 16);
        p[3] = (uint8_t)(v >> 24);
}
static inline uint32_t moat_get_u32(const uint8_t *p)
{
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline void moat_put_u16(uint8_t *p, uint16_t v)
{
        p[0] = (uint8_t)v;
        p[1] = (uint8_t)(v >> 8);
}
static inline uint16_t moat_get_u16(const uint8_t *p)
{
        return (uint16_t)(p[0] | p[1] << 8);
}
