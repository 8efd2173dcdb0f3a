/* Load generator for moatd's HTTP API (docs/API.md): raw HTTP/1.1 over its
 * unix socket with keep-alive, no libraries, so the client adds next to
 * nothing to what is measured. Every sample is wall time from CLOCK_MONOTONIC.
 *
 *   moat_bench [-S SOCKET] health [WAIT_SECONDS]
 *       GET /v1/health until it answers 200 (or WAIT_SECONDS pass).
 *   moat_bench [-S SOCKET] import DIR NAME
 *       POST /v1/images/import; an image of that name already there is fine.
 *   moat_bench [-S SOCKET] lifecycle IMAGE N OUT_DIR
 *       N x (create sandbox, run `true`, delete), after 5 untimed warm-ups.
 *       Writes moat_total.ns and, per phase, moat_create.ns, moat_run.ns,
 *       moat_delete.ns.
 *   moat_bench [-S SOCKET] exec IMAGE N OUT_DIR
 *       One sandbox; N x POST /run {"argv":["true"]} -> moat_exec_run.ns; then
 *       N x (POST /execs, GET its output until the exit event)
 *       -> moat_exec_stream.ns.
 *   moat_bench [-S SOCKET] throughput IMAGE CONNECTIONS SECONDS OUT_DIR
 *       CONNECTIONS threads, each on its own connection, doing
 *       create/run/delete until SECONDS pass -> moat_throughput.txt.
 *
 * A mode that fails writes OUT_DIR/<its first file>.skip with the reason (the
 * HTTP status and the start of the body) and exits 1, so the report can say
 * why there is no number. A benchmark tool, not product code. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 5
#define RECEIVE_TIMEOUT_SECONDS 60
#define MAX_BODY (64u << 20)

static const char *socket_path;
static const char *skip_path; /* where fail() records its reason, if set */

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

__attribute__((format(printf, 1, 2), noreturn))
static void fail(const char *fmt, ...)
{
        char reason[2048];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(reason, sizeof(reason), fmt, ap);
        va_end(ap);
        fprintf(stderr, "moat_bench: %s\n", reason);
        if (skip_path) {
                FILE *f = fopen(skip_path, "w");
                if (f) {
                        fprintf(f, "failed: %s\n", reason);
                        fclose(f);
                }
        }
        exit(1);
}

/* ---- growable byte buffer ---- */

struct buffer {
        char *data;
        size_t len, cap;
};

static void buffer_append(struct buffer *b, const void *data, size_t len)
{
        if (b->len + len + 1 > b->cap) {
                size_t cap = b->cap ? b->cap : 4096;
                while (cap < b->len + len + 1)
                        cap *= 2;
                char *p = realloc(b->data, cap);
                if (!p)
                        fail("out of memory");
                b->data = p;
                b->cap = cap;
        }
        memcpy(b->data + b->len, data, len);
        b->len += len;
        b->data[b->len] = '\0'; /* bodies are searched as strings */
}

/* ---- one keep-alive connection ---- */

struct connection {
        int fd;
        char in[65536];
        size_t in_start, in_end; /* unread bytes are in[in_start, in_end) */
};

struct response {
        int status;
        struct buffer body;
};

static void connection_close(struct connection *c)
{
        if (c->fd >= 0)
                close(c->fd);
        c->fd = -1;
        c->in_start = c->in_end = 0;
}

static int connection_open(struct connection *c)
{
        struct sockaddr_un addr = { .sun_family = AF_UNIX };
        if (strlen(socket_path) >= sizeof(addr.sun_path)) {
                errno = ENAMETOOLONG;
                return -1;
        }
        strcpy(addr.sun_path, socket_path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -1;
        /* A daemon that stops answering must end the benchmark, not hang it. */
        struct timeval timeout = { .tv_sec = RECEIVE_TIMEOUT_SECONDS };
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
        if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
                int saved = errno;
                close(fd);
                errno = saved;
                return -1;
        }
        c->fd = fd;
        c->in_start = c->in_end = 0;
        return 0;
}

/* Reads more bytes into c->in; returns the count, 0 on EOF, -1 on error. */
static ssize_t connection_fill(struct connection *c)
{
        if (c->in_start > 0) {
                memmove(c->in, c->in + c->in_start, c->in_end - c->in_start);
                c->in_end -= c->in_start;
                c->in_start = 0;
        }
        if (c->in_end == sizeof(c->in)) {
                errno = E2BIG;
                return -1;
        }
        ssize_t n;
        do
                n = read(c->fd, c->in + c->in_end, sizeof(c->in) - c->in_end);
        while (n < 0 && errno == EINTR);
        if (n > 0)
                c->in_end += (size_t)n;
        return n;
}

