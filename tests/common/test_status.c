/* test_status.c - status names and texts, the detail message, accounting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/internal.h"

static void test_names(void **state) {
  (void)state;
  assert_string_equal(mn_status_name(MN_OK), "MN_OK");
  assert_string_equal(mn_status_name(MN_ERR_DEVICE_OOM), "MN_ERR_DEVICE_OOM");
  assert_string_equal(mn_strerror(MN_ERR_INVALID), "invalid argument");
  assert_string_equal(mn_strerror((mn_status)-999), "unknown status");
}

static void test_errmsg(void **state) {
  (void)state;
  mn_errmsg_clear();
  assert_string_equal(mn_errmsg(), "");
  assert_int_equal(mn__set_error(MN_ERR_RANGE, "x=%d", 7), MN_ERR_RANGE);
  assert_string_equal(mn_errmsg(), "x=7");
}

static void test_accounting(void **state) {
  (void)state;
  int64_t before = mn_account_get(MN_TIER_HOST);
  void *p = mn_malloc(1000);
  assert_non_null(p);
  assert_int_equal(((uintptr_t)p) % 64, 0);
  assert_true(mn_account_get(MN_TIER_HOST) >= before + 1000);
  mn_free(p);
  assert_int_equal(mn_account_get(MN_TIER_HOST), before);
  mn_account_add(MN_TIER_DEVICE, 4096);
  assert_int_equal(mn_account_get(MN_TIER_DEVICE), 4096);
  assert_true(mn_account_peak(MN_TIER_DEVICE) >= 4096);
  mn_account_add(MN_TIER_DEVICE, -4096);
  assert_int_equal(mn_account_get(MN_TIER_DEVICE), 0);
}

/* Blocks with room in front: aligned, counted, freed by mn_free; a
 * detached block is no longer counted and its whole front is writable. */
static void test_front_room(void **state) {
  (void)state;
  int64_t before = mn_account_get(MN_TIER_HOST);
  void *plain = mn_malloc(100);
  assert_int_equal(mn__alloc_front(plain), 64);
  unsigned char *p = mn__malloc_front(100000, 4000);
  assert_non_null(p);
  assert_int_equal(((uintptr_t)p) % 64, 0);
  assert_int_equal(mn__alloc_front(p), 4032); /* rounded up to 64 */
  assert_true(mn_account_get(MN_TIER_HOST) >= before + 100000 + 4032 + 100);
  memset(p, 0x5a, 100000);
  mn_free(p);
  unsigned char *q = mn__malloc_front(5000, MN__TENSOR_FRONT);
  assert_non_null(q);
  memset(q, 0x11, 5000);
  size_t front = 0;
  unsigned char *base = mn__alloc_detach(q, &front);
  assert_int_equal(front, MN__TENSOR_FRONT);
  assert_ptr_equal(base + front, q);
  mn_free(plain);
  assert_int_equal(mn_account_get(MN_TIER_HOST), before);
  memset(base, 0x22, front); /* the bookkeeping bytes too: ours now */
  for (int i = 0; i < 5000; i++)
    assert_int_equal(q[i], 0x11);
  free(base);
}

static void test_dtype(void **state) {
  (void)state;
  assert_int_equal(mn_dtype_row_bytes(MN_DTYPE_I4, 767), 384);
  assert_int_equal(mn_dtype_row_bytes(MN_DTYPE_BIN, 767), 96);
  assert_int_equal(mn_dtype_row_bytes(MN_DTYPE_F16, 3), 6);
  mn_dtype d;
  assert_int_equal(mn_dtype_parse("fp16", &d), MN_OK);
  assert_int_equal(d, MN_DTYPE_F16);
  assert_int_equal(mn_dtype_parse("float64", &d), MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "float64"));
}

static void test_finite(void **state) {
  (void)state;
  float v[6] = {1, 2, 3, 4, 5, 6};
  mn_tensor t = mn_tensor_host(v, MN_DTYPE_F32, 2, 3);
  assert_int_equal(mn_tensor_check_finite(&t), MN_OK);
  v[4] = 0.0f / 0.0f;
  assert_int_equal(mn_tensor_check_finite(&t), MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "row 1, column 1 is NaN"));
  v[4] = 1.0f / 0.0f;
  assert_int_equal(mn_tensor_check_finite(&t), MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "infinite"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_names),      cmocka_unit_test(test_errmsg),
      cmocka_unit_test(test_accounting), cmocka_unit_test(test_front_room),
      cmocka_unit_test(test_dtype),      cmocka_unit_test(test_finite)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
