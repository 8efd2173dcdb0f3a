/* Registry HTTP API v2 pull client (see registry.h).
 *
 * The registry is not trusted: every byte it sends is bounded (manifests,
 * tokens, error bodies, blob lengths, JSON depth, counts), every digest it
 * names is validated before it becomes part of a path, and every blob is
 * hashed as it arrives and renamed into the cache only when its sha256 equals
 * the digest the (verified) manifest asked for. A complete cache entry is
 * therefore trusted on size alone. */
#include "registry.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cleanup.h"

#define MEDIA_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define MEDIA_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MEDIA_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define MEDIA_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"

#define ACCEPT_MANIFESTS                                                                  \
        "Accept: " MEDIA_OCI_INDEX ", " MEDIA_OCI_MANIFEST ", " MEDIA_DOCKER_LIST ", " \
                MEDIA_DOCKER_MANIFEST

/* Error response bodies are only kept for the message; past this we stop
 * reading rather than let a registry stream forever. */
#define ERROR_BODY_MAX_BYTES (64u << 10)
#define ERROR_BODY_KEPT_BYTES 256
/* Progress callbacks while a blob downloads: at most one per this many bytes. */
#define PROGRESS_STEP_BYTES (256u << 10)

/* The platform we pick from an index: the one this daemon runs on. */
#if defined(__x86_64__)
#define PLATFORM_ARCHITECTURE "amd64"
#elif defined(__aarch64__)
#define PLATFORM_ARCHITECTURE "arm64"
#else
#define PLATFORM_ARCHITECTURE "amd64"
#endif

/* jansson.h provides json_decrefp for exactly this. */
#define _cleanup_json_ _cleanup_(json_decrefp)

static void hash_freep(EVP_MD_CTX **h)
{
        EVP_MD_CTX_free(*h);
}
#define _cleanup_hash_ _cleanup_(hash_freep)

static void curl_freep(char **p)
{
        curl_free(*p);
}

/* ---- digests, references, challenges ---- */

bool registry_digest_valid(const char *digest)
{
        if (!digest || strncmp(digest, "sha256:", 7) != 0)
                return false;
        for (size_t i = 0; i < 64; i++) {
                char c = digest[7 + i];
                if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
                        return false;
        }
        return digest[7 + 64] == '\0';
}

static void digest_format(const unsigned char hash[32], char out[72])
{
        static const char hex[] = "0123456789abcdef";

        memcpy(out, "sha256:", 7);
        for (size_t i = 0; i < 32; i++) {
                out[7 + 2 * i] = hex[hash[i] >> 4];
                out[7 + 2 * i + 1] = hex[hash[i] & 15];
        }
        out[7 + 64] = '\0';
}

static int digest_of_bytes(const void *data, size_t size, char out[72], struct moat_error **err)
{
        unsigned char hash[32];
        unsigned int length = 0;

        if (!EVP_Digest(data, size, hash, &length, EVP_sha256(), NULL) || length != 32)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "sha256 failed");
        digest_format(hash, out);
        return 0;
}

static bool is_lower_alnum(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* Repository: slash-separated components of [a-z0-9._-], each starting and
 * ending alphanumeric (so no "..", no empty component, no leading "/"). */
static bool repository_valid(const char *repository)
{
        size_t length = strlen(repository);

        if (length == 0 || length >= sizeof(((struct registry_reference *)0)->repository))
                return false;
        for (const char *p = repository; *p;) {
                const char *end = strchrnul(p, '/');
                if (end == p || !is_lower_alnum(p[0]) || !is_lower_alnum(end[-1]))
                        return false;
                for (const char *q = p; q < end; q++)
                        if (!is_lower_alnum(*q) && *q != '.' && *q != '_' && *q != '-')
                                return false;
                p = *end ? end + 1 : end;
                if (*end && !*p)
                        return false; /* trailing slash */
        }
        return true;
}

static bool tag_valid(const char *tag)
{
        size_t length = strlen(tag);

        if (length == 0 || length > 128 || tag[0] == '.' || tag[0] == '-')
                return false;
        for (const char *p = tag; *p; p++)
                if (!(is_lower_alnum(*p) || (*p >= 'A' && *p <= 'Z') || *p == '_' || *p == '.' ||
                      *p == '-'))
                        return false;
        return true;
}

/* Host[:port] or [v6]:port: only characters that cannot change the meaning
 * of the URL we build (no '/', '@', '?', '#', whitespace). */
static bool host_valid(const char *host)
{
        size_t length = strlen(host);

        if (length == 0 || length > 253)
                return false;
        for (const char *p = host; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' || *p == ':' ||
                      *p == '[' || *p == ']'))
                        return false;
        /* A port is digits only: "a:tag/x" is a bad reference, not host "a:tag". */
        const char *port = host[0] == '[' ? strstr(host, "]") : host;
        if (!port)
                return false;
        port = strchr(port, ':');
        if (port && (port[1] == '\0' || strspn(port + 1, "0123456789") != strlen(port + 1) ||
                     strlen(port + 1) > 5))
                return false;
        if (host[0] == '[' && strchr(host, ']')[1] != '\0' && strchr(host, ']')[1] != ':')
                return false;
        return true;
}

static int copy_string(char *out, size_t size, const char *start, size_t length)
{
        if (length >= size)
                return -1;
        memcpy(out, start, length);
        out[length] = '\0';
        return 0;
}

int registry_reference_parse(const char *reference, struct registry_reference *ret,
                             struct moat_error **err)
{
        struct registry_reference parsed = { 0 };
        char name[512];
        const char *at, *path;
        char *slash, *colon;
        size_t name_length;

        if (!reference || !*reference || strlen(reference) > 1024)
                return moat_error_invalid(err, "image reference is empty or too long");
        at = strchr(reference, '@');
        name_length = at ? (size_t)(at - reference) : strlen(reference);
        if (at) {
                if (!registry_digest_valid(at + 1))
                        return moat_error_invalid(err, "image reference `%s`: the digest must be sha256:<64 lowercase hex>",
                                                  reference);
                snprintf(parsed.digest, sizeof(parsed.digest), "%s", at + 1);
        }
        if (copy_string(name, sizeof(name), reference, name_length) < 0 || name_length == 0)
                return moat_error_invalid(err, "image reference `%s` has no usable name", reference);

        /* The tag is after the last ':' that follows the last '/' (a ':'
         * before a '/' is a port). */
        slash = strrchr(name, '/');
        colon = strrchr(slash ? slash : name, ':');
        if (colon) {
                if (copy_string(parsed.tag, sizeof(parsed.tag), colon + 1, strlen(colon + 1)) < 0 ||
                    !tag_valid(parsed.tag))
                        return moat_error_invalid(err, "image reference `%s`: invalid tag", reference);
                *colon = '\0';
        } else if (!at) {
                snprintf(parsed.tag, sizeof(parsed.tag), "latest");
        }