/* Returns the next CRLF-terminated line (terminator stripped, NUL-terminated,
 * valid until the next read), or NULL on EOF/error. */
static char *connection_read_line(struct connection *c)
{
        for (;;) {
                char *start = c->in + c->in_start;
                char *end = memmem(start, c->in_end - c->in_start, "\r\n", 2);
                if (end) {
                        *end = '\0';
                        c->in_start = (size_t)(end + 2 - c->in);
                        return start;
                }
                if (connection_fill(c) <= 0)
                        return NULL;
        }
}

static int connection_read_exact(struct connection *c, size_t len, struct buffer *out)
{
        while (len > 0) {
                if (c->in_end == c->in_start && connection_fill(c) <= 0)
                        return -1;
                size_t take = c->in_end - c->in_start;
                if (take > len)
                        take = len;
                if (out)
                        buffer_append(out, c->in + c->in_start, take);
                c->in_start += take;
                len -= take;
        }
        return 0;
}

static int write_all(int fd, const char *data, size_t len)
{
        while (len > 0) {
                ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -1;
                }
                data += n;
                len -= (size_t)n;
        }
        return 0;
}

/* Reads one response (status line, headers, body: Content-Length, chunked,
 * or until close). Returns 0, or -1 if the connection failed; *got_any says
 * whether any byte of the response arrived (a keep-alive connection the
 * server closed while idle fails with none). */
static int read_response(struct connection *c, struct response *r, int *got_any)
{
        *got_any = 0;
        char *line = connection_read_line(c);
        if (!line)
                return -1;
        *got_any = 1;
        if (sscanf(line, "HTTP/1.%*d %d", &r->status) != 1)
                fail("malformed status line from moatd: %.100s", line);

        long long content_length = -1;
        int chunked = 0;
        /* HTTP/1.0 closes after every response unless told otherwise. */
        int close_after = strncmp(line, "HTTP/1.0", 8) == 0;
        while ((line = connection_read_line(c)) && *line) {
                if (strncasecmp(line, "Content-Length:", 15) == 0)
                        content_length = strtoll(line + 15, NULL, 10);
                else if (strncasecmp(line, "Transfer-Encoding:", 18) == 0 && strcasestr(line, "chunked"))
                        chunked = 1;
                else if (strncasecmp(line, "Connection:", 11) == 0 && strcasestr(line, "close"))
                        close_after = 1;
        }
        if (!line)
                return -1;

        if (chunked) {
                for (;;) {
                        line = connection_read_line(c);
                        if (!line)
                                return -1;
                        unsigned long size = strtoul(line, NULL, 16);
                        if (r->body.len + size > MAX_BODY)
                                fail("response body over %u bytes", MAX_BODY);
                        if (size == 0) {
                                /* Trailers, if any, end with an empty line. */
                                while ((line = connection_read_line(c)) && *line)
                                        ;
                                if (!line)
                                        return -1;
                                break;
                        }
                        if (connection_read_exact(c, size, &r->body) < 0 ||
                            connection_read_exact(c, 2, NULL) < 0)
                                return -1;
                }
        } else if (content_length >= 0) {
                if ((unsigned long long)content_length > MAX_BODY)
                        fail("response body over %u bytes", MAX_BODY);
                if (connection_read_exact(c, (size_t)content_length, &r->body) < 0)
                        return -1;
        } else {
                ssize_t n;
                do {
                        buffer_append(&r->body, c->in + c->in_start, c->in_end - c->in_start);
                        c->in_start = c->in_end = 0;
                } while ((n = connection_fill(c)) > 0);
                close_after = 1;
        }
        if (close_after)
                connection_close(c);
        return 0;
}

/* Sends one request and reads its response into r (body reset first).
 * Reconnects when needed; a request whose connection the server had closed
 * while it was idle (nothing of the response arrived) is sent once more. */
