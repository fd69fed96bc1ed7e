/*
 * QEMU harness for an edgebin Cortex-M bundle (docs/mcu-bundle.md): runs the model on many samples per boot.
 *
 * Files, opened through semihosting relative to QEMU's working directory:
 *   inputs.bin   N x EDGEBIN_INPUT_ELEMS float32 (read)
 *   outputs.bin  N x EDGEBIN_OUTPUT_ELEMS float32 (written)
 *   result.txt   "key value" lines: status, samples, stack_bytes, ... (written last)
 * and the exit code is the status (0 = all samples ran), which qemu-system-arm returns as its own exit code.
 *
 * Samples are read a chunk at a time into the free RAM between .bss and the stack (the heap region of picolibc's
 * linker script), as many as fit, rather than into a fixed buffer that would sit in .bss. Around the model
 * calls of each chunk, the harness calls edgebin_harness_begin/end: the instruction-count plugin counts only
 * between those two, so startup, file I/O and stack painting are not in the per-inference count. The stack is
 * painted before each chunk and scanned after it, so stack_bytes is the deepest the model calls went.
 *
 * It uses picolibc's sys_semihost_* calls directly rather than stdio: one host call per chunk, no FILE buffers.
 * The exit code comes back through crt0-semihost's exit(); a CPU fault makes its handler print the registers
 * and exit(1), which the runner turns into an error naming the faulting function.
 */
#include <semihost.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

#ifdef EDGEBIN_EXPECT_INPUT_ELEMS /* set by the runner from bundle.json */
_Static_assert(EDGEBIN_INPUT_ELEMS == EDGEBIN_EXPECT_INPUT_ELEMS, "model.h and bundle.json disagree on the input size");
_Static_assert(EDGEBIN_OUTPUT_ELEMS == EDGEBIN_EXPECT_OUTPUT_ELEMS, "model.h and bundle.json disagree on the output size");
#endif

enum status {
    STATUS_OK = 0,
    STATUS_NO_INPUTS = 2,     /* inputs.bin missing */
    STATUS_BAD_INPUT_SIZE = 3, /* inputs.bin is not a whole number of samples */
    STATUS_MODEL_ERROR = 4,    /* edgebin_model_run returned non-zero */
    STATUS_STACK_OVERFLOW = 5, /* the model's stack reached the bottom of the reserved stack */
    STATUS_NO_RAM = 6,         /* not even one sample fits between .bss and the stack */
    STATUS_IO_ERROR = 7,       /* a semihosting read or write came up short */
};

#define PAINT 0xC0DEFACEu
#define SAMPLE_IN_BYTES ((size_t)EDGEBIN_INPUT_ELEMS * sizeof(float))
#define SAMPLE_OUT_BYTES ((size_t)EDGEBIN_OUTPUT_ELEMS * sizeof(float))

/* From picolibc.ld: the free RAM between .bss and the stack, and the top of the stack. */
extern uint8_t __heap_start[], __heap_end[], __stack[];

volatile uint32_t edgebin_harness_phase; /* distinct stores keep the two markers from being merged */

/* Window markers: the plugin is given their addresses. noipa: never inlined, cloned or folded together. */
__attribute__((noipa)) void edgebin_harness_begin(void) { edgebin_harness_phase = 1; }
__attribute__((noipa)) void edgebin_harness_end(void) { edgebin_harness_phase = 2; }

static uintptr_t stack_pointer(void)
{
    uintptr_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

/* Fill the unused stack (from its bottom to a little below the current frame) with PAINT. */
__attribute__((noinline)) static void paint_stack(void)
{
    volatile uint32_t *p = (volatile uint32_t *)__heap_end;
    volatile uint32_t *stop = (volatile uint32_t *)((stack_pointer() - 32) & ~(uintptr_t)3);
    while (p < stop) {
        *p++ = PAINT;
    }
}

/* Bytes of stack ever used since the last paint: from the top down to the lowest overwritten word. */
static size_t stack_used(void)
{
    const uint32_t *p = (const uint32_t *)__heap_end;
    while (p < (const uint32_t *)__stack && *p == PAINT) {
        p++;
    }
    return (size_t)(__stack - (const uint8_t *)p);
}

static int read_all(int fd, void *buf, size_t n)
{
    /* SYS_READ returns the number of bytes NOT read. */
    return sys_semihost_read(fd, buf, n) == 0 ? 0 : -1;
}

static int write_all(int fd, const void *buf, size_t n)
{
    return sys_semihost_write(fd, buf, n) == 0 ? 0 : -1;
}

static char *put_uint(char *p, uint32_t v)
{
    char digits[10];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) {
        *p++ = digits[--n];
    }
    return p;
}

