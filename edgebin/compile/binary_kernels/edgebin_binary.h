/* Bit-packed binary layers: the kernels edgebin's compiled binary (W1A1) convolutions and dense layers call.
 *
 * A binary layer computes y = sum over its inputs of a * w with a, w in {-1, +1}. With +1 stored as bit 1 and
 * -1 as bit 0, a * w is +1 where the bits agree and -1 where they differ, so a dot product of K such pairs is
 *     K - 2 * popcount(a XOR w),
 * 32 multiply-accumulates per XOR and popcount of one 32-bit word.
 *
 * edgebin_bpack_nchw_f32(x, shift, n, c, hw, bits)
 *   The activation side: bit (ch % 32) of word bits[(i * hw + p) * words + ch / 32] is 1 when
 *   x[(i * c + ch) * hw + p] + shift[ch] >= 0 (sign(0) = +1, as the exported graph's GreaterOrEqual), with
 *   words = ceil(c / 32); bits for channels >= c are 0. One word row per pixel, channels packed: NHWC bits from
 *   an NCHW float tensor. The add happens in float32 exactly as in the ONNX graph, so the bits are the graph's.
 * edgebin_bpack_add_nchw_f32(x, y, shift, n, c, hw, bits)
 *   The same bits of (x + y) + shift, in that float32 order: a ResNet block's residual add packed for the next
 *   binary convs without writing the sum (BinaryToPacked folds the ReLU between them into shift).
 * edgebin_bconv2d(bits, w, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow, out)
 *   out[((i * cout + co) * oh + y) * ow + x] = sum over the taps inside the image and the c channels of a * w,
 *   an int32 in NCHW. Padding is zero in the exported graph (a padded tap contributes 0, neither +1 nor -1), so
 *   taps outside the image are skipped and the count of valid products is taps * c. w holds the weight bits
 *   laid out [ky][kx][word][co] (output channels innermost, so one activation word meets a run of output
 *   channels: the loop a compiler vectorizes, 16 words per VPOPCNTD with AVX-512). Channel bits
 *   beyond c are 0 on both sides and add nothing. A dense layer is the 1x1 case with h = wd = 1.
 * edgebin_bconv2d_affine(bits, w, mul, add, n, c, ..., ow, out)
 *   The same conv with a float epilogue, out = sum * mul[co] + add[co]: the weight scale times the following
 *   BatchNorm's gamma / sqrt(var + eps), and its beta - mean * that; one pass instead of a conv and a BatchNorm.
 * edgebin_bconv2d_residual(bits, w, mul, add, res, n, c, ..., ow, out)
 *   The affine epilogue plus a ResNet block's residual add and ReLU: out = max(sum * mul[co] + add[co] + res, 0),
 *   res a float tensor of the output's shape (the block's input or its shortcut), read at the same index.
 *
 * edgebin_bconv2d_bits(bits, w, dir, thr, n, c, ..., ow, out)
 *   The threshold epilogue: instead of floats, the packed input bits of the next binary layer, in the layout
 *   edgebin_bpack_nchw_f32 writes (a word row of ceil(cout / 32) words per output pixel), bit co set when
 *   dir[co] * sum >= thr[co]: the sign of [relu](sum * scale, BatchNorm) + shift is monotonic in the integer sum,
 *   so the compiler turns it into one integer threshold per channel (dir -1 when the scale is negative, 0 for a
 *   constant bit). A conv whose BatchNorm (and ReLU) feed only the next binary conv needs no float tensor and no
 *   packing pass.
 * edgebin_bconv2d_dense(bits, w, tapsum, n, c, ..., ow, out) and edgebin_bconv2d_dense_affine(..., mul, add, ...)
 *   The same convs for cores without a popcount instruction (Cortex-M), which count bits in software: the
 *   receptive field of each output pixel is first gathered into one dense bit column, tap t = ky * kw + kx at
 *   bits [t * c, t * c + c), so a 16-channel layer fills whole words (the per-tap layout leaves half of each word
 *   empty), and the weights are dense rows w[co][kwords] in the same bit order. Output channels then go two at a
 *   time, each column word loaded once for both: XOR with each row, and the SWAR count (five Thumb-2 instructions
 *   a word to 4-bit counts, finished once per three words; USADA8 sums the four byte counts on DSP cores). A tap
 *   outside the image is left 0 in the column, which counts as -1 against each weight; tapsum[co * kh * kw + t]
 *   (the sum of that tap's +-1 weights, int8: c <= 127) adds it back, on border pixels only. Columns hold at most
 *   EDGEBIN_BCOL_WORDS words (the compiler uses the other kernels for a larger c * kh * kw or c > 127).
 *
 * Popcount: the compiler's builtin where the target has an instruction for it (x86 POPCNT, AArch64/NEON CNT);
 * elsewhere (Cortex-M has none and libgcc's __popcountsi2 is a call) the SWAR bit count below. All paths compute
 * the same integers, so every target gives the same output bit for bit.
 */
#ifndef EDGEBIN_BINARY_H
#define EDGEBIN_BINARY_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* TVM's export_library compiles with g++ */
#endif

/* Linkage of the two kernels: static inline when a bundle includes this header; a library that other code links
 * against (the host's model.so) defines EDGEBIN_BINARY_API empty before including it. */
#if defined(__GNUC__)
#define EDGEBIN_NO_UNROLL _Pragma("GCC unroll 1")
#define EDGEBIN_UNROLL _Pragma("GCC unroll 32")
/* The shared cores inline into each specialized kernel: the shape constants reach the loops, and a QEMU profile
 * charges the kernel's own symbol, that is its layer, with all of its instructions. */
#define EDGEBIN_CORE static inline __attribute__((always_inline))
#else
#define EDGEBIN_NO_UNROLL
#define EDGEBIN_UNROLL
#define EDGEBIN_CORE static inline
#endif

#ifndef EDGEBIN_BINARY_API
#define EDGEBIN_BINARY_API EDGEBIN_CORE
#endif

/* Output channels accumulated per pass over an output pixel's taps: a stack array of this many int32. */
#define EDGEBIN_BCONV_BLOCK 64
/* Pixels packed per pass over a word's channels. */
#define EDGEBIN_BPACK_BLOCK 64
/* Words of one dense receptive-field column (edgebin_bconv2d_dense): c * kh * kw <= 32 * this. */
#define EDGEBIN_BCOL_WORDS 64

/* Output channels of a conv computed with MST-compression: a stack array of this many int32. */
#define EDGEBIN_MST_CHANNELS 512

#if defined(__ARM_FEATURE_SIMD32) && defined(__thumb2__) && !defined(EDGEBIN_NO_SIMD)
#define EDGEBIN_BINARY_USADA8 1
#endif
/* Thumb-2 (Cortex-M): the software bit count, the bit-sliced kernels' assembly and the packing loop below. */
#if defined(__thumb2__) && !defined(EDGEBIN_NO_SIMD)
#define EDGEBIN_THUMB2_SWAR 1
#endif

static inline int32_t edgebin_popcount32(uint32_t v) {
#if defined(__POPCNT__) || defined(__aarch64__) || defined(__ARM_NEON)
  return __builtin_popcount(v);
#else
  v = v - ((v >> 1) & 0x55555555u);
  v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
  v = (v + (v >> 4)) & 0x0F0F0F0Fu;
  return (int32_t)((v * 0x01010101u) >> 24);
#endif
}

/* --- x86 with AVX-512 (VPOPCNTDQ and BITALG: Ice Lake, Zen 4 and later) ------------------------------------------
 * The portable conv core (edgebin_bconv2d_core) vectorizes over output channels, one pixel at a time: for a
 * 16-channel layer half of each word is empty, and every pixel pays its tap bounds, its count array and one scalar
 * store per channel (20 us for ResNet-8's 16x28x28 conv on a Zen 4 core). This core vectorizes over output pixels
 * instead. A block is up to one vector of consecutive output pixels, one pixel per lane: 16-bit lanes (VPOPCNTW,
 * 32 pixels a zmm) when c <= 16, so a 16-channel word is full; else 32-bit lanes (VPOPCNTD, 16 pixels), one vector
 * per 32-channel word. The input is first re-laid out into one plane per word and stride phase, rows and columns
 * (16-bit elements when c <= 16), so that each tap of a block reads consecutive elements: one load a tap, the block
 * spanning rows where the planes are as wide as the output (a "same" conv), else within one row. Each tap's vector
 * has a mask of the lanes whose tap lies inside the image; each output channel then costs, per tap and word, one
 * XOR with its broadcast weight word and one zero-masked popcount (a padded tap counts nothing), the counts summed
 * as a tree, and its epilogue writes a run of the NCHW output with vector stores (the threshold epilogue ORs the
 * channel's bit into the block's output words). A block of at most a quarter of the lanes (a row's or the image's
 * last few pixels) goes pixel by pixel through the portable core's loop instead, which is cheaper than a whole
 * block per channel. Shapes it does not take (more tap vectors or a larger input than its stack buffers) go to the
 * portable core; every path computes the same integers.
 * EDGEBIN_NO_AVX512 turns it off (the tests' portable build). The packing kernel has an AVX-512 version too
 * (edgebin_bpack_avx512). */
#if defined(__AVX512BW__) && defined(__AVX512VPOPCNTDQ__) && defined(__AVX512BITALG__) && !defined(EDGEBIN_NO_AVX512)
#include <immintrin.h>
#define EDGEBIN_BINARY_AVX512 1
/* Tap vectors per block (kh * kw * words) and bytes of the re-laid-out input the AVX-512 core takes (its stack
 * buffers come to about 56 KB). */
#define EDGEBIN_AVX512_TAPS 64
#define EDGEBIN_AVX512_PLANE_BYTES 32768
/* Most output words per pixel of its threshold epilogue: cout <= 32 * this. */
#define EDGEBIN_AVX512_OUT_WORDS 16
/* 16-bit lanes: weight words per conv (cout * kh * kw), copied to both halves of a word for a 32-bit broadcast. */
#define EDGEBIN_AVX512_WEIGHTS 4096
typedef uint16_t edgebin_u16_alias __attribute__((may_alias)); /* 16-bit elements in the uint32_t buffer */
#endif

#if defined(EDGEBIN_THUMB2_SWAR) && defined(__ARM_FP)
#define EDGEBIN_PACK_ASM 1
/* One channel of four pixels, after the loads: the shift (s8) added to the four sums (s0-s3), each sum's sign bit
 * shifted into its pixel's word n0 .. n3 from below (ADDS puts the sign in the carry, ADC doubles the word and adds
 * it). */
#define EDGEBIN_PACK_SIGNS                                                                                        \
  "vadd.f32 s0, s0, s8\n\tvadd.f32 s1, s1, s8\n\tvadd.f32 s2, s2, s8\n\tvadd.f32 s3, s3, s8\n\t"             \
  "vmov %[u], %[v], s0, s1\n\tadds %[u], %[u], %[u]\n\tadc %[n0], %[n0], %[n0]\n\tadds %[v], %[v], %[v]\n\t"   \
  "adc %[n1], %[n1], %[n1]\n\tvmov %[u], %[v], s2, s3\n\tadds %[u], %[u], %[u]\n\tadc %[n2], %[n2], %[n2]\n\t" \
  "adds %[v], %[v], %[v]\n\tadc %[n3], %[n3], %[n3]\n\t"

/* Four pixels' sign words over channels [c0, c0 + nc), the last channel first: xp (and yp) at the four pixels of
 * channel c0 + nc - 1, sp at shift + c0 + nc (read downwards, each shift plus 0.0 so that -0.0 is +0.0), stride the
 * bytes between two channels' planes; neg[j] gets pixel j's sign bits, channel c0 in bit 0. One channel is 20
 * instructions (25 with the addend): about 5 (6.25) an element. Every operand the loop writes is early-clobber, so
 * that no input shares its register (stride and nc, both 32 in one test, did). */
EDGEBIN_CORE void edgebin_bpack4(const float* xp, const float* yp, const float* sp, int32_t nc, int32_t stride,
                                 uint32_t* neg) {
  uint32_t n0 = 0, n1 = 0, n2 = 0, n3 = 0, u, v;
  if (yp) {
    __asm__ volatile("1:\n\tvldmdb %[sp]!, {s8}\n\tvldmia %[xp], {s0-s3}\n\tvldmia %[yp], {s4-s7}\n\t"
                     "vadd.f32 s8, s8, %[zero]\n\tsub %[xp], %[xp], %[st]\n\tsub %[yp], %[yp], %[st]\n\t"
                     "vadd.f32 s0, s0, s4\n\tvadd.f32 s1, s1, s5\n\tvadd.f32 s2, s2, s6\n\tvadd.f32 s3, s3, s7\n\t"
                     EDGEBIN_PACK_SIGNS "subs %[k], %[k], #1\n\tbne 1b\n\t"
                     : [n0] "+&r"(n0), [n1] "+&r"(n1), [n2] "+&r"(n2), [n3] "+&r"(n3), [u] "=&r"(u), [v] "=&r"(v),
                       [xp] "+&r"(xp), [yp] "+&r"(yp), [sp] "+&r"(sp), [k] "+&r"(nc)
                     : [st] "r"(stride), [zero] "t"(0.0f)
                     : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "cc", "memory");
  } else {
    __asm__ volatile("1:\n\tvldmdb %[sp]!, {s8}\n\tvldmia %[xp], {s0-s3}\n\tvadd.f32 s8, s8, %[zero]\n\t"
                     "sub %[xp], %[xp], %[st]\n\t" EDGEBIN_PACK_SIGNS "subs %[k], %[k], #1\n\tbne 1b\n\t"
                     : [n0] "+&r"(n0), [n1] "+&r"(n1), [n2] "+&r"(n2), [n3] "+&r"(n3), [u] "=&r"(u), [v] "=&r"(v),
                       [xp] "+&r"(xp), [sp] "+&r"(sp), [k] "+&r"(nc)
                     : [st] "r"(stride), [zero] "t"(0.0f)
                     : "s0", "s1", "s2", "s3", "s8", "cc", "memory");
  }
  neg[0] = n0;
  neg[1] = n1;
  neg[2] = n2;
  neg[3] = n3;
}
#undef EDGEBIN_PACK_SIGNS
#endif

