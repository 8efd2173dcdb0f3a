#include "passwd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A passwd database larger than this is not a real one; stop reading so a
 * hostile file costs the child bounded time. */
#define PASSWD_FILE_MAX (64u * 1024 * 1024)
#define LINE_MAX_BYTES 4096

struct line_reader {
        int fd;
        size_t start, end, total;
        bool eof, skipping;
        char buf[LINE_MAX_BYTES + 1];
};

static int line_reader_open(struct line_reader *r, const char *path)
{
        struct stat st;

        r->start = r->end = r->total = 0;
        r->eof = r->skipping = false;
        /* O_NONBLOCK: opening a FIFO must not block the child forever. */
        r->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (r->fd < 0)
                return -errno;
        if (fstat(r->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                close(r->fd);
                r->fd = -1;
                return -ENOENT;
        }
        return 0;
}

static void line_reader_close(struct line_reader *r)
{
        if (r->fd >= 0)
                close(r->fd);
        r->fd = -1;
}

/* The next line without its newline, NUL-terminated, or NULL at the end. A line
 * longer than LINE_MAX_BYTES is skipped whole. */
static char *line_reader_next(struct line_reader *r)
{
        for (;;) {
                char *nl = memchr(r->buf + r->start, '\n', r->end - r->start);
                ssize_t n;

                if (nl) {
                        char *line = r->buf + r->start;

                        *nl = '\0';
                        r->start = (size_t)(nl - r->buf) + 1;
                        if (r->skipping) {
                                r->skipping = false;
                                continue;
                        }
                        return line;
                }
                if (r->eof) {
                        if (r->start < r->end && !r->skipping) {
                                char *line = r->buf + r->start;

                                r->buf[r->end] = '\0';
                                r->start = r->end;
                                return line;
                        }
                        return NULL;
                }
                if (r->start > 0) {
                        memmove(r->buf, r->buf + r->start, r->end - r->start);
                        r->end -= r->start;
                        r->start = 0;
                }
                if (r->end == LINE_MAX_BYTES) {
                        r->skipping = true;
                        r->end = 0;
                }
                n = read(r->fd, r->buf + r->end, LINE_MAX_BYTES - r->end);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0 || r->total > PASSWD_FILE_MAX) {
                        r->eof = true;
                        continue;
                }
                r->end += (size_t)n;
                r->total += (size_t)n;
        }
}

/* Split line at ':' into exactly `count` fields; -1 otherwise. */
static int split_fields(char *line, char **fields, size_t count)
{
        size_t i = 0;

        fields[i++] = line;
        for (char *p = line; *p; p++) {
                if (*p != ':')
                        continue;
                if (i == count)
                        return -1;
                *p = '\0';
                fields[i++] = p + 1;
        }
        return i == count ? 0 : -1;
}

int moat_passwd_parse_id(const char *s, unsigned int *ret_id)
{
        uint64_t v = 0;

        if (!s || !*s || strlen(s) > 10)
                return -EINVAL;
        for (const char *p = s; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                v = v * 10 + (uint64_t)(*p - '0');
        }
        if (v >= UINT32_MAX)
                return -EINVAL;
        *ret_id = (unsigned int)v;
        return 0;
}

static void copy_string(char *dst, size_t cap, const char *src)
{
        size_t n = strnlen(src, cap - 1);

        memcpy(dst, src, n);
        dst[n] = '\0';
}

