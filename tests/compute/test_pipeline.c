/*
 * test_pipeline.c - mn_pipeline_run (processEmbeddings) on the CPU backend
 * against a double-precision reference chain computed here: normalise,
 * PCA (a given model, or a fit checked against LAPACKE in double), then
 * every quantisation kind and output precision; batch splitting gives the
 * same bytes as one batch; bad input gets MN_ERR_INVALID with a message
 * that says what is wrong, and nothing leaks on any path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "common/internal.h"
#include "compute/backend_impl.h"
#include "compute/refops.h"
#include "mnemo/compute.h"

static mn_backend *be;

static int setup(void **state) {
  (void)state;
  mn_backend_opts o;
  mn_backend_opts_init(&o);
  o.pref = MN_BACKEND_CPU;
  return mn_backend_open(&o, &be) == MN_OK ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  mn_backend_close(be);
  return 0;
}

#define ROWS 301
#define COLS 40
#define K 6

/* A PCA model that is not a fit: random mean, unit random components,
 * positive variances, so that a transform bug cannot hide behind a
 * symmetric special case. */
static mn_pca_model *make_model(trng *r, int64_t cols, int64_t k) {
  mn_pca_model *m = NULL;
  assert_int_equal(mn_pca_alloc(cols, k, &m), MN_OK);
  for (int64_t c = 0; c < cols; c++)
    m->mean[c] = (float)(0.1 * trng_gauss(r));
  for (int64_t j = 0; j < k; j++) {
    double n = 0;
    for (int64_t c = 0; c < cols; c++) {
      double v = trng_gauss(r);
      m->components[j * cols + c] = (float)v;
      n += v * v;
    }
    for (int64_t c = 0; c < cols; c++)
      m->components[j * cols + c] /= (float)sqrt(n);
    m->explained_variance[j] = (float)(0.02 + 0.5 / (double)(j + 1));
  }
  m->n_samples = 1000;
  return m;
}

static double *widen_f(const float *v, int64_t n) {
  double *d = malloc(sizeof(double) * (size_t)n);
  for (int64_t i = 0; i < n; i++)
    d[i] = v[i];
  return d;
}

/*
 * Compute the reference for `o` on input x (rows x cols, row stride in
 * floats) and check `res` against it. Returns nothing: fails the test.
 */
static void check_against_reference(const float *x, int64_t rows, int64_t cols,
                                    int64_t stride, const mn_pipeline_opts *o,
                                    const mn_pipeline_result *res) {
  double *X = ref_widen(x, rows, cols, stride);
  int64_t zero = 0;
  if (o->normalize)
    zero = ref_normalize(X, rows, cols);
  assert_int_equal(res->zero_rows, zero);

  double *Y = X;
  int64_t w = cols;
  if (o->pca) {
    w = o->pca->n_components;
    double *mean = widen_f(o->pca->mean, cols);
    double *comp = widen_f(o->pca->components, w * cols);
    double *ev = widen_f(o->pca->explained_variance, w);
    Y = ref_pca_apply(X, rows, cols, mean, comp, ev, w, o->whiten);
    free(mean);
    free(comp);
    free(ev);
    assert_null(res->fitted);
  } else if (o->reduce_dims > 0) {
    w = o->reduce_dims;
    double *mean = malloc(sizeof(double) * (size_t)cols);
    double *comp = malloc(sizeof(double) * (size_t)(w * cols));
    double *ev = malloc(sizeof(double) * (size_t)w), total = 0;
    assert_int_equal(ref_pca_fit(X, rows, cols, w, mean, comp, ev, &total), 0);
    const mn_pca_model *f = res->fitted;
    assert_non_null(f);
    assert_int_equal(f->input_dim, cols);
    assert_int_equal(f->n_components, w);
    assert_int_equal(f->n_samples, rows);
    assert_true(fabs(f->total_variance - total) <= 1e-5 * total);
    for (int64_t c = 0; c < cols; c++)
      assert_true(fabs(f->mean[c] - mean[c]) <= 1e-5 * (1 + fabs(mean[c])));
    for (int64_t j = 0; j < w; j++) {
      if (!(fabs(f->explained_variance[j] - ev[j]) <= 1e-4 * ev[j]))
        fail_msg("component %lld: variance %.9g, double gives %.9g",
                 (long long)j, f->explained_variance[j], ev[j]);
      assert_true(fabs(f->explained_variance_ratio[j] - ev[j] / total) <=
                  1e-4 * ev[j] / total);
      /* Eigenvectors are defined up to sign: align ours to the model's. */
      double dot = 0;
      for (int64_t c = 0; c < cols; c++)
        dot += f->components[j * cols + c] * comp[j * cols + c];
      if (!(1 - fabs(dot) <= 1e-5))
        fail_msg("component %lld: |cos| with the double eigenvector is "
                 "%.9f",
                 (long long)j, fabs(dot));
      if (dot < 0)
        for (int64_t c = 0; c < cols; c++)
          comp[j * cols + c] = -comp[j * cols + c];
    }
    Y = ref_pca_apply(X, rows, cols, mean, comp, ev, w, o->whiten);
    free(mean);
    free(comp);
    free(ev);
  } else {
    assert_null(res->fitted);
  }

  const mn_tensor *out = &res->out;
  assert_int_equal(out->rows, rows);
  assert_int_equal(out->cols, w);
  assert_int_equal(out->device, MN_DEVICE_HOST);
  assert_int_equal(res->quant, o->quant);
  size_t rb = mn_dtype_row_bytes(out->dtype, w);
  assert_int_equal(out->stride, (int64_t)rb);
  const char *msg = NULL;
  int fit = !o->pca && o->reduce_dims > 0;
  /* PCA sums `cols` float32 products; a fitted model also carries its own
   * float32 eigenvector error. */
  double ftol = o->pca ? 1e-5 : (fit ? 1e-4 : 2e-6);
  switch (o->quant) {
  case MN_QUANT_NONE:
    if (o->precision == MN_DTYPE_F32) {
      assert_int_equal(out->dtype, MN_DTYPE_F32);
      double e = ref_max_rel(out->data, w, Y, rows, w);
      if (!(e <= ftol))
        fail_msg("float32 output: max error %.3g of the largest value, "
                 "allowed %.1g",
                 e, ftol);
    } else {
      assert_int_equal(out->dtype, o->precision);
      msg = ref_check_half(out->data, w, Y, rows, w,
                           o->precision == MN_DTYPE_BF16);
    }
    assert_null(res->scales);
    break;
  case MN_QUANT_INT8:
  case MN_QUANT_INT4:
    assert_int_equal(out->dtype,
                     o->quant == MN_QUANT_INT8 ? MN_DTYPE_I8 : MN_DTYPE_I4);
    assert_non_null(res->scales);
    msg = ref_check_sym(out->data, (int64_t)rb, res->scales, Y, rows, w,
                        o->quant == MN_QUANT_INT8 ? 127 : 7);
    break;
  case MN_QUANT_INT8_AFFINE:
    assert_int_equal(out->dtype, MN_DTYPE_U8);
    assert_int_equal(res->affine.dim, w);
    assert_non_null(res->affine.vmin);
    if (o->affine) {
      /* The result owns a copy of the given parameters. */
      assert_ptr_not_equal(res->affine.vmin, o->affine->vmin);
      assert_memory_equal(res->affine.vmin, o->affine->vmin,
                          sizeof(float) * (size_t)w);
      assert_memory_equal(res->affine.scale, o->affine->scale,
                          sizeof(float) * (size_t)w);
    }
    msg = ref_check_affine(out->data, (int64_t)rb, res->affine.vmin,
                           res->affine.scale, o->affine == NULL, Y, rows, w);
    break;
  case MN_QUANT_FP16:
  case MN_QUANT_BF16:
    assert_int_equal(out->dtype, mn_quant_dtype(o->quant));
    msg = ref_check_half(out->data, w, Y, rows, w, o->quant == MN_QUANT_BF16);
    break;
  case MN_QUANT_BINARY:
    assert_int_equal(out->dtype, MN_DTYPE_BIN);
    msg = ref_check_binary(out->data, (int64_t)rb, Y, rows, w);
    break;
  }
  if (msg)
    fail_msg("%s (normalize %d, reduce %lld, pca %s, quant %s): %s",
             mn_dtype_name(out->dtype), o->normalize, (long long)o->reduce_dims,
             o->pca ? "given" : "none", mn_quant_name(o->quant), msg);
  if (Y != X)
    free(Y);
  free(X);
}

