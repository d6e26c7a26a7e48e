/*
 * cpu_elem_avx512.c - AVX-512 row kernels for the elementwise ops (the
 * contract is in cpu_elem.h). Compiled with -mavx512f/bw/vl/dq; only called
 * when mn__cpu_level() says the CPU has them.
 *
 * Heads and tails use masked loads and stores, so any width and any row
 * alignment take the same arithmetic. With streaming asked for, a row's
 * output is written with ordinary masked stores up to the first 64-byte
 * boundary and streamed from there.
 */
#include "backends/cpu/cpu_elem.h"

#include <immintrin.h>
#include <string.h>

#define RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static inline __mmask16 m16(int64_t cnt) {
  return cnt >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cnt) - 1u);
}

/* Elements of size `esize` before p reaches a 64-byte boundary (at most n),
 * or -1 when p is not aligned to its element size (then nothing streams). */
static inline int64_t head_to_line(const void *p, size_t esize, int64_t n) {
  uintptr_t a = (uintptr_t)p;
  if (a % esize)
    return -1;
  int64_t h = (int64_t)(((64u - (a & 63u)) & 63u) / esize);
  return h < n ? h : n;
}

/* m = max(m, |v| as bits), lane by lane (cpu_elem.h: non-finite input).
 * Masked-off lanes load 0 and change nothing. */
static inline __m512i max_abs_bits(__m512i m, __m512 v) {
  return _mm512_max_epu32(m, _mm512_castps_si512(_mm512_abs_ps(v)));
}

static inline int bad_bits(__m512i m) {
  return _mm512_reduce_max_epu32(m) >= MN__ELEM_INF_BITS ? MN__ELEM_BAD : 0;
}

/* ---------------------------------------------------------------------------
 * normalize
 * ------------------------------------------------------------------------- */
static int normalize_512(const float *x, float *y, int64_t n, int nt) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16);
    __m512 v2 = _mm512_loadu_ps(x + i + 32), v3 = _mm512_loadu_ps(x + i + 48);
    a0 = _mm512_fmadd_ps(v0, v0, a0);
    a1 = _mm512_fmadd_ps(v1, v1, a1);
    a2 = _mm512_fmadd_ps(v2, v2, a2);
    a3 = _mm512_fmadd_ps(v3, v3, a3);
  }
  for (; i < n; i += 16) {
    __m512 v = _mm512_maskz_loadu_ps(m16(n - i), x + i);
    a0 = _mm512_fmadd_ps(v, v, a0);
  }
  float s = _mm512_reduce_add_ps(
      _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  if (!(s >= MN__NORM_LO && s <= MN__NORM_HI))
    return mn__elem_normalize_wide(x, y, n);
  const __m512 vi = _mm512_set1_ps((float)(1.0 / sqrt((double)s)));

  i = 0;
  int64_t h = nt ? head_to_line(y, 4, n) : -1;
  if (h >= 0) {
    if (h > 0) {
      __mmask16 m = m16(h);
      _mm512_mask_storeu_ps(y, m,
                            _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x), vi));
      i = h;
    }
    for (; i + 64 <= n; i += 64) {
      __m512 v0 = _mm512_mul_ps(_mm512_loadu_ps(x + i), vi);
      __m512 v1 = _mm512_mul_ps(_mm512_loadu_ps(x + i + 16), vi);
      __m512 v2 = _mm512_mul_ps(_mm512_loadu_ps(x + i + 32), vi);
      __m512 v3 = _mm512_mul_ps(_mm512_loadu_ps(x + i + 48), vi);
      _mm512_stream_ps(y + i, v0);
      _mm512_stream_ps(y + i + 16, v1);
      _mm512_stream_ps(y + i + 32, v2);
      _mm512_stream_ps(y + i + 48, v3);
    }
    for (; i + 16 <= n; i += 16)
      _mm512_stream_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), vi));
  } else {
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), vi));
  }
  if (i < n) {
    __mmask16 m = m16(n - i);
    _mm512_mask_storeu_ps(y + i, m,
                          _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vi));
  }
  return 0;
}

/* ---------------------------------------------------------------------------
 * Symmetric int8 / int4
 * ------------------------------------------------------------------------- */
