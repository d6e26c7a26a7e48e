/*
 * test_json_numbers.c - arrays of numbers through the JSON reader, whose
 * packed arrays have a fast path (a run of numbers split at separators
 * found 64 bytes at a time, each read without a loop per digit) next to
 * the general one. Every value must be what strtod reads, bit for bit,
 * whichever path took it: random numbers in the forms clients write
 * (%.9g, %.17g, exponents, integers, long digit runs, 2^53 and around,
 * negative zero), mixed in one array, with and without spaces, in arrays
 * of every length up to 200 so that runs end at every position relative
 * to the 64-byte blocks and to the end of the message, and nested. Bad
 * numbers anywhere in a long array must fail the parse at that number.
 * All of it twice: with the numbers read one at a time, and 8 at a time
 * by the AVX-512 code (where the CPU has it), which is also given random
 * spans directly.
 */
#include "rpc_fixture.h"

static uint64_t rs = 0x6a09e667f3bcc909ull;
static uint32_t rnd(void) {
  rs ^= rs << 13;
  rs ^= rs >> 7;
  rs ^= rs << 17;
  return (uint32_t)(rs >> 32);
}

/* One number in a random form. */
static void some_number(char *b, size_t n) {
  float f = (float)((int32_t)rnd()) / 2147483648.0f;
  double d = (double)f * pow(10, (int)(rnd() % 40) - 20);
  switch (rnd() % 12) {
  case 0:
    snprintf(b, n, "%.17g", d);
    break;
  case 1:
    snprintf(b, n, "%g", d);
    break;
  case 2:
    snprintf(b, n, "%d", (int)(rnd() % 2000001) - 1000000);
    break;
  case 3:
    snprintf(b, n, "%.12e", d);
    break;
  case 4: /* 16 to 20 digits, around 2^53 */
    snprintf(b, n, "%s%llu", rnd() & 1 ? "-" : "",
             (unsigned long long)(9007199254740992ull - 50 + rnd() % 100));
    break;
  case 5:
    snprintf(b, n, "%s0.%016llu", rnd() & 1 ? "-" : "",
             (unsigned long long)rnd() * rnd());
    break;
  case 6:
    snprintf(b, n, "%s", rnd() & 1 ? "-0" : "0.0");
    break;
  case 7:
    snprintf(b, n, "%llu.%u", (unsigned long long)rnd() * 1000u, rnd());
    break;
  default: /* the common case: a float32 component */
    snprintf(b, n, "%.9g", (double)f * (rnd() % 4 ? 1 : 20));
  }
}

/* Value i of a parsed array, packed or not. */
static double item(const mn__jv *a, uint32_t i) {
  mn__jv tmp;
  const mn__jv *v = mn__jarr_at(a, i, &tmp);
  assert_int_equal(v->type, MN__J_NUM);
  return v->u.num;
}

static void check_array_of(char **nums, size_t count, int spaces) {
  sbuf b = {0};
  sb_add(&b, "[");
  for (size_t i = 0; i < count; i++)
    sb_add(&b, "%s%s", i ? (spaces && rnd() % 3 == 0 ? ", " : ",") : "",
           nums[i]);
  sb_add(&b, "]");
  mn__arena a = {0};
  mn__jerr e;
  mn__jv *v = mn__json_parse(&a, b.p, b.len, 8, &e);
  if (!v)
    fail_msg("%s: %.200s", e.msg, b.p);
  assert_int_equal(v->type, MN__J_ARR);
  assert_int_equal(v->n, count);
  assert_true(count == 0 || (v->flags & MN__JF_PACKED));
  for (size_t i = 0; i < count; i++) {
    double want = strtod(nums[i], NULL), got = item(v, (uint32_t)i);
    if (memcmp(&got, &want, 8) != 0)
      fail_msg("item %zu of %zu, %s, read as %.17g; strtod says %.17g", i,
               count, nums[i], got, want);
  }
  mn__arena_release(&a);
  free(b.p);
}

