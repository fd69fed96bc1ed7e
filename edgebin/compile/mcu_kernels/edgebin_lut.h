/* Micro-kernels for low-bit weights kept as b-bit codes into a table of int8 levels: table-coded (NUPES,
 * compile/lut_weights.py) weights, and int8 weights of at most 16 distinct values (QAT's W4, W2, ternary), whose
 * table is their sorted values. The codes stay packed in flash and are decoded inside the kernel. compile/mcu_lut.py
 * calls them where the MCU schedule called edgebin_matvec* (edgebin_kernels.h). The table may hold any int8 values,
 * in any order (no zero level, no symmetry): codes past a row's k are never read as weights.
 *
 * edgebin_lut{b}_matvec{,2,4}_{s8,u8s8}(x, codes, table, k, n, acc), b = 2..7:
 *   acc[j*P + p] = sum_{i<k} x[p*k + i] * table[code(j, i)]  for j < n, p < P (P = 1, 2, 4 columns, as edgebin_matvec)
 *   code(j, i) is bits [i*b, i*b + b) of row j, a little-endian bit stream: rows of ceil(k*b/8) bytes, the first
 *   code in the low bits of the first byte (b = 4: two codes a byte, the first in the low nibble). `codes` must be
 *   readable 3 bytes past its last row (edgebin pads the array). Sums are exact int32: bit for bit the int8
 *   kernel's result on the weights table[code].
 *
 * Cores with the DSP extension: the P columns are spread once per call (as in edgebin_matvecp_x8) into int16 pairs,
 * here (x0, x1) and (x2, x3), so that a pair of neighbouring weights meets them in one SMLAD. The weights come from
 * a table built from `table` in RAM the first time a layer calls the kernel (rebuilt when another table comes, so
 * once per layer and inference): b = 3, 4, a pair of codes (2b bits) indexes int16 pairs (table[c0], table[c1]) in
 * one word (edgebin_lut_pairs: 1 KB, about 1,300 instructions at b = 4); b = 2, a byte of 4 codes indexes its two
 * pairs (edgebin_lut_quads: 2 KB, about 2,000 instructions). b = 4 and 2, whose codes fill whole bytes, run assembly:
 * per weight word (4 weights) two LDRB and two LDR from the pair table (b = 4), or one LDRB, an ADD and one LDRD
 * from the quad table (b = 2), where the int8 kernel has one LDR and two SXTB16; then per column one LDRD and two
 * SMLAD as there; one column takes two rows at a time. b = 3: the pair table in C; b >= 5: each pair two LDRSB from
 * `table` and a PKHBT, in C.
 * Measured on QEMU (cortex-m4, tools/bench/lut_kernels.py, docs/lut-weights.md), kernel calls alone, instructions
 * per MAC at 4 / 2 / 1 columns: int8 kernel 0.95 / 1.16 / 1.37, b = 2 1.27 / 1.48 / 1.65, b = 4 1.32 / 1.60 / 1.90,
 * b = 3 1.83 / 2.19 / 3.27; b >= 5 2.4-5.2.
 * Other cores run plain C loops (define EDGEBIN_NO_SIMD to force them). The host and Cortex-A libraries keep the same
 * codes but decode them once per kernel run instead (cpu_kernels/edgebin_cpu_lut.c), for their int8 kernels.
 */
#ifndef EDGEBIN_LUT_H
#define EDGEBIN_LUT_H

#include <stdint.h>
#include <string.h>

#include "edgebin_kernels.h"

#define EDGEBIN_LUT_INLINE static inline __attribute__((always_inline))

/* Code i (b bits) of a row: two bytes always hold it (b + 7 <= 15 bits). */
EDGEBIN_LUT_INLINE uint32_t edgebin_lut_code(const uint8_t* row, int32_t i, const int b) {
  const int32_t bit = i * b;
  const uint32_t two = (uint32_t)row[bit >> 3] | (uint32_t)row[(bit >> 3) + 1] << 8;
  return (two >> (bit & 7)) & ((1u << b) - 1);
}

