/*
 * test_base64.c - the codec's base64: the scalar code and the AVX2 code
 * against a bit-by-bit reference written here from RFC 4648, and against
 * each other, byte for byte.
 *
 * Encoding: every length 0..4096 of random bytes. Decoding: the same
 * strings back; with and without padding; base64url's '-' '_'; every byte
 * value 0..255 at every position of a block the vector code handles; and
 * random strings of random length with one bad character (or a bad
 * length) somewhere, where both must fail with the same offset. Buffers
 * are allocated to the exact size, so that an address-sanitizer build
 * catches a read or write past either end.
 */
#include "rpc_fixture.h"

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint32_t rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 32);
}

/* RFC 4648 section 4, one bit at a time. */
static size_t ref_encode(const uint8_t *in, size_t n, char *out) {
  size_t bits = n * 8, k = 0;
  for (size_t b = 0; b < bits; b += 6) {
    unsigned v = 0;
    for (size_t j = 0; j < 6; j++) {
      size_t bit = b + j;
      unsigned x = bit < bits ? (in[bit / 8] >> (7 - bit % 8)) & 1u : 0u;
      v = v << 1 | x;
    }
    out[k++] = alphabet[v];
  }
  while (k % 4)
    out[k++] = '=';
  return k;
}

static int ref_value(unsigned char ch) {
  if (ch == '-')
    return 62;
  if (ch == '_')
    return 63;
  const char *p = ch ? strchr(alphabet, ch) : NULL;
  return p ? (int)(p - alphabet) : -1;
}

/* The decoder's contract: up to two '=' end the input; a length of 4k+1
 * characters fails at its end; otherwise the first character outside the
 * alphabet is the offset of the failure. Returns the length or -1. */
static int64_t ref_decode(const char *in, size_t n, uint8_t *out, size_t *bad) {
  size_t pad = 0;
  while (n > 0 && in[n - 1] == '=' && pad < 2) {
    n--;
    pad++;
  }
  if (n % 4 == 1) {
    *bad = n;
    return -1;
  }
  for (size_t i = 0; i < n; i++)
    if (ref_value((unsigned char)in[i]) < 0) {
      *bad = i;
      return -1;
    }
  size_t bits = n * 6, len = bits / 8;
  memset(out, 0, len);
  for (size_t b = 0; b < len * 8; b++) {
    int v = ref_value((unsigned char)in[b / 6]);
    unsigned x = ((unsigned)v >> (5 - b % 6)) & 1u;
    out[b / 8] = (uint8_t)(out[b / 8] | x << (7 - b % 8));
  }
  return (int64_t)len;
}

typedef int64_t (*dec_fn)(const char *, size_t, uint8_t *, size_t *);
typedef size_t (*enc_fn)(const uint8_t *, size_t, char *);

/* Decode `s` (n characters, copied into an exact-size buffer) with every
 * implementation and compare them with the reference. */
static void check_decode(const char *s, size_t n) {
  char *in = malloc(n ? n : 1);
  assert_non_null(in);
  memcpy(in, s, n);
  size_t cap = n / 4 * 3 + 3;
  uint8_t *want = malloc(cap);
  assert_non_null(want);
  size_t want_bad = 0;
  int64_t want_len = ref_decode(in, n, want, &want_bad);
  dec_fn fns[2] = {mn__b64_decode_scalar, mn__b64_decode_avx2};
  const char *names[2] = {"scalar", "avx2"};
  int nf = mn__b64_have_avx2() ? 2 : 1;
  for (int f = 0; f < nf; f++) {
    /* Exactly what the codec allocates, mn__b64_decoded_len: the decoded
     * length, and on bad input the most the caller can have reserved. */
    size_t room = mn__b64_decoded_len(in, n);
    if (room == 0)
      room = 1;
    uint8_t *out = malloc(room);
    assert_non_null(out);
    size_t bad = (size_t)-1;
    int64_t got = fns[f](in, n, out, &bad);
    if (got != want_len)
      fail_msg("%s decode of %zu chars: %lld, want %lld (bad %zu / %zu)",
               names[f], n, (long long)got, (long long)want_len, bad, want_bad);
    if (got < 0 && bad != want_bad)
      fail_msg("%s decode of %zu chars: bad offset %zu, want %zu", names[f], n,
               bad, want_bad);
    if (got > 0 && memcmp(out, want, (size_t)got) != 0)
      fail_msg("%s decode of %zu chars: wrong bytes", names[f], n);
    free(out);
  }
  if (want_len >= 0)
    assert_int_equal(mn__b64_decoded_len(in, n), (size_t)want_len);
  free(want);
  free(in);
}

