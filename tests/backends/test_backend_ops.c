/*
 * test_backend_ops.c - every backend op on every available backend against
 * a double-precision reference computed here (tests/compute/refops.h), in
 * the manner of ggml's test-backend-ops.
 *
 * Backends: the CPU at each instruction-set level this machine has (scalar,
 * avx2, avx512: the fallbacks are products too), and CUDA when
 * mn_backend_open with pref CUDA succeeds ("cuda: not available, skipped"
 * otherwise). Tensors live on the backend's device and go there through
 * mn_backend_alloc / upload / download; per-row scales and norms live there
 * too, affine parameters and search results in host memory (compute.h).
 *
 * Inputs are fresh random numbers each run (the seed is printed;
 * MNEMO_TEST_SEED=n repeats a run). Every output buffer is poisoned before
 * the op runs (NaN bytes for floats); ops that write codes run twice over
 * two different poisons and must give the same bytes, so an element the
 * op never wrote cannot pass.
 *
 * Thresholds (NMSE = sum (y - ref)^2 / sum ref^2):
 *   normalize                 NMSE <= 1e-12, zero rows exactly zero
 *   pca_transform             NMSE <= 1e-9 (float32 products)
 *   pca_fit                   components with at least 1e-3 of the top
 *                             variance: variance and ratio within 1e-4
 *                             relative, 1 - |cos| <= 1e-5; smaller ones
 *                             within 1e-6 of the top variance, 1 - |cos|
 *                             <= 1e-3 (float32 covariance); mean 1e-5
 *   affine_train              min and (max - min) / 255 within 2e-5
 *   quantize int8/int4/affine codes within one step of round(x / scale),
 *                             at most 1 % one step off; scales within 2e-5
 *   quantize fp16 / bf16      within half an ulp of the format (+1e-6)
 *   quantize binary           exact sign bits (|x| <= 1e-6 max may flip),
 *                             padding bits zero
 *   dequantize                NMSE <= 1e-12 (one float32 product)
 *   similarity, by storage:   float32 1e-10; float16 1e-6 and bfloat16
 *                             1e-4 (a backend may round the query to the
 *                             storage type); int8 / uint8 / int4 3e-4 (a
 *                             backend may quantise the query to 8 bits);
 *                             binary 1e-12 (integer scores)
 *   search, search_many       each returned score within 4 sqrt(NMSE
 *                             threshold) x rms score of the reference
 *                             score of its id, ranked no worse than the
 *                             reference ranking allows within that slack
 *                             (search_many: per block, against the
 *                             block's own reference)
 *   similarity_many           as similarity, per block of the output
 *   topk (host)               exact
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "backends/cpu/cpu_internal.h"
#include "compute/refops.h"
#include "mnemo/compute.h"

/* ------------------------------------------------------------ backends */
typedef struct tb {
  char name[48];
  mn_backend *b;
  int cpu_level; /* -1: not a CPU level run */
} tb;

static tb backends[8];
static int nbackends;
static uint64_t seed;
static int ncases;

/* Make the CPU level of this entry the one in force while it runs. */
static void use(const tb *t) {
  if (t->cpu_level >= 0)
    mn__cpu_level_cap((mn_cpu_level)t->cpu_level);
}