/* max|x| as bits: an integer max, where a float max would drop a NaN. */
static uint32_t absmax_512(const float *x, int64_t n) {
  __m512i m0 = _mm512_setzero_si512(), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    m0 = max_abs_bits(m0, _mm512_loadu_ps(x + i));
    m1 = max_abs_bits(m1, _mm512_loadu_ps(x + i + 16));
    m2 = max_abs_bits(m2, _mm512_loadu_ps(x + i + 32));
    m3 = max_abs_bits(m3, _mm512_loadu_ps(x + i + 48));
  }
  for (; i < n; i += 16)
    m0 = max_abs_bits(m0, _mm512_maskz_loadu_ps(m16(n - i), x + i));
  return _mm512_reduce_max_epu32(
      _mm512_max_epu32(_mm512_max_epu32(m0, m1), _mm512_max_epu32(m2, m3)));
}

/* rint(v / scale) as int32; |v| <= max|x| keeps it within [-127, 127]. */
static inline __m512i sym_codes(__m512 v, __m512 vs) {
  return _mm512_cvt_roundps_epi32(_mm512_div_ps(v, vs), RNE);
}

static inline __m128i i8_chunk(__m512 v, __m512 vs) {
  return _mm_max_epi8(_mm512_cvtsepi32_epi8(sym_codes(v, vs)),
                      _mm_set1_epi8(-127));
}

static int quant_i8_512(const float *x, int8_t *c, int64_t n, int nt,
                        float *scale_out) {
  uint32_t mb = absmax_512(x, n);
  if (mb >= MN__ELEM_INF_BITS)
    return MN__ELEM_BAD;
  float scale = mn__elem_bits_f32(mb) / 127.0f;
  *scale_out = scale;
  if (scale == 0.0f) {
    memset(c, 0, (size_t)n);
    return 0;
  }
  const __m512 vs = _mm512_set1_ps(scale);
  int64_t i = 0;
  int64_t h = nt ? head_to_line(c, 1, n) : -1;
  while (i < h) {
    __mmask16 m = m16(h - i);
    _mm_mask_storeu_epi8(c + i, m,
                         i8_chunk(_mm512_maskz_loadu_ps(m, x + i), vs));
    i += h - i < 16 ? h - i : 16;
  }
  /* Four vectors of codes packed to 64 bytes; packs works within 128-bit
   * lanes, so dword k of the result holds group k%4 of vector k/4 after
   * this permutation. */
  const __m512i perm =
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512i lo = _mm512_set1_epi8(-127);
  for (; i + 64 <= n; i += 64) {
    __m512i q0 = sym_codes(_mm512_loadu_ps(x + i), vs);
    __m512i q1 = sym_codes(_mm512_loadu_ps(x + i + 16), vs);
    __m512i q2 = sym_codes(_mm512_loadu_ps(x + i + 32), vs);
    __m512i q3 = sym_codes(_mm512_loadu_ps(x + i + 48), vs);
    __m512i p = _mm512_packs_epi16(_mm512_packs_epi32(q0, q1),
                                   _mm512_packs_epi32(q2, q3));
    p = _mm512_max_epi8(_mm512_permutexvar_epi32(perm, p), lo);
    if (h >= 0)
      _mm512_stream_si512((void *)(c + i), p);
    else
      _mm512_storeu_si512(c + i, p);
  }
  for (; i < n; i += 16) {
    __mmask16 m = m16(n - i);
    _mm_mask_storeu_epi8(c + i, m,
                         i8_chunk(_mm512_maskz_loadu_ps(m, x + i), vs));
  }
  return 0;
}

