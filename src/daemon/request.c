#include "request.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "common/cleanup.h"

static void request_json_decrefp(json_t **p)
{
        if (*p)
                json_decref(*p);
}
#define _cleanup_json_ _cleanup_(request_json_decrefp)

/* Parse strictly: duplicate keys are ambiguous (two parsers could disagree on
 * which one wins), so they are rejected; jansson already rejects \u0000 and raw
 * control bytes in strings, so no string we hand on can hide a NUL. */
static json_t *parse_object(const char *body, size_t length, struct moat_error **err)
{
        json_error_t json_error;
        json_t *root;

        if (length == 0) {
                root = json_object();
                if (!root)
                        moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate JSON object");
                return root;
        }
        root = json_loadb(body, length, JSON_REJECT_DUPLICATES, &json_error);
        if (!root) {
                moat_error_invalid(err, "malformed JSON: %s (line %d, column %d)", json_error.text, json_error.line,
                                   json_error.column);
                return NULL;
        }
        if (!json_is_object(root)) {
                json_decref(root);
                moat_error_invalid(err, "the body must be a JSON object");
                return NULL;
        }
        return root;
}

static int check_fields(json_t *object, const char *const *allowed, struct moat_error **err)
{
        const char *key;
        json_t *value;

        json_object_foreach(object, key, value) {
                bool known = false;
                for (size_t i = 0; allowed[i]; i++)
                        if (strcmp(key, allowed[i]) == 0)
                                known = true;
                if (!known)
                        return moat_error_invalid(err, "unknown field `%.64s`", key);
        }
        return 0;
}

/* A string without NUL bytes, at most max_length bytes (0: no limit beyond
 * the body's). NULL in *ret when absent or null. */
static int get_string(json_t *object, const char *key, size_t max_length, char **ret, struct moat_error **err)
{
        json_t *value = json_object_get(object, key);

        *ret = NULL;
        if (!value || json_is_null(value))
                return 0;
        if (!json_is_string(value))
                return moat_error_invalid(err, "`%s` must be a string", key);
        if (strlen(json_string_value(value)) != json_string_length(value))
                return moat_error_invalid(err, "`%s` contains a NUL byte", key);
        if (max_length && json_string_length(value) > max_length)
                return moat_error_invalid(err, "`%s` is longer than %zu bytes", key, max_length);
        *ret = strdup(json_string_value(value));
        if (!*ret)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "strdup");
        return 0;
}

static int get_integer(json_t *object, const char *key, uint32_t min, uint32_t max, uint32_t fallback, uint32_t *ret,
                       struct moat_error **err)
{
        json_t *value = json_object_get(object, key);
        json_int_t n;

        if (!value || json_is_null(value)) {
                *ret = fallback;
                return 0;
        }
        if (!json_is_integer(value))
                return moat_error_invalid(err, "`%s` must be an integer", key);
        n = json_integer_value(value);
        if (n < (json_int_t)min || n > (json_int_t)max)
                return moat_error_invalid(err, "`%s` must be between %u and %u", key, min, max);
        *ret = (uint32_t)n;
        return 0;
}

bool request_env_key_valid(const char *key)
{
        if (!(isalpha((unsigned char)key[0]) || key[0] == '_'))
                return false;
        for (const char *p = key + 1; *p; p++)
                if (!(isalnum((unsigned char)*p) || *p == '_'))
                        return false;
        return true;
}

static bool string_has_nul(const json_t *s)
{
        return strlen(json_string_value(s)) != json_string_length(s);
}

static int check_argv(json_t *argv, const char *name, struct moat_error **err)
{
        size_t i;
        json_t *item;

        if (!json_is_array(argv))
                return moat_error_invalid(err, "`%s` must be an array of strings", name);
        if (json_array_size(argv) == 0)
                return moat_error_invalid(err, "`%s` must not be empty", name);
        if (json_array_size(argv) > REQUEST_ARGV_MAX)
                return moat_error_invalid(err, "`%s` has more than %d entries", name, REQUEST_ARGV_MAX);
        json_array_foreach(argv, i, item) {
                if (!json_is_string(item))
                        return moat_error_invalid(err, "`%s[%zu]` must be a string", name, i);
                if (string_has_nul(item))
                        return moat_error_invalid(err, "`%s[%zu]` contains a NUL byte", name, i);
        }
        if (json_string_length(json_array_get(argv, 0)) == 0)
                return moat_error_invalid(err, "`%s[0]` must not be empty", name);
        return 0;
}

