/*
 * b64_avx2.c - base64 encode and decode with AVX2, 24 bytes <-> 32
 * characters per step. Compiled for AVX2 (the _avx2.c rule in
 * CMakeLists.txt) and chosen at run time by codec.c; the output is the
 * scalar code's, byte for byte, errors and their offsets included.
 *
 * Encode: two overlapping 16-byte loads put 12 input bytes in each
 * 128-bit lane; a byte shuffle gives each 32-bit word the three bytes of
 * one group (as b1 b0 b2 b1), two multiplies move the four 6-bit indices
 * into the four bytes, and a 16-entry table of offsets, looked up by a
 * small class number, turns an index into its character.
 *
 * Decode: each character is classified by its high and low nibble through
 * two 16-entry tables whose AND is non-zero exactly for a byte outside the
 * alphabet (standard and URL-safe: '+' '-' are 62, '/' '_' 63). A block
 * with any such byte goes to the scalar code, which reports the first bad
 * offset. Otherwise an offset table by high nibble (with three fix-ups for
 * '-', '/', '_') gives the 6-bit values, two multiply-adds pack four of
 * them into 24 bits, and shuffles gather 24 bytes.
 */
#include "rpc/rpc_internal.h"

#include <immintrin.h>

/* Classes of a character's high nibble: bit set in lut_hi; lut_lo holds,
 * for each low nibble, the classes in which that nibble is not base64. */
#define C_2X 0x01   /* 0x2_: only '+' '-' '/' */
#define C_3X 0x02   /* 0x3_: '0'..'9' */
#define C_46 0x04   /* 0x4_, 0x6_: letters except '@' '`' */
#define C_5X 0x08   /* 0x5_: 'P'..'Z' and '_' */
#define C_7X 0x10   /* 0x7_: 'p'..'z' */
#define C_NONE 0x20 /* every other high nibble, 0x8_ and up included */

size_t mn__b64_encode_avx2(const uint8_t *in, size_t n, char *out) {
  const __m256i shuf =
      _mm256_setr_epi8(1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10, 1, 0,
                       2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10);
  const __m256i mask_a = _mm256_set1_epi32(0x0fc0fc00);
  const __m256i mul_a = _mm256_set1_epi32(0x04000040);
  const __m256i mask_b = _mm256_set1_epi32(0x003f03f0);
  const __m256i mul_b = _mm256_set1_epi32(0x01000010);
  /* Class 0: 26..51 ('a'..), 1-10: 52..61 (digits), 11: 62, 12: 63,
   * 13: 0..25 ('A'..). The entry is added to the index. */
  const __m256i offsets = _mm256_setr_epi8(
      'a' - 26, '0' - 52, '0' - 52, '0' - 52, '0' - 52, '0' - 52, '0' - 52,
      '0' - 52, '0' - 52, '0' - 52, '0' - 52, '+' - 62, '/' - 63, 'A', 0, 0,
      'a' - 26, '0' - 52, '0' - 52, '0' - 52, '0' - 52, '0' - 52, '0' - 52,
      '0' - 52, '0' - 52, '0' - 52, '0' - 52, '+' - 62, '/' - 63, 'A', 0, 0);
  const __m256i c51 = _mm256_set1_epi8(51), c26 = _mm256_set1_epi8(26);
  const __m256i c13 = _mm256_set1_epi8(13);
  size_t i = 0;
  char *o = out;
  /* Each step reads 28 bytes (the second load overlaps the first by 4)
   * and consumes 24. */
  for (; i + 28 <= n; i += 24, o += 32) {
    __m128i lo = _mm_loadu_si128((const __m128i *)(const void *)(in + i));
    __m128i hi = _mm_loadu_si128((const __m128i *)(const void *)(in + i + 12));
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
    v = _mm256_shuffle_epi8(v, shuf);
    /* Per 32-bit word (b1 | b0 << 8 | b2 << 16 | b1 << 24): the first and
     * third index sit at bits 10..15 and 22..27, the second and fourth at
     * 4..9 and 16..21; the multiplies move each to the bottom of its own
     * byte. */
    __m256i a = _mm256_mulhi_epu16(_mm256_and_si256(v, mask_a), mul_a);
    __m256i b = _mm256_mullo_epi16(_mm256_and_si256(v, mask_b), mul_b);
    __m256i idx = _mm256_or_si256(a, b);
    __m256i cls = _mm256_subs_epu8(idx, c51);
    __m256i upper = _mm256_cmpgt_epi8(c26, idx);
    cls = _mm256_or_si256(cls, _mm256_and_si256(upper, c13));
    __m256i chars = _mm256_add_epi8(_mm256_shuffle_epi8(offsets, cls), idx);
    _mm256_storeu_si256((__m256i *)(void *)o, chars);
  }
  return (size_t)(o - out) + mn__b64_encode_scalar(in + i, n - i, o);
}

