/*
 * refops.h - double-precision reference operations for the compute tests
 * (test_pipeline, test_backend_ops). Header-only, written independently of
 * the library: its own random numbers, its own half-precision decoding, its
 * own normalisation, PCA (LAPACKE in double) and quantisation rules, so that
 * a bug in the library cannot also hide in the reference.
 *
 * The quantisation rules these checks hold the library to (compute.h):
 *   int8:        scale = max|x| / 127, code = round(x / scale) in [-127, 127]
 *   int4:        scale = max|x| / 7,   code = round(x / scale) in [-7, 7],
 *                two codes a byte, low nibble first
 *   int8_affine: vmin = min over rows, scale = (max - min) / 255,
 *                code = round((x - vmin) / scale) in [0, 255]
 *   binary:      bit set where x > 0, LSB first
 * Float inputs reach the library in float32 while the reference keeps
 * double, so a code may land one step away where x / scale sits on a
 * rounding boundary; the checks allow that and bound how often it happens.
 */
#ifndef MNEMO_TESTS_REFOPS_H
#define MNEMO_TESTS_REFOPS_H

#include <lapacke.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- random */
typedef struct trng {
  uint64_t s;
} trng;

static inline uint64_t trng_next(trng *r) {
  /* splitmix64 */
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Uniform in (0, 1). */
static inline double trng_unif(trng *r) {
  return ((double)(trng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static inline double trng_gauss(trng *r) {
  double u = trng_unif(r), v = trng_unif(r);
  return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* rows x cols float32 (malloc) of N(0, 1) scaled per column by
 * `decay`^c (1 = isotropic), then rotated by a random orthogonal matrix
 * when `rotate`: distinct, well separated variances for PCA tests. */
static inline float *ref_random(trng *r, int64_t rows, int64_t cols,
                                double decay, int rotate) {
  float *x = malloc(sizeof(float) * (size_t)(rows * cols) + 1);
  double *z = malloc(sizeof(double) * (size_t)cols);
  double *q = NULL;
  if (rotate) {
    /* Gram-Schmidt on a Gaussian matrix: q rows are orthonormal. */
    q = malloc(sizeof(double) * (size_t)(cols * cols));
    for (int64_t i = 0; i < cols * cols; i++)
      q[i] = trng_gauss(r);
    for (int64_t i = 0; i < cols; i++) {
      double *qi = q + i * cols;
      for (int pass = 0; pass < 2; pass++)
        for (int64_t j = 0; j < i; j++) {
          double *qj = q + j * cols, d = 0;
          for (int64_t c = 0; c < cols; c++)
            d += qi[c] * qj[c];
          for (int64_t c = 0; c < cols; c++)
            qi[c] -= d * qj[c];
        }
      double n = 0;
      for (int64_t c = 0; c < cols; c++)
        n += qi[c] * qi[c];
      n = 1.0 / sqrt(n);
      for (int64_t c = 0; c < cols; c++)
        qi[c] *= n;
    }
  }
  for (int64_t i = 0; i < rows; i++) {
    double s = 1.0;
    for (int64_t c = 0; c < cols; c++, s *= decay)
      z[c] = trng_gauss(r) * s;
    for (int64_t c = 0; c < cols; c++) {
      double v = z[c];
      if (q) {
        v = 0;
        for (int64_t j = 0; j < cols; j++)
          v += z[j] * q[j * cols + c];
      }
      x[i * cols + c] = (float)(v + 0.25); /* a non-zero mean */
    }
  }
  free(z);
  free(q);
  return x;
}

/* Widen a float32 matrix (row stride in floats) to dense double. */
static inline double *ref_widen(const float *x, int64_t rows, int64_t cols,
                                int64_t stride) {
  double *d = malloc(sizeof(double) * (size_t)(rows * cols) + 1);
  for (int64_t i = 0; i < rows; i++)
    for (int64_t c = 0; c < cols; c++)
      d[i * cols + c] = x[i * stride + c];
  return d;
}

/* ------------------------------------------------------- half precision */
static inline double ref_f16_decode(uint16_t h) {
  int e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 0)
    v = ldexp((double)m, -24);
  else if (e == 31)
    v = m ? NAN : INFINITY;
  else
    v = ldexp((double)(m | 1024), e - 25);
  return (h & 0x8000) ? -v : v;
}

static inline double ref_bf16_decode(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* -------------------------------------------------------------- float ops */
/* L2-normalise rows in place; returns the number of zero rows. */
static inline int64_t ref_normalize(double *x, int64_t rows, int64_t cols) {
  int64_t zero = 0;
  for (int64_t i = 0; i < rows; i++) {
    double *r = x + i * cols, s = 0;
    for (int64_t c = 0; c < cols; c++)
      s += r[c] * r[c];
    if (s == 0) {
      zero++;
      continue;
    }
    s = 1.0 / sqrt(s);
    for (int64_t c = 0; c < cols; c++)
      r[c] *= s;
  }
  return zero;
}

/* PCA in double: mean[cols], comp[k x cols] (unit rows, decreasing
 * variance), ev[k] with the n-1 divisor, *total = trace. 0 on success. */
static inline int ref_pca_fit(const double *x, int64_t rows, int64_t cols,
                              int64_t k, double *mean, double *comp, double *ev,
                              double *total) {
  double *cov = calloc((size_t)(cols * cols), sizeof(double));
  double *w = malloc(sizeof(double) * (size_t)cols);
  double *xc = malloc(sizeof(double) * (size_t)cols);
  for (int64_t c = 0; c < cols; c++)
    mean[c] = 0;
  for (int64_t i = 0; i < rows; i++)
    for (int64_t c = 0; c < cols; c++)
      mean[c] += x[i * cols + c];
  for (int64_t c = 0; c < cols; c++)
    mean[c] /= (double)rows;
  for (int64_t i = 0; i < rows; i++) {
    for (int64_t c = 0; c < cols; c++)
      xc[c] = x[i * cols + c] - mean[c];
    for (int64_t a = 0; a < cols; a++)
      for (int64_t b = a; b < cols; b++)
        cov[a * cols + b] += xc[a] * xc[b];
  }
  *total = 0;
  for (int64_t a = 0; a < cols; a++) {
    for (int64_t b = a; b < cols; b++) {
      cov[a * cols + b] /= (double)(rows - 1);
      cov[b * cols + a] = cov[a * cols + b];
    }
    *total += cov[a * cols + a];
  }
  int info = (int)LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', (int)cols, cov,
                                 (int)cols, w);
  /* Eigenvalues ascend; eigenvector j is column j of cov. */
  for (int64_t j = 0; j < k && info == 0; j++) {
    int64_t e = cols - 1 - j;
    ev[j] = w[e];
    for (int64_t c = 0; c < cols; c++)
      comp[j * cols + c] = cov[c * cols + e];
  }
  free(cov);
  free(w);
  free(xc);
  return info;
}

/* y[rows x k] = (x - mean) comp^T, whitened by 1 / sqrt(ev) if asked. The
 * model arrays may be float (from a model) or double (a reference), so
 * they come in as doubles. */
static inline double *ref_pca_apply(const double *x, int64_t rows, int64_t cols,
                                    const double *mean, const double *comp,
                                    const double *ev, int64_t k, int whiten) {
  double *y = malloc(sizeof(double) * (size_t)(rows * k) + 1);
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < k; j++) {
      double s = 0;
      for (int64_t c = 0; c < cols; c++)
        s += (x[i * cols + c] - mean[c]) * comp[j * cols + c];
      y[i * k + j] = whiten ? s / sqrt(ev[j]) : s;
    }
  return y;
}

/* --------------------------------------------------------------- errors */
/* Normalised mean squared error sum (y - ref)^2 / sum ref^2. */
static inline double ref_nmse(const float *y, int64_t ystride,
                              const double *ref, int64_t rows, int64_t cols) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < rows; i++)
    for (int64_t c = 0; c < cols; c++) {
      double d = (double)y[i * ystride + c] - ref[i * cols + c];
      num += d * d;
      den += ref[i * cols + c] * ref[i * cols + c];
    }
  if (den == 0)
    return num == 0 ? 0 : INFINITY;
  return num / den; /* NaN in y makes this NaN: callers test !(x <= tol) */
}

/* Largest |y - ref| over the largest |ref|. */
static inline double ref_max_rel(const float *y, int64_t ystride,
                                 const double *ref, int64_t rows,
                                 int64_t cols) {
  double err = 0, mag = 0;
  for (int64_t i = 0; i < rows; i++)
    for (int64_t c = 0; c < cols; c++) {
      double d = fabs((double)y[i * ystride + c] - ref[i * cols + c]);
      if (!(d <= err))
        err = d; /* NaN sticks */
      if (fabs(ref[i * cols + c]) > mag)
        mag = fabs(ref[i * cols + c]);
    }
  return mag > 0 ? err / mag : err;
}

/* ------------------------------------------------------- quantization */
/*
 * Each check returns a message describing the first violation (static
 * buffer) or NULL when the codes are right. `rows` x `cols` reference
 * values `ref`; codes are packed rows of `rb` bytes.
 */
static char ref_msg[256];

static inline int ref_i4_code(const uint8_t *row, int64_t c) {
  int q = (row[c / 2] >> (4 * (c & 1))) & 15;
  return q > 7 ? q - 16 : q;
}

/* Symmetric per-row: int8 (qmax 127) or int4 (qmax 7). */
static inline const char *ref_check_sym(const void *codes, int64_t rb,
                                        const float *scales, const double *ref,
                                        int64_t rows, int64_t cols, int qmax) {
  int64_t off = 0;
  for (int64_t i = 0; i < rows; i++) {
    const double *x = ref + i * cols;
    const uint8_t *row = (const uint8_t *)codes + i * rb;
    double m = 0;
    for (int64_t c = 0; c < cols; c++)
      m = fmax(m, fabs(x[c]));
    double want = m / qmax;
    if (m > 0 && !(fabs(scales[i] - want) <= 2e-5 * want + 1e-30)) {
      snprintf(ref_msg, sizeof ref_msg, "row %lld: scale %.9g, want %.9g",
               (long long)i, scales[i], want);
      return ref_msg;
    }
    for (int64_t c = 0; c < cols; c++) {
      int q = qmax == 127 ? ((const int8_t *)row)[c] : ref_i4_code(row, c);
      double rq = m > 0 ? nearbyint(x[c] / want) : 0;
      if (q < -qmax || q > qmax || fabs(q - rq) > 1) {
        snprintf(ref_msg, sizeof ref_msg,
                 "row %lld col %lld: code %d, want %.0f (x=%.9g)", (long long)i,
                 (long long)c, q, rq, x[c]);
        return ref_msg;
      }
      off += q != rq;
    }
  }
  if (off * 100 > rows * cols) {
    snprintf(ref_msg, sizeof ref_msg, "%lld of %lld codes are one step off",
             (long long)off, (long long)(rows * cols));
    return ref_msg;
  }
  return NULL;
}

/* Per-dimension affine: trained vmin / scale against the reference min /
 * max, then codes. `vmin`, `scale` are what the library used. */
static inline const char *ref_check_affine(const uint8_t *codes, int64_t rb,
                                           const float *vmin,
                                           const float *scale, int trained,
                                           const double *ref, int64_t rows,
                                           int64_t cols) {
  int64_t off = 0;
  for (int64_t c = 0; c < cols; c++) {
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < rows; i++) {
      lo = fmin(lo, ref[i * cols + c]);
      hi = fmax(hi, ref[i * cols + c]);
    }
    double range = hi - lo, tol = 2e-5 * fmax(range, fabs(lo)) + 1e-30;
    if (range == 0) {
      /* A constant dimension: any finite scale will do as long as the
       * codes decode back to the constant. */
      for (int64_t i = 0; i < rows; i++) {
        double v = vmin[c] + codes[i * rb + c] * (double)scale[c];
        if (!(fabs(v - lo) <= tol) || !isfinite(scale[c])) {
          snprintf(ref_msg, sizeof ref_msg,
                   "constant dim %lld: decodes to %.9g, want %.9g",
                   (long long)c, v, lo);
          return ref_msg;
        }
      }
      continue;
    }
    if (trained && (!(fabs(vmin[c] - lo) <= tol) ||
                    !(fabs(scale[c] - range / 255) <= tol / 255))) {
      snprintf(ref_msg, sizeof ref_msg,
               "dim %lld: vmin %.9g scale %.9g, want %.9g and %.9g",
               (long long)c, vmin[c], scale[c], lo, range / 255);
      return ref_msg;
    }
    for (int64_t i = 0; i < rows; i++) {
      int q = codes[i * rb + c];
      double rq = nearbyint((ref[i * cols + c] - vmin[c]) / scale[c]);
      rq = fmin(255, fmax(0, rq));
      if (fabs(q - rq) > 1) {
        snprintf(ref_msg, sizeof ref_msg,
                 "row %lld dim %lld: code %d, want %.0f", (long long)i,
                 (long long)c, q, rq);
        return ref_msg;
      }
      off += q != rq;
    }
  }
  if (off * 100 > rows * cols) {
    snprintf(ref_msg, sizeof ref_msg, "%lld of %lld codes are one step off",
             (long long)off, (long long)(rows * cols));
    return ref_msg;
  }
  return NULL;
}