static int quant_i4_512(const float *x, uint8_t *c, int64_t n,
                        float *scale_out) {
  uint32_t mb = absmax_512(x, n);
  if (mb >= MN__ELEM_INF_BITS)
    return MN__ELEM_BAD;
  float scale = mn__elem_bits_f32(mb) / 7.0f;
  *scale_out = scale;
  if (scale == 0.0f) {
    memset(c, 0, (size_t)(n + 1) / 2);
    return 0;
  }
  const __m512 vs = _mm512_set1_ps(scale);
  const __m512i seven = _mm512_set1_epi32(7), mseven = _mm512_set1_epi32(-7);
  const __m256i lown = _mm256_set1_epi16(0x000f),
                highn = _mm256_set1_epi16(0x00f0);
  for (int64_t i = 0; i < n; i += 32) {
    int64_t rem = n - i;
    /* Lanes past the end load 0 and give code 0: the pad nibble. */
    __mmask16 k0 = m16(rem), k1 = rem > 16 ? m16(rem - 16) : 0;
    __m512i q0 = sym_codes(_mm512_maskz_loadu_ps(k0, x + i), vs);
    __m512i q1 = sym_codes(_mm512_maskz_loadu_ps(k1, x + i + 16), vs);
    q0 = _mm512_max_epi32(_mm512_min_epi32(q0, seven), mseven);
    q1 = _mm512_max_epi32(_mm512_min_epi32(q1, seven), mseven);
    /* 32 codes as bytes; word j = code 2j | code 2j+1 << 8 -> one byte. */
    __m256i w =
        _mm256_set_m128i(_mm512_cvtepi32_epi8(q1), _mm512_cvtepi32_epi8(q0));
    __m256i nib =
        _mm256_or_si256(_mm256_and_si256(w, lown),
                        _mm256_and_si256(_mm256_srli_epi16(w, 4), highn));
    __m128i bytes = _mm256_cvtepi16_epi8(nib);
    int64_t nb = rem >= 32 ? 16 : (rem + 1) / 2;
    _mm_mask_storeu_epi8(c + i / 2, m16(nb), bytes);
  }
  return 0;
}

/* ---------------------------------------------------------------------------
 * Affine uint8
 * ------------------------------------------------------------------------- */
static inline __m512i u8_codes(__m512 v, __m512 lo, __m512 s) {
  const __m512 zero = _mm512_setzero_ps();
  __mmask16 nz = _mm512_cmp_ps_mask(s, zero, _CMP_NEQ_OQ);
  __m512 q = _mm512_maskz_div_ps(nz, _mm512_sub_ps(v, lo), s);
  q = _mm512_min_ps(_mm512_max_ps(q, zero), _mm512_set1_ps(255.0f));
  return _mm512_cvt_roundps_epi32(q, RNE);
}

static inline __m128i u8_chunk(const float *x, const float *vmin,
                               const float *scale, __mmask16 m, __m512i *mb) {
  __m512 v = _mm512_maskz_loadu_ps(m, x);
  *mb = max_abs_bits(*mb, v);
  return _mm512_cvtusepi32_epi8(u8_codes(v, _mm512_maskz_loadu_ps(m, vmin),
                                         _mm512_maskz_loadu_ps(m, scale)));
}

static int quant_u8_512(const float *x, uint8_t *c, const float *vmin,
                        const float *scale, int64_t n, int nt) {
  __m512i mb = _mm512_setzero_si512();
  int64_t i = 0;
  int64_t h = nt ? head_to_line(c, 1, n) : -1;
  while (i < h) {
    __mmask16 m = m16(h - i);
    _mm_mask_storeu_epi8(c + i, m,
                         u8_chunk(x + i, vmin + i, scale + i, m, &mb));
    i += h - i < 16 ? h - i : 16;
  }
  const __m512i perm =
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  for (; i + 64 <= n; i += 64) {
    __m512i q[4];
    for (int k = 0; k < 4; k++) {
      __m512 v = _mm512_loadu_ps(x + i + 16 * k);
      mb = max_abs_bits(mb, v);
      q[k] = u8_codes(v, _mm512_loadu_ps(vmin + i + 16 * k),
                      _mm512_loadu_ps(scale + i + 16 * k));
    }
    __m512i p = _mm512_packus_epi16(_mm512_packus_epi32(q[0], q[1]),
                                    _mm512_packus_epi32(q[2], q[3]));
    p = _mm512_permutexvar_epi32(perm, p);
    if (h >= 0)
      _mm512_stream_si512((void *)(c + i), p);
    else
      _mm512_storeu_si512(c + i, p);
  }
  for (; i < n; i += 16) {
    __mmask16 m = m16(n - i);
    _mm_mask_storeu_epi8(c + i, m,
                         u8_chunk(x + i, vmin + i, scale + i, m, &mb));
  }
  return bad_bits(mb);
}

/* ---------------------------------------------------------------------------
 * Sign bits
 * ------------------------------------------------------------------------- */
