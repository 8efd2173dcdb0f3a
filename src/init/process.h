/* The table of processes spawned through init. State is per process, never per
 * connection, so a process outlives the moatd connection that started it and a
 * new connection picks up its output (re-attach). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/protocol.h"
#include "loop.h"

enum process_state {
        PROCESS_FREE = 0,
        PROCESS_STARTING, /* forked; waiting on the report pipe: exec or failure */
        PROCESS_RUNNING,  /* SPAWNED sent */
        PROCESS_FAILED,   /* SPAWN_FAILED sent; waiting to reap the child */
};

struct process_output {
        struct loop_watch watch; /* read end of the pipe (or a dup of the pty master) */
        uint64_t credit;         /* bytes we may still send for this stream */
};

struct process {
        enum process_state state;
        pid_t pid;
        uint32_t cookie; /* the handle moatd names this process by (never reused) */
        bool pty;
        struct loop_watch report; /* CLOEXEC pipe: EOF = exec succeeded */
        struct process_output out[2]; /* [0] stdout, [1] stderr */
        int pty_master;               /* for RESIZE; owned copy, -1 if no pty */

        struct loop_watch in; /* write end of stdin (or a dup of the pty master) */
        uint8_t *stdin_buffer; /* MOAT_INITIAL_STDIN_CREDIT bytes while data is queued */
        size_t stdin_start, stdin_end;
        bool stdin_close_requested;
        uint64_t stdin_credit_pending; /* consumed bytes not yet returned as STDIN_CREDIT */

        bool exited;
        int exit_code, exit_signal;
};

extern struct process process_table[MOAT_INIT_PROCESSES_MAX];

/* By handle (the SPAWN cookie); NULL for 0 or unknown. */
struct process *process_find(uint32_t handle);
size_t process_live_count(void);
/* Handle a SPAWN frame; answers SPAWNED/SPAWN_FAILED (later, from the report). */
void process_spawn(uint32_t cookie, const uint8_t *payload, size_t length);
void process_on_report(struct process *p);
void process_reap_all(void);
void process_signal(uint32_t handle, int sig);
void process_resize(uint32_t handle, uint16_t rows, uint16_t cols);
/* Drain exited processes, return stdin credit, send EXIT and free. */
void process_pump_all(void);
void process_update_interest_all(void);
/* A new connection: output credit starts over, unacknowledged stdin is dropped. */
void process_reset_for_connection(void);