/* x[i] of an int8 (u = 0) or uint8 (u = 1) input. */
#define EDGEBIN_LUT_XI(x, i, u) ((u) ? (int32_t)((const uint8_t*)(x))[i] : (int32_t)((const int8_t*)(x))[i])

#ifdef EDGEBIN_SIMD32

#define EDGEBIN_LUT_SPREAD_WORDS 128 /* stack for the spread columns: 512 bytes, 64 / P words of k a pass */

static uint32_t edgebin_lut_pairs[256];       /* (table[c & m], table[c >> b]) as int16 pairs, c < 2^(2b) */
static const int8_t* edgebin_lut_pairs_table; /* the table they were built from, and its b */
static int edgebin_lut_pairs_bits;

/* The pair table of `table` (b <= 4), built on the first call with this table: once per layer and inference. */
EDGEBIN_LUT_INLINE const uint32_t* edgebin_lut_pairs_of(const int8_t* table, const int b) {
  if (__builtin_expect(edgebin_lut_pairs_table != table || edgebin_lut_pairs_bits != b, 0)) {
    const uint32_t m = (1u << b) - 1;
    for (uint32_t c = 0; c < (1u << (2 * b)); ++c)
      edgebin_lut_pairs[c] = (uint16_t)table[c & m] | (uint32_t)(uint16_t)table[c >> b] << 16;
    edgebin_lut_pairs_table = table;
    edgebin_lut_pairs_bits = b;
  }
  return edgebin_lut_pairs;
}

static uint32_t edgebin_lut_quads[512];       /* b = 2: per byte of codes c0..c3, (table[c0], table[c1]) and */
static const int8_t* edgebin_lut_quads_table; /* (table[c2], table[c3]) as int16 pairs; the table built from */

/* The quad table of a b = 2 `table`, built on the first call with this table: once per layer and inference. */
EDGEBIN_LUT_INLINE const uint32_t* edgebin_lut_quads_of(const int8_t* table) {
  if (__builtin_expect(edgebin_lut_quads_table != table, 0)) {
    uint32_t pairs[16];
    for (uint32_t c = 0; c < 16; ++c) pairs[c] = (uint16_t)table[c & 3] | (uint32_t)(uint16_t)table[c >> 2] << 16;
    for (uint32_t c = 0; c < 256; ++c) {
      edgebin_lut_quads[2 * c] = pairs[c & 15];
      edgebin_lut_quads[2 * c + 1] = pairs[c >> 4];
    }
    edgebin_lut_quads_table = table;
  }
  return edgebin_lut_quads;
}

/* (lo, hi): the low halves of two words; (hi, lo): their high halves (PKHBT, PKHTB). */
EDGEBIN_LUT_INLINE uint32_t edgebin_lut_low_halves(uint32_t lo, uint32_t hi) {
  uint32_t r;
  __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(lo), "r"(hi));
  return r;
}

