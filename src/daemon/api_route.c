#include "api_route.h"

#include <string.h>

bool api_route_match(const char *pattern, const char *path, char storage[2][API_ROUTE_PARAM_MAX],
                     const char *params[2])
{
        unsigned captured = 0;

        for (;;) {
                const char *pattern_end = strchrnul(pattern, '/'), *path_end = strchrnul(path, '/');
                size_t pattern_length = (size_t)(pattern_end - pattern), path_length = (size_t)(path_end - path);

                if (pattern_length == 1 && pattern[0] == '*') {
                        if (path_length == 0 || path_length >= API_ROUTE_PARAM_MAX || captured >= 2)
                                return false;
                        memcpy(storage[captured], path, path_length);
                        storage[captured][path_length] = '\0';
                        params[captured] = storage[captured];
                        captured++;
                } else if (pattern_length != path_length || memcmp(pattern, path, path_length) != 0) {
                        return false;
                }
                if (*pattern_end == '\0' || *path_end == '\0')
                        return *pattern_end == '\0' && *path_end == '\0';
                pattern = pattern_end + 1;
                path = path_end + 1;
        }
}
