/* OCI layer extraction and image loading (src/daemon/oci_layer.c,
 * oci_image.c) against real files, the real kernel and real libarchive.
 * Hostile tars are built here with libarchive's writer. Every test works in
 * its own temp dir, which holds the target directory and an "outside"
 * sentinel directory: after each hostile layer the sentinel's listing must be
 * unchanged. Needs root (chown, mknod of whiteouts). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "oci_image.h"
#include "oci_layer.h"
#include "sha256.h"

/* ---- fixture ------------------------------------------------------------- */

struct fixture {
        char root[64];        /* the temp dir */
        char target[128];     /* <root>/target: the layer directory */
        char outside[128];    /* <root>/outside: must never change */
        char scratch[128];    /* <root>/scratch: tars and image layouts */
        char *outside_before; /* listing of outside at setup */
};

static void path_join(char *out, size_t size, const char *a, const char *b)
{
        assert_true(snprintf(out, size, "%s/%s", a, b) < (int)size);
}

static void write_file(const char *path, const void *data, size_t size)
{
        FILE *f = fopen(path, "w");

        assert_non_null(f);
        assert_int_equal(fwrite(data, 1, size, f), size);
        assert_int_equal(fclose(f), 0);
}

static char *read_file(const char *path, size_t *size)
{
        FILE *f = fopen(path, "r");
        char *data = malloc(1 << 20);
        size_t n;

        assert_non_null(f);
        n = fread(data, 1, 1 << 20, f);
        fclose(f);
        data[n] = '\0';
        if (size)
                *size = n;
        return data;
}

/* Recursive listing "path mode uid nlink size\n..." of a tree. */
static void list_tree_into(const char *dir, const char *prefix, char **out, size_t *length)
{
        DIR *d = opendir(dir);
        struct dirent *entry;

        assert_non_null(d);
        while ((entry = readdir(d))) {
                char path[512], line[700];
                struct stat st;

                if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, ".."))
                        continue;
                path_join(path, sizeof(path), dir, entry->d_name);
                assert_int_equal(lstat(path, &st), 0);
                snprintf(line, sizeof(line), "%s/%s %o %u %lu %lld %lld.%09ld\n", prefix, entry->d_name, st.st_mode, st.st_uid,
                         (unsigned long)st.st_nlink, (long long)st.st_size, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
                *out = realloc(*out, *length + strlen(line) + 1);
                strcpy(*out + *length, line);
                *length += strlen(line);
                if (S_ISDIR(st.st_mode)) {
                        char sub[512];

                        snprintf(sub, sizeof(sub), "%s/%s", prefix, entry->d_name);
                        list_tree_into(path, sub, out, length);
                }
        }
        closedir(d);
}

static char *list_tree(const char *dir)
{
        char *out = calloc(1, 1);
        size_t length = 0;

        list_tree_into(dir, "", &out, &length);
        return out;
}

static int setup(void **state)
{
        struct fixture *f = calloc(1, sizeof(*f));
        char path[256];

        snprintf(f->root, sizeof(f->root), "/tmp/moat-test-oci-XXXXXX");
        assert_non_null(mkdtemp(f->root));
        path_join(f->target, sizeof(f->target), f->root, "target");
        path_join(f->outside, sizeof(f->outside), f->root, "outside");
        path_join(f->scratch, sizeof(f->scratch), f->root, "scratch");
        assert_int_equal(mkdir(f->target, 0755), 0);
        assert_int_equal(mkdir(f->outside, 0755), 0);
        assert_int_equal(mkdir(f->scratch, 0755), 0);
        path_join(path, sizeof(path), f->outside, "file");
        write_file(path, "sentinel\n", 9);
        path_join(path, sizeof(path), f->outside, "passwd");
        write_file(path, "root:x:0:0\n", 11);
        f->outside_before = list_tree(f->outside);
        *state = f;
        return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        return remove(path);
}

