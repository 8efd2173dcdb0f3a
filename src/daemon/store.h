/* The sandbox registry: SQLite in WAL mode at <data-dir>/moat.db. The insert
 * is on the create path, so statements are prepared once and the journal is
 * WAL with synchronous=NORMAL (durable against a moatd crash, and against
 * power loss up to the last checkpoint, which is what a registry of
 * short-lived sandboxes needs). Loop thread only. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"

struct store;

struct store_sandbox_row {
        const char *id;
        const char *state;      /* creating | running | stopped */
        const char *end_reason; /* NULL while not stopped */
        bool has_exit_code;
        int exit_code;
        const char *config_json;
        const char *tags_json;
        const char *image;
        int64_t host_id_base;
        int64_t created_at, ended_at, expires_at; /* ms since the epoch; 0 = null */
};

int store_open(const char *path, struct store **ret_store, struct moat_error **err);
void store_close(struct store *store);

int store_insert_sandbox(struct store *store, const struct store_sandbox_row *row, struct moat_error **err);
int store_update_sandbox(struct store *store, const struct store_sandbox_row *row, struct moat_error **err);
int store_delete_sandbox(struct store *store, const char *id, struct moat_error **err);

typedef int (*store_sandbox_fn)(const struct store_sandbox_row *row, void *arg);
/* Calls fn for every row; stops when fn returns < 0. */
int store_for_each_sandbox(struct store *store, store_sandbox_fn fn, void *arg, struct moat_error **err);
