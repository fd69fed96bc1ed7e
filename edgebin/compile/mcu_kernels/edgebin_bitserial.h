/* Bit-serial micro-kernels: low-bit weights (binary, ternary, 2-3-bit) kept as bit planes, times int8 or uint8
 * activations that the kernel splits into bit planes itself, so that the work is (weight planes) x (activation
 * planes the data needs) steps of one AND and one bit count per 32 multiply-accumulates. It is the decomposition
 * TOPI's bitserial_dense / bitserial_conv2d compute; compile/bitserial.py makes the planes and the form, and
 * compile/mcu_bitserial.py calls these where the MCU schedule called edgebin_matvec* (edgebin_kernels.h).
 *
 * edgebin_bs_matvec{,2,4}_{s8,u8s8}(x, planes, form, k, n, acc):
 *   acc[j*P + p] = sum_{i<k} x[p*k + i] * w(j, i)  for j < n, p < P (P = 1, 2, 4 columns, as edgebin_matvec)
 *   w(j, i) = beta + sum_{t<wb} coef[t] bit_t(j, i), form = {wb, beta, coef[0], ..., coef[wb-1]} (int32);
 *   planes: W = ceil(k / 32) words a plane, row j's plane t at planes[(j wb + t) W ..], bit i % 32 of its word
 *   i / 32 is bit_t(j, i), bits at i >= k are 0. Sums are exact int32 (they wrap where the int8 kernel's would).
 * The activations' planes: a call takes A planes, the largest A of its P columns. uint8: A is the bit length of the
 * OR of the column's k values, plane a < A weighs d_a = 2^a; int8: the bit length of the OR of x ^ (x >> 7), plus
 * one, in two's complement (d_a = 2^a below A - 1, d_{A-1} = -2^(A-1)). So a column of codes 0..3 takes 2 planes,
 * a full-range one 8, and any input is exact:
 *   acc = sum_t sum_a coef[t] d_a popcount(W_t & X_a) + beta sum_i x_i.
 *
 * Per call, each column is scanned once (its OR and its sum: per 4 bytes LDR, ORR and USADA8 on DSP cores), then
 * split into its planes in a stack buffer (EDGEBIN_BS_STACK_WORDS; longer reductions take several passes, as
 * edgebin_matvec's): per 8 values their nibbles in one word, then per plane AND, one MUL that gathers the plane's
 * 8 bits into a byte, AND, ORR: about 0.7 instructions per value and plane, per call, not per row.
 * Cortex-M cores with the DSP extension (M4, M7, M33, M55) have no bit count instruction: the count is the SWAR
 * one, in assembly. Streams (a column's plane) go four at a time against one weight plane row (P = 4: a plane's
 * four columns; 2: two planes of both; 1: four planes): per weight word one LDR, then per stream LDR, AND, five
 * instructions to 4-bit field counts (each mask an immediate, each shift the SUB's or ADD's operand) and an ADD
 * into its fields (8, the first word of three 7); per three words the fields go into byte lanes (4), summed once
 * a row (USADA8). About 9.5 instructions per 32 MACs of one weight plane and one activation plane, so a layer costs
 * about 0.3 wb A instructions per MAC plus the split and a multiply-add per stream and row. With four columns,
 * planes a and a + 1 share one group's lanes (the second's counts doubled by the ADDs' shifts): half the epilogues.
 * Measured on QEMU (cortex-m4, tools/bench/bitserial.py, docs/bitserial.md), kernel calls alone, instructions per
 * MAC at 4 / 2 / 1 columns on ResNet-8's conv shapes (K = 144, 288, 576): int8 kernel 0.95 / 1.15 / 1.37;
 * wb x A = 1 x 1: 0.52 / 0.44 / 0.44; 1 x 2: 0.93 / 0.76 / 0.74; 2 x 1: 0.93 / 0.83 / 0.84; 1 x 3: 1.48 / 1.20 /
 * 1.17; 2 x 2: 1.67 / 1.43 / 1.43; 2 x 8: 6.6 / 5.7 / 5.2. Bit-serial wins up to wb x A = 2 (at 3 with one column)
 * and loses from 4. Code: 2.2 KB (one or two columns) to 5.0 KB (four) a kernel, against the int8 kernel's 0.4-0.8.
 * The host and other cores run plain C: __builtin_popcount where there is an instruction for it (x86 POPCNT,
 * AArch64, NEON), else the SWAR count in C; x86 splits planes with PMOVMSKB. Define EDGEBIN_NO_SIMD to force the
 * portable C (no assembly, no intrinsics). Every path computes the same integers.
 */
#ifndef EDGEBIN_BITSERIAL_H
#define EDGEBIN_BITSERIAL_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "edgebin_bitserial.h reads words of bytes little-endian"
#endif

