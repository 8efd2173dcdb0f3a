/* moatd: the sandbox daemon. Parses the command line, prepares the data and
 * run directories, the registry, the `host` image and the cell runtime, then
 * runs one event loop until SIGTERM/SIGINT. */
#include <errno.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "cell/cell.h"
#include "config.h"
#include "image_store.h"
#include "log.h"
#include "net.h"
#include "sandbox.h"
#include "store.h"
#include "workers.h"

#if defined(MOAT_HAVE_HOSTCHECK) && __has_include("cell/hostcheck.h")
#include "cell/hostcheck.h"
#define MOATD_RUN_HOSTCHECK 1
#endif

int64_t moatd_now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void moatd_maybe_exit(struct moatd *daemon)
{
        if (daemon && daemon->shutting_down && daemon->cell_count == 0 && daemon->image_jobs == 0 &&
            worker_pool_pending(daemon->workers) == 0)
                event_base_loopexit(daemon->base, NULL);
}

static void usage(FILE *out)
{
        fprintf(out, "usage: moatd [--data-dir DIR] [--socket PATH] [--run-dir DIR] [--init PATH]\n"
                     "             [--cgroup-parent P] [--max-sandboxes N] [--log-level debug|info|warn]\n"
                     "             [--dns-upstream IP[:PORT]]... [--net-prefix NAME] [--net-pool4 CIDR]\n"
                     "             [--net-pool6 CIDR] [--tunnel-address ADDR]\n");
}

/* build/src/daemon/moatd finds build/src/init/moat-init; an installed moatd
 * uses the libexec copy. */
static void default_init_path(char *out, size_t size)
{
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

        if (n > 0) {
                self[n] = '\0';
                snprintf(out, size, "%s/../init/moat-init", dirname(self));
                if (access(out, X_OK) == 0)
                        return;
        }
        snprintf(out, size, "%s/moat-init", MOAT_LIBEXECDIR);
}

static int make_dir(const char *path, mode_t mode)
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
        if (mkdir(partial, mode) < 0 && errno != EEXIST)
                return -1;
        return chmod(partial, mode);
}

static void on_graveyard(evutil_socket_t fd, short what, void *arg)
{
        sandbox_graveyard_flush(arg);
}

static void on_shutdown_signal(evutil_socket_t signal_number, short what, void *arg)
{
        struct moatd *daemon = arg;

        if (daemon->shutting_down)
                return;
        log_info("signal %d: stopping every sandbox", (int)signal_number);
        daemon->shutting_down = true;
        sandbox_stop_all(daemon);
        moatd_maybe_exit(daemon);
}

static int run_hostcheck(void)
{
#ifdef MOATD_RUN_HOSTCHECK
        struct moat_hostcheck checks[MOAT_HOSTCHECK_MAX];
        size_t count = 0;

        if (moat_hostcheck_run(checks, MOAT_HOSTCHECK_MAX, &count) > 0) {
                log_warn("this host cannot run sandboxes:");
                moat_hostcheck_print(stderr, checks, count);
                return -1;
        }
#endif
        return 0;
}

