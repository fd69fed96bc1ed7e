/* Micro-kernels that edgebin's Cortex-M schedule calls from the TVM-generated kernels: the schedule emits the calls
 * (T.call_extern), kernels.c includes this header, edgebin copies it into every bundle that needs it.
 *
 * edgebin_matvec_s8(x, w, k, n, acc):  acc[j] += sum_{i<k} x[i] * w[j*k + i]  for j < n
 *   An int8 row-major matrix (n rows of k) times an int8 vector, added to int32 accumulators. It is every int8
 *   conv (x: one output pixel's receptive field, gathered im2col-style; w: the OIHW weights) and gemm
 *   (x: an input row; w: the weights stored (out, in)). Sums are exact in int32, so every path below gives
 *   the same result bit for bit.
 * edgebin_matvec_u8s8(x, w, k, n, acc):  the same with a uint8 x (onnxruntime's preferred QDQ form, which
 *   edgebin exports): the input bytes are zero-extended (UXTB16) instead of sign-extended; nothing else changes.
 *
 * Cores with the DSP extension (Cortex-M4, M7, M33, M55: __ARM_FEATURE_SIMD32) multiply two int8 pairs per
 * SMLAD: one 32-bit load brings 4 int8, SXTB16 and SXTB16-with-ROR-8 spread them into two pairs of int16, and
 * each pair meets the matching pair of the input in one SMLAD. Four weight rows share each input word: 51
 * instructions per 32 MACs in the inner loop. Words may be unaligned (LDR allows it on these cores). Weights stay
 * int8 in flash. Other cores and the host run the plain C loop; define EDGEBIN_NO_SIMD to force it.
 */
#ifndef EDGEBIN_KERNELS_H
#define EDGEBIN_KERNELS_H

#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_SIMD32) && defined(__thumb2__) && !defined(EDGEBIN_NO_SIMD)
#define EDGEBIN_SIMD32 1
#endif

/* x[i] of an int8 (u = 0) or uint8 (u = 1) input. */
#define EDGEBIN_XI(x, i, u) ((u) ? (int32_t)((const uint8_t*)(x))[i] : (int32_t)((const int8_t*)(x))[i])

#ifdef EDGEBIN_SIMD32

/* Four int8 at any address as one word: one LDR (unaligned is fine on cores with SIMD32). */
static inline uint32_t edgebin_load_s8x4(const int8_t* p) {
  uint32_t v;
  memcpy(&v, p, sizeof(v));
  return v;
}

/* (b0, b2) and (b1, b3) of a word of four int8, each sign-extended to int16. */
static inline uint32_t edgebin_sxtb16(uint32_t v) {
  uint32_t r;
  __asm__("sxtb16 %0, %1" : "=r"(r) : "r"(v));
  return r;
}

static inline uint32_t edgebin_sxtb16_ror8(uint32_t v) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}

static inline uint32_t edgebin_uxtb16(uint32_t v) {
  uint32_t r;
  __asm__("uxtb16 %0, %1" : "=r"(r) : "r"(v));
  return r;
}

static inline uint32_t edgebin_uxtb16_ror8(uint32_t v) {
  uint32_t r;
  __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}

/* The input word's bytes as two pairs of int16: sign-extended for int8, zero-extended for uint8. */
#define EDGEBIN_X02(v, u) ((u) ? edgebin_uxtb16(v) : edgebin_sxtb16(v))
#define EDGEBIN_X13(v, u) ((u) ? edgebin_uxtb16_ror8(v) : edgebin_sxtb16_ror8(v))

