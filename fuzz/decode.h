/* Run one of moatd's request decoders on body (see decode.c). */
#pragma once
#include <stddef.h>

enum fuzz_decoder {
        FUZZ_DECODE_NONE,
        FUZZ_DECODE_SANDBOX,
        FUZZ_DECODE_EXEC,
        FUZZ_DECODE_RUN,
        FUZZ_DECODE_NETWORK,
        FUZZ_DECODE_SIGNAL,
        FUZZ_DECODE_IMAGE_IMPORT,
        FUZZ_DECODE_SECONDS,
        FUZZ_DECODE_TAG_FILTER,
        FUZZ_DECODE_NET_POLICY,
        FUZZ_DECODE_NET_PORTS,
        FUZZ_DECODE_BUILD_SPEC,
        FUZZ_DECODE_IMAGE_NAME,
        FUZZ_DECODE_VOLUME_TARGET,
        FUZZ_DECODE_CIDR,
        FUZZ_DECODE_COUNT,
};

void fuzz_decode(enum fuzz_decoder decoder, const char *body, size_t length);
