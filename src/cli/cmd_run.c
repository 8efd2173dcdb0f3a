/* moat run / create / exec / logs: the commands that start processes and
 * stream their output. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "common/cleanup.h"
#include "options.h"
#include "output.h"

#define STDIN_CHUNK (64u << 10)

/* The signal that interrupted us (SIGINT, SIGTERM, SIGHUP), or 0. The client
 * polls it so a blocking request returns within about a second. */
static volatile sig_atomic_t interrupted;

static void on_signal(int signal_number)
{
        interrupted = signal_number;
}

static void install_signal_handlers(struct moat_client *client)
{
        struct sigaction action = { .sa_handler = on_signal };

        /* No SA_RESTART: a blocked read of our stdin returns EINTR too. */
        sigemptyset(&action.sa_mask);
        sigaction(SIGINT, &action, NULL);
        sigaction(SIGTERM, &action, NULL);
        sigaction(SIGHUP, &action, NULL);
        /* A closed stdout (`moat run ... | head`) must end the stream with an
         * error from write(), not kill us before we delete the sandbox. */
        signal(SIGPIPE, SIG_IGN);
        moat_client_set_cancel_flag(client, &interrupted);
}

static void json_print_or_id(json_t *object, bool json)
{
        if (json)
                moat_output_json(object, stdout);
        else
                printf("%s\n", json_string_value(json_object_get(object, "id")) ?: "");
}

struct attach_state {
        struct moat_exit_status status;
        bool exited;
};

/* Set when our stdout or stderr reader went away (`moat exec ... | head`). */
static bool output_closed;

static int attach_on_data(void *userdata, enum moat_output_stream stream, const unsigned char *data, size_t length)
{
        if (moat_output_write_all(stream == MOAT_OUTPUT_STDERR ? STDERR_FILENO : STDOUT_FILENO, data, length) < 0) {
                output_closed = errno == EPIPE;
                return -1;
        }
        return 0;
}

static void attach_on_exit(void *userdata, const struct moat_exit_status *status)
{
        struct attach_state *state = userdata;

        state->status = *status;
        state->exited = true;
}

/* Forwards our stdin to an exec started with "stdin": true, then closes it. */
struct stdin_forwarder {
        struct moat_client *client;
        char *stdin_path; /* .../execs/{id}/stdin */
        pthread_t thread;
        bool started;
};

/* POST one chunk. The daemon queues at most a few MiB the process has not
 * read yet and answers 429 beyond that: that is backpressure, so wait and
 * send the same chunk again rather than drop it. */
static int stdin_send(struct stdin_forwarder *forwarder, const char *data, size_t length)
{
        useconds_t delay = 1000;

        for (;;) {
                struct moat_error *err = NULL;

                if (moat_client_post_raw(forwarder->client, forwarder->stdin_path, data, length, NULL, &err) >= 0)
                        return 0;
                if (err->kind != MOAT_ERROR_LIMIT_EXCEEDED || interrupted) {
                        /* stdin_closed or a gone sandbox: the process does not
                         * want more. Anything else is worth a word. */
                        if (err->kind != MOAT_ERROR_CONFLICT && err->kind != MOAT_ERROR_NOT_FOUND)
                                fprintf(stderr, "moat: stdin: %s (%s)\n", err->message, err->code);
                        moat_error_free(err);
                        return -1;
                }
                moat_error_free(err);
                usleep(delay);
                if (delay < 100000)
                        delay *= 2;
        }
}

static void *stdin_forward(void *userdata)
{
        struct stdin_forwarder *forwarder = userdata;
        _cleanup_free_ char *close_path = NULL;
        _cleanup_free_ char *buffer = malloc(STDIN_CHUNK);
        struct moat_error *err = NULL;

        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
        if (!buffer || asprintf(&close_path, "%s/close", forwarder->stdin_path) < 0)
                return NULL;
        for (;;) {
                ssize_t length;

                /* Cancellable only while blocked on our stdin, never inside a
                 * request, so the join in exec_attach cannot leave curl half-done. */
                pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
                length = read(STDIN_FILENO, buffer, STDIN_CHUNK);
                pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);

                if (length < 0 && errno == EINTR) {
                        if (interrupted)
                                return NULL;
                        continue;
                }
                if (length <= 0)
                        break;
                if (stdin_send(forwarder, buffer, (size_t)length) < 0)
                        return NULL;
        }
        if (moat_client_post_raw(forwarder->client, close_path, NULL, 0, NULL, &err) < 0)
                moat_error_free(err);
        return NULL;
}