#ifdef EDGEBIN_BINARY_AVX512
/* edgebin_bpack_core on AVX-512, 16 pixels at a time: per channel one compare into a mask register and one masked OR
 * of the channel's bit into the pixels' words, in four independent chains (gcc's vectorization of the portable loop
 * takes about six instructions, and one chain waits on each OR). x + s >= 0 is compared as x >= -s, the same test
 * for a finite s: a sum of two floats rounds to 0 only when it is exactly 0, and rounding is monotonic. A word's
 * channels with an infinite or NaN shift keep the add. With an addend the sum x + y is formed first, as in the
 * graph. 16 channels of 784 pixels (50 KB of floats) take about as long as reading them from L2. */
static const int32_t edgebin_bit[32] = {
    1 << 0,  1 << 1,  1 << 2,  1 << 3,  1 << 4,  1 << 5,  1 << 6,  1 << 7,  1 << 8,  1 << 9,  1 << 10,
    1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 21,
    1 << 22, 1 << 23, 1 << 24, 1 << 25, 1 << 26, 1 << 27, 1 << 28, 1 << 29, 1 << 30, (int32_t)0x80000000u};
EDGEBIN_CORE void edgebin_bpack_avx512(const float* x, const float* y, const float* shift, int32_t n, int32_t c,
                                       int32_t hw, uint32_t* bits) {
  const int32_t words = (c + 31) / 32;
  const int32_t* bit = edgebin_bit;
  __asm__("" : "+r"(bit)); /* opaque: each bit a broadcast operand from memory, not a register built per use */
  float limit[32];
  for (int32_t i = 0; i < n; ++i) {
    for (int32_t k = 0; k < words; ++k) {
      const int32_t c0 = k * 32, nc = c - c0 < 32 ? c - c0 : 32;
      const int64_t first = ((int64_t)i * c + c0) * hw; /* channel c0's plane */
      uint32_t* dst = bits + (int64_t)i * hw * words + k;
      int finite = 1;
      for (int32_t j = 0; j < nc; ++j) {
        limit[j] = -shift[c0 + j];
        finite &= shift[c0 + j] - shift[c0 + j] == 0.0f;
      }
      for (int32_t p0 = 0; p0 < hw; p0 += 16) {
        const __mmask16 in = (__mmask16)(hw - p0 >= 16 ? 0xFFFF : (1u << (hw - p0)) - 1);
        __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                          _mm512_setzero_si512()};
        EDGEBIN_UNROLL for (int32_t j = 0; j < nc; ++j) {
          __m512 v = _mm512_maskz_loadu_ps(in, x + first + (int64_t)j * hw + p0);
          if (y) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(in, y + first + (int64_t)j * hw + p0));
          const __mmask16 on =
              finite ? _mm512_cmp_ps_mask(v, _mm512_set1_ps(limit[j]), _CMP_GE_OQ)
                     : _mm512_cmp_ps_mask(_mm512_add_ps(v, _mm512_set1_ps(shift[c0 + j])), _mm512_setzero_ps(),
                                          _CMP_GE_OQ);
          acc[j & 3] = _mm512_mask_or_epi32(acc[j & 3], on, acc[j & 3], _mm512_set1_epi32(bit[j]));
        }
        const __m512i word = _mm512_or_si512(_mm512_or_si512(acc[0], acc[1]), _mm512_or_si512(acc[2], acc[3]));
        if (words == 1) {
          _mm512_mask_storeu_epi32(dst + p0, in, word);
        } else { /* pixel p's word at dst[p * words] */
          const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
          const __m512i at = _mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32(p0), lane),
                                                _mm512_set1_epi32(words));
          _mm512_mask_i32scatter_epi32(dst, in, at, word, 4);
        }
      }
    }
  }
}
#endif

/* Pack x (+ y) + shift >= 0 (y may be 0: no addend). On Cortex-M with an FPU four pixels at a time
 * (edgebin_bpack4): each bit from the sum's sign rather than a float compare (VCMP and VMRS an element; the
 * portable loop below took 11 instructions an element on Cortex-M4). The sign is the comparison's answer for every
 * sum but a NaN (whose bit then follows its sign bit) once -0.0 is out of the way: a sum is -0.0 only when both
 * terms are, and the shift is added to +0.0 first. */
EDGEBIN_CORE void edgebin_bpack_core(const float* x, const float* y, const float* shift, int32_t n, int32_t c,
                                     int32_t hw, uint32_t* bits) {
#ifdef EDGEBIN_BINARY_AVX512
  edgebin_bpack_avx512(x, y, shift, n, c, hw, bits);
  return;
#endif
  const int32_t words = (c + 31) / 32;
  for (int32_t i = 0; i < n; ++i) {
    for (int32_t k = 0; k < words; ++k) {
      const int32_t c0 = k * 32, c1 = c - c0 < 32 ? c : c0 + 32;
      const int64_t first = ((int64_t)i * c + c0) * hw; /* channel c0's plane */
      uint32_t* dst = bits + (int64_t)i * hw * words + k;
      int32_t p0 = 0;
#ifdef EDGEBIN_PACK_ASM
      const uint32_t keep = c1 - c0 == 32 ? 0xFFFFFFFFu : (1u << (c1 - c0)) - 1u;
      const int64_t last = first + (int64_t)(c1 - c0 - 1) * hw;
      for (; p0 + 4 <= hw; p0 += 4) {
        uint32_t neg[4];
        edgebin_bpack4(x + last + p0, y ? y + last + p0 : 0, shift + c1, c1 - c0, hw * (int32_t)sizeof(float), neg);
        for (int32_t j = 0; j < 4; ++j) dst[(int64_t)(p0 + j) * words] = ~neg[j] & keep;
      }
#endif
      /* Pixels in blocks of EDGEBIN_BPACK_BLOCK: each channel's plane is read contiguously and ORs its bit into the
       * block's words, a loop over pixels that compilers vectorize (a compare and a masked OR per 16 pixels). */
      for (; p0 < hw; p0 += EDGEBIN_BPACK_BLOCK) {
        const int32_t np = hw - p0 < EDGEBIN_BPACK_BLOCK ? hw - p0 : EDGEBIN_BPACK_BLOCK;
        uint32_t acc[EDGEBIN_BPACK_BLOCK] = {0};
        for (int32_t ch = c0; ch < c1; ++ch) {
          const float* xp = x + first + (int64_t)(ch - c0) * hw + p0;
          const float* yp = y ? y + first + (int64_t)(ch - c0) * hw + p0 : 0;
          const float s = shift[ch];
          const int32_t b = ch - c0;
          if (yp) {
            for (int32_t j = 0; j < np; ++j) acc[j] |= (uint32_t)(xp[j] + yp[j] + s >= 0.0f) << b;
          } else {
            for (int32_t j = 0; j < np; ++j) acc[j] |= (uint32_t)(xp[j] + s >= 0.0f) << b;
          }
        }
        for (int32_t j = 0; j < np; ++j) dst[(int64_t)(p0 + j) * words] = acc[j];
      }
    }
  }
}

EDGEBIN_BINARY_API void edgebin_bpack_nchw_f32(const float* x, const float* shift, int32_t n, int32_t c,
                                                int32_t hw, uint32_t* bits) {
  edgebin_bpack_core(x, 0, shift, n, c, hw, bits);
}

EDGEBIN_BINARY_API void edgebin_bpack_add_nchw_f32(const float* x, const float* y, const float* shift, int32_t n,
                                                    int32_t c, int32_t hw, uint32_t* bits) {
  edgebin_bpack_core(x, y, shift, n, c, hw, bits);
}

/* The taps [lo, hi) of a k-tap window starting at input position `start` (negative in the padding) that fall
 * inside an input of `size`: both conv cores skip or fix up the others. */
EDGEBIN_CORE void edgebin_taps_inside(int32_t start, int32_t size, int32_t k, int32_t* lo, int32_t* hi) {
  *lo = start < 0 ? -start : 0;
  *hi = size - start < k ? size - start : k;
}

/* One output pixel's epilogue for output channel co: the int32 sum to out_i; or, with out_f, the float
 * sum * mul[co] + add[co] (the scale with the BatchNorm that follows folded in), with res also plus res[at] and a
 * ReLU; or, with out_b, the next binary layer's input bit, dir[co] * sum >= thr[co], into the pixel's word row at
 * bit co. */
EDGEBIN_CORE void edgebin_bconv2d_store(int32_t sum, int32_t co, int64_t at, int32_t* out_i, const float* mul,
                                         const float* add, const float* res, float* out_f, const int32_t* dir,
                                         const int32_t* thr, uint32_t* out_b) {
  if (out_b) {
    out_b[co >> 5] |= (uint32_t)(dir[co] * sum >= thr[co]) << (co & 31);
  } else if (out_f) {
    float v = (float)sum * mul[co] + add[co];
    if (res) {
      v += res[at];
      v = v > 0.0f ? v : 0.0f;
    }
    out_f[at] = v;
  } else {
    out_i[at] = sum;
  }
}

/* Output pixel (y, x) of image i, every output channel: the portable conv, vectorized over output channels (the
 * loop over j below), one tap and input word at a time. The AVX-512 core also uses it for the few pixels of a last
 * short block. */
EDGEBIN_CORE void edgebin_bconv2d_pixel(const uint32_t* bits, const uint32_t* w, int32_t i, int32_t y, int32_t x,
                                         int32_t c, int32_t h, int32_t wd, int32_t cout, int32_t kh, int32_t kw,
                                         int32_t sh, int32_t sw, int32_t ph, int32_t pw, int32_t oh, int32_t ow,
                                         int32_t* out_i, const float* mul, const float* add, const float* res,
                                         float* out_f, const int32_t* dir, const int32_t* thr, uint32_t* out_b) {
  const int32_t out_words = (cout + 31) / 32;
  const int32_t words = (c + 31) / 32;
  int32_t count[EDGEBIN_BCONV_BLOCK];
  const uint32_t* image = bits + (int64_t)i * h * wd * words;
  const int64_t base = (int64_t)i * cout * oh * ow;
  const int32_t y0 = y * sh - ph, x0 = x * sw - pw;
  int32_t ky0, ky1, kx0, kx1;
  edgebin_taps_inside(y0, h, kh, &ky0, &ky1);
  edgebin_taps_inside(x0, wd, kw, &kx0, &kx1);
  const int32_t valid = (ky1 - ky0) * (kx1 - kx0) * c;
  uint32_t* row = out_b ? out_b + (((int64_t)i * oh + y) * ow + x) * out_words : 0;
  for (int32_t k = 0; row && k < out_words; ++k) row[k] = 0;
  for (int32_t cb = 0; cb < cout; cb += EDGEBIN_BCONV_BLOCK) {
    const int32_t nb = cout - cb < EDGEBIN_BCONV_BLOCK ? cout - cb : EDGEBIN_BCONV_BLOCK;
    for (int32_t j = 0; j < nb; ++j) count[j] = 0;
    for (int32_t ky = ky0; ky < ky1; ++ky) {
      for (int32_t kx = kx0; kx < kx1; ++kx) {
        const uint32_t* a = image + ((int64_t)(y0 + ky) * wd + (x0 + kx)) * words;
        const uint32_t* wt = w + ((int64_t)(ky * kw + kx) * words) * cout + cb;
        for (int32_t k = 0; k < words; ++k, wt += cout) {
          const uint32_t ak = a[k];
          /* Not unrolled before the vectorizer sees it: with a constant nb (shape-specialized kernels) gcc would
           * otherwise unroll it into scalar popcounts. */
          EDGEBIN_NO_UNROLL
          for (int32_t j = 0; j < nb; ++j) count[j] += edgebin_popcount32(ak ^ wt[j]);
        }
      }
    }
    if (row) { /* whole words at once (cb is a multiple of 32): no read-modify-write per bit */
      for (int32_t j = 0; j < nb; j += 32) {
        uint32_t word = 0;
        for (int32_t b = 0; b < 32 && j + b < nb; ++b) {
          word |= (uint32_t)(dir[cb + j + b] * (valid - 2 * count[j + b]) >= thr[cb + j + b]) << b;
        }
        row[(cb + j) >> 5] = word;
      }
      continue;
    }
    for (int32_t j = 0; j < nb; ++j) {
      edgebin_bconv2d_store(valid - 2 * count[j], cb + j, base + ((int64_t)(cb + j) * oh + y) * ow + x, out_i, mul,
                            add, res, out_f, dir, thr, row);
    }
  }
}

#ifdef EDGEBIN_BINARY_AVX512
/* The XOR popcounts of a block's tap vectors tv against one output channel's weight words (word j at wt[j * stride],
 * tap j / words), each zero-masked to the lanes whose tap is inside the image (tm), summed as a tree: log2(taps)
 * dependent adds instead of a chain of taps * words, so that consecutive channels overlap. 16-bit lanes (half) or
 * 32-bit. */
EDGEBIN_CORE __m512i edgebin_avx512_counts(const __m512i* tv, const __mmask32* tm, const uint32_t* wt,
                                           int32_t stride, int32_t taps, int32_t words, int32_t half) {
  __m512i p[EDGEBIN_AVX512_TAPS];
  const int32_t n = taps * words;
  EDGEBIN_UNROLL for (int32_t j = 0; j < n; ++j) {
    const __m512i d = _mm512_xor_si512(tv[j], _mm512_set1_epi32((int32_t)wt[(int64_t)j * stride]));
    p[j] = half ? _mm512_maskz_popcnt_epi16(tm[j / words], d) : _mm512_maskz_popcnt_epi32((__mmask16)tm[j / words], d);
  }
  EDGEBIN_UNROLL for (int32_t s = 1; s < n; s *= 2) {
    EDGEBIN_UNROLL for (int32_t j = 0; j + s < n; j += 2 * s) {
      p[j] = half ? _mm512_add_epi16(p[j], p[j + s]) : _mm512_add_epi32(p[j], p[j + s]);
    }
  }
  return p[0];
}

/* One block of the AVX-512 core: given its tap vectors tv (tap j / words, word j % words), their lane masks tm and
 * valid (per lane, the count of products inside the image), every output channel's sums for the block's nl pixels,
 * the NCHW pixels pix0.. pix0 + nl - 1, through the epilogue of edgebin_bconv2d_store. 16-bit lanes hold the pixels
 * in edgebin_avx512_order and read their weights from wdup (each word's low half twice) and their threshold
 * epilogue's dir and clamped thr from dthr (both halves, per channel). */
