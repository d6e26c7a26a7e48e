/*
 * fmt_avx512.c - a list of float32 as JSON numbers, 8 at a time with
 * AVX-512: the text mn__fmt_f32 (json.c) writes, byte for byte.
 *
 * A JSON reply of embeddings is tens of thousands of numbers, and one at
 * a time each is a long chain of dependent steps (scale, bound, count the
 * trailing zeros, round, make digits) that leaves the CPU mostly waiting.
 * Here the steps run on 8 numbers at once, in the same double arithmetic
 * as json.c, so every intermediate value is the same: the powers of ten
 * come from the same table, products are kept from fusing into FMAs, and
 * divisions by powers of ten are exact (multiplications by reciprocals
 * proven for the ranges they see). The text is then laid out one number
 * at a time by fmt_f32.h. Numbers the vector path does not take (zero,
 * subnormals, the largest float, Inf and NaN, and the cases json.c itself
 * treats apart) go through mn__fmt_f32.
 *
 * Compiled for AVX-512 (the _avx512.c rule in CMakeLists.txt); json.c
 * calls it only where the CPU has those extensions.
 */
#include "rpc/fmt_f32.h"
#include "rpc/rpc_internal.h"

#include <immintrin.h>

/* The product as it is: never fused with the addition that follows. */
static inline __m512d fence_pd(__m512d v) {
  __asm__("" : "+v"(v));
  return v;
}

/* floor(x / 10) for x < 2^32 in 64-bit lanes: 0xCCCCCCCD / 2^35 is 1/10
 * closely enough for every 32-bit x. */
static inline __m512i div10(__m512i x) {
  return _mm512_srli_epi64(_mm512_mul_epu32(x, _mm512_set1_epi64(0xCCCCCCCDll)),
                           35);
}

