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

/*
 * Check one lane (16 bits of each mask, from the lane's first byte) and
 * work out where its digits go. Returns 0 when number_fast would not take
 * exactly this span. *param gets len | skip << 8 | nd << 16: the span's
 * length, the count of digits right of the '.' (16 when there is none:
 * nothing to skip) and the count of digits; *frac the power of ten to
 * divide by; *neg the sign.
 */
static inline int lane_check(unsigned len, unsigned dig, unsigned dot,
                             unsigned minus, unsigned zero, uint32_t *param,
                             int *frac, int *neg) {
  if (len == 0 || len > 16)
    return 0;
  unsigned valid = (1u << len) - 1;
  unsigned s = minus & 1;
  unsigned body = valid & ~s;
  dot &= body;
  if (((dig | dot) & body) != body || (dot & (dot - 1)))
    return 0;
  unsigned nd = len - s - (dot != 0);
  if (nd < 1 || nd > 15)
    return 0;
  unsigned skip = 16;
  *frac = 0;
  if (dot) {
    unsigned d = (unsigned)__builtin_ctz(dot);
    if (d <= s || d + 1 >= len)
      return 0; /* no digit before or after the '.' */
    skip = len - 1 - d;
    *frac = (int)skip;
  }
  /* A leading zero stands alone before the '.' or the end. */
  if (((zero >> s) & 1) && ((dig & valid) >> (s + 1) & 1))
    return 0;
  *neg = (int)s;
  *param = len | skip << 8 | nd << 16;
  return 1;
}

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
  size_t done = 0;
  while (done < n) {
    size_t cnt = n - done < 8 ? n - done : 8;
    /* Lanes: numbers 0, 2, 4, 6 in A and 1, 3, 5, 7 in B, so that the
     * last step's unpack puts the values back in order. */
    __m128i q[8];
    unsigned len[8];
    for (size_t i = 0; i < 8; i++) {
      if (i < cnt) {
        const char *s = start[done + i];
        size_t l = (size_t)(end[done + i] - s);
        len[i] = l > 16 ? 0 : (unsigned)l;
        q[i] = _mm_loadu_si128((const __m128i *)(const void *)s);
      } else {
        len[i] = 1;
        q[i] = _mm_loadu_si128((const __m128i *)(const void *)filler);
      }
    }
    __m512i raw[2];
    for (int h = 0; h < 2; h++) {
      __m512i v = _mm512_castsi128_si512(q[h]);
      v = _mm512_inserti32x4(v, q[2 + h], 1);
      v = _mm512_inserti32x4(v, q[4 + h], 2);
      raw[h] = _mm512_inserti32x4(v, q[6 + h], 3);
    }
    uint32_t param[8];
    int frac[8], neg[8];
    unsigned ok = 0;
    for (int h = 0; h < 2; h++) {
      __m512i v = raw[h];
      uint64_t dig = _mm512_cmplt_epu8_mask(_mm512_sub_epi8(v, c0), ten);
      uint64_t dot = _mm512_cmpeq_epi8_mask(v, dotc);
      uint64_t mi = _mm512_cmpeq_epi8_mask(v, minus);
      uint64_t ze = _mm512_cmpeq_epi8_mask(v, c0);
      for (int l = 0; l < 4; l++) {
        int i = 2 * l + h;
        unsigned sh = 16u * (unsigned)l;
        param[i] = 0;
        if (lane_check(
                len[i], (unsigned)(dig >> sh) & 0xffff,
                (unsigned)(dot >> sh) & 0xffff, (unsigned)(mi >> sh) & 0xffff,
                (unsigned)(ze >> sh) & 0xffff, &param[i], &frac[i], &neg[i]))
          ok |= 1u << i;
        else
          param[i] = 1 | 16u << 8 | 1u << 16, frac[i] = 0, neg[i] = 0;
      }
    }
    /* How many, from the first, this batch converts. */
    unsigned take = (unsigned)__builtin_ctz(~ok);
    if (take > cnt)
      take = (unsigned)cnt;
    if (take == 0)
      return done;

    __m512i val[2];
    for (int h = 0; h < 2; h++) {
      /* len, skip, nd broadcast over each lane's bytes. */
      __m512i pr = _mm512_setr_epi32((int)param[h], 0, 0, 0, (int)param[2 + h],
                                     0, 0, 0, (int)param[4 + h], 0, 0, 0,
                                     (int)param[6 + h], 0, 0, 0);
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
      __m512i d = _mm512_subs_epu8(_mm512_shuffle_epi8(raw[h], idx), c0);
      /* Two, four, eight digits at a time: per lane g0 * 10^8 + g1, where
       * g0, g1 hold the top and bottom eight. */
      __m512i t2 = _mm512_maddubs_epi16(d, w_10_1);
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
    __m512i fi = _mm512_setr_epi64(frac[0], frac[1], frac[2], frac[3], frac[4],
                                   frac[5], frac[6], frac[7]);
    __m512d div = _mm512_permutex2var_pd(p10lo, fi, p10hi);
    __m512d r = _mm512_div_pd(md, div);
    __mmask8 negm = 0;
    for (int i = 0; i < 8; i++)
      negm |= (__mmask8)((neg[i] & 1) << i);
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
