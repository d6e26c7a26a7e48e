/*
 * test_fmt_f32.c - the shortest float32 formatting behind every JSON
 * number the server writes. mn__fmt_f32 (one number) is compared with the
 * implementation as it was before it took its powers of ten from a table
 * of literals (kept below as the reference, unchanged but for names and
 * two fences against FMA contraction), and
 * mn__fmt_f32_list (a row at a time: AVX-512, 8 numbers at once, where the
 * CPU has it) with the reference number by number: the same text, byte
 * for byte, for bit patterns spread over the whole 32-bit space, random
 * ones, the edges (powers of two and ten, subnormals, the largest values,
 * integers), and lists of every length up to 40 that mix all of these.
 * test_codec checks the text itself (reads back exactly, shortest).
 *
 * Set MNEMO_FMT_EXHAUSTIVE=1 to compare all 2^32 bit patterns (minutes).
 * Outputs go into buffers of exactly the size the contracts allow (32
 * bytes for one number, 25 n + 32 for a list), so that an
 * address-sanitizer build catches a write past them.
 */
#include "rpc_fixture.h"

#include <float.h>
#include <pthread.h>

/* ---- the reference: the formatter as it was ---- */
/* Products rounded on their own, never fused into an FMA (as in json.c),
 * so that builds with FMA enabled compute what the default build does. */
static inline double ref_fence(double x) {
  __asm__("" : "+x"(x));
  return x;
}

static double ref_p10_tab[121];
static pthread_once_t ref_p10_once = PTHREAD_ONCE_INIT;

static void ref_p10_init(void) {
  for (int k = -60; k <= 60; k++) {
    char b[16];
    snprintf(b, sizeof b, "1e%d", k);
    ref_p10_tab[k + 60] = strtod(b, NULL);
  }
}

static inline double ref_p10(int k) {
  return ref_p10_tab[k + 60];
}

