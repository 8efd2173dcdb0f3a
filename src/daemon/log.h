/* moatd's log: one line per event on stderr, with a UTC timestamp. Only the
 * daemon's own code logs; library code (cell/, common/) returns errors. */
#pragma once

enum moatd_log_level { MOATD_LOG_DEBUG, MOATD_LOG_INFO, MOATD_LOG_WARN };

void moatd_log_set_level(enum moatd_log_level level);
int moatd_log_parse_level(const char *name); /* -1 if unknown */
void moatd_log(enum moatd_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) moatd_log(MOATD_LOG_DEBUG, __VA_ARGS__)
#define log_info(...) moatd_log(MOATD_LOG_INFO, __VA_ARGS__)
#define log_warn(...) moatd_log(MOATD_LOG_WARN, __VA_ARGS__)
