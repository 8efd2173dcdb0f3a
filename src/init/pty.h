/* Pseudo-terminals for MOAT_SPAWN_PTY processes. */
#pragma once
#include <stdint.h>

/* Open a master (non-blocking, CLOEXEC) and its slave (CLOEXEC, O_NOCTTY), with
 * the window size set. Returns 0 or -errno. */
int pty_open(uint16_t rows, uint16_t cols, int *ret_master, int *ret_slave);
int pty_resize(int master, uint16_t rows, uint16_t cols);
