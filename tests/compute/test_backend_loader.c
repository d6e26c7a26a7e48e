/*
 * test_backend_loader.c - plugin loading and the backend factory, with
 * fake plugins built by tests/compute/tests.cmake: a good one, one with the
 * wrong API version, one that scores 0, one without mn_plugin_init, one
 * whose init fails, a file that is not a shared object and a path that
 * does not exist. mn_backend_open_plugin must say what is wrong with each;
 * mn_backend_open under AUTO must fall back to the CPU and warn through the
 * log callback, under CUDA must fail, and must load a good plugin found in
 * the plugin directory or through MNEMO_BACKEND_PATH.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "compute/backend_impl.h"
#include "compute/refops.h"
#include "mnemo/compute.h"

#define STR_(x) #x
#define STR(x) STR_(x)

#ifndef FAKE_PLUGIN_GOOD
#error "tests/compute/tests.cmake passes the fake plugins' paths"
#endif

/* ----------------------------------------------------------- log capture */
#define LOG_MAX 64
static struct {
  mn_log_level level[LOG_MAX];
  char module[LOG_MAX][32];
  char msg[LOG_MAX][1024];
  int n;
} logs;

static void capture(mn_log_level level, const char *module, const char *msg,
                    void *user) {
  (void)user;
  if (logs.n >= LOG_MAX)
    return;
  logs.level[logs.n] = level;
  snprintf(logs.module[logs.n], sizeof logs.module[0], "%s", module);
  snprintf(logs.msg[logs.n], sizeof logs.msg[0], "%s", msg);
  logs.n++;
}

/* Index of the first message at `level` mentioning both fragments, or -1. */
static int find_log(mn_log_level level, const char *a, const char *b) {
  for (int i = 0; i < logs.n; i++)
    if (logs.level[i] == level && strstr(logs.msg[i], a) &&
        (!b || strstr(logs.msg[i], b)))
      return i;
  return -1;
}

static int count_level(mn_log_level level) {
  int n = 0;
  for (int i = 0; i < logs.n; i++)
    n += logs.level[i] == level;
  return n;
}

static void dump_logs(void) {
  for (int i = 0; i < logs.n; i++)
    print_message("  log[%d] %s %s: %s\n", i, mn_log_level_name(logs.level[i]),
                  logs.module[i], logs.msg[i]);
}

/* ------------------------------------------------------ plugin folders */
/* A folder holding libmnemo-cuda.so: a link to `target`, or (target NULL)
 * a text file that is not a shared object. */
static char dirs[8][64];
static int ndirs;

static const char *plugin_dir(const char *target) {
  char *d = dirs[ndirs++];
  snprintf(d, sizeof dirs[0], "/tmp/mnemo-loader-XXXXXX");
  assert_non_null(mkdtemp(d));
  char path[640];
  snprintf(path, sizeof path, "%s/libmnemo-cuda.so", d);
  if (target) {
    assert_int_equal(symlink(target, path), 0);
  } else {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("this is not an ELF file\n", f);
    fclose(f);
  }
  return d;
}

static void remove_dirs(void) {
  for (int i = 0; i < ndirs; i++) {
    char path[640];
    snprintf(path, sizeof path, "%s/libmnemo-cuda.so", dirs[i]);
    unlink(path);
    rmdir(dirs[i]);
  }
  ndirs = 0;
}

static const char *junk_dir, *good_dir, *badver_dir, *zero_dir;

static int setup(void **state) {
  (void)state;
  /* Only what each test sets may steer the search. */
  unsetenv("MNEMO_BACKEND_PATH");
  mn_log_set(capture, NULL);
  mn_log_set_level(MN_LOG_DEBUG);
  junk_dir = plugin_dir(NULL);
  good_dir = plugin_dir(FAKE_PLUGIN_GOOD);
  badver_dir = plugin_dir(FAKE_PLUGIN_BADVER);
  zero_dir = plugin_dir(FAKE_PLUGIN_ZERO);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  remove_dirs();
  mn_log_set(NULL, NULL);
  return 0;
}

