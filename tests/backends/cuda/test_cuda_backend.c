/*
 * test_cuda_backend.c - the CUDA plugin, op by op, against the CPU backend
 * on fresh random inputs; plus what only a device backend has: staged
 * copies, the memory pool and gpu.memory_limit, device OOM, several
 * threads at once, per-row arrays in host and device memory in one
 * batched call.
 *
 * The plugin is loaded from $MNEMO_TEST_CUDA_PLUGIN when set (e.g. the
 * host emulator's build, tests/backends/cuda/emu), else from the path CMake
 * compiled in (MNEMO_CUDA_PLUGIN) or $MNEMO_BUILD_DIR/bin/libmnemo-cuda.so.
 * Exit code 77 (skipped) when this build has no plugin or the machine has no
 * usable GPU; a plugin that was built but cannot be loaded is a failure.
 *
 * Every GPU output is poisoned (0xFF bytes: NaN for floats) before the op,
 * so an element the GPU did not write fails the comparison. Tolerances are
 * normalised errors: NMSE = sum (gpu - cpu)^2 / sum cpu^2.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "mnemo/compute.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static mn_backend *gpu, *cpu;
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

/* ---------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------- */
static uint64_t rnd(void) {
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static double unif(void) {
  return (double)(rnd() >> 11) * (1.0 / 9007199254740992.0);
}

static float gauss(void) {
  double u = unif(), v = unif();
  if (u < 1e-300)
    u = 1e-300;
  return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static float *rand_matrix(int64_t rows, int64_t cols, float scale) {
  float *m = malloc((size_t)(rows * cols) * sizeof(float));
  assert_non_null(m);
  for (int64_t i = 0; i < rows * cols; i++)
    m[i] = scale * gauss();
  return m;
}

#define CHECK_OK(expr)                                                         \
  do {                                                                         \
    mn_status s_ = (expr);                                                     \
    if (s_ != MN_OK)                                                           \
      fail_msg("%s -> %s: %s", #expr, mn_status_name(s_), mn_errmsg());        \
  } while (0)

/* A device copy of a host tensor with the given row stride (0: packed). */
static mn_tensor to_dev(mn_backend *b, const mn_tensor *h, int64_t stride) {
  size_t rb = mn_dtype_row_bytes(h->dtype, h->cols);
  if (stride <= 0)
    stride = (int64_t)rb;
  mn_tensor d = *h;
  d.stride = stride;
  d.device = MN_DEVICE_GPU;
  size_t bytes = h->rows > 0 ? (size_t)(h->rows * stride) : 1;
  CHECK_OK(mn_backend_alloc(b, bytes, &d.data));
  /* poison the padding as well: kernels must never read it as data */
  unsigned char *tmp = malloc(bytes);
  assert_non_null(tmp);
  memset(tmp, 0xA5, bytes);
  for (int64_t r = 0; r < h->rows; r++)
    memcpy(tmp + r * stride, mn_tensor_row(h, r), rb);
  CHECK_OK(mn_backend_upload(b, d.data, tmp, bytes));
  free(tmp);
  return d;
}

/* An uninitialised device tensor, poisoned with 0xFF bytes. */
static mn_tensor dev_out(mn_backend *b, mn_dtype dt, int64_t rows, int64_t cols,
                         int64_t stride) {
  size_t rb = mn_dtype_row_bytes(dt, cols);
  if (stride <= 0)
    stride = (int64_t)rb;
  mn_tensor d = {NULL, dt, rows, cols, stride, MN_DEVICE_GPU};
  size_t bytes = rows > 0 ? (size_t)(rows * stride) : 1;
  CHECK_OK(mn_backend_alloc(b, bytes, &d.data));
  unsigned char *tmp = malloc(bytes);
  assert_non_null(tmp);
  memset(tmp, 0xFF, bytes);
  CHECK_OK(mn_backend_upload(b, d.data, tmp, bytes));
  free(tmp);
  return d;
}

/* Packed host copy of a device tensor (caller frees .data). */
static mn_tensor to_host(mn_backend *b, const mn_tensor *d) {
  size_t rb = mn_dtype_row_bytes(d->dtype, d->cols);
  size_t bytes = d->rows > 0 ? (size_t)((d->rows - 1) * d->stride) + rb : 0;
  unsigned char *tmp = malloc(bytes ? bytes : 1);
  assert_non_null(tmp);
  CHECK_OK(mn_backend_download(b, tmp, d->data, bytes));
  mn_tensor h = mn_tensor_host(malloc(rb * (size_t)d->rows + 1), d->dtype,
                               d->rows, d->cols);
  assert_non_null(h.data);
  for (int64_t r = 0; r < d->rows; r++)
    memcpy(mn_tensor_row(&h, r), tmp + r * d->stride, rb);
  free(tmp);
  return h;
}

static mn_tensor host_f32(float *data, int64_t rows, int64_t cols) {
  return mn_tensor_host(data, MN_DTYPE_F32, rows, cols);
}

static double nmse(const float *got, const float *ref, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)got[i] - (double)ref[i];
    num += d * d;
    den += (double)ref[i] * ref[i];
  }
  if (isnan(num))
    return INFINITY;
  return den > 0.0 ? num / den : num;
}

static void assert_nmse(const float *got, const float *ref, size_t n,
                        double tol, const char *what) {
  double e = nmse(got, ref, n);
  if (!(e <= tol))
    fail_msg("%s: NMSE %.3g above %.3g", what, e, tol);
}

/* ---------------------------------------------------------------------------
 * Device, buffers, pool
 * ------------------------------------------------------------------------- */
static void test_device_and_memory(void **state) {
  (void)state;
  assert_string_equal(mn_backend_name(gpu), "cuda");
  assert_true(strncmp(mn_backend_device(gpu), "cuda:0 ", 7) == 0);
  assert_int_equal(mn_backend_device_kind(gpu), MN_DEVICE_GPU);
  uint64_t fr = 0, tot = 0;
  CHECK_OK(mn_backend_memory_info(gpu, &fr, &tot));
  assert_true(tot > 0 && fr <= tot);

  int64_t before = mn_account_get(MN_TIER_DEVICE);
  const size_t sizes[] = {1, 4099, ((size_t)9 << 20) + 5};
  for (int i = 0; i < 3; i++) {
    size_t n = sizes[i];
    unsigned char *src = malloc(n), *dst = malloc(n);
    assert_non_null(src);
    assert_non_null(dst);
    for (size_t j = 0; j < n; j++)
      src[j] = (unsigned char)rnd();
    memset(dst, 0, n);
    void *d = NULL;
    CHECK_OK(mn_backend_alloc(gpu, n, &d));
    assert_true(mn_account_get(MN_TIER_DEVICE) >= before + (int64_t)n ||
                i > 0); /* a cached block may be reused */
    CHECK_OK(mn_backend_upload(gpu, d, src, n));
    CHECK_OK(mn_backend_download(gpu, dst, d, n));
    assert_memory_equal(src, dst, n);
    mn_backend_free(gpu, d);
    /* the pool hands the same class back without a new device block
     * (not in the exact-size debug mode the memcheck run uses) */
    const char *exact = getenv("MNEMO_CUDA_POOL_EXACT");
    if (!exact || exact[0] != '1') {
      int64_t held = mn_account_get(MN_TIER_DEVICE);
      CHECK_OK(mn_backend_alloc(gpu, n, &d));
      assert_int_equal(mn_account_get(MN_TIER_DEVICE), held);
      mn_backend_free(gpu, d);
    }
    free(src);
    free(dst);
  }
  CHECK_OK(mn_backend_synchronize(gpu));
}

/* Misaligned float rows are refused with a message, not a device fault. */
static void test_misaligned_rows(void **state) {
  (void)state;
  float *x = rand_matrix(4, 192, 1.f);
  mn_tensor hx = host_f32(x, 4, 192);
  mn_tensor dx = to_dev(gpu, &hx, 770);
  mn_tensor dy = dev_out(gpu, MN_DTYPE_F32, 4, 192, 0);
  mn_status s = mn_backend_normalize(gpu, &dx, &dy, NULL);
  assert_int_equal(s, MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "boundar"));
  mn_backend_free(gpu, dx.data);
  mn_backend_free(gpu, dy.data);
  free(x);
}

/* ---------------------------------------------------------------------------
 * normalize
 * ------------------------------------------------------------------------- */