/* fp16 (bf16 = 0) or bf16 (bf16 = 1) values against the reference:
 * relative error at most half an ulp of the format, plus the float32
 * rounding of the steps before (1e-6 relative, 2e-6 of the row's largest
 * value, which matters where a value is a near-cancellation). */
static inline const char *ref_check_half(const uint16_t *h, int64_t stride,
                                         const double *ref, int64_t rows,
                                         int64_t cols, int bf16) {
  double rel = bf16 ? ldexp(1, -8) : ldexp(1, -11);
  for (int64_t i = 0; i < rows; i++) {
    double m = 0;
    for (int64_t c = 0; c < cols; c++)
      m = fmax(m, fabs(ref[i * cols + c]));
    for (int64_t c = 0; c < cols; c++) {
      double x = ref[i * cols + c];
      double v = bf16 ? ref_bf16_decode(h[i * stride + c])
                      : ref_f16_decode(h[i * stride + c]);
      double tol =
          (rel + 1e-6) * fabs(x) + 2e-6 * m + (bf16 ? 1e-38 : ldexp(1, -25));
      if (!(fabs(v - x) <= tol)) {
        snprintf(ref_msg, sizeof ref_msg,
                 "row %lld col %lld: %s %.9g, want %.9g", (long long)i,
                 (long long)c, bf16 ? "bf16" : "fp16", v, x);
        return ref_msg;
      }
    }
  }
  return NULL;
}

