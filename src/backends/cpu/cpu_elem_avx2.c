/*
 * cpu_elem_avx2.c - AVX2 + FMA row kernels for the elementwise ops (the
 * contract is in cpu_elem.h), for x86-64 CPUs without AVX-512. Compiled
 * with -mavx2 -mfma -mf16c; only called when mn__cpu_level() allows.
 *
 * Heads (up to the first 32-byte boundary, when streaming) and tails are
 * done one element at a time with the inline helpers of cpu_elem.h, which
 * compute exactly what the vector lanes compute, or through a small
 * zero-padded buffer where elements come in groups (int4, bits).
 */
#include "backends/cpu/cpu_elem.h"

#include <immintrin.h>
#include <string.h>

#define RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline uint32_t hmax8_u32(__m256i v) {
  __m128i s =
      _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_max_epu32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_max_epu32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return (uint32_t)_mm_cvtsi128_si32(s);
}

/* m = max(m, |v| as bits), lane by lane (cpu_elem.h: non-finite input). */
static inline __m256i max_abs_bits(__m256i m, __m256 v) {
  return _mm256_max_epu32(m, _mm256_and_si256(_mm256_castps_si256(v),
                                              _mm256_set1_epi32(0x7fffffff)));
}

/* The largest |x| of a row's tail, as bits, merged with the vector part. */
static inline uint32_t tail_abs_bits(__m256i m, const float *x, int64_t i,
                                     int64_t n) {
  uint32_t r = hmax8_u32(m);
  for (; i < n; i++) {
    uint32_t a = mn__elem_abs_bits(x[i]);
    r = a > r ? a : r;
  }
  return r;
}

/* Elements of size `esize` before p reaches a 32-byte boundary (at most n),
 * or -1 when p is not aligned to its element size (then nothing streams). */
static inline int64_t head_to_32(const void *p, size_t esize, int64_t n) {
  uintptr_t a = (uintptr_t)p;
  if (a % esize)
    return -1;
  int64_t h = (int64_t)(((32u - (a & 31u)) & 31u) / esize);
  return h < n ? h : n;
}

/* ---------------------------------------------------------------------------
 * normalize
 * ------------------------------------------------------------------------- */
static int normalize_avx2(const float *x, float *y, int64_t n, int nt) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    __m256 v2 = _mm256_loadu_ps(x + i + 16), v3 = _mm256_loadu_ps(x + i + 24);
    a0 = _mm256_fmadd_ps(v0, v0, a0);
    a1 = _mm256_fmadd_ps(v1, v1, a1);
    a2 = _mm256_fmadd_ps(v2, v2, a2);
    a3 = _mm256_fmadd_ps(v3, v3, a3);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    a0 = _mm256_fmadd_ps(v, v, a0);
  }
  float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; i++)
    s += x[i] * x[i];
  if (!(s >= MN__NORM_LO && s <= MN__NORM_HI))
    return mn__elem_normalize_wide(x, y, n);
  const float inv = (float)(1.0 / sqrt((double)s));
  const __m256 vi = _mm256_set1_ps(inv);

  i = 0;
  int64_t h = nt ? head_to_32(y, 4, n) : -1;
  if (h >= 0) {
    for (; i < h; i++)
      y[i] = x[i] * inv;
    for (; i + 32 <= n; i += 32) {
      __m256 v0 = _mm256_mul_ps(_mm256_loadu_ps(x + i), vi);
      __m256 v1 = _mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vi);
      __m256 v2 = _mm256_mul_ps(_mm256_loadu_ps(x + i + 16), vi);
      __m256 v3 = _mm256_mul_ps(_mm256_loadu_ps(x + i + 24), vi);
      _mm256_stream_ps(y + i, v0);
      _mm256_stream_ps(y + i + 8, v1);
      _mm256_stream_ps(y + i + 16, v2);
      _mm256_stream_ps(y + i + 24, v3);
    }
    for (; i + 8 <= n; i += 8)
      _mm256_stream_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vi));
  } else {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vi));
  }
  for (; i < n; i++)
    y[i] = x[i] * inv;
  return 0;
}

/* ---------------------------------------------------------------------------
 * Symmetric int8 / int4
 * ------------------------------------------------------------------------- */
