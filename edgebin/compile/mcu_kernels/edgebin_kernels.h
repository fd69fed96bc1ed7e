/* Micro-kernels that edgebin's Cortex-M schedule calls from the TVM-generated kernels: the schedule emits the calls
 * (T.call_extern), kernels.c includes this header, edgebin copies it into every bundle that needs it.
 *
 * edgebin_matvec_s8(x, w, k, n, acc):  acc[j] = sum_{i<k} x[i] * w[j*k + i]  for j < n
 *   An int8 row-major matrix (n rows of k) times an int8 vector, written to int32 accumulators (overwritten, so
 *   the caller zeroes nothing). It is every int8 conv (x: one output pixel's receptive field, gathered
 *   im2col-style; w: the OIHW weights) and gemm (x: an input row; w: the weights stored (out, in)). Sums are exact
 *   in int32, so every path below gives the same result bit for bit.
 * edgebin_matvec_u8s8(x, w, k, n, acc):  the same with a uint8 x (onnxruntime's preferred QDQ form, which
 *   edgebin exports): the input bytes are zero-extended (UXTB16) instead of sign-extended; nothing else changes.
 * edgebin_matvec{2,4}_{s8,u8s8}(x, w, k, n, acc):  P = 2 or 4 columns at once (P neighbouring output pixels):
 *   acc[j*P + p] = sum_{i<k} x[p*k + i] * w[j*k + i]. Each weight word is loaded and spread once for P columns.
 *
 * Cores with the DSP extension (Cortex-M4, M7, M33, M55: __ARM_FEATURE_SIMD32) multiply two int8 pairs per
 * SMLAD: one 32-bit load brings 4 int8, SXTB16 and SXTB16-with-ROR-8 spread them into two pairs of int16, and
 * each pair meets the matching pair of the input in one SMLAD. One column: four weight rows share each input word,
 * 51 instructions per 32 MACs in the inner loop. P columns: the columns are spread into int16 pairs once per call
 * (a 512-byte stack buffer, EDGEBIN_SPREAD_WORDS), then each weight word costs one load and two SXTB16 for P
 * columns, and each column one LDRD and two SMLAD: 33 instructions per 32 MACs with P = 4, 21 per 16 with P = 2,
 * which is what layers with a short reduction (a 3x3 conv of one channel: 9 MACs per output) need. Words may be
 * unaligned (LDR allows it on these cores). Weights stay int8 in flash. Other cores and the host run the plain C
 * loops; define EDGEBIN_NO_SIMD to force them.
 */
#ifndef EDGEBIN_KERNELS_H
#define EDGEBIN_KERNELS_H

#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_SIMD32) && defined(__thumb2__) && !defined(EDGEBIN_NO_SIMD)
#define EDGEBIN_SIMD32 1
#endif

/* Inlined into each calling kernel, whatever gcc's size heuristics say: its instructions stay its own (a QEMU
 * profile attributes them to the layer) and k, n and P are constants there. A file that defines it first (empty)
 * gets the functions with external linkage: cpu_kernels/edgebin_cpu_kernels.c, for TVM's LLVM builds. */
#ifndef EDGEBIN_INLINE
#define EDGEBIN_INLINE static inline __attribute__((always_inline))
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