static int check_env(json_t *env, struct moat_error **err)
{
        const char *key;
        json_t *value;

        if (!json_is_object(env))
                return moat_error_invalid(err, "`env` must be an object of strings");
        if (json_object_size(env) > REQUEST_ENV_MAX)
                return moat_error_invalid(err, "`env` has more than %d entries", REQUEST_ENV_MAX);
        json_object_foreach(env, key, value) {
                /* A key with '=' or a bad first character would let one entry
                 * set a different variable than the one it names. */
                if (!request_env_key_valid(key))
                        return moat_error_invalid(err, "env key `%.64s` is not [A-Za-z_][A-Za-z0-9_]*", key);
                if (!json_is_string(value))
                        return moat_error_invalid(err, "env `%.64s` must be a string", key);
                if (string_has_nul(value))
                        return moat_error_invalid(err, "env `%.64s` contains a NUL byte", key);
        }
        return 0;
}

static int check_tags(json_t *tags, struct moat_error **err)
{
        const char *key;
        json_t *value;

        if (!json_is_object(tags))
                return moat_error_invalid(err, "`tags` must be an object of strings");
        if (json_object_size(tags) > REQUEST_TAGS_MAX)
                return moat_error_invalid(err, "`tags` has more than %d entries", REQUEST_TAGS_MAX);
        json_object_foreach(tags, key, value) {
                if (strlen(key) == 0 || strlen(key) > REQUEST_TAG_KEY_MAX)
                        return moat_error_invalid(err, "tag keys must be 1 to %d bytes", REQUEST_TAG_KEY_MAX);
                /* `tag=KEY=VALUE` filters split at the first '=': a key holding
                 * one could never be selected, and would make another tag's
                 * filter match it. Control bytes have no place in a label. */
                for (const char *c = key; *c; c++)
                        if (*c == '=' || (unsigned char)*c < 0x20 || *c == 0x7f)
                                return moat_error_invalid(err, "tag keys must not hold '=' or control characters");
                if (!json_is_string(value))
                        return moat_error_invalid(err, "tag `%.64s` must be a string", key);
                if (string_has_nul(value) || json_string_length(value) > REQUEST_TAG_VALUE_MAX)
                        return moat_error_invalid(err, "tag `%.64s`: values are at most %d bytes, no NUL", key,
                                                  REQUEST_TAG_VALUE_MAX);
        }
        return 0;
}

size_t request_argv_env_bytes(const json_t *argv, const json_t *env)
{
        size_t total = 0, i;
        const char *key;
        json_t *value;

        if (argv)
                json_array_foreach(argv, i, value)
                        total += json_string_length(value) + 1;
        if (env)
                json_object_foreach((json_t *)env, key, value)
                        total += strlen(key) + 1 + json_string_length(value) + 1;
        return total;
}

static int check_workdir(const char *workdir, struct moat_error **err)
{
        if (workdir && workdir[0] != '/')
                return moat_error_invalid(err, "`workdir` must be an absolute path");
        return 0;
}

/* A passwd name or "uid[:gid]": init resolves it inside the sandbox. */
static int check_user(const char *user, struct moat_error **err)
{
        if (!user)
                return 0;
        if (user[0] == '\0' || user[0] == '-')
                return moat_error_invalid(err, "`user` must be a user name or uid[:gid]");
        for (const char *p = user; *p; p++)
                if (!(isalnum((unsigned char)*p) || *p == '_' || *p == '-' || *p == '.' || *p == ':'))
                        return moat_error_invalid(err, "`user` must be a user name or uid[:gid]");
        return 0;
}

bool request_image_name_valid(const char *name)
{
        size_t length = strlen(name);

        /* "debian:bookworm", "127.0.0.1:5000/team/app:v2", "app@sha256:...":
         * registry references as users write them. Names are keys, never
         * paths, but still: no "..", no "//", no leading separator. */
        if (length == 0 || length > REQUEST_IMAGE_NAME_MAX || strstr(name, "..") || strstr(name, "//"))
                return false;
        if (!(islower((unsigned char)name[0]) || isdigit((unsigned char)name[0])))
                return false;
        for (const char *p = name; *p; p++)
                if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || strchr("._-:/@", *p)))
                        return false;
        return true;
}