/* POST the exec, forward stdin if asked, stream its output to ours until it
 * exits. forward_signals: an interrupt is sent to the process (moat exec);
 * otherwise it ends the attach with code "interrupted" (moat run, whose
 * caller deletes the sandbox). */
static int exec_attach(struct moat_client *client, const char *sandbox_id, json_t *exec_body, bool interactive,
                       bool forward_signals, struct moat_exit_status *ret_status, char **ret_exec_id,
                       struct moat_error **err)
{
        _cleanup_free_ char *sandbox_segment = moat_client_escape_segment(sandbox_id);
        _cleanup_free_ char *exec_segment = NULL, *exec_path = NULL, *output_path = NULL, *signal_path = NULL;
        json_auto_t *exec = NULL;
        struct stdin_forwarder forwarder = { .client = client };
        struct attach_state state = { 0 };
        struct moat_output_handler handler = {
                .on_data = attach_on_data,
                .on_exit = attach_on_exit,
                .userdata = &state,
        };
        const char *exec_id;
        int reconnects = 0, r;

        if (!sandbox_segment)
                return moat_error_system(err, ENOMEM, "escape id");
        if (asprintf(&exec_path, "/v1/sandboxes/%s/execs", sandbox_segment) < 0)
                return moat_error_system(err, ENOMEM, "build path");
        if (moat_client_request(client, "POST", exec_path, exec_body, &exec, err) < 0)
                return -1;
        exec_id = json_string_value(json_object_get(exec, "id"));
        if (!exec_id)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, "bad_response", "exec response without an id");
        if (ret_exec_id && !(*ret_exec_id = strdup(exec_id)))
                return moat_error_system(err, ENOMEM, "copy exec id");
        exec_segment = moat_client_escape_segment(exec_id);
        if (!exec_segment || asprintf(&output_path, "%s/%s/output", exec_path, exec_segment) < 0 ||
            asprintf(&signal_path, "%s/%s/signal", exec_path, exec_segment) < 0)
                return moat_error_system(err, ENOMEM, "build path");

        if (interactive) {
                if (asprintf(&forwarder.stdin_path, "%s/%s/stdin", exec_path, exec_segment) < 0)
                        return moat_error_system(err, ENOMEM, "build path");
                forwarder.started = pthread_create(&forwarder.thread, NULL, stdin_forward, &forwarder) == 0;
        }

        for (;;) {
                struct moat_error *stream_error = NULL;

                r = moat_client_stream_output(client, output_path, &handler, &stream_error);
                if (r < 0 && output_closed) {
                        /* Nobody reads the output any more: the process would
                         * block on its full pipe forever (a client disconnect
                         * never kills it), so give it the SIGPIPE a local
                         * pipeline would. */
                        struct moat_error *signal_error = NULL;
                        json_auto_t *sigpipe_body = json_pack("{si}", "signal", SIGPIPE);

                        if (moat_client_request(client, "POST", signal_path, sigpipe_body, NULL, &signal_error) < 0)
                                moat_error_free(signal_error);
                        moat_error_free(stream_error);
                        r = moat_error_set(err, MOAT_ERROR_UNAVAILABLE, EPIPE, "output_closed", "write output");
                        break;
                }
                if (r < 0 && !interrupted && reconnects < 3 &&
                    (strcmp(stream_error->code, "transport") == 0 ||
                     strcmp(stream_error->code, "stream_truncated") == 0)) {
                        /* The connection was cut before the exit event (an idle
                         * timeout on the way, say). Output is delivered once, so
                         * reading again resumes where we were. */
                        moat_error_free(stream_error);
                        reconnects++;
                        continue;
                }
                if (r == 0 || !forward_signals || !interrupted || strcmp(stream_error->code, "interrupted") != 0) {
                        if (r < 0)
                                *err = stream_error;
                        break;
                }
                /* Ctrl-C in `moat exec` is for the process, like a terminal's;
                 * output is delivered once, so re-reading resumes where we were. */
                moat_error_free(stream_error);
                json_auto_t *signal_body = json_pack("{si}", "signal", (int)interrupted);
                interrupted = 0;
                struct moat_error *signal_error = NULL;
                if (moat_client_request(client, "POST", signal_path, signal_body, NULL, &signal_error) < 0)
                        moat_error_free(signal_error);
        }

        if (forwarder.started) {
                /* The process is gone; a read of our stdin may still block. */
                pthread_cancel(forwarder.thread);
                pthread_join(forwarder.thread, NULL);
        }
        free(forwarder.stdin_path);
        if (r < 0)
                return -1;
        *ret_status = state.status;
        return 0;
}