/* max|x| as bits: an integer max, where a float max would drop a NaN. */
static uint32_t absmax_avx2(const float *x, int64_t n) {
  __m256i m0 = _mm256_setzero_si256(), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = max_abs_bits(m0, _mm256_loadu_ps(x + i));
    m1 = max_abs_bits(m1, _mm256_loadu_ps(x + i + 8));
    m2 = max_abs_bits(m2, _mm256_loadu_ps(x + i + 16));
    m3 = max_abs_bits(m3, _mm256_loadu_ps(x + i + 24));
  }
  for (; i + 8 <= n; i += 8)
    m0 = max_abs_bits(m0, _mm256_loadu_ps(x + i));
  m0 = _mm256_max_epu32(_mm256_max_epu32(m0, m1), _mm256_max_epu32(m2, m3));
  return tail_abs_bits(m0, x, i, n);
}

/* rint(v / scale) as int32, rounding stated rather than taken from MXCSR. */
static inline __m256i sym_codes(__m256 v, __m256 vs) {
  return _mm256_cvttps_epi32(_mm256_round_ps(_mm256_div_ps(v, vs), RNE));
}

/* Four vectors of 8 codes to 32 bytes in order: packs interleaves the
 * 128-bit lanes, the dword permutation undoes it. */
static inline __m256i pack32_i8(__m256i a, __m256i b, __m256i c, __m256i d) {
  __m256i p =
      _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
  return _mm256_permutevar8x32_epi32(p,
                                     _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static int quant_i8_avx2(const float *x, int8_t *c, int64_t n, int nt,
                         float *scale_out) {
  uint32_t mb = absmax_avx2(x, n);
  if (mb >= MN__ELEM_INF_BITS)
    return MN__ELEM_BAD;
  float scale = mn__elem_bits_f32(mb) / 127.0f;
  *scale_out = scale;
  if (scale == 0.0f) {
    memset(c, 0, (size_t)n);
    return 0;
  }
  const __m256 vs = _mm256_set1_ps(scale);
  const __m256i lo = _mm256_set1_epi8(-127);
  int64_t i = 0;
  int64_t h = nt ? head_to_32(c, 1, n) : -1;
  for (; i < h; i++)
    c[i] = (int8_t)mn__elem_sym_code(x[i], scale, 127.0f);
  for (; i + 32 <= n; i += 32) {
    __m256i p = pack32_i8(sym_codes(_mm256_loadu_ps(x + i), vs),
                          sym_codes(_mm256_loadu_ps(x + i + 8), vs),
                          sym_codes(_mm256_loadu_ps(x + i + 16), vs),
                          sym_codes(_mm256_loadu_ps(x + i + 24), vs));
    p = _mm256_max_epi8(p, lo);
    if (h >= 0)
      _mm256_stream_si256((__m256i *)(c + i), p);
    else
      _mm256_storeu_si256((__m256i *)(c + i), p);
  }
  for (; i < n; i++)
    c[i] = (int8_t)mn__elem_sym_code(x[i], scale, 127.0f);
  return 0;
}

/* 16 floats to 8 bytes of int4 codes. */
static inline void i4_block16(const float *x, uint8_t *c, __m256 vs) {
  const __m256i seven = _mm256_set1_epi32(7), mseven = _mm256_set1_epi32(-7);
  __m256i a = sym_codes(_mm256_loadu_ps(x), vs);
  __m256i b = sym_codes(_mm256_loadu_ps(x + 8), vs);
  a = _mm256_max_epi32(_mm256_min_epi32(a, seven), mseven);
  b = _mm256_max_epi32(_mm256_min_epi32(b, seven), mseven);
  /* 16 codes as int16 in order; dword j = code 2j | code 2j+1 << 16. */
  __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);
  __m256i t = _mm256_or_si256(
      _mm256_and_si256(p, _mm256_set1_epi32(0x0f)),
      _mm256_and_si256(_mm256_srli_epi32(p, 12), _mm256_set1_epi32(0xf0)));
  t = _mm256_packus_epi16(_mm256_packus_epi32(t, t), t);
  uint32_t lo32 = (uint32_t)_mm_cvtsi128_si32(_mm256_castsi256_si128(t));
  uint32_t hi32 = (uint32_t)_mm_cvtsi128_si32(_mm256_extracti128_si256(t, 1));
  memcpy(c, &lo32, 4);
  memcpy(c + 4, &hi32, 4);
}

static int quant_i4_avx2(const float *x, uint8_t *c, int64_t n,
                         float *scale_out) {
  uint32_t mb = absmax_avx2(x, n);
  if (mb >= MN__ELEM_INF_BITS)
    return MN__ELEM_BAD;
  float scale = mn__elem_bits_f32(mb) / 7.0f;
  *scale_out = scale;
  if (scale == 0.0f) {
    memset(c, 0, (size_t)(n + 1) / 2);
    return 0;
  }
  const __m256 vs = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    i4_block16(x + i, c + i / 2, vs);
  if (i < n) {
    /* Zero padding gives code 0, hence a 0 pad nibble. */
    float buf[16] = {0};
    uint8_t out[8];
    memcpy(buf, x + i, sizeof(float) * (size_t)(n - i));
    i4_block16(buf, out, vs);
    memcpy(c + i / 2, out, (size_t)(n - i + 1) / 2);
  }
  return 0;
}

/* ---------------------------------------------------------------------------
 * Affine uint8
 * ------------------------------------------------------------------------- */
static inline __m256i u8_codes(__m256 v, const float *vmin,
                               const float *scale) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 s = _mm256_loadu_ps(scale);
  __m256 nz = _mm256_cmp_ps(s, zero, _CMP_NEQ_OQ);
  __m256 q = _mm256_div_ps(_mm256_sub_ps(v, _mm256_loadu_ps(vmin)), s);
  q = _mm256_and_ps(q, nz); /* scale 0: code 0 (drops the NaN / Inf too) */
  q = _mm256_min_ps(_mm256_max_ps(q, zero), _mm256_set1_ps(255.0f));
  return _mm256_cvttps_epi32(_mm256_round_ps(q, RNE));
}