static const uint64_t ref_pow10_u64[20] = {1ull,
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

static const char ref_digits2[] = "00010203040506070809"
                                  "10111213141516171819"
                                  "20212223242526272829"
                                  "30313233343536373839"
                                  "40414243444546474849"
                                  "50515253545556575859"
                                  "60616263646566676869"
                                  "70717273747576777879"
                                  "80818283848586878889"
                                  "90919293949596979899";

/* Decimal digits of m (m > 0) into o; returns the count. The count is
 * found first, so the digits go straight to their places, two at a time. */
static int ref_utoa_digits(uint64_t m, char *o) {
  int n = 1;
  while (n < 20 && m >= ref_pow10_u64[n])
    n++;
  char *e = o + n;
  while (m >= 100) {
    unsigned r = (unsigned)(m % 100);
    m /= 100;
    e -= 2;
    memcpy(e, ref_digits2 + 2 * r, 2);
  }
  if (m >= 10) {
    e -= 2;
    memcpy(e, ref_digits2 + 2 * m, 2);
  } else {
    *--e = (char)('0' + m);
  }
  return n;
}

/* Write m * 10^q (m > 0) much as JavaScript prints numbers: plain for
 * decimal exponents in [-6, 16), otherwise d.ddde+-x, so that a big
 * integral value never looks like an integer too large for int64
 * parsers. At most 22 bytes. */
static size_t ref_fmt_decimal(char *o, int neg, uint64_t m, int q) {
  while (m % 10 == 0) {
    m /= 10;
    q++;
  }
  char d[24];
  int n = ref_utoa_digits(m, d);
  int x = q + n - 1; /* scientific exponent */
  size_t k = 0;
  if (neg)
    o[k++] = '-';
  if (x >= -6 && x < 16) {
    if (q >= 0) {
      memcpy(o + k, d, (size_t)n);
      k += (size_t)n;
      for (int i = 0; i < q; i++)
        o[k++] = '0';
    } else if (x >= 0) {
      int ip = n + q; /* digits before the point */
      memcpy(o + k, d, (size_t)ip);
      k += (size_t)ip;
      o[k++] = '.';
      memcpy(o + k, d + ip, (size_t)(n - ip));
      k += (size_t)(n - ip);
    } else {
      o[k++] = '0';
      o[k++] = '.';
      for (int i = 0; i < -x - 1; i++)
        o[k++] = '0';
      memcpy(o + k, d, (size_t)n);
      k += (size_t)n;
    }
  } else {
    o[k++] = d[0];
    if (n > 1) {
      o[k++] = '.';
      memcpy(o + k, d + 1, (size_t)(n - 1));
      k += (size_t)(n - 1);
    }
    o[k++] = 'e';
    o[k++] = x < 0 ? '-' : '+';
    int ax = x < 0 ? -x : x;
    if (ax >= 100)
      o[k++] = (char)('0' + ax / 100);
    if (ax >= 10)
      o[k++] = (char)('0' + (ax / 10) % 10);
    o[k++] = (char)('0' + ax % 10);
  }
  return k;
}

/*
 * Shortest round-trip decimal of a float32, in integers.
 *
 * Scale the value and the interval of reals that round to it (halfway to
 * each neighbour) by 10^k so the value has 9 digits before the point: 9
 * significant digits always identify a float32, and the interval is then at
 * least 6 units wide. The double arithmetic is exact to about 1e-7 units,
 * so the interval is shrunk by 1e-5 units and every integer left inside is
 * a decimal that reads back as the float. The most trailing zeros any of
 * them has gives the shortest form (if no multiple of 10^j fits, no
 * multiple of 10^(j+1) does); among those, the one nearest the value.
 * The interval is taken open, so a decimal lying exactly halfway to a
 * neighbour (which would read back by ties-to-even) is not used: then the
 * result is longer than the shortest (rare: large integers and exact
 * binary fractions).
 */
static size_t ref_fmt_f32(char *out, float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  uint32_t mag = bits & 0x7fffffffu;
  if (mag >= 0x7f800000u) {
    memcpy(out, "null", 4);
    return 4;
  }
  if (mag == 0) {
    if (bits >> 31) {
      memcpy(out, "-0.0", 4);
      return 4;
    }
    out[0] = '0';
    return 1;
  }
  pthread_once(&ref_p10_once, ref_p10_init);
  int neg = (int)(bits >> 31);
  float a, up, dn;
  uint32_t ub = mag + 1, db = mag - 1;
  memcpy(&a, &mag, 4);
  memcpy(&up, &ub, 4);
  memcpy(&dn, &db, 4);
  double v = a;
  double hi = ub < 0x7f800000u ? ((double)a + (double)up) * 0.5
                               : v + (v - (double)dn) * 0.5;
  double lo = ((double)a + (double)dn) * 0.5;
  /* Decimal exponent: estimate from the binary one (78913 / 2^18 is
   * log10(2)), then correct. */
  int e2 = (int)(mag >> 23) - 127;
  if ((mag >> 23) == 0) /* subnormal */
    e2 = -127 - __builtin_clz(mag) + 9;
  int e10 = (e2 * 78913) >> 18;
  if (v >= ref_p10(e10 + 1))
    e10++;
  else if (v < ref_p10(e10))
    e10--;
  int k = 8 - e10;
  double sc = ref_p10(k);
  double vs = v * sc;
  double los = ref_fence(lo * sc) + 1e-5, his = ref_fence(hi * sc) - 1e-5;
  /* Integers strictly inside; all below 2^32 (vs < 10^9). */
  uint32_t L = (uint32_t)los + 1;
  uint32_t H = (uint32_t)his;
  if ((double)H == his)
    H--;
  if (L > H) {
    /* Not expected; printf is exact. */
    char b[32];
    int n = snprintf(b, sizeof b, "%.9g", (double)f);
    memcpy(out, b, (size_t)n);
    return (size_t)n;
  }
  /* Constant divisors, so each step is a multiplication. */
  int j = 0;
#define MN__STEP(P)                                                            \
  if ((L + (P)-1) / (P) * (P) > H)                                             \
    goto found;                                                                \
  j++;
  MN__STEP(10u)
  MN__STEP(100u)
  MN__STEP(1000u)
  MN__STEP(10000u)
  MN__STEP(100000u)
  MN__STEP(1000000u)
  MN__STEP(10000000u)
  MN__STEP(100000000u)
  MN__STEP(1000000000u)
#undef MN__STEP
found:;
  uint64_t p = ref_pow10_u64[j];
  uint64_t r = (uint64_t)(ref_fence(vs * ref_p10(-j)) + 0.5) * p;
  if (r < L)
    r = ((uint64_t)L + p - 1) / p * p;
  if (r > H)
    r = H / p * p;
  return ref_fmt_decimal(out, neg, r / p, j - k);
}

/* ---- the comparison ---- */
static uint64_t compared;

static void same(uint32_t bits) {
  float f;
  memcpy(&f, &bits, 4);
  char *got = malloc(32);
  assert_non_null(got);
  char want[64];
  size_t n = mn__fmt_f32(got, f);
  size_t wn = ref_fmt_f32(want, f);
  if (n != wn || memcmp(got, want, n) != 0)
    fail_msg("bits 0x%08x (%.9g): \"%.*s\", the reference \"%.*s\"", bits,
             (double)f, (int)n, got, (int)wn, want);
  free(got);
  compared++;
}

static void test_same_as_reference(void **state) {
  /* Edges: every exponent with its smallest, largest and middle
   * significands, both signs. */
  for (uint32_t e = 0; e < 256; e++)
    for (uint32_t low = 0; low < 4; low++) {
      uint32_t b = e << 23;
      same(b | low);
      same((b | 0x7fffffu) - low);
      same(b | 0x400000u | low);
      same(0x80000000u | b | low);
    }
  /* Around every power of ten. */
  for (int e = -45; e <= 38; e++) {
    float p = (float)pow(10, e);
    uint32_t b;
    memcpy(&b, &p, 4);
    for (uint32_t d = 0; d < 8; d++) {
      same(b - 4 + d);
      same((b - 4 + d) | 0x80000000u);
    }
  }
  /* Integers, where trailing zeros and the plain layout come in. */
  for (uint32_t i = 1; i < 100000; i++) {
    float fi = (float)i * (i % 7 == 0 ? 1000.0f : 1.0f);
    uint32_t b;
    memcpy(&b, &fi, 4);
    same(b);
  }
  /* A stride through all patterns (a prime, so every low-bit pattern
   * comes up), and random ones. */
  for (uint64_t b = 0; b < 0x100000000ull; b += 2003)
    same((uint32_t)b);
  uint64_t s = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < 1000000; i++) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    same((uint32_t)(s >> 32));
  }
  /* Typical embedding values: the components of normalised rows. */
  for (int i = 0; i < 200000; i++) {
    float x = frand() / 27.7f;
    uint32_t b;
    memcpy(&b, &x, 4);
    same(b);
  }
  print_message("%llu values formatted the same\n",
                (unsigned long long)compared);
}