static void reset(void) {
  memset(&logs, 0, sizeof logs);
  unsetenv("MNEMO_BACKEND_PATH");
  mn_errmsg_clear();
}

/* Expect `want` from mn_backend_open_plugin(path) with a message holding
 * both fragments, no backend, and nothing left accounted on the device. */
static void expect_plugin_error(const char *path, mn_status want, const char *a,
                                const char *b) {
  reset();
  mn_backend *be = (mn_backend *)&be; /* must be left alone or NULL */
  mn_status s = mn_backend_open_plugin(path, NULL, &be);
  if (s != want)
    fail_msg("%s: got %s (%s), expected %s", path, mn_status_name(s),
             mn_errmsg(), mn_status_name(want));
  if (!strstr(mn_errmsg(), a) || (b && !strstr(mn_errmsg(), b)))
    fail_msg("%s: message \"%s\" should mention \"%s\"%s%s", path, mn_errmsg(),
             a, b ? " and " : "", b ? b : "");
  assert_true(be == NULL || be == (mn_backend *)&be);
  assert_int_equal(mn_account_get(MN_TIER_DEVICE), 0);
}

static void test_open_plugin_errors(void **state) {
  (void)state;
  expect_plugin_error(FAKE_PLUGIN_BADVER, MN_ERR_VERSION, "API version 999",
                      "needs " STR(MN_BACKEND_API_VERSION));
  expect_plugin_error(FAKE_PLUGIN_ZERO, MN_ERR_UNSUPPORTED,
                      "not usable on this machine", "score 0");
  expect_plugin_error(FAKE_PLUGIN_NOSYM, MN_ERR_VERSION, "mn_plugin_init",
                      FAKE_PLUGIN_NOSYM);
  expect_plugin_error(FAKE_PLUGIN_INITFAIL, MN_ERR_DEVICE, "failed to start",
                      "fake driver: no device answered");
  char junk[128];
  snprintf(junk, sizeof junk, "%s/libmnemo-cuda.so", junk_dir);
  expect_plugin_error(junk, MN_ERR_NOT_FOUND, "cannot load plugin", junk);
  expect_plugin_error("/nonexistent/mnemo/libmnemo-cuda.so", MN_ERR_NOT_FOUND,
                      "cannot load plugin", "/nonexistent/mnemo");
  mn_backend *be = NULL;
  assert_int_equal(mn_backend_open_plugin(NULL, NULL, &be), MN_ERR_INVALID);
  assert_int_equal(mn_backend_open_plugin(FAKE_PLUGIN_GOOD, NULL, NULL),
                   MN_ERR_INVALID);
}

/* The good plugin loads, starts (its log line and accounting show), does
 * its op, refuses what it does not implement, and is torn down on close. */