        /* The first component is a registry host when it looks like one:
         * a dot, a port, or "localhost" (the docker convention). */
        slash = strchr(name, '/');
        if (slash && (memchr(name, '.', (size_t)(slash - name)) || memchr(name, ':', (size_t)(slash - name)) ||
                      ((size_t)(slash - name) == 9 && strncmp(name, "localhost", 9) == 0))) {
                if (copy_string(parsed.host, sizeof(parsed.host), name, (size_t)(slash - name)) < 0 ||
                    !host_valid(parsed.host))
                        return moat_error_invalid(err, "image reference `%s`: invalid registry host", reference);
                path = slash + 1;
        } else {
                snprintf(parsed.host, sizeof(parsed.host), "docker.io");
                path = name;
        }
        if (strcmp(parsed.host, "docker.io") == 0 && !strchr(path, '/')) {
                if (snprintf(parsed.repository, sizeof(parsed.repository), "library/%s", path) >=
                    (int)sizeof(parsed.repository))
                        return moat_error_invalid(err, "image reference `%s`: repository too long", reference);
        } else if (copy_string(parsed.repository, sizeof(parsed.repository), path, strlen(path)) < 0) {
                return moat_error_invalid(err, "image reference `%s`: repository too long", reference);
        }
        if (!repository_valid(parsed.repository))
                return moat_error_invalid(err, "image reference `%s`: invalid repository `%s` (lowercase letters, digits, . _ - and /)",
                                          reference, parsed.repository);
        snprintf(parsed.api_host, sizeof(parsed.api_host), "%s",
                 strcmp(parsed.host, "docker.io") == 0 ? "registry-1.docker.io" : parsed.host);
        *ret = parsed;
        return 0;
}

static bool is_token_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL); /* strchr also finds the NUL */
}

int registry_challenge_parse(const char *header, struct registry_challenge *ret,
                             struct moat_error **err)
{
        struct registry_challenge parsed = { 0 };
        const char *p = header;
        size_t length = 0;
        int parameters = 0;

        if (!header || strlen(header) > REGISTRY_CHALLENGE_MAX_BYTES)
                return moat_error_invalid(err, "WWW-Authenticate: missing or too long");
        while (*p == ' ' || *p == '\t')
                p++;
        while (is_token_char(p[length]))
                length++;
        if (length == 0 || copy_string(parsed.scheme, sizeof(parsed.scheme), p, length) < 0)
                return moat_error_invalid(err, "WWW-Authenticate: bad scheme");
        p += length;

        /* auth-param *( OWS "," OWS auth-param ), values token or quoted-string */
        for (;;) {
                char name[64], value[1024];
                size_t name_length = 0, value_length = 0;

                while (*p == ' ' || *p == '\t' || *p == ',')
                        p++;
                if (!*p)
                        break;
                if (++parameters > 32)
                        return moat_error_invalid(err, "WWW-Authenticate: too many parameters");
                while (is_token_char(p[name_length]))
                        name_length++;
                if (name_length == 0 || copy_string(name, sizeof(name), p, name_length) < 0)
                        return moat_error_invalid(err, "WWW-Authenticate: bad parameter name");
                p += name_length;
                while (*p == ' ' || *p == '\t')
                        p++;
                if (*p != '=')
                        return moat_error_invalid(err, "WWW-Authenticate: `%s` has no value", name);
                p++;
                while (*p == ' ' || *p == '\t')
                        p++;
                if (*p == '"') {
                        p++;
                        for (;;) {
                                if (*p == '\0')
                                        return moat_error_invalid(err, "WWW-Authenticate: unterminated quoted string");
                                if (*p == '"') {
                                        p++;
                                        break;
                                }
                                if (*p == '\\') {
                                        p++;
                                        if (*p == '\0')
                                                return moat_error_invalid(err, "WWW-Authenticate: unterminated quoted string");
                                }
                                /* Control characters would end up in a URL or a header. */
                                if ((unsigned char)*p < 0x20 || *p == 0x7f)
                                        return moat_error_invalid(err, "WWW-Authenticate: control character in `%s`", name);
                                if (value_length + 1 >= sizeof(value))
                                        return moat_error_invalid(err, "WWW-Authenticate: `%s` too long", name);
                                value[value_length++] = *p++;
                        }
                } else {
                        while (is_token_char(*p) || *p == '/' || *p == ':' || *p == '=') {
                                if (value_length + 1 >= sizeof(value))
                                        return moat_error_invalid(err, "WWW-Authenticate: `%s` too long", name);
                                value[value_length++] = *p++;
                        }
                }
                value[value_length] = '\0';
                while (*p == ' ' || *p == '\t')
                        p++;
                if (*p && *p != ',')
                        return moat_error_invalid(err, "WWW-Authenticate: junk after `%s`", name);

                if (strcasecmp(name, "realm") == 0) {
                        if (copy_string(parsed.realm, sizeof(parsed.realm), value, value_length) < 0)
                                return moat_error_invalid(err, "WWW-Authenticate: realm too long");
                } else if (strcasecmp(name, "service") == 0) {
                        if (copy_string(parsed.service, sizeof(parsed.service), value, value_length) < 0)
                                return moat_error_invalid(err, "WWW-Authenticate: service too long");
                } else if (strcasecmp(name, "scope") == 0) {
                        if (copy_string(parsed.scope, sizeof(parsed.scope), value, value_length) < 0)
                                return moat_error_invalid(err, "WWW-Authenticate: scope too long");
                }
        }
        *ret = parsed;
        return 0;
}

/* Nesting depth of a JSON text, counted outside strings. jansson's own limit
 * (2048) is far above anything a manifest needs; this keeps recursion and
 * memory small for documents a registry hands us. */
static bool json_depth_within(const char *text, size_t size, int max_depth)
{
        int depth = 0;
        bool in_string = false;

        for (size_t i = 0; i < size; i++) {
                char c = text[i];
                if (in_string) {
                        if (c == '\\')
                                i++;
                        else if (c == '"')
                                in_string = false;
                } else if (c == '"') {
                        in_string = true;
                } else if (c == '{' || c == '[') {
                        if (++depth > max_depth)
                                return false;
                } else if (c == '}' || c == ']') {
                        depth--;
                }
        }
        return true;
}

static json_t *json_parse_bounded(const char *text, size_t size, const char *what,
                                  struct moat_error **err)
{
        json_error_t json_error;
        json_t *root;

        if (!json_depth_within(text, size, REGISTRY_JSON_MAX_DEPTH)) {
                moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_REGISTRY,
                               "%s: JSON nested deeper than %d", what, REGISTRY_JSON_MAX_DEPTH);
                return NULL;
        }
        root = json_loadb(text, size, JSON_REJECT_DUPLICATES, &json_error);
        if (!root || !json_is_object(root)) {
                json_decref(root);
                moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_REGISTRY,
                               "%s: not a JSON object (%s)", what, root ? "" : json_error.text);
                return NULL;
        }
        return root;
}

/* ---- HTTP ---- */

struct buffer {
        char *data;
        size_t size, capacity, limit;
};

/* Where a response body goes. Bodies of non-2xx answers never reach the
 * real sink (a 401 page must not be appended to a blob). */
