#include "sandbox.h"
#include "volume.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>

#include "api.h"
#include "cell/cell.h"
#include "common/cleanup.h"
#include "common/protocol.h"
#include "encoding.h"
#include "exec.h"
#include "image_store.h"
#include "init_channel.h"
#include "log.h"
#include "net.h"
#include "store.h"
#include "workers.h"

/* Sandbox host id ranges live in [2^28, 2^31): above the ranges hosts hand
 * out to users and in /etc/subuid (which start at 100000), and below 2^31,
 * where tools that keep ids in a signed int (ps, some filesystems) break. */
#define HOST_ID_FIRST 0x10000000u
#define HOST_ID_END 0x80000000u

struct sandbox_waiter {
        struct sandbox_waiter *next;
        struct sandbox *sandbox;
        struct api_hold *hold;
        struct event *timer;
};

struct sandbox_delete {
        struct sandbox_delete *next;
        struct sandbox *sandbox;
        struct api_hold *hold;
};

static void start_teardown(struct sandbox *sandbox);
static void on_hello_timeout(evutil_socket_t fd, short what, void *arg);

/* ---- names, lookup, references ---- */

static uint64_t monotonic_us(void)
{
        struct timespec now;

        clock_gettime(CLOCK_MONOTONIC, &now);
        return (uint64_t)now.tv_sec * 1000000u + (uint64_t)now.tv_nsec / 1000u;
}

const char *sandbox_state_name(enum sandbox_state state)
{
        switch (state) {
        case SANDBOX_CREATING:
                return "creating";
        case SANDBOX_RUNNING:
                return "running";
        case SANDBOX_STOPPED:
                return "stopped";
        }
        return "stopped";
}

static const char *end_reason_name(enum sandbox_end_reason reason)
{
        static const char *const names[] = {
                [SANDBOX_END_NONE] = NULL,         [SANDBOX_END_EXITED] = "exited",
                [SANDBOX_END_TIMEOUT] = "timeout", [SANDBOX_END_OOM] = "oom",
                [SANDBOX_END_TERMINATED] = "terminated", [SANDBOX_END_ERROR] = "error",
        };
        return names[reason];
}

static enum sandbox_end_reason end_reason_from_name(const char *name)
{
        for (int r = SANDBOX_END_EXITED; r <= SANDBOX_END_ERROR; r++)
                if (name && strcmp(name, end_reason_name(r)) == 0)
                        return r;
        return SANDBOX_END_ERROR;
}

struct sandbox *sandbox_find(struct moatd *daemon, const char *id)
{
        if (!moat_id_valid("sb-", id))
                return NULL;
        for (struct sandbox *s = daemon->sandboxes; s; s = s->next)
                if (strcmp(s->id, id) == 0)
                        return s;
        return NULL;
}

void sandbox_ref(struct sandbox *sandbox)
{
        sandbox->refs++;
}

void sandbox_unref(struct sandbox *sandbox)
{
        if (--sandbox->refs > 0)
                return;
        sandbox->graveyard_next = sandbox->daemon->graveyard;
        sandbox->daemon->graveyard = sandbox;
        event_active(sandbox->daemon->graveyard_event, 0, 0);
}

static void sandbox_free(struct sandbox *sandbox)
{
        while (sandbox->execs)
                exec_free(sandbox->execs);
        if (sandbox->pidfd_event)
                event_free(sandbox->pidfd_event);
        if (sandbox->lifetime_timer)
                event_free(sandbox->lifetime_timer);
        if (sandbox->idle_timer)
                event_free(sandbox->idle_timer);
        if (sandbox->prune_timer)
                event_free(sandbox->prune_timer);
        if (sandbox->hello_timer)
                event_free(sandbox->hello_timer);
        sandbox_request_clear(&sandbox->config);
        free(sandbox->shell);
        free(sandbox);
}

void sandbox_graveyard_flush(struct moatd *daemon)
{
        while (daemon->graveyard) {
                struct sandbox *sandbox = daemon->graveyard;
                daemon->graveyard = sandbox->graveyard_next;
                sandbox_free(sandbox);
        }
}

/* ---- JSON and the registry row ---- */

static json_t *time_or_null(int64_t ms)
{
        char text[ENCODING_TIME_MAX];

        if (!ms)
                return json_null();
        encoding_format_time(ms, text);
        return json_string(text);
}

static json_t *volumes_json(const struct sandbox_request *c);

json_t *sandbox_to_json(const struct sandbox *s)
{
        const struct sandbox_request *c = &s->config;
        json_t *o = json_pack("{s:s,s:s,s:o,s:s,s:f,s:i,s:i,s:i,s:i,s:o,s:O,s:s,s:s,s:O,s:O?,s:o,s:o,s:o,s:o}",
                              "id", s->id, "state", sandbox_state_name(s->state), "end_reason",
                              end_reason_name(s->end_reason) ? json_string(end_reason_name(s->end_reason))
                                                             : json_null(),
                              "image", c->image, "cpu", c->cpu, "memory", (int)c->memory_mib, "disk",
                              (int)c->disk_mib, "pids", (int)c->pids, "timeout", (int)c->timeout_s, "idle_timeout",
                              c->idle_timeout_s ? json_integer(c->idle_timeout_s) : json_null(), "env", c->env,
                              "workdir", c->workdir, "user", c->user, "tags", c->tags, "entrypoint", c->entrypoint,
                              "created_at", time_or_null(s->created_at), "ended_at", time_or_null(s->ended_at),
                              "expires_at", time_or_null(s->expires_at), "exit_code",
                              s->has_exit_code ? json_integer(s->exit_code) : json_null());

        if (o && !c->entrypoint)
                json_object_set_new(o, "entrypoint", json_null());
        if (o && s->entrypoint)
                json_object_set_new(o, "entrypoint_exec_id", json_string(s->entrypoint->id));
        if (o) {
                json_object_set_new(o, "network",
                                    net_policy_to_json(s->net ? moat_net_sandbox_policy(s->net) : &c->network));
                json_object_set_new(o, "volumes", volumes_json(c));
                json_object_set_new(o, "tunnels", s->net && s->state == SANDBOX_RUNNING
                                                          ? moat_net_sandbox_tunnels_json(s->net)
                                                          : json_array());
        }
        return o;
}