void sandbox_request_clear(struct sandbox_request *r)
{
        free(r->image);
        free(r->workdir);
        free(r->user);
        if (r->env)
                json_decref(r->env);
        if (r->tags)
                json_decref(r->tags);
        if (r->entrypoint)
                json_decref(r->entrypoint);
        net_policy_clear(&r->network);
        for (size_t i = 0; i < r->volume_count; i++) {
                free(r->volumes[i].target);
                free(r->volumes[i].name);
        }
        memset(r, 0, sizeof(*r));
}

bool request_volume_target_valid(const char *target)
{
        static const char *const refused[] = {"/proc", "/sys", "/dev"};
        size_t length = strlen(target);

        if (length < 2 || length > REQUEST_VOLUME_TARGET_MAX || target[0] != '/' || target[length - 1] == '/')
                return false;
        for (const char *p = target; *p; p++)
                if ((unsigned char)*p < 0x20 || *p == 0x7f)
                        return false;
        /* Normalized: each component non-empty and neither "." nor "..", so
         * the string is the path the child walks, component by component. */
        for (const char *component = target + 1; component;) {
                const char *end = strchr(component, '/');
                size_t n = end ? (size_t)(end - component) : strlen(component);
                if (n == 0 || (n == 1 && component[0] == '.') || (n == 2 && component[0] == '.' && component[1] == '.'))
                        return false;
                component = end ? end + 1 : NULL;
        }
        /* The kernel's and moat's own mounts: a volume there would hide
         * or replace them (and /proc masks). */
        for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
                size_t n = strlen(refused[i]);
                if (strncmp(target, refused[i], n) == 0 && (target[n] == '\0' || target[n] == '/'))
                        return false;
        }
        return true;
}

/* "volumes": {"/data": "name"} or {"/data": {"name": "x", "read_only": true}} */
static int parse_volumes(json_t *value, struct sandbox_request *r, struct moat_error **err)
{
        const char *target;
        json_t *entry;

        if (!value || json_is_null(value))
                return 0;
        if (!json_is_object(value))
                return moat_error_invalid(err, "volumes must be an object {\"/path\": \"volume name\"}");
        if (json_object_size(value) > REQUEST_VOLUMES_MAX)
                return moat_error_invalid(err, "at most %d volumes", REQUEST_VOLUMES_MAX);
        json_object_foreach(value, target, entry) {
                struct request_volume *volume = &r->volumes[r->volume_count];
                const char *name = NULL;
                int read_only = 0;

                if (!request_volume_target_valid(target))
                        return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "invalid_mount_target",
                                              "volume mount target `%.300s` must be an absolute normalized path, "
                                              "not / and not under /proc, /sys or /dev", target);
                /* The body parser already refuses a key given twice; kept
                 * so the rule holds whatever the parser's flags become. */
                for (size_t i = 0; i < r->volume_count; i++)
                        if (strcmp(r->volumes[i].target, target) == 0)
                                return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "invalid_mount_target",
                                                      "volume mount target `%s` given twice", target);
                if (json_is_string(entry))
                        name = json_string_value(entry);
                else if (!json_is_object(entry) ||
                         json_unpack_ex(entry, NULL, JSON_STRICT, "{s:s,s?b}", "name", &name, "read_only", &read_only) < 0)
                        return moat_error_invalid(err, "volumes[\"%s\"] must be a name or {\"name\", \"read_only\"}",
                                                  target);
                if (strlen(name) == 0 || strlen(name) > 63)
                        return moat_error_set(err, MOAT_ERROR_INVALID_ARGUMENT, 0, "invalid_volume_name",
                                              "volumes[\"%s\"]: bad volume name", target);
                volume->target = strdup(target);
                volume->name = strdup(name);
                volume->read_only = read_only != 0;
                r->volume_count++;
                if (!volume->target || !volume->name)
                        return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "strdup");
        }
        return 0;
}