static inline int32_t edgebin_smlad(uint32_t a, uint32_t b, int32_t acc) {
  int32_t r;
  __asm__("smlad %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
  return r;
}

/* Two rows: acc[0] += x . w0, acc[1] += x . w1 (the rows left over by the four-row loop). */
static inline void edgebin_dot2_x8(const void* x, const int8_t* w0, const int8_t* w1, int32_t k, int32_t* acc,
                                   const int u) {
  int32_t s0 = acc[0], s1 = acc[1], i = 0;
  for (; i + 4 <= k; i += 4) {
    uint32_t xv = edgebin_load_s8x4((const int8_t*)x + i);
    uint32_t a = edgebin_load_s8x4(w0 + i), b = edgebin_load_s8x4(w1 + i);
    uint32_t x02 = EDGEBIN_X02(xv, u), x13 = EDGEBIN_X13(xv, u);
    s0 = edgebin_smlad(edgebin_sxtb16(a), x02, s0);
    s0 = edgebin_smlad(edgebin_sxtb16_ror8(a), x13, s0);
    s1 = edgebin_smlad(edgebin_sxtb16(b), x02, s1);
    s1 = edgebin_smlad(edgebin_sxtb16_ror8(b), x13, s1);
  }
  for (; i < k; ++i) {
    s0 += EDGEBIN_XI(x, i, u) * (int32_t)w0[i];
    s1 += EDGEBIN_XI(x, i, u) * (int32_t)w1[i];
  }
  acc[0] = s0;
  acc[1] = s1;
}

/* One row: acc + x . w. */
static inline int32_t edgebin_dot_x8(const void* x, const int8_t* w, int32_t k, int32_t acc, const int u) {
  int32_t i = 0;
  for (; i + 4 <= k; i += 4) {
    uint32_t xv = edgebin_load_s8x4((const int8_t*)x + i), wv = edgebin_load_s8x4(w + i);
    acc = edgebin_smlad(edgebin_sxtb16(wv), EDGEBIN_X02(xv, u), acc);
    acc = edgebin_smlad(edgebin_sxtb16_ror8(wv), EDGEBIN_X13(xv, u), acc);
  }
  for (; i < k; ++i) acc += EDGEBIN_XI(x, i, u) * (int32_t)w[i];
  return acc;
}

/* One step of the four-row loop: 4 inputs x rows wa, wa + k, wa + 2k, wa + 3k; xp and wa move on by 4.
 * 4 + 5 loads, 10 SXTB16, 8 SMLAD, 1 address: 24 instructions for 16 MACs. XT extends the input bytes:
 * "sxtb16" for int8, "uxtb16" for uint8. */
#define EDGEBIN_MATVEC_STEP(XT)             \
  "ldr    %[x02], [%[xp]], #4\n\t"          \
  XT "   %[x13], %[x02], ror #8\n\t"        \
  XT "   %[x02], %[x02]\n\t"                \
  "add    %[t], %[wa], %[k]\n\t"            \
  "ldr    %[a], [%[t], %[k], lsl #1]\n\t"   \
  "sxtb16 %[t], %[a]\n\t"                   \
  "sxtb16 %[a], %[a], ror #8\n\t"           \
  "smlad  %[s3], %[t], %[x02], %[s3]\n\t"   \
  "smlad  %[s3], %[a], %[x13], %[s3]\n\t"   \
  "ldr    %[a], [%[wa], %[k], lsl #1]\n\t"  \
  "sxtb16 %[t], %[a]\n\t"                   \
  "sxtb16 %[a], %[a], ror #8\n\t"           \
  "smlad  %[s2], %[t], %[x02], %[s2]\n\t"   \
  "smlad  %[s2], %[a], %[x13], %[s2]\n\t"   \
  "ldr    %[a], [%[wa], %[k]]\n\t"          \
  "sxtb16 %[t], %[a]\n\t"                   \
  "sxtb16 %[a], %[a], ror #8\n\t"           \
  "smlad  %[s1], %[t], %[x02], %[s1]\n\t"   \
  "smlad  %[s1], %[a], %[x13], %[s1]\n\t"   \
  "ldr    %[a], [%[wa]], #4\n\t"            \
  "sxtb16 %[t], %[a]\n\t"                   \
  "sxtb16 %[a], %[a], ror #8\n\t"           \
  "smlad  %[s0], %[t], %[x02], %[s0]\n\t"   \
  "smlad  %[s0], %[a], %[x13], %[s0]\n\t"

/* Eleven registers. A twelfth or thirteenth (a second row pointer, a loop counter) would save an instruction,
 * but gcc then fails ("impossible constraints") inside kernels whose epilogue keeps many values live, or with a
 * frame pointer; so the loop end is compared with a value in memory, once per two steps. */
#define EDGEBIN_MATVEC_OPERANDS                                                                          \
  : [s0] "+r"(s0), [s1] "+r"(s1), [s2] "+r"(s2), [s3] "+r"(s3), [xp] "+r"(xp), [wa] "+r"(wa),          \
    [x02] "=&r"(x02), [x13] "=&r"(x13), [a] "=&r"(a), [t] "=&r"(t)                                      \
  : [k] "r"(k), [end] "m"(x_end)                                                                        \
  : "cc", "memory"

/* The matvec for an int8 (u = 0) or uint8 (u = 1) input; `u` is a constant wherever this is inlined. */
static inline __attribute__((always_inline)) void edgebin_matvec_x8(const void* x, const int8_t* w, int32_t k,
                                                                    int32_t n, int32_t* acc, const int u) {
  const int32_t words = k >> 2, rest = k & 3, n4 = n & ~3;
  int32_t j = 0;
  for (; j < n4; j += 4) { /* rows j..j+3 at wa, wa + k, wa + 2k, wa + 3k */
    const int8_t* xp = (const int8_t*)x;
    const int8_t* wa = w + j * k;
    const int8_t* const x_end = xp + 4 * words;
    int32_t s0 = acc[j], s1 = acc[j + 1], s2 = acc[j + 2], s3 = acc[j + 3];
    uint32_t x02, x13, a, t;
    if (words & 1) {
      if (u) __asm__ volatile(EDGEBIN_MATVEC_STEP("uxtb16") EDGEBIN_MATVEC_OPERANDS);
      else __asm__ volatile(EDGEBIN_MATVEC_STEP("sxtb16") EDGEBIN_MATVEC_OPERANDS);
    }
    if (words > 1 && u) {  /* 51 instructions for 32 MACs */
      __asm__ volatile("1:\n\t" EDGEBIN_MATVEC_STEP("uxtb16") EDGEBIN_MATVEC_STEP("uxtb16")
                       "ldr    %[t], %[end]\n\t"
                       "cmp    %[xp], %[t]\n\t"
                       "bne    1b\n\t" EDGEBIN_MATVEC_OPERANDS);
    } else if (words > 1) {
      __asm__ volatile("1:\n\t" EDGEBIN_MATVEC_STEP("sxtb16") EDGEBIN_MATVEC_STEP("sxtb16")
                       "ldr    %[t], %[end]\n\t"
                       "cmp    %[xp], %[t]\n\t"
                       "bne    1b\n\t" EDGEBIN_MATVEC_OPERANDS);
    }
    for (int32_t i = 0; i < rest; ++i) {
      int32_t xi = EDGEBIN_XI(xp, i, u);
      s0 += xi * wa[i];
      s1 += xi * wa[k + i];
      s2 += xi * wa[2 * k + i];
      s3 += xi * wa[3 * k + i];
    }
    acc[j] = s0;
    acc[j + 1] = s1;
    acc[j + 2] = s2;
    acc[j + 3] = s3;
  }
  for (; j + 2 <= n; j += 2) edgebin_dot2_x8(x, w + j * k, w + (j + 1) * k, k, acc + j, u);
  if (j < n) acc[j] = edgebin_dot_x8(x, w + j * k, k, acc[j], u);
}


#undef EDGEBIN_MATVEC_STEP
#undef EDGEBIN_MATVEC_OPERANDS
#undef EDGEBIN_X02
#undef EDGEBIN_X13

#else /* plain C: the host, Cortex-M0/M0+/M3 */

static inline void edgebin_matvec_x8(const void* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc,
                                     const int u) {
  for (int32_t j = 0; j < n; ++j) {
    const int8_t* row = w + j * k;
    int32_t s = acc[j];
    for (int32_t i = 0; i < k; ++i) s += EDGEBIN_XI(x, i, u) * (int32_t)row[i];
    acc[j] = s;
  }
}

#endif /* EDGEBIN_SIMD32 */

static inline void edgebin_matvec_s8(const int8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvec_x8(x, w, k, n, acc, 0);
}

static inline void edgebin_matvec_u8s8(const uint8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvec_x8(x, w, k, n, acc, 1);
}

#undef EDGEBIN_XI

#endif /* EDGEBIN_KERNELS_H */