/* Run, check, free; the host allocation count returns to where it was. */
static void run_and_check(const float *x, int64_t rows, int64_t cols,
                          int64_t stride, const mn_pipeline_opts *o) {
  int64_t before = mn_account_get(MN_TIER_HOST);
  mn_tensor in = mn_tensor_host((void *)x, MN_DTYPE_F32, rows, cols);
  in.stride = stride * (int64_t)sizeof(float);
  mn_pipeline_result res;
  mn_status s = mn_pipeline_run(be, &in, o, &res);
  if (s != MN_OK)
    fail_msg("pipeline failed: %s: %s", mn_status_name(s), mn_errmsg());
  assert_string_equal(res.device, mn_backend_device(be));
  assert_true(res.processing_ms >= 0 && res.processing_ms < 60000);
  check_against_reference(x, rows, cols, stride, o, &res);
  mn_pipeline_result_free(&res);
  assert_int_equal(mn_account_get(MN_TIER_HOST), before);
}

static void test_opts_init(void **state) {
  (void)state;
  mn_pipeline_opts o;
  memset(&o, 0xa5, sizeof o);
  mn_pipeline_opts_init(&o);
  assert_int_equal(o.normalize, 0);
  assert_int_equal(o.reduce_dims, 0);
  assert_null(o.pca);
  assert_int_equal(o.whiten, 0);
  assert_int_equal(o.quant, MN_QUANT_NONE);
  assert_null(o.affine);
  assert_int_equal(o.precision, MN_DTYPE_F32);
  assert_int_equal(o.batch_size, 0);
}

/* Defaults copy the input, also from a strided view, and the result is
 * independent of the caller's buffer. */
static void test_defaults_copy(void **state) {
  (void)state;
  trng r = {1};
  int64_t stride = COLS + 3;
  float *x = ref_random(&r, ROWS, stride, 1.0, 0);
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  run_and_check(x, ROWS, COLS, stride, &o);
  mn_tensor in = mn_tensor_host(x, MN_DTYPE_F32, ROWS, COLS);
  in.stride = stride * 4;
  mn_pipeline_result res;
  assert_int_equal(mn_pipeline_run(be, &in, NULL, &res), MN_OK);
  assert_ptr_not_equal(res.out.data, x);
  for (int64_t i = 0; i < ROWS; i++)
    assert_memory_equal(mn_tensor_row(&res.out, i), x + i * stride,
                        COLS * sizeof(float));
  assert_int_equal(res.quant, MN_QUANT_NONE);
  assert_int_equal(res.zero_rows, 0);
  mn_pipeline_result_free(&res);
  free(x);
}

