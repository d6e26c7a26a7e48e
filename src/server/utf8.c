/*
 * utf8.c - UTF-8 validation of text messages (RFC 3629: no overlong forms,
 * no surrogates, nothing above U+10FFFF), run on a worker.
 *
 * libwebsockets can validate text frames itself, byte by byte on the I/O
 * thread; for the large JSON messages mnemo receives (arrays of numbers,
 * base64) that cost more than the rest of the I/O thread's work. Here
 * ASCII, which is all such messages hold, is checked 64 bytes at a time
 * (SSE2, part of the x86-64 baseline; eight at a time elsewhere), and only
 * multi-byte sequences go through the careful path.
 */
#include "server/server_internal.h"

#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define HIGH_BITS 0x8080808080808080ull

int mn__utf8_valid(const unsigned char *p, size_t n) {
  const unsigned char *end = p + n;
  while (p < end) {
    /* ASCII runs, 64, 32 then 8 bytes at a time. */
#if defined(__SSE2__)
    while (end - p >= 64) {
      const __m128i *v = (const __m128i *)(const void *)p;
      __m128i any = _mm_or_si128(
          _mm_or_si128(_mm_loadu_si128(v), _mm_loadu_si128(v + 1)),
          _mm_or_si128(_mm_loadu_si128(v + 2), _mm_loadu_si128(v + 3)));
      if (_mm_movemask_epi8(any))
        break;
      p += 64;
    }
#endif
    while (end - p >= 32) {
      uint64_t a, b, c, d;
      memcpy(&a, p, 8);
      memcpy(&b, p + 8, 8);
      memcpy(&c, p + 16, 8);
      memcpy(&d, p + 24, 8);
      if ((a | b | c | d) & HIGH_BITS)
        break;
      p += 32;
    }
    while (end - p >= 8) {
      uint64_t a;
      memcpy(&a, p, 8);
      if (a & HIGH_BITS)
        break;
      p += 8;
    }
    if (p >= end)
      break;
    unsigned c0 = *p;
    if (c0 < 0x80) {
      p++;
      continue;
    }
    /* A multi-byte sequence: its length and the allowed range of its
     * second byte (which rules out overlongs, surrogates and > U+10FFFF). */
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c0 >= 0xC2 && c0 <= 0xDF) {
      len = 2;
    } else if (c0 >= 0xE0 && c0 <= 0xEF) {
      len = 3;
      if (c0 == 0xE0)
        lo = 0xA0; /* overlong below U+0800 */
      else if (c0 == 0xED)
        hi = 0x9F; /* U+D800..U+DFFF surrogates */
    } else if (c0 >= 0xF0 && c0 <= 0xF4) {
      len = 4;
      if (c0 == 0xF0)
        lo = 0x90; /* overlong below U+10000 */
      else if (c0 == 0xF4)
        hi = 0x8F; /* above U+10FFFF */
    } else {
      return 0; /* 0x80..0xC1 (continuation or overlong lead), 0xF5.. */
    }
    if ((size_t)(end - p) < len)
      return 0; /* truncated */
    if (p[1] < lo || p[1] > hi)
      return 0;
    for (size_t i = 2; i < len; i++)
      if ((p[i] & 0xC0) != 0x80)
        return 0;
    p += len;
  }
  return 1;
}
