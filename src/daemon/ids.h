/* Identifiers handed to clients: "<prefix>" + 16 lowercase hex digits from
 * getrandom(2). Random (not sequential) so one client cannot guess another
 * client's sandbox or exec id. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"

#define MOAT_ID_HEX_DIGITS 16
#define MOAT_ID_MAX 24 /* prefix (<= 7) + 16 hex + NUL */

int moat_id_generate(const char *prefix, char out[MOAT_ID_MAX], struct moat_error **err);
/* True when s is prefix followed by exactly 16 lowercase hex digits. */
bool moat_id_valid(const char *prefix, const char *s);
/* A uniformly random integer in [0, bound), bound > 0. */
int moat_random_below(unsigned long long bound, unsigned long long *ret_value, struct moat_error **err);
