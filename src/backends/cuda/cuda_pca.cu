/*
 * cuda_pca.cu - PCA fit and transform on the device.
 *
 * Fit: column means in double; the covariance of the centred rows in double
 * (rows converted a chunk at a time, cublasDsyrk accumulating the lower
 * triangle); eigenpairs from cuSOLVER (syevdx for the top k when k <= d/2,
 * syevd otherwise) in double, so components and variances match a double
 * fit. When the backend was opened with precision_f16 the eigensolver runs
 * in float32 instead (faster) and each eigenvalue is re-estimated as the
 * Rayleigh quotient v'Cv / v'v against the double covariance (cublasDsymm):
 * that is the data's variance along the component, accurate to second
 * order in the float eigenvector's error, so the explained variance still
 * matches a double fit to 1e-4 unless the spectrum spans many decades. On
 * the host the components are ordered by variance, largest first, and each
 * is given the CPU backend's sign: its largest-|value| entry (the first
 * such) is positive.
 *
 * Transform: rows centred a chunk at a time (the chunk stays in L2), then
 * one GEMM per chunk against the components, which are pre-divided by
 * sqrt(explained variance) when whitening. float32 products unless the
 * backend was opened with precision_f16, which allows TF32.
 */
#include "cuda_internal.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

namespace {

__global__ void col_sum_kernel(const char *x, int64_t xs, int64_t rows,
                               int cols, int64_t rps, double *part) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols)
    return;
  int64_t r0 = (int64_t)blockIdx.y * rps;
  int64_t r1 = r0 + rps < rows ? r0 + rps : rows;
  double s = 0.0;
  for (int64_t r = r0; r < r1; r++)
    s += (double)((const float *)(x + r * xs))[c];
  part[(int64_t)blockIdx.y * cols + c] = s;
}

__global__ void col_mean_final(const double *part, int splits, int cols,
                               double n, double *mean) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols)
    return;
  double s = 0.0;
  for (int i = 0; i < splits; i++)
    s += part[(int64_t)i * cols + c];
  mean[c] = s / n;
}

/* out[i][c] = x[r0 + i][c] - mean[c], packed rows of d doubles. */
__global__ void center_double_kernel(const char *x, int64_t xs, int64_t r0,
                                     int64_t len, int d, const double *mean,
                                     double *out) {
  int64_t total = len * d;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (int64_t)gridDim.x * blockDim.x) {
    int64_t i = t / d;
    int c = (int)(t - i * d);
    out[t] = (double)((const float *)(x + (r0 + i) * xs))[c] - mean[c];
  }
}

/* Same in float32 for the transform. */
__global__ void center_float_kernel(const char *x, int64_t xs, int64_t r0,
                                    int64_t len, int d, const float *mean,
                                    float *out) {
  int64_t total = len * d;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (int64_t)gridDim.x * blockDim.x) {
    int64_t i = t / d;
    int c = (int)(t - i * d);
    out[t] = ((const float *)(x + (r0 + i) * xs))[c] - mean[c];
  }
}

__device__ double block_sum_double(double v, double *sh) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0)
    sh[w] = v;
  __syncthreads();
  double t = 0.0;
  for (int i = 0; i < (int)(blockDim.x >> 5); i++)
    t += sh[i];
  return t;
}

/* One block: the trace of the (lower) covariance. */
__global__ void trace_kernel(const double *c, int d, double *out) {
  __shared__ double sh[32];
  double s = 0.0;
  for (int i = threadIdx.x; i < d; i += blockDim.x)
    s += c[(int64_t)i * d + i];
  s = block_sum_double(s, sh);
  if (threadIdx.x == 0)
    *out = s;
}

/* Full symmetric float copy of a lower-triangular column-major double. */
__global__ void sym_to_float_kernel(const double *cd, int d, float *cf) {
  int64_t total = (int64_t)d * d;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (int64_t)gridDim.x * blockDim.x) {
    int j = (int)(t / d), i = (int)(t - (int64_t)j * d); /* row i, col j */
    double v = i >= j ? cd[(int64_t)j * d + i] : cd[(int64_t)i * d + j];
    cf[t] = (float)v;
  }
}

/* V[:, t] = (double) eigenvector column (last - t) of the solver output. */
__global__ void take_vectors_kernel(const float *a, int d, int k, int last,
                                    double *v) {
  int64_t total = (int64_t)d * k;
  for (int64_t u = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; u < total;
       u += (int64_t)gridDim.x * blockDim.x) {
    int t = (int)(u / d), i = (int)(u - (int64_t)t * d);
    v[u] = (double)a[(int64_t)(last - t) * d + i];
  }
}