static void request(struct connection *c, const char *method, const char *path,
                    const char *body, struct response *r)
{
        char head[1024];
        size_t body_len = body ? strlen(body) : 0;
        int head_len = snprintf(head, sizeof(head),
                                "%s %s HTTP/1.1\r\nHost: moatd\r\n"
                                "Content-Type: application/json\r\n"
                                "Content-Length: %zu\r\n\r\n",
                                method, path, body_len);
        struct buffer out = { 0 };
        buffer_append(&out, head, (size_t)head_len);
        if (body_len)
                buffer_append(&out, body, body_len);

        for (int attempt = 0;; attempt++) {
                r->body.len = 0;
                r->status = 0;
                int was_open = c->fd >= 0;
                if (!was_open && connection_open(c) < 0)
                        fail("connect %s: %s", socket_path, strerror(errno));
                int got_any = 0;
                errno = 0; /* an EOF leaves it 0: "closed" below */
                if (write_all(c->fd, out.data, out.len) == 0 && read_response(c, r, &got_any) == 0)
                        break;
                int saved = errno;
                connection_close(c);
                if (!was_open || got_any || attempt > 0)
                        fail("%s %s: connection to moatd failed: %s", method, path,
                             saved ? strerror(saved) : "closed");
        }
        free(out.data);
        if (!r->body.data)
                buffer_append(&r->body, "", 0);
}

static void expect_status(const char *what, const struct response *r, int want)
{
        if (r->status != want)
                fail("%s: HTTP %d (want %d): %.300s", what, r->status, want, r->body.data);
}

/* Copies the string value of the first `"key": "..."` in json into out. A
 * scan, not a parser: the bench reads only ids from bodies it asked for. */
static void json_string(const char *what, const char *json, const char *key, char *out, size_t out_size)
{
        char quoted[64];
        snprintf(quoted, sizeof(quoted), "\"%s\"", key);
        const char *p = strstr(json, quoted);
        if (p) {
                p += strlen(quoted);
                p += strspn(p, " \t\r\n");
                if (*p == ':') {
                        p++;
                        p += strspn(p, " \t\r\n");
                        if (*p == '"') {
                                p++;
                                size_t len = strcspn(p, "\"");
                                if (len < out_size && p[len] == '"') {
                                        memcpy(out, p, len);
                                        out[len] = '\0';
                                        return;
                                }
                        }
                }
        }
        fail("%s: no string \"%s\" in response: %.300s", what, key, json);
}

/* True if json holds `"exit_code": 0` (any whitespace around the colon). */
static int json_exit_code_zero(const char *json)
{
        for (const char *p = json; (p = strstr(p, "\"exit_code\"")); p++) {
                const char *v = p + strlen("\"exit_code\"");
                v += strspn(v, " \t\r\n");
                if (*v != ':')
                        continue;
                v++;
                v += strspn(v, " \t\r\n");
                if (v[0] == '0' && (v[1] < '0' || v[1] > '9'))
                        return 1;
        }
        return 0;
}

/* ---- the sandbox operations being measured ---- */

static void sandbox_create(struct connection *c, struct response *r, const char *image,
                           char *id, size_t id_size)
{
        char body[512];
        snprintf(body, sizeof(body), "{\"image\":\"%s\"}", image);
        request(c, "POST", "/v1/sandboxes", body, r);
        expect_status("create sandbox", r, 201);
        json_string("create sandbox", r->body.data, "id", id, id_size);
}

static void sandbox_run_true(struct connection *c, struct response *r, const char *id)
{
        char path[256];
        snprintf(path, sizeof(path), "/v1/sandboxes/%s/run", id);
        request(c, "POST", path, "{\"argv\":[\"true\"]}", r);
        expect_status("run true", r, 200);
        if (!json_exit_code_zero(r->body.data))
                fail("run true: did not exit 0: %.300s", r->body.data);
}

static void sandbox_exec_stream_true(struct connection *c, struct response *r, const char *id)
{
        char path[256], exec_id[128];
        snprintf(path, sizeof(path), "/v1/sandboxes/%s/execs", id);
        request(c, "POST", path, "{\"argv\":[\"true\"]}", r);
        expect_status("start exec", r, 201);
        json_string("start exec", r->body.data, "id", exec_id, sizeof(exec_id));
        snprintf(path, sizeof(path), "/v1/sandboxes/%s/execs/%s/output", id, exec_id);
        request(c, "GET", path, NULL, r);
        expect_status("exec output", r, 200);
        if (!json_exit_code_zero(r->body.data))
                fail("exec output: no exit event with exit_code 0: %.300s", r->body.data);
}

static void sandbox_delete(struct connection *c, struct response *r, const char *id)
{
        char path[256];
        snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
        request(c, "DELETE", path, NULL, r);
        expect_status("delete sandbox", r, 200);
}

