/* What every harness shares: libFuzzer's entry points (declared, so the
 * build's -Wmissing-prototypes holds) and a scratch directory on tmpfs that
 * is removed, whole, after each input and at exit. */
#pragma once
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A fresh empty directory for one input (under $TMPDIR, default /dev/shm:
 * tmpfs, so the fuzzer does not wear a disk). Aborts if it cannot be made:
 * a harness that silently skips its inputs would report false confidence. */
const char *fuzz_scratch_new(void);
/* Remove everything fuzz_scratch_new made for this input. */
void fuzz_scratch_clear(void);
