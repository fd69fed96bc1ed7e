/*
 * Board side of edgebin's serial protocol (docs/serial-protocol.md): runs an edgebin bundle on a real board for
 * `edgebin validate out/ --device serial:///dev/ttyACM0`.
 *
 * Build it with the bundle's sources (model.c, kernels.c, runtime.c; -O3 -Iinclude -I<bundle>) and one file of
 * your own that implements the two serial hooks of serial_port.h for your board. Portable C: no vendor HAL; the
 * DWT cycle counter is reached through its architectural addresses. Options (-D):
 *   EDGEBIN_CPU_HZ=168000000   the core clock, reported in HELLO so the host can turn cycles into seconds
 *                              (or define edgebin_cpu_hz(), e.g. returning CMSIS's SystemCoreClock)
 *
 * The loop: wait for a frame; answer HELLO with the model's sizes and name, RUN with one inference's RESULT
 * (status, cycles, outputs), anything else with ERROR. The board never speaks first. Cycles are DWT->CYCCNT
 * around edgebin_model_run, less the cost of reading the counter (measured once at start-up).
 */
#include <stddef.h>
#include <stdint.h> /* freestanding headers only: no libc needed */

#include "model.h"
#include "serial_port.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "serial_main.c sends floats as they lie in memory, which the protocol defines as little-endian"
#endif

#ifndef EDGEBIN_CPU_HZ
#define EDGEBIN_CPU_HZ 0u
#endif

#define PROTOCOL_VERSION 1u
#define MAGIC0 0xEBu
#define MAGIC1 0x0Bu
#define MSG_HELLO 0x01u
#define MSG_RUN 0x02u
#define MSG_RESULT 0x03u
#define MSG_ERROR 0x04u
#define FLAG_CYCLE_COUNTER 0x0001u
#define HELLO_FIXED_BYTES 16u
#define RESULT_FIXED_BYTES 12u
#define MAX_NAME_BYTES 64u
#define INPUT_BYTES ((uint32_t)EDGEBIN_INPUT_ELEMS * 4u)
#define OUTPUT_BYTES ((uint32_t)EDGEBIN_OUTPUT_ELEMS * 4u)

_Static_assert(sizeof(float) == 4, "the protocol carries float32");

static float input[EDGEBIN_INPUT_ELEMS];
static float output[EDGEBIN_OUTPUT_ELEMS];

/* ---- weak hook defaults (serial_port.h) ---- */

__attribute__((weak)) void edgebin_board_init(void) {}
__attribute__((weak)) uint32_t edgebin_cpu_hz(void) { return EDGEBIN_CPU_HZ; }
__attribute__((weak)) int edgebin_cycles_enable(void) { return edgebin_dwt_enable(); }
__attribute__((weak)) uint32_t edgebin_cycles_read(void) { return edgebin_dwt_read(); }

/* ---- CRC-32 (zlib's: reflected 0xEDB88320, init and final xor 0xFFFFFFFF), four bits at a time ---- */

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n)
{
    static const uint32_t nibble[16] = {
        0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
        0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
    };
    while (n--) {
        crc ^= *p++;
        crc = (crc >> 4) ^ nibble[crc & 15u];
        crc = (crc >> 4) ^ nibble[crc & 15u];
    }
    return crc;
}

