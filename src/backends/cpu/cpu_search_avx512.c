/*
 * cpu_search_avx512.c - dot kernels for AVX-512 (F/BW/VL/DQ, VPOPCNTDQ):
 * 16 floats per vector, 4 rows x 6 queries of accumulators (24 of the 32
 * registers). Half precision is widened with VCVTPH2PS (F16C), bfloat16 by
 * a 16-bit shift, integer codes by sign / zero extension; binary rows use
 * VPOPCNTQ on 64-byte steps. The body is cpu_search_tmpl.h.
 *
 * int8 rows are widened to float rather than multiplied with VNNI: on this
 * machine's Zen 4 a 512-bit VPDPBUSD issues every other cycle, so an exact
 * query (three int8 parts) costs more than four float FMAs once several
 * queries share the widening, and a single query is bound by memory either
 * way.
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
  _mm512_cvtepi32_ps(                                                          \
      _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define MN_T_DEC_U8(p)                                                         \
  _mm512_cvtepi32_ps(                                                          \
      _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p))))

/* 16 bytes -> 16 dwords; shifting the nibble to the top and back
 * arithmetically sign-extends it. */
static inline __attribute__((always_inline)) __m512 dec_i4(const uint8_t *p,
                                                           int hi) {
  __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
  v = hi ? _mm512_slli_epi32(v, 24) : _mm512_slli_epi32(v, 28);
  return _mm512_cvtepi32_ps(_mm512_srai_epi32(v, 28));
}
#define MN_T_DEC_I4(p, hi) dec_i4((p), (hi))

/* Sums of four vectors into four adjacent floats: pairwise unpack-and-add
 * trees cost 13 instructions where four separate reductions cost ~32. */
static inline __attribute__((always_inline)) void
hsum4(__m512 a, __m512 b, __m512 c, __m512 d, float *dst) {
  __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
  __m512 s = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),
                           _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));
  __m256 h = _mm256_add_ps(
      _mm512_castps512_ps256(s),
      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  _mm_storeu_ps(dst, x);
}
#define MN_T_HSUM4(a, b, c, d, dst) hsum4((a), (b), (c), (d), (dst))

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

static inline __attribute__((always_inline)) __m512i btail_keep(int64_t len,
                                                                int64_t bits) {
  uint8_t last = bits ? (uint8_t)((1u << bits) - 1) : 0xFF;
  __m512i all = _mm512_set1_epi8((char)0xFF);
  return _mm512_mask_set1_epi8(all, (__mmask64)1 << (len - 1), (char)last);
}
#define MN_T_BTAIL_KEEP(len, bits) btail_keep((len), (bits))
#define MN_T_BLOAD_TAIL(p, len, keep)                                          \
  _mm512_and_si512(                                                            \
      _mm512_maskz_loadu_epi8(_bzhi_u64(~0ull, (unsigned)(len)), (p)), (keep))

#include "backends/cpu/cpu_search_tmpl.h"

void mn__cpu_dots_avx512(const mn__cpu_dotctx *c, int64_t r0, int64_t nr,
                         int64_t q0, int64_t nq, float *out, int64_t ldo,
                         float *nrm2) {
  t_dots(c, r0, nr, q0, nq, out, ldo, nrm2);
}