static void check_normalize(int64_t rows, int64_t cols, int64_t pad,
                            int inplace) {
  float *x = rand_matrix(rows, cols, 3.f);
  /* zero rows, and rows whose sum of squares under/overflows in float */
  int zeros = 0;
  for (int64_t r = 0; r < rows; r += 97) {
    memset(x + r * cols, 0, (size_t)cols * sizeof(float));
    zeros++;
  }
  int64_t tiny = rows > 5 ? 5 : -1, huge = rows > 7 ? 7 : -1;
  if (tiny >= 0)
    for (int64_t c = 0; c < cols; c++)
      x[tiny * cols + c] *= 1e-25f;
  if (huge >= 0)
    for (int64_t c = 0; c < cols; c++)
      x[huge * cols + c] *= 1e20f;

  mn_tensor hx = host_f32(x, rows, cols);
  int64_t stride = (int64_t)(cols * 4 + pad);
  mn_tensor dx = to_dev(gpu, &hx, stride);
  mn_tensor dy = inplace ? dx : dev_out(gpu, MN_DTYPE_F32, rows, cols, stride);
  int64_t z = -1;
  CHECK_OK(mn_backend_normalize(gpu, &dx, &dy, &z));
  assert_int_equal(z, zeros);
  mn_tensor gy = to_host(gpu, &dy);
  const float *g = gy.data;

  /* independent reference in double, every row */
  double worst = 0.0;
  for (int64_t r = 0; r < rows; r++) {
    double ss = 0.0;
    for (int64_t c = 0; c < cols; c++)
      ss += (double)x[r * cols + c] * x[r * cols + c];
    double n = sqrt(ss);
    for (int64_t c = 0; c < cols; c++) {
      double want = n > 0.0 ? x[r * cols + c] / n : 0.0;
      double e = fabs(g[r * cols + c] - want);
      if (!(e <= worst))
        worst = isnan(e) ? INFINITY : e;
    }
  }
  if (!(worst < 1e-6))
    fail_msg("normalize %lldx%lld: max error %.3g against double",
             (long long)rows, (long long)cols, worst);

  /* the CPU backend on the ordinary rows */
  float *ref = malloc((size_t)(rows * cols) * sizeof(float));
  assert_non_null(ref);
  if (tiny >= 0)
    for (int64_t c = 0; c < cols; c++)
      x[tiny * cols + c] = 0.f;
  if (huge >= 0)
    for (int64_t c = 0; c < cols; c++)
      x[huge * cols + c] = 0.f;
  mn_tensor hy = host_f32(ref, rows, cols);
  CHECK_OK(mn_backend_normalize(cpu, &hx, &hy, NULL));
  float *gc = malloc((size_t)(rows * cols) * sizeof(float));
  assert_non_null(gc);
  memcpy(gc, g, (size_t)(rows * cols) * sizeof(float));
  if (tiny >= 0)
    memset(gc + tiny * cols, 0, (size_t)cols * 4);
  if (huge >= 0)
    memset(gc + huge * cols, 0, (size_t)cols * 4);
  assert_nmse(gc, ref, (size_t)(rows * cols), 1e-12, "normalize vs cpu");

  free(gc);
  free(ref);
  free(gy.data);
  if (!inplace)
    mn_backend_free(gpu, dy.data);
  mn_backend_free(gpu, dx.data);
  free(x);
}

static void test_normalize(void **state) {
  (void)state;
  check_normalize(1000, 768, 0, 0); /* registers, 16-byte rows */
  check_normalize(300, 100, 0, 0);  /* width not a multiple of 4 */
  check_normalize(64, 3000, 0, 0);  /* wider than the register path */
  check_normalize(257, 384, 64, 0); /* padded stride */
  check_normalize(100, 768, 0, 1);  /* in place */
  check_normalize(9, 2048, 4, 0);   /* 4-byte padding: generic path */
}

/* ---------------------------------------------------------------------------
 * quantize / dequantize / affine_train
 * ------------------------------------------------------------------------- */
static int nibble(const unsigned char *row, int64_t c) {
  int v = (c & 1) ? row[c >> 1] >> 4 : row[c >> 1] & 0xF;
  return (v ^ 8) - 8;
}

static void check_quantize(mn_quant_kind kind, int64_t rows, int64_t cols) {
  float *x = rand_matrix(rows, cols, 2.f);
  for (int64_t r = 3; r < rows; r += 50)
    memset(x + r * cols, 0, (size_t)cols * 4); /* zero rows: scale 0 */
  mn_tensor hx = host_f32(x, rows, cols);
  mn_dtype cdt = mn_quant_dtype(kind);
  size_t rb = mn_dtype_row_bytes(cdt, cols);

  mn_affine_params aff = {cols, malloc((size_t)cols * 4),
                          malloc((size_t)cols * 4)};
  mn_affine_params gaff = {cols, malloc((size_t)cols * 4),
                           malloc((size_t)cols * 4)};
  assert_non_null(aff.vmin);
  assert_non_null(gaff.scale);
  mn_tensor dx = to_dev(gpu, &hx, 0);
  if (kind == MN_QUANT_INT8_AFFINE) {
    CHECK_OK(mn_backend_affine_train(cpu, &hx, &aff));
    CHECK_OK(mn_backend_affine_train(gpu, &dx, &gaff));
    for (int64_t c = 0; c < cols; c++) {
      assert_true(gaff.vmin[c] == aff.vmin[c]);
      assert_true(fabsf(gaff.scale[c] - aff.scale[c]) <=
                  1e-6f * fabsf(aff.scale[c]));
    }
  }

  /* CPU reference */
  mn_tensor hc = mn_tensor_host(malloc(rb * (size_t)rows + 1), cdt, rows, cols);
  float *hs = malloc((size_t)rows * 4), *gs = malloc((size_t)rows * 4);
  assert_non_null(hc.data);
  assert_non_null(hs);
  assert_non_null(gs);
  CHECK_OK(mn_backend_quantize(cpu, &hx, kind, &aff, &hc, hs));

  /* GPU, codes poisoned, scales to host memory */
  memset(gs, 0xFF, (size_t)rows * 4);
  mn_tensor dc = dev_out(gpu, cdt, rows, cols, 0);
  CHECK_OK(mn_backend_quantize(gpu, &dx, kind, &aff, &dc, gs));
  mn_tensor gc = to_host(gpu, &dc);

  int64_t off_by_one = 0;
  for (int64_t r = 0; r < rows; r++) {
    const unsigned char *a = mn_tensor_row(&gc, r), *b = mn_tensor_row(&hc, r);
    if (kind == MN_QUANT_INT8 || kind == MN_QUANT_INT4) {
      if (!(fabsf(gs[r] - hs[r]) <= 1e-6f * fabsf(hs[r])))
        fail_msg("%s row %lld scale %g, cpu %g", mn_quant_name(kind),
                 (long long)r, gs[r], hs[r]);
    }
    for (int64_t c = 0; c < cols; c++) {
      int ga, ca;
      if (kind == MN_QUANT_INT8) {
        ga = (int8_t)a[c], ca = (int8_t)b[c];
      } else if (kind == MN_QUANT_INT8_AFFINE) {
        ga = a[c], ca = b[c];
      } else if (kind == MN_QUANT_INT4) {
        ga = nibble(a, c), ca = nibble(b, c);
      } else {
        continue; /* fp16 / bf16 / binary: bytes compared below */
      }
      if (ga != ca) {
        if (abs(ga - ca) > 1)
          fail_msg("%s row %lld col %lld: code %d, cpu %d", mn_quant_name(kind),
                   (long long)r, (long long)c, ga, ca);
        off_by_one++;
      }
    }
    if (kind == MN_QUANT_FP16 || kind == MN_QUANT_BF16 ||
        kind == MN_QUANT_BINARY) {
      if (memcmp(a, b, rb) != 0)
        fail_msg("%s row %lld differs from the cpu", mn_quant_name(kind),
                 (long long)r);
    }
    if (kind == MN_QUANT_INT4 && (cols & 1)) /* padding nibble is zero */
      assert_int_equal(a[rb - 1] >> 4, 0);
  }
  /* a division rounding differently can move a code by one, rarely */
  assert_true(off_by_one * 1000 <= rows * cols);

  /* dequantize the GPU codes on both backends */
  float *gy_ref = malloc((size_t)(rows * cols) * 4);
  assert_non_null(gy_ref);
  mn_tensor hy = host_f32(gy_ref, rows, cols);
  CHECK_OK(mn_backend_dequantize(cpu, &gc, kind, gs, &aff, &hy));
  mn_tensor dy = dev_out(gpu, MN_DTYPE_F32, rows, cols, 0);
  CHECK_OK(mn_backend_dequantize(gpu, &dc, kind, gs, &aff, &dy));
  mn_tensor gy = to_host(gpu, &dy);
  assert_nmse(gy.data, gy_ref, (size_t)(rows * cols), 1e-12,
              mn_quant_name(kind));

  /* and the round trip against the input, per kind's resolution */
  const float *y = gy.data;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) {
      float xv = x[r * cols + c], yv = y[r * cols + c], bound;
      switch (kind) {
      case MN_QUANT_INT8:
      case MN_QUANT_INT4:
        bound = gs[r] * 0.5001f + 1e-30f;
        break;
      case MN_QUANT_INT8_AFFINE:
        bound = aff.scale[c] * 0.5001f + 1e-6f;
        break;
      case MN_QUANT_FP16:
        bound = fabsf(xv) * 4.9e-4f + 6e-8f;
        break;
      case MN_QUANT_BF16:
        bound = fabsf(xv) * 3.92e-3f;
        break;
      default:
        bound = 0.f;
        yv = yv == (xv > 0.f ? 1.f : -1.f) ? xv : NAN;
        break;
      }
      if (!(fabsf(xv - yv) <= bound))
        fail_msg("%s round trip row %lld col %lld: %g -> %g",
                 mn_quant_name(kind), (long long)r, (long long)c, xv, yv);
    }

  /* scales already on the device are used in place */
  if (kind == MN_QUANT_INT8 || kind == MN_QUANT_INT4) {
    float *dscales = NULL;
    CHECK_OK(mn_backend_alloc(gpu, (size_t)rows * 4, (void **)&dscales));
    mn_tensor dc2 = dev_out(gpu, cdt, rows, cols, 0);
    CHECK_OK(mn_backend_quantize(gpu, &dx, kind, NULL, &dc2, dscales));
    float *back = malloc((size_t)rows * 4);
    assert_non_null(back);
    CHECK_OK(mn_backend_download(gpu, back, dscales, (size_t)rows * 4));
    assert_memory_equal(back, gs, (size_t)rows * 4);
    mn_tensor gc2 = to_host(gpu, &dc2);
    assert_memory_equal(gc2.data, gc.data, rb * (size_t)rows);
    free(gc2.data);
    free(back);
    mn_backend_free(gpu, dc2.data);
    mn_backend_free(gpu, dscales);
  }

  free(gy.data);
  free(gy_ref);
  free(gc.data);
  free(hc.data);
  free(hs);
  free(gs);
  free(aff.vmin);
  free(aff.scale);
  free(gaff.vmin);
  free(gaff.scale);
  mn_backend_free(gpu, dy.data);
  mn_backend_free(gpu, dc.data);
  mn_backend_free(gpu, dx.data);
  free(x);
}