struct sink {
        struct buffer *memory; /* either this ... */
        int fd;                /* ... or this file, hashed as written */
        EVP_MD_CTX *hash;
        uint64_t offset;     /* bytes already in the file when the request started */
        uint64_t written;    /* bytes of this response written */
        uint64_t expected;   /* total size the blob must have */
        bool started, overflow, bad_range;
        int write_errno;
        const struct registry_progress *progress;
        const char *digest;
        uint64_t last_progress;
};

struct response {
        long status;
        char content_type[256];
        char content_range[128];
        char challenge_bearer[REGISTRY_CHALLENGE_MAX_BYTES + 1];
        char challenge_basic[REGISTRY_CHALLENGE_MAX_BYTES + 1];
        bool challenge_too_long;
        char error_body[ERROR_BODY_KEPT_BYTES + 1];
        size_t error_body_size;
        struct sink *sink;
};

struct client {
        CURL *curl;
        const struct registry_options *options;
        struct registry_reference reference;
        const char *scheme;
        char *authorization; /* "Authorization: Bearer ..." once we have a token */
        bool use_basic;      /* the registry asked for Basic and we have credentials */
};

static void client_free(struct client *client)
{
        if (client->curl)
                curl_easy_cleanup(client->curl);
        free(client->authorization);
}

static void trim_header_value(const char *start, size_t length, char *out, size_t size)
{
        while (length > 0 && (*start == ' ' || *start == '\t')) {
                start++;
                length--;
        }
        while (length > 0 && (start[length - 1] == '\r' || start[length - 1] == '\n' ||
                              start[length - 1] == ' ' || start[length - 1] == '\t'))
                length--;
        if (length >= size)
                length = size - 1;
        memcpy(out, start, length);
        out[length] = '\0';
}

static bool header_is(const char *line, size_t length, const char *name, const char **value)
{
        size_t name_length = strlen(name);

        if (length <= name_length || strncasecmp(line, name, name_length) != 0 || line[name_length] != ':')
                return false;
        *value = line + name_length + 1;
        return true;
}

static size_t on_header(char *line, size_t size, size_t count, void *userdata)
{
        struct response *response = userdata;
        size_t length = size * count;
        const char *value;

        /* Each response of a redirect chain or an auth retry starts over. */
        if (length >= 5 && strncmp(line, "HTTP/", 5) == 0) {
                struct sink *sink = response->sink;
                const char *space = memchr(line, ' ', length);
                memset(response, 0, offsetof(struct response, sink));
                response->status = space ? strtol(space + 1, NULL, 10) : 0;
                response->sink = sink;
                return length;
        }
        if (header_is(line, length, "content-type", &value)) {
                trim_header_value(value, length - (size_t)(value - line), response->content_type,
                                  sizeof(response->content_type));
        } else if (header_is(line, length, "content-range", &value)) {
                trim_header_value(value, length - (size_t)(value - line), response->content_range,
                                  sizeof(response->content_range));
        } else if (header_is(line, length, "www-authenticate", &value)) {
                size_t value_length = length - (size_t)(value - line);
                char *target;
                while (value_length > 0 && (*value == ' ' || *value == '\t')) {
                        value++;
                        value_length--;
                }
                if (value_length >= 7 && strncasecmp(value, "bearer ", 7) == 0)
                        target = response->challenge_bearer;
                else if (value_length >= 5 && strncasecmp(value, "basic", 5) == 0)
                        target = response->challenge_basic;
                else
                        return length;
                if (value_length > REGISTRY_CHALLENGE_MAX_BYTES)
                        response->challenge_too_long = true;
                else if (!*target) /* the first challenge of a scheme wins */
                        trim_header_value(value, value_length, target, REGISTRY_CHALLENGE_MAX_BYTES + 1);
        }
        return length;
}

static void progress_report(const struct registry_progress *progress, const char *what,
                            const char *digest, uint64_t done, uint64_t total)
{
        if (progress && progress->on_event)
                progress->on_event(progress->ctx, what, digest, done, total);
}

/* First body byte of a 2xx answer: decide where the file continues. A 200 to
 * a Range request means the server sends everything: start the file over. A
 * 206 must start exactly where our partial file ends, or the bytes would be
 * spliced at the wrong place. */
static bool sink_start(struct sink *sink, const struct response *response)
{
        sink->started = true;
        if (sink->fd < 0)
                return true;
        if (response->status == 206) {
                unsigned long long start;
                if (sscanf(response->content_range, "bytes %llu-", &start) != 1 || start != sink->offset) {
                        sink->bad_range = true;
                        return false;
                }
                return true;
        }
        if (sink->offset > 0) {
                if (ftruncate(sink->fd, 0) < 0 || lseek(sink->fd, 0, SEEK_SET) < 0 ||
                    !EVP_DigestInit_ex(sink->hash, EVP_sha256(), NULL)) {
                        sink->write_errno = errno ? errno : EIO;
                        return false;
                }
                sink->offset = 0;
        }
        return true;
}

static size_t on_body(char *data, size_t size, size_t count, void *userdata)
{
        struct response *response = userdata;
        struct sink *sink = response->sink;
        size_t length = size * count;

        if (response->status < 200 || response->status > 299) {
                size_t keep = ERROR_BODY_KEPT_BYTES - response->error_body_size;
                if (keep > 0) {
                        if (keep > length)
                                keep = length;
                        memcpy(response->error_body + response->error_body_size, data, keep);
                        response->error_body_size += keep;
                        response->error_body[response->error_body_size] = '\0';
                }
                sink->written += length; /* counts error bytes too, only to bound them */
                return sink->written > ERROR_BODY_MAX_BYTES ? 0 : length;
        }
        if (!sink->started && !sink_start(sink, response))
                return 0;
        if (sink->memory) {
                struct buffer *buffer = sink->memory;
                if (length > buffer->limit - buffer->size) {
                        sink->overflow = true;
                        return 0;
                }
                if (buffer->size + length > buffer->capacity) {
                        size_t capacity = buffer->capacity ? buffer->capacity : 16384;
                        while (capacity < buffer->size + length)
                                capacity *= 2;
                        if (capacity > buffer->limit)
                                capacity = buffer->limit;
                        char *grown = realloc(buffer->data, capacity + 1);
                        if (!grown) {
                                sink->write_errno = ENOMEM;
                                return 0;
                        }
                        buffer->data = grown;
                        buffer->capacity = capacity;
                }
                memcpy(buffer->data + buffer->size, data, length);
                buffer->size += length;
                buffer->data[buffer->size] = '\0';
                return length;
        }
        /* A blob longer than its descriptor says is wrong whatever follows:
         * stop at once instead of filling the disk. */
        if (length > sink->expected - sink->offset - sink->written) {
                sink->overflow = true;
                return 0;
        }
        for (size_t done = 0; done < length;) {
                ssize_t n = write(sink->fd, data + done, length - done);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        sink->write_errno = errno;
                        return 0;
                }
                done += (size_t)n;
        }
        if (!EVP_DigestUpdate(sink->hash, data, length)) {
                sink->write_errno = EIO;
                return 0;
        }
        sink->written += length;
        uint64_t done = sink->offset + sink->written;
        if (done - sink->last_progress >= PROGRESS_STEP_BYTES || done == sink->expected) {
                sink->last_progress = done;
                progress_report(sink->progress, "blob", sink->digest, done, sink->expected);
        }
        return length;
}