/* {"/data": {"name": "x", "read_only": false}}: the create body's form. */
static json_t *volumes_json(const struct sandbox_request *c)
{
        json_t *o = json_object();

        for (size_t i = 0; o && i < c->volume_count; i++)
                json_object_set_new(o, c->volumes[i].target,
                                    json_pack("{s:s,s:b}", "name", c->volumes[i].name, "read_only",
                                              c->volumes[i].read_only));
        return o;
}

/* The create body, normalised: what a restarted moatd needs to describe
 * (and one day re-adopt) the sandbox. */
static char *config_json(const struct sandbox *s)
{
        const struct sandbox_request *c = &s->config;
        json_t *o = json_pack("{s:s,s:f,s:i,s:i,s:i,s:i,s:O,s:s,s:s,s:O,s:O?}", "image", c->image, "cpu", c->cpu,
                              "memory", (int)c->memory_mib, "disk", (int)c->disk_mib, "pids", (int)c->pids,
                              "timeout", (int)c->timeout_s, "env", c->env, "workdir", c->workdir, "user", c->user,
                              "tags", c->tags, "entrypoint", c->entrypoint);
        char *text;

        if (!o)
                return NULL;
        if (c->idle_timeout_s)
                json_object_set_new(o, "idle_timeout", json_integer(c->idle_timeout_s));
        json_object_set_new(o, "network", net_policy_to_json(&c->network));
        if (c->volume_count)
                json_object_set_new(o, "volumes", volumes_json(c));
        if (c->port_count) {
                json_t *ports = json_array();

                for (size_t i = 0; ports && i < c->port_count; i++)
                        json_array_append_new(ports, json_pack("{s:i, s:b}", "port", (int)c->ports[i].port,
                                                               "public", c->ports[i].public));
                json_object_set_new(o, "ports", ports);
        }
        text = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        return text;
}

static void fill_row(const struct sandbox *s, struct store_sandbox_row *row)
{
        *row = (struct store_sandbox_row){
                .id = s->id,
                .state = sandbox_state_name(s->state),
                .end_reason = end_reason_name(s->end_reason),
                .has_exit_code = s->has_exit_code,
                .exit_code = s->exit_code,
                .image = s->config.image,
                .host_id_base = s->host_id_base,
                .created_at = s->created_at,
                .ended_at = s->ended_at,
                .expires_at = s->expires_at,
        };
}

static void store_state(struct sandbox *s)
{
        struct store_sandbox_row row;
        struct moat_error *err = NULL;

        fill_row(s, &row);
        if (store_update_sandbox(s->daemon->store, &row, &err) < 0) {
                log_warn("sandbox %s: %s", s->id, err->message);
                moat_error_free(err);
        }
}

/* ---- removal ---- */

static void list_remove(struct sandbox *s)
{
        struct moatd *daemon = s->daemon;

        if (!s->in_list)
                return;
        if (s->prev)
                s->prev->next = s->next;
        else
                daemon->sandboxes = s->next;
        if (s->next)
                s->next->prev = s->prev;
        s->in_list = false;
        daemon->sandbox_count--;
        sandbox_unref(s);
}

/* The record goes: after DELETE (once torn down) or after its hour. */
static void remove_record(struct sandbox *s)
{
        struct moat_error *err = NULL;

        if (store_delete_sandbox(s->daemon->store, s->id, &err) < 0) {
                log_warn("sandbox %s: %s", s->id, err->message);
                moat_error_free(err);
        }
        while (s->deletes) {
                struct sandbox_delete *d = s->deletes;
                s->deletes = d->next;
                api_hold_reply_json(d->hold, 200, json_pack("{s:s,s:b}", "id", s->id, "deleted", 1));
                free(d);
        }
        log_info("sandbox %s removed", s->id);
        list_remove(s);
}

/* Called whenever a teardown step finishes. */
static void after_teardown(struct sandbox *s)
{
        if (s->cell || s->tearing_down || s->create_in_flight)
                return;
        if (s->delete_requested && s->in_list)
                remove_record(s);
        moatd_maybe_exit(s->daemon);
}

/* ---- waiters ---- */

static void waiter_free(struct sandbox_waiter *w)
{
        struct sandbox_waiter **p;

        for (p = &w->sandbox->waiters; *p; p = &(*p)->next)
                if (*p == w) {
                        *p = w->next;
                        break;
                }
        if (w->timer)
                event_free(w->timer);
        free(w);
}

static void waiter_reply(struct sandbox_waiter *w)
{
        struct api_hold *hold = w->hold;
        json_t *body = sandbox_to_json(w->sandbox);

        waiter_free(w);
        api_hold_reply_json(hold, 200, body);
}

static void on_waiter_timeout(evutil_socket_t fd, short what, void *arg)
{
        waiter_reply(arg);
}

static void on_waiter_gone(void *arg)
{
        waiter_free(arg);
}

