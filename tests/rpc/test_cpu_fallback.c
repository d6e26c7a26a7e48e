/*
 * test_cpu_fallback.c - device out of memory inside a job: the engine
 * retries the job on the CPU, says so in the reply (metadata.cpu_fallback,
 * metadata.device) and the log, counts it (cpu_fallbacks in getMetrics,
 * mnemo_cpu_fallbacks_total in the Prometheus text), and keeps serving.
 *
 * The "GPU" is tests/compute/fake_plugin_oom.c: device tensors, normalize
 * up to 16 rows, MN_ERR_DEVICE_OOM for anything larger and for every other
 * op. Results are checked against double-precision references computed
 * here (normalize, int8, the PCA projection with the stored model, the
 * scores of searchMemories) and, for the PCA fit and searches, against
 * the CPU backend's own results (the fit; an engine on the CPU backend
 * holding the same memories).
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

static void warnings_reset(void) {
  pthread_mutex_lock(&log_lock);
  n_warnings = 0;
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

/* getMetrics' store.l1_cap: -1 when absent (no ceiling). */
static int64_t l1_cap_reported(fx *f) {
  json_t *rep;
  json_t *res = fx_ok(
      f, "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"getMetrics\"}", &rep);
  json_t *v = json_object_get(json_object_get(res, "store"), "l1_cap");
  int64_t n = v ? (int64_t)json_integer_value(v) : -1;
  if (v)
    assert_true(json_is_integer(v));
  json_decref(rep);
  return n;
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
  assert_true(json_is_true(json_object_get(res, "cpu_fallback")));
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

  /* processChunk: normalising 40 rows fails on the device; the CPU does
   * it, the reply says so, and the chunk holds the normalised rows. */
  res = fx_ok(f,
              "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"allocateMemory\","
              "\"params\":{\"size\":8192}}",
              &rep);
  char chunk[64];
  snprintf(chunk, sizeof chunk, "%s",
           json_string_value(json_object_get(res, "chunkId")));
  json_decref(rep);
  x = rand_matrix(40, cols);
  b = (sbuf){0};
  sb_add(&b,
         "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"processChunk\","
         "\"params\":{\"chunkId\":\"%s\",\"options\":{\"normalize\":true},"
         "\"embeddings\":",
         chunk);
  sb_matrix(&b, x, 40, cols);
  sb_add(&b, "}}");
  res = fx_ok(f, b.p, &rep);
  assert_int_equal(json_integer_value(json_object_get(res, "written")), 40);
  assert_true(json_is_true(json_object_get(res, "cpu_fallback")));
  json_decref(rep);
  free(b.p);
  assert_int_equal(fallbacks_counted(f), 5);
  b = (sbuf){0};
  sb_add(&b,
         "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"readChunk\","
         "\"params\":{\"chunkId\":\"%s\"}}",
         chunk);
  res = fx_ok(f, b.p, &rep);
  json_t *emb = json_object_get(res, "embeddings");
  json_object_set(res, "processed", emb);
  check_normalized(res, x, 40, cols);
  json_decref(rep);
  free(b.p);
  free(x);

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
  assert_int_equal(fallbacks_counted(f), 5);

  fx_free(f);
  mn_log_set(NULL, NULL);
}

/* ------------------------------------------------------- searchMemories */
#define S_DIM 16
#define S_N 4500 /* the store's chunks hold 4096 rows: two of them */
#define S_NQ 3
#define S_K 10

static double s_sig(int64_t i) {
  return 0.05 + (double)(i % 10) / 10.0;
}

static const char *s_chat(int64_t i) {
  return i % 3 == 0 ? "a" : "b";
}

