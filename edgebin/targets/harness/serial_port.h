/*
 * Board hooks for serial_main.c, the board side of edgebin's serial protocol (docs/serial-protocol.md).
 *
 * The board support code implements edgebin_serial_read and edgebin_serial_write (a UART, a USB CDC port...).
 * serial_main.c has no default for those two, so a forgotten one is a link error rather than a board that never
 * answers. The other hooks have weak defaults in serial_main.c; define one in your own file to replace it.
 *
 * The DWT helpers at the bottom are what the default cycle-counter hooks use; they need no vendor header.
 */
#ifndef EDGEBIN_SERIAL_PORT_H_
#define EDGEBIN_SERIAL_PORT_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Required. Block until all n bytes have arrived in buf. Return 0, or non-zero on a line error (overrun, framing,
 * a USB disconnect): serial_main.c then drops the frame it was reading, answers ERROR and waits for the next. */
int edgebin_serial_read(uint8_t *buf, size_t n);

/* Required. Block until all n bytes of buf are sent (or queued for sending). Return 0, or non-zero on an error,
 * which serial_main.c ignores: there is no one to tell. */
int edgebin_serial_write(const uint8_t *buf, size_t n);

/* Weak default: nothing (clocks and the port set up before main, e.g. by the vendor's SystemInit). */
void edgebin_board_init(void);

/* Weak default: EDGEBIN_CPU_HZ (define it with -D, or 0 = unknown). A CMSIS board returns SystemCoreClock.
 * HELLO reports it; the host turns cycles into seconds with it. */
uint32_t edgebin_cpu_hz(void);

/* Weak default: edgebin_dwt_enable(). Start the cycle counter; return 1 if it counts, 0 if there is none. */
int edgebin_cycles_enable(void);

/* Weak default: edgebin_dwt_read(). The free-running 32-bit counter; serial_main.c subtracts two readings
 * modulo 2^32, so one inference must take fewer than 2^32 cycles (25 s at 168 MHz). */
uint32_t edgebin_cycles_read(void);

/* ---- DWT cycle counter: Cortex-M3/M4/M7 (ARMv7-M) and M33/M35P/M55/M85 (ARMv8-M mainline) ----
 * Cortex-M0/M0+/M23 have no CYCCNT: there the helpers report no counter. Register addresses are the
 * architecture's (ARMv7-M ARM C1.6.5 DEMCR, C1.8 DWT); CMSIS names them CoreDebug->DEMCR and DWT->CTRL/CYCCNT. */
#if defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M' && defined(__ARM_ARCH_ISA_THUMB) && \
    __ARM_ARCH_ISA_THUMB >= 2
#define EDGEBIN_HAVE_DWT 1
#define EDGEBIN_DEMCR (*(volatile uint32_t *)0xE000EDFCu)      /* Debug Exception and Monitor Control */
#define EDGEBIN_DEMCR_TRCENA (1u << 24)                        /* powers the DWT and ITM */
#define EDGEBIN_DWT_CTRL (*(volatile uint32_t *)0xE0001000u)
#define EDGEBIN_DWT_CTRL_CYCCNTENA (1u << 0)
#define EDGEBIN_DWT_CTRL_NOCYCCNT (1u << 25)                   /* read-only: 1 = no cycle counter */
#define EDGEBIN_DWT_CYCCNT (*(volatile uint32_t *)0xE0001004u)
#define EDGEBIN_DWT_LAR (*(volatile uint32_t *)0xE0001FB0u)    /* CoreSight lock access (locked on some M7s) */
#define EDGEBIN_DWT_LSR (*(volatile uint32_t *)0xE0001FB4u)    /* bit 0: lock present, bit 1: locked */
#define EDGEBIN_CORESIGHT_UNLOCK 0xC5ACCE55u
#else
#define EDGEBIN_HAVE_DWT 0
#endif

/* Turn on DWT->CYCCNT from zero; 1 if it then counts. Some cores and emulators (QEMU) accept the writes but never
 * count, hence the check. */
static inline int edgebin_dwt_enable(void)
{
#if EDGEBIN_HAVE_DWT
    EDGEBIN_DEMCR |= EDGEBIN_DEMCR_TRCENA;
    if (EDGEBIN_DWT_CTRL & EDGEBIN_DWT_CTRL_NOCYCCNT) {
        return 0;
    }
    if ((EDGEBIN_DWT_LSR & 3u) == 3u) {
        EDGEBIN_DWT_LAR = EDGEBIN_CORESIGHT_UNLOCK;
    }
    EDGEBIN_DWT_CYCCNT = 0;
    EDGEBIN_DWT_CTRL |= EDGEBIN_DWT_CTRL_CYCCNTENA;
    uint32_t before = EDGEBIN_DWT_CYCCNT;
    for (volatile int i = 0; i < 8; i++) {
    }
    return EDGEBIN_DWT_CYCCNT != before;
#else
    return 0;
#endif
}

static inline uint32_t edgebin_dwt_read(void)
{
#if EDGEBIN_HAVE_DWT
    return EDGEBIN_DWT_CYCCNT;
#else
    return 0;
#endif
}

#ifdef __cplusplus
}
#endif

#endif /* EDGEBIN_SERIAL_PORT_H_ */