static char *put_line(char *p, const char *key, int32_t value)
{
    while (*key) {
        *p++ = *key++;
    }
    *p++ = ' ';
    if (value < 0) {
        *p++ = '-';
    }
    p = put_uint(p, value < 0 ? (uint32_t)0 - (uint32_t)value : (uint32_t)value);
    *p++ = '\n';
    return p;
}

static int finish(int status, uint32_t samples, uint32_t chunks, uint32_t stack_bytes, int32_t model_rc)
{
    char text[256];
    char *p = text;
    p = put_line(p, "status", status);
    p = put_line(p, "samples", (int32_t)samples);
    p = put_line(p, "chunks", (int32_t)chunks);
    p = put_line(p, "stack_bytes", (int32_t)stack_bytes);
    p = put_line(p, "stack_reserved_bytes", (int32_t)(__stack - __heap_end));
    p = put_line(p, "model_rc", model_rc);
    int fd = sys_semihost_open("result.txt", SH_OPEN_W);
    if (fd >= 0) {
        write_all(fd, text, (size_t)(p - text));
        sys_semihost_close(fd);
    }
    return status;
}

int main(void)
{
    int in = sys_semihost_open("inputs.bin", SH_OPEN_R_B);
    if (in < 0) {
        return finish(STATUS_NO_INPUTS, 0, 0, 0, 0);
    }
    uintptr_t in_bytes = sys_semihost_flen(in);
    if (in_bytes == (uintptr_t)-1 || in_bytes % SAMPLE_IN_BYTES) {
        return finish(STATUS_BAD_INPUT_SIZE, 0, 0, 0, 0);
    }
    int out = sys_semihost_open("outputs.bin", SH_OPEN_W_B);
    if (out < 0) {
        return finish(STATUS_IO_ERROR, 0, 0, 0, 0);
    }
    size_t total = in_bytes / SAMPLE_IN_BYTES;
    size_t capacity = (size_t)(__heap_end - __heap_start) / (SAMPLE_IN_BYTES + SAMPLE_OUT_BYTES);
    if (capacity == 0) {
        return finish(STATUS_NO_RAM, 0, 0, 0, 0);
    }
    float *inputs = (float *)(void *)__heap_start;
    float *outputs = inputs + capacity * EDGEBIN_INPUT_ELEMS;

    size_t done = 0, stack_max = 0;
    uint32_t chunks = 0;
    int model_rc = 0;
    while (done < total) {
        size_t n = total - done < capacity ? total - done : capacity;
        if (read_all(in, inputs, n * SAMPLE_IN_BYTES)) {
            return finish(STATUS_IO_ERROR, done, chunks, stack_max, 0);
        }
        paint_stack();
        edgebin_harness_begin();
        size_t i = 0;
        for (; i < n && model_rc == 0; i++) {
            model_rc = edgebin_model_run(inputs + i * EDGEBIN_INPUT_ELEMS, outputs + i * EDGEBIN_OUTPUT_ELEMS);
        }
        edgebin_harness_end();
        size_t used = stack_used();
        stack_max = used > stack_max ? used : stack_max;
        chunks++;
        if (model_rc != 0) {
            return finish(STATUS_MODEL_ERROR, done + i - 1, chunks, stack_max, model_rc);
        }
        if (used >= (size_t)(__stack - __heap_end)) {
            return finish(STATUS_STACK_OVERFLOW, done, chunks, stack_max, 0);
        }
        if (write_all(out, outputs, n * SAMPLE_OUT_BYTES)) {
            return finish(STATUS_IO_ERROR, done, chunks, stack_max, 0);
        }
        done += n;
    }
    sys_semihost_close(in);
    sys_semihost_close(out);
    return finish(STATUS_OK, done, chunks, stack_max, 0);
}