static int teardown(void **state)
{
        struct fixture *f = *state;
        char *after = list_tree(f->outside);
        int removed = nftw(f->root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        bool unchanged = strcmp(after, f->outside_before) == 0;

        if (!unchanged)
                print_error("outside changed:\n%s--- was:\n%s", after, f->outside_before);
        free(after);
        free(f->outside_before);
        free(f);
        /* Whatever the test did, nothing outside the target may change. */
        assert_true(unchanged);
        assert_int_equal(removed, 0);
        return 0;
}

/* ---- tar building -------------------------------------------------------- */

struct tar_entry {
        const char *path;
        mode_t type; /* AE_IFREG... ; 0 with hardlink set */
        mode_t perm;
        unsigned uid, gid;
        const char *data;     /* regular file contents */
        const char *symlink;  /* symlink target */
        const char *hardlink; /* hardlink target */
        const char *xattr_name, *xattr_value;
        unsigned device_major, device_minor;
};

#define FILE_ENTRY(p, d) {.path = (p), .type = AE_IFREG, .perm = 0644, .data = (d)}
#define DIR_ENTRY(p) {.path = (p), .type = AE_IFDIR, .perm = 0755}
#define SYMLINK_ENTRY(p, t) {.path = (p), .type = AE_IFLNK, .perm = 0777, .symlink = (t)}
#define HARDLINK_ENTRY(p, t) {.path = (p), .type = AE_IFREG, .perm = 0644, .hardlink = (t)}

/* compression: "none", "gzip" or "zstd". */
static void write_tar(const char *file, const char *compression, const struct tar_entry *entries, size_t count)
{
        struct archive *a = archive_write_new();

        assert_int_equal(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
        if (!strcmp(compression, "gzip"))
                assert_int_equal(archive_write_add_filter_gzip(a), ARCHIVE_OK);
        else if (!strcmp(compression, "zstd"))
                assert_int_equal(archive_write_add_filter_zstd(a), ARCHIVE_OK);
        assert_int_equal(archive_write_open_filename(a, file), ARCHIVE_OK);
        for (size_t i = 0; i < count; i++) {
                const struct tar_entry *e = &entries[i];
                struct archive_entry *entry = archive_entry_new();
                size_t size = e->data ? strlen(e->data) : 0;

                archive_entry_set_pathname(entry, e->path);
                archive_entry_set_filetype(entry, e->type);
                archive_entry_set_perm(entry, e->perm);
                archive_entry_set_uid(entry, e->uid);
                archive_entry_set_gid(entry, e->gid);
                archive_entry_set_mtime(entry, 1600000000 + (time_t)i, 0);
                if (e->symlink)
                        archive_entry_set_symlink(entry, e->symlink);
                if (e->hardlink)
                        archive_entry_set_hardlink(entry, e->hardlink);
                if (e->xattr_name)
                        archive_entry_xattr_add_entry(entry, e->xattr_name, e->xattr_value,
                                                      strlen(e->xattr_value));
                if (e->type == AE_IFCHR || e->type == AE_IFBLK)
                        archive_entry_set_rdev(entry, makedev(e->device_major, e->device_minor));
                archive_entry_set_size(entry, e->type == AE_IFREG && !e->hardlink ? (la_int64_t)size : 0);
                assert_int_equal(archive_write_header(a, entry), ARCHIVE_OK);
                if (size)
                        assert_int_equal(archive_write_data(a, e->data, size), (la_ssize_t)size);
                archive_entry_free(entry);
        }
        assert_int_equal(archive_write_close(a), ARCHIVE_OK);
        archive_write_free(a);
}

/* sha256sum of a file, or of the output of `decompress < file`. Computed
 * with coreutils, independently of the code under test. */
static void shell_sha256(const char *file, const char *decompress, char hex[65])
{
        char command[600];
        FILE *p;

        if (decompress)
                snprintf(command, sizeof(command), "%s < '%s' | sha256sum", decompress, file);
        else
                snprintf(command, sizeof(command), "sha256sum < '%s'", file);
        p = popen(command, "r");
        assert_non_null(p);
        assert_non_null(fgets(hex, 65, p));
        assert_int_equal(pclose(p), 0);
        assert_int_equal(strlen(hex), 64);
}

/* Apply a layer file into the fixture's target; returns the result code. */
static int apply_file(struct fixture *f, const char *file, struct oci_layer_result *result, struct moat_error **err)
{
        int fd = open(file, O_RDONLY | O_CLOEXEC);
        int r;

        assert_true(fd >= 0);
        r = oci_layer_apply(fd, f->target, result, err);
        close(fd);
        return r;
}

static void assert_layer_refused(struct fixture *f, const struct tar_entry *entries, size_t count,
                                 const char *expected_code)
{
        char file[256];
        struct moat_error *err = NULL;

        path_join(file, sizeof(file), f->scratch, "hostile.tar");
        write_tar(file, "none", entries, count);
        assert_int_equal(apply_file(f, file, NULL, &err), -1);
        assert_non_null(err);
        print_message("refused as expected: %s\n", err->message);
        assert_string_equal(err->code, expected_code);
        moat_error_free(err);
}

static void target_path(struct fixture *f, const char *relative, char *out, size_t size)
{
        path_join(out, size, f->target, relative);
}

/* ---- layer tests --------------------------------------------------------- */

static void test_layer_normal_tree(void **state)
{
        struct fixture *f = *state;
        const struct tar_entry entries[] = {
                DIR_ENTRY("./"),
                DIR_ENTRY("etc"),
                FILE_ENTRY("etc/hosts", "127.0.0.1 localhost\n"),
                {.path = "home/user/notes", .type = AE_IFREG, .perm = 0600, .uid = 1000, .gid = 1001, .data = "hi"},
                {.path = "usr/bin/su", .type = AE_IFREG, .perm = 04755, .data = "ELF"},
                {.path = "usr/bin/ping", .type = AE_IFREG, .perm = 0755, .data = "ELF2",
                 .xattr_name = "user.comment", .xattr_value = "kept"},
                SYMLINK_ENTRY("lib", "usr/lib"),
                SYMLINK_ENTRY("abs", "/etc/hostname"), /* stored verbatim, never followed */
                HARDLINK_ENTRY("etc/hosts.link", "etc/hosts"),
                {.path = "run/fifo", .type = AE_IFIFO, .perm = 0620},
                {.path = "opt/", .type = AE_IFDIR, .perm = 0700, .uid = 5, .gid = 6},
        };
        struct oci_layer_result result;
        struct moat_error *err = NULL;
        char file[256], path[256], link[64], value[16], hex[65];
        struct stat st, st2;
        ssize_t n;
        size_t size;
        char *data;

        path_join(file, sizeof(file), f->scratch, "layer.tar.gz");
        write_tar(file, "gzip", entries, MOAT_ARRAY_SIZE(entries));
        assert_int_equal(apply_file(f, file, &result, &err), 0);
        assert_null(err);
        assert_int_equal(result.entries, (uint64_t)MOAT_ARRAY_SIZE(entries));
        assert_int_equal(result.size, strlen("127.0.0.1 localhost\n") + 2 + 3 + 4);
        shell_sha256(file, NULL, hex);
        assert_string_equal(result.digest, hex);
        shell_sha256(file, "gzip -dc", hex);
        assert_string_equal(result.diff_id, hex);

        target_path(f, "etc/hosts", path, sizeof(path));
        data = read_file(path, &size);
        assert_string_equal(data, "127.0.0.1 localhost\n");
        free(data);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0644);
        assert_int_equal(st.st_uid, 0);
        assert_int_equal(st.st_nlink, 2);
        assert_int_equal(st.st_mtime, 1600000002);
        target_path(f, "etc/hosts.link", path, sizeof(path));
        assert_int_equal(stat(path, &st2), 0);
        assert_int_equal(st.st_ino, st2.st_ino);

        target_path(f, "home/user/notes", path, sizeof(path));
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_uid, 1000);
        assert_int_equal(st.st_gid, 1001);
        assert_int_equal(st.st_mode & 07777, 0600);
        /* The implicit parent directories. */
        target_path(f, "home/user", path, sizeof(path));
        assert_int_equal(stat(path, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_int_equal(st.st_mode & 07777, 0755);

        target_path(f, "usr/bin/su", path, sizeof(path));
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 07777, 04755);

        target_path(f, "usr/bin/ping", path, sizeof(path));
        n = getxattr(path, "user.comment", value, sizeof(value));
        assert_int_equal(n, 4);
        assert_memory_equal(value, "kept", 4);

        target_path(f, "lib", path, sizeof(path));
        n = readlink(path, link, sizeof(link));
        assert_int_equal(n, 7);
        assert_memory_equal(link, "usr/lib", 7);
        target_path(f, "abs", path, sizeof(path));
        n = readlink(path, link, sizeof(link));
        assert_int_equal(n, 13);

        target_path(f, "run/fifo", path, sizeof(path));
        assert_int_equal(lstat(path, &st), 0);
        assert_true(S_ISFIFO(st.st_mode));
        assert_int_equal(st.st_mode & 07777, 0620);

        /* Directory metadata, mtime restored after its children. */
        target_path(f, "opt", path, sizeof(path));
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0700);
        assert_int_equal(st.st_uid, 5);
        target_path(f, "etc", path, sizeof(path));
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mtime, 1600000001);
}

