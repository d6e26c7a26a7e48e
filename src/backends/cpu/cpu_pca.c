/*
 * cpu_pca.c - PCA fit and transform on the CPU with OpenBLAS and LAPACKE.
 *
 * Fit: the covariance is accumulated from blocks of rows. Each block is
 * copied once, minus a provisional shift (the mean of the first rows), into
 * a cache-sized buffer; one ssyrk per block turns it into a float partial
 * covariance that is added into a double accumulator, together with the
 * block's column sums. Centring on a shift near the mean keeps the float
 * products free of the cancellation that "E[xx'] - mm'" suffers when the
 * mean is large against the spread, and the double accumulation keeps the
 * rounding of one block from compounding over a long input. The exact mean
 * then corrects the shift in double: C = (S - n dd') / (n - 1) with
 * d = mean - shift, a small vector.
 *
 * The top k eigenpairs come from ssyevr (MRRR, only the wanted range) on the
 * covariance rounded to float, which is twice as fast as dsyevr; each
 * eigenvalue is then recomputed in double as the Rayleigh quotient v'Cv on
 * the double covariance, whose error is quadratic in the eigenvector's, so
 * the explained variances match a double-precision fit. Should ssyevr fail
 * (it can on pathological clusters) dsyevr is used instead.
 *
 * Transform: y = x W' - (mean W') with one sgemm, the bias broadcast into y
 * first (beta = 1), so x is not copied. When the mean is large against the
 * spread that subtraction would cancel digits; then blocks of x are centred
 * into a buffer before the sgemm instead. Whitening scales the component
 * rows by 1/sqrt(eigenvalue) beforehand (eigenvalue 0 gives 0).
 *
 * DESIGN: OpenBLAS's thread count is process-global; each call sets it to
 * the backend's thread count when it differs. The centring copy runs on the
 * calling thread only: the OpenBLAS worker threads spin for a while after
 * each call and a second team of OpenMP threads would fight them for the
 * cores.
 */
#include "backends/cpu/cpu_internal.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MOD "cpu.pca"

/* Rows per covariance block: about 4 MiB of centred floats, which stays in
 * the last-level cache between the copy and the ssyrk that reads it. */
#define MN__PCA_BLOCK_BYTES (4u << 20)

static void blas_threads(mn_backend *b) {
  int nt = mn__cpu_threads(b);
  if (openblas_get_num_threads() != nt)
    openblas_set_num_threads(nt);
}

static int64_t pca_block_rows(int64_t d) {
  int64_t rows = (int64_t)MN__PCA_BLOCK_BYTES / (d * (int64_t)sizeof(float));
  return MN__MAX(rows, 64);
}

/* Copy rows [r0, r0+m) of x minus `shift` into buf (m x d, dense) and add
 * each column's sum of the centred values to colsum. */
static void centre_block(const mn_tensor *x, int64_t r0, int64_t m,
                         const float *shift, float *buf, double *colsum) {
  const int64_t d = x->cols;
  for (int64_t r = 0; r < m; r++) {
    const float *xr = (const float *)mn_tensor_row(x, r0 + r);
    float *o = buf + r * d;
    for (int64_t j = 0; j < d; j++)
      o[j] = xr[j] - shift[j];
  }
  /* Column sums in float over at most one block of centred values (small
   * numbers near zero), then in double across blocks. */
  for (int64_t j0 = 0; j0 < d; j0 += 256) {
    float part[256];
    int64_t w = MN__MIN(256, d - j0);
    memset(part, 0, sizeof part);
    for (int64_t r = 0; r < m; r++) {
      const float *o = buf + r * d + j0;
      for (int64_t j = 0; j < w; j++)
        part[j] += o[j];
    }
    for (int64_t j = 0; j < w; j++)
      colsum[j0 + j] += part[j];
  }
}

/* The shift: the mean of the first rows (up to one block), in double. */
static void first_rows_mean(const mn_tensor *x, int64_t m, float *shift) {
  const int64_t d = x->cols;
  double *acc = calloc((size_t)d, sizeof(double));
  if (!acc) {
    memset(shift, 0, (size_t)d * sizeof(float));
    return;
  }
  for (int64_t r = 0; r < m; r++) {
    const float *xr = (const float *)mn_tensor_row(x, r);
    for (int64_t j = 0; j < d; j++)
      acc[j] += xr[j];
  }
  for (int64_t j = 0; j < d; j++)
    shift[j] = (float)(acc[j] / (double)m);
  free(acc);
}

