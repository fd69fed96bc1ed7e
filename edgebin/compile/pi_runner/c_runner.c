/*
 * edgebin's runner for the runtime-free C bundle on an Arm Linux board (32-bit Pi OS, or 64-bit without TVM).
 *
 *   ./runner inputs.bin outputs.bin N
 *
 * The model is linked in (src/: model.c, kernels.c, runtime.c, the same C as a Cortex-M bundle, see model.h).
 * inputs.bin holds N float32 samples of EDGEBIN_INPUT_ELEMS values back to back; outputs.bin receives N float32
 * outputs of EDGEBIN_OUTPUT_ELEMS. On success it prints "key value" lines on stdout (samples, output_elems,
 * output_dtype, seconds_per_inference) and exits 0; on failure one line on stderr and a non-zero exit.
 *
 * Timing and instruction counting work as in runner.cc: sample 0 runs once untimed, then each call to
 * edgebin_model_run is bracketed by edgebin_runner_begin() / edgebin_runner_end() (linked without PIE so that
 * `nm` gives their run-time addresses) and timed with CLOCK_MONOTONIC, which only means something on a board.
 * With EDGEBIN_MAPS=PATH set, /proc/self/maps is copied to PATH at the end.
 *
 * Exit codes: 2 usage, 4 inputs.bin, 6 the model returned an error, 7 writing outputs.bin.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

volatile int edgebin_runner_phase; /* distinct stores keep the two markers from being merged */
__attribute__((noipa)) void edgebin_runner_begin(void) { edgebin_runner_phase = 1; }
__attribute__((noipa)) void edgebin_runner_end(void) { edgebin_runner_phase = 2; }

static void fail(int code, const char* what, const char* detail)
{
    fprintf(stderr, "runner: %s%s\n", what, detail ? detail : "");
    exit(code);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void copy_maps(const char* path)
{
    FILE* in = fopen("/proc/self/maps", "r");
    FILE* out = fopen(path, "w");
    if (in && out) {
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    }
    if (in) fclose(in);
    if (out) fclose(out);
}

int main(int argc, char** argv)
{
    if (argc != 4) fail(2, "usage: runner INPUTS.bin OUTPUTS.bin N", NULL);
    char* end = NULL;
    long n = strtol(argv[3], &end, 10);
    if (*end != '\0' || n < 1) fail(2, "N must be a positive integer, got ", argv[3]);

    size_t in_bytes = (size_t)n * EDGEBIN_INPUT_ELEMS * sizeof(float);
    float* inputs = malloc(in_bytes + 1);
    float* outputs = malloc((size_t)n * EDGEBIN_OUTPUT_ELEMS * sizeof(float));
    if (!inputs || !outputs) fail(4, "out of memory for the samples", NULL);
    FILE* f = fopen(argv[1], "rb");
    if (!f) fail(4, "cannot open ", argv[1]);
    size_t got = fread(inputs, 1, in_bytes + 1, f);
    fclose(f);
    if (got != in_bytes) fail(4, "wrong size (not N samples of EDGEBIN_INPUT_ELEMS float32): ", argv[1]);

    double seconds = 0.0;
    if (edgebin_model_run(inputs, outputs) != 0) fail(6, "the model returned an error on sample 0", NULL);
    for (long i = 0; i < n; ++i) {
        double start = now_s();
        edgebin_runner_begin();
        int err = edgebin_model_run(inputs + i * EDGEBIN_INPUT_ELEMS, outputs + i * EDGEBIN_OUTPUT_ELEMS);
        edgebin_runner_end();
        seconds += now_s() - start;
        if (err != 0) fail(6, "the model returned an error", NULL);
    }

    FILE* out = fopen(argv[2], "wb");
    if (!out) fail(7, "cannot write ", argv[2]);
    size_t out_count = (size_t)n * EDGEBIN_OUTPUT_ELEMS;
    if (fwrite(outputs, sizeof(float), out_count, out) != out_count || fclose(out) != 0) {
        fail(7, "short write to ", argv[2]);
    }
    const char* maps = getenv("EDGEBIN_MAPS");
    if (maps) copy_maps(maps);
    printf("samples %ld\noutput_elems %d\noutput_dtype float32\nseconds_per_inference %.9f\n", n,
           EDGEBIN_OUTPUT_ELEMS, seconds / n);
    free(inputs);
    free(outputs);
    return 0;
}
