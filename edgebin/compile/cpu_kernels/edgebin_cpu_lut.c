/* Low-bit weights on the LLVM targets (the x86 host, 64-bit Arm boards), #included at the end of
 * edgebin_cpu_kernels.c (one file, one object: host.py compiles KERNELS_C alone):
 *   edgebin_lut{b}_decode(codes, table, k, n, w):  w[j*k + i] = table[code(j, i)]  for j < n, i < k
 * for b = 2, 3, 4 (mcu_lut.HOST_BITS; 5- to 7-bit codes stay int8 weights on these targets). codes: the layout of
 * mcu_kernels/edgebin_lut.h (lut_weights.pack_codes, one packing for every target): per row a little-endian bit
 * stream, code i in bits [i b, i b + b), rows of ceil(k b / 8) bytes; table: 2^b int8 levels, any values, any order.
 * Only the bytes that hold codes are read (not the padding after the last row), only n k bytes of w written.
 *
 * compile/mcu_lut.py (`decode`, for host.pack_low_bit_weights) calls it once at the start of a conv or gemm kernel
 * whose weight it packed, into a buffer of the kernel (n k bytes, a TVM workspace), and leaves the kernel's int8
 * micro-kernel calls above as they were, reading that buffer: the host calls them once per row of output pixels,
 * and the weights decoded once serve every row. ResNet-8, NUPES W4 (docs/lut-weights.md, "Host"): 2 % slower than
 * with int8 weights. Decoding in each call instead, as Cortex-M's LUT kernels do (a LUT kernel per call form,
 * decoding into a stack buffer for the int8 code), measured 21 % slower, and 14 % with the last call's weights kept
 * per thread (comparing the codes to the kept ones costs about what decoding them does).
 *
 * Where k b is a multiple of 8 the rows leave no padding bits, and all n k codes are one stream, decoded 32 codes
 * (4 b bytes) a step:
 * x86 (AVX2, and the AVX-512 VNNI builds): b = 4, 16 bytes zero-extended into 16-bit lanes, each lane's two nibbles
 * moved into its two bytes (a shift, an OR and an AND); b = 2, 8 bytes into 32-bit lanes, each lane's four codes
 * into its four bytes likewise; b = 3, 12 bytes, each 32-bit lane given the two bytes that hold its four codes
 * (VPSHUFB) and shifted right by 0 or 4 bits (VPSRLVD), then its two 6-bit halves moved into its 16-bit halves and
 * the codes into bytes; VPSHUFB then looks the 32 codes up in the table. With AVX-512, b = 4 and 2 take 64 codes a
 * step in 512-bit vectors: 65 and 51 bytes of weights a ns against 41 and 37 (Zen 4, 64 x 576 weights; b = 3: 31).
 * aarch64 (NEON): the same fields with ZIP, shifts and masks (b = 3: TBL to place the bytes, USHL by 0 or -4), then
 * TBL looks them up. Elsewhere, and for the rest of a stream: 8 codes (b bytes) a step in C, then a code at a time.
 */

#define EDGEBIN_LUT_ALWAYS static inline __attribute__((always_inline))

/* w[0 .. count - 1] = table[code i] for codes i0 .. i0 + count - 1 of the stream s, a code at a time, reading only
 * the bytes that hold them. */
EDGEBIN_LUT_ALWAYS void edgebin_lut_decode_c(const uint8_t* s, int32_t i0, int32_t count, const int8_t* table,
                                             int8_t* w, const int b) {
  const uint32_t m = (1u << b) - 1;
  for (int32_t i = i0; i < i0 + count; ++i) {
    const int32_t bit = i * b, at = bit >> 3, shift = bit & 7;
    uint32_t v = (uint32_t)s[at] >> shift;
    if (shift + b > 8) v |= (uint32_t)s[at + 1] << (8 - shift); /* the code runs into the next byte */
    *w++ = table[v & m];
  }
}

/* The same from code i0 (a multiple of 8) on: 8 codes, b whole bytes, a step, then a code at a time. */
EDGEBIN_LUT_ALWAYS void edgebin_lut_decode8(const uint8_t* s, int32_t i0, int32_t count, const int8_t* table,
                                            int8_t* w, const int b) {
  const uint32_t m = (1u << b) - 1;
  int32_t i = i0;
  for (; i + 8 <= i0 + count; i += 8) {
    const uint8_t* g = s + i / 8 * b;
    uint32_t v = 0;
    for (int t = 0; t < b; ++t) v |= (uint32_t)g[t] << (8 * t);
    for (int t = 0; t < 8; ++t) w[i - i0 + t] = table[(v >> (b * t)) & m];
  }
  edgebin_lut_decode_c(s, i, i0 + count - i, table, w + (i - i0), b);
}

#if defined(EDGEBIN_X86_VNNI) || defined(EDGEBIN_X86_AVX2)