static int quant_bin_512(const float *x, uint8_t *c, int64_t n) {
  const __m512 zero = _mm512_setzero_ps();
  __m512i mb = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 16) {
    int64_t rem = n - i;
    /* Lanes past the end load 0, which is not > 0: pad bits are 0. */
    __m512 v = _mm512_maskz_loadu_ps(m16(rem), x + i);
    mb = max_abs_bits(mb, v);
    __mmask16 bits = _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ);
    c[i / 8] = (uint8_t)bits;
    if (rem > 8)
      c[i / 8 + 1] = (uint8_t)(bits >> 8);
  }
  return bad_bits(mb);
}

/* ---------------------------------------------------------------------------
 * float16 / bfloat16
 * ------------------------------------------------------------------------- */
static inline __m256i f16_16(__m512 v) {
  return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
}

/* 16 floats to 16 bfloat16: the integer rounding of mn_f32_to_bf16
 * (half.c), NaN kept quiet. */
static inline __m256i bf16_16(__m512 v) {
  __m512i u = _mm512_castps_si512(v);
  __m512i lsb =
      _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb),
      16);
  __mmask16 nan = _mm512_cmpgt_epi32_mask(
      _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
      _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16),
                           _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

/* Shared by both kinds; `cvt` turns 16 floats into 16 halves. */
static inline int half_row(const float *x, uint16_t *c, int64_t n, int nt,
                           __m256i (*cvt)(__m512)) {
  __m512i mb = _mm512_setzero_si512();
  int64_t i = 0;
  int64_t h = nt ? head_to_line(c, 2, n) : -1;
  while (i < h) {
    __mmask16 m = m16(h - i);
    __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    mb = max_abs_bits(mb, v);
    _mm256_mask_storeu_epi16(c + i, m, cvt(v));
    i += h - i < 16 ? h - i : 16;
  }
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    mb = max_abs_bits(mb, v);
    if (h >= 0)
      _mm256_stream_si256((__m256i *)(c + i), cvt(v));
    else
      _mm256_storeu_si256((__m256i *)(c + i), cvt(v));
  }
  if (i < n) {
    __mmask16 m = m16(n - i);
    __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    mb = max_abs_bits(mb, v);
    _mm256_mask_storeu_epi16(c + i, m, cvt(v));
  }
  return bad_bits(mb);
}

static int quant_f16_512(const float *x, uint16_t *c, int64_t n, int nt) {
  return half_row(x, c, n, nt, f16_16);
}

static int quant_bf16_512(const float *x, uint16_t *c, int64_t n, int nt) {
  return half_row(x, c, n, nt, bf16_16);
}

/* ---------------------------------------------------------------------------
 * Dequantisation
 * ------------------------------------------------------------------------- */
static inline __m512 i8_to_ps(__m128i b, __m512 vs) {
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), vs);
}

static void deq_i8_512(const int8_t *c, float *y, float scale, int64_t n,
                       int nt) {
  const __m512 vs = _mm512_set1_ps(scale);
  int64_t i = 0;
  int64_t h = nt ? head_to_line(y, 4, n) : -1;
  if (h > 0) {
    __mmask16 m = m16(h);
    _mm512_mask_storeu_ps(y, m, i8_to_ps(_mm_maskz_loadu_epi8(m, c), vs));
    i = h;
  }
  for (; i + 16 <= n; i += 16) {
    __m512 v = i8_to_ps(_mm_loadu_si128((const __m128i *)(c + i)), vs);
    if (h >= 0)
      _mm512_stream_ps(y + i, v);
    else
      _mm512_storeu_ps(y + i, v);
  }
  if (i < n) {
    __mmask16 m = m16(n - i);
    _mm512_mask_storeu_ps(y + i, m,
                          i8_to_ps(_mm_maskz_loadu_epi8(m, c + i), vs));
  }
}

/* 16 int4 codes (8 bytes, fewer at the end) to floats. */
static inline __m512 i4_to_ps(const uint8_t *c, int64_t cnt, __m512 vs) {
  int64_t nb = (cnt + 1) / 2;
  __m128i b = nb >= 8 ? _mm_loadl_epi64((const __m128i *)c)
                      : _mm_maskz_loadu_epi8(m16(nb), c);
  __m128i w = _mm_cvtepu8_epi16(b);
  __m128i lo = _mm_srai_epi16(_mm_slli_epi16(w, 12), 12);
  __m128i hi = _mm_srai_epi16(_mm_slli_epi16(w, 8), 12);
  __m256i e =
      _mm256_set_m128i(_mm_unpackhi_epi16(lo, hi), _mm_unpacklo_epi16(lo, hi));
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(e)), vs);
}

