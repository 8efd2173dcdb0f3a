/* Incremental SHA-256 over OpenSSL's EVP interface, with lowercase hex output:
 * the content addresses of image blobs (digest) and layers (diff_id). */
#pragma once
#include <stddef.h>

#include "common/error.h"

#define SHA256_HEX_LENGTH 64

struct sha256;

/* NULL only when out of memory or OpenSSL refuses SHA-256. */
struct sha256 *sha256_new(void);
void sha256_update(struct sha256 *hash, const void *data, size_t size);
/* Writes 64 hex digits and a NUL. The hash must not be updated afterwards. */
void sha256_final_hex(struct sha256 *hash, char hex[SHA256_HEX_LENGTH + 1]);
void sha256_free(struct sha256 *hash);

static inline void sha256_freep(struct sha256 **hash)
{
        sha256_free(*hash);
}
#define _cleanup_sha256_ __attribute__((cleanup(sha256_freep)))

/* Hash everything read from fd, from its current offset to end of file. */
int sha256_file_hex(int fd, char hex[SHA256_HEX_LENGTH + 1], struct moat_error **err);

/* True if s is exactly 64 lowercase hex digits. */
int sha256_hex_valid(const char *s);
