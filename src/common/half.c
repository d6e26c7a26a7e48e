/*
 * half.c - float16 and bfloat16 conversion, one value at a time and in bulk.
 *
 * Every conversion rounds to nearest, ties to even; float16 subnormals are
 * produced and read exactly; a value too large for the format becomes Inf;
 * a NaN stays a NaN with its sign and leading payload bits, made quiet (the
 * quiet bit set), which is what the F16C instructions do as well. The scalar
 * functions work on the bit patterns with integer arithmetic, so they do not
 * depend on the floating-point environment.
 *
 * DESIGN: the bulk `_n` functions pick a kernel at each call from a level
 * read once (the best the CPU has, capped by $MNEMO_CPU_LEVEL, the same
 * variable the CPU backend honours): AVX-512 (F/BW/VL), AVX2 + F16C, or
 * portable C. This file may not include backend headers, so it detects the
 * CPU itself and compiles its SIMD kernels with target attributes. All
 * levels give bit-identical output; tests check that at every level.
 */
#include "common/half_internal.h"
#include "common/internal.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

static inline uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static inline float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* ---------------------------------------------------------------------------
 * Scalar conversions
 * ------------------------------------------------------------------------- */
uint16_t mn_f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) /* NaN: quiet, keep the top 9 payload bits */
    return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  if (ax >= 0x477ff000u) /* >= 65520 rounds past 65504: Inf (Inf too) */
    return (uint16_t)(sign | 0x7c00u);
  if (ax >= 0x38800000u) {
    /* Normal half. Adding 0xfff plus the kept LSB rounds the 13 dropped
     * bits to nearest even; a carry moves into the exponent, as it must. */
    uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u);
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
  }
  if (ax <= 0x33000000u) /* <= 2^-25: half way to the least subnormal or
                            below, ties go to the even zero */
    return sign;
  /* Subnormal half: the value in units of 2^-24 is m >> (126 - e). */
  uint32_t e = ax >> 23;
  uint32_t m = (ax & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126u - e; /* 14 .. 24 */
  uint32_t q = m >> shift;
  uint32_t rem = m & ((1u << shift) - 1u);
  uint32_t halfway = 1u << (shift - 1u);
  if (rem > halfway || (rem == halfway && (q & 1u)))
    q++;
  return (uint16_t)(sign | q);
}

float mn_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  uint32_t u;
  if (e == 0x1fu)
    u = sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0u);
  else if (e != 0)
    u = sign | ((e + 112u) << 23) | (m << 13);
  else if (m == 0)
    u = sign;
  else {
    /* Subnormal: m * 2^-24 with the leading one at bit p (0..9). */
    uint32_t p = 31u - (uint32_t)__builtin_clz(m);
    u = sign | ((p + 103u) << 23) | ((m << (23u - p)) & 0x7fffffu);
  }
  return bits_f32(u);
}

uint16_t mn_f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u)
    return (uint16_t)((x >> 16) | 0x40u);
  /* Round the low 16 bits to nearest even; overflow carries into Inf. */
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float mn_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  if ((h & 0x7fffu) > 0x7f80u)
    u |= 0x400000u;
  return bits_f32(u);
}

static void f32_to_f16_c(const float *src, uint16_t *dst, size_t n) {
  for (size_t i = 0; i < n; i++)
    dst[i] = mn_f32_to_f16(src[i]);
}

static void f16_to_f32_c(const uint16_t *src, float *dst, size_t n) {
  for (size_t i = 0; i < n; i++)
    dst[i] = mn_f16_to_f32(src[i]);
}

static void f32_to_bf16_c(const float *src, uint16_t *dst, size_t n) {
  for (size_t i = 0; i < n; i++)
    dst[i] = mn_f32_to_bf16(src[i]);
}

static void bf16_to_f32_c(const uint16_t *src, float *dst, size_t n) {
  for (size_t i = 0; i < n; i++)
    dst[i] = mn_bf16_to_f32(src[i]);
}

/* ---------------------------------------------------------------------------
 * AVX2 + F16C kernels. Tails go through the scalar functions, which give
 * the same bits.
 * ------------------------------------------------------------------------- */
#define MN__T_AVX2 __attribute__((target("avx2,f16c")))

