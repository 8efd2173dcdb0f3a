#include "options.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int moat_options_parse_positive_long(const char *text, long *ret_value)
{
        char *end;
        long value;

        /* strtol would skip leading blanks and accept a sign; we do not. */
        if (!text || !isdigit((unsigned char)*text))
                return -1;
        errno = 0;
        value = strtol(text, &end, 10);
        if (errno || *end || value <= 0)
                return -1;
        *ret_value = value;
        return 0;
}

int moat_options_parse_positive_double(const char *text, double *ret_value)
{
        char *end;
        double value;

        if (!text || !(isdigit((unsigned char)*text) || *text == '.'))
                return -1;
        errno = 0;
        value = strtod(text, &end);
        if (errno || *end || !isfinite(value) || value <= 0)
                return -1;
        *ret_value = value;
        return 0;
}

bool moat_options_is_pair(const char *text)
{
        const char *equals = strchr(text, '=');

        return equals && equals != text;
}

int moat_string_list_append(struct moat_string_list *list, const char *item)
{
        if (list->count == list->capacity) {
                size_t capacity = list->capacity ? list->capacity * 2 : 8;
                const char **grown = realloc(list->items, capacity * sizeof(*grown));

                if (!grown)
                        return -1;
                list->items = grown;
                list->capacity = capacity;
        }
        list->items[list->count++] = item;
        return 0;
}

static void string_list_release(struct moat_string_list *list)
{
        free(list->items);
        *list = (struct moat_string_list){ 0 };
}

void moat_create_options_release(struct moat_create_options *options)
{
        string_list_release(&options->env);
        string_list_release(&options->tags);
        string_list_release(&options->volumes);
}

void moat_exec_options_release(struct moat_exec_options *options)
{
        string_list_release(&options->env);
}

