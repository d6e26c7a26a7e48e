/*
 * json_avx512.c - the numbers of a JSON array, 8 at a time with AVX-512:
 * the values json.c's number_fast and its deferred division give, bit for
 * bit.
 *
 * json.c finds where each number of a run ends (its separators, 64 bytes
 * at a time) and hands the spans here. Each number of at most 16 bytes is
 * loaded into one 128-bit lane; its digits are checked against the form
 * number_fast takes, -?(0|[1-9][0-9]*)(\.[0-9]+)? with at most 15 digits
 * (so the integer they make is below 2^53 and exact as a double), then
 * moved to the right end of the lane without the '.', and made into an
 * integer m two, four and eight digits at a time. The value is m / 10^f
 * (f the digits after the '.'): the same correctly rounded division json.c
 * makes, here on 8 numbers at once, and the sign goes on last, as there.
 * The checks themselves run on 8 numbers at once too: each number's byte
 * classes (digit, '.', '-', '0') become one 16-bit mask in a 32-bit field.
 * A span this code does not take (longer, an exponent, a space, anything
 * else) ends the batch; json.c reads it its own way and calls again.
 *
 * Compiled for AVX-512 (the _avx512.c rule in CMakeLists.txt); json.c
 * calls it only where the CPU has those extensions.
 */
#include "rpc/rpc_internal.h"

#include <immintrin.h>
#include <string.h>

/* 10^0 .. 10^15, all exact as doubles. */
static const double p10[16] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                               1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};

/* Sixteen readable bytes standing for an unused lane. */
static const char filler[16] = "0";

