/* Sandbox lifecycle: creating -> running -> stopped, and the record kept
 * after. One object per sandbox, reference-counted: the daemon's list holds a
 * reference, so does every worker job in flight. */
#pragma once
#include <event2/http.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "daemon.h"
#include "ids.h"
#include "request.h"

struct moat_cell;
struct init_channel;
struct exec;
struct api_hold;
struct moat_net_sandbox;

enum sandbox_state { SANDBOX_CREATING, SANDBOX_RUNNING, SANDBOX_STOPPED };
enum sandbox_end_reason {
        SANDBOX_END_NONE,
        SANDBOX_END_EXITED,
        SANDBOX_END_TIMEOUT,
        SANDBOX_END_OOM,
        SANDBOX_END_TERMINATED,
        SANDBOX_END_ERROR,
};

#define SANDBOX_ID_COUNT 65536u /* host uids/gids per sandbox */
#define SANDBOX_RECORD_KEEP_MS (3600 * 1000)
/* Exited exec records kept per sandbox (oldest unwatched ones go first);
 * live execs are bounded by MOAT_INIT_PROCESSES_MAX on top of these. */
#define SANDBOX_EXITED_EXECS_MAX 256
/* Output buffered in moatd across all of a sandbox's execs: past it running
 * execs get no more credit, and unread output of exited execs is evicted. */
#define SANDBOX_OUTPUT_BUDGET (32 * 1024 * 1024)
/* init must say HELLO within this after its cell is up. */
#define SANDBOX_HELLO_TIMEOUT_S 10

struct sandbox_waiter;
struct sandbox_delete;

struct sandbox {
        struct sandbox *prev, *next;
        struct sandbox *graveyard_next;
        struct moatd *daemon;
        unsigned refs;

        char id[MOAT_ID_MAX];
        enum sandbox_state state;
        enum sandbox_end_reason end_reason;
        bool has_exit_code;
        int exit_code;
        struct sandbox_request config;
        char image_id[32]; /* what config.image resolved to at create */
        char *shell; /* "bash" or "sh": what /run's `cmd` runs with */
        uint32_t host_id_base;
        int64_t created_at, ended_at, expires_at, last_activity;
        uint64_t create_started_us, cell_started_us, cell_done_us; /* monotonic, for the debug log */
        uint32_t net_us; /* of the create: the network's share */
        bool create_abandoned; /* the create request's client hung up before the reply */

        struct moat_cell *cell;
        struct moat_net_sandbox *net; /* with the cell: its namespace, veth, DNS, tunnels */
        bool create_in_flight; /* a worker is building the cell */
        struct event *pidfd_event, *lifetime_timer, *idle_timer, *prune_timer, *hello_timer;
        struct init_channel *channel;

        struct exec *execs; /* newest first */
        unsigned exec_count, live_exec_count, starting_exec_count;
        uint64_t output_buffered; /* sum over execs of bytes + per-chunk charge buffered */
        bool output_starved;      /* some exec's credit was withheld for the sandbox budget */
        uint32_t next_cookie;
        struct exec *entrypoint;

        struct api_hold *create_hold;
        struct sandbox_waiter *waiters;
        struct sandbox_delete *deletes;
        bool delete_requested;
        bool tearing_down;
        bool in_list;
};

struct sandbox *sandbox_find(struct moatd *daemon, const char *id);
void sandbox_ref(struct sandbox *sandbox);
void sandbox_unref(struct sandbox *sandbox);
/* Frees what the graveyard holds; runs from its own event. */
void sandbox_graveyard_flush(struct moatd *daemon);

json_t *sandbox_to_json(const struct sandbox *sandbox);
const char *sandbox_state_name(enum sandbox_state state);

/* POST /v1/sandboxes: takes the validated request; replies on request. */
void sandbox_create(struct moatd *daemon, struct sandbox_request *config, struct evhttp_request *request);
void sandbox_delete(struct sandbox *sandbox, struct evhttp_request *request);
void sandbox_wait(struct sandbox *sandbox, struct evhttp_request *request, double timeout_s);
/* Ends the sandbox (idempotent): kills it, marks it stopped, schedules teardown. */
void sandbox_stop(struct sandbox *sandbox, enum sandbox_end_reason reason, bool has_exit_code, int exit_code);
/* API activity: restarts the idle timer. */
void sandbox_touch(struct sandbox *sandbox);
/* Counts OOM kills in the sandbox's cgroup (0 if unknown). */
uint64_t sandbox_oom_kills(struct sandbox *sandbox);
/* Start-up: load records, reap leftovers of sandboxes a previous moatd ran. */
int sandbox_load_records(struct moatd *daemon, struct moat_error **err);
/* SIGTERM: stop every sandbox; moatd_maybe_exit ends the loop when done. */
void sandbox_stop_all(struct moatd *daemon);
/* Exit: drop every record from memory (the registry keeps them). */
void sandbox_free_all(struct moatd *daemon);
/* PUT /v1/sandboxes/{id}/network: replace the live policy. */
int sandbox_set_network(struct sandbox *sandbox, const struct net_policy *policy, struct moat_error **err);
/* GET /v1/sandboxes/{id}/metrics */
json_t *sandbox_metrics_json(struct sandbox *sandbox);
/* True if a sandbox that is not torn down yet uses image `image_id`. */
bool sandbox_image_in_use(struct moatd *daemon, const char *name);
/* True if a sandbox that is not torn down yet mounts volume `name`. */
bool sandbox_volume_in_use(struct moatd *daemon, const char *name);