EDGEBIN_CORE void edgebin_avx512_block(const __m512i* tv, const __mmask32* tm, __m512i valid, int32_t nl,
                                       int64_t pix0, const uint32_t* w, const uint32_t* wdup, int32_t i, int32_t c,
                                       int32_t taps, int32_t cout, int64_t ohw, int32_t* out_i, const float* mul,
                                       const float* add, const float* res, float* out_f, const int32_t* dir,
                                       const int32_t* thr, const uint32_t* dthr, uint32_t* out_b) {
  const int32_t words = (c + 31) / 32, half = c <= 16, out_words = (cout + 31) / 32, parts = half ? 2 : 1;
  const __mmask32 all = (__mmask32)(((uint64_t)1 << nl) - 1); /* pixels, in order */
  /* the threshold epilogue's bits: 16-bit lanes gather channels 16g.. 16g + 15 in ob[g] (lanes in the block's
   * order), 32-bit lanes channels 32k.. 32k + 31 in ob[k] */
  __m512i ob[2 * EDGEBIN_AVX512_OUT_WORDS];
  uint32_t ob_lanes[EDGEBIN_AVX512_OUT_WORDS][32];
  for (int32_t k = 0; k < 2 * out_words; ++k) ob[k] = _mm512_setzero_si512();
  for (int32_t co = 0; co < cout; ++co) {
    const __m512i acc = half ? edgebin_avx512_counts(tv, tm, wdup + co, cout, taps, 1, 1)
                             : edgebin_avx512_counts(tv, tm, w + co, cout, taps, words, 0);
    /* sum = valid - 2 * count; 16-bit lanes hold it (|sum| <= taps * 16) */
    const __m512i sum = half ? _mm512_sub_epi16(valid, _mm512_add_epi16(acc, acc))
                             : _mm512_sub_epi32(valid, _mm512_add_epi32(acc, acc));
    if (out_b) { /* dir is -1, 0 or +1 (sign_thresholds); thr clamped to int16 keeps every comparison */
      if (half) {
        const __mmask32 on = _mm512_cmpge_epi16_mask(_mm512_mullo_epi16(sum, _mm512_set1_epi32((int32_t)dthr[2 * co])),
                                                     _mm512_set1_epi32((int32_t)dthr[2 * co + 1]));
        /* each channel's bit is added once: an add is the OR */
        const __m512i bit = _mm512_set1_epi32((int32_t)(0x10001u << (co & 15)));
        ob[co >> 4] = _mm512_mask_add_epi16(ob[co >> 4], on, ob[co >> 4], bit);
      } else {
        const __mmask16 on = _mm512_cmpge_epi32_mask(_mm512_mullo_epi32(sum, _mm512_set1_epi32(dir[co])),
                                                     _mm512_set1_epi32(thr[co]));
        ob[co >> 5] = _mm512_mask_or_epi32(ob[co >> 5], on, ob[co >> 5], _mm512_set1_epi32((int32_t)(1u << (co & 31))));
      }
      continue;
    }
    const int64_t at = ((int64_t)i * cout + co) * ohw + pix0;
    for (int32_t p = 0; p < parts; ++p) {
      /* 16-bit lanes: pixel j in lane 2j, pixel 16 + j in lane 2j + 1 (edgebin_avx512_order), so that each 32-bit
       * lane's halves widen by shifts */
      const __m512i s32 = !half ? sum
                          : p   ? _mm512_srai_epi32(sum, 16)
                                : _mm512_srai_epi32(_mm512_slli_epi32(sum, 16), 16);
      const __mmask16 keep = (__mmask16)(all >> (16 * p));
      if (out_f) { /* one FMA: what a compiler contracts `(float)sum * mul + add` into on such a CPU */
        __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s32), _mm512_set1_ps(mul[co]), _mm512_set1_ps(add[co]));
        if (res) { /* the residual add, then the ReLU */
          f = _mm512_add_ps(f, _mm512_maskz_loadu_ps(keep, res + at + 16 * p));
          f = _mm512_max_ps(f, _mm512_setzero_ps());
        }
        _mm512_mask_storeu_ps(out_f + at + 16 * p, keep, f);
      } else {
        _mm512_mask_storeu_epi32(out_i + at + 16 * p, keep, s32);
      }
    }
  }
  if (out_b) { /* the block's pixels' word rows: straight stores for one word, else interleaved */
    if (half) { /* channel groups 2k and 2k + 1 into word k: pixel j's halves from lane 2j, 16 + j's from 2j + 1 */
      const __m512i low = _mm512_set1_epi32(0xFFFF);
      for (int32_t k = 0; k < out_words; ++k) {
        const __m512i a = ob[2 * k], b = 2 * k + 1 < 2 * out_words ? ob[2 * k + 1] : _mm512_setzero_si512();
        ob[2 * k] = _mm512_or_si512(_mm512_and_si512(a, low), _mm512_slli_epi32(b, 16));
        ob[2 * k + 1] = _mm512_or_si512(_mm512_srli_epi32(a, 16), _mm512_andnot_si512(low, b));
      }
    }
    uint32_t* dst = out_b + ((int64_t)i * ohw + pix0) * out_words;
    const int32_t stride = half ? 2 : 1; /* ob index of word k, part p: stride * k + p */
    if (out_words == 1) {
      for (int32_t p = 0; p < parts; ++p) _mm512_mask_storeu_epi32(dst + 16 * p, (__mmask16)(all >> (16 * p)), ob[p]);
    } else {
      for (int32_t k = 0; k < out_words; ++k) {
        for (int32_t p = 0; p < parts; ++p) _mm512_storeu_si512(&ob_lanes[k][16 * p], ob[stride * k + p]);
      }
      for (int32_t l = 0; l < nl; ++l) {
        for (int32_t k = 0; k < out_words; ++k) dst[(int64_t)l * out_words + k] = ob_lanes[k][l];
      }
    }
  }
}

/* The pixel of each 16-bit lane of a block, and the element of a loaded vector that each lane takes: lane 2j has
 * pixel j and lane 2j + 1 pixel 16 + j, so that the 32-bit halves of a sum widen to pixels 0..15 and 16..31 by two
 * shifts (VPMOVSXWD and VEXTRACTI64X4 instead took a shuffle unit three times a channel). */
EDGEBIN_CORE __m512i edgebin_avx512_order(void) {
  return _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19,
                          3, 18, 2, 17, 1, 16, 0);
}

/* Per lane of a block of consecutive output pixels (lanes 16-bit, in edgebin_avx512_order, or 32-bit): its output row
 * y and column x, from p0's by carrying the column past the row's end (at most lanes / ow + 1 times). */
EDGEBIN_CORE void edgebin_avx512_rows_cols(int32_t p0, int32_t ow, int32_t half, __m512i* y, __m512i* x) {
  const int32_t lanes = half ? 32 : 16;
  const __m512i iota16 = edgebin_avx512_order();
  const __m512i iota32 = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  *y = half ? _mm512_set1_epi16((int16_t)(p0 / ow)) : _mm512_set1_epi32(p0 / ow);
  *x = half ? _mm512_add_epi16(_mm512_set1_epi16((int16_t)(p0 % ow)), iota16)
            : _mm512_add_epi32(_mm512_set1_epi32(p0 % ow), iota32);
  for (int32_t r = 0; r <= lanes / ow; ++r) {
    if (half) {
      const __mmask32 wrap = _mm512_cmpge_epi16_mask(*x, _mm512_set1_epi16((int16_t)ow));
      *x = _mm512_mask_sub_epi16(*x, wrap, *x, _mm512_set1_epi16((int16_t)ow));
      *y = _mm512_mask_add_epi16(*y, wrap, *y, _mm512_set1_epi16(1));
    } else {
      const __mmask16 wrap = _mm512_cmpge_epi32_mask(*x, _mm512_set1_epi32(ow));
      *x = _mm512_mask_sub_epi32(*x, wrap, *x, _mm512_set1_epi32(ow));
      *y = _mm512_mask_add_epi32(*y, wrap, *y, _mm512_set1_epi32(1));
    }
  }
}

/* The lanes whose input coordinate v * s + off (v the lane's output row or column) lies in [0, size). */
EDGEBIN_CORE __mmask32 edgebin_avx512_inside(__m512i v, int32_t s, int32_t off, int32_t size, int32_t half) {
  /* v * s + off >= 0 and < size, as v >= ceil(-off / s) and v <= floor((size - 1 - off) / s) */
  const int32_t lo = off >= 0 ? 0 : (-off + s - 1) / s;
  const int32_t hi = size - 1 - off < 0 ? -1 : (size - 1 - off) / s;
  if (half) {
    return _mm512_cmpge_epi16_mask(v, _mm512_set1_epi16((int16_t)lo)) &
           _mm512_cmple_epi16_mask(v, _mm512_set1_epi16((int16_t)hi));
  }
  return (__mmask32)(_mm512_cmpge_epi32_mask(v, _mm512_set1_epi32(lo)) &
                     _mm512_cmple_epi32_mask(v, _mm512_set1_epi32(hi)));
}

/* Returns 0, having done nothing, for a shape it does not take. */
EDGEBIN_CORE int edgebin_bconv2d_avx512(const uint32_t* bits, const uint32_t* w, int32_t n, int32_t c, int32_t h,
                                         int32_t wd, int32_t cout, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                                         int32_t ph, int32_t pw, int32_t oh, int32_t ow, int32_t* out_i,
                                         const float* mul, const float* add, const float* res, float* out_f,
                                         const int32_t* dir, const int32_t* thr, uint32_t* out_b) {
  const int32_t words = (c + 31) / 32, taps = kh * kw, half = c <= 16, lanes = half ? 32 : 16;
  const int32_t hq = (h + sh - 1) / sh, wq = (wd + sw - 1) / sw; /* rows and columns of one stride phase */
  /* before and after the planes: every lane's address is inside the buffer */
  const int32_t margin = lanes + (kh + ph + 1) * wq + kw + pw;
  const int64_t plane = (int64_t)hq * wq, groups = (int64_t)sh * sw * words;
  const int64_t used = groups * plane + 2 * margin;
  const int32_t out_words = (cout + 31) / 32;
  if (taps * words > EDGEBIN_AVX512_TAPS || used * (half ? 2 : 4) > EDGEBIN_AVX512_PLANE_BYTES ||
      out_words > EDGEBIN_AVX512_OUT_WORDS || (half && (int64_t)cout * taps > EDGEBIN_AVX512_WEIGHTS)) {
    return 0;
  }
  uint32_t buf[EDGEBIN_AVX512_PLANE_BYTES / 4];
  edgebin_u16_alias* const b16 = (edgebin_u16_alias*)buf;
  __m512i tv[EDGEBIN_AVX512_TAPS];
  __mmask32 tm[EDGEBIN_AVX512_TAPS];
  uint32_t wdup[EDGEBIN_AVX512_WEIGHTS]; /* 16-bit lanes: each weight word's low half in both halves */
  for (int32_t j = 0; half && j < cout * taps; ++j) wdup[j] = (w[j] & 0xFFFFu) * 0x10001u;
  uint32_t dthr[2 * 32 * EDGEBIN_AVX512_OUT_WORDS]; /* 16-bit lanes: dir and the clamped thr, in both halves */
  for (int32_t co = 0; half && out_b && co < cout; ++co) {
    const int32_t t16 = thr[co] < -32768 ? -32768 : thr[co] > 32767 ? 32767 : thr[co];
    dthr[2 * co] = ((uint32_t)dir[co] & 0xFFFFu) * 0x10001u;
    dthr[2 * co + 1] = ((uint32_t)t16 & 0xFFFFu) * 0x10001u;
  }
  for (int32_t i = 0; i < n; ++i) {
    /* Input row iy goes to the planes of row phase iy % sh, at their row iy / sh; within it, element e = q * G + g
     * of the row (word k of column q * sw + phase, g = phase * words + k, G = sw * words) goes to plane g at column q:
     * G = 1 is a copy, G = 2 a de-interleave. */
    const uint32_t* image = bits + (int64_t)i * h * wd * words;
    const int32_t cg = sw * words, len = wd * words;
    for (int32_t y = 0; y < h; ++y) {
      const uint32_t* row = image + (int64_t)y * len;
      const int64_t at = margin + (int64_t)(y % sh) * cg * plane + (int64_t)(y / sh) * wq; /* + g * plane */
      if (cg <= 2) {
        for (int32_t e = 0; e < len; e += 16) { /* 16 elements: 16 columns of one plane, or 8 of two */
          const __mmask16 in = (__mmask16)(len - e >= 16 ? 0xFFFF : (1u << (len - e)) - 1);
          const __m512i v = _mm512_maskz_loadu_epi32(in, row + e);
          if (cg == 1 && half) _mm512_mask_cvtepi32_storeu_epi16(b16 + at + e, in, v);
          if (cg == 1 && !half) _mm512_mask_storeu_epi32(buf + at + e, in, v);
          if (cg == 1) continue;
          const __mmask8 pairs = (__mmask8)(len - e >= 16 ? 0xFF : (1u << ((len - e + 1) / 2)) - 1);
          const __m512i odd = _mm512_srli_epi64(v, 32);
          const int64_t q = at + e / 2;
          if (half) {
            _mm512_mask_cvtepi64_storeu_epi16(b16 + q, pairs, v);
            _mm512_mask_cvtepi64_storeu_epi16(b16 + q + plane, pairs, odd);
          } else {
            _mm512_mask_cvtepi64_storeu_epi32(buf + q, pairs, v);
            _mm512_mask_cvtepi64_storeu_epi32(buf + q + plane, pairs, odd);
          }
        }
        continue;
      }
      for (int32_t e = 0; e < len; ++e) {
        const int64_t to = at + (int64_t)(e % cg) * plane + e / cg;
        if (half) b16[to] = (uint16_t)row[e];
        else buf[to] = row[e];
      }
    }
    /* Blocks of up to `lanes` consecutive output pixels p0 + lane. With wq == ow (a "same" conv: ResNet's), pixel
     * p = y * ow + x reads tap (ky, kx) at element p + dy * wq + dx of its phase plane, whatever rows the block spans;
     * else a block stays within one output row, at element y * wq + x + dy * wq + dx. One load a tap either way. */
    const int32_t total = oh * ow, linear = wq == ow;
    for (int32_t p0 = 0, nl; p0 < total; p0 += nl) {
      const int32_t end = linear ? total : (p0 / ow + 1) * ow;
      nl = end - p0 < lanes ? end - p0 : lanes;
      if (4 * nl <= lanes) { /* a short block costs a whole one per output channel: pixel by pixel instead */
        for (int32_t p = p0; p < p0 + nl; ++p) {
          edgebin_bconv2d_pixel(bits, w, i, p / ow, p % ow, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow, out_i,
                                mul, add, res, out_f, dir, thr, out_b);
        }
        continue;
      }
      const int64_t a0 = linear ? p0 : (int64_t)(p0 / ow) * wq + p0 % ow;
      const __mmask32 all = half ? _mm512_cmplt_epi16_mask(edgebin_avx512_order(), _mm512_set1_epi16((int16_t)nl))
                                 : (__mmask32)(((uint64_t)1 << nl) - 1); /* the block's lanes, in their order */
      __m512i yv, xv;
      edgebin_avx512_rows_cols(p0, ow, half, &yv, &xv);
      __mmask32 rows_in[EDGEBIN_AVX512_TAPS], cols_in[EDGEBIN_AVX512_TAPS];
      for (int32_t ky = 0; ky < kh; ++ky) rows_in[ky] = all & edgebin_avx512_inside(yv, sh, ky - ph, h, half);
      for (int32_t kx = 0; kx < kw; ++kx) cols_in[kx] = edgebin_avx512_inside(xv, sw, kx - pw, wd, half);
      __m512i valid = _mm512_setzero_si512(); /* taps inside the image times c, per lane */
      for (int32_t ky = 0; ky < kh; ++ky) {
        const int32_t offy = ky - ph, py = ((offy % sh) + sh) % sh, dy = (offy - py) / sh;
        for (int32_t kx = 0; kx < kw; ++kx) {
          const int32_t t = ky * kw + kx, offx = kx - pw, px = ((offx % sw) + sw) % sw, dx = (offx - px) / sw;
          tm[t] = rows_in[ky] & cols_in[kx];
          for (int32_t k = 0; k < words; ++k) {
            const int64_t at = margin + ((int64_t)(py * sw + px) * words + k) * plane + (int64_t)dy * wq + dx + a0;
            tv[t * words + k] = half ? _mm512_permutexvar_epi16(edgebin_avx512_order(), _mm512_loadu_si512(b16 + at))
                                     : _mm512_loadu_si512(buf + at);
          }
          valid = half ? _mm512_mask_add_epi16(valid, tm[t], valid, _mm512_set1_epi16((int16_t)c))
                       : _mm512_mask_add_epi32(valid, (__mmask16)tm[t], valid, _mm512_set1_epi32(c));
        }
      }
      edgebin_avx512_block(tv, tm, valid, nl, p0, w, wdup, i, c, taps, cout, (int64_t)oh * ow, out_i, mul, add, res,
                           out_f, dir, thr, dthr, out_b);
    }
  }
  return 1;
}
#endif

