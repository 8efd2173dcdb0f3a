/* /v1/sandboxes/{id}/execs..., /run. */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "exec.h"
#include "request.h"
#include "sandbox.h"

static struct sandbox *find_sandbox(struct api_call *call)
{
        struct sandbox *s = sandbox_find(call->daemon, call->params[0]);

        if (!s)
                api_reply_new_error(call->request, MOAT_ERROR_NOT_FOUND, NULL, "no sandbox `%.64s`", call->params[0]);
        else
                sandbox_touch(s);
        return s;
}

static struct exec *find_exec(struct api_call *call)
{
        struct sandbox *s = find_sandbox(call);
        struct exec *e;

        if (!s)
                return NULL;
        e = exec_find(s, call->params[1]);
        if (!e)
                api_reply_new_error(call->request, MOAT_ERROR_NOT_FOUND, NULL, "no exec `%.64s` in %s",
                                    call->params[1], s->id);
        return e;
}

static void on_exec_spawned(struct exec *exec, const struct moat_error *error, void *arg)
{
        struct api_hold *hold = arg;

        if (!hold)
                return; /* the client left while init started the process */
        if (error)
                api_hold_reply_error(hold, error);
        else
                api_hold_reply_json(hold, 201, exec_to_json(exec));
}

static void on_exec_create_gone(void *arg)
{
        struct exec *exec = arg;

        exec->spawn_done_arg = NULL;
}

void api_exec_create(struct api_call *call)
{
        struct sandbox *s = find_sandbox(call);
        struct exec_request request;
        struct moat_error *err = NULL;
        struct exec *exec;
        struct api_hold *hold;
        size_t length;
        const char *body;

        if (!s)
                return;
        body = api_body(call->request, &length);
        if (request_parse_exec(body, length, false, s->shell, &request, &err) < 0)
                goto fail;
        exec = exec_start(s, &request, on_exec_spawned, NULL, &err);
        exec_request_clear(&request);
        if (!exec)
                goto fail;
        hold = api_hold_new(call->daemon, call->request, on_exec_create_gone, exec);
        if (!hold) {
                api_reply_new_error(call->request, MOAT_ERROR_INTERNAL, NULL, "out of memory");
                return;
        }
        exec->spawn_done_arg = hold;
        return;
fail:
        api_reply_error(call->request, err);
        moat_error_free(err);
}

void api_exec_list(struct api_call *call)
{
        struct sandbox *s = find_sandbox(call);
        json_t *list;

        if (!s)
                return;
        list = json_array();
        for (struct exec *e = s->execs; e; e = e->next)
                if (e->state != EXEC_STARTING)
                        json_array_append_new(list, exec_to_json(e));
        api_reply_json(call->request, 200, json_pack("{s:o}", "execs", list));
}

void api_exec_get(struct api_call *call)
{
        struct exec *e = find_exec(call);

        if (e)
                api_reply_json(call->request, 200, exec_to_json(e));
}

void api_exec_output(struct api_call *call)
{
        struct exec *e = find_exec(call);

        if (e)
                exec_attach_reader(e, call->request, api_query(call, "stream"));
}

void api_exec_stdin(struct api_call *call)
{
        struct exec *e = find_exec(call);
        size_t length;
        const char *body;

        if (!e)
                return;
        body = api_body(call->request, &length);
        exec_write_stdin(e, call->request, body, length);
}

void api_exec_stdin_close(struct api_call *call)
{
        struct exec *e = find_exec(call);

        if (e)
                exec_close_stdin(e, call->request);
}

void api_exec_signal(struct api_call *call)
{
        struct exec *e = find_exec(call);
        struct moat_error *err = NULL;
        size_t length;
        const char *body;
        int signal;

        if (!e)
                return;
        body = api_body(call->request, &length);
        if (request_parse_signal(body, length, &signal, &err) < 0) {
                api_reply_error(call->request, err);
                moat_error_free(err);
                return;
        }
        exec_send_signal(e, call->request, signal);
}

void api_exec_wait(struct api_call *call)
{
        double seconds;
        struct exec *e;

        if (api_query_timeout(call, &seconds) < 0)
                return;
        e = find_exec(call);
        if (e)
                exec_wait(e, call->request, seconds);
}

void api_exec_run(struct api_call *call)
{
        struct sandbox *s = find_sandbox(call);
        struct exec_request request;
        struct moat_error *err = NULL;
        size_t length;
        const char *body;

        if (!s)
                return;
        body = api_body(call->request, &length);
        if (request_parse_exec(body, length, true, s->shell, &request, &err) < 0) {
                api_reply_error(call->request, err);
                moat_error_free(err);
                return;
        }
        exec_run(s, &request, call->request);
        exec_request_clear(&request);
}