/* The same memories into collection `name` of each engine. */
static void s_fill(fx *const *fs, int nf, const char *name, const char *dtype,
                   const float *x) {
  sbuf b = {0};
  sb_add(&b,
         "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"createCollection\","
         "\"params\":{\"name\":\"%s\",\"dim\":%d,\"dtype\":\"%s\"}}",
         name, S_DIM, dtype);
  json_t *rep;
  for (int e = 0; e < nf; e++) {
    fx_ok(fs[e], b.p, &rep);
    json_decref(rep);
  }
  b.len = 0;
  sb_add(&b,
         "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"addMemories\","
         "\"params\":{\"collection\":\"%s\",\"memories\":[",
         name);
  for (int64_t i = 0; i < S_N; i++)
    sb_add(&b, "%s{\"id\":\"m%lld\",\"chatId\":\"%s\",\"significance\":%.2f}",
           i ? "," : "", (long long)i, s_chat(i), s_sig(i));
  sb_add(&b, "],\"embeddings\":");
  sb_matrix(&b, x, S_N, S_DIM);
  sb_add(&b, "}}");
  for (int e = 0; e < nf; e++) {
    json_t *res = fx_ok(fs[e], b.p, &rep);
    assert_int_equal(json_integer_value(json_object_get(res, "count")), S_N);
    json_decref(rep);
  }
  free(b.p);
}

static char *s_request(const char *coll, const float *q, const char *extra) {
  sbuf b = {0};
  sb_add(&b,
         "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"searchMemories\","
         "\"params\":{\"collection\":\"%s\",\"k\":%d%s,\"query\":",
         coll, S_K, extra);
  sb_matrix(&b, q, S_NQ, S_DIM);
  sb_add(&b, "}}");
  return b.p;
}

/* The hits of a search reply: ids and scores, S_NQ x S_K. */
static void s_hits(json_t *res, int64_t ids[S_NQ][S_K],
                   double scores[S_NQ][S_K]) {
  json_t *all = json_object_get(res, "results");
  assert_int_equal(json_array_size(all), S_NQ);
  for (size_t qi = 0; qi < S_NQ; qi++) {
    json_t *hits = json_array_get(all, qi);
    assert_int_equal(json_array_size(hits), S_K);
    for (size_t j = 0; j < S_K; j++) {
      json_t *h = json_array_get(hits, j);
      const char *id = json_string_value(json_object_get(h, "id"));
      assert_non_null(id);
      assert_true(id[0] == 'm');
      ids[qi][j] = strtoll(id + 1, NULL, 10);
      scores[qi][j] = json_number_value(json_object_get(h, "score"));
    }
  }
}

/* Search collection `coll` on the fake GPU engine `f` and on the CPU
 * engine `g`: the same ids, the same scores. With x (a float32
 * collection), the scores are also checked against a double reference:
 * cosine x significance^w over the memories of `chat` (NULL: all), and no
 * memory scores better than a hit ranked below it. `expect`: 1 when the
 * search must fall back (some chunk of it is on the device, or comes up
 * to it on use, and every search op there fails), 0 when it must not, -1
 * either; the counter must agree with the reply. Returns whether it fell
 * back. */