static int setup(void **state) {
  (void)state;
  const char *env = getenv("MNEMO_TEST_SEED");
  seed = env ? strtoull(env, NULL, 10)
             : (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid();
  print_message("seed %llu (MNEMO_TEST_SEED=%llu repeats this run)\n",
                (unsigned long long)seed, (unsigned long long)seed);
  mn_backend_opts o;
  mn_backend_opts_init(&o);
  o.pref = MN_BACKEND_CPU;
  mn_cpu_level top = mn__cpu_level();
  for (int l = 0; l <= (int)top; l++) {
    mn__cpu_level_cap((mn_cpu_level)l);
    tb *t = &backends[nbackends];
    if (mn_backend_open(&o, &t->b) != MN_OK) {
      print_message("cpu %s: cannot open: %s\n",
                    mn__cpu_level_name((mn_cpu_level)l), mn_errmsg());
      continue;
    }
    t->cpu_level = l;
    snprintf(t->name, sizeof t->name, "cpu/%s",
             mn__cpu_level_name((mn_cpu_level)l));
    nbackends++;
  }
  mn__cpu_level_cap(top);
  o.pref = MN_BACKEND_CUDA;
  tb *t = &backends[nbackends];
  if (mn_backend_open(&o, &t->b) == MN_OK) {
    t->cpu_level = -1;
    snprintf(t->name, sizeof t->name, "%s", mn_backend_name(t->b));
    print_message("cuda: %s\n", mn_backend_device(t->b));
    nbackends++;
  } else {
    print_message("cuda: not available, skipped (%s)\n", mn_errmsg());
  }
  return nbackends > 0 ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  for (int i = 0; i < nbackends; i++)
    mn_backend_close(backends[i].b);
  mn__cpu_level_cap(MN_CPU_AVX512);
  print_message("%d op cases checked on %d backend(s)\n", ncases, nbackends);
  return 0;
}

static void report(const tb *t, const char *what, double err, double thr) {
  ncases++;
  if (!(err <= thr))
    fail_msg("%s %s: error %.3g above %.1g (seed %llu)", t->name, what, err,
             thr, (unsigned long long)seed);
}

/* --------------------------------------------- memory on the backend */
/* A dense tensor on t's device holding `host` (NULL: poisoned). */
static mn_tensor dev_tensor(const tb *t, const void *host, mn_dtype dt,
                            int64_t rows, int64_t cols, int poison) {
  mn_tensor x = mn_tensor_host(NULL, dt, rows, cols);
  x.device = mn_backend_device_kind(t->b);
  size_t n = mn_tensor_bytes(&x) + 1;
  assert_int_equal(mn_backend_alloc(t->b, n, &x.data), MN_OK);
  void *tmp = NULL;
  if (!host) {
    tmp = malloc(n);
    memset(tmp, poison, n);
    host = tmp;
  }
  assert_int_equal(mn_backend_upload(t->b, x.data, host, n - 1), MN_OK);
  free(tmp);
  return x;
}

/* Host memory on t's device: `n` bytes copied from host (NULL: poison). */
static void *dev_buf(const tb *t, const void *host, size_t n, int poison) {
  mn_tensor x = dev_tensor(t, host, MN_DTYPE_U8, 1, (int64_t)n, poison);
  return x.data;
}

/* Download a dense tensor into fresh host memory. */
static void *fetch(const tb *t, const mn_tensor *x) {
  size_t n = mn_tensor_bytes(x);
  void *h = malloc(n + 1);
  assert_int_equal(mn_backend_download(t->b, h, x->data, n), MN_OK);
  return h;
}

static void *fetch_buf(const tb *t, const void *d, size_t n) {
  void *h = malloc(n + 1);
  assert_int_equal(mn_backend_download(t->b, h, d, n), MN_OK);
  return h;
}

static void dev_free(const tb *t, void *p) {
  mn_backend_free(t->b, p);
}

static void must(const tb *t, mn_status s, const char *what) {
  if (s != MN_OK)
    fail_msg("%s %s: %s: %s", t->name, what, mn_status_name(s), mn_errmsg());
}

/* ------------------------------------------------------------ normalize */
static void test_normalize(void **state) {
  (void)state;
  const int64_t shapes[][2] = {{1, 1},     {1, 768},   {5, 767},
                               {4097, 33}, {300, 768}, {64, 3}};
  for (int bi = 0; bi < nbackends; bi++) {
    const tb *t = &backends[bi];
    use(t);
    trng r = {seed + 1};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
      int64_t rows = shapes[si][0], cols = shapes[si][1];
      float *x = ref_random(&r, rows, cols, 1.0, 0);
      for (int64_t i = 2; i < rows; i += 7) /* some zero rows */
        memset(x + i * cols, 0, (size_t)cols * sizeof(float));
      double *ref = ref_widen(x, rows, cols, cols);
      int64_t zref = ref_normalize(ref, rows, cols);
      for (int inplace = 0; inplace < 2; inplace++) {
        mn_tensor dx = dev_tensor(t, x, MN_DTYPE_F32, rows, cols, 0);
        mn_tensor dy =
            inplace ? dx : dev_tensor(t, NULL, MN_DTYPE_F32, rows, cols, 0xff);
        int64_t zero = -1;
        must(t, mn_backend_normalize(t->b, &dx, &dy, &zero), "normalize");
        float *y = fetch(t, &dy);
        char what[64];
        snprintf(what, sizeof what, "normalize %lldx%lld%s", (long long)rows,
                 (long long)cols, inplace ? " in place" : "");
        assert_int_equal(zero, zref);
        report(t, what, ref_nmse(y, cols, ref, rows, cols), 1e-12);
        for (int64_t i = 2; i < rows; i += 7)
          for (int64_t c = 0; c < cols; c++)
            assert_true(y[i * cols + c] == 0.0f);
        free(y);
        if (!inplace)
          dev_free(t, dy.data);
        dev_free(t, dx.data);
      }
      free(ref);
      free(x);
    }
  }
}

/* ------------------------------------------------------------------ PCA */
static void test_pca_fit(void **state) {
  (void)state;
  const int64_t shapes[][3] = {{2000, 48, 8}, {300, 20, 20}, {97, 31, 5}};
  for (int bi = 0; bi < nbackends; bi++) {
    const tb *t = &backends[bi];
    use(t);
    trng r = {seed + 2};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
      int64_t rows = shapes[si][0], cols = shapes[si][1], k = shapes[si][2];
      /* Variances fall by 0.75 per dimension: gaps the float32 fit can
       * resolve to 1e-5 in the eigenvectors. */
      float *x = ref_random(&r, rows, cols, 0.75, 1);
      double *X = ref_widen(x, rows, cols, cols);
      double *mean = malloc(sizeof(double) * (size_t)cols);
      double *comp = malloc(sizeof(double) * (size_t)(cols * k));
      double *ev = malloc(sizeof(double) * (size_t)k), total = 0;
      assert_int_equal(ref_pca_fit(X, rows, cols, k, mean, comp, ev, &total),
                       0);
      mn_tensor dx = dev_tensor(t, x, MN_DTYPE_F32, rows, cols, 0);
      mn_pca_model *m = NULL;
      must(t, mn_backend_pca_fit(t->b, &dx, k, &m), "pca_fit");
      char what[64];
      snprintf(what, sizeof what, "pca_fit %lldx%lld->%lld", (long long)rows,
               (long long)cols, (long long)k);
      assert_int_equal(m->input_dim, cols);
      assert_int_equal(m->n_components, k);
      assert_int_equal(m->n_samples, rows);
      /* Components that carry variance (at least 1e-3 of the largest)
       * are held to 1e-4; below that a float32 covariance resolves a
       * variance only to about 1e-7 of the largest one, so the rest are
       * held to 1e-6 of it, and their directions (set by tiny gaps) to
       * 1e-3. */
      double e_mean = 0, e_ev = 0, e_ratio = 0, e_vec = 0;
      double e_ev_small = 0, e_vec_small = 0;
      for (int64_t c = 0; c < cols; c++)
        e_mean = fmax(e_mean, fabs(m->mean[c] - mean[c]) / (1 + fabs(mean[c])));
      for (int64_t j = 0; j < k; j++) {
        double dot = 0;
        for (int64_t c = 0; c < cols; c++)
          dot += m->components[j * cols + c] * comp[j * cols + c];
        double de = fabs(m->explained_variance[j] - ev[j]);
        double dr = fabs(m->explained_variance_ratio[j] - ev[j] / total);
        if (ev[j] >= 1e-3 * ev[0]) {
          e_ev = fmax(e_ev, de / ev[j]);
          e_ratio = fmax(e_ratio, dr / (ev[j] / total));
          e_vec = fmax(e_vec, 1 - fabs(dot));
        } else {
          e_ev_small = fmax(e_ev_small, fmax(de / ev[0], dr * total / ev[0]));
          e_vec_small = fmax(e_vec_small, 1 - fabs(dot));
        }
      }
      char w2[160];
      snprintf(w2, sizeof w2, "%s mean", what);
      report(t, w2, e_mean, 1e-5);
      snprintf(w2, sizeof w2, "%s variance", what);
      report(t, w2, e_ev, 1e-4);
      snprintf(w2, sizeof w2, "%s variance ratio", what);
      report(t, w2, e_ratio, 1e-4);
      snprintf(w2, sizeof w2, "%s total variance", what);
      report(t, w2, fabs(m->total_variance - total) / total, 1e-5);
      snprintf(w2, sizeof w2, "%s components", what);
      report(t, w2, e_vec, 1e-5);
      snprintf(w2, sizeof w2, "%s small variances (of the largest)", what);
      report(t, w2, e_ev_small, 1e-6);
      snprintf(w2, sizeof w2, "%s small components", what);
      report(t, w2, e_vec_small, 1e-3);
      print_message("  %s %s: variance err %.2g (small %.2g of top), "
                    "1-|cos| %.2g (small %.2g)\n",
                    t->name, what, e_ev, e_ev_small, e_vec, e_vec_small);
      mn_pca_free(m);

      /* Impossible fits say why. */
      m = NULL;
      assert_int_equal(mn_backend_pca_fit(t->b, &dx, cols + 1, &m),
                       MN_ERR_INVALID);
      assert_non_null(strstr(mn_errmsg(), "at most the width"));
      mn_tensor few = dx;
      few.rows = 3;
      assert_int_equal(mn_backend_pca_fit(t->b, &few, 4, &m), MN_ERR_INVALID);
      assert_non_null(strstr(mn_errmsg(), "needs at least 4 rows"));
      assert_null(m);
      dev_free(t, dx.data);
      free(mean);
      free(comp);
      free(ev);
      free(X);
      free(x);
    }
  }
}

