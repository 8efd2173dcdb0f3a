/* The host checks behind `moat doctor` and moatd's start-up, run for real
 * against this kernel: stable names, a fix for every problem, nothing left
 * behind, fast, and a non-root caller is told exactly what is wrong. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cell/hostcheck.h"

static const char *const expected_names[] = {
        "root", "user_namespaces", "idmapped_mounts", "overlayfs",
        "seccomp", "cgroups", "pivot_root", "network_namespaces",
};

static const struct moat_hostcheck *find(const struct moat_hostcheck *checks, size_t count, const char *name)
{
        for (size_t i = 0; i < count; i++)
                if (strcmp(checks[i].name, name) == 0)
                        return &checks[i];
        return NULL;
}

static size_t count_lines(const char *path)
{
        FILE *f = fopen(path, "re");
        size_t lines = 0;
        int c;

        assert_non_null(f);
        while ((c = fgetc(f)) != EOF)
                lines += c == '\n';
        fclose(f);
        return lines;
}

static size_t count_leftover_probe_dirs(void)
{
        DIR *dir = opendir("/tmp");
        struct dirent *entry;
        size_t found = 0;

        assert_non_null(dir);
        while ((entry = readdir(dir)))
                found += strncmp(entry->d_name, "moat-hostcheck-", 15) == 0;
        closedir(dir);
        return found;
}

static void test_every_check_reports_with_a_fix(void **state)
{
        struct moat_hostcheck checks[MOAT_HOSTCHECK_MAX];
        size_t count = 0, mounts_before = count_lines("/proc/self/mountinfo");
        size_t dirs_before = count_leftover_probe_dirs();
        struct timespec start, end;
        int failures = 0;

        clock_gettime(CLOCK_MONOTONIC, &start);
        int reported = moat_hostcheck_run(checks, MOAT_HOSTCHECK_MAX, &count);
        clock_gettime(CLOCK_MONOTONIC, &end);

        assert_int_equal(count, sizeof(expected_names) / sizeof(expected_names[0]));
        for (size_t i = 0; i < count; i++) {
                assert_non_null(find(checks, count, expected_names[i]));
                assert_true(checks[i].detail[0] != '\0');
                /* Every problem comes with the exact way out. */
                if (checks[i].status != MOAT_HOSTCHECK_OK)
                        assert_true(checks[i].fix[0] != '\0');
                failures += checks[i].status == MOAT_HOSTCHECK_FAIL;
        }
        assert_int_equal(reported, failures);
        /* Probes run in children: no mount and no temp dir outlives them. */
        assert_int_equal(count_lines("/proc/self/mountinfo"), mounts_before);
        assert_int_equal(count_leftover_probe_dirs(), dirs_before);
        /* Start-up budget: well under a second (target: tens of ms). */
        assert_true((end.tv_sec - start.tv_sec) * 1000 + (end.tv_nsec - start.tv_nsec) / 1000000 < 1000);
}

static void test_capacity_is_respected_and_failures_still_counted(void **state)
{
        struct moat_hostcheck full[MOAT_HOSTCHECK_MAX], one[1];
        size_t full_count = 0, one_count = 0;
        int full_failures = moat_hostcheck_run(full, MOAT_HOSTCHECK_MAX, &full_count);

        assert_int_equal(moat_hostcheck_run(one, 1, &one_count), full_failures);
        assert_int_equal(one_count, 1);
        assert_string_equal(one[0].name, "root");
}

/* As an unprivileged user, the checks must say so and point at the fix:
 * the real kernel refuses the cgroup mkdir and the idmapped mount. */
static void test_unprivileged_caller_is_refused_with_reasons(void **state)
{
        pid_t pid;
        int status;

        if (geteuid() != 0)
                skip();
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                struct moat_hostcheck checks[MOAT_HOSTCHECK_MAX];
                size_t count = 0;
                const struct moat_hostcheck *root, *cgroups;

                if (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 ||
                    setresuid(65534, 65534, 65534) < 0)
                        _exit(10);
                if (moat_hostcheck_run(checks, MOAT_HOSTCHECK_MAX, &count) < 2)
                        _exit(11);
                root = find(checks, count, "root");
                cgroups = find(checks, count, "cgroups");
                if (!root || root->status != MOAT_HOSTCHECK_FAIL || !strstr(root->fix, "root"))
                        _exit(12);
                if (!cgroups || cgroups->status != MOAT_HOSTCHECK_FAIL || !strstr(cgroups->detail, "not writable"))
                        _exit(13);
                _exit(0);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_print_shows_fix_only_for_problems(void **state)
{
        struct moat_hostcheck checks[2] = {
                { .name = "root", .status = MOAT_HOSTCHECK_OK, .detail = "running as root" },
                { .name = "cgroups", .status = MOAT_HOSTCHECK_FAIL, .detail = "missing", .fix = "do this" },
        };
        char *text = NULL;
        size_t length = 0;
        FILE *out = open_memstream(&text, &length);

        moat_hostcheck_print(out, checks, 2);
        fclose(out);
        assert_non_null(strstr(text, "ok    root"));
        assert_non_null(strstr(text, "FAIL  cgroups"));
        assert_non_null(strstr(text, "fix: do this"));
        assert_null(strstr(strstr(text, "root"), "fix: \n"));
        free(text);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_every_check_reports_with_a_fix),
                cmocka_unit_test(test_capacity_is_respected_and_failures_still_counted),
                cmocka_unit_test(test_unprivileged_caller_is_refused_with_reasons),
                cmocka_unit_test(test_print_shows_fix_only_for_problems),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
