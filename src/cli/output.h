/* Terminal output: aligned tables, JSON, ages. */
#pragma once
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <time.h>

/* A table of strings, printed with columns padded to the widest cell. */
struct moat_table {
        size_t columns;
        size_t rows;       /* including the header row */
        size_t capacity;
        char **cells;      /* rows * columns, owned */
};

int moat_table_init(struct moat_table *table, size_t columns, const char *const *header);
/* Adds a row of `columns` cells (copied; NULL prints as empty). */
int moat_table_add(struct moat_table *table, const char *const *cells);
void moat_table_print(const struct moat_table *table, FILE *out);
void moat_table_release(struct moat_table *table);

/* Pretty JSON and a newline. */
void moat_output_json(const json_t *json, FILE *out);

/* "2026-11-24T22:31:35.123Z" -> seconds since the epoch; -1 if malformed. */
time_t moat_output_parse_timestamp(const char *text);
/* Ages the way people read them: "42s", "5m", "3h", "2d". */
void moat_output_format_age(time_t seconds, char *buffer, size_t size);

/* Write all of data to fd; -1 on failure (EPIPE: the reader went away). */
int moat_output_write_all(int fd, const void *data, size_t length);