static int client_setup(struct client *client, const char *url, struct curl_slist *headers,
                        struct response *response)
{
        CURL *curl = client->curl;
        bool https_only = strcmp(client->scheme, "https") == 0;

        curl_easy_reset(curl);
        if (curl_easy_setopt(curl, CURLOPT_URL, url) != CURLE_OK)
                return -1;
        /* Never leave https for http, not even through a redirect: that
         * would hand tokens or blob bytes to anyone on the path. */
        curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, https_only ? "https" : "http,https");
        curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, https_only ? "https" : "http,https");
        /* Blob downloads are redirected to object storage. libcurl drops
         * Authorization (ours and Basic credentials) when a redirect goes to
         * another host or port, so the storage never sees registry tokens;
         * CURLOPT_UNRESTRICTED_AUTH stays off. */
        curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(curl, CURLOPT_MAXREDIRS, (long)REGISTRY_REDIRECTS_MAX);
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, (long)REGISTRY_CONNECT_TIMEOUT_SECONDS);
        /* A registry that stops sending must not hold a worker forever. */
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, (long)REGISTRY_STALL_TIMEOUT_SECONDS);
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_USERAGENT, "moatd");
        curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(curl, CURLOPT_HEADERDATA, response);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, response);
        if (headers)
                curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        return 0;
}

static int transfer_error(CURLcode code, const struct sink *sink, const char *url,
                          struct moat_error **err)
{
        if (sink->overflow)
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, REGISTRY_ERROR_REGISTRY,
                                      "GET %s: the answer is larger than allowed", url);
        if (sink->bad_range)
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_REGISTRY,
                                      "GET %s: the registry answered a range that does not continue our partial download",
                                      url);
        if (sink->write_errno)
                return moat_error_set(err, MOAT_ERROR_SYSTEM, sink->write_errno, NULL,
                                      "GET %s: storing the answer", url);
        if (code == CURLE_OPERATION_TIMEDOUT)
                return moat_error_set(err, MOAT_ERROR_TIMEOUT, 0, REGISTRY_ERROR_REGISTRY,
                                      "GET %s: timed out (%s)", url, curl_easy_strerror(code));
        return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_REGISTRY, "GET %s: %s",
                              url, curl_easy_strerror(code));
}

static void buffer_reset(struct buffer *buffer)
{
        free(buffer->data);
        buffer->data = NULL;
        buffer->size = buffer->capacity = 0;
}

/* Ask the token endpoint (realm) for a pull token and keep it as the
 * Authorization header for the rest of the pull. */
static int client_fetch_token(struct client *client, const struct registry_challenge *challenge,
                              struct moat_error **err)
{
        const struct registry_options *options = client->options;
        struct buffer body = { .limit = REGISTRY_TOKEN_MAX_BYTES };
        struct sink sink = { .memory = &body, .fd = -1 };
        struct response response = { .sink = &sink };
        _cleanup_free_ char *url = NULL, *default_scope = NULL;
        _cleanup_(curl_freep) char *service = NULL, *scope = NULL;
        _cleanup_json_ json_t *root = NULL;
        const char *token;
        CURLcode code;
        int r = -1;

        /* The realm gets our credentials: it must be http(s), and https
         * whenever the registry itself is. */
        if (strncmp(challenge->realm, "https://", 8) != 0 &&
            !(client->options->insecure_http && strncmp(challenge->realm, "http://", 7) == 0))
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_UNAUTHORIZED,
                                      "token realm `%s` is not an %s URL", challenge->realm,
                                      client->options->insecure_http ? "http(s)" : "https");
        if (asprintf(&default_scope, "repository:%s:pull", client->reference.repository) < 0)
                return moat_error_system(err, ENOMEM, "asprintf");
        service = curl_easy_escape(client->curl, challenge->service, 0);
        scope = curl_easy_escape(client->curl, challenge->scope[0] ? challenge->scope : default_scope, 0);
        if (!service || !scope)
                return moat_error_system(err, ENOMEM, "curl_easy_escape");
        if (asprintf(&url, "%s%cservice=%s&scope=%s", challenge->realm,
                     strchr(challenge->realm, '?') ? '&' : '?', service, scope) < 0)
                return moat_error_system(err, ENOMEM, "asprintf");

        if (client_setup(client, url, NULL, &response) < 0)
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_REGISTRY,
                                      "bad token realm URL `%s`", challenge->realm);
        if (options->username && options->password) {
                curl_easy_setopt(client->curl, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
                curl_easy_setopt(client->curl, CURLOPT_USERNAME, options->username);
                curl_easy_setopt(client->curl, CURLOPT_PASSWORD, options->password);
        }
        code = curl_easy_perform(client->curl);
        if (code != CURLE_OK && !(response.status == 401 || response.status == 403)) {
                transfer_error(code, &sink, challenge->realm, err);
                goto out;
        }
        if (response.status == 401 || response.status == 403) {
                moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, REGISTRY_ERROR_UNAUTHORIZED,
                               "token endpoint %s refused the %s (HTTP %ld)", challenge->realm,
                               options->username ? "credentials" : "anonymous request", response.status);
                goto out;
        }
        if (response.status != 200) {
                moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_REGISTRY,
                               "token endpoint %s: HTTP %ld", challenge->realm, response.status);
                goto out;
        }
        root = json_parse_bounded(body.data ? body.data : "", body.size, "token answer", err);
        if (!root)
                goto out;
        token = json_string_value(json_object_get(root, "token"));
        if (!token || !*token)
                token = json_string_value(json_object_get(root, "access_token"));
        if (!token || !*token) {
                moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_REGISTRY,
                               "token endpoint %s: no token in the answer", challenge->realm);
                goto out;
        }
        /* The token goes into a header line: anything outside printable
         * ASCII could smuggle in another header. */
        for (const char *p = token; *p; p++)
                if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
                        moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_REGISTRY,
                                       "token endpoint %s: the token has invalid characters", challenge->realm);
                        goto out;
                }
        free(client->authorization);
        client->authorization = NULL;
        if (asprintf(&client->authorization, "Authorization: Bearer %s", token) < 0) {
                client->authorization = NULL;
                moat_error_system(err, ENOMEM, "asprintf");
                goto out;
        }
        r = 0;
out:
        buffer_reset(&body);
        return r;
}

/* React to a 401: Bearer → get a token; Basic → send the credentials. */
static int client_authenticate(struct client *client, const struct response *response,
                               struct moat_error **err)
{
        struct registry_challenge challenge;

