#include "store.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#define STORE_SCHEMA_VERSION 1

struct store {
        sqlite3 *db;
        sqlite3_stmt *insert, *update, *delete, *select_all;
};

static const char schema[] =
        "CREATE TABLE IF NOT EXISTS sandboxes ("
        " id TEXT PRIMARY KEY,"
        " state TEXT NOT NULL,"
        " end_reason TEXT,"
        " exit_code INTEGER,"
        " config TEXT NOT NULL,"
        " tags TEXT NOT NULL,"
        " image TEXT NOT NULL,"
        " host_id_base INTEGER NOT NULL,"
        " created_at INTEGER NOT NULL,"
        " ended_at INTEGER,"
        " expires_at INTEGER);";

static int db_error(struct store *store, struct moat_error **err, const char *what)
{
        return moat_error_set(err, MOAT_ERROR_SYSTEM, 0, "store", "sqlite %s: %s", what, sqlite3_errmsg(store->db));
}

static int exec_sql(struct store *store, const char *sql, struct moat_error **err)
{
        char *message = NULL;

        if (sqlite3_exec(store->db, sql, NULL, NULL, &message) != SQLITE_OK) {
                moat_error_set(err, MOAT_ERROR_SYSTEM, 0, "store", "sqlite `%.60s`: %s", sql,
                               message ? message : "?");
                sqlite3_free(message);
                return -1;
        }
        return 0;
}

/* Migrations are keyed on PRAGMA user_version: each step upgrades by one. */
static int migrate(struct store *store, struct moat_error **err)
{
        sqlite3_stmt *statement;
        int version = 0;

        if (sqlite3_prepare_v2(store->db, "PRAGMA user_version", -1, &statement, NULL) != SQLITE_OK)
                return db_error(store, err, "read user_version");
        if (sqlite3_step(statement) == SQLITE_ROW)
                version = sqlite3_column_int(statement, 0);
        sqlite3_finalize(statement);
        if (version > STORE_SCHEMA_VERSION)
                return moat_error_set(err, MOAT_ERROR_SYSTEM, 0, "store",
                                      "database schema %d is newer than this moatd (%d)", version,
                                      STORE_SCHEMA_VERSION);
        if (version < 1) {
                if (exec_sql(store, schema, err) < 0 || exec_sql(store, "PRAGMA user_version = 1", err) < 0)
                        return -1;
        }
        return 0;
}