static int s_check(fx *f, fx *g, int expect, const char *coll, const float *q,
                   const char *extra, const float *x, double w,
                   const char *chat) {
  char *req = s_request(coll, q, extra);
  int64_t before = fallbacks_counted(f);
  json_t *rep, *rep_cpu;
  json_t *res = fx_ok(f, req, &rep);
  json_t *res_cpu = fx_ok(g, req, &rep_cpu);
  int fell = fell_back(res);
  if (expect >= 0 && fell != expect)
    fail_msg("%s with %s: cpu_fallback %s", coll, extra,
             fell ? "true" : "absent");
  assert_false(fell_back(res_cpu));
  assert_int_equal(fallbacks_counted(f), before + fell);
  static int64_t ids[S_NQ][S_K], ids_cpu[S_NQ][S_K];
  static double sc[S_NQ][S_K], sc_cpu[S_NQ][S_K];
  s_hits(res, ids, sc);
  s_hits(res_cpu, ids_cpu, sc_cpu);
  for (int qi = 0; qi < S_NQ; qi++)
    for (int j = 0; j < S_K; j++) {
      if (ids[qi][j] != ids_cpu[qi][j] ||
          !(fabs(sc[qi][j] - sc_cpu[qi][j]) <= 1e-6))
        fail_msg("%s query %d hit %d: m%lld %.9g on the fallback, m%lld "
                 "%.9g on the CPU engine",
                 coll, qi, j, (long long)ids[qi][j], sc[qi][j],
                 (long long)ids_cpu[qi][j], sc_cpu[qi][j]);
    }
  if (x) {
    double *ref = malloc(sizeof(double) * S_N);
    for (int qi = 0; qi < S_NQ; qi++) {
      const float *qv = q + qi * S_DIM;
      for (int64_t i = 0; i < S_N; i++) {
        double d = 0, qq = 0, xx = 0;
        for (int c = 0; c < S_DIM; c++) {
          d += (double)qv[c] * x[i * S_DIM + c];
          qq += (double)qv[c] * qv[c];
          xx += (double)x[i * S_DIM + c] * x[i * S_DIM + c];
        }
        ref[i] = chat && strcmp(s_chat(i), chat) != 0
                     ? -INFINITY
                     : d / sqrt(qq * xx) * pow(s_sig(i), w);
      }
      for (int j = 0; j < S_K; j++) {
        int64_t i = ids[qi][j];
        assert_true(i >= 0 && i < S_N);
        if (!(fabs(sc[qi][j] - ref[i]) <= 1e-5))
          fail_msg("query %d hit %d (m%lld): score %.9g, reference %.9g", qi, j,
                   (long long)i, sc[qi][j], ref[i]);
        int better = 0;
        for (int64_t t = 0; t < S_N; t++)
          better += ref[t] > ref[i] + 1e-5;
        if (better > j)
          fail_msg("query %d hit %d (m%lld): %d memories score better", qi, j,
                   (long long)i, better);
      }
    }
    free(ref);
  }
  json_decref(rep);
  json_decref(rep_cpu);
  free(req);
  return fell;
}

/* searchMemories on a device that runs out of memory: the store finishes
 * the search on the CPU with the results a CPU engine gives, the reply
 * and the log say so, it is counted, L1 gets a lower ceiling, and the
 * engine goes on serving. */