/* The conv of edgebin_bconv2d{,_affine,_bits}: see edgebin_bconv2d_store for the three outputs. */
EDGEBIN_CORE void edgebin_bconv2d_core(const uint32_t* bits, const uint32_t* w, int32_t n, int32_t c, int32_t h,
                                        int32_t wd, int32_t cout, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                                        int32_t ph, int32_t pw, int32_t oh, int32_t ow, int32_t* out_i,
                                        const float* mul, const float* add, const float* res, float* out_f,
                                        const int32_t* dir, const int32_t* thr, uint32_t* out_b) {
#ifdef EDGEBIN_BINARY_AVX512
  if (edgebin_bconv2d_avx512(bits, w, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow, out_i, mul, add, res, out_f,
                             dir, thr, out_b)) {
    return;
  }
#endif
  for (int32_t i = 0; i < n; ++i) {
    for (int32_t y = 0; y < oh; ++y) {
      for (int32_t x = 0; x < ow; ++x) {
        edgebin_bconv2d_pixel(bits, w, i, y, x, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow, out_i, mul, add, res,
                              out_f, dir, thr, out_b);
      }
    }
  }
}

EDGEBIN_BINARY_API void edgebin_bconv2d(const uint32_t* bits, const uint32_t* w, int32_t n, int32_t c, int32_t h,
                                         int32_t wd, int32_t cout, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                                         int32_t ph, int32_t pw, int32_t oh, int32_t ow, int32_t* out) {
  edgebin_bconv2d_core(bits, w, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow, out, 0, 0, 0, 0, 0, 0, 0);
}

EDGEBIN_BINARY_API void edgebin_bconv2d_affine(const uint32_t* bits, const uint32_t* w, const float* mul,
                                                const float* add, int32_t n, int32_t c, int32_t h, int32_t wd,
                                                int32_t cout, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                                                int32_t ph, int32_t pw, int32_t oh, int32_t ow, float* out) {
  edgebin_bconv2d_core(bits, w, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow, 0, mul, add, 0, out, 0, 0, 0);
}

EDGEBIN_BINARY_API void edgebin_bconv2d_residual(const uint32_t* bits, const uint32_t* w, const float* mul,
                                                  const float* add, const float* res, int32_t n, int32_t c, int32_t h,
                                                  int32_t wd, int32_t cout, int32_t kh, int32_t kw, int32_t sh,
                                                  int32_t sw, int32_t ph, int32_t pw, int32_t oh, int32_t ow,
                                                  float* out) {
  edgebin_bconv2d_core(bits, w, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow, 0, mul, add, res, out, 0, 0, 0);
}

EDGEBIN_BINARY_API void edgebin_bconv2d_bits(const uint32_t* bits, const uint32_t* w, const int32_t* dir,
                                              const int32_t* thr, int32_t n, int32_t c, int32_t h, int32_t wd,
                                              int32_t cout, int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t ph,
                                              int32_t pw, int32_t oh, int32_t ow, uint32_t* out) {
  edgebin_bconv2d_core(bits, w, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow, 0, 0, 0, 0, 0, dir, thr, out);
}

/* --- Counting bits in software (Cortex-M) -------------------------------------------------------------------------
 * The SWAR count in two steps per word, to 2-bit and then 4-bit field counts (each <= 4), the fields of up to three
 * words summed (<= 12), then their byte sums (<= 24) added into the total, by one USADA8 on DSP cores. On Thumb-2
 * each mask is an immediate of the AND and each shift the SUB's or ADD's shifted operand: five instructions from a
 * word to its 4-bit counts, three to byte sums. (gcc rewrites (v & 0xAAAAAAAA) >> 1 as (v >> 1) & 0x55555555, a
 * shift the AND cannot fold: seven and four.) EDGEBIN_THUMB2_SWAR (defined above) selects these paths. */
