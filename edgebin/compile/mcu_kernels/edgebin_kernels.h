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
 * edgebin_matvec{,2,4}_{s8,u8s8}_rq(x, w, k, n, table, out, ..., spread):  the same sums requantized in the kernel
 *   (edgebin_rq below: requant.py's fixed requant, bit for bit) and written as uint8/int8 outputs. spread = 1: the
 *   weights come from the table, spread into int16 pairs once per kernel run (edgebin_rq_spread; w unused).
 * edgebin_conv3x3_{s8,u8s8}_rq(img, rs, n, table, out, ...):  edgebin_matvec4_*_rq with spread = 1 for a 3x3 conv
 *   of one input channel, its four columns read from the image (rows rs bytes apart) instead of gathered.
 *
 * Cores with the DSP extension (Cortex-M4, M7, M33, M55: __ARM_FEATURE_SIMD32) multiply two int8 pairs per
 * SMLAD: one 32-bit load brings 4 int8, SXTB16 and SXTB16-with-ROR-8 spread them into two pairs of int16, and
 * each pair meets the matching pair of the input in one SMLAD. Every path first spreads its columns into int16
 * pairs, once per call (a 1,152-byte stack buffer, EDGEBIN_SPREAD_WORDS; longer reductions take several passes),
 * because a weight word is then spread once for all P columns. P = 4 or 2 columns: per weight word one load and
 * two SXTB16, then per two columns one LDM of their four spread words and four SMLAD: 13 instructions per 16 MACs
 * with P = 4, 8 per 8 with P = 2. One column: four weight rows share each spread input word (one LDRD), each row
 * a load, two SXTB16 and two SMLAD: 21 instructions per 16 MACs. The spread form (short rows: at most 64 bytes,
 * edgebin_rqs_simd) has the weights as int16 pairs in a stack table instead, so no SXTB16 is left in the channel loop,
 * which is one asm statement: per 16 MACs 11 instructions (P = 2, 4) or 12 (P = 1), per output 5 of requant, per
 * two or four channels 3 of loop. Words may be unaligned (LDR allows it on these cores). Weights stay int8 in flash.
 * Other cores and the host run the plain C loops; define EDGEBIN_NO_SIMD to force them.
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

/* Channel j's outputs from its `lanes` sums (each times 2^s) and its constants g = G 2^m and ra: per output SMMLA,
 * CMP with the window (an opaque register, so that gcc compares with the shifted v in one instruction), the rare
 * branch, USAT and STRB. The empty asm after the exact branch's store keeps gcc from merging the two stores (which
 * costs a UXTB on the common path). */
EDGEBIN_INLINE void edgebin_rq_out(const edgebin_rq rq, int32_t j, int32_t g, int32_t ra, const int32_t* s,
                                   const int lanes) {
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

/* The same with the constants from the table's first form (two words a channel). */
EDGEBIN_INLINE void edgebin_rq_row(const edgebin_rq rq, int32_t j, const int32_t* s, const int lanes) {
  edgebin_rq_out(rq, j, rq.table[2 * j], rq.table[2 * j + 1], s, lanes);
}

/* Words of a row of k int8 in the spread form: ceil(k / 2) int16 pairs. Row order (g = 0): bytes 4c + h and
 * 4c + h + 2 in pair 2c + h (h = 0, 1: SXTB16 and SXTB16 ROR 8 of word c), the last k % 4 bytes as the word that ends
 * the row, zeros after it, except that k % 4 = 2 puts its two bytes in one pair. The 3x3 window (g = 1, k = 9, tap
 * ky * 3 + kx), as edgebin_spread_3x3 reads it from the image: the outer taps of each row, (0, 2), (3, 5), (6, 8),
 * then the middle ones of rows 0 and 1, (1, 4), then that of row 2 alone. */
#define EDGEBIN_PAIRS(k) (((k) + 1) >> 1)
/* Words of a channel's record in the spread form's table: its pairs, G 2^m, Ra, the window bound, and the last
 * near-tie sum met with its output (a cache the channel loop reads, so that a sum that keeps coming back, a
 * background's, costs no exit from the asm; the output's word has the channel's index above its low byte). */
#define EDGEBIN_RECORD(k) (EDGEBIN_PAIRS(k) + 5)

/* The taps of pair i: a, and b (none when b >= k). */
EDGEBIN_INLINE void edgebin_pair_taps(int32_t k, int32_t i, const int g, int32_t* a, int32_t* b) {
  if (g) {
    *a = i < 3 ? 3 * i : i == 3 ? 1 : 7;
    *b = i < 3 ? 3 * i + 2 : i == 3 ? 4 : 9;
    return;
  }
  *a = 4 * (i >> 1) + (i & 1);
  *b = *a + ((k & 3) == 2 && 4 * (i >> 1) + 4 > k ? 1 : 2);
}

/* Pair i of a row of k int8, each times 2^s. */
EDGEBIN_INLINE uint32_t edgebin_pair(const int8_t* row, int32_t k, int32_t i, int32_t s, const int g) {
  int32_t a, b;
  edgebin_pair_taps(k, i, g, &a, &b);
  const uint32_t lo = (uint16_t)(row[a] * (1 << s)), hi = b < k ? (uint16_t)(row[b] * (1 << s)) : 0u;
  return lo | hi << 16;
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

/* Where pair i of channel j (of n, P columns a call) sits in its record. The kernel's channel loop takes two or
 * four channels a pass, every second one reading the columns backwards (LDMDB), which rewinds them for free: so,
 * when n is even, an odd channel's pairs are in groups of one weight load (2 pairs for P = 4, else 4; the last group
 * the shorter) in reverse group order. */
EDGEBIN_INLINE int32_t edgebin_pair_slot(int32_t i, int32_t pairs, int32_t j, int32_t n, const int P) {
  const int32_t g = P == 4 ? 2 : 4, last = (pairs - 1) / g, group = i / g;
  if ((n & 1) || !(j & 1)) return i;
  return group == last ? i - last * g : pairs - (group + 1) * g + i % g;
}

/* The table in the spread form, made in place from edgebin_rq_table's, once per run: per channel its row of w (n
 * rows of k) times 2^s as EDGEBIN_PAIRS(k) pairs (edgebin_pair_slot's order), then G 2^m, Ra, the window bound
 * (window 2^(32-F), as the kernel compares it; bit 0 set in the last channel's: the kernel's loop end) and an empty
 * near-tie cache (INT32_MIN, which no sum reaches; then j 2^8). The last channel first: a record never lands on a
 * channel's constants not yet read. */
EDGEBIN_INLINE void edgebin_rq_spread_g(const int8_t* w, int32_t k, int32_t n, int32_t s, int32_t bound,
                                        int32_t* table, const int P, const int g) {
  const int32_t pairs = EDGEBIN_PAIRS(k), group = P == 4 ? 2 : 4;
  for (int32_t j = n - 1; j >= 0; --j) {
    const int32_t gm = table[2 * j], ra = table[2 * j + 1];
    int32_t* rec = table + j * EDGEBIN_RECORD(k);
    for (int32_t i0 = 0; i0 < pairs; i0 += group) { /* a group at a time: edgebin_pair_slot, unrolled */
      int32_t* to = rec + edgebin_pair_slot(i0, pairs, j, n, P);
      for (int32_t i = i0; i < i0 + group && i < pairs; ++i) *to++ = (int32_t)edgebin_pair(w + j * k, k, i, s, g);
    }
    rec[pairs] = gm;
    rec[pairs + 1] = ra;
    rec[pairs + 2] = bound | (j == n - 1);
    rec[pairs + 3] = INT32_MIN;
    rec[pairs + 4] = j << 8;
  }
}

/* Row order, for the _rq kernels with P columns and spread = 1. */
EDGEBIN_INLINE void edgebin_rq_spread(const int8_t* w, int32_t k, int32_t n, int32_t s, int32_t bound, int32_t P,
                                      int32_t* table) {
  edgebin_rq_spread_g(w, k, n, s, bound, table, P, 0);
}

/* The 3x3 window (OIHW weights of one input channel), for edgebin_conv3x3_{s8,u8s8}_rq. */
EDGEBIN_INLINE void edgebin_rq_spread_3x3(const int8_t* w, int32_t n, int32_t s, int32_t bound, int32_t* table) {
  edgebin_rq_spread_g(w, 9, n, s, bound, table, 4, 1);
}

/* The spread form's table of a kernel run, a C array on the stack: the schedule declares it with
 * edgebin_rq_stack_table(words) (one a kernel function) and passes edgebin_rq_stack() for it, since TVM's codegen
 * would make a buffer over 1 KB a static workspace, RAM held all the run. */
#define edgebin_rq_stack_table(words) int32_t edgebin_rq_stack_[words]
#define edgebin_rq_stack() edgebin_rq_stack_

/* Column x (k int8 or uint8) times channel j's spread-form record: its sum times 2^s, in plain C. */
EDGEBIN_INLINE int32_t edgebin_pairs_dot(const int32_t* rec, const void* x, int32_t k, int32_t j, int32_t n,
                                         const int P, const int u, const int g) {
  int32_t sum = 0;
  for (int32_t i = 0; i < EDGEBIN_PAIRS(k); ++i) {
    const int32_t pair = rec[edgebin_pair_slot(i, EDGEBIN_PAIRS(k), j, n, P)];
    int32_t a, b;
    edgebin_pair_taps(k, i, g, &a, &b);
    sum += (int16_t)pair * EDGEBIN_XI(x, a, u);
    if (b < k) sum += (pair >> 16) * EDGEBIN_XI(x, b, u);
  }
  return sum;
}

/* Channels j0 .. j1 - 1 of the spread form for the P columns (x: P k bytes), in plain C: cores without the DSP
 * extension, and clips other than one USAT or SSAT. */
EDGEBIN_INLINE void edgebin_rqs_channels(const void* x, int32_t k, int32_t n, edgebin_rq rq, int32_t j0, int32_t j1,
                                         const int P, const int u, const int g) {
  const int32_t pairs = EDGEBIN_PAIRS(k);
  for (int32_t j = j0; j < j1; ++j)
    for (int p = 0; p < P; ++p) {
      const int32_t* rec = rq.table + j * EDGEBIN_RECORD(k);
      const int32_t s = edgebin_pairs_dot(rec, (const uint8_t*)x + p * k, k, j, n, P, u, g);
      edgebin_rq out = rq;
      out.out += p;
      edgebin_rq_out(out, j, rec[pairs], rec[pairs + 1], &s, 1);
    }
}

/* The 4 columns of 3x3 windows of one input channel, on by one pixel, from the image (img: the first one's top-left
 * pixel; rs: bytes a row): x[9 p + 3 ky + kx] = img[ky rs + p + kx]. */
EDGEBIN_INLINE void edgebin_gather_3x3(const uint8_t* img, int32_t rs, uint8_t* x) {
  for (int p = 0; p < 4; ++p)
    for (int32_t i = 0; i < 9; ++i) x[9 * p + i] = img[(i / 3) * rs + p + i % 3];
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

/* The spread form's columns (the table's from edgebin_rq_spread): per column the k bytes as EDGEBIN_PAIRS(k) pairs,
 * paired as the table pairs the weights, in chunks of two pairs (bytes 0, 2 and 1, 3 of a word) column after column
 * within a chunk: chunk c of column p at xe[2 P c + 2 p] and the next word; when k % 4 = 1 or 2 the last chunk is
 * one pair a column, at xe[2 P c + p]. */
EDGEBIN_INLINE void edgebin_spread_pairs(const uint8_t* x, int32_t k, uint32_t* xe, const int P, const int u) {
  const int32_t words = k >> 2, r = k & 3;
  for (int32_t c = 0; c < words; ++c)
    for (int p = 0; p < P; ++p) {
      const uint32_t v = edgebin_load_s8x4((const int8_t*)x + p * k + 4 * c);
      xe[2 * P * c + 2 * p] = EDGEBIN_X02(v, u);
      xe[2 * P * c + 2 * p + 1] = EDGEBIN_X13(v, u);
    }
  for (int p = 0; r > 0 && p < P; ++p) {
    uint32_t v = 0;
    if (k >= 4) v = edgebin_load_s8x4((const int8_t*)x + p * k + k - 4) >> (8 * (4 - r));
    else
      for (int32_t i = 0; i < r; ++i) v |= (uint32_t)x[p * k + i] << (8 * i);
    if (r <= 2) xe[2 * P * words + p] = EDGEBIN_X02(v | v << 8, u); /* r = 2: bytes 0 and 1 as one pair */
    else {
      xe[2 * P * words + 2 * p] = EDGEBIN_X02(v, u);
      xe[2 * P * words + 2 * p + 1] = EDGEBIN_X13(v, u);
    }
  }
}

/* The channel loop's multiply-adds. Its steps are written out, each under an .if on the step count (a .rept would
 * hide its length from gcc, which places literal pools and picks branch encodings by its estimate of the code's
 * size), so the spread form takes at most EDGEBIN_RQS_PAIRS pairs a row. A channel reads the columns forwards (LDM)
 * or backwards (LDMDB, its groups of pairs in reverse: edgebin_pair_slot), steps then the shorter last group or that
 * group then the steps; the first multiply-add of each sum is SMUAD (where F, an assembler expression, holds). */
#define EDGEBIN_RQS_PAIRS 32
#define EDGEBIN_SMLAD(S, W, X) "smlad  " S ", " W ", " X ", " S "\n\t"
#define EDGEBIN_MAC(F, S, W, X) \
  ".if " F "\n\tsmuad  " S ", " W ", " X "\n\t.else\n\t" EDGEBIN_SMLAD(S, W, X) ".endif\n\t"
#define EDGEBIN_X4F "ldm    %[xp]!, {r0, r1, r2, r3}\n\t"
#define EDGEBIN_X4B "ldmdb  %[xp]!, {r0, r1, r2, r3}\n\t"
#define EDGEBIN_X3F "ldm    %[xp]!, {r0, r1, r2}\n\t"
#define EDGEBIN_X3B "ldmdb  %[xp]!, {r0, r1, r2}\n\t"
#define EDGEBIN_X2F "ldrd   r0, r1, [%[xp]], #8\n\t"
#define EDGEBIN_X2B "ldrd   r0, r1, [%[xp], #-8]!\n\t"
#define EDGEBIN_X1F "ldr    r0, [%[xp]], #4\n\t"
#define EDGEBIN_X1B "ldr    r0, [%[xp], #-4]!\n\t"
#define EDGEBIN_WL4 "ldm    %[tp]!, {r4, r5, r6, r8}\n\t"
#define EDGEBIN_WL3 "ldm    %[tp]!, {r4, r5, r6}\n\t"
#define EDGEBIN_WL2 "ldrd   r4, r5, [%[tp]], #8\n\t"
#define EDGEBIN_WL1 "ldr    r4, [%[tp]], #4\n\t"
#define EDGEBIN_IF_Q(I, STEP) ".if %c[q] > " #I "\n\t" STEP ".endif\n\t"
#define EDGEBIN_FF(I) "(" #I " == 0)"                     /* forwards, step I starts the sums */
#define EDGEBIN_FB(I) "(%c[q] == " #I " + 1) && (%c[m] == 0)" /* backwards */
#define EDGEBIN_STEPS_F8(S)                                                                                       \
  EDGEBIN_IF_Q(0, S(EDGEBIN_FF(0))) EDGEBIN_IF_Q(1, S("0")) EDGEBIN_IF_Q(2, S("0")) EDGEBIN_IF_Q(3, S("0"))        \
  EDGEBIN_IF_Q(4, S("0")) EDGEBIN_IF_Q(5, S("0")) EDGEBIN_IF_Q(6, S("0")) EDGEBIN_IF_Q(7, S("0"))
#define EDGEBIN_STEPS_F16(S)                                                                                      \
  EDGEBIN_STEPS_F8(S) EDGEBIN_IF_Q(8, S("0")) EDGEBIN_IF_Q(9, S("0")) EDGEBIN_IF_Q(10, S("0"))                    \
  EDGEBIN_IF_Q(11, S("0")) EDGEBIN_IF_Q(12, S("0")) EDGEBIN_IF_Q(13, S("0")) EDGEBIN_IF_Q(14, S("0"))             \
  EDGEBIN_IF_Q(15, S("0"))
#define EDGEBIN_STEPS_B8(S)                                                                                       \
  EDGEBIN_IF_Q(7, S(EDGEBIN_FB(7))) EDGEBIN_IF_Q(6, S(EDGEBIN_FB(6))) EDGEBIN_IF_Q(5, S(EDGEBIN_FB(5)))           \
  EDGEBIN_IF_Q(4, S(EDGEBIN_FB(4))) EDGEBIN_IF_Q(3, S(EDGEBIN_FB(3))) EDGEBIN_IF_Q(2, S(EDGEBIN_FB(2)))           \
  EDGEBIN_IF_Q(1, S(EDGEBIN_FB(1))) EDGEBIN_IF_Q(0, S(EDGEBIN_FB(0)))
#define EDGEBIN_STEPS_B16(S)                                                                                      \
  EDGEBIN_IF_Q(15, S(EDGEBIN_FB(15))) EDGEBIN_IF_Q(14, S(EDGEBIN_FB(14))) EDGEBIN_IF_Q(13, S(EDGEBIN_FB(13)))     \
  EDGEBIN_IF_Q(12, S(EDGEBIN_FB(12))) EDGEBIN_IF_Q(11, S(EDGEBIN_FB(11))) EDGEBIN_IF_Q(10, S(EDGEBIN_FB(10)))     \
  EDGEBIN_IF_Q(9, S(EDGEBIN_FB(9))) EDGEBIN_IF_Q(8, S(EDGEBIN_FB(8))) EDGEBIN_STEPS_B8(S)
/* P = 1: four pairs a step, one LDM of the row (r4-r6, r8) and one of the column (r0-r3), four SMLAD. */
#define EDGEBIN_P1_STEP(F, X4)                                                                            \
  EDGEBIN_WL4 X4 EDGEBIN_MAC(F, "%[s0]", "r4", "r0") EDGEBIN_SMLAD("%[s0]", "r5", "r1")                   \
  EDGEBIN_SMLAD("%[s0]", "r6", "r2") EDGEBIN_SMLAD("%[s0]", "r8", "r3")
#define EDGEBIN_P1_STEPF(F) EDGEBIN_P1_STEP(F, EDGEBIN_X4F)
#define EDGEBIN_P1_STEPB(F) EDGEBIN_P1_STEP(F, EDGEBIN_X4B)
#define EDGEBIN_P1_REST(F, X1, X2, X3)                                                                           \
  ".if %c[m] == 1\n\t" EDGEBIN_WL1 X1 EDGEBIN_MAC(F, "%[s0]", "r4", "r0") ".elseif %c[m] == 2\n\t" EDGEBIN_WL2 X2 \
  EDGEBIN_MAC(F, "%[s0]", "r4", "r0") EDGEBIN_SMLAD("%[s0]", "r5", "r1") ".elseif %c[m] == 3\n\t" EDGEBIN_WL3 X3   \
  EDGEBIN_MAC(F, "%[s0]", "r4", "r0") EDGEBIN_SMLAD("%[s0]", "r5", "r1") EDGEBIN_SMLAD("%[s0]", "r6", "r2")       \
  ".endif\n\t"
#define EDGEBIN_P1_F \
  EDGEBIN_STEPS_F8(EDGEBIN_P1_STEPF) EDGEBIN_P1_REST("%c[q] == 0", EDGEBIN_X1F, EDGEBIN_X2F, EDGEBIN_X3F)
#define EDGEBIN_P1_B EDGEBIN_P1_REST("1", EDGEBIN_X1B, EDGEBIN_X2B, EDGEBIN_X3B) EDGEBIN_STEPS_B8(EDGEBIN_P1_STEPB)
/* P = 2: two chunks a step, one LDM of four pairs of the row, per chunk one LDM of both columns and four SMLAD. */
#define EDGEBIN_P2_CHUNK(F, A, B, X4)                                                                           \
  X4 EDGEBIN_MAC(F, "%[s0]", A, "r0") EDGEBIN_SMLAD("%[s0]", B, "r1") EDGEBIN_MAC(F, "%[s1]", A, "r2")          \
  EDGEBIN_SMLAD("%[s1]", B, "r3")
#define EDGEBIN_P2_SINGLE(F, A, X2) X2 EDGEBIN_MAC(F, "%[s0]", A, "r0") EDGEBIN_MAC(F, "%[s1]", A, "r1")
#define EDGEBIN_P2_STEPF(F) \
  EDGEBIN_WL4 EDGEBIN_P2_CHUNK(F, "r4", "r5", EDGEBIN_X4F) EDGEBIN_P2_CHUNK("0", "r6", "r8", EDGEBIN_X4F)
#define EDGEBIN_P2_STEPB(F) \
  EDGEBIN_WL4 EDGEBIN_P2_CHUNK(F, "r6", "r8", EDGEBIN_X4B) EDGEBIN_P2_CHUNK("0", "r4", "r5", EDGEBIN_X4B)
#define EDGEBIN_P2_F                                                                                              \
  EDGEBIN_STEPS_F8(EDGEBIN_P2_STEPF)                                                                              \
  ".if %c[m] == 1\n\t" EDGEBIN_WL1 EDGEBIN_P2_SINGLE("%c[q] == 0", "r4", EDGEBIN_X2F)                            \
  ".elseif %c[m] == 2\n\t" EDGEBIN_WL2 EDGEBIN_P2_CHUNK("%c[q] == 0", "r4", "r5", EDGEBIN_X4F)                   \
  ".elseif %c[m] == 3\n\t" EDGEBIN_WL3 EDGEBIN_P2_CHUNK("%c[q] == 0", "r4", "r5", EDGEBIN_X4F)                   \
  EDGEBIN_P2_SINGLE("0", "r6", EDGEBIN_X2F) ".endif\n\t"
#define EDGEBIN_P2_B                                                                                              \
  ".if %c[m] == 1\n\t" EDGEBIN_WL1 EDGEBIN_P2_SINGLE("1", "r4", EDGEBIN_X2B)                                     \
  ".elseif %c[m] == 2\n\t" EDGEBIN_WL2 EDGEBIN_P2_CHUNK("1", "r4", "r5", EDGEBIN_X4B)                            \
  ".elseif %c[m] == 3\n\t" EDGEBIN_WL3 EDGEBIN_P2_SINGLE("1", "r6", EDGEBIN_X2B)                                 \
  EDGEBIN_P2_CHUNK("0", "r4", "r5", EDGEBIN_X4B) ".endif\n\t" EDGEBIN_STEPS_B8(EDGEBIN_P2_STEPB)
/* P = 4: a chunk a step, one LDRD of its two pairs of the row, two LDM of the four columns, eight SMLAD. */
#define EDGEBIN_P4_HALF(F, X4, S, T)                                                                            \
  X4 EDGEBIN_MAC(F, S, "%[w0]", "r0") EDGEBIN_SMLAD(S, "%[w1]", "r1") EDGEBIN_MAC(F, T, "%[w0]", "r2")           \
  EDGEBIN_SMLAD(T, "%[w1]", "r3")
#define EDGEBIN_P4_STEPF(F)                                                                                     \
  "ldrd   %[w0], %[w1], [%[tp]], #8\n\t" EDGEBIN_P4_HALF(F, EDGEBIN_X4F, "%[s0]", "%[s1]")                       \
  EDGEBIN_P4_HALF(F, EDGEBIN_X4F, "%[s2]", "%[s3]")
#define EDGEBIN_P4_STEPB(F)                                                                                     \
  "ldrd   %[w0], %[w1], [%[tp]], #8\n\t" EDGEBIN_P4_HALF(F, EDGEBIN_X4B, "%[s2]", "%[s3]")                       \
  EDGEBIN_P4_HALF(F, EDGEBIN_X4B, "%[s0]", "%[s1]")
#define EDGEBIN_P4_SINGLE(F, X4)                                                                                   \
  ".if %c[m] == 1\n\tldr    %[w0], [%[tp]], #4\n\t" X4 EDGEBIN_MAC(F, "%[s0]", "%[w0]", "r0")                       \
  EDGEBIN_MAC(F, "%[s1]", "%[w0]", "r1") EDGEBIN_MAC(F, "%[s2]", "%[w0]", "r2") EDGEBIN_MAC(F, "%[s3]", "%[w0]", \
  "r3") ".endif\n\t"
#define EDGEBIN_P4_F EDGEBIN_STEPS_F16(EDGEBIN_P4_STEPF) EDGEBIN_P4_SINGLE("%c[q] == 0", EDGEBIN_X4F)
#define EDGEBIN_P4_B EDGEBIN_P4_SINGLE("1", EDGEBIN_X4B) EDGEBIN_STEPS_B16(EDGEBIN_P4_STEPB)
/* The requant of lane P of channel U of the pass (G 2^m, Ra, bound, the cached near-tie sum and its output in r0-r4):
 * SMMLA into r5 (the sums stay, for the exact branch), the window test, USAT or SSAT with the shift, STRB. A near tie
 * goes to the lane's stub (3UP:, after the loop): the cached sum's output stored, back to 2UP:, or else out to C. */
#define EDGEBIN_RQ_LANE(SAT, S, U, P)                                                                            \
  "smmla  r5, " S ", r0, r1\n\tcmp    r2, r5, lsl %[shl]\n\tbcs    3" #U #P "f\n\t" SAT "   r5, #8, r5, asr %[f]\n\t" \
  "strb   r5, [%[out], #%c[stride]*" #U "+" #P "]\n2" #U #P ":\n\t"
#define EDGEBIN_RQ_STUB(S, U, P)                                                                                  \
  "3" #U #P ":\n\tcmp    " S ", r3\n\tbne    3f\n\tstrb   r4, [%[out], #%c[stride]*" #U "+" #P "]\n\tb      2" #U #P \
  "b\n\t"
#define EDGEBIN_LANES1(SAT, U) EDGEBIN_RQ_LANE(SAT, "%[s0]", U, 0)
#define EDGEBIN_LANES2(SAT, U) EDGEBIN_LANES1(SAT, U) EDGEBIN_RQ_LANE(SAT, "%[s1]", U, 1)
#define EDGEBIN_LANES4(SAT, U) \
  EDGEBIN_LANES2(SAT, U) EDGEBIN_RQ_LANE(SAT, "%[s2]", U, 2) EDGEBIN_RQ_LANE(SAT, "%[s3]", U, 3)
#define EDGEBIN_STUBS1(U) EDGEBIN_RQ_STUB("%[s0]", U, 0)
#define EDGEBIN_STUBS2(U) EDGEBIN_STUBS1(U) EDGEBIN_RQ_STUB("%[s1]", U, 1)
#define EDGEBIN_STUBS4(U) EDGEBIN_STUBS2(U) EDGEBIN_RQ_STUB("%[s2]", U, 2) EDGEBIN_RQ_STUB("%[s3]", U, 3)
/* A channel: its MACs, its record's constants and cache (one LDM), its lanes. A pass of U = 1, 2 or 4 channels,
 * every second one backwards (so the columns come back where they started), the output pointer on by U channels,
 * and the loop test: the pass that ends with the channel whose bound has bit 0 set is the last; it leaves with C
 * clear (CMN #0), a near tie the cache does not know with C set (CMP of a register with itself), handed back as
 * `near`. After one the loop goes on from the next channel, two a pass, backwards first where that channel is odd
 * (PASS2B, its test after the first channel: the last channel is odd). No asm goto: gcc sizes one as a single
 * instruction, and literal pools it places around this loop would end out of reach. */
#define EDGEBIN_CHANNEL(MACS, LANES, SAT, U) MACS "ldm    %[tp]!, {r0, r1, r2, r3, r4}\n\t" LANES(SAT, U)
#define EDGEBIN_PASS_END(U) "add    %[out], %[out], #%c[stride]*" #U "\n\ttst    r2, #1\n\tbeq    1b\n4:\n\t" \
  "cmn    r2, #0\n\tb      2f\n\t"
#define EDGEBIN_NEAR "3:\n\tcmp    r2, r2\n2:\n\t"
#define EDGEBIN_PASS1(F, B, LANES, STUBS, SAT)                                                                  \
  "1:\n\t" EDGEBIN_CHANNEL(F, LANES, SAT, 0) "sub    %[xp], %[xp], %[xbytes]\n\t" EDGEBIN_PASS_END(1) STUBS(0) \
  EDGEBIN_NEAR
#define EDGEBIN_PASS2(F, B, LANES, STUBS, SAT)                                                                   \
  "1:\n\t" EDGEBIN_CHANNEL(F, LANES, SAT, 0) EDGEBIN_CHANNEL(B, LANES, SAT, 1) EDGEBIN_PASS_END(2) STUBS(0)      \
  STUBS(1) EDGEBIN_NEAR
#define EDGEBIN_PASS2B(F, B, LANES, STUBS, SAT)                                                                  \
  "1:\n\t" EDGEBIN_CHANNEL(B, LANES, SAT, 0) "tst    r2, #1\n\tbne    4f\n\t" EDGEBIN_CHANNEL(F, LANES, SAT, 1)    \
  "add    %[out], %[out], #%c[stride]*2\n\tb      1b\n4:\n\tcmn    r2, #0\n\tb      2f\n\t" STUBS(0) STUBS(1)        \
  EDGEBIN_NEAR
#define EDGEBIN_PASS4(F, B, LANES, STUBS, SAT)                                                                     \
  "1:\n\t" EDGEBIN_CHANNEL(F, LANES, SAT, 0) EDGEBIN_CHANNEL(B, LANES, SAT, 1) EDGEBIN_CHANNEL(F, LANES, SAT, 2) \
  EDGEBIN_CHANNEL(B, LANES, SAT, 3) EDGEBIN_PASS_END(4) STUBS(0) STUBS(1) STUBS(2) STUBS(3) EDGEBIN_NEAR
#define EDGEBIN_RQS_ASM(PASS, ...)                                                                               \
  __asm__ volatile(PASS                                                                                         \
                   : [tp] "+r"(tpr), [xp] "+r"(xpr), [out] "+r"(out), [near] "=@cccs"(near), __VA_ARGS__,       \
                     [x0] "=&r"(x0), [x1] "=&r"(x1), [x2] "=&r"(x2), [x3] "=&r"(x3)                             \
                   : [q] "n"(q), [m] "n"(pairs % step), [shl] "n"(32 - f), [f] "n"(f), [stride] "n"(stride),   \
                     [xbytes] "n"(4 * P * pairs)                                                                \
                   : "memory")
#define EDGEBIN_RQS_PASSES(F, B, LANES, STUBS, SAT, ...)                                                \
  do {                                                                                                  \
    if (pass == 4) EDGEBIN_RQS_ASM(EDGEBIN_PASS4(F, B, LANES, STUBS, SAT), __VA_ARGS__);                \
    else if (pass == 2) EDGEBIN_RQS_ASM(EDGEBIN_PASS2(F, B, LANES, STUBS, SAT), __VA_ARGS__);           \
    else if (pass == -2) EDGEBIN_RQS_ASM(EDGEBIN_PASS2B(F, B, LANES, STUBS, SAT), __VA_ARGS__);         \
    else EDGEBIN_RQS_ASM(EDGEBIN_PASS1(F, B, LANES, STUBS, SAT), __VA_ARGS__);                          \
  } while (0)
#define EDGEBIN_WREGS [w0] "=&r"(w0), [w1] "=&r"(w1), [w2] "=&r"(w2), [w3] "=&r"(w3)
#define EDGEBIN_S1 [s0] "=&r"(s0), EDGEBIN_WREGS
#define EDGEBIN_S2 [s0] "=&r"(s0), [s1] "=&r"(s1), EDGEBIN_WREGS
#define EDGEBIN_S4 [s0] "=&r"(s0), [s1] "=&r"(s1), [s2] "=&r"(s2), [s3] "=&r"(s3), [w0] "=&r"(w0), [w1] "=&r"(w1)

/* The channel loop from the record at tp to the end, `pass` (4, 2, 1; -2: two, backwards first) channels a pass
 * (k, P, the output stride, F and whether the clip is USAT constants): 0, or at a near tie the pointer past that
 * channel's record, its sums in `sums`. Every operand in a register of its own choosing (13 of them, r7 left for a
 * frame pointer): gcc, left to pick, would find none free where it keeps a loop count in LR (Cortex-M55's
 * low-overhead loops) and give up. */
EDGEBIN_INLINE const int32_t* edgebin_rqs_pass(const int32_t* tp, const uint32_t* xp, uint8_t* o, int32_t* sums,
                                              int32_t k, int32_t stride, int32_t f, const int usat, const int P,
                                              const int pass) {
  const int32_t pairs = EDGEBIN_PAIRS(k), step = P == 4 ? 2 : 4, q = pairs / step;
  register uint32_t x0 __asm__("r0"), x1 __asm__("r1"), x2 __asm__("r2"), x3 __asm__("r3");
  register const int32_t* tpr __asm__("r11") = tp;
  register const uint32_t* xpr __asm__("r12") = xp;
  register uint8_t* out __asm__("lr") = o;
  int near;
  if (P == 4) {
    register uint32_t w0 __asm__("r4"), w1 __asm__("r5");
    register int32_t s0 __asm__("r6"), s1 __asm__("r8"), s2 __asm__("r9"), s3 __asm__("r10");
    if (usat) EDGEBIN_RQS_PASSES(EDGEBIN_P4_F, EDGEBIN_P4_B, EDGEBIN_LANES4, EDGEBIN_STUBS4, "usat", EDGEBIN_S4);
    else EDGEBIN_RQS_PASSES(EDGEBIN_P4_F, EDGEBIN_P4_B, EDGEBIN_LANES4, EDGEBIN_STUBS4, "ssat", EDGEBIN_S4);
    if (__builtin_expect(near, 0)) sums[0] = s0, sums[1] = s1, sums[2] = s2, sums[3] = s3;
  } else {
    register uint32_t w0 __asm__("r4"), w1 __asm__("r5"), w2 __asm__("r6"), w3 __asm__("r8");
    register int32_t s0 __asm__("r9"), s1 __asm__("r10");
    if (P == 1 && usat) EDGEBIN_RQS_PASSES(EDGEBIN_P1_F, EDGEBIN_P1_B, EDGEBIN_LANES1, EDGEBIN_STUBS1, "usat",
                                           EDGEBIN_S1);
    else if (P == 1) EDGEBIN_RQS_PASSES(EDGEBIN_P1_F, EDGEBIN_P1_B, EDGEBIN_LANES1, EDGEBIN_STUBS1, "ssat", EDGEBIN_S1);
    else if (usat) EDGEBIN_RQS_PASSES(EDGEBIN_P2_F, EDGEBIN_P2_B, EDGEBIN_LANES2, EDGEBIN_STUBS2, "usat", EDGEBIN_S2);
    else EDGEBIN_RQS_PASSES(EDGEBIN_P2_F, EDGEBIN_P2_B, EDGEBIN_LANES2, EDGEBIN_STUBS2, "ssat", EDGEBIN_S2);
    if (__builtin_expect(near, 0)) sums[0] = s0, sums[1] = P == 2 ? s1 : 0;
  }
  return __builtin_expect(near, 0) ? tpr : 0;
}

/* The outputs of the channel with record rec from its sums at a near tie the cache did not know (edgebin_rq_out, the
 * exact branch where needed), and its last near-tie sum and output into the record's cache; its index. */
EDGEBIN_INLINE int32_t edgebin_rqs_near(const edgebin_rq* rq, int32_t* rec, int32_t pairs, const int32_t* sums,
                                        const int P) {
  const int32_t j = rec[pairs + 4] >> 8;
  edgebin_rq_out(*rq, j, rec[pairs], rec[pairs + 1], sums, P);
  for (int p = 0; p < P; ++p)
    if ((uint32_t)edgebin_smmla(sums[p], rec[pairs], rec[pairs + 1]) << (32 - rq->f) <= (uint32_t)rec[pairs + 2]) {
      rec[pairs + 3] = sums[p];
      rec[pairs + 4] = j << 8 | rq->out[j * rq->stride + p];
    }
  return j;
}

/* The fused requant on the spread form, P = 1, 2 or 4 columns (k, n, P, the stride and F constants wherever this is
 * inlined), the columns spread (xe) once per call: the whole channel loop in one asm statement, per channel only
 * loads, SMLAD and the requant (the row's pairs and constants stream from the table, one pointer). Per pair of the
 * row: P = 1, an LDM of four pairs of the row and one of the column, four SMLAD (6 instructions for 8 MACs); P = 2,
 * an LDM of four pairs and per two pairs an LDM of both columns, four SMLAD (11 for 16); P = 4, per two pairs an
 * LDRD and two LDM, eight SMLAD (11 for 16). Per channel: one LDM of G 2^m, Ra and the bound, per output SMMLA, CMP,
 * the rare branch, USAT, STRB; per pass of U channels (4 where n allows and the row is at most 16 pairs, else 2, 1
 * for an odd n) the output pointer and the loop test, 3 instructions (and the columns rewound for U = 1). A near tie
 * leaves the asm with the channel's sums: its outputs again in C (edgebin_rq_out, the exact branch where needed),
 * then the asm from the next channel. */
EDGEBIN_INLINE void edgebin_rqs_simd(int32_t k, int32_t n, const edgebin_rq* rq, uint32_t* xe, const int P) {
  const int32_t pairs = EDGEBIN_PAIRS(k), words = EDGEBIN_RECORD(k), stride = rq->stride, f = rq->f;
  const int usat = rq->lo == 0, U = n % 4 == 0 && pairs <= 16 && 4 * stride < 4096 ? 4 : n % 2 == 0 ? 2 : 1;
  int32_t sums[4];
  const int32_t* tp = edgebin_rqs_pass(rq->table, xe, rq->out, sums, k, stride, f, usat, P, U);
  while (__builtin_expect(tp != 0, 0)) {
    int32_t* rec = (int32_t*)(tp - words); /* the channel of the near tie (the table is the kernel's own) */
    const int32_t j = edgebin_rqs_near(rq, rec, pairs, sums, P) + 1;
    if (rec[pairs + 2] & 1) return;
    uint8_t* o = rq->out + j * stride;
    tp = U == 1  ? edgebin_rqs_pass(tp, xe, o, sums, k, stride, f, usat, P, 1)
         : j & 1 ? edgebin_rqs_pass(tp, xe + P * pairs, o, sums, k, stride, f, usat, P, -2)
                 : edgebin_rqs_pass(tp, xe, o, sums, k, stride, f, usat, P, 2);
  }
}

/* Whether the DSP loop takes this requant: a clip that is one USAT or SSAT, an output stride of two channels it adds
 * as an immediate (the schedule keeps to these). */
EDGEBIN_INLINE int edgebin_rqs_asm(const edgebin_rq* rq) {
  return ((rq->lo == 0 && rq->hi == 255) || (rq->lo == -128 && rq->hi == 127)) && rq->stride > 0 && rq->stride < 2048;
}

/* The spread form's kernel: the DSP loop for rows of at most EDGEBIN_RQS_PAIRS pairs, else plain C. */
EDGEBIN_INLINE void edgebin_matvecp_rqs(const void* x, int32_t k, int32_t n, const edgebin_rq* rq, const int P,
                                        const int u) {
  if (edgebin_rqs_asm(rq) && EDGEBIN_PAIRS(k) <= EDGEBIN_RQS_PAIRS) {
    if (P == 4) {
      uint32_t xe[4 * EDGEBIN_RQS_PAIRS];
      edgebin_spread_pairs((const uint8_t*)x, k, xe, P, u);
      edgebin_rqs_simd(k, n, rq, xe, P);
    } else {
      uint32_t xe[2 * EDGEBIN_RQS_PAIRS];
      edgebin_spread_pairs((const uint8_t*)x, k, xe, P, u);
      edgebin_rqs_simd(k, n, rq, xe, P);
    }
    return;
  }
  edgebin_rqs_channels(x, k, n, *rq, 0, n, P, u, 0);
}

/* The 4 columns of 3x3 windows as edgebin_gather_3x3 has them, spread (the 3x3 pairing) straight from the image into
 * the P = 4 chunk layout: per row r its words at columns 0 and 2 give (x[r][p], x[r][p + 2]) for the four windows (two
 * LDR, four UXTB16 or SXTB16), the middle taps are halves of these (PKHBT, PKHTB, a shift), and pairs go out two at a
 * time (STRD): 33 instructions, where gathering the 36 bytes alone takes four a byte. Nothing past a window's last
 * pixel is read. rs is a constant below 2046 (rows are immediate offsets). */
#define EDGEBIN_SPREAD_3X3(X)                                                                                     \
  "ldr    %[t0], [%[img]]\n\tldr    %[t2], [%[img], #2]\n\tldr    %[t4], [%[img], %[r1]]\n\t"                  \
  "ldr    %[t6], [%[img], %[r1] + 2]\n\t" X " %[t1], %[t0], ror #8\n\t" X " %[t0], %[t0]\n\t"                  \
  X " %[t3], %[t2], ror #8\n\t" X " %[t2], %[t2]\n\t" X " %[t5], %[t4], ror #8\n\t" X " %[t4], %[t4]\n\t"     \
  X " %[t7], %[t6], ror #8\n\t" X " %[t6], %[t6]\n\t"                                                            \
  "strd   %[t0], %[t4], [%[xe]]\n\tstrd   %[t1], %[t5], [%[xe], #8]\n\t"           /* (x[0][p], x[1][p]) pairs */ \
  "strd   %[t2], %[t6], [%[xe], #16]\n\tstrd   %[t3], %[t7], [%[xe], #24]\n\t"                                   \
  "pkhtb  %[t4], %[t6], %[t2], asr #16\n\tpkhbt  %[t1], %[t1], %[t5], lsl #16\n\t"     /* (x[0][p+1], x[1][p+1]) */ \
  "pkhbt  %[t2], %[t2], %[t6], lsl #16\n\tpkhbt  %[t3], %[t3], %[t7], lsl #16\n\t"                               \
  "ldr    %[t0], [%[img], %[r2]]\n\tldr    %[t5], [%[img], %[r2] + 2]\n\t" X " %[t6], %[t0], ror #8\n\t"          \
  X " %[t0], %[t0]\n\t" X " %[t7], %[t5], ror #8\n\t" X " %[t5], %[t5]\n\t"                                     \
  "strd   %[t0], %[t1], [%[xe], #32]\n\tstrd   %[t6], %[t2], [%[xe], #40]\n\t"                                   \
  "strd   %[t5], %[t3], [%[xe], #48]\n\tstrd   %[t7], %[t4], [%[xe], #56]\n\t"                                   \
  "lsr    %[t0], %[t5], #16\n\tstrd   %[t6], %[t5], [%[xe], #64]\n\tstrd   %[t7], %[t0], [%[xe], #72]\n\t"
EDGEBIN_INLINE void edgebin_spread_3x3(const uint8_t* img, int32_t rs, uint32_t* xe, const int u) {
  uint32_t t0, t1, t2, t3, t4, t5, t6, t7;
#define EDGEBIN_SPREAD_3X3_OPERANDS                                                                             \
  : [t0] "=&r"(t0), [t1] "=&r"(t1), [t2] "=&r"(t2), [t3] "=&r"(t3), [t4] "=&r"(t4), [t5] "=&r"(t5),             \
    [t6] "=&r"(t6), [t7] "=&r"(t7)                                                                              \
  : [img] "r"(img), [xe] "r"(xe), [r1] "n"(rs), [r2] "n"(2 * rs)                                               \
  : "memory"
  if (u) __asm__ volatile(EDGEBIN_SPREAD_3X3("uxtb16") EDGEBIN_SPREAD_3X3_OPERANDS);
  else __asm__ volatile(EDGEBIN_SPREAD_3X3("sxtb16") EDGEBIN_SPREAD_3X3_OPERANDS);
#undef EDGEBIN_SPREAD_3X3_OPERANDS
}
#undef EDGEBIN_SPREAD_3X3

EDGEBIN_INLINE void edgebin_conv3x3_rqs(const uint8_t* img, int32_t rs, int32_t n, const edgebin_rq* rq,
                                        const int u) {
  if (edgebin_rqs_asm(rq)) {
    uint32_t xe[20];
    edgebin_spread_3x3(img, rs, xe, u);
    edgebin_rqs_simd(9, n, rq, xe, 4);
    return;
  }
  uint8_t cols[36];
  edgebin_gather_3x3(img, rs, cols);
  edgebin_rqs_channels(cols, 9, n, *rq, 0, n, 4, u, 1);
}

#undef EDGEBIN_RQS_PAIRS
#undef EDGEBIN_SMLAD
#undef EDGEBIN_MAC
#undef EDGEBIN_X4F
#undef EDGEBIN_X4B
#undef EDGEBIN_X3F
#undef EDGEBIN_X3B
#undef EDGEBIN_X2F
#undef EDGEBIN_X2B
#undef EDGEBIN_X1F
#undef EDGEBIN_X1B
#undef EDGEBIN_WL4
#undef EDGEBIN_WL3
#undef EDGEBIN_WL2
#undef EDGEBIN_WL1
#undef EDGEBIN_IF_Q
#undef EDGEBIN_FF
#undef EDGEBIN_FB
#undef EDGEBIN_STEPS_F8
#undef EDGEBIN_STEPS_F16
#undef EDGEBIN_STEPS_B8
#undef EDGEBIN_STEPS_B16
#undef EDGEBIN_P1_STEP
#undef EDGEBIN_P1_STEPF
#undef EDGEBIN_P1_STEPB
#undef EDGEBIN_P1_REST
#undef EDGEBIN_P1_F
#undef EDGEBIN_P1_B
#undef EDGEBIN_P2_CHUNK
#undef EDGEBIN_P2_SINGLE
#undef EDGEBIN_P2_STEPF
#undef EDGEBIN_P2_STEPB
#undef EDGEBIN_P2_F
#undef EDGEBIN_P2_B
#undef EDGEBIN_P4_HALF
#undef EDGEBIN_P4_STEPF
#undef EDGEBIN_P4_STEPB
#undef EDGEBIN_P4_SINGLE
#undef EDGEBIN_P4_F
#undef EDGEBIN_P4_B
#undef EDGEBIN_RQ_LANE
#undef EDGEBIN_LANES1
#undef EDGEBIN_LANES2
#undef EDGEBIN_LANES4
#undef EDGEBIN_RQ_STUB
#undef EDGEBIN_STUBS1
#undef EDGEBIN_STUBS2
#undef EDGEBIN_STUBS4
#undef EDGEBIN_NEAR
#undef EDGEBIN_CHANNEL
#undef EDGEBIN_PASS_END
#undef EDGEBIN_PASS1
#undef EDGEBIN_PASS2
#undef EDGEBIN_PASS2B
#undef EDGEBIN_PASS4
#undef EDGEBIN_RQS_ASM
#undef EDGEBIN_RQS_PASSES
#undef EDGEBIN_WREGS
#undef EDGEBIN_S1
#undef EDGEBIN_S2
#undef EDGEBIN_S4

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

EDGEBIN_INLINE void edgebin_matvecp_rqs(const void* x, int32_t k, int32_t n, const edgebin_rq* rq, const int P,
                                        const int u) {
  edgebin_rqs_channels(x, k, n, *rq, 0, n, P, u, 0);
}

EDGEBIN_INLINE void edgebin_conv3x3_rqs(const uint8_t* img, int32_t rs, int32_t n, const edgebin_rq* rq,
                                        const int u) {
  uint8_t cols[36];
  edgebin_gather_3x3(img, rs, cols);
  edgebin_rqs_channels(cols, 9, n, *rq, 0, n, 4, u, 1);
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

/* The P-column matvec with the requant fused (edgebin_rq above): uint8/int8 outputs, no accumulators. spread = 0:
 * the table in its first form and the weights w (one pass of the spread buffer only: k <= 4 EDGEBIN_SPREAD_WORDS /
 * (2 P) + 3; the schedule checks it); spread = 1: the table in the spread form, which holds the weights (w unused). */
EDGEBIN_INLINE void edgebin_matvecp_rq(const void* x, const int8_t* w, int32_t k, int32_t n, const int32_t* table,
                                       void* out, int32_t stride, const int64_t* offset, int32_t astep, int32_t s,
                                       int32_t m, int32_t f, int32_t window, int32_t e, int64_t addend, int32_t zy,
                                       int32_t lo, int32_t hi, int32_t spread, const int P, const int u) {
  const edgebin_rq rq = {table, (uint8_t*)out, stride, offset, astep, s, m, f, window, e, zy, lo, hi, addend};
  if (spread) edgebin_matvecp_rqs(x, k, n, &rq, P, u);
  else edgebin_matvecp_x8(x, w, k, n, 0, &rq, P, u);
}

#define EDGEBIN_MATVEC_RQ(NAME, XT, P, U)                                                                            \
  EDGEBIN_INLINE void NAME(const XT* x, const int8_t* w, int32_t k, int32_t n, const int32_t* table, void* out,       \
                           int32_t stride, const int64_t* offset, int32_t astep, int32_t s, int32_t m, int32_t f,    \
                           int32_t window, int32_t e, int64_t addend, int32_t zy, int32_t lo, int32_t hi,            \
                           int32_t spread) {                                                                         \
    edgebin_matvecp_rq(x, w, k, n, table, out, stride, offset, astep, s, m, f, window, e, addend, zy, lo, hi, spread, \
                       P, U);                                                                                        \
  }
EDGEBIN_MATVEC_RQ(edgebin_matvec_s8_rq, int8_t, 1, 0)
EDGEBIN_MATVEC_RQ(edgebin_matvec_u8s8_rq, uint8_t, 1, 1)
EDGEBIN_MATVEC_RQ(edgebin_matvec2_s8_rq, int8_t, 2, 0)
EDGEBIN_MATVEC_RQ(edgebin_matvec2_u8s8_rq, uint8_t, 2, 1)
EDGEBIN_MATVEC_RQ(edgebin_matvec4_s8_rq, int8_t, 4, 0)
EDGEBIN_MATVEC_RQ(edgebin_matvec4_u8s8_rq, uint8_t, 4, 1)
#undef EDGEBIN_MATVEC_RQ

/* A 3x3 conv over one input channel, four neighbouring output pixels a call, its columns read from the image itself
 * (img: the top-left input pixel of the first window; rs: bytes an image row) where the schedule would gather them:
 * edgebin_matvec4_{s8,u8s8}_rq with spread = 1 otherwise, its table from edgebin_rq_spread_3x3. */
#define EDGEBIN_CONV3X3_RQ(NAME, XT, U)                                                                             \
  EDGEBIN_INLINE void NAME(const XT* img, int32_t rs, int32_t n, const int32_t* table, void* out, int32_t stride,     \
                           const int64_t* offset, int32_t astep, int32_t s, int32_t m, int32_t f, int32_t window,    \
                           int32_t e, int64_t addend, int32_t zy, int32_t lo, int32_t hi) {                          \
    const edgebin_rq rq = {table, (uint8_t*)out, stride, offset, astep, s, m, f, window, e, zy, lo, hi, addend};    \
    edgebin_conv3x3_rqs((const uint8_t*)img, rs, n, &rq, U);                                                         \
  }
EDGEBIN_CONV3X3_RQ(edgebin_conv3x3_s8_rq, int8_t, 0)
EDGEBIN_CONV3X3_RQ(edgebin_conv3x3_u8s8_rq, uint8_t, 1)
#undef EDGEBIN_CONV3X3_RQ

#undef EDGEBIN_INLINE
#undef EDGEBIN_XI

#endif /* EDGEBIN_KERNELS_H */