static void test_quantize(void **state) {
  (void)state;
  const mn_quant_kind kinds[] = {MN_QUANT_INT8,   MN_QUANT_INT4,
                                 MN_QUANT_FP16,   MN_QUANT_BF16,
                                 MN_QUANT_BINARY, MN_QUANT_INT8_AFFINE};
  for (int i = 0; i < 6; i++) {
    check_quantize(kinds[i], 513, 768); /* fast paths */
    check_quantize(kinds[i], 77, 100);  /* generic paths */
    check_quantize(kinds[i], 33, 37);   /* odd width: int4 / binary tails */
  }
}

/* ---------------------------------------------------------------------------
 * PCA
 * ------------------------------------------------------------------------- */
/* Rows with a planted spectrum: z * diag(sigma) * B' + mu, B orthonormal,
 * sigma_i = 10 * 0.95^i: variances ~10 % apart, spanning a few decades
 * over the components the tests keep (steeper spectra test the CPU
 * reference's own float32 covariance more than the GPU). */
static float *pca_data(int64_t n, int64_t d) {
  double *B = malloc((size_t)(d * d) * sizeof(double));
  assert_non_null(B);
  for (int64_t i = 0; i < d * d; i++)
    B[i] = gauss();
  for (int64_t i = 0; i < d; i++) { /* Gram-Schmidt on rows */
    for (int64_t j = 0; j < i; j++) {
      double p = 0.0;
      for (int64_t t = 0; t < d; t++)
        p += B[i * d + t] * B[j * d + t];
      for (int64_t t = 0; t < d; t++)
        B[i * d + t] -= p * B[j * d + t];
    }
    double nn = 0.0;
    for (int64_t t = 0; t < d; t++)
      nn += B[i * d + t] * B[i * d + t];
    nn = sqrt(nn);
    for (int64_t t = 0; t < d; t++)
      B[i * d + t] /= nn;
  }
  float *x = malloc((size_t)(n * d) * sizeof(float));
  double *z = malloc((size_t)d * sizeof(double));
  assert_non_null(x);
  assert_non_null(z);
  for (int64_t r = 0; r < n; r++) {
    for (int64_t i = 0; i < d; i++)
      z[i] = gauss() * 10.0 * pow(0.95, (double)i);
    for (int64_t t = 0; t < d; t++) {
      double v = 0.5 + 0.01 * t;
      for (int64_t i = 0; i < d; i++)
        v += z[i] * B[i * d + t];
      x[r * d + t] = (float)v;
    }
  }
  free(B);
  free(z);
  return x;
}

static void check_pca(int64_t n, int64_t d, int64_t k) {
  float *x = pca_data(n, d);
  mn_tensor hx = host_f32(x, n, d);
  mn_tensor dx = to_dev(gpu, &hx, 0);
  mn_pca_model *mc = NULL, *mg = NULL;
  CHECK_OK(mn_backend_pca_fit(cpu, &hx, k, &mc));
  CHECK_OK(mn_backend_pca_fit(gpu, &dx, k, &mg));
  assert_int_equal(mg->n_components, k);
  assert_int_equal(mg->input_dim, d);
  assert_int_equal(mg->n_samples, n);
  assert_true(fabs(mg->total_variance - mc->total_variance) <=
              1e-6 * mc->total_variance);
  for (int64_t c = 0; c < d; c++)
    assert_true(fabsf(mg->mean[c] - mc->mean[c]) <=
                1e-5f * (1.f + fabsf(mc->mean[c])));
  for (int64_t t = 0; t < k; t++) {
    double ev = mc->explained_variance[t];
    if (!(fabs(mg->explained_variance[t] - ev) <= 1e-4 * ev))
      fail_msg("PCA %lldx%lld->%lld component %lld: variance %.9g, cpu %.9g",
               (long long)n, (long long)d, (long long)k, (long long)t,
               (double)mg->explained_variance[t], ev);
    assert_true(fabs(mg->explained_variance_ratio[t] -
                     mc->explained_variance_ratio[t]) <=
                1e-4 * mc->explained_variance_ratio[t]);
    if (t > 0)
      assert_true(mg->explained_variance[t] <= mg->explained_variance[t - 1]);
    const float *a = mg->components + t * d, *b = mc->components + t * d;
    double dot = 0.0, na = 0.0;
    int64_t arg = 0;
    for (int64_t i = 0; i < d; i++) {
      dot += (double)a[i] * b[i];
      na += (double)a[i] * a[i];
      if (fabsf(a[i]) > fabsf(a[arg]))
        arg = i;
    }
    assert_true(fabs(na - 1.0) < 1e-5);
    assert_true(a[arg] > 0.f); /* the sign rule */
    /* the planted gaps make components well defined: both backends must
     * find the same vectors with the same sign */
    if (!(dot > 1.0 - 1e-4))
      fail_msg("PCA component %lld: cosine with the cpu's is %.8f",
               (long long)t, dot);
  }

  /* Host input straight to the GPU backend (fitPCA and the store do this;
   * the wrapper uploads it): the same model as from device input. This
   * failed with "PCA input lives on the host" on the first GPU run. */
  mn_pca_model *mh = NULL;
  CHECK_OK(mn_backend_pca_fit(gpu, &hx, k, &mh));
  assert_int_equal(mh->n_samples, n);
  for (int64_t t = 0; t < k; t++)
    assert_true(fabs(mh->explained_variance[t] - mg->explained_variance[t]) <=
                1e-6 * mg->explained_variance[t]);
  mn_pca_free(mh);

  /* transform, plain and whitened, against the CPU */
  int64_t m = 300;
  float *x2 = pca_data(m, d);
  mn_tensor hx2 = host_f32(x2, m, d);
  mn_tensor dx2 = to_dev(gpu, &hx2, (int64_t)d * 4 + 16);
  float *ref = malloc((size_t)(m * k) * 4);
  assert_non_null(ref);
  for (int whiten = 0; whiten <= 1; whiten++) {
    mn_tensor hy = host_f32(ref, m, k);
    CHECK_OK(mn_backend_pca_transform(cpu, &hx2, mc, whiten, &hy));
    mn_tensor dy = dev_out(gpu, MN_DTYPE_F32, m, k, k * 4 + 32);
    CHECK_OK(mn_backend_pca_transform(gpu, &dx2, mc, whiten, &dy));
    mn_tensor gy = to_host(gpu, &dy);
    assert_nmse(gy.data, ref, (size_t)(m * k), 1e-10, "pca_transform");
    free(gy.data);
    mn_backend_free(gpu, dy.data);
  }
  free(ref);
  mn_backend_free(gpu, dx2.data);
  free(x2);
  mn_pca_free(mc);
  mn_pca_free(mg);
  mn_backend_free(gpu, dx.data);
  free(x);
}

