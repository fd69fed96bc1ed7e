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

/* acc + the dot products of u8 a and s8 b, four bytes a lane: VPDPBUSD in inline assembly, since gcc 12 wraps each
 * _mm256_dpbusd_epi32 of a loop-carried accumulator in two register copies (measured: 1.3x slower). */
EDGEBIN_ALWAYS __m256i edgebin_dpbusd(__m256i acc, __m256i a, __m256i b) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

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
        for (int p = 0; p < P; ++p) s[r * P + p] = edgebin_dpbusd(s[r * P + p], xv[p], wv);
      } else {
        const __m256i wb = _mm256_xor_si256(wv, bias);
        for (int p = 0; p < P; ++p) s[r * P + p] = edgebin_dpbusd(s[r * P + p], wb, xv[p]);
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

/* Whole rows of output pixels (the host's schedule, mcu_schedule row_calls), row i of the input P neighbouring bytes:
 *   edgebin_matvect_{s8,u8s8}(x, w, k, n, acc, P, S):  acc[j*S + p] = sum_{i<k} x[i*P + p] * w[j*k + i]
 *   edgebin_matvecc_{s8,u8s8}(x, w, k, n, acc, P, S, kh, kw, cs, rs):  the same with row i = (ci*kh + ky)*kw + kx at
 *       x + ci*cs + ky*rs + kx: a stride-1 conv reading its (padded) input where it lies, no im2col
 * S >= P is the distance between output channels in acc: P for a row's own accumulators, H*W where the row goes
 * straight into a whole layer's NCHW accumulators (short rows: the epilogue then runs once a layer, along H*W).
 * matvect's x holds each reduction index's P pixels side by side (the gather copies runs of neighbouring pixels);
 * w and acc as above. With AVX-512 VNNI the pixels go into the vector lanes: each 32-pixel chunk of x is packed
 * once per call into 4-byte groups (pixel p's x[i..i+3]: unpack bytes, then words), and each group of 4 weights is
 * broadcast to all 8 lanes of a VPDPBUSD, so the sums land in acc's order with no horizontal reduction. An int8 x
 * is packed as x ^ 0x80 = x + 128 (unsigned) and 128 * sum(w row) taken off again. Elsewhere: plain C loops, pixels
 * innermost (gcc vectorizes them). */

/* Rows per call with an offset table (16 KiB per thread) and a packed chunk (32 k bytes of stack); longer rows take
 * plain loops. */
#define EDGEBIN_ROWS_MAX_K 4096

#if defined(EDGEBIN_X86_VNNI)

/* Rows x + off[0 .. rows-1] (rows <= 4, missing rows zero), pixels 0..31 (bytes past q masked off), as 4 vectors
 * of 8 pixels each holding its 4 bytes, in pixel order. */
static inline __attribute__((always_inline)) void edgebin_pack4(const uint8_t* x, const int32_t* off, int32_t rows,
                                                                __mmask32 m, __m256i flip, __m256i* out) {
  __m256i r[4];
  for (int i = 0; i < 4; ++i)
    r[i] = i < rows ? _mm256_xor_si256(_mm256_maskz_loadu_epi8(m, x + off[i]), flip) : _mm256_setzero_si256();
  const __m256i a = _mm256_unpacklo_epi8(r[0], r[1]), b = _mm256_unpacklo_epi8(r[2], r[3]);
  const __m256i c = _mm256_unpackhi_epi8(r[0], r[1]), d = _mm256_unpackhi_epi8(r[2], r[3]);
  const __m256i q0 = _mm256_unpacklo_epi16(a, b), q1 = _mm256_unpackhi_epi16(a, b); /* pixels 0-3|16-19, 4-7|20-23 */
  const __m256i q2 = _mm256_unpacklo_epi16(c, d), q3 = _mm256_unpackhi_epi16(c, d); /* 8-11|24-27, 12-15|28-31 */
  out[0] = _mm256_permute2x128_si256(q0, q1, 0x20);
  out[1] = _mm256_permute2x128_si256(q2, q3, 0x20);
  out[2] = _mm256_permute2x128_si256(q0, q1, 0x31);
  out[3] = _mm256_permute2x128_si256(q2, q3, 0x31);
}

/* A chunk of V vectors of 8 pixels, row i of x at x + off[i], packed: 4-byte groups, packed[t*V + v]. */
static inline __attribute__((always_inline)) void edgebin_pack_t(const uint8_t* x, const int32_t* off, int32_t k,
                                                                 __mmask32 m, __m256i flip, __m256i* packed,
                                                                 const int V) {
  const int32_t full = k / 4;
  __m256i g[4];
  for (int32_t t = 0; t < full; ++t) {
    edgebin_pack4(x, off + 4 * t, 4, m, flip, g);
    for (int v = 0; v < V; ++v) _mm256_storeu_si256(packed + t * V + v, g[v]);
  }
  if (full * 4 < k) {
    edgebin_pack4(x, off + 4 * full, k - 4 * full, m, flip, g);
    for (int v = 0; v < V; ++v) _mm256_storeu_si256(packed + full * V + v, g[v]);
  }
}

/* R rows of w times the packed chunk (V vectors of 8 pixels a 4-byte group, k4 groups) into acc[r*S + p], p < q. */
static inline __attribute__((always_inline)) void edgebin_rows_t(const __m256i* packed, const int8_t* w, int32_t k,
                                                                 int32_t* acc, int32_t S, int32_t q,
                                                                 const int32_t* minus, const int R, const int V) {
  __m256i s[16];
  _Pragma("GCC unroll 16")
  for (int i = 0; i < R * V; ++i) s[i] = _mm256_setzero_si256();
  const int32_t full = k / 4;
  for (int32_t t = 0; t < full; ++t) {
    __m256i xv[4];
    _Pragma("GCC unroll 16")
    for (int v = 0; v < V; ++v) xv[v] = _mm256_loadu_si256(packed + t * V + v);
    _Pragma("GCC unroll 16")
    for (int r = 0; r < R; ++r) {
      int32_t word;
      __builtin_memcpy(&word, w + r * k + 4 * t, 4);
      const __m256i wb = _mm256_set1_epi32(word);
      _Pragma("GCC unroll 16")
      for (int v = 0; v < V; ++v) s[r * V + v] = edgebin_dpbusd(s[r * V + v], xv[v], wb);
    }
  }
  if (full * 4 < k) { /* the last 1-3 weights of each row, the bytes past the row zero */
    __m256i xv[4];
    _Pragma("GCC unroll 16")
    for (int v = 0; v < V; ++v) xv[v] = _mm256_loadu_si256(packed + full * V + v);
    _Pragma("GCC unroll 16")
    for (int r = 0; r < R; ++r) {
      uint32_t word = 0;
      for (int32_t i = 4 * full; i < k; ++i) word |= (uint32_t)(uint8_t)w[r * k + i] << (8 * (i - 4 * full));
      const __m256i wb = _mm256_set1_epi32((int32_t)word);
      _Pragma("GCC unroll 16")
      for (int v = 0; v < V; ++v) s[r * V + v] = edgebin_dpbusd(s[r * V + v], xv[v], wb);
    }
  }
  _Pragma("GCC unroll 16")
  for (int r = 0; r < R; ++r) {
    const __m256i sub = _mm256_set1_epi32(minus[r]);
    _Pragma("GCC unroll 16")
    for (int v = 0; v < V; ++v) {
      const __m256i out = _mm256_sub_epi32(s[r * V + v], sub);
      if (8 * v + 8 <= q) _mm256_storeu_si256((__m256i*)(acc + r * S + 8 * v), out);
      else _mm256_mask_storeu_epi32(acc + r * S + 8 * v, (__mmask8)((1u << (q - 8 * v)) - 1), out);
    }
  }
}

/* Each (R, V) a function of its own: inlined into one, gcc's register allocation of the 16 accumulators
 * degrades (register-to-register copies every step, measured). */
#define EDGEBIN_ROWS_T(R, V)                                                                                   \
  static __attribute__((noinline)) void edgebin_rows_t_##R##_##V(const __m256i* packed, const int8_t* w,        \
                                                                 int32_t k, int32_t* acc, int32_t S, int32_t q, \
                                                                 const int32_t* minus) {                       \
    edgebin_rows_t(packed, w, k, acc, S, q, minus, R, V);                                                      \
  }
