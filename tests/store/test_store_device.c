/*
 * test_store_device.c - the store with L1 on a real device backend (the
 * CUDA plugin, or the plugin on the host emulator) against a CPU-only store
 * holding the same memories: the device chunks go through the grouped
 * backend calls (mn_backend_search_many / similarity_many), and every
 * search must return what the CPU path returns, up to float rounding.
 *
 * The device backend: the plugin named by $MNEMO_TEST_STORE_PLUGIN (the
 * emulated one in test_store_device_emu), else whatever mn_backend_open
 * finds for pref CUDA ($MNEMO_BUILD_DIR/bin first). Without one the test
 * is skipped (exit 77).
 *
 * Covered: float32, float16, int8 and binary storage; cosine, ip and l2;
 * 1, 3 and 20 queries (20: the device's GEMM path on 1024-row chunks);
 * deleted rows in every chunk (the fast path asks for k + dead rows); k
 * from 1 to more than a chunk; the general path with significance, decay,
 * chat and time filters; rows appended to a chunk already on the device.
 * The store hands the device its row norms (cosine, L2): the scores show
 * whether the device takes them right (test_store_norms checks the norms
 * themselves).
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mnemo/compute.h"
#include "store_helpers.h"

static mn_backend *dev;

static int setup(void **state) {
  (void)state;
  const char *path = getenv("MNEMO_TEST_STORE_PLUGIN");
  mn_backend_opts o;
  mn_backend_opts_init(&o);
  o.pref = MN_BACKEND_CUDA;
  char dir[1024];
  const char *build = getenv("MNEMO_BUILD_DIR");
  if (build) {
    snprintf(dir, sizeof dir, "%s/bin", build);
    o.plugin_dir = dir;
  }
  mn_status s = path && *path ? mn_backend_open_plugin(path, &o, &dev)
                              : mn_backend_open(&o, &dev);
  if (s != MN_OK) {
    print_message("no device backend, skipped (%s)\n", mn_errmsg());
    dev = NULL;
    return 0;
  }
  print_message("device backend: %s\n", mn_backend_device(dev));
  return 0;
}

static int teardown(void **state) {
  (void)state;
  mn_backend_close(dev);
  return 0;
}

static void check_dtype(mn_dtype dt) {
  if (!dev)
    skip();
  char *dir = make_tmpdir(), *dir2 = make_tmpdir();
  mn_store_opts o, o2;
  test_opts(&o, dir);
  test_opts(&o2, dir2);
  o.backend = dev;
  o.chunk_rows = o2.chunk_rows = 1024;
  o.l1_budget = 256u << 20;
  mn_store *s, *cpu;
  ST_OK(mn_store_open(&o, &s));
  ST_OK(mn_store_open(&o2, &cpu));
  const int64_t dim = 40, n = 3 * 1024 + 300;
  const mn_metric ms[] = {MN_METRIC_COSINE, MN_METRIC_IP, MN_METRIC_L2};
  for (int mi = 0; mi < 3; mi++) {
    char name[32];
    snprintf(name, sizeof name, "%s_%s", mn_dtype_name(dt),
             mn_metric_name(ms[mi]));
    mn_collection_opts co = coll_opts(name, dim, ms[mi], dt);
    ST_OK(mn_store_collection_create(s, &co, NULL));
    ST_OK(mn_store_collection_create(cpu, &co, NULL));
    pair_add(s, cpu, name, dim, n, 0, 100 + (uint64_t)(dt * 3 + mi));
    pair_delete(s, cpu, name, n, 5, 2);
    mn_collection_info ci;
    ST_OK(mn_store_collection_get(s, name, &ci));
    assert_int_equal(ci.chunks_tier[MN_TIER_DEVICE], 4);
    const int64_t nqs[] = {1, 3, 20};
    for (int qi = 0; qi < 3; qi++)
      pair_searches(s, cpu, name, dim, nqs[qi], 1500,
                    200 + (uint64_t)(dt * 9 + mi * 3 + qi), 1e-4);
    /* Rows appended to the last chunk, already on the device: their codes,
     * scales and norms go up after it (the store hands the device its
     * norms for cosine and L2). */
    pair_add(s, cpu, name, dim, 200, n, 400 + (uint64_t)(dt * 3 + mi));
    ST_OK(mn_store_collection_get(s, name, &ci));
    assert_int_equal(ci.chunks_tier[MN_TIER_DEVICE], 4);
    pair_searches(s, cpu, name, dim, 3, 1500, 500 + (uint64_t)(dt * 3 + mi),
                  1e-4);
  }
  mn_store_close(s);
  mn_store_close(cpu);
  rm_rf(dir);
  rm_rf(dir2);
  free(dir);
  free(dir2);
}

static void test_f32(void **state) {
  (void)state;
  check_dtype(MN_DTYPE_F32);
}

static void test_f16(void **state) {
  (void)state;
  check_dtype(MN_DTYPE_F16);
}

static void test_i8(void **state) {
  (void)state;
  check_dtype(MN_DTYPE_I8);
}

static void test_bin(void **state) {
  (void)state;
  check_dtype(MN_DTYPE_BIN);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_f32),
      cmocka_unit_test(test_f16),
      cmocka_unit_test(test_i8),
      cmocka_unit_test(test_bin),
  };
  int failed = cmocka_run_group_tests(tests, setup, teardown);
  if (!dev)
    return 77;
  return failed;
}