static void print_exit_json(const char *sandbox_id, const char *exec_id, const struct moat_exit_status *status)
{
        json_auto_t *object = json_pack("{ss ss si so sb sb}", "sandbox_id", sandbox_id, "exec_id", exec_id ?: "",
                                        "exit_code", status->exit_code, "signal",
                                        status->signal ? json_integer(status->signal) : json_null(),
                                        "timed_out", status->timed_out, "oom_killed", status->oom_killed);
        if (object)
                moat_output_json(object, stdout);
}

static const char create_options_help[] =
        "  -I, --image NAME     image (default: host)\n"
        "      --cpu N          CPU cores, may be fractional\n"
        "      --memory MiB     memory limit\n"
        "      --disk MiB       size of the private writable layer\n"
        "      --pids N         process limit\n"
        "      --timeout S      sandbox lifetime in seconds\n"
        "  -e, --env K=V        environment variable (repeatable)\n"
        "  -w, --workdir DIR    working directory\n"
        "  -u, --user USER      user to run as\n"
        "      --tag K=V        tag (repeatable)\n"
        "      --network SPEC   none (default), internet, or allow:ENTRY,... (CIDRs, domains, *.domains)\n"
        "      --port N         expose port N through moatd, with a token (repeatable)\n"
        "      --public-port N  expose port N without a token (repeatable)\n"
        "      --volume NAME:/path[:ro]  mount a volume (repeatable)\n"
        "      --json           print JSON\n";

static int delete_sandbox(struct moat_client *client, const char *sandbox_id)
{
        _cleanup_free_ char *segment = moat_client_escape_segment(sandbox_id);
        _cleanup_free_ char *path = NULL;
        struct moat_error *err = NULL;

        /* Teardown must not be cut short by the very interrupt that asked for it. */
        moat_client_set_cancel_flag(client, NULL);
        if (!segment || asprintf(&path, "/v1/sandboxes/%s", segment) < 0)
                return -1;
        if (moat_client_request(client, "DELETE", path, NULL, NULL, &err) < 0) {
                fprintf(stderr, "moat: could not delete sandbox %s: %s (%s)\n", sandbox_id, err->message,
                        err->code);
                moat_error_free(err);
                return -1;
        }
        return 0;
}

/* The image's Entrypoint followed by its Cmd, for `moat run -I IMAGE`. */
static json_t *image_command(struct moat_client *client, const char *image, struct moat_error **err)
{
        _cleanup_free_ char *segment = moat_client_escape_segment(image), *path = NULL;
        json_auto_t *body = NULL;
        json_t *argv = json_array(), *part, *config;
        static const char *const keys[] = {"entrypoint", "cmd"};
        size_t index;

        if (!argv || !segment || asprintf(&path, "/v1/images/%s", segment) < 0 ||
            moat_client_request(client, "GET", path, NULL, &body, err) < 0) {
                json_decref(argv);
                return NULL;
        }
        config = json_object_get(body, "config");
        for (int k = 0; k < 2; k++)
                json_array_foreach(json_object_get(config, keys[k]), index, part)
                        if (json_is_string(part))
                                json_array_append(argv, part);
        if (json_array_size(argv) == 0) {
                json_decref(argv);
                moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, NULL,
                               "image `%s` has no Entrypoint or Cmd: give a command", image);
                return NULL;
        }
        return argv;
}

