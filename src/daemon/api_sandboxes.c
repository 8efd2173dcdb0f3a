/* /v1/health and /v1/sandboxes[/{id}[/wait|/network|/metrics]]. */
#include <event2/keyvalq_struct.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cell/cell.h"
#include "config.h"
#include "request.h"
#include "sandbox.h"

void api_health(struct api_call *call)
{
        struct moatd *daemon = call->daemon;

        api_reply_json(call->request, 200,
                       json_pack("{s:b,s:s,s:s,s:i}", "ok", 1, "version", MOAT_VERSION, "cgroup",
                                 daemon->runtime ? moat_cell_runtime_cgroup_version(daemon->runtime) : "none",
                                 "sandboxes", (int)daemon->live_count));
}

void api_sandboxes_create(struct api_call *call)
{
        struct sandbox_request config;
        struct moat_error *err = NULL;
        size_t length;
        const char *body = api_body(call->request, &length);

        if (request_parse_sandbox(body, length, call->daemon->host_cores, &config, &err) < 0) {
                api_reply_error(call->request, err);
                moat_error_free(err);
                return;
        }
        sandbox_create(call->daemon, &config, call->request);
        sandbox_request_clear(&config);
}

static bool tags_match(const struct sandbox *s, struct evkeyvalq *query, struct moat_error **err)
{
        struct evkeyval *pair;

        TAILQ_FOREACH(pair, query, next) {
                char *key = NULL, *value = NULL;
                json_t *have;
                bool match;

                if (strcmp(pair->key, "tag") != 0)
                        continue;
                if (request_parse_tag_filter(pair->value, &key, &value, err) < 0)
                        return false;
                have = json_object_get(s->config.tags, key);
                match = have && strcmp(json_string_value(have), value) == 0;
                free(key);
                free(value);
                if (!match)
                        return false;
        }
        return true;
}

void api_sandboxes_list(struct api_call *call)
{
        const char *state = api_query(call, "state");
        struct moat_error *err = NULL;
        struct evkeyval *pair;
        json_t *list = json_array();

        if (state && strcmp(state, "creating") != 0 && strcmp(state, "running") != 0 &&
            strcmp(state, "stopped") != 0) {
                json_decref(list);
                return api_reply_new_error(call->request, MOAT_ERROR_INVALID_ARGUMENT, NULL,
                                           "`state` must be creating, running or stopped");
        }
        TAILQ_FOREACH(pair, &call->query, next) {
                if (strcmp(pair->key, "tag") != 0 && strcmp(pair->key, "state") != 0) {
                        json_decref(list);
                        return api_reply_new_error(call->request, MOAT_ERROR_INVALID_ARGUMENT, NULL,
                                                   "unknown query parameter `%.64s`", pair->key);
                }
                /* Validate every filter up front, whether or not a sandbox exists. */
                if (strcmp(pair->key, "tag") == 0) {
                        char *key = NULL, *value = NULL;
                        int r = request_parse_tag_filter(pair->value, &key, &value, &err);
                        free(key);
                        free(value);
                        if (r < 0) {
                                json_decref(list);
                                api_reply_error(call->request, err);
                                moat_error_free(err);
                                return;
                        }
                }
        }
        for (struct sandbox *s = call->daemon->sandboxes; s; s = s->next) {
                if (state && strcmp(state, sandbox_state_name(s->state)) != 0)
                        continue;
                if (!tags_match(s, &call->query, &err)) {
                        if (err) {
                                json_decref(list);
                                api_reply_error(call->request, err);
                                moat_error_free(err);
                                return;
                        }
                        continue;
                }
                json_array_append_new(list, sandbox_to_json(s));
        }
        api_reply_json(call->request, 200, json_pack("{s:o}", "sandboxes", list));
}

static struct sandbox *find_or_reply(struct api_call *call)
{
        struct sandbox *s = sandbox_find(call->daemon, call->params[0]);

        if (!s)
                api_reply_new_error(call->request, MOAT_ERROR_NOT_FOUND, NULL, "no sandbox `%.64s`", call->params[0]);
        else
                sandbox_touch(s);
        return s;
}

void api_sandboxes_get(struct api_call *call)
{
        struct sandbox *s = find_or_reply(call);

        if (s)
                api_reply_json(call->request, 200, sandbox_to_json(s));
}

void api_sandboxes_delete(struct api_call *call)
{
        struct sandbox *s = find_or_reply(call);

        if (s)
                sandbox_delete(s, call->request);
}

void api_sandboxes_wait(struct api_call *call)
{
        double seconds;
        struct sandbox *s;

        if (api_query_timeout(call, &seconds) < 0)
                return;
        s = find_or_reply(call);
        if (s)
                sandbox_wait(s, call->request, seconds);
}

void api_sandboxes_set_network(struct api_call *call)
{
        struct net_policy policy;
        struct moat_error *err = NULL;
        size_t length;
        const char *body = api_body(call->request, &length);
        struct sandbox *s;

        if (request_parse_network(body, length, &policy, &err) < 0) {
                api_reply_error(call->request, err);
                moat_error_free(err);
                return;
        }
        s = find_or_reply(call);
        if (s && sandbox_set_network(s, &policy, &err) < 0) {
                api_reply_error(call->request, err);
                moat_error_free(err);
        } else if (s) {
                api_reply_json(call->request, 200, sandbox_to_json(s));
        }
        net_policy_clear(&policy);
}

void api_sandboxes_metrics(struct api_call *call)
{
        struct sandbox *s = find_or_reply(call);

        if (s)
                api_reply_json(call->request, 200, sandbox_metrics_json(s));
}