/* Find the passwd entry by name (name != NULL) or by uid. 0 if found. */
static int passwd_lookup(const char *path, const char *name, uid_t uid, struct moat_passwd_user *u)
{
        struct line_reader r;
        char *line, *f[7];
        int found = -ENOENT;

        if (line_reader_open(&r, path) < 0)
                return -ENOENT;
        while ((line = line_reader_next(&r))) {
                unsigned int id, gid;

                if (line[0] == '#' || line[0] == '+' || line[0] == '-')
                        continue; /* comments and NIS compat entries */
                if (split_fields(line, f, 7) < 0 || !f[0][0])
                        continue;
                if (moat_passwd_parse_id(f[2], &id) < 0 || moat_passwd_parse_id(f[3], &gid) < 0)
                        continue;
                if (name ? strcmp(f[0], name) != 0 : id != uid)
                        continue;
                if (strlen(f[0]) >= sizeof(u->name) || strlen(f[5]) >= sizeof(u->home))
                        continue;
                u->uid = id;
                u->gid = gid;
                u->known = true;
                copy_string(u->name, sizeof(u->name), f[0]);
                copy_string(u->home, sizeof(u->home), f[5][0] ? f[5] : "/");
                found = 0;
                break;
        }
        line_reader_close(&r);
        return found;
}

int moat_passwd_resolve_user(const char *passwd_path, const char *spec, struct moat_passwd_user *ret_user)
{
        char user_part[MOAT_PASSWD_SPEC_MAX];
        struct moat_passwd_user u = { .known = false };
        const char *group_part = NULL;
        unsigned int id, gid = 0;
        char *colon;

        if (!spec || strlen(spec) >= sizeof(user_part))
                return -EINVAL;
        copy_string(user_part, sizeof(user_part), spec);
        colon = strchr(user_part, ':');
        if (colon) {
                *colon = '\0';
                group_part = colon + 1;
                if (moat_passwd_parse_id(group_part, &gid) < 0)
                        return -EINVAL;
                if (!user_part[0])
                        return -EINVAL;
        }

        if (!user_part[0] || strcmp(user_part, "root") == 0) {
                if (passwd_lookup(passwd_path, NULL, 0, &u) < 0 || u.uid != 0) {
                        /* Root works without a passwd file: a bare image has none. */
                        u = (struct moat_passwd_user){ .uid = 0, .gid = 0, .known = true };
                        copy_string(u.name, sizeof(u.name), "root");
                        copy_string(u.home, sizeof(u.home), "/root");
                }
        } else if (moat_passwd_parse_id(user_part, &id) == 0) {
                if (passwd_lookup(passwd_path, NULL, id, &u) < 0) {
                        /* gid = uid, not 0 (Docker's choice): an unprivileged uid
                         * must not get group-root access to the image's files. */
                        u = (struct moat_passwd_user){ .uid = id, .gid = id, .known = false };
                        copy_string(u.home, sizeof(u.home), "/");
                }
        } else {
                if (user_part[0] >= '0' && user_part[0] <= '9')
                        return -EINVAL; /* "12x": neither a number nor a sane name */
                if (passwd_lookup(passwd_path, user_part, 0, &u) < 0)
                        return -ENOENT;
        }
        if (group_part)
                u.gid = gid;
        *ret_user = u;
        return 0;
}

static bool list_has_member(char *members, const char *name)
{
        char *save = NULL;

        for (char *m = strtok_r(members, ",", &save); m; m = strtok_r(NULL, ",", &save))
                if (strcmp(m, name) == 0)
                        return true;
        return false;
}

size_t moat_passwd_user_groups(const char *group_path, const char *name, gid_t primary,
                               gid_t ret_groups[MOAT_PASSWD_GROUPS_MAX])
{
        struct line_reader r;
        size_t count = 0;
        char *line, *f[4];

        ret_groups[count++] = primary;
        if (!name || !name[0] || line_reader_open(&r, group_path) < 0)
                return count;
        while (count < MOAT_PASSWD_GROUPS_MAX && (line = line_reader_next(&r))) {
                unsigned int gid;
                bool seen = false;

                if (line[0] == '#' || line[0] == '+' || line[0] == '-')
                        continue;
                if (split_fields(line, f, 4) < 0 || moat_passwd_parse_id(f[2], &gid) < 0)
                        continue;
                if (!list_has_member(f[3], name))
                        continue;
                for (size_t i = 0; i < count; i++)
                        seen = seen || ret_groups[i] == gid;
                if (!seen)
                        ret_groups[count++] = gid;
        }
        line_reader_close(&r);
        return count;
}