static void test_pca_transform(void **state) {
  (void)state;
  const int64_t shapes[][3] = {{300, 767, 64}, {1, 96, 96}, {1025, 64, 3}};
  for (int bi = 0; bi < nbackends; bi++) {
    const tb *t = &backends[bi];
    use(t);
    trng r = {seed + 3};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
      int64_t rows = shapes[si][0], cols = shapes[si][1], k = shapes[si][2];
      float *x = ref_random(&r, rows, cols, 1.0, 0);
      mn_pca_model *m = NULL;
      assert_int_equal(mn_pca_alloc(cols, k, &m), MN_OK);
      double *mean = malloc(sizeof(double) * (size_t)cols);
      double *comp = malloc(sizeof(double) * (size_t)(cols * k));
      double *ev = malloc(sizeof(double) * (size_t)k);
      for (int64_t c = 0; c < cols; c++)
        mean[c] = m->mean[c] = (float)(0.2 * trng_gauss(&r));
      for (int64_t i = 0; i < cols * k; i++)
        comp[i] = m->components[i] = (float)(trng_gauss(&r) / sqrt(cols));
      for (int64_t j = 0; j < k; j++)
        ev[j] = m->explained_variance[j] = (float)(0.1 + trng_unif(&r));
      double *X = ref_widen(x, rows, cols, cols);
      mn_tensor dx = dev_tensor(t, x, MN_DTYPE_F32, rows, cols, 0);
      for (int wh = 0; wh < 2; wh++) {
        double *Y = ref_pca_apply(X, rows, cols, mean, comp, ev, k, wh);
        mn_tensor dy = dev_tensor(t, NULL, MN_DTYPE_F32, rows, k, 0xff);
        must(t, mn_backend_pca_transform(t->b, &dx, m, wh, &dy),
             "pca_transform");
        float *y = fetch(t, &dy);
        char what[64];
        snprintf(what, sizeof what, "pca_transform %lldx%lld->%lld%s",
                 (long long)rows, (long long)cols, (long long)k,
                 wh ? " whiten" : "");
        report(t, what, ref_nmse(y, k, Y, rows, k), 1e-9);
        free(y);
        free(Y);
        dev_free(t, dy.data);
      }
      dev_free(t, dx.data);
      mn_pca_free(m);
      free(X);
      free(mean);
      free(comp);
      free(ev);
      free(x);
    }
  }
}

/* --------------------------------------------------------- quantization */
static const mn_quant_kind all_kinds[] = {MN_QUANT_INT8, MN_QUANT_INT8_AFFINE,
                                          MN_QUANT_INT4, MN_QUANT_FP16,
                                          MN_QUANT_BF16, MN_QUANT_BINARY};
#define NKINDS (sizeof all_kinds / sizeof all_kinds[0])