static void test_encode_all_lengths(void **state) {
  enc_fn fns[2] = {mn__b64_encode_scalar, mn__b64_encode_avx2};
  int nf = mn__b64_have_avx2() ? 2 : 1;
  if (nf == 1)
    print_message("this CPU has no AVX2: only the scalar code is tested\n");
  for (size_t n = 0; n <= 4096; n++) {
    uint8_t *in = malloc(n ? n : 1);
    assert_non_null(in);
    for (size_t i = 0; i < n; i++)
      in[i] = (uint8_t)rnd();
    size_t elen = (n + 2) / 3 * 4;
    char *want = malloc(elen + 1);
    assert_non_null(want);
    assert_int_equal(ref_encode(in, n, want), elen);
    for (int f = 0; f < nf; f++) {
      char *out = malloc(elen ? elen : 1);
      assert_non_null(out);
      size_t k = fns[f](in, n, out);
      if (k != elen || memcmp(out, want, elen) != 0)
        fail_msg("%s encode of %zu bytes differs from the reference",
                 f ? "avx2" : "scalar", n);
      free(out);
    }
    /* And back, padded and unpadded. */
    check_decode(want, elen);
    size_t unpadded = elen;
    while (unpadded && want[unpadded - 1] == '=')
      unpadded--;
    check_decode(want, unpadded);
    free(want);
    free(in);
  }
}

static void test_decode_every_byte_everywhere(void **state) {
  /* 128 characters: the vector loop runs several blocks before the
   * scalar tail; every byte value in every position of the first 96. */
  char s[128];
  for (size_t i = 0; i < sizeof s; i++)
    s[i] = alphabet[rnd() % 64];
  check_decode(s, sizeof s);
  for (size_t pos = 0; pos < 96; pos++) {
    char keep = s[pos];
    for (int b = 0; b < 256; b++) {
      s[pos] = (char)b;
      check_decode(s, sizeof s);
    }
    s[pos] = keep;
  }
  /* base64url decodes as the standard alphabet does. */
  char url[128], std[128];
  for (size_t i = 0; i < sizeof url; i++) {
    int v = (int)(rnd() % 64);
    std[i] = alphabet[v];
    url[i] = v == 62 ? '-' : v == 63 ? '_' : alphabet[v];
  }
  /* Too much padding after blocks the vector code would take: refused
   * where the first surplus '=' is, and nothing written past the length
   * the caller reserved (72 characters, all '=' stripped: 24 bytes). */
  char pads[72];
  memcpy(pads, std, 32);
  memset(pads + 32, '=', 40);
  check_decode(pads, sizeof pads);
  uint8_t a[96], b[96];
  size_t bad;
  assert_int_equal(mn__b64_decode(std, sizeof std, a, &bad), 96);
  assert_int_equal(mn__b64_decode(url, sizeof url, b, &bad), 96);
  assert_memory_equal(a, b, 96);
}

static void test_decode_invalid_random(void **state) {
  for (int iter = 0; iter < 3000; iter++) {
    size_t n = rnd() % 4097;
    char *s = malloc(n + 1);
    assert_non_null(s);
    for (size_t i = 0; i < n; i++)
      s[i] = alphabet[rnd() % 64];
    switch (iter % 4) {
    case 0: /* one character from outside the alphabet */
      if (n) {
        static const char junk[] = "=.,:;!*@[]{} \n\t\"\\\x80\xff\x01";
        s[rnd() % n] = junk[rnd() % (sizeof junk - 1)];
      }
      break;
    case 1: /* padding in the middle, or too much of it at the end */
      if (n > 3)
        s[n - 1 - rnd() % 3] = '=';
      if (n > 8)
        s[rnd() % n] = '=';
      break;
    case 2: /* a valid string cut to any length (4k+1 fails) */
      break;
    default: /* several bad characters: the first one counts */
      for (int k = 0; n && k < 3; k++)
        s[rnd() % n] = (char)(0x80 | rnd());
    }
    check_decode(s, n);
    free(s);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_encode_all_lengths),
      cmocka_unit_test(test_decode_every_byte_everywhere),
      cmocka_unit_test(test_decode_invalid_random),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