/* Eigenpairs k..1 (largest) of the symmetric d x d double matrix c (full,
 * row-major). Writes eigenvalues descending into lam and the matching unit
 * eigenvectors as rows of vecs (k x d). */
static mn_status top_eigen(const double *c, int64_t d, int64_t k, double *lam,
                           float *vecs) {
  mn_status st = MN_OK;
  float *af = malloc((size_t)(d * d) * sizeof(float));
  float *wf = malloc((size_t)d * sizeof(float));
  float *zf = malloc((size_t)(d * k) * sizeof(float));
  lapack_int *isuppz = malloc((size_t)(2 * d) * sizeof(lapack_int));
  double *ad = NULL, *wd = NULL, *zd = NULL;
  if (!af || !wf || !zf || !isuppz) {
    st = mn__set_error(MN_ERR_NOMEM, "out of memory for the PCA eigensolver");
    goto done;
  }
  for (int64_t i = 0; i < d * d; i++)
    af[i] = (float)c[i];
  lapack_int found = 0;
  lapack_int info = LAPACKE_ssyevr(LAPACK_ROW_MAJOR, 'V', 'I', 'L',
                                   (lapack_int)d, af, (lapack_int)d, 0.0f, 0.0f,
                                   (lapack_int)(d - k + 1), (lapack_int)d, 0.0f,
                                   &found, wf, zf, (lapack_int)k, isuppz);
  if (info == 0 && found == k) {
    /* ascending -> descending; column j of z is eigenvector j */
    for (int64_t j = 0; j < k; j++) {
      int64_t src = k - 1 - j;
      lam[j] = wf[src];
      for (int64_t i = 0; i < d; i++)
        vecs[j * d + i] = zf[i * k + src];
    }
    goto done;
  }
  MN__LOGW(MOD,
           "ssyevr failed (info %d, %d of %lld eigenpairs); using "
           "dsyevr",
           (int)info, (int)found, (long long)k);
  ad = malloc((size_t)(d * d) * sizeof(double));
  wd = malloc((size_t)d * sizeof(double));
  zd = malloc((size_t)(d * k) * sizeof(double));
  if (!ad || !wd || !zd) {
    st = mn__set_error(MN_ERR_NOMEM, "out of memory for the PCA eigensolver");
    goto done;
  }
  memcpy(ad, c, (size_t)(d * d) * sizeof(double));
  info =
      LAPACKE_dsyevr(LAPACK_ROW_MAJOR, 'V', 'I', 'L', (lapack_int)d, ad,
                     (lapack_int)d, 0.0, 0.0, (lapack_int)(d - k + 1),
                     (lapack_int)d, 0.0, &found, wd, zd, (lapack_int)k, isuppz);
  if (info != 0 || found != k) {
    st = mn__set_error(MN_ERR_NUMERIC,
                       "the PCA eigensolver failed on the %lldx%lld "
                       "covariance (LAPACK info %d)",
                       (long long)d, (long long)d, (int)info);
    goto done;
  }
  for (int64_t j = 0; j < k; j++) {
    int64_t src = k - 1 - j;
    lam[j] = wd[src];
    for (int64_t i = 0; i < d; i++)
      vecs[j * d + i] = (float)zd[i * k + src];
  }
done:
  free(af);
  free(wf);
  free(zf);
  free(isuppz);
  free(ad);
  free(wd);
  free(zd);
  return st;
}

/* Normalise each component in double, make its largest-magnitude entry
 * positive (a deterministic sign), and replace its eigenvalue by the
 * Rayleigh quotient v'Cv computed in double. */
