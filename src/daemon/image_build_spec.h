/* The build spec of POST /v1/images/build, validated: JSON text in, the
 * checked document or an invalid_argument error out. Pure (no daemon state),
 * so the fuzz harnesses (fuzz/) run it on arbitrary bodies. */
#pragma once
#include <jansson.h>
#include <stddef.h>

#include "common/error.h"

#define IMAGE_BUILD_STEPS_MAX 50
#define IMAGE_BUILD_CONTEXT_MAX (6 * 1024 * 1024) /* bytes of the context tar, before base64 */

/* Parse and check body: {"name", "from", "steps", "context"}: known fields
 * only, valid image names (name neither "host" nor an img-... id), at most
 * IMAGE_BUILD_STEPS_MAX steps each of a known kind and shape, context a
 * string of bounded length or null. *ret_root is the whole document. */
int image_build_spec_parse(const char *body, size_t length, json_t **ret_root, struct moat_error **err);

/* The kind of a step ("run", "apt_install", "copy", "env", "workdir",
 * "user"), or NULL with *why saying what is wrong with it. */
const char *image_build_step_kind(const json_t *step, const char **why);
