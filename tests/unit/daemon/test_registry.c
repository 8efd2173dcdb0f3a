/* The registry pull client (src/daemon/registry.c) against real registries:
 * tests/e2e/registry_fixture.py starts Debian's docker-registry on 127.0.0.1
 * (open, htpasswd and token-auth instances over one storage), pushes test
 * images with skopeo and prints the path of a JSON file describing them. It
 * serves until our end of its stdin closes, then cleans up after itself.
 *
 * The fixture path comes from $MOAT_REGISTRY_FIXTURE (meson sets it), else
 * tests/e2e/registry_fixture.py relative to the working directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "registry.h"

static json_t *info; /* the fixture's description, NULL when it is not running */
static pid_t fixture_pid = -1;
static int fixture_stdin = -1;

/* ---- helpers ---- */

static const char *info_string(const char *a, const char *b)
{
        json_t *node = json_object_get(info, a);
        if (b)
                node = json_object_get(node, b);
        assert_non_null(json_string_value(node));
        return json_string_value(node);
}

static int info_port(const char *name)
{
        return (int)json_integer_value(json_object_get(json_object_get(info, name), "port"));
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        return remove(path);
}

struct scratch {
        char root[64], cache[128], out[128];
};

static void scratch_new(struct scratch *s)
{
        snprintf(s->root, sizeof(s->root), "/tmp/moat-test-registry-XXXXXX");
        assert_non_null(mkdtemp(s->root));
        snprintf(s->cache, sizeof(s->cache), "%s/blobs", s->root);
        snprintf(s->out, sizeof(s->out), "%s/out", s->root);
        assert_int_equal(mkdir(s->out, 0755), 0);
}

/* A fresh empty output directory next to the cache. */
static void scratch_new_out(struct scratch *s, const char *name)
{
        snprintf(s->out, sizeof(s->out), "%s/%s", s->root, name);
        assert_int_equal(mkdir(s->out, 0755), 0);
}

