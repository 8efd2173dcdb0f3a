/* Errors: one allocated record, set once by the function that failed, with the
 * syscall and the path in its message. Callers add context with
 * moat_error_wrap(). A kind maps to one HTTP status in one table (api.c); the
 * code is the stable string clients switch on. */
#pragma once
#include <stdarg.h>
#include <stddef.h>

enum moat_error_kind {
        MOAT_ERROR_INVALID_ARGUMENT, /* 400 invalid_argument */
        MOAT_ERROR_NOT_FOUND,        /* 404 not_found */
        MOAT_ERROR_CONFLICT,         /* 409 conflict */
        MOAT_ERROR_LIMIT_EXCEEDED,   /* 429 limit_exceeded (413 for bodies) */
        MOAT_ERROR_TIMEOUT,          /* 504 timeout */
        MOAT_ERROR_UNAVAILABLE,      /* 503 unavailable */
        MOAT_ERROR_SYSTEM,           /* 500 system: a syscall failed */
        MOAT_ERROR_INTERNAL,         /* 500 internal: a bug */
};

struct moat_error {
        enum moat_error_kind kind;
        int errno_value;    /* 0 when no syscall is involved */
        char code[48];      /* stable machine code, e.g. "sandbox_not_running" */
        char message[1024]; /* for humans: "open `/x`: No such file or directory" */
};

/* Set *err (if err is non-NULL and *err is NULL) and return -1. errno_value is
 * appended to the message with strerror when non-zero. code may be NULL: the
 * kind's default code is used. */
int moat_error_set(struct moat_error **err, enum moat_error_kind kind, int errno_value,
                   const char *code, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));

/* Shorthands. */
#define moat_error_system(err, errnum, ...) \
        moat_error_set((err), MOAT_ERROR_SYSTEM, (errnum), NULL, __VA_ARGS__)
#define moat_error_invalid(err, ...) \
        moat_error_set((err), MOAT_ERROR_INVALID_ARGUMENT, 0, NULL, __VA_ARGS__)

/* Prefix the message of *err with "context: ". Returns -1. */
int moat_error_wrap(struct moat_error **err, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

const char *moat_error_kind_code(enum moat_error_kind kind);
void moat_error_free(struct moat_error *err);