static void test_arrays(void **state) {
  enum { MAXN = 200 };
  char *nums[MAXN];
  for (int i = 0; i < MAXN; i++)
    nums[i] = malloc(48);
  for (size_t count = 0; count <= MAXN; count++)
    for (int rep = 0; rep < 20; rep++) {
      for (size_t i = 0; i < count; i++)
        some_number(nums[i], 48);
      check_array_of(nums, count, rep % 4 == 3);
    }
  /* Only the common form, long: the fast path all the way. */
  for (int rep = 0; rep < 50; rep++) {
    for (int i = 0; i < MAXN; i++) {
      float f = (float)((int32_t)rnd()) / 2147483648.0f;
      snprintf(nums[i], 48, "%.9g", (double)f);
    }
    check_array_of(nums, MAXN, 0);
  }
  for (int i = 0; i < MAXN; i++)
    free(nums[i]);
}

static void test_nested_and_mixed(void **state) {
  /* Rows of numbers, and arrays whose numbers stop being numbers. */
  sbuf b = {0};
  sb_add(&b, "[");
  for (int r = 0; r < 20; r++) {
    sb_add(&b, r ? ",[" : "[");
    for (int c = 0; c < 37; c++)
      sb_add(&b, c ? ",%.9g" : "%.9g", (double)(r * 37 + c) / 7.0);
    sb_add(&b, "]");
  }
  sb_add(&b, "]");
  mn__arena a = {0};
  mn__jerr e;
  mn__jv *v = mn__json_parse(&a, b.p, b.len, 8, &e);
  assert_non_null(v);
  assert_int_equal(v->n, 20);
  for (uint32_t r = 0; r < 20; r++) {
    const mn__jv *row = &v->u.items[r];
    assert_true(row->flags & MN__JF_PACKED);
    for (uint32_t c = 0; c < 37; c++) {
      char t[32];
      snprintf(t, sizeof t, "%.9g", (double)(r * 37 + c) / 7.0);
      double want = strtod(t, NULL);
      assert_memory_equal(&row->u.nums[c], &want, 8);
    }
  }
  mn__arena_release(&a);
  free(b.p);
  /* Numbers, then a string, an object and null: unpacked, values kept. */
  b = (sbuf){0};
  sb_add(&b, "[");
  for (int c = 0; c < 30; c++)
    sb_add(&b, "%.9g,", c / 3.0);
  sb_add(&b, "\"x,y]\",{\"a\":[1,2]},null,0.25]");
  a = (mn__arena){0};
  v = mn__json_parse(&a, b.p, b.len, 8, &e);
  assert_non_null(v);
  assert_int_equal(v->n, 34);
  assert_false(v->flags & MN__JF_PACKED);
  for (uint32_t c = 0; c < 30; c++) {
    char t[32];
    snprintf(t, sizeof t, "%.9g", c / 3.0);
    double want = strtod(t, NULL), got = item(v, c);
    assert_memory_equal(&got, &want, 8);
  }
  assert_int_equal(v->u.items[30].type, MN__J_STR);
  assert_int_equal(v->u.items[31].type, MN__J_OBJ);
  assert_int_equal(v->u.items[32].type, MN__J_NULL);
  assert_true(item(v, 33) == 0.25);
  mn__arena_release(&a);
  free(b.p);
}

static void test_bad_numbers_in_runs(void **state) {
  const char *bad[] = {"01",    "1.",   "-",   ".5",  "1.e3", "--1",
                       "1.5.5", "00.1", "-01", "1e",  "+1",   "0x1",
                       "1ee2",  "1-2",  "NaN", "1..2"};
  for (int rep = 0; rep < 400; rep++) {
    size_t count = 1 + rnd() % 120, at = rnd() % count;
    const char *which = bad[rnd() % (sizeof bad / sizeof bad[0])];
    sbuf b = {0};
    size_t tok = 0;
    sb_add(&b, "[");
    for (size_t i = 0; i < count; i++) {
      if (i)
        sb_add(&b, ",");
      if (i == at) {
        tok = b.len;
        sb_add(&b, "%s", which);
      } else {
        sb_add(&b, "%.9g", (double)((int32_t)rnd()) / 2147483648.0);
      }
    }
    sb_add(&b, "]");
    mn__arena a = {0};
    mn__jerr e;
    mn__jv *v = mn__json_parse(&a, b.p, b.len, 8, &e);
    if (v)
      fail_msg("\"%s\" as item %zu of %zu parsed", which, at, count);
    /* The error is at that number (or the separator right after it). */
    if (e.offset < tok || e.offset > tok + strlen(which) + 1)
      fail_msg("\"%s\" at byte %zu of %zu: the error is at byte %zu (%s)",
               which, tok, b.len, e.offset, e.msg);
    mn__arena_release(&a);
    free(b.p);
  }
}

