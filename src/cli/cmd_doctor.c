/* moat doctor: can this host run sandboxes? Runs the same checks moatd runs at
 * start (src/cell/hostcheck.c), locally: no daemon needed. */
#include <stdio.h>
#include <string.h>

#include "cell/hostcheck.h"
#include "cli.h"
#include "common/cleanup.h"
#include "output.h"

int moat_cmd_doctor(struct moat_cli *cli, int argc, char **argv)
{
        struct moat_hostcheck checks[MOAT_HOSTCHECK_MAX];
        bool json = cli->json;
        size_t count = 0;
        int failures;

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
                        printf("Usage: moat doctor [--json]\n"
                               "Check that this host can run sandboxes, and say how to fix what it cannot.\n"
                               "Exit status: 0 when every check passes or warns, 1 when one fails.\n");
                        return 0;
                }
                if (strcmp(argv[i], "--json") != 0)
                        return moat_cli_usage_error("doctor", "takes only --json");
                json = true;
        }
        failures = moat_hostcheck_run(checks, MOAT_ARRAY_SIZE(checks), &count);
        if (json) {
                json_auto_t *array = json_array();

                for (size_t i = 0; array && i < count; i++)
                        json_array_append_new(array, json_pack("{ss ss ss ss}", "name", checks[i].name, "status",
                                                               moat_hostcheck_status_name(checks[i].status),
                                                               "detail", checks[i].detail, "fix", checks[i].fix));
                json_auto_t *report = json_pack("{sb sO}", "ok", failures == 0, "checks", array);
                if (report)
                        moat_output_json(report, stdout);
        } else {
                moat_hostcheck_print(stdout, checks, count);
        }
        return failures ? 1 : 0;
}