EDGEBIN_ROWS_T(8, 1)
EDGEBIN_ROWS_T(1, 1)
EDGEBIN_ROWS_T(8, 2)
EDGEBIN_ROWS_T(1, 2)
EDGEBIN_ROWS_T(5, 3)
EDGEBIN_ROWS_T(1, 3)
EDGEBIN_ROWS_T(4, 4)
EDGEBIN_ROWS_T(1, 4)

/* R x V <= 16 accumulators; one pixel vector takes 8 rows, not 16: 16 row pointers spill (measured) */
#define EDGEBIN_CHUNK_T(R, V)                                                                                  \
  do {                                                                                                         \
    int32_t j = 0;                                                                                             \
    for (; j + R <= n; j += R) edgebin_rows_t_##R##_##V(packed, w + j * k, k, out + j * S, S, q, minus + j);   \
    for (; j < n; ++j) edgebin_rows_t_1_##V(packed, w + j * k, k, out + j * S, S, q, minus + j);               \
  } while (0)

/* Row i of x (P pixels) at x + off[i]. */
static inline __attribute__((always_inline)) void edgebin_matvect(const uint8_t* x, const int32_t* off,
                                                                  const int8_t* w, int32_t k, int32_t n, int32_t* acc,
                                                                  int32_t P, int32_t S, const int u) {
  const int32_t k4 = (k + 3) / 4;
  int32_t minus[n];
  __m256i packed[4 * k4];
  const __m256i flip = _mm256_set1_epi8(u ? 0 : (char)0x80);
  for (int32_t j = 0; j < n; ++j) { /* 128 * sum(w row) for an int8 x, else 0 */
    __m256i s = _mm256_setzero_si256();
    if (!u)
      for (int32_t i = 0; i < k; i += 32)
        s = _mm256_dpbusd_epi32(s, flip, _mm256_maskz_loadu_epi8(edgebin_mask(i, k), w + j * k + i));
    const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    const __m128i h2 = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4E));
    minus[j] = _mm_cvtsi128_si32(_mm_add_epi32(h2, _mm_shuffle_epi32(h2, 0xB1)));
  }
  for (int32_t p0 = 0; p0 < P; p0 += 32) {
    const int32_t q = P - p0 < 32 ? P - p0 : 32;
    const int V = (q + 7) / 8;
    const __mmask32 m = q >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << q) - 1);
    int32_t* const out = acc + p0;
    switch (V) {
      case 1: edgebin_pack_t(x + p0, off, k, m, flip, packed, 1); EDGEBIN_CHUNK_T(8, 1); break;
      case 2: edgebin_pack_t(x + p0, off, k, m, flip, packed, 2); EDGEBIN_CHUNK_T(8, 2); break;
      case 3: edgebin_pack_t(x + p0, off, k, m, flip, packed, 3); EDGEBIN_CHUNK_T(5, 3); break;
      default: edgebin_pack_t(x + p0, off, k, m, flip, packed, 4); EDGEBIN_CHUNK_T(4, 4); break;
    }
  }
}