static void test_pca(void **state) {
  (void)state;
  check_pca(3000, 256, 32); /* top-k eigensolver (k <= d/2) */
  check_pca(1500, 64, 48);  /* full eigensolver */
  check_pca(40, 24, 24);    /* k = d, few rows */
}

/* precision_f16: TF32 products and the float32 eigensolver. */
static void test_pca_f16_backend(void **state) {
  const char *path = (const char *)*state;
  mn_backend_opts o;
  mn_backend_opts_init(&o);
  o.precision_f16 = 1;
  mn_backend *g16 = NULL;
  CHECK_OK(mn_backend_open_plugin(path, &o, &g16));
  int64_t n = 2000, d = 128, k = 16;
  float *x = pca_data(n, d);
  mn_tensor hx = host_f32(x, n, d);
  mn_pca_model *mc = NULL;
  CHECK_OK(mn_backend_pca_fit(cpu, &hx, k, &mc));
  float *ref = malloc((size_t)(n * k) * 4);
  assert_non_null(ref);
  mn_tensor hy = host_f32(ref, n, k);
  CHECK_OK(mn_backend_pca_transform(cpu, &hx, mc, 0, &hy));
  mn_tensor dx = to_dev(g16, &hx, 0);
  /* the float32 eigensolver this backend uses, with refined variances */
  mn_pca_model *mg = NULL;
  CHECK_OK(mn_backend_pca_fit(g16, &dx, k, &mg));
  for (int64_t t = 0; t < k; t++) {
    double ev = mc->explained_variance[t], dot = 0.0;
    assert_true(fabs(mg->explained_variance[t] - ev) <= 1e-4 * ev);
    for (int64_t i = 0; i < d; i++)
      dot += (double)mg->components[t * d + i] * mc->components[t * d + i];
    assert_true(dot > 1.0 - 1e-4);
  }
  mn_pca_free(mg);
  mn_tensor dy = dev_out(g16, MN_DTYPE_F32, n, k, 0);
  CHECK_OK(mn_backend_pca_transform(g16, &dx, mc, 0, &dy));
  mn_tensor gy = to_host(g16, &dy);
  assert_nmse(gy.data, ref, (size_t)(n * k), 1e-5, "pca_transform tf32");
  free(gy.data);
  mn_backend_free(g16, dx.data);
  mn_backend_free(g16, dy.data);
  mn_backend_close(g16);
  mn_pca_free(mc);
  free(ref);
  free(x);
}

/* ---------------------------------------------------------------------------
 * Similarity and search
 * ------------------------------------------------------------------------- */
typedef struct stored {
  mn_dtype dt;
  int64_t n, d;
  mn_tensor host; /* codes on the host */
  mn_tensor dev;  /* codes on the device */
  float *scales;  /* host, i8 / i4 */
  float *dscales; /* device copy */
  mn_affine_params aff;
  float *norms;  /* host, decoded row norms */
  float *dnorms; /* device copy */
} stored;

static const mn_quant_kind kind_of[MN_DTYPE_COUNT] = {
    MN_QUANT_NONE,        MN_QUANT_FP16, MN_QUANT_BF16,  MN_QUANT_INT8,
    MN_QUANT_INT8_AFFINE, MN_QUANT_INT4, MN_QUANT_BINARY};

/* n random rows stored as dt (quantised on the CPU), `dup` > 0 repeats the
 * first `dup` rows so that scores tie exactly; `dup` < 0 makes every row
 * row 0 with element r % d larger by 2^-9 of itself, so that scores
 * differ by about 1e-5 of their size (far above float32 rounding, below
 * float16's), with exact ties between rows r and r + d. */
static stored make_stored(mn_dtype dt, int64_t n, int64_t d, int64_t pad,
                          int64_t dup) {
  stored s;
  memset(&s, 0, sizeof s);
  s.dt = dt;
  s.n = n;
  s.d = d;
  float *x = rand_matrix(n, d, 1.f);
  if (dup > 0)
    for (int64_t r = dup; r < n; r++)
      memcpy(x + r * d, x + (r % dup) * d, (size_t)d * 4);
  if (dup < 0)
    for (int64_t r = 1; r < n; r++) {
      memcpy(x + r * d, x, (size_t)d * 4);
      x[r * d + r % d] *= 1.f + 0x1p-9f;
    }
  mn_tensor hx = host_f32(x, n, d);
  size_t rb = mn_dtype_row_bytes(dt, d);
  if (dt == MN_DTYPE_F32) {
    s.host = hx;
    x = NULL;
  } else {
    s.host = mn_tensor_host(malloc(rb * (size_t)n + 1), dt, n, d);
    assert_non_null(s.host.data);
    s.scales = malloc((size_t)n * 4);
    s.aff.dim = d;
    s.aff.vmin = malloc((size_t)d * 4);
    s.aff.scale = malloc((size_t)d * 4);
    if (dt == MN_DTYPE_U8)
      CHECK_OK(mn_backend_affine_train(cpu, &hx, &s.aff));
    CHECK_OK(
        mn_backend_quantize(cpu, &hx, kind_of[dt], &s.aff, &s.host, s.scales));
  }
  /* decoded norms (the CPU's dequantize), for the "norms given" cases */
  float *dec = malloc((size_t)(n * d) * 4);
  assert_non_null(dec);
  mn_tensor hd = host_f32(dec, n, d);
  if (dt == MN_DTYPE_F32)
    memcpy(dec, s.host.data, (size_t)(n * d) * 4);
  else
    CHECK_OK(mn_backend_dequantize(cpu, &s.host, kind_of[dt], s.scales, &s.aff,
                                   &hd));
  s.norms = malloc((size_t)n * 4);
  for (int64_t r = 0; r < n; r++) {
    double ss = 0.0;
    for (int64_t c = 0; c < d; c++)
      ss += (double)dec[r * d + c] * dec[r * d + c];
    s.norms[r] = (float)sqrt(ss);
  }
  free(dec);
  s.dev = to_dev(gpu, &s.host, pad > 0 ? (int64_t)rb + pad : 0);
  CHECK_OK(mn_backend_alloc(gpu, (size_t)n * 4 + 4, (void **)&s.dnorms));
  CHECK_OK(mn_backend_upload(gpu, s.dnorms, s.norms, (size_t)n * 4));
  if (s.scales) {
    CHECK_OK(mn_backend_alloc(gpu, (size_t)n * 4 + 4, (void **)&s.dscales));
    CHECK_OK(mn_backend_upload(gpu, s.dscales, s.scales, (size_t)n * 4));
  }
  free(x);
  return s;
}

static void free_stored(stored *s) {
  mn_backend_free(gpu, s->dev.data);
  mn_backend_free(gpu, s->dnorms);
  mn_backend_free(gpu, s->dscales);
  free(s->host.data);
  free(s->scales);
  free(s->aff.vmin);
  free(s->aff.scale);
  free(s->norms);
}

/* The vecblock each backend sees; `variant` picks host or device arrays
 * and whether norms are given. */
static mn_vecblock block_for(const stored *s, int on_gpu, int variant) {
  mn_vecblock v;
  memset(&v, 0, sizeof v);
  v.codes = on_gpu ? s->dev : s->host;
  int dev_arrays = on_gpu && (variant & 1);
  v.scales = dev_arrays ? s->dscales : s->scales;
  v.affine = &s->aff;
  if (variant & 2)
    v.norms = dev_arrays ? s->dnorms : s->norms;
  return v;
}

