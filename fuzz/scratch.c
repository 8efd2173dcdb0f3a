/* Scratch directories for harnesses that need a file system (layers, OCI
 * layouts). One base directory per process, one fresh child per input,
 * removed with nftw (FTW_PHYS: a symlink an input made is removed, never
 * followed). */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

static char base[4096];
static char current[4200];
static unsigned long counter;

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
        /* A layer may leave a directory without write or search permission;
         * root ignores those, but a non-root fuzzer must restore them. */
        if (type == FTW_DNR)
                chmod(path, 0700);
        if (remove(path) < 0 && errno != ENOENT) {
                fprintf(stderr, "fuzz: cannot remove %s: %m\n", path);
                abort();
        }
        return 0;
}

static void remove_tree(const char *path)
{
        if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) < 0 && errno != ENOENT) {
                fprintf(stderr, "fuzz: cannot walk %s: %m\n", path);
                abort();
        }
}

static void remove_base(void)
{
        if (base[0])
                remove_tree(base);
}

const char *fuzz_scratch_new(void)
{
        if (!base[0]) {
                const char *tmp = getenv("TMPDIR");

                snprintf(base, sizeof(base), "%s/moat-fuzz-XXXXXX", tmp && tmp[0] ? tmp : "/dev/shm");
                if (!mkdtemp(base)) {
                        fprintf(stderr, "fuzz: mkdtemp %s: %m\n", base);
                        abort();
                }
                atexit(remove_base);
        }
        fuzz_scratch_clear();
        snprintf(current, sizeof(current), "%s/%lu", base, counter++);
        if (mkdir(current, 0700) < 0) {
                fprintf(stderr, "fuzz: mkdir %s: %m\n", current);
                abort();
        }
        return current;
}

void fuzz_scratch_clear(void)
{
        if (current[0])
                remove_tree(current);
        current[0] = '\0';
}