static void test_quantize(void **state) {
  (void)state;
  const int64_t shapes[][2] = {
      {1, 1}, {7, 767}, {300, 96}, {33, 13}, {1030, 64}};
  for (int bi = 0; bi < nbackends; bi++) {
    const tb *t = &backends[bi];
    use(t);
    trng r = {seed + 4};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
      int64_t rows = shapes[si][0], cols = shapes[si][1];
      float *x = ref_random(&r, rows, cols, 1.0, 0);
      if (rows > 3)
        memset(x + cols, 0, (size_t)cols * sizeof(float)); /* a zero row */
      double *X = ref_widen(x, rows, cols, cols);
      mn_tensor dx = dev_tensor(t, x, MN_DTYPE_F32, rows, cols, 0);

      /* int8_affine parameters, trained here on the backend. */
      float *vmin = malloc(sizeof(float) * (size_t)cols);
      float *scale = malloc(sizeof(float) * (size_t)cols);
      for (int64_t c = 0; c < cols; c++)
        vmin[c] = scale[c] = NAN;
      mn_affine_params aff = {cols, vmin, scale};
      must(t, mn_backend_affine_train(t->b, &dx, &aff), "affine_train");

      for (size_t ki = 0; ki < NKINDS; ki++) {
        mn_quant_kind kind = all_kinds[ki];
        mn_dtype dt = mn_quant_dtype(kind);
        int scaled = kind == MN_QUANT_INT8 || kind == MN_QUANT_INT4;
        size_t rb = mn_dtype_row_bytes(dt, cols);
        void *codes[2];
        float *scales[2] = {NULL, NULL};
        for (int pass = 0; pass < 2; pass++) {
          int poison = pass ? 0x5a : 0xff;
          mn_tensor dc = dev_tensor(t, NULL, dt, rows, cols, poison);
          void *ds =
              scaled ? dev_buf(t, NULL, sizeof(float) * (size_t)rows, poison)
                     : NULL;
          must(t, mn_backend_quantize(t->b, &dx, kind, &aff, &dc, ds),
               mn_quant_name(kind));
          codes[pass] = fetch(t, &dc);
          if (ds)
            scales[pass] = fetch_buf(t, ds, sizeof(float) * (size_t)rows);
          dev_free(t, dc.data);
          dev_free(t, ds);
        }
        char what[64];
        snprintf(what, sizeof what, "quantize %s %lldx%lld",
                 mn_quant_name(kind), (long long)rows, (long long)cols);
        /* Two poisons, one answer: every byte was written. */
        if (memcmp(codes[0], codes[1], rb * (size_t)rows) != 0 ||
            (scaled &&
             memcmp(scales[0], scales[1], sizeof(float) * (size_t)rows)))
          fail_msg("%s %s: output depends on the poison: bytes left "
                   "unwritten",
                   t->name, what);
        const char *msg = NULL;
        switch (kind) {
        case MN_QUANT_INT8:
        case MN_QUANT_INT4:
          msg = ref_check_sym(codes[0], (int64_t)rb, scales[0], X, rows, cols,
                              kind == MN_QUANT_INT8 ? 127 : 7);
          if (!msg && rows > 3)
            for (size_t b = 0; b < rb; b++)
              if (((uint8_t *)codes[0])[rb + b] != 0)
                msg = "a zero row does not give zero codes";
          break;
        case MN_QUANT_INT8_AFFINE:
          msg = ref_check_affine(codes[0], (int64_t)rb, vmin, scale, 1, X, rows,
                                 cols);
          break;
        case MN_QUANT_FP16:
        case MN_QUANT_BF16:
          msg = ref_check_half(codes[0], cols, X, rows, cols,
                               kind == MN_QUANT_BF16);
          break;
        default:
          msg = ref_check_binary(codes[0], (int64_t)rb, X, rows, cols);
        }
        ncases++;
        if (msg)
          fail_msg("%s %s: %s (seed %llu)", t->name, what, msg,
                   (unsigned long long)seed);
        for (int pass = 0; pass < 2; pass++) {
          free(codes[pass]);
          free(scales[pass]);
        }
      }
      dev_free(t, dx.data);
      free(vmin);
      free(scale);
      free(X);
      free(x);
    }
  }
}

/* Random stored rows of any dtype, made without the library: codes drawn
 * directly (halves as bit patterns), plus what decodes them. */
typedef struct store {
  mn_dtype dt;
  int64_t rows, cols;
  void *codes; /* host, dense */
  float *scales;
  float *vmin, *scale;
  mn_affine_params aff;
  double *dec; /* rows x cols decoded in double */
} store;

static void store_make(trng *r, store *s, mn_dtype dt, int64_t rows,
                       int64_t cols) {
  memset(s, 0, sizeof *s);
  s->dt = dt;
  s->rows = rows;
  s->cols = cols;
  size_t rb = mn_dtype_row_bytes(dt, cols);
  s->codes = calloc((size_t)rows * rb + 1, 1);
  s->dec = malloc(sizeof(double) * (size_t)(rows * cols));
  s->scales = malloc(sizeof(float) * (size_t)rows);
  s->vmin = malloc(sizeof(float) * (size_t)cols);
  s->scale = malloc(sizeof(float) * (size_t)cols);
  for (int64_t i = 0; i < rows; i++)
    s->scales[i] = (float)(0.001 + 0.01 * trng_unif(r));
  for (int64_t c = 0; c < cols; c++) {
    s->vmin[c] = (float)(-1 + 0.5 * trng_unif(r));
    s->scale[c] = (float)((1.5 + trng_unif(r)) / 255);
  }
  s->aff = (mn_affine_params){cols, s->vmin, s->scale};
  for (int64_t i = 0; i < rows; i++) {
    uint8_t *row = (uint8_t *)s->codes + (size_t)i * rb;
    for (int64_t c = 0; c < cols; c++) {
      uint64_t u = trng_next(r);
      double v = 0;
      switch (dt) {
      case MN_DTYPE_F32: {
        float f = (float)trng_gauss(r);
        memcpy(row + 4 * c, &f, 4);
        v = f;
        break;
      }
      case MN_DTYPE_F16: {
        /* |x| in [2^-5, 2^3): normal halves, random sign and mantissa */
        uint16_t h = (uint16_t)(((u & 1) << 15) | ((10 + (u >> 1) % 8) << 10) |
                                ((u >> 8) & 1023));
        memcpy(row + 2 * c, &h, 2);
        v = ref_f16_decode(h);
        break;
      }
      case MN_DTYPE_BF16: {
        uint16_t h = (uint16_t)(((u & 1) << 15) | ((122 + (u >> 1) % 8) << 7) |
                                ((u >> 8) & 127));
        memcpy(row + 2 * c, &h, 2);
        v = ref_bf16_decode(h);
        break;
      }
      case MN_DTYPE_I8: {
        int q = (int)(u % 255) - 127;
        ((int8_t *)row)[c] = (int8_t)q;
        v = q * (double)s->scales[i];
        break;
      }
      case MN_DTYPE_U8: {
        int q = (int)(u % 256);
        row[c] = (uint8_t)q;
        v = s->vmin[c] + q * (double)s->scale[c];
        break;
      }
      case MN_DTYPE_I4: {
        int q = (int)(u % 15) - 7;
        row[c / 2] |= (uint8_t)((q & 15) << (4 * (c & 1)));
        v = q * (double)s->scales[i];
        break;
      }
      case MN_DTYPE_BIN: {
        int bit = (int)(u & 1);
        row[c / 8] |= (uint8_t)(bit << (c & 7));
        v = bit ? 1 : -1;
        break;
      }
      default:
        break;
      }
      s->dec[i * cols + c] = v;
    }
  }
}