/* Similarity of nq random queries against s, every metric and variant. */
static void check_similarity_of(const stored *sp, int64_t nq) {
  const stored s = *sp;
  const mn_dtype dt = s.dt;
  const int64_t n = s.n, d = s.d;
  float *q = rand_matrix(nq, d, 1.f);
  mn_tensor hq = host_f32(q, nq, d);
  mn_tensor dq = to_dev(gpu, &hq, 0);
  float *ref = malloc((size_t)(nq * n) * 4);
  assert_non_null(ref);
  for (int metric = 0; metric <= MN_METRIC_L2; metric++)
    for (int variant = 0; variant < 4; variant++) {
      mn_vecblock hb = block_for(&s, 0, variant),
                  gb = block_for(&s, 1, variant);
      mn_tensor ho = host_f32(ref, nq, n);
      CHECK_OK(mn_backend_similarity(cpu, &hq, &hb, (mn_metric)metric, &ho));
      mn_tensor go = dev_out(gpu, MN_DTYPE_F32, nq, n, n * 4 + 12);
      CHECK_OK(mn_backend_similarity(gpu, &dq, &gb, (mn_metric)metric, &go));
      mn_tensor gh = to_host(gpu, &go);
      char what[96];
      snprintf(what, sizeof what, "similarity %s %s q=%lld n=%lld d=%lld v%d",
               mn_dtype_name(dt), mn_metric_name((mn_metric)metric),
               (long long)nq, (long long)n, (long long)d, variant);
      assert_nmse(gh.data, ref, (size_t)(nq * n), 1e-9, what);
      free(gh.data);
      mn_backend_free(gpu, go.data);
    }
  free(ref);
  mn_backend_free(gpu, dq.data);
  free(q);
}

static void check_similarity(mn_dtype dt, int64_t n, int64_t d, int64_t nq,
                             int64_t pad) {
  stored s = make_stored(dt, n, d, pad, 0);
  check_similarity_of(&s, nq);
  free_stored(&s);
}

static void test_similarity(void **state) {
  (void)state;
  for (int dt = 0; dt < MN_DTYPE_COUNT; dt++) {
    check_similarity((mn_dtype)dt, 2500, 96, 3, 0);  /* scan */
    check_similarity((mn_dtype)dt, 2500, 96, 20, 0); /* GEMM where it fits */
    check_similarity((mn_dtype)dt, 700, 37, 5, 4);   /* odd width, stride */
  }
}

/* Search cases: queries rounded to float16 values first (for a backend
 * allowed float16 products, so that the CPU's float32 search of the same
 * values is its reference); ids must equal the CPU's exactly (no near-ties
 * in the data, only exact ones). */
static int search_q16, search_exact_ids;

/* Compare one search against the CPU's; see the notes inline. */
static void check_search_case(const stored *s, int64_t nq, int64_t k,
                              int metric, int variant) {
  const int64_t base = 1000;
  float *q = rand_matrix(nq, s->d, 1.f);
  mn_tensor hq = host_f32(q, nq, s->d);
  if (search_q16) {
    mn_tensor h16 =
        mn_tensor_host(malloc((size_t)(nq * s->d) * 2), MN_DTYPE_F16, nq, s->d);
    assert_non_null(h16.data);
    CHECK_OK(mn_backend_quantize(cpu, &hq, MN_QUANT_FP16, NULL, &h16, NULL));
    CHECK_OK(mn_backend_dequantize(cpu, &h16, MN_QUANT_FP16, NULL, NULL, &hq));
    free(h16.data);
  }
  mn_tensor dq = to_dev(gpu, &hq, 0);
  size_t m = (size_t)(nq * k);
  float *cs = malloc(m * 4), *gs = malloc(m * 4);
  int64_t *ci = malloc(m * 8), *gi = malloc(m * 8);
  float *sim = malloc((size_t)(nq * s->n) * 4 + 4);
  assert_non_null(cs);
  assert_non_null(gs);
  assert_non_null(ci);
  assert_non_null(gi);
  assert_non_null(sim);
  mn_vecblock hb = block_for(s, 0, variant), gb = block_for(s, 1, variant);
  CHECK_OK(
      mn_backend_search(cpu, &hq, &hb, (mn_metric)metric, k, base, cs, ci));
  memset(gs, 0xFF, m * 4);
  memset(gi, 0x7F, m * 8);
  CHECK_OK(
      mn_backend_search(gpu, &dq, &gb, (mn_metric)metric, k, base, gs, gi));
  mn_tensor hs = host_f32(sim, nq, s->n);
  CHECK_OK(mn_backend_similarity(cpu, &hq, &hb, (mn_metric)metric, &hs));

  const int lower = metric == MN_METRIC_L2;
  char what[128];
  snprintf(what, sizeof what, "search %s %s q=%lld n=%lld k=%lld v%d",
           mn_dtype_name(s->dt), mn_metric_name((mn_metric)metric),
           (long long)nq, (long long)s->n, (long long)k, variant);
  char *seen = malloc((size_t)s->n + 1);
  assert_non_null(seen);
  double max_norm = 0.0;
  for (int64_t i = 0; i < s->n; i++)
    max_norm = fmax(max_norm, s->norms[i]);
  for (int64_t j = 0; j < nq; j++) {
    const float *row = sim + j * s->n;
    double scale = 1e-6;
    for (int64_t i = 0; i < s->n; i++)
      scale = fmax(scale, fabs(row[i]));
    /* float32 rounding of a dot product is relative to the sum of
     * |q_c x_c| (at most |q| |x|), not to the score: near-tie rows that
     * are all one vector can score near 0 for a query nearly orthogonal
     * to it, and a tolerance from the largest score alone was then below
     * the CPU reference's own rounding */
    if (metric == MN_METRIC_IP) {
      double qn = 0.0;
      for (int64_t c = 0; c < s->d; c++)
        qn += (double)q[j * s->d + c] * q[j * s->d + c];
      scale = fmax(scale, sqrt(qn) * max_norm);
    } else if (metric == MN_METRIC_COSINE) {
      scale = fmax(scale, 1.0);
    }
    double tol = 2e-5 * scale;
    memset(seen, 0, (size_t)s->n);
    for (int64_t i = 0; i < k; i++) {
      int64_t g = gi[j * k + i], c = ci[j * k + i];
      float gv = gs[j * k + i], cv = cs[j * k + i];
      if (i >= s->n) { /* the tail: fewer rows than k */
        if (g != -1 || gv != (lower ? INFINITY : -INFINITY))
          fail_msg("%s: tail entry %lld is id %lld score %g", what,
                   (long long)i, (long long)g, gv);
        continue;
      }
      if (g < base || g >= base + s->n || seen[g - base])
        fail_msg("%s: query %lld rank %lld id %lld is invalid or repeated",
                 what, (long long)j, (long long)i, (long long)g);
      seen[g - base] = 1;
      /* the score reported is the id's score */
      if (!(fabs(gv - row[g - base]) <= tol))
        fail_msg("%s: id %lld scored %g, its similarity is %g", what,
                 (long long)g, gv, row[g - base]);
      /* rank by rank the same scores as the CPU (ids may swap only on
       * near-ties) */
      if (!(fabs(gv - cv) <= tol))
        fail_msg("%s: query %lld rank %lld score %g (id %lld), cpu %g (id "
                 "%lld)",
                 what, (long long)j, (long long)i, gv, (long long)g, cv,
                 (long long)c);
      if (i > 0) { /* best first; equal scores by ascending id */
        float pv = gs[j * k + i - 1];
        int64_t pg = gi[j * k + i - 1];
        int ok = lower ? (pv < gv || (pv == gv && pg < g))
                       : (pv > gv || (pv == gv && pg < g));
        if (!ok)
          fail_msg("%s: ranks %lld and %lld out of order", what,
                   (long long)i - 1, (long long)i);
      }
    }
  }
  /* binary scores are integers: exact ties everywhere, so the tie rule
   * decides and the ids must match the CPU's exactly */
  if (s->dt == MN_DTYPE_BIN || search_exact_ids)
    for (size_t i = 0; i < m; i++)
      if (gi[i] != ci[i])
        fail_msg("%s: binary ids differ at %zu: %lld vs cpu %lld", what, i,
                 (long long)gi[i], (long long)ci[i]);
  free(seen);
  free(sim);
  free(cs);
  free(gs);
  free(ci);
  free(gi);
  mn_backend_free(gpu, dq.data);
  free(q);
}