int64_t mn__b64_decode_avx2(const char *in, size_t n, uint8_t *out,
                            size_t *bad) {
  /* The same padding rules as the scalar code. */
  if (mn__b64_unpad(in, &n, bad))
    return -1;
  /* What callers allocate is mn__b64_decoded_len, which takes off every
   * trailing '='; with more than two the input is refused, but the vector
   * stores must stay inside that length all the same. */
  size_t total = mn__b64_decoded_len(in, n);
  const __m256i lut_lo = _mm256_setr_epi8(
      0x25, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x23, 0x3A,
      0x3B, 0x3A, 0x3B, 0x32, 0x25, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21,
      0x21, 0x21, 0x23, 0x3A, 0x3B, 0x3A, 0x3B, 0x32);
  const __m256i lut_hi = _mm256_setr_epi8(
      C_NONE, C_NONE, C_2X, C_3X, C_46, C_5X, C_46, C_7X, C_NONE, C_NONE,
      C_NONE, C_NONE, C_NONE, C_NONE, C_NONE, C_NONE, C_NONE, C_NONE, C_2X,
      C_3X, C_46, C_5X, C_46, C_7X, C_NONE, C_NONE, C_NONE, C_NONE, C_NONE,
      C_NONE, C_NONE, C_NONE);
  /* Added to a character to give its value, by high nibble: '+' (and,
   * fixed up below, '-' '/'), digits, upper case (and '_'), lower case. */
  const __m256i lut_off =
      _mm256_setr_epi8(0, 0, 62 - '+', 52 - '0', -'A', -'A', 26 - 'a', 26 - 'a',
                       0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 62 - '+', 52 - '0', -'A',
                       -'A', 26 - 'a', 26 - 'a', 0, 0, 0, 0, 0, 0, 0, 0);
  const __m256i m0f = _mm256_set1_epi8(0x0f);
  const __m256i minus = _mm256_set1_epi8('-'), slash = _mm256_set1_epi8('/');
  const __m256i under = _mm256_set1_epi8('_');
  const __m256i fix_minus = _mm256_set1_epi8((char)(62 - '-' - (62 - '+')));
  const __m256i fix_slash = _mm256_set1_epi8((char)(63 - '/' - (62 - '+')));
  const __m256i fix_under = _mm256_set1_epi8((char)(63 - '_' + 'A'));
  const __m256i pack1 = _mm256_set1_epi32(0x01400140);
  const __m256i pack2 = _mm256_set1_epi32(0x00011000);
  const __m256i gather =
      _mm256_setr_epi8(2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1,
                       2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1);
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 7, 7);
  size_t i = 0, o = 0;
  /* Each step stores 32 bytes of which 24 are output: it runs while the
   * 8 bytes past them are still inside the output. */
  for (; i + 32 <= n && o + 32 <= total; i += 32, o += 24) {
    __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(in + i));
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m0f);
    __m256i lo = _mm256_and_si256(v, m0f);
    __m256i badbits = _mm256_and_si256(_mm256_shuffle_epi8(lut_lo, lo),
                                       _mm256_shuffle_epi8(lut_hi, hi));
    if (!_mm256_testz_si256(badbits, badbits))
      break; /* the scalar code finds the offset */
    __m256i off = _mm256_shuffle_epi8(lut_off, hi);
    off = _mm256_add_epi8(
        off, _mm256_and_si256(_mm256_cmpeq_epi8(v, minus), fix_minus));
    off = _mm256_add_epi8(
        off, _mm256_and_si256(_mm256_cmpeq_epi8(v, slash), fix_slash));
    off = _mm256_add_epi8(
        off, _mm256_and_si256(_mm256_cmpeq_epi8(v, under), fix_under));
    __m256i val = _mm256_add_epi8(v, off);
    /* a b c d (6 bits each) -> a<<6|b, c<<6|d -> a<<18|b<<12|c<<6|d. */
    __m256i w = _mm256_madd_epi16(_mm256_maddubs_epi16(val, pack1), pack2);
    w = _mm256_shuffle_epi8(w, gather);
    w = _mm256_permutevar8x32_epi32(w, lanes);
    _mm256_storeu_si256((__m256i *)(void *)(out + o), w);
  }
  int64_t r = mn__b64_decode_body(in + i, n - i, out + o, bad);
  if (r < 0) {
    *bad += i;
    return -1;
  }
  return (int64_t)o + r;
}