static mn_status refine_components(const double *c, int64_t d, int64_t k,
                                   float *vecs, double *lam) {
  double *v = malloc((size_t)(d * k) * sizeof(double));
  double *cv = malloc((size_t)(d * k) * sizeof(double));
  if (!v || !cv) {
    free(v);
    free(cv);
    return mn__set_error(MN_ERR_NOMEM, "out of memory refining PCA");
  }
  for (int64_t j = 0; j < k; j++) {
    const float *src = vecs + j * d;
    double nrm = 0, big = 0;
    for (int64_t i = 0; i < d; i++) {
      nrm += (double)src[i] * src[i];
      if (fabs(src[i]) > fabs(big))
        big = src[i];
    }
    double s = (nrm > 0 ? 1.0 / sqrt(nrm) : 0) * (big < 0 ? -1.0 : 1.0);
    for (int64_t i = 0; i < d; i++)
      v[j * d + i] = src[i] * s;
  }
  /* cv (k x d) = v (k x d) * C (C symmetric) */
  cblas_dsymm(CblasRowMajor, CblasRight, CblasLower, (blasint)k, (blasint)d,
              1.0, c, (blasint)d, v, (blasint)d, 0.0, cv, (blasint)d);
  for (int64_t j = 0; j < k; j++) {
    double q = 0;
    for (int64_t i = 0; i < d; i++)
      q += v[j * d + i] * cv[j * d + i];
    lam[j] = q > 0 ? q : 0;
    for (int64_t i = 0; i < d; i++)
      vecs[j * d + i] = (float)v[j * d + i];
  }
  free(v);
  free(cv);
  return MN_OK;
}

mn_status mn__cpu_pca_fit(mn_backend *b, const mn_tensor *x, int64_t k,
                          mn_pca_model *out) {
  const int64_t n = x->rows, d = x->cols;
  const int64_t bs = MN__MIN(pca_block_rows(d), n);
  mn_status st = MN_OK;
  float *buf = mn_malloc((size_t)(bs * d) * sizeof(float));
  float *cf = mn_malloc((size_t)(d * d) * sizeof(float));
  double *cd = mn_calloc((size_t)(d * d), sizeof(double));
  double *colsum = mn_calloc((size_t)d, sizeof(double));
  float *shift = mn_malloc((size_t)d * sizeof(float));
  double *lam = mn_malloc((size_t)k * sizeof(double));
  if (!buf || !cf || !cd || !colsum || !shift || !lam) {
    st = mn__set_error(MN_ERR_NOMEM,
                       "out of memory fitting PCA on %lldx%lld input",
                       (long long)n, (long long)d);
    goto done;
  }
  blas_threads(b);
  first_rows_mean(x, bs, shift);
  for (int64_t r0 = 0; r0 < n; r0 += bs) {
    int64_t m = MN__MIN(bs, n - r0);
    centre_block(x, r0, m, shift, buf, colsum);
    cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (blasint)d, (blasint)m,
                1.0f, buf, (blasint)d, 0.0f, cf, (blasint)d);
    for (int64_t i = 0; i < d; i++) {
      double *crow = cd + i * d;
      const float *frow = cf + i * d;
      for (int64_t j = 0; j <= i; j++)
        crow[j] += frow[j];
    }
  }
  /* mean = shift + delta; C = (S - n delta delta') / (n - 1), mirrored */
  double trace = 0;
  {
    double *delta = colsum; /* reused in place */
    for (int64_t j = 0; j < d; j++) {
      delta[j] /= (double)n;
      out->mean[j] = (float)((double)shift[j] + delta[j]);
    }
    const double inv = 1.0 / (double)(n - 1);
    for (int64_t i = 0; i < d; i++) {
      for (int64_t j = 0; j <= i; j++) {
        double v = (cd[i * d + j] - (double)n * delta[i] * delta[j]) * inv;
        cd[i * d + j] = v;
        cd[j * d + i] = v;
      }
      trace += cd[i * d + i];
    }
  }
  st = top_eigen(cd, d, k, lam, out->components);
  if (st == MN_OK)
    st = refine_components(cd, d, k, out->components, lam);
  if (st != MN_OK)
    goto done;
  /* Rayleigh quotients may fall out of order by rounding among (nearly)
   * equal eigenvalues; keep them sorted with their vectors. */
  for (int64_t j = 1; j < k; j++) {
    for (int64_t i = j; i > 0 && lam[i] > lam[i - 1]; i--) {
      double t = lam[i];
      lam[i] = lam[i - 1];
      lam[i - 1] = t;
      for (int64_t e = 0; e < d; e++) {
        float tv = out->components[i * d + e];
        out->components[i * d + e] = out->components[(i - 1) * d + e];
        out->components[(i - 1) * d + e] = tv;
      }
    }
  }
  out->total_variance = trace;
  for (int64_t j = 0; j < k; j++) {
    out->explained_variance[j] = (float)lam[j];
    out->explained_variance_ratio[j] =
        trace > 0 ? (float)(lam[j] / trace) : 0.0f;
  }
