/* The micro-kernels of mcu_kernels/edgebin_kernels.h for the LLVM targets (the x86 host, 64-bit Arm boards), as
 * functions with external linkage: TVM's LLVM codegen turns the schedule's T.call_extern into a call of an external
 * symbol, and edgebin compiles this file (-O3, the target's -march/-mcpu) and links it into model.so.
 *
 * Same contract as the header (edgebin_kernels.h documents it):
 *   edgebin_matvec{,2,4}_{s8,u8s8}(x, w, k, n, acc):  acc[j*P + p] = sum_{i<k} x[p*k + i] * w[j*k + i]
 * for j < n, p < P (P = 1, 2, 4), x int8 (s8) or uint8 (u8s8), w int8, acc int32 (overwritten). Every path below
 * sums the same products exactly in int32, so results equal the header's plain C bit for bit.
 *
 * x86 with AVX-512 VNNI (and BW, VL): VPDPBUSD multiplies 32 uint8 x int8 pairs and adds each group of four into
 * an int32 lane, exactly. Rows are dotted along k, 32 bytes a step (the last step masked), R = 16 / P rows at a
 * time so that the R x P accumulators are 16 vectors, reduced by one shuffle-and-add tree into the 16 contiguous
 * sums acc[j*P .. j*P + 15]: each weight vector is loaded once for P columns, each column vector once for R rows.
 * 256-bit vectors, not 512: Zen 4 runs two 256-bit VPDPBUSD a cycle or one 512-bit, and with rows this short
 * (k = 9 .. 576) the narrower vectors waste less in the masked tail and in the reduction (measured 10-45% faster
 * per layer). For an int8 x the weights become the unsigned operand (w ^ 0x80 = w + 128, one XOR per weight
 * vector) and 128 * sum(x) is taken off again, computed once per call.
 * x86 with AVX2 (no VNNI): bytes widened to int16 (VPMOVSXBW/VPMOVZXBW), VPMADDWD pairs them into int32, exact,
 * 16 bytes a step, 8 accumulators; the k % 16 tail in scalar code.
 * Elsewhere (aarch64, where gcc vectorizes it with NEON; x86 without AVX2): the header's plain C loops, its one
 * definition of the semantics, here with external linkage.
 */
#include <stdint.h>

#if defined(__x86_64__) && defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    !defined(EDGEBIN_NO_SIMD)
#define EDGEBIN_X86_VNNI 1
#elif defined(__x86_64__) && defined(__AVX2__) && !defined(EDGEBIN_NO_SIMD)
#define EDGEBIN_X86_AVX2 1
#endif

#if defined(EDGEBIN_X86_VNNI) || defined(EDGEBIN_X86_AVX2)

#include <immintrin.h>

#define EDGEBIN_ALWAYS static inline __attribute__((always_inline))

#ifdef EDGEBIN_X86_VNNI

/* Lanes 0-7 of out[0]: the sums of the 8 int32 lanes of v[0] .. v[7]; of out[1]: v[8] .. v[15]. */
EDGEBIN_ALWAYS void edgebin_hsum16(const __m256i* v, __m256i* out) {
  __m256i t[8], q[4];
  for (int i = 0; i < 8; ++i)
    t[i] = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]),
                            _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i)
    q[i] = _mm256_add_epi32(_mm256_unpacklo_epi64(t[2 * i], t[2 * i + 1]),
                            _mm256_unpackhi_epi64(t[2 * i], t[2 * i + 1]));
  for (int i = 0; i < 2; ++i)
    out[i] = _mm256_add_epi32(_mm256_permute2x128_si256(q[2 * i], q[2 * i + 1], 0x20),
                              _mm256_permute2x128_si256(q[2 * i], q[2 * i + 1], 0x31));
}

/* The bytes i .. min(i + 32, k) - 1 of a row: a load mask. */
EDGEBIN_ALWAYS __mmask32 edgebin_mask(int32_t i, int32_t k) {
  return k - i >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << (k - i)) - 1);
}

/* R rows (w, w + k, ...) times P columns (x, x + k, ...) into acc[0 .. R*P - 1] (row-major, column inner), less
 * `minus` lane by lane. R, P and u (uint8 x) are constants wherever this is inlined; R * P <= 16. For an int8 x the
 * weights are the unsigned operand, (w ^ 0x80) = w + 128, and `minus` takes 128 * sum(x) off again. Masked-off
 * bytes: zero inputs, whatever the weight byte. */
EDGEBIN_ALWAYS void edgebin_rows_vnni(const uint8_t* x, const int8_t* w, int32_t k, int32_t* acc,
                                      const __m256i* minus, const int R, const int P, const int u) {
  __m256i s[16], sums[2];
  const __m256i bias = _mm256_set1_epi8((char)0x80);
  for (int i = 0; i < 16; ++i) s[i] = _mm256_setzero_si256();
  for (int32_t i = 0; i < k; i += 32) {
    const __mmask32 m = edgebin_mask(i, k);
    __m256i xv[4];
    for (int p = 0; p < P; ++p) xv[p] = _mm256_maskz_loadu_epi8(m, x + p * k + i);
    for (int r = 0; r < R; ++r) {
      const __m256i wv = _mm256_maskz_loadu_epi8(m, w + r * k + i);
      if (u) {
        for (int p = 0; p < P; ++p) s[r * P + p] = _mm256_dpbusd_epi32(s[r * P + p], xv[p], wv);
      } else {
        const __m256i wb = _mm256_xor_si256(wv, bias);
        for (int p = 0; p < P; ++p) s[r * P + p] = _mm256_dpbusd_epi32(s[r * P + p], wb, xv[p]);
      }
    }
  }
  edgebin_hsum16(s, sums);
  for (int h = 0; h < 2 && 8 * h < R * P; ++h) {
    const __m256i out = _mm256_sub_epi32(sums[h], minus[h]);
    if (R * P >= 8 * (h + 1)) _mm256_storeu_si256((__m256i*)(acc + 8 * h), out);
    else _mm256_mask_storeu_epi32(acc + 8 * h, (__mmask8)((1u << (R * P - 8 * h)) - 1), out);
  }
}