/* 32 codes of b = 3 from the 12 bytes at g, each in a byte: lane q's 12 bits (codes 4q .. 4q+3) start in byte
 * 3q / 2, at bit 0 or 4. */
EDGEBIN_LUT_ALWAYS __m256i edgebin_lut_codes3(const uint8_t* g) {
  const __m256i pick = _mm256_setr_epi8(0, 1, -1, -1, 1, 2, -1, -1, 3, 4, -1, -1, 4, 5, -1, -1,
                                        6, 7, -1, -1, 7, 8, -1, -1, 9, 10, -1, -1, 10, 11, -1, -1);
  int64_t lo;
  int32_t hi;
  __builtin_memcpy(&lo, g, 8);
  __builtin_memcpy(&hi, g + 8, 4);
  const __m256i bytes = _mm256_broadcastsi128_si256(_mm_insert_epi32(_mm_cvtsi64_si128(lo), hi, 2));
  const __m256i v = _mm256_srlv_epi32(_mm256_shuffle_epi8(bytes, pick), _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
  const __m256i halves = _mm256_and_si256(_mm256_or_si256(v, _mm256_slli_epi32(v, 10)), _mm256_set1_epi32(0x3F003F));
  return _mm256_and_si256(_mm256_or_si256(halves, _mm256_slli_epi32(halves, 5)), _mm256_set1_epi32(0x07070707));
}

/* 32 codes, the 4 b bytes at g, each in a byte. */
EDGEBIN_LUT_ALWAYS __m256i edgebin_lut_codes(const uint8_t* g, const int b) {
  if (b == 3) return edgebin_lut_codes3(g);
  if (b == 4) { /* lane: byte c1 c0 -> bytes c0, c1 */
    const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)g));
    return _mm256_and_si256(_mm256_or_si256(v, _mm256_slli_epi16(v, 4)), _mm256_set1_epi16(0x0F0F));
  }
  const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)g)); /* lane: byte c3 c2 c1 c0 */
  const __m256i spread = _mm256_or_si256(_mm256_or_si256(v, _mm256_slli_epi32(v, 6)),
                                         _mm256_or_si256(_mm256_slli_epi32(v, 12), _mm256_slli_epi32(v, 18)));
  return _mm256_and_si256(spread, _mm256_set1_epi32(0x03030303));
}

#ifdef EDGEBIN_X86_VNNI

/* 64 codes of b = 4 or 2, the 8 b bytes at g, each in a byte: edgebin_lut_codes in 512-bit vectors. */
EDGEBIN_LUT_ALWAYS __m512i edgebin_lut_codes64(const uint8_t* g, const int b) {
  if (b == 4) {
    const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)g));
    return _mm512_and_si512(_mm512_or_si512(v, _mm512_slli_epi16(v, 4)), _mm512_set1_epi16(0x0F0F));
  }
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)g));
  const __m512i spread = _mm512_or_si512(_mm512_or_si512(v, _mm512_slli_epi32(v, 6)),
                                         _mm512_or_si512(_mm512_slli_epi32(v, 12), _mm512_slli_epi32(v, 18)));
  return _mm512_and_si512(spread, _mm512_set1_epi32(0x03030303));
}

#endif

/* w[0 .. count - 1] = table[code i] for the first `count` codes of the stream s: 64 a step (AVX-512, b = 4, 2), 32 a
 * step (4 b bytes, read exactly), then edgebin_lut_decode8. */
EDGEBIN_LUT_ALWAYS void edgebin_lut_decode(const uint8_t* s, int32_t count, const int8_t* table, int8_t* w,
                                           const int b) {
  int32_t four; /* the table's 2^b bytes (no more: it may end there), in both 128-bit lanes */
  __builtin_memcpy(&four, table, 4);
  const __m128i low = b == 4 ? _mm_loadu_si128((const __m128i*)table)
                      : b == 3 ? _mm_loadl_epi64((const __m128i*)table) : _mm_cvtsi32_si128(four);
  const __m256i levels = _mm256_broadcastsi128_si256(low);
  int32_t i = 0;
#ifdef EDGEBIN_X86_VNNI
  if (b != 3)
    for (const __m512i levels4 = _mm512_broadcast_i32x4(low); i + 64 <= count; i += 64)
      _mm512_storeu_si512(w + i, _mm512_shuffle_epi8(levels4, edgebin_lut_codes64(s + i / 8 * b, b)));
#endif
  for (; i + 32 <= count; i += 32)
    _mm256_storeu_si256((__m256i*)(w + i), _mm256_shuffle_epi8(levels, edgebin_lut_codes(s + i / 8 * b, b)));
  edgebin_lut_decode8(s, i, count - i, table, w + i, b);
}

#elif defined(__aarch64__) && defined(__ARM_NEON)

#include <arm_neon.h>