/* A list through every implementation against the reference, number by
 * number, joined with commas. */
static void same_list(const float *x, size_t n) {
  char *want = malloc(25 * n + 64);
  assert_non_null(want);
  size_t wn = 0;
  for (size_t i = 0; i < n; i++) {
    if (i)
      want[wn++] = ',';
    wn += ref_fmt_f32(want + wn, x[i]);
  }
  size_t (*fns[2])(char *, const float *, size_t) = {mn__fmt_f32_list_scalar,
                                                     mn__fmt_f32_list_avx512};
  int nf = mn__fmt_have_avx512() ? 2 : 1;
  for (int f = 0; f < nf; f++) {
    char *got = malloc(25 * n + 32);
    assert_non_null(got);
    size_t gn = fns[f](got, x, n);
    if (gn != wn || memcmp(got, want, wn) != 0) {
      size_t at = 0;
      while (at < gn && at < wn && got[at] == want[at])
        at++;
      fail_msg("%s list of %zu differs at byte %zu: \"%.40s\" vs the "
               "reference \"%.40s\"",
               f ? "avx512" : "scalar", n, at, got + (at > 10 ? at - 10 : 0),
               want + (at > 10 ? at - 10 : 0));
    }
    free(got);
  }
  free(want);
}

static float pick_value(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  uint32_t r = (uint32_t)(*s >> 32), b;
  float f;
  switch (r % 8) {
  case 0: /* any bit pattern */
    b = (uint32_t)*s;
    break;
  case 1: /* edges: zero, subnormal, largest, Inf, NaN, powers of two */
  {
    static const uint32_t edge[] = {0,           0x80000000u, 1,
                                    0x007fffffu, 0x00800000u, 0x7f7fffffu,
                                    0xff7fffffu, 0x7f800000u, 0xff800000u,
                                    0x7fc00000u, 0x3f800000u, 0x3f000000u};
    b = edge[(r >> 8) % (sizeof edge / sizeof edge[0])];
    break;
  }
  case 2: /* integers */
    f = (float)((r >> 4) % 100000) * ((r & 1) ? -1.0f : 1.0f);
    memcpy(&b, &f, 4);
    break;
  case 3: /* around powers of ten */
    f = (float)pow(10, (int)((r >> 4) % 84) - 45);
    memcpy(&b, &f, 4);
    b += (r >> 12) % 5 - 2;
    break;
  default: /* embedding components */
    f = ((float)(int32_t)r / 2147483648.0f) / 27.7f;
    memcpy(&b, &f, 4);
  }
  memcpy(&f, &b, 4);
  return f;
}