/* Sign bits; values within 1e-6 of zero (relative to the row) may go
 * either way, since float32 rounding can flip their sign. */
static inline const char *ref_check_binary(const uint8_t *bits, int64_t rb,
                                           const double *ref, int64_t rows,
                                           int64_t cols) {
  for (int64_t i = 0; i < rows; i++) {
    double m = 0;
    for (int64_t c = 0; c < cols; c++)
      m = fmax(m, fabs(ref[i * cols + c]));
    for (int64_t c = 0; c < cols; c++) {
      double x = ref[i * cols + c];
      int bit = (bits[i * rb + c / 8] >> (c & 7)) & 1;
      if (fabs(x) > 1e-6 * m && bit != (x > 0)) {
        snprintf(ref_msg, sizeof ref_msg, "row %lld col %lld: bit %d for %.9g",
                 (long long)i, (long long)c, bit, x);
        return ref_msg;
      }
    }
    /* The unused high bits of the last byte must be zero, so that a row
     * compares equal byte for byte however it was produced. */
    if (cols % 8 && (bits[i * rb + cols / 8] >> (cols % 8))) {
      snprintf(ref_msg, sizeof ref_msg, "row %lld: padding bits set",
               (long long)i);
      return ref_msg;
    }
  }
  return NULL;
}

#endif /* MNEMO_TESTS_REFOPS_H */
