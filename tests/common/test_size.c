/* test_size.c - size strings: parsing every accepted form, refusing the
 * rest with a message that says why, and formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/internal.h"

typedef struct {
  const char *text;
  uint64_t bytes;
} good_case;

static void test_accepts(void **state) {
  (void)state;
  const uint64_t K = 1000, Ki = 1024;
  const good_case cases[] = {
      {"20GB", 20 * K * K * K},
      {"512MiB", 512 * Ki * Ki},
      {"4gb", 4 * K * K * K},
      {"1.5 GB", 1500000000ull},
      {"100MB", 100 * K * K},
      {"1048576", 1048576},
      {"0", 0},
      {"64KiB", 64 * Ki},
      {"1TB", K * K * K * K},
      {"2 TiB", 2 * Ki * Ki * Ki * Ki},
      {"  7 kb  ", 7000},
      {"7\tKB", 7000},
      {"3B", 3},
      {"3 b", 3},
      {"1.0", 1},
      {"0.5KiB", 512},
      {"8.2GB", 8200000000ull}, /* exact: strtod * 1e9 gives ...999 */
      {"2.01KB", 2010},
      {"0.001KB", 1},
      {"0.0004KB", 0}, /* 0.4 bytes rounds to nearest */
      {"0.0005KB", 1}, /* half a byte rounds up */
      {"1.25mib", 1310720},
      {"4GiB", 4 * Ki * Ki * Ki},
      {"000012MB", 12 * K * K},
      {"18446744073709551615", UINT64_MAX},
      {"16777215.5TiB", 18446743523953737728ull},
      {"1PB", K * K * K * K * K},
      {"1 pib", Ki * Ki * Ki * Ki * Ki},
      {"2EB", 2 * K * K * K * K * K * K},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint64_t v = 12345;
    mn_status s = mn_size_parse(cases[i].text, &v);
    if (s != MN_OK)
      fail_msg("\"%s\": %s (%s)", cases[i].text, mn_status_name(s),
               mn_errmsg());
    if (v != cases[i].bytes)
      fail_msg("\"%s\": got %llu, want %llu", cases[i].text,
               (unsigned long long)v, (unsigned long long)cases[i].bytes);
  }
}

typedef struct {
  const char *text;
  mn_status status;
  const char *says; /* a fragment the detail message must contain */
} bad_case;