/* ---- modes ---- */

static void write_samples(const char *out_dir, const char *name, const uint64_t *samples, long n)
{
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s.ns", out_dir, name);
        FILE *f = fopen(path, "w");
        if (!f)
                fail("open %s: %s", path, strerror(errno));
        for (long i = 0; i < n; i++)
                fprintf(f, "%llu\n", (unsigned long long)samples[i]);
        if (fclose(f) != 0)
                fail("write %s: %s", path, strerror(errno));
}

static void set_skip_path(const char *out_dir, const char *name)
{
        static char path[4096];
        snprintf(path, sizeof(path), "%s/%s.skip", out_dir, name);
        skip_path = path;
}

static uint64_t *samples_new(long n)
{
        uint64_t *s = calloc((size_t)n, sizeof(*s));
        if (!s)
                fail("out of memory");
        return s;
}

static int mode_health(int wait_seconds)
{
        struct connection c = { .fd = -1 };
        struct response r = { 0 };
        uint64_t deadline = now_ns() + (uint64_t)wait_seconds * 1000000000u;
        for (;;) {
                if (connection_open(&c) == 0) {
                        connection_close(&c);
                        request(&c, "GET", "/v1/health", NULL, &r);
                        if (r.status == 200) {
                                printf("%s\n", r.body.data);
                                return 0;
                        }
                        fail("health: HTTP %d: %.300s", r.status, r.body.data);
                }
                if (now_ns() > deadline)
                        fail("moatd did not answer on %s within %d s: %s", socket_path,
                             wait_seconds, strerror(errno));
                usleep(50 * 1000);
        }
}

static int mode_import(const char *dir, const char *name)
{
        struct connection c = { .fd = -1 };
        struct response r = { 0 };
        char body[8192];
        /* The bench builds the path itself; it holds no quote or backslash. */
        if (strpbrk(dir, "\"\\") || strpbrk(name, "\"\\"))
                fail("import: path and name must not contain quotes or backslashes");
        snprintf(body, sizeof(body), "{\"path\":\"%s\",\"name\":\"%s\"}", dir, name);
        request(&c, "POST", "/v1/images/import", body, &r);
        if (r.status == 409) {
                printf("image %s already imported\n", name);
                return 0;
        }
        expect_status("import image", &r, 201);
        printf("imported %s as %s\n", dir, name);
        return 0;
}

static int mode_lifecycle(const char *image, long n, const char *out_dir)
{
        set_skip_path(out_dir, "moat_total");
        struct connection c = { .fd = -1 };
        struct response r = { 0 };
        char id[128];
        uint64_t *total = samples_new(n), *create = samples_new(n), *run = samples_new(n),
                 *delete = samples_new(n);
        for (int i = 0; i < WARMUP; i++) {
                sandbox_create(&c, &r, image, id, sizeof(id));
                sandbox_run_true(&c, &r, id);
                sandbox_delete(&c, &r, id);
        }
        for (long i = 0; i < n; i++) {
                uint64_t t0 = now_ns();
                sandbox_create(&c, &r, image, id, sizeof(id));
                uint64_t t1 = now_ns();
                sandbox_run_true(&c, &r, id);
                uint64_t t2 = now_ns();
                sandbox_delete(&c, &r, id);
                uint64_t t3 = now_ns();
                create[i] = t1 - t0;
                run[i] = t2 - t1;
                delete[i] = t3 - t2;
                total[i] = t3 - t0;
        }
        write_samples(out_dir, "moat_create", create, n);
        write_samples(out_dir, "moat_run", run, n);
        write_samples(out_dir, "moat_delete", delete, n);
        write_samples(out_dir, "moat_total", total, n);
        return 0;
}

static int mode_exec(const char *image, long n, const char *out_dir)
{
        set_skip_path(out_dir, "moat_exec_run");
        struct connection c = { .fd = -1 };
        struct response r = { 0 };
        char id[128];
        uint64_t *samples = samples_new(n);
        sandbox_create(&c, &r, image, id, sizeof(id));

        for (int i = 0; i < WARMUP; i++)
                sandbox_run_true(&c, &r, id);
        for (long i = 0; i < n; i++) {
                uint64_t start = now_ns();
                sandbox_run_true(&c, &r, id);
                samples[i] = now_ns() - start;
        }
        write_samples(out_dir, "moat_exec_run", samples, n);

        set_skip_path(out_dir, "moat_exec_stream");
        for (int i = 0; i < WARMUP; i++)
                sandbox_exec_stream_true(&c, &r, id);
        for (long i = 0; i < n; i++) {
                uint64_t start = now_ns();
                sandbox_exec_stream_true(&c, &r, id);
                samples[i] = now_ns() - start;
        }
        write_samples(out_dir, "moat_exec_stream", samples, n);
        sandbox_delete(&c, &r, id);
        return 0;
}

