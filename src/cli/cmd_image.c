/* moat image ls / import / rm. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/cleanup.h"
#include "output.h"

static const char image_usage[] = "Usage: moat image ls [--json]\n"
                                   "       moat image import DIR NAME   copy a root filesystem directory into the store\n"
                                   "       moat image rm NAME\n";

static int image_ls(struct moat_cli *cli, struct moat_client *client, bool json)
{
        struct moat_error *err = NULL;
        json_auto_t *response = NULL;
        struct moat_table table;
        json_t *image;
        size_t index;

        if (moat_client_request(client, "GET", "/v1/images", NULL, &response, &err) < 0)
                return moat_cli_fail(err);
        if (json) {
                json_t *images = json_object_get(response, "images");
                json_auto_t *empty = json_array();

                moat_output_json(images ? images : empty, stdout);
                return 0;
        }
        if (moat_table_init(&table, 4, (const char *[]){ "NAME", "ID", "SIZE", "CREATED" }) < 0)
                return moat_cli_fail(NULL);
        json_array_foreach(json_object_get(response, "images"), index, image) {
                char size[32];

                snprintf(size, sizeof(size), "%.1fMiB",
                         (double)json_integer_value(json_object_get(image, "size")) / (1024.0 * 1024.0));
                moat_table_add(&table, (const char *[]){
                                               json_string_value(json_object_get(image, "name")),
                                               json_string_value(json_object_get(image, "id")),
                                               size,
                                               json_string_value(json_object_get(image, "created_at")),
                                       });
        }
        moat_table_print(&table, stdout);
        moat_table_release(&table);
        return 0;
}

static int image_import(struct moat_client *client, const char *directory, const char *name, bool json)
{
        struct moat_error *err = NULL;
        json_auto_t *body = NULL, *image = NULL;
        char absolute[PATH_MAX];

        /* The daemon wants an absolute path; resolve it here, in the user's cwd. */
        if (!realpath(directory, absolute)) {
                moat_error_set(&err, MOAT_ERROR_INVALID_ARGUMENT, errno, NULL, "image import `%s`", directory);
                return moat_cli_fail(err);
        }
        body = json_pack("{ss ss}", "path", absolute, "name", name);
        if (!body)
                return moat_cli_usage_error("image", "arguments must be valid UTF-8");
        if (moat_client_request(client, "POST", "/v1/images/import", body, &image, &err) < 0)
                return moat_cli_fail(err);
        if (json)
                moat_output_json(image, stdout);
        else
                printf("%s\n", json_string_value(json_object_get(image, "name")) ?: name);
        return 0;
}

static int image_rm(struct moat_client *client, int count, char **names)
{
        struct moat_error *err = NULL;
        int failures = 0;

        for (int i = 0; i < count; i++) {
                _cleanup_free_ char *segment = moat_client_escape_segment(names[i]);
                _cleanup_free_ char *path = NULL;

                if (!segment || asprintf(&path, "/v1/images/%s", segment) < 0) {
                        failures++;
                        continue;
                }
                if (moat_client_request(client, "DELETE", path, NULL, NULL, &err) < 0) {
                        fprintf(stderr, "moat: %s: %s (%s)\n", names[i], err->message, err->code);
                        moat_error_free(err);
                        err = NULL;
                        failures++;
                        continue;
                }
                printf("%s\n", names[i]);
        }
        return failures ? MOAT_EXIT_FAILURE : 0;
}

int moat_cmd_image(struct moat_cli *cli, int argc, char **argv)
{
        struct moat_error *err = NULL;
        struct moat_client *client;
        bool json = cli->json;
        int positional = 0;
        char *words[32];

        /* Words and the one flag; anything else is a usage error. */
        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
                        fputs(image_usage, stdout);
                        return 0;
                } else if (strcmp(argv[i], "--json") == 0) {
                        json = true;
                } else if (argv[i][0] == '-') {
                        fprintf(stderr, "moat image: unknown option `%s`\n%s", argv[i], image_usage);
                        return MOAT_EXIT_USAGE;
                } else if (positional < (int)MOAT_ARRAY_SIZE(words)) {
                        words[positional++] = argv[i];
                } else {
                        fprintf(stderr, "moat image: too many arguments\n%s", image_usage);
                        return MOAT_EXIT_USAGE;
                }
        }
        if (positional == 0) {
                fputs(image_usage, stderr);
                return MOAT_EXIT_USAGE;
        }
        if (!((strcmp(words[0], "ls") == 0 && positional == 1) ||
              (strcmp(words[0], "import") == 0 && positional == 3) ||
              (strcmp(words[0], "rm") == 0 && positional >= 2))) {
                fprintf(stderr, "moat image: bad subcommand or argument count\n%s", image_usage);
                return MOAT_EXIT_USAGE;
        }
        client = moat_cli_client(cli, &err);
        if (!client)
                return moat_cli_fail(err);
        if (strcmp(words[0], "ls") == 0)
                return image_ls(cli, client, json);
        if (strcmp(words[0], "import") == 0)
                return image_import(client, words[1], words[2], json);
        return image_rm(client, positional - 1, words + 1);
}