/* Normalisation, with zero rows that stay zero and are counted. */
static void test_normalize(void **state) {
  (void)state;
  trng r = {2};
  float *x = ref_random(&r, ROWS, COLS, 1.0, 0);
  for (int64_t i = 0; i < ROWS; i += 50)
    memset(x + i * COLS, 0, COLS * sizeof(float));
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  run_and_check(x, ROWS, COLS, COLS, &o);
  o.batch_size = 13;
  run_and_check(x, ROWS, COLS, COLS, &o);
  /* One row, one column: 1x1 normalises to +-1. */
  float one = -3.5f;
  o.batch_size = 0;
  run_and_check(&one, 1, 1, 1, &o);
  free(x);
}

/* A given model, with and without normalisation and whitening. */
static void test_given_pca(void **state) {
  (void)state;
  trng r = {3};
  float *x = ref_random(&r, ROWS, COLS, 0.9, 1);
  mn_pca_model *m = make_model(&r, COLS, K);
  mn_pipeline_opts o;
  for (int norm = 0; norm < 2; norm++)
    for (int wh = 0; wh < 2; wh++) {
      mn_pipeline_opts_init(&o);
      o.normalize = norm;
      o.pca = m;
      o.whiten = wh;
      run_and_check(x, ROWS, COLS, COLS, &o);
      o.reduce_dims = K; /* the same number: accepted */
      o.batch_size = 64;
      run_and_check(x, ROWS, COLS, COLS, &o);
    }
  mn_pca_free(m);
  free(x);
}

/* PCA fitted on the batch: the model is returned and matches LAPACKE in
 * double; the output is the transform by that model. */
static void test_fitted_pca(void **state) {
  (void)state;
  trng r = {4};
  float *x = ref_random(&r, ROWS, COLS, 0.7, 1);
  mn_pipeline_opts o;
  for (int norm = 0; norm < 2; norm++)
    for (int wh = 0; wh < 2; wh++) {
      mn_pipeline_opts_init(&o);
      o.normalize = norm;
      o.reduce_dims = K;
      o.whiten = wh;
      run_and_check(x, ROWS, COLS, COLS, &o);
    }
  /* reduce_dims equal to the width is a rotation, and is allowed. */
  mn_pipeline_opts_init(&o);
  o.reduce_dims = 5;
  float *y = ref_random(&r, 50, 5, 0.5, 1);
  run_and_check(y, 50, 5, 5, &o);
  free(y);
  free(x);
}

/* Every quantisation kind and output precision after normalise + PCA. */
static void test_quant_kinds(void **state) {
  (void)state;
  trng r = {5};
  float *x = ref_random(&r, ROWS, COLS, 0.9, 1);
  mn_pca_model *m = make_model(&r, COLS, K);
  const mn_quant_kind kinds[] = {MN_QUANT_INT8, MN_QUANT_INT8_AFFINE,
                                 MN_QUANT_INT4, MN_QUANT_FP16,
                                 MN_QUANT_BF16, MN_QUANT_BINARY};
  mn_pipeline_opts o;
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    for (int chain = 0; chain < 3; chain++) {
      mn_pipeline_opts_init(&o);
      o.quant = kinds[i];
      o.normalize = chain >= 1;
      o.pca = chain == 2 ? m : NULL;
      run_and_check(x, ROWS, COLS, COLS, &o);
      o.batch_size = 17;
      run_and_check(x, ROWS, COLS, COLS, &o);
    }
  /* Odd widths: int4 and binary rows end in a partial byte. */
  float *odd = ref_random(&r, 33, 13, 1.0, 0);
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
    mn_pipeline_opts_init(&o);
    o.quant = kinds[i];
    run_and_check(odd, 33, 13, 13, &o);
  }
  /* float16 / bfloat16 through `precision` with quant none. */
  for (int p = 0; p < 2; p++) {
    mn_pipeline_opts_init(&o);
    o.normalize = 1;
    o.pca = m;
    o.precision = p ? MN_DTYPE_BF16 : MN_DTYPE_F16;
    run_and_check(x, ROWS, COLS, COLS, &o);
    o.pca = NULL;
    o.batch_size = 100;
    run_and_check(x, ROWS, COLS, COLS, &o);
  }
  /* Fitted PCA then int8, the usual processEmbeddings chain. */
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  o.reduce_dims = K;
  o.quant = MN_QUANT_INT8;
  float *c = ref_random(&r, ROWS, COLS, 0.7, 1);
  run_and_check(c, ROWS, COLS, COLS, &o);
  free(c);
  free(odd);
  mn_pca_free(m);
  free(x);
}

/* Given int8_affine parameters are used as they are and copied. */
static void test_given_affine(void **state) {
  (void)state;
  trng r = {6};
  float *x = ref_random(&r, ROWS, COLS, 1.0, 0);
  float vmin[K], scale[K];
  for (int j = 0; j < K; j++) {
    vmin[j] = -0.6f + 0.01f * (float)j;
    scale[j] = 1.2f / 255.0f * (1.0f + 0.1f * (float)j);
  }
  mn_affine_params a = {K, vmin, scale};
  mn_pca_model *m = make_model(&r, COLS, K);
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  o.pca = m;
  o.quant = MN_QUANT_INT8_AFFINE;
  o.affine = &a;
  run_and_check(x, ROWS, COLS, COLS, &o);
  o.batch_size = 10;
  run_and_check(x, ROWS, COLS, COLS, &o);
  /* Parameters of the wrong width are refused before any work. */
  a.dim = K + 1;
  mn_tensor in = mn_tensor_host(x, MN_DTYPE_F32, ROWS, COLS);
  mn_pipeline_result res;
  assert_int_equal(mn_pipeline_run(be, &in, &o, &res), MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "7 dimensions"));
  assert_null(res.out.data);
  mn_pca_free(m);
  free(x);
}