static void test_search(void **state) {
  (void)state;
  /* (queries, k): scan with one query; several queries (QB pass); k above
   * 128 (one query per pass); GEMM path; GEMM with k = 1024; the host
   * top-k fallback above 1024 */
  const int64_t cases[][2] = {{1, 10},  {5, 1},     {3, 100}, {2, 300},
                              {20, 10}, {17, 1024}, {2, 1500}};
  for (int dt = 0; dt < MN_DTYPE_COUNT; dt++) {
    stored s = make_stored((mn_dtype)dt, 2500, 96, 0, 0);
    for (int c = 0; c < 7; c++)
      for (int metric = 0; metric <= MN_METRIC_L2; metric++)
        check_search_case(&s, cases[c][0], cases[c][1], metric,
                          (c + metric) % 4);
    free_stored(&s);
    /* fewer rows than k, odd width, padded rows */
    stored t = make_stored((mn_dtype)dt, 7, 37, 8, 0);
    for (int metric = 0; metric <= MN_METRIC_L2; metric++) {
      check_search_case(&t, 3, 10, metric, metric);
      check_search_case(&t, 1, 10, metric, 3);
    }
    free_stored(&t);
  }
  /* GEMM chunks large enough that each query's chunk is selected by
   * several blocks (on a many-SM device) and merged */
  stored w = make_stored(MN_DTYPE_F16, 9000, 64, 0, 0);
  check_search_case(&w, 16, 10, MN_METRIC_IP, 0);
  check_search_case(&w, 16, 100, MN_METRIC_L2, 3);
  free_stored(&w);
  /* five chunks (with MNEMO_CUDA_CHUNK_ROWS=4096, as the emulator runs
   * it): the pipeline reuses each score tile and norm buffer twice after
   * its first chunk, so the emulator's asynchronous streams can show a
   * tile overwritten while its select still reads it */
  stored f = make_stored(MN_DTYPE_F32, 4 * 4096 + 500, 48, 0, 0);
  check_search_case(&f, 16, 10, MN_METRIC_IP, 0);
  check_search_case(&f, 16, 20, MN_METRIC_L2, 0);
  free_stored(&f);
  /* exact ties in float: 40 distinct rows repeated; lower ids first */
  stored u = make_stored(MN_DTYPE_F16, 3000, 64, 0, 40);
  check_search_case(&u, 4, 50, MN_METRIC_IP, 0);
  check_search_case(&u, 1, 200, MN_METRIC_L2, 1);
  free_stored(&u);
}

/* s's device rows moved `off` bytes into a buffer of their own; *base is
 * what to free (after which s->dev.data is to be cleared). */
static void shift_dev(stored *s, int64_t off, void **base) {
  const size_t bytes = (size_t)(s->n * s->dev.stride);
  char *b = NULL;
  CHECK_OK(mn_backend_alloc(gpu, bytes + (size_t)off, (void **)&b));
  unsigned char *tmp = malloc(bytes);
  assert_non_null(tmp);
  CHECK_OK(mn_backend_download(gpu, tmp, s->dev.data, bytes));
  CHECK_OK(mn_backend_upload(gpu, b + off, tmp, bytes));
  free(tmp);
  mn_backend_free(gpu, s->dev.data);
  s->dev.data = b + off;
  *base = b;
}

/* int8 rows on the GEMM path (16 or more queries, 1024 rows or more) are
 * widened to float16 with 16-byte, 4-byte or byte loads, as the block's
 * start and row stride allow, the rest of a row byte by byte: odd widths
 * (3, 17, 769) with strides and starts that allow each load width; every
 * metric, norms given and computed (check_similarity_of's variants). */
static void test_int8_widths(void **state) {
  (void)state;
  /* width, row padding, start offset (bytes) */
  const int64_t cases[][3] = {{3, 0, 0},    {3, 1, 0},   {17, 0, 0},
                              {17, 3, 0},   {17, 15, 0}, {17, 15, 4},
                              {17, 15, 1},  {769, 0, 0}, {769, 3, 0},
                              {769, 15, 0}, {100, 0, 0}, {96, 0, 4}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    stored s = make_stored(MN_DTYPE_I8, 1100, cases[c][0], cases[c][1], 0);
    void *base = NULL;
    if (cases[c][2])
      shift_dev(&s, cases[c][2], &base);
    check_similarity_of(&s, 20);
    for (int metric = 0; metric <= MN_METRIC_L2; metric++)
      check_search_case(&s, 20, 10, metric, (int)(c + (size_t)metric) % 4);
    if (base) {
      mn_backend_free(gpu, base);
      s.dev.data = NULL;
    }
    free_stored(&s);
  }
}

static mn_backend *gpu_saved; /* gpu while a test swaps in another */

/* Teardown of a test that swapped `gpu`: put it back even after a failed
 * check (which leaves the test body at once). */
static int restore_gpu(void **state) {
  (void)state;
  if (gpu_saved) {
    mn_backend_close(gpu);
    gpu = gpu_saved;
    gpu_saved = NULL;
  }
  search_q16 = search_exact_ids = 0;
  return 0;
}

/* precision_f16 search on the GEMM path (float16 and int8 rows): float16
 * score tiles, whose candidates are scored again exactly. The result must
 * be the float32 search's: scores within its tolerance, order, ties by id.
 * With exact ties (40 rows repeated) and near-ties (rows whose float16
 * scores round together, which only the float32-tile rerun can settle)
 * the ids must be the CPU's. */
static void test_search_f16_tiles(void **state) {
  const char *path = (const char *)*state;
  mn_backend_opts o;
  mn_backend_opts_init(&o);
  o.precision_f16 = 1;
  mn_backend *g16 = NULL;
  CHECK_OK(mn_backend_open_plugin(path, &o, &g16));
  gpu_saved = gpu;
  gpu = g16;
  search_q16 = 1;
  /* (queries, k): k of one; the candidates' margin of 16; a quarter of
   * k; k whose candidates stop at 1024; above that (float32 tiles) */
  const int64_t cases[][2] = {
      {20, 10}, {16, 1}, {33, 100}, {17, 800}, {16, 1000}};
  const mn_dtype dts[] = {MN_DTYPE_F16, MN_DTYPE_I8};
  for (int t = 0; t < 2; t++) {
    stored s = make_stored(dts[t], 3000, 64, 0, 0);
    for (int c = 0; c < 5; c++)
      for (int metric = 0; metric <= MN_METRIC_L2; metric++)
        check_search_case(&s, cases[c][0], cases[c][1], metric,
                          (c + metric) % 4);
    free_stored(&s);
  }
  /* several chunks, split selects */
  stored w = make_stored(MN_DTYPE_F16, 9000, 64, 0, 0);
  for (int metric = 0; metric <= MN_METRIC_L2; metric++)
    check_search_case(&w, 16, 10, metric, metric);
  free_stored(&w);
  search_exact_ids = 1;
  stored u = make_stored(MN_DTYPE_F16, 3000, 64, 0, 40);
  check_search_case(&u, 16, 50, MN_METRIC_IP, 0);
  check_search_case(&u, 16, 10, MN_METRIC_COSINE, 2);
  free_stored(&u);
  /* near-ties: float16 scores of many rows round together, and the
   * candidates by bound and id are not the k best */
  stored v = make_stored(MN_DTYPE_F16, 2000, 64, 0, -1);
  check_search_case(&v, 16, 10, MN_METRIC_IP, 0);
  check_search_case(&v, 16, 10, MN_METRIC_L2, 3);
  free_stored(&v);
}

/* search_many / similarity_many over int8 blocks whose scales and norms
 * live in different places in one call (the plugin finds out where a
 * call's arrays live once, not per block): behind the block's codes in
 * one device buffer (the store's layout); in device buffers of their own;
 * in host memory; host scales with device norms; two blocks cut from one
 * device buffer (codes, scales and norms at offsets inside it); a block
 * sharing another's host arrays; a block without norms. Against the CPU
 * backend, which reads the same arrays from the host. */