static void test_good_plugin(void **state) {
  (void)state;
  reset();
  mn_backend *be = NULL;
  mn_status s = mn_backend_open_plugin(FAKE_PLUGIN_GOOD, NULL, &be);
  if (s != MN_OK)
    fail_msg("good plugin: %s", mn_errmsg());
  assert_string_equal(mn_backend_name(be), "fake");
  assert_string_equal(mn_backend_device(be), "fake:0 test plugin");
  assert_int_equal(mn_backend_device_kind(be), MN_DEVICE_HOST);
  assert_int_equal(mn_account_get(MN_TIER_DEVICE), 4096);
  int i = find_log(MN_LOG_INFO, "fake plugin ready (4096 reserved)", NULL);
  assert_true(i >= 0);
  assert_string_equal(logs.module[i], "fake");

  trng r = {11};
  float *x = ref_random(&r, 9, 7, 1.0, 0);
  memset(x + 3 * 7, 0, 7 * sizeof(float));
  double *ref = ref_widen(x, 9, 7, 7);
  int64_t zref = ref_normalize(ref, 9, 7);
  float y[9 * 7];
  mn_tensor tx = mn_tensor_host(x, MN_DTYPE_F32, 9, 7);
  mn_tensor ty = mn_tensor_host(y, MN_DTYPE_F32, 9, 7);
  int64_t zero = -1;
  assert_int_equal(mn_backend_normalize(be, &tx, &ty, &zero), MN_OK);
  assert_int_equal(zero, zref);
  assert_true(ref_max_rel(y, 7, ref, 9, 7) <= 1e-6);

  /* Buffers go through the plugin's own alloc / upload / download. */
  void *buf = NULL;
  assert_int_equal(mn_backend_alloc(be, sizeof y, &buf), MN_OK);
  assert_int_equal(mn_backend_upload(be, buf, y, sizeof y), MN_OK);
  float back[9 * 7];
  assert_int_equal(mn_backend_download(be, back, buf, sizeof y), MN_OK);
  assert_memory_equal(back, y, sizeof y);
  mn_backend_free(be, buf);
  uint64_t fr = 0, tot = 0;
  assert_int_equal(mn_backend_memory_info(be, &fr, &tot), MN_OK);
  assert_int_equal(tot - fr, 4096);

  /* What the plugin leaves out is refused with the op's name. */
  mn_pca_model *m = NULL;
  assert_int_equal(mn_backend_pca_fit(be, &tx, 2, &m), MN_ERR_UNSUPPORTED);
  assert_non_null(strstr(mn_errmsg(), "fake has no pca_fit"));
  assert_null(m);
  assert_int_equal(mn_backend_synchronize(be), MN_OK); /* optional op */

  mn_backend_close(be);
  assert_int_equal(mn_account_get(MN_TIER_DEVICE), 0);
  free(ref);
  free(x);
}

/* Open under `pref` with the given plugin folder and MNEMO_BACKEND_PATH;
 * returns the status and leaves the backend (or NULL) in *out. */
static mn_status open_with(mn_backend_pref pref, const char *dir,
                           const char *env, mn_backend **out) {
  reset();
  if (env)
    setenv("MNEMO_BACKEND_PATH", env, 1);
  mn_backend_opts o;
  mn_backend_opts_init(&o);
  o.pref = pref;
  o.plugin_dir = dir;
  *out = NULL;
  mn_status s = mn_backend_open(&o, out);
  unsetenv("MNEMO_BACKEND_PATH");
  return s;
}

static void expect_cpu_fallback(const char *dir, const char *env,
                                const char *why) {
  mn_backend *be = NULL;
  mn_status s = open_with(MN_BACKEND_AUTO, dir, env, &be);
  if (s != MN_OK)
    fail_msg("AUTO must fall back to the CPU: %s", mn_errmsg());
  assert_string_equal(mn_backend_name(be), "cpu");
  /* A plugin that finds no usable GPU (score 0) is the normal case on a
   * CPU machine: logged at info. One that fails to load or start: warned. */
  mn_log_level lvl = strstr(why, "score 0") ? MN_LOG_INFO : MN_LOG_WARN;
  if (find_log(lvl, "not used", why) < 0) {
    dump_logs();
    fail_msg("no %s saying the plugin was not used because \"%s\"",
             lvl == MN_LOG_INFO ? "info line" : "warning", why);
  }
  if (lvl == MN_LOG_INFO)
    assert_int_equal(count_level(MN_LOG_WARN), 0);
  assert_true(find_log(MN_LOG_INFO, "using the CPU", NULL) >= 0);
  mn_backend_close(be);
  assert_int_equal(mn_account_get(MN_TIER_DEVICE), 0);
}