static void put_u32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)(v >> 16);
    b[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* ---- sending: begin, any number of pieces, end ---- */

static uint32_t tx_crc;

static void send_piece(const void *p, size_t n)
{
    tx_crc = crc32_update(tx_crc, (const uint8_t *)p, n);
    (void)edgebin_serial_write((const uint8_t *)p, n);
}

static void send_begin(uint8_t type, uint32_t length)
{
    const uint8_t magic[2] = {MAGIC0, MAGIC1};
    uint8_t header[5];
    header[0] = type;
    put_u32(header + 1, length);
    (void)edgebin_serial_write(magic, sizeof magic);
    tx_crc = 0xFFFFFFFFu;
    send_piece(header, sizeof header);
}

static void send_end(void)
{
    uint8_t crc[4];
    put_u32(crc, ~tx_crc);
    (void)edgebin_serial_write(crc, sizeof crc);
}

static uint32_t text_bytes(const char *text)
{
    uint32_t n = 0;
    while (text[n]) {
        n++;
    }
    return n;
}

static char *append_text(char *p, const char *text)
{
    while (*text) {
        *p++ = *text++;
    }
    return p;
}

static char *append_uint(char *p, uint32_t v)
{
    char digits[10];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (n) {
        *p++ = digits[--n];
    }
    return p;
}

static void send_error(const char *text)
{
    uint32_t n = text_bytes(text);
    send_begin(MSG_ERROR, n);
    send_piece(text, n);
    send_end();
}

/* "unexpected frame: type T, N bytes (HELLO takes 0, RUN takes M)" */
static void send_unexpected(uint8_t type, uint32_t length)
{
    char text[96];
    char *p = append_text(text, "unexpected frame: type ");
    p = append_uint(p, type);
    p = append_text(p, ", ");
    p = append_uint(p, length);
    p = append_text(p, " bytes (HELLO takes 0, RUN takes ");
    p = append_uint(p, INPUT_BYTES);
    p = append_text(p, ")");
    *p = '\0';
    send_error(text);
}

static void send_hello(int have_cycles)
{
    const char *name = edgebin_model_name();
    uint32_t name_bytes = name ? text_bytes(name) : 0u;
    if (name_bytes > MAX_NAME_BYTES) {
        name_bytes = MAX_NAME_BYTES;
    }
    uint8_t fixed[HELLO_FIXED_BYTES];
    fixed[0] = (uint8_t)PROTOCOL_VERSION;
    fixed[1] = (uint8_t)(PROTOCOL_VERSION >> 8);
    fixed[2] = (uint8_t)(have_cycles ? FLAG_CYCLE_COUNTER : 0u);
    fixed[3] = 0;
    put_u32(fixed + 4, (uint32_t)EDGEBIN_INPUT_ELEMS);
    put_u32(fixed + 8, (uint32_t)EDGEBIN_OUTPUT_ELEMS);
    put_u32(fixed + 12, edgebin_cpu_hz());
    send_begin(MSG_HELLO, HELLO_FIXED_BYTES + name_bytes);
    send_piece(fixed, sizeof fixed);
    send_piece(name, name_bytes);
    send_end();
}

static void send_result(int32_t status, uint32_t cycles)
{
    uint8_t fixed[RESULT_FIXED_BYTES];
    put_u32(fixed, (uint32_t)status);
    put_u32(fixed + 4, cycles); /* cycles is a uint64 on the wire; DWT->CYCCNT gives 32 bits */
    put_u32(fixed + 8, 0u);
    send_begin(MSG_RESULT, RESULT_FIXED_BYTES + OUTPUT_BYTES);
    send_piece(fixed, sizeof fixed);
    send_piece(output, OUTPUT_BYTES);
    send_end();
}

/* ---- receiving ---- */

/* Skip bytes up to MAGIC, then read type and length. 0, or -1 on a line error. */
static int read_header(uint8_t *type, uint32_t *length, uint32_t *crc)
{
    uint8_t previous = 0, byte = 0;
    do {
        previous = byte;
        if (edgebin_serial_read(&byte, 1) != 0) {
            return -1;
        }
    } while (!(previous == MAGIC0 && byte == MAGIC1));
    uint8_t header[5];
    if (edgebin_serial_read(header, sizeof header) != 0) {
        return -1;
    }
    *type = header[0];
    *length = get_u32(header + 1);
    *crc = crc32_update(0xFFFFFFFFu, header, sizeof header);
    return 0;
}

/* Read the payload (if any) into dst and the CRC after it. 0 when it matches, -1 otherwise. */
static int read_rest(uint8_t *dst, uint32_t length, uint32_t crc)
{
    uint8_t sent[4];
    if (length && edgebin_serial_read(dst, length) != 0) {
        return -1;
    }
    crc = crc32_update(crc, dst, length);
    if (edgebin_serial_read(sent, sizeof sent) != 0) {
        return -1;
    }
    return get_u32(sent) == ~crc ? 0 : -1;
}

int main(void)
{
    edgebin_board_init();
    int have_cycles = edgebin_cycles_enable();
    uint32_t overhead = 0; /* the cost of one counter read, taken off every measurement */
    if (have_cycles) {
        uint32_t a = edgebin_cycles_read();
        uint32_t b = edgebin_cycles_read();
        overhead = b - a;
    }

    for (;;) {
        uint8_t type;
        uint32_t length, crc;
        if (read_header(&type, &length, &crc) != 0) {
            send_error("line error while waiting for a frame");
            continue;
        }
        if (type == MSG_HELLO && length == 0) {
            if (read_rest(NULL, 0, crc) != 0) {
                send_error("HELLO: CRC mismatch or line error");
                continue;
            }
            send_hello(have_cycles);
        } else if (type == MSG_RUN && length == INPUT_BYTES) {
            if (read_rest((uint8_t *)input, length, crc) != 0) {
                send_error("RUN: CRC mismatch or line error");
                continue;
            }
            uint32_t start = edgebin_cycles_read();
            int32_t status = (int32_t)edgebin_model_run(input, output);
            uint32_t cycles = edgebin_cycles_read() - start;
            send_result(status, have_cycles ? (cycles > overhead ? cycles - overhead : 0u) : 0u);
        } else {
            /* The payload is not read: the next search for MAGIC skips it. */
            send_unexpected(type, length);
        }
    }
}
