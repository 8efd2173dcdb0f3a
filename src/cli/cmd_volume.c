/* moat volume create / ls / inspect / rm: persistent, size-limited volumes
 * (mounted into sandboxes with `moat run --volume NAME:/path[:ro]`). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "common/cleanup.h"
#include "options.h"
#include "output.h"

static const char volume_usage[] =
        "Usage: moat volume create NAME [--size MiB]   a new volume (default 1024 MiB; a cap, not a reservation)\n"
        "       moat volume ls [--json]                volumes, their size limits and use\n"
        "       moat volume inspect NAME               one volume as JSON\n"
        "       moat volume rm NAME...                 remove volumes and their data (not while mounted)\n"
        "Mount one with `moat run --volume NAME:/path[:ro] ...`.\n";

static char *volume_path(const char *name)
{
        _cleanup_free_ char *segment = moat_client_escape_segment(name);
        char *path = NULL;

        if (!segment || asprintf(&path, "/v1/volumes/%s", segment) < 0)
                return NULL;
        return path;
}

static int volume_create(struct moat_client *client, const char *name, long size_mib, bool json)
{
        struct moat_error *err = NULL;
        json_auto_t *body = NULL, *volume = NULL;

        body = size_mib > 0 ? json_pack("{s:s, s:I}", "name", name, "size_mib", (json_int_t)size_mib)
                            : json_pack("{s:s}", "name", name);
        if (!body)
                return moat_cli_usage_error("volume", "the name must be valid UTF-8");
        if (moat_client_request(client, "POST", "/v1/volumes", body, &volume, &err) < 0)
                return moat_cli_fail(err);
        if (json)
                moat_output_json(volume, stdout);
        else
                printf("%s\n", json_string_value(json_object_get(volume, "name")) ?: name);
        return 0;
}

static int volume_ls(struct moat_client *client, bool json)
{
        struct moat_error *err = NULL;
        json_auto_t *response = NULL;
        struct moat_table table;
        json_t *volume;
        size_t index;
        time_t now = time(NULL);

        if (moat_client_request(client, "GET", "/v1/volumes", NULL, &response, &err) < 0)
                return moat_cli_fail(err);
        if (json) {
                moat_output_json(response, stdout);
                return 0;
        }
        if (moat_table_init(&table, 4, (const char *[]){ "NAME", "SIZE", "USED", "CREATED" }) < 0)
                return moat_cli_fail(NULL);
        json_array_foreach(json_object_get(response, "volumes"), index, volume) {
                char size[32], used[32], age[32] = "?";
                json_int_t created_ms = json_integer_value(json_object_get(volume, "created_at"));

                snprintf(size, sizeof(size), "%lldMiB", (long long)json_integer_value(json_object_get(volume, "size_mib")));
                snprintf(used, sizeof(used), "%.1fMiB",
                         (double)json_integer_value(json_object_get(volume, "used_bytes")) / (1024.0 * 1024.0));
                if (created_ms > 0) {
                        moat_output_format_age(now - (time_t)(created_ms / 1000), age, sizeof(age));
                        strncat(age, " ago", sizeof(age) - strlen(age) - 1);
                }
                moat_table_add(&table, (const char *[]){ json_string_value(json_object_get(volume, "name")), size,
                                                         used, age });
        }
        moat_table_print(&table, stdout);
        moat_table_release(&table);
        return 0;
}

static int volume_inspect(struct moat_client *client, const char *name)
{
        _cleanup_free_ char *path = volume_path(name);
        struct moat_error *err = NULL;
        json_auto_t *volume = NULL;

        if (!path)
                return moat_cli_fail(NULL);
        if (moat_client_request(client, "GET", path, NULL, &volume, &err) < 0)
                return moat_cli_fail(err);
        moat_output_json(volume, stdout);
        return 0;
}

static int volume_rm(struct moat_client *client, int count, char **names)
{
        int failures = 0;

        for (int i = 0; i < count; i++) {
                _cleanup_free_ char *path = volume_path(names[i]);
                struct moat_error *err = NULL;
                json_auto_t *response = NULL;

                if (!path)
                        return moat_cli_fail(NULL);
                if (moat_client_request(client, "DELETE", path, NULL, &response, &err) < 0) {
                        moat_cli_fail(err);
                        failures++;
                        continue;
                }
                printf("%s\n", names[i]);
        }
        return failures ? MOAT_EXIT_FAILURE : 0;
}

int moat_cmd_volume(struct moat_cli *cli, int argc, char **argv)
{
        struct moat_error *err = NULL;
        struct moat_client *client;
        bool json = cli->json;
        long size_mib = 0;
        int positional = 0;
        char *words[32];

        for (int i = 1; i < argc; i++) {
                const char *size_text = NULL;

                if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
                        fputs(volume_usage, stdout);
                        return 0;
                } else if (strcmp(argv[i], "--json") == 0) {
                        json = true;
                } else if (strcmp(argv[i], "--size") == 0) {
                        if (i + 1 >= argc)
                                return moat_cli_usage_error("volume", "--size needs a value in MiB");
                        size_text = argv[++i];
                } else if (strncmp(argv[i], "--size=", 7) == 0) {
                        size_text = argv[i] + 7;
                } else if (argv[i][0] == '-') {
                        fprintf(stderr, "moat volume: unknown option `%s`\n%s", argv[i], volume_usage);
                        return MOAT_EXIT_USAGE;
                } else if (positional < (int)MOAT_ARRAY_SIZE(words)) {
                        words[positional++] = argv[i];
                } else {
                        fprintf(stderr, "moat volume: too many arguments\n%s", volume_usage);
                        return MOAT_EXIT_USAGE;
                }
                if (size_text && (moat_options_parse_positive_long(size_text, &size_mib) < 0 || size_mib > 1048576))
                        return moat_cli_usage_error("volume", "--size expects MiB, 1..1048576");
        }
        if (positional == 0) {
                fputs(volume_usage, stderr);
                return MOAT_EXIT_USAGE;
        }
        if (!((strcmp(words[0], "create") == 0 && positional == 2) || (strcmp(words[0], "ls") == 0 && positional == 1) ||
              (strcmp(words[0], "inspect") == 0 && positional == 2) || (strcmp(words[0], "rm") == 0 && positional >= 2))) {
                fprintf(stderr, "moat volume: bad subcommand or argument count\n%s", volume_usage);
                return MOAT_EXIT_USAGE;
        }
        if (size_mib && strcmp(words[0], "create") != 0)
                return moat_cli_usage_error("volume", "--size goes with `create` only");
        client = moat_cli_client(cli, &err);
        if (!client)
                return moat_cli_fail(err);
        if (strcmp(words[0], "create") == 0)
                return volume_create(client, words[1], size_mib, json);
        if (strcmp(words[0], "ls") == 0)
                return volume_ls(client, json);
        if (strcmp(words[0], "inspect") == 0)
                return volume_inspect(client, words[1]);
        return volume_rm(client, positional - 1, words + 1);
}