static void test_auto_falls_back(void **state) {
  (void)state;
  char file[128];
  /* A bad plugin in the configured folder. */
  expect_cpu_fallback(badver_dir, NULL, "API version 999");
  expect_cpu_fallback(zero_dir, NULL, "score 0");
  expect_cpu_fallback(junk_dir, NULL, "cannot load plugin");
  /* Through MNEMO_BACKEND_PATH: a folder, a file, a list. */
  expect_cpu_fallback(NULL, badver_dir, "API version 999");
  expect_cpu_fallback(NULL, FAKE_PLUGIN_INITFAIL, "no device answered");
  snprintf(file, sizeof file, "/nonexistent:%s", zero_dir);
  expect_cpu_fallback(NULL, file, "score 0");
  expect_cpu_fallback(NULL, FAKE_PLUGIN_NOSYM, "mn_plugin_init");

  /* Nothing anywhere: the CPU, said at info level, with no warning. */
  mn_backend *be = NULL;
  assert_int_equal(open_with(MN_BACKEND_AUTO, "/nonexistent", NULL, &be),
                   MN_OK);
  assert_string_equal(mn_backend_name(be), "cpu");
  assert_int_equal(count_level(MN_LOG_WARN), 0);
  assert_true(find_log(MN_LOG_INFO, "not found", "using the CPU") >= 0);
  mn_backend_close(be);

  /* CPU asked for: no plugin is even looked at. */
  assert_int_equal(open_with(MN_BACKEND_CPU, badver_dir, NULL, &be), MN_OK);
  assert_string_equal(mn_backend_name(be), "cpu");
  assert_int_equal(count_level(MN_LOG_WARN), 0);
  mn_backend_close(be);
}

static void test_cuda_required(void **state) {
  (void)state;
  mn_backend *be = (mn_backend *)&be;
  assert_int_equal(open_with(MN_BACKEND_CUDA, badver_dir, NULL, &be),
                   MN_ERR_UNSUPPORTED);
  assert_non_null(strstr(mn_errmsg(), "CUDA backend requested"));
  assert_non_null(strstr(mn_errmsg(), "API version 999"));
  assert_true(be == NULL || be == (mn_backend *)&be);
  assert_int_equal(open_with(MN_BACKEND_CUDA, NULL, FAKE_PLUGIN_ZERO, &be),
                   MN_ERR_UNSUPPORTED);
  assert_non_null(strstr(mn_errmsg(), "score 0"));
  assert_int_equal(open_with(MN_BACKEND_CUDA, "/nonexistent", NULL, &be),
                   MN_ERR_UNSUPPORTED);
  assert_non_null(strstr(mn_errmsg(), "not found"));
  assert_int_equal(mn_account_get(MN_TIER_DEVICE), 0);
}

/* A good plugin is found in each place of the search order, and a bad one
 * earlier in the order does not stop the search. */
static void test_search_order(void **state) {
  (void)state;
  struct {
    mn_backend_pref pref;
    const char *dir, *env;
    int warned;
  } cases[] = {
      {MN_BACKEND_AUTO, good_dir, NULL, 0},
      {MN_BACKEND_CUDA, good_dir, NULL, 0},
      {MN_BACKEND_AUTO, NULL, good_dir, 0},
      {MN_BACKEND_AUTO, NULL, FAKE_PLUGIN_GOOD, 0},
      {MN_BACKEND_CUDA, badver_dir, FAKE_PLUGIN_GOOD, 1},
      /* No usable GPU (score 0) is not a warning. */
      {MN_BACKEND_AUTO, zero_dir, "/nonexistent:" FAKE_PLUGIN_GOOD, 0},
      /* The configured folder wins: the bad plugin later is not tried. */
      {MN_BACKEND_AUTO, good_dir, FAKE_PLUGIN_BADVER, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mn_backend *be = NULL;
    mn_status s = open_with(cases[i].pref, cases[i].dir, cases[i].env, &be);
    if (s != MN_OK)
      fail_msg("case %zu: %s", i, mn_errmsg());
    if (strcmp(mn_backend_name(be), "fake") != 0)
      fail_msg("case %zu: got backend %s, expected the fake plugin", i,
               mn_backend_name(be));
    assert_int_equal(count_level(MN_LOG_WARN), cases[i].warned);
    assert_true(find_log(MN_LOG_INFO, "using backend fake:0", NULL) >= 0);
    assert_int_equal(mn_account_get(MN_TIER_DEVICE), 4096);
    mn_backend_close(be);
    assert_int_equal(mn_account_get(MN_TIER_DEVICE), 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_open_plugin_errors),
      cmocka_unit_test(test_good_plugin),
      cmocka_unit_test(test_auto_falls_back),
      cmocka_unit_test(test_cuda_required),
      cmocka_unit_test(test_search_order),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