/* Element (i, c) of a result's output, decoded to a real number. */
static double decoded(const mn_pipeline_result *r, int64_t i, int64_t c) {
  const uint8_t *row = mn_tensor_row(&r->out, i);
  switch (r->out.dtype) {
  case MN_DTYPE_F32:
    return ((const float *)row)[c];
  case MN_DTYPE_F16:
    return ref_f16_decode(((const uint16_t *)row)[c]);
  case MN_DTYPE_BF16:
    return ref_bf16_decode(((const uint16_t *)row)[c]);
  case MN_DTYPE_I8:
    return ((const int8_t *)row)[c] * (double)r->scales[i];
  case MN_DTYPE_I4:
    return ref_i4_code(row, c) * (double)r->scales[i];
  case MN_DTYPE_U8:
    return r->affine.vmin[c] + row[c] * (double)r->affine.scale[c];
  default:
    return (row[c / 8] >> (c & 7)) & 1 ? 1 : -1;
  }
}

/* The stored code of element (i, c), whatever its width. */
static unsigned raw(const mn_pipeline_result *r, int64_t i, int64_t c) {
  const uint8_t *row = mn_tensor_row(&r->out, i);
  switch (r->out.dtype) {
  case MN_DTYPE_F32:
    return ((const uint32_t *)row)[c];
  case MN_DTYPE_F16:
  case MN_DTYPE_BF16:
    return ((const uint16_t *)row)[c];
  case MN_DTYPE_I4:
    return (row[c / 2] >> (4 * (c & 1))) & 15;
  case MN_DTYPE_BIN:
    return (row[c / 8] >> (c & 7)) & 1;
  default:
    return row[c];
  }
}

/*
 * b must equal a. Without a PCA transform the bytes are identical. With
 * one, BLAS may round a product differently for a different number of rows
 * per call (OpenBLAS does for a 1-row batch), so the values must agree to
 * float32 rounding: codes at most one step apart, and rarely. The fitted
 * model is always identical: it is fitted once, on the whole input.
 */
static void compare_results(const mn_pipeline_result *a,
                            const mn_pipeline_result *b, const char *what,
                            int exact) {
  assert_int_equal(a->out.dtype, b->out.dtype);
  assert_int_equal(a->out.rows, b->out.rows);
  assert_int_equal(a->out.cols, b->out.cols);
  assert_int_equal(a->zero_rows, b->zero_rows);
  assert_int_equal(!a->scales, !b->scales);
  assert_int_equal(a->affine.dim, b->affine.dim);
  assert_int_equal(!a->fitted, !b->fitted);
  if (a->fitted) {
    assert_int_equal(b->fitted->n_samples, a->out.rows);
    assert_memory_equal(a->fitted->components, b->fitted->components,
                        sizeof(float) * (size_t)(a->fitted->n_components *
                                                 a->fitted->input_dim));
    assert_memory_equal(a->fitted->mean, b->fitted->mean,
                        sizeof(float) * (size_t)a->fitted->input_dim);
    assert_memory_equal(a->fitted->explained_variance,
                        b->fitted->explained_variance,
                        sizeof(float) * (size_t)a->fitted->n_components);
  }
  int64_t rows = a->out.rows, cols = a->out.cols;
  if (exact) {
    if (memcmp(a->out.data, b->out.data, mn_tensor_bytes(&a->out)) != 0)
      fail_msg("%s: output differs from the one-batch run", what);
    if (a->scales)
      assert_memory_equal(a->scales, b->scales, sizeof(float) * (size_t)rows);
    if (a->affine.dim) {
      assert_memory_equal(a->affine.vmin, b->affine.vmin,
                          sizeof(float) * (size_t)cols);
      assert_memory_equal(a->affine.scale, b->affine.scale,
                          sizeof(float) * (size_t)cols);
    }
    return;
  }
  for (int64_t i = 0; a->scales && i < rows; i++)
    if (!(fabs(a->scales[i] - b->scales[i]) <= 1e-5 * a->scales[i]))
      fail_msg("%s: row %lld scale %.9g vs %.9g", what, (long long)i,
               b->scales[i], a->scales[i]);
  for (int64_t c = 0; c < a->affine.dim; c++) {
    double range = 255.0 * a->affine.scale[c];
    if (!(fabs(a->affine.vmin[c] - b->affine.vmin[c]) <= 1e-5 * range) ||
        !(fabs(a->affine.scale[c] - b->affine.scale[c]) <=
          1e-5 * a->affine.scale[c]))
      fail_msg("%s: affine parameters of dim %lld differ", what, (long long)c);
  }
  double mag = 0;
  for (int64_t i = 0; i < rows; i++)
    for (int64_t c = 0; c < cols; c++)
      mag = fmax(mag, fabs(decoded(a, i, c)));
  int64_t differ = 0;
  for (int64_t i = 0; i < rows; i++)
    for (int64_t c = 0; c < cols; c++) {
      double va = decoded(a, i, c), vb = decoded(b, i, c), tol = 1e-5 * mag;
      switch (a->out.dtype) {
      case MN_DTYPE_F16:
        tol += ldexp(fabs(va), -10) + ldexp(1, -24);
        break;
      case MN_DTYPE_BF16:
        tol += ldexp(fabs(va), -7);
        break;
      case MN_DTYPE_I8:
      case MN_DTYPE_I4:
        tol += 1.001 * fmax(a->scales[i], b->scales[i]);
        break;
      case MN_DTYPE_U8:
        tol += 1.001 * a->affine.scale[c];
        break;
      case MN_DTYPE_BIN:
        tol = 2; /* a sign may flip where the value is next to zero */
        break;
      default:
        break;
      }
      if (!(fabs(va - vb) <= tol))
        fail_msg("%s: row %lld col %lld is %.9g, one batch gives %.9g", what,
                 (long long)i, (long long)c, vb, va);
      differ += raw(a, i, c) != raw(b, i, c);
    }
  /* Codes land one step apart only where a value sits on a rounding
   * boundary: rarely. */
  if (a->out.dtype != MN_DTYPE_F32 && differ * 100 > rows * cols)
    fail_msg("%s: %lld of %lld values differ from the one-batch run", what,
             (long long)differ, (long long)(rows * cols));
}