static void store_free(store *s) {
  free(s->codes);
  free(s->dec);
  free(s->scales);
  free(s->vmin);
  free(s->scale);
}

static mn_quant_kind kind_of(mn_dtype dt) {
  switch (dt) {
  case MN_DTYPE_I8:
    return MN_QUANT_INT8;
  case MN_DTYPE_U8:
    return MN_QUANT_INT8_AFFINE;
  case MN_DTYPE_I4:
    return MN_QUANT_INT4;
  case MN_DTYPE_F16:
    return MN_QUANT_FP16;
  case MN_DTYPE_BF16:
    return MN_QUANT_BF16;
  case MN_DTYPE_BIN:
    return MN_QUANT_BINARY;
  default:
    return MN_QUANT_NONE;
  }
}

static void test_dequantize(void **state) {
  (void)state;
  const mn_dtype dts[] = {MN_DTYPE_I8,  MN_DTYPE_U8,   MN_DTYPE_I4,
                          MN_DTYPE_F16, MN_DTYPE_BF16, MN_DTYPE_BIN};
  const int64_t shapes[][2] = {{1, 1}, {9, 767}, {257, 64}, {40, 13}};
  for (int bi = 0; bi < nbackends; bi++) {
    const tb *t = &backends[bi];
    use(t);
    trng r = {seed + 5};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
      for (size_t di = 0; di < sizeof dts / sizeof dts[0]; di++) {
        int64_t rows = shapes[si][0], cols = shapes[si][1];
        store s;
        store_make(&r, &s, dts[di], rows, cols);
        mn_quant_kind kind = kind_of(dts[di]);
        mn_tensor dc = dev_tensor(t, s.codes, dts[di], rows, cols, 0);
        void *ds = dev_buf(t, s.scales, sizeof(float) * (size_t)rows, 0);
        mn_tensor dy = dev_tensor(t, NULL, MN_DTYPE_F32, rows, cols, 0xff);
        must(t, mn_backend_dequantize(t->b, &dc, kind, ds, &s.aff, &dy),
             "dequantize");
        float *y = fetch(t, &dy);
        char what[64];
        snprintf(what, sizeof what, "dequantize %s %lldx%lld",
                 mn_quant_name(kind), (long long)rows, (long long)cols);
        report(t, what, ref_nmse(y, cols, s.dec, rows, cols), 1e-12);
        free(y);
        dev_free(t, dy.data);
        dev_free(t, ds);
        dev_free(t, dc.data);
        store_free(&s);
      }
  }
}

/* ----------------------------------------------- similarity and search */
static const mn_dtype store_dts[] = {MN_DTYPE_F32, MN_DTYPE_F16, MN_DTYPE_BF16,
                                     MN_DTYPE_I8,  MN_DTYPE_U8,  MN_DTYPE_I4,
                                     MN_DTYPE_BIN};
#define NSTORE (sizeof store_dts / sizeof store_dts[0])

static double sim_threshold(mn_dtype dt) {
  switch (dt) {
  case MN_DTYPE_F32:
    return 1e-10;
  case MN_DTYPE_F16:
    return 1e-6;
  case MN_DTYPE_BF16:
    return 1e-4;
  case MN_DTYPE_BIN:
    return 1e-12;
  default:
    return 3e-4;
  }
}

/* Reference scores (nq x rows) in double. A binary store compares sign
 * vectors: the query is binarised too (+1 where q > 0). */
static double *ref_scores(const float *q, int64_t nq, const store *s,
                          mn_metric metric) {
  int64_t cols = s->cols;
  double *out = malloc(sizeof(double) * (size_t)(nq * s->rows) + 1);
  for (int64_t i = 0; i < nq; i++)
    for (int64_t j = 0; j < s->rows; j++) {
      const double *x = s->dec + j * cols;
      double ip = 0, qq = 0, xx = 0;
      for (int64_t c = 0; c < cols; c++) {
        double a = q[i * cols + c];
        if (s->dt == MN_DTYPE_BIN)
          a = a > 0 ? 1 : -1;
        ip += a * x[c];
        qq += a * a;
        xx += x[c] * x[c];
      }
      double v = ip;
      if (metric == MN_METRIC_COSINE)
        v = ip / sqrt(qq * xx);
      else if (metric == MN_METRIC_L2)
        v = qq + xx - 2 * ip;
      out[i * s->rows + j] = v;
    }
  return out;
}

/* The store's arrays on t's device. */
typedef struct dstore {
  mn_vecblock vb;
  void *scales, *norms;
} dstore;

static void dstore_make(const tb *t, const store *s, int with_norms,
                        dstore *d) {
  memset(d, 0, sizeof *d);
  d->vb.codes = dev_tensor(t, s->codes, s->dt, s->rows, s->cols, 0);
  d->scales = dev_buf(t, s->scales, sizeof(float) * (size_t)s->rows, 0);
  d->vb.scales = d->scales;
  d->vb.affine = &s->aff;
  if (with_norms) {
    float *n = malloc(sizeof(float) * (size_t)s->rows + 1);
    for (int64_t j = 0; j < s->rows; j++) {
      double a = 0;
      for (int64_t c = 0; c < s->cols; c++)
        a += s->dec[j * s->cols + c] * s->dec[j * s->cols + c];
      n[j] = (float)sqrt(a);
    }
    d->norms = dev_buf(t, n, sizeof(float) * (size_t)s->rows, 0);
    d->vb.norms = d->norms;
    free(n);
  }
}

static void dstore_free(const tb *t, dstore *d) {
  dev_free(t, d->vb.codes.data);
  dev_free(t, d->scales);
  dev_free(t, d->norms);
}

