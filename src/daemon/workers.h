/* A small pool of threads for work that blocks for milliseconds (cell
 * create/destroy, image import), so the event loop never does. A job's `run`
 * executes on a worker; its `done` executes afterwards on the loop thread,
 * which is the only thread that touches daemon state. */
#pragma once
#include <event2/event.h>

#include "common/error.h"

struct worker_pool;

typedef void (*worker_run_fn)(void *arg);
typedef void (*worker_done_fn)(void *arg);

int worker_pool_new(struct event_base *base, unsigned threads, struct worker_pool **ret_pool,
                    struct moat_error **err);
/* Queue a job. Fails only on allocation failure. */
int worker_pool_submit(struct worker_pool *pool, worker_run_fn run, worker_done_fn done, void *arg,
                       struct moat_error **err);
/* Jobs queued or running whose `done` has not run yet. */
unsigned worker_pool_pending(const struct worker_pool *pool);
/* Waits for running jobs, drops queued ones (their done is not called). */
void worker_pool_free(struct worker_pool *pool);