static int quant_u8_avx2(const float *x, uint8_t *c, const float *vmin,
                         const float *scale, int64_t n, int nt) {
  int64_t i = 0;
  int64_t h = nt ? head_to_32(c, 1, n) : -1;
  uint32_t mh = 0; /* the head's max |x| bits */
  for (; i < h; i++) {
    uint32_t a = mn__elem_abs_bits(x[i]);
    mh = a > mh ? a : mh;
    c[i] = mn__elem_aff_code(x[i], vmin[i], scale[i]);
  }
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i m = _mm256_set1_epi32((int)mh);
  for (; i + 32 <= n; i += 32) {
    __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    __m256 v2 = _mm256_loadu_ps(x + i + 16), v3 = _mm256_loadu_ps(x + i + 24);
    m = max_abs_bits(max_abs_bits(m, v0), v1);
    m = max_abs_bits(max_abs_bits(m, v2), v3);
    __m256i a = u8_codes(v0, vmin + i, scale + i);
    __m256i b = u8_codes(v1, vmin + i + 8, scale + i + 8);
    __m256i d = u8_codes(v2, vmin + i + 16, scale + i + 16);
    __m256i e = u8_codes(v3, vmin + i + 24, scale + i + 24);
    __m256i p = _mm256_packus_epi16(_mm256_packus_epi32(a, b),
                                    _mm256_packus_epi32(d, e));
    p = _mm256_permutevar8x32_epi32(p, perm);
    if (h >= 0)
      _mm256_stream_si256((__m256i *)(c + i), p);
    else
      _mm256_storeu_si256((__m256i *)(c + i), p);
  }
  for (int64_t j = i; j < n; j++)
    c[j] = mn__elem_aff_code(x[j], vmin[j], scale[j]);
  return tail_abs_bits(m, x, i, n) >= MN__ELEM_INF_BITS ? MN__ELEM_BAD : 0;
}

/* ---------------------------------------------------------------------------
 * Sign bits
 * ------------------------------------------------------------------------- */
static int quant_bin_avx2(const float *x, uint8_t *c, int64_t n) {
  const __m256 zero = _mm256_setzero_ps();
  __m256i m = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    m = max_abs_bits(m, v);
    c[i / 8] = (uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ));
  }
  if (i < n) {
    unsigned byte = 0;
    for (int k = 0; i + k < n; k++)
      byte |= (unsigned)(x[i + k] > 0.0f) << k;
    c[i / 8] = (uint8_t)byte;
  }
  return tail_abs_bits(m, x, i, n) >= MN__ELEM_INF_BITS ? MN__ELEM_BAD : 0;
}

