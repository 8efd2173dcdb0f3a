/* The `host` image: a skeleton root filesystem whose /usr is the host's
 * (bound read-only by the cell) and whose /etc is private. Only an allowlist
 * of the host's /etc is copied in: nothing that holds secrets (shadow,
 * gshadow, ssh keys, sudoers, machine-id) ever reaches a sandbox. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "image_store.h"

/* Bump when the layout below changes: older host images are rebuilt. */
#define HOST_IMAGE_VERSION "3"

static const char *const etc_allowlist[] = {
        "alternatives", /* Debian links many /usr/bin entries into /etc/alternatives */
        "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates", "ca-certificates.conf",
        "localtime", "timezone", "os-release", "profile", "profile.d", "bash.bashrc", "inputrc", "mime.types",
        "debian_version", "login.defs", "skel", "terminfo", "ld.so.preload.d", "magic", "magic.mime",
        "python3", "python3.11", "python3.12", "python3.13", "perl", "gai.conf", "protocols", "services",
        "networks", "shells", "issue", "lsb-release", "vim", "X11", "xdg", "gnutls", "pki", "java-17-openjdk",
        NULL,
};

static int write_file(const char *root, const char *name, const char *content, mode_t mode,
                      struct moat_error **err)
{
        char path[PATH_MAX];
        _cleanup_close_ int fd = -1;
        size_t length = strlen(content);

        image_path(path, sizeof(path), "%s/%s", root, name);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0)
                return moat_error_system(err, errno, "create `%s`", path);
        if (write(fd, content, length) != (ssize_t)length)
                return moat_error_system(err, errno, "write `%s`", path);
        if (fchmod(fd, mode) < 0)
                return moat_error_system(err, errno, "chmod `%s`", path);
        return 0;
}

static int make_dir(const char *root, const char *name, mode_t mode, uid_t uid, gid_t gid,
                    struct moat_error **err)
{
        char path[PATH_MAX];

        image_path(path, sizeof(path), "%s/%s", root, name);
        if (mkdir(path, mode) < 0 && errno != EEXIST)
                return moat_error_system(err, errno, "mkdir `%s`", path);
        /* mkdir applies the umask; these modes (1777, 0700) matter. */
        if (chmod(path, mode) < 0 || chown(path, uid, gid) < 0)
                return moat_error_system(err, errno, "set owner/mode of `%s`", path);
        return 0;
}

static int make_symlink(const char *root, const char *name, const char *target, struct moat_error **err)
{
        char path[PATH_MAX];

        image_path(path, sizeof(path), "%s/%s", root, name);
        if (symlink(target, path) < 0 && errno != EEXIST)
                return moat_error_system(err, errno, "symlink `%s`", path);
        return 0;
}

static int copy_from_host_etc(const char *rootfs, const char *name, struct moat_error **err)
{
        char source[PATH_MAX], target[PATH_MAX];
        char *argv[] = {"cp", "-a", "--no-target-directory", source, target, NULL};
        struct stat st;
        int r;

        image_path(source, sizeof(source), "/etc/%s", name);
        if (lstat(source, &st) < 0)
                return 0; /* not on this host */
        image_path(target, sizeof(target), "%s/etc/%s", rootfs, name);
        r = image_store_copy(argv);
        if (r < 0)
                return moat_error_set(err, MOAT_ERROR_SYSTEM, 0, NULL, "copy `%s` into the host image", source);
        return 0;
}

