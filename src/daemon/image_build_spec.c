#include "image_build_spec.h"

#include <ctype.h>
#include <stdbool.h>
#include <string.h>

#include "image_store.h"
#include "request.h"

static bool string_array(const json_t *value)
{
        const json_t *entry;
        size_t index;

        if (!json_is_array(value) || json_array_size(value) == 0 || json_array_size(value) > 1024)
                return false;
        json_array_foreach(value, index, entry)
                if (!json_is_string(entry) || json_string_length(entry) > 65536)
                        return false;
        return true;
}

/* Validate a step: exactly one known key, of the right shape. */
const char *image_build_step_kind(const json_t *step, const char **why)
{
        static const char *const kinds[] = {"run", "apt_install", "copy", "env", "workdir", "user", NULL};
        const char *key;
        json_t *value;

        *why = "a step is an object with one of run, apt_install, copy, env, workdir, user";
        if (!json_is_object(step) || json_object_size(step) != 1)
                return NULL;
        json_object_foreach((json_t *)step, key, value) {
                for (const char *const *k = kinds; *k; k++) {
                        if (strcmp(*k, key) != 0)
                                continue;
                        if (strcmp(key, "run") == 0 && !json_is_string(value) && !string_array(value))
                                return *why = "`run` is a shell command or a list of them", NULL;
                        if (strcmp(key, "apt_install") == 0) {
                                const json_t *entry;
                                size_t index;

                                if (!string_array(value))
                                        return *why = "`apt_install` is a list of package names", NULL;
                                json_array_foreach(value, index, entry)
                                        for (const char *p = json_string_value(entry); *p; p++)
                                                if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) ||
                                                      strchr("+-.:=~", *p)))
                                                        return *why = "`apt_install`: not a Debian package name",
                                                               NULL;
                        }
                        if (strcmp(key, "copy") == 0 &&
                            (!json_is_string(json_object_get(value, "src")) ||
                             !json_is_string(json_object_get(value, "dest"))))
                                return *why = "`copy` is {\"src\": path in the upload, \"dest\": absolute path}", NULL;
                        if (strcmp(key, "env") == 0) {
                                const char *name;
                                json_t *v;

                                if (!json_is_object(value))
                                        return *why = "`env` is an object of strings", NULL;
                                json_object_foreach(value, name, v)
                                        if (!json_is_string(v) || !request_env_key_valid(name))
                                                return *why = "`env`: keys [A-Za-z_][A-Za-z0-9_]*, string values",
                                                       NULL;
                        }
                        if (strcmp(key, "workdir") == 0 &&
                            (!json_is_string(value) || json_string_value(value)[0] != '/'))
                                return *why = "`workdir` is an absolute path", NULL;
                        if (strcmp(key, "user") == 0 && (!json_is_string(value) || !json_string_length(value)))
                                return *why = "`user` is a user name or uid[:gid]", NULL;
                        return *k;
                }
        }
        return NULL;
}

int image_build_spec_parse(const char *body, size_t length, json_t **ret_root, struct moat_error **err)
{
        static const char *const fields[] = {"name", "from", "steps", "context", NULL};
        const char *key, *why;
        json_t *root, *value, *steps, *name, *from, *context, *step;
        size_t index;

        *ret_root = NULL;
        root = json_loadb(body, length, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(root)) {
                json_decref(root);
                return moat_error_invalid(err, "the body is a build spec: {\"name\", \"from\", \"steps\", \"context\"}");
        }
        json_object_foreach(root, key, value) {
                bool known = false;

                for (const char *const *f = fields; *f; f++)
                        known |= strcmp(*f, key) == 0;
                if (!known) {
                        moat_error_invalid(err, "unknown field `%.64s`", key);
                        goto fail;
                }
        }
        name = json_object_get(root, "name");
        from = json_object_get(root, "from");
        steps = json_object_get(root, "steps");
        context = json_object_get(root, "context");
        if (!json_is_string(name) || !request_image_name_valid(json_string_value(name)) ||
            strcmp(json_string_value(name), IMAGE_HOST_NAME) == 0 || strncmp(json_string_value(name), "img-", 4) == 0) {
                moat_error_invalid(err, "`name` must be a valid image name");
                goto fail;
        }
        if (!json_is_string(from) || !request_image_name_valid(json_string_value(from))) {
                moat_error_invalid(err, "`from` must name an image (\"debian:bookworm-slim\", \"host\", ...)");
                goto fail;
        }
        if (!json_is_array(steps) || json_array_size(steps) > IMAGE_BUILD_STEPS_MAX) {
                moat_error_invalid(err, "`steps` must be a list of at most %d steps", IMAGE_BUILD_STEPS_MAX);
                goto fail;
        }
        json_array_foreach(steps, index, step)
                if (!image_build_step_kind(step, &why)) {
                        moat_error_invalid(err, "steps[%zu]: %s", index, why);
                        goto fail;
                }
        if (context && !json_is_null(context) &&
            (!json_is_string(context) ||
             json_string_length(context) > IMAGE_BUILD_CONTEXT_MAX / 3 * 4 + 4)) {
                moat_error_invalid(err, "`context` is a base64 tar of at most %d bytes", IMAGE_BUILD_CONTEXT_MAX);
                goto fail;
        }
        *ret_root = root;
        return 0;
fail:
        json_decref(root);
        return -1;
}