/* lam[t] = v_t' w_t / v_t' v_t, one block per component. */
__global__ void rayleigh_kernel(const double *v, const double *w, int d,
                                double *lam) {
  __shared__ double sh[32];
  const double *vt = v + (int64_t)blockIdx.x * d;
  const double *wt = w + (int64_t)blockIdx.x * d;
  double num = 0.0, den = 0.0;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    num += vt[i] * wt[i];
    den += vt[i] * vt[i];
  }
  num = block_sum_double(num, sh);
  den = block_sum_double(den, sh);
  if (threadIdx.x == 0)
    lam[blockIdx.x] = den > 0.0 ? num / den : 0.0;
}

/* Order of components: larger variance first, solver order on ties. */
struct order_item {
  double lam;
  int src;
};

int order_cmp(const void *pa, const void *pb) {
  const order_item *a = (const order_item *)pa, *b = (const order_item *)pb;
  if (a->lam != b->lam)
    return a->lam > b->lam ? -1 : 1;
  return a->src - b->src;
}

} // namespace

mn_status mn__cuda_pca_fit(mn_backend *b, const mn_tensor *x, int64_t k64,
                           mn_pca_model *out) {
  mnc_backend *cb = mnc_of(b);
  MNC_CHECK(mn__cuda_check_layout(x, "PCA input"));
  if (x->cols > 46340) /* d*d must fit the solver's int sizes */
    return MNC_ERR(MN_ERR_INVALID,
                   "PCA on %lld-wide vectors is too large for the CUDA "
                   "eigensolver (at most 46340)",
                   (long long)x->cols);
  const int d = (int)x->cols, k = (int)k64;
  const int64_t n = x->rows;
  MncLane lane;
  MNC_CHECK(lane.get(cb));
  cudaStream_t s = lane.s();
  cusolverDnHandle_t solver;
  MNC_CHECK(mn__cuda_lane_solver(lane.l, &solver));

  /* 1. mean in double */
  const int cblocks = (d + 255) / 256;
  int64_t splits = (n + 63) / 64, want = (int64_t)cb->sm_count * 8 / cblocks;
  if (want < 1)
    want = 1;
  if (splits > want)
    splits = want;
  if (splits > 65535)
    splits = 65535;
  int64_t rps = (n + splits - 1) / splits;
  splits = (n + rps - 1) / rps;
  MncBuf part, mean, cov, total;
  MNC_CHECK(part.alloc(cb, lane.l, (size_t)splits * d * sizeof(double)));
  MNC_CHECK(mean.alloc(cb, lane.l, (size_t)d * sizeof(double)));
  MNC_CHECK(cov.alloc(cb, lane.l, (size_t)d * d * sizeof(double)));
  MNC_CHECK(total.alloc(cb, lane.l, sizeof(double)));
  col_sum_kernel<<<dim3(cblocks, (unsigned)splits), 256, 0, s>>>(
      (const char *)x->data, x->stride, n, d, rps, part.as<double>());
  MNC_LAUNCHED("col_sum_kernel");
  col_mean_final<<<cblocks, 256, 0, s>>>(part.as<double>(), (int)splits, d,
                                         (double)n, mean.as<double>());
  MNC_LAUNCHED("col_mean_final");
  part.release();

  /* 2. covariance (lower triangle) = sum over chunks of Xc' Xc / (n-1) */
  int64_t chunk = ((int64_t)64 << 20) / ((int64_t)d * 8);
  if (chunk < 1)
    chunk = 1;
  if (chunk > n)
    chunk = n;
  MncBuf xc;
  MNC_CHECK(xc.alloc(cb, lane.l, (size_t)chunk * d * sizeof(double)));
  const double alpha = 1.0 / (double)(n - 1);
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    int64_t len = n - r0 < chunk ? n - r0 : chunk;
    unsigned g = mnc_grid(cb, (len * d + 255) / 256, 16);
    center_double_kernel<<<g, 256, 0, s>>>((const char *)x->data, x->stride, r0,
                                           len, d, mean.as<double>(),
                                           xc.as<double>());
    MNC_LAUNCHED("center_double_kernel");
    const double beta = r0 == 0 ? 0.0 : 1.0;
    /* column-major view of the packed chunk: d x len, so A A' = Xc' Xc */
    MNC_TRY(cublasDsyrk(lane.l->blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, d,
                        (int)len, &alpha, xc.as<double>(), d, &beta,
                        cov.as<double>(), d));
  }
  xc.release();
  trace_kernel<<<1, 256, 0, s>>>(cov.as<double>(), d, total.as<double>());
  MNC_LAUNCHED("trace_kernel");

  /* 3. eigenpairs: top k when k <= d/2 (syevdx), else all (syevd) */
  const bool partial = cb->eig_mode >= 0 ? cb->eig_mode == 1 : 2 * k <= d;
  int lwork = 0, meig = 0, last = 0, h_info = 0;
  MncBuf info, work, lam, vecs;
  MNC_CHECK(info.alloc(cb, lane.l, sizeof(int)));
  MNC_CHECK(lam.alloc(cb, lane.l, (size_t)d * sizeof(double)));
  const bool dbl = !cb->allow_f16;
  if (dbl) {
    /* double: the solver works on the covariance in place */
    double *a = cov.as<double>(), *w = lam.as<double>();
    if (partial)
      MNC_TRY(cusolverDnDsyevdx_bufferSize(
          solver, CUSOLVER_EIG_MODE_VECTOR, CUSOLVER_EIG_RANGE_I,
          CUBLAS_FILL_MODE_LOWER, d, a, d, 0.0, 0.0, d - k + 1, d, &meig, w,
          &lwork));
    else
      MNC_TRY(cusolverDnDsyevd_bufferSize(solver, CUSOLVER_EIG_MODE_VECTOR,
                                          CUBLAS_FILL_MODE_LOWER, d, a, d, w,
                                          &lwork));
    MNC_CHECK(work.alloc(cb, lane.l,
                         (size_t)(lwork > 0 ? lwork : 1) * sizeof(double)));
    if (partial)
      MNC_TRY(cusolverDnDsyevdx(solver, CUSOLVER_EIG_MODE_VECTOR,
                                CUSOLVER_EIG_RANGE_I, CUBLAS_FILL_MODE_LOWER, d,
                                a, d, 0.0, 0.0, d - k + 1, d, &meig, w,
                                work.as<double>(), lwork, info.as<int>()));
    else
      MNC_TRY(cusolverDnDsyevd(solver, CUSOLVER_EIG_MODE_VECTOR,
                               CUBLAS_FILL_MODE_LOWER, d, a, d, w,
                               work.as<double>(), lwork, info.as<int>()));
  } else {
    /* float32 solver (precision_f16 allows it), eigenvalues refined below */
    MNC_CHECK(vecs.alloc(cb, lane.l, (size_t)d * d * sizeof(float)));
    MncBuf wf;
    MNC_CHECK(wf.alloc(cb, lane.l, (size_t)d * sizeof(float)));
    float *a = vecs.as<float>(), *w = wf.as<float>();
    unsigned g = mnc_grid(cb, ((int64_t)d * d + 255) / 256, 16);
    sym_to_float_kernel<<<g, 256, 0, s>>>(cov.as<double>(), d, a);
    MNC_LAUNCHED("sym_to_float_kernel");
    if (partial)
      MNC_TRY(cusolverDnSsyevdx_bufferSize(
          solver, CUSOLVER_EIG_MODE_VECTOR, CUSOLVER_EIG_RANGE_I,
          CUBLAS_FILL_MODE_LOWER, d, a, d, 0.f, 0.f, d - k + 1, d, &meig, w,
          &lwork));
    else
      MNC_TRY(cusolverDnSsyevd_bufferSize(solver, CUSOLVER_EIG_MODE_VECTOR,
                                          CUBLAS_FILL_MODE_LOWER, d, a, d, w,
                                          &lwork));
    MNC_CHECK(work.alloc(cb, lane.l,
                         (size_t)(lwork > 0 ? lwork : 1) * sizeof(float)));
    if (partial)
      MNC_TRY(cusolverDnSsyevdx(solver, CUSOLVER_EIG_MODE_VECTOR,
                                CUSOLVER_EIG_RANGE_I, CUBLAS_FILL_MODE_LOWER, d,
                                a, d, 0.f, 0.f, d - k + 1, d, &meig, w,
                                work.as<float>(), lwork, info.as<int>()));
    else
      MNC_TRY(cusolverDnSsyevd(solver, CUSOLVER_EIG_MODE_VECTOR,
                               CUBLAS_FILL_MODE_LOWER, d, a, d, w,
                               work.as<float>(), lwork, info.as<int>()));
  }
  if (!partial)
    meig = k;
  /* the k wanted eigenpairs, ascending, end at column / entry `last` */
  last = partial ? k - 1 : d - 1;
  MNC_CHECK(mn__cuda_d2h(lane.l, &h_info, info.p, sizeof h_info));
  if (h_info != 0 || meig != k)
    return MNC_ERR(MN_ERR_NUMERIC,
                   "the CUDA eigensolver failed on the %dx%d covariance "
                   "(info %d, %d of %d eigenpairs)",
                   d, d, h_info, meig, k);
  work.release();

  MncBuf rq;
  if (!dbl) {
    /* 4. Rayleigh quotients of the float vectors against the double
     * covariance (cov still holds it: the float solver had a copy) */
    MncBuf vd, wd;
    MNC_CHECK(vd.alloc(cb, lane.l, (size_t)d * k * sizeof(double)));
    MNC_CHECK(wd.alloc(cb, lane.l, (size_t)d * k * sizeof(double)));
    MNC_CHECK(rq.alloc(cb, lane.l, (size_t)k * sizeof(double)));
    unsigned g = mnc_grid(cb, ((int64_t)d * k + 255) / 256, 16);
    take_vectors_kernel<<<g, 256, 0, s>>>(vecs.as<float>(), d, k, last,
                                          vd.as<double>());
    MNC_LAUNCHED("take_vectors_kernel");
    const double one = 1.0, zero = 0.0;
    MNC_TRY(cublasDsymm(lane.l->blas, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER,
                        d, k, &one, cov.as<double>(), d, vd.as<double>(), d,
                        &zero, wd.as<double>(), d));
    rayleigh_kernel<<<k, 256, 0, s>>>(vd.as<double>(), wd.as<double>(), d,
                                      rq.as<double>());
    MNC_LAUNCHED("rayleigh_kernel");
  }

  /* 5. results to the host; component t (largest first from the solver)
   * is column (last - t), i.e. row (k - 1 - t) of the block of k columns */
  const size_t comp_n = (size_t)k * d;
  const size_t esz = dbl ? sizeof(double) : sizeof(float);
  void *comp = malloc(comp_n * esz);
  double *hlam = (double *)malloc((size_t)d * sizeof(double));
  double *hmean = (double *)malloc((size_t)d * sizeof(double));
  order_item *ord = (order_item *)malloc((size_t)k * sizeof(order_item));
  float *v = (float *)malloc((size_t)d * sizeof(float));
  double htotal = 0.0;
  mn_status st = MN_OK;
  if (!comp || !hlam || !hmean || !ord || !v)
    st = MNC_ERR(MN_ERR_NOMEM, "out of host memory for PCA results");
  const char *colbase = dbl ? (const char *)cov.p : (const char *)vecs.p;
  if (st == MN_OK)
    st = mn__cuda_d2h(lane.l, comp, colbase + (size_t)(last - k + 1) * d * esz,
                      comp_n * esz);
  if (st == MN_OK) {
    if (dbl) {
      double *w = (double *)malloc((size_t)d * sizeof(double));
      st = w ? mn__cuda_d2h(lane.l, w, lam.p, (size_t)(last + 1) * 8)
             : MNC_ERR(MN_ERR_NOMEM, "out of host memory for PCA results");
      if (st == MN_OK)
        for (int t = 0; t < k; t++)
          hlam[t] = w[last - t];
      free(w);
    } else {
      st = mn__cuda_d2h(lane.l, hlam, rq.p, (size_t)k * sizeof(double));
    }
  }
  if (st == MN_OK)
    st = mn__cuda_d2h(lane.l, hmean, mean.p, (size_t)d * sizeof(double));
  if (st == MN_OK)
    st = mn__cuda_d2h(lane.l, &htotal, total.p, sizeof htotal);
  if (st == MN_OK) {
    for (int t = 0; t < k; t++) {
      ord[t].lam = hlam[t];
      ord[t].src = t;
    }
    qsort(ord, (size_t)k, sizeof *ord, order_cmp);
    for (int c = 0; c < d; c++)
      out->mean[c] = (float)hmean[c];
    for (int t = 0; t < k; t++) {
      size_t row = (size_t)(k - 1 - ord[t].src) * d;
      for (int i = 0; i < d; i++)
        v[i] = dbl ? (float)((const double *)comp)[row + i]
                   : ((const float *)comp)[row + i];
      int arg = 0;
      float best = -1.f;
      for (int i = 0; i < d; i++)
        if (fabsf(v[i]) > best) {
          best = fabsf(v[i]);
          arg = i;
        }
      float sign = v[arg] < 0.f ? -1.f : 1.f;
      float *dst = out->components + (size_t)t * d;
      for (int i = 0; i < d; i++)
        dst[i] = sign * v[i];
      double lv = ord[t].lam > 0.0 ? ord[t].lam : 0.0;
      out->explained_variance[t] = (float)lv;
      out->explained_variance_ratio[t] =
          htotal > 0.0 ? (float)(lv / htotal) : 0.f;
    }
    out->total_variance = htotal;
    out->n_samples = n;
  }
  free(comp);
  free(hlam);
  free(hmean);
  free(ord);
  free(v);
  return st;
}