static void scratch_free(struct scratch *s)
{
        nftw(s->root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

struct events {
        int manifest, blob, done;
        uint64_t done_bytes;
};

static void on_event(void *ctx, const char *what, const char *digest, uint64_t done, uint64_t total)
{
        struct events *events = ctx;

        assert_true(registry_digest_valid(digest));
        assert_true(done <= total);
        if (strcmp(what, "manifest") == 0)
                events->manifest++;
        else if (strcmp(what, "blob") == 0)
                events->blob++;
        else if (strcmp(what, "done") == 0) {
                events->done++;
                events->done_bytes = done;
        } else
                fail_msg("unknown progress event %s", what);
}

/* Pull 127.0.0.1:<port of `registry`>/<path> into s. Returns registry_pull's
 * result; *ret_err holds the error (caller frees). */
static int pull(struct scratch *s, const char *registry, const char *path, const char *username,
                const char *password, struct events *events, struct moat_error **ret_err)
{
        struct registry_options options = {
                .insecure_http = true,
                .username = username,
                .password = password,
                .blob_cache_dir = s->cache,
        };
        struct registry_progress progress = { .on_event = on_event, .ctx = events };
        struct events ignored = { 0 };
        char reference[512];

        if (!events)
                progress.ctx = &ignored;
        snprintf(reference, sizeof(reference), "127.0.0.1:%d/%s", info_port(registry), path);
        *ret_err = NULL;
        return registry_pull(reference, &options, &progress, s->out, ret_err);
}

static void pull_ok(struct scratch *s, const char *registry, const char *path, const char *username,
                    const char *password, struct events *events)
{
        struct moat_error *err = NULL;
        int r = pull(s, registry, path, username, password, events, &err);
        if (r < 0)
                fail_msg("pull %s: %s: %s", path, err->code, err->message);
}

static void pull_fails(struct scratch *s, const char *registry, const char *path, const char *username,
                       const char *password, const char *code)
{
        struct moat_error *err = NULL;

        assert_int_equal(pull(s, registry, path, username, password, NULL, &err), -1);
        assert_non_null(err);
        if (strcmp(err->code, code) != 0)
                fail_msg("pull %s: expected %s, got %s: %s", path, code, err->code, err->message);
        if (getenv("MOAT_TEST_VERBOSE"))
                fprintf(stderr, "pull %s: %s: %s\n", path, err->code, err->message);
        moat_error_free(err);
}

static json_t *load_json(const char *dir, const char *name)
{
        char path[512];
        json_error_t error;
        json_t *root;

        snprintf(path, sizeof(path), "%s/%s", dir, name);
        root = json_load_file(path, 0, &error);
        if (!root)
                fail_msg("%s: %s", path, error.text);
        return root;
}

static bool cache_entry(const struct scratch *s, const char *digest, const char *suffix, struct stat *st)
{
        char path[512];
        struct stat ignored;

        snprintf(path, sizeof(path), "%s/sha256-%s%s", s->cache, digest + 7, suffix);
        return lstat(path, st ? st : &ignored) == 0;
}

/* The layout's blob for digest is the same inode as the cache entry. */
static void assert_linked(const struct scratch *s, const char *digest)
{
        char path[512];
        struct stat in_layout, in_cache;

        snprintf(path, sizeof(path), "%s/blobs/sha256/%s", s->out, digest + 7);
        assert_int_equal(lstat(path, &in_layout), 0);
        assert_true(cache_entry(s, digest, "", &in_cache));
        assert_int_equal(in_layout.st_ino, in_cache.st_ino);
        assert_true(in_layout.st_nlink >= 2);
}

/* Checks the layout in s->out holds manifest `digest` (annotated with tag,
 * or not at all when tag is NULL) with every blob linked; returns the
 * config text. */
static char *assert_layout(const struct scratch *s, const char *digest, const char *tag)
{
        json_t *index = load_json(s->out, "index.json"), *layout = load_json(s->out, "oci-layout");
        json_t *manifests = json_object_get(index, "manifests");
        json_t *entry = json_array_get(manifests, 0), *manifest, *layer;
        const char *ref_name = json_string_value(
                json_object_get(json_object_get(entry, "annotations"), "org.opencontainers.image.ref.name"));
        char path[512], *config_text;
        size_t i;

        assert_string_equal(json_string_value(json_object_get(layout, "imageLayoutVersion")), "1.0.0");
        assert_int_equal(json_array_size(manifests), 1);
        assert_string_equal(json_string_value(json_object_get(entry, "digest")), digest);
        if (tag)
                assert_string_equal(ref_name, tag);
        else
                assert_null(ref_name);
        assert_linked(s, digest);

        snprintf(path, sizeof(path), "blobs/sha256/%s", digest + 7);
        manifest = load_json(s->out, path);
        struct stat manifest_stat;
        snprintf(path, sizeof(path), "%s/blobs/sha256/%s", s->out, digest + 7);
        assert_int_equal(lstat(path, &manifest_stat), 0);
        assert_int_equal(json_integer_value(json_object_get(entry, "size")), manifest_stat.st_size);
        const char *config = json_string_value(json_object_get(json_object_get(manifest, "config"), "digest"));
        assert_linked(s, config);
        json_array_foreach(json_object_get(manifest, "layers"), i, layer)
                assert_linked(s, json_string_value(json_object_get(layer, "digest")));

        snprintf(path, sizeof(path), "blobs/sha256/%s", config + 7);
        json_t *config_json = load_json(s->out, path);
        config_text = json_dumps(config_json, 0);
        json_decref(config_json);
        json_decref(manifest);
        json_decref(index);
        json_decref(layout);
        return config_text;
}

/* Lines of a registry's access log with `needle` and HTTP status `status`. */
static int log_count(const char *registry, const char *needle, int status)
{
        FILE *f = fopen(info_string(registry, "log"), "r");
        char line[8192], status_text[16];
        int count = 0;

        assert_non_null(f);
        snprintf(status_text, sizeof(status_text), "\" %d ", status);
        while (fgets(line, sizeof(line), f))
                if (strstr(line, needle) && strstr(line, status_text) && strstr(line, "HTTP/1.1\""))
                        count++;
        fclose(f);
        return count;
}

static void skip_without_registry(void)
{
        if (!info)
                skip();
}

/* ---- pure parsing ---- */

static void test_reference_parse(void **state)
{
        struct registry_reference ref;
        struct moat_error *err = NULL;
        static const char *const bad[] = {
                "", "UPPER/case", "host:5000/", "a//b", "a/", "/a", "a:", "a:-x", "a@sha256:abc",
                "a@sha256:" "0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF",
                "a@md5:0123", "host:5000/a b", "a/../b", "a/.b", "h.io/a?x", "h@o.io/a", "a:tag/x",
                "h:/x", "[::1/x", "[::1]x/y", "h:123456/x",
        };

        assert_int_equal(registry_reference_parse("alpine", &ref, &err), 0);
        assert_string_equal(ref.host, "docker.io");
        assert_string_equal(ref.api_host, "registry-1.docker.io");
        assert_string_equal(ref.repository, "library/alpine");
        assert_string_equal(ref.tag, "latest");
        assert_string_equal(ref.digest, "");

        assert_int_equal(registry_reference_parse("user/app:v1.2", &ref, &err), 0);
        assert_string_equal(ref.host, "docker.io");
        assert_string_equal(ref.repository, "user/app");
        assert_string_equal(ref.tag, "v1.2");

        assert_int_equal(registry_reference_parse("127.0.0.1:5000/a/b/c:T_1", &ref, &err), 0);
        assert_string_equal(ref.host, "127.0.0.1:5000");
        assert_string_equal(ref.api_host, "127.0.0.1:5000");
        assert_string_equal(ref.repository, "a/b/c");
        assert_string_equal(ref.tag, "T_1");

        assert_int_equal(registry_reference_parse("[::1]:5000/x", &ref, &err), 0);
        assert_string_equal(ref.host, "[::1]:5000");

        assert_int_equal(registry_reference_parse("localhost/x", &ref, &err), 0);
        assert_string_equal(ref.host, "localhost");
        assert_string_equal(ref.repository, "x");

        assert_int_equal(registry_reference_parse(
                                 "ghcr.io/o/r@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                                 &ref, &err),
                         0);
        assert_string_equal(ref.host, "ghcr.io");
        assert_string_equal(ref.tag, "");
        assert_string_equal(ref.digest, "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");

        assert_int_equal(registry_reference_parse(
                                 "r:t@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", &ref,
                                 &err),
                         0);
        assert_string_equal(ref.repository, "library/r");
        assert_string_equal(ref.tag, "t");
        assert_true(ref.digest[0]);

        for (size_t i = 0; i < MOAT_ARRAY_SIZE(bad); i++) {
                err = NULL;
                if (registry_reference_parse(bad[i], &ref, &err) == 0)
                        fail_msg("`%s` was accepted", bad[i]);
                assert_string_equal(err->code, "invalid_argument");
                moat_error_free(err);
        }
        err = NULL;
        char long_name[2000];
        memset(long_name, 'a', sizeof(long_name) - 1);
        long_name[sizeof(long_name) - 1] = '\0';
        assert_int_equal(registry_reference_parse(long_name, &ref, &err), -1);
        moat_error_free(err);
}

static void test_digest_valid(void **state)
{
        assert_true(registry_digest_valid("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
        assert_false(registry_digest_valid("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde"));
        assert_false(registry_digest_valid("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0"));
        assert_false(registry_digest_valid("sha256:../3456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
        assert_false(registry_digest_valid("sha512:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
        assert_false(registry_digest_valid(NULL));
}

static void test_challenge_parse(void **state)
{
        struct registry_challenge c;
        struct moat_error *err = NULL;
        static const char *const bad[] = {
                "", "Bearer realm", "Bearer realm=\"unterminated", "Bearer realm=\"x\\", "Bearer realm=\"a\"junk",
                "Bearer =x", "Bearer realm=\"a\x01b\"",
        };

        assert_int_equal(registry_challenge_parse(
                                 "Bearer realm=\"https://auth.example/token\",service=\"registry.example\","
                                 "scope=\"repository:a/b:pull\"",
                                 &c, &err),
                         0);
        assert_string_equal(c.scheme, "Bearer");
        assert_string_equal(c.realm, "https://auth.example/token");
        assert_string_equal(c.service, "registry.example");
        assert_string_equal(c.scope, "repository:a/b:pull");

        /* Escapes, commas inside quotes, spaces, case, unknown and token values. */
        assert_int_equal(registry_challenge_parse(
                                 "bearer  REALM = \"https://a/t?x=1,y=\\\"2\\\"\" , error=\"insufficient_scope\","
                                 "service=svc , scope=\"repository:a:pull,push\"",
                                 &c, &err),
                         0);
        assert_string_equal(c.scheme, "bearer");
        assert_string_equal(c.realm, "https://a/t?x=1,y=\"2\"");
        assert_string_equal(c.service, "svc");
        assert_string_equal(c.scope, "repository:a:pull,push");

        assert_int_equal(registry_challenge_parse("Basic realm=\"Registry Realm\"", &c, &err), 0);
        assert_string_equal(c.scheme, "Basic");
        assert_string_equal(c.realm, "Registry Realm");
        assert_string_equal(c.service, "");

        for (size_t i = 0; i < MOAT_ARRAY_SIZE(bad); i++) {
                err = NULL;
                if (registry_challenge_parse(bad[i], &c, &err) == 0)
                        fail_msg("`%s` was accepted", bad[i]);
                assert_string_equal(err->code, "invalid_argument");
                moat_error_free(err);
        }

        /* A realm longer than its buffer, and a header past the bound. */
        static char long_header[REGISTRY_CHALLENGE_MAX_BYTES + 64];
        strcpy(long_header, "Bearer realm=\"");
        memset(long_header + 14, 'a', 2000);
        strcpy(long_header + 2014, "\"");
        err = NULL;
        assert_int_equal(registry_challenge_parse(long_header, &c, &err), -1);
        moat_error_free(err);
        memset(long_header, 'a', REGISTRY_CHALLENGE_MAX_BYTES + 10);
        long_header[REGISTRY_CHALLENGE_MAX_BYTES + 10] = '\0';
        err = NULL;
        assert_int_equal(registry_challenge_parse(long_header, &c, &err), -1);
        moat_error_free(err);
}

/* ---- against the registries ---- */

static void test_pull_index_by_tag(void **state)
{
        struct scratch s;
        struct events events = { 0 };
        char *config;

        skip_without_registry();
        scratch_new(&s);
        pull_ok(&s, "open", "test/img:1", NULL, NULL, &events);
        /* The index lists arm64 first: the amd64 manifest must be chosen. */
        config = assert_layout(&s, info_string("images", "amd64_manifest"), "1");
        assert_non_null(strstr(config, "MOAT_ARCH=amd64"));
        assert_non_null(strstr(config, "\"WorkingDir\": \"/work\""));
        free(config);
        assert_int_equal(events.manifest, 1);
        assert_true(events.blob >= 3);
        assert_int_equal(events.done, 1);
        assert_true(events.done_bytes > 500 * 1024);
        /* Nothing but complete entries is left in the cache. */
        json_t *layer;
        size_t i;
        json_array_foreach(json_object_get(json_object_get(info, "images"), "amd64_layers"), i, layer)
                assert_false(cache_entry(&s, json_string_value(json_object_get(layer, "digest")), ".partial", NULL));

        /* The output directory must be empty. */
        struct moat_error *err = NULL;
        assert_int_equal(pull(&s, "open", "test/img:1", NULL, NULL, NULL, &err), -1);
        assert_string_equal(err->code, "conflict");
        moat_error_free(err);
        scratch_free(&s);
}

static void test_pull_by_digest(void **state)
{
        struct scratch s;
        char path[256];
        char *config;

        skip_without_registry();
        scratch_new(&s);
        snprintf(path, sizeof(path), "test/img@%s", info_string("images", "single_digest"));
        pull_ok(&s, "open", path, NULL, NULL, NULL);
        free(assert_layout(&s, info_string("images", "amd64_manifest"), NULL));

        /* The index by digest: verified, then resolved to amd64. */
        scratch_new_out(&s, "out2");
        snprintf(path, sizeof(path), "test/img@%s", info_string("images", "index_digest"));
        pull_ok(&s, "open", path, NULL, NULL, NULL);
        config = assert_layout(&s, info_string("images", "amd64_manifest"), NULL);
        assert_non_null(strstr(config, "MOAT_ARCH=amd64"));
        free(config);

        /* Tag and digest: the digest decides, the tag names it. */
        scratch_new_out(&s, "out3");
        snprintf(path, sizeof(path), "test/img:named@%s", info_string("images", "single_digest"));
        pull_ok(&s, "open", path, NULL, NULL, NULL);
        free(assert_layout(&s, info_string("images", "amd64_manifest"), "named"));
        scratch_free(&s);
}

static void test_pull_docker_schema2(void **state)
{
        struct scratch s;
        json_t *index;
        char *config;

        skip_without_registry();
        scratch_new(&s);
        pull_ok(&s, "open", "test/docker:1", NULL, NULL, NULL);
        config = assert_layout(&s, info_string("images", "docker_digest"), "1");
        assert_non_null(strstr(config, "MOAT_ARCH=amd64"));
        free(config);
        index = load_json(s.out, "index.json");
        assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(index, "manifests"), 0),
                                                              "mediaType")),
                            "application/vnd.docker.distribution.manifest.v2+json");
        json_decref(index);
        scratch_free(&s);
}

static void test_cache_reuse(void **state)
{
        struct scratch s;
        struct stat before[3], after[3];
        json_t *layers = json_object_get(json_object_get(info, "images"), "amd64_layers");
        const char *digests[3];
        int blob_gets;

        skip_without_registry();
        digests[0] = info_string("images", "amd64_config");
        digests[1] = json_string_value(json_object_get(json_array_get(layers, 0), "digest"));
        digests[2] = json_string_value(json_object_get(json_array_get(layers, 1), "digest"));
        scratch_new(&s);
        pull_ok(&s, "open", "test/img:1", NULL, NULL, NULL);
        for (int i = 0; i < 3; i++)
                assert_true(cache_entry(&s, digests[i], "", &before[i]));
        blob_gets = log_count("open", "/blobs/", 200) + log_count("open", "/blobs/", 206);

        scratch_new_out(&s, "again");
        pull_ok(&s, "open", "test/img:1", NULL, NULL, NULL);
        free(assert_layout(&s, info_string("images", "amd64_manifest"), "1"));
        for (int i = 0; i < 3; i++) {
                assert_true(cache_entry(&s, digests[i], "", &after[i]));
                assert_int_equal(before[i].st_ino, after[i].st_ino);
                assert_int_equal(before[i].st_mtim.tv_nsec, after[i].st_mtim.tv_nsec);
        }
        /* The registry saw manifest requests only. */
        assert_int_equal(log_count("open", "/blobs/", 200) + log_count("open", "/blobs/", 206), blob_gets);
        scratch_free(&s);
}

static void write_partial(const struct scratch *s, const char *digest, const char *source, size_t length,
                          bool garbage)
{
        char path[512];
        char *data = calloc(1, length);
        FILE *in, *out;

        assert_non_null(data);
        assert_int_equal(mkdir(s->cache, 0700), 0);
        in = fopen(source, "rb");
        assert_non_null(in);
        assert_int_equal(fread(data, 1, length, in), length);
        fclose(in);
        if (garbage)
                for (size_t i = 0; i < length; i += 97)
                        data[i] ^= 0x5a;
        snprintf(path, sizeof(path), "%s/sha256-%s.partial", s->cache, digest + 7);
        out = fopen(path, "wb");
        assert_non_null(out);
        assert_int_equal(fwrite(data, 1, length, out), length);
        fclose(out);
        free(data);
}

static void test_resume_partial(void **state)
{
        struct scratch s;
        json_t *layer = json_array_get(json_object_get(json_object_get(info, "images"), "amd64_layers"), 0);
        const char *digest, *source;
        char needle[256];
        size_t size;
        int ranged;

        skip_without_registry();
        digest = json_string_value(json_object_get(layer, "digest"));
        source = json_string_value(json_object_get(layer, "path"));
        size = (size_t)json_integer_value(json_object_get(layer, "size"));
        snprintf(needle, sizeof(needle), "/v2/test/img/blobs/%s", digest);
        ranged = log_count("open", needle, 206);

        scratch_new(&s);
        write_partial(&s, digest, source, size / 2, false);
        pull_ok(&s, "open", "test/img:single", NULL, NULL, NULL);
        free(assert_layout(&s, info_string("images", "amd64_manifest"), "single"));
        assert_false(cache_entry(&s, digest, ".partial", NULL));
        /* The rest came as a 206 answer to our Range request. */
        assert_int_equal(log_count("open", needle, 206), ranged + 1);
        scratch_free(&s);
}

static void test_resume_corrupt_partial(void **state)
{
        struct scratch s;
        json_t *layer = json_array_get(json_object_get(json_object_get(info, "images"), "amd64_layers"), 1);
        const char *digest;

        skip_without_registry();
        digest = json_string_value(json_object_get(layer, "digest"));
        scratch_new(&s);
        write_partial(&s, digest, json_string_value(json_object_get(layer, "path")),
                      (size_t)json_integer_value(json_object_get(layer, "size")) / 3, true);
        pull_fails(&s, "open", "test/img:single", NULL, NULL, "digest_mismatch");
        assert_false(cache_entry(&s, digest, "", NULL));
        assert_false(cache_entry(&s, digest, ".partial", NULL));
        /* The bad partial is gone, so the next pull starts clean. */
        pull_ok(&s, "open", "test/img:single", NULL, NULL, NULL);
        free(assert_layout(&s, info_string("images", "amd64_manifest"), "single"));
        scratch_free(&s);
}

static void test_registry_serves_corrupt_blob(void **state)
{
        struct scratch s;
        const char *digest;
        char index_path[512];

        skip_without_registry();
        digest = info_string("images", "corrupt_layer");
        scratch_new(&s);
        pull_fails(&s, "open", "test/corrupt:1", NULL, NULL, "digest_mismatch");
        assert_false(cache_entry(&s, digest, "", NULL));
        assert_false(cache_entry(&s, digest, ".partial", NULL));
        snprintf(index_path, sizeof(index_path), "%s/index.json", s.out);
        assert_int_equal(access(index_path, F_OK), -1);
        scratch_free(&s);
}

static void test_not_found_and_platform(void **state)
{
        struct scratch s;

        skip_without_registry();
        scratch_new(&s);
        pull_fails(&s, "open", "test/img:nope", NULL, NULL, "not_found");
        pull_fails(&s, "open", "test/nothing:1", NULL, NULL, "not_found");
        pull_fails(&s, "open", "test/img@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                   NULL, NULL, "not_found");
        pull_fails(&s, "open", "test/armonly:1", NULL, NULL, "no_matching_platform");
        pull_fails(&s, "open", "Bad/Name:1", NULL, NULL, "invalid_argument");
        scratch_free(&s);
}

static void test_https_required(void **state)
{
        struct scratch s;
        struct registry_options options = { .insecure_http = false };
        struct moat_error *err = NULL;
        char reference[128];

        skip_without_registry();
        scratch_new(&s);
        options.blob_cache_dir = s.cache;
        /* The registry speaks plain http: a TLS client must fail, not fall back. */
        snprintf(reference, sizeof(reference), "127.0.0.1:%d/test/img:1", info_port("open"));
        assert_int_equal(registry_pull(reference, &options, NULL, s.out, &err), -1);
        assert_string_equal(err->code, "registry_error");
        moat_error_free(err);
        scratch_free(&s);
}

static void test_basic_auth(void **state)
{
        struct scratch s;

        skip_without_registry();
        scratch_new(&s);
        pull_fails(&s, "basic", "test/img:1", NULL, NULL, "unauthorized");
        pull_fails(&s, "basic", "test/img:1", info_string("username", NULL), "wrong", "unauthorized");
        pull_ok(&s, "basic", "test/img:1", info_string("username", NULL), info_string("password", NULL), NULL);
        free(assert_layout(&s, info_string("images", "amd64_manifest"), "1"));
        scratch_free(&s);
}

static int token_requests(bool authorized)
{
        FILE *f = fopen(info_string("token", "token_log"), "r");
        char line[4096];
        int count = 0;

        if (!f)
                return 0;
        while (fgets(line, sizeof(line), f))
                if (strstr(line, authorized ? "\"authorized\": true" : "\"authorized\": false"))
                        count++;
        fclose(f);
        return count;
}

static void test_token_auth(void **state)
{
        struct scratch s;
        int refused, granted;

        skip_without_registry();
        scratch_new(&s);
        refused = token_requests(false);
        pull_fails(&s, "token", "test/img:1", NULL, NULL, "unauthorized");
        pull_fails(&s, "token", "test/img:1", info_string("username", NULL), "wrong", "unauthorized");
        assert_int_equal(token_requests(false), refused + 2);

        granted = token_requests(true);
        pull_ok(&s, "token", "test/img:1", info_string("username", NULL), info_string("password", NULL), NULL);
        free(assert_layout(&s, info_string("images", "amd64_manifest"), "1"));
        /* One token serves the whole pull (index, manifest, three blobs). */
        assert_int_equal(token_requests(true), granted + 1);
        scratch_free(&s);
}

/* A registry that lies or floods: every answer is a clear error, nothing
 * but verified blobs lands in the cache, nothing crashes. */
static void test_hostile_registry(void **state)
{
        static const struct {
                const char *path, *code;
        } cases[] = {
                { "big:1", "registry_error" },          /* manifest over 4 MiB */
                { "deep:1", "registry_error" },         /* JSON nested 200 deep */
                { "longblob:1", "registry_error" },     /* blob longer than its descriptor */
                { "badchallenge:1", "unauthorized" },   /* unterminated quoted string */
                { "evilrealm:1", "unauthorized" },      /* file:// realm */
                { "badtoken:1", "registry_error" },     /* CR LF in the token */
                { "badmedia:1", "unsupported_media_type" },
                { "baddigest:1", "registry_error" },    /* "sha256:../../etc/passwd" */
        };
        struct scratch s;
        DIR *dir;
        struct dirent *entry;

        skip_without_registry();
        scratch_new(&s);
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(cases); i++)
                pull_fails(&s, "hostile", cases[i].path, NULL, NULL, cases[i].code);
        /* Only the verified config blob and nothing half-written. */
        dir = opendir(s.cache);
        assert_non_null(dir);
        while ((entry = readdir(dir)))
                if (strstr(entry->d_name, ".partial") || strstr(entry->d_name, ".tmp"))
                        fail_msg("left in the cache: %s", entry->d_name);
        closedir(dir);
        scratch_free(&s);
}

/* ---- the fixture process ---- */

static int fixture_start(void)
{
        const char *script = getenv("MOAT_REGISTRY_FIXTURE");
        int to_child[2], from_child[2], status;
        char line[4096];
        FILE *out;
        json_error_t error;

        if (!script)
                script = "tests/e2e/registry_fixture.py";
        if (pipe2(to_child, O_CLOEXEC) < 0 || pipe2(from_child, O_CLOEXEC) < 0)
                return -1;
        fixture_pid = fork();
        if (fixture_pid < 0)
                return -1;
        if (fixture_pid == 0) {
                dup2(to_child[0], 0);
                dup2(from_child[1], 1);
                execl("/usr/bin/python3", "python3", script, "serve", (char *)NULL);
                _exit(127);
        }
        close(to_child[0]);
        close(from_child[1]);
        fixture_stdin = to_child[1];
        out = fdopen(from_child[0], "r");
        if (!out || !fgets(line, sizeof(line), out)) {
                if (out)
                        fclose(out);
                waitpid(fixture_pid, &status, 0);
                fixture_pid = -1;
                return WIFEXITED(status) && WEXITSTATUS(status) == 77 ? 77 : -1;
        }
        fclose(out);
        line[strcspn(line, "\n")] = '\0';
        info = json_load_file(line, 0, &error);
        return info ? 0 : -1;
}

static void fixture_stop(void)
{
        int status;

        if (fixture_stdin >= 0)
                close(fixture_stdin); /* EOF: the fixture stops its registries and cleans up */
        if (fixture_pid > 0)
                waitpid(fixture_pid, &status, 0);
        json_decref(info);
}

int main(void)
{
        const struct CMUnitTest pure[] = {
                cmocka_unit_test(test_reference_parse),
                cmocka_unit_test(test_digest_valid),
                cmocka_unit_test(test_challenge_parse),
        };
        const struct CMUnitTest against_registry[] = {
                cmocka_unit_test(test_pull_index_by_tag),
                cmocka_unit_test(test_pull_by_digest),
                cmocka_unit_test(test_pull_docker_schema2),
                cmocka_unit_test(test_cache_reuse),
                cmocka_unit_test(test_resume_partial),
                cmocka_unit_test(test_resume_corrupt_partial),
                cmocka_unit_test(test_registry_serves_corrupt_blob),
                cmocka_unit_test(test_not_found_and_platform),
                cmocka_unit_test(test_https_required),
                cmocka_unit_test(test_basic_auth),
                cmocka_unit_test(test_token_auth),
                cmocka_unit_test(test_hostile_registry),
        };
        int failed, started;

        signal(SIGPIPE, SIG_IGN);
        failed = cmocka_run_group_tests_name("registry parsing", pure, NULL, NULL);
        started = fixture_start();
        if (started == 77) {
                fprintf(stderr, "registry tests skipped: docker-registry, skopeo or openssl missing\n");
                return failed ? 1 : 77;
        }
        if (started < 0) {
                fprintf(stderr, "registry fixture failed to start\n");
                fixture_stop();
                return 1;
        }
        failed += cmocka_run_group_tests_name("registry pulls", against_registry, NULL, NULL);
        fixture_stop();
        return failed ? 1 : 0;
}
