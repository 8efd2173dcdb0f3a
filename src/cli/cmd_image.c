/* moat image ls / inspect / rm / prune / pull / import. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "common/cleanup.h"
#include "output.h"

static const char image_usage[] =
        "Usage: moat image ls [--json]               images, their layers and sizes, and disk use\n"
        "       moat image inspect REF               one image as JSON (REF: a name or an img-… id)\n"
        "       moat image rm REF...                 remove names (by id: every name of the image)\n"
        "       moat image prune [--json]            remove unnamed images and unused layers\n"
        "       moat image pull REF [--name NAME] [--username USER [--password-stdin]]\n"
        "                                            debian:<release>[-slim] or a registry image\n"
        "                                            (host[:port]/repo:tag); prints the image id\n"
        "       moat image build [-f FILE] [--name NAME] [DIR]  build from a Dockerfile\n"
        "       moat image import DIR NAME           copy a root filesystem directory into the store\n";

/* "/v1/images/<ref %-encoded>": names hold ':' and '/', which must not
 * become route separators. NULL on allocation failure. */
static char *image_path(const char *ref)
{
        _cleanup_free_ char *segment = moat_client_escape_segment(ref);
        char *path = NULL;

        if (!segment || asprintf(&path, "/v1/images/%s", segment) < 0)
                return NULL;
        return path;
}

static void format_size(json_int_t bytes, char *buffer, size_t size)
{
        static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
        double value = (double)bytes;
        size_t unit = 0;

        while (value >= 1024.0 && unit + 1 < MOAT_ARRAY_SIZE(units)) {
                value /= 1024.0;
                unit++;
        }
        if (unit == 0)
                snprintf(buffer, size, "%lldB", (long long)bytes);
        else
                snprintf(buffer, size, "%.1f%s", value, units[unit]);
}

static int image_ls(struct moat_client *client, bool json)
{
        struct moat_error *err = NULL;
        json_auto_t *response = NULL;
        struct moat_table table;
        json_t *image, *usage;
        time_t now = time(NULL);
        char disk[32];
        size_t index;

        if (moat_client_request(client, "GET", "/v1/images", NULL, &response, &err) < 0)
                return moat_cli_fail(err);
        if (json) {
                moat_output_json(response, stdout);
                return 0;
        }
        if (moat_table_init(&table, 5, (const char *[]){ "NAME", "ID", "LAYERS", "SIZE", "CREATED" }) < 0)
                return moat_cli_fail(NULL);
        json_array_foreach(json_object_get(response, "images"), index, image) {
                json_t *names = json_object_get(image, "names");
                time_t created = moat_output_parse_timestamp(json_string_value(json_object_get(image, "created_at")));
                char size[32], layers[16], age[32] = "?";
                size_t name_count = json_array_size(names);

                format_size(json_integer_value(json_object_get(image, "size")), size, sizeof(size));
                snprintf(layers, sizeof(layers), "%zu", json_array_size(json_object_get(image, "layers")));
                if (created >= 0) {
                        moat_output_format_age(now - created, age, sizeof(age));
                        strncat(age, " ago", sizeof(age) - strlen(age) - 1);
                }
                /* One row per name, so every tag is visible; "<none>" for an
                 * unnamed image (a snapshot without a name: prune removes it). */
                for (size_t n = 0; n < (name_count ? name_count : 1); n++)
                        moat_table_add(&table, (const char *[]){
                                                       name_count ? json_string_value(json_array_get(names, n))
                                                                  : "<none>",
                                                       json_string_value(json_object_get(image, "id")),
                                                       layers,
                                                       size,
                                                       age,
                                               });
        }
        moat_table_print(&table, stdout);
        moat_table_release(&table);
        usage = json_object_get(response, "disk_usage");
        format_size(json_integer_value(json_object_get(usage, "bytes")), disk, sizeof(disk));
        printf("\ndisk usage: %lld layers, %s\n", (long long)json_integer_value(json_object_get(usage, "layers")),
               disk);
        return 0;
}