        if (response->challenge_too_long)
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_UNAUTHORIZED,
                                      "the registry's WWW-Authenticate header is too long");
        if (response->challenge_bearer[0]) {
                struct moat_error *parse_error = NULL;
                if (registry_challenge_parse(response->challenge_bearer, &challenge, &parse_error) < 0) {
                        moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_UNAUTHORIZED, "%s",
                                       parse_error ? parse_error->message : "bad WWW-Authenticate");
                        moat_error_free(parse_error);
                        return -1;
                }
                if (!challenge.realm[0])
                        return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_UNAUTHORIZED,
                                              "the registry's Bearer challenge has no realm");
                return client_fetch_token(client, &challenge, err);
        }
        if (response->challenge_basic[0]) {
                if (!client->options->username || !client->options->password)
                        return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, REGISTRY_ERROR_UNAUTHORIZED,
                                              "the registry %s asks for a user name and password",
                                              client->reference.host);
                client->use_basic = true;
                return 0;
        }
        return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, REGISTRY_ERROR_UNAUTHORIZED,
                              "the registry %s answered 401 without a usable challenge",
                              client->reference.host);
}

/* GET url into sink (with Range from sink->offset when it is a file that
 * already holds bytes). Authenticates and retries once on 401. On return 0,
 * response->status is the final HTTP status (2xx or 4xx/5xx: the caller
 * decides); transport failures and bounds are errors. */
static int client_get(struct client *client, const char *url, const char *accept,
                      struct sink *sink, struct response *response, struct moat_error **err)
{
        for (int attempt = 0;; attempt++) {
                struct curl_slist *headers = NULL, *grown;
                CURLcode code;
                char range[32];

                memset(response, 0, sizeof(*response));
                response->sink = sink;
                sink->started = sink->overflow = sink->bad_range = false;
                sink->write_errno = 0;
                sink->written = 0;
                if (sink->memory)
                        sink->memory->size = 0;

                if (accept && !(headers = curl_slist_append(NULL, accept)))
                        return moat_error_system(err, ENOMEM, "curl_slist_append");
                if (client->authorization) {
                        grown = curl_slist_append(headers, client->authorization);
                        if (!grown) {
                                curl_slist_free_all(headers);
                                return moat_error_system(err, ENOMEM, "curl_slist_append");
                        }
                        headers = grown;
                }
                if (client_setup(client, url, headers, response) < 0) {
                        curl_slist_free_all(headers);
                        return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, REGISTRY_ERROR_REGISTRY,
                                              "bad URL %s", url);
                }
                if (client->use_basic) {
                        curl_easy_setopt(client->curl, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
                        curl_easy_setopt(client->curl, CURLOPT_USERNAME, client->options->username);
                        curl_easy_setopt(client->curl, CURLOPT_PASSWORD, client->options->password);
                }
                if (sink->fd >= 0) {
                        if (sink->offset > 0) {
                                snprintf(range, sizeof(range), "%llu-", (unsigned long long)sink->offset);
                                curl_easy_setopt(client->curl, CURLOPT_RANGE, range);
                        }
                        curl_easy_setopt(client->curl, CURLOPT_MAXFILESIZE_LARGE,
                                         (curl_off_t)(sink->expected - sink->offset));
                } else if (sink->memory) {
                        curl_easy_setopt(client->curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)sink->memory->limit);
                }
                code = curl_easy_perform(client->curl);
                curl_slist_free_all(headers);
                if (code != CURLE_OK && !(code == CURLE_WRITE_ERROR && !sink->started && response->status >= 400 &&
                                          !sink->overflow && !sink->write_errno && !sink->bad_range)) {
                        if (code == CURLE_FILESIZE_EXCEEDED)
                                sink->overflow = true;
                        return transfer_error(code, sink, url, err);
                }
                if (response->status != 401 || attempt > 0)
                        return 0;
                if (client_authenticate(client, response, err) < 0)
                        return -1;
        }
}

static int status_error(const struct response *response, const char *what, struct moat_error **err)
{
        const char *body = response->error_body_size ? response->error_body : "";

        if (response->status == 401 || response->status == 403)
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, REGISTRY_ERROR_UNAUTHORIZED,
                                      "%s: access denied (HTTP %ld) %.200s", what, response->status, body);
        return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_REGISTRY,
                              "%s: HTTP %ld %.200s", what, response->status, body);
}

/* ---- manifests ---- */

struct descriptor {
        char media_type[128];
        char digest[72];
        uint64_t size;
};

struct manifest {
        char media_type[128];
        char digest[72]; /* sha256 of the bytes as served */
        struct buffer bytes;
        struct descriptor config;
        struct descriptor layers[REGISTRY_LAYERS_MAX];
        size_t layer_count;
};

static bool media_type_is_index(const char *type)
{
        return strcmp(type, MEDIA_OCI_INDEX) == 0 || strcmp(type, MEDIA_DOCKER_LIST) == 0;
}

static bool media_type_is_manifest(const char *type)
{
        return strcmp(type, MEDIA_OCI_MANIFEST) == 0 || strcmp(type, MEDIA_DOCKER_MANIFEST) == 0;
}

static bool media_type_is_layer(const char *type)
{
        static const char *const known[] = {
                "application/vnd.oci.image.layer.v1.tar",
                "application/vnd.oci.image.layer.v1.tar+gzip",
                "application/vnd.oci.image.layer.v1.tar+zstd",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
        };
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(known); i++)
                if (strcmp(type, known[i]) == 0)
                        return true;
        return false;
}

static bool media_type_is_config(const char *type)
{
        return strcmp(type, "application/vnd.oci.image.config.v1+json") == 0 ||
               strcmp(type, "application/vnd.docker.container.image.v1+json") == 0;
}

static int descriptor_parse(json_t *object, const char *what, struct descriptor *ret,
                            struct moat_error **err)
{
        const char *media_type = json_string_value(json_object_get(object, "mediaType"));
        const char *digest = json_string_value(json_object_get(object, "digest"));
        json_t *size = json_object_get(object, "size");

        if (!json_is_object(object) || !registry_digest_valid(digest) || !json_is_integer(size) ||
            json_integer_value(size) < 0)
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_REGISTRY,
                                      "%s: bad descriptor (needs a sha256 digest and a size)", what);
        if (media_type && strlen(media_type) >= sizeof(ret->media_type))
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_UNSUPPORTED_MEDIA_TYPE,
                                      "%s: media type too long", what);
        snprintf(ret->media_type, sizeof(ret->media_type), "%s", media_type ? media_type : "");
        snprintf(ret->digest, sizeof(ret->digest), "%s", digest);
        ret->size = (uint64_t)json_integer_value(size);
        return 0;
}

/* Fetch a manifest or index by tag or digest. When `expected_digest` is set
 * the bytes must hash to it (a digest is a promise about content: the
 * registry does not get to substitute another manifest). */
static int manifest_fetch(struct client *client, const char *tag_or_digest, const char *expected_digest,
                          struct manifest *manifest, json_t **ret_root, struct moat_error **err)
{
        struct sink sink = { .memory = &manifest->bytes, .fd = -1 };
        struct response response;
        _cleanup_free_ char *url = NULL, *what = NULL;
        _cleanup_json_ json_t *root = NULL;
        const char *media_type;
        char *semicolon;

