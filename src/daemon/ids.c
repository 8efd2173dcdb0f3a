#include "ids.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

static int random_bytes(void *buffer, size_t length, struct moat_error **err)
{
        uint8_t *p = buffer;

        while (length > 0) {
                ssize_t n = getrandom(p, length, 0);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return moat_error_system(err, errno, "getrandom");
                }
                p += n;
                length -= (size_t)n;
        }
        return 0;
}

int moat_id_generate(const char *prefix, char out[MOAT_ID_MAX], struct moat_error **err)
{
        static const char hex[] = "0123456789abcdef";
        uint8_t bytes[MOAT_ID_HEX_DIGITS / 2];
        size_t prefix_length = strlen(prefix);

        if (prefix_length + MOAT_ID_HEX_DIGITS + 1 > MOAT_ID_MAX)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "id prefix `%s` too long", prefix);
        if (random_bytes(bytes, sizeof(bytes), err) < 0)
                return -1;
        memcpy(out, prefix, prefix_length);
        for (size_t i = 0; i < sizeof(bytes); i++) {
                out[prefix_length + 2 * i] = hex[bytes[i] >> 4];
                out[prefix_length + 2 * i + 1] = hex[bytes[i] & 0xf];
        }
        out[prefix_length + MOAT_ID_HEX_DIGITS] = '\0';
        return 0;
}

bool moat_id_valid(const char *prefix, const char *s)
{
        size_t prefix_length = strlen(prefix);

        if (!s || strncmp(s, prefix, prefix_length) != 0)
                return false;
        s += prefix_length;
        for (size_t i = 0; i < MOAT_ID_HEX_DIGITS; i++)
                if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                        return false;
        return s[MOAT_ID_HEX_DIGITS] == '\0';
}

int moat_random_below(unsigned long long bound, unsigned long long *ret_value, struct moat_error **err)
{
        /* Rejection sampling: a plain modulo would favour small values. */
        unsigned long long limit, value;

        if (bound == 0)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "random bound is 0");
        limit = UINT64_MAX - (UINT64_MAX % bound);
        do {
                if (random_bytes(&value, sizeof(value), err) < 0)
                        return -1;
        } while (value >= limit);
        *ret_value = value % bound;
        return 0;
}