#define NPLACES 7
static void check_array_places(int64_t nq, int metric) {
  const int64_t d = 48, k = 10;
  const int64_t rows[NPLACES] = {1100, 300, 1030, 64, 500, 700, 1030};
  stored st[NPLACES];
  for (int i = 0; i < NPLACES; i++)
    if (i != 6) /* block 6 is block 2 again */
      st[i] = make_stored(MN_DTYPE_I8, rows[i], d, 0, 0);
  const size_t rb = mn_dtype_row_bytes(MN_DTYPE_I8, d);
  /* block 0: codes, then scales, then norms, in one device buffer */
  const size_t c0 = ((size_t)rows[0] * rb + 15) / 16 * 16;
  const size_t n0 = c0 + ((size_t)rows[0] * 4 + 15) / 16 * 16;
  char *buf0 = NULL;
  CHECK_OK(mn_backend_alloc(gpu, n0 + (size_t)rows[0] * 4, (void **)&buf0));
  CHECK_OK(mn_backend_upload(gpu, buf0, st[0].host.data, (size_t)rows[0] * rb));
  CHECK_OK(
      mn_backend_upload(gpu, buf0 + c0, st[0].scales, (size_t)rows[0] * 4));
  CHECK_OK(mn_backend_upload(gpu, buf0 + n0, st[0].norms, (size_t)rows[0] * 4));
  /* blocks 4 and 5: both blocks' codes, then their scales, then their
   * norms, in one device buffer */
  const int64_t r45 = rows[4] + rows[5];
  const size_t s45 = ((size_t)r45 * rb + 15) / 16 * 16;
  const size_t m45 = s45 + (size_t)r45 * 4;
  char *buf45 = NULL;
  CHECK_OK(mn_backend_alloc(gpu, m45 + (size_t)r45 * 4, (void **)&buf45));
  for (int i = 4, off = 0; i < 6; off += (int)rows[i], i++) {
    CHECK_OK(mn_backend_upload(gpu, buf45 + (size_t)off * rb, st[i].host.data,
                               (size_t)rows[i] * rb));
    CHECK_OK(mn_backend_upload(gpu, buf45 + s45 + (size_t)off * 4, st[i].scales,
                               (size_t)rows[i] * 4));
    CHECK_OK(mn_backend_upload(gpu, buf45 + m45 + (size_t)off * 4, st[i].norms,
                               (size_t)rows[i] * 4));
  }

  mn_vecblock hb[NPLACES], gb[NPLACES];
  for (int i = 0; i < NPLACES; i++) {
    const stored *s = &st[i == 6 ? 2 : i];
    memset(&hb[i], 0, sizeof hb[i]);
    hb[i].codes = s->host;
    hb[i].scales = s->scales;
    hb[i].norms = i == 3 ? NULL : s->norms;
    gb[i] = hb[i];
    gb[i].codes = s->dev;
  }
  gb[0].codes.data = buf0;
  gb[0].scales = (const float *)(buf0 + c0);
  gb[0].norms = (const float *)(buf0 + n0);
  gb[1].scales = st[1].dscales; /* device buffers of their own */
  gb[1].norms = st[1].dnorms;
  gb[3].scales = st[3].dscales; /* no norms */
  gb[4].norms = st[4].dnorms;   /* host scales, device norms */
  for (int i = 4, off = 0; i < 6; off += (int)rows[i], i++) {
    gb[i].codes.data = buf45 + (size_t)off * rb;
    gb[i].scales = (const float *)(buf45 + s45) + off;
    gb[i].norms = (const float *)(buf45 + m45) + off;
  }
  gb[4].scales = st[4].scales;
  /* blocks 2 and 6: the same device codes, the same host arrays */

  float *q = rand_matrix(nq, d, 1.f);
  mn_tensor hq = host_f32(q, nq, d);
  mn_tensor dq = to_dev(gpu, &hq, 0);
  int64_t total = 0;
  for (int i = 0; i < NPLACES; i++)
    total += rows[i];
  char what[96];

  /* similarity_many: every block's scores side by side */
  float *ref = malloc((size_t)(nq * total) * 4);
  assert_non_null(ref);
  mn_tensor ho = host_f32(ref, nq, total);
  CHECK_OK(mn_backend_similarity_many(cpu, &hq, hb, NPLACES, (mn_metric)metric,
                                      &ho));
  mn_tensor go = dev_out(gpu, MN_DTYPE_F32, nq, total, 0);
  CHECK_OK(mn_backend_similarity_many(gpu, &dq, gb, NPLACES, (mn_metric)metric,
                                      &go));
  mn_tensor gh = to_host(gpu, &go);
  snprintf(what, sizeof what, "similarity_many array places %s q=%lld",
           mn_metric_name((mn_metric)metric), (long long)nq);
  assert_nmse(gh.data, ref, (size_t)(nq * total), 1e-9, what);
  free(gh.data);
  mn_backend_free(gpu, go.data);

  /* search_many: rank by rank the CPU's scores, each id scored as its
   * similarity */
  mn_search_block cb[NPLACES], gsb[NPLACES];
  for (int i = 0; i < NPLACES; i++) {
    size_t n = (size_t)(nq * k);
    cb[i] = (mn_search_block){hb[i], k, malloc(n * 4), malloc(n * 8)};
    gsb[i] = (mn_search_block){gb[i], k, malloc(n * 4), malloc(n * 8)};
    assert_true(cb[i].scores && cb[i].ids && gsb[i].scores && gsb[i].ids);
    memset(gsb[i].scores, 0xFF, n * 4);
    memset(gsb[i].ids, 0x7F, n * 8);
  }
  CHECK_OK(mn_backend_search_many(cpu, &hq, cb, NPLACES, (mn_metric)metric));
  CHECK_OK(mn_backend_search_many(gpu, &dq, gsb, NPLACES, (mn_metric)metric));
  int64_t col = 0;
  for (int i = 0; i < NPLACES; i++) {
    snprintf(what, sizeof what, "search_many array places %s q=%lld block %d",
             mn_metric_name((mn_metric)metric), (long long)nq, i);
    for (int64_t j = 0; j < nq; j++) {
      const float *row = ref + j * total + col;
      double scale = 1e-6;
      for (int64_t r = 0; r < rows[i]; r++)
        scale = fmax(scale, fabs(row[r]));
      const double tol = 2e-5 * scale;
      for (int64_t r = 0; r < k; r++) {
        const int64_t g = gsb[i].ids[j * k + r];
        const float gv = gsb[i].scores[j * k + r], cv = cb[i].scores[j * k + r];
        if (g < 0 || g >= rows[i])
          fail_msg("%s: query %lld rank %lld id %lld", what, (long long)j,
                   (long long)r, (long long)g);
        if (!(fabs(gv - row[g]) <= tol) || !(fabs(gv - cv) <= tol))
          fail_msg("%s: query %lld rank %lld id %lld scored %g, its "
                   "similarity %g, the cpu's rank %g",
                   what, (long long)j, (long long)r, (long long)g, gv, row[g],
                   cv);
      }
    }
    col += rows[i];
    free(cb[i].scores);
    free(cb[i].ids);
    free(gsb[i].scores);
    free(gsb[i].ids);
  }
  free(ref);
  mn_backend_free(gpu, dq.data);
  free(q);
  mn_backend_free(gpu, buf0);
  mn_backend_free(gpu, buf45);
  for (int i = 0; i < NPLACES; i++)
    if (i != 6)
      free_stored(&st[i]);
}

static void test_many_array_places(void **state) {
  (void)state;
  for (int metric = 0; metric <= MN_METRIC_L2; metric++) {
    check_array_places(3, metric);  /* scan */
    check_array_places(20, metric); /* GEMM for the blocks of 1024 rows */
  }
}

/* ---------------------------------------------------------------------------
 * Device memory limit and out of memory
 * ------------------------------------------------------------------------- */
static void test_device_oom(void **state) {
  const char *path = (const char *)*state;
  mn_backend_opts o;
  mn_backend_opts_init(&o);
  o.device_mem_limit = (uint64_t)4 << 20;
  mn_backend *small = NULL;
  CHECK_OK(mn_backend_open_plugin(path, &o, &small));
  void *p = NULL;
  assert_int_equal(mn_backend_alloc(small, (size_t)64 << 20, &p),
                   MN_ERR_DEVICE_OOM);
  assert_non_null(strstr(mn_errmsg(), "memory_limit"));
  uint64_t fr = 0, tot = 0;
  CHECK_OK(mn_backend_memory_info(small, &fr, &tot));
  assert_true(tot == ((uint64_t)4 << 20) && fr <= tot);

  /* a job whose working memory does not fit: PCA on 512-wide rows needs a
   * 2 MiB covariance in double plus a chunk of centred rows */
  int64_t n = 600, d = 512;
  float *x = rand_matrix(n, d, 1.f);
  mn_tensor hx = host_f32(x, n, d);
  mn_tensor dx = to_dev(small, &hx, 0);
  mn_pca_model *mg = NULL;
  mn_status s = mn_backend_pca_fit(small, &dx, 8, &mg);
  assert_int_equal(s, MN_ERR_DEVICE_OOM);
  assert_null(mg);
  assert_true(strlen(mn_errmsg()) > 0);

  /* and the backend goes on serving what fits */
  mn_tensor dy = dev_out(small, MN_DTYPE_F32, 16, d, 0);
  mn_tensor dsub = dx;
  dsub.rows = 16;
  int64_t z = -1;
  CHECK_OK(mn_backend_normalize(small, &dsub, &dy, &z));
  assert_int_equal(z, 0);
  mn_tensor gy = to_host(small, &dy);
  double ss = 0.0;
  for (int64_t c = 0; c < d; c++)
    ss += (double)((float *)gy.data)[c] * ((float *)gy.data)[c];
  assert_true(fabs(ss - 1.0) < 1e-5);
  free(gy.data);
  mn_backend_free(small, dy.data);
  mn_backend_free(small, dx.data);
  mn_backend_close(small);
  free(x);
}