MN__T_AVX2 static void f32_to_f16_avx2(const float *src, uint16_t *dst,
                                       size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m128i a =
        _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    __m128i b = _mm256_cvtps_ph(_mm256_loadu_ps(src + i + 8),
                                _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128((__m128i *)(dst + i), a);
    _mm_storeu_si128((__m128i *)(dst + i + 8), b);
  }
  f32_to_f16_c(src + i, dst + i, n - i);
}

MN__T_AVX2 static void f16_to_f32_avx2(const uint16_t *src, float *dst,
                                       size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
    __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 8));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(a));
    _mm256_storeu_ps(dst + i + 8, _mm256_cvtph_ps(b));
  }
  f16_to_f32_c(src + i, dst + i, n - i);
}

/* Eight floats to eight bfloat16 held in the low half of each 32-bit lane,
 * by the same integer rounding as mn_f32_to_bf16. */
MN__T_AVX2 static inline __m256i bf16_round8(__m256i u) {
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

MN__T_AVX2 static void f32_to_bf16_avx2(const float *src, uint16_t *dst,
                                        size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i a = bf16_round8(_mm256_loadu_si256((const __m256i *)(src + i)));
    __m256i b = bf16_round8(_mm256_loadu_si256((const __m256i *)(src + i + 8)));
    /* packus interleaves the 128-bit lanes; the permute puts them back. */
    __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
    _mm256_storeu_si256((__m256i *)(dst + i), p);
  }
  f32_to_bf16_c(src + i, dst + i, n - i);
}

MN__T_AVX2 static void bf16_to_f32_avx2(const uint16_t *src, float *dst,
                                        size_t n) {
  size_t i = 0;
  const __m256i absm = _mm256_set1_epi32(0x7fffffff);
  const __m256i inf = _mm256_set1_epi32(0x7f800000);
  const __m256i quiet = _mm256_set1_epi32(0x400000);
  for (; i + 8 <= n; i += 8) {
    __m256i u = _mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i))), 16);
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, absm), inf);
    u = _mm256_or_si256(u, _mm256_and_si256(nan, quiet));
    _mm256_storeu_si256((__m256i *)(dst + i), u);
  }
  bf16_to_f32_c(src + i, dst + i, n - i);
}

/* ---------------------------------------------------------------------------
 * AVX-512 kernels; tails use masked loads and stores.
 * ------------------------------------------------------------------------- */
#define MN__T_AVX512                                                           \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx2,f16c")))

MN__T_AVX512 static void f32_to_f16_avx512(const float *src, uint16_t *dst,
                                           size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i h =
        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_si256((__m256i *)(dst + i), h);
  }
  if (i < n) {
    __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
    __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i),
                                _MM_FROUND_TO_NEAREST_INT);
    _mm256_mask_storeu_epi16(dst + i, m, h);
  }
}

MN__T_AVX512 static void f16_to_f32_avx512(const uint16_t *src, float *dst,
                                           size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(
                                  (const __m256i *)(src + i))));
  if (i < n) {
    __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(
        dst + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + i)));
  }
}