static void test_similarity(void **state) {
  (void)state;
  const int64_t widths[] = {96, 67};
  const int64_t nq = 5, rows = 700;
  for (int bi = 0; bi < nbackends; bi++) {
    const tb *t = &backends[bi];
    use(t);
    trng r = {seed + 6};
    for (size_t wi = 0; wi < 2; wi++)
      for (size_t di = 0; di < NSTORE; di++) {
        int64_t cols = widths[wi];
        store s;
        store_make(&r, &s, store_dts[di], rows, cols);
        float *q = ref_random(&r, nq, cols, 1.0, 0);
        mn_tensor dq = dev_tensor(t, q, MN_DTYPE_F32, nq, cols, 0);
        for (int metric = 0; metric <= MN_METRIC_L2; metric++) {
          double *ref = ref_scores(q, nq, &s, (mn_metric)metric);
          for (int with_norms = 0; with_norms < 2; with_norms++) {
            dstore d;
            dstore_make(t, &s, with_norms, &d);
            mn_tensor dout = dev_tensor(t, NULL, MN_DTYPE_F32, nq, rows, 0xff);
            must(t,
                 mn_backend_similarity(t->b, &dq, &d.vb, (mn_metric)metric,
                                       &dout),
                 "similarity");
            float *y = fetch(t, &dout);
            char what[80];
            snprintf(what, sizeof what, "similarity %s %s width %lld%s",
                     mn_dtype_name(s.dt), mn_metric_name((mn_metric)metric),
                     (long long)cols, with_norms ? " norms" : "");
            report(t, what, ref_nmse(y, rows, ref, nq, rows),
                   sim_threshold(s.dt));
            free(y);
            dev_free(t, dout.data);
            dstore_free(t, &d);
          }
          free(ref);
        }
        dev_free(t, dq.data);
        free(q);
        store_free(&s);
      }
  }
}