        manifest->bytes.limit = REGISTRY_MANIFEST_MAX_BYTES;
        if (asprintf(&url, "%s://%s/v2/%s/manifests/%s", client->scheme, client->reference.api_host,
                     client->reference.repository, tag_or_digest) < 0 ||
            asprintf(&what, "manifest %s/%s%c%s", client->reference.host, client->reference.repository,
                     strncmp(tag_or_digest, "sha256:", 7) == 0 ? '@' : ':', tag_or_digest) < 0)
                return moat_error_system(err, ENOMEM, "asprintf");
        if (client_get(client, url, ACCEPT_MANIFESTS, &sink, &response, err) < 0)
                return moat_error_wrap(err, "%s", what);
        if (response.status == 404)
                return moat_error_set(err, MOAT_ERROR_NOT_FOUND, 0, REGISTRY_ERROR_NOT_FOUND,
                                      "%s: not found", what);
        if (response.status != 200)
                return status_error(&response, what, err);
        if (digest_of_bytes(manifest->bytes.data ? manifest->bytes.data : "", manifest->bytes.size,
                            manifest->digest, err) < 0)
                return -1;
        if (expected_digest && strcmp(expected_digest, manifest->digest) != 0)
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_DIGEST_MISMATCH,
                                      "%s: the registry sent content with digest %s", what, manifest->digest);

        root = json_parse_bounded(manifest->bytes.data ? manifest->bytes.data : "", manifest->bytes.size,
                                  what, err);
        if (!root)
                return -1;
        if (json_integer_value(json_object_get(root, "schemaVersion")) != 2)
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, REGISTRY_ERROR_UNSUPPORTED_MEDIA_TYPE,
                                      "%s: only schemaVersion 2 manifests are supported", what);
        /* The document's own mediaType is authoritative; the Content-Type
         * header is the fallback for documents that omit it. */
        semicolon = strchr(response.content_type, ';');
        if (semicolon)
                *semicolon = '\0';
        media_type = json_string_value(json_object_get(root, "mediaType"));
        if (!media_type)
                media_type = response.content_type;
        if (!media_type_is_index(media_type) && !media_type_is_manifest(media_type))
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, REGISTRY_ERROR_UNSUPPORTED_MEDIA_TYPE,
                                      "%s: unsupported media type `%.100s`", what, media_type);
        snprintf(manifest->media_type, sizeof(manifest->media_type), "%.127s", media_type); /* one of the four known types */
        *ret_root = TAKE_PTR(root);
        return 0;
}

static int index_pick_platform(json_t *root, const char *what, char ret_digest[72], struct moat_error **err)
{
        json_t *manifests = json_object_get(root, "manifests");
        size_t i;
        json_t *entry;

        if (!json_is_array(manifests))
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_REGISTRY,
                                      "%s: an index without a manifests array", what);
        if (json_array_size(manifests) > REGISTRY_INDEX_ENTRIES_MAX)
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, REGISTRY_ERROR_REGISTRY,
                                      "%s: more than %d entries", what, REGISTRY_INDEX_ENTRIES_MAX);
        json_array_foreach(manifests, i, entry) {
                json_t *platform = json_object_get(entry, "platform");
                const char *os = json_string_value(json_object_get(platform, "os"));
                const char *architecture = json_string_value(json_object_get(platform, "architecture"));
                struct descriptor descriptor;

                if (!os || !architecture || strcmp(os, "linux") != 0 ||
                    strcmp(architecture, PLATFORM_ARCHITECTURE) != 0)
                        continue;
                if (descriptor_parse(entry, what, &descriptor, err) < 0)
                        return -1;
                /* Nested indexes and artifacts are not images we can run. */
                if (!media_type_is_manifest(descriptor.media_type))
                        continue;
                if (descriptor.size > REGISTRY_MANIFEST_MAX_BYTES)
                        return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, REGISTRY_ERROR_REGISTRY,
                                              "%s: the linux/%s manifest is larger than %u bytes", what,
                                              PLATFORM_ARCHITECTURE, REGISTRY_MANIFEST_MAX_BYTES);
                memcpy(ret_digest, descriptor.digest, 72);
                return 0;
        }
        return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, REGISTRY_ERROR_NO_MATCHING_PLATFORM,
                              "%s: no image for linux/%s", what, PLATFORM_ARCHITECTURE);
}

static int manifest_parse(json_t *root, const char *what, struct manifest *manifest, struct moat_error **err)
{
        json_t *layers = json_object_get(root, "layers"), *layer;
        size_t i;

        if (descriptor_parse(json_object_get(root, "config"), what, &manifest->config, err) < 0)
                return -1;
        if (!media_type_is_config(manifest->config.media_type))
                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, REGISTRY_ERROR_UNSUPPORTED_MEDIA_TYPE,
                                      "%s: config media type `%s` is not a container image", what,
                                      manifest->config.media_type);
        if (manifest->config.size > REGISTRY_MANIFEST_MAX_BYTES)
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, REGISTRY_ERROR_REGISTRY,
                                      "%s: config larger than %u bytes", what, REGISTRY_MANIFEST_MAX_BYTES);
        if (!json_is_array(layers))
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_REGISTRY,
                                      "%s: no layers array", what);
        if (json_array_size(layers) > REGISTRY_LAYERS_MAX)
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, REGISTRY_ERROR_REGISTRY,
                                      "%s: more than %d layers", what, REGISTRY_LAYERS_MAX);
        json_array_foreach(layers, i, layer) {
                struct descriptor *descriptor = &manifest->layers[i];
                if (descriptor_parse(layer, what, descriptor, err) < 0)
                        return -1;
                /* Foreign/non-distributable layers live at URLs the manifest
                 * names: not something we fetch. */
                if (!media_type_is_layer(descriptor->media_type))
                        return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0,
                                              REGISTRY_ERROR_UNSUPPORTED_MEDIA_TYPE,
                                              "%s: layer media type `%s` is not supported", what,
                                              descriptor->media_type);
        }
        manifest->layer_count = json_array_size(layers);
        return 0;
}

int registry_document_check(const char *text, size_t size, struct moat_error **err)
{
        json_t *root = json_parse_bounded(text, size, "document", err);
        struct manifest *manifest;
        char digest[72];
        int r;

        if (!root)
                return -1;
        if (json_object_get(root, "manifests")) {
                r = index_pick_platform(root, "document", digest, err);
        } else {
                manifest = calloc(1, sizeof(*manifest));
                if (!manifest) {
                        json_decref(root);
                        return moat_error_system(err, ENOMEM, "allocate a manifest");
                }
                r = manifest_parse(root, "document", manifest, err);
                free(manifest);
        }
        json_decref(root);
        return r;
}

/* ---- the blob cache ---- */

static void cache_name(const char *digest, const char *suffix, char out[96])
{
        /* digest was validated: "sha256:" + 64 hex, so this is a plain name. */
        snprintf(out, 96, "sha256-%s%s", digest + 7, suffix);
}