EDGEBIN_LUT_INLINE uint32_t edgebin_lut_high_halves(uint32_t hi, uint32_t lo) {
  uint32_t r;
  __asm__("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(hi), "r"(lo));
  return r;
}

/* The int16 pair (table[c0], table[c1]) of the 2b-bit field c = c0 | c1 << b. */
EDGEBIN_LUT_INLINE uint32_t edgebin_lut_pair(const uint32_t* pairs, const int8_t* table, uint32_t c, const int b) {
  if (b <= 4) return pairs[c];
  const uint32_t m = (1u << b) - 1;
  return (uint16_t)table[c & m] | (uint32_t)table[(c >> b) & m] << 16;
}

/* Sums s[0..P-1] += one row's words [w0, w0 + cw) against the spread columns xe (two pairs per word and column),
 * any b in C. w0 is even: two words (8 codes) are b bytes, so each step's bit offsets are constants. */
EDGEBIN_LUT_INLINE void edgebin_lut_row_words_c(const uint8_t* row, int32_t w0, int32_t cw, const uint32_t* xe,
                                                int32_t* s, const uint32_t* pairs, const int8_t* table, const int P,
                                                const int b) {
  const uint32_t m2 = (1u << (2 * b)) - 1;
  int32_t s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
  const uint8_t* g = row + (w0 >> 1) * b;
  int32_t c = 0;
  for (; c + 2 <= cw; c += 2, g += b, xe += 4 * P) {
    uint32_t lo = edgebin_load_s8x4((const int8_t*)g), hi = b <= 4 ? lo >> (4 * b) :
        edgebin_load_s8x4((const int8_t*)g + ((4 * b) >> 3)) >> ((4 * b) & 7);
    const uint32_t p0 = edgebin_lut_pair(pairs, table, lo & m2, b);
    const uint32_t p1 = edgebin_lut_pair(pairs, table, (lo >> (2 * b)) & m2, b);
    const uint32_t p2 = edgebin_lut_pair(pairs, table, hi & m2, b);
    const uint32_t p3 = edgebin_lut_pair(pairs, table, (hi >> (2 * b)) & m2, b);
    s0 = edgebin_smlad(p0, xe[0], s0);
    s0 = edgebin_smlad(p1, xe[1], s0);
    s0 = edgebin_smlad(p2, xe[2 * P], s0);
    s0 = edgebin_smlad(p3, xe[2 * P + 1], s0);
    if (P > 1) {
      s1 = edgebin_smlad(p0, xe[2], s1);
      s1 = edgebin_smlad(p1, xe[3], s1);
      s1 = edgebin_smlad(p2, xe[2 * P + 2], s1);
      s1 = edgebin_smlad(p3, xe[2 * P + 3], s1);
    }
    if (P > 2) {
      s2 = edgebin_smlad(p0, xe[4], s2);
      s2 = edgebin_smlad(p1, xe[5], s2);
      s2 = edgebin_smlad(p2, xe[2 * P + 4], s2);
      s2 = edgebin_smlad(p3, xe[2 * P + 5], s2);
      s3 = edgebin_smlad(p0, xe[6], s3);
      s3 = edgebin_smlad(p1, xe[7], s3);
      s3 = edgebin_smlad(p2, xe[2 * P + 6], s3);
      s3 = edgebin_smlad(p3, xe[2 * P + 7], s3);
    }
  }
  if (c < cw) { /* an odd last word: its 4 codes at bit 4b (w0 + c), within one word */
    const int32_t bit = (w0 + c) * 4 * b;
    const uint32_t v = edgebin_load_s8x4((const int8_t*)row + (bit >> 3)) >> (bit & 7);
    const uint32_t p0 = edgebin_lut_pair(pairs, table, v & m2, b);
    const uint32_t p1 = edgebin_lut_pair(pairs, table, (v >> (2 * b)) & m2, b);
    s0 = edgebin_smlad(p1, xe[1], edgebin_smlad(p0, xe[0], s0));
    if (P > 1) s1 = edgebin_smlad(p1, xe[3], edgebin_smlad(p0, xe[2], s1));
    if (P > 2) {
      s2 = edgebin_smlad(p1, xe[5], edgebin_smlad(p0, xe[4], s2));
      s3 = edgebin_smlad(p1, xe[7], edgebin_smlad(p0, xe[6], s3));
    }
  }
  s[0] = s0;
  s[1] = s1;
  s[2] = s2;
  s[3] = s3;
}

/* b = 4 and b = 2, where a word's codes are whole bytes: one step per word in assembly, as edgebin_row_words:
 * b = 4, two LDRB (each byte a pair of codes) and two LDR from the pair table; b = 2, one LDRB (the word's 4 codes)
 * and one LDRD of its two pairs from the quad table; then per column one LDRD of its spread pairs and two SMLAD:
 * 4 + 3 P instructions per 4 P MACs at b = 4, 3 + 3 P at b = 2 (the int8 kernel: 3 + 3 P). */
#define EDGEBIN_LUT_CODES4_AT(CP)           \
  "ldrb   %[a], [" CP "], #1\n\t"           \
  "ldrb   %[b], [" CP "], #1\n\t"           \
  "ldr    %[a], [%[tb], %[a], lsl #2]\n\t"  \
  "ldr    %[b], [%[tb], %[b], lsl #2]\n\t"
#define EDGEBIN_LUT_CODES2_AT(CP)           \
  "ldrb   %[a], [" CP "], #1\n\t"           \
  "add    %[a], %[tb], %[a], lsl #3\n\t"    \
  "ldrd   %[a], %[b], [%[a]]\n\t"
#define EDGEBIN_LUT_CODES4 EDGEBIN_LUT_CODES4_AT("%[cp]")
#define EDGEBIN_LUT_CODES2 EDGEBIN_LUT_CODES2_AT("%[cp]")
#define EDGEBIN_LUT_COLUMN(S)                    \
  "ldrd   %[x0], %[x1], [%[ep]], #8\n\t"         \
  "smlad  " S ", %[a], %[x0], " S "\n\t"         \
  "smlad  " S ", %[b], %[x1], " S "\n\t"
#define EDGEBIN_LUT_STEP1(CODES) CODES EDGEBIN_LUT_COLUMN("%[s0]")
#define EDGEBIN_LUT_STEP2(CODES) CODES EDGEBIN_LUT_COLUMN("%[s0]") EDGEBIN_LUT_COLUMN("%[s1]")
#define EDGEBIN_LUT_STEP4(CODES) \
  CODES EDGEBIN_LUT_COLUMN("%[s0]") EDGEBIN_LUT_COLUMN("%[s1]") EDGEBIN_LUT_COLUMN("%[s2]") EDGEBIN_LUT_COLUMN("%[s3]")
/* Two words a pass; the loop end is compared with a value in memory (eleven registers: see edgebin_kernels.h on
 * why not more). */
#define EDGEBIN_LUT_LOOP(STEP) "1:\n\t" STEP STEP "ldr    %[a], %[end]\n\t" "cmp    %[cp], %[a]\n\t" "bne    1b\n\t"
#define EDGEBIN_LUT_OPERANDS(SUMS)                                                                  \
  : SUMS, [cp] "+r"(cp), [ep] "+r"(ep), [a] "=&r"(pa), [b] "=&r"(pb), [x0] "=&r"(x0), [x1] "=&r"(x1) \
  : [tb] "r"(pairs), [end] "m"(cend)                                                                  \
  : "cc", "memory"
#define EDGEBIN_LUT_SUMS4 [s0] "+r"(s0), [s1] "+r"(s1), [s2] "+r"(s2), [s3] "+r"(s3)
#define EDGEBIN_LUT_SUMS2 [s0] "+r"(s0), [s1] "+r"(s1)
#define EDGEBIN_LUT_SUMS1 [s0] "+r"(s0)
#define EDGEBIN_LUT_ONCE(STEP) STEP
#define EDGEBIN_LUT_ASM(P, CODES, LOOP)                                                                          \
  do {                                                                                                           \
    if (P == 4) __asm__ volatile(LOOP(EDGEBIN_LUT_STEP4(CODES)) EDGEBIN_LUT_OPERANDS(EDGEBIN_LUT_SUMS4));        \
    else if (P == 2) __asm__ volatile(LOOP(EDGEBIN_LUT_STEP2(CODES)) EDGEBIN_LUT_OPERANDS(EDGEBIN_LUT_SUMS2));   \
    else __asm__ volatile(LOOP(EDGEBIN_LUT_STEP1(CODES)) EDGEBIN_LUT_OPERANDS(EDGEBIN_LUT_SUMS1));               \
  } while (0)

/* Sums s[0..P-1] += one row's words [w0, w0 + cw) against the spread columns xe: assembly for b = 4 and 2 (a word's
 * codes in whole bytes), edgebin_lut_row_words_c for the others. */
EDGEBIN_LUT_INLINE void edgebin_lut_row_words(const uint8_t* row, int32_t w0, int32_t cw, const uint32_t* xe,
                                              int32_t* s, const uint32_t* pairs, const int8_t* table, const int P,
                                              const int b) {
  if (b != 4 && b != 2) {
    edgebin_lut_row_words_c(row, w0, cw, xe, s, pairs, table, P, b);
    return;
  }
  int32_t s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
  const uint8_t* cp = row + w0 * b / 2;
  const uint8_t* const cend = cp + cw * b / 2;
  const uint32_t* ep = xe;
  uint32_t pa, pb, x0, x1;
  if ((cw & 1) && b == 4) EDGEBIN_LUT_ASM(P, EDGEBIN_LUT_CODES4, EDGEBIN_LUT_ONCE);
  else if (cw & 1) EDGEBIN_LUT_ASM(P, EDGEBIN_LUT_CODES2, EDGEBIN_LUT_ONCE);
  if (cw > 1 && b == 4) EDGEBIN_LUT_ASM(P, EDGEBIN_LUT_CODES4, EDGEBIN_LUT_LOOP);
  else if (cw > 1) EDGEBIN_LUT_ASM(P, EDGEBIN_LUT_CODES2, EDGEBIN_LUT_LOOP);
  s[0] = s0;
  s[1] = s1;
  s[2] = s2;
  s[3] = s3;
}

/* One column, two rows (P = 1): the rows (codes at cp and cq) share each LDRD of the spread column. b = 4: 13
 * instructions per 8 MACs. */
#define EDGEBIN_LUT_TWO_ROWS(CODES_AT)                                                                          \
  "ldrd   %[x0], %[x1], [%[ep]], #8\n\t"                                                                       \
  CODES_AT("%[cq]") "smlad  %[s1], %[a], %[x0], %[s1]\n\t" "smlad  %[s1], %[b], %[x1], %[s1]\n\t"             \
  CODES_AT("%[cp]") "smlad  %[s0], %[a], %[x0], %[s0]\n\t" "smlad  %[s0], %[b], %[x1], %[s0]\n\t"
#define EDGEBIN_LUT_TWO_ROWS4 EDGEBIN_LUT_TWO_ROWS(EDGEBIN_LUT_CODES4_AT)
#define EDGEBIN_LUT_TWO_ROWS2 EDGEBIN_LUT_TWO_ROWS(EDGEBIN_LUT_CODES2_AT)
#define EDGEBIN_LUT_TWO_OPERANDS                                                                               \
  : [s0] "+r"(s0), [s1] "+r"(s1), [cp] "+r"(cp), [cq] "+r"(cq), [ep] "+r"(ep), [a] "=&r"(pa), [b] "=&r"(pb),   \
    [x0] "=&r"(x0), [x1] "=&r"(x1)                                                                             \
  : [tb] "r"(pairs), [end] "m"(cend)                                                                           \
  : "cc", "memory"

/* Sums s[0], s[1] += rows `row` and `row` + rb, words [w0, w0 + cw), against one spread column (b = 4 or 2). */
EDGEBIN_LUT_INLINE void edgebin_lut_two_rows_words(const uint8_t* row, int32_t rb, int32_t w0, int32_t cw,
                                                   const uint32_t* xe, int32_t* s, const uint32_t* pairs,
                                                   const int b) {
  int32_t s0 = s[0], s1 = s[1];
  const uint8_t* cp = row + w0 * b / 2;
  const uint8_t* cq = cp + rb;
  const uint8_t* const cend = cp + cw * b / 2;
  const uint32_t* ep = xe;
  uint32_t pa, pb, x0, x1;
  if ((cw & 1) && b == 4) __asm__ volatile(EDGEBIN_LUT_TWO_ROWS4 EDGEBIN_LUT_TWO_OPERANDS);
  else if (cw & 1) __asm__ volatile(EDGEBIN_LUT_TWO_ROWS2 EDGEBIN_LUT_TWO_OPERANDS);
  if (cw > 1 && b == 4) __asm__ volatile(EDGEBIN_LUT_LOOP(EDGEBIN_LUT_TWO_ROWS4) EDGEBIN_LUT_TWO_OPERANDS);
  else if (cw > 1) __asm__ volatile(EDGEBIN_LUT_LOOP(EDGEBIN_LUT_TWO_ROWS2) EDGEBIN_LUT_TWO_OPERANDS);
  s[0] = s0;
  s[1] = s1;
}

#undef EDGEBIN_LUT_TWO_ROWS
#undef EDGEBIN_LUT_TWO_ROWS4
#undef EDGEBIN_LUT_TWO_ROWS2
#undef EDGEBIN_LUT_TWO_OPERANDS
#undef EDGEBIN_LUT_CODES4
#undef EDGEBIN_LUT_CODES2
#undef EDGEBIN_LUT_CODES4_AT
#undef EDGEBIN_LUT_CODES2_AT
#undef EDGEBIN_LUT_COLUMN
#undef EDGEBIN_LUT_STEP1
#undef EDGEBIN_LUT_STEP2
#undef EDGEBIN_LUT_STEP4
#undef EDGEBIN_LUT_LOOP
#undef EDGEBIN_LUT_OPERANDS
#undef EDGEBIN_LUT_SUMS4
#undef EDGEBIN_LUT_SUMS2
#undef EDGEBIN_LUT_SUMS1
#undef EDGEBIN_LUT_ONCE
#undef EDGEBIN_LUT_ASM

/* The P-column LUT matvec (P, u and b are constants wherever this is inlined). Per pass over up to
 * EDGEBIN_LUT_SPREAD_WORDS / (2 P) words of the reduction (an even number), the P columns are spread into the
 * int16 pairs (x0, x1), (x2, x3) (xe: word c of column p at xe[2 * (c * P + p)]), then each row's codes meet all P
 * columns; a later pass adds to the sums in acc. The k % 4 last inputs: one multiply-add per code and column. */
EDGEBIN_LUT_INLINE void edgebin_lut_matvecp(const void* x, const uint8_t* codes, const int8_t* table, int32_t k,
                                            int32_t n, int32_t* acc, const int P, const int u, const int b) {
  const uint8_t* xb = (const uint8_t*)x;
  const int32_t words = k >> 2, r = k & 3, row_bytes = (k * b + 7) >> 3, pass = EDGEBIN_LUT_SPREAD_WORDS / (2 * P);
  const uint32_t* pairs = b == 2 ? edgebin_lut_quads_of(table) /* b = 2: the pairs of a byte's 4 codes */
                          : b <= 4 ? edgebin_lut_pairs_of(table, b) : (const uint32_t*)0;
  uint32_t xe[EDGEBIN_LUT_SPREAD_WORDS];
  int32_t xl[3 * 4]; /* the r = k % 4 last inputs of each column */
  for (int p = 0; p < P; ++p)
    for (int32_t i = 0; i < r; ++i) xl[3 * p + i] = EDGEBIN_LUT_XI(xb, p * k + 4 * words + i, u);
  int32_t c0 = 0;
  do {
    const int32_t cw = words - c0 < pass ? words - c0 : pass, last = c0 + cw == words;
    for (int32_t c = 0; c < cw; ++c)
      for (int p = 0; p < P; ++p) {
        const uint32_t v = edgebin_load_s8x4((const int8_t*)xb + p * k + 4 * (c0 + c));
        const uint32_t x02 = u ? edgebin_uxtb16(v) : edgebin_sxtb16(v);
        const uint32_t x13 = u ? edgebin_uxtb16_ror8(v) : edgebin_sxtb16_ror8(v);
        xe[2 * (c * P + p)] = edgebin_lut_low_halves(x02, x13);      /* (x0, x1) */
        xe[2 * (c * P + p) + 1] = edgebin_lut_high_halves(x13, x02); /* (x2, x3) */
      }
    const uint8_t* row = codes;
    int32_t j = 0;
    if (P == 1 && (b == 4 || b == 2))
      for (; j + 2 <= n; j += 2, row += 2 * row_bytes) { /* two rows a pass: they share the column loads */
        int32_t s[2] = {c0 > 0 ? acc[j] : 0, c0 > 0 ? acc[j + 1] : 0};
        edgebin_lut_two_rows_words(row, row_bytes, c0, cw, xe, s, pairs, b);
        if (last)
          for (int32_t i = 0; i < r; ++i) {
            s[0] += table[edgebin_lut_code(row, 4 * words + i, b)] * xl[i];
            s[1] += table[edgebin_lut_code(row + row_bytes, 4 * words + i, b)] * xl[i];
          }
        acc[j] = s[0];
        acc[j + 1] = s[1];
      }
    for (; j < n; ++j, row += row_bytes) {
      int32_t s[4] = {0, 0, 0, 0};
      if (c0 > 0)
        for (int p = 0; p < P; ++p) s[p] = acc[j * P + p];
      edgebin_lut_row_words(row, c0, cw, xe, s, pairs, table, P, b);
      if (last)
        for (int32_t i = 0; i < r; ++i) {
          const int32_t w = table[edgebin_lut_code(row, 4 * words + i, b)];
          for (int p = 0; p < P; ++p) s[p] += w * xl[3 * p + i];
        }
      for (int p = 0; p < P; ++p) acc[j * P + p] = s[p];
    }
    c0 += cw;
  } while (c0 < words);
}

#else /* plain C: the host, Cortex-M0/M0+/M3 */

EDGEBIN_LUT_INLINE void edgebin_lut_matvecp(const void* x, const uint8_t* codes, const int8_t* table, int32_t k,
                                            int32_t n, int32_t* acc, const int P, const int u, const int b) {
  const int32_t row_bytes = (k * b + 7) >> 3;
  for (int32_t j = 0; j < n; ++j)
    for (int p = 0; p < P; ++p) {
      int32_t s = 0;
      for (int32_t i = 0; i < k; ++i)
        s += EDGEBIN_LUT_XI(x, p * k + i, u) * (int32_t)table[edgebin_lut_code(codes + j * row_bytes, i, b)];
      acc[j * P + p] = s;
    }
}

#endif /* EDGEBIN_SIMD32 */

/* edgebin_lut{B}_matvec{P}_{s8,u8s8}: the entry points the schedule calls. */
#define EDGEBIN_LUT_DEFINE(B, PNAME, P)                                                                         \
  EDGEBIN_LUT_INLINE void edgebin_lut##B##_matvec##PNAME##_s8(const int8_t* x, const uint8_t* codes,           \
                                                              const int8_t* table, int32_t k, int32_t n,      \
                                                              int32_t* acc) {                                 \
    edgebin_lut_matvecp(x, codes, table, k, n, acc, P, 0, B);                                                   \
  }                                                                                                             \
  EDGEBIN_LUT_INLINE void edgebin_lut##B##_matvec##PNAME##_u8s8(const uint8_t* x, const uint8_t* codes,        \
                                                                const int8_t* table, int32_t k, int32_t n,    \
                                                                int32_t* acc) {                               \
    edgebin_lut_matvecp(x, codes, table, k, n, acc, P, 1, B);                                                   \
  }
#define EDGEBIN_LUT_DEFINE_BITS(B) EDGEBIN_LUT_DEFINE(B, , 1) EDGEBIN_LUT_DEFINE(B, 2, 2) EDGEBIN_LUT_DEFINE(B, 4, 4)
EDGEBIN_LUT_DEFINE_BITS(2)
EDGEBIN_LUT_DEFINE_BITS(3)
EDGEBIN_LUT_DEFINE_BITS(4)
EDGEBIN_LUT_DEFINE_BITS(5)
EDGEBIN_LUT_DEFINE_BITS(6)
EDGEBIN_LUT_DEFINE_BITS(7)

#undef EDGEBIN_LUT_DEFINE_BITS
#undef EDGEBIN_LUT_DEFINE
#undef EDGEBIN_LUT_XI
#undef EDGEBIN_LUT_INLINE

#endif /* EDGEBIN_LUT_H */