static void test_search_falls_back(void **state) {
  (void)state;
  warnings_reset();
  mn_log_set(capture, NULL);
  fx *f = fx_fake_gpu(), *g = fx_new();
  float *x = rand_matrix(S_N, S_DIM);
  float *q = rand_matrix(S_NQ, S_DIM);
  fx *both[2] = {f, g};
  s_fill(both, 2, "c", "float32", x);
  s_fill(both, 2, "c8", "int8", x);
  mn_store_stats st;
  mn_store_get_stats(f->r->store, &st);
  assert_true(st.l1_enabled);
  assert_int_equal(st.chunks[MN_TIER_DEVICE], 4); /* all on the "device" */
  assert_true(st.l1_cap == UINT64_MAX);
  assert_int_equal(l1_cap_reported(f), -1);
  uint64_t held = st.used[MN_TIER_DEVICE];

  /* The general path (a chat filter, significance): the device's
   * similarity fails. */
  s_check(f, g, 1, "c", q,
          ",\"filter\":{\"chatId\":\"a\"},\"significance_weight\":0.5", x, 0.5,
          "a");
  assert_true(warned("a searchMemories of 3 queries in 'c' ran out of device "
                     "memory on fakegpu:0",
                     "fake gpu: out of device memory in similarity"));
  assert_true(warned("L1 chunks are limited to", NULL));
  mn_store_get_stats(f->r->store, &st);
  assert_true(st.l1_cap == held - held / 4);
  assert_int_equal(l1_cap_reported(f), (int64_t)(held - held / 4));
  assert_true(st.used[MN_TIER_DEVICE] <= st.l1_cap);
  /* Which chunks went down depends on which ones the search's threads
   * held at that moment; the c8 chunks are smaller (int8). */
  assert_true(st.chunks[MN_TIER_DEVICE] == 2 || st.chunks[MN_TIER_DEVICE] == 3);
  assert_int_equal(st.chunks[MN_TIER_DEVICE] + st.chunks[MN_TIER_HOST], 4);

  /* The fused search (no filter): the device's search fails. Then on
   * int8 storage, whose device chunks come back from LMDB with their
   * scales (or come up on use first: the ceiling has room for them). */
  s_check(f, g, 1, "c", q, "", x, 0, NULL);
  assert_true(warned("searchMemories of 3 queries in 'c'",
                     "out of device memory in search"));
  s_check(f, g, 1, "c8", q, "", NULL, 0, NULL);
  assert_true(warned("searchMemories of 3 queries in 'c8'",
                     "out of device memory in search"));
  /* Each fallback lowers L1's ceiling by a quarter of what it holds
   * (chunks still come up on use within it); once it is below the
   * smallest chunk (int8: 64 KiB codes, 16 KiB scales and norms), nothing
   * is on the device and searches run on the host from the start. */
  const uint64_t small = 4096 * S_DIM + 2 * 4096 * 4;
  for (int i = 0; i < 20; i++) {
    mn_store_get_stats(f->r->store, &st);
    if (st.l1_cap < small && st.chunks[MN_TIER_DEVICE] == 0)
      break;
    s_check(f, g, -1, "c", q, "", x, 0, NULL);
    s_check(f, g, -1, "c", q, ",\"significance_weight\":1.5", x, 1.5, NULL);
    s_check(f, g, -1, "c8", q, ",\"significance_weight\":1", NULL, 0, NULL);
  }
  mn_store_get_stats(f->r->store, &st);
  assert_int_equal(st.chunks[MN_TIER_DEVICE], 0);
  assert_true(st.l1_cap < small);
  s_check(f, g, 0, "c", q, "", x, 0, NULL);
  s_check(f, g, 0, "c8", q, "", NULL, 0, NULL);

  /* The engine goes on: memories added afterwards are found, and the
   * device still normalises what fits. */
  float *more = rand_matrix(3, S_DIM);
  sbuf b = {0};
  sb_add(&b, "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"addMemories\","
             "\"params\":{\"collection\":\"c\",\"memories\":[{\"id\":\"n0\"},"
             "{\"id\":\"n1\"},{\"id\":\"n2\"}],\"embeddings\":");
  sb_matrix(&b, more, 3, S_DIM);
  sb_add(&b, "}}");
  json_t *rep;
  fx_ok(f, b.p, &rep);
  json_decref(rep);
  free(b.p);
  char *req = s_request("c", more, "");
  json_t *res = fx_ok(f, req, &rep);
  assert_false(fell_back(res));
  for (size_t qi = 0; qi < S_NQ; qi++) {
    json_t *top =
        json_array_get(json_array_get(json_object_get(res, "results"), qi), 0);
    char want[8];
    snprintf(want, sizeof want, "n%zu", qi);
    assert_string_equal(json_string_value(json_object_get(top, "id")), want);
    assert_true(fabs(json_number_value(json_object_get(top, "score")) - 1) <=
                1e-6);
  }
  json_decref(rep);
  free(req);
  free(more);
  int64_t n = fallbacks_counted(f);
  float *y = rand_matrix(4, 24);
  req = process_request(y, 4, 24, "{\"normalize\":true}");
  res = fx_ok(f, req, &rep);
  assert_non_null(strstr(device_of(res), "fakegpu:0"));
  assert_false(fell_back(res));
  check_normalized(res, y, 4, 24);
  json_decref(rep);
  free(req);
  free(y);
  assert_int_equal(fallbacks_counted(f), n);

  free(x);
  free(q);
  fx_free(g);
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
      cmocka_unit_test(test_search_falls_back),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
