/* Debian base images built with debootstrap from the mirror this host's apt
 * uses (the one outside address such hosts reach), once: the finished tree is
 * kept in a cache directory shared by every moatd on the host (default
 * /var/cache/moat/debian), keyed by release, variant and mirror, and each
 * data dir imports it as a content-addressed layer.
 *
 *   debian:bookworm        debootstrap's default variant, plus python3
 *   debian:bookworm-slim   --variant=minbase plus python3 and ca-certificates
 */
#pragma once
#include <limits.h>
#include <stdbool.h>

#include "common/error.h"

#define IMAGE_DEBIAN_CACHE_DEFAULT "/var/cache/moat/debian"

/* "debian:<release>[-slim]" with release in [a-z]{3,16}. */
bool image_debian_ref(const char *ref, char release[32], bool *slim);

/* Blocking (worker). The cached tree for (release, slim), built with
 * debootstrap if missing; debootstrap's progress lines are written to
 * progress_fd as they come. out: the rootfs directory. */
int image_debian_build(const char *cache_root, const char *release, bool slim, int progress_fd,
                       char out[PATH_MAX], struct moat_error **err);