done:
  mn_free(buf);
  mn_free(cf);
  mn_free(cd);
  mn_free(colsum);
  mn_free(shift);
  mn_free(lam);
  return st;
}

/* Leading dimension in floats of a float32 tensor, or 0 when its stride is
 * not a whole number of floats (then the block path copies rows). */
static int64_t float_ld(const mn_tensor *t) {
  if (t->rows <= 1)
    return t->cols;
  return t->stride % (int64_t)sizeof(float) == 0
             ? t->stride / (int64_t)sizeof(float)
             : 0;
}

mn_status mn__cpu_pca_transform(mn_backend *b, const mn_tensor *x,
                                const mn_pca_model *m, int whiten,
                                mn_tensor *y) {
  const int64_t n = x->rows, d = x->cols, k = m->n_components;
  if (n == 0)
    return MN_OK;
  mn_status st = MN_OK;
  float *w = NULL, *bias = NULL, *buf = NULL, *ybuf = NULL;
  const float *wp = m->components;
  if (whiten) {
    w = mn_malloc((size_t)(k * d) * sizeof(float));
    if (!w)
      return mn__set_error(MN_ERR_NOMEM, "out of memory for PCA whitening");
    for (int64_t c = 0; c < k; c++) {
      double ev = m->explained_variance[c];
      float s = ev > 0 ? (float)(1.0 / sqrt(ev)) : 0.0f;
      for (int64_t e = 0; e < d; e++)
        w[c * d + e] = m->components[c * d + e] * s;
    }
    wp = w;
  }
  blas_threads(b);
  double mean2 = 0;
  for (int64_t e = 0; e < d; e++)
    mean2 += (double)m->mean[e] * m->mean[e];
  const int64_t ldx = float_ld(x), ldy = float_ld(y);
  /* Broadcasting the bias costs nothing but subtracts two large numbers
   * when |mean|^2 exceeds the total variance; centre first in that case. */
  int broadcast = ldx > 0 && ldy > 0 && mean2 <= m->total_variance;
  if (broadcast) {
    bias = mn_malloc((size_t)k * sizeof(float));
    if (!bias) {
      st = mn__set_error(MN_ERR_NOMEM, "out of memory for PCA transform");
      goto done;
    }
    for (int64_t c = 0; c < k; c++) {
      double s = 0;
      for (int64_t e = 0; e < d; e++)
        s += (double)wp[c * d + e] * m->mean[e];
      bias[c] = (float)-s;
    }
    for (int64_t r = 0; r < n; r++)
      memcpy(mn_tensor_row(y, r), bias, (size_t)k * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)k,
                (blasint)d, 1.0f, (const float *)x->data, (blasint)ldx, wp,
                (blasint)d, 1.0f, (float *)y->data, (blasint)ldy);
    goto done;
  }
  const int64_t bs = MN__MIN(pca_block_rows(d), n);
  buf = mn_malloc((size_t)(bs * d) * sizeof(float));
  if (ldy == 0)
    ybuf = mn_malloc((size_t)(bs * k) * sizeof(float));
  if (!buf || (ldy == 0 && !ybuf)) {
    st = mn__set_error(MN_ERR_NOMEM, "out of memory for PCA transform");
    goto done;
  }
  for (int64_t r0 = 0; r0 < n; r0 += bs) {
    int64_t rows = MN__MIN(bs, n - r0);
    for (int64_t r = 0; r < rows; r++) {
      const float *xr = (const float *)mn_tensor_row(x, r0 + r);
      float *o = buf + r * d;
      for (int64_t e = 0; e < d; e++)
        o[e] = xr[e] - m->mean[e];
    }
    float *dst = ybuf ? ybuf : (float *)mn_tensor_row(y, r0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rows,
                (blasint)k, (blasint)d, 1.0f, buf, (blasint)d, wp, (blasint)d,
                0.0f, dst, (blasint)(ybuf ? k : ldy));
    if (ybuf)
      for (int64_t r = 0; r < rows; r++)
        memcpy(mn_tensor_row(y, r0 + r), ybuf + r * k,
               (size_t)k * sizeof(float));
  }
done:
  mn_free(w);
  mn_free(bias);
  mn_free(buf);
  mn_free(ybuf);
  return st;
}