static int cmp_desc(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

/* Check one query's top-k against its reference scores (n of them). */
static void check_topk(const tb *t, const char *what, const float *sc,
                       const int64_t *ids, int64_t k, const double *ref,
                       int64_t n, int64_t id_base, int largest, double tol) {
  double *sorted = malloc(sizeof(double) * (size_t)n + 1);
  double sign = largest ? 1 : -1;
  for (int64_t j = 0; j < n; j++)
    sorted[j] = sign * ref[j];
  qsort(sorted, (size_t)n, sizeof(double), cmp_desc);
  for (int64_t j = 0; j < k; j++) {
    if (j >= n) {
      if (ids[j] != -1 || sc[j] != (largest ? -INFINITY : INFINITY))
        fail_msg("%s %s: rank %lld of %lld rows must be empty (id -1, "
                 "score %s), got id %lld score %g",
                 t->name, what, (long long)j, (long long)n,
                 largest ? "-inf" : "+inf", (long long)ids[j], sc[j]);
      continue;
    }
    int64_t id = ids[j] - id_base;
    if (id < 0 || id >= n)
      fail_msg("%s %s: rank %lld has id %lld, outside [%lld, %lld)", t->name,
               what, (long long)j, (long long)ids[j], (long long)id_base,
               (long long)(id_base + n));
    for (int64_t p = 0; p < j; p++)
      if (ids[p] == ids[j])
        fail_msg("%s %s: id %lld returned twice", t->name, what,
                 (long long)ids[j]);
    if (!(fabs(sc[j] - ref[id]) <= tol))
      fail_msg("%s %s: rank %lld id %lld score %.9g, reference %.9g", t->name,
               what, (long long)j, (long long)id, sc[j], ref[id]);
    if (!(sign * ref[id] >= sorted[j] - 2 * tol))
      fail_msg("%s %s: rank %lld holds a row scoring %.9g where the "
               "reference's rank %lld scores %.9g",
               t->name, what, (long long)j, ref[id], (long long)j,
               sign * sorted[j]);
    if (j > 0 && !(sign * sc[j] <= sign * sc[j - 1]))
      fail_msg("%s %s: ranks %lld and %lld out of order", t->name, what,
               (long long)j - 1, (long long)j);
  }
  free(sorted);
}

static void test_search(void **state) {
  (void)state;
  const int64_t nq = 3, k = 10, id_base = 1000;
  const int64_t sizes[][2] = {{1500, 96}, {6, 67}};
  for (int bi = 0; bi < nbackends; bi++) {
    const tb *t = &backends[bi];
    use(t);
    trng r = {seed + 7};
    for (size_t zi = 0; zi < 2; zi++)
      for (size_t di = 0; di < NSTORE; di++) {
        int64_t rows = sizes[zi][0], cols = sizes[zi][1];
        store s;
        store_make(&r, &s, store_dts[di], rows, cols);
        float *q = ref_random(&r, nq, cols, 1.0, 0);
        mn_tensor dq = dev_tensor(t, q, MN_DTYPE_F32, nq, cols, 0);
        dstore d;
        dstore_make(t, &s, zi == 0, &d);
        for (int metric = 0; metric <= MN_METRIC_L2; metric++) {
          double *ref = ref_scores(q, nq, &s, (mn_metric)metric);
          double rms = 0;
          for (int64_t i = 0; i < nq * rows; i++)
            rms += ref[i] * ref[i];
          rms = sqrt(rms / (double)(nq * rows));
          double tol = 4 * sqrt(sim_threshold(s.dt)) * rms + 1e-6 * rms;
          float sc[3 * 10];
          int64_t ids[3 * 10];
          memset(sc, 0xff, sizeof sc);
          memset(ids, 0x7f, sizeof ids);
          must(t,
               mn_backend_search(t->b, &dq, &d.vb, (mn_metric)metric, k,
                                 id_base, sc, ids),
               "search");
          char what[80];
          snprintf(what, sizeof what, "search %s %s %lldx%lld k=%lld",
                   mn_dtype_name(s.dt), mn_metric_name((mn_metric)metric),
                   (long long)rows, (long long)cols, (long long)k);
          for (int64_t i = 0; i < nq; i++)
            check_topk(t, what, sc + i * k, ids + i * k, k, ref + i * rows,
                       rows, id_base, metric != MN_METRIC_L2, tol);
          ncases++;
          free(ref);
        }
        dstore_free(t, &d);
        dev_free(t, dq.data);
        free(q);
        store_free(&s);
      }
  }
}

/* Batched search and similarity: blocks of different row counts (one row,
 * none, more than a GEMM chunk of the emulated plugin's tests), each with
 * its own k (1, larger than the block, larger than the device's fused
 * top-k), for 1, 3 and 20 queries (20: the device's GEMM path for blocks
 * of 1024 rows or more), each block against its own double reference. */
#define NMANY 6
static const int64_t many_rows[NMANY] = {1, 300, 0, 4100, 37, 1100};
static const int64_t many_k[NMANY] = {5, 400, 3, 10, 1, 1100};

static void many_make(const tb *t, trng *r, mn_dtype dt, int64_t cols,
                      int with_norms, store *ss, dstore *ds) {
  for (int i = 0; i < NMANY; i++) {
    store_make(r, &ss[i], dt, many_rows[i], cols);
    dstore_make(t, &ss[i], with_norms, &ds[i]);
  }
}

static void many_free(const tb *t, store *ss, dstore *ds) {
  for (int i = 0; i < NMANY; i++) {
    dstore_free(t, &ds[i]);
    store_free(&ss[i]);
  }
}

static void test_search_many(void **state) {
  (void)state;
  const int64_t nqs[] = {1, 3, 20};
  const int64_t cols = 67;
  for (int bi = 0; bi < nbackends; bi++) {
    const tb *t = &backends[bi];
    use(t);
    trng r = {seed + 9};
    for (size_t di = 0; di < NSTORE; di++)
      for (size_t qi = 0; qi < sizeof nqs / sizeof nqs[0]; qi++) {
        const int64_t nq = nqs[qi];
        const int with_norms = (int)(qi & 1);
        store ss[NMANY];
        dstore ds[NMANY];
        many_make(t, &r, store_dts[di], cols, with_norms, ss, ds);
        float *q = ref_random(&r, nq, cols, 1.0, 0);
        mn_tensor dq = dev_tensor(t, q, MN_DTYPE_F32, nq, cols, 0);
        for (int metric = 0; metric <= MN_METRIC_L2; metric++) {
          mn_search_block blocks[NMANY];
          for (int i = 0; i < NMANY; i++) {
            size_t n = (size_t)(nq * many_k[i]);
            blocks[i].db = ds[i].vb;
            blocks[i].k = many_k[i];
            blocks[i].scores = malloc(sizeof(float) * n);
            blocks[i].ids = malloc(sizeof(int64_t) * n);
            memset(blocks[i].scores, 0xff, sizeof(float) * n);
            memset(blocks[i].ids, 0x7f, sizeof(int64_t) * n);
          }
          must(t,
               mn_backend_search_many(t->b, &dq, blocks, NMANY,
                                      (mn_metric)metric),
               "search_many");
          /* the slack scales with the rms score over all blocks (a block
           * of one row may score near zero) */
          double *refs[NMANY], rms = 0;
          int64_t cnt = 0;
          for (int i = 0; i < NMANY; i++) {
            refs[i] = ref_scores(q, nq, &ss[i], (mn_metric)metric);
            for (int64_t e = 0; e < nq * many_rows[i]; e++)
              rms += refs[i][e] * refs[i][e];
            cnt += nq * many_rows[i];
          }
          rms = sqrt(rms / (double)cnt);
          const double tol =
              4 * sqrt(sim_threshold(store_dts[di])) * rms + 1e-6 * rms;
          for (int i = 0; i < NMANY; i++) {
            const int64_t rows = many_rows[i], k = many_k[i];
            double *ref = refs[i];
            char what[96];
            snprintf(what, sizeof what,
                     "search_many %s %s Q=%lld block %d (%lld rows) k=%lld",
                     mn_dtype_name(ss[i].dt), mn_metric_name((mn_metric)metric),
                     (long long)nq, i, (long long)rows, (long long)k);
            for (int64_t j = 0; j < nq; j++)
              check_topk(t, what, blocks[i].scores + j * k,
                         blocks[i].ids + j * k, k, ref + j * rows, rows, 0,
                         metric != MN_METRIC_L2, tol);
            ncases++;
            free(ref);
            free(blocks[i].scores);
            free(blocks[i].ids);
          }
        }
        dev_free(t, dq.data);
        free(q);
        many_free(t, ss, ds);
      }
  }
}

static void test_similarity_many(void **state) {
  (void)state;
  const int64_t nqs[] = {1, 5, 20};
  const int64_t cols = 96, pad = 5;
  int64_t total = 0;
  for (int i = 0; i < NMANY; i++)
    total += many_rows[i];
  for (int bi = 0; bi < nbackends; bi++) {
    const tb *t = &backends[bi];
    use(t);
    trng r = {seed + 10};
    for (size_t di = 0; di < NSTORE; di++)
      for (size_t qi = 0; qi < sizeof nqs / sizeof nqs[0]; qi++) {
        const int64_t nq = nqs[qi];
        const int with_norms = (int)(qi & 1);
        store ss[NMANY];
        dstore ds[NMANY];
        many_make(t, &r, store_dts[di], cols, with_norms, ss, ds);
        mn_vecblock vbs[NMANY];
        for (int i = 0; i < NMANY; i++)
          vbs[i] = ds[i].vb;
        float *q = ref_random(&r, nq, cols, 1.0, 0);
        mn_tensor dq = dev_tensor(t, q, MN_DTYPE_F32, nq, cols, 0);
        for (int metric = 0; metric <= MN_METRIC_L2; metric++) {
          /* rows of the output `pad` columns longer than the blocks need */
          mn_tensor dout =
              dev_tensor(t, NULL, MN_DTYPE_F32, nq, total + pad, 0xff);
          dout.cols = total;
          must(t,
               mn_backend_similarity_many(t->b, &dq, vbs, NMANY,
                                          (mn_metric)metric, &dout),
               "similarity_many");
          dout.cols = total + pad;
          float *y = fetch(t, &dout);
          /* the reference: each block's scores in its own columns */
          double *ref = malloc(sizeof(double) * (size_t)(nq * total));
          int64_t col = 0;
          for (int i = 0; i < NMANY; i++) {
            const int64_t rows = many_rows[i];
            double *bref = ref_scores(q, nq, &ss[i], (mn_metric)metric);
            for (int64_t j = 0; j < nq; j++)
              memcpy(ref + j * total + col, bref + j * rows,
                     sizeof(double) * (size_t)rows);
            free(bref);
            col += rows;
          }
          char what[96];
          snprintf(what, sizeof what, "similarity_many %s %s Q=%lld%s",
                   mn_dtype_name(store_dts[di]),
                   mn_metric_name((mn_metric)metric), (long long)nq,
                   with_norms ? " norms" : "");
          report(t, what, ref_nmse(y, total + pad, ref, nq, total),
                 sim_threshold(store_dts[di]));
          free(ref);
          free(y);
          dev_free(t, dout.data);
        }
        dev_free(t, dq.data);
        free(q);
        many_free(t, ss, ds);
      }
  }
}

/* Bad batches are refused naming the block. */
static void test_many_errors(void **state) {
  (void)state;
  const tb *t = &backends[0];
  use(t);
  trng r = {seed + 11};
  store s;
  store_make(&r, &s, MN_DTYPE_I8, 10, 8);
  float q[8] = {1, 0, 0, 0, 0, 0, 0, 0};
  mn_tensor hq = mn_tensor_host(q, MN_DTYPE_F32, 1, 8);
  mn_search_block bl[2];
  float sc[2 * 10];
  int64_t ids[2 * 10];
  for (int i = 0; i < 2; i++) {
    bl[i].db.codes = mn_tensor_host(s.codes, MN_DTYPE_I8, 10, 8);
    bl[i].db.scales = s.scales;
    bl[i].db.affine = NULL;
    bl[i].db.norms = NULL;
    bl[i].k = 10;
    bl[i].scores = sc + 10 * i;
    bl[i].ids = ids + 10 * i;
  }
  bl[1].db.scales = NULL;
  assert_int_equal(mn_backend_search_many(t->b, &hq, bl, 2, MN_METRIC_IP),
                   MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "block 1"));
  assert_non_null(strstr(mn_errmsg(), "scales"));
  bl[1].db.scales = s.scales;
  bl[0].k = 0;
  assert_int_equal(mn_backend_search_many(t->b, &hq, bl, 2, MN_METRIC_IP),
                   MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "block 0: k must be"));
  bl[0].k = 10;
  bl[1].db.codes.cols = 7;
  assert_int_equal(mn_backend_search_many(t->b, &hq, bl, 2, MN_METRIC_IP),
                   MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "block 1"));
  bl[1].db.codes.cols = 8;
  assert_int_equal(mn_backend_search_many(t->b, &hq, bl, -1, MN_METRIC_IP),
                   MN_ERR_INVALID);
  assert_int_equal(mn_backend_search_many(t->b, &hq, bl, 2, MN_METRIC_IP),
                   MN_OK);
  mn_vecblock vb[2] = {bl[0].db, bl[1].db};
  float out[20];
  mn_tensor ho = mn_tensor_host(out, MN_DTYPE_F32, 1, 19);
  assert_int_equal(
      mn_backend_similarity_many(t->b, &hq, vb, 2, MN_METRIC_IP, &ho),
      MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "[1, 20]"));
  ho.cols = 20;
  assert_int_equal(
      mn_backend_similarity_many(t->b, &hq, vb, 2, MN_METRIC_IP, &ho), MN_OK);
  for (int j = 0; j < 10; j++)
    assert_true(out[j] == out[10 + j]);
  store_free(&s);
}