#else /* no VNNI */

static void edgebin_matvect_plain(const void* x, const int32_t* off, const int8_t* w, int32_t k, int32_t n,
                                  int32_t* acc, int32_t P, int32_t S, const int u) {
  for (int32_t j = 0; j < n; ++j) {
    int32_t* a = acc + j * S;
    for (int32_t p = 0; p < P; ++p) a[p] = 0;
    for (int32_t i = 0; i < k; ++i) {
      const int32_t wi = w[j * k + i];
      if (u) {
        const uint8_t* row = (const uint8_t*)x + off[i];
        for (int32_t p = 0; p < P; ++p) a[p] += wi * (int32_t)row[p];
      } else {
        const int8_t* row = (const int8_t*)x + off[i];
        for (int32_t p = 0; p < P; ++p) a[p] += wi * (int32_t)row[p];
      }
    }
  }
}

/* Row i of a k-major x at i * P; of a conv's input as it lies (edgebin_matvecc_*: i = (ci * kh + ky) * kw + kx,
 * channels cs bytes apart, rows rs) at ci * cs + ky * rs + kx, where a stride-1 conv's row of P outputs reads its P
 * inputs. */
#endif /* EDGEBIN_X86_VNNI */

static inline int32_t edgebin_row_off(int32_t i, int32_t P, int32_t kh, int32_t kw, int32_t cs, int32_t rs) {
  return kh > 0 ? (i / (kh * kw)) * cs + ((i / kw) % kh) * rs + i % kw : i * P;
}