/* A complete entry exists only if we verified it, so size is enough. */
static bool cache_has(int cache_fd, const struct descriptor *descriptor)
{
        char name[96];
        struct stat st;

        cache_name(descriptor->digest, "", name);
        return fstatat(cache_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
               (uint64_t)st.st_size == descriptor->size;
}

/* Store bytes we already verified (the manifest) as a complete entry:
 * written to a temporary name, then renamed, so readers never see a prefix. */
static int cache_store_bytes(int cache_fd, const char *digest, const void *data, size_t size,
                             struct moat_error **err)
{
        char name[96], temporary[128];
        _cleanup_close_ int fd = -1;
        size_t done = 0;

        cache_name(digest, "", name);
        snprintf(temporary, sizeof(temporary), "%s.tmp-%ld", name, (long)gettid());
        fd = openat(cache_fd, temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0)
                return moat_error_system(err, errno, "open `%s`", temporary);
        while (done < size) {
                ssize_t n = write(fd, (const char *)data + done, size - done);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        int saved = errno;
                        unlinkat(cache_fd, temporary, 0);
                        return moat_error_system(err, saved, "write `%s`", temporary);
                }
                done += (size_t)n;
        }
        if (fsync(fd) < 0 || renameat(cache_fd, temporary, cache_fd, name) < 0) {
                int saved = errno;
                unlinkat(cache_fd, temporary, 0);
                return moat_error_system(err, saved, "store `%s`", name);
        }
        return 0;
}

static int hash_file_prefix(int fd, uint64_t size, EVP_MD_CTX *hash, struct moat_error **err)
{
        char chunk[65536];
        uint64_t done = 0;

        while (done < size) {
                size_t want = size - done < sizeof(chunk) ? (size_t)(size - done) : sizeof(chunk);
                ssize_t n = pread(fd, chunk, want, (off_t)done);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return moat_error_system(err, n < 0 ? errno : EIO, "read partial blob");
                if (!EVP_DigestUpdate(hash, chunk, (size_t)n))
                        return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "sha256 failed");
                done += (size_t)n;
        }
        return 0;
}

/* After a failed download: keep a partial file worth resuming (a transfer
 * cut short), drop an empty one and one whose sender cannot be trusted to
 * continue it (it sent more than the blob has, or refused our range). */
static void partial_discard_if_useless(int cache_fd, const char *partial, int fd, bool untrusted)
{
        struct stat st;

        if (untrusted || (fstat(fd, &st) == 0 && st.st_size == 0))
                unlinkat(cache_fd, partial, 0);
}

/* Download one blob into the cache, continuing a partial download when
 * there is one. Concurrent pulls of the same blob serialise on a lock of the
 * partial file; the one that waited finds the complete entry. */
static int blob_fetch(struct client *client, int cache_fd, const struct descriptor *descriptor,
                      const struct registry_progress *progress, struct moat_error **err)
{
        char name[96], partial[96], digest[72];
        _cleanup_free_ char *url = NULL;
        _cleanup_hash_ EVP_MD_CTX *hash = NULL;
        _cleanup_close_ int fd = -1;
        struct sink sink = { .fd = -1 };
        struct response response;
        unsigned char raw[32];
        unsigned int raw_length = 0;
        struct stat st;

        cache_name(descriptor->digest, "", name);
        cache_name(descriptor->digest, ".partial", partial);
        if (cache_has(cache_fd, descriptor)) {
                progress_report(progress, "blob", descriptor->digest, descriptor->size, descriptor->size);
                return 0;
        }
        fd = openat(cache_fd, partial, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0)
                return moat_error_system(err, errno, "open `%s`", partial);
        if (flock(fd, LOCK_EX) < 0)
                return moat_error_system(err, errno, "flock `%s`", partial);
        if (cache_has(cache_fd, descriptor)) {
                progress_report(progress, "blob", descriptor->digest, descriptor->size, descriptor->size);
                return 0;
        }
        if (fstat(fd, &st) < 0)
                return moat_error_system(err, errno, "fstat `%s`", partial);
        if (st.st_nlink == 0) /* renamed or removed by the pull we waited for: start over */
                return blob_fetch(client, cache_fd, descriptor, progress, err);
        /* Longer than the blob can be: it is not a prefix of it. */
        if ((uint64_t)st.st_size > descriptor->size) {
                if (ftruncate(fd, 0) < 0)
                        return moat_error_system(err, errno, "truncate `%s`", partial);
                st.st_size = 0;
        }
        if (lseek(fd, 0, SEEK_END) < 0)
                return moat_error_system(err, errno, "lseek `%s`", partial);

        hash = EVP_MD_CTX_new();
        if (!hash || !EVP_DigestInit_ex(hash, EVP_sha256(), NULL))
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "sha256 init failed");
        if (hash_file_prefix(fd, (uint64_t)st.st_size, hash, err) < 0)
                return moat_error_wrap(err, "`%s`", partial);

        sink.fd = fd;
        sink.hash = hash;
        sink.offset = (uint64_t)st.st_size;
        sink.expected = descriptor->size;
        sink.progress = progress;
        sink.digest = descriptor->digest;
        sink.last_progress = sink.offset;
        progress_report(progress, "blob", descriptor->digest, sink.offset, descriptor->size);
        if (sink.offset < descriptor->size) {
                if (asprintf(&url, "%s://%s/v2/%s/blobs/%s", client->scheme, client->reference.api_host,
                             client->reference.repository, descriptor->digest) < 0)
                        return moat_error_system(err, ENOMEM, "asprintf");
                if (client_get(client, url, NULL, &sink, &response, err) < 0) {
                        partial_discard_if_useless(cache_fd, partial, fd, sink.overflow);
                        return moat_error_wrap(err, "blob %s", descriptor->digest);
                }
                if (response.status != 200 && response.status != 206) {
                        /* 416: our partial is not a prefix the registry
                         * recognises. Drop it so the next try starts clean. */
                        partial_discard_if_useless(cache_fd, partial, fd, response.status == 416);
                        return status_error(&response, descriptor->digest, err);
                }
        }

        /* The whole point: the bytes must be the ones the manifest named. */
        if (!EVP_DigestFinal_ex(hash, raw, &raw_length) || raw_length != 32)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "sha256 final failed");
        digest_format(raw, digest);
        if (sink.offset + sink.written != descriptor->size || strcmp(digest, descriptor->digest) != 0) {
                unlinkat(cache_fd, partial, 0);
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, REGISTRY_ERROR_DIGEST_MISMATCH,
                                      "blob %s: received %llu bytes with digest %s (expected %llu bytes)",
                                      descriptor->digest, (unsigned long long)(sink.offset + sink.written),
                                      digest, (unsigned long long)descriptor->size);
        }
        if (fsync(fd) < 0)
                return moat_error_system(err, errno, "fsync `%s`", partial);
        if (renameat(cache_fd, partial, cache_fd, name) < 0)
                return moat_error_system(err, errno, "rename `%s`", partial);
        return 0;
}

/* ---- the OCI layout handed on ---- */

static int write_file_at(int dir_fd, const char *name, const char *data, size_t size, struct moat_error **err)
{
        _cleanup_close_ int fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
        size_t done = 0;

        if (fd < 0)
                return moat_error_system(err, errno, "create `%s`", name);
        while (done < size) {
                ssize_t n = write(fd, data + done, size - done);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return moat_error_system(err, errno, "write `%s`", name);
                done += (size_t)n;
        }
        return 0;
}

