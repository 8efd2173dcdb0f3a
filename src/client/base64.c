#include "base64.h"

#include <stdbool.h>
#include <stdint.h>

/* -1: not in the alphabet. */
static int base64_value(unsigned char c)
{
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+')
                return 62;
        if (c == '/')
                return 63;
        return -1;
}

long moat_base64_decode(const char *input, size_t input_length, unsigned char *output)
{
        size_t written = 0;

        if (input_length % 4 != 0)
                return -1;
        for (size_t i = 0; i < input_length; i += 4) {
                const unsigned char *quad = (const unsigned char *)input + i;
                bool last = i + 4 == input_length;
                int padding = 0;
                uint32_t bits = 0;

                for (int j = 0; j < 4; j++) {
                        int value;

                        if (quad[j] == '=') {
                                /* Padding only at the very end, in the last
                                 * one or two positions, and nothing after it. */
                                if (!last || j < 2)
                                        return -1;
                                padding++;
                                value = 0;
                        } else {
                                if (padding > 0)
                                        return -1;
                                value = base64_value(quad[j]);
                                if (value < 0)
                                        return -1;
                        }
                        bits = (bits << 6) | (uint32_t)value;
                }
                output[written++] = (unsigned char)(bits >> 16);
                if (padding < 2)
                        output[written++] = (unsigned char)(bits >> 8);
                if (padding < 1)
                        output[written++] = (unsigned char)bits;
        }
        return (long)written;
}
