/*
 * cpu_search_avx512.c - dot kernels for AVX-512 (F/BW/VL/DQ, VPOPCNTDQ):
 * 16 floats per vector, 4 rows x 6 queries of accumulators (24 of the 32
 * registers). Half precision is widened with VCVTPH2PS (F16C), bfloat16 by
 * a 16-bit shift, integer codes by sign / zero extension; binary rows use
 * VPOPCNTQ on 64-byte steps. The body is cpu_search_tmpl.h.
 */
#include "backends/cpu/cpu_search_kern.h"

#include <immintrin.h>

#define MN_T_V __m512
#define MN_T_VL 16
#define MN_T_ZERO() _mm512_setzero_ps()
#define MN_T_LOADQ(p) _mm512_loadu_ps(p)
#define MN_T_FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define MN_T_HSUM(v) _mm512_reduce_add_ps(v)
#define MN_T_DEC_F32(p) _mm512_loadu_ps((const float *)(p))
#define MN_T_DEC_F16(p)                                                        \
  _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define MN_T_DEC_BF16(p)                                                       \
  _mm512_castsi512_ps(_mm512_slli_epi32(                                       \
      _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define MN_T_DEC_I8(p)                                                         \
  _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define MN_T_DEC_U8(p)                                                         \
  _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p))))

/* 16 bytes -> 16 dwords; shifting the nibble to the top and back
 * arithmetically sign-extends it. */
static inline __attribute__((always_inline)) __m512 dec_i4(const uint8_t *p,
                                                           int hi) {
  __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
  v = hi ? _mm512_slli_epi32(v, 24) : _mm512_slli_epi32(v, 28);
  return _mm512_cvtepi32_ps(_mm512_srai_epi32(v, 28));
}
#define MN_T_DEC_I4(p, hi) dec_i4((p), (hi))

#define MN_T_NR 4
#define MN_T_NQ 6
#define MN_T_NQNORM 5

#define MN_T_BV __m512i
#define MN_T_BBYTES 64
#define MN_T_BZERO() _mm512_setzero_si512()
#define MN_T_BLOAD(p) _mm512_loadu_si512((const void *)(p))
#define MN_T_BSTEP(acc, a, b)                                                  \
  _mm512_add_epi64((acc), _mm512_popcnt_epi64(_mm512_xor_si512((a), (b))))
#define MN_T_BHSUM(acc) ((uint64_t)_mm512_reduce_add_epi64(acc))

#define MN_T_NAME mn__cpu_dots_avx512
#include "backends/cpu/cpu_search_tmpl.h"