/* Two rows: acc[0] = x . w0, acc[1] = x . w1 (the rows left over by the four-row loop). */
EDGEBIN_INLINE void edgebin_dot2_x8(const void* x, const int8_t* w0, const int8_t* w1, int32_t k, int32_t* acc,
                                    const int u) {
  int32_t s0 = 0, s1 = 0, i = 0;
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

/* One row: x . w. */
EDGEBIN_INLINE int32_t edgebin_dot_x8(const void* x, const int8_t* w, int32_t k, const int u) {
  int32_t acc = 0, i = 0;
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

/* The one-column matvec for an int8 (u = 0) or uint8 (u = 1) input; `u` is a constant wherever this is inlined. */
EDGEBIN_INLINE void edgebin_matvec_x8(const void* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc,
                                      const int u) {
  const int32_t words = k >> 2, rest = k & 3, n4 = n & ~3;
  int32_t j = 0;
  for (; j < n4; j += 4) { /* rows j..j+3 at wa, wa + k, wa + 2k, wa + 3k */
    const int8_t* xp = (const int8_t*)x;
    const int8_t* wa = w + j * k;
    const int8_t* const x_end = xp + 4 * words;
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
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
  if (j < n) acc[j] = edgebin_dot_x8(x, w + j * k, k, u);
}

#undef EDGEBIN_MATVEC_STEP
#undef EDGEBIN_MATVEC_OPERANDS

/* The last r = k % 4 (2 or 3) input bytes of each column, with the k - 4 .. k - r ones zeroed, spread like a word:
 * the weight word that ends the row meets them, and the bytes it shares with the last full word count zero. */
EDGEBIN_INLINE void edgebin_spread_tail(const uint8_t* x, int32_t k, int32_t r, uint32_t* pair, const int u) {
  uint32_t v = edgebin_load_s8x4((const int8_t*)x + k - 4) & (0xffffffffu << (8 * (4 - r)));
  pair[0] = EDGEBIN_X02(v, u);
  pair[1] = EDGEBIN_X13(v, u);
}

/* One weight word (at wp, which moves on by 4) against P spread columns (at ep: two words per column, moves on by
 * 8 P): a load, two SXTB16, then per column one LDRD and two SMLAD (SMUAD first when the sums start here). */
#define EDGEBIN_WORD                  \
  "ldr    %[a], [%[wp]], #4\n\t"      \
  "sxtb16 %[b], %[a], ror #8\n\t"     \
  "sxtb16 %[a], %[a]\n\t"
#define EDGEBIN_COLUMN(S)                        \
  "ldrd   %[x0], %[x1], [%[ep]], #8\n\t"         \
  "smlad  " S ", %[a], %[x0], " S "\n\t"         \
  "smlad  " S ", %[b], %[x1], " S "\n\t"
#define EDGEBIN_FIRST_COLUMN(S)                  \
  "ldrd   %[x0], %[x1], [%[ep]], #8\n\t"         \
  "smuad  " S ", %[a], %[x0]\n\t"                \
  "smlad  " S ", %[b], %[x1], " S "\n\t"
#define EDGEBIN_WORD4(COLUMN) EDGEBIN_WORD COLUMN("%[s0]") COLUMN("%[s1]") COLUMN("%[s2]") COLUMN("%[s3]")
#define EDGEBIN_WORD2(COLUMN) EDGEBIN_WORD COLUMN("%[s0]") COLUMN("%[s1]")
/* Two words a pass; the loop end is compared with a value in memory: ten registers at most for P = 4 (see
 * EDGEBIN_MATVEC_OPERANDS on why not more). */
#define EDGEBIN_LOOP(STEP) "1:\n\t" STEP STEP "ldr    %[a], %[end]\n\t" "cmp    %[wp], %[a]\n\t" "bne    1b\n\t"
#define EDGEBIN_SUMS4(C) [s0] C(s0), [s1] C(s1), [s2] C(s2), [s3] C(s3)
#define EDGEBIN_SUMS2(C) [s0] C(s0), [s1] C(s1)
#define EDGEBIN_TEMPS [wp] "+r"(wp), [ep] "+r"(ep), [a] "=&r"(a), [b] "=&r"(b), [x0] "=&r"(x0), [x1] "=&r"(x1)

/* Sums s[0..P-1] of one row over `words` weight words at wp and spread columns at ep; `first`: the sums start
 * with the first word (SMUAD) instead of adding to s. */
EDGEBIN_INLINE void edgebin_row_words(const int8_t* wp, const uint32_t* ep, int32_t words, int32_t* s,
                                      const int first, const int P) {
  int32_t s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
  uint32_t a, b, x0, x1;
  if (first && words > 0) {
    if (P == 4)
      __asm__ volatile(EDGEBIN_WORD4(EDGEBIN_FIRST_COLUMN) : EDGEBIN_SUMS4("=&r"), EDGEBIN_TEMPS : : "memory");
    else
      __asm__ volatile(EDGEBIN_WORD2(EDGEBIN_FIRST_COLUMN) : EDGEBIN_SUMS2("=&r"), EDGEBIN_TEMPS : : "memory");
    --words;
  }
  const int8_t* const wend = wp + 4 * words;
  if (words & 1) {
    if (P == 4) __asm__ volatile(EDGEBIN_WORD4(EDGEBIN_COLUMN) : EDGEBIN_SUMS4("+r"), EDGEBIN_TEMPS : : "memory");
    else __asm__ volatile(EDGEBIN_WORD2(EDGEBIN_COLUMN) : EDGEBIN_SUMS2("+r"), EDGEBIN_TEMPS : : "memory");
  }
  if (words > 1 && P == 4)
    __asm__ volatile(EDGEBIN_LOOP(EDGEBIN_WORD4(EDGEBIN_COLUMN))
                     : EDGEBIN_SUMS4("+r"), EDGEBIN_TEMPS : [end] "m"(wend) : "cc", "memory");
  else if (words > 1)
    __asm__ volatile(EDGEBIN_LOOP(EDGEBIN_WORD2(EDGEBIN_COLUMN))
                     : EDGEBIN_SUMS2("+r"), EDGEBIN_TEMPS : [end] "m"(wend) : "cc", "memory");
  s[0] = s0;
  s[1] = s1;
  s[2] = s2;
  s[3] = s3;
}

#undef EDGEBIN_WORD
#undef EDGEBIN_COLUMN
#undef EDGEBIN_FIRST_COLUMN
#undef EDGEBIN_WORD4
#undef EDGEBIN_WORD2
#undef EDGEBIN_LOOP
#undef EDGEBIN_SUMS4
#undef EDGEBIN_SUMS2
#undef EDGEBIN_TEMPS

#define EDGEBIN_SPREAD_WORDS 128 /* the P-column matvec's stack buffer: 512 bytes, 128 / (2 P) words of k a pass */

/* The P-column matvec (P = 2 or 4; P and k are constants wherever this is inlined). Per pass over up to
 * EDGEBIN_SPREAD_WORDS / (2 P) words of the reduction, the P columns are spread into int16 pairs (xe: word c of
 * column p at xe[2 * (c * P + p)]), then each row's weight words meet all P columns; a later pass adds to the
 * sums in acc. The r = k % 4 last bytes: one byte as a multiply-add per column; two or three as the word that
 * ends the row (edgebin_spread_tail) when k >= 4. */
EDGEBIN_INLINE void edgebin_matvecp_x8(const void* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc,
                                       const int P, const int u) {
  const uint8_t* xb = (const uint8_t*)x;
  const int32_t words = k >> 2, r = k & 3, tail_word = r >= 2 && words > 0, pass = EDGEBIN_SPREAD_WORDS / (2 * P);
  uint32_t xe[EDGEBIN_SPREAD_WORDS], xt[2 * 4];
  int32_t xl[3 * 4];
  for (int p = 0; p < P; ++p) {
    if (tail_word) edgebin_spread_tail(xb + p * k, k, r, xt + 2 * p, u);
    else
      for (int32_t i = 0; i < r; ++i) xl[3 * p + i] = EDGEBIN_XI(xb, p * k + 4 * words + i, u);
  }
  int32_t c0 = 0;
  do {
    const int32_t cw = words - c0 < pass ? words - c0 : pass, last = c0 + cw == words;
    for (int32_t c = 0; c < cw; ++c)
      for (int p = 0; p < P; ++p) {
        uint32_t v = edgebin_load_s8x4((const int8_t*)xb + p * k + 4 * (c0 + c));
        xe[2 * (c * P + p)] = EDGEBIN_X02(v, u);
        xe[2 * (c * P + p) + 1] = EDGEBIN_X13(v, u);
      }
    for (int32_t j = 0; j < n; ++j) {
      const int8_t* row = w + j * k;
      int32_t s[4] = {0, 0, 0, 0};
      if (c0 > 0)
        for (int p = 0; p < P; ++p) s[p] = acc[j * P + p];
      edgebin_row_words(row + 4 * c0, xe, cw, s, c0 == 0, P);
      if (last && tail_word) edgebin_row_words(row + k - 4, xt, 1, s, 0, P);
      else if (last)
        for (int32_t i = 0; i < r; ++i)
          for (int p = 0; p < P; ++p) s[p] += (int32_t)row[4 * words + i] * xl[3 * p + i];
      for (int p = 0; p < P; ++p) acc[j * P + p] = s[p];
    }
    c0 += cw;
  } while (c0 < words);
}

#undef EDGEBIN_X02
#undef EDGEBIN_X13

#else /* plain C: the host, Cortex-M0/M0+/M3 */

EDGEBIN_INLINE void edgebin_matvec_x8(const void* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc,
                                      const int u) {
  for (int32_t j = 0; j < n; ++j) {
    const int8_t* row = w + j * k;
    int32_t s = 0;
    for (int32_t i = 0; i < k; ++i) s += EDGEBIN_XI(x, i, u) * (int32_t)row[i];
    acc[j] = s;
  }
}

EDGEBIN_INLINE void edgebin_matvecp_x8(const void* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc,
                                       const int P, const int u) {
  for (int32_t j = 0; j < n; ++j)
    for (int p = 0; p < P; ++p) edgebin_matvec_x8((const int8_t*)x + p * k, w + j * k, k, 1, acc + j * P + p, u);
}

#endif /* EDGEBIN_SIMD32 */

EDGEBIN_INLINE void edgebin_matvec_s8(const int8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvec_x8(x, w, k, n, acc, 0);
}

EDGEBIN_INLINE void edgebin_matvec_u8s8(const uint8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvec_x8(x, w, k, n, acc, 1);
}

EDGEBIN_INLINE void edgebin_matvec2_s8(const int8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp_x8(x, w, k, n, acc, 2, 0);
}

EDGEBIN_INLINE void edgebin_matvec2_u8s8(const uint8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp_x8(x, w, k, n, acc, 2, 1);
}

EDGEBIN_INLINE void edgebin_matvec4_s8(const int8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp_x8(x, w, k, n, acc, 4, 0);
}

EDGEBIN_INLINE void edgebin_matvec4_u8s8(const uint8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp_x8(x, w, k, n, acc, 4, 1);
}

#undef EDGEBIN_INLINE
#undef EDGEBIN_XI

#endif /* EDGEBIN_KERNELS_H */