static void test_layer_zstd_and_plain_digests(void **state)
{
        struct fixture *f = *state;
        const struct tar_entry entries[] = {FILE_ENTRY("a", "alpha"), FILE_ENTRY("b/c", "charlie")};
        const char *kinds[][2] = {{"zstd", "zstd -dc"}, {"none", NULL}};
        char file[256], hex[65], plain_hex[65];

        for (size_t i = 0; i < MOAT_ARRAY_SIZE(kinds); i++) {
                struct oci_layer_result result;
                struct moat_error *err = NULL;
                char sub[256];

                snprintf(sub, sizeof(sub), "%s/%zu", f->target, i);
                assert_int_equal(mkdir(sub, 0755), 0);
                path_join(file, sizeof(file), f->scratch, kinds[i][0]);
                write_tar(file, kinds[i][0], entries, MOAT_ARRAY_SIZE(entries));
                int fd = open(file, O_RDONLY);
                assert_int_equal(oci_layer_apply(fd, sub, &result, &err), 0);
                close(fd);
                shell_sha256(file, NULL, hex);
                assert_string_equal(result.digest, hex);
                shell_sha256(file, kinds[i][1] ? kinds[i][1] : "cat", plain_hex);
                assert_string_equal(result.diff_id, plain_hex);
                assert_int_equal(result.size, 12);
        }
        /* Uncompressed: digest and diff_id are the same bytes. */
        shell_sha256(file, NULL, hex);
        assert_string_equal(hex, plain_hex);
}

static void test_layer_whiteouts(void **state)
{
        struct fixture *f = *state;
        const struct tar_entry entries[] = {
                FILE_ENTRY(".wh.gone", ""),
                DIR_ENTRY("dir"),
                FILE_ENTRY("dir/.wh..wh..opq", ""),
                FILE_ENTRY("dir/keep", "k"),
                FILE_ENTRY("dir/.wh..wh.plnk", ""), /* aufs bookkeeping: ignored */
                FILE_ENTRY("present", "p"),
                FILE_ENTRY(".wh.present", ""), /* same-layer file wins */
        };
        struct moat_error *err = NULL;
        char file[256], path[256], value[8];
        struct stat st;

        path_join(file, sizeof(file), f->scratch, "whiteout.tar");
        write_tar(file, "none", entries, MOAT_ARRAY_SIZE(entries));
        assert_int_equal(apply_file(f, file, NULL, &err), 0);
        target_path(f, "gone", path, sizeof(path));
        assert_int_equal(lstat(path, &st), 0);
        assert_true(S_ISCHR(st.st_mode));
        assert_int_equal(st.st_rdev, makedev(0, 0));
        target_path(f, ".wh.gone", path, sizeof(path));
        assert_int_equal(lstat(path, &st), -1);
        target_path(f, "dir", path, sizeof(path));
        assert_int_equal(getxattr(path, "user.overlay.opaque", value, sizeof(value)), 1);
        assert_int_equal(value[0], 'y');
        target_path(f, "dir/.wh..wh..opq", path, sizeof(path));
        assert_int_equal(lstat(path, &st), -1);
        target_path(f, "dir/.wh..wh.plnk", path, sizeof(path));
        assert_int_equal(lstat(path, &st), -1);
        target_path(f, "present", path, sizeof(path));
        assert_int_equal(lstat(path, &st), 0);
        assert_true(S_ISREG(st.st_mode));
}

static void test_layer_xattr_filter(void **state)
{
        struct fixture *f = *state;
        const struct tar_entry entries[] = {
                {.path = "forged", .type = AE_IFDIR, .perm = 0755, .xattr_name = "user.overlay.opaque",
                 .xattr_value = "y"},
                {.path = "redirect", .type = AE_IFREG, .perm = 0644, .xattr_name = "user.overlay.redirect",
                 .xattr_value = "/etc"},
                {.path = "trusted", .type = AE_IFREG, .perm = 0644, .xattr_name = "trusted.overlay.opaque",
                 .xattr_value = "y"},
                {.path = "label", .type = AE_IFREG, .perm = 0644, .xattr_name = "security.selinux",
                 .xattr_value = "system_u:object_r:shadow_t:s0"},
        };
        struct moat_error *err = NULL;
        char file[256], path[256], names[256];

        path_join(file, sizeof(file), f->scratch, "xattr.tar");
        write_tar(file, "none", entries, MOAT_ARRAY_SIZE(entries));
        assert_int_equal(apply_file(f, file, NULL, &err), 0);
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(entries); i++) {
                target_path(f, entries[i].path, path, sizeof(path));
                /* No xattr of the tar survived (the list may hold none). */
                ssize_t n = llistxattr(path, names, sizeof(names));
                assert_true(n >= 0);
                for (ssize_t at = 0; at < n; at += (ssize_t)strlen(names + at) + 1)
                        assert_string_not_equal(names + at, entries[i].xattr_name);
        }
}

