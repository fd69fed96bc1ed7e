/*
 * The smallest program that uses an edgebin bundle: one static input and output buffer and one call. The runner
 * links it with picolibc's minimal crt0 and no semihosting into footprint.elf, whose flash and RAM are what a
 * board build of the model needs, without the QEMU harness's file I/O and fault reporting.
 */
#include "model.h"

static float input[EDGEBIN_INPUT_ELEMS];
static float output[EDGEBIN_OUTPUT_ELEMS];

int main(void) { return edgebin_model_run(input, output); }
