#include "image_debian.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "image_store.h"

bool image_debian_ref(const char *ref, char release[32], bool *slim)
{
        const char *name;
        size_t length;

        if (strncmp(ref, "debian:", 7) != 0)
                return false;
        name = ref + 7;
        length = strcspn(name, "-");
        if (length < 3 || length > 16)
                return false;
        for (size_t i = 0; i < length; i++)
                if (!islower((unsigned char)name[i]))
                        return false;
        if (name[length] != '\0' && strcmp(name + length, "-slim") != 0)
                return false;
        memcpy(release, name, length);
        release[length] = '\0';
        *slim = name[length] != '\0';
        return true;
}

/* The first http(s) mirror apt uses for `release` (deb822 .sources first, as
 * Debian 12 ships, then sources.list). */
static int find_mirror(const char *release, char mirror[512])
{
        DIR *dir = opendir("/etc/apt/sources.list.d");
        struct dirent *entry;
        char line[1024];

        mirror[0] = '\0';
        while (dir && !mirror[0] && (entry = readdir(dir))) {
                char path[PATH_MAX], uris[512] = "", suites[512] = "", types[128] = "";
                FILE *f;
                size_t n = strlen(entry->d_name);

                if (n < 8 || strcmp(entry->d_name + n - 8, ".sources") != 0)
                        continue;
                snprintf(path, sizeof(path), "/etc/apt/sources.list.d/%s", entry->d_name);
                if (!(f = fopen(path, "re")))
                        continue;
                for (bool more = true; more && !mirror[0];) {
                        more = fgets(line, sizeof(line), f) != NULL;
                        line[strcspn(line, "\n")] = '\0';
                        if (!more || line[0] == '\0') {
                                char padded[520];

                                snprintf(padded, sizeof(padded), " %s ", suites);
                                if (strstr(types, "deb") && uris[0] && strstr(padded, release) &&
                                    (strncmp(uris, "http://", 7) == 0 || strncmp(uris, "https://", 8) == 0)) {
                                        char wanted[64];

                                        snprintf(wanted, sizeof(wanted), " %s ", release);
                                        if (strstr(padded, wanted))
                                                sscanf(uris, "%511s", mirror);
                                }
                                uris[0] = suites[0] = types[0] = '\0';
                        } else if (strncasecmp(line, "URIs:", 5) == 0) {
                                snprintf(uris, sizeof(uris), "%.500s", line + 5 + strspn(line + 5, " \t"));
                        } else if (strncasecmp(line, "Suites:", 7) == 0) {
                                snprintf(suites, sizeof(suites), "%.500s", line + 7);
                        } else if (strncasecmp(line, "Types:", 6) == 0) {
                                snprintf(types, sizeof(types), "%.120s", line + 6);
                        }
                }
                fclose(f);
        }
        if (dir)
                closedir(dir);
        if (!mirror[0]) {
                FILE *f = fopen("/etc/apt/sources.list", "re");

                while (f && !mirror[0] && fgets(line, sizeof(line), f)) {
                        char type[16], url[512], suite[64];

                        if (sscanf(line, "%15s %511s %63s", type, url, suite) == 3 && strcmp(type, "deb") == 0 &&
                            strcmp(suite, release) == 0 && strncmp(url, "http", 4) == 0)
                                snprintf(mirror, 512, "%s", url);
                }
                if (f)
                        fclose(f);
        }
        if (!mirror[0])
                snprintf(mirror, 512, "http://deb.debian.org/debian");
        return 0;
}

