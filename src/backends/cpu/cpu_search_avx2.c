/*
 * cpu_search_avx2.c - dot kernels for AVX2 + FMA + F16C: 8 floats per
 * vector, 2 rows x 4 queries of accumulators (the 16 registers leave room
 * for the norm and affine terms). Binary rows use 64-bit POPCNT. The body
 * is cpu_search_tmpl.h.
 */
#include "backends/cpu/cpu_search_kern.h"

#include <immintrin.h>
#include <string.h>

static inline __attribute__((always_inline)) float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline __attribute__((always_inline)) __m256 dec_i4(const uint8_t *p,
                                                           int hi) {
  __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
  v = hi ? _mm256_slli_epi32(v, 24) : _mm256_slli_epi32(v, 28);
  return _mm256_cvtepi32_ps(_mm256_srai_epi32(v, 28));
}

static inline __attribute__((always_inline)) uint64_t load64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

#define MN_T_V __m256
#define MN_T_VL 8
#define MN_T_ZERO() _mm256_setzero_ps()
#define MN_T_LOADQ(p) _mm256_loadu_ps(p)
#define MN_T_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define MN_T_HSUM(v) hsum256(v)
#define MN_T_DEC_F32(p) _mm256_loadu_ps((const float *)(p))
#define MN_T_DEC_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define MN_T_DEC_BF16(p)                                                       \
  _mm256_castsi256_ps(_mm256_slli_epi32(                                       \
      _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define MN_T_DEC_I8(p)                                                         \
  _mm256_cvtepi32_ps(                                                          \
      _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#define MN_T_DEC_U8(p)                                                         \
  _mm256_cvtepi32_ps(                                                          \
      _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#define MN_T_DEC_I4(p, hi) dec_i4((p), (hi))

#define MN_T_NR 2
#define MN_T_NQ 4
#define MN_T_NQNORM 4

#define MN_T_BV uint64_t
#define MN_T_BBYTES 8
#define MN_T_BZERO() ((uint64_t)0)
#define MN_T_BLOAD(p) load64(p)
#define MN_T_BSTEP(acc, a, b) ((acc) + (uint64_t)_mm_popcnt_u64((a) ^ (b)))
#define MN_T_BHSUM(acc) (acc)

#include "backends/cpu/cpu_search_tmpl.h"

void mn__cpu_dots_avx2(const mn__cpu_dotctx *c, int64_t r0, int64_t nr,
                       int64_t q0, int64_t nq, float *out, int64_t ldo,
                       float *nrm2) {
  t_dots(c, r0, nr, q0, nq, out, ldo, nrm2);
}
