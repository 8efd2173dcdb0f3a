#include "client.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cleanup.h"

struct moat_client {
        char *socket_path;
        volatile sig_atomic_t *cancel_flag;
};

/* What one transfer collects. */
struct transfer {
        struct moat_client *client;
        CURL *curl;
        char *body;                            /* non-streaming, or an error response */
        size_t body_length;
        struct moat_ndjson_reader *reader;     /* streaming: fed while the status is 2xx */
        moat_client_event_fn on_event;         /* or: any NDJSON events, line by line */
        void *event_arg;
        char *line;                            /* the incomplete event line */
        size_t line_length;
        struct moat_error *stream_error;       /* set by the reader inside the callback */
        bool too_large;
};

static void curl_easy_cleanupp(CURL **curl)
{
        if (*curl)
                curl_easy_cleanup(*curl);
}
static void curl_slist_free_allp(struct curl_slist **list)
{
        if (*list)
                curl_slist_free_all(*list);
}

const char *moat_client_socket_choose(const char *explicit_path, const char *environment_value)
{
        if (explicit_path && *explicit_path)
                return explicit_path;
        if (environment_value && *environment_value)
                return environment_value;
        return MOAT_CLIENT_DEFAULT_SOCKET;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;
static void curl_init_once(void)
{
        curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int moat_client_new(const char *explicit_socket, struct moat_client **ret_client, struct moat_error **err)
{
        _cleanup_free_ struct moat_client *client = NULL;
        const char *path = moat_client_socket_choose(explicit_socket, getenv("MOAT_SOCKET"));

        /* sun_path is 108 bytes; a longer path would be cut silently and we
         * would talk to a different socket. */
        if (strlen(path) >= 108)
                return moat_error_invalid(err, "socket path `%s` is longer than 107 bytes", path);
        pthread_once(&curl_once, curl_init_once);
        if (curl_init_result != CURLE_OK)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "curl_global_init: %s",
                                      curl_easy_strerror(curl_init_result));
        client = calloc(1, sizeof(*client));
        if (!client)
                return moat_error_system(err, ENOMEM, "allocate client");
        client->socket_path = strdup(path);
        if (!client->socket_path)
                return moat_error_system(err, ENOMEM, "allocate client");
        *ret_client = TAKE_PTR(client);
        return 0;
}

void moat_client_free(struct moat_client *client)
{
        if (!client)
                return;
        free(client->socket_path);
        free(client);
}

const char *moat_client_socket(const struct moat_client *client)
{
        return client->socket_path;
}

void moat_client_set_cancel_flag(struct moat_client *client, volatile sig_atomic_t *flag)
{
        client->cancel_flag = flag;
}

char *moat_client_escape_segment(const char *segment)
{
        static const char hex[] = "0123456789ABCDEF";
        size_t length = strlen(segment);
        char *escaped = malloc(length * 3 + 1), *out = escaped;

        if (!escaped)
                return NULL;
        for (const unsigned char *c = (const unsigned char *)segment; *c; c++) {
                /* RFC 3986 unreserved characters pass; everything else is encoded. */
                if ((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
                    *c == '-' || *c == '_' || *c == '.' || *c == '~') {
                        *out++ = (char)*c;
                } else {
                        *out++ = '%';
                        *out++ = hex[*c >> 4];
                        *out++ = hex[*c & 15];
                }
        }
        *out = '\0';
        return escaped;
}

enum moat_error_kind moat_client_error_kind(long status, const char *code)
{
        static const struct {
                const char *code;
                enum moat_error_kind kind;
        } by_code[] = {
                { "invalid_argument", MOAT_ERROR_INVALID_ARGUMENT },
                { "method_not_allowed", MOAT_ERROR_INVALID_ARGUMENT },
                { "not_found", MOAT_ERROR_NOT_FOUND },
                { "exec_not_found", MOAT_ERROR_NOT_FOUND },
                { "conflict", MOAT_ERROR_CONFLICT },
                { "payload_too_large", MOAT_ERROR_LIMIT_EXCEEDED },
                { "limit_exceeded", MOAT_ERROR_LIMIT_EXCEEDED },
                { "timeout", MOAT_ERROR_TIMEOUT },
                { "unavailable", MOAT_ERROR_UNAVAILABLE },
                { "system", MOAT_ERROR_SYSTEM },
                { "internal", MOAT_ERROR_INTERNAL },
        };

        for (size_t i = 0; code && i < MOAT_ARRAY_SIZE(by_code); i++)
                if (strcmp(code, by_code[i].code) == 0)
                        return by_code[i].kind;
        /* Unknown or more specific codes: map by status, as docs/API.md asks. */
        switch (status) {
        case 400:
        case 405:
                return MOAT_ERROR_INVALID_ARGUMENT;
        case 404:
                return MOAT_ERROR_NOT_FOUND;
        case 409:
                return MOAT_ERROR_CONFLICT;
        case 413:
        case 429:
                return MOAT_ERROR_LIMIT_EXCEEDED;
        case 503:
                return MOAT_ERROR_UNAVAILABLE;
        case 504:
                return MOAT_ERROR_TIMEOUT;
        case 500:
                return MOAT_ERROR_SYSTEM;
        default:
                return status >= 400 && status < 500 ? MOAT_ERROR_INVALID_ARGUMENT : MOAT_ERROR_INTERNAL;
        }
}

int moat_client_error_from_response(long status, json_t *body, struct moat_error **err)
{
        json_t *error = json_object_get(body, "error");
        const char *code = json_string_value(json_object_get(error, "code"));
        const char *message = json_string_value(json_object_get(error, "message"));
        enum moat_error_kind kind = moat_client_error_kind(status, code);

        if (!code)
                code = moat_error_kind_code(kind);
        if (!message)
                return moat_error_set(err, kind, 0, code, "moatd answered HTTP %ld", status);
        return moat_error_set(err, kind, 0, code, "%s", message);
}

/* One whole event line to the caller. */
static int transfer_event(struct transfer *transfer, const char *line, size_t length)
{
        _cleanup_(json_decrefp) json_t *event = NULL;

        if (length == 0)
                return 0;
        event = json_loadb(line, length, 0, NULL);
        if (!json_is_object(event))
                return moat_error_set(&transfer->stream_error, MOAT_ERROR_INTERNAL, 0, "bad_response",
                                      "moatd sent a malformed event");
        return transfer->on_event(transfer->event_arg, event, &transfer->stream_error);
}

static int transfer_events(struct transfer *transfer, const char *data, size_t length)
{
        for (size_t i = 0; i < length; i++) {
                if (data[i] == '\n') {
                        if (transfer_event(transfer, transfer->line, transfer->line_length) < 0)
                                return -1;
                        transfer->line_length = 0;
                        continue;
                }
                if (transfer->line_length + 1 >= MOAT_CLIENT_EVENT_LINE_MAX)
                        return moat_error_set(&transfer->stream_error, MOAT_ERROR_LIMIT_EXCEEDED, 0,
                                              "response_too_large", "an event is longer than %u bytes",
                                              MOAT_CLIENT_EVENT_LINE_MAX);
                if (!transfer->line && !(transfer->line = malloc(MOAT_CLIENT_EVENT_LINE_MAX)))
                        return moat_error_set(&transfer->stream_error, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "malloc");
                transfer->line[transfer->line_length++] = data[i];
        }
        return 0;
}

static size_t transfer_write(char *data, size_t size, size_t count, void *userdata)
{
        struct transfer *transfer = userdata;
        size_t length = size * count;
        long status = 0;

        curl_easy_getinfo(transfer->curl, CURLINFO_RESPONSE_CODE, &status);
        if (transfer->on_event && status >= 200 && status < 300)
                return transfer_events(transfer, data, length) < 0 ? 0 : length;
        if (transfer->reader && status >= 200 && status < 300) {
                if (moat_ndjson_reader_feed(transfer->reader, data, length, &transfer->stream_error) < 0)
                        return 0; /* abort the transfer: CURLE_WRITE_ERROR */
                return length;
        }
        if (length > MOAT_CLIENT_RESPONSE_MAX - transfer->body_length) {
                transfer->too_large = true;
                return 0;
        }
        char *grown = realloc(transfer->body, transfer->body_length + length + 1);
        if (!grown)
                return 0;
        transfer->body = grown;
        memcpy(transfer->body + transfer->body_length, data, length);
        transfer->body_length += length;
        transfer->body[transfer->body_length] = '\0';
        return length;
}

static int transfer_progress(void *userdata, curl_off_t download_total, curl_off_t download_now,
                             curl_off_t upload_total, curl_off_t upload_now)
{
        struct transfer *transfer = userdata;

        return transfer->client->cancel_flag && *transfer->client->cancel_flag ? 1 : 0;
}

/* Run one transfer; returns the HTTP status or -1 with *err for a transport
 * failure (the body, if any, is left in transfer for the caller). */
static long transfer_perform(struct transfer *transfer, const char *method, const char *path,
                             const char *content_type, const void *body, size_t body_length, struct moat_error **err)
{
        _cleanup_(curl_slist_free_allp) struct curl_slist *headers = NULL;
        _cleanup_free_ char *url = NULL;
        char content_type_header[128];
        CURLcode result;
        long status = 0;

        if (path[0] != '/')
                return moat_error_invalid(err, "API path `%s` does not start with /", path);
        /* The host part is ignored on a unix socket; it only fills the Host header. */
        if (asprintf(&url, "http://moatd%s", path) < 0)
                return moat_error_system(err, ENOMEM, "build URL");
        curl_easy_setopt(transfer->curl, CURLOPT_UNIX_SOCKET_PATH, transfer->client->socket_path);
        curl_easy_setopt(transfer->curl, CURLOPT_URL, url);
        curl_easy_setopt(transfer->curl, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(transfer->curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(transfer->curl, CURLOPT_CONNECTTIMEOUT, 10L);
        curl_easy_setopt(transfer->curl, CURLOPT_WRITEFUNCTION, transfer_write);
        curl_easy_setopt(transfer->curl, CURLOPT_WRITEDATA, transfer);
        curl_easy_setopt(transfer->curl, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(transfer->curl, CURLOPT_XFERINFOFUNCTION, transfer_progress);
        curl_easy_setopt(transfer->curl, CURLOPT_XFERINFODATA, transfer);
        /* No "Expect: 100-continue" round trip on larger bodies. */
        headers = curl_slist_append(headers, "Expect:");
        if (body) {
                snprintf(content_type_header, sizeof(content_type_header), "Content-Type: %s", content_type);
                headers = curl_slist_append(headers, content_type_header);
                curl_easy_setopt(transfer->curl, CURLOPT_POSTFIELDS, body);
                curl_easy_setopt(transfer->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_length);
        } else if (strcmp(method, "POST") == 0) {
                curl_easy_setopt(transfer->curl, CURLOPT_POSTFIELDS, "");
                curl_easy_setopt(transfer->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
        }
        if (!headers)
                return moat_error_system(err, ENOMEM, "build headers");
        curl_easy_setopt(transfer->curl, CURLOPT_HTTPHEADER, headers);

        result = curl_easy_perform(transfer->curl);
        curl_easy_getinfo(transfer->curl, CURLINFO_RESPONSE_CODE, &status);
        if (result == CURLE_OK)
                return status;
        if (transfer->stream_error) {
                *err = TAKE_PTR(transfer->stream_error);
                return -1;
        }
        if (result == CURLE_ABORTED_BY_CALLBACK)
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, EINTR, "interrupted", "%s %s", method, path);
        if (transfer->too_large)
                return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, "response_too_large",
                                      "%s %s: response larger than %u bytes", method, path, MOAT_CLIENT_RESPONSE_MAX);
        if (result == CURLE_COULDNT_CONNECT)
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, "daemon_unreachable",
                                      "cannot connect to moatd at %s (is moatd running? see --socket or $MOAT_SOCKET)",
                                      transfer->client->socket_path);
        return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, 0, "transport", "%s %s: %s", method, path,
                              curl_easy_strerror(result));
}

/* Parse the collected body; on a non-2xx status turn it into *err. */
static int transfer_finish(struct transfer *transfer, long status, json_t **ret_response, struct moat_error **err)
{
        _cleanup_(json_decrefp) json_t *json = NULL;
        json_error_t json_error;

        if (transfer->body_length > 0) {
                json = json_loadb(transfer->body, transfer->body_length, 0, &json_error);
                if (!json && status >= 200 && status < 300)
                        return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, "bad_response",
                                              "moatd sent invalid JSON: %s", json_error.text);
        }
        if (status < 200 || status >= 300)
                return moat_client_error_from_response(status, json, err);
        if (ret_response)
                *ret_response = TAKE_PTR(json);
        return (int)status;
}

static int client_call(struct moat_client *client, const char *method, const char *path, const char *content_type,
                       const void *body, size_t body_length, json_t **ret_response, struct moat_error **err)
{
        _cleanup_(curl_easy_cleanupp) CURL *curl = curl_easy_init();
        struct transfer transfer = { .client = client, .curl = curl };
        long status;
        int r;

        if (!curl)
                return moat_error_system(err, ENOMEM, "curl_easy_init");
        status = transfer_perform(&transfer, method, path, content_type, body, body_length, err);
        r = status < 0 ? -1 : transfer_finish(&transfer, status, ret_response, err);
        free(transfer.body);
        return r;
}

int moat_client_request(struct moat_client *client, const char *method, const char *path, json_t *body,
                        json_t **ret_response, struct moat_error **err)
{
        _cleanup_free_ char *encoded = NULL;

        if (body) {
                encoded = json_dumps(body, JSON_COMPACT);
                if (!encoded)
                        return moat_error_system(err, ENOMEM, "encode request body");
        }
        return client_call(client, method, path, "application/json", encoded, encoded ? strlen(encoded) : 0,
                           ret_response, err);
}

int moat_client_post_raw(struct moat_client *client, const char *path, const void *data, size_t length,
                         json_t **ret_response, struct moat_error **err)
{
        /* A zero-length body still needs a non-NULL pointer to be sent as a body. */
        return client_call(client, "POST", path, "application/octet-stream", data ? data : "", length,
                           ret_response, err);
}

int moat_client_stream_output(struct moat_client *client, const char *path,
                              const struct moat_output_handler *handler, struct moat_error **err)
{
        _cleanup_(curl_easy_cleanupp) CURL *curl = curl_easy_init();
        struct moat_ndjson_reader reader;
        struct transfer transfer = { .client = client, .curl = curl, .reader = &reader };
        long status;
        int r;

        if (!curl)
                return moat_error_system(err, ENOMEM, "curl_easy_init");
        moat_ndjson_reader_init(&reader, handler);
        status = transfer_perform(&transfer, "GET", path, NULL, NULL, 0, err);
        if (status < 0)
                r = -1;
        else if (status < 200 || status >= 300)
                r = transfer_finish(&transfer, status, NULL, err);
        else
                r = moat_ndjson_reader_finish(&reader, err);
        moat_ndjson_reader_release(&reader);
        moat_error_free(transfer.stream_error);
        free(transfer.body);
        return r < 0 ? -1 : 0;
}

int moat_client_post_events(struct moat_client *client, const char *path, json_t *body, moat_client_event_fn on_event,
                            void *userdata, struct moat_error **err)
{
        _cleanup_(curl_easy_cleanupp) CURL *curl = curl_easy_init();
        struct transfer transfer = { .client = client, .curl = curl, .on_event = on_event, .event_arg = userdata };
        _cleanup_free_ char *encoded = body ? json_dumps(body, JSON_COMPACT) : NULL;
        long status;
        int r;

        if (!curl || (body && !encoded))
                return moat_error_system(err, ENOMEM, "start the request");
        status = transfer_perform(&transfer, "POST", path, "application/json", encoded ? encoded : "",
                                  encoded ? strlen(encoded) : 0, err);
        if (status < 0)
                r = -1;
        else if (status < 200 || status >= 300)
                r = transfer_finish(&transfer, status, NULL, err);
        else /* a last line without "\n" */
                r = transfer_event(&transfer, transfer.line, transfer.line_length);
        if (r < 0 && transfer.stream_error && err && !*err)
                *err = TAKE_PTR(transfer.stream_error);
        if (encoded)
                explicit_bzero(encoded, strlen(encoded)); /* a pull's body may hold a password */
        moat_error_free(transfer.stream_error);
        free(transfer.line);
        free(transfer.body);
        return r < 0 ? -1 : 0;
}