/* mn_topk: host scores with many ties, exact selection. */
static void test_topk(void **state) {
  (void)state;
  trng r = {seed + 8};
  const int64_t rows = 4, cols = 1000;
  float *s = malloc(sizeof(float) * (size_t)(rows * cols));
  double *d = malloc(sizeof(double) * (size_t)(rows * cols));
  for (int64_t i = 0; i < rows * cols; i++)
    d[i] = s[i] = (float)(trng_next(&r) % 300) - 150.0f;
  mn_tensor st = mn_tensor_host(s, MN_DTYPE_F32, rows, cols);
  const int64_t ks[] = {1, 10, 333, cols + 5};
  for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
    for (int largest = 0; largest < 2; largest++) {
      int64_t k = ks[ki];
      float *os = malloc(sizeof(float) * (size_t)(rows * k));
      int64_t *oi = malloc(sizeof(int64_t) * (size_t)(rows * k));
      memset(os, 0xff, sizeof(float) * (size_t)(rows * k));
      memset(oi, 0x7f, sizeof(int64_t) * (size_t)(rows * k));
      assert_int_equal(mn_topk(&st, k, largest, os, oi), MN_OK);
      char what[48];
      snprintf(what, sizeof what, "topk k=%lld %s", (long long)k,
               largest ? "largest" : "smallest");
      for (int64_t i = 0; i < rows; i++)
        check_topk(&backends[0], what, os + i * k, oi + i * k, k, d + i * cols,
                   cols, 0, largest, 0);
      ncases++;
      free(os);
      free(oi);
    }
  assert_int_equal(mn_topk(&st, 0, 1, (float *)d, (int64_t *)d),
                   MN_ERR_INVALID);
  free(s);
  free(d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_normalize),
      cmocka_unit_test(test_pca_fit),
      cmocka_unit_test(test_pca_transform),
      cmocka_unit_test(test_quantize),
      cmocka_unit_test(test_dequantize),
      cmocka_unit_test(test_similarity),
      cmocka_unit_test(test_search),
      cmocka_unit_test(test_search_many),
      cmocka_unit_test(test_similarity_many),
      cmocka_unit_test(test_many_errors),
      cmocka_unit_test(test_topk),
  };
  int failed = cmocka_run_group_tests(tests, setup, teardown);
  /* The group setup fails only when no backend at all could be opened. */
  if (nbackends == 0)
    return 77;
  return failed;
}
