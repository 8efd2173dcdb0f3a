/* The layered image builder (POST /v1/images/build): a spec of steps —
 * from, apt_install, run, copy, env, workdir, user — each cached by the hash
 * of (the previous step's key, the step, the copied content). A `run` or
 * `apt_install` step runs in a build sandbox with `internet` egress, and the
 * sandbox's changes become the step's layer (a snapshot); `copy` makes a layer
 * from the uploaded context; env/workdir/user change the config only.
 *
 * Each build runs on a thread of its own that drives moatd through its own
 * HTTP API (the C client library): the same create, exec, output and
 * snapshot paths every client uses, no second implementation. Only cache and
 * image-record changes run on the loop, through a blocking loop call. */
#pragma once
#include <jansson.h>

#include "api.h"
#include "image_build_spec.h"

#define IMAGE_BUILDS_MAX 4 /* at once */

void api_images_build(struct api_call *call);