static enum moat_options_result usage_error(char *error, size_t error_size, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static enum moat_options_result usage_error(char *error, size_t error_size, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(error, error_size, fmt, ap);
        va_end(ap);
        return MOAT_OPTIONS_USAGE;
}

/* The message for what getopt rejected; optind already points past it. */
static enum moat_options_result getopt_error(int argc, char **argv, int result, char *error, size_t error_size)
{
        const char *token = optind - 1 < argc ? argv[optind - 1] : "?";

        if (result == ':')
                return usage_error(error, error_size, "option `%s` needs a value", token);
        if (optopt && optopt != '?' && !(token[0] == '-' && token[1] == '-'))
                return usage_error(error, error_size, "unknown option `-%c`", optopt);
        return usage_error(error, error_size, "unknown option `%s`", token);
}

enum {
        OPTION_CPU = 256,
        OPTION_MEMORY,
        OPTION_DISK,
        OPTION_PIDS,
        OPTION_TIMEOUT,
        OPTION_TAG,
        OPTION_NETWORK,
        OPTION_PORT,
        OPTION_PUBLIC_PORT,
        OPTION_VOLUME,
        OPTION_JSON,
};

/* Options shared by run/create/exec: returns 1 when handled, -1 on a bad value. */
static int parse_common(int option, const char *value, struct moat_string_list *env, const char **workdir,
                        const char **user, long *timeout, bool *json, char *error, size_t error_size)
{
        switch (option) {
        case 'e':
                if (!moat_options_is_pair(value))
                        return usage_error(error, error_size, "-e expects KEY=VALUE, got `%s`", value);
                if (moat_string_list_append(env, value) < 0)
                        return usage_error(error, error_size, "out of memory");
                return 1;
        case 'w':
                *workdir = value;
                return 1;
        case 'u':
                *user = value;
                return 1;
        case OPTION_TIMEOUT:
                if (moat_options_parse_positive_long(value, timeout) < 0)
                        return usage_error(error, error_size, "--timeout expects a positive number of seconds, got `%s`",
                                           value);
                return 1;
        case OPTION_JSON:
                *json = true;
                return 1;
        default:
                return 0;
        }
}

enum moat_options_result moat_options_parse_create(int argc, char **argv, enum moat_options_mode mode,
                                                   struct moat_create_options *ret_options, char *error,
                                                   size_t error_size)
{
        static const struct option long_options[] = {
                { "image", required_argument, NULL, 'I' },
                { "cpu", required_argument, NULL, OPTION_CPU },
                { "memory", required_argument, NULL, OPTION_MEMORY },
                { "disk", required_argument, NULL, OPTION_DISK },
                { "pids", required_argument, NULL, OPTION_PIDS },
                { "timeout", required_argument, NULL, OPTION_TIMEOUT },
                { "env", required_argument, NULL, 'e' },
                { "workdir", required_argument, NULL, 'w' },
                { "user", required_argument, NULL, 'u' },
                { "tag", required_argument, NULL, OPTION_TAG },
                { "network", required_argument, NULL, OPTION_NETWORK },
                { "port", required_argument, NULL, OPTION_PORT },
                { "public-port", required_argument, NULL, OPTION_PUBLIC_PORT },
                { "volume", required_argument, NULL, OPTION_VOLUME },
                { "json", no_argument, NULL, OPTION_JSON },
                { "interactive", no_argument, NULL, 'i' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        struct moat_create_options options = { 0 };
        int option;

        /* '+': stop at the first non-option (the command is not ours to parse);
         * ':': report a missing value instead of printing. */
        optind = 0;
        opterr = 0;
        while ((option = getopt_long(argc, argv, "+:I:e:w:u:ih", long_options, NULL)) != -1) {
                long *number = NULL;
                int handled;

                handled = parse_common(option, optarg, &options.env, &options.workdir, &options.user,
                                       &options.timeout, &options.json, error, error_size);
                if (handled < 0)
                        goto fail;
                if (handled)
                        continue;
                switch (option) {
                case 'I':
                        options.image = optarg;
                        break;
                case OPTION_CPU:
                        if (moat_options_parse_positive_double(optarg, &options.cpu) < 0) {
                                usage_error(error, error_size, "--cpu expects a positive number of cores, got `%s`",
                                            optarg);
                                goto fail;
                        }
                        break;
                case OPTION_MEMORY:
                        number = &options.memory;
                        break;
                case OPTION_DISK:
                        number = &options.disk;
                        break;
                case OPTION_PIDS:
                        number = &options.pids;
                        break;
                case OPTION_TAG:
                        if (!moat_options_is_pair(optarg)) {
                                usage_error(error, error_size, "--tag expects KEY=VALUE, got `%s`", optarg);
                                goto fail;
                        }
                        if (moat_string_list_append(&options.tags, optarg) < 0) {
                                usage_error(error, error_size, "out of memory");
                                goto fail;
                        }
                        break;
                case OPTION_NETWORK: {
                        json_t *network = moat_options_network(optarg, error, error_size);

                        if (!network)
                                goto fail;
                        json_decref(network);
                        options.network = optarg;
                        break;
                }
                case OPTION_PORT:
                case OPTION_PUBLIC_PORT: {
                        long port;

                        if (moat_options_parse_positive_long(optarg, &port) < 0 || port > 65535) {
                                usage_error(error, error_size, "--%s expects a port 1-65535, got `%s`",
                                            option == OPTION_PORT ? "port" : "public-port", optarg);
                                goto fail;
                        }
                        if (options.port_count == 16) {
                                usage_error(error, error_size, "at most 16 ports");
                                goto fail;
                        }
                        options.ports_public[options.port_count] = option == OPTION_PUBLIC_PORT;
                        options.ports[options.port_count++] = port;
                        break;
                }
                case OPTION_VOLUME: {
                        char name[64], path[300];
                        bool read_only;

                        if (moat_options_volume(optarg, name, sizeof(name), path, sizeof(path), &read_only) < 0) {
                                usage_error(error, error_size, "--volume expects NAME:/path[:ro], got `%s`", optarg);
                                goto fail;
                        }
                        if (options.volumes.count == 16) {
                                usage_error(error, error_size, "at most 16 volumes");
                                goto fail;
                        }
                        if (moat_string_list_append(&options.volumes, optarg) < 0) {
                                usage_error(error, error_size, "out of memory");
                                goto fail;
                        }
                        break;
                }
                case 'i':
                        if (mode != MOAT_OPTIONS_RUN) {
                                usage_error(error, error_size, "-i is only for `moat run` and `moat exec`");
                                goto fail;
                        }
                        options.interactive = true;
                        break;
                case 'h':
                        moat_create_options_release(&options);
                        return MOAT_OPTIONS_HELP;
                default:
                        getopt_error(argc, argv, option, error, error_size);
                        goto fail;
                }
                if (number && moat_options_parse_positive_long(optarg, number) < 0) {
                        usage_error(error, error_size, "--%s expects a positive integer, got `%s`",
                                    option == OPTION_PIDS ? "pids" : option == OPTION_DISK ? "disk" : "memory",
                                    optarg);
                        goto fail;
                }
        }
        options.command = argv + optind;
        options.command_count = (size_t)(argc - optind);
        /* Without a command, `moat run -I IMAGE` runs the image's own
         * (Entrypoint + Cmd), as `docker run IMAGE` does. */
        if (mode == MOAT_OPTIONS_RUN && options.command_count == 0 && !options.image) {
                usage_error(error, error_size, "missing command: moat run [OPTIONS] -- CMD [ARGS...]");
                goto fail;
        }
        *ret_options = options;
        return MOAT_OPTIONS_OK;
fail:
        moat_create_options_release(&options);
        return MOAT_OPTIONS_USAGE;
}

enum moat_options_result moat_options_parse_exec(int argc, char **argv, struct moat_exec_options *ret_options,
                                                 char *error, size_t error_size)
{
        static const struct option long_options[] = {
                { "timeout", required_argument, NULL, OPTION_TIMEOUT },
                { "env", required_argument, NULL, 'e' },
                { "workdir", required_argument, NULL, 'w' },
                { "user", required_argument, NULL, 'u' },
                { "json", no_argument, NULL, OPTION_JSON },
                { "interactive", no_argument, NULL, 'i' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        struct moat_exec_options options = { 0 };
        int option;

        optind = 0;
        opterr = 0;
        while ((option = getopt_long(argc, argv, "+:e:w:u:ih", long_options, NULL)) != -1) {
                int handled = parse_common(option, optarg, &options.env, &options.workdir, &options.user,
                                           &options.timeout, &options.json, error, error_size);

                if (handled < 0)
                        goto fail;
                if (handled)
                        continue;
                if (option == 'i') {
                        options.interactive = true;
                } else if (option == 'h') {
                        moat_exec_options_release(&options);
                        return MOAT_OPTIONS_HELP;
                } else {
                        getopt_error(argc, argv, option, error, error_size);
                        goto fail;
                }
        }
        if (optind >= argc) {
                usage_error(error, error_size, "missing sandbox id: moat exec [OPTIONS] ID -- CMD [ARGS...]");
                goto fail;
        }
        options.sandbox_id = argv[optind++];
        /* The "--" between ID and CMD is optional; getopt stopped before it. */
        if (optind < argc && strcmp(argv[optind], "--") == 0)
                optind++;
        if (optind >= argc) {
                usage_error(error, error_size, "missing command: moat exec [OPTIONS] ID -- CMD [ARGS...]");
                goto fail;
        }
        options.command = argv + optind;
        options.command_count = (size_t)(argc - optind);
        *ret_options = options;
        return MOAT_OPTIONS_OK;
fail:
        moat_exec_options_release(&options);
        return MOAT_OPTIONS_USAGE;
}

json_t *moat_options_pairs_to_object(const struct moat_string_list *pairs)
{
        json_t *object = json_object();

        for (size_t i = 0; object && i < pairs->count; i++) {
                const char *equals = strchr(pairs->items[i], '=');
                size_t key_length = (size_t)(equals - pairs->items[i]);

                if (json_object_setn_new(object, pairs->items[i], key_length, json_string(equals + 1)) < 0) {
                        json_decref(object);
                        return NULL;
                }
        }
        return object;
}

static json_t *string_array(char **items, size_t count)
{
        json_t *array = json_array();

        for (size_t i = 0; array && i < count; i++) {
                if (json_array_append_new(array, json_string(items[i])) < 0) {
                        json_decref(array);
                        return NULL;
                }
        }
        return array;
}

/* json_object_set_new that tolerates a NULL value by failing, so one check at
 * the end covers every allocation. */
static int set_field(json_t *object, const char *key, json_t *value)
{
        if (!value)
                return -1;
        return json_object_set_new(object, key, value);
}

json_t *moat_options_create_body(const struct moat_create_options *options, bool with_entrypoint)
{
        json_auto_t *body = json_object();
        int failed = 0;

        if (!body)
                return NULL;
        if (options->image)
                failed |= set_field(body, "image", json_string(options->image));
        if (options->cpu > 0)
                failed |= set_field(body, "cpu", json_real(options->cpu));
        if (options->memory > 0)
                failed |= set_field(body, "memory", json_integer(options->memory));
        if (options->disk > 0)
                failed |= set_field(body, "disk", json_integer(options->disk));
        if (options->pids > 0)
                failed |= set_field(body, "pids", json_integer(options->pids));
        if (options->timeout > 0)
                failed |= set_field(body, "timeout", json_integer(options->timeout));
        if (options->env.count > 0)
                failed |= set_field(body, "env", moat_options_pairs_to_object(&options->env));
        if (options->tags.count > 0)
                failed |= set_field(body, "tags", moat_options_pairs_to_object(&options->tags));
        if (options->workdir)
                failed |= set_field(body, "workdir", json_string(options->workdir));
        if (options->user)
                failed |= set_field(body, "user", json_string(options->user));
        if (with_entrypoint && options->command_count > 0)
                failed |= set_field(body, "entrypoint", string_array(options->command, options->command_count));
        if (options->network)
                failed |= set_field(body, "network", moat_options_network(options->network, NULL, 0));
        if (options->port_count > 0) {
                json_t *ports = json_array();

                for (size_t i = 0; ports && i < options->port_count; i++)
                        json_array_append_new(ports, options->ports_public[i]
                                                             ? json_pack("{s:I, s:b}", "port",
                                                                         (json_int_t)options->ports[i], "public", 1)
                                                             : json_integer(options->ports[i]));
                failed |= set_field(body, "ports", ports);
        }
        if (options->volumes.count > 0) {
                json_t *volumes = json_object();

                for (size_t i = 0; volumes && i < options->volumes.count; i++) {
                        char name[64], path[300];
                        bool read_only;

                        if (moat_options_volume(options->volumes.items[i], name, sizeof(name), path, sizeof(path),
                                                &read_only) < 0 ||
                            json_object_set_new(volumes, path,
                                                read_only ? json_pack("{s:s, s:b}", "name", name, "read_only", 1)
                                                          : json_string(name)) < 0)
                                failed = true;
                }
                failed |= set_field(body, "volumes", volumes);
        }
        if (failed)
                return NULL; /* a string that is not UTF-8, or out of memory */
        return json_incref(body);
}

json_t *moat_options_exec_body(const struct moat_exec_options *options)
{
        json_auto_t *body = json_object();
        int failed = 0;

        if (!body)
                return NULL;
        failed |= set_field(body, "argv", string_array(options->command, options->command_count));
        if (options->env.count > 0)
                failed |= set_field(body, "env", moat_options_pairs_to_object(&options->env));
        if (options->workdir)
                failed |= set_field(body, "workdir", json_string(options->workdir));
        if (options->user)
                failed |= set_field(body, "user", json_string(options->user));
        if (options->timeout > 0)
                failed |= set_field(body, "timeout", json_integer(options->timeout));
        if (options->interactive)
                failed |= set_field(body, "stdin", json_true());
        if (failed)
                return NULL;
        return json_incref(body);
}

int moat_options_volume(const char *spec, char *name, size_t name_size, char *path, size_t path_size,
                        bool *ret_read_only)
{
        const char *colon = strchr(spec, ':'), *tail;
        size_t name_length, path_length;

        /* The server checks the name's characters and the path's form; here
         * only the shape, so a typo is a usage error before any request. */
        if (!colon || colon == spec || colon[1] != '/')
                return -1;
        name_length = (size_t)(colon - spec);
        tail = colon + 1;
        path_length = strlen(tail);
        *ret_read_only = path_length > 3 && strcmp(tail + path_length - 3, ":ro") == 0;
        if (*ret_read_only)
                path_length -= 3;
        if (name_length >= name_size || path_length >= path_size || memchr(tail, ':', path_length))
                return -1;
        memcpy(name, spec, name_length);
        name[name_length] = '\0';
        memcpy(path, tail, path_length);
        path[path_length] = '\0';
        return 0;
}

json_t *moat_options_network(const char *spec, char *error, size_t error_size)
{
        json_auto_t *allow = NULL;
        const char *entries;

        if (strcmp(spec, "none") == 0 || strcmp(spec, "internet") == 0)
                return json_pack("{s:s}", "mode", spec);
        if (strncmp(spec, "allow:", 6) != 0 || spec[6] == '\0') {
                if (error)
                        usage_error(error, error_size,
                                    "--network expects none, internet or allow:ENTRY[,ENTRY...], got `%s`", spec);
                return NULL;
        }
        allow = json_array();
        if (!allow)
                return NULL;
        /* The daemon validates each entry (CIDR or domain name). */
        for (entries = spec + 6; *entries;) {
                size_t length = strcspn(entries, ",");

                if (length > 0 && json_array_append_new(allow, json_stringn(entries, length)) < 0)
                        return NULL;
                entries += length;
                if (*entries == ',')
                        entries++;
        }
        return json_pack("{s:s, s:O}", "mode", "allow", "allow", allow);
}
