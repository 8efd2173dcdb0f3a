#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_codes[] = {
        [MOAT_ERROR_INVALID_ARGUMENT] = "invalid_argument",
        [MOAT_ERROR_NOT_FOUND] = "not_found",
        [MOAT_ERROR_CONFLICT] = "conflict",
        [MOAT_ERROR_LIMIT_EXCEEDED] = "limit_exceeded",
        [MOAT_ERROR_TIMEOUT] = "timeout",
        [MOAT_ERROR_UNAVAILABLE] = "unavailable",
        [MOAT_ERROR_SYSTEM] = "system",
        [MOAT_ERROR_INTERNAL] = "internal",
};

const char *moat_error_kind_code(enum moat_error_kind kind)
{
        if ((size_t)kind >= sizeof(kind_codes) / sizeof(kind_codes[0]))
                return "internal";
        return kind_codes[kind];
}

int moat_error_set(struct moat_error **err, enum moat_error_kind kind, int errno_value,
                   const char *code, const char *fmt, ...)
{
        struct moat_error *e;
        va_list ap;
        size_t n;

        if (!err || *err)
                return -1;
        e = calloc(1, sizeof(*e));
        if (!e)
                return -1; /* out of memory: the caller still sees failure */
        e->kind = kind;
        e->errno_value = errno_value;
        snprintf(e->code, sizeof(e->code), "%s", code ? code : moat_error_kind_code(kind));
        va_start(ap, fmt);
        vsnprintf(e->message, sizeof(e->message), fmt, ap);
        va_end(ap);
        n = strlen(e->message);
        if (errno_value && n < sizeof(e->message))
                snprintf(e->message + n, sizeof(e->message) - n, ": %s", strerror(errno_value));
        *err = e;
        return -1;
}

int moat_error_wrap(struct moat_error **err, const char *fmt, ...)
{
        char prefix[512], old[sizeof((*err)->message)];
        va_list ap;

        if (!err || !*err)
                return -1;
        va_start(ap, fmt);
        vsnprintf(prefix, sizeof(prefix), fmt, ap);
        va_end(ap);
        memcpy(old, (*err)->message, sizeof(old));
        /* Truncation is acceptable: the message is for humans. */
        if (snprintf((*err)->message, sizeof((*err)->message), "%s: %s", prefix, old) < 0)
                (*err)->message[0] = '\0';
        return -1;
}

void moat_error_free(struct moat_error *err)
{
        free(err);
}