/* Hard link when the cache and out_dir share a file system, else copy. */
static int layout_add_blob(int cache_fd, int blobs_fd, const char *digest, struct moat_error **err)
{
        char name[96];
        const char *hex = digest + 7;
        _cleanup_close_ int source = -1, target = -1;
        char chunk[65536];
        ssize_t n;

        cache_name(digest, "", name);
        if (linkat(cache_fd, name, blobs_fd, hex, 0) == 0 || errno == EEXIST)
                return 0; /* EEXIST: the same blob twice in one manifest */
        if (errno != EXDEV)
                return moat_error_system(err, errno, "link `%s` into the layout", name);
        source = openat(cache_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (source < 0)
                return moat_error_system(err, errno, "open `%s`", name);
        target = openat(blobs_fd, hex, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (target < 0)
                return moat_error_system(err, errno, "create blobs/sha256/%s", hex);
        while ((n = read(source, chunk, sizeof(chunk))) != 0) {
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return moat_error_system(err, errno, "read `%s`", name);
                for (ssize_t done = 0; done < n;) {
                        ssize_t w = write(target, chunk + done, (size_t)(n - done));
                        if (w < 0 && errno == EINTR)
                                continue;
                        if (w < 0)
                                return moat_error_system(err, errno, "write blobs/sha256/%s", hex);
                        done += w;
                }
        }
        return 0;
}

static int layout_write(int out_fd, int cache_fd, const struct manifest *manifest, const char *tag,
                        struct moat_error **err)
{
        static const char oci_layout[] = "{\"imageLayoutVersion\":\"1.0.0\"}";
        _cleanup_close_ int blobs_fd = -1, sha_fd = -1;
        _cleanup_json_ json_t *index = NULL;
        _cleanup_free_ char *text = NULL;
        json_t *descriptor;

        if (mkdirat(out_fd, "blobs", 0755) < 0)
                return moat_error_set(err, MOAT_ERROR_CONFLICT, errno, NULL,
                                      "mkdir blobs in the output directory (it must be empty)");
        blobs_fd = openat(out_fd, "blobs", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (blobs_fd < 0 || mkdirat(blobs_fd, "sha256", 0755) < 0)
                return moat_error_system(err, errno, "mkdir blobs/sha256");
        sha_fd = openat(blobs_fd, "sha256", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (sha_fd < 0)
                return moat_error_system(err, errno, "open blobs/sha256");

        if (layout_add_blob(cache_fd, sha_fd, manifest->digest, err) < 0 ||
            layout_add_blob(cache_fd, sha_fd, manifest->config.digest, err) < 0)
                return -1;
        for (size_t i = 0; i < manifest->layer_count; i++)
                if (layout_add_blob(cache_fd, sha_fd, manifest->layers[i].digest, err) < 0)
                        return -1;

        descriptor = json_pack("{s:s, s:s, s:I}", "mediaType", manifest->media_type, "digest",
                               manifest->digest, "size", (json_int_t)manifest->bytes.size);
        if (descriptor && tag && *tag)
                json_object_set_new(descriptor, "annotations",
                                    json_pack("{s:s}", "org.opencontainers.image.ref.name", tag));
        index = json_pack("{s:i, s:s, s:[o]}", "schemaVersion", 2, "mediaType", MEDIA_OCI_INDEX,
                          "manifests", descriptor);
        text = index ? json_dumps(index, JSON_COMPACT) : NULL;
        if (!text)
                return moat_error_system(err, ENOMEM, "index.json");
        if (write_file_at(out_fd, "oci-layout", oci_layout, strlen(oci_layout), err) < 0 ||
            write_file_at(out_fd, "index.json", text, strlen(text), err) < 0)
                return -1;
        return 0;
}

/* ---- the pull ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
        curl_global_init(CURL_GLOBAL_DEFAULT);
}

int registry_pull(const char *reference, const struct registry_options *options,
                  const struct registry_progress *progress, const char *out_dir, struct moat_error **err)
{
        _cleanup_(client_free) struct client client = { 0 };
        _cleanup_close_ int cache_fd = -1, out_fd = -1;
        _cleanup_json_ json_t *root = NULL;
        struct manifest *manifest = NULL;
        char what[512];
        uint64_t total = 0;
        int r = -1;

        if (!options || !options->blob_cache_dir || !out_dir)
                return moat_error_invalid(err, "registry_pull: blob cache and output directory are required");
        if (registry_reference_parse(reference, &client.reference, err) < 0)
                return -1;
        client.options = options;
        client.scheme = options->insecure_http ? "http" : "https";

        if (mkdir(options->blob_cache_dir, 0700) < 0 && errno != EEXIST)
                return moat_error_system(err, errno, "mkdir `%s`", options->blob_cache_dir);
        cache_fd = open(options->blob_cache_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (cache_fd < 0)
                return moat_error_system(err, errno, "open `%s`", options->blob_cache_dir);
        out_fd = open(out_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (out_fd < 0)
                return moat_error_system(err, errno, "open `%s`", out_dir);

        pthread_once(&curl_once, curl_init_once);
        client.curl = curl_easy_init();
        manifest = calloc(1, sizeof(*manifest));
        if (!client.curl || !manifest) {
                free(manifest);
                return moat_error_system(err, ENOMEM, "curl_easy_init");
        }

        snprintf(what, sizeof(what), "%s/%s", client.reference.host, client.reference.repository);
        if (manifest_fetch(&client, client.reference.digest[0] ? client.reference.digest : client.reference.tag,
                           client.reference.digest[0] ? client.reference.digest : NULL, manifest, &root, err) < 0)
                goto out;
        if (media_type_is_index(manifest->media_type)) {
                char chosen[72];
                if (index_pick_platform(root, what, chosen, err) < 0)
                        goto out;
                json_decref(TAKE_PTR(root));
                buffer_reset(&manifest->bytes);
                if (manifest_fetch(&client, chosen, chosen, manifest, &root, err) < 0)
                        goto out;
                if (!media_type_is_manifest(manifest->media_type)) {
                        moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, REGISTRY_ERROR_UNSUPPORTED_MEDIA_TYPE,
                                       "%s: the index entry for linux/%s is not an image manifest", what,
                                       PLATFORM_ARCHITECTURE);
                        goto out;
                }
        }
        progress_report(progress, "manifest", manifest->digest, manifest->bytes.size, manifest->bytes.size);
        if (manifest_parse(root, what, manifest, err) < 0)
                goto out;
        if (cache_store_bytes(cache_fd, manifest->digest, manifest->bytes.data, manifest->bytes.size, err) < 0)
                goto out;

        if (blob_fetch(&client, cache_fd, &manifest->config, progress, err) < 0)
                goto out;
        total += manifest->config.size;
        for (size_t i = 0; i < manifest->layer_count; i++) {
                if (blob_fetch(&client, cache_fd, &manifest->layers[i], progress, err) < 0)
                        goto out;
                total += manifest->layers[i].size;
        }
        if (layout_write(out_fd, cache_fd, manifest, client.reference.tag, err) < 0)
                goto out;
        progress_report(progress, "done", manifest->digest, total, total);
        r = 0;
out:
        buffer_reset(&manifest->bytes);
        free(manifest);
        return r;
}
