/* Base64 (RFC 4648, standard alphabet) decoding for the `data` field of output
 * events. Strict: the server always pads, so anything else is a protocol error
 * we report rather than guess around. */
#pragma once
#include <stddef.h>

/* Largest number of bytes moat_base64_decode can write for input_length chars. */
#define MOAT_BASE64_DECODED_MAX(input_length) (((input_length) / 4 + 1) * 3)

/* Decode input[0..input_length) into output (at least
 * MOAT_BASE64_DECODED_MAX(input_length) bytes). Returns the number of bytes
 * written, or -1 if the input is not valid padded base64. */
long moat_base64_decode(const char *input, size_t input_length, unsigned char *output);