static int image_inspect(struct moat_client *client, const char *ref)
{
        _cleanup_free_ char *path = image_path(ref);
        struct moat_error *err = NULL;
        json_auto_t *image = NULL;

        if (!path)
                return moat_cli_fail(NULL);
        if (moat_client_request(client, "GET", path, NULL, &image, &err) < 0)
                return moat_cli_fail(err);
        moat_output_json(image, stdout);
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
                _cleanup_free_ char *path = image_path(names[i]);

                if (!path) {
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

static int image_prune(struct moat_client *client, bool json)
{
        struct moat_error *err = NULL;
        json_auto_t *result = NULL;
        char freed[32];

        if (moat_client_request(client, "POST", "/v1/images/prune", NULL, &result, &err) < 0)
                return moat_cli_fail(err);
        if (json) {
                moat_output_json(result, stdout);
                return 0;
        }
        format_size(json_integer_value(json_object_get(result, "bytes_freed")), freed, sizeof(freed));
        printf("removed %lld images and %lld layers, freed %s\n",
               (long long)json_integer_value(json_object_get(result, "images_removed")),
               (long long)json_integer_value(json_object_get(result, "layers_removed")), freed);
        return 0;
}

/* ---- pull: POST /v1/images/pull answers an NDJSON stream ----
 * {"progress": "..."} lines while it works, then {"image": {...}} or
 * {"error": {...}}. The client library streams only GET exec output, so
 * this is the small line-reading variant for a POST. */

struct pull_stream {
        json_t *image; /* the final {"image"} event's object */
};

/* One event of the pull stream. */
static int pull_event(void *userdata, json_t *event, struct moat_error **err)
{
        struct pull_stream *stream = userdata;
        json_t *value;

        if ((value = json_object_get(event, "progress")) && json_is_string(value)) {
                /* stderr, flushed per line: the user sees a long build move, and
                 * stdout stays the image id alone for scripts. */
                fprintf(stderr, "%s\n", json_string_value(value));
                fflush(stderr);
        } else if ((value = json_object_get(event, "image")) && json_is_object(value)) {
                json_decref(stream->image);
                stream->image = json_incref(value);
        } else if (json_is_object(json_object_get(event, "error"))) {
                /* Errors mid-stream come with status 200 already sent: map the
                 * code as the library maps any error body. */
                return moat_client_error_from_response(500, event, err);
        }
        /* Other events: ignored, so the server may add kinds. */
        return 0;
}

/* The registry password, one line from stdin: never an argument, which
 * every user of the host could read in /proc/<pid>/cmdline. */
static char *read_password(void)
{
        char *line = NULL;
        size_t capacity = 0;
        ssize_t length = getline(&line, &capacity, stdin);

        if (length < 0) {
                free(line);
                return NULL;
        }
        while (length > 0 && (line[length - 1] == '\n' || line[length - 1] == '\r'))
                line[--length] = '\0';
        return line;
}

static int image_pull(struct moat_client *client, const char *ref, const char *name, const char *username,
                      bool password_stdin, bool json)
{
        struct pull_stream stream = {0};
        struct moat_error *err = NULL;
        json_auto_t *body = NULL;
        int code = 0;

        body = json_pack("{ss}", "ref", ref);
        if (!body || (name && json_object_set_new(body, "name", json_string(name)) < 0) ||
            (username && json_object_set_new(body, "username", json_string(username)) < 0))
                return moat_cli_usage_error("image", "arguments must be valid UTF-8");
        if (password_stdin) {
                char *password = read_password();
                int failed;

                if (!password)
                        return moat_cli_usage_error("image", "--password-stdin: no password on stdin");
                failed = json_object_set_new(body, "password", json_string(password)) < 0;
                explicit_bzero(password, strlen(password));
                free(password);
                if (failed)
                        return moat_cli_usage_error("image", "the password must be valid UTF-8");
        }
        if (moat_client_post_events(client, "/v1/images/pull", body, pull_event, &stream, &err) == 0 && !stream.image)
                moat_error_set(&err, MOAT_ERROR_UNAVAILABLE, 0, "transport",
                               "pull %s: the stream ended before the image (did moatd stop?)", ref);
        if (err) {
                code = moat_cli_fail(err);
        } else if (json) {
                moat_output_json(stream.image, stdout);
        } else {
                printf("%s\n", json_string_value(json_object_get(stream.image, "id")));
        }
        json_decref(stream.image);
        return code;
}

int moat_cmd_image(struct moat_cli *cli, int argc, char **argv)
{
        struct moat_error *err = NULL;
        struct moat_client *client;
        const char *name = NULL, *username = NULL;
        bool json = cli->json, password_stdin = false;
        int positional = 0;
        char *words[32];

        /* build has its own options (-f FILE, CONTEXT_DIR). */
        if (argc >= 2 && strcmp(argv[1], "build") == 0)
                return moat_cmd_image_build(cli, argc - 1, argv + 1);

        /* Words and the flags; anything else is a usage error. */
        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
                        fputs(image_usage, stdout);
                        return 0;
                } else if (strcmp(argv[i], "--json") == 0) {
                        json = true;
                } else if (strcmp(argv[i], "--name") == 0) {
                        if (i + 1 >= argc)
                                return moat_cli_usage_error("image", "--name needs a value");
                        name = argv[++i];
                } else if (strncmp(argv[i], "--name=", 7) == 0) {
                        name = argv[i] + 7;
                } else if (strcmp(argv[i], "--username") == 0) {
                        if (i + 1 >= argc)
                                return moat_cli_usage_error("image", "--username needs a value");
                        username = argv[++i];
                } else if (strcmp(argv[i], "--password-stdin") == 0) {
                        password_stdin = true;
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
              (strcmp(words[0], "prune") == 0 && positional == 1) ||
              (strcmp(words[0], "inspect") == 0 && positional == 2) ||
              (strcmp(words[0], "pull") == 0 && positional == 2) ||
              (strcmp(words[0], "import") == 0 && positional == 3) ||
              (strcmp(words[0], "rm") == 0 && positional >= 2))) {
                fprintf(stderr, "moat image: bad subcommand or argument count\n%s", image_usage);
                return MOAT_EXIT_USAGE;
        }
        if ((name || username || password_stdin) && strcmp(words[0], "pull") != 0)
                return moat_cli_usage_error("image", "--name, --username and --password-stdin go with `pull` only");
        if (password_stdin && !username)
                return moat_cli_usage_error("image", "--password-stdin needs --username");
        client = moat_cli_client(cli, &err);
        if (!client)
                return moat_cli_fail(err);
        if (strcmp(words[0], "ls") == 0)
                return image_ls(client, json);
        if (strcmp(words[0], "prune") == 0)
                return image_prune(client, json);
        if (strcmp(words[0], "inspect") == 0)
                return image_inspect(client, words[1]);
        if (strcmp(words[0], "pull") == 0)
                return image_pull(client, words[1], name, username, password_stdin, json);
        if (strcmp(words[0], "import") == 0)
                return image_import(client, words[1], words[2], json);
        return image_rm(client, positional - 1, words + 1);
}