/* 32 codes, the 4 b bytes at g, each in a byte, in order: b = 4, the low and high nibbles interleaved (ZIP1/ZIP2);
 * b = 2, the four 2-bit fields of each byte, interleaved by bytes and then by pairs; b = 3, as on x86 (a table
 * lookup gives each 32-bit lane the two bytes that hold its four codes, a shift right by 0 or 4, then 6-bit halves
 * into 16-bit halves and codes into bytes). */
EDGEBIN_LUT_ALWAYS uint8x16x2_t edgebin_lut_codes(const uint8_t* g, const int b) {
  if (b == 4) {
    const uint8x16_t v = vld1q_u8(g);
    return vzipq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8(v, 4));
  }
  if (b == 2) {
    const uint8x8_t v = vld1_u8(g), m = vdup_n_u8(3);
    const uint8x8x2_t c01 = vzip_u8(vand_u8(v, m), vand_u8(vshr_n_u8(v, 2), m));
    const uint8x8x2_t c23 = vzip_u8(vand_u8(vshr_n_u8(v, 4), m), vshr_n_u8(v, 6));
    const uint16x8x2_t q = vzipq_u16(vreinterpretq_u16_u8(vcombine_u8(c01.val[0], c01.val[1])),
                                     vreinterpretq_u16_u8(vcombine_u8(c23.val[0], c23.val[1])));
    return (uint8x16x2_t){{vreinterpretq_u8_u16(q.val[0]), vreinterpretq_u8_u16(q.val[1])}};
  }
  static const uint8_t pick[32] = {0, 1, 255, 255, 1, 2, 255, 255, 3, 4, 255, 255, 4, 5, 255, 255,
                                   6, 7, 255, 255, 7, 8, 255, 255, 9, 10, 255, 255, 10, 11, 255, 255};
  static const int32_t right[4] = {0, -4, 0, -4};
  uint32_t hi;
  __builtin_memcpy(&hi, g + 8, 4);
  const uint8x16_t bytes = vcombine_u8(vld1_u8(g), vcreate_u8(hi));
  uint8x16x2_t out;
  for (int h = 0; h < 2; ++h) {
    const uint32x4_t v = vshlq_u32(vreinterpretq_u32_u8(vqtbl1q_u8(bytes, vld1q_u8(pick + 16 * h))), vld1q_s32(right));
    const uint32x4_t halves = vandq_u32(vorrq_u32(v, vshlq_n_u32(v, 10)), vdupq_n_u32(0x3F003F));
    out.val[h] = vreinterpretq_u8_u32(vandq_u32(vorrq_u32(halves, vshlq_n_u32(halves, 5)), vdupq_n_u32(0x07070707)));
  }
  return out;
}

/* As on x86: 32 codes a step, then edgebin_lut_decode8. */
EDGEBIN_LUT_ALWAYS void edgebin_lut_decode(const uint8_t* s, int32_t count, const int8_t* table, int8_t* w,
                                           const int b) {
  uint32_t four; /* the table's 2^b bytes, no more */
  __builtin_memcpy(&four, table, 4);
  const int8x16_t levels = b == 4   ? vld1q_s8(table)
                           : b == 3 ? vcombine_s8(vld1_s8(table), vdup_n_s8(0))
                                    : vreinterpretq_s8_u32(vdupq_n_u32(four));
  int32_t i = 0;
  for (; i + 32 <= count; i += 32) {
    const uint8x16x2_t c = edgebin_lut_codes(s + i / 8 * b, b);
    vst1q_s8(w + i, vqtbl1q_s8(levels, c.val[0]));
    vst1q_s8(w + i + 16, vqtbl1q_s8(levels, c.val[1]));
  }
  edgebin_lut_decode8(s, i, count - i, table, w + i, b);
}

#else

EDGEBIN_LUT_ALWAYS void edgebin_lut_decode(const uint8_t* s, int32_t count, const int8_t* table, int8_t* w,
                                           const int b) {
  edgebin_lut_decode8(s, 0, count, table, w, b);
}

#endif

/* edgebin_lut{B}_decode: n rows of k codes; one stream when the rows end on whole bytes. */
#define EDGEBIN_LUT_DECODE(B)                                                                                      \
  void edgebin_lut##B##_decode(const uint8_t* codes, const int8_t* table, int32_t k, int32_t n, int8_t* w) {     \
    const int32_t row_bytes = (k * B + 7) >> 3;                                                                    \
    if ((k * B & 7) == 0) {                                                                                        \
      edgebin_lut_decode(codes, n * k, table, w, B);                                                               \
      return;                                                                                                      \
    }                                                                                                              \
    for (int32_t j = 0; j < n; ++j) edgebin_lut_decode(codes + j * row_bytes, k, table, w + j * k, B);            \
  }
EDGEBIN_LUT_DECODE(2)
EDGEBIN_LUT_DECODE(3)
EDGEBIN_LUT_DECODE(4)

#undef EDGEBIN_LUT_DECODE
#undef EDGEBIN_LUT_ALWAYS
