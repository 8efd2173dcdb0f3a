/* moat network / moat tunnels: a running sandbox's network policy and its
 * exposed ports. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/cleanup.h"
#include "options.h"
#include "output.h"

static bool wants_help(int argc, char **argv)
{
        for (int i = 1; i < argc; i++)
                if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
                        return true;
        return false;
}

static char *sandbox_path(const char *id, const char *suffix)
{
        _cleanup_free_ char *segment = moat_client_escape_segment(id);
        char *path = NULL;

        if (!segment || asprintf(&path, "/v1/sandboxes/%s%s", segment, suffix) < 0)
                return NULL;
        return path;
}

int moat_cmd_network(struct moat_cli *cli, int argc, char **argv)
{
        _cleanup_free_ char *path = NULL;
        struct moat_error *err = NULL;
        json_auto_t *body = NULL, *sandbox = NULL;
        struct moat_client *client;
        char error[256];

        if (wants_help(argc, argv)) {
                printf("Usage: moat network ID none|internet|allow:ENTRY[,ENTRY...]\n"
                       "Replace the network policy of running sandbox ID, atomically. ENTRY is a CIDR\n"
                       "(10.1.0.0/16, 2001:db8::/32, 192.0.2.7) or a domain name (pypi.org, *.github.com).\n");
                return 0;
        }
        if (argc != 3 || argv[1][0] == '-')
                return moat_cli_usage_error("network", "expects a sandbox id and a policy");
        body = moat_options_network(argv[2], error, sizeof(error));
        if (!body)
                return moat_cli_usage_error("network", error);
        path = sandbox_path(argv[1], "/network");
        if (!path)
                return moat_cli_fail(NULL);
        client = moat_cli_client(cli, &err);
        if (!client || moat_client_request(client, "PUT", path, body, &sandbox, &err) < 0)
                return moat_cli_fail(err);
        if (cli->json)
                moat_output_json(json_object_get(sandbox, "network"), stdout);
        return 0;
}

int moat_cmd_tunnels(struct moat_cli *cli, int argc, char **argv)
{
        _cleanup_free_ char *path = NULL;
        struct moat_error *err = NULL;
        json_auto_t *sandbox = NULL;
        struct moat_client *client;
        json_t *tunnels, *tunnel;
        size_t index;

        if (wants_help(argc, argv)) {
                printf("Usage: moat tunnels ID\nList the exposed ports of sandbox ID: PORT, URL and the token a\n"
                       "client sends as `X-Moat-Token: TOKEN` or `?moat_token=TOKEN` (public ports need none).\n");
                return 0;
        }
        if (argc != 2 || argv[1][0] == '-')
                return moat_cli_usage_error("tunnels", "expects exactly one sandbox id");
        path = sandbox_path(argv[1], "");
        if (!path)
                return moat_cli_fail(NULL);
        client = moat_cli_client(cli, &err);
        if (!client || moat_client_request(client, "GET", path, NULL, &sandbox, &err) < 0)
                return moat_cli_fail(err);
        tunnels = json_object_get(sandbox, "tunnels");
        if (cli->json) {
                moat_output_json(tunnels, stdout);
                return 0;
        }
        printf("%-6s %-28s %s\n", "PORT", "URL", "TOKEN");
        json_array_foreach(tunnels, index, tunnel) {
                const char *token = json_string_value(json_object_get(tunnel, "token"));

                printf("%-6lld %-28s %s\n", (long long)json_integer_value(json_object_get(tunnel, "port")),
                       json_string_value(json_object_get(tunnel, "url")), token ? token : "(public)");
        }
        return 0;
}