/* The bit counts of v's eight 4-bit fields, each <= 4. */
EDGEBIN_CORE uint32_t edgebin_nibble_counts(uint32_t v) {
#ifdef EDGEBIN_THUMB2_SWAR
  uint32_t t;
  __asm__("and %1, %0, #0xAAAAAAAA\n\t"
          "sub %0, %0, %1, lsr #1\n\t"
          "and %1, %0, #0xCCCCCCCC\n\t"
          "and %0, %0, #0x33333333\n\t"
          "add %0, %0, %1, lsr #2"
          : "+r"(v), "=&r"(t));
  return v;
#else
  v -= (v >> 1) & 0x55555555u;
  return (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
#endif
}

/* total plus the sum of the eight 4-bit fields of n (each <= 15). */
EDGEBIN_CORE uint32_t edgebin_add_nibbles(uint32_t total, uint32_t n) {
#ifdef EDGEBIN_THUMB2_SWAR
  uint32_t t;
  __asm__("and %1, %0, #0xF0F0F0F0\n\t"
          "and %0, %0, #0x0F0F0F0F\n\t"
          "add %0, %0, %1, lsr #4"
          : "+r"(n), "=&r"(t));
#else
  n = (n & 0x0F0F0F0Fu) + ((n >> 4) & 0x0F0F0F0Fu);
#endif
#ifdef EDGEBIN_BINARY_USADA8
  __asm__("usada8 %0, %1, %2, %0" : "+r"(total) : "r"(n), "r"(0u));
  return total;
#else
  n += n >> 8;
  return total + ((n + (n >> 16)) & 0xFFu);
#endif
}

/* sum of popcount(a[k] ^ b[k]) for k < n: the builtin per word where the target has the instruction, else the
 * SWAR count, finished once per three words. */
EDGEBIN_CORE int32_t edgebin_xor_popcount(const uint32_t* a, const uint32_t* b, int32_t n) {
#if defined(__POPCNT__) || defined(__aarch64__) || defined(__ARM_NEON)
  int32_t total = 0;
  for (int32_t k = 0; k < n; ++k) total += __builtin_popcount(a[k] ^ b[k]);
  return total;
#else
  uint32_t total = 0;
  for (int32_t k = 0; k < n; k += 3) {
    uint32_t fields = edgebin_nibble_counts(a[k] ^ b[k]);
    if (k + 1 < n) fields += edgebin_nibble_counts(a[k + 1] ^ b[k + 1]);
    if (k + 2 < n) fields += edgebin_nibble_counts(a[k + 2] ^ b[k + 2]);
    total = edgebin_add_nibbles(total, fields);
  }
  return (int32_t)total;
#endif
}

/* The same for two rows against one column: two output channels of a dense conv, each column word loaded once. */
EDGEBIN_CORE void edgebin_xor_popcount2(const uint32_t* col, const uint32_t* w0, const uint32_t* w1, int32_t n,
                                        int32_t* count0, int32_t* count1) {
#if defined(__POPCNT__) || defined(__aarch64__) || defined(__ARM_NEON)
  *count0 = edgebin_xor_popcount(col, w0, n);
  *count1 = edgebin_xor_popcount(col, w1, n);
#else
  uint32_t total0 = 0, total1 = 0;
  for (int32_t k = 0; k < n; k += 3) {
    uint32_t a = col[k];
    uint32_t fields0 = edgebin_nibble_counts(a ^ w0[k]), fields1 = edgebin_nibble_counts(a ^ w1[k]);
    if (k + 1 < n) {
      a = col[k + 1];
      fields0 += edgebin_nibble_counts(a ^ w0[k + 1]);
      fields1 += edgebin_nibble_counts(a ^ w1[k + 1]);
    }
    if (k + 2 < n) {
      a = col[k + 2];
      fields0 += edgebin_nibble_counts(a ^ w0[k + 2]);
      fields1 += edgebin_nibble_counts(a ^ w1[k + 2]);
    }
    total0 = edgebin_add_nibbles(total0, fields0);
    total1 = edgebin_add_nibbles(total1, fields1);
  }
  *count0 = (int32_t)total0;
  *count1 = (int32_t)total1;
#endif
}

/* MST-compression (edgebin/compile/mst.py): every output channel's column sum (before the border fix), the tree's
 * root counted in full, each other channel from its parent's, o = o_parent + 2 d - 4 * popcount((col ^ w) & mask)
 * over only the words where its weights differ from the parent's. nodes: order, parent, d, first pair (4 * cout + 1
 * int32); edges: (word, mask) pairs. Channels are visited in `order`, parents first. */
EDGEBIN_CORE void edgebin_mst_sums(const uint32_t* col, const uint32_t* w, int32_t kwords, int32_t depth,
                                    int32_t cout, const int32_t* nodes, const uint32_t* edges, int32_t* sums) {
  const int32_t *order = nodes, *parent = nodes + cout, *dist = nodes + 2 * cout, *first = nodes + 3 * cout;
  for (int32_t at = 0; at < cout; ++at) {
    const int32_t co = order[at];
    const uint32_t* wr = w + (int64_t)co * kwords;
    if (parent[co] < 0) {
      sums[co] = depth - 2 * edgebin_xor_popcount(col, wr, kwords);
      continue;
    }
    int32_t differ = 0;
    for (int32_t e = first[at]; e < first[at + 1]; ++e) {
      const uint32_t k = edges[2 * e];
      differ += edgebin_popcount32((col[k] ^ wr[k]) & edges[2 * e + 1]);
    }
    sums[co] = sums[parent[co]] + 2 * dist[co] - 4 * differ;
  }
}

/* One output pixel's receptive field as a dense bit column: tap t = ky * kw + kx at bits [t * c, t * c + c), the
 * taps outside [ky0, ky1) x [kx0, kx1) left 0. Interior pixels pass the whole window as constants, so the copy
 * unrolls with every word and shift known (a plain word copy when c is a multiple of 32). */
EDGEBIN_CORE void edgebin_dense_column(const uint32_t* image, int32_t c, int32_t wd, int32_t kw, int32_t y0,
                                        int32_t x0, int32_t ky0, int32_t ky1, int32_t kx0, int32_t kx1, int32_t kwords,
                                        uint32_t* col) {
  const int32_t words = (c + 31) / 32;
  for (int32_t k = 0; k < kwords; ++k) col[k] = 0;
  for (int32_t ky = ky0; ky < ky1; ++ky) {
    for (int32_t kx = kx0; kx < kx1; ++kx) {
      const uint32_t* a = image + ((int64_t)(y0 + ky) * wd + (x0 + kx)) * words;
      const int32_t at = (ky * kw + kx) * c;
      for (int32_t k = 0; k < words; ++k) { /* c bits of this tap, 32 at a time, at bit at + 32k */
        const int32_t off = at + 32 * k, shift = off & 31, nbits = c - 32 * k < 32 ? c - 32 * k : 32;
        col[off >> 5] |= a[k] << shift;
        if (shift && shift + nbits > 32) col[(off >> 5) + 1] |= a[k] >> (32 - shift);
      }
    }
  }
}

/* The sum of channel co's tap sums over the taps outside [ky0, ky1) x [kx0, kx1): a border pixel's fix. */
EDGEBIN_CORE int32_t edgebin_outside_taps(const int8_t* tapsum, int32_t kh, int32_t kw, int32_t ky0, int32_t ky1,
                                          int32_t kx0, int32_t kx1) {
  int32_t fix = 0;
  for (int32_t ky = 0; ky < kh; ++ky) {
    for (int32_t kx = 0; kx < kw; ++kx) {
      if (ky < ky0 || ky >= ky1 || kx < kx0 || kx >= kx1) fix += tapsum[ky * kw + kx];
    }
  }
  return fix;
}

/* What a dense conv writes: int32 sums, floats sum * mul + add, or the next binary layer's bits (threshold). A
 * constant argument of the core, so that each kernel's epilogue compiles to its own straight code. */
enum { EDGEBIN_DENSE_SUMS, EDGEBIN_DENSE_AFFINE, EDGEBIN_DENSE_BITS };

/* The dense conv: per output pixel its column, then the output channels two at a time (edgebin_xor_popcount2),
 * the threshold epilogue's bits gathered in a register and stored a word at a time. */
EDGEBIN_CORE void edgebin_bconv2d_dense_core(const uint32_t* bits, const uint32_t* w, const int8_t* tapsum,
                                              int32_t n, int32_t c, int32_t h, int32_t wd, int32_t cout, int32_t kh,
                                              int32_t kw, int32_t sh, int32_t sw, int32_t ph, int32_t pw, int32_t oh,
                                              int32_t ow, int kind, int32_t* out_i, const float* mul,
                                              const float* add, float* out_f, const int32_t* dir, const int32_t* thr,
                                              uint32_t* out_b, const int32_t* mst_nodes, const uint32_t* mst_edges) {
  const int32_t words = (c + 31) / 32, taps = kh * kw, depth = taps * c, kwords = (depth + 31) / 32;
  const int32_t out_words = (cout + 31) / 32;
  uint32_t col[EDGEBIN_BCOL_WORDS];
  int32_t tree_sums[EDGEBIN_MST_CHANNELS];
  for (int32_t i = 0; i < n; ++i) {
    const uint32_t* image = bits + (int64_t)i * h * wd * words;
    const int64_t base = (int64_t)i * cout * oh * ow;
    for (int32_t y = 0; y < oh; ++y) {
      const int32_t y0 = y * sh - ph;
      int32_t ky0, ky1;
      edgebin_taps_inside(y0, h, kh, &ky0, &ky1);
      for (int32_t x = 0; x < ow; ++x) {
        const int32_t x0 = x * sw - pw;
        int32_t kx0, kx1;
        edgebin_taps_inside(x0, wd, kw, &kx0, &kx1);
        const int border = ky0 > 0 || ky1 < kh || kx0 > 0 || kx1 < kw;
        if (border) {
          edgebin_dense_column(image, c, wd, kw, y0, x0, ky0, ky1, kx0, kx1, kwords, col);
        } else {
          edgebin_dense_column(image, c, wd, kw, y0, x0, 0, kh, 0, kw, kwords, col);
        }
        if (mst_nodes) edgebin_mst_sums(col, w, kwords, depth, cout, mst_nodes, mst_edges, tree_sums);
        uint32_t* row = kind == EDGEBIN_DENSE_BITS ? out_b + (((int64_t)i * oh + y) * ow + x) * out_words
                                                   : 0;
        /* The threshold epilogue's bits, complemented, of channels co & ~31 .. co, the latest at bit 31: bit
         * dir * sum >= thr is the complement of the sign of dir * sum - thr (five instructions a channel). */
        uint32_t word = 0;
        for (int32_t co = 0; co < cout; co += 2) {
          const int pair = co + 1 < cout;
          int32_t sum[2] = {0, 0};
          if (mst_nodes) {
            sum[0] = tree_sums[co];
            sum[1] = pair ? tree_sums[co + 1] : 0;
          } else if (pair) {
            int32_t count0, count1;
            edgebin_xor_popcount2(col, w + (int64_t)co * kwords, w + (int64_t)(co + 1) * kwords, kwords, &count0,
                                  &count1);
            sum[0] = depth - 2 * count0;
            sum[1] = depth - 2 * count1;
          } else {
            sum[0] = depth - 2 * edgebin_xor_popcount(col, w + (int64_t)co * kwords, kwords);
          }
          for (int32_t j = 0; j <= pair; ++j) {
            const int32_t o = co + j;
            /* taps outside the image counted as -1 against each weight: add their weights back */
            if (border) sum[j] += edgebin_outside_taps(tapsum + (int64_t)o * taps, kh, kw, ky0, ky1, kx0, kx1);
            const int64_t at = base + ((int64_t)o * oh + y) * ow + x;
            if (kind == EDGEBIN_DENSE_BITS) {
              word = (word >> 1) | ((uint32_t)(dir[o] * sum[j] - thr[o]) & 0x80000000u);
            } else if (kind == EDGEBIN_DENSE_AFFINE) {
              out_f[at] = (float)sum[j] * mul[o] + add[o];
            } else {
              out_i[at] = sum[j];
            }
          }
          /* a word of channels done (cout may be odd): its bits to bits 0 .. done - 1 */
          if (kind == EDGEBIN_DENSE_BITS && (((co + 2) & 31) == 0 || co + 2 >= cout)) {
            const int32_t done = co + 1 + pair - (co & ~31);
            row[co >> 5] = ~word >> (32 - done);
            word = 0;
          }
        }
      }
    }
  }
}

EDGEBIN_BINARY_API void edgebin_bconv2d_dense(const uint32_t* bits, const uint32_t* w, const int8_t* tapsum,
                                               int32_t n, int32_t c, int32_t h, int32_t wd, int32_t cout, int32_t kh,
                                               int32_t kw, int32_t sh, int32_t sw, int32_t ph, int32_t pw, int32_t oh,
                                               int32_t ow, int32_t* out) {
  edgebin_bconv2d_dense_core(bits, w, tapsum, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow,
                             EDGEBIN_DENSE_SUMS, out, 0, 0, 0, 0, 0, 0, 0, 0);
}

EDGEBIN_BINARY_API void edgebin_bconv2d_dense_affine(const uint32_t* bits, const uint32_t* w, const int8_t* tapsum,
                                                      const float* mul, const float* add, int32_t n, int32_t c,
                                                      int32_t h, int32_t wd, int32_t cout, int32_t kh, int32_t kw,
                                                      int32_t sh, int32_t sw, int32_t ph, int32_t pw, int32_t oh,
                                                      int32_t ow, float* out) {
  edgebin_bconv2d_dense_core(bits, w, tapsum, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow,
                             EDGEBIN_DENSE_AFFINE, 0, mul, add, out, 0, 0, 0, 0, 0);
}

EDGEBIN_BINARY_API void edgebin_bconv2d_dense_bits(const uint32_t* bits, const uint32_t* w, const int8_t* tapsum,
                                                    const int32_t* dir, const int32_t* thr, int32_t n, int32_t c,
                                                    int32_t h, int32_t wd, int32_t cout, int32_t kh, int32_t kw,
                                                    int32_t sh, int32_t sw, int32_t ph, int32_t pw, int32_t oh,
                                                    int32_t ow, uint32_t* out) {
  edgebin_bconv2d_dense_core(bits, w, tapsum, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow,
                             EDGEBIN_DENSE_BITS, 0, 0, 0, 0, dir, thr, out, 0, 0);
}

/* The three dense kernels with MST-compression: the same arguments plus the tree's tables after tapsum. */
EDGEBIN_BINARY_API void edgebin_bconv2d_dense_mst(const uint32_t* bits, const uint32_t* w, const int8_t* tapsum,
                                                   const int32_t* nodes, const uint32_t* edges, int32_t n, int32_t c,
                                                   int32_t h, int32_t wd, int32_t cout, int32_t kh, int32_t kw,
                                                   int32_t sh, int32_t sw, int32_t ph, int32_t pw, int32_t oh,
                                                   int32_t ow, int32_t* out) {
  edgebin_bconv2d_dense_core(bits, w, tapsum, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow,
                             EDGEBIN_DENSE_SUMS, out, 0, 0, 0, 0, 0, 0, nodes, edges);
}

EDGEBIN_BINARY_API void edgebin_bconv2d_dense_mst_affine(const uint32_t* bits, const uint32_t* w,
                                                          const int8_t* tapsum, const int32_t* nodes,
                                                          const uint32_t* edges, const float* mul, const float* add,
                                                          int32_t n, int32_t c, int32_t h, int32_t wd, int32_t cout,
                                                          int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t ph,
                                                          int32_t pw, int32_t oh, int32_t ow, float* out) {
  edgebin_bconv2d_dense_core(bits, w, tapsum, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow,
                             EDGEBIN_DENSE_AFFINE, 0, mul, add, out, 0, 0, 0, nodes, edges);
}

EDGEBIN_BINARY_API void edgebin_bconv2d_dense_mst_bits(const uint32_t* bits, const uint32_t* w, const int8_t* tapsum,
                                                        const int32_t* nodes, const uint32_t* edges,
                                                        const int32_t* dir, const int32_t* thr, int32_t n, int32_t c,
                                                        int32_t h, int32_t wd, int32_t cout, int32_t kh, int32_t kw,
                                                        int32_t sh, int32_t sw, int32_t ph, int32_t pw, int32_t oh,
                                                        int32_t ow, uint32_t* out) {
  edgebin_bconv2d_dense_core(bits, w, tapsum, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow,
                             EDGEBIN_DENSE_BITS, 0, 0, 0, 0, dir, thr, out, nodes, edges);
}

/* --- The bit-sliced conv (Cortex-M, threshold epilogue) --------------------------------------------------------
 * edgebin_bconv2d_slice_bits(bits, w, slot, lim, n, c, ..., ow, out): the output of edgebin_bconv2d_bits, for
 * c % 16 == 0, cout % 32 == 0 and c * kh * kw <= EDGEBIN_SLICE_DEPTH. The dense kernels count one output channel's
 * mismatches per 32-bit word of its column; this one counts 32 output channels at once, one per bit lane, as
 * bit-sliced binary numbers. Per input bit (tap t, channel ch) the word w[(g * taps + t) * c + ch] holds the weight
 * bits of output channels 32g .. 32g + 31 (`binary.pack_sliced_weight_bits`); XORed with the input bit spread to
 * the whole word (SBFX), it is one mismatch bit per lane, and carry-save adders sum these into bit planes
 * (Harley-Seal: ones, twos, fours, eights in registers, a word of weight 16 out per 16 inputs). In Thumb-2 assembly
 * a 16-input block is 114 instructions: per four inputs one LDM of their weight words, per input SBFX and EOR, then
 * 15 full adders of five instructions each and three MOVs; about 7 instructions per 32 binary MACs, where the dense
 * count needs 7 per word of one channel plus its loads. Taps outside the image are skipped (they count nothing, as the graph's
 * zero padding), so a pixel with nt taps inside compares its count with its own limits: lim row slot[nt] holds
 * per lane the limit L as bit planes 0 .. 9, then three masks: lanes whose bit is count <= L (dir = +1: sum =
 * nt c - 2 count >= thr), lanes whose bit is count > L (dir = -1), lanes that are always 1 (the rest are always
 * 0); `binary.slice_limits` computes them from dir and thr. The output word of a group is the 32 channels' bits of
 * the next layer's input, written whole.
 * edgebin_bconv2d_slice_affine(bits, w, mul, add, n, c, ..., ow, out): the output of edgebin_bconv2d_dense_affine
 * (floats sum * mul + add, NCHW), the 32 counts taken out of the planes per pixel (edgebin_slice_bytes), then
 * converted and scaled four lanes at a time (edgebin_slice_floats).
 * edgebin_bconv2d_slice_shortcut(bits, w, sbits, sweights, mul, smul, add, n, c, ..., ow, sc, shh, swd, ssh, ssw,
 * out): a downsampling ResNet block's end in one kernel, out = sum * mul + add + ssum * smul, ssum the 1x1 unpadded
 * shortcut conv of sbits (sc < 256 channels, shh x swd pixels, strides ssh, ssw) with sweights (the 32-lane layout),
 * counted in its own planes at the same pixel and group and taken out by its own transpose. */
#define EDGEBIN_SLICE_DEPTH 1023 /* count planes 0 .. 9 */
#define EDGEBIN_SLICE_BLOCKS 64  /* 16-input blocks per output pixel and group */
#define EDGEBIN_SLICE_LIMIT_WORDS 13

/* One full adder of words: s, carry = s + b + c, the carry left in b's register (u is scratch; C form below). */
#define EDGEBIN_CSA(S, B, C)                                                                    \
  "eor %[u], " S ", " B "\n\tand " B ", " S ", " B "\n\tand " S ", %[u], " C "\n\torr " B ", " B \
  ", " S "\n\teor " S ", %[u], " C "\n\t"
#define EDGEBIN_MISMATCH(X, BIT) "sbfx %[u], %[a], #" BIT ", #1\n\teor " X ", " X ", %[u]\n\t"
/* Four inputs: their weight words, the mismatches, two adders into ones and one into twos: weight-4 carry in x0. */
#define EDGEBIN_QUAD(B0, B1, B2, B3)                                                                    \
  "ldmia %[wp]!, {%[x0], %[x1], %[x2], %[x3]}\n\t" EDGEBIN_MISMATCH("%[x0]", B0)                      \
  EDGEBIN_MISMATCH("%[x1]", B1) EDGEBIN_MISMATCH("%[x2]", B2) EDGEBIN_MISMATCH("%[x3]", B3)            \
  EDGEBIN_CSA("%[o]", "%[x0]", "%[x1]") EDGEBIN_CSA("%[o]", "%[x2]", "%[x3]") EDGEBIN_CSA("%[t]", "%[x0]", "%[x2]")

#ifndef EDGEBIN_THUMB2_SWAR
/* The portable form of a 16-input block: each mismatch word added into the planes p[0..3] with a ripple; returns
 * what leaves plane 3, of weight 16 (at most one input a lane carries out of plane 3 in 16). */
EDGEBIN_CORE uint32_t edgebin_slice_ripple16(const uint32_t* mismatch, uint32_t* p) {
  uint32_t out = 0;
  for (int i = 0; i < 16; ++i) {
    uint32_t c = mismatch[i];
    for (int b = 0; b < 4; ++b) {
      const uint32_t t = p[b] & c;
      p[b] ^= c;
      c = t;
    }
    out |= c;
  }
  return out;
}
#endif

/* Sixteen inputs from four four-input steps Q0 .. Q3 (each leaving its weight-4 carry in x0): the weight-4 words
 * into fours (f) two at a time, the weight-8 carries into eights (e); the weight-16 carry ends in s. */
#define EDGEBIN_SIXTEEN(Q0, Q1, Q2, Q3)                                                                         \
  Q0 "mov %[v], %[x0]\n\t" Q1 EDGEBIN_CSA("%[f]", "%[v]", "%[x0]") "mov %[s], %[v]\n\t" Q2 "mov %[v], %[x0]\n\t" \
  Q3 EDGEBIN_CSA("%[f]", "%[v]", "%[x0]") EDGEBIN_CSA("%[e]", "%[s]", "%[v]")

/* Bits 0 .. 15 of a against the 16 weight words at *wp (advanced past them), added into the planes p[0..3] (ones,
 * twos, fours, eights); returns the carry word of weight 16. */
EDGEBIN_CORE uint32_t edgebin_slice16(const uint32_t** wp, uint32_t a, uint32_t* p) {
#ifdef EDGEBIN_THUMB2_SWAR
  register uint32_t x0 __asm__("r0"), x1 __asm__("r1"), x2 __asm__("r2"), x3 __asm__("r3");
  uint32_t o = p[0], t = p[1], f = p[2], e = p[3], u, v, s;
  const uint32_t* w = *wp;
  __asm__(EDGEBIN_SIXTEEN(EDGEBIN_QUAD("0", "1", "2", "3"), EDGEBIN_QUAD("4", "5", "6", "7"),
                         EDGEBIN_QUAD("8", "9", "10", "11"), EDGEBIN_QUAD("12", "13", "14", "15"))
          : [o] "+r"(o), [t] "+r"(t), [f] "+r"(f), [e] "+r"(e), [wp] "+r"(w), [u] "=&r"(u), [v] "=&r"(v),
            [s] "=&r"(s), [x0] "=&r"(x0), [x1] "=&r"(x1), [x2] "=&r"(x2), [x3] "=&r"(x3)
          : [a] "r"(a)
          : "memory");
  p[0] = o;
  p[1] = t;
  p[2] = f;
  p[3] = e;
  *wp = w;
  return s;
#else
  uint32_t mismatch[16];
  for (int i = 0; i < 16; ++i) mismatch[i] = (*wp)[i] ^ (0u - ((a >> i) & 1u));
  *wp += 16;
  return edgebin_slice_ripple16(mismatch, p);
#endif
}

/* Two neighbouring pixels' blocks: 16 weight words at *wp against 16 mask words at *mp (each advanced past them),
 * the mismatches added into the planes p[0..3]; returns the carry word of weight 16. With the masks in memory a
 * four-input step is two LDRD of weight words, two of masks, four EOR and three adders: 110 instructions a block. */
#define EDGEBIN_PAIR_QUAD                                                                                          \
  "ldrd %[x0], %[x1], [%[wp]], #8\n\tldrd %[x2], %[x3], [%[mp]], #8\n\teor %[x0], %[x0], %[x2]\n\t"             \
  "eor %[x1], %[x1], %[x3]\n\t" EDGEBIN_CSA("%[o]", "%[x0]", "%[x1]")                                            \
  "ldrd %[x1], %[x2], [%[wp]], #8\n\tldrd %[x3], %[u], [%[mp]], #8\n\teor %[x1], %[x1], %[x3]\n\t"              \
  "eor %[x2], %[x2], %[u]\n\t" EDGEBIN_CSA("%[o]", "%[x1]", "%[x2]") EDGEBIN_CSA("%[t]", "%[x0]", "%[x1]")

EDGEBIN_CORE uint32_t edgebin_pair16(const uint32_t** wp, const uint32_t** mp, uint32_t* p) {
#ifdef EDGEBIN_THUMB2_SWAR
  uint32_t o = p[0], t = p[1], f = p[2], e = p[3], u, v, s, x0, x1, x2, x3;
  const uint32_t* w = *wp;
  const uint32_t* m = *mp;
  __asm__(EDGEBIN_SIXTEEN(EDGEBIN_PAIR_QUAD, EDGEBIN_PAIR_QUAD, EDGEBIN_PAIR_QUAD, EDGEBIN_PAIR_QUAD)
          : [o] "+r"(o), [t] "+r"(t), [f] "+r"(f), [e] "+r"(e), [wp] "+r"(w), [mp] "+r"(m), [u] "=&r"(u),
            [v] "=&r"(v), [s] "=&r"(s), [x0] "=&r"(x0), [x1] "=&r"(x1), [x2] "=&r"(x2), [x3] "=&r"(x3)
          :
          : "memory");
  p[0] = o;
  p[1] = t;
  p[2] = f;
  p[3] = e;
  *wp = w;
  *mp = m;
  return s;
#else
  uint32_t mismatch[16];
  for (int i = 0; i < 16; ++i) mismatch[i] = (*wp)[i] ^ (*mp)[i];
  *wp += 16;
  *mp += 16;
  return edgebin_slice_ripple16(mismatch, p);
#endif
}

#undef EDGEBIN_CSA
#undef EDGEBIN_MISMATCH
#undef EDGEBIN_QUAD
#undef EDGEBIN_PAIR_QUAD
#undef EDGEBIN_SIXTEEN

/* The weight-16 words of `blocks` 16-input blocks into planes 4 .. 3 + high (high: the planes the most blocks need, a
 * constant of the shape). Two words at a time: a full adder with plane 4 (five instructions), its weight-32 carry
 * rippled through the planes above, as far as the pairs so far can reach (unrolled, the bounds fold). */
EDGEBIN_CORE void edgebin_slice_high(const uint32_t* sixteens, int32_t blocks, int32_t high, uint32_t* planes) {
  uint32_t h[6] = {0, 0, 0, 0, 0, 0};
  int32_t i = 0;
  EDGEBIN_UNROLL for (; i + 1 < blocks; i += 2) {
    const uint32_t a = sixteens[i], b = sixteens[i + 1], u = h[0] ^ a;
    uint32_t carry = (h[0] & a) | (u & b);
    h[0] = u ^ b;
    const int32_t reach = 1 + (32 - __builtin_clz((uint32_t)(i / 2 + 1))); /* pairs so far, in planes 5 .. */
    for (int32_t k = 1; k < high && k < reach; ++k) {
      const uint32_t t = h[k] & carry;
      h[k] ^= carry;
      carry = t;
    }
  }
  if (i < blocks) { /* an odd block: a ripple from plane 4 */
    uint32_t carry = sixteens[i];
    for (int32_t k = 0; k < high; ++k) {
      const uint32_t t = h[k] & carry;
      h[k] ^= carry;
      carry = t;
    }
  }
  for (int32_t b = 0; b < 6; ++b) planes[4 + b] = h[b];
}

/* Per lane, the threshold epilogue's bit from the count planes and a limit row (binary_slice.slice_limits): the
 * borrow of L - count gives count > L, then the row's masks pick each lane's sense or constant. */
EDGEBIN_CORE uint32_t edgebin_slice_compare(const uint32_t* planes, int32_t nplanes, const uint32_t* limit) {
  uint32_t above = 0;
  for (int32_t b = 0; b < nplanes; ++b) above = (~limit[b] & planes[b]) | (~(limit[b] ^ planes[b]) & above);
  return (~above & limit[10]) | (above & limit[11]) | limit[12];
}

/* The count planes of one group of 32 output channels at one output pixel (taps [ky0, ky1) x [kx0, kx1)). */
EDGEBIN_CORE void edgebin_slice_count(const uint32_t* image, int32_t wd, int32_t c, int32_t kh, int32_t kw,
                                      int32_t y0, int32_t x0, int32_t ky0, int32_t ky1, int32_t kx0, int32_t kx1,
                                      const uint32_t* wg, uint32_t* planes) {
  const int32_t words = (c + 31) / 32;
  uint32_t sixteens[EDGEBIN_SLICE_BLOCKS];
  int32_t blocks = 0;
  for (int32_t b = 0; b < 4; ++b) planes[b] = 0;
  for (int32_t ky = ky0; ky < ky1; ++ky) {
    EDGEBIN_UNROLL for (int32_t kx = kx0; kx < kx1; ++kx) {
      const uint32_t* a = image + ((int64_t)(y0 + ky) * wd + (x0 + kx)) * words;
      const uint32_t* wp = wg + (ky * kw + kx) * c;
      EDGEBIN_UNROLL for (int32_t k = 0; k < c; k += 16) sixteens[blocks++] = edgebin_slice16(&wp, a[k >> 5] >> (k & 31), planes);
    }
  }
  edgebin_slice_high(sixteens, blocks, 32 - __builtin_clz((uint32_t)(kh * kw * c / 16)), planes);
}

/* Planes 0 .. 7 of 32 lanes -> 8 words, byte g of word l the low 8 bits of lane 8g + l's count: each byte of the
 * planes is an 8 x 8 bit matrix (row: plane, column: lane), transposed in place by three stages of masked swaps
 * (off-diagonal blocks of 4, then 2, then 1 bits), 12 swaps of four instructions for all 32 lanes. */
EDGEBIN_CORE void edgebin_slice_bytes(const uint32_t* planes, uint32_t* x) {
  uint32_t t[8]; /* in registers: x itself is read back byte by byte */
  EDGEBIN_UNROLL for (int32_t b = 0; b < 8; ++b) t[b] = planes[b];
  EDGEBIN_UNROLL for (int32_t r = 0; r < 4; ++r) {
    const uint32_t u = ((t[r] >> 4) ^ t[r + 4]) & 0x0F0F0F0Fu;
    t[r + 4] ^= u;
    t[r] ^= u << 4;
  }
  EDGEBIN_UNROLL for (int32_t r = 0; r < 4; ++r) { /* rows 0, 1, 4, 5 with 2, 3, 6, 7 */
    const int32_t a = r + (r & 2);
    const uint32_t u = ((t[a] >> 2) ^ t[a + 2]) & 0x33333333u;
    t[a + 2] ^= u;
    t[a] ^= u << 2;
  }
  EDGEBIN_UNROLL for (int32_t r = 0; r < 8; r += 2) {
    const uint32_t u = ((t[r] >> 1) ^ t[r + 1]) & 0x55555555u;
    t[r + 1] ^= u;
    t[r] ^= u << 1;
  }
  EDGEBIN_UNROLL for (int32_t b = 0; b < 8; ++b) x[b] = t[b];
#ifdef EDGEBIN_THUMB2_SWAR
  /* The words to memory, each lane's byte read back by one LDRB (edgebin_slice_lane, the float epilogues): held in
   * registers, the eight words left too few for the epilogue's pointers, which gcc then reloaded per lane. */
  __asm__("" : : "r"(x) : "memory");
#endif
}

/* Lane j's count: its low 8 bits from edgebin_slice_bytes' words, planes 8 and 9 a bit each (where there are). */
EDGEBIN_CORE int32_t edgebin_slice_lane(const uint32_t* bytes, const uint32_t* planes, int32_t nplanes, int32_t j) {
#if defined(EDGEBIN_THUMB2_SWAR) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  int32_t count = ((const uint8_t*)bytes)[4 * (j & 7) + (j >> 3)];
#else
  int32_t count = (int32_t)((bytes[j & 7] >> (j & 24)) & 255u);
#endif
  if (nplanes > 8) count |= (int32_t)((planes[8] >> j) & 1u) << 8;
  if (nplanes > 9) count |= (int32_t)((planes[9] >> j) & 1u) << 9;
  return count;
}

#if defined(EDGEBIN_THUMB2_SWAR) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define EDGEBIN_FLOAT_ASM 1
/* Two counts (bytes at offsets A and B of the bytes at BP) subtracted twice from their sums (registers SA, SB: nc
 * for both in the 32-lane kernel, a pair's base words in the paired one), moved to S registers D0, D0 + 1 by one
 * VMOV. */
#define EDGEBIN_TWO_SUMS(BP, A, B, SA, SB, D0, D1)                                                     \
  "ldrb %[c0], [" BP ", #" A "]\n\tldrb %[c1], [" BP ", #" B "]\n\tsub %[c0], " SA ", %[c0], lsl #1\n\t" \
  "sub %[c1], " SB ", %[c1], lsl #1\n\tvmov " D0 ", " D1 ", %[c0], %[c1]\n\t"
#endif

/* The float epilogue of the 32-lane kernel at one pixel: lane j's (nc - 2 count) * mul[j] + add[j] to
 * dst[j * stride], and with a shortcut (sbytes not 0) + (snc - 2 scount) * smul[j], its counts in sbytes (all below
 * 256). In Thumb-2 four lanes take 28 instructions (per two lanes one VMOV, per four one VLDM of the muls and one of
 * the adds), 47 with the shortcut, counts below 256 only (planes 8 and 9 empty: the rest take the C loop). */
EDGEBIN_CORE void edgebin_slice_floats(const uint32_t* bytes, const uint32_t* planes, int32_t nplanes, int32_t nc,
                                       const uint32_t* sbytes, int32_t snc, const float* mul, const float* smul,
                                       const float* add, float* dst, int32_t stride) {
#ifdef EDGEBIN_FLOAT_ASM
  if (nplanes <= 8 || (planes[8] | (nplanes > 9 ? planes[9] : 0u)) == 0) {
    const uint8_t* by = (const uint8_t*)bytes;
    const uint8_t* sby = (const uint8_t*)sbytes;
    const int32_t step = stride * (int32_t)sizeof(float);
    EDGEBIN_UNROLL for (int32_t j = 0; j < 32; j += 4) { /* lanes j .. j + 3: bytes b, b + 4, b + 8, b + 12 */
      const int32_t at = 4 * (j & 7) + (j >> 3);
      const uint8_t* bp = by + at;
      uint32_t c0, c1;
#define EDGEBIN_CONV_FOUR                                                                                           \
  EDGEBIN_TWO_SUMS("%[bp]", "0", "4", "%[nc]", "%[nc]", "s0", "s1")                                               \
  EDGEBIN_TWO_SUMS("%[bp]", "8", "12", "%[nc]", "%[nc]", "s2", "s3")                                              \
  "vcvt.f32.s32 s0, s0\n\tvcvt.f32.s32 s1, s1\n\tvcvt.f32.s32 s2, s2\n\tvcvt.f32.s32 s3, s3\n\t"                  \
  "vldmia %[mp]!, {s4-s7}\n\tvldmia %[ap]!, {s8-s11}\n\t"                                                         \
  "vfma.f32 s8, s0, s4\n\tvfma.f32 s9, s1, s5\n\tvfma.f32 s10, s2, s6\n\tvfma.f32 s11, s3, s7\n\t"
#define EDGEBIN_STORE_FOUR                                                                                         \
  "vstr s8, [%[o]]\n\tadd %[o], %[o], %[step]\n\tvstr s9, [%[o]]\n\tadd %[o], %[o], %[step]\n\t"                 \
  "vstr s10, [%[o]]\n\tadd %[o], %[o], %[step]\n\tvstr s11, [%[o]]\n\tadd %[o], %[o], %[step]\n\t"
      if (sbytes) {
        const uint8_t* sp = sby + at;
        __asm__ volatile(EDGEBIN_CONV_FOUR EDGEBIN_TWO_SUMS("%[sp]", "0", "4", "%[snc]", "%[snc]", "s0", "s1")
                         EDGEBIN_TWO_SUMS("%[sp]", "8", "12", "%[snc]", "%[snc]", "s2", "s3")
                         "vcvt.f32.s32 s0, s0\n\tvcvt.f32.s32 s1, s1\n\tvcvt.f32.s32 s2, s2\n\t"
                         "vcvt.f32.s32 s3, s3\n\tvldmia %[smp]!, {s4-s7}\n\tvfma.f32 s8, s0, s4\n\t"
                         "vfma.f32 s9, s1, s5\n\tvfma.f32 s10, s2, s6\n\tvfma.f32 s11, s3, s7\n\t" EDGEBIN_STORE_FOUR
                         : [mp] "+r"(mul), [smp] "+r"(smul), [ap] "+r"(add), [o] "+r"(dst), [c0] "=&r"(c0),
                           [c1] "=&r"(c1)
                         : [bp] "r"(bp), [sp] "r"(sp), [nc] "r"(nc), [snc] "r"(snc), [step] "r"(step)
                         : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "memory");
      } else {
        __asm__ volatile(EDGEBIN_CONV_FOUR EDGEBIN_STORE_FOUR
                         : [mp] "+r"(mul), [ap] "+r"(add), [o] "+r"(dst), [c0] "=&r"(c0), [c1] "=&r"(c1)
                         : [bp] "r"(bp), [nc] "r"(nc), [step] "r"(step)
                         : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "memory");
      }
#undef EDGEBIN_CONV_FOUR
#undef EDGEBIN_STORE_FOUR
    }
    return;
  }
#endif
  EDGEBIN_UNROLL for (int32_t j = 0; j < 32; ++j) {
    float v = (float)(nc - 2 * edgebin_slice_lane(bytes, planes, nplanes, j)) * mul[j] + add[j];
    if (sbytes) v += (float)(snc - 2 * edgebin_slice_lane(sbytes, 0, 8, j)) * smul[j];
    dst[(int64_t)j * stride] = v;
  }
}

/* A 1x1 shortcut conv for edgebin_bconv2d_slice_core's float epilogue: its input bits (sc channels, sh x sw
 * pixels; 0 for none), weight words as the 32-lane kernel's and strides. */
typedef struct {
  const uint32_t* bits;
  const uint32_t* w;
  const float* mul;
  int32_t c, h, wd, sh, sw;
} edgebin_shortcut;

/* The bit-sliced conv: the next layer's bits (out_b, the threshold epilogue) or floats sum * mul + add (out_f), plus
 * a shortcut's with `shortcut.bits`. */
EDGEBIN_CORE void edgebin_bconv2d_slice_core(const uint32_t* bits, const uint32_t* w, const int8_t* slot,
                                             const uint32_t* lim, const float* mul, const float* add, int32_t n,
                                             int32_t c, int32_t h, int32_t wd, int32_t cout, int32_t kh, int32_t kw,
                                             int32_t sh, int32_t sw, int32_t ph, int32_t pw, int32_t oh, int32_t ow,
                                             edgebin_shortcut shortcut, uint32_t* out_b, float* out_f) {
  const int32_t words = (c + 31) / 32, groups = cout / 32, taps = kh * kw, swords = (shortcut.c + 31) / 32;
  const int32_t nplanes = 32 - __builtin_clz((uint32_t)(taps * c)); /* planes the largest count needs */
  for (int32_t i = 0; i < n; ++i) {
    const uint32_t* image = bits + (int64_t)i * h * wd * words;
    for (int32_t y = 0; y < oh; ++y) {
      const int32_t y0 = y * sh - ph;
      int32_t ky0, ky1;
      edgebin_taps_inside(y0, h, kh, &ky0, &ky1);
      for (int32_t x = 0; x < ow; ++x) {
        const int32_t x0 = x * sw - pw;
        int32_t kx0, kx1;
        edgebin_taps_inside(x0, wd, kw, &kx0, &kx1);
        const int32_t nt = (ky1 - ky0) * (kx1 - kx0);
        for (int32_t g = 0; g < groups; ++g) {
          uint32_t planes[10];
          const uint32_t* wg = w + (int64_t)g * taps * c;
          if (nt != taps) { /* interior pixels pass constant bounds: their tap loops unroll */
            edgebin_slice_count(image, wd, c, kh, kw, y0, x0, ky0, ky1, kx0, kx1, wg, planes);
          } else {
            edgebin_slice_count(image, wd, c, kh, kw, y0, x0, 0, kh, 0, kw, wg, planes);
          }
          if (out_f) { /* sum = nt c - 2 count over the taps inside, as the dense kernels' affine epilogue */
            uint32_t bytes[8], sbytes[8];
            edgebin_slice_bytes(planes, bytes);
            if (shortcut.bits) { /* its one tap, always inside: sum = sc - 2 count */
              uint32_t splanes[10];
              const uint32_t* simage = shortcut.bits + (int64_t)i * shortcut.h * shortcut.wd * swords;
              edgebin_slice_count(simage, shortcut.wd, shortcut.c, 1, 1, y * shortcut.sh, x * shortcut.sw, 0, 1, 0,
                                  1, shortcut.w + (int64_t)g * shortcut.c, splanes);
              edgebin_slice_bytes(splanes, sbytes);
            }
            float* dst = out_f + (((int64_t)i * cout + 32 * g) * oh + y) * ow + x;
            edgebin_slice_floats(bytes, planes, nplanes, nt * c, shortcut.bits ? sbytes : 0, shortcut.c, mul + 32 * g,
                                 shortcut.mul + 32 * g, add + 32 * g, dst, oh * ow);
            continue;
          }
          const uint32_t* limit = lim + ((int64_t)slot[nt] * groups + g) * EDGEBIN_SLICE_LIMIT_WORDS;
          out_b[(((int64_t)i * oh + y) * ow + x) * groups + g] = edgebin_slice_compare(planes, nplanes, limit);
        }
      }
    }
  }
}

EDGEBIN_BINARY_API void edgebin_bconv2d_slice_bits(const uint32_t* bits, const uint32_t* w, const int8_t* slot,
                                                    const uint32_t* lim, int32_t n, int32_t c, int32_t h, int32_t wd,
                                                    int32_t cout, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                                                    int32_t ph, int32_t pw, int32_t oh, int32_t ow, uint32_t* out) {
  const edgebin_shortcut none = {0, 0, 0, 0, 0, 0, 0, 0};
  edgebin_bconv2d_slice_core(bits, w, slot, lim, 0, 0, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow, none, out, 0);
}

EDGEBIN_BINARY_API void edgebin_bconv2d_slice_affine(const uint32_t* bits, const uint32_t* w, const float* mul,
                                                      const float* add, int32_t n, int32_t c, int32_t h, int32_t wd,
                                                      int32_t cout, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                                                      int32_t ph, int32_t pw, int32_t oh, int32_t ow, float* out) {
  const edgebin_shortcut none = {0, 0, 0, 0, 0, 0, 0, 0};
  edgebin_bconv2d_slice_core(bits, w, 0, 0, mul, add, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow, none, 0, out);
}

EDGEBIN_BINARY_API void edgebin_bconv2d_slice_shortcut(const uint32_t* bits, const uint32_t* w, const uint32_t* sbits,
                                                        const uint32_t* sweights, const float* mul, const float* smul,
                                                        const float* add, int32_t n, int32_t c, int32_t h, int32_t wd,
                                                        int32_t cout, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                                                        int32_t ph, int32_t pw, int32_t oh, int32_t ow, int32_t sc,
                                                        int32_t shh, int32_t swd, int32_t ssh, int32_t ssw,
                                                        float* out) {
  const edgebin_shortcut shortcut = {sbits, sweights, smul, sc, shh, swd, ssh, ssw};
  edgebin_bconv2d_slice_core(bits, w, 0, 0, mul, add, n, c, h, wd, cout, kh, kw, sh, sw, ph, pw, oh, ow, shortcut, 0,
                             out);
}

/* --- The paired bit-sliced conv (Cortex-M, 16 output channels) -------------------------------------------------
 * edgebin_bconv2d_pair_bits(bits, w, slot, lim, n, c, ..., ow, out): the output of edgebin_bconv2d_bits for
 * cout == 16 and c % 16 == 0 (binary_slice.pair_fits). Sixteen channels fill half the bit-sliced kernel's lanes, so
 * here the lanes hold two neighbouring output pixels: x in lanes 0 .. 15, x + 1 in 16 .. 31. The weight word of tap t
 * and channel ch, w[t * c + ch], holds the 16 channels' bits twice (`binary_slice.pack_paired_weight_bits`). An input
 * bit's mask now differs between the halves, which one SBFX cannot make; so per input row a buffer holds, for each
 * column e and channel, the word whose low half is the spread bit of pixel e - pw and whose high half that of pixel
 * e - pw + sw (0 for a pixel outside the image), made once per row and kept while the kh output rows that read it run.
 * The taps of a pair then lie side by side in the buffer: every pair runs the same unrolled blocks, taps outside
 * the image included as input bit 0. Their mismatches, the weight bits at those taps, are added into the limits
 * instead (`binary_slice.pair_limits`): the pair at output row y, columns 2q and 2q + 1, compares with lim row
 * slot[y] + slot[oh + q], and its word is split into the two pixels' output words.
 * edgebin_bconv2d_pair_affine(bits, w, slot, base, mul, add, n, ..., out): the floats of
 * edgebin_bconv2d_slice_affine for 16 output channels, sum = base[row][lane] - 2 count with base the taps inside
 * times c plus twice the outside taps' weight bits (`binary_slice.pair_bases`).
 * edgebin_bconv2d_pair_counts(bits, w, slot, delta, n, ..., out): the integers instead, for c * kh * kw < 256: per
 * pair the 32 counts' bytes as edgebin_slice_bytes leaves them (8 words), each moved to an interior pixel's by the
 * row's bytes delta (`binary_slice.pair_deltas`), so that sum = c * kh * kw - 2 count for every pixel. No float
 * epilogue: edgebin_bpack_pair_add (below) applies the BatchNorm where it packs the block's output. */
#define EDGEBIN_PAIR_BUFFER_WORDS 2048 /* kh rows of masks on the stack: 8 KB at most */
#define EDGEBIN_PAIR_ROWS 16

#ifdef EDGEBIN_THUMB2_SWAR
/* Four channels' masks: (bit << 16) - bit of the pair bits (both >> ch) & 0x00010001 (an AND with a shifted operand,
 * a shifted subtract), stored by one STM: two and a quarter instructions a mask word. */
#define EDGEBIN_SPREAD_ONE(M, SHIFT) "and " M ", %[k], %[both]" SHIFT "\n\trsb " M ", " M ", " M ", lsl #16\n\t"
#define EDGEBIN_SPREAD4(S0, S1, S2, S3)                                                                           \
  EDGEBIN_SPREAD_ONE("%[m0]", S0) EDGEBIN_SPREAD_ONE("%[m1]", S1) EDGEBIN_SPREAD_ONE("%[m2]", S2)                 \
  EDGEBIN_SPREAD_ONE("%[m3]", S3) "stmia %[row]!, {%[m0], %[m1], %[m2], %[m3]}\n\t"
#endif

/* Row r's masks for every column (rows outside the image: all 0). */
EDGEBIN_CORE void edgebin_pair_masks(const uint32_t* image, int32_t r, int32_t h, int32_t wd, int32_t c, int32_t sw,
                                     int32_t pw, int32_t cols, uint32_t* row) {
  const int32_t words = (c + 31) / 32;
  uint32_t pair_bit = 0x00010001u;
  __asm__("" : "+r"(pair_bit)); /* in a register: AND with a shifted operand, one instruction for shift and mask */
  const int inside = r >= 0 && r < h;
  const uint32_t* pixels = image + (int64_t)(inside ? r : 0) * wd * words; /* outside: read, then masked off */
  for (int32_t e = 0; e < cols; ++e) {
    const int32_t lo = e - pw, hi = lo + sw;
    const uint32_t keep_lo = inside && lo >= 0 && lo < wd ? 0xFFFFu : 0u, keep_hi = inside && hi >= 0 && hi < wd;
    const uint32_t* a = pixels + (keep_lo ? lo : 0) * words;
    const uint32_t* b = pixels + (keep_hi ? hi : 0) * words;
    for (int32_t k = 0; k < c; k += 16) {
      uint32_t both = ((a[k >> 5] >> (k & 31)) & keep_lo) | (keep_hi ? (b[k >> 5] >> (k & 31)) << 16 : 0u);
#ifdef EDGEBIN_THUMB2_SWAR
      register uint32_t m0 __asm__("r0"), m1 __asm__("r1"), m2 __asm__("r2"), m3 __asm__("r3"); /* STM order */
      __asm__ volatile(EDGEBIN_SPREAD4("", ", lsr #1", ", lsr #2", ", lsr #3")
                       EDGEBIN_SPREAD4(", lsr #4", ", lsr #5", ", lsr #6", ", lsr #7")
                       EDGEBIN_SPREAD4(", lsr #8", ", lsr #9", ", lsr #10", ", lsr #11")
                       EDGEBIN_SPREAD4(", lsr #12", ", lsr #13", ", lsr #14", ", lsr #15")
                       : [row] "+r"(row), [m0] "=&r"(m0), [m1] "=&r"(m1), [m2] "=&r"(m2), [m3] "=&r"(m3)
                       : [both] "r"(both), [k] "r"(pair_bit)
                       : "memory");
#else
      for (int32_t ch = 0; ch < 16; ++ch) {
        const uint32_t bit = (both >> ch) & pair_bit;
        row[ch] = (bit << 16) - bit;
      }
      row += 16;
#endif
    }
  }
}

#ifdef EDGEBIN_THUMB2_SWAR
#undef EDGEBIN_SPREAD_ONE
#undef EDGEBIN_SPREAD4
#endif

/* The paired kernel's float epilogue: channel ch's two pixels (lanes ch and ch + 16), (sums[2 ch + k] - 2 count) *
 * mul[ch] + add2[2 ch + k] to dst[ch * stride + k], k = 0, 1 (second: whether the pair has a second pixel); add2
 * holds each add twice, as FMA accumulates into its addend. In Thumb-2 two channels take 26 instructions: an LDRD
 * of their sums, one VMOV per two, one VLDM of the muls and one of the adds, one VSTM per channel. */
EDGEBIN_CORE void edgebin_pair_floats(const uint32_t* bytes, const uint32_t* planes, int32_t nplanes,
                                      const int32_t* sums, const float* mul, const float* add2, int32_t second,
                                      float* dst, int32_t stride) {
#ifdef EDGEBIN_FLOAT_ASM
  if (second && (nplanes <= 8 || (planes[8] | (nplanes > 9 ? planes[9] : 0u)) == 0)) {
    const uint8_t* by = (const uint8_t*)bytes;
    const int32_t step = stride * (int32_t)sizeof(float);
    EDGEBIN_UNROLL for (int32_t ch = 0; ch < 16; ch += 2) { /* lanes ch, ch + 16, ch + 1, ch + 17 at bp + 0, 2, 4, 6 */
      const uint8_t* bp = by + 4 * (ch & 7) + (ch >> 3);
      uint32_t c0, c1, s0, s1;
      __asm__ volatile("ldrd %[s0], %[s1], [%[sp]], #8\n\t" EDGEBIN_TWO_SUMS("%[bp]", "0", "2", "%[s0]", "%[s1]", "s0", "s1")
                       "ldrd %[s0], %[s1], [%[sp]], #8\n\t" EDGEBIN_TWO_SUMS("%[bp]", "4", "6", "%[s0]", "%[s1]", "s2", "s3")
                       "vcvt.f32.s32 s0, s0\n\tvcvt.f32.s32 s1, s1\n\tvcvt.f32.s32 s2, s2\n\tvcvt.f32.s32 s3, s3\n\t"
                       "vldmia %[mp]!, {s4-s5}\n\tvldmia %[ap]!, {s8-s11}\n\t"
                       "vfma.f32 s8, s0, s4\n\tvfma.f32 s9, s1, s4\n\tvfma.f32 s10, s2, s5\n\tvfma.f32 s11, s3, s5\n\t"
                       "vstmia %[o], {s8-s9}\n\tadd %[o], %[o], %[step]\n\tvstmia %[o], {s10-s11}\n\t"
                       "add %[o], %[o], %[step]\n\t"
                       : [sp] "+r"(sums), [mp] "+r"(mul), [ap] "+r"(add2), [o] "+r"(dst), [c0] "=&r"(c0),
                         [c1] "=&r"(c1), [s0] "=&r"(s0), [s1] "=&r"(s1)
                       : [bp] "r"(bp), [step] "r"(step)
                       : "s0", "s1", "s2", "s3", "s4", "s5", "s8", "s9", "s10", "s11", "memory");
    }
    return;
  }
#endif
  EDGEBIN_UNROLL for (int32_t j = 0; j < 32; ++j) {
    const int32_t ch = j & 15, k = j >> 4;
    if (k < 1 + second) {
      const int32_t count = edgebin_slice_lane(bytes, planes, nplanes, j);
      dst[(int64_t)ch * stride + k] = (float)(sums[2 * ch + k] - 2 * count) * mul[ch] + add2[2 * ch + k];
    }
  }
}

#ifdef EDGEBIN_FLOAT_ASM
#undef EDGEBIN_TWO_SUMS
#endif

/* Four bytes added lane by lane, each modulo 256 (UADD8 where the core has it). */
EDGEBIN_CORE uint32_t edgebin_add_bytes(uint32_t a, uint32_t b) {
#ifdef EDGEBIN_BINARY_USADA8
  uint32_t sum;
  __asm__("uadd8 %0, %1, %2" : "=r"(sum) : "r"(a), "r"(b) : "cc");
  return sum;
#else
  return ((a & 0x7F7F7F7Fu) + (b & 0x7F7F7F7Fu)) ^ ((a ^ b) & 0x80808080u);
#endif
}

/* The paired conv: the next layer's bits (out_b, limits lim), floats (base - 2 count) * mul + add (out_f, NCHW) or
 * each pair's 32 counts as edgebin_slice_bytes leaves them (out_c, plus the row's border correction delta). */
EDGEBIN_CORE void edgebin_bconv2d_pair_core(const uint32_t* bits, const uint32_t* w, const int8_t* slot,
                                            const uint32_t* lim, const int32_t* base, const float* mul,
                                            const float* add, const uint32_t* delta, int32_t n, int32_t c, int32_t h,
                                            int32_t wd, int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t ph,
                                            int32_t pw, int32_t oh, int32_t ow, uint32_t* out_b, float* out_f,
                                            uint32_t* out_c) {
  const int32_t pairs = (ow + 1) / 2, cols = 2 * (pairs - 1) * sw + kw, span = cols * c, taps = kh * kw;
  const int32_t nplanes = 32 - __builtin_clz((uint32_t)(taps * c)), high = 32 - __builtin_clz((uint32_t)(taps * c / 16));
  uint32_t masks[EDGEBIN_PAIR_BUFFER_WORDS];
  const uint32_t* rows[EDGEBIN_PAIR_ROWS];
  float add2[32]; /* each add twice, for edgebin_pair_floats */
  for (int32_t j = 0; j < 32; ++j) add2[j] = out_f ? add[j >> 1] : 0.0f;
  for (int32_t i = 0; i < n; ++i) {
    const uint32_t* image = bits + (int64_t)i * h * wd * ((c + 31) / 32);
    int32_t held[EDGEBIN_PAIR_ROWS];
    for (int32_t j = 0; j < kh; ++j) held[j] = -h - ph - 1; /* no row */
    for (int32_t y = 0; y < oh; ++y) {
      for (int32_t ky = 0; ky < kh; ++ky) {
        const int32_t r = y * sh - ph + ky, at = (r + ph) % kh; /* kh consecutive rows: kh distinct places */
        if (held[at] != r) {
          edgebin_pair_masks(image, r, h, wd, c, sw, pw, cols, masks + at * span);
          held[at] = r;
        }
        rows[ky] = masks + at * span;
      }
      for (int32_t q = 0; q < pairs; ++q) {
        uint32_t planes[10] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
        uint32_t sixteens[EDGEBIN_SLICE_BLOCKS];
        int32_t blocks = 0;
        const uint32_t* wp = w;
        EDGEBIN_UNROLL for (int32_t ky = 0; ky < kh; ++ky) {
          const uint32_t* mp = rows[ky] + 2 * q * sw * c;
          EDGEBIN_UNROLL for (int32_t k = 0; k < kw * c; k += 16) sixteens[blocks++] = edgebin_pair16(&wp, &mp, planes);
        }
        edgebin_slice_high(sixteens, blocks, high, planes);
        const int32_t row = slot[y] + slot[oh + q];
        if (out_c) { /* the counts of every tap moved to those of an interior pixel: taps * c - 2 count is the sum */
          uint32_t* dst = out_c + (((int64_t)i * oh + y) * pairs + q) * 8;
          edgebin_slice_bytes(planes, dst);
          const uint32_t* d = delta + row * 9;
          if (d[8]) {
            for (int32_t l = 0; l < 8; ++l) dst[l] = edgebin_add_bytes(dst[l], d[l]);
          }
          continue;
        }
        if (out_f) {
          uint32_t bytes[8];
          edgebin_slice_bytes(planes, bytes);
          float* dst = out_f + ((int64_t)i * 16 * oh + y) * ow + 2 * q;
          edgebin_pair_floats(bytes, planes, nplanes, base + row * 32, mul, add2, 2 * q + 1 < ow, dst, oh * ow);
          continue;
        }
        const uint32_t word = edgebin_slice_compare(planes, nplanes, lim + row * EDGEBIN_SLICE_LIMIT_WORDS);
        uint32_t* dst = out_b + ((int64_t)i * oh + y) * ow + 2 * q;
        dst[0] = word & 0xFFFFu;
        if (2 * q + 1 < ow) dst[1] = word >> 16;
      }
    }
  }
}

EDGEBIN_BINARY_API void edgebin_bconv2d_pair_bits(const uint32_t* bits, const uint32_t* w, const int8_t* slot,
                                                   const uint32_t* lim, int32_t n, int32_t c, int32_t h, int32_t wd,
                                                   int32_t cout, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                                                   int32_t ph, int32_t pw, int32_t oh, int32_t ow, uint32_t* out) {
  (void)cout;
  edgebin_bconv2d_pair_core(bits, w, slot, lim, 0, 0, 0, 0, n, c, h, wd, kh, kw, sh, sw, ph, pw, oh, ow, out, 0, 0);
}

EDGEBIN_BINARY_API void edgebin_bconv2d_pair_affine(const uint32_t* bits, const uint32_t* w, const int8_t* slot,
                                                     const int32_t* base, const float* mul, const float* add,
                                                     int32_t n, int32_t c, int32_t h, int32_t wd, int32_t cout,
                                                     int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t ph,
                                                     int32_t pw, int32_t oh, int32_t ow, float* out) {
  (void)cout;
  edgebin_bconv2d_pair_core(bits, w, slot, 0, base, mul, add, 0, n, c, h, wd, kh, kw, sh, sw, ph, pw, oh, ow, 0, out,
                            0);
}

EDGEBIN_BINARY_API void edgebin_bconv2d_pair_counts(const uint32_t* bits, const uint32_t* w, const int8_t* slot,
                                                     const uint32_t* delta, int32_t n, int32_t c, int32_t h,
                                                     int32_t wd, int32_t cout, int32_t kh, int32_t kw, int32_t sh,
                                                     int32_t sw, int32_t ph, int32_t pw, int32_t oh, int32_t ow,
                                                     uint32_t* out) {
  (void)cout;
  edgebin_bconv2d_pair_core(bits, w, slot, 0, 0, 0, 0, delta, n, c, h, wd, kh, kw, sh, sw, ph, pw, oh, ow, 0, 0,
                            out);
}

/* The packing of a paired conv's counts plus a residual (edgebin_bpack_pair_add): per pixel of pair q and channel
 * ch, with count the lane's byte of the pair's eight words (edgebin_slice_lane), bit ch of the pixel's word is
 * (count * ma[2 ch] + res) + ma[2 ch + 1] >= 0, res NCHW over 16 channels. In Thumb-2 the sign bit of the sum gives
 * the bit (as edgebin_bpack4; ma[2 ch + 1] must not be -0.0), two pixels of a channel 17 instructions. */
#ifdef EDGEBIN_PACK_ASM
/* Channel ch (its lanes' bytes at offsets A and B of the pair's words), highest first: the sign bits into n0, n1. */
#define EDGEBIN_PAIR_ADD(A, B)                                                                                      \
  "vldmia %[rp], {s0-s1}\n\tldrb %[u], [%[cp], #" A "]\n\tldrb %[v], [%[cp], #" B "]\n\tvmov s2, s3, %[u], %[v]\n\t" \
  "vcvt.f32.u32 s2, s2\n\tvcvt.f32.u32 s3, s3\n\tvldmdb %[mp]!, {s4-s5}\n\tvfma.f32 s0, s2, s4\n\t"              \
  "vfma.f32 s1, s3, s4\n\tvadd.f32 s0, s0, s5\n\tvadd.f32 s1, s1, s5\n\tvmov %[u], %[v], s0, s1\n\t"             \
  "adds %[u], %[u], %[u]\n\tadc %[n0], %[n0], %[n0]\n\tadds %[v], %[v], %[v]\n\tadc %[n1], %[n1], %[n1]\n\t"     \
  "sub %[rp], %[rp], %[st]\n\t"
#endif

EDGEBIN_BINARY_API void edgebin_bpack_pair_add(const uint32_t* counts, const float* res, const float* ma, int32_t n,
                                               int32_t c, int32_t oh, int32_t ow, uint32_t* bits) {
  const int32_t pairs = (ow + 1) / 2, hw = oh * ow;
  (void)c; /* 16 */
  for (int32_t i = 0; i < n; ++i) {
    for (int32_t y = 0; y < oh; ++y) {
      for (int32_t q = 0; q < pairs; ++q) {
        const uint32_t* cp = counts + (((int64_t)i * oh + y) * pairs + q) * 8;
        const float* rp = res + ((int64_t)i * 16 * oh + y) * ow + 2 * q;
        uint32_t* dst = bits + ((int64_t)i * oh + y) * ow + 2 * q;
        uint32_t w0 = 0, w1 = 0;
#ifdef EDGEBIN_PACK_ASM
        if (2 * q + 1 < ow) {
          uint32_t n0 = 0, n1 = 0, u, v;
          const float* top = rp + (int64_t)15 * hw;
          const float* mp = ma + 32;
          __asm__ volatile(EDGEBIN_PAIR_ADD("29", "31") EDGEBIN_PAIR_ADD("25", "27") EDGEBIN_PAIR_ADD("21", "23")
                           EDGEBIN_PAIR_ADD("17", "19") EDGEBIN_PAIR_ADD("13", "15") EDGEBIN_PAIR_ADD("9", "11")
                           EDGEBIN_PAIR_ADD("5", "7") EDGEBIN_PAIR_ADD("1", "3") EDGEBIN_PAIR_ADD("28", "30")
                           EDGEBIN_PAIR_ADD("24", "26") EDGEBIN_PAIR_ADD("20", "22") EDGEBIN_PAIR_ADD("16", "18")
                           EDGEBIN_PAIR_ADD("12", "14") EDGEBIN_PAIR_ADD("8", "10") EDGEBIN_PAIR_ADD("4", "6")
                           EDGEBIN_PAIR_ADD("0", "2")
                           : [n0] "+&r"(n0), [n1] "+&r"(n1), [u] "=&r"(u), [v] "=&r"(v), [rp] "+&r"(top),
                             [mp] "+&r"(mp)
                           : [cp] "r"(cp), [st] "r"(hw * (int32_t)sizeof(float))
                           : "s0", "s1", "s2", "s3", "s4", "s5", "cc", "memory");
          dst[0] = ~n0 & 0xFFFFu;
          dst[1] = ~n1 & 0xFFFFu;
          continue;
        }
#endif
        for (int32_t ch = 0; ch < 16; ++ch) {
          for (int32_t k = 0; k < 2 && 2 * q + k < ow; ++k) {
            float v = (float)edgebin_slice_lane(cp, 0, 8, ch + 16 * k) * ma[2 * ch] + rp[(int64_t)ch * hw + k];
            v += ma[2 * ch + 1];
            const uint32_t bit = (uint32_t)(v >= 0.0f) << ch;
            if (k) {
              w1 |= bit;
            } else {
              w0 |= bit;
            }
          }
        }
        dst[0] = w0;
        if (2 * q + 1 < ow) dst[1] = w1;
      }
    }
  }
}
#ifdef EDGEBIN_PACK_ASM
#undef EDGEBIN_PAIR_ADD
#endif

#ifdef __cplusplus
}
#endif

#endif /* EDGEBIN_BINARY_H */