/* Splitting into batches changes nothing, whatever the chain. */
static void test_batches_identical(void **state) {
  (void)state;
  trng r = {7};
  float *x = ref_random(&r, ROWS, COLS, 0.7, 1);
  for (int64_t i = 0; i < ROWS; i += 97)
    memset(x + i * COLS, 0, COLS * sizeof(float));
  mn_pca_model *m = make_model(&r, COLS, K);
  struct {
    int norm, fit, given, whiten;
    mn_quant_kind q;
    mn_dtype prec;
  } cases[] = {
      {1, 1, 0, 1, MN_QUANT_INT8_AFFINE, MN_DTYPE_F32},
      {1, 1, 0, 0, MN_QUANT_INT8, MN_DTYPE_F32},
      {0, 1, 0, 0, MN_QUANT_NONE, MN_DTYPE_F32},
      {1, 0, 1, 1, MN_QUANT_INT4, MN_DTYPE_F32},
      {1, 0, 1, 0, MN_QUANT_NONE, MN_DTYPE_BF16},
      {1, 0, 0, 0, MN_QUANT_NONE, MN_DTYPE_F32},
      {1, 0, 0, 0, MN_QUANT_INT8_AFFINE, MN_DTYPE_F32},
      {0, 0, 0, 0, MN_QUANT_INT8_AFFINE, MN_DTYPE_F32},
      {0, 0, 0, 0, MN_QUANT_BINARY, MN_DTYPE_F32},
      {0, 0, 0, 0, MN_QUANT_NONE, MN_DTYPE_F16},
  };
  const int64_t sizes[] = {7, 64, 300, ROWS + 5};
  mn_tensor in = mn_tensor_host(x, MN_DTYPE_F32, ROWS, COLS);
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    mn_pipeline_opts o;
    mn_pipeline_opts_init(&o);
    o.normalize = cases[c].norm;
    o.reduce_dims = cases[c].fit ? K : 0;
    o.pca = cases[c].given ? m : NULL;
    o.whiten = cases[c].whiten;
    o.quant = cases[c].q;
    o.precision = cases[c].prec;
    mn_pipeline_result one, split;
    assert_int_equal(mn_pipeline_run(be, &in, &o, &one), MN_OK);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
      char what[96];
      snprintf(what, sizeof what, "case %zu, batch_size %lld", c,
               (long long)sizes[s]);
      o.batch_size = sizes[s];
      mn_status st = mn_pipeline_run(be, &in, &o, &split);
      if (st != MN_OK)
        fail_msg("%s: %s", what, mn_errmsg());
      compare_results(&one, &split, what, !cases[c].fit && !cases[c].given);
      mn_pipeline_result_free(&split);
    }
    mn_pipeline_result_free(&one);
  }
  mn_pca_free(m);
  free(x);
}

/* Expect `want` and a message containing each of the NULL-terminated
 * fragments; the result must come back empty and nothing may leak. */
static void expect_error(const float *x, int64_t rows, int64_t cols,
                         const mn_pipeline_opts *o, mn_status want, ...) {
  int64_t before = mn_account_get(MN_TIER_HOST);
  mn_tensor in = mn_tensor_host((void *)x, MN_DTYPE_F32, rows, cols);
  mn_pipeline_result res;
  memset(&res, 0x5a, sizeof res);
  mn_status s = mn_pipeline_run(be, &in, o, &res);
  if (s != want)
    fail_msg("got %s (%s), expected %s", mn_status_name(s), mn_errmsg(),
             mn_status_name(want));
  va_list ap;
  va_start(ap, want);
  for (const char *frag; (frag = va_arg(ap, const char *));)
    if (!strstr(mn_errmsg(), frag))
      fail_msg("message \"%s\" does not mention \"%s\"", mn_errmsg(), frag);
  va_end(ap);
  assert_null(res.out.data);
  assert_null(res.scales);
  assert_null(res.fitted);
  assert_null(res.affine.vmin);
  assert_int_equal(mn_account_get(MN_TIER_HOST), before);
}