MN__T_AVX512 static inline __m256i bf16_round16(__m512i u) {
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

MN__T_AVX512 static void f32_to_bf16_avx512(const float *src, uint16_t *dst,
                                            size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256((__m256i *)(dst + i),
                        bf16_round16(_mm512_loadu_si512(src + i)));
  if (i < n) {
    __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
    _mm256_mask_storeu_epi16(
        dst + i, m, bf16_round16(_mm512_maskz_loadu_epi32(m, src + i)));
  }
}

MN__T_AVX512 static inline __m512i bf16_widen16(__m256i h) {
  __m512i u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
  __mmask16 nan = _mm512_cmpgt_epi32_mask(
      _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
      _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_or_epi32(u, nan, u, _mm512_set1_epi32(0x400000));
}

MN__T_AVX512 static void bf16_to_f32_avx512(const uint16_t *src, float *dst,
                                            size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_si512(
        dst + i, bf16_widen16(_mm256_loadu_si256((const __m256i *)(src + i))));
  if (i < n) {
    __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
    _mm512_mask_storeu_epi32(
        dst + i, m, bf16_widen16(_mm256_maskz_loadu_epi16(m, src + i)));
  }
}

/* ---------------------------------------------------------------------------
 * Dispatch
 * ------------------------------------------------------------------------- */
static int hw_level = -1;     /* what the CPU supports */
static int level_cached = -1; /* what is used: hw capped by env and tests */

static int detect_hw(void) {
  __builtin_cpu_init();
  int lvl = MN__HALF_SCALAR;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c"))
    lvl = MN__HALF_AVX2;
  if (lvl == MN__HALF_AVX2 && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    lvl = MN__HALF_AVX512;
  return lvl;
}

static int hw(void) {
  int h = __atomic_load_n(&hw_level, __ATOMIC_RELAXED);
  if (h < 0) {
    h = detect_hw();
    __atomic_store_n(&hw_level, h, __ATOMIC_RELAXED);
  }
  return h;
}

int mn__half_level(void) {
  int lvl = __atomic_load_n(&level_cached, __ATOMIC_RELAXED);
  if (lvl >= 0)
    return lvl;
  lvl = hw();
  static const char *const names[] = {"scalar", "avx2", "avx512"};
  const char *cap = getenv("MNEMO_CPU_LEVEL");
  if (cap)
    for (int i = 0; i <= MN__HALF_AVX512; i++)
      if (strcmp(cap, names[i]) == 0 && i < lvl)
        lvl = i;
  __atomic_store_n(&level_cached, lvl, __ATOMIC_RELAXED);
  return lvl;
}

int mn__half_level_cap(int cap) {
  int lvl = cap < hw() ? cap : hw();
  if (lvl < 0)
    lvl = 0;
  __atomic_store_n(&level_cached, lvl, __ATOMIC_RELAXED);
  return lvl;
}

/* A requested level never exceeds what the CPU can run. */
static inline int usable(int level) {
  int h = hw();
  return level < h ? level : h;
}

void mn__f32_to_f16_lvl(int level, const float *src, uint16_t *dst, size_t n) {
  switch (usable(level)) {
  case MN__HALF_AVX512:
    f32_to_f16_avx512(src, dst, n);
    break;
  case MN__HALF_AVX2:
    f32_to_f16_avx2(src, dst, n);
    break;
  default:
    f32_to_f16_c(src, dst, n);
  }
}

void mn__f16_to_f32_lvl(int level, const uint16_t *src, float *dst, size_t n) {
  switch (usable(level)) {
  case MN__HALF_AVX512:
    f16_to_f32_avx512(src, dst, n);
    break;
  case MN__HALF_AVX2:
    f16_to_f32_avx2(src, dst, n);
    break;
  default:
    f16_to_f32_c(src, dst, n);
  }
}

void mn__f32_to_bf16_lvl(int level, const float *src, uint16_t *dst, size_t n) {
  switch (usable(level)) {
  case MN__HALF_AVX512:
    f32_to_bf16_avx512(src, dst, n);
    break;
  case MN__HALF_AVX2:
    f32_to_bf16_avx2(src, dst, n);
    break;
  default:
    f32_to_bf16_c(src, dst, n);
  }
}

void mn__bf16_to_f32_lvl(int level, const uint16_t *src, float *dst, size_t n) {
  switch (usable(level)) {
  case MN__HALF_AVX512:
    bf16_to_f32_avx512(src, dst, n);
    break;
  case MN__HALF_AVX2:
    bf16_to_f32_avx2(src, dst, n);
    break;
  default:
    bf16_to_f32_c(src, dst, n);
  }
}

void mn_f32_to_f16_n(const float *src, uint16_t *dst, size_t n) {
  mn__f32_to_f16_lvl(mn__half_level(), src, dst, n);
}

void mn_f16_to_f32_n(const uint16_t *src, float *dst, size_t n) {
  mn__f16_to_f32_lvl(mn__half_level(), src, dst, n);
}

void mn_f32_to_bf16_n(const float *src, uint16_t *dst, size_t n) {
  mn__f32_to_bf16_lvl(mn__half_level(), src, dst, n);
}

void mn_bf16_to_f32_n(const uint16_t *src, float *dst, size_t n) {
  mn__bf16_to_f32_lvl(mn__half_level(), src, dst, n);
}
