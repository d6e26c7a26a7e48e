/*
 * test_cpu_pca.c - CPU PCA fit and transform against a double-precision
 * reference written here: the covariance from a two-pass mean, and the
 * eigenpairs from a cyclic Jacobi solver. Also the model's properties
 * (orthonormal unit components, C v = lambda v, ratios, the sign rule),
 * transforms and whitening, inputs whose mean dwarfs their spread, input
 * spanning several covariance blocks, and the wrappers' errors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu_internal.h"

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t rnd(void) {
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double urand(void) {
  return ((double)(rnd() >> 11) + 0.5) * 0x1p-53;
}
static double gauss(void) {
  return sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand());
}

/* x = z A + mu: z standard normal (n x r), A (r x d) with row i scaled by
 * decay^i so that the spectrum falls off with distinct eigenvalues. */
static float *make_data(int64_t n, int64_t d, int64_t r, double decay,
                        double mu_scale, double mu_base, int64_t ld) {
  double *a = malloc((size_t)(r * d) * sizeof(double));
  double *mu = malloc((size_t)d * sizeof(double));
  for (int64_t i = 0; i < r; i++)
    for (int64_t j = 0; j < d; j++)
      a[i * d + j] = gauss() * pow(decay, (double)i);
  for (int64_t j = 0; j < d; j++)
    mu[j] = mu_base + mu_scale * gauss();
  float *x = malloc((size_t)(n * ld) * sizeof(float));
  double *z = malloc((size_t)r * sizeof(double));
  for (int64_t s = 0; s < n; s++) {
    for (int64_t i = 0; i < r; i++)
      z[i] = gauss();
    for (int64_t j = 0; j < d; j++) {
      double v = mu[j];
      for (int64_t i = 0; i < r; i++)
        v += z[i] * a[i * d + j];
      x[s * ld + j] = (float)v;
    }
    for (int64_t j = d; j < ld; j++)
      x[s * ld + j] = NAN; /* padding must never be read */
  }
  free(z);
  free(a);
  free(mu);
  return x;
}

/* Covariance (n-1 divisor) of the float data, two passes, in double. */
static double *ref_cov(const float *x, int64_t n, int64_t d, int64_t ld,
                       double *mean) {
  for (int64_t j = 0; j < d; j++) {
    double s = 0;
    for (int64_t i = 0; i < n; i++)
      s += x[i * ld + j];
    mean[j] = s / (double)n;
  }
  double *c = calloc((size_t)(d * d), sizeof(double));
  double *row = malloc((size_t)d * sizeof(double));
  for (int64_t i = 0; i < n; i++) {
    for (int64_t j = 0; j < d; j++)
      row[j] = x[i * ld + j] - mean[j];
    for (int64_t a = 0; a < d; a++)
      for (int64_t b = 0; b <= a; b++)
        c[a * d + b] += row[a] * row[b];
  }
  for (int64_t a = 0; a < d; a++)
    for (int64_t b = 0; b <= a; b++) {
      c[a * d + b] /= (double)(n - 1);
      c[b * d + a] = c[a * d + b];
    }
  free(row);
  return c;
}

/* Cyclic Jacobi: eigenvalues of symmetric a (destroyed) into w, eigenvector
 * j in column j of v, sorted by decreasing eigenvalue. */