/* ---------------------------------------------------------------------------
 * float16 / bfloat16
 * ------------------------------------------------------------------------- */
/* Eight floats to eight bfloat16 in the low half of each 32-bit lane: the
 * integer rounding of mn_f32_to_bf16 (half.c), NaN kept quiet. */
static inline __m256i bf16_round8(__m256i u) {
  const __m256i one = _mm256_set1_epi32(1);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
  __m256i r =
      _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb);
  r = _mm256_srli_epi32(r, 16);
  __m256i ax = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  __m256i nan = _mm256_cmpgt_epi32(ax, _mm256_set1_epi32(0x7f800000));
  __m256i q =
      _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(r, q, nan);
}

/* 16 floats to 16 halves (32 bytes, in order). */
static inline __m256i f16_block16(const float *x, __m256i *m) {
  __m256 a = _mm256_loadu_ps(x), b = _mm256_loadu_ps(x + 8);
  *m = max_abs_bits(max_abs_bits(*m, a), b);
  return _mm256_set_m128i(_mm256_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT),
                          _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT));
}

static inline __m256i bf16_block16(const float *x, __m256i *m) {
  __m256 a = _mm256_loadu_ps(x), b = _mm256_loadu_ps(x + 8);
  *m = max_abs_bits(max_abs_bits(*m, a), b);
  __m256i p = _mm256_packus_epi32(bf16_round8(_mm256_castps_si256(a)),
                                  bf16_round8(_mm256_castps_si256(b)));
  /* packus interleaves the 128-bit lanes; the permutation puts them back. */
  return _mm256_permute4x64_epi64(p, 0xd8);
}

/* Shared by both kinds: scalar head (when streaming) and tail through the
 * scalar conversion `one`, blocks of 16 through `block`. */
static inline int half_row(const float *x, uint16_t *c, int64_t n, int nt,
                           __m256i (*block)(const float *, __m256i *),
                           uint16_t (*one)(float)) {
  __m256i m = _mm256_setzero_si256();
  uint32_t mh = 0;
  int64_t i = 0;
  int64_t h = nt ? head_to_32(c, 2, n) : -1;
  for (; i < h; i++) {
    uint32_t a = mn__elem_abs_bits(x[i]);
    mh = a > mh ? a : mh;
    c[i] = one(x[i]);
  }
  for (; i + 16 <= n; i += 16) {
    __m256i v = block(x + i, &m);
    if (h >= 0)
      _mm256_stream_si256((__m256i *)(c + i), v);
    else
      _mm256_storeu_si256((__m256i *)(c + i), v);
  }
  for (int64_t j = i; j < n; j++)
    c[j] = one(x[j]);
  uint32_t mb = tail_abs_bits(m, x, i, n);
  return (mb > mh ? mb : mh) >= MN__ELEM_INF_BITS ? MN__ELEM_BAD : 0;
}

static int quant_f16_avx2(const float *x, uint16_t *c, int64_t n, int nt) {
  return half_row(x, c, n, nt, f16_block16, mn_f32_to_f16);
}

static int quant_bf16_avx2(const float *x, uint16_t *c, int64_t n, int nt) {
  return half_row(x, c, n, nt, bf16_block16, mn_f32_to_bf16);
}

/* ---------------------------------------------------------------------------
 * Dequantisation
 * ------------------------------------------------------------------------- */
static void deq_i8_avx2(const int8_t *c, float *y, float scale, int64_t n,
                        int nt) {
  const __m256 vs = _mm256_set1_ps(scale);
  int64_t i = 0;
  int64_t h = nt ? head_to_32(y, 4, n) : -1;
  for (; i < h; i++)
    y[i] = (float)c[i] * scale;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                 _mm_loadl_epi64((const __m128i *)(c + i)))),
                             vs);
    if (h >= 0)
      _mm256_stream_ps(y + i, v);
    else
      _mm256_storeu_ps(y + i, v);
  }
  for (; i < n; i++)
    y[i] = (float)c[i] * scale;
}