static void test_layer_path_traversal(void **state)
{
        struct fixture *f = *state;
        char absolute[256];

        path_join(absolute, sizeof(absolute), f->outside, "x");
        {
                const struct tar_entry entries[] = {FILE_ENTRY("../x", "evil")};
                assert_layer_refused(f, entries, 1, "bad_layer");
        }
        {
                const struct tar_entry entries[] = {FILE_ENTRY(absolute, "evil")};
                assert_layer_refused(f, entries, 1, "bad_layer");
        }
        {
                const struct tar_entry entries[] = {DIR_ENTRY("a"), FILE_ENTRY("a/../../x", "evil")};
                assert_layer_refused(f, entries, 2, "bad_layer");
        }
        {
                const struct tar_entry entries[] = {FILE_ENTRY("ok/./..", "evil")};
                assert_layer_refused(f, entries, 1, "bad_layer");
        }
        {
                /* A whiteout cannot name ".." either. */
                const struct tar_entry entries[] = {FILE_ENTRY("d/.wh...", "")};
                assert_layer_refused(f, entries, 1, "bad_layer");
        }
        /* Target/../x must not exist either (next to target, inside root). */
        char escaped[256];
        path_join(escaped, sizeof(escaped), f->root, "x");
        assert_int_equal(access(escaped, F_OK), -1);
}

static void test_layer_symlink_escape(void **state)
{
        struct fixture *f = *state;
        {
                /* "a -> /etc" then "a/passwd", with the sentinel as /etc. */
                const struct tar_entry entries[] = {SYMLINK_ENTRY("a", f->outside), FILE_ENTRY("a/passwd", "owned")};
                assert_layer_refused(f, entries, 2, "bad_layer");
        }
        {
                const struct tar_entry entries[] = {SYMLINK_ENTRY("b", "../outside"), FILE_ENTRY("b/f", "owned")};
                assert_layer_refused(f, entries, 2, "bad_layer");
        }
        {
                /* Deeper: a directory entry through the symlink, and a
                 * symlink replacing a directory already walked. */
                const struct tar_entry entries[] = {DIR_ENTRY("c"), SYMLINK_ENTRY("c/d", "../../outside"),
                                                    DIR_ENTRY("c/d/e")};
                assert_layer_refused(f, entries, 3, "bad_layer");
        }
        {
                /* A symlink then a file of the same name replaces the symlink
                 * (O_EXCL after unlink), it does not write through it. */
                const struct tar_entry entries[] = {SYMLINK_ENTRY("file", "../outside/file"),
                                                    FILE_ENTRY("file", "replaced")};
                char file[256], path[256];
                struct moat_error *err = NULL;
                struct stat st;

                path_join(file, sizeof(file), f->scratch, "replace.tar");
                write_tar(file, "none", entries, 2);
                assert_int_equal(apply_file(f, file, NULL, &err), 0);
                target_path(f, "file", path, sizeof(path));
                assert_int_equal(lstat(path, &st), 0);
                assert_true(S_ISREG(st.st_mode));
        }
}

static void test_layer_hardlink_escape(void **state)
{
        struct fixture *f = *state;
        char absolute[256];

        path_join(absolute, sizeof(absolute), f->outside, "file");
        {
                const struct tar_entry entries[] = {HARDLINK_ENTRY("l", "../outside/file")};
                assert_layer_refused(f, entries, 1, "bad_layer");
        }
        {
                const struct tar_entry entries[] = {HARDLINK_ENTRY("l", absolute)};
                assert_layer_refused(f, entries, 1, "bad_layer");
        }
        {
                const struct tar_entry entries[] = {HARDLINK_ENTRY("l", "/etc/hostname")};
                assert_layer_refused(f, entries, 1, "bad_layer");
        }
        {
                /* Through a symlink of the layer. */
                const struct tar_entry entries[] = {SYMLINK_ENTRY("s", f->outside), HARDLINK_ENTRY("l", "s/file")};
                assert_layer_refused(f, entries, 2, "bad_layer");
        }
        {
                /* To a symlink of the layer: links the symlink itself. */
                const struct tar_entry entries[] = {SYMLINK_ENTRY("s", absolute), HARDLINK_ENTRY("l", "s")};
                char file[256], path[256];
                struct moat_error *err = NULL;
                struct stat st;

                path_join(file, sizeof(file), f->scratch, "hl.tar");
                write_tar(file, "none", entries, 2);
                assert_int_equal(apply_file(f, file, NULL, &err), 0);
                target_path(f, "l", path, sizeof(path));
                assert_int_equal(lstat(path, &st), 0);
                assert_true(S_ISLNK(st.st_mode));
        }
        {
                const struct tar_entry entries[] = {HARDLINK_ENTRY("l2", "missing")};
                assert_layer_refused(f, entries, 1, "bad_layer");
        }
}

static void test_layer_devices_refused(void **state)
{
        struct fixture *f = *state;
        {
                const struct tar_entry entries[] = {
                        {.path = "dev/null", .type = AE_IFCHR, .perm = 0666, .device_major = 1, .device_minor = 3}};
                assert_layer_refused(f, entries, 1, "bad_layer");
        }
        {
                /* Even 0:0 under its own name: only ".wh." makes whiteouts. */
                const struct tar_entry entries[] = {{.path = "x", .type = AE_IFCHR, .perm = 0}};
                assert_layer_refused(f, entries, 1, "bad_layer");
        }
        {
                const struct tar_entry entries[] = {
                        {.path = "dev/sda", .type = AE_IFBLK, .perm = 0660, .device_major = 8, .device_minor = 0}};
                assert_layer_refused(f, entries, 1, "bad_layer");
        }
        char path[256];
        target_path(f, "dev/null", path, sizeof(path));
        assert_int_equal(access(path, F_OK), -1);
}

static void assert_stream_refused(struct fixture *f, const void *data, size_t size)
{
        char file[256];
        struct moat_error *err = NULL;

        path_join(file, sizeof(file), f->scratch, "broken");
        write_file(file, data, size);
        assert_int_equal(apply_file(f, file, NULL, &err), -1);
        assert_non_null(err);
        print_message("refused as expected: %s\n", err->message);
        assert_string_equal(err->code, "bad_layer");
        moat_error_free(err);
}

