/* JSON request decoding: the first byte picks a decoder (decode.h: sandbox,
 * exec, run, network, signal, image import, ?timeout=, ?tag=, net_policy_parse,
 * net_ports_parse, the image build spec, image names, volume targets, CIDRs);
 * the rest is the body or value, exactly as a client sent it. */
#include "decode.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size < 1)
                return 0;
        fuzz_decode((enum fuzz_decoder)(1 + data[0] % (FUZZ_DECODE_COUNT - 1)), (const char *)data + 1, size - 1);
        return 0;
}
