#include "workers.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct worker_job {
        struct worker_job *next;
        worker_run_fn run;
        worker_done_fn done;
        void *arg;
};

struct worker_queue {
        struct worker_job *head, *tail;
};

struct worker_pool {
        pthread_mutex_t lock;
        pthread_cond_t wake;
        struct worker_queue queued, finished;
        bool stopping;
        unsigned thread_count;
        pthread_t threads[8];
        int notify_fd; /* eventfd: a worker finished a job */
        struct event *notify_event;
        unsigned pending;
};

static void queue_push(struct worker_queue *q, struct worker_job *job)
{
        job->next = NULL;
        if (q->tail)
                q->tail->next = job;
        else
                q->head = job;
        q->tail = job;
}

static struct worker_job *queue_pop(struct worker_queue *q)
{
        struct worker_job *job = q->head;

        if (job) {
                q->head = job->next;
                if (!q->head)
                        q->tail = NULL;
        }
        return job;
}

static void *worker_main(void *arg)
{
        struct worker_pool *pool = arg;
        uint64_t one = 1;

        pthread_mutex_lock(&pool->lock);
        for (;;) {
                struct worker_job *job;

                while (!pool->stopping && !pool->queued.head)
                        pthread_cond_wait(&pool->wake, &pool->lock);
                if (pool->stopping)
                        break;
                job = queue_pop(&pool->queued);
                pthread_mutex_unlock(&pool->lock);
                job->run(job->arg);
                pthread_mutex_lock(&pool->lock);
                queue_push(&pool->finished, job);
                /* An eventfd counter cannot overflow in practice; a failed write
                 * would only delay completion until the next job finishes. */
                if (write(pool->notify_fd, &one, sizeof(one)) < 0) {
                }
        }
        pthread_mutex_unlock(&pool->lock);
        return NULL;
}

static void on_jobs_finished(evutil_socket_t fd, short what, void *arg)
{
        struct worker_pool *pool = arg;
        struct worker_job *job;
        uint64_t count;

        if (read(fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
                return;
        for (;;) {
                pthread_mutex_lock(&pool->lock);
                job = queue_pop(&pool->finished);
                pthread_mutex_unlock(&pool->lock);
                if (!job)
                        break;
                pool->pending--;
                if (job->done)
                        job->done(job->arg);
                free(job);
        }
}

int worker_pool_new(struct event_base *base, unsigned threads, struct worker_pool **ret_pool,
                    struct moat_error **err)
{
        struct worker_pool *pool = calloc(1, sizeof(*pool));

        if (!pool)
                return moat_error_system(err, ENOMEM, "allocate worker pool");
        if (threads == 0 || threads > 8)
                threads = 4;
        pthread_mutex_init(&pool->lock, NULL);
        pthread_cond_init(&pool->wake, NULL);
        pool->notify_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (pool->notify_fd < 0) {
                int saved = errno;
                free(pool);
                return moat_error_system(err, saved, "eventfd");
        }
        pool->notify_event = event_new(base, pool->notify_fd, EV_READ | EV_PERSIST, on_jobs_finished, pool);
        if (!pool->notify_event || event_add(pool->notify_event, NULL) < 0) {
                worker_pool_free(pool);
                return moat_error_system(err, ENOMEM, "add worker notification event");
        }
        for (unsigned i = 0; i < threads; i++) {
                int r = pthread_create(&pool->threads[i], NULL, worker_main, pool);
                if (r != 0) {
                        worker_pool_free(pool);
                        return moat_error_system(err, r, "pthread_create");
                }
                pool->thread_count++;
        }
        *ret_pool = pool;
        return 0;
}

int worker_pool_submit(struct worker_pool *pool, worker_run_fn run, worker_done_fn done, void *arg,
                       struct moat_error **err)
{
        struct worker_job *job = calloc(1, sizeof(*job));

        if (!job)
                return moat_error_system(err, ENOMEM, "allocate job");
        job->run = run;
        job->done = done;
        job->arg = arg;
        pthread_mutex_lock(&pool->lock);
        queue_push(&pool->queued, job);
        pool->pending++;
        pthread_cond_signal(&pool->wake);
        pthread_mutex_unlock(&pool->lock);
        return 0;
}

unsigned worker_pool_pending(const struct worker_pool *pool)
{
        return pool->pending;
}

void worker_pool_free(struct worker_pool *pool)
{
        struct worker_job *job;

        if (!pool)
                return;
        pthread_mutex_lock(&pool->lock);
        pool->stopping = true;
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->lock);
        for (unsigned i = 0; i < pool->thread_count; i++)
                pthread_join(pool->threads[i], NULL);
        while ((job = queue_pop(&pool->queued)))
                free(job);
        while ((job = queue_pop(&pool->finished)))
                free(job);
        if (pool->notify_event)
                event_free(pool->notify_event);
        close(pool->notify_fd);
        pthread_cond_destroy(&pool->wake);
        pthread_mutex_destroy(&pool->lock);
        free(pool);
}