static void jacobi(double *a, int64_t d, double *w, double *v) {
  for (int64_t i = 0; i < d * d; i++)
    v[i] = 0;
  for (int64_t i = 0; i < d; i++)
    v[i * d + i] = 1;
  for (int sweep = 0; sweep < 100; sweep++) {
    double off = 0, tot = 0;
    for (int64_t p = 0; p < d; p++)
      for (int64_t q = 0; q < d; q++) {
        tot += a[p * d + q] * a[p * d + q];
        if (p != q)
          off += a[p * d + q] * a[p * d + q];
      }
    if (off <= 1e-30 * tot)
      break;
    for (int64_t p = 0; p < d - 1; p++)
      for (int64_t q = p + 1; q < d; q++) {
        double apq = a[p * d + q];
        if (fabs(apq) < 1e-300)
          continue;
        double theta = (a[q * d + q] - a[p * d + p]) / (2 * apq);
        double t =
            (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
        double c = 1 / sqrt(t * t + 1), s = t * c;
        for (int64_t k = 0; k < d; k++) {
          double akp = a[k * d + p], akq = a[k * d + q];
          a[k * d + p] = c * akp - s * akq;
          a[k * d + q] = s * akp + c * akq;
        }
        for (int64_t k = 0; k < d; k++) {
          double apk = a[p * d + k], aqk = a[q * d + k];
          a[p * d + k] = c * apk - s * aqk;
          a[q * d + k] = s * apk + c * aqk;
        }
        for (int64_t k = 0; k < d; k++) {
          double vkp = v[k * d + p], vkq = v[k * d + q];
          v[k * d + p] = c * vkp - s * vkq;
          v[k * d + q] = s * vkp + c * vkq;
        }
      }
  }
  for (int64_t i = 0; i < d; i++)
    w[i] = a[i * d + i];
  /* selection sort, descending, moving columns of v along */
  for (int64_t i = 0; i < d; i++) {
    int64_t best = i;
    for (int64_t j = i + 1; j < d; j++)
      if (w[j] > w[best])
        best = j;
    if (best != i) {
      double t = w[i];
      w[i] = w[best];
      w[best] = t;
      for (int64_t k = 0; k < d; k++) {
        t = v[k * d + i];
        v[k * d + i] = v[k * d + best];
        v[k * d + best] = t;
      }
    }
  }
}

static mn_backend *open_cpu(void) {
  mn_backend_opts o;
  mn_backend_opts_init(&o);
  o.threads = 2;
  mn_backend *b = NULL;
  assert_int_equal(mn_backend_open_cpu(&o, &b), MN_OK);
  return b;
}

/* Fit on x and hold the model to the double reference. */
static mn_pca_model *fit_and_check(mn_backend *b, const float *x, int64_t n,
                                   int64_t d, int64_t ld, int64_t k,
                                   double ev_tol, const char *what) {
  mn_tensor t = mn_tensor_host((void *)x, MN_DTYPE_F32, n, d);
  t.stride = ld * (int64_t)sizeof(float);
  mn_pca_model *m = NULL;
  mn_status s = mn_backend_pca_fit(b, &t, k, &m);
  if (s != MN_OK)
    fail_msg("%s: fit failed: %s", what, mn_errmsg());
  assert_int_equal(m->n_components, k);
  assert_int_equal(m->input_dim, d);
  assert_int_equal(m->n_samples, n);

  double *mean = malloc((size_t)d * sizeof(double));
  double *c = ref_cov(x, n, d, ld, mean);
  double *a = malloc((size_t)(d * d) * sizeof(double));
  double *w = malloc((size_t)d * sizeof(double));
  double *v = malloc((size_t)(d * d) * sizeof(double));
  memcpy(a, c, (size_t)(d * d) * sizeof(double));
  jacobi(a, d, w, v);
  double trace = 0, cnorm = 0;
  for (int64_t i = 0; i < d; i++)
    trace += c[i * d + i];
  for (int64_t i = 0; i < d * d; i++)
    cnorm += c[i] * c[i];
  cnorm = sqrt(cnorm);

  for (int64_t j = 0; j < d; j++) {
    double sd = sqrt(c[j * d + j]) + 1e-30;
    if (!(fabs(m->mean[j] - mean[j]) <= 1e-6 * (fabs(mean[j]) + sd)))
      fail_msg("%s: mean[%lld] %.9g, want %.9g", what, (long long)j, m->mean[j],
               mean[j]);
  }
  if (!(fabs(m->total_variance - trace) <= 1e-5 * trace))
    fail_msg("%s: total variance %.9g, want %.9g", what, m->total_variance,
             trace);
  double ratio_sum = 0;
  for (int64_t i = 0; i < k; i++) {
    double ev = m->explained_variance[i];
    if (!(fabs(ev - w[i]) <= ev_tol * w[0] + 1e-4 * fabs(w[i])))
      fail_msg("%s: eigenvalue %lld is %.9g, reference %.9g", what,
               (long long)i, ev, w[i]);
    if (i > 0)
      assert_true(m->explained_variance[i - 1] >= ev);
    double ratio = m->explained_variance_ratio[i];
    assert_true(fabs(ratio - w[i] / trace) <= 1e-4 * (w[i] / trace) + 1e-7);
    ratio_sum += ratio;
    const float *comp = m->components + i * d;
    /* unit length, the largest-magnitude entry positive */
    double nrm = 0;
    int64_t big = 0;
    for (int64_t e = 0; e < d; e++) {
      nrm += (double)comp[e] * comp[e];
      if (fabs(comp[e]) > fabs(comp[big]))
        big = e;
    }
    assert_true(fabs(nrm - 1) <= 1e-6);
    assert_true(comp[big] > 0);
    /* orthogonal to the others */
    for (int64_t j = 0; j < i; j++) {
      double dot = 0;
      for (int64_t e = 0; e < d; e++)
        dot += (double)comp[e] * m->components[j * d + e];
      if (!(fabs(dot) <= 1e-5))
        fail_msg("%s: components %lld and %lld have dot %.3g", what,
                 (long long)i, (long long)j, dot);
    }
    /* C v = lambda v */
    double res = 0;
    for (int64_t r = 0; r < d; r++) {
      double cv = 0;
      for (int64_t e = 0; e < d; e++)
        cv += c[r * d + e] * comp[e];
      res += (cv - ev * comp[r]) * (cv - ev * comp[r]);
    }
    if (!(sqrt(res) <= 1e-5 * cnorm))
      fail_msg("%s: component %lld has residual |Cv - lv| = %.3g (|C| = "
               "%.3g)",
               what, (long long)i, sqrt(res), cnorm);
    /* the reference eigenvector, up to sign, where the gap allows */
    double gap = (i + 1 < d ? w[i] - w[i + 1] : w[i]);
    if (i > 0 && w[i - 1] - w[i] < gap)
      gap = w[i - 1] - w[i];
    if (gap > 1e-3 * w[0]) {
      double dot = 0;
      for (int64_t e = 0; e < d; e++)
        dot += comp[e] * v[e * d + i];
      if (!(fabs(fabs(dot) - 1) <= 1e-6 + 1e-6 * w[0] / gap))
        fail_msg("%s: component %lld differs from the reference (|dot| "
                 "%.9g)",
                 what, (long long)i, fabs(dot));
    }
  }
  assert_true(ratio_sum <= 1 + 1e-6);
  free(mean);
  free(c);
  free(a);
  free(w);
  free(v);
  return m;
}

/* y = (x - mean) W' against a double reference, then the whitened
 * variance of each column. */
static void check_transform(mn_backend *b, const mn_pca_model *m,
                            const float *x, int64_t n, int64_t ld,
                            const char *what) {
  const int64_t d = m->input_dim, k = m->n_components, ldy = k + 3;
  mn_tensor xt = mn_tensor_host((void *)x, MN_DTYPE_F32, n, d);
  xt.stride = ld * (int64_t)sizeof(float);
  float *y = malloc((size_t)(n * ldy) * sizeof(float));
  mn_tensor yt = mn_tensor_host(y, MN_DTYPE_F32, n, k);
  yt.stride = ldy * (int64_t)sizeof(float);
  for (int whiten = 0; whiten <= 1; whiten++) {
    for (int64_t i = 0; i < n * ldy; i++)
      y[i] = NAN;
    assert_int_equal(mn_backend_pca_transform(b, &xt, m, whiten, &yt), MN_OK);
    for (int64_t i = 0; i < n; i++) {
      double xc2 = 0;
      for (int64_t e = 0; e < d; e++) {
        double v = (double)x[i * ld + e] - m->mean[e];
        xc2 += v * v;
      }
      for (int64_t c = 0; c < k; c++) {
        double ref = 0;
        for (int64_t e = 0; e < d; e++)
          ref +=
              ((double)x[i * ld + e] - m->mean[e]) * m->components[c * d + e];
        double sc = 1;
        if (whiten)
          sc = m->explained_variance[c] > 0
                   ? 1 / sqrt((double)m->explained_variance[c])
                   : 0;
        ref *= sc;
        double tol = 1e-5 * (sqrt(xc2) + sqrt(m->total_variance)) * sc;
        double got = y[i * ldy + c];
        if (!(fabs(got - ref) <= tol))
          fail_msg("%s whiten=%d: y[%lld][%lld] = %.9g, want %.9g", what,
                   whiten, (long long)i, (long long)c, got, ref);
      }
    }
    if (whiten && n == m->n_samples) {
      /* on the training data the whitened columns have unit variance */
      for (int64_t c = 0; c < k; c++) {
        double s = 0, s2 = 0;
        for (int64_t i = 0; i < n; i++) {
          s += y[i * ldy + c];
          s2 += (double)y[i * ldy + c] * y[i * ldy + c];
        }
        double mean = s / n, var = (s2 - n * mean * mean) / (n - 1);
        if (!(fabs(mean) <= 1e-4 && fabs(var - 1) <= 1e-4))
          fail_msg("%s: whitened column %lld has mean %.3g variance %.9g", what,
                   (long long)c, mean, var);
      }
    }
  }
  free(y);
}

static void test_fit_small(void **state) {
  (void)state;
  mn_backend *b = open_cpu();
  const int64_t n = 400, d = 24, ld = 27;
  float *x = make_data(n, d, d, 0.85, 1.0, 0.0, ld);
  mn_pca_model *m = fit_and_check(b, x, n, d, ld, 6, 1e-6, "[small]");
  check_transform(b, m, x, n, ld, "[small]");
  mn_pca_free(m);
  /* every component */
  m = fit_and_check(b, x, n, d, ld, d, 1e-6, "[all components]");
  mn_pca_free(m);
  /* one row per component at the limit: k == rows */
  m = fit_and_check(b, x, 5, d, ld, 5, 1e-6, "[k == rows]");
  mn_pca_free(m);
  free(x);
  /* a single column */
  x = make_data(50, 1, 1, 1.0, 3.0, 0.0, 1);
  m = fit_and_check(b, x, 50, 1, 1, 1, 1e-6, "[one column]");
  assert_true(m->components[0] == 1.0f);
  assert_true(fabs(m->explained_variance_ratio[0] - 1) <= 1e-6);
  check_transform(b, m, x, 50, 1, "[one column]");
  mn_pca_free(m);
  free(x);
  mn_backend_close(b);
}

/* A mean 5000 times the spread: a naive E[xx'] - mm' in float loses every
 * digit; the transform must centre before multiplying. Also several
 * covariance blocks (the CPU backend accumulates 4 MiB of rows at a time). */
static void test_fit_offset_blocks(void **state) {
  (void)state;
  mn_backend *b = open_cpu();
  const int64_t n = 25000, d = 96;
  float *x = make_data(n, d, d, 0.93, 0.5, 5000.0, d);
  mn_pca_model *m = fit_and_check(b, x, n, d, d, 12, 1e-6, "[offset]");
  double mean2 = 0;
  for (int64_t e = 0; e < d; e++)
    mean2 += (double)m->mean[e] * m->mean[e];
  assert_true(mean2 > m->total_variance); /* the centring path */
  check_transform(b, m, x, n, d, "[offset]");
  mn_pca_free(m);
  free(x);
  /* small mean, same size: the broadcast path */
  x = make_data(n, d, d, 0.93, 0.1, 0.0, d);
  m = fit_and_check(b, x, n, d, d, 12, 1e-6, "[blocks]");
  check_transform(b, m, x, n, d, "[blocks]");
  mn_pca_free(m);
  free(x);
  mn_backend_close(b);
}

/* Rank-deficient data: the trailing eigenvalues are (numerically) zero and
 * the ratios sum to one; whitening leaves a zero-variance column at 0. */
static void test_rank_deficient(void **state) {
  (void)state;
  mn_backend *b = open_cpu();
  const int64_t n = 300, d = 10;
  float *x = make_data(n, d, 3, 0.7, 1.0, 0.0, d);
  mn_tensor t = mn_tensor_host(x, MN_DTYPE_F32, n, d);
  mn_pca_model *m = NULL;
  assert_int_equal(mn_backend_pca_fit(b, &t, 5, &m), MN_OK);
  double r3 = 0;
  for (int i = 0; i < 3; i++)
    r3 += m->explained_variance_ratio[i];
  assert_true(fabs(r3 - 1) <= 1e-5);
  assert_true(m->explained_variance[3] <= 1e-5 * m->explained_variance[0]);
  assert_true(m->explained_variance[4] >= 0);
  /* an eigenvalue of exactly zero whitens to zero */
  m->explained_variance[4] = 0;
  float *y = malloc((size_t)(n * 5) * sizeof(float));
  mn_tensor yt = mn_tensor_host(y, MN_DTYPE_F32, n, 5);
  assert_int_equal(mn_backend_pca_transform(b, &t, m, 1, &yt), MN_OK);
  for (int64_t i = 0; i < n; i++)
    assert_true(y[i * 5 + 4] == 0.0f);
  free(y);
  mn_pca_free(m);
  free(x);
  mn_backend_close(b);
}

static void test_errors(void **state) {
  (void)state;
  mn_backend *b = open_cpu();
  float x[40] = {0};
  for (int i = 0; i < 40; i++)
    x[i] = (float)(i * i % 7);
  mn_tensor t = mn_tensor_host(x, MN_DTYPE_F32, 5, 8);
  mn_pca_model *m = NULL;
  assert_int_equal(mn_backend_pca_fit(b, &t, 9, &m), MN_ERR_INVALID);
  assert_null(m);
  assert_non_null(strstr(mn_errmsg(), "at most the width"));
  assert_int_equal(mn_backend_pca_fit(b, &t, 6, &m), MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "at least 6 rows"));
  assert_int_equal(mn_backend_pca_fit(b, &t, 0, &m), MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "at least 1 component"));
  mn_tensor one = mn_tensor_host(x, MN_DTYPE_F32, 1, 8);
  assert_int_equal(mn_backend_pca_fit(b, &one, 1, &m), MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "at least 2 rows"));
  x[11] = INFINITY;
  assert_int_equal(mn_backend_pca_fit(b, &t, 2, &m), MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "row 1"));
  x[11] = 1;
  assert_int_equal(mn_backend_pca_fit(b, &t, 2, &m), MN_OK);
  /* transform: wrong width, wrong output shape */
  mn_tensor t7 = mn_tensor_host(x, MN_DTYPE_F32, 5, 7);
  float y[20];
  mn_tensor yt = mn_tensor_host(y, MN_DTYPE_F32, 5, 2);
  assert_int_equal(mn_backend_pca_transform(b, &t7, m, 0, &yt), MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "8-wide"));
  mn_tensor y3 = mn_tensor_host(y, MN_DTYPE_F32, 5, 3);
  assert_int_equal(mn_backend_pca_transform(b, &t, m, 0, &y3), MN_ERR_INVALID);
  /* zero rows transform to nothing */
  mn_tensor t0 = mn_tensor_host(x, MN_DTYPE_F32, 0, 8);
  mn_tensor y0 = mn_tensor_host(y, MN_DTYPE_F32, 0, 2);
  assert_int_equal(mn_backend_pca_transform(b, &t0, m, 1, &y0), MN_OK);
  mn_pca_free(m);
  mn_backend_close(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fit_small),
      cmocka_unit_test(test_fit_offset_blocks),
      cmocka_unit_test(test_rank_deficient),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
