/* Unit tests of the /etc/passwd and /etc/group reader (src/common/passwd.c),
 * on real files in a temporary directory. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/passwd.h"

static char dir[] = "/tmp/moat-passwd-test-XXXXXX";
static char passwd_path[64], group_path[64], missing_path[64];

static const char passwd_text[] =
        "root:x:0:0:root:/root:/bin/bash\n"
        "# a comment line\n"
        "+nis-compat::::::\n"
        "broken-no-fields\n"
        "toofew:x:5:5:gecos:/home/toofew\n"
        "toomany:x:6:6:g:/h:/bin/sh:extra\n"
        "badid:x:12a:7::/home/badid:/bin/sh\n"
        "negative:x:-1:7::/home/neg:/bin/sh\n"
        "huge:x:4294967295:7::/home/huge:/bin/sh\n"
        ":x:8:8::/home/empty:/bin/sh\n"
        "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
        "nohome:x:1001:1001:::\n"
        "bob:x:1002:100:Bob:/home/bob:/bin/sh"; /* no final newline */

static const char group_text[] =
        "root:x:0:\n"
        "users:x:100:alice,bob\n"
        "wheel:x:10:carol,alice\n"
        "bad:x:zz:alice\n"
        "short:x:11\n"
        "alicegroup:x:1000:\n"
        "dup:x:100:alice\n"
        "prefix:x:12:alicex,xalice\n";

static void write_file(const char *path, const char *text, size_t length)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, length), (ssize_t)length);
        close(fd);
}

static int setup(void **state)
{
        if (!mkdtemp(dir))
                return -1;
        snprintf(passwd_path, sizeof(passwd_path), "%s/passwd", dir);
        snprintf(group_path, sizeof(group_path), "%s/group", dir);
        snprintf(missing_path, sizeof(missing_path), "%s/missing", dir);
        write_file(passwd_path, passwd_text, strlen(passwd_text));
        write_file(group_path, group_text, strlen(group_text));
        return 0;
}

static int teardown(void **state)
{
        char path[96];

        unlink(passwd_path);
        unlink(group_path);
        snprintf(path, sizeof(path), "%s/fifo", dir);
        unlink(path);
        snprintf(path, sizeof(path), "%s/long", dir);
        unlink(path);
        return rmdir(dir);
}

static void test_root(void **state)
{
        struct moat_passwd_user u;

        assert_int_equal(moat_passwd_resolve_user(passwd_path, "", &u), 0);
        assert_int_equal(u.uid, 0);
        assert_int_equal(u.gid, 0);
        assert_true(u.known);
        assert_string_equal(u.name, "root");
        assert_string_equal(u.home, "/root");
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "root", &u), 0);
        assert_int_equal(u.uid, 0);
}

static void test_names(void **state)
{
        struct moat_passwd_user u;

        assert_int_equal(moat_passwd_resolve_user(passwd_path, "alice", &u), 0);
        assert_int_equal(u.uid, 1000);
        assert_int_equal(u.gid, 1000);
        assert_string_equal(u.home, "/home/alice");
        assert_string_equal(u.name, "alice");
        /* The last line has no newline. */
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "bob", &u), 0);
        assert_int_equal(u.uid, 1002);
        assert_int_equal(u.gid, 100);
        assert_string_equal(u.home, "/home/bob");
        /* An empty home field means "/". */
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "nohome", &u), 0);
        assert_string_equal(u.home, "/");
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "nobody-here", &u), -ENOENT);
        /* A prefix is not a match. */
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "ali", &u), -ENOENT);
}

static void test_numeric(void **state)
{
        struct moat_passwd_user u;

        assert_int_equal(moat_passwd_resolve_user(passwd_path, "1000", &u), 0);
        assert_true(u.known);
        assert_string_equal(u.name, "alice");
        assert_int_equal(u.gid, 1000);
        /* Not in passwd: gid = uid (never group root), home /, no name. */
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "65534", &u), 0);
        assert_false(u.known);
        assert_int_equal(u.uid, 65534);
        assert_int_equal(u.gid, 65534);
        assert_string_equal(u.home, "/");
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "4294967294", &u), 0);
        assert_int_equal(u.uid, 4294967294u);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "4294967295", &u), -EINVAL);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "99999999999", &u), -EINVAL);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "-1", &u), -ENOENT);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "12a", &u), -EINVAL);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "+5", &u), -ENOENT);
}

static void test_uid_gid(void **state)
{
        struct moat_passwd_user u;

        assert_int_equal(moat_passwd_resolve_user(passwd_path, "1000:50", &u), 0);
        assert_int_equal(u.uid, 1000);
        assert_int_equal(u.gid, 50);
        assert_string_equal(u.name, "alice");
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "123:456", &u), 0);
        assert_int_equal(u.uid, 123);
        assert_int_equal(u.gid, 456);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "alice:7", &u), 0);
        assert_int_equal(u.uid, 1000);
        assert_int_equal(u.gid, 7);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "123:", &u), -EINVAL);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, ":5", &u), -EINVAL);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "1:2:3", &u), -EINVAL);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "1:x", &u), -EINVAL);
}