int store_open(const char *path, struct store **ret_store, struct moat_error **err)
{
        struct store *store = calloc(1, sizeof(*store));

        if (!store)
                return moat_error_set(err, MOAT_ERROR_INTERNAL, 0, NULL, "allocate store");
        if (sqlite3_open_v2(path, &store->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                            NULL) != SQLITE_OK) {
                moat_error_set(err, MOAT_ERROR_SYSTEM, 0, "store", "open `%s`: %s", path,
                               store->db ? sqlite3_errmsg(store->db) : "out of memory");
                store_close(store);
                return -1;
        }
        sqlite3_busy_timeout(store->db, 2000);
        if (exec_sql(store, "PRAGMA journal_mode=WAL", err) < 0 ||
            exec_sql(store, "PRAGMA synchronous=NORMAL", err) < 0 || migrate(store, err) < 0)
                goto fail;
        if (sqlite3_prepare_v3(store->db,
                               "INSERT INTO sandboxes (id, state, end_reason, exit_code, config, tags, image,"
                               " host_id_base, created_at, ended_at, expires_at)"
                               " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                               -1, SQLITE_PREPARE_PERSISTENT, &store->insert, NULL) != SQLITE_OK ||
            sqlite3_prepare_v3(store->db,
                               "UPDATE sandboxes SET state = ?2, end_reason = ?3, exit_code = ?4,"
                               " ended_at = ?10, expires_at = ?11 WHERE id = ?1",
                               -1, SQLITE_PREPARE_PERSISTENT, &store->update, NULL) != SQLITE_OK ||
            sqlite3_prepare_v3(store->db, "DELETE FROM sandboxes WHERE id = ?1", -1, SQLITE_PREPARE_PERSISTENT,
                               &store->delete, NULL) != SQLITE_OK ||
            sqlite3_prepare_v3(store->db,
                               "SELECT id, state, end_reason, exit_code, config, tags, image, host_id_base,"
                               " created_at, ended_at, expires_at FROM sandboxes ORDER BY created_at",
                               -1, SQLITE_PREPARE_PERSISTENT, &store->select_all, NULL) != SQLITE_OK) {
                db_error(store, err, "prepare");
                goto fail;
        }
        *ret_store = store;
        return 0;
fail:
        store_close(store);
        return -1;
}

void store_close(struct store *store)
{
        if (!store)
                return;
        sqlite3_finalize(store->insert);
        sqlite3_finalize(store->update);
        sqlite3_finalize(store->delete);
        sqlite3_finalize(store->select_all);
        sqlite3_close(store->db);
        free(store);
}

static void bind_text_or_null(sqlite3_stmt *s, int index, const char *text)
{
        if (text)
                sqlite3_bind_text(s, index, text, -1, SQLITE_STATIC);
        else
                sqlite3_bind_null(s, index);
}

static void bind_time_or_null(sqlite3_stmt *s, int index, int64_t ms)
{
        if (ms)
                sqlite3_bind_int64(s, index, ms);
        else
                sqlite3_bind_null(s, index);
}

static void bind_row(sqlite3_stmt *s, const struct store_sandbox_row *row, bool all)
{
        sqlite3_bind_text(s, 1, row->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, row->state, -1, SQLITE_STATIC);
        bind_text_or_null(s, 3, row->end_reason);
        if (row->has_exit_code)
                sqlite3_bind_int(s, 4, row->exit_code);
        else
                sqlite3_bind_null(s, 4);
        if (all) {
                sqlite3_bind_text(s, 5, row->config_json, -1, SQLITE_STATIC);
                sqlite3_bind_text(s, 6, row->tags_json, -1, SQLITE_STATIC);
                sqlite3_bind_text(s, 7, row->image, -1, SQLITE_STATIC);
                sqlite3_bind_int64(s, 8, row->host_id_base);
                sqlite3_bind_int64(s, 9, row->created_at);
        }
        bind_time_or_null(s, 10, row->ended_at);
        bind_time_or_null(s, 11, row->expires_at);
}

static int step_done(struct store *store, sqlite3_stmt *s, const char *what, struct moat_error **err)
{
        int r = sqlite3_step(s);

        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        if (r != SQLITE_DONE)
                return db_error(store, err, what);
        return 0;
}

int store_insert_sandbox(struct store *store, const struct store_sandbox_row *row, struct moat_error **err)
{
        bind_row(store->insert, row, true);
        return step_done(store, store->insert, "insert sandbox", err);
}

int store_update_sandbox(struct store *store, const struct store_sandbox_row *row, struct moat_error **err)
{
        bind_row(store->update, row, false);
        return step_done(store, store->update, "update sandbox", err);
}

int store_delete_sandbox(struct store *store, const char *id, struct moat_error **err)
{
        sqlite3_bind_text(store->delete, 1, id, -1, SQLITE_STATIC);
        return step_done(store, store->delete, "delete sandbox", err);
}

static const char *column_text(sqlite3_stmt *s, int i)
{
        return (const char *)sqlite3_column_text(s, i);
}

int store_for_each_sandbox(struct store *store, store_sandbox_fn fn, void *arg, struct moat_error **err)
{
        sqlite3_stmt *s = store->select_all;
        int r;

        while ((r = sqlite3_step(s)) == SQLITE_ROW) {
                struct store_sandbox_row row = {
                        .id = column_text(s, 0),
                        .state = column_text(s, 1),
                        .end_reason = column_text(s, 2),
                        .has_exit_code = sqlite3_column_type(s, 3) != SQLITE_NULL,
                        .exit_code = sqlite3_column_int(s, 3),
                        .config_json = column_text(s, 4),
                        .tags_json = column_text(s, 5),
                        .image = column_text(s, 6),
                        .host_id_base = sqlite3_column_int64(s, 7),
                        .created_at = sqlite3_column_int64(s, 8),
                        .ended_at = sqlite3_column_int64(s, 9),
                        .expires_at = sqlite3_column_int64(s, 10),
                };
                if (!row.id || !row.state || !row.config_json || !row.tags_json || !row.image)
                        continue;
                if (fn(&row, arg) < 0)
                        break;
        }
        sqlite3_reset(s);
        if (r != SQLITE_ROW && r != SQLITE_DONE)
                return db_error(store, err, "select sandboxes");
        return 0;
}