static void test_layer_broken_streams(void **state)
{
        struct fixture *f = *state;
        char big[20000], file[256];
        const struct tar_entry entries[] = {{.path = "big", .type = AE_IFREG, .perm = 0644, .data = big}};
        size_t size;
        char *data;

        memset(big, 'z', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        /* Empty file. */
        assert_stream_refused(f, "", 0);
        /* Not a tar. */
        assert_stream_refused(f, "hello, this is not a tar archive at all\n", 40);
        /* Truncated tar: cut in the middle of the file data. */
        path_join(file, sizeof(file), f->scratch, "big.tar");
        write_tar(file, "none", entries, 1);
        data = read_file(file, &size);
        assert_true(size > 12000);
        assert_stream_refused(f, data, 12000);
        free(data);
        /* Corrupt gzip: valid header, garbage deflate data. */
        path_join(file, sizeof(file), f->scratch, "big.tar.gz");
        write_tar(file, "gzip", entries, 1);
        data = read_file(file, &size);
        for (size_t i = 20; i < size - 8; i += 7)
                data[i] ^= 0x5a;
        assert_stream_refused(f, data, size);
        /* Truncated gzip. */
        assert_stream_refused(f, data, 15);
        free(data);
}

static void test_layer_size_limit(void **state)
{
        struct fixture *f = *state;
        static char big[100001];
        const struct tar_entry entries[] = {{.path = "bomb", .type = AE_IFREG, .perm = 0644, .data = big}};
        struct oci_layer_result result;
        struct moat_error *err = NULL;
        char file[256];
        int fd;

        memset(big, 'b', sizeof(big) - 1);
        path_join(file, sizeof(file), f->scratch, "bomb.tar.gz");
        write_tar(file, "gzip", entries, 1);
        fd = open(file, O_RDONLY);
        assert_int_equal(oci_layer_apply_limited(fd, f->target, 50000, &result, &err), -1);
        close(fd);
        assert_string_equal(err->code, "limit_exceeded");
        moat_error_free(err);
        err = NULL;
        assert_int_equal(oci_archive_extract(file, f->target, 50000, &err), -1);
        assert_string_equal(err->code, "limit_exceeded");
        moat_error_free(err);
        err = NULL;
        /* Exactly at the limit is fine. */
        assert_int_equal(nftw(f->target, remove_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
        assert_int_equal(mkdir(f->target, 0755), 0);
        fd = open(file, O_RDONLY);
        assert_int_equal(oci_layer_apply_limited(fd, f->target, 100000, &result, &err), 0);
        close(fd);
        assert_int_equal(result.size, 100000);
}

/* ---- outer archive ------------------------------------------------------- */

static void test_archive_extract(void **state)
{
        struct fixture *f = *state;
        const struct tar_entry entries[] = {
                FILE_ENTRY("manifest.json", "[]"),
                {.path = "abc/layer.tar", .type = AE_IFREG, .perm = 06755, .uid = 1000, .data = "t",
                 .xattr_name = "user.x", .xattr_value = "1"},
                SYMLINK_ENTRY("def/layer.tar", "../abc/layer.tar"),
                FILE_ENTRY(".wh.kept", ""), /* no whiteout conversion here */
        };
        const struct tar_entry hostile[] = {SYMLINK_ENTRY("s", f->outside), FILE_ENTRY("s/file", "x")};
        const struct tar_entry fifo[] = {{.path = "p", .type = AE_IFIFO, .perm = 0644}};
        struct moat_error *err = NULL;
        char file[256], path[256], value[8];
        struct stat st;

        path_join(file, sizeof(file), f->scratch, "save.tar");
        write_tar(file, "none", entries, MOAT_ARRAY_SIZE(entries));
        assert_int_equal(oci_archive_extract(file, f->target, 0, &err), 0);
        target_path(f, "abc/layer.tar", path, sizeof(path));
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_uid, 0);
        assert_int_equal(st.st_mode & 07777, 0755);
        assert_int_equal(getxattr(path, "user.x", value, sizeof(value)), -1);
        target_path(f, ".wh.kept", path, sizeof(path));
        assert_int_equal(lstat(path, &st), 0);
        assert_true(S_ISREG(st.st_mode));

        write_tar(file, "none", hostile, MOAT_ARRAY_SIZE(hostile));
        assert_int_equal(oci_archive_extract(file, f->target, 0, &err), -1);
        assert_string_equal(err->code, "bad_layer");
        moat_error_free(err);
        err = NULL;
        write_tar(file, "none", fifo, 1);
        assert_int_equal(oci_archive_extract(file, f->target, 0, &err), -1);
        assert_string_equal(err->code, "bad_layer");
        moat_error_free(err);
}

/* ---- image layouts ------------------------------------------------------- */

struct layout {
        char dir[256];
        char layer_hex[2][65], diff_hex[2][65], config_hex[65], manifest_hex[65];
        size_t manifest_size;
};

/* Write data as a blob; returns its sha256 (via sha256sum). */
static void put_blob(struct layout *l, const void *data, size_t size, char hex[65])
{
        char tmp[512], path[512];

        snprintf(tmp, sizeof(tmp), "%s/blobs/sha256/tmp", l->dir);
        write_file(tmp, data, size);
        shell_sha256(tmp, NULL, hex);
        snprintf(path, sizeof(path), "%s/blobs/sha256/%s", l->dir, hex);
        assert_int_equal(rename(tmp, path), 0);
}

static void put_json_blob(struct layout *l, json_t *json, char hex[65], size_t *size)
{
        char *text = json_dumps(json, JSON_COMPACT);

        put_blob(l, text, strlen(text), hex);
        if (size)
                *size = strlen(text);
        free(text);
        json_decref(json);
}

static void put_json_file(const char *dir, const char *name, json_t *json)
{
        char path[512];
        char *text = json_dumps(json, JSON_COMPACT);

        snprintf(path, sizeof(path), "%s/%s", dir, name);
        write_file(path, text, strlen(text));
        free(text);
        json_decref(json);
}

static json_t *descriptor(const char *media_type, const char *hex, size_t size)
{
        return json_pack("{s:s, s:s+, s:I}", "mediaType", media_type, "digest", "sha256:", hex, "size",
                         (json_int_t)size);
}

/* index.json -> manifest -> config + [layer0 (tar+gzip), layer1 (tar)].
 * layer_media_type overrides layer 1's media type when non-NULL. */
static void build_layout(struct fixture *f, struct layout *l, const char *layer_media_type)
{
        const struct tar_entry layer0[] = {FILE_ENTRY("etc/os-release", "ID=test\n"), DIR_ENTRY("tmp")};
        const struct tar_entry layer1[] = {FILE_ENTRY("etc/.wh.os-release", ""), FILE_ENTRY("app", "run")};
        const char *compression[] = {"gzip", "none"};
        const char *decompress[] = {"gzip -dc", "cat"};
        size_t config_size, layer_size[2];
        char path[512], tar[512];
        json_t *diff_ids = json_array(), *layers = json_array();

        snprintf(l->dir, sizeof(l->dir), "%s/layout", f->scratch);
        assert_int_equal(mkdir(l->dir, 0755), 0);
        snprintf(path, sizeof(path), "%s/blobs", l->dir);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof(path), "%s/blobs/sha256", l->dir);
        assert_int_equal(mkdir(path, 0755), 0);
        for (int i = 0; i < 2; i++) {
                size_t size;
                char *data;

                snprintf(tar, sizeof(tar), "%s/layer%d", f->scratch, i);
                write_tar(tar, compression[i], i == 0 ? layer0 : layer1, 2);
                shell_sha256(tar, decompress[i], l->diff_hex[i]);
                data = read_file(tar, &size);
                put_blob(l, data, size, l->layer_hex[i]);
                layer_size[i] = size;
                free(data);
                json_array_append_new(diff_ids, json_pack("s+", "sha256:", l->diff_hex[i]));
        }
        put_json_blob(l,
                      json_pack("{s:s, s:s, s:{s:[s,s], s:s, s:s, s:[s], s:[s,s]}, s:{s:s, s:o}}", "os", "linux",
                                "architecture", "amd64", "config", "Env", "PATH=/usr/bin", "LANG=C", "WorkingDir",
                                "/srv", "User", "1000:1000", "Entrypoint", "/app", "Cmd", "--port", "80", "rootfs",
                                "type", "layers", "diff_ids", diff_ids),
                      l->config_hex, &config_size);
        json_array_append_new(layers, descriptor("application/vnd.oci.image.layer.v1.tar+gzip", l->layer_hex[0],
                                                 layer_size[0]));
        json_array_append_new(layers, descriptor(layer_media_type ?: "application/vnd.oci.image.layer.v1.tar",
                                                 l->layer_hex[1], layer_size[1]));
        put_json_blob(l,
                      json_pack("{s:i, s:s, s:o, s:o}", "schemaVersion", 2, "mediaType",
                                "application/vnd.oci.image.manifest.v1+json", "config",
                                descriptor("application/vnd.oci.image.config.v1+json", l->config_hex, config_size),
                                "layers", layers),
                      l->manifest_hex, &l->manifest_size);
        put_json_file(l->dir, "oci-layout", json_pack("{s:s}", "imageLayoutVersion", "1.0.0"));
        json_t *manifest_descriptor =
                descriptor("application/vnd.oci.image.manifest.v1+json", l->manifest_hex, l->manifest_size);
        json_object_set_new(manifest_descriptor, "annotations",
                            json_pack("{s:s}", "org.opencontainers.image.ref.name", "v1"));
        put_json_file(l->dir, "index.json",
                      json_pack("{s:i, s:[o]}", "schemaVersion", 2, "manifests", manifest_descriptor));
}

static void assert_load_fails(const char *dir, const char *tag, const char *code)
{
        struct oci_image *image = NULL;
        struct moat_error *err = NULL;

        assert_int_equal(oci_image_load(dir, tag, &image, &err), -1);
        assert_null(image);
        assert_non_null(err);
        print_message("refused as expected: %s\n", err->message);
        assert_string_equal(err->code, code);
        moat_error_free(err);
}

static void test_image_load_layout(void **state)
{
        struct fixture *f = *state;
        struct oci_image *image = NULL;
        struct moat_error *err = NULL;
        struct layout l;
        char path[512];
        struct stat st;

        build_layout(f, &l, NULL);
        assert_int_equal(oci_image_load(l.dir, NULL, &image, &err), 0);
        assert_int_equal(image->layer_count, 2);
        for (size_t i = 0; i < 2; i++) {
                struct oci_layer_result result;
                char digest[80], diff_id[80], dir[512];
                int fd;

                snprintf(digest, sizeof(digest), "sha256:%s", l.layer_hex[i]);
                snprintf(diff_id, sizeof(diff_id), "sha256:%s", l.diff_hex[i]);
                assert_string_equal(image->layers[i].digest, digest);
                assert_string_equal(image->layers[i].diff_id, diff_id);
                /* Apply it: the diff_id computed while extracting matches the
                 * config's, and the digest the manifest's. */
                snprintf(dir, sizeof(dir), "%s/%zu", f->target, i);
                assert_int_equal(mkdir(dir, 0755), 0);
                fd = oci_image_open_layer(image, i, &err);
                assert_true(fd >= 0);
                assert_int_equal(oci_layer_apply(fd, dir, &result, &err), 0);
                close(fd);
                assert_string_equal(result.diff_id, l.diff_hex[i]);
                assert_string_equal(result.digest, l.layer_hex[i]);
        }
        assert_string_equal(image->layers[0].media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
        assert_int_equal(image->env_count, 2);
        assert_string_equal(image->env[1], "LANG=C");
        assert_string_equal(image->workdir, "/srv");
        assert_string_equal(image->user, "1000:1000");
        assert_int_equal(json_array_size(image->entrypoint), 1);
        assert_string_equal(json_string_value(json_array_get(image->cmd, 1)), "80");
        oci_image_free(image);
        image = NULL;
        snprintf(path, sizeof(path), "%s/1/etc/os-release", f->target);
        assert_int_equal(lstat(path, &st), 0);
        assert_true(S_ISCHR(st.st_mode));

        /* By tag. */
        assert_int_equal(oci_image_load(l.dir, "v1", &image, &err), 0);
        oci_image_free(image);
        assert_load_fails(l.dir, "v2", "tag_not_found");
}

static void corrupt_blob(struct layout *l, const char *hex, bool same_size)
{
        char path[512];
        FILE *file;

        snprintf(path, sizeof(path), "%s/blobs/sha256/%s", l->dir, hex);
        file = fopen(path, same_size ? "r+" : "a");
        assert_non_null(file);
        if (same_size)
                fseek(file, 0, SEEK_END), fseek(file, ftell(file) - 1, SEEK_SET);
        fputc('!', file);
        fclose(file);
}

static void test_image_load_failures(void **state)
{
        struct fixture *f = *state;
        struct layout l;
        char path[512], other[512];

        build_layout(f, &l, NULL);
        corrupt_blob(&l, l.layer_hex[1], true);
        assert_load_fails(l.dir, NULL, "digest_mismatch");
        corrupt_blob(&l, l.layer_hex[1], false); /* size differs too */
        assert_load_fails(l.dir, NULL, "digest_mismatch");
        snprintf(path, sizeof(path), "rm -rf '%s'", l.dir);
        assert_int_equal(system(path), 0);

        build_layout(f, &l, NULL);
        corrupt_blob(&l, l.config_hex, true);
        assert_load_fails(l.dir, NULL, "digest_mismatch");
        snprintf(path, sizeof(path), "rm -rf '%s'", l.dir);
        assert_int_equal(system(path), 0);

        build_layout(f, &l, NULL);
        corrupt_blob(&l, l.manifest_hex, true);
        assert_load_fails(l.dir, NULL, "digest_mismatch");
        snprintf(path, sizeof(path), "rm -rf '%s'", l.dir);
        assert_int_equal(system(path), 0);

        build_layout(f, &l, NULL);
        snprintf(path, sizeof(path), "%s/blobs/sha256/%s", l.dir, l.layer_hex[0]);
        assert_int_equal(unlink(path), 0);
        assert_load_fails(l.dir, NULL, "missing_blob");
        /* A blob replaced by a symlink out of the layout. */
        snprintf(other, sizeof(other), "%s/file", f->outside);
        assert_int_equal(symlink(other, path), 0);
        assert_load_fails(l.dir, NULL, "bad_image");
        snprintf(path, sizeof(path), "rm -rf '%s'", l.dir);
        assert_int_equal(system(path), 0);

        build_layout(f, &l, "application/vnd.example.layer.v1.squashfs");
        assert_load_fails(l.dir, NULL, "unsupported_media_type");
        snprintf(path, sizeof(path), "rm -rf '%s'", l.dir);
        assert_int_equal(system(path), 0);

        /* A digest that is a path. */
        build_layout(f, &l, NULL);
        put_json_file(l.dir, "index.json",
                      json_pack("{s:i, s:[{s:s, s:s, s:i}]}", "schemaVersion", 2, "manifests", "mediaType",
                                "application/vnd.oci.image.manifest.v1+json", "digest", "sha256:../../outside/file",
                                "size", 9));
        assert_load_fails(l.dir, NULL, "bad_image");
        /* Not even a layout. */
        assert_load_fails(f->outside, NULL, "bad_image");
}

static void test_image_load_multi_platform(void **state)
{
        struct fixture *f = *state;
        struct oci_image *image = NULL;
        struct moat_error *err = NULL;
        struct layout l;
        char index_hex[65], missing[65];
        size_t index_size;
        json_t *arm, *amd;

        build_layout(f, &l, NULL);
        /* The arm64 manifest is not in the layout: it must not be touched. */
        memset(missing, 'a', 64);
        missing[64] = '\0';
        arm = descriptor("application/vnd.oci.image.manifest.v1+json", missing, 100);
        json_object_set_new(arm, "platform", json_pack("{s:s, s:s}", "os", "linux", "architecture", "arm64"));
        amd = descriptor("application/vnd.oci.image.manifest.v1+json", l.manifest_hex, l.manifest_size);
        json_object_set_new(amd, "platform", json_pack("{s:s, s:s}", "os", "linux", "architecture", "amd64"));
        put_json_blob(&l,
                      json_pack("{s:i, s:s, s:[o,o]}", "schemaVersion", 2, "mediaType",
                                "application/vnd.oci.image.index.v1+json", "manifests", arm, amd),
                      index_hex, &index_size);
        put_json_file(l.dir, "index.json",
                      json_pack("{s:i, s:[o]}", "schemaVersion", 2, "manifests",
                                descriptor("application/vnd.oci.image.index.v1+json", index_hex, index_size)));
        assert_int_equal(oci_image_load(l.dir, NULL, &image, &err), 0);
        assert_int_equal(image->layer_count, 2);
        oci_image_free(image);

        /* The same platforms listed directly in index.json. */
        arm = descriptor("application/vnd.oci.image.manifest.v1+json", missing, 100);
        json_object_set_new(arm, "platform", json_pack("{s:s, s:s}", "os", "linux", "architecture", "arm64"));
        amd = descriptor("application/vnd.oci.image.manifest.v1+json", l.manifest_hex, l.manifest_size);
        json_object_set_new(amd, "platform", json_pack("{s:s, s:s}", "os", "linux", "architecture", "amd64"));
        put_json_file(l.dir, "index.json", json_pack("{s:i, s:[o,o]}", "schemaVersion", 2, "manifests", arm, amd));
        assert_int_equal(oci_image_load(l.dir, NULL, &image, &err), 0);
        oci_image_free(image);

        /* Only arm64 and s390x: no platform for us. */
        arm = descriptor("application/vnd.oci.image.manifest.v1+json", missing, 100);
        json_object_set_new(arm, "platform", json_pack("{s:s, s:s}", "os", "linux", "architecture", "arm64"));
        amd = descriptor("application/vnd.oci.image.manifest.v1+json", l.manifest_hex, l.manifest_size);
        json_object_set_new(amd, "platform", json_pack("{s:s, s:s}", "os", "linux", "architecture", "s390x"));
        put_json_file(l.dir, "index.json", json_pack("{s:i, s:[o,o]}", "schemaVersion", 2, "manifests", arm, amd));
        assert_load_fails(l.dir, NULL, "platform_not_found");
}

/* docker save (classic): manifest.json, <hex>.json, <id>/layer.tar, and a
 * symlinked duplicate layer directory as docker writes them. */
static void test_image_load_docker_save(void **state)
{
        struct fixture *f = *state;
        const struct tar_entry layer[] = {FILE_ENTRY("hello", "world")};
        struct oci_image *image = NULL;
        struct moat_error *err = NULL;
        char dir[256], path[512], config_name[80], diff_hex[65], config_hex[65];
        json_t *config;
        char *text;

        snprintf(dir, sizeof(dir), "%s/save", f->scratch);
        assert_int_equal(mkdir(dir, 0755), 0);
        snprintf(path, sizeof(path), "%s/aaa", dir);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof(path), "%s/bbb", dir);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof(path), "%s/aaa/layer.tar", dir);
        write_tar(path, "none", layer, 1);
        shell_sha256(path, NULL, diff_hex);
        snprintf(path, sizeof(path), "%s/bbb/layer.tar", dir);
        assert_int_equal(symlink("../aaa/layer.tar", path), 0);
        config = json_pack("{s:{s:[s]}, s:{s:s, s:[s+, s+]}}", "config", "Cmd", "sh", "rootfs", "type", "layers",
                           "diff_ids", "sha256:", diff_hex, "sha256:", diff_hex);
        text = json_dumps(config, JSON_COMPACT);
        json_decref(config);
        snprintf(path, sizeof(path), "%s/cfg.tmp", dir);
        write_file(path, text, strlen(text));
        free(text);
        shell_sha256(path, NULL, config_hex);
        snprintf(config_name, sizeof(config_name), "%s.json", config_hex);
        char final[600];
        snprintf(final, sizeof(final), "%s/%s", dir, config_name);
        assert_int_equal(rename(path, final), 0);
        put_json_file(dir, "manifest.json",
                      json_pack("[{s:s, s:[s], s:[s,s]}]", "Config", config_name, "RepoTags", "example/app:1.0",
                                "Layers", "aaa/layer.tar", "bbb/layer.tar"));
        assert_int_equal(oci_image_load(dir, "example/app:1.0", &image, &err), 0);
        assert_int_equal(image->layer_count, 2);
        assert_int_equal(image->layers[1].size, image->layers[0].size);
        assert_string_equal(json_string_value(json_array_get(image->cmd, 0)), "sh");
        oci_image_free(image);
        assert_int_equal(oci_image_load(dir, "1.0", &image, &err), 0);
        oci_image_free(image);

        /* Layer paths that leave the directory. */
        put_json_file(dir, "manifest.json",
                      json_pack("[{s:s, s:[s,s]}]", "Config", config_name, "Layers", "aaa/layer.tar",
                                "../../x"));
        assert_load_fails(dir, NULL, "bad_image");
        snprintf(path, sizeof(path), "%s/bbb/layer.tar", dir);
        assert_int_equal(unlink(path), 0);
        assert_int_equal(symlink("../../../outside/file", path), 0);
        put_json_file(dir, "manifest.json",
                      json_pack("[{s:s, s:[s,s]}]", "Config", config_name, "Layers", "aaa/layer.tar",
                                "bbb/layer.tar"));
        assert_load_fails(dir, NULL, "bad_image");
        /* A layer that is not the config's diff_id. */
        assert_int_equal(unlink(path), 0);
        write_file(path, "not the layer", 13);
        assert_load_fails(dir, NULL, "digest_mismatch");
}