static void test_errors(void **state) {
  (void)state;
  trng r = {8};
  float *x = ref_random(&r, ROWS, COLS, 0.8, 1);
  mn_pca_model *m = make_model(&r, COLS, K);
  mn_pipeline_opts o;

  /* NaN / Inf: the message names the row of the whole input, whatever the
   * batch it falls in. */
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  o.batch_size = 10;
  x[123 * COLS + 17] = NAN;
  expect_error(x, ROWS, COLS, &o, MN_ERR_INVALID, "row 123", "column 17", "NaN",
               NULL);
  x[123 * COLS + 17] = 0.5f;
  x[290 * COLS + 3] = -INFINITY;
  o.reduce_dims = K;
  o.quant = MN_QUANT_INT8_AFFINE;
  expect_error(x, ROWS, COLS, &o, MN_ERR_INVALID, "row 290", "infinite", NULL);
  x[290 * COLS + 3] = 0.5f;

  /* reduce_dims against a given model. */
  mn_pipeline_opts_init(&o);
  o.pca = m;
  o.reduce_dims = K + 2;
  expect_error(x, ROWS, COLS, &o, MN_ERR_INVALID, "reduce_dims 8",
               "6 components", NULL);
  /* reduce_dims wider than the input. */
  mn_pipeline_opts_init(&o);
  o.reduce_dims = COLS + 1;
  expect_error(x, ROWS, COLS, &o, MN_ERR_INVALID, "reduce_dims 41", "width 40",
               NULL);
  o.pca = m;
  expect_error(x, ROWS, COLS, &o, MN_ERR_INVALID, "reduce_dims 41", NULL);
  /* A model for another width. */
  mn_pipeline_opts_init(&o);
  o.pca = m;
  expect_error(x, ROWS, COLS - 1, &o, MN_ERR_INVALID, "40-wide", "39 wide",
               NULL);
  /* Too few rows to fit: the backend's reason comes through. */
  mn_pipeline_opts_init(&o);
  o.reduce_dims = K;
  expect_error(x, 4, COLS, &o, MN_ERR_INVALID, "PCA", "rows", NULL);
  expect_error(x, 1, COLS, &o, MN_ERR_INVALID, "PCA", "2 rows", NULL);
  /* Bad option values. */
  mn_pipeline_opts_init(&o);
  o.batch_size = -1;
  expect_error(x, ROWS, COLS, &o, MN_ERR_INVALID, "batch_size", NULL);
  mn_pipeline_opts_init(&o);
  o.precision = MN_DTYPE_I8;
  expect_error(x, ROWS, COLS, &o, MN_ERR_INVALID, "precision int8", NULL);
  mn_pipeline_opts_init(&o);
  o.quant = (mn_quant_kind)42;
  expect_error(x, ROWS, COLS, &o, MN_ERR_INVALID, "quantization", NULL);
  mn_pipeline_opts_init(&o);
  o.reduce_dims = -3;
  expect_error(x, ROWS, COLS, &o, MN_ERR_INVALID, "reduce_dims", NULL);
  /* Not float32 host input. */
  mn_tensor in = mn_tensor_host(x, MN_DTYPE_F16, ROWS, COLS);
  mn_pipeline_result res;
  assert_int_equal(mn_pipeline_run(be, &in, NULL, &res), MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "float32"));
  in = mn_tensor_host(x, MN_DTYPE_F32, ROWS, COLS);
  assert_int_equal(mn_pipeline_run(NULL, &in, NULL, &res), MN_ERR_INVALID);
  assert_int_equal(mn_pipeline_run(be, NULL, NULL, &res), MN_ERR_INVALID);
  assert_int_equal(mn_pipeline_run(be, &in, NULL, NULL), MN_ERR_INVALID);
  mn_pca_free(m);
  free(x);
}

/* No rows: an empty result, unless something must be fitted on them. */
static void test_empty(void **state) {
  (void)state;
  float dummy = 0;
  mn_tensor in = mn_tensor_host(&dummy, MN_DTYPE_F32, 0, COLS);
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  o.quant = MN_QUANT_INT8;
  mn_pipeline_result res;
  assert_int_equal(mn_pipeline_run(be, &in, &o, &res), MN_OK);
  assert_int_equal(res.out.rows, 0);
  assert_int_equal(res.out.cols, COLS);
  assert_int_equal(res.out.dtype, MN_DTYPE_I8);
  mn_pipeline_result_free(&res);
  o.reduce_dims = 2;
  expect_error(&dummy, 0, COLS, &o, MN_ERR_INVALID, "no embeddings", NULL);
}

static void test_result_free(void **state) {
  (void)state;
  mn_pipeline_result res;
  memset(&res, 0, sizeof res);
  mn_pipeline_result_free(&res);
  mn_pipeline_result_free(&res);
  mn_pipeline_result_free(NULL);
  /* After a real run, freeing twice is harmless too. */
  float v[4] = {1, 2, 3, 4};
  mn_tensor in = mn_tensor_host(v, MN_DTYPE_F32, 2, 2);
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  o.reduce_dims = 1;
  o.quant = MN_QUANT_INT8_AFFINE;
  assert_int_equal(mn_pipeline_run(be, &in, &o, &res), MN_OK);
  assert_non_null(res.fitted);
  mn_pipeline_result_free(&res);
  assert_null(res.out.data);
  assert_null(res.fitted);
  mn_pipeline_result_free(&res);
}

/* ------------------------------------------------------------------------
 * The device path, on an emulated device: a backend that says its tensors
 * live on the GPU, keeps its "device memory" in blocks it tracks, refuses
 * any op whose tensors or scales are not inside those blocks, and computes
 * with the CPU backend's own ops. The pipeline must upload, compute and
 * download exactly as it would on CUDA, give the CPU's bytes, and free
 * every device block on every path.
 * ---------------------------------------------------------------------- */
#define FD_MAX 64
typedef struct fakedev {
  mn_backend base;
  mn_backend *cpu;
  char *blk[FD_MAX];
  size_t len[FD_MAX];
  int uploads, downloads;
  int bad; /* an op got memory that is not on the "device" */
} fakedev;

static fakedev *fd_of(mn_backend *b) {
  return (fakedev *)b;
}

