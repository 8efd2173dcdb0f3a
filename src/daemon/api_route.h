/* Route matching for the HTTP API, apart from the handlers so the fuzz
 * harnesses (fuzz/) can run it on arbitrary paths without a daemon. */
#pragma once
#include <stdbool.h>

#define API_ROUTE_PARAM_MAX 128 /* bytes of one captured segment, NUL included */

/* Matches path (without the leading '/') against pattern; "*" captures a
 * segment into params (copied into storage). */
bool api_route_match(const char *pattern, const char *path, char storage[2][API_ROUTE_PARAM_MAX],
                     const char *params[2]);
