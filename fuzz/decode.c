/* The request decoders moatd runs on client bytes (src/daemon/request.c,
 * netpolicy.c, image_build_spec.c), each followed by what moatd does next
 * with a decoded value (copy it, write it back as JSON, ask it about names),
 * so a decoder that accepts a value its users cannot handle shows up too.
 * Shared by fuzz_request (first byte picks) and fuzz_http (the route does). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "decode.h"
#include "image_build_spec.h"
#include "netpolicy.h"
#include "request.h"

static void exercise_policy(const struct net_policy *policy)
{
        static const char *const names[] = {"example.com", "a.example.com", "EXAMPLE.com.", "x", "", "..", NULL};
        struct net_policy copy = {0};
        json_t *json = net_policy_to_json(policy);

        json_decref(json);
        for (const char *const *name = names; *name; name++)
                (void)net_policy_name_allowed(policy, *name);
        for (size_t i = 0; i < policy->domain_count; i++)
                (void)net_policy_name_allowed(policy, policy->domains[i]);
        for (size_t i = 0; i < policy->cidr_count; i++) {
                char text[64];
                struct net_cidr again;

                net_cidr_format(&policy->cidrs[i], text, sizeof(text));
                /* What moatd writes back it must read back the same. */
                if (!net_cidr_parse(text, &again) || again.prefix != policy->cidrs[i].prefix ||
                    memcmp(again.address, policy->cidrs[i].address, sizeof(again.address)) != 0)
                        abort();
        }
        if (net_policy_copy(policy, &copy) == 0)
                net_policy_clear(&copy);
}

/* A JSON value for the decoders that take one (net_policy_parse, net_ports_parse). */
static json_t *load_value(const char *body, size_t length)
{
        return json_loadb(body, length, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
}

void fuzz_decode(enum fuzz_decoder decoder, const char *body, size_t length)
{
        struct moat_error *err = NULL;

        switch (decoder) {
        case FUZZ_DECODE_SANDBOX: {
                struct sandbox_request request = {0};

                if (request_parse_sandbox(body, length, 8.0, &request, &err) == 0) {
                        exercise_policy(&request.network);
                        (void)request_argv_env_bytes(request.entrypoint, request.env);
                        sandbox_request_clear(&request);
                }
                break;
        }
        case FUZZ_DECODE_EXEC:
        case FUZZ_DECODE_RUN: {
                struct exec_request request = {0};

                if (request_parse_exec(body, length, decoder == FUZZ_DECODE_RUN, "sh", &request, &err) == 0) {
                        (void)request_argv_env_bytes(request.argv, request.env);
                        exec_request_clear(&request);
                }
                break;
        }
        case FUZZ_DECODE_NETWORK: {
                struct net_policy policy = {0};

                if (request_parse_network(body, length, &policy, &err) == 0) {
                        exercise_policy(&policy);
                        net_policy_clear(&policy);
                }
                break;
        }
        case FUZZ_DECODE_SIGNAL: {
                int signal_number;

                if (request_parse_signal(body, length, &signal_number, &err) == 0 &&
                    (signal_number < 1 || signal_number > 64))
                        abort(); /* init refuses these as a protocol violation */
                break;
        }
        case FUZZ_DECODE_IMAGE_IMPORT: {
                char *path = NULL, *name = NULL;

                if (request_parse_image_import(body, length, &path, &name, &err) == 0) {
                        free(path);
                        free(name);
                }
                break;
        }
        case FUZZ_DECODE_SECONDS:
        case FUZZ_DECODE_TAG_FILTER:
        case FUZZ_DECODE_IMAGE_NAME:
        case FUZZ_DECODE_VOLUME_TARGET:
        case FUZZ_DECODE_CIDR: {
                /* Query values and names arrive as C strings. */
                char *text = strndup(body, length);
                double seconds;
                char *key = NULL, *value = NULL;
                struct net_cidr cidr;

                if (!text)
                        abort();
                if (decoder == FUZZ_DECODE_SECONDS)
                        (void)request_parse_seconds(text, &seconds, &err);
                else if (decoder == FUZZ_DECODE_TAG_FILTER && request_parse_tag_filter(text, &key, &value, &err) == 0) {
                        free(key);
                        free(value);
                } else if (decoder == FUZZ_DECODE_IMAGE_NAME)
                        (void)request_image_name_valid(text);
                else if (decoder == FUZZ_DECODE_VOLUME_TARGET)
                        (void)request_volume_target_valid(text);
                else if (decoder == FUZZ_DECODE_CIDR && net_cidr_parse(text, &cidr)) {
                        char formatted[64];

                        net_cidr_format(&cidr, formatted, sizeof(formatted));
                }
                free(text);
                break;
        }
        case FUZZ_DECODE_NET_POLICY: {
                json_t *value = load_value(body, length);
                struct net_policy policy = {0};

                if (value && net_policy_parse(value, &policy, &err) == 0) {
                        exercise_policy(&policy);
                        net_policy_clear(&policy);
                }
                json_decref(value);
                break;
        }
        case FUZZ_DECODE_NET_PORTS: {
                json_t *value = load_value(body, length);
                struct net_port ports[NET_PORTS_MAX];
                size_t count = 0;

                if (value && net_ports_parse(value, ports, &count, &err) == 0 && count > NET_PORTS_MAX)
                        abort();
                json_decref(value);
                break;
        }
        case FUZZ_DECODE_BUILD_SPEC: {
                json_t *root = NULL;

                if (image_build_spec_parse(body, length, &root, &err) == 0)
                        json_decref(root);
                break;
        }
        case FUZZ_DECODE_NONE:
        case FUZZ_DECODE_COUNT:
                break;
        }
        moat_error_free(err);
}
