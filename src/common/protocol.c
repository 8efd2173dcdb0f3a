#include "protocol.h"

#include <string.h>

bool moat_frame_type_known(uint16_t type)
{
        switch (type) {
        case MOAT_FRAME_HELLO:
        case MOAT_FRAME_SPAWN:
        case MOAT_FRAME_STDIN:
        case MOAT_FRAME_STDIN_CLOSE:
        case MOAT_FRAME_SIGNAL:
        case MOAT_FRAME_CREDIT:
        case MOAT_FRAME_RESIZE:
        case MOAT_FRAME_HELLO_ACK:
        case MOAT_FRAME_SPAWNED:
        case MOAT_FRAME_SPAWN_FAILED:
        case MOAT_FRAME_OUTPUT:
        case MOAT_FRAME_EXIT:
        case MOAT_FRAME_STDIN_CREDIT:
                return true;
        }
        return false;
}

void moat_frame_header_encode(const struct moat_frame_header *h, uint8_t out[MOAT_FRAME_HEADER_SIZE])
{
        moat_put_u32(out, h->length);
        moat_put_u16(out + 4, h->type);
        moat_put_u16(out + 6, h->flags);
        moat_put_u32(out + 8, h->handle);
        moat_put_u32(out + 12, h->aux);
}

int moat_frame_header_decode(const uint8_t in[MOAT_FRAME_HEADER_SIZE], struct moat_frame_header *h)
{
        struct moat_frame_header d = {
                .length = moat_get_u32(in),
                .type = moat_get_u16(in + 4),
                .flags = moat_get_u16(in + 6),
                .handle = moat_get_u32(in + 8),
                .aux = moat_get_u32(in + 12),
        };

        if (!moat_frame_type_known(d.type) || d.length > MOAT_FRAME_PAYLOAD_MAX)
                return -1;
        switch (d.type) {
        case MOAT_FRAME_HELLO:
                if (d.length != 4)
                        return -1;
                break;
        case MOAT_FRAME_HELLO_ACK:
        case MOAT_FRAME_EXIT:
                if (d.length != 8)
                        return -1;
                break;
        case MOAT_FRAME_STDIN:
                if (d.length == 0)
                        return -1;
                break;
        case MOAT_FRAME_OUTPUT:
                if (d.length == 0 || d.length > MOAT_OUTPUT_CHUNK_MAX)
                        return -1;
                if (d.flags != MOAT_STREAM_STDOUT && d.flags != MOAT_STREAM_STDERR)
                        return -1;
                break;
        case MOAT_FRAME_CREDIT:
                if (d.length != 0)
                        return -1;
                if (d.flags != MOAT_STREAM_STDOUT && d.flags != MOAT_STREAM_STDERR)
                        return -1;
                break;
        case MOAT_FRAME_SPAWN_FAILED:
                if (d.length < 4)
                        return -1;
                break;
        case MOAT_FRAME_SPAWN:
                break;
        default: /* STDIN_CLOSE, SIGNAL, RESIZE, SPAWNED, STDIN_CREDIT */
                if (d.length != 0)
                        return -1;
                break;
        }
        *h = d;
        return 0;
}

#define SPAWN_FIXED 16

static int put_string(uint8_t *out, size_t cap, size_t *pos, const char *s)
{
        size_t n = strlen(s) + 1;

        if (n > cap - *pos)
                return -1;
        memcpy(out + *pos, s, n);
        *pos += n;
        return 0;
}

long moat_spawn_encode(uint8_t *out, size_t cap, uint32_t flags, uint16_t rows, uint16_t cols,
                       const char *user, const char *cwd, const char *const *argv, const char *const *env)
{
        size_t pos = SPAWN_FIXED, argc = 0, envc = 0;

        while (argv && argv[argc])
                argc++;
        while (env && env[envc])
                envc++;
        if (argc == 0 || argc > MOAT_SPAWN_ARGV_MAX || envc > MOAT_SPAWN_ENV_MAX)
                return -1;
        if (cap < SPAWN_FIXED || cap > MOAT_FRAME_PAYLOAD_MAX)
                cap = cap < SPAWN_FIXED ? cap : MOAT_FRAME_PAYLOAD_MAX;
        if (cap < SPAWN_FIXED)
                return -1;
        moat_put_u32(out, flags);
        moat_put_u16(out + 4, rows);
        moat_put_u16(out + 6, cols);
        moat_put_u32(out + 8, (uint32_t)argc);
        moat_put_u32(out + 12, (uint32_t)envc);
        if (put_string(out, cap, &pos, user ? user : "") < 0 || put_string(out, cap, &pos, cwd ? cwd : "") < 0)
                return -1;
        for (size_t i = 0; i < argc; i++)
                if (put_string(out, cap, &pos, argv[i]) < 0)
                        return -1;
        for (size_t i = 0; i < envc; i++)
                if (put_string(out, cap, &pos, env[i]) < 0)
                        return -1;
        return (long)pos;
}

/* Take the next NUL-terminated string starting at *pos; -1 if unterminated. */
static const char *take_string(const uint8_t *p, size_t length, size_t *pos)
{
        const uint8_t *nul;
        const char *s;

        if (*pos >= length)
                return NULL;
        nul = memchr(p + *pos, '\0', length - *pos);
        if (!nul)
                return NULL;
        s = (const char *)p + *pos;
        *pos = (size_t)(nul - p) + 1;
        return s;
}

int moat_spawn_decode(const uint8_t *payload, size_t length, struct moat_spawn_spec *spec)
{
        size_t pos = SPAWN_FIXED;

        if (length < SPAWN_FIXED || length > MOAT_FRAME_PAYLOAD_MAX)
                return -1;
        spec->flags = moat_get_u32(payload);
        spec->rows = moat_get_u16(payload + 4);
        spec->cols = moat_get_u16(payload + 6);
        spec->argc = moat_get_u32(payload + 8);
        spec->envc = moat_get_u32(payload + 12);
        if (spec->flags & ~(MOAT_SPAWN_STDIN | MOAT_SPAWN_PTY))
                return -1;
        if (spec->argc == 0 || spec->argc > MOAT_SPAWN_ARGV_MAX || spec->envc > MOAT_SPAWN_ENV_MAX)
                return -1;
        if (!(spec->user = take_string(payload, length, &pos)))
                return -1;
        if (!(spec->cwd = take_string(payload, length, &pos)))
                return -1;
        for (uint32_t i = 0; i < spec->argc; i++)
                if (!(spec->argv[i] = take_string(payload, length, &pos)))
                        return -1;
        spec->argv[spec->argc] = NULL;
        for (uint32_t i = 0; i < spec->envc; i++)
                if (!(spec->env[i] = take_string(payload, length, &pos)))
                        return -1;
        spec->env[spec->envc] = NULL;
        if (pos != length)
                return -1;
        if (spec->argv[0][0] == '\0')
                return -1;
        if (spec->cwd[0] != '\0' && spec->cwd[0] != '/')
                return -1;
        return 0;
}
