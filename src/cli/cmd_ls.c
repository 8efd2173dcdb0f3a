/* moat ls / inspect / rm: reading and deleting sandboxes. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "common/cleanup.h"
#include "options.h"
#include "output.h"

static bool is_help(int argc, char **argv)
{
        for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
                if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
                        return true;
        return false;
}

/* "k1=v1,k2=v2" in key order, for the TAGS column. */
static char *format_tags(json_t *tags)
{
        char *text = NULL;
        size_t length = 0;
        FILE *out = open_memstream(&text, &length);
        const char *key;
        json_t *value;
        bool first = true;

        if (!out)
                return NULL;
        json_object_foreach(tags, key, value) {
                fprintf(out, "%s%s=%s", first ? "" : ",", key, json_string_value(value) ?: "");
                first = false;
        }
        fclose(out);
        return text;
}

/* GET /v1/sandboxes?tag=k=v&... with each tag percent-encoded. */
static char *list_path(const struct moat_string_list *tags)
{
        char *path = NULL;
        size_t length = 0;
        FILE *out = open_memstream(&path, &length);

        if (!out)
                return NULL;
        fputs("/v1/sandboxes", out);
        for (size_t i = 0; i < tags->count; i++) {
                _cleanup_free_ char *escaped = moat_client_escape_segment(tags->items[i]);
                fprintf(out, "%s%s%s", i == 0 ? "?" : "&", "tag=", escaped ? escaped : "");
        }
        fclose(out);
        return path;
}

int moat_cmd_ls(struct moat_cli *cli, int argc, char **argv)
{
        static const struct option long_options[] = {
                { "tag", required_argument, NULL, 't' },
                { "json", no_argument, NULL, 'j' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        struct moat_string_list tags = { 0 };
        bool json = cli->json;
        struct moat_error *err = NULL;
        json_auto_t *response = NULL;
        _cleanup_free_ char *path = NULL;
        struct moat_client *client;
        struct moat_table table;
        json_t *sandbox;
        size_t index;
        int option;
        time_t now = time(NULL);

        optind = 0;
        opterr = 0;
        while ((option = getopt_long(argc, argv, "+:h", long_options, NULL)) != -1) {
                if (option == 't') {
                        if (!moat_options_is_pair(optarg) || moat_string_list_append(&tags, optarg) < 0) {
                                free(tags.items);
                                return moat_cli_usage_error("ls", "--tag expects KEY=VALUE");
                        }
                } else if (option == 'j') {
                        json = true;
                } else if (option == 'h') {
                        free(tags.items);
                        printf("Usage: moat ls [--tag K=V]... [--json]\nList sandboxes (all tags must match).\n");
                        return 0;
                } else {
                        free(tags.items);
                        return moat_cli_usage_error("ls", option == ':' ? "option needs a value" : "unknown option");
                }
        }
        if (optind < argc) {
                free(tags.items);
                return moat_cli_usage_error("ls", "takes no arguments");
        }
        path = list_path(&tags);
        free(tags.items);
        client = moat_cli_client(cli, &err);
        if (!path || !client || moat_client_request(client, "GET", path, NULL, &response, &err) < 0)
                return moat_cli_fail(err);
        if (json) {
                json_t *sandboxes = json_object_get(response, "sandboxes");
                json_auto_t *empty = json_array();

                moat_output_json(sandboxes ? sandboxes : empty, stdout);
                return 0;
        }
        if (moat_table_init(&table, 5, (const char *[]){ "ID", "IMAGE", "STATE", "AGE", "TAGS" }) < 0)
                return moat_cli_fail(NULL);
        json_array_foreach(json_object_get(response, "sandboxes"), index, sandbox) {
                _cleanup_free_ char *tag_text = format_tags(json_object_get(sandbox, "tags"));
                time_t created = moat_output_parse_timestamp(
                        json_string_value(json_object_get(sandbox, "created_at")));
                char age[32] = "?";

                if (created >= 0)
                        moat_output_format_age(now - created, age, sizeof(age));
                moat_table_add(&table, (const char *[]){
                                               json_string_value(json_object_get(sandbox, "id")),
                                               json_string_value(json_object_get(sandbox, "image")),
                                               json_string_value(json_object_get(sandbox, "state")),
                                               age,
                                               tag_text,
                                       });
        }
        moat_table_print(&table, stdout);
        moat_table_release(&table);
        return 0;
}

int moat_cmd_inspect(struct moat_cli *cli, int argc, char **argv)
{
        _cleanup_free_ char *segment = NULL, *path = NULL;
        struct moat_error *err = NULL;
        json_auto_t *sandbox = NULL;
        struct moat_client *client;

        if (is_help(argc, argv)) {
                printf("Usage: moat inspect ID\nPrint sandbox ID as JSON.\n");
                return 0;
        }
        if (argc != 2 || argv[1][0] == '-')
                return moat_cli_usage_error("inspect", "expects exactly one sandbox id");
        segment = moat_client_escape_segment(argv[1]);
        if (!segment || asprintf(&path, "/v1/sandboxes/%s", segment) < 0)
                return moat_cli_fail(NULL);
        client = moat_cli_client(cli, &err);
        if (!client || moat_client_request(client, "GET", path, NULL, &sandbox, &err) < 0)
                return moat_cli_fail(err);
        moat_output_json(sandbox, stdout);
        return 0;
}

int moat_cmd_rm(struct moat_cli *cli, int argc, char **argv)
{
        struct moat_error *err = NULL;
        struct moat_client *client;
        int failures = 0;

        if (is_help(argc, argv)) {
                printf("Usage: moat rm ID...\nDelete sandboxes: kill everything in them and remove their records.\n");
                return 0;
        }
        if (argc < 2)
                return moat_cli_usage_error("rm", "expects at least one sandbox id");
        client = moat_cli_client(cli, &err);
        if (!client)
                return moat_cli_fail(err);
        for (int i = 1; i < argc; i++) {
                _cleanup_free_ char *segment = moat_client_escape_segment(argv[i]);
                _cleanup_free_ char *path = NULL;

                if (!segment || asprintf(&path, "/v1/sandboxes/%s", segment) < 0) {
                        failures++;
                        continue;
                }
                if (moat_client_request(client, "DELETE", path, NULL, NULL, &err) < 0) {
                        fprintf(stderr, "moat: %s: %s (%s)\n", argv[i], err->message, err->code);
                        moat_error_free(err);
                        err = NULL;
                        failures++;
                        continue;
                }
                printf("%s\n", argv[i]);
        }
        return failures ? MOAT_EXIT_FAILURE : 0;
}