static void test_refuses(void **state) {
  (void)state;
  const bad_case cases[] = {
      {"", MN_ERR_PARSE, "empty"},
      {"   ", MN_ERR_PARSE, "empty"},
      {"GB", MN_ERR_PARSE, "does not start with a number"},
      {"-5MB", MN_ERR_PARSE, "negative"},
      {"12XB", MN_ERR_PARSE, "unknown unit \"XB\""},
      {"1e400", MN_ERR_PARSE, "exponent"},
      {"1E3KB", MN_ERR_PARSE, "exponent"},
      {"5 G B", MN_ERR_PARSE, "ambiguous"},
      {"4G", MN_ERR_PARSE, "ambiguous"},
      {"5 GB B", MN_ERR_PARSE, "after the unit"},
      {"5GB5", MN_ERR_PARSE, "after the unit"},
      {"1.5", MN_ERR_PARSE, "fraction of a byte"},
      {"1.", MN_ERR_PARSE, "decimal point"},
      {"1.GB", MN_ERR_PARSE, "decimal point"},
      {".5GB", MN_ERR_PARSE, "does not start with a number"},
      {"+5GB", MN_ERR_PARSE, "does not start with a number"},
      {"0x10", MN_ERR_PARSE, "unknown unit \"x\""},
      {"inf", MN_ERR_PARSE, "does not start with a number"},
      {"nan", MN_ERR_PARSE, "does not start with a number"},
      {"1,000", MN_ERR_PARSE, "not a unit"},
      {"3ZB", MN_ERR_PARSE, "unknown unit \"ZB\""},
      {"16EiB", MN_ERR_RANGE, "too large"},
      {"10 GBs", MN_ERR_PARSE, "unknown unit \"GBs\""},
      {"18446744073709551616", MN_ERR_RANGE, "too large"},
      {"20000000TB", MN_ERR_RANGE, "too large"},
      {"16777216TiB", MN_ERR_RANGE, "too large"},
      {"99999999999999999999999999999999999999999", MN_ERR_RANGE, "too large"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint64_t v = 777;
    mn_errmsg_clear();
    mn_status s = mn_size_parse(cases[i].text, &v);
    if (s != cases[i].status)
      fail_msg("\"%s\": got %s, want %s", cases[i].text, mn_status_name(s),
               mn_status_name(cases[i].status));
    assert_int_equal(v, 777); /* untouched on failure */
    const char *msg = mn_errmsg();
    if (!strstr(msg, cases[i].says))
      fail_msg("\"%s\": message \"%s\" lacks \"%s\"", cases[i].text, msg,
               cases[i].says);
    /* Every message gives an example of what to write instead. */
    if (!strstr(msg, "\"20GB\"") && !strstr(msg, "\"1.5KB\"") &&
        !strstr(msg, "\"16TiB\""))
      fail_msg("\"%s\": message \"%s\" has no example", cases[i].text, msg);
  }
  uint64_t v;
  assert_int_equal(mn_size_parse(NULL, &v), MN_ERR_PARSE);
  assert_non_null(strstr(mn_errmsg(), "missing"));

  /* A huge argument does not flood the message. */
  char big[5000];
  memset(big, '7', sizeof big - 3);
  strcpy(big + sizeof big - 3, "QB");
  assert_int_equal(mn_size_parse(big, &v), MN_ERR_PARSE);
  assert_true(strlen(mn_errmsg()) < 400);
}

/* Random sizes against a reference computed in long double from the same
 * digits: the parser must agree to the nearest byte. */
static void test_random_against_long_double(void **state) {
  (void)state;
  static const struct {
    const char *name;
    long double mult;
  } units[] = {{"", 1},
               {"B", 1},
               {"KB", 1e3L},
               {"MB", 1e6L},
               {"GB", 1e9L},
               {"TB", 1e12L},
               {"KiB", 1024.0L},
               {"MiB", 1048576.0L},
               {"GiB", 1073741824.0L},
               {"TiB", 1099511627776.0L}};
  srand(1234);
  for (int it = 0; it < 20000; it++) {
    int u = rand() % 10;
    unsigned long whole = (unsigned long)rand() % 1000000;
    int nfrac = units[u].mult == 1 ? 0 : rand() % 4;
    unsigned frac = 0;
    char text[64];
    int n = snprintf(text, sizeof text, "%lu", whole);
    if (nfrac) {
      frac = (unsigned)rand() % (nfrac == 1 ? 10 : nfrac == 2 ? 100 : 1000);
      n += snprintf(text + n, sizeof text - (size_t)n, ".%0*u", nfrac, frac);
    }
    snprintf(text + n, sizeof text - (size_t)n, "%s%s", rand() % 2 ? " " : "",
             units[u].name);
    long double scale = nfrac == 0   ? 1
                        : nfrac == 1 ? 10
                        : nfrac == 2 ? 100
                                     : 1000;
    long double want =
        ((long double)whole + (long double)frac / scale) * units[u].mult;
    uint64_t got;
    if (mn_size_parse(text, &got) != MN_OK)
      fail_msg("\"%s\": %s", text, mn_errmsg());
    long double diff = fabsl((long double)got - want);
    if (diff > 0.5L + want * 1e-15L)
      fail_msg("\"%s\": got %llu, want %.3Lf", text, (unsigned long long)got,
               want);
  }
}

static void test_format(void **state) {
  (void)state;
  char buf[32];
  const struct {
    uint64_t bytes;
    const char *text;
  } cases[] = {
      {0, "0 B"},
      {1023, "1023 B"},
      {1024, "1 KiB"},
      {1536, "1.50 KiB"},
      {1610612736ull, "1.50 GiB"},
      {536870912ull, "512 MiB"},
      {1048575, "1.00 MiB"},
      {20000000000ull, "18.63 GiB"},
      {UINT64_MAX, "16.00 EiB"},
      {1ull << 62, "4 EiB"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const char *r = mn_size_format(cases[i].bytes, buf, sizeof buf);
    assert_ptr_equal(r, buf);
    assert_string_equal(r, cases[i].text);
  }
  /* A short buffer is truncated, never overrun. */
  char small[6];
  memset(small, 'x', sizeof small);
  mn_size_format(1610612736ull, small, 4);
  assert_string_equal(small, "1.5");
  assert_int_equal(small[4], 'x');
  assert_string_equal(mn_size_format(5, NULL, 0), "");
}

/* What mn_size_format writes, mn_size_parse reads back to within the
 * two-decimal rounding of the text. */
static void test_round_trip(void **state) {
  (void)state;
  srand(99);
  for (int it = 0; it < 5000; it++) {
    uint64_t v = ((uint64_t)rand() << 31 ^ (uint64_t)rand()) >> (rand() % 62);
    char buf[32];
    mn_size_format(v, buf, sizeof buf);
    uint64_t back;
    if (mn_size_parse(buf, &back) != MN_OK)
      fail_msg("\"%s\" (%llu): %s", buf, (unsigned long long)v, mn_errmsg());
    double rel = fabs((double)back - (double)v) / (double)(v ? v : 1);
    if (rel > 0.005)
      fail_msg("%llu -> \"%s\" -> %llu", (unsigned long long)v, buf,
               (unsigned long long)back);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_accepts),
      cmocka_unit_test(test_refuses),
      cmocka_unit_test(test_random_against_long_double),
      cmocka_unit_test(test_format),
      cmocka_unit_test(test_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