static void progress(int fd, const char *what, const char *a, const char *b)
{
        char line[1024];
        int n = snprintf(line, sizeof(line), "%s %s%s%s\n", what, a, b[0] ? " " : "", b);

        if (fd >= 0 && n > 0)
                (void)!write(fd, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/* debootstrap into target, its output to progress_fd line by line. */
static int run_debootstrap(const char *release, bool slim, const char *mirror, const char *target, int progress_fd,
                           struct moat_error **err)
{
        extern char **environ;
        const char *include = slim ? "--include=python3,ca-certificates" : "--include=python3";
        /* release, target and mirror never start with '-': release is
         * [a-z]+, target is our absolute path, mirror starts with http. */
        char *argv[] = {"debootstrap", slim ? "--variant=minbase" : "--variant=-", (char *)include,
                        (char *)release, (char *)target, (char *)mirror, NULL};
        posix_spawn_file_actions_t actions;
        pid_t pid;
        int status, r;

        if (!slim) /* the default variant has no --variant */
                memmove(&argv[1], &argv[2], sizeof(argv) - 2 * sizeof(argv[0]));
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
        if (progress_fd >= 0) {
                posix_spawn_file_actions_adddup2(&actions, progress_fd, 1);
                posix_spawn_file_actions_adddup2(&actions, progress_fd, 2);
        }
        /* An argv, no shell. */
        r = posix_spawn(&pid, "/usr/sbin/debootstrap", &actions, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&actions);
        if (r != 0)
                return moat_error_set(err, MOAT_ERROR_UNAVAILABLE, r, "debootstrap_missing",
                                      "cannot run /usr/sbin/debootstrap (install the debootstrap package)");
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return moat_error_system(err, errno, "wait for debootstrap");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                return moat_error_set(err, MOAT_ERROR_SYSTEM, 0, "debootstrap_failed",
                                      "debootstrap %s from %s failed (status %d); its output is above", release,
                                      mirror, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        return 0;
}

static void cache_key(const char *release, bool slim, const char *mirror, char out[17])
{
        EVP_MD_CTX *hash = EVP_MD_CTX_new();
        unsigned char digest[EVP_MAX_MD_SIZE];
        unsigned length = 0;
        char text[700];

        snprintf(text, sizeof(text), "v1 %s %s %s", release, slim ? "slim" : "default", mirror);
        EVP_DigestInit_ex(hash, EVP_sha256(), NULL);
        EVP_DigestUpdate(hash, text, strlen(text));
        EVP_DigestFinal_ex(hash, digest, &length);
        EVP_MD_CTX_free(hash);
        for (int i = 0; i < 8; i++)
                snprintf(out + i * 2, 3, "%02x", digest[i]);
}

static int make_dirs(const char *path)
{
        char partial[PATH_MAX];

        snprintf(partial, sizeof(partial), "%s", path);
        for (char *p = partial + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = '\0';
                if (mkdir(partial, 0755) < 0 && errno != EEXIST)
                        return -1;
                *p = '/';
        }
        return mkdir(partial, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

int image_debian_build(const char *cache_root, const char *release, bool slim, int progress_fd,
                       char out[PATH_MAX], struct moat_error **err)
{
        char mirror[512], key[17], base[PATH_MAX], partial[PATH_MAX], lock_path[PATH_MAX];
        _cleanup_close_ int lock_fd = -1;
        struct stat st;

        find_mirror(release, mirror);
        cache_key(release, slim, mirror, key);
        if (make_dirs(cache_root) < 0)
                return moat_error_system(err, errno, "create `%s`", cache_root);
        image_path(base, sizeof(base), "%s/%s-%s-%s", cache_root, release, slim ? "slim" : "default", key);
        image_path(out, PATH_MAX, "%s/rootfs", base);
        image_path(lock_path, sizeof(lock_path), "%s.lock", base);
        /* One build per key at a time, across every moatd on the host; the
         * others wait and then find it done. */
        lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (lock_fd < 0 || flock(lock_fd, LOCK_EX) < 0)
                return moat_error_system(err, errno, "lock `%s`", lock_path);
        if (stat(out, &st) == 0 && S_ISDIR(st.st_mode)) {
                progress(progress_fd, "cached:", base, mirror);
                return 0;
        }
        progress(progress_fd, "debootstrap (first time only, cached after):", release, mirror);
        /* Built under .partial and renamed whole: an interrupted build is
         * never mistaken for a finished one. */
        image_path(partial, sizeof(partial), "%s.partial", base);
        image_store_remove_tree(partial, NULL);
        if (make_dirs(partial) < 0)
                return moat_error_system(err, errno, "create `%s`", partial);
        {
                char target[PATH_MAX];

                image_path(target, sizeof(target), "%s/rootfs", partial);
                if (run_debootstrap(release, slim, mirror, target, progress_fd, err) < 0) {
                        image_store_remove_tree(partial, NULL);
                        return -1;
                }
                /* apt's downloaded .debs are not part of the image. */
                image_path(target, sizeof(target), "%s/rootfs/var/cache/apt/archives", partial);
                {
                        DIR *dir = opendir(target);
                        struct dirent *entry;
                        char file[PATH_MAX];

                        while (dir && (entry = readdir(dir)))
                                if (strstr(entry->d_name, ".deb") &&
                                    image_path(file, sizeof(file), "%s/%s", target, entry->d_name) == 0)
                                        unlink(file);
                        if (dir)
                                closedir(dir);
                }
        }
        if (rename(partial, base) < 0) {
                int saved = errno;

                image_store_remove_tree(partial, NULL);
                return moat_error_system(err, saved, "rename `%s`", partial);
        }
        progress(progress_fd, "built", base, "");
        return 0;
}