int moat_cmd_run(struct moat_cli *cli, int argc, char **argv)
{
        struct moat_create_options options;
        struct moat_exit_status status = { 0 };
        struct moat_error *err = NULL;
        json_auto_t *create_body = NULL, *sandbox = NULL, *exec_body = NULL, *image_argv = NULL;
        _cleanup_free_ char *sandbox_id = NULL, *exec_id = NULL;
        struct moat_client *client;
        char error[256];
        int code;

        switch (moat_options_parse_create(argc, argv, MOAT_OPTIONS_RUN, &options, error, sizeof(error))) {
        case MOAT_OPTIONS_HELP:
                printf("Usage: moat run [OPTIONS] [-i] -- CMD [ARGS...]\n"
                       "Create a sandbox, run CMD in it with its output on ours, delete the sandbox,\n"
                       "and exit with CMD's exit code. Without CMD, -I IMAGE runs the image's own\n"
                       "command (its Entrypoint and Cmd).\n\n  -i, --interactive    forward stdin to CMD\n%s",
                       create_options_help);
                return 0;
        case MOAT_OPTIONS_USAGE:
                return moat_cli_usage_error("run", error);
        case MOAT_OPTIONS_OK:
                break;
        }
        options.json |= cli->json;
        struct moat_exec_options exec_options = {
                .command = options.command,
                .command_count = options.command_count,
                .interactive = options.interactive,
        };
        create_body = moat_options_create_body(&options, false);
        client = moat_cli_client(cli, &err);
        if (!client)
                goto fail;
        if (options.command_count == 0) {
                image_argv = image_command(client, options.image, &err);
                if (!image_argv)
                        goto fail;
                exec_body = json_pack("{s:O, s:b}", "argv", image_argv, "stdin", options.interactive);
        } else {
                exec_body = moat_options_exec_body(&exec_options);
        }
        if (!create_body || !exec_body) {
                moat_create_options_release(&options);
                return moat_cli_usage_error("run", "arguments must be valid UTF-8");
        }
        install_signal_handlers(client);
        if (moat_client_request(client, "POST", "/v1/sandboxes", create_body, &sandbox, &err) < 0)
                goto fail;
        sandbox_id = strdup(json_string_value(json_object_get(sandbox, "id")) ?: "");
        if (!sandbox_id || !*sandbox_id) {
                moat_error_set(&err, MOAT_ERROR_INTERNAL, 0, "bad_response", "create response without an id");
                goto fail;
        }
        if (exec_attach(client, sandbox_id, exec_body, options.interactive, false, &status, &exec_id, &err) < 0) {
                int signal_number = interrupted;

                delete_sandbox(client, sandbox_id);
                if (signal_number && strcmp(err->code, "interrupted") == 0) {
                        moat_error_free(err);
                        moat_create_options_release(&options);
                        return 128 + signal_number;
                }
                goto fail;
        }
        if (delete_sandbox(client, sandbox_id) < 0 && status.exit_code == 0)
                status.exit_code = MOAT_EXIT_FAILURE;
        if (options.json)
                print_exit_json(sandbox_id, exec_id, &status);
        moat_create_options_release(&options);
        return status.exit_code;
fail:
        moat_create_options_release(&options);
        code = moat_cli_fail(err);
        return interrupted ? 128 + interrupted : code;
}

int moat_cmd_create(struct moat_cli *cli, int argc, char **argv)
{
        struct moat_create_options options;
        struct moat_error *err = NULL;
        json_auto_t *body = NULL, *sandbox = NULL;
        struct moat_client *client;
        char error[256];

        switch (moat_options_parse_create(argc, argv, MOAT_OPTIONS_CREATE, &options, error, sizeof(error))) {
        case MOAT_OPTIONS_HELP:
                printf("Usage: moat create [OPTIONS] [-- ENTRYPOINT...]\n"
                       "Create a sandbox and print its id.\n\n%s",
                       create_options_help);
                return 0;
        case MOAT_OPTIONS_USAGE:
                return moat_cli_usage_error("create", error);
        case MOAT_OPTIONS_OK:
                break;
        }
        body = moat_options_create_body(&options, true);
        moat_create_options_release(&options);
        if (!body)
                return moat_cli_usage_error("create", "arguments must be valid UTF-8");
        client = moat_cli_client(cli, &err);
        if (!client || moat_client_request(client, "POST", "/v1/sandboxes", body, &sandbox, &err) < 0)
                return moat_cli_fail(err);
        json_print_or_id(sandbox, options.json || cli->json);
        return 0;
}