/* ---------------------------------------------------------------------------
 * Several threads at once: every result must equal the single-threaded one
 * bit for bit (the kernels are deterministic).
 * ------------------------------------------------------------------------- */
typedef struct job {
  const float *x;
  const stored *db;
  const float *q;
  const float *want_norm;
  const float *want_scores;
  const int64_t *want_ids;
  const int8_t *want_codes;
  int bad;
} job;

enum { J_ROWS = 256, J_COLS = 384, J_Q = 3, J_K = 10, J_ITERS = 8 };

/* No cmocka asserts here: it runs on worker threads too. */
static int run_job(const job *jb, float *norm, float *scores, int64_t *ids,
                   int8_t *codes) {
  const size_t xb = (size_t)J_ROWS * J_COLS * 4, cb = (size_t)J_ROWS * J_COLS;
  const size_t qb = (size_t)J_Q * (size_t)jb->db->d * 4;
  void *x = NULL, *y = NULL, *c = NULL, *q = NULL;
  float sc[J_ROWS];
  int rc = -1;
  if (mn_backend_alloc(gpu, xb, &x) || mn_backend_alloc(gpu, xb, &y) ||
      mn_backend_alloc(gpu, cb, &c) || mn_backend_alloc(gpu, qb, &q) ||
      mn_backend_upload(gpu, x, jb->x, xb) ||
      mn_backend_upload(gpu, q, jb->q, qb))
    goto out;
  mn_tensor dx = {x, MN_DTYPE_F32, J_ROWS, J_COLS, J_COLS * 4, MN_DEVICE_GPU};
  mn_tensor dy = dx;
  dy.data = y;
  mn_tensor dc = {c, MN_DTYPE_I8, J_ROWS, J_COLS, J_COLS, MN_DEVICE_GPU};
  mn_tensor dq = {q,         MN_DTYPE_F32,  J_Q,
                  jb->db->d, jb->db->d * 4, MN_DEVICE_GPU};
  mn_vecblock vb = block_for(jb->db, 1, 0);
  if (mn_backend_normalize(gpu, &dx, &dy, NULL) ||
      mn_backend_download(gpu, norm, y, xb) ||
      mn_backend_quantize(gpu, &dy, MN_QUANT_INT8, NULL, &dc, sc) ||
      mn_backend_download(gpu, codes, c, cb) ||
      mn_backend_search(gpu, &dq, &vb, MN_METRIC_COSINE, J_K, 0, scores, ids))
    goto out;
  rc = 0;
out:
  mn_backend_free(gpu, q);
  mn_backend_free(gpu, c);
  mn_backend_free(gpu, y);
  mn_backend_free(gpu, x);
  return rc;
}

static void *job_thread(void *arg) {
  job *jb = arg;
  float *norm = malloc((size_t)J_ROWS * J_COLS * 4);
  int8_t *codes = malloc((size_t)J_ROWS * J_COLS);
  float scores[J_Q * J_K];
  int64_t ids[J_Q * J_K];
  if (!norm || !codes)
    jb->bad = J_ITERS;
  for (int it = 0; it < J_ITERS && norm && codes; it++) {
    if (run_job(jb, norm, scores, ids, codes) != 0 ||
        memcmp(norm, jb->want_norm, (size_t)J_ROWS * J_COLS * 4) ||
        memcmp(codes, jb->want_codes, (size_t)J_ROWS * J_COLS) ||
        memcmp(scores, jb->want_scores, sizeof scores) ||
        memcmp(ids, jb->want_ids, sizeof ids))
      jb->bad++;
  }
  free(norm);
  free(codes);
  return NULL;
}

static void test_concurrency(void **state) {
  (void)state;
  enum { T = 8 };
  stored db = make_stored(MN_DTYPE_F16, 5000, 128, 0, 0);
  job jobs[T];
  float *xs[T], *qs[T], *norms[T], *scores[T];
  int64_t *ids[T];
  int8_t *codes[T];
  for (int t = 0; t < T; t++) {
    xs[t] = rand_matrix(J_ROWS, J_COLS, 1.f);
    qs[t] = rand_matrix(J_Q, db.d, 1.f);
    norms[t] = malloc((size_t)J_ROWS * J_COLS * 4);
    codes[t] = malloc((size_t)J_ROWS * J_COLS);
    scores[t] = malloc(J_Q * J_K * 4);
    ids[t] = malloc(J_Q * J_K * 8);
    jobs[t] =
        (job){xs[t], &db, qs[t], norms[t], scores[t], ids[t], codes[t], 0};
    if (run_job(&jobs[t], norms[t], scores[t], ids[t], codes[t]) != 0)
      fail_msg("serial run %d: %s", t, mn_errmsg());
  }
  pthread_t th[T];
  for (int t = 0; t < T; t++)
    assert_int_equal(pthread_create(&th[t], NULL, job_thread, &jobs[t]), 0);
  for (int t = 0; t < T; t++)
    pthread_join(th[t], NULL);
  for (int t = 0; t < T; t++) {
    if (jobs[t].bad)
      fail_msg("thread %d: %d of %d runs differed from the serial run", t,
               jobs[t].bad, J_ITERS);
    free(xs[t]);
    free(qs[t]);
    free(norms[t]);
    free(codes[t]);
    free(scores[t]);
    free(ids[t]);
  }
  free_stored(&db);
}

/* ---------------------------------------------------------------------------
 * Entry: find the plugin, skip without a device.
 * ------------------------------------------------------------------------- */
int main(void) {
  static char path[4096];
  int built = 0;
#ifdef MNEMO_CUDA_PLUGIN
  snprintf(path, sizeof path, "%s", MNEMO_CUDA_PLUGIN);
  built = 1;
#else
  const char *bd = getenv("MNEMO_BUILD_DIR");
  snprintf(path, sizeof path, "%s/bin/libmnemo-cuda.so", bd ? bd : ".");
#endif
  /* another build of the plugin (the host emulator, say) */
  const char *override = getenv("MNEMO_TEST_CUDA_PLUGIN");
  if (override && *override) {
    snprintf(path, sizeof path, "%s", override);
    built = 1;
  }
  if (access(path, R_OK) != 0) {
    if (built) {
      printf("the CUDA plugin was built but %s is missing\n", path);
      return 1;
    }
    printf("skipped: this build has no CUDA plugin (%s)\n", path);
    return 77;
  }
  mn_backend_opts o;
  mn_backend_opts_init(&o);
  mn_status s = mn_backend_open_plugin(path, &o, &gpu);
  if (s == MN_ERR_UNSUPPORTED) {
    printf("skipped: no usable CUDA device: %s\n", mn_errmsg());
    return 77;
  }
  if (s != MN_OK) {
    printf("cannot open %s: %s: %s\n", path, mn_status_name(s), mn_errmsg());
    return 1;
  }
  if (mn_backend_open_cpu(&o, &cpu) != MN_OK) {
    printf("cannot open the CPU backend: %s\n", mn_errmsg());
    return 1;
  }
  printf("device: %s\n", mn_backend_device(gpu));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_device_and_memory),
      cmocka_unit_test(test_misaligned_rows),
      cmocka_unit_test(test_normalize),
      cmocka_unit_test(test_quantize),
      cmocka_unit_test(test_pca),
      cmocka_unit_test_prestate(test_pca_f16_backend, path),
      cmocka_unit_test(test_similarity),
      cmocka_unit_test(test_search),
      cmocka_unit_test_prestate_setup_teardown(test_search_f16_tiles, NULL,
                                               restore_gpu, path),
      cmocka_unit_test_prestate(test_device_oom, path),
      cmocka_unit_test(test_concurrency),
      /* last, so that the tests above draw the same random data as before
       * them (test_search_f16_tiles' near-tie check is sensitive to it) */
      cmocka_unit_test(test_many_array_places),
      cmocka_unit_test(test_int8_widths),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  mn_backend_close(cpu);
  mn_backend_close(gpu);
  return rc;
}
