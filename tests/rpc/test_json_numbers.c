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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_arrays),
      cmocka_unit_test(test_nested_and_mixed),
      cmocka_unit_test(test_bad_numbers_in_runs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