size_t mn__fmt_f32_list_avx512(char *out, const float *x, size_t n) {
  const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
  const __m256i one32 = _mm256_set1_epi32(1);
  const __m512i one64 = _mm512_set1_epi64(1);
  const __m512d half = _mm512_set1_pd(0.5);
  const __m512d eps = _mm512_set1_pd(1e-5);
  /* 10^0..10^15 (of which 10^(10 - n), n = 1..10, are looked up). */
  const __m512i pw_lo = _mm512_loadu_si512(mn__pow10_u64);
  const __m512i pw_hi = _mm512_loadu_si512(mn__pow10_u64 + 8);
  const double *p10 = mn__p10_tab + 60; /* p10[k] = 10^k */
  /* The same powers held in registers, for batches whose exponents all
   * lie in a window (embeddings mostly do): permutes instead of gathers,
   * which are slow on some CPUs. t_e: 10^-13..10^2, looked up by
   * e10 + 13 (e10 in [-13, 0]) and e10 + 14; t_k: 10^7..10^22, by
   * 1 - e10 once corrected (then in [-14, 1]); t_j: 10^-15..10^0, by
   * 15 - j. */
  const __m512d te_lo = _mm512_loadu_pd(p10 - 13),
                te_hi = _mm512_loadu_pd(p10 - 5);
  const __m512d tk_lo = _mm512_loadu_pd(p10 + 7),
                tk_hi = _mm512_loadu_pd(p10 + 15);
  const __m512d tj_lo = _mm512_loadu_pd(p10 - 15),
                tj_hi = _mm512_loadu_pd(p10 - 7);
  char *o = out;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i bits = _mm256_loadu_si256((const __m256i *)(const void *)(x + i));
    __m256i mag = _mm256_and_si256(bits, absmask);
    /* Zero, subnormals, the largest float (its upper bound is taken
     * differently), Inf and NaN: one at a time. */
    __mmask8 apart =
        _mm256_cmplt_epu32_mask(mag, _mm256_set1_epi32(0x00800000)) |
        _mm256_cmpge_epu32_mask(mag, _mm256_set1_epi32(0x7f7fffff));
    __mmask8 negs = _mm256_cmplt_epi32_mask(bits, _mm256_setzero_si256());
    __m512d v = _mm512_cvtps_pd(_mm256_castsi256_ps(mag));
    __m512d up =
        _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_add_epi32(mag, one32)));
    __m512d dn =
        _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_sub_epi32(mag, one32)));
    __m512d hi = _mm512_mul_pd(_mm512_add_pd(v, up), half);
    __m512d lo = _mm512_mul_pd(_mm512_add_pd(v, dn), half);
    /* Decimal exponent from the binary one, then corrected. */
    __m256i e2 =
        _mm256_sub_epi32(_mm256_srli_epi32(mag, 23), _mm256_set1_epi32(127));
    __m256i e10 =
        _mm256_srai_epi32(_mm256_mullo_epi32(e2, _mm256_set1_epi32(78913)), 18);
    /* Every number taken here has e10 in [-13, 0]: the registers. */
    __m256i ei = _mm256_add_epi32(e10, _mm256_set1_epi32(13));
    int window = (_mm256_cmpgt_epu32_mask(ei, _mm256_set1_epi32(13)) &
                  (__mmask8)~apart) == 0;
    __m512d plo, phi, sc;
    if (window) {
      __m512i eq = _mm512_cvtepu32_epi64(ei);
      plo = _mm512_permutex2var_pd(te_lo, eq, te_hi);
      phi = _mm512_permutex2var_pd(
          te_lo, _mm512_add_epi64(eq, _mm512_set1_epi64(1)), te_hi);
    } else {
      plo = _mm512_i32gather_pd(e10, p10, 8);
      phi = _mm512_i32gather_pd(_mm256_add_epi32(e10, one32), p10, 8);
    }
    __mmask8 inc = _mm512_cmp_pd_mask(v, phi, _CMP_GE_OQ);
    __mmask8 dec = _mm512_cmp_pd_mask(v, plo, _CMP_LT_OQ);
    e10 = _mm256_mask_add_epi32(e10, inc, e10, one32);
    e10 = _mm256_mask_sub_epi32(e10, dec, e10, one32);
    __m256i k = _mm256_sub_epi32(_mm256_set1_epi32(8), e10);
    if (window)
      sc = _mm512_permutex2var_pd(
          tk_lo, _mm512_cvtepi32_epi64(_mm256_sub_epi32(one32, e10)), tk_hi);
    else
      sc = _mm512_i32gather_pd(k, p10, 8);
    __m512d vs = _mm512_mul_pd(v, sc);
    __m512d los = _mm512_add_pd(fence_pd(_mm512_mul_pd(lo, sc)), eps);
    __m512d his = _mm512_sub_pd(fence_pd(_mm512_mul_pd(hi, sc)), eps);
    /* Integers strictly inside. */
    __m256i L = _mm256_add_epi32(_mm512_cvttpd_epu32(los), one32);
    __m256i H = _mm512_cvttpd_epu32(his);
    __mmask8 exact = _mm512_cmp_pd_mask(_mm512_cvtepu32_pd(H), his, _CMP_EQ_OQ);
    H = _mm256_mask_sub_epi32(H, exact, H, one32);
    apart |= _mm256_cmpgt_epu32_mask(L, H);
    /* The most trailing zeros: strip digits off H and L - 1 while they
     * still differ above them, at most 9. */
    __m512i hq = _mm512_cvtepu32_epi64(H);
    __m512i lq = _mm512_cvtepu32_epi64(_mm256_sub_epi32(L, one32));
    __m512i j = _mm512_setzero_si512();
    __mmask8 go = 0xff;
    for (int t = 0; t < 9 && go; t++) {
      __m512i hn = div10(hq), ln = div10(lq);
      go &= _mm512_cmpneq_epu64_mask(hn, ln);
      hq = _mm512_mask_mov_epi64(hq, go, hn);
      lq = _mm512_mask_mov_epi64(lq, go, ln);
      j = _mm512_mask_add_epi64(j, go, j, one64);
    }
    /* The nearest decimal with that many zeros, kept inside. */
    __m512d pj = _mm512_permutex2var_pd(
        tj_lo, _mm512_sub_epi64(_mm512_set1_epi64(15), j), tj_hi);
    __m512i m = _mm512_cvttpd_epu64(
        _mm512_add_pd(fence_pd(_mm512_mul_pd(vs, pj)), half));
    m = _mm512_max_epu64(m, _mm512_add_epi64(lq, one64));
    m = _mm512_min_epu64(m, hq);
    /* json.c strips trailing zeros of m here; with j the most there are
     * none, but should one appear it goes the scalar way. */
    __m512i m_10 = div10(m);
    apart |= _mm512_cmpeq_epu64_mask(
        m, _mm512_mullo_epi64(m_10, _mm512_set1_epi64(10)));
    /* Digits of m: n of them; m * 10^(10 - n) spells them first. */
    __m512i nd = one64;
    for (int t = 1; t <= 9; t++)
      nd = _mm512_mask_add_epi64(
          nd,
          _mm512_cmpge_epu64_mask(
              m, _mm512_set1_epi64((long long)mn__pow10_u64[t])),
          nd, one64);
    __m512i pad = _mm512_permutex2var_epi64(
        pw_lo, _mm512_sub_epi64(_mm512_set1_epi64(10), nd), pw_hi);
    __m512i m10 = _mm512_mullo_epi64(m, pad); /* < 10^10 */
    /* top = m10 / 10^8 (< 100), through doubles and one correction. */
    __m512d m10d = _mm512_cvtepu64_pd(m10);
    __m512i top =
        _mm512_cvttpd_epu64(_mm512_mul_pd(m10d, _mm512_set1_pd(1e-8)));
    __m512i e8 = _mm512_set1_epi64(100000000);
    __m512i low = _mm512_sub_epi64(m10, _mm512_mul_epu32(top, e8));
    __mmask8 neg_low = _mm512_cmplt_epi64_mask(low, _mm512_setzero_si512());
    top = _mm512_mask_sub_epi64(top, neg_low, top, one64);
    low = _mm512_mask_add_epi64(low, neg_low, low, e8);
    __mmask8 big_low = _mm512_cmpge_epi64_mask(low, e8);
    top = _mm512_mask_add_epi64(top, big_low, top, one64);
    low = _mm512_mask_sub_epi64(low, big_low, low, e8);
    /* Eight digits of low as in mn__fmt_digits8. */
    __m512i a4 = _mm512_srli_epi64(
        _mm512_mul_epu32(low, _mm512_set1_epi64(109951163)), 40);
    __m512i b4 =
        _mm512_sub_epi64(low, _mm512_mul_epu32(a4, _mm512_set1_epi64(10000)));
    __m512i xx = _mm512_or_si512(a4, _mm512_slli_epi64(b4, 32));
    __m512i y = _mm512_and_si512(
        _mm512_srli_epi64(_mm512_mullo_epi64(xx, _mm512_set1_epi64(10486)), 20),
        _mm512_set1_epi64(0x0000007f0000007fll));
    __m512i h = _mm512_or_si512(
        y,
        _mm512_slli_epi64(
            _mm512_sub_epi64(xx, _mm512_mullo_epi64(y, _mm512_set1_epi64(100))),
            16));
    __m512i tt = _mm512_and_si512(
        _mm512_srli_epi64(_mm512_mullo_epi64(h, _mm512_set1_epi64(103)), 10),
        _mm512_set1_epi64(0x000f000f000f000fll));
    __m512i u = _mm512_or_si512(
        _mm512_or_si512(
            tt, _mm512_slli_epi64(
                    _mm512_sub_epi64(
                        h, _mm512_mullo_epi64(tt, _mm512_set1_epi64(10))),
                    8)),
        _mm512_set1_epi64(0x3030303030303030ll));
    /* The first two digits, from top (< 100). */
    __m512i t10 =
        _mm512_srli_epi64(_mm512_mul_epu32(top, _mm512_set1_epi64(205)), 11);
    __m512i t1 =
        _mm512_sub_epi64(top, _mm512_mul_epu32(t10, _mm512_set1_epi64(10)));
    __m512i zero_c = _mm512_set1_epi64('0');
    __m512i head =
        _mm512_or_si512(_mm512_add_epi64(t10, zero_c),
                        _mm512_slli_epi64(_mm512_add_epi64(t1, zero_c), 8));
    __m512i dlo = _mm512_or_si512(head, _mm512_slli_epi64(u, 16));
    __m512i dhi = _mm512_or_si512(_mm512_srli_epi64(u, 48),
                                  _mm512_set1_epi64(0x3030303030300000ll));
    __m256i q = _mm256_sub_epi32(_mm512_cvtepi64_epi32(j), k);

    uint64_t DL[8] __attribute__((aligned(64)));
    uint64_t DH[8] __attribute__((aligned(64)));
    int64_t N[8] __attribute__((aligned(64)));
    int32_t Q[8] __attribute__((aligned(32)));
    _mm512_store_si512(DL, dlo);
    _mm512_store_si512(DH, dhi);
    _mm512_store_si512(N, nd);
    _mm256_store_si256((__m256i *)(void *)Q, q);
    for (int l = 0; l < 8; l++) {
      if (i + (size_t)l)
        *o++ = ',';
      if ((apart >> l) & 1)
        o += mn__fmt_f32(o, x[i + (size_t)l]);
      else
        o += mn__fmt_layout(o, (negs >> l) & 1, (int)N[l], Q[l],
                            (mn__u128)DL[l] | (mn__u128)DH[l] << 64);
    }
  }
  for (; i < n; i++) {
    if (i)
      *o++ = ',';
    o += mn__fmt_f32(o, x[i]);
  }
  return (size_t)(o - out);
}