struct worker {
        pthread_t thread;
        const char *image;
        uint64_t deadline;
        long completed;
};

static void *throughput_worker(void *arg)
{
        struct worker *w = arg;
        struct connection c = { .fd = -1 };
        struct response r = { 0 };
        char id[128];
        while (now_ns() < w->deadline) {
                sandbox_create(&c, &r, w->image, id, sizeof(id));
                sandbox_run_true(&c, &r, id);
                sandbox_delete(&c, &r, id);
                w->completed++;
        }
        connection_close(&c);
        free(r.body.data);
        return NULL;
}

static int mode_throughput(const char *image, int connections, int seconds, const char *out_dir)
{
        set_skip_path(out_dir, "moat_throughput");
        struct worker workers[64];
        if (connections < 1 || connections > 64 || seconds < 1)
                fail("throughput: CONNECTIONS must be 1-64 and SECONDS at least 1");
        uint64_t start = now_ns();
        for (int i = 0; i < connections; i++) {
                workers[i] = (struct worker){ .image = image,
                                              .deadline = start + (uint64_t)seconds * 1000000000u };
                int e = pthread_create(&workers[i].thread, NULL, throughput_worker, &workers[i]);
                if (e)
                        fail("pthread_create: %s", strerror(e));
        }
        long completed = 0;
        for (int i = 0; i < connections; i++) {
                pthread_join(workers[i].thread, NULL);
                completed += workers[i].completed;
        }
        double elapsed = (double)(now_ns() - start) / 1e9;
        char path[4096];
        snprintf(path, sizeof(path), "%s/moat_throughput.txt", out_dir);
        FILE *f = fopen(path, "w");
        if (!f)
                fail("open %s: %s", path, strerror(errno));
        fprintf(f, "connections %d\nseconds %.3f\ncompleted %ld\nper_second %.1f\n", connections,
                elapsed, completed, (double)completed / elapsed);
        fclose(f);
        return 0;
}

static long positive(const char *s, const char *what)
{
        char *end;
        long v = strtol(s, &end, 10);
        if (*s == '\0' || *end != '\0' || v <= 0)
                fail("%s must be a positive integer, not '%s'", what, s);
        return v;
}

int main(int argc, char **argv)
{
        socket_path = getenv("MOAT_SOCKET");
        if (!socket_path)
                socket_path = "/run/moat/moatd.sock";
        int opt;
        while ((opt = getopt(argc, argv, "+S:")) != -1) {
                if (opt != 'S')
                        goto usage;
                socket_path = optarg;
        }
        argc -= optind;
        argv += optind;
        if (argc < 1)
                goto usage;
        const char *mode = argv[0];
        if (strcmp(mode, "health") == 0 && argc <= 2)
                return mode_health(argc == 2 ? (int)positive(argv[1], "WAIT_SECONDS") : 1);
        if (strcmp(mode, "import") == 0 && argc == 3)
                return mode_import(argv[1], argv[2]);
        if (strcmp(mode, "lifecycle") == 0 && argc == 4)
                return mode_lifecycle(argv[1], positive(argv[2], "N"), argv[3]);
        if (strcmp(mode, "exec") == 0 && argc == 4)
                return mode_exec(argv[1], positive(argv[2], "N"), argv[3]);
        if (strcmp(mode, "throughput") == 0 && argc == 5)
                return mode_throughput(argv[1], (int)positive(argv[2], "CONNECTIONS"),
                                       (int)positive(argv[3], "SECONDS"), argv[4]);
usage:
        fprintf(stderr,
                "usage: moat_bench [-S SOCKET] health [WAIT_SECONDS]\n"
                "       moat_bench [-S SOCKET] import DIR NAME\n"
                "       moat_bench [-S SOCKET] lifecycle IMAGE N OUT_DIR\n"
                "       moat_bench [-S SOCKET] exec IMAGE N OUT_DIR\n"
                "       moat_bench [-S SOCKET] throughput IMAGE CONNECTIONS SECONDS OUT_DIR\n");
        return 2;
}