static void test_sha256_vectors(void **state)
{
        struct sha256 *hash = sha256_new();
        char hex[65];

        sha256_update(hash, "abc", 3);
        sha256_final_hex(hash, hex);
        sha256_free(hash);
        assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        hash = sha256_new();
        sha256_final_hex(hash, hex);
        sha256_free(hash);
        assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_true(sha256_hex_valid(hex));
        assert_false(sha256_hex_valid("E3B0"));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_sha256_vectors),
                cmocka_unit_test_setup_teardown(test_layer_normal_tree, setup, teardown),
                cmocka_unit_test_setup_teardown(test_layer_zstd_and_plain_digests, setup, teardown),
                cmocka_unit_test_setup_teardown(test_layer_whiteouts, setup, teardown),
                cmocka_unit_test_setup_teardown(test_layer_xattr_filter, setup, teardown),
                cmocka_unit_test_setup_teardown(test_layer_path_traversal, setup, teardown),
                cmocka_unit_test_setup_teardown(test_layer_symlink_escape, setup, teardown),
                cmocka_unit_test_setup_teardown(test_layer_hardlink_escape, setup, teardown),
                cmocka_unit_test_setup_teardown(test_layer_devices_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_layer_broken_streams, setup, teardown),
                cmocka_unit_test_setup_teardown(test_layer_size_limit, setup, teardown),
                cmocka_unit_test_setup_teardown(test_archive_extract, setup, teardown),
                cmocka_unit_test_setup_teardown(test_image_load_layout, setup, teardown),
                cmocka_unit_test_setup_teardown(test_image_load_failures, setup, teardown),
                cmocka_unit_test_setup_teardown(test_image_load_multi_platform, setup, teardown),
                cmocka_unit_test_setup_teardown(test_image_load_docker_save, setup, teardown),
        };

        if (geteuid() != 0) {
                fprintf(stderr, "test-daemon-oci needs root (chown, mknod)\n");
                return 77;
        }
        return cmocka_run_group_tests(tests, NULL, NULL);
}
