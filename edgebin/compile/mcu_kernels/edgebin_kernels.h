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
 * edgebin_matvec{,2,4}_{s8,u8s8}_rq(x, w, k, n, table, out, ...):  the same sums requantized in the kernel
 *   (edgebin_rq below: requant.py's fixed requant, bit for bit) and written as uint8/int8 outputs.
 *
 * Cores with the DSP extension (Cortex-M4, M7, M33, M55: __ARM_FEATURE_SIMD32) multiply two int8 pairs per
 * SMLAD: one 32-bit load brings 4 int8, SXTB16 and SXTB16-with-ROR-8 spread them into two pairs of int16, and
 * each pair meets the matching pair of the input in one SMLAD. Every path first spreads its columns into int16
 * pairs, once per call (a 1,152-byte stack buffer, EDGEBIN_SPREAD_WORDS; longer reductions take several passes),
 * because a weight word is then spread once for all P columns. P = 4 or 2 columns: per weight word one load and
 * two SXTB16, then per two columns one LDM of their four spread words and four SMLAD: 13 instructions per 16 MACs
 * with P = 4, 8 per 8 with P = 2. One column: four weight rows share each spread input word (one LDRD), each row
 * a load, two SXTB16 and two SMLAD: 21 instructions per 16 MACs. Words may be unaligned (LDR allows it on these
 * cores). Weights stay int8 in flash. Other cores and the host run the plain C loops; define EDGEBIN_NO_SIMD to
 * force them.
 */
#ifndef EDGEBIN_KERNELS_H
#define EDGEBIN_KERNELS_H

#include <stdint.h>
#include <string.h>
#ifdef __ARM_FEATURE_SAT
#include <arm_acle.h>
#endif

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

/* The requant fused into the micro-kernel (edgebin_matvec{,2,4}_{s8,u8s8}_rq): the sums never go through memory.
 * requant.py's fixed requant of a sum is t = sum G + A (G: the channel's multiplier on the grid 2^-e, A its addend,
 * the bias, 2^(e-1) + reach and the zero point in it) and t >> e, unless t is within `reach` of a tie. Here the
 * same in 32 bits: the sum comes scaled by 2^s (the spread columns), and v = Ra + hi32(sum 2^s G 2^m) (one SMMLA,
 * G 2^m and Ra = floor(A 2^(F-e)) + 2 + (zy - plus) 2^F from edgebin_rq_table) is t 2^(F-e) plus 0 to 2. So
 * v >> F (one USAT with its shift) is t >> e wherever v mod 2^F > `window` (the tie's neighbourhood and the 2 of
 * error): every output but about window / 2^F. Those take the exact branch, rne(f32(p 2^-e)) from the 64-bit t,
 * as requant.round_f32_half_even computes it: the same bits as the TVM epilogue, whose own exact branch is the
 * same formula. The schedule (mcu_schedule.fuse_requant) picks s, m, F so that nothing overflows. */
typedef struct {
  const int32_t* table;  /* per channel: G 2^m, Ra */
  uint8_t* out;          /* channel j, lane p at out[j stride + p] (int8 outputs: the same bytes) */
  int32_t stride;
  const int64_t* offset; /* A of channel j at offset[j astep] (for the exact branch) */
  int32_t astep, s, m, f, window, e, zy, lo, hi;
  int64_t addend;        /* A without the bias: p = t - addend */
} edgebin_rq;

/* rne(f32(p 2^-e)) + zy, clipped to [lo, hi]: requant.round_f32_half_even's exact branch. */
EDGEBIN_INLINE int32_t edgebin_rq_exact(int64_t p, int32_t e, int32_t zy, int32_t lo, int32_t hi) {
  const uint64_t u = p < 0 ? 0 - (uint64_t)p : (uint64_t)p;
  const int64_t q = (int64_t)(u >> e), d = (int64_t)(u & ((1ull << e) - 1)) - ((int64_t)1 << (e - 1));
  int32_t k = 0;
  while (k < 8 && q >= ((int64_t)1 << k)) ++k;
  const int64_t w = e >= 25 ? ((int64_t)1 << (e - 25)) << k : ((int64_t)1 << k) >> (25 - e);
  int64_t r = q + ((q & 1) ? d >= -w : d > w);
  r = (p < 0 ? -r : r) + zy;
  return (int32_t)(r < lo ? lo : r > hi ? hi : r);
}

/* Ra + the high word of sum g (SMMLA where there is one). */
EDGEBIN_INLINE int32_t edgebin_smmla(int32_t sum, int32_t g, int32_t ra) {
#if defined(__ARM_FEATURE_SIMD32) && defined(__thumb2__)
  int32_t r;
  __asm__("smmla %0, %1, %2, %3" : "=r"(r) : "r"(sum), "r"(g), "r"(ra));
  return r;
#else
  return ra + (int32_t)(((int64_t)sum * g) >> 32);
#endif
}

/* r clipped to [lo, hi]: one USAT or SSAT for uint8 or int8 outputs (gcc folds the shift before it in). */
EDGEBIN_INLINE int32_t edgebin_clip(int32_t r, int32_t lo, int32_t hi) {
#ifdef __ARM_FEATURE_SAT
  if (lo == 0 && hi == 255) return (int32_t)__usat(r, 8);
  if (lo == -128 && hi == 127) return __ssat(r, 8);
#endif
  return r < lo ? lo : r > hi ? hi : r;
}

/* Channel j's outputs from its `lanes` sums (each times 2^s), its constants loaded once: per output SMMLA, CMP with
 * the window (an opaque register, so that gcc compares with the shifted v in one instruction), the rare branch,
 * USAT and STRB. The empty asm after the exact branch's store keeps gcc from merging the two stores (which costs
 * a UXTB on the common path). */
EDGEBIN_INLINE void edgebin_rq_row(const edgebin_rq rq, int32_t j, const int32_t* s, const int lanes) {
  const int32_t g = rq.table[2 * j], ra = rq.table[2 * j + 1];
  uint8_t* out = rq.out + j * rq.stride;
  uint32_t bound = (uint32_t)rq.window << (32 - rq.f);
  __asm__("" : "+r"(bound));
  for (int p = 0; p < lanes; ++p) {
    const int32_t v = edgebin_smmla(s[p], g, ra);
    if (__builtin_expect((uint32_t)v << (32 - rq.f) <= bound, 0)) {
      out[p] = (uint8_t)edgebin_rq_exact((int64_t)(s[p] >> rq.s) * (g >> rq.m) + rq.offset[j * rq.astep] - rq.addend,
                                         rq.e, rq.zy, rq.lo, rq.hi);
      __asm__ volatile("" ::: "memory");
      continue;
    }
    out[p] = (uint8_t)edgebin_clip(v >> rq.f, rq.lo, rq.hi);
  }
}

/* edgebin_rq's table, once per kernel run: G 2^m and Ra = floor(A 2^-sh) + bias per channel (G at grid[j gstep], A
 * at offset[j astep]; sh < 0 scales A up). */
EDGEBIN_INLINE void edgebin_rq_table(const int32_t* grid, int32_t gstep, const int64_t* offset, int32_t astep,
                                     int32_t n, int32_t m, int32_t sh, int32_t bias, int32_t* table) {
  for (int32_t j = 0; j < n; ++j) {
    const int64_t a = offset[j * astep];
    table[2 * j] = (int32_t)((uint32_t)grid[j * gstep] << m);
    table[2 * j + 1] = (int32_t)(sh >= 0 ? a >> sh : a * ((int64_t)1 << -sh)) + bias;
  }
}

/* Where a row's sums go: int32 accumulators (acc), or requantized outputs (rq, when acc is NULL). */
EDGEBIN_INLINE void edgebin_put(int32_t* acc, const edgebin_rq* rq, int32_t j, const int32_t* s, const int lanes) {
  if (acc == 0) edgebin_rq_row(*rq, j, s, lanes);
  else
    for (int p = 0; p < lanes; ++p) acc[j * lanes + p] = s[p];
}

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

#define EDGEBIN_SPREAD_WORDS 288 /* stack for the spread columns: 1,152 bytes, 144 / P words of k a pass */

/* Words c0 .. c0 + cw - 1 of P columns (column p: the k bytes at x + p k) as int16 pairs, word c of column p at
 * xe[2 (c P + p)] (its bytes 0 and 2) and xe[2 (c P + p) + 1] (bytes 1 and 3), each times 2^sh (sh > 0: uint8
 * only, for the fused requant; 255 2^7 still fits an int16). */
EDGEBIN_INLINE void edgebin_spread(const uint8_t* x, int32_t k, int32_t c0, int32_t cw, uint32_t* xe, const int P,
                                   const int u, const int sh) {
  for (int32_t c = 0; c < cw; ++c)
    for (int p = 0; p < P; ++p) {
      uint32_t v = edgebin_load_s8x4((const int8_t*)x + p * k + 4 * (c0 + c));
      xe[2 * (c * P + p)] = EDGEBIN_X02(v, u) << sh;
      xe[2 * (c * P + p) + 1] = EDGEBIN_X13(v, u) << sh;
    }
}

/* The last r = k % 4 (2 or 3) input bytes of each column, with the k - 4 .. k - r ones zeroed, spread like a word:
 * the weight word that ends the row meets them, and the bytes it shares with the last full word count zero. */
EDGEBIN_INLINE void edgebin_spread_tail(const uint8_t* x, int32_t k, int32_t r, uint32_t* pair, const int u,
                                        const int sh) {
  uint32_t v = edgebin_load_s8x4((const int8_t*)x + k - 4) & (0xffffffffu << (8 * (4 - r)));
  pair[0] = EDGEBIN_X02(v, u) << sh;
  pair[1] = EDGEBIN_X13(v, u) << sh;
}

/* P = 2 or 4 columns, one row: per weight word (at wp, on by 4) a load and two SXTB16, then per two columns (at ep,
 * on by 16) one LDM of their four spread words and four SMLAD (SMUAD first when the sums start here): 13
 * instructions for 16 MACs with P = 4, 8 for 8 with P = 2. LDM wants its registers in ascending order, so the
 * column words are bound to r0-r3 (gcc moves whatever it kept there around the asm). */
#define EDGEBIN_WORD                  \
  "ldr    %[a], [%[wp]], #4\n\t"      \
  "sxtb16 %[b], %[a], ror #8\n\t"     \
  "sxtb16 %[a], %[a]\n\t"
#define EDGEBIN_TWO_COLUMNS(S, T)                           \
  "ldmia  %[ep]!, {%[x0], %[x1], %[x2], %[x3]}\n\t"         \
  "smlad  " S ", %[a], %[x0], " S "\n\t"                    \
  "smlad  " S ", %[b], %[x1], " S "\n\t"                    \
  "smlad  " T ", %[a], %[x2], " T "\n\t"                    \
  "smlad  " T ", %[b], %[x3], " T "\n\t"
#define EDGEBIN_TWO_FIRST(S, T)                             \
  "ldmia  %[ep]!, {%[x0], %[x1], %[x2], %[x3]}\n\t"         \
  "smuad  " S ", %[a], %[x0]\n\t"                           \
  "smlad  " S ", %[b], %[x1], " S "\n\t"                    \
  "smuad  " T ", %[a], %[x2]\n\t"                           \
  "smlad  " T ", %[b], %[x3], " T "\n\t"
#define EDGEBIN_STEP4(TWO) EDGEBIN_WORD TWO("%[s0]", "%[s1]") TWO("%[s2]", "%[s3]")
#define EDGEBIN_STEP2(TWO) EDGEBIN_WORD TWO("%[s0]", "%[s1]")
/* Four words a pass; the loop end is compared with a value in memory (no register left for it). */
#define EDGEBIN_LOOP(STEP) "1:\n\t" STEP STEP STEP STEP "ldr    %[a], %[end]\n\t" "cmp    %[wp], %[a]\n\t" "bne    1b\n\t"
#define EDGEBIN_SUMS4(C) [s0] C(s0), [s1] C(s1), [s2] C(s2), [s3] C(s3)
#define EDGEBIN_SUMS2(C) [s0] C(s0), [s1] C(s1)
#define EDGEBIN_TEMPS                                                                                        \
  [wp] "+r"(wp), [ep] "+r"(ep), [a] "=&r"(a), [b] "=&r"(b), [x0] "=&r"(x0), [x1] "=&r"(x1), [x2] "=&r"(x2), \
      [x3] "=&r"(x3)

/* Sums s[0..P-1] of one row over `words` weight words at wp and spread columns at ep; `first`: the sums start
 * with the first word (SMUAD) instead of adding to s. P = 1 is plain C (the rows left over by edgebin_rows4). */
EDGEBIN_INLINE void edgebin_row_words(const int8_t* wp, const uint32_t* ep, int32_t words, int32_t* s,
                                      const int first, const int P) {
  if (P == 1) {
    int32_t s0 = first ? 0 : s[0];
    for (int32_t c = 0; c < words; ++c) {
      uint32_t v = edgebin_load_s8x4(wp + 4 * c);
      s0 = edgebin_smlad(edgebin_sxtb16_ror8(v), ep[2 * c + 1], edgebin_smlad(edgebin_sxtb16(v), ep[2 * c], s0));
    }
    s[0] = s0;
    return;
  }
  int32_t s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
  register uint32_t x0 __asm__("r0"), x1 __asm__("r1"), x2 __asm__("r2"), x3 __asm__("r3");
  uint32_t a, b;
  if (first && words > 0) {
    if (P == 4)
      __asm__ volatile(EDGEBIN_STEP4(EDGEBIN_TWO_FIRST) : EDGEBIN_SUMS4("=&r"), EDGEBIN_TEMPS : : "memory");
    else
      __asm__ volatile(EDGEBIN_STEP2(EDGEBIN_TWO_FIRST) : EDGEBIN_SUMS2("=&r"), EDGEBIN_TEMPS : : "memory");
    --words;
  }
  const int8_t* const wend = wp + 4 * words;
  for (int32_t i = 0; i < (words & 3); ++i) {
    if (P == 4) __asm__ volatile(EDGEBIN_STEP4(EDGEBIN_TWO_COLUMNS) : EDGEBIN_SUMS4("+r"), EDGEBIN_TEMPS : : "memory");
    else __asm__ volatile(EDGEBIN_STEP2(EDGEBIN_TWO_COLUMNS) : EDGEBIN_SUMS2("+r"), EDGEBIN_TEMPS : : "memory");
  }
  if (words >= 4 && P == 4)
    __asm__ volatile(EDGEBIN_LOOP(EDGEBIN_STEP4(EDGEBIN_TWO_COLUMNS))
                     : EDGEBIN_SUMS4("+r"), EDGEBIN_TEMPS : [end] "m"(wend) : "cc", "memory");
  else if (words >= 4)
    __asm__ volatile(EDGEBIN_LOOP(EDGEBIN_STEP2(EDGEBIN_TWO_COLUMNS))
                     : EDGEBIN_SUMS2("+r"), EDGEBIN_TEMPS : [end] "m"(wend) : "cc", "memory");
  s[0] = s0;
  s[1] = s1;
  s[2] = s2;
  s[3] = s3;
}

#undef EDGEBIN_WORD
#undef EDGEBIN_TWO_COLUMNS
#undef EDGEBIN_TWO_FIRST
#undef EDGEBIN_STEP4
#undef EDGEBIN_STEP2
#undef EDGEBIN_LOOP
#undef EDGEBIN_SUMS4
#undef EDGEBIN_SUMS2
#undef EDGEBIN_TEMPS

/* One column, four rows (at wa and wa + k, wb = wa + 2k and wb + k; wa and wb on by 4): per word of the spread
 * column (at ep, on by 8) one LDRD, then per row a load, two SXTB16 and two SMLAD: 21 instructions for 16 MACs
 * (spreading the column once per call saves the two SXTB16 per word and row group that a raw column costs). */
#define EDGEBIN_ROW(W, S)               \
  "ldr    %[a], " W "\n\t"              \
  "sxtb16 %[b], %[a], ror #8\n\t"       \
  "sxtb16 %[a], %[a]\n\t"               \
  "smlad  " S ", %[a], %[x0], " S "\n\t" \
  "smlad  " S ", %[b], %[x1], " S "\n\t"
#define EDGEBIN_ROWS4_STEP                                                      \
  "ldrd   %[x0], %[x1], [%[ep]], #8\n\t"                                        \
  EDGEBIN_ROW("[%[wa], %[k]]", "%[s1]") EDGEBIN_ROW("[%[wa]], #4", "%[s0]")     \
  EDGEBIN_ROW("[%[wb], %[k]]", "%[s3]") EDGEBIN_ROW("[%[wb]], #4", "%[s2]")
#define EDGEBIN_ROWS4_OPERANDS                                                                               \
  : [s0] "+r"(s0), [s1] "+r"(s1), [s2] "+r"(s2), [s3] "+r"(s3), [wa] "+r"(wa), [wb] "+r"(wb), [ep] "+r"(ep), \
    [x0] "=&r"(x0), [x1] "=&r"(x1), [a] "=&r"(a), [b] "=&r"(b)                                               \
  : [k] "r"(k), [end] "m"(wend)                                                                              \
  : "cc", "memory"

/* Sums s[0..3] of rows wa, wa + k, wa + 2k, wa + 3k over `words` weight words and the spread column at ep. */
EDGEBIN_INLINE void edgebin_rows4_words(const int8_t* wa, int32_t k, const uint32_t* ep, int32_t words, int32_t* s) {
  int32_t s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
  const int8_t* wb = wa + 2 * k;
  const int8_t* const wend = wa + 4 * words;  /* the loop runs while wa has not reached it */
  uint32_t x0, x1, a, b;
  for (int32_t i = 0; i < (words & 7); ++i) __asm__ volatile(EDGEBIN_ROWS4_STEP EDGEBIN_ROWS4_OPERANDS);
  if (words >= 8) /* eight words a pass: 171 instructions for 128 MACs (the loop test is 3 of them) */
    __asm__ volatile("1:\n\t" EDGEBIN_ROWS4_STEP EDGEBIN_ROWS4_STEP EDGEBIN_ROWS4_STEP EDGEBIN_ROWS4_STEP
                     EDGEBIN_ROWS4_STEP EDGEBIN_ROWS4_STEP EDGEBIN_ROWS4_STEP EDGEBIN_ROWS4_STEP
                     "ldr    %[a], %[end]\n\t"
                     "cmp    %[wa], %[a]\n\t"
                     "bne    1b\n\t" EDGEBIN_ROWS4_OPERANDS);
  s[0] = s0;
  s[1] = s1;
  s[2] = s2;
  s[3] = s3;
}

#undef EDGEBIN_ROW
#undef EDGEBIN_ROWS4_STEP
#undef EDGEBIN_ROWS4_OPERANDS

/* The P-column matvec (P = 1, 2 or 4; P and k are constants wherever this is inlined). Per pass over up to
 * EDGEBIN_SPREAD_WORDS / (2 P) words of the reduction, the P columns are spread into int16 pairs (edgebin_spread),
 * then the weight words meet them: one row against all P columns (P = 2, 4), or four rows against the one column
 * (P = 1); a later pass adds to the sums in acc. The r = k % 4 last bytes: one byte as a multiply-add per column;
 * two or three as the word that ends the row (edgebin_spread_tail) when k >= 4. */
EDGEBIN_INLINE void edgebin_matvecp_x8(const void* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc,
                                       const edgebin_rq* rq, const int P, const int u) {
  const uint8_t* xb = (const uint8_t*)x;
  const int sh = acc == 0 ? rq->s : 0;
  const int32_t words = k >> 2, r = k & 3, tail_word = r >= 2 && words > 0, pass = EDGEBIN_SPREAD_WORDS / (2 * P);
  uint32_t xe[EDGEBIN_SPREAD_WORDS], xt[2 * 4];
  int32_t xl[3 * 4];
  for (int p = 0; p < P; ++p) {
    if (tail_word) edgebin_spread_tail(xb + p * k, k, r, xt + 2 * p, u, sh);
    else
      for (int32_t i = 0; i < r; ++i) xl[3 * p + i] = EDGEBIN_XI(xb, p * k + 4 * words + i, u) << sh;
  }
  int32_t c0 = 0;
  do {
    const int32_t cw = words - c0 < pass ? words - c0 : pass, last = c0 + cw == words;
    edgebin_spread(xb, k, c0, cw, xe, P, u, sh);
    int32_t j = 0;
    if (P == 1)
      for (; j + 4 <= n; j += 4) {
        const int8_t* row = w + j * k;
        int32_t s[4] = {0, 0, 0, 0};
        if (c0 > 0)
          for (int q = 0; q < 4; ++q) s[q] = acc[j + q];
        edgebin_rows4_words(row + 4 * c0, k, xe, cw, s);
        if (last && tail_word) edgebin_rows4_words(row + k - 4, k, xt, 1, s);
        else if (last)
          for (int32_t i = 0; i < r; ++i)
            for (int q = 0; q < 4; ++q) s[q] += (int32_t)row[q * k + 4 * words + i] * xl[i];
        for (int q = 0; q < 4; ++q) edgebin_put(acc, rq, j + q, s + q, 1);
      }
    for (; j < n; ++j) {
      const int8_t* row = w + j * k;
      int32_t s[4] = {0, 0, 0, 0};
      if (c0 > 0)
        for (int p = 0; p < P; ++p) s[p] = acc[j * P + p];
      edgebin_row_words(row + 4 * c0, xe, cw, s, c0 == 0, P);
      if (last && tail_word) edgebin_row_words(row + k - 4, xt, 1, s, 0, P);
      else if (last)
        for (int32_t i = 0; i < r; ++i)
          for (int p = 0; p < P; ++p) s[p] += (int32_t)row[4 * words + i] * xl[3 * p + i];
      edgebin_put(acc, rq, j, s, P);
    }
    c0 += cw;
  } while (c0 < words);
}

EDGEBIN_INLINE void edgebin_matvec_x8(const void* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc,
                                      const int u) {
  edgebin_matvecp_x8(x, w, k, n, acc, 0, 1, u);
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
                                       const edgebin_rq* rq, const int P, const int u) {
  int32_t s[4];
  for (int32_t j = 0; j < n; ++j) {
    for (int p = 0; p < P; ++p) {
      edgebin_matvec_x8((const int8_t*)x + p * k, w + j * k, k, 1, s + p, u);
      if (acc == 0) s[p] *= 1 << rq->s;
    }
    edgebin_put(acc, rq, j, s, P);
  }
}

#endif /* EDGEBIN_SIMD32 */

EDGEBIN_INLINE void edgebin_matvec_s8(const int8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvec_x8(x, w, k, n, acc, 0);
}

EDGEBIN_INLINE void edgebin_matvec_u8s8(const uint8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvec_x8(x, w, k, n, acc, 1);
}

EDGEBIN_INLINE void edgebin_matvec2_s8(const int8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp_x8(x, w, k, n, acc, 0, 2, 0);
}

EDGEBIN_INLINE void edgebin_matvec2_u8s8(const uint8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp_x8(x, w, k, n, acc, 0, 2, 1);
}

EDGEBIN_INLINE void edgebin_matvec4_s8(const int8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp_x8(x, w, k, n, acc, 0, 4, 0);
}

EDGEBIN_INLINE void edgebin_matvec4_u8s8(const uint8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp_x8(x, w, k, n, acc, 0, 4, 1);
}

/* The P-column matvec with the requant fused (edgebin_rq above): uint8/int8 outputs, no accumulators. One pass of
 * the spread buffer only (k <= 4 EDGEBIN_SPREAD_WORDS / (2 P) + 3; the schedule checks it). */
EDGEBIN_INLINE void edgebin_matvecp_rq(const void* x, const int8_t* w, int32_t k, int32_t n, const int32_t* table,
                                       void* out, int32_t stride, const int64_t* offset, int32_t astep, int32_t s,
                                       int32_t m, int32_t f, int32_t window, int32_t e, int64_t addend, int32_t zy,
                                       int32_t lo, int32_t hi, const int P, const int u) {
  const edgebin_rq rq = {table, (uint8_t*)out, stride, offset, astep, s, m, f, window, e, zy, lo, hi, addend};
  edgebin_matvecp_x8(x, w, k, n, 0, &rq, P, u);
}

#define EDGEBIN_MATVEC_RQ(NAME, XT, P, U)                                                                            \
  EDGEBIN_INLINE void NAME(const XT* x, const int8_t* w, int32_t k, int32_t n, const int32_t* table, void* out,       \
                           int32_t stride, const int64_t* offset, int32_t astep, int32_t s, int32_t m, int32_t f,    \
                           int32_t window, int32_t e, int64_t addend, int32_t zy, int32_t lo, int32_t hi) {          \
    edgebin_matvecp_rq(x, w, k, n, table, out, stride, offset, astep, s, m, f, window, e, addend, zy, lo, hi, P, U); \
  }
EDGEBIN_MATVEC_RQ(edgebin_matvec_s8_rq, int8_t, 1, 0)
EDGEBIN_MATVEC_RQ(edgebin_matvec_u8s8_rq, uint8_t, 1, 1)
EDGEBIN_MATVEC_RQ(edgebin_matvec2_s8_rq, int8_t, 2, 0)
EDGEBIN_MATVEC_RQ(edgebin_matvec2_u8s8_rq, uint8_t, 2, 1)
EDGEBIN_MATVEC_RQ(edgebin_matvec4_s8_rq, int8_t, 4, 0)
EDGEBIN_MATVEC_RQ(edgebin_matvec4_u8s8_rq, uint8_t, 4, 1)
#undef EDGEBIN_MATVEC_RQ

#undef EDGEBIN_INLINE
#undef EDGEBIN_XI

#endif /* EDGEBIN_KERNELS_H */
