#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static enum moatd_log_level minimum_level = MOATD_LOG_INFO;

void moatd_log_set_level(enum moatd_log_level level)
{
        minimum_level = level;
}

int moatd_log_parse_level(const char *name)
{
        if (strcmp(name, "debug") == 0)
                return MOATD_LOG_DEBUG;
        if (strcmp(name, "info") == 0)
                return MOATD_LOG_INFO;
        if (strcmp(name, "warn") == 0)
                return MOATD_LOG_WARN;
        return -1;
}

void moatd_log(enum moatd_log_level level, const char *fmt, ...)
{
        static const char *const names[] = {"debug", "info", "warn"};
        char line[2048], stamp[32];
        struct timeval now;
        struct tm tm;
        va_list ap;
        int n;

        if (level < minimum_level)
                return;
        gettimeofday(&now, NULL);
        gmtime_r(&now.tv_sec, &tm);
        strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
        n = snprintf(line, sizeof(line), "%s.%03ldZ %s ", stamp, (long)(now.tv_usec / 1000), names[level]);
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
        /* One write per line so concurrent writers never interleave within it. */
        fprintf(stderr, "%s\n", line);
}