/* The assembly: Cortex-M cores with the DSP extension, in an optimized build (it takes thirteen registers). */
#if defined(__ARM_FEATURE_SIMD32) && defined(__thumb2__) && defined(__ARM_ARCH_PROFILE) && \
    __ARM_ARCH_PROFILE == 'M' && defined(__OPTIMIZE__) && !defined(EDGEBIN_NO_SIMD)
#define EDGEBIN_BS_DSP 1
#endif
#if (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__) && !defined(EDGEBIN_NO_SIMD)
#define EDGEBIN_BS_X86 1
#include <immintrin.h>
#endif

/* The entry points' linkage, as edgebin_kernels.h: a file that defines EDGEBIN_INLINE first (empty) gets them
 * external. The helpers below are always inlined, so that k, n, P and the signedness are constants in them. */
#ifndef EDGEBIN_INLINE
#define EDGEBIN_INLINE static inline __attribute__((always_inline))
#endif
#define EDGEBIN_BS_INLINE static inline __attribute__((always_inline))
#define EDGEBIN_BS_ROLLED _Pragma("GCC unroll 1") /* a loop kept rolled where its copies would only cost flash */

#define EDGEBIN_BS_WORDS(k) (((k) + 31) >> 5) /* words of one plane of a row of k */
#define EDGEBIN_BS_STACK_WORDS 288 /* stack for the columns' planes: 1,152 bytes */
#ifdef EDGEBIN_BS_DSP
#define EDGEBIN_BS_PASS_WORDS 30 /* words of k a pass at most: a stream's byte lanes hold 10 groups of 3 */
#define EDGEBIN_BS_PAIR_WORDS 10 /* at most, for two planes in one stream's lanes (8 + 16 a word) */
#else
#define EDGEBIN_BS_PASS_WORDS EDGEBIN_BS_STACK_WORDS /* plain C counts in int32: only the stack limits a pass */
#define EDGEBIN_BS_PAIR_WORDS EDGEBIN_BS_STACK_WORDS
#endif

/* Four bytes at any address as one word (one LDR: unaligned loads are fine where this runs). */
EDGEBIN_BS_INLINE uint32_t edgebin_bs_load(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, sizeof(v));
  return v;
}

/* The bits set in v: the instruction where the target has one, else the SWAR count. */
EDGEBIN_BS_INLINE uint32_t edgebin_bs_popcount(uint32_t v) {
#if (defined(__POPCNT__) || defined(__aarch64__) || defined(__ARM_NEON)) && !defined(EDGEBIN_NO_SIMD)
  return (uint32_t)__builtin_popcount(v);
#else
  v -= (v >> 1) & 0x55555555u;
  v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
  v = (v + (v >> 4)) & 0x0F0F0F0Fu;
  return (v * 0x01010101u) >> 24;
#endif
}

/* The stack buffer holds streams: stream a P + p is plane a of column p. DSP cores: streams in groups of four, word
 * c of the group's streams side by side (one weight word meets four consecutive words); plain C: each stream's
 * words in a row (a loop over words that compilers vectorize). A pass of cw words: stream `stream`'s word c at
 * xs[edgebin_bs_slot(stream, c, cw)]; either way the group of streams 4g.. starts at xs + 4 g cw. */
EDGEBIN_BS_INLINE int32_t edgebin_bs_slot(int32_t stream, int32_t c, int32_t cw) {
#ifdef EDGEBIN_BS_DSP
  return ((stream >> 2) * cw + c) * 4 + (stream & 3);
#else
  return stream * cw + c;
#endif
}

/* d_a coef: the weight of the count of weight plane `coef` against activation plane a of A (uint32: wraps). */
EDGEBIN_BS_INLINE uint32_t edgebin_bs_mult(uint32_t coef, int a, int A, const int u) {
  const uint32_t m = coef << a;
  return !u && a == A - 1 ? 0u - m : m;
}

/* The column's last word, its left < 32 bytes at src, zero-padded to 32 bytes in v: nothing past the column is
 * read. */
EDGEBIN_BS_INLINE void edgebin_bs_last(const uint8_t* src, int32_t left, uint32_t* v) {
  for (int q = 0; q < 8; ++q) v[q] = 4 * q + 4 <= left ? edgebin_bs_load(src + 4 * q) : 0;
  for (int32_t i = left & ~3; i < left; ++i) v[i >> 2] |= (uint32_t)src[i] << (8 * (i & 3));
}

#ifdef EDGEBIN_BS_DSP