static int parse_sandbox_fields(json_t *root, double host_cores, struct sandbox_request *r, struct moat_error **err)
{
        static const char *const fields[] = {"image", "cpu", "memory", "disk", "pids", "timeout", "idle_timeout",
                                             "env", "workdir", "user", "tags", "entrypoint", "image_command", "network", "ports",
                                             "volumes", NULL};
        json_t *value;

        if (check_fields(root, fields, err) < 0)
                return -1;
        if (get_string(root, "image", REQUEST_IMAGE_NAME_MAX, &r->image, err) < 0)
                return -1;
        if (!r->image && !(r->image = strdup("host")))
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "strdup");
        if (!request_image_name_valid(r->image))
                return moat_error_invalid(err, "`image` is not a valid image name");

        value = json_object_get(root, "cpu");
        r->cpu = 1.0;
        if (value && !json_is_null(value)) {
                if (!json_is_number(value))
                        return moat_error_invalid(err, "`cpu` must be a number");
                r->cpu = json_number_value(value);
                if (!(r->cpu >= 0.01 && r->cpu <= host_cores))
                        return moat_error_invalid(err, "`cpu` must be between 0.01 and %g (host cores)", host_cores);
        }
        if (r->cpu > host_cores)
                r->cpu = host_cores; /* the default on a one-core host */
        if (get_integer(root, "memory", 8, 65536, 512, &r->memory_mib, err) < 0 ||
            get_integer(root, "disk", 1, 65536, 1024, &r->disk_mib, err) < 0 ||
            get_integer(root, "pids", 8, 32768, 512, &r->pids, err) < 0 ||
            get_integer(root, "timeout", 1, REQUEST_SECONDS_MAX, 300, &r->timeout_s, err) < 0 ||
            get_integer(root, "idle_timeout", 1, REQUEST_SECONDS_MAX, 0, &r->idle_timeout_s, err) < 0)
                return -1;

        value = json_object_get(root, "env");
        if (value && !json_is_null(value)) {
                if (check_env(value, err) < 0)
                        return -1;
                r->env = json_incref(value);
        } else {
                r->env = json_object();
        }
        value = json_object_get(root, "tags");
        if (value && !json_is_null(value)) {
                if (check_tags(value, err) < 0)
                        return -1;
                r->tags = json_incref(value);
        } else {
                r->tags = json_object();
        }
        if (!r->env || !r->tags)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate JSON object");

        if (get_string(root, "workdir", REQUEST_WORKDIR_MAX, &r->workdir, err) < 0 ||
            check_workdir(r->workdir, err) < 0)
                return -1;
        /* Absent workdir and user stay NULL: the image's config, then "/" and
         * "root", fill them in at create (sandbox.c). */
        if (get_string(root, "user", REQUEST_USER_MAX, &r->user, err) < 0 || check_user(r->user, err) < 0)
                return -1;

        value = json_object_get(root, "entrypoint");
        if (value && !json_is_null(value)) {
                if (check_argv(value, "entrypoint", err) < 0)
                        return -1;
                r->entrypoint = json_incref(value);
        }
        value = json_object_get(root, "image_command");
        if (value && !json_is_boolean(value))
                return moat_error_invalid(err, "`image_command` must be a boolean");
        r->image_command = value && json_is_true(value);
        if (r->image_command && r->entrypoint)
                return moat_error_invalid(err, "`image_command` runs the image's command: give no `entrypoint`");
        if (request_argv_env_bytes(r->entrypoint, r->env) > REQUEST_ARGV_ENV_BYTES_MAX)
                return moat_error_invalid(err, "argv and env together exceed %d bytes", REQUEST_ARGV_ENV_BYTES_MAX);
        if (net_policy_parse(json_object_get(root, "network"), &r->network, err) < 0 ||
            net_ports_parse(json_object_get(root, "ports"), r->ports, &r->port_count, err) < 0 ||
            parse_volumes(json_object_get(root, "volumes"), r, err) < 0)
                return -1;
        return 0;
}

int request_parse_network(const char *body, size_t length, struct net_policy *ret, struct moat_error **err)
{
        json_error_t error;
        _cleanup_json_ json_t *root = NULL;

        if (length == 0)
                return moat_error_invalid(err, "the body must be a network object");
        root = json_loadb(body, length, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &error);
        if (!root)
                return moat_error_invalid(err, "malformed JSON: %s (line %d, column %d)", error.text,
                                          error.line, error.column);
        return net_policy_parse(root, ret, err);
}

int request_parse_sandbox(const char *body, size_t length, double host_cores, struct sandbox_request *ret,
                          struct moat_error **err)
{
        _cleanup_json_ json_t *root = parse_object(body, length, err);
        struct sandbox_request r = {0};

