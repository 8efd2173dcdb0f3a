/* moat: the command-line client of moatd. Global options, then one command;
 * each command lives in the file of its group (cmd_run.c, cmd_ls.c, ...). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/cleanup.h"
#include "config.h"

struct command {
        const char *name;
        int (*run)(struct moat_cli *cli, int argc, char **argv);
        const char *summary;
};

static const struct command commands[] = {
        { "run", moat_cmd_run, "run a command in a new sandbox, then delete it" },
        { "create", moat_cmd_create, "create a sandbox and print its id" },
        { "exec", moat_cmd_exec, "run a command in an existing sandbox" },
        { "ls", moat_cmd_ls, "list sandboxes" },
        { "inspect", moat_cmd_inspect, "show a sandbox as JSON" },
        { "rm", moat_cmd_rm, "delete sandboxes" },
        { "logs", moat_cmd_logs, "stream a sandbox's entrypoint output" },
        { "network", moat_cmd_network, "change a running sandbox's network policy" },
        { "tunnels", moat_cmd_tunnels, "list a sandbox's exposed ports" },
        { "image", moat_cmd_image, "list, pull, import, inspect and remove images" },
        { "volume", moat_cmd_volume, "create, list, inspect and remove volumes" },
        { "cp", moat_cmd_cp, "copy files and directories into and out of a sandbox" },
        { "snapshot", moat_cmd_snapshot, "turn a sandbox's filesystem into an image" },
        { "doctor", moat_cmd_doctor, "check that this host can run sandboxes" },
};

static void print_usage(FILE *out)
{
        fprintf(out, "Usage: moat [--socket PATH] [--json] COMMAND [OPTIONS] [ARGS...]\n\n"
                     "Commands:\n");
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(commands); i++)
                fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].summary);
        fprintf(out, "\nGlobal options:\n"
                     "  --socket PATH  moatd's socket (default: $MOAT_SOCKET, then " MOAT_CLIENT_DEFAULT_SOCKET ")\n"
                     "  --json         machine-readable output\n"
                     "  --version      print the version\n"
                     "  -h, --help     this help; `moat COMMAND --help` for a command\n");
}

struct moat_client *moat_cli_client(struct moat_cli *cli, struct moat_error **err)
{
        if (!cli->client && moat_client_new(cli->socket_path, &cli->client, err) < 0)
                return NULL;
        return cli->client;
}

int moat_cli_fail(struct moat_error *err)
{
        int code = MOAT_EXIT_FAILURE;

        if (!err) {
                fprintf(stderr, "moat: out of memory (internal)\n");
                return code;
        }
        if (strcmp(err->code, "output_closed") == 0) {
                /* Like any program in a pipeline whose reader left: quiet, 128+SIGPIPE. */
                moat_error_free(err);
                return 128 + SIGPIPE;
        }
        fprintf(stderr, "moat: %s (%s)\n", err->message, err->code);
        if (strcmp(err->code, "exec_not_found") == 0)
                code = MOAT_EXIT_NOT_FOUND;
        moat_error_free(err);
        return code;
}

int moat_cli_usage_error(const char *command, const char *message)
{
        fprintf(stderr, "moat %s: %s\nRun `moat %s --help` for usage.\n", command, message, command);
        return MOAT_EXIT_USAGE;
}

int main(int argc, char **argv)
{
        struct moat_cli cli = { 0 };
        int index = 1, code;

        /* Global options stop at the first word that is not one. */
        for (; index < argc && argv[index][0] == '-'; index++) {
                const char *argument = argv[index];

                if (strcmp(argument, "--socket") == 0) {
                        if (index + 1 >= argc) {
                                fprintf(stderr, "moat: --socket needs a path\n");
                                return MOAT_EXIT_USAGE;
                        }
                        cli.socket_path = argv[++index];
                } else if (strncmp(argument, "--socket=", 9) == 0) {
                        cli.socket_path = argument + 9;
                } else if (strcmp(argument, "--json") == 0) {
                        cli.json = true;
                } else if (strcmp(argument, "--version") == 0) {
                        printf("moat %s\n", MOAT_VERSION);
                        return 0;
                } else if (strcmp(argument, "-h") == 0 || strcmp(argument, "--help") == 0) {
                        print_usage(stdout);
                        return 0;
                } else {
                        fprintf(stderr, "moat: unknown option `%s`\n", argument);
                        print_usage(stderr);
                        return MOAT_EXIT_USAGE;
                }
        }
        if (index >= argc) {
                print_usage(stderr);
                return MOAT_EXIT_USAGE;
        }
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(commands); i++) {
                if (strcmp(argv[index], commands[i].name) == 0) {
                        code = commands[i].run(&cli, argc - index, argv + index);
                        moat_client_free(cli.client);
                        return code;
                }
        }
        fprintf(stderr, "moat: unknown command `%s`\n", argv[index]);
        print_usage(stderr);
        return MOAT_EXIT_USAGE;
}
