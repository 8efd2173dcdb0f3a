/* Byte encodings used on the HTTP side: base64 for output chunks, UTF-8
 * validation for /run's text fields, the NDJSON lines of an output stream and
 * RFC 3339 timestamps. Pure functions, unit-tested without a daemon. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes base64_encode writes for n input bytes, without the NUL. */
static inline size_t encoding_base64_length(size_t n)
{
        return (n + 2) / 3 * 4;
}
/* Writes encoding_base64_length(n) characters and a NUL to out. */
void encoding_base64_encode(const uint8_t *data, size_t n, char *out);

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
bool encoding_utf8_valid(const uint8_t *data, size_t n);

/* The most bytes encoding_output_line writes for n data bytes. */
static inline size_t encoding_output_line_max(size_t n)
{
        return 40 + encoding_base64_length(n);
}
/* One NDJSON output event: {"stream":"stdout","data":"<base64>"}\n.
 * stream is 1 (stdout) or 2 (stderr). Returns the length written (no NUL). */
size_t encoding_output_line(char *out, int stream, const uint8_t *data, size_t n);

/* "2026-11-24T22:31:35.123Z" from milliseconds since the epoch. */
#define ENCODING_TIME_MAX 32
void encoding_format_time(int64_t ms, char out[ENCODING_TIME_MAX]);
