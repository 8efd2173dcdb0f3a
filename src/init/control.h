/* The control connection to moatd: accept, framing, the bounded out-queue. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void control_init(int listen_fd);
void control_on_listen(void);
void control_on_connection(uint32_t events);
/* True while a frame of `bytes` may be queued: the queue is at most
 * MOAT_INIT_OUTQUEUE_MAX. Every producer waits on this, so the queue stays below
 * MOAT_INIT_OUTQUEUE_MAX + one frame. */
bool control_can_send(size_t bytes);
void control_send(uint16_t type, uint16_t flags, uint32_t handle, uint32_t aux, const void *payload,
                  size_t length);
/* Zero-copy OUTPUT: reserve room for `max` payload bytes, read into it, commit. */
uint8_t *control_reserve_output(size_t max);
void control_commit_output(uint32_t handle, uint16_t stream, size_t length);
void control_flush(void);
void control_update_interest(void);