/* For an int8 x: lane r * P + p of minus[0 .. 1] holds 128 * sum(x[p*k .. p*k + k - 1]), what edgebin_rows_vnni's
 * biased weights add; zero for a uint8 x. */
EDGEBIN_ALWAYS void edgebin_bias_sums(const uint8_t* x, int32_t k, __m256i* minus, const int P, const int u) {
  minus[0] = minus[1] = _mm256_setzero_si256();
  if (u) return;
  __m256i c[16];
  const __m256i bias = _mm256_set1_epi8((char)0x80);
  for (int i = 0; i < 16; ++i) c[i] = _mm256_setzero_si256();
  for (int32_t i = 0; i < k; i += 32)
    for (int p = 0; p < P; ++p)
      c[p] = _mm256_dpbusd_epi32(c[p], bias, _mm256_maskz_loadu_epi8(edgebin_mask(i, k), x + p * k + i));
  for (int i = P; i < 16; ++i) c[i] = c[i % P];
  edgebin_hsum16(c, minus);
}

EDGEBIN_ALWAYS void edgebin_matvecp(const void* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc, const int P,
                                    const int u) {
  const int R = 16 / P; /* 16 accumulators: R rows a block */
  __m256i minus[2];
  edgebin_bias_sums((const uint8_t*)x, k, minus, P, u);
  int32_t j = 0;
  for (; j + R <= n; j += R) edgebin_rows_vnni((const uint8_t*)x, w + j * k, k, acc + j * P, minus, R, P, u);
  for (; j < n; ++j) edgebin_rows_vnni((const uint8_t*)x, w + j * k, k, acc + j * P, minus, 1, P, u);
}

#else /* EDGEBIN_X86_AVX2 */

/* Lane i of the result: the sum of the 8 int32 lanes of v[i]. */
EDGEBIN_ALWAYS __m256i edgebin_hsum8(const __m256i* v) {
  const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* 16 bytes at p as int16: sign-extended for int8, zero-extended for uint8. */
EDGEBIN_ALWAYS __m256i edgebin_widen(const void* p, const int u) {
  const __m128i v = _mm_loadu_si128((const __m128i*)p);
  return u ? _mm256_cvtepu8_epi16(v) : _mm256_cvtepi8_epi16(v);
}

/* R rows times P columns into acc[0 .. R*P - 1]; R * P <= 8. */
EDGEBIN_ALWAYS void edgebin_rows_avx2(const void* x, const int8_t* w, int32_t k, int32_t* acc, const int R,
                                      const int P, const int u) {
  __m256i s[8];
  for (int i = 0; i < 8; ++i) s[i] = _mm256_setzero_si256();
  const int32_t k16 = k & ~15;
  for (int32_t i = 0; i < k16; i += 16) {
    __m256i xv[4];
    for (int p = 0; p < P; ++p) xv[p] = edgebin_widen((const uint8_t*)x + p * k + i, u);
    for (int r = 0; r < R; ++r) {
      const __m256i wv = edgebin_widen(w + r * k + i, 0);
      for (int p = 0; p < P; ++p) s[r * P + p] = _mm256_add_epi32(s[r * P + p], _mm256_madd_epi16(xv[p], wv));
    }
  }
  int32_t out[8];
  _mm256_storeu_si256((__m256i*)out, edgebin_hsum8(s));
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < P; ++p) {
      int32_t t = out[r * P + p];
      for (int32_t i = k16; i < k; ++i) {
        const int32_t xi = u ? (int32_t)((const uint8_t*)x)[p * k + i] : (int32_t)((const int8_t*)x)[p * k + i];
        t += xi * (int32_t)w[r * k + i];
      }
      acc[r * P + p] = t;
    }
}

EDGEBIN_ALWAYS void edgebin_matvecp(const void* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc, const int P,
                                    const int u) {
  const int R = 8 / P;
  int32_t j = 0;
  for (; j + R <= n; j += R) edgebin_rows_avx2(x, w + j * k, k, acc + j * P, R, P, u);
  for (; j < n; ++j) edgebin_rows_avx2(x, w + j * k, k, acc + j * P, 1, P, u);
}

#endif /* EDGEBIN_X86_VNNI */

void edgebin_matvec_s8(const int8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp(x, w, k, n, acc, 1, 0);
}

void edgebin_matvec_u8s8(const uint8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp(x, w, k, n, acc, 1, 1);
}

void edgebin_matvec2_s8(const int8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp(x, w, k, n, acc, 2, 0);
}

void edgebin_matvec2_u8s8(const uint8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp(x, w, k, n, acc, 2, 1);
}

void edgebin_matvec4_s8(const int8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp(x, w, k, n, acc, 4, 0);
}

void edgebin_matvec4_u8s8(const uint8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  edgebin_matvecp(x, w, k, n, acc, 4, 1);
}

#else /* no x86 vectors: the header's plain C, with external linkage */

#define EDGEBIN_NO_SIMD 1 /* the plain C even for a 32-bit Arm with DSP instructions (not built this way so far) */
#define EDGEBIN_INLINE
#include "../mcu_kernels/edgebin_kernels.h"

#endif