static void deq_i4_512(const uint8_t *c, float *y, float scale, int64_t n,
                       int nt) {
  const __m512 vs = _mm512_set1_ps(scale);
  /* Codes come in pairs, so chunks start at even elements; stream only
   * rows that start on a line. */
  int stream = nt && ((uintptr_t)y & 63u) == 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = i4_to_ps(c + i / 2, 16, vs);
    if (stream)
      _mm512_stream_ps(y + i, v);
    else
      _mm512_storeu_ps(y + i, v);
  }
  if (i < n)
    _mm512_mask_storeu_ps(y + i, m16(n - i), i4_to_ps(c + i / 2, n - i, vs));
}

static inline __m512 u8_to_ps(__m128i b, const float *vmin, const float *scale,
                              __mmask16 m) {
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)),
                         _mm512_maskz_loadu_ps(m, scale),
                         _mm512_maskz_loadu_ps(m, vmin));
}

static void deq_u8_512(const uint8_t *c, float *y, const float *vmin,
                       const float *scale, int64_t n, int nt) {
  int64_t i = 0;
  int64_t h = nt ? head_to_line(y, 4, n) : -1;
  if (h > 0) {
    __mmask16 m = m16(h);
    _mm512_mask_storeu_ps(y, m,
                          u8_to_ps(_mm_maskz_loadu_epi8(m, c), vmin, scale, m));
    i = h;
  }
  for (; i + 16 <= n; i += 16) {
    __m512 v = u8_to_ps(_mm_loadu_si128((const __m128i *)(c + i)), vmin + i,
                        scale + i, 0xffff);
    if (h >= 0)
      _mm512_stream_ps(y + i, v);
    else
      _mm512_storeu_ps(y + i, v);
  }
  if (i < n) {
    __mmask16 m = m16(n - i);
    _mm512_mask_storeu_ps(
        y + i, m,
        u8_to_ps(_mm_maskz_loadu_epi8(m, c + i), vmin + i, scale + i, m));
  }
}

static void deq_bin_512(const uint8_t *c, float *y, int64_t n, int nt) {
  const __m512 pos = _mm512_set1_ps(1.0f), neg = _mm512_set1_ps(-1.0f);
  int stream = nt && ((uintptr_t)y & 63u) == 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __mmask16 bits = (__mmask16)(c[i / 8] | (c[i / 8 + 1] << 8));
    __m512 v = _mm512_mask_blend_ps(bits, neg, pos);
    if (stream)
      _mm512_stream_ps(y + i, v);
    else
      _mm512_storeu_ps(y + i, v);
  }
  if (i < n) {
    unsigned b = c[i / 8];
    if (n - i > 8)
      b |= (unsigned)c[i / 8 + 1] << 8;
    _mm512_mask_storeu_ps(y + i, m16(n - i),
                          _mm512_mask_blend_ps((__mmask16)b, neg, pos));
  }
}

/* ---------------------------------------------------------------------------
 * Affine training
 * ------------------------------------------------------------------------- */
static int minmax_512(const float *x, float *vmin, float *vmax, int64_t n) {
  __m512i mb = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = m16(n - i);
    __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    mb = max_abs_bits(mb, v);
    _mm512_mask_storeu_ps(vmin + i, m,
                          _mm512_min_ps(_mm512_maskz_loadu_ps(m, vmin + i), v));
    _mm512_mask_storeu_ps(vmax + i, m,
                          _mm512_max_ps(_mm512_maskz_loadu_ps(m, vmax + i), v));
  }
  return bad_bits(mb);
}

const mn__elem_kernels mn__elem_avx512 = {
    .normalize = normalize_512,
    .quant_i8 = quant_i8_512,
    .quant_i4 = quant_i4_512,
    .quant_u8 = quant_u8_512,
    .quant_bin = quant_bin_512,
    .quant_f16 = quant_f16_512,
    .quant_bf16 = quant_bf16_512,
    .deq_i8 = deq_i8_512,
    .deq_i4 = deq_i4_512,
    .deq_u8 = deq_u8_512,
    .deq_bin = deq_bin_512,
    .minmax = minmax_512,
};
