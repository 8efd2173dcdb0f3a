#include "encoding.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

void encoding_base64_encode(const uint8_t *data, size_t n, char *out)
{
        static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        size_t i = 0, o = 0;

        for (; i + 3 <= n; i += 3) {
                uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
                out[o++] = alphabet[v >> 18];
                out[o++] = alphabet[(v >> 12) & 63];
                out[o++] = alphabet[(v >> 6) & 63];
                out[o++] = alphabet[v & 63];
        }
        if (n - i == 1) {
                uint32_t v = (uint32_t)data[i] << 16;
                out[o++] = alphabet[v >> 18];
                out[o++] = alphabet[(v >> 12) & 63];
                out[o++] = '=';
                out[o++] = '=';
        } else if (n - i == 2) {
                uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8;
                out[o++] = alphabet[v >> 18];
                out[o++] = alphabet[(v >> 12) & 63];
                out[o++] = alphabet[(v >> 6) & 63];
                out[o++] = '=';
        }
        out[o] = '\0';
}

bool encoding_utf8_valid(const uint8_t *s, size_t n)
{
        size_t i = 0;

        while (i < n) {
                uint8_t c = s[i];
                uint32_t cp;
                size_t extra;

                if (c < 0x80) {
                        i++;
                        continue;
                } else if (c >= 0xc2 && c <= 0xdf) {
                        extra = 1;
                        cp = c & 0x1f;
                } else if (c >= 0xe0 && c <= 0xef) {
                        extra = 2;
                        cp = c & 0x0f;
                } else if (c >= 0xf0 && c <= 0xf4) {
                        extra = 3;
                        cp = c & 0x07;
                } else {
                        return false;
                }
                if (n - i <= extra)
                        return false;
                for (size_t k = 1; k <= extra; k++) {
                        if ((s[i + k] & 0xc0) != 0x80)
                                return false;
                        cp = cp << 6 | (s[i + k] & 0x3f);
                }
                if ((extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) || cp > 0x10ffff ||
                    (cp >= 0xd800 && cp <= 0xdfff))
                        return false;
                i += extra + 1;
        }
        return true;
}

size_t encoding_output_line(char *out, int stream, const uint8_t *data, size_t n)
{
        const char *head = stream == 2 ? "{\"stream\":\"stderr\",\"data\":\"" : "{\"stream\":\"stdout\",\"data\":\"";
        size_t length = strlen(head);

        memcpy(out, head, length);
        encoding_base64_encode(data, n, out + length);
        length += encoding_base64_length(n);
        memcpy(out + length, "\"}\n", 3);
        return length + 3;
}

void encoding_format_time(int64_t ms, char out[ENCODING_TIME_MAX])
{
        time_t seconds = (time_t)(ms / 1000);
        struct tm tm;

        gmtime_r(&seconds, &tm);
        char date[24];

        strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(out, ENCODING_TIME_MAX, "%.19s.%03dZ", date, (int)(ms % 1000));
}