        if (!root)
                return -1;
        if (parse_sandbox_fields(root, host_cores, &r, err) < 0) {
                sandbox_request_clear(&r);
                return -1;
        }
        *ret = r;
        return 0;
}

void exec_request_clear(struct exec_request *r)
{
        if (r->argv)
                json_decref(r->argv);
        if (r->env)
                json_decref(r->env);
        free(r->workdir);
        free(r->user);
        free(r->tag);
        free(r->stdin_data);
        memset(r, 0, sizeof(*r));
}

static int parse_exec_fields(json_t *root, bool one_shot, const char *shell, struct exec_request *r,
                             struct moat_error **err)
{
        static const char *const exec_fields[] = {"argv", "env", "workdir", "user", "timeout", "stdin", "tag", NULL};
        static const char *const run_fields[] = {"argv", "cmd",   "env", "workdir", "user",
                                                 "timeout", "stdin", "tag", NULL};
        json_t *argv = json_object_get(root, "argv"), *cmd = json_object_get(root, "cmd"), *value;

        if (check_fields(root, one_shot ? run_fields : exec_fields, err) < 0)
                return -1;
        if (argv && json_is_null(argv))
                argv = NULL;
        if (cmd && json_is_null(cmd))
                cmd = NULL;
        if (argv && cmd)
                return moat_error_invalid(err, "give either `argv` or `cmd`, not both");
        if (cmd) {
                if (!json_is_string(cmd) || json_string_length(cmd) == 0 || string_has_nul(cmd))
                        return moat_error_invalid(err, "`cmd` must be a non-empty string");
                r->argv = json_pack("[s,s,O]", shell, "-lc", cmd);
                if (!r->argv)
                        return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate argv");
        } else if (argv) {
                if (check_argv(argv, "argv", err) < 0)
                        return -1;
                r->argv = json_incref(argv);
        } else {
                return moat_error_invalid(err, one_shot ? "`argv` or `cmd` is required" : "`argv` is required");
        }

        value = json_object_get(root, "env");
        if (value && !json_is_null(value)) {
                if (check_env(value, err) < 0)
                        return -1;
                r->env = json_incref(value);
        }
        if (request_argv_env_bytes(r->argv, r->env) > REQUEST_ARGV_ENV_BYTES_MAX)
                return moat_error_invalid(err, "argv and env together exceed %d bytes", REQUEST_ARGV_ENV_BYTES_MAX);
        if (get_string(root, "workdir", REQUEST_WORKDIR_MAX, &r->workdir, err) < 0 ||
            check_workdir(r->workdir, err) < 0)
                return -1;
        if (get_string(root, "user", REQUEST_USER_MAX, &r->user, err) < 0 || check_user(r->user, err) < 0)
                return -1;
        if (get_integer(root, "timeout", 1, REQUEST_SECONDS_MAX, 0, &r->timeout_s, err) < 0)
                return -1;
        if (get_string(root, "tag", REQUEST_EXEC_TAG_MAX, &r->tag, err) < 0)
                return -1;

        value = json_object_get(root, "stdin");
        if (value && !json_is_null(value)) {
                if (one_shot) {
                        if (!json_is_string(value))
                                return moat_error_invalid(err, "`stdin` must be a string");
                        r->stdin_length = json_string_length(value);
                        r->stdin_data = malloc(r->stdin_length + 1);
                        if (!r->stdin_data)
                                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "allocate stdin");
                        memcpy(r->stdin_data, json_string_value(value), r->stdin_length + 1);
                        r->stdin_pipe = true;
                } else {
                        if (!json_is_boolean(value))
                                return moat_error_invalid(err, "`stdin` must be a boolean");
                        r->stdin_pipe = json_is_true(value);
                }
        }
        return 0;
}

int request_parse_exec(const char *body, size_t length, bool one_shot, const char *shell, struct exec_request *ret,
                       struct moat_error **err)
{
        _cleanup_json_ json_t *root = parse_object(body, length, err);
        struct exec_request r = {0};

        if (!root)
                return -1;
        if (parse_exec_fields(root, one_shot, shell, &r, err) < 0) {
                exec_request_clear(&r);
                return -1;
        }
        *ret = r;
        return 0;
}