static int fd_owns(fakedev *f, const void *p, size_t n) {
  for (int i = 0; i < FD_MAX; i++)
    if (f->blk[i] && (const char *)p >= f->blk[i] &&
        (const char *)p + n <= f->blk[i] + f->len[i])
      return 1;
  return 0;
}

static mn_status fd_alloc(mn_backend *b, size_t n, void **out) {
  fakedev *f = fd_of(b);
  for (int i = 0; i < FD_MAX; i++)
    if (!f->blk[i]) {
      f->blk[i] = malloc(n);
      f->len[i] = n;
      memset(f->blk[i], 0xff, n); /* NaN, so unwritten floats show */
      *out = f->blk[i];
      return MN_OK;
    }
  return mn__set_error(MN_ERR_DEVICE_OOM, "fake device: out of blocks");
}

static void fd_free(mn_backend *b, void *p) {
  fakedev *f = fd_of(b);
  for (int i = 0; i < FD_MAX; i++)
    if (f->blk[i] == p) {
      free(p);
      f->blk[i] = NULL;
      return;
    }
  f->bad = 1; /* freeing something that is not a device block */
}

static mn_status fd_upload(mn_backend *b, void *dst, const void *src,
                           size_t n) {
  fakedev *f = fd_of(b);
  f->uploads++;
  if (!fd_owns(f, dst, n) || fd_owns(f, src, n))
    return (f->bad = 1), MN_ERR_INTERNAL;
  memcpy(dst, src, n);
  return MN_OK;
}

static mn_status fd_download(mn_backend *b, void *dst, const void *src,
                             size_t n) {
  fakedev *f = fd_of(b);
  f->downloads++;
  if (!fd_owns(f, src, n) || fd_owns(f, dst, n))
    return (f->bad = 1), MN_ERR_INTERNAL;
  memcpy(dst, src, n);
  return MN_OK;
}

static mn_status fd_meminfo(mn_backend *b, uint64_t *fr, uint64_t *tot) {
  (void)b;
  *fr = *tot = 1u << 30;
  return MN_OK;
}

static void fd_destroy(mn_backend *b) {
  fakedev *f = fd_of(b);
  for (int i = 0; i < FD_MAX; i++)
    free(f->blk[i]);
  mn_backend_close(f->cpu);
  free(f);
}

/* A device tensor as the CPU sees it, after checking where it lives. */
static int fd_host_view(fakedev *f, const mn_tensor *t, mn_tensor *h) {
  *h = *t;
  h->device = MN_DEVICE_HOST;
  if (t->device != MN_DEVICE_GPU ||
      (t->rows > 0 && !fd_owns(f, t->data, mn_tensor_bytes(t))))
    return f->bad = 1, 0;
  return 1;
}

