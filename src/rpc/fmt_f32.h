/*
 * fmt_f32.h - the parts of the shortest float32 formatter that the scalar
 * code (json.c, mn__fmt_f32) and the AVX-512 code (fmt_avx512.c, a list
 * of numbers at once) share, so that both write the same text: the table
 * of powers of ten, the digits of the decimal and its layout (json.c also
 * reads numbers with the integer powers).
 *
 * Both find, for a float, the decimal m * 10^q with the fewest significant
 * digits n that reads back as it (json.c says how); these functions turn
 * that into text the way JavaScript prints numbers.
 */
#ifndef MNEMO_RPC_FMT_F32_H
#define MNEMO_RPC_FMT_F32_H

#include <stdint.h>
#include <string.h>

typedef unsigned __int128 mn__u128;

/** 10^k for k in [-60, 60] at [k + 60]: exact for 0..22, correctly
 *  rounded elsewhere (json.c). */
extern const double mn__p10_tab[121];

/* 10^k for k in [0, 19], every power a uint64_t holds. Here, not extern,
 * so that a constant index folds to its value. */
static const uint64_t mn__pow10_u64[20] = {1ull,
                                           10ull,
                                           100ull,
                                           1000ull,
                                           10000ull,
                                           100000ull,
                                           1000000ull,
                                           10000000ull,
                                           100000000ull,
                                           1000000000ull,
                                           10000000000ull,
                                           100000000000ull,
                                           1000000000000ull,
                                           10000000000000ull,
                                           100000000000000ull,
                                           1000000000000000ull,
                                           10000000000000000ull,
                                           100000000000000000ull,
                                           1000000000000000000ull,
                                           10000000000000000000ull};

/* Sixteen '0' characters as one little-endian 16-byte word. */
#define MN__ZEROS16                                                            \
  (((mn__u128)0x3030303030303030ull << 64) | 0x3030303030303030ull)

/* The text of w from byte i on (i < 16), '0' filling the end. Two shifts,
 * so that i = 0 shifts the fill by 128 without undefined behaviour. */
static inline mn__u128 mn__fmt_text_from(mn__u128 w, int i) {
  unsigned sh = 8u * (unsigned)i;
  return (w >> sh) | ((MN__ZEROS16 << (127u - sh)) << 1);
}

/* The eight decimal digits of low (< 10^8), zero-padded, as ASCII in one
 * little-endian word: 4 + 4 digits, then 2 + 2 in each half, then 1 + 1
 * in each quarter, each step a multiply by a reciprocal exact for the
 * range it sees. */
static inline uint64_t mn__fmt_digits8(uint32_t low) {
  uint64_t x = (uint64_t)(low / 10000u) | (uint64_t)(low % 10000u) << 32;
  uint64_t y = ((x * 10486u) >> 20) & 0x0000007f0000007full; /* x / 100 */
  uint64_t h = y | (x - y * 100u) << 16;
  uint64_t t = ((h * 103u) >> 10) & 0x000f000f000f000full; /* h / 10 */
  return (t | (h - t * 10u) << 8) | 0x3030303030303030ull;
}

/* The 10 decimal digits of top * 10^8 + low (top < 100), zero-padded, as
 * the first 10 bytes of a 16-byte word, '0' after them. The text is built
 * in registers and stored whole by the layout: loading 16 bytes just
 * stored in smaller pieces would stall on store forwarding. */
static inline mn__u128 mn__fmt_digits10(uint32_t top, uint64_t low8) {
  uint64_t head = (uint64_t)('0' + top / 10u) | (uint64_t)('0' + top % 10u)
                                                    << 8;
  return (mn__u128)head | (mn__u128)low8 << 16 |
         (mn__u128)0x303030303030ull << 80;
}

/* The exponent part of d.ddde+-x, "e+x" or "e-x" (|x| < 1000), at o + k;
 * returns the length there after it (k + 3 to k + 5). */
static inline size_t mn__fmt_exp(char *o, size_t k, int x) {
  o[k++] = 'e';
  o[k++] = x < 0 ? '-' : '+';
  int ax = x < 0 ? -x : x;
  if (ax >= 100)
    o[k++] = (char)('0' + ax / 100);
  if (ax >= 10)
    o[k++] = (char)('0' + (ax / 10) % 10);
  o[k++] = (char)('0' + ax % 10);
  return k;
}

/*
 * Write (neg ? -1 : 1) * m * 10^q, where m has n digits (n <= 10, no
 * trailing zero) and d is the text of m * 10^(10 - n), m's digits then
 * '0's (mn__fmt_digits10): plain for
 * decimal exponents in [-6, 16), otherwise d.ddde+-x, so that a big
 * integral value never looks like an integer too large for int64 parsers.
 * Returns the length (at most 24); writes up to 32 bytes at out, in
 * fixed-size pieces.
 */
static inline size_t mn__fmt_layout(char *out, int neg, int n, int q,
                                    mn__u128 d) {
  char *o = out;
  o[0] = '-';
  o += neg;
  int x = q + n - 1; /* scientific exponent */
  size_t len;
  if (x >= -6 && x < 16) {
    if (x < 0) { /* 0.000ddd */
      memcpy(o, "0.000000", 8);
      memcpy(o + 1 - x, &d, 16);
      len = (size_t)(1 - x + n);
    } else if (q < 0) { /* dd.ddd */
      int ip = x + 1;
      mn__u128 rest = mn__fmt_text_from(d, ip);
      memcpy(o, &d, 16);
      o[ip] = '.';
      memcpy(o + ip + 1, &rest, 16);
      len = (size_t)n + 1;
    } else { /* ddd000 */
      mn__u128 zeros = MN__ZEROS16;
      memcpy(o, &d, 16);
      memcpy(o + n, &zeros, 16);
      len = (size_t)(n + q);
    }
  } else { /* d.ddde+-x */
    mn__u128 rest = mn__fmt_text_from(d, 1);
    o[0] = (char)(uint8_t)d;
    o[1] = '.';
    memcpy(o + 2, &rest, 16);
    len = n > 1 ? (size_t)n + 1 : 1;
    len = mn__fmt_exp(o, len, x);
  }
  return len + (size_t)neg;
}

#endif /* MNEMO_RPC_FMT_F32_H */
