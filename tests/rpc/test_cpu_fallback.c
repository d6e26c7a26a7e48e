/*
 * test_cpu_fallback.c - device out of memory inside a job: the engine
 * retries the job on the CPU, says so in the reply (metadata.cpu_fallback,
 * metadata.device) and the log, counts it (cpu_fallbacks in getMetrics,
 * mnemo_cpu_fallbacks_total in the Prometheus text), and keeps serving.
 *
 * The "GPU" is tests/compute/fake_plugin_oom.c: device tensors, normalize
 * up to 16 rows, MN_ERR_DEVICE_OOM for anything larger and for every other
 * op. Results are checked against double-precision references computed
 * here (normalize, int8, the PCA projection with the stored model) and,
 * for the PCA fit, against the CPU backend's own fit.
 */
#include "rpc_fixture.h"

#ifndef FAKE_PLUGIN_OOM
#error "tests/compute/tests.cmake passes the fake plugins' paths"
#endif

/* ------------------------------------------------------------ log capture */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char warnings[16][1024];
static int n_warnings;

static void capture(mn_log_level level, const char *module, const char *msg,
                    void *user) {
  (void)module, (void)user;
  if (level < MN_LOG_WARN)
    return;
  pthread_mutex_lock(&log_lock);
  if (n_warnings < 16)
    snprintf(warnings[n_warnings++], sizeof warnings[0], "%s", msg);
  pthread_mutex_unlock(&log_lock);
}

static int warned(const char *a, const char *b) {
  int found = 0;
  pthread_mutex_lock(&log_lock);
  for (int i = 0; i < n_warnings; i++)
    found |= strstr(warnings[i], a) && (!b || strstr(warnings[i], b));
  pthread_mutex_unlock(&log_lock);
  return found;
}

/* ---------------------------------------------------------------- engine */
/* min_elements: gpu.min_elements (-1: the default). */
static fx *fx_fake_gpu_min(int64_t min_elements) {
  fx *f = calloc(1, sizeof *f);
  assert_non_null(f);
  snprintf(f->dir, sizeof f->dir, "/tmp/mnemo-fallback-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  mn_config_defaults(&f->cfg);
  if (min_elements >= 0)
    f->cfg.gpu_min_elements = min_elements;
  snprintf(f->cfg.data_dir, sizeof f->cfg.data_dir, "%s", f->dir);
  mn_backend_opts bo;
  mn_backend_opts_init(&bo);
  if (mn_backend_open_plugin(FAKE_PLUGIN_OOM, &bo, &f->b) != MN_OK)
    fail_msg("cannot load %s: %s", FAKE_PLUGIN_OOM, mn_errmsg());
  assert_string_equal(mn_backend_name(f->b), "fakegpu");
  assert_int_equal(mn_backend_device_kind(f->b), MN_DEVICE_GPU);
  assert_int_equal(mn_metrics_create(&f->m), MN_OK);
  fx_open_engine(f);
  return f;
}

/* Every job on the fake device, however small (the fallback tests). */
static fx *fx_fake_gpu(void) {
  return fx_fake_gpu_min(0);
}

static char *process_request(const float *x, int64_t rows, int64_t cols,
                             const char *options) {
  sbuf b = {0};
  sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"processEmbeddings\","
             "\"params\":{\"embeddings\":");
  sb_matrix(&b, x, rows, cols);
  sb_add(&b, ",\"options\":%s}}", options);
  return b.p;
}

static int64_t fallbacks_counted(fx *f) {
  json_t *rep;
  json_t *res = fx_ok(
      f, "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"getMetrics\"}", &rep);
  json_t *c =
      json_object_get(json_object_get(res, "counters"), "cpu_fallbacks");
  int64_t n = c ? (int64_t)json_integer_value(c) : 0;
  json_decref(rep);
  /* The same figure in the Prometheus exposition. */
  char *prom = mn_metrics_prometheus(f->m);
  assert_non_null(prom);
  char want[64];
  snprintf(want, sizeof want, "\nmnemo_cpu_fallbacks_total %lld\n",
           (long long)n);
  if (n && !strstr(prom, want))
    fail_msg("/metrics lacks \"%s\"", want + 1);
  free(prom);
  return n;
}

/* Check a normalize reply (float32 JSON arrays) against the reference. */
static void check_normalized(json_t *res, const float *x, int64_t rows,
                             int64_t cols) {
  double *got = malloc(sizeof(double) * (size_t)(rows * cols));
  double *want = malloc(sizeof(double) * (size_t)(rows * cols));
  assert_int_equal(read_matrix(json_object_get(res, "processed"), got, cols),
                   rows);
  ref_normalize(x, want, rows, cols);
  for (int64_t i = 0; i < rows * cols; i++)
    if (!(fabs(got[i] - want[i]) <= 1e-6))
      fail_msg("element %lld: %.9g, reference %.9g", (long long)i, got[i],
               want[i]);
  free(got);
  free(want);
}

