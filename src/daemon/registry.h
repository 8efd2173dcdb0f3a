/* A pull client for the Registry HTTP API v2 (the OCI distribution spec):
 * resolve a reference to one linux manifest, download its config and layer
 * blobs into a content-addressed cache (verified against their digests,
 * resumable), and hand the result on as an OCI image layout whose blobs are
 * hard links into that cache, for oci_image_load to import.
 *
 * Blocking: call it from a worker thread, never from the event loop. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"

/* Bounds on what a registry can make us hold or do. */
#define REGISTRY_MANIFEST_MAX_BYTES (4u << 20) /* a manifest, an index, a config blob */
#define REGISTRY_TOKEN_MAX_BYTES (1u << 20)    /* a token endpoint's JSON answer */
#define REGISTRY_JSON_MAX_DEPTH 32             /* nesting in any JSON document we parse */
#define REGISTRY_LAYERS_MAX 256                /* layers in one manifest */
#define REGISTRY_INDEX_ENTRIES_MAX 1024        /* manifests in one index */
#define REGISTRY_CHALLENGE_MAX_BYTES 8192      /* one WWW-Authenticate header */
#define REGISTRY_CONNECT_TIMEOUT_SECONDS 10
#define REGISTRY_STALL_TIMEOUT_SECONDS 30 /* no byte at all for this long: give up */
#define REGISTRY_REDIRECTS_MAX 5

/* Error codes set by registry_pull (struct moat_error.code). */
#define REGISTRY_ERROR_NOT_FOUND "not_found"
#define REGISTRY_ERROR_UNAUTHORIZED "unauthorized"
#define REGISTRY_ERROR_DIGEST_MISMATCH "digest_mismatch"
#define REGISTRY_ERROR_UNSUPPORTED_MEDIA_TYPE "unsupported_media_type"
#define REGISTRY_ERROR_NO_MATCHING_PLATFORM "no_matching_platform"
#define REGISTRY_ERROR_REGISTRY "registry_error"

struct registry_progress {
        /* what: "manifest", "blob" (repeatedly while a blob downloads; a cached
         * blob reports done == total at once) or "done" (digest = the
         * manifest's, bytes = all blobs). Called on the pulling thread. */
        void (*on_event)(void *ctx, const char *what, const char *digest, uint64_t done_bytes,
                         uint64_t total_bytes);
        void *ctx;
};

struct registry_options {
        bool insecure_http; /* talk http:// (loopback tests); otherwise https with verification */
        const char *username, *password; /* optional; also sent to the token endpoint */
        /* <data>/images/blobs: complete verified blobs as sha256-<hex>,
         * partial downloads as sha256-<hex>.partial (resumed with Range). */
        const char *blob_cache_dir;
};

/* A parsed reference. `host` is as written ("docker.io" when none was);
 * `api_host` is where the API lives (registry-1.docker.io for docker.io). */
struct registry_reference {
        char host[256];
        char api_host[256];
        char repository[256];
        char tag[129];    /* "" when pulled by digest only */
        char digest[72];  /* "sha256:<64 hex>" or "" */
};

/* "host[:port]/repo/path:tag", "...@sha256:<hex>", "name" (docker.io/library/
 * name:latest). invalid_argument on anything malformed. */
int registry_reference_parse(const char *reference, struct registry_reference *ret,
                             struct moat_error **err);

/* "sha256:" followed by exactly 64 lowercase hex digits: the only digests we
 * ever put in a path. */
bool registry_digest_valid(const char *digest);

/* One WWW-Authenticate challenge: scheme "Bearer" or "Basic" (as sent), and
 * the parameters we use. */
struct registry_challenge {
        char scheme[16];
        char realm[1024];
        char service[256];
        char scope[1024];
};

/* Parse a WWW-Authenticate value (auth-params with quoted strings and
 * backslash escapes). invalid_argument when malformed or a value is too long. */
int registry_challenge_parse(const char *header, struct registry_challenge *ret,
                             struct moat_error **err);

/* The checks a pull runs on every manifest or index a registry serves
 * (bounded JSON; an index's linux/<arch> pick; a manifest's config and layer
 * descriptors, media types and bounds), on one document: for the fuzz
 * harness (fuzz/fuzz_image_spec.c), which feeds it what a hostile registry
 * could. */
int registry_document_check(const char *text, size_t size, struct moat_error **err);

/* Pull `reference` into out_dir (an existing empty directory) as an OCI image
 * layout: oci-layout, index.json (one manifest, annotated
 * org.opencontainers.image.ref.name=<tag> when there is a tag) and
 * blobs/sha256/<hex> hard-linked to the cache (copied when the cache is on
 * another file system). progress may be NULL. Codes: not_found,
 * unauthorized, digest_mismatch, unsupported_media_type,
 * no_matching_platform, registry_error, invalid_argument, system. */
int registry_pull(const char *reference, const struct registry_options *options,
                  const struct registry_progress *progress, const char *out_dir,
                  struct moat_error **err);