static int build(const char *rootfs, struct moat_error **err)
{
        static const char passwd[] = "root:x:0:0:root:/root:/bin/bash\n"
                                     "user:x:1000:1000:user:/home/user:/bin/bash\n"
                                     "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        static const char group[] = "root:x:0:\nusers:x:100:user\nuser:x:1000:\nnogroup:x:65534:\n";
        static const char hosts[] = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                                    "127.0.1.1\tsandbox\n";
        static const char nsswitch[] = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
                                       "networks: files\nprotocols: files\nservices: files\n";
        static const char *const empty_dirs[] = {"etc", "proc", "dev", "sys", "run", "usr", "var", "home",
                                                 "mnt", "opt", "srv", "media", NULL};
        static const char *const usr_links[][2] = {
                {"bin", "usr/bin"}, {"sbin", "usr/sbin"}, {"lib", "usr/lib"}, {"lib64", "usr/lib64"}};
        static const char *const optional_links[] = {"lib32", "libx32"};
        char resolv[4096] = "";
        struct stat st;

        for (size_t i = 0; empty_dirs[i]; i++)
                if (make_dir(rootfs, empty_dirs[i], 0755, 0, 0, err) < 0)
                        return -1;
        if (make_dir(rootfs, "root", 0700, 0, 0, err) < 0 || make_dir(rootfs, "tmp", 01777, 0, 0, err) < 0 ||
            make_dir(rootfs, "var/tmp", 01777, 0, 0, err) < 0 ||
            make_dir(rootfs, "home/user", 0750, 1000, 1000, err) < 0)
                return -1;
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(usr_links); i++)
                if (make_symlink(rootfs, usr_links[i][0], usr_links[i][1], err) < 0)
                        return -1;
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(optional_links); i++) {
                char host_path[64], target[64];
                image_path(host_path, sizeof(host_path), "/%s", optional_links[i]);
                image_path(target, sizeof(target), "usr/%s", optional_links[i]);
                if (lstat(host_path, &st) == 0 && S_ISLNK(st.st_mode) &&
                    make_symlink(rootfs, optional_links[i], target, err) < 0)
                        return -1;
        }
        for (size_t i = 0; etc_allowlist[i]; i++)
                if (copy_from_host_etc(rootfs, etc_allowlist[i], err) < 0)
                        return -1;
        /* The host's resolver config, when it is a plain readable file (a
         * systemd-resolved stub address would not work inside anyway). */
        {
                FILE *f = fopen("/etc/resolv.conf", "re");
                if (f) {
                        size_t n = fread(resolv, 1, sizeof(resolv) - 1, f);
                        resolv[n] = '\0';
                        fclose(f);
                }
        }
        if (write_file(rootfs, "etc/passwd", passwd, 0644, err) < 0 ||
            write_file(rootfs, "etc/group", group, 0644, err) < 0 ||
            write_file(rootfs, "etc/hosts", hosts, 0644, err) < 0 ||
            write_file(rootfs, "etc/hostname", "sandbox\n", 0644, err) < 0 ||
            write_file(rootfs, "etc/resolv.conf", resolv, 0644, err) < 0 ||
            write_file(rootfs, "etc/nsswitch.conf", nsswitch, 0644, err) < 0 ||
            write_file(rootfs, "etc/environment", "", 0644, err) < 0 ||
            write_file(rootfs, "etc/moat-host-image-version", HOST_IMAGE_VERSION "\n", 0644, err) < 0)
                return -1;
        return 0;
}

static bool current(const char *image_dir)
{
        char path[PATH_MAX], content[16] = "";
        FILE *f;

        image_path(path, sizeof(path), "%s/rootfs/etc/moat-host-image-version", image_dir);
        f = fopen(path, "re");
        if (!f)
                return false;
        if (!fgets(content, sizeof(content), f))
                content[0] = '\0';
        fclose(f);
        return strcmp(content, HOST_IMAGE_VERSION "\n") == 0;
}

int image_host_ensure(struct moatd *daemon, struct moat_error **err)
{
        char final[PATH_MAX], temporary[PATH_MAX], rootfs[PATH_MAX], old[PATH_MAX];

        image_path(final, sizeof(final), "%s/%s", daemon->images_dir, IMAGE_HOST_NAME);
        if (current(final))
                return 0;
        image_path(temporary, sizeof(temporary), "%s/.tmp-host-XXXXXX", daemon->images_dir);
        if (!mkdtemp(temporary))
                return moat_error_system(err, errno, "mkdtemp in `%s`", daemon->images_dir);
        chmod(temporary, 0755);
        image_path(rootfs, sizeof(rootfs), "%s/rootfs", temporary);
        if (make_dir(temporary, "rootfs", 0755, 0, 0, err) < 0 || build(rootfs, err) < 0 ||
            image_store_write_meta(temporary, err) < 0)
                goto fail;
        /* Swap in whole: nobody ever sees half an image. Sandboxes of a
         * previous moatd were reaped before this runs. */
        image_path(old, sizeof(old), "%s/.old-host-%lld", daemon->images_dir, (long long)moatd_now_ms());
        if (rename(final, old) < 0 && errno != ENOENT) {
                moat_error_system(err, errno, "rename `%s`", final);
                goto fail;
        }
        if (rename(temporary, final) < 0) {
                moat_error_system(err, errno, "rename `%s`", temporary);
                goto fail;
        }
        image_store_remove_tree(old, NULL);
        return 0;
fail:
        image_store_remove_tree(temporary, NULL);
        return -1;
}
