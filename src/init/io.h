/* Pipes: output read under credit, stdin written from a bounded queue. */
#pragma once
#include "process.h"

enum io_read_result {
        IO_READ_DATA,    /* sent a chunk */
        IO_READ_BLOCKED, /* no credit, or the socket queue is full */
        IO_READ_EMPTY,   /* EAGAIN: nothing buffered in the pipe */
        IO_READ_END,     /* EOF or error: the stream is closed */
};

enum io_read_result io_read_output(struct process *p, int stream_index);
void io_on_output_ready(struct process *p, int stream_index);
void io_output_credit(uint32_t handle, uint16_t stream, uint32_t bytes);
/* Queue STDIN bytes. -1 if the peer exceeded its stdin credit (protocol error). */
int io_stdin_push(uint32_t handle, const uint8_t *data, size_t length);
void io_stdin_close(uint32_t handle);
void io_stdin_write(struct process *p);
void io_stdin_discard(struct process *p);
bool io_stdin_flush_credit(struct process *p);
