/* The daemon's process-wide state, owned by the event loop thread. */
#pragma once
#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>

struct moat_cell_runtime;
struct store;
struct worker_pool;
struct sandbox;
struct api_hold;
struct moat_net;
struct image_record;
#include <jansson.h>

struct moatd_options {
        const char *data_dir;
        const char *socket_path;
        const char *run_dir;
        const char *init_path;
        const char *cgroup_parent;
        unsigned max_sandboxes;
        const char *dns_upstreams[9]; /* NULL-terminated; empty: /etc/resolv.conf */
        const char *net_prefix, *net_pool4, *net_pool6, *tunnel_address;
};

struct moatd {
        struct moatd_options options;
        struct event_base *base;
        struct evhttp *http;
        struct moat_cell_runtime *runtime;
        struct store *store;
        struct moat_net *net;
        struct worker_pool *workers;
        char images_dir[4096];
        struct image_record *images; /* image_store.h: every image, loaded at start-up */
        json_t *image_names;         /* {"name": "image id"} */
        double host_cores;

        struct sandbox *sandboxes; /* every record in memory, newest first */
        unsigned sandbox_count;    /* records */
        unsigned live_count;       /* creating or running */
        unsigned cell_count;       /* cells not destroyed yet */
        unsigned image_jobs;       /* imports in flight */
        struct api_hold *holds;    /* requests held open (waits, streams) */
        unsigned hold_count;
        size_t run_output_held;    /* bytes buffered by all one-shot /run requests */

        /* Objects whose last reference went away during a callback are freed
         * here, from a callback of their own, never while a caller up the
         * stack may still hold the pointer. */
        struct sandbox *graveyard;
        struct event *graveyard_event;

        bool shutting_down;
        struct event *shutdown_check;
};

int64_t moatd_now_ms(void);
/* Ends the loop once shutdown is requested and nothing is left to tear down. */
void moatd_maybe_exit(struct moatd *daemon);