mn_status mn__cuda_pca_transform(mn_backend *b, const mn_tensor *x,
                                 const mn_pca_model *m, int whiten,
                                 mn_tensor *y) {
  mnc_backend *cb = mnc_of(b);
  MNC_CHECK(mn__cuda_check_layout(x, "input"));
  MNC_CHECK(mn__cuda_check_layout(y, "output"));
  if (x->rows == 0)
    return MN_OK;
  if (x->cols > 1 << 24)
    return MNC_ERR(MN_ERR_INVALID, "PCA input is too wide");
  const int d = (int)x->cols, k = (int)m->n_components;
  const int64_t n = x->rows;
  const int64_t ldy64 = n > 1 ? y->stride / 4 : k;
  if (ldy64 > 0x7fffffff)
    return MNC_ERR(MN_ERR_INVALID, "PCA output stride is too large");
  const int ldy = (int)ldy64;
  MncLane lane;
  MNC_CHECK(lane.get(cb));
  cudaStream_t s = lane.s();

  MncBuf comp, mean, xc;
  MNC_CHECK(comp.alloc(cb, lane.l, (size_t)k * d * sizeof(float)));
  MNC_CHECK(mean.alloc(cb, lane.l, (size_t)d * sizeof(float)));
  if (whiten) {
    float *w = (float *)malloc((size_t)k * d * sizeof(float));
    if (!w)
      return MNC_ERR(MN_ERR_NOMEM, "out of host memory for whitening");
    for (int t = 0; t < k; t++) {
      float ev = m->explained_variance[t];
      float f = ev > 0.f ? (float)(1.0 / sqrt((double)ev)) : 0.f;
      for (int i = 0; i < d; i++)
        w[(size_t)t * d + i] = m->components[(size_t)t * d + i] * f;
    }
    mn_status st = mn__cuda_h2d(lane.l, comp.p, w, (size_t)k * d * 4);
    free(w);
    MNC_CHECK(st);
  } else {
    MNC_CHECK(mn__cuda_h2d(lane.l, comp.p, m->components,
                           (size_t)k * d * sizeof(float)));
  }
  MNC_CHECK(mn__cuda_h2d(lane.l, mean.p, m->mean, (size_t)d * sizeof(float)));

  int64_t chunk = ((int64_t)16 << 20) / ((int64_t)d * 4);
  if (chunk < 256)
    chunk = 256;
  if (chunk > n)
    chunk = n;
  MNC_CHECK(xc.alloc(cb, lane.l, (size_t)chunk * d * sizeof(float)));
  const float one = 1.f, zero = 0.f;
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    int64_t len = n - r0 < chunk ? n - r0 : chunk;
    unsigned g = mnc_grid(cb, (len * d + 255) / 256, 16);
    center_float_kernel<<<g, 256, 0, s>>>((const char *)x->data, x->stride, r0,
                                          len, d, mean.as<float>(),
                                          xc.as<float>());
    MNC_LAUNCHED("center_float_kernel");
    float *yc = (float *)((char *)y->data + r0 * y->stride);
    /* column-major: Y' (k x len) = comp' (d x k)^T * Xc' (d x len) */
    if (cb->allow_f16) {
      MNC_TRY(cublasGemmEx(lane.l->blas, CUBLAS_OP_T, CUBLAS_OP_N, k, (int)len,
                           d, &one, comp.p, CUDA_R_32F, d, xc.p, CUDA_R_32F, d,
                           &zero, yc, CUDA_R_32F, ldy,
                           CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
    } else {
      MNC_TRY(cublasSgemm(lane.l->blas, CUBLAS_OP_T, CUBLAS_OP_N, k, (int)len,
                          d, &one, comp.as<float>(), d, xc.as<float>(), d,
                          &zero, yc, ldy));
    }
  }
  MNC_TRY(cudaStreamSynchronize(s));
  return MN_OK;
}