static const char *device_of(json_t *res) {
  return json_string_value(
      json_object_get(json_object_get(res, "metadata"), "device"));
}

static int fell_back(json_t *res) {
  json_t *v = json_object_get(json_object_get(res, "metadata"), "cpu_fallback");
  if (v)
    assert_true(json_is_true(v));
  return v != NULL;
}

/* ----------------------------------------------------------------- tests */
static void test_fallback_and_keep_serving(void **state) {
  (void)state;
  mn_log_set(capture, NULL);
  fx *f = fx_fake_gpu();
  const int64_t cols = 24;

  /* Small enough for the device: no fallback. */
  float *x = rand_matrix(4, cols);
  char *req = process_request(x, 4, cols, "{\"normalize\":true}");
  json_t *rep;
  json_t *res = fx_ok(f, req, &rep);
  assert_non_null(strstr(device_of(res), "fakegpu:0"));
  assert_false(fell_back(res));
  check_normalized(res, x, 4, cols);
  json_decref(rep);
  free(req);
  free(x);
  assert_int_equal(fallbacks_counted(f), 0);

  /* Too large for the device: the CPU does it. */
  x = rand_matrix(40, cols);
  for (int64_t c = 0; c < cols; c++)
    x[7 * cols + c] = 0.0f; /* a zero row, counted once */
  req = process_request(x, 40, cols, "{\"normalize\":true}");
  res = fx_ok(f, req, &rep);
  assert_true(fell_back(res));
  assert_non_null(strstr(device_of(res), "cpu ("));
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(res, "metadata"), "zero_rows")),
                   1);
  check_normalized(res, x, 40, cols);
  json_decref(rep);
  free(req);
  free(x);
  assert_int_equal(fallbacks_counted(f), 1);
  /* (The pipeline gives the device 32 rows at a time: batch_size.) */
  assert_true(warned("job of 40 x 24 ran out of device memory on fakegpu:0",
                     "fake gpu: out of device memory in normalize of 32"));

  /* normalize fits, int8 quantize does not: the whole job moves. */
  const int64_t rows = 8;
  x = rand_matrix(rows, cols);
  req = process_request(x, rows, cols,
                        "{\"normalize\":true,\"quantization\":\"int8\"}");
  res = fx_ok(f, req, &rep);
  assert_true(fell_back(res));
  double *y = malloc(sizeof(double) * (size_t)(rows * cols));
  double *codes = malloc(sizeof(double) * (size_t)(rows * cols));
  ref_normalize(x, y, rows, cols);
  assert_int_equal(read_matrix(json_object_get(res, "processed"), codes, cols),
                   rows);
  json_t *scales = json_object_get(res, "scales");
  assert_int_equal(json_array_size(scales), rows);
  for (int64_t r = 0; r < rows; r++) {
    double m = 0;
    for (int64_t c = 0; c < cols; c++)
      m = fmax(m, fabs(y[r * cols + c]));
    double s = json_number_value(json_array_get(scales, (size_t)r));
    if (!(fabs(s - m / 127) <= 1e-6 * m))
      fail_msg("row %lld: scale %.9g, reference %.9g", (long long)r, s,
               m / 127);
    for (int64_t c = 0; c < cols; c++) {
      double want = nearbyint(y[r * cols + c] / (m / 127));
      if (!(fabs(codes[r * cols + c] - want) <= 1))
        fail_msg("row %lld col %lld: code %g, reference %g", (long long)r,
                 (long long)c, codes[r * cols + c], want);
    }
  }
  free(y);
  free(codes);
  json_decref(rep);
  free(req);
  free(x);
  assert_int_equal(fallbacks_counted(f), 2);

  /* fitPCA: the device fails, the CPU fits; the same model as the CPU
   * backend fits on its own. */
  const int64_t n = 30, d = 8, k = 3;
  x = rand_matrix(n, d);
  for (int64_t i = 0; i < n; i++)
    for (int64_t c = 0; c < d; c++)
      x[i * d + c] *= (float)(8 - c); /* distinct variances */
  sbuf b = {0};
  sb_add(&b,
         "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"fitPCA\",\"params\":"
         "{\"name\":\"m\",\"n_components\":%lld,\"embeddings\":",
         (long long)k);
  sb_matrix(&b, x, n, d);
  sb_add(&b, "}}");
  res = fx_ok(f, b.p, &rep);
  assert_int_equal(json_integer_value(json_object_get(res, "n_components")), k);
  json_decref(rep);
  free(b.p);
  assert_int_equal(fallbacks_counted(f), 3);
  mn_backend *cpu = NULL;
  assert_int_equal(mn_backend_open_cpu(NULL, &cpu), MN_OK);
  mn_tensor t = mn_tensor_host(x, MN_DTYPE_F32, n, d);
  mn_pca_model *ref = NULL;
  assert_int_equal(mn_backend_pca_fit(cpu, &t, k, &ref), MN_OK);
  const mn_pca_model *got = mn__pca_store_get(f->r->pca, "m", NULL);
  assert_non_null(got);
  assert_memory_equal(got->mean, ref->mean, sizeof(float) * (size_t)d);
  assert_memory_equal(got->components, ref->components,
                      sizeof(float) * (size_t)(k * d));

  /* processEmbeddings with the model: pca_transform fails on the device.
   * Reference: (x - mean) . components' in double. */
  req = process_request(x, 5, d, "{\"pca_model\":\"m\"}");
  res = fx_ok(f, req, &rep);
  assert_true(fell_back(res));
  double *p = malloc(sizeof(double) * (size_t)(5 * k));
  assert_int_equal(read_matrix(json_object_get(res, "processed"), p, k), 5);
  for (int64_t r = 0; r < 5; r++)
    for (int64_t j = 0; j < k; j++) {
      double s = 0;
      for (int64_t c = 0; c < d; c++)
        s += ((double)x[r * d + c] - got->mean[c]) * got->components[j * d + c];
      if (!(fabs(p[r * k + j] - s) <= 1e-5 * (1 + fabs(s))))
        fail_msg("row %lld component %lld: %.9g, reference %.9g", (long long)r,
                 (long long)j, p[r * k + j], s);
    }
  free(p);
  mn__pca_store_put(f->r->pca, got);
  mn_pca_free(ref);
  mn_backend_close(cpu);
  json_decref(rep);
  free(req);
  free(x);
  assert_int_equal(fallbacks_counted(f), 4);

  /* And the device still serves what fits. */
  x = rand_matrix(16, cols);
  req = process_request(x, 16, cols, "{\"normalize\":true}");
  res = fx_ok(f, req, &rep);
  assert_non_null(strstr(device_of(res), "fakegpu:0"));
  assert_false(fell_back(res));
  check_normalized(res, x, 16, cols);
  json_decref(rep);
  free(req);
  free(x);
  assert_int_equal(fallbacks_counted(f), 4);

  fx_free(f);
  mn_log_set(NULL, NULL);
}

