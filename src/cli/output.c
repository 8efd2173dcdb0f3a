#include "output.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int moat_table_init(struct moat_table *table, size_t columns, const char *const *header)
{
        *table = (struct moat_table){ .columns = columns };
        return moat_table_add(table, header);
}

int moat_table_add(struct moat_table *table, const char *const *cells)
{
        if (table->rows == table->capacity) {
                size_t capacity = table->capacity ? table->capacity * 2 : 16;
                char **grown = realloc(table->cells, capacity * table->columns * sizeof(*grown));

                if (!grown)
                        return -1;
                table->cells = grown;
                table->capacity = capacity;
        }
        for (size_t i = 0; i < table->columns; i++) {
                char *copy = strdup(cells[i] ? cells[i] : "");

                if (!copy) {
                        for (size_t j = 0; j < i; j++)
                                free(table->cells[table->rows * table->columns + j]);
                        return -1;
                }
                table->cells[table->rows * table->columns + i] = copy;
        }
        table->rows++;
        return 0;
}

void moat_table_print(const struct moat_table *table, FILE *out)
{
        size_t widths[16] = { 0 };
        size_t columns = table->columns < 16 ? table->columns : 16;

        for (size_t row = 0; row < table->rows; row++)
                for (size_t column = 0; column < columns; column++) {
                        size_t length = strlen(table->cells[row * table->columns + column]);
                        if (length > widths[column])
                                widths[column] = length;
                }
        for (size_t row = 0; row < table->rows; row++) {
                for (size_t column = 0; column < columns; column++) {
                        const char *cell = table->cells[row * table->columns + column];
                        if (column + 1 == columns)
                                fprintf(out, "%s\n", cell);
                        else
                                fprintf(out, "%-*s  ", (int)widths[column], cell);
                }
        }
}

void moat_table_release(struct moat_table *table)
{
        for (size_t i = 0; i < table->rows * table->columns; i++)
                free(table->cells[i]);
        free(table->cells);
        *table = (struct moat_table){ 0 };
}

void moat_output_json(const json_t *json, FILE *out)
{
        json_dumpf(json, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', out);
}

time_t moat_output_parse_timestamp(const char *text)
{
        struct tm tm = { 0 };
        const char *rest;

        if (!text)
                return -1;
        rest = strptime(text, "%Y-%m-%dT%H:%M:%S", &tm);
        if (!rest)
                return -1;
        return timegm(&tm);
}

void moat_output_format_age(time_t seconds, char *buffer, size_t size)
{
        if (seconds < 0)
                seconds = 0;
        if (seconds < 120)
                snprintf(buffer, size, "%llds", (long long)seconds);
        else if (seconds < 2 * 3600)
                snprintf(buffer, size, "%lldm", (long long)seconds / 60);
        else if (seconds < 2 * 86400)
                snprintf(buffer, size, "%lldh", (long long)seconds / 3600);
        else
                snprintf(buffer, size, "%lldd", (long long)seconds / 86400);
}

int moat_output_write_all(int fd, const void *data, size_t length)
{
        const char *bytes = data;

        while (length > 0) {
                ssize_t written = write(fd, bytes, length);

                if (written < 0) {
                        if (errno == EINTR)
                                continue;
                        return -1;
                }
                bytes += written;
                length -= (size_t)written;
        }
        return 0;
}