EDGEBIN_BS_INLINE uint32_t edgebin_bs_usada8(uint32_t a, uint32_t b, uint32_t acc) {
  uint32_t r;
  __asm__("usada8 %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
  return r;
}

/* A word of the column into the OR of its values and their sum (int8: the bytes biased by 128, and the 7 low bits of
 * the negative ones flipped, (b & 0x80) - ((b & 0x80) >> 7) = 0x7F). */
EDGEBIN_BS_INLINE void edgebin_bs_scan_word(uint32_t v, uint32_t* bits, uint32_t* s, const int u) {
  if (!u) {
    const uint32_t m = v & 0x80808080u;
    *bits |= v ^ (m - (m >> 7));
    v ^= 0x80808080u;
  } else {
    *bits |= v;
  }
  *s = edgebin_bs_usada8(v, 0, *s);
}

/* The OR of the column's values (int8: of x ^ (x >> 7)) and their sum, 4 bytes a step: LDR (LDM, four words, for
 * a word-aligned column), ORR and USADA8. */
EDGEBIN_BS_INLINE uint32_t edgebin_bs_scan(const uint8_t* x, int32_t k, int32_t* sum, const int u) {
  uint32_t bits = 0, s = 0;
  int32_t i = 0;
  if (((uintptr_t)x & 3) == 0) /* four words a step by LDM */
    for (; i + 16 <= k; i += 16) {
      uint32_t v[4];
      memcpy(v, __builtin_assume_aligned(x + i, 4), 16);
      for (int q = 0; q < 4; ++q) edgebin_bs_scan_word(v[q], &bits, &s, u);
    }
  for (; i + 4 <= k; i += 4) edgebin_bs_scan_word(edgebin_bs_load(x + i), &bits, &s, u);
  bits |= bits >> 16;
  bits |= bits >> 8;
  bits &= u ? 0xFFu : 0x7Fu;
  int32_t total = (int32_t)s - (u ? 0 : 128 * i);
  for (; i < k; ++i) {
    const int32_t v = u ? x[i] : (int8_t)x[i];
    bits |= (uint32_t)(u ? v : v ^ (v >> 7));
    total += v;
  }
  *sum = total;
  return bits;
}

/* a * b by MUL (gcc would rather spell a multiply by 0x01020408 as three shifted adds). */
EDGEBIN_BS_INLINE uint32_t edgebin_bs_mul(uint32_t a, uint32_t b) {
  uint32_t r;
  __asm__("mul %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

/* One plane of 32 values from their nibbles n[0..3] (per 8 values, two words v0, v1 of 4: their low or high nibbles,
 * v0's at bits 8b..8b+3, v1's at 8b+4..8b+7): the plane's bit of each nibble (mask m; none when no other can be
 * set), then one multiply by `magic` (0x01020408 >> the bit) gathers the 8 bits, in order, into the top byte (every
 * other partial product lands on a bit of its own below it: no carry reaches it); the bytes go in from the top.
 * 4 instructions per 8 values: AND, MUL, AND, ORR (with the shift). */
EDGEBIN_BS_INLINE uint32_t edgebin_bs_gather(const uint32_t* n, uint32_t m, uint32_t magic, const int masked) {
  uint32_t plane = 0;
  for (int h = 0; h < 4; ++h) plane = (edgebin_bs_mul(masked ? n[h] : n[h] & m, magic) & 0xFF000000u) | plane >> 8;
  return plane;
}

/* Words c0 .. c0 + cw - 1 of the P columns (column p: the k bytes at x + p k) split into A planes each. Per 8
 * values the nibbles the planes need: uint8 with A <= 4, v0 | v1 << 4 (the bits above A are 0); else the low
 * nibbles, then for A > 4 the high ones; then per plane edgebin_bs_gather and a store. */
EDGEBIN_BS_INLINE void edgebin_bs_split_a(const uint8_t* x, int32_t k, int32_t c0, int32_t cw, int A, uint32_t* xs,
                                          const int P, const int u) {
  const int low = A < 4 ? A : 4, packed = u && A <= 4;
  for (int p = 0; p < P; ++p)
    for (int32_t c = 0; c < cw; ++c) {
      const int32_t i = 32 * (c0 + c);
      const uint8_t* src = x + p * k + i;
      uint32_t v[8], n[4];
      if (k - i < 32) { /* the column's last word: through a zero-padded copy */
        edgebin_bs_last(src, k - i, v);
        src = (const uint8_t*)v;
      }
      for (int h = 0; h < 4; ++h) { /* word loads, not a copy to the stack */
        const uint32_t v0 = edgebin_bs_load(src + 8 * h), v1 = edgebin_bs_load(src + 8 * h + 4);
        n[h] = packed ? v0 | v1 << 4 : (v0 & 0x0F0F0F0Fu) | (v1 & 0x0F0F0F0Fu) << 4;
      }
      uint32_t* to = xs + edgebin_bs_slot(p, c, cw);
      EDGEBIN_BS_ROLLED /* a constant A (1, 2) unrolls anyway; any other, one copy of the plane loop */
      for (int a = 0; a < low; ++a)
        to[edgebin_bs_slot(a * P, 0, cw)] = edgebin_bs_gather(n, 0x11111111u << a, 0x01020408u >> a, u && A == 1);
      if (A <= 4) continue;
      for (int h = 0; h < 4; ++h) {
        const uint32_t v0 = edgebin_bs_load(src + 8 * h), v1 = edgebin_bs_load(src + 8 * h + 4);
        n[h] = (v0 & 0xF0F0F0F0u) >> 4 | (v1 & 0xF0F0F0F0u);
      }
      EDGEBIN_BS_ROLLED
      for (int a = 4; a < A; ++a)
        to[edgebin_bs_slot(a * P, 0, cw)] = edgebin_bs_gather(n, 0x11111111u << (a - 4), 0x01020408u >> (a - 4), 0);
    }
}

/* The split, A a constant for 1 and 2 planes (the cases bit-serial is for: the masks and multipliers stay in
 * registers, and no plane loop is left), the loop over planes above. */
EDGEBIN_BS_INLINE void edgebin_bs_split(const uint8_t* x, int32_t k, int32_t c0, int32_t cw, int A, uint32_t* xs,
                                        const int P, const int u) {
  if (A == 1) edgebin_bs_split_a(x, k, c0, cw, 1, xs, P, u);
  else if (A == 2) edgebin_bs_split_a(x, k, c0, cw, 2, xs, P, u);
  else edgebin_bs_split_a(x, k, c0, cw, A, xs, P, u);
}

#else /* plain C: the host, Cortex-M0/M0+/M3 */

/* The OR of the column's values (int8: of x ^ (x >> 7)) and their sum (a loop compilers vectorize). */
EDGEBIN_BS_INLINE uint32_t edgebin_bs_scan(const uint8_t* x, int32_t k, int32_t* sum, const int u) {
  uint32_t bits = 0;
  int32_t total = 0;
  for (int32_t i = 0; i < k; ++i) {
    const int32_t v = u ? x[i] : (int8_t)x[i];
    bits |= (uint32_t)(u ? v : v ^ (v >> 7));
    total += v;
  }
  *sum = total;
  return bits;
}

/* Plane a of the 32 values at src: bit i is bit a of value i. x86: the bit moved to the top of each byte,
 * PMOVMSKB; elsewhere, per 8 values, bit a of each byte at 8b and one 64-bit multiply gathers them into the top
 * byte (the other partial products land on bits of their own below it). */
EDGEBIN_BS_INLINE uint32_t edgebin_bs_gather(const uint8_t* src, int a) {
#if defined(EDGEBIN_BS_X86) && defined(__AVX2__)
  const __m256i b = _mm256_loadu_si256((const __m256i*)src);
  return (uint32_t)_mm256_movemask_epi8(_mm256_slli_epi16(b, 7 - a));
#elif defined(EDGEBIN_BS_X86)
  const __m128i lo = _mm_loadu_si128((const __m128i*)src), hi = _mm_loadu_si128((const __m128i*)(src + 16));
  return (uint32_t)_mm_movemask_epi8(_mm_slli_epi16(lo, 7 - a)) |
         (uint32_t)_mm_movemask_epi8(_mm_slli_epi16(hi, 7 - a)) << 16;
#else
  uint32_t plane = 0;
  for (int h = 0; h < 4; ++h) {
    uint64_t b;
    memcpy(&b, src + 8 * h, sizeof(b));
    plane |= (uint32_t)((((b >> a) & 0x0101010101010101ull) * 0x0102040810204080ull) >> 56) << (8 * h);
  }
  return plane;
#endif
}

/* Words c0 .. c0 + cw - 1 of the P columns split into A planes each. */
EDGEBIN_BS_INLINE void edgebin_bs_split(const uint8_t* x, int32_t k, int32_t c0, int32_t cw, int A, uint32_t* xs,
                                        const int P, const int u) {
  (void)u;
  for (int p = 0; p < P; ++p)
    for (int32_t c = 0; c < cw; ++c) {
      const int32_t i = 32 * (c0 + c);
      const uint8_t* src = x + p * k + i;
      uint32_t v[8];
      if (k - i < 32) {
        edgebin_bs_last(src, k - i, v);
        src = (const uint8_t*)v;
      }
      for (int a = 0; a < A; ++a) xs[edgebin_bs_slot(a * P + p, c, cw)] = edgebin_bs_gather(src, a);
    }
}

#endif /* EDGEBIN_BS_DSP */

#ifdef EDGEBIN_BS_DSP

/* The count, in assembly: one weight plane row (words at wp) against S = 1, 2 or 4 streams (their words side by
 * side, a group of four on by 16 bytes a word). Per word one LDR of the weight, then per stream one LDR, AND, five
 * instructions to 4-bit field counts (each mask an immediate, each shift the SUB's or ADD's operand: %[t] keeps
 * the odd pairs' counts, 2 bits up) and an ADD of them into the stream's fields (8; the first word of a group 7).
 * Per three words a stream's fields (each <= 12) go to bytes and into its byte lanes (4), times 2 for the second
 * plane of a pair (SH 1: the shifts of the ADDs). */
#define EDGEBIN_BS_FIELDS(V)              \
  "and    %[t], " V ", #0xAAAAAAAA\n\t"   \
  "sub    " V ", " V ", %[t], lsr #1\n\t" \
  "and    %[t], " V ", #0xCCCCCCCC\n\t"   \
  "and    " V ", " V ", #0x33333333\n\t"
#define EDGEBIN_BS_FIRST(N) "and    " N ", %[x], %[w]\n\t" EDGEBIN_BS_FIELDS(N) "add    " N ", " N ", %[t], lsr #2\n\t"
#define EDGEBIN_BS_NEXT(N)                                                                    \
  "and    %[x], %[x], %[w]\n\t" EDGEBIN_BS_FIELDS("%[x]") "add    " N ", " N ", %[x]\n\t" \
  "add    " N ", " N ", %[t], lsr #2\n\t"
#define EDGEBIN_BS_FINISH(N, C, SH, SR)         \
  "and    %[t], " N ", #0xF0F0F0F0\n\t"        \
  "and    " N ", " N ", #0x0F0F0F0F\n\t"       \
  "add    " C ", " C ", " N ", lsl #" SH "\n\t" \
  "add    " C ", " C ", %[t], lsr #" SR "\n\t"
#define EDGEBIN_BS_WORD1(OP) "ldr    %[w], [%[wp]], #4\n\t" "ldr    %[x], [%[xp]], #16\n\t" OP("%[n0]")
#define EDGEBIN_BS_WORD2(OP) EDGEBIN_BS_WORD1(OP) "ldr    %[x], [%[xp], #-12]\n\t" OP("%[n1]")
#define EDGEBIN_BS_WORD4(OP) \
  EDGEBIN_BS_WORD2(OP) "ldr    %[x], [%[xp], #-8]\n\t" OP("%[n2]") "ldr    %[x], [%[xp], #-4]\n\t" OP("%[n3]")
#define EDGEBIN_BS_END1(SH, SR) EDGEBIN_BS_FINISH("%[n0]", "%[c0]", SH, SR)
#define EDGEBIN_BS_END2(SH, SR) EDGEBIN_BS_END1(SH, SR) EDGEBIN_BS_FINISH("%[n1]", "%[c1]", SH, SR)
#define EDGEBIN_BS_END4(SH, SR) \
  EDGEBIN_BS_END2(SH, SR) EDGEBIN_BS_FINISH("%[n2]", "%[c2]", SH, SR) EDGEBIN_BS_FINISH("%[n3]", "%[c3]", SH, SR)
/* Groups of three words; the words % 3 left over (rem) first, as a shorter group: where the words are a constant, its
 * own code before the loop (no loop when those are all the words), else one copy of its first word that enters the
 * loop after the loop's own (the loop end and rem compared with values in memory: thirteen registers for four
 * streams, r7 left for a frame pointer, as edgebin_kernels.h). */
#define EDGEBIN_BS_LOOP(WORD, END) \
  "1:\n\t" WORD(EDGEBIN_BS_FIRST) WORD(EDGEBIN_BS_NEXT) "3:\n\t" WORD(EDGEBIN_BS_NEXT) "4:\n\t" END \
  "ldr    %[t], %[end]\n\t" "cmp    %[wp], %[t]\n\t" "bne    1b\n\t"
#define EDGEBIN_BS_ANY_REM(WORD, END)                                                                            \
  "ldr    %[t], %[rem]\n\t" "cmp    %[t], #0\n\t" "beq    1f\n\t" "cmp    %[t], #1\n\t" WORD(EDGEBIN_BS_FIRST)   \
  "beq    4f\n\t" "b      3f\n\t" EDGEBIN_BS_LOOP(WORD, END)
#define EDGEBIN_BS_REM0(WORD, END) EDGEBIN_BS_LOOP(WORD, END)
#define EDGEBIN_BS_ALONE1(WORD, END) WORD(EDGEBIN_BS_FIRST) END
#define EDGEBIN_BS_ALONE2(WORD, END) WORD(EDGEBIN_BS_FIRST) WORD(EDGEBIN_BS_NEXT) END
#define EDGEBIN_BS_REM1(WORD, END) EDGEBIN_BS_ALONE1(WORD, END) EDGEBIN_BS_LOOP(WORD, END)
#define EDGEBIN_BS_REM2(WORD, END) EDGEBIN_BS_ALONE2(WORD, END) EDGEBIN_BS_LOOP(WORD, END)
/* One group, or two plane groups of four columns into the same lanes, the second's counts doubled (the weight row
 * read again: wp back by the pass's words). */
#define EDGEBIN_BS_ONE(REM, WORD, END) REM(WORD, END("0", "4"))
#define EDGEBIN_BS_TWO(REM, WORD, END) \
  REM(WORD, END("0", "4")) "ldr    %[t], %[back]\n\t" "sub    %[wp], %[wp], %[t]\n\t" REM(WORD, END("1", "3"))
#define EDGEBIN_BS_OPERANDS(...)                                                                                  \
  : __VA_ARGS__, [wp] "+r"(wp), [xp] "+r"(xp), [w] "=&r"(w), [x] "=&r"(x), [t] "=&r"(t), [n0] "=&r"(n0)          \
  : [end] "m"(wend), [rem] "m"(rem), [back] "m"(back)                                                            \
  : "cc", "memory"
/* words a constant (k a constant, at most 9 words: edgebin_bs_matvecp): only the code of its rem, and no loop when
 * there are no three words more; else the dispatch in the assembly. */
#define EDGEBIN_BS_ASM(HOW, WORD, END, ...)                                                                      \
  do {                                                                                                           \
    if (!__builtin_constant_p(words) || !__builtin_constant_p(rem))                                              \
      __asm__ volatile(HOW(EDGEBIN_BS_ANY_REM, WORD, END) EDGEBIN_BS_OPERANDS(__VA_ARGS__));                     \
    else if (rem == 0)                                                                                           \
      __asm__ volatile(HOW(EDGEBIN_BS_REM0, WORD, END) EDGEBIN_BS_OPERANDS(__VA_ARGS__));                        \
    else if (rem == 1 && words == 1)                                                                             \
      __asm__ volatile(HOW(EDGEBIN_BS_ALONE1, WORD, END) EDGEBIN_BS_OPERANDS(__VA_ARGS__));                      \
    else if (rem == 1)                                                                                           \
      __asm__ volatile(HOW(EDGEBIN_BS_REM1, WORD, END) EDGEBIN_BS_OPERANDS(__VA_ARGS__));                        \
    else if (words == 2)                                                                                         \
      __asm__ volatile(HOW(EDGEBIN_BS_ALONE2, WORD, END) EDGEBIN_BS_OPERANDS(__VA_ARGS__));                      \
    else                                                                                                         \
      __asm__ volatile(HOW(EDGEBIN_BS_REM2, WORD, END) EDGEBIN_BS_OPERANDS(__VA_ARGS__));                        \
  } while (0)

/* The byte lanes c[0..S-1] of popcount(weight word & stream word) over `words` words (1..30: lanes <= 240), for the
 * S streams of the group at xp (words % 3 = rem); two: S = 4 and the next group's (the next plane of the same four
 * columns) counts doubled into the same lanes (words <= 10: lanes <= 240). */
EDGEBIN_BS_INLINE void edgebin_bs_count(const uint32_t* wp, const uint32_t* xp, int32_t words, int32_t rem,
                                        uint32_t* c, const int S, const int two) {
  uint32_t c0 = 0, c1 = 0, c2 = 0, c3 = 0, w, x, t, n0, n1, n2, n3;
  const uint32_t* const wend = wp + words;
  const int32_t back = 4 * words;
  if (S == 4 && two)
    EDGEBIN_BS_ASM(EDGEBIN_BS_TWO, EDGEBIN_BS_WORD4, EDGEBIN_BS_END4, [c0] "+r"(c0), [c1] "+r"(c1), [c2] "+r"(c2),
                   [c3] "+r"(c3), [n1] "=&r"(n1), [n2] "=&r"(n2), [n3] "=&r"(n3));
  else if (S == 4)
    EDGEBIN_BS_ASM(EDGEBIN_BS_ONE, EDGEBIN_BS_WORD4, EDGEBIN_BS_END4, [c0] "+r"(c0), [c1] "+r"(c1), [c2] "+r"(c2),
                   [c3] "+r"(c3), [n1] "=&r"(n1), [n2] "=&r"(n2), [n3] "=&r"(n3));
  else if (S == 2)
    EDGEBIN_BS_ASM(EDGEBIN_BS_ONE, EDGEBIN_BS_WORD2, EDGEBIN_BS_END2, [c0] "+r"(c0), [c1] "+r"(c1), [n1] "=&r"(n1));
  else
    EDGEBIN_BS_ASM(EDGEBIN_BS_ONE, EDGEBIN_BS_WORD1, EDGEBIN_BS_END1, [c0] "+r"(c0));
  c[0] = c0;
  c[1] = c1;
  c[2] = c2;
  c[3] = c3;
}

#undef EDGEBIN_BS_FIELDS
#undef EDGEBIN_BS_FIRST
#undef EDGEBIN_BS_NEXT
#undef EDGEBIN_BS_FINISH
#undef EDGEBIN_BS_WORD1
#undef EDGEBIN_BS_WORD2
#undef EDGEBIN_BS_WORD4
#undef EDGEBIN_BS_END1
#undef EDGEBIN_BS_END2
#undef EDGEBIN_BS_END4
#undef EDGEBIN_BS_LOOP
#undef EDGEBIN_BS_ANY_REM
#undef EDGEBIN_BS_REM0
#undef EDGEBIN_BS_ALONE1
#undef EDGEBIN_BS_ALONE2
#undef EDGEBIN_BS_REM1
#undef EDGEBIN_BS_REM2
#undef EDGEBIN_BS_ONE
#undef EDGEBIN_BS_TWO
#undef EDGEBIN_BS_OPERANDS
#undef EDGEBIN_BS_ASM

/* A stream's popcount sum from its byte lanes (USADA8 with 0). */
EDGEBIN_BS_INLINE uint32_t edgebin_bs_lanes(uint32_t lanes) { return edgebin_bs_usada8(lanes, 0, 0); }

#else /* plain C */

/* popcount(weight word & stream word) summed over `words` words, for the S streams of the group at xp (each stream's
 * words in a row); two: and the next group's (the next plane of the same four columns) doubled into the same sums. */
EDGEBIN_BS_INLINE void edgebin_bs_count(const uint32_t* wp, const uint32_t* xp, int32_t words, int32_t rem,
                                        uint32_t* c, const int S, const int two) {
  (void)rem;
  for (int s = 0; s < 4; ++s) {
    uint32_t sum = 0;
    for (int32_t i = 0; s < S && i < words; ++i) sum += edgebin_bs_popcount(wp[i] & xp[s * words + i]);
    for (int32_t i = 0; two && i < words; ++i) sum += edgebin_bs_popcount(wp[i] & xp[(4 + s) * words + i]) << 1;
    c[s] = sum;
  }
}

EDGEBIN_BS_INLINE uint32_t edgebin_bs_lanes(uint32_t lanes) { return lanes; }

#endif /* EDGEBIN_BS_DSP */

/* Whether planes a and a + 1 of four columns go through one count (P = 4): the second's weight is twice the first's
 * (not so for int8's sign plane), and the pass is short enough for byte lanes of both (EDGEBIN_BS_PAIR_WORDS). */
EDGEBIN_BS_INLINE int edgebin_bs_pairs(int a, int A, int32_t cw, const int P, const int u) {
  return P == 4 && a + 1 < A && (u || a + 2 < A) && cw <= EDGEBIN_BS_PAIR_WORDS;
}

/* acc[j P + p] += coef sum_a d_a popcount(row j's plane & plane a of column p) for every row j, weight plane t
 * (coef) and the pass's cw words (rem = cw % 3): the streams four at a time (P = 4: a plane's columns, or two planes'
 * into the same lanes; 2: two planes' columns; 1: four planes), two or one for the last of one column's planes or
 * of two columns' odd plane. The rows are the inner loop: a group's multipliers and stream words stay put. */
EDGEBIN_BS_INLINE void edgebin_bs_plane_rows(const uint32_t* wp, int32_t row_words, int32_t n, const uint32_t* xs,
                                             int32_t cw, int32_t rem, int A, uint32_t coef, uint32_t* acc,
                                             const int P, const int u) {
  for (int stream = 0; stream < A * P;) {
    const int left = A * P - stream, S = P == 4 || left >= 4 ? 4 : left >= 2 ? 2 : 1;
    const int two = edgebin_bs_pairs(stream / P, A, cw, P, u);
    const uint32_t* xp = xs + edgebin_bs_slot(stream, 0, cw);
    uint32_t m[4];
    for (int q = 0; q < S; ++q) m[q] = edgebin_bs_mult(coef, (stream + q) / P, A, u);
    const uint32_t* row = wp;
    uint32_t* sum = acc;
    for (int32_t j = 0; j < n; ++j, row += row_words, sum += P) {
      uint32_t lanes[4];
      if (two) edgebin_bs_count(row, xp, cw, rem, lanes, 4, 1);
      else edgebin_bs_count(row, xp, cw, rem, lanes, S, 0);
      for (int q = 0; q < S; ++q) sum[q % P] += (P == 4 ? m[0] : m[q]) * edgebin_bs_lanes(lanes[q]);
    }
    stream += two ? 8 : S;
  }
}

/* The activation planes a column's scan calls for: the bit length of `bits`, plus the sign plane for int8. */
EDGEBIN_BS_INLINE int edgebin_bs_planes(uint32_t bits, const int u) {
  return (bits ? 32 - __builtin_clz(bits) : 0) + !u;
}

/* The P-column bit-serial matvec (P, u constants wherever this is inlined). The columns are scanned once (their A
 * and sums), then per pass over up to EDGEBIN_BS_PASS_WORDS words of the reduction (fewer where the stack buffer
 * would not hold their A P streams) split into planes, and each row's planes meet them; a later pass adds to the
 * sums in acc. */
EDGEBIN_BS_INLINE void edgebin_bs_matvecp(const void* x, const uint32_t* planes, const int32_t* form, int32_t k,
                                          int32_t n, int32_t* acc, const int P, const int u) {
  const uint8_t* xb = (const uint8_t*)x;
  const int32_t wb = form[0], words = EDGEBIN_BS_WORDS(k);
  int32_t sums[4];
  int A = 0;
  for (int p = 0; p < P; ++p) {
    const int a = edgebin_bs_planes(edgebin_bs_scan(xb + p * k, k, sums + p, u), u);
    A = a > A ? a : A;
  }
  const int32_t groups = (A * P + 3) >> 2, fit = groups ? EDGEBIN_BS_STACK_WORDS / (4 * groups) : words;
  const int32_t most = P == 4 && A >= 2 ? EDGEBIN_BS_PAIR_WORDS : EDGEBIN_BS_PASS_WORDS; /* planes in pairs */
#ifdef EDGEBIN_BS_DSP
  /* A <= 8 planes: at least 9 words fit, so a reduction of up to 9 words is one pass whatever A (and a constant k
   * leaves the pass's words, and their count % 3, constants for the assembly). */
  const int32_t pass = words <= 9 ? words : fit < most ? fit : most;
#else /* plain C: x86 gcc -O3 unrolls the constant-length counts into slower code (the host bench: 200 -> 284 ns) */
  const int32_t pass = fit < most ? fit : most;
#endif
  uint32_t xs[EDGEBIN_BS_STACK_WORDS];
  int32_t c0 = 0;
  do {
    const int32_t cw = words - c0 < pass ? words - c0 : pass, rem = cw % 3;
    edgebin_bs_split(xb, k, c0, cw, A, xs, P, u);
    uint32_t* sums_out = (uint32_t*)acc;
    if (c0 == 0)
      for (int32_t j = 0; j < n; ++j)
        for (int p = 0; p < P; ++p) sums_out[j * P + p] = (uint32_t)form[1] * (uint32_t)sums[p];
    for (int32_t t = 0; cw > 0 && t < wb; ++t)
      edgebin_bs_plane_rows(planes + t * words + c0, wb * words, n, xs, cw, rem, A, (uint32_t)form[2 + t], sums_out,
                            P, u);
    c0 += cw;
  } while (c0 < words);
}

/* edgebin_bs_matvec{P}_{s8,u8s8}: the entry points the schedule calls. */
#define EDGEBIN_BS_DEFINE(PNAME, P)                                                                           \
  EDGEBIN_INLINE void edgebin_bs_matvec##PNAME##_s8(const int8_t* x, const uint32_t* planes, const int32_t* form, \
                                                    int32_t k, int32_t n, int32_t* acc) {                     \
    edgebin_bs_matvecp(x, planes, form, k, n, acc, P, 0);                                                     \
  }                                                                                                           \
  EDGEBIN_INLINE void edgebin_bs_matvec##PNAME##_u8s8(const uint8_t* x, const uint32_t* planes,               \
                                                      const int32_t* form, int32_t k, int32_t n, int32_t* acc) { \
    edgebin_bs_matvecp(x, planes, form, k, n, acc, P, 1);                                                     \
  }
EDGEBIN_BS_DEFINE(, 1)
EDGEBIN_BS_DEFINE(2, 2)
EDGEBIN_BS_DEFINE(4, 4)

#undef EDGEBIN_BS_DEFINE
#undef EDGEBIN_BS_ROLLED
#undef EDGEBIN_BS_INLINE
#undef EDGEBIN_INLINE

#endif /* EDGEBIN_BITSERIAL_H */
