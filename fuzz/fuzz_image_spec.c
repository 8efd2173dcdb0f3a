/* Image specs: the first byte picks the parser, the rest is its input.
 *   0: the build spec, the body of POST /v1/images/build
 *      (image_build_spec_parse, src/daemon/image_build_spec.c);
 *   1: a Dockerfile (dockerfile_parse, src/cli/dockerfile.c), whose spec is
 *      then checked by the same build-spec parser moatd runs on it: the
 *      steps of every Dockerfile the CLI accepts must be steps moatd accepts
 *      (the FROM image is not: only moatd knows its image names, and it
 *      refuses a bad one with a clear error);
 *   2: an image reference (registry_reference_parse, src/daemon/registry.c);
 *   3: a WWW-Authenticate challenge from a registry (registry_challenge_parse);
 *   4: a manifest or index as a registry serves it (registry_document_check). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode.h"
#include "dockerfile.h"
#include "fuzz.h"
#include "image_build_spec.h"
#include "registry.h"

static void check_dockerfile(const char *text, size_t length)
{
        struct moat_error *err = NULL;
        json_t *spec = NULL, *body, *root = NULL, *steps, *step;
        size_t index;
        char *dumped;

        if (dockerfile_parse(text, length, &spec, &err) < 0) {
                moat_error_free(err);
                return;
        }
        /* What `moat image build` does before it sends the spec: COPY steps
         * carry their "line" until dockerfile_resolve_copies, which needs the
         * context directory; drop it as that would. */
        steps = json_object_get(spec, "steps");
        json_array_foreach(steps, index, step)
                json_object_del(json_object_get(step, "copy"), "line");
        body = json_pack("{s:s, s:s, s:O}", "name", "fuzz", "from", "host", "steps", steps);
        dumped = body ? json_dumps(body, JSON_COMPACT) : NULL;
        if (!dumped)
                abort();
        if (image_build_spec_parse(dumped, strlen(dumped), &root, &err) < 0) {
                fprintf(stderr, "dockerfile accepted, spec refused: %s\n%s\n", err->message, dumped);
                abort();
        }
        json_decref(root);
        free(dumped);
        json_decref(body);
        json_decref(spec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct moat_error *err = NULL;
        char *text;

        if (size < 1)
                return 0;
        switch (data[0] % 5) {
        case 0:
                fuzz_decode(FUZZ_DECODE_BUILD_SPEC, (const char *)data + 1, size - 1);
                return 0;
        case 1:
                check_dockerfile((const char *)data + 1, size - 1);
                return 0;
        case 4:
                (void)registry_document_check((const char *)data + 1, size - 1, &err);
                moat_error_free(err);
                return 0;
        }
        /* References and headers arrive as C strings. */
        text = strndup((const char *)data + 1, size - 1);
        if (!text)
                abort();
        if (data[0] % 5 == 2) {
                struct registry_reference reference;

                if (registry_reference_parse(text, &reference, &err) == 0 && reference.digest[0] &&
                    !registry_digest_valid(reference.digest))
                        abort(); /* only valid digests ever reach a path */
        } else {
                struct registry_challenge challenge;

                (void)registry_challenge_parse(text, &challenge, &err);
        }
        moat_error_free(err);
        free(text);
        return 0;
}