static const struct {
        const char *name;
        int number;
} signal_names[] = {
        {"HUP", SIGHUP},   {"INT", SIGINT},     {"QUIT", SIGQUIT},   {"ILL", SIGILL},     {"TRAP", SIGTRAP},
        {"ABRT", SIGABRT}, {"BUS", SIGBUS},     {"FPE", SIGFPE},     {"KILL", SIGKILL},   {"USR1", SIGUSR1},
        {"SEGV", SIGSEGV}, {"USR2", SIGUSR2},   {"PIPE", SIGPIPE},   {"ALRM", SIGALRM},   {"TERM", SIGTERM},
        {"CHLD", SIGCHLD}, {"CONT", SIGCONT},   {"STOP", SIGSTOP},   {"TSTP", SIGTSTP},   {"TTIN", SIGTTIN},
        {"TTOU", SIGTTOU}, {"URG", SIGURG},     {"XCPU", SIGXCPU},   {"XFSZ", SIGXFSZ},   {"VTALRM", SIGVTALRM},
        {"PROF", SIGPROF}, {"WINCH", SIGWINCH}, {"IO", SIGIO},       {"SYS", SIGSYS},
};

int request_signal_from_name(const char *name)
{
        if (strncmp(name, "SIG", 3) == 0)
                name += 3;
        for (size_t i = 0; i < MOAT_ARRAY_SIZE(signal_names); i++)
                if (strcmp(name, signal_names[i].name) == 0)
                        return signal_names[i].number;
        return -1;
}

int request_parse_signal(const char *body, size_t length, int *ret_signal, struct moat_error **err)
{
        static const char *const fields[] = {"signal", NULL};
        _cleanup_json_ json_t *root = parse_object(body, length, err);
        json_t *value;
        int number;

        if (!root || check_fields(root, fields, err) < 0)
                return -1;
        value = json_object_get(root, "signal");
        if (!value)
                return moat_error_invalid(err, "`signal` is required");
        if (json_is_integer(value)) {
                json_int_t n = json_integer_value(value);
                if (n < 1 || n > 64)
                        return moat_error_invalid(err, "`signal` must be between 1 and 64");
                number = (int)n;
        } else if (json_is_string(value)) {
                number = string_has_nul(value) ? -1 : request_signal_from_name(json_string_value(value));
                if (number < 0)
                        return moat_error_invalid(err, "unknown signal `%.32s`", json_string_value(value));
        } else {
                return moat_error_invalid(err, "`signal` must be a number or a name");
        }
        *ret_signal = number;
        return 0;
}

int request_parse_image_import(const char *body, size_t length, char **ret_path, char **ret_name,
                               struct moat_error **err)
{
        static const char *const fields[] = {"path", "name", NULL};
        _cleanup_json_ json_t *root = parse_object(body, length, err);
        _cleanup_free_ char *path = NULL, *name = NULL;

        if (!root || check_fields(root, fields, err) < 0)
                return -1;
        if (get_string(root, "path", 4096, &path, err) < 0 || get_string(root, "name", 0, &name, err) < 0)
                return -1;
        if (!path || path[0] != '/')
                return moat_error_invalid(err, "`path` must be an absolute directory");
        if (!name || !request_image_name_valid(name))
                return moat_error_invalid(err, "`name` must match [a-z0-9][a-z0-9._-]{0,63}");
        *ret_path = TAKE_PTR(path);
        *ret_name = TAKE_PTR(name);
        return 0;
}

int request_parse_seconds(const char *value, double *ret_seconds, struct moat_error **err)
{
        char *end;
        double seconds;

        errno = 0;
        seconds = strtod(value, &end);
        if (value[0] == '\0' || *end != '\0' || errno != 0 || !isfinite(seconds) || seconds < 0 ||
            seconds > REQUEST_SECONDS_MAX)
                return moat_error_invalid(err, "`timeout` must be a number of seconds between 0 and %d",
                                          REQUEST_SECONDS_MAX);
        *ret_seconds = seconds;
        return 0;
}

int request_parse_tag_filter(const char *value, char **ret_key, char **ret_value, struct moat_error **err)
{
        const char *equals = strchr(value, '=');
        _cleanup_free_ char *key = NULL;

        if (!equals || equals == value)
                return moat_error_invalid(err, "`tag` filters are key=value");
        key = strndup(value, (size_t)(equals - value));
        if (!key)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "strndup");
        *ret_value = strdup(equals + 1);
        if (!*ret_value)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, ENOMEM, NULL, "strdup");
        *ret_key = TAKE_PTR(key);
        return 0;
}