int moat_cmd_exec(struct moat_cli *cli, int argc, char **argv)
{
        struct moat_exec_options options;
        struct moat_exit_status status = { 0 };
        struct moat_error *err = NULL;
        _cleanup_free_ char *exec_id = NULL;
        json_auto_t *body = NULL;
        struct moat_client *client;
        char error[256];
        int r;

        switch (moat_options_parse_exec(argc, argv, &options, error, sizeof(error))) {
        case MOAT_OPTIONS_HELP:
                printf("Usage: moat exec [OPTIONS] ID -- CMD [ARGS...]\n"
                       "Run CMD in sandbox ID with its output on ours; exit with its exit code.\n\n"
                       "  -i, --interactive    forward stdin to CMD\n"
                       "  -e, --env K=V        environment variable (repeatable)\n"
                       "  -w, --workdir DIR    working directory\n"
                       "  -u, --user USER      user to run as\n"
                       "      --timeout S      kill CMD after S seconds (exit code 124)\n"
                       "      --json           print the exit status as JSON at the end\n");
                return 0;
        case MOAT_OPTIONS_USAGE:
                return moat_cli_usage_error("exec", error);
        case MOAT_OPTIONS_OK:
                break;
        }
        body = moat_options_exec_body(&options);
        if (!body) {
                moat_exec_options_release(&options);
                return moat_cli_usage_error("exec", "arguments must be valid UTF-8");
        }
        client = moat_cli_client(cli, &err);
        if (!client) {
                moat_exec_options_release(&options);
                return moat_cli_fail(err);
        }
        install_signal_handlers(client);
        r = exec_attach(client, options.sandbox_id, body, options.interactive, true, &status, &exec_id, &err);
        if (r == 0 && (options.json || cli->json))
                print_exit_json(options.sandbox_id, exec_id, &status);
        moat_exec_options_release(&options);
        if (r < 0)
                return moat_cli_fail(err);
        return status.exit_code;
}

/* The exec id of a sandbox's entrypoint: from the sandbox object when the
 * daemon reports it, else the sandbox's first exec. */
static char *entrypoint_exec_id(struct moat_client *client, const char *sandbox_path, struct moat_error **err)
{
        json_auto_t *sandbox = NULL, *execs = NULL;
        _cleanup_free_ char *execs_path = NULL;
        const char *id;

        if (moat_client_request(client, "GET", sandbox_path, NULL, &sandbox, err) < 0)
                return NULL;
        id = json_string_value(json_object_get(sandbox, "entrypoint_exec_id"));
        if (id)
                return strdup(id);
        if (json_array_size(json_object_get(sandbox, "entrypoint")) == 0)
                return moat_error_set(err, MOAT_ERROR_NOT_FOUND, 0, NULL,
                                      "the sandbox has no entrypoint (it was created without one)"),
                       NULL;
        if (asprintf(&execs_path, "%s/execs", sandbox_path) < 0)
                return moat_error_system(err, ENOMEM, "build path"), NULL;
        if (moat_client_request(client, "GET", execs_path, NULL, &execs, err) < 0)
                return NULL;
        id = json_string_value(json_object_get(json_array_get(json_object_get(execs, "execs"), 0), "id"));
        if (!id)
                return moat_error_set(err, MOAT_ERROR_NOT_FOUND, 0, NULL, "the sandbox has no entrypoint"), NULL;
        return strdup(id);
}

int moat_cmd_logs(struct moat_cli *cli, int argc, char **argv)
{
        _cleanup_free_ char *sandbox_segment = NULL, *sandbox_path = NULL, *exec_id = NULL, *exec_segment = NULL;
        _cleanup_free_ char *output_path = NULL;
        struct attach_state state = { 0 };
        struct moat_output_handler handler = {
                .on_data = attach_on_data,
                .on_exit = attach_on_exit,
                .userdata = &state,
        };
        struct moat_error *err = NULL;
        struct moat_client *client;

        if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
                printf("Usage: moat logs ID\nStream the output of sandbox ID's entrypoint until it exits.\n");
                return 0;
        }
        if (argc != 2 || argv[1][0] == '-')
                return moat_cli_usage_error("logs", "expects exactly one sandbox id");
        client = moat_cli_client(cli, &err);
        if (!client)
                return moat_cli_fail(err);
        install_signal_handlers(client);
        sandbox_segment = moat_client_escape_segment(argv[1]);
        if (!sandbox_segment || asprintf(&sandbox_path, "/v1/sandboxes/%s", sandbox_segment) < 0)
                return moat_cli_fail(NULL);
        exec_id = entrypoint_exec_id(client, sandbox_path, &err);
        if (!exec_id)
                return moat_cli_fail(err);
        exec_segment = moat_client_escape_segment(exec_id);
        if (!exec_segment || asprintf(&output_path, "%s/execs/%s/output", sandbox_path, exec_segment) < 0)
                return moat_cli_fail(NULL);
        if (moat_client_stream_output(client, output_path, &handler, &err) < 0)
                return interrupted ? (moat_error_free(err), 128 + interrupted) : moat_cli_fail(err);
        return 0;
}