void sandbox_wait(struct sandbox *s, struct evhttp_request *request, double timeout_s)
{
        struct sandbox_waiter *w;

        if (s->state == SANDBOX_STOPPED || timeout_s == 0)
                return api_reply_json(request, 200, sandbox_to_json(s));
        w = calloc(1, sizeof(*w));
        if (!w)
                return api_reply_new_error(request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        w->sandbox = s;
        if (timeout_s > 0) {
                struct timeval tv = {.tv_sec = (time_t)timeout_s,
                                     .tv_usec = (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6)};
                w->timer = evtimer_new(s->daemon->base, on_waiter_timeout, w);
                if (!w->timer || evtimer_add(w->timer, &tv) < 0) {
                        if (w->timer)
                                event_free(w->timer);
                        free(w);
                        return api_reply_new_error(request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
                }
        }
        w->hold = api_hold_new(s->daemon, request, on_waiter_gone, w);
        if (!w->hold) {
                if (w->timer)
                        event_free(w->timer);
                free(w);
                return api_reply_new_error(request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        }
        w->next = s->waiters;
        s->waiters = w;
}

/* ---- network and metrics ---- */

int sandbox_set_network(struct sandbox *s, const struct net_policy *policy, struct moat_error **err)
{
        if (s->state != SANDBOX_RUNNING || !s->net)
                return moat_error_set(err, MOAT_ERROR_CONFLICT, 0, "sandbox_not_running", "sandbox %s is %s", s->id,
                                      sandbox_state_name(s->state));
        if (moat_net_sandbox_set_policy(s->net, policy, err) < 0)
                return -1;
        log_info("sandbox %s network: %s", s->id, net_mode_name(policy->mode));
        return 0;
}

json_t *sandbox_metrics_json(struct sandbox *s)
{
        struct moat_cell_stats stats = {0};
        struct moat_net_counters counters = {0};
        struct moat_error *err = NULL;

        if (s->cell && moat_cell_read_stats(s->cell, &stats, &err) < 0)
                moat_error_free(err);
        if (s->net)
                moat_net_sandbox_counters(s->net, &counters);
        return json_pack("{s:s, s:s, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "id", s->id, "state",
                         sandbox_state_name(s->state), "cpu_seconds", stats.cpu_usage_ns / 1e9, "memory_bytes",
                         (json_int_t)stats.memory_current, "memory_peak_bytes", (json_int_t)stats.memory_peak,
                         "pids", (json_int_t)stats.pids_current, "net_rx_bytes", (json_int_t)counters.rx_bytes,
                         "net_tx_bytes", (json_int_t)counters.tx_bytes, "tunnel_rx_bytes",
                         (json_int_t)counters.tunnel_rx_bytes, "tunnel_tx_bytes",
                         (json_int_t)counters.tunnel_tx_bytes);
}

/* ---- stop ---- */

uint64_t sandbox_oom_kills(struct sandbox *s)
{
        struct moat_cell_stats stats = {0};
        struct moat_error *err = NULL;

        if (!s->cell)
                return 0;
        if (moat_cell_read_stats(s->cell, &stats, &err) < 0) {
                moat_error_free(err);
                return 0;
        }
        return stats.oom_kills;
}

static void on_prune(evutil_socket_t fd, short what, void *arg)
{
        struct sandbox *s = arg;

        s->delete_requested = true;
        /* A teardown that could not start (no memory) is retried here. */
        if (s->cell && !s->tearing_down)
                start_teardown(s);
        else
                after_teardown(s);
}

static void reply_create_failed(struct sandbox *s, const struct moat_error *error)
{
        struct api_hold *hold = s->create_hold;

        s->create_hold = NULL;
        if (hold)
                api_hold_reply_error(hold, error);
}

void sandbox_stop(struct sandbox *s, enum sandbox_end_reason reason, bool has_exit_code, int exit_code)
{
        struct timeval keep = {.tv_sec = SANDBOX_RECORD_KEEP_MS / 1000};

        if (s->state == SANDBOX_STOPPED)
                return;
        s->state = SANDBOX_STOPPED;
        s->end_reason = reason;
        s->has_exit_code = has_exit_code;
        s->exit_code = exit_code;
        s->ended_at = moatd_now_ms();
        s->daemon->live_count--;
        if (s->lifetime_timer)
                evtimer_del(s->lifetime_timer);
        if (s->idle_timer)
                evtimer_del(s->idle_timer);
        if (s->hello_timer)
                evtimer_del(s->hello_timer);
        if (s->pidfd_event)
                event_del(s->pidfd_event);
        /* Kill first: nothing in the sandbox runs on while we clean up. */
        if (s->cell)
                moat_cell_kill(s->cell);
        exec_end_all(s, reason == SANDBOX_END_OOM);
        if (s->channel) {
                init_channel_close(s->channel);
                s->channel = NULL;
        }
        store_state(s);
        log_info("sandbox %s stopped: %s%s", s->id, end_reason_name(reason),
                 s->daemon->shutting_down ? " (shutdown)" : "");
        if (s->create_hold) {
                struct moat_error error = {.kind = s->daemon->shutting_down ? MOAT_ERROR_UNAVAILABLE
                                                                            : MOAT_ERROR_CONFLICT};
                snprintf(error.code, sizeof(error.code), "%s",
                         s->daemon->shutting_down ? "unavailable" : "sandbox_not_running");
                snprintf(error.message, sizeof(error.message), "sandbox %s stopped while it was created (%s)",
                         s->id, end_reason_name(reason));
                reply_create_failed(s, &error);
        }
        while (s->waiters)
                waiter_reply(s->waiters);
        if (!s->prune_timer)
                s->prune_timer = evtimer_new(s->daemon->base, on_prune, s);
        if (s->prune_timer)
                evtimer_add(s->prune_timer, &keep);
        start_teardown(s);
}

/* ---- teardown (worker) ---- */

struct teardown_job {
        struct sandbox *sandbox;
        struct moat_cell *cell;
        struct moat_net_sandbox *net;
        struct moat_error *err;
};

static void teardown_run(void *arg)
{
        struct teardown_job *job = arg;

        moat_cell_destroy(job->cell, &job->err);
        /* After the cell: no process is left to use the network. */
        moat_net_sandbox_destroy(job->net);
}

static void teardown_done(void *arg)
{
        struct teardown_job *job = arg;
        struct sandbox *s = job->sandbox;

        if (job->err) {
                log_warn("sandbox %s: teardown: %s", s->id, job->err->message);
                moat_error_free(job->err);
        } else {
                log_debug("sandbox %s torn down", s->id);
        }
        s->tearing_down = false;
        s->daemon->cell_count--;
        free(job);
        after_teardown(s);
        sandbox_unref(s);
}

static void start_teardown(struct sandbox *s)
{
        struct teardown_job *job;
        struct moat_error *err = NULL;

        if (!s->cell || s->tearing_down) {
                after_teardown(s);
                return;
        }
        job = calloc(1, sizeof(*job));
        if (!job)
                return; /* retried on the next stop path; the prune timer too */
        job->sandbox = s;
        job->cell = s->cell;
        job->net = s->net;
        moat_net_sandbox_stop(s->net); /* DNS and tunnels belong to the loop */
        s->cell = NULL; /* the worker owns it now */
        s->net = NULL;
        s->tearing_down = true;
        sandbox_ref(s);
        if (worker_pool_submit(s->daemon->workers, teardown_run, teardown_done, job, &err) < 0) {
                log_warn("sandbox %s: %s", s->id, err->message);
                moat_error_free(err);
                s->cell = job->cell;
                s->net = job->net;
                s->tearing_down = false;
                free(job);
                sandbox_unref(s);
        }
}

/* ---- init channel ---- */

static void init_gone(struct sandbox *s, const char *why)
{
        enum sandbox_end_reason reason = SANDBOX_END_ERROR;

        if (s->state == SANDBOX_STOPPED)
                return;
        /* Init killed by SIGKILL while the cgroup counted an OOM kill: the
         * OOM killer took PID 1 (and with it the sandbox). */
        if (s->cell && moat_cell_try_reap(s->cell) && WIFSIGNALED(s->cell->exit_status) &&
            WTERMSIG(s->cell->exit_status) == SIGKILL && sandbox_oom_kills(s) > 0)
                reason = SANDBOX_END_OOM;
        log_warn("sandbox %s: %s", s->id, why);
        sandbox_stop(s, reason, false, 0);
}

static void on_init_exit(evutil_socket_t fd, short what, void *arg)
{
        init_gone(arg, "init exited");
}

static void on_channel_closed(void *arg, const char *why)
{
        struct sandbox *s = arg;

        s->channel = NULL; /* it frees itself */
        init_gone(s, why);
}

static void protocol_violation(struct sandbox *s, const char *what)
{
        log_warn("sandbox %s: protocol violation: %s", s->id, what);
        if (s->channel) {
                init_channel_close(s->channel);
                s->channel = NULL;
        }
        sandbox_stop(s, SANDBOX_END_ERROR, false, 0);
}

static void reply_created(struct sandbox *s)
{
        struct api_hold *hold = s->create_hold;

        s->create_hold = NULL;
        if (hold) {
                api_hold_reply_json(hold, 201, sandbox_to_json(s));
        } else if (s->create_abandoned) {
                /* The client hung up before it learnt the id (Ctrl-C in `moat
                 * run`, a client-side timeout): nobody holds this sandbox, so
                 * it would only burn its limits until its timeout. */
                log_info("sandbox %s: its creator hung up; deleting it", s->id);
                s->delete_requested = true;
                sandbox_stop(s, SANDBOX_END_TERMINATED, false, 0);
        }
}

static void on_entrypoint_spawned(struct exec *exec, const struct moat_error *error, void *arg)
{
        struct sandbox *s = arg;

        if (!error) {
                log_info("sandbox %s running (entrypoint %s pid %u)", s->id, exec->id, exec->pid);
                reply_created(s);
                return;
        }
        /* The client asked for a sandbox around this process: without it
         * the sandbox has no reason to exist. */
        s->entrypoint = NULL;
        s->delete_requested = true;
        reply_create_failed(s, error);
        if (s->state != SANDBOX_STOPPED)
                sandbox_stop(s, SANDBOX_END_ERROR, false, 0);
}

static void on_lifetime_expired(evutil_socket_t fd, short what, void *arg)
{
        sandbox_stop(arg, SANDBOX_END_TIMEOUT, false, 0);
}

static void arm_idle(struct sandbox *s, int64_t delay_ms)
{
        struct timeval tv = {.tv_sec = delay_ms / 1000, .tv_usec = (delay_ms % 1000) * 1000};

        evtimer_add(s->idle_timer, &tv);
}

static void on_idle_check(evutil_socket_t fd, short what, void *arg)
{
        struct sandbox *s = arg;
        int64_t idle_ms = (int64_t)s->config.idle_timeout_s * 1000, since = moatd_now_ms() - s->last_activity;

        if (s->state != SANDBOX_RUNNING)
                return;
        /* Running execs are activity: a long build is not idle. */
        if (s->live_exec_count > 0)
                return arm_idle(s, idle_ms);
        if (since >= idle_ms)
                return sandbox_stop(s, SANDBOX_END_TIMEOUT, false, 0);
        arm_idle(s, idle_ms - since);
}

void sandbox_touch(struct sandbox *s)
{
        s->last_activity = moatd_now_ms();
}

static void on_hello(void *arg, uint32_t version, uint32_t live_processes)
{
        struct sandbox *s = arg;
        int64_t remaining = s->expires_at - moatd_now_ms();
        struct timeval tv;

        if (s->state != SANDBOX_CREATING)
                return;
        if (version != MOAT_PROTOCOL_VERSION)
                return protocol_violation(s, "init speaks another protocol version");
        if (s->hello_timer)
                evtimer_del(s->hello_timer);
        s->state = SANDBOX_RUNNING;
        sandbox_touch(s);
        store_state(s);
        if (s->cell) {
                const struct moat_cell_timings *t = &s->cell->timings;
                log_debug("sandbox %s created in %.2f ms: queued %.2f, network %.2f, cgroups %.2f, set-up %.2f, "
                          "child %.2f (parent's half %.2f), confirm %.2f, init hello %.2f",
                          s->id, (monotonic_us() - s->create_started_us) / 1e3,
                          (s->cell_started_us - s->create_started_us) / 1e3, s->net_us / 1e3, t->cgroup_us / 1e3,
                          t->setup_us / 1e3, t->child_us / 1e3, t->parent_half_us / 1e3, t->confirm_us / 1e3,
                          (monotonic_us() - s->cell_done_us) / 1e3);
        }
        if (remaining < 0)
                remaining = 0;
        tv = (struct timeval){.tv_sec = remaining / 1000, .tv_usec = (remaining % 1000) * 1000};
        s->lifetime_timer = evtimer_new(s->daemon->base, on_lifetime_expired, s);
        if (s->lifetime_timer)
                evtimer_add(s->lifetime_timer, &tv);
        if (s->config.idle_timeout_s) {
                s->idle_timer = evtimer_new(s->daemon->base, on_idle_check, s);
                if (s->idle_timer)
                        arm_idle(s, (int64_t)s->config.idle_timeout_s * 1000);
        }
        if (s->config.entrypoint) {
                struct exec_request request = {.argv = s->config.entrypoint};
                struct moat_error *err = NULL;
                s->entrypoint = exec_start(s, &request, on_entrypoint_spawned, s, &err);
                if (!s->entrypoint) {
                        s->delete_requested = true;
                        reply_create_failed(s, err);
                        moat_error_free(err);
                        sandbox_stop(s, SANDBOX_END_ERROR, false, 0);
                }
                return;
        }
        log_info("sandbox %s running", s->id);
        reply_created(s);
}

static void on_spawned(void *arg, uint32_t cookie, uint32_t pid)
{
        exec_on_spawned(arg, cookie, pid);
}

static void on_spawn_failed(void *arg, uint32_t cookie, int errno_value, const char *message)
{
        exec_on_spawn_failed(arg, cookie, errno_value, message);
}

static void on_output(void *arg, uint32_t pid, int stream, const uint8_t *data, size_t length)
{
        if (exec_on_output(arg, pid, stream, data, length) < 0)
                protocol_violation(arg, "output beyond credit or for an unknown process");
}

static void on_exited(void *arg, uint32_t pid, int32_t exit_code, int32_t signal)
{
        exec_on_exited(arg, pid, exit_code, signal);
}

static void on_stdin_credit(void *arg, uint32_t pid, uint32_t bytes)
{
        exec_on_stdin_credit(arg, pid, bytes);
}

static const struct init_channel_handlers channel_handlers = {
        .hello = on_hello,
        .spawned = on_spawned,
        .spawn_failed = on_spawn_failed,
        .output = on_output,
        .exited = on_exited,
        .stdin_credit = on_stdin_credit,
        .closed = on_channel_closed,
};

/* ---- create ---- */

/* Everything the worker touches is in the job, never in the sandbox, which
 * belongs to the loop thread. The config's strings point into the sandbox's
 * request, which nobody changes after creation. */
struct create_job {
        struct sandbox *sandbox;
        struct moat_cell_runtime *runtime;
        struct moat_cell_config config;
        char lowers[MOAT_CELL_LOWER_MAX][PATH_MAX];
        char volume_sources[MOAT_CELL_BIND_MAX][PATH_MAX]; /* each volume's data dir */
        struct moat_net *net_runtime;
        const struct net_policy *policy; /* the sandbox's request: nobody changes it while the job runs */
        struct moat_net_sandbox *net;
        struct moat_cell *cell;
        int control_fd;
        struct moat_error *err;
};

static void create_run(void *arg)
{
        struct create_job *job = arg;
        job->sandbox->cell_started_us = monotonic_us();
        struct moat_cell *cell = NULL;
        int fd;

        if (moat_net_sandbox_create(job->net_runtime, job->policy, &job->net, &job->err) < 0)
                return;
        job->sandbox->net_us = (uint32_t)(monotonic_us() - job->sandbox->cell_started_us);
        job->config.join_netns = true;
        job->config.netns_fd = moat_net_sandbox_netns_fd(job->net);
        if (moat_cell_create(job->runtime, &job->config, &cell, &job->err) < 0)
                goto fail;
        fd = init_channel_connect(cell->control_path, &job->err);
        if (fd < 0) {
                moat_cell_destroy(cell, NULL);
                goto fail;
        }
        job->cell = cell;
        job->control_fd = fd;
        return;
fail:
        moat_net_sandbox_destroy(job->net);
        job->net = NULL;
}

static void create_done(void *arg)
{
        struct create_job *job = arg;
        struct sandbox *s = job->sandbox;
        struct moat_error *err = NULL;
        int control_fd = job->control_fd;

        s->create_in_flight = false;
        s->cell_done_us = monotonic_us();
        if (!job->cell) {
                log_warn("sandbox %s: create: %s", s->id, job->err ? job->err->message : "failed");
                /* The client gets the error and no id: forget the record. */
                s->delete_requested = true;
                if (job->err)
                        reply_create_failed(s, job->err);
                moat_error_free(job->err);
                free(job);
                sandbox_stop(s, SANDBOX_END_ERROR, false, 0);
                after_teardown(s);
                sandbox_unref(s);
                return;
        }
        s->cell = job->cell;
        s->net = job->net;
        free(job);
        s->daemon->cell_count++;
        if (s->state == SANDBOX_STOPPED) {
                /* Deleted (or shutdown) while it was being built. */
                close(control_fd);
                moat_cell_kill(s->cell);
                start_teardown(s);
                sandbox_unref(s);
                return;
        }
        s->pidfd_event = event_new(s->daemon->base, s->cell->pidfd, EV_READ, on_init_exit, s);
        s->channel = init_channel_new(s->daemon->base, control_fd, &channel_handlers, s, &err);
        if (!s->pidfd_event || !s->channel || event_add(s->pidfd_event, NULL) < 0 ||
            moat_net_sandbox_start(s->net, s->config.ports, s->config.port_count, &err) < 0) {
                log_warn("sandbox %s: %s", s->id, err ? err->message : "cannot watch init");
                s->delete_requested = true;
                if (err)
                        reply_create_failed(s, err);
                moat_error_free(err);
                sandbox_stop(s, SANDBOX_END_ERROR, false, 0);
                sandbox_unref(s);
                return;
        }
        {
                uint8_t version[4];
                moat_put_u32(version, MOAT_PROTOCOL_VERSION);
                init_channel_send(s->channel, MOAT_FRAME_HELLO, 0, 0, 0, version, sizeof(version));
        }
        s->hello_timer = evtimer_new(s->daemon->base, on_hello_timeout, s);
        if (s->hello_timer)
                evtimer_add(s->hello_timer, &(struct timeval){.tv_sec = SANDBOX_HELLO_TIMEOUT_S});
        sandbox_unref(s);
}

static void on_hello_timeout(evutil_socket_t fd, short what, void *arg)
{
        struct sandbox *s = arg;
        struct moat_error error = {.kind = MOAT_ERROR_TIMEOUT, .code = "timeout"};

        if (s->state != SANDBOX_CREATING)
                return;
        /* init never said HELLO: without it the sandbox is useless, and
         * its lifetime timer (armed at HELLO) would never end it. */
        log_warn("sandbox %s: init did not answer HELLO within %d s", s->id, SANDBOX_HELLO_TIMEOUT_S);
        snprintf(error.message, sizeof(error.message), "init of sandbox %s did not start within %d s", s->id,
                 SANDBOX_HELLO_TIMEOUT_S);
        s->delete_requested = true;
        reply_create_failed(s, &error);
        sandbox_stop(s, SANDBOX_END_ERROR, false, 0);
}

static bool host_id_base_used(struct moatd *daemon, uint32_t base)
{
        for (struct sandbox *s = daemon->sandboxes; s; s = s->next)
                if (s->host_id_base == base && (s->state != SANDBOX_STOPPED || s->cell || s->tearing_down ||
                                        s->create_in_flight))
                        return true;
        return false;
}

/* A random free 65536-id slot: two sandboxes never share a host uid, and a
 * sandbox's ids are not predictable from its creation order. */
static int pick_host_id_base(struct moatd *daemon, uint32_t *ret_base, struct moat_error **err)
{
        const unsigned long long slots = (HOST_ID_END - HOST_ID_FIRST) / SANDBOX_ID_COUNT;

        for (int attempt = 0; attempt < 64; attempt++) {
                unsigned long long slot;
                if (moat_random_below(slots, &slot, err) < 0)
                        return -1;
                uint32_t base = HOST_ID_FIRST + (uint32_t)slot * SANDBOX_ID_COUNT;
                if (!host_id_base_used(daemon, base)) {
                        *ret_base = base;
                        return 0;
                }
        }
        return moat_error_set(err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL, "no free host id range");
}

static void on_create_client_gone(void *arg)
{
        struct sandbox *s = arg;

        s->create_hold = NULL;
        s->create_abandoned = true; /* deleted once built: see reply_created() */
}

/* The image's config under the request's: its env (the request's keys win),
 * its workdir and user where the request names none. */
static int apply_image_config(struct sandbox *s, const struct image_record *image, struct moat_error **err)
{
        json_t *env = json_object_get(image->config, "env"), *entry;
        const char *workdir = image_config_string(image, "workdir"), *user = image_config_string(image, "user");
        size_t index;

        json_array_foreach(env, index, entry) {
                const char *text = json_string_value(entry), *equals = text ? strchr(text, '=') : NULL;
                char key[256];

                if (!equals || (size_t)(equals - text) >= sizeof(key))
                        continue;
                memcpy(key, text, (size_t)(equals - text));
                key[equals - text] = '\0';
                if (request_env_key_valid(key) && !json_object_get(s->config.env, key))
                        json_object_set_new(s->config.env, key, json_string(equals + 1));
        }
        /* Docker's rule: the command is Entrypoint followed by Cmd. */
        if (s->config.image_command) {
                json_t *argv = json_array(), *part;
                static const char *const keys[] = {"entrypoint", "cmd"};

                for (int k = 0; argv && k < 2; k++)
                        json_array_foreach(json_object_get(image->config, keys[k]), index, part)
                                if (json_is_string(part))
                                        json_array_append(argv, part);
                if (!argv || json_array_size(argv) == 0) {
                        json_decref(argv);
                        return moat_error_invalid(err, "image `%s` has no Entrypoint or Cmd to run", s->config.image);
                }
                s->config.entrypoint = argv;
        }
        if (!s->config.workdir)
                s->config.workdir = strdup(workdir && workdir[0] == '/' ? workdir : "/");
        if (!s->config.user)
                s->config.user = strdup(user && user[0] ? user : "root");
        if (!s->config.workdir || !s->config.user)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "strdup");
        return 0;
}

/* Each requested volume name to its data directory, now: a volume deleted
 * later cannot be (it is in use from here on, see sandbox_volume_in_use). */
static int resolve_volumes(struct sandbox *s, struct create_job *job, struct moat_error **err)
{
        for (size_t i = 0; i < s->config.volume_count; i++) {
                const struct volume *volume;

                if (!volume_name_valid(s->config.volumes[i].name))
                        return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "invalid_volume_name",
                                              "`%s` is not a volume name", s->config.volumes[i].name);
                volume = volume_find(s->config.volumes[i].name, err);
                if (!volume)
                        return -1;
                snprintf(job->volume_sources[i], sizeof(job->volume_sources[i]), "%s", volume->data_path);
        }
        return 0;
}

void sandbox_create(struct moatd *daemon, struct sandbox_request *config, struct evhttp_request *request)
{
        struct moat_error *err = NULL;
        struct sandbox *s = NULL;
        struct create_job *job = NULL;
        struct store_sandbox_row row;
        _cleanup_free_ char *config_text = NULL, *tags_text = NULL;
        struct image_record *image;
        unsigned lower_count = 0;
        bool host_usr = false;

        if (daemon->live_count >= daemon->options.max_sandboxes) {
                moat_error_set(&err, MOAT_ERROR_LIMIT_EXCEEDED, 0, NULL, "%u sandboxes are running already",
                               daemon->live_count);
                goto fail;
        }
        job = calloc(1, sizeof(*job));
        s = calloc(1, sizeof(*s));
        if (!job || !s) {
                moat_error_set(&err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate sandbox");
                goto fail;
        }
        s->daemon = daemon;
        s->refs = 1;
        s->create_started_us = monotonic_us();
        s->config = *config;
        memset(config, 0, sizeof(*config));
        image = image_store_find(daemon, s->config.image, &err);
        if (!image || image_store_lowers(daemon, image, job->lowers, &lower_count, &host_usr, &err) < 0 ||
            apply_image_config(s, image, &err) < 0 || moat_id_generate("sb-", s->id, &err) < 0 ||
            pick_host_id_base(daemon, &s->host_id_base, &err) < 0 ||
            resolve_volumes(s, job, &err) < 0)
                goto fail;
        snprintf(s->image_id, sizeof(s->image_id), "%s", image->id);
        s->shell = strdup(image_store_shell(daemon, image));
        s->state = SANDBOX_CREATING;
        s->created_at = moatd_now_ms();
        s->expires_at = s->created_at + (int64_t)s->config.timeout_s * 1000;
        config_text = config_json(s);
        tags_text = json_dumps(s->config.tags, JSON_COMPACT);
        if (!s->shell || !config_text || !tags_text) {
                moat_error_set(&err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate sandbox");
                goto fail;
        }
        fill_row(s, &row);
        row.config_json = config_text;
        row.tags_json = tags_text;
        if (store_insert_sandbox(daemon->store, &row, &err) < 0)
                goto fail;

        job->sandbox = s;
        job->runtime = daemon->runtime;
        job->net_runtime = daemon->net;
        job->policy = &s->config.network;
        job->control_fd = -1;
        job->config = (struct moat_cell_config){
                .id = s->id,
                .hostname = "sandbox",
                .lower_count = lower_count,
                .bind_host_usr = host_usr,
                .memory_bytes = (uint64_t)s->config.memory_mib << 20,
                .disk_bytes = (uint64_t)s->config.disk_mib << 20,
                .pids_max = s->config.pids,
                .cpu_millis = (uint32_t)(s->config.cpu * 1000 + 0.5),
                .host_id_base = s->host_id_base,
                .id_count = SANDBOX_ID_COUNT,
        };
        for (unsigned i = 0; i < lower_count; i++)
                job->config.lowers[i] = job->lowers[i];
        for (size_t i = 0; i < s->config.volume_count; i++) {
                job->config.binds[i] = (struct moat_cell_bind){.source_dir = job->volume_sources[i],
                                                               .target = s->config.volumes[i].target,
                                                               .read_only = s->config.volumes[i].read_only};
                job->config.bind_count++;
        }
        s->create_hold = api_hold_new(daemon, request, on_create_client_gone, s);
        if (!s->create_hold) {
                store_delete_sandbox(daemon->store, s->id, NULL);
                moat_error_set(&err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate hold");
                goto fail;
        }
        /* Into the list (its reference is the initial one). */
        s->in_list = true;
        s->next = daemon->sandboxes;
        if (daemon->sandboxes)
                daemon->sandboxes->prev = s;
        daemon->sandboxes = s;
        daemon->sandbox_count++;
        daemon->live_count++;
        sandbox_ref(s); /* for the job */
        s->create_in_flight = true;
        if (worker_pool_submit(daemon->workers, create_run, create_done, job, &err) < 0) {
                s->create_in_flight = false;
                sandbox_unref(s);
                free(job);
                s->delete_requested = true;
                reply_create_failed(s, err);
                moat_error_free(err);
                sandbox_stop(s, SANDBOX_END_ERROR, false, 0);
                return;
        }
        log_debug("sandbox %s creating (image %s, host ids %#x)", s->id, s->config.image, s->host_id_base);
        return;
fail:
        api_reply_error(request, err);
        moat_error_free(err);
        free(job);
        if (s) {
                sandbox_request_clear(&s->config);
                free(s->shell);
                free(s);
        }
}

/* ---- delete ---- */

static void on_delete_gone(void *arg)
{
        struct sandbox_delete *d = arg;
        struct sandbox_delete **p;

        for (p = &d->sandbox->deletes; *p; p = &(*p)->next)
                if (*p == d) {
                        *p = d->next;
                        break;
                }
        free(d);
}

void sandbox_delete(struct sandbox *s, struct evhttp_request *request)
{
        struct sandbox_delete *d = calloc(1, sizeof(*d));

        if (!d)
                return api_reply_new_error(request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        d->sandbox = s;
        d->hold = api_hold_new(s->daemon, request, on_delete_gone, d);
        if (!d->hold) {
                free(d);
                return api_reply_new_error(request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
        }
        d->next = s->deletes;
        s->deletes = d;
        s->delete_requested = true;
        sandbox_ref(s);
        sandbox_stop(s, SANDBOX_END_TERMINATED, false, 0);
        after_teardown(s);
        sandbox_unref(s);
}

/* ---- start-up and shutdown ---- */

static int load_row(const struct store_sandbox_row *row, void *arg)
{
        struct moatd *daemon = arg;
        struct moat_error *err = NULL;
        struct sandbox *s;
        int64_t now = moatd_now_ms();
        bool was_live = strcmp(row->state, "stopped") != 0;
        json_t *config;
        char *text;

        if (was_live) {
                /* Re-adoption comes later; for now nothing of it may linger. */
                if (moat_cell_reap_orphan(daemon->runtime, row->id, &err) < 0) {
                        log_warn("sandbox %s: reap leftovers: %s", row->id, err->message);
                        moat_error_free(err);
                        err = NULL;
                }
                log_info("sandbox %s of a previous moatd reaped", row->id);
        }
        if (!was_live && row->ended_at && row->ended_at + SANDBOX_RECORD_KEEP_MS <= now) {
                store_delete_sandbox(daemon->store, row->id, NULL);
                return 0;
        }
        s = calloc(1, sizeof(*s));
        if (!s)
                return -1;
        config = json_loads(row->config_json, 0, NULL);
        text = config ? json_dumps(config, JSON_COMPACT) : NULL;
        if (config)
                json_decref(config);
        /* The stored config was validated once; parse it with the same rules
         * (any core count) so the in-memory record is well-formed. */
        if (!text || !moat_id_valid("sb-", row->id) ||
            request_parse_sandbox(text, strlen(text), 1e9, &s->config, &err) < 0) {
                log_warn("sandbox %s: unreadable record dropped", row->id);
                moat_error_free(err);
                free(text);
                free(s);
                store_delete_sandbox(daemon->store, row->id, NULL);
                return 0;
        }
        free(text);
        s->daemon = daemon;
        s->refs = 1;
        snprintf(s->id, sizeof(s->id), "%s", row->id);
        s->state = SANDBOX_STOPPED;
        s->end_reason = was_live ? SANDBOX_END_ERROR : end_reason_from_name(row->end_reason);
        s->has_exit_code = !was_live && row->has_exit_code;
        s->exit_code = row->exit_code;
        s->host_id_base = (uint32_t)row->host_id_base;
        s->created_at = row->created_at;
        s->ended_at = was_live || !row->ended_at ? now : row->ended_at;
        s->expires_at = row->expires_at;
        s->shell = strdup("sh");
        if (was_live)
                store_state(s);
        s->in_list = true;
        s->next = daemon->sandboxes;
        if (daemon->sandboxes)
                daemon->sandboxes->prev = s;
        daemon->sandboxes = s;
        daemon->sandbox_count++;
        s->prune_timer = evtimer_new(daemon->base, on_prune, s);
        if (s->prune_timer) {
                int64_t left = s->ended_at + SANDBOX_RECORD_KEEP_MS - now;
                struct timeval tv = {.tv_sec = left > 0 ? left / 1000 : 0};
                evtimer_add(s->prune_timer, &tv);
        }
        return 0;
}

int sandbox_load_records(struct moatd *daemon, struct moat_error **err)
{
        if (store_for_each_sandbox(daemon->store, load_row, daemon, err) < 0)
                return -1;
        /* After the reaping above: no sandbox of a crashed moatd still
         * writes to a volume while it is re-attached. */
        return volume_registry_load(daemon, err);
}

void sandbox_stop_all(struct moatd *daemon)
{
        struct sandbox *s, *next;

        for (s = daemon->sandboxes; s; s = next) {
                next = s->next;
                sandbox_stop(s, SANDBOX_END_TERMINATED, false, 0);
        }
}

bool sandbox_image_in_use(struct moatd *daemon, const char *image_id)
{
        for (struct sandbox *s = daemon->sandboxes; s; s = s->next)
                if (strcmp(s->image_id, image_id) == 0 &&
                    (s->state != SANDBOX_STOPPED || s->cell || s->tearing_down || s->create_in_flight))
                        return true;
        return false;
}

void sandbox_free_all(struct moatd *daemon)
{
        while (daemon->sandboxes)
                list_remove(daemon->sandboxes);
        sandbox_graveyard_flush(daemon);
        /* Every sandbox is gone: unmount the volumes (clean exit). */
        volume_registry_close(daemon);
}

bool sandbox_volume_in_use(struct moatd *daemon, const char *name)
{
        for (struct sandbox *s = daemon->sandboxes; s; s = s->next) {
                if (s->state == SANDBOX_STOPPED && !s->cell && !s->tearing_down && !s->create_in_flight)
                        continue;
                for (size_t i = 0; i < s->config.volume_count; i++)
                        if (strcmp(s->config.volumes[i].name, name) == 0)
                                return true;
        }
        return false;
}