/* On the CPU backend there is nothing to fall back to: no second backend,
 * and the counter never appears. */
static void test_cpu_engine_has_no_fallback(void **state) {
  (void)state;
  fx *f = fx_new();
  assert_null(f->r->cpu);
  float *x = rand_matrix(40, 24);
  char *req = process_request(x, 40, 24, "{\"normalize\":true}");
  json_t *rep;
  json_t *res = fx_ok(f, req, &rep);
  assert_false(fell_back(res));
  json_decref(rep);
  free(req);
  free(x);
  assert_int_equal(fallbacks_counted(f), 0);
  fx_free(f);
}

/* gpu.min_elements: small elementwise jobs run on the CPU backend beside
 * the device (metadata.device says so; no fallback is counted), larger
 * ones and any job with a PCA go to the device. */
static void test_small_jobs_stay_on_the_host(void **state) {
  (void)state;
  fx *f = fx_fake_gpu_min(-1);
  assert_int_equal(f->cfg.gpu_min_elements, 262144);
  float *x = rand_matrix(4, 24);
  char *req = process_request(x, 4, 24, "{\"normalize\":true}");
  json_t *rep;
  json_t *res = fx_ok(f, req, &rep);
  assert_non_null(strstr(device_of(res), "cpu ("));
  assert_false(fell_back(res));
  check_normalized(res, x, 4, 24);
  json_decref(rep);
  free(req);
  free(x);
  fx_free(f);

  f = fx_fake_gpu_min(96); /* 4 x 24 values: not fewer than 96 */
  x = rand_matrix(4, 24);
  req = process_request(x, 4, 24, "{\"normalize\":true}");
  res = fx_ok(f, req, &rep);
  assert_non_null(strstr(device_of(res), "fakegpu:0"));
  check_normalized(res, x, 4, 24);
  json_decref(rep);
  free(req);
  free(x);
  assert_int_equal(fallbacks_counted(f), 0);
  /* 3 x 24 is under it, but a PCA goes to the device anyway (whose fit
   * always runs out of memory: so it falls back, which shows it tried) */
  x = rand_matrix(3, 24);
  req = process_request(x, 3, 24, "{\"reduce_dimensions\":2}");
  res = fx_ok(f, req, &rep);
  assert_true(fell_back(res));
  json_decref(rep);
  free(req);
  free(x);
  assert_int_equal(fallbacks_counted(f), 1);
  fx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_small_jobs_stay_on_the_host),
      cmocka_unit_test(test_fallback_and_keep_serving),
      cmocka_unit_test(test_cpu_engine_has_no_fallback),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
