/*
 * test_utf8.c - mn__utf8_valid against an independent reference: a plain
 * decoder that builds each code point and checks its range (the validator
 * under test never builds code points; it checks the bytes). Every 1-, 2-
 * and 3-byte sequence is compared exhaustively, 4-byte sequences and long
 * mixed strings by random sampling, plus the classic hand-made cases.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/server_internal.h"

/* Reference: decode, then reject overlongs, surrogates, > U+10FFFF. */
static int ref_valid(const unsigned char *p, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = p[i];
    size_t len;
    uint32_t cp, min;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return 0;
    }
    if (i + len > n)
      return 0;
    for (size_t k = 1; k < len; k++) {
      if ((p[i + k] & 0xC0) != 0x80)
        return 0;
      cp = cp << 6 | (p[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += len;
  }
  return 1;
}

static int valid(const char *s) {
  return mn__utf8_valid((const unsigned char *)s, strlen(s));
}

static void test_hand_made_cases(void **state) {
  (void)state;
  assert_true(valid(""));
  assert_true(valid("{\"jsonrpc\":\"2.0\",\"method\":\"health\"}"));
  assert_true(valid("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  assert_true(valid("\xed\x9f\xbf"));     /* U+D7FF */
  assert_true(valid("\xee\x80\x80"));     /* U+E000 */
  assert_true(valid("\xf4\x8f\xbf\xbf")); /* U+10FFFF */
  assert_false(valid("\xff\xfe"));
  assert_false(valid("\xc0\xaf"));         /* overlong '/' */
  assert_false(valid("\xe0\x80\xaf"));     /* overlong '/' */
  assert_false(valid("\xf0\x80\x80\xaf")); /* overlong '/' */
  assert_false(valid("\xed\xa0\x80"));     /* U+D800 */
  assert_false(valid("\xed\xbf\xbf"));     /* U+DFFF */
  assert_false(valid("\xf4\x90\x80\x80")); /* U+110000 */
  assert_false(valid("\x80"));             /* lone continuation */
  assert_false(valid("abc\xe2\x82"));      /* truncated at the end */
  assert_false(valid("\xe2\x82"
                     "abc")); /* truncated inside */
  /* A bad byte after a long ASCII run (the fast path must stop on it). */
  char buf[200];
  memset(buf, 'a', sizeof buf);
  buf[137] = (char)0xff;
  assert_false(mn__utf8_valid((unsigned char *)buf, sizeof buf));
  buf[137] = 'a';
  assert_true(mn__utf8_valid((unsigned char *)buf, sizeof buf));
  /* Embedded NUL is valid UTF-8. */
  assert_true(mn__utf8_valid((const unsigned char *)"a\0b", 3));
}

static void test_every_short_sequence(void **state) {
  (void)state;
  unsigned char b[3];
  for (unsigned x = 0; x < 256; x++) {
    b[0] = (unsigned char)x;
    assert_int_equal(mn__utf8_valid(b, 1), ref_valid(b, 1));
    for (unsigned y = 0; y < 256; y++) {
      b[1] = (unsigned char)y;
      assert_int_equal(mn__utf8_valid(b, 2), ref_valid(b, 2));
      for (unsigned z = 0; z < 256; z++) {
        b[2] = (unsigned char)z;
        if (mn__utf8_valid(b, 3) != ref_valid(b, 3))
          fail_msg("mismatch at %02x %02x %02x", x, y, z);
      }
    }
  }
}

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint32_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state >> 16);
}

static void test_four_byte_and_mixed_strings(void **state) {
  (void)state;
  unsigned char b[4];
  for (int i = 0; i < 2000000; i++) {
    uint32_t r = rnd();
    b[0] = (unsigned char)(0xF0 | (r & 0x0F)); /* F0..FF leads */
    b[1] = (unsigned char)(r >> 4);
    b[2] = (unsigned char)(0x80 | ((r >> 12) & 0x7F));
    b[3] = (unsigned char)(r >> 19);
    assert_int_equal(mn__utf8_valid(b, 4), ref_valid(b, 4));
  }
  /* Long strings: mostly ASCII with valid sequences, some corrupted. */
  static const char *const pieces[] = {"\xc3\xa9",         "\xe2\x82\xac",
                                       "\xf0\x9f\x98\x80", "0.12345,",
                                       "[1,2,3]",          "\"abc\""};
  unsigned char s[4096];
  for (int t = 0; t < 3000; t++) {
    size_t n = 0;
    while (n < sizeof s - 8) {
      const char *pc = pieces[rnd() % 6];
      size_t k = strlen(pc);
      memcpy(s + n, pc, k);
      n += k;
    }
    if (t % 2)
      s[rnd() % n] = (unsigned char)rnd();
    assert_int_equal(mn__utf8_valid(s, n), ref_valid(s, n));
  }
}

/* Long ASCII runs, as JSON messages are, with one byte at any position
 * (and any offset from the start of the 64-byte blocks) replaced by a
 * multi-byte sequence, valid or not, or a lone high byte. */
static void test_ascii_runs(void **state) {
  (void)state;
  static const char *const odd[] = {
      "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xc3",
      "\x80",     "\xff",         "\xed\xa0\x80"};
  unsigned char s[700];
  for (int t = 0; t < 20000; t++) {
    size_t n = 1 + rnd() % (sizeof s - 8);
    for (size_t i = 0; i < n; i++)
      s[i] = (unsigned char)(0x20 + rnd() % 0x5f);
    if (t % 8) {
      const char *pc = odd[rnd() % 7];
      size_t k = strlen(pc), at = rnd() % n;
      if (at + k > n)
        at = n - k < n ? n - k : 0;
      memcpy(s + at, pc, k < n ? k : n);
    }
    assert_int_equal(mn__utf8_valid(s, n), ref_valid(s, n));
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hand_made_cases),
      cmocka_unit_test(test_every_short_sequence),
      cmocka_unit_test(test_four_byte_and_mixed_strings),
      cmocka_unit_test(test_ascii_runs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
