/* What every `moat` command shares: the global options, the lazily made
 * client, and the exit-code rules (docker's: 125 for moat's own errors, 127
 * when the executable was not found, 2 for usage errors, else CMD's code). */
#pragma once
#include <stdbool.h>

#include "client/client.h"
#include "common/error.h"

#define MOAT_EXIT_USAGE 2
#define MOAT_EXIT_FAILURE 125
#define MOAT_EXIT_NOT_EXECUTABLE 126
#define MOAT_EXIT_NOT_FOUND 127

struct moat_cli {
        const char *socket_path; /* --socket; NULL: $MOAT_SOCKET or the default */
        bool json;               /* global --json */
        struct moat_client *client;
};

/* The client, made on first use. Returns NULL with *err on failure. */
struct moat_client *moat_cli_client(struct moat_cli *cli, struct moat_error **err);

/* Print "moat: <message> (<code>)" to stderr, free err, and return the exit
 * code for it (127 for exec_not_found, else 125). */
int moat_cli_fail(struct moat_error *err);
/* Print "moat <command>: <message>" and a hint to stderr; returns 2. */
int moat_cli_usage_error(const char *command, const char *message);

/* One function per command; argv[0] is the command name. */
int moat_cmd_run(struct moat_cli *cli, int argc, char **argv);
int moat_cmd_create(struct moat_cli *cli, int argc, char **argv);
int moat_cmd_exec(struct moat_cli *cli, int argc, char **argv);
int moat_cmd_logs(struct moat_cli *cli, int argc, char **argv);
int moat_cmd_ls(struct moat_cli *cli, int argc, char **argv);
int moat_cmd_inspect(struct moat_cli *cli, int argc, char **argv);
int moat_cmd_rm(struct moat_cli *cli, int argc, char **argv);
int moat_cmd_image(struct moat_cli *cli, int argc, char **argv);
/* moat image build (cmd_build.c); argv[0] is "build". */
int moat_cmd_image_build(struct moat_cli *cli, int argc, char **argv);
int moat_cmd_snapshot(struct moat_cli *cli, int argc, char **argv);
/* moat cp (cmd_cp.c): files and directories into and out of a sandbox. */
int moat_cmd_cp(struct moat_cli *cli, int argc, char **argv);
int moat_cmd_doctor(struct moat_cli *cli, int argc, char **argv);
int moat_cmd_network(struct moat_cli *cli, int argc, char **argv);
int moat_cmd_tunnels(struct moat_cli *cli, int argc, char **argv);
int moat_cmd_volume(struct moat_cli *cli, int argc, char **argv);