static void test_malformed_lines_are_skipped(void **state)
{
        struct moat_passwd_user u;

        assert_int_equal(moat_passwd_resolve_user(passwd_path, "toofew", &u), -ENOENT);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "toomany", &u), -ENOENT);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "badid", &u), -ENOENT);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "negative", &u), -ENOENT);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "huge", &u), -ENOENT);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "broken-no-fields", &u), -ENOENT);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "# a comment line", &u), -ENOENT);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "+nis-compat", &u), -ENOENT);
        /* uid 8 belongs to a line with an empty name: not a user. */
        assert_int_equal(moat_passwd_resolve_user(passwd_path, "8", &u), 0);
        assert_false(u.known);
}

static void test_missing_file(void **state)
{
        struct moat_passwd_user u;
        gid_t groups[MOAT_PASSWD_GROUPS_MAX];

        assert_int_equal(moat_passwd_resolve_user(missing_path, "", &u), 0);
        assert_int_equal(u.uid, 0);
        assert_string_equal(u.home, "/root");
        assert_int_equal(moat_passwd_resolve_user(missing_path, "alice", &u), -ENOENT);
        assert_int_equal(moat_passwd_resolve_user(missing_path, "42", &u), 0);
        assert_int_equal(u.uid, 42);
        assert_int_equal(moat_passwd_user_groups(missing_path, "alice", 1000, groups), 1);
        assert_int_equal(groups[0], 1000);
}

static void test_fifo_is_not_read(void **state)
{
        struct moat_passwd_user u;
        char fifo[96];

        snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
        assert_int_equal(mkfifo(fifo, 0600), 0);
        /* Must not block: a FIFO is treated as a missing file. */
        assert_int_equal(moat_passwd_resolve_user(fifo, "alice", &u), -ENOENT);
        assert_int_equal(moat_passwd_resolve_user(fifo, "", &u), 0);
}

static void test_long_line_is_skipped(void **state)
{
        static char text[20000];
        struct moat_passwd_user u;
        char path[96];
        size_t n;

        memset(text, 'a', 10000);
        n = 10000;
        n += (size_t)snprintf(text + n, sizeof(text) - n, ":x:1:1::/h:/s\nshort:x:3:4::/home/s:/bin/sh\n");
        snprintf(path, sizeof(path), "%s/long", dir);
        write_file(path, text, n);
        assert_int_equal(moat_passwd_resolve_user(path, "short", &u), 0);
        assert_int_equal(u.uid, 3);
        assert_int_equal(moat_passwd_resolve_user(path, "1", &u), 0);
        assert_false(u.known);
}

static void test_spec_too_long(void **state)
{
        struct moat_passwd_user u;
        char spec[MOAT_PASSWD_SPEC_MAX + 1];

        memset(spec, 'a', sizeof(spec) - 1);
        spec[sizeof(spec) - 1] = '\0';
        assert_int_equal(moat_passwd_resolve_user(passwd_path, spec, &u), -EINVAL);
        assert_int_equal(moat_passwd_resolve_user(passwd_path, NULL, &u), -EINVAL);
}

static void test_groups(void **state)
{
        gid_t groups[MOAT_PASSWD_GROUPS_MAX];
        size_t n = moat_passwd_user_groups(group_path, "alice", 1000, groups);

        /* primary, users(100), wheel(10); alicegroup is 1000 = primary; dup 100
         * is not repeated; bad/short lines and prefixes do not count. */
        assert_int_equal(n, 3);
        assert_int_equal(groups[0], 1000);
        assert_int_equal(groups[1], 100);
        assert_int_equal(groups[2], 10);
        n = moat_passwd_user_groups(group_path, "bob", 100, groups);
        assert_int_equal(n, 1);
        assert_int_equal(groups[0], 100);
        n = moat_passwd_user_groups(group_path, "", 5, groups);
        assert_int_equal(n, 1);
}

static void test_parse_id(void **state)
{
        unsigned int id;

        assert_int_equal(moat_passwd_parse_id("0", &id), 0);
        assert_int_equal(id, 0);
        assert_int_equal(moat_passwd_parse_id("007", &id), 0);
        assert_int_equal(id, 7);
        assert_int_equal(moat_passwd_parse_id("", &id), -EINVAL);
        assert_int_equal(moat_passwd_parse_id(" 1", &id), -EINVAL);
        assert_int_equal(moat_passwd_parse_id("1 ", &id), -EINVAL);
        assert_int_equal(moat_passwd_parse_id("4294967296", &id), -EINVAL);
        assert_int_equal(moat_passwd_parse_id("00000000001", &id), -EINVAL);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_root),
                cmocka_unit_test(test_names),
                cmocka_unit_test(test_numeric),
                cmocka_unit_test(test_uid_gid),
                cmocka_unit_test(test_malformed_lines_are_skipped),
                cmocka_unit_test(test_missing_file),
                cmocka_unit_test(test_fifo_is_not_read),
                cmocka_unit_test(test_long_line_is_skipped),
                cmocka_unit_test(test_spec_too_long),
                cmocka_unit_test(test_groups),
                cmocka_unit_test(test_parse_id),
        };
        return cmocka_run_group_tests_name("passwd", tests, setup, teardown);
}