int main(int argc, char **argv)
{
        static const struct option long_options[] = {
                {"data-dir", required_argument, NULL, 'd'},      {"socket", required_argument, NULL, 's'},
                {"run-dir", required_argument, NULL, 'r'},       {"init", required_argument, NULL, 'i'},
                {"cgroup-parent", required_argument, NULL, 'c'}, {"max-sandboxes", required_argument, NULL, 'm'},
                {"log-level", required_argument, NULL, 'l'},     {"help", no_argument, NULL, 'h'},
                {"dns-upstream", required_argument, NULL, 'D'},  {"net-prefix", required_argument, NULL, 'P'},
                {"net-pool4", required_argument, NULL, '4'},     {"net-pool6", required_argument, NULL, '6'},
                {"tunnel-address", required_argument, NULL, 'T'},
                {NULL, 0, NULL, 0},
        };
        struct moatd daemon = {.options = {.data_dir = "/var/lib/moat",
                                           .socket_path = "/run/moat/moatd.sock",
                                           .run_dir = "/run/moat",
                                           .max_sandboxes = 256,
                                           .net_prefix = MOAT_NET_PREFIX_DEFAULT,
                                           .net_pool4 = MOAT_NET_POOL4_DEFAULT,
                                           .net_pool6 = MOAT_NET_POOL6_DEFAULT,
                                           .tunnel_address = MOAT_NET_TUNNEL_ADDRESS_DEFAULT}};
        struct moat_net_options net_options;
        unsigned upstream_count = 0;
        struct moat_cell_runtime_options runtime_options;
        struct moat_error *err = NULL;
        struct event *sigterm = NULL, *sigint = NULL;
        char init_path[PATH_MAX], database[PATH_MAX], socket_dir[PATH_MAX];
        int option, exit_code = 1;

        while ((option = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
                switch (option) {
                case 'd':
                        daemon.options.data_dir = optarg;
                        break;
                case 's':
                        daemon.options.socket_path = optarg;
                        break;
                case 'r':
                        daemon.options.run_dir = optarg;
                        break;
                case 'i':
                        daemon.options.init_path = optarg;
                        break;
                case 'c':
                        daemon.options.cgroup_parent = optarg;
                        break;
                case 'm': {
                        char *end;
                        unsigned long n = strtoul(optarg, &end, 10);
                        if (*end || n == 0 || n > 100000) {
                                fprintf(stderr, "moatd: --max-sandboxes must be 1..100000\n");
                                return 2;
                        }
                        daemon.options.max_sandboxes = (unsigned)n;
                        break;
                }
                case 'l': {
                        int level = moatd_log_parse_level(optarg);
                        if (level < 0) {
                                fprintf(stderr, "moatd: --log-level must be debug, info or warn\n");
                                return 2;
                        }
                        moatd_log_set_level(level);
                        break;
                }
                case 'D':
                        if (upstream_count >= 8) {
                                fprintf(stderr, "moatd: at most 8 --dns-upstream\n");
                                return 2;
                        }
                        daemon.options.dns_upstreams[upstream_count++] = optarg;
                        break;
                case 'P':
                        daemon.options.net_prefix = optarg;
                        break;
                case '4':
                        daemon.options.net_pool4 = optarg;
                        break;
                case '6':
                        daemon.options.net_pool6 = optarg;
                        break;
                case 'T':
                        daemon.options.tunnel_address = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind < argc) {
                usage(stderr);
                return 2;
        }
        if (!daemon.options.init_path) {
                default_init_path(init_path, sizeof(init_path));
                daemon.options.init_path = init_path;
        }
        /* A client that disconnects mid-reply must not kill the daemon. */
        signal(SIGPIPE, SIG_IGN);
        if (run_hostcheck() < 0)
                return 1;

        if (strlen(daemon.options.data_dir) > 1024 || strlen(daemon.options.run_dir) > 1024) {
                fprintf(stderr, "moatd: --data-dir and --run-dir must be at most 1024 bytes\n");
                return 2;
        }
        daemon.host_cores = get_nprocs();
        snprintf(daemon.images_dir, sizeof(daemon.images_dir), "%s/images", daemon.options.data_dir);
        snprintf(socket_dir, sizeof(socket_dir), "%s", daemon.options.socket_path);
        /* The registry and images are root's alone. */
        if (make_dir(daemon.options.data_dir, 0700) < 0 || make_dir(daemon.images_dir, 0700) < 0 ||
            make_dir(daemon.options.run_dir, 0755) < 0 || make_dir(dirname(socket_dir), 0755) < 0) {
                log_warn("create directories under `%s` and `%s`: %s", daemon.options.data_dir,
                         daemon.options.run_dir, strerror(errno));
                return 1;
        }
        evthread_use_pthreads();
        daemon.base = event_base_new();
        if (!daemon.base) {
                log_warn("event_base_new failed");
                return 1;
        }
        runtime_options = (struct moat_cell_runtime_options){.init_path = daemon.options.init_path,
                                                              .run_dir = daemon.options.run_dir,
                                                              .cgroup_parent = daemon.options.cgroup_parent};
        if (moat_cell_runtime_init(&runtime_options, &daemon.runtime, &err) < 0) {
                log_warn("cell runtime: %s", err->message);
                goto out;
        }
        snprintf(database, sizeof(database), "%s/moat.db", daemon.options.data_dir);
        if (store_open(database, &daemon.store, &err) < 0)
                goto fail;
        if (worker_pool_new(daemon.base, get_nprocs() < 2 ? 2 : get_nprocs() > 4 ? 4 : (unsigned)get_nprocs(),
                            &daemon.workers, &err) < 0)
                goto fail;
        daemon.graveyard_event = event_new(daemon.base, -1, 0, on_graveyard, &daemon);
        if (!daemon.graveyard_event)
                goto out;
        if (image_store_load(&daemon, &err) < 0 || sandbox_load_records(&daemon, &err) < 0 ||
            image_host_ensure(&daemon, &err) < 0)
                goto fail;
        /* After the reaping above: a crashed run's sandboxes are dead, so
         * what is left of their networks can be swept. */
        net_options = (struct moat_net_options){.base = daemon.base,
                                                .prefix = daemon.options.net_prefix,
                                                .pool4 = daemon.options.net_pool4,
                                                .pool6 = daemon.options.net_pool6,
                                                .dns_upstreams = upstream_count ? daemon.options.dns_upstreams : NULL,
                                                .tunnel_address = daemon.options.tunnel_address};
        if (moat_net_init(&net_options, &daemon.net, &err) < 0) {
                moat_error_wrap(&err, "network");
                goto fail;
        }
        if (api_start(&daemon, &err) < 0)
                goto fail;
        sigterm = evsignal_new(daemon.base, SIGTERM, on_shutdown_signal, &daemon);
        sigint = evsignal_new(daemon.base, SIGINT, on_shutdown_signal, &daemon);
        if (!sigterm || !sigint || evsignal_add(sigterm, NULL) < 0 || evsignal_add(sigint, NULL) < 0)
                goto out;
        log_info("moatd %s listening on %s (data %s, init %s, cgroup %s)", MOAT_VERSION, daemon.options.socket_path,
                 daemon.options.data_dir, daemon.options.init_path,
                 moat_cell_runtime_cgroup_version(daemon.runtime));
        event_base_dispatch(daemon.base);
        log_info("moatd stopped");
        exit_code = 0;
        goto out;
fail:
        log_warn("%s", err->message);
out:
        moat_error_free(err);
        sandbox_free_all(&daemon);
        api_stop(&daemon);
        if (sigterm)
                event_free(sigterm);
        if (sigint)
                event_free(sigint);
        worker_pool_free(daemon.workers);
        sandbox_graveyard_flush(&daemon);
        if (daemon.graveyard_event)
                event_free(daemon.graveyard_event);
        store_close(daemon.store);
        image_store_free_all(&daemon);
        moat_net_free(daemon.net);
        moat_cell_runtime_free(daemon.runtime);
        if (daemon.base)
                event_base_free(daemon.base);
        return exit_code;
}