#define FD_VIEW(t, h)                                                          \
  mn_tensor h;                                                                 \
  if (!fd_host_view(f, t, &h))                                                 \
  return mn__set_error(MN_ERR_INTERNAL, "fake device: " #t " is not on it")

static mn_status fd_normalize(mn_backend *b, const mn_tensor *x, mn_tensor *y,
                              int64_t *z) {
  fakedev *f = fd_of(b);
  FD_VIEW(x, hx);
  FD_VIEW(y, hy);
  return f->cpu->iface->normalize(f->cpu, &hx, &hy, z);
}

static mn_status fd_pca_fit(mn_backend *b, const mn_tensor *x, int64_t k,
                            mn_pca_model *out) {
  fakedev *f = fd_of(b);
  FD_VIEW(x, hx);
  return f->cpu->iface->pca_fit(f->cpu, &hx, k, out);
}

static mn_status fd_pca_transform(mn_backend *b, const mn_tensor *x,
                                  const mn_pca_model *m, int whiten,
                                  mn_tensor *y) {
  fakedev *f = fd_of(b);
  FD_VIEW(x, hx);
  FD_VIEW(y, hy);
  return f->cpu->iface->pca_transform(f->cpu, &hx, m, whiten, &hy);
}

static mn_status fd_affine_train(mn_backend *b, const mn_tensor *x,
                                 mn_affine_params *out) {
  fakedev *f = fd_of(b);
  FD_VIEW(x, hx);
  if (fd_owns(f, out->vmin, 4) || fd_owns(f, out->scale, 4))
    return f->bad = 1, MN_ERR_INTERNAL; /* affine params are host memory */
  return f->cpu->iface->affine_train(f->cpu, &hx, out);
}

static mn_status fd_quantize(mn_backend *b, const mn_tensor *x,
                             mn_quant_kind kind, const mn_affine_params *a,
                             mn_tensor *codes, float *scales) {
  fakedev *f = fd_of(b);
  FD_VIEW(x, hx);
  FD_VIEW(codes, hc);
  if ((kind == MN_QUANT_INT8 || kind == MN_QUANT_INT4) &&
      !fd_owns(f, scales, sizeof(float) * (size_t)x->rows))
    return f->bad = 1, MN_ERR_INTERNAL; /* per-row scales live on device */
  return f->cpu->iface->quantize(f->cpu, &hx, kind, a, &hc, scales);
}

static const mn_backend_iface fd_iface = {
    .api_version = MN_BACKEND_API_VERSION,
    .name = "fakegpu",
    .destroy = fd_destroy,
    .alloc = fd_alloc,
    .free = fd_free,
    .upload = fd_upload,
    .download = fd_download,
    .memory_info = fd_meminfo,
    .normalize = fd_normalize,
    .pca_fit = fd_pca_fit,
    .pca_transform = fd_pca_transform,
    .affine_train = fd_affine_train,
    .quantize = fd_quantize,
};

static fakedev *fd_open(void) {
  fakedev *f = calloc(1, sizeof *f);
  f->base.iface = &fd_iface;
  f->base.device_kind = MN_DEVICE_GPU;
  snprintf(f->base.device, sizeof f->base.device, "fakegpu:0 emulated");
  assert_int_equal(mn_backend_open_cpu(NULL, &f->cpu), MN_OK);
  return f;
}

static int fd_live_blocks(const fakedev *f) {
  int n = 0;
  for (int i = 0; i < FD_MAX; i++)
    n += f->blk[i] != NULL;
  return n;
}

static void test_device_path(void **state) {
  (void)state;
  trng r = {9};
  float *x = ref_random(&r, ROWS, COLS + 2, 0.7, 1);
  for (int64_t i = 0; i < ROWS; i += 97)
    memset(x + i * (COLS + 2), 0, COLS * sizeof(float));
  /* A strided view: each row is uploaded on its own. */
  mn_tensor in = mn_tensor_host(x, MN_DTYPE_F32, ROWS, COLS);
  mn_tensor in_dense = in;
  in.stride = (COLS + 2) * sizeof(float);
  float *xd = malloc(sizeof(float) * ROWS * COLS);
  for (int64_t i = 0; i < ROWS; i++)
    memcpy(xd + i * COLS, x + i * (COLS + 2), COLS * sizeof(float));
  in_dense.data = xd;
  mn_pca_model *m = make_model(&r, COLS, K);
  struct {
    int norm, fit, given, whiten;
    mn_quant_kind q;
    mn_dtype prec;
  } cases[] = {
      {1, 1, 0, 1, MN_QUANT_INT8_AFFINE, MN_DTYPE_F32},
      {1, 1, 0, 0, MN_QUANT_INT8, MN_DTYPE_F32},
      {0, 1, 0, 0, MN_QUANT_NONE, MN_DTYPE_F32},
      {1, 0, 1, 1, MN_QUANT_INT4, MN_DTYPE_F32},
      {1, 0, 1, 0, MN_QUANT_NONE, MN_DTYPE_BF16},
      {1, 0, 0, 0, MN_QUANT_NONE, MN_DTYPE_F32},
      {0, 0, 0, 0, MN_QUANT_NONE, MN_DTYPE_F32},
      {1, 0, 0, 0, MN_QUANT_INT8_AFFINE, MN_DTYPE_F32},
      {0, 0, 0, 0, MN_QUANT_INT8_AFFINE, MN_DTYPE_F32},
      {0, 0, 1, 0, MN_QUANT_BINARY, MN_DTYPE_F32},
      {0, 0, 0, 0, MN_QUANT_NONE, MN_DTYPE_F16},
  };
  const int64_t sizes[] = {0, 7, 64, ROWS + 5};
  fakedev *f = fd_open();
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    mn_pipeline_opts o;
    mn_pipeline_opts_init(&o);
    o.normalize = cases[c].norm;
    o.reduce_dims = cases[c].fit ? K : 0;
    o.pca = cases[c].given ? m : NULL;
    o.whiten = cases[c].whiten;
    o.quant = cases[c].q;
    o.precision = cases[c].prec;
    mn_pipeline_result cpu, dev;
    assert_int_equal(mn_pipeline_run(be, &in, &o, &cpu), MN_OK);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
      for (int strided = 0; strided < 2; strided++) {
        char what[96];
        snprintf(what, sizeof what, "device case %zu, batch_size %lld%s", c,
                 (long long)sizes[s], strided ? ", strided" : "");
        o.batch_size = sizes[s];
        f->uploads = 0;
        mn_status st =
            mn_pipeline_run(&f->base, strided ? &in : &in_dense, &o, &dev);
        if (st != MN_OK || f->bad)
          fail_msg("%s: %s (bad memory use: %d)", what, mn_errmsg(), f->bad);
        compare_results(&cpu, &dev, what, !cases[c].fit && !cases[c].given);
        assert_string_equal(dev.device, "fakegpu:0 emulated");
        assert_int_equal(fd_live_blocks(f), 0);
        /* The input goes up once: one upload per batch, or per row. */
        int64_t b = sizes[s] ? MN__MIN(sizes[s], ROWS) : ROWS;
        int64_t want = strided ? ROWS : (ROWS + b - 1) / b;
        if (cases[c].fit)
          want = strided ? ROWS : 1;
        assert_int_equal(f->uploads, want);
        mn_pipeline_result_free(&dev);
      }
    mn_pipeline_result_free(&cpu);
  }
  /* Failures on the device path free what they allocated there. */
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  o.reduce_dims = K;
  mn_tensor few = in_dense;
  few.rows = 3;
  mn_pipeline_result res;
  assert_int_equal(mn_pipeline_run(&f->base, &few, &o, &res), MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "rows"));
  assert_int_equal(fd_live_blocks(f), 0);
  assert_null(res.out.data);
  assert_false(f->bad);
  mn_backend_close(&f->base);
  mn_pca_free(m);
  free(xd);
  free(x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_opts_init),
      cmocka_unit_test(test_defaults_copy),
      cmocka_unit_test(test_normalize),
      cmocka_unit_test(test_given_pca),
      cmocka_unit_test(test_fitted_pca),
      cmocka_unit_test(test_quant_kinds),
      cmocka_unit_test(test_given_affine),
      cmocka_unit_test(test_batches_identical),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_empty),
      cmocka_unit_test(test_result_free),
      cmocka_unit_test(test_device_path),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
