/* moat snapshot ID [--name NAME]: a running sandbox's filesystem (its image
 * plus its changes) becomes a new image; prints the image's id. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/cleanup.h"
#include "output.h"

static const char snapshot_usage[] =
        "Usage: moat snapshot ID [--name NAME] [--json]\n"
        "Turn sandbox ID's filesystem into a new image (the sandbox keeps running);\n"
        "prints the image id (--json: the image object, with snapshot_ms).\n";

int moat_cmd_snapshot(struct moat_cli *cli, int argc, char **argv)
{
        _cleanup_free_ char *segment = NULL, *path = NULL;
        struct moat_error *err = NULL;
        json_auto_t *body = NULL, *image = NULL;
        struct moat_client *client;
        const char *sandbox_id = NULL, *name = NULL;
        bool json = cli->json;

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
                        fputs(snapshot_usage, stdout);
                        return 0;
                } else if (strcmp(argv[i], "--json") == 0) {
                        json = true;
                } else if (strcmp(argv[i], "--name") == 0) {
                        if (i + 1 >= argc)
                                return moat_cli_usage_error("snapshot", "--name needs a value");
                        name = argv[++i];
                } else if (strncmp(argv[i], "--name=", 7) == 0) {
                        name = argv[i] + 7;
                } else if (argv[i][0] == '-') {
                        return moat_cli_usage_error("snapshot", "unknown option");
                } else if (!sandbox_id) {
                        sandbox_id = argv[i];
                } else {
                        return moat_cli_usage_error("snapshot", "expects exactly one sandbox id");
                }
        }
        if (!sandbox_id)
                return moat_cli_usage_error("snapshot", "expects a sandbox id");
        body = name ? json_pack("{ss}", "name", name) : json_object();
        if (!body)
                return moat_cli_usage_error("snapshot", "--name must be valid UTF-8");
        /* The id goes into the path %-encoded: whatever was typed cannot
         * change the route. */
        segment = moat_client_escape_segment(sandbox_id);
        if (!segment || asprintf(&path, "/v1/sandboxes/%s/snapshot", segment) < 0)
                return moat_cli_fail(NULL);
        client = moat_cli_client(cli, &err);
        if (!client || moat_client_request(client, "POST", path, body, &image, &err) < 0)
                return moat_cli_fail(err);
        if (json)
                moat_output_json(image, stdout);
        else
                printf("%s\n", json_string_value(json_object_get(image, "id")));
        return 0;
}