static void deq_i4_avx2(const uint8_t *c, float *y, float scale, int64_t n,
                        int nt) {
  const __m256 vs = _mm256_set1_ps(scale);
  int stream = nt && ((uintptr_t)y & 31u) == 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m128i w =
        _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(c + i / 2)));
    __m128i lo = _mm_srai_epi16(_mm_slli_epi16(w, 12), 12);
    __m128i hi = _mm_srai_epi16(_mm_slli_epi16(w, 8), 12);
    __m256 a = _mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm_unpacklo_epi16(lo, hi))),
        vs);
    __m256 b = _mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm_unpackhi_epi16(lo, hi))),
        vs);
    if (stream) {
      _mm256_stream_ps(y + i, a);
      _mm256_stream_ps(y + i + 8, b);
    } else {
      _mm256_storeu_ps(y + i, a);
      _mm256_storeu_ps(y + i + 8, b);
    }
  }
  for (; i < n; i++) {
    int nib = (c[i / 2] >> (4 * (i & 1))) & 0xf;
    y[i] = (float)(nib >= 8 ? nib - 16 : nib) * scale;
  }
}

static void deq_u8_avx2(const uint8_t *c, float *y, const float *vmin,
                        const float *scale, int64_t n, int nt) {
  int64_t i = 0;
  int64_t h = nt ? head_to_32(y, 4, n) : -1;
  for (; i < h; i++)
    y[i] = fmaf((float)c[i], scale[i], vmin[i]);
  for (; i + 8 <= n; i += 8) {
    __m256 code = _mm256_cvtepi32_ps(
        _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + i))));
    __m256 v = _mm256_fmadd_ps(code, _mm256_loadu_ps(scale + i),
                               _mm256_loadu_ps(vmin + i));
    if (h >= 0)
      _mm256_stream_ps(y + i, v);
    else
      _mm256_storeu_ps(y + i, v);
  }
  for (; i < n; i++)
    y[i] = fmaf((float)c[i], scale[i], vmin[i]);
}

static void deq_bin_avx2(const uint8_t *c, float *y, int64_t n, int nt) {
  const __m256 pos = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-1.0f);
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  int stream = nt && ((uintptr_t)y & 31u) == 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i b = _mm256_and_si256(_mm256_set1_epi32(c[i / 8]), bit);
    __m256 set = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, bit));
    __m256 v = _mm256_blendv_ps(neg, pos, set);
    if (stream)
      _mm256_stream_ps(y + i, v);
    else
      _mm256_storeu_ps(y + i, v);
  }
  for (; i < n; i++)
    y[i] = (c[i / 8] >> (i & 7)) & 1 ? 1.0f : -1.0f;
}

/* ---------------------------------------------------------------------------
 * Affine training
 * ------------------------------------------------------------------------- */
static int minmax_avx2(const float *x, float *vmin, float *vmax, int64_t n) {
  __m256i m = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    m = max_abs_bits(m, v);
    _mm256_storeu_ps(vmin + i, _mm256_min_ps(_mm256_loadu_ps(vmin + i), v));
    _mm256_storeu_ps(vmax + i, _mm256_max_ps(_mm256_loadu_ps(vmax + i), v));
  }
  for (int64_t j = i; j < n; j++) {
    vmin[j] = x[j] < vmin[j] ? x[j] : vmin[j];
    vmax[j] = x[j] > vmax[j] ? x[j] : vmax[j];
  }
  return tail_abs_bits(m, x, i, n) >= MN__ELEM_INF_BITS ? MN__ELEM_BAD : 0;
}

const mn__elem_kernels mn__elem_avx2 = {
    .normalize = normalize_avx2,
    .quant_i8 = quant_i8_avx2,
    .quant_i4 = quant_i4_avx2,
    .quant_u8 = quant_u8_avx2,
    .quant_bin = quant_bin_avx2,
    .quant_f16 = quant_f16_avx2,
    .quant_bf16 = quant_bf16_avx2,
    .deq_i8 = deq_i8_avx2,
    .deq_i4 = deq_i4_avx2,
    .deq_u8 = deq_u8_avx2,
    .deq_bin = deq_bin_avx2,
    .minmax = minmax_avx2,
};