size_t mn__json_nums_avx512(const char *const *start, const char *const *end,
                            size_t n, double *out) {
  const __m512i c0 = _mm512_set1_epi8('0');
  const __m512i ten = _mm512_set1_epi8(10);
  const __m512i dotc = _mm512_set1_epi8('.');
  const __m512i minus = _mm512_set1_epi8('-');
  /* Byte j of each lane: j, and 15 - j (the digit's place from the right). */
  const __m512i J = _mm512_broadcast_i32x4(
      _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const __m512i K = _mm512_sub_epi8(_mm512_set1_epi8(15), J);
  const __m512i b0 = _mm512_setzero_si512();
  const __m512i b1 = _mm512_set1_epi32(0x01010101);
  const __m512i b2 = _mm512_set1_epi32(0x02020202);
  const __m512i w_10_1 = _mm512_set1_epi16(0x010a);      /* bytes 10, 1 */
  const __m512i w_100_1 = _mm512_set1_epi32(0x00010064); /* 100, 1 */
  const __m512i w_1e4_1 = _mm512_set1_epi32(0x00012710); /* 10000, 1 */
  const __m512d p10lo = _mm512_loadu_pd(p10), p10hi = _mm512_loadu_pd(p10 + 8);
  /* Lanes hold numbers 0, 2, 4, 6 (A) and 1, 3, 5, 7 (B), so that the
   * last step's unpack puts the values back in order; the per-number
   * checks work on 32-bit fields in that order, "field order". */
  const __m512i to_fields = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
  const __m256i to_numbers = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m512i lanes_a =
      _mm512_setr_epi32(0, 8, 8, 8, 1, 8, 8, 8, 2, 8, 8, 8, 3, 8, 8, 8);
  const __m512i lanes_b =
      _mm512_setr_epi32(4, 8, 8, 8, 5, 8, 8, 8, 6, 8, 8, 8, 7, 8, 8, 8);
  const __m256i one = _mm256_set1_epi32(1);
  const __m512i fill_s = _mm512_set1_epi64((long long)(uintptr_t)filler);
  const __m512i fill_e = _mm512_set1_epi64((long long)(uintptr_t)(filler + 1));
  size_t done = 0;
  while (done < n) {
    size_t cnt = n - done < 8 ? n - done : 8;
    __mmask8 live = (__mmask8)((1u << cnt) - 1);
    /* Unused lanes read the filler, a "0". */
    __m512i sp = _mm512_mask_loadu_epi64(fill_s, live, start + done);
    __m512i ep = _mm512_mask_loadu_epi64(fill_e, live, end + done);
    uint64_t spv[8] __attribute__((aligned(64)));
    _mm512_store_si512(spv, sp);
    __m512i raw[2];
    for (int h = 0; h < 2; h++) {
      const __m128i *q0 = (const __m128i *)(uintptr_t)spv[h];
      __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(q0));
      v = _mm512_inserti32x4(
          v, _mm_loadu_si128((const __m128i *)(uintptr_t)spv[2 + h]), 1);
      v = _mm512_inserti32x4(
          v, _mm_loadu_si128((const __m128i *)(uintptr_t)spv[4 + h]), 2);
      raw[h] = _mm512_inserti32x4(
          v, _mm_loadu_si128((const __m128i *)(uintptr_t)spv[6 + h]), 3);
    }
    /* Per byte: digit, '.', '-', '0'; 16 bits per number, two numbers'
     * worth of masks side by side in 64 bits, then one number per 32-bit
     * field. */
    __m256i dig = _mm256_cvtepu16_epi32(_mm_set_epi64x(
        (long long)_mm512_cmplt_epu8_mask(_mm512_sub_epi8(raw[1], c0), ten),
        (long long)_mm512_cmplt_epu8_mask(_mm512_sub_epi8(raw[0], c0), ten)));
    __m256i dot = _mm256_cvtepu16_epi32(
        _mm_set_epi64x((long long)_mm512_cmpeq_epi8_mask(raw[1], dotc),
                       (long long)_mm512_cmpeq_epi8_mask(raw[0], dotc)));
    __m256i mi = _mm256_cvtepu16_epi32(
        _mm_set_epi64x((long long)_mm512_cmpeq_epi8_mask(raw[1], minus),
                       (long long)_mm512_cmpeq_epi8_mask(raw[0], minus)));
    __m256i ze = _mm256_cvtepu16_epi32(
        _mm_set_epi64x((long long)_mm512_cmpeq_epi8_mask(raw[1], c0),
                       (long long)_mm512_cmpeq_epi8_mask(raw[0], c0)));
    __m256i len = _mm512_cvtusepi64_epi32(
        _mm512_permutexvar_epi64(to_fields, _mm512_sub_epi64(ep, sp)));
    /* The checks of lane_check, on 8 numbers at once. */
    __m256i valid = _mm256_sub_epi32(_mm256_sllv_epi32(one, len), one);
    __m256i s = _mm256_and_si256(_mm256_and_si256(mi, valid), one);
    __m256i body = _mm256_andnot_si256(s, valid);
    __m256i bad = _mm256_andnot_si256(_mm256_or_si256(dig, dot), body);
    __m256i dotb = _mm256_and_si256(dot, body);
    __m256i multi = _mm256_and_si256(dotb, _mm256_sub_epi32(dotb, one));
    __mmask8 hasdot = _mm256_test_epi32_mask(dotb, dotb);
    /* The '.''s place: the exponent of its bit as a float. */
    __m256i d = _mm256_sub_epi32(
        _mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(dotb)), 23),
        _mm256_set1_epi32(127));
    __m256i nd = _mm256_sub_epi32(_mm256_sub_epi32(len, s),
                                  _mm256_maskz_mov_epi32(hasdot, one));
    __m256i after = _mm256_sub_epi32(_mm256_sub_epi32(len, one), d);
    __m256i skip = _mm256_mask_mov_epi32(_mm256_set1_epi32(16), hasdot, after);
    __m256i frac = _mm256_maskz_mov_epi32(hasdot, after);
    /* A leading zero followed by a digit. */
    __m256i lead =
        _mm256_and_si256(_mm256_srlv_epi32(ze, s),
                         _mm256_srlv_epi32(_mm256_and_si256(dig, valid),
                                           _mm256_add_epi32(s, one)));
    __mmask8 ok =
        _mm256_cmpge_epu32_mask(len, one) &
        _mm256_cmple_epu32_mask(len, _mm256_set1_epi32(16)) &
        _mm256_testn_epi32_mask(bad, bad) &
        _mm256_testn_epi32_mask(multi, multi) &
        _mm256_cmpge_epi32_mask(nd, one) &
        _mm256_cmple_epi32_mask(nd, _mm256_set1_epi32(15)) &
        _mm256_testn_epi32_mask(lead, one) &
        (__mmask8)(~hasdot |
                   (_mm256_cmpgt_epi32_mask(d, s) &
                    _mm256_cmplt_epi32_mask(_mm256_add_epi32(d, one), len)));
    /* Field order back to number order: fields 0..3 are numbers 0, 2, 4,
     * 6 and fields 4..7 numbers 1, 3, 5, 7. */
    unsigned okn = _pdep_u32(ok & 0xfu, 0x55u) | _pdep_u32(ok >> 4, 0xaau);
    unsigned take = (unsigned)__builtin_ctz(~okn);
    if (take > cnt)
      take = (unsigned)cnt;
    if (take == 0)
      return done;

    /* len, skip, nd as the bytes of one 32-bit word per number, broadcast
     * over that number's lane. */
    __m512i param = _mm512_castsi256_si512(
        _mm256_or_si256(_mm256_or_si256(len, _mm256_slli_epi32(skip, 8)),
                        _mm256_slli_epi32(nd, 16)));
    __m512i val[2];
    for (int h = 0; h < 2; h++) {
      __m512i pr = _mm512_permutexvar_epi32(h ? lanes_b : lanes_a, param);
      __m512i L = _mm512_shuffle_epi8(pr, b0);
      __m512i S = _mm512_shuffle_epi8(pr, b1);
      __m512i N = _mm512_shuffle_epi8(pr, b2);
      /* The k-th digit from the right (k = 15 - j) comes from byte
       * len - 1 - k, one further left once past the '.'. */
      __m512i idx =
          _mm512_sub_epi8(_mm512_add_epi8(L, J), _mm512_set1_epi8(16));
      idx = _mm512_mask_sub_epi8(idx, _mm512_cmpge_epu8_mask(K, S), idx,
                                 _mm512_set1_epi8(1));
      idx = _mm512_mask_mov_epi8(idx, _mm512_cmpge_epu8_mask(K, N),
                                 _mm512_set1_epi8((char)0x80));
      __m512i dd = _mm512_subs_epu8(_mm512_shuffle_epi8(raw[h], idx), c0);
      /* Two, four, eight digits at a time: per lane g0 * 10^8 + g1, where
       * g0, g1 hold the top and bottom eight. */
      __m512i t2 = _mm512_maddubs_epi16(dd, w_10_1);
      __m512i t4 = _mm512_madd_epi16(t2, w_100_1);
      __m512i t4p = _mm512_packus_epi32(t4, t4);
      val[h] = _mm512_madd_epi16(t4p, w_1e4_1);
    }
    /* 64-bit element 0 of each lane of val[h] holds g0 (low half) and g1
     * (high half); unpacking A and B gives the 8 in order. */
    __m512i g = _mm512_unpacklo_epi64(val[0], val[1]);
    __m512i m =
        _mm512_add_epi64(_mm512_mul_epu32(g, _mm512_set1_epi64(100000000)),
                         _mm512_srli_epi64(g, 32));
    __m512d md = _mm512_cvtepu64_pd(m);
    __m512i fi =
        _mm512_cvtepu32_epi64(_mm256_permutevar8x32_epi32(frac, to_numbers));
    __m512d r = _mm512_div_pd(md, _mm512_permutex2var_pd(p10lo, fi, p10hi));
    __mmask8 sf = _mm256_test_epi32_mask(s, s);
    __mmask8 negm =
        (__mmask8)(_pdep_u32(sf & 0xfu, 0x55u) | _pdep_u32(sf >> 4, 0xaau));
    /* The sign bit flipped, as -d does (0 becomes -0). */
    r = _mm512_castsi512_pd(_mm512_mask_xor_epi64(
        _mm512_castpd_si512(r), negm, _mm512_castpd_si512(r),
        _mm512_set1_epi64((long long)0x8000000000000000ull)));
    _mm512_mask_storeu_pd(out + done, (__mmask8)((1u << take) - 1), r);
    done += take;
    if (take < cnt)
      return done;
  }
  return done;
}