static void test_lists(void **state) {
  if (!mn__fmt_have_avx512())
    print_message("this CPU lacks AVX-512: only the scalar list is "
                  "compared\n");
  uint64_t s = 0x853c49e6748fea9bull;
  float x[4096];
  for (size_t n = 0; n <= 40; n++)
    for (int rep = 0; rep < 200; rep++) {
      for (size_t i = 0; i < n; i++)
        x[i] = pick_value(&s);
      same_list(x, n);
    }
  /* Long lists of each kind, and a sweep of bit patterns. */
  for (int rep = 0; rep < 100; rep++) {
    for (size_t i = 0; i < 4096; i++)
      x[i] = pick_value(&s);
    same_list(x, 4096);
  }
  for (uint64_t b = 0; b < 0x100000000ull; b += 4096 * 1031) {
    for (uint32_t i = 0; i < 4096; i++) {
      uint32_t u = (uint32_t)(b + (uint64_t)i * 1031);
      memcpy(&x[i], &u, 4);
    }
    same_list(x, 4096);
  }
}

typedef struct range {
  uint64_t from, to, bad;
  uint32_t first_bad;
} range;

/* Every pattern in [from, to): one at a time, and in lists of 1024
 * through mn__fmt_f32_list, against the reference. */
static void *exhaustive_part(void *arg) {
  range *r = arg;
  enum { B = 1024 };
  float x[B];
  char *list = malloc(25 * B + 32);
  char *ref = malloc(25 * B + 64);
  if (!list || !ref) {
    r->bad = 1;
    free(list);
    free(ref);
    return NULL;
  }
  for (uint64_t b = r->from; b < r->to; b += B) {
    size_t rn = 0;
    for (uint32_t i = 0; i < B; i++) {
      uint32_t u = (uint32_t)(b + i);
      memcpy(&x[i], &u, 4);
      char got[32];
      size_t n = mn__fmt_f32(got, x[i]);
      if (i)
        ref[rn++] = ',';
      size_t wn = ref_fmt_f32(ref + rn, x[i]);
      if (n != wn || memcmp(got, ref + rn, n) != 0) {
        if (!r->bad)
          r->first_bad = u;
        r->bad++;
      }
      rn += wn;
    }
    size_t ln = mn__fmt_f32_list(list, x, B);
    if (ln != rn || memcmp(list, ref, rn) != 0) {
      if (!r->bad)
        r->first_bad = (uint32_t)b;
      r->bad++;
    }
  }
  free(list);
  free(ref);
  return NULL;
}

/* Only with MNEMO_FMT_EXHAUSTIVE=1 (see main). */
static void test_exhaustive(void **state) {
  enum { T = 4 };
  range r[T];
  pthread_t th[T];
  for (int t = 0; t < T; t++) {
    r[t].from = 0x100000000ull / T * (uint64_t)t;
    r[t].to = 0x100000000ull / T * (uint64_t)(t + 1);
    r[t].bad = 0;
    assert_int_equal(pthread_create(&th[t], NULL, exhaustive_part, &r[t]), 0);
  }
  uint64_t bad = 0;
  uint32_t first = 0;
  for (int t = 0; t < T; t++) {
    pthread_join(th[t], NULL);
    if (r[t].bad && !bad)
      first = r[t].first_bad;
    bad += r[t].bad;
  }
  if (bad)
    fail_msg("%llu bit patterns format differently, the first 0x%08x",
             (unsigned long long)bad, first);
  print_message("all 2^32 bit patterns format the same, one at a time "
                "and in lists\n");
}

int main(void) {
  const char *e = getenv("MNEMO_FMT_EXHAUSTIVE");
  int all = e && strcmp(e, "1") == 0;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_same_as_reference),
      cmocka_unit_test(test_lists),
      cmocka_unit_test(test_exhaustive),
  };
  return _cmocka_run_group_tests("fmt_f32", tests, all ? 3 : 2, NULL, NULL);
}
