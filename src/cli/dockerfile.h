/* The Dockerfile subset `moat image build -f FILE` reads, turned into the
 * build spec of POST /v1/images/build ({"from", "steps"}).
 *
 * The file format
 * ---------------
 * One instruction per line; instruction words are case-insensitive.
 *
 *   # comment            A line whose first non-blank character is `#`. Also
 *                        allowed between continued lines (dropped there).
 *   (blank lines)        Ignored.
 *   ... \                A backslash at the end of a line (trailing blanks
 *                        allowed) continues the instruction on the next one;
 *                        the two are joined without the backslash-newline.
 *   FROM image [AS name] First instruction, exactly once. `image` is any
 *                        image reference moatd knows ("host",
 *                        "debian:bookworm-slim" (pulled on first use), a
 *                        name, an img-... id). The stage name is ignored.
 *   RUN command          Shell form: run with `sh -c command`.
 *   RUN ["a", "b c"]     Exec form (a JSON array of strings): run as one shell
 *                        command whose words are single-quoted, so no shell
 *                        expansion happens: 'a' 'b c'. A `[` that is not a
 *                        valid JSON array of strings is shell form, as in
 *                        Docker.
 *   COPY src... dest     Files of the build context (CONTEXT_DIR) into the
 *   COPY ["src", "dest"] image. Sources are relative to the context, without
 *                        `..`, wildcards or symlinks on the way; a directory
 *                        source's contents go into dest; a file goes to dest,
 *                        or into it when dest ends with `/`. Several sources
 *                        need a dest ending with `/`. A relative dest is
 *                        relative to the WORKDIR so far. Files are owned by
 *                        root in the image (uid/gid 0), modes are kept.
 *                        --chown, --chmod, --from, --link: refused.
 *   ENV K=V [K2="v 2"]   Environment of later steps and of the image. Values
 *   ENV K value words    may be quoted ("..." or '...', \ escapes outside
 *                        single quotes). Legacy form: the first word is the
 *                        key, the rest of the line the value. Keys are
 *                        [A-Za-z_][A-Za-z0-9_]*. No $VAR substitution.
 *   WORKDIR path         Working directory of later steps and of the image;
 *                        relative to the previous WORKDIR (default /).
 *   USER name|uid[:gid]  The user later RUN steps and the image run as.
 *
 * Anything else (ADD, ARG, CMD, ENTRYPOINT, LABEL, EXPOSE, ...) is refused
 * with its line number rather than silently ignored: a build that differs from
 * what the file says is worse than one that does not start. At most
 * DOCKERFILE_STEPS_MAX steps (each RUN/ENV/WORKDIR/USER is one step, a COPY
 * one per source).
 */
#pragma once
#include <jansson.h>
#include <stddef.h>

#include "common/error.h"

#define DOCKERFILE_STEPS_MAX 50         /* moatd's IMAGE_BUILD_STEPS_MAX */
#define DOCKERFILE_SIZE_MAX (1u << 20) /* a Dockerfile is text a human writes */

/* Parse text[0..length) into *ret_spec = {"from": "...", "steps": [...]}. A
 * COPY step's dest is kept as written (absolute; a trailing `/` kept), and
 * the step carries its "line", until dockerfile_resolve_copies knows whether
 * its source is a file (and removes "line"). Errors:
 * code "invalid_dockerfile", message "line N: ...". */
int dockerfile_parse(const char *text, size_t length, json_t **ret_spec, struct moat_error **err);

/* Check every copy source of spec against the context directory context_fd
 * (it must exist there, beneath it, with no symlink on the way, and be a file
 * or a directory) and give each dest its final form: a file source copied to
 * a dest ending in `/` goes to dest/<its base name>; trailing slashes are
 * removed. */
int dockerfile_resolve_copies(json_t *spec, int context_fd, struct moat_error **err);

/* Open `path` (relative, checked by dockerfile_parse) beneath the directory
 * dir_fd without following any symlink: what the context tar and
 * dockerfile_resolve_copies read, so a symlink in the context can never
 * lead the CLI to a file outside it. flags as for open(2). Returns an fd
 * or -1 with errno. */
int dockerfile_open_beneath(int dir_fd, const char *path, int flags);

/* The single-quoted form of word for sh ('it'\''s'). Allocated. */
char *dockerfile_shell_quote(const char *word);