/* This thread's offsets table, after its 5-int key (k, kh or -P, kw, cs, rs): one TLS address lookup a call, where
 * each access to two __thread arrays called __tls_get_addr (17 call sites in objdump; about 2 % of a ResNet-8
 * inference in a perf profile, not repeated by a command in tools/bench). */
static __attribute__((noinline)) int32_t* edgebin_row_cache(void) {
  static __thread int32_t cache[5 + EDGEBIN_ROWS_MAX_K] = {-1};
  return cache;
}

static void edgebin_matvec_rows(const uint8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc, int32_t P,
                                int32_t S, int32_t kh, int32_t kw, int32_t cs, int32_t rs, const int u) {
  if (k > EDGEBIN_ROWS_MAX_K) {
    for (int32_t j = 0; j < n; ++j) {
      int32_t* a = acc + j * S;
      for (int32_t p = 0; p < P; ++p) a[p] = 0;
      for (int32_t i = 0; i < k; ++i) {
        const int32_t wi = w[j * k + i], o = edgebin_row_off(i, P, kh, kw, cs, rs);
        for (int32_t p = 0; p < P; ++p) a[p] += wi * (u ? (int32_t)x[o + p] : (int32_t)(int8_t)x[o + p]);
      }
    }
    return;
  }
  /* The offsets depend on the layer only: kept per thread for its next call (a layer makes one call per row). */
  int32_t* const key = edgebin_row_cache();
  int32_t* const off = key + 5;
  if (key[0] != k || key[1] != (kh > 0 ? kh : -P) || key[2] != kw || key[3] != cs || key[4] != rs) {
    if (kh > 0) { /* no divisions: k / (kh kw) channels of kh rows of kw columns */
      int32_t i = 0;
      for (int32_t ci = 0; i < k; ++ci)
        for (int32_t ky = 0; ky < kh && i < k; ++ky)
          for (int32_t kx = 0; kx < kw && i < k; ++kx) off[i++] = ci * cs + ky * rs + kx;
    } else {
      for (int32_t i = 0; i < k; ++i) off[i] = i * P;
    }
    key[0] = k, key[1] = kh > 0 ? kh : -P, key[2] = kw, key[3] = cs, key[4] = rs;
  }
#if defined(EDGEBIN_X86_VNNI)
  edgebin_matvect(x, off, w, k, n, acc, P, S, u); /* (a table even for i * P: measured faster than the stride) */
#else
  edgebin_matvect_plain(x, off, w, k, n, acc, P, S, u);
#endif
}

void edgebin_matvect_s8(const int8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc, int32_t P, int32_t S) {
  edgebin_matvec_rows((const uint8_t*)x, w, k, n, acc, P, S, 0, 1, 0, 0, 0);
}

void edgebin_matvect_u8s8(const uint8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc, int32_t P,
                          int32_t S) {
  edgebin_matvec_rows(x, w, k, n, acc, P, S, 0, 1, 0, 0, 1);
}

void edgebin_matvecc_s8(const int8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc, int32_t P, int32_t S,
                        int32_t kh, int32_t kw, int32_t cs, int32_t rs) {
  edgebin_matvec_rows((const uint8_t*)x, w, k, n, acc, P, S, kh, kw, cs, rs, 0);
}

void edgebin_matvecc_u8s8(const uint8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc, int32_t P,
                          int32_t S, int32_t kh, int32_t kw, int32_t cs, int32_t rs) {
  edgebin_matvec_rows(x, w, k, n, acc, P, S, kh, kw, cs, rs, 1);
}

/* Low-bit weights kept as b-bit codes into a table: edgebin_lut{b}_decode, once a kernel run, for the kernels above. */
#include "edgebin_cpu_lut.c"