/* The form the AVX-512 code takes: -?(0|[1-9][0-9]*)(.[0-9]+)?, at most
 * 16 bytes and 15 digits. Written out independently of both readers. */
static int simd_form(const char *t, size_t len) {
  if (len == 0 || len > 16)
    return 0;
  size_t i = 0, digits = 0, dots = 0;
  if (t[0] == '-')
    i = 1;
  if (i >= len || t[i] < '0' || t[i] > '9')
    return 0;
  if (t[i] == '0' && i + 1 < len && t[i + 1] >= '0' && t[i + 1] <= '9')
    return 0;
  for (; i < len; i++) {
    if (t[i] >= '0' && t[i] <= '9') {
      digits++;
    } else if (t[i] == '.') {
      if (dots++ || i + 1 >= len || t[i + 1] < '0' || t[i + 1] > '9')
        return 0;
    } else {
      return 0;
    }
  }
  return digits <= 15;
}

/* Random strings of digits, '-', '.', 'e' and ' ', 1 to 18 bytes: each is
 * taken by the AVX-512 code exactly when it has simd_form, with strtod's
 * value; in a list, the code stops at the first it does not take. */
static void test_simd_kernel(void **state) {
  (void)state;
  if (!mn__json_simd_numbers(-1)) {
    print_message("no AVX-512: the vector number code is not tested\n");
    return;
  }
  static const char alpha[] = "0123456789000000--..e ";
  char buf[8][64];
  const char *st[8], *en[8];
  double out[8];
  size_t taken = 0;
  for (int rep = 0; rep < 200000; rep++) {
    size_t n = 1 + rnd() % 8;
    size_t first_bad = n;
    for (size_t i = 0; i < n; i++) {
      char *t = buf[i];
      size_t len = 1 + rnd() % 18;
      int kind = (int)(rnd() % 4);
      for (size_t j = 0; j < len; j++)
        t[j] = kind == 0 ? alpha[rnd() % (sizeof alpha - 1)]
                         : (char)('0' + rnd() % 10);
      if (kind >= 2 && len > 2) /* a '.' somewhere, maybe a sign */
        t[1 + rnd() % (len - 1)] = '.';
      if (kind == 3)
        t[0] = '-';
      if (rnd() % 3 == 0)
        t[kind == 3 && len > 1] = '0';
      memset(t + len, ',', sizeof buf[i] - len);
      st[i] = t;
      en[i] = t + len;
      if (first_bad == n && !simd_form(t, len))
        first_bad = i;
    }
    size_t got = mn__json_nums_avx512(st, en, n, out);
    if (got != first_bad)
      fail_msg("took %zu of %zu; the first not of the form is %zu (%.*s)", got,
               n, first_bad,
               first_bad < n ? (int)(en[first_bad] - st[first_bad]) : 0,
               first_bad < n ? st[first_bad] : "");
    for (size_t i = 0; i < got; i++) {
      char t[32];
      memcpy(t, st[i], (size_t)(en[i] - st[i]));
      t[en[i] - st[i]] = 0;
      double want = strtod(t, NULL);
      if (memcmp(&want, &out[i], 8) != 0)
        fail_msg("%s read as %.17g; strtod says %.17g", t, out[i], want);
    }
    taken += got;
  }
  assert_true(taken > 100000);
}

static int simd_off(void **state) {
  (void)state;
  mn__json_simd_numbers(0);
  return 0;
}

static int simd_on(void **state) {
  (void)state;
  mn__json_simd_numbers(1);
  return 0;
}

int main(void) {
  /* Every reader test with the one-at-a-time number code, then with the
   * AVX-512 code where the CPU has it. */
  const struct CMUnitTest scalar[] = {
      cmocka_unit_test(test_arrays),
      cmocka_unit_test(test_nested_and_mixed),
      cmocka_unit_test(test_bad_numbers_in_runs),
  };
  const struct CMUnitTest vector[] = {
      cmocka_unit_test(test_simd_kernel),
      cmocka_unit_test(test_arrays),
      cmocka_unit_test(test_nested_and_mixed),
      cmocka_unit_test(test_bad_numbers_in_runs),
  };
  int rc =
      cmocka_run_group_tests_name("scalar numbers", scalar, simd_off, NULL);
  rc |= cmocka_run_group_tests_name("vector numbers", vector, simd_on, NULL);
  return rc;
}
