#include "sha256.h"

#include "common/cleanup.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct sha256 {
        EVP_MD_CTX *context;
};

struct sha256 *sha256_new(void)
{
        struct sha256 *hash = calloc(1, sizeof(*hash));

        if (!hash)
                return NULL;
        hash->context = EVP_MD_CTX_new();
        if (!hash->context || EVP_DigestInit_ex(hash->context, EVP_sha256(), NULL) != 1) {
                sha256_free(hash);
                return NULL;
        }
        return hash;
}

void sha256_update(struct sha256 *hash, const void *data, size_t size)
{
        /* EVP_DigestUpdate only fails on a context that was never initialised,
         * which sha256_new rules out. */
        if (size > 0)
                (void)EVP_DigestUpdate(hash->context, data, size);
}

void sha256_final_hex(struct sha256 *hash, char hex[SHA256_HEX_LENGTH + 1])
{
        static const char digits[] = "0123456789abcdef";
        unsigned char raw[EVP_MAX_MD_SIZE];
        unsigned int length = 0;

        if (EVP_DigestFinal_ex(hash->context, raw, &length) != 1 || length != 32)
                memset(raw, 0, sizeof(raw));
        for (size_t i = 0; i < 32; i++) {
                hex[2 * i] = digits[raw[i] >> 4];
                hex[2 * i + 1] = digits[raw[i] & 0xf];
        }
        hex[SHA256_HEX_LENGTH] = '\0';
}

void sha256_free(struct sha256 *hash)
{
        if (!hash)
                return;
        EVP_MD_CTX_free(hash->context);
        free(hash);
}

int sha256_file_hex(int fd, char hex[SHA256_HEX_LENGTH + 1], struct moat_error **err)
{
        _cleanup_sha256_ struct sha256 *hash = sha256_new();
        _cleanup_free_ char *buffer = malloc(1 << 16);

        if (!hash || !buffer)
                return moat_error_system(err, ENOMEM, "sha256");
        for (;;) {
                ssize_t n = read(fd, buffer, 1 << 16);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return moat_error_system(err, errno, "read");
                }
                if (n == 0)
                        break;
                sha256_update(hash, buffer, (size_t)n);
        }
        sha256_final_hex(hash, hex);
        return 0;
}

int sha256_hex_valid(const char *s)
{
        size_t i;

        for (i = 0; s[i]; i++)
                if (i >= SHA256_HEX_LENGTH || !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                        return 0;
        return i == SHA256_HEX_LENGTH;
}
