/*
 * bench_gpu.cu - the CUDA plugin's benchmark: the ops of issue 4's targets
 * at their sizes, on fresh random data generated on the device, each
 * checked on a sample against a double-precision host computation before
 * it is timed. Prints one JSON object per line (and to --out FILE).
 *
 *   bench_gpu [--plugin PATH] [--out FILE] [--quick | --tiny]
 *
 * --quick: smaller sizes (a minute less on the device); --tiny: toy sizes,
 * for running the bench itself under the host emulator (tests/backends/
 * cuda/emu), where only the checks mean anything.
 *
 * It loads libmnemo-cuda.so itself with a small host of its own (log,
 * error text, accounting, a plain top-k), so it needs neither libmnemo nor
 * the core's dependencies: the device script can build it with nvcc alone.
 *
 * Timing: the plugin's ops are synchronous (each waits for its stream), so
 * an op is timed by the host clock around the call: median of `reps`
 * after warm-up, launch and synchronisation included. The device-to-device
 * copy ceiling is timed both ways (CUDA events on the bench's stream, and
 * the host clock around copy + synchronise).
 */
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <vector>

extern "C" {
#include "compute/backend_impl.h"
}

/* ---------------------------------------------------------------------------
 * The host lent to the plugin
 * ------------------------------------------------------------------------- */
static thread_local char g_err[1024];

static void h_log(mn_log_level level, const char *module, const char *fmt,
                  ...) {
  if (level < MN_LOG_WARN)
    return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[%s] ", module);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static mn_status h_set_error(mn_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err, sizeof g_err, fmt, ap);
  va_end(ap);
  return s;
}

static void h_account(mn_tier t, int64_t bytes) {
  (void)t;
  (void)bytes;
}

static mn_status h_topk(const mn_tensor *s, int64_t k, int largest, float *os,
                        int64_t *oi) {
  for (int64_t r = 0; r < s->rows; r++) {
    const float *row = (const float *)((const char *)s->data + r * s->stride);
    std::vector<int64_t> idx((size_t)s->cols);
    for (int64_t c = 0; c < s->cols; c++)
      idx[(size_t)c] = c;
    int64_t m = std::min(k, s->cols);
    std::partial_sort(idx.begin(), idx.begin() + m, idx.end(),
                      [&](int64_t a, int64_t b) {
                        if (row[a] != row[b])
                          return largest ? row[a] > row[b] : row[a] < row[b];
                        return a < b;
                      });
    for (int64_t i = 0; i < k; i++) {
      os[r * k + i] =
          i < m ? row[idx[(size_t)i]] : (largest ? -INFINITY : INFINITY);
      oi[r * k + i] = i < m ? idx[(size_t)i] : -1;
    }
  }
  return MN_OK;
}

static const mn_backend_host g_host = {MN_BACKEND_API_VERSION, h_log,
                                       h_set_error, h_account, h_topk};

/* ---------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------- */
static FILE *g_out;
static int g_fail;

#define CU(call)                                                               \
  do {                                                                         \
    cudaError_t e_ = (call);                                                   \
    if (e_ != cudaSuccess) {                                                   \
      fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call,             \
              cudaGetErrorString(e_));                                         \
      exit(2);                                                                 \
    }                                                                          \
  } while (0)

#define MN(call)                                                               \
  do {                                                                         \
    mn_status s_ = (call);                                                     \
    if (s_ != MN_OK) {                                                         \
      fprintf(stderr, "%s:%d %s: status %d: %s\n", __FILE__, __LINE__, #call,  \
              (int)s_, g_err);                                                 \
      exit(2);                                                                 \
    }                                                                          \
  } while (0)

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

template <class F> static double median_ms(int warm, int reps, F &&fn) {
  for (int i = 0; i < warm; i++)
    fn();
  std::vector<double> t;
  for (int i = 0; i < reps; i++) {
    double a = now_ms();
    fn();
    t.push_back(now_ms() - a);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

static void emit(const char *op, double ms, double bytes, double flops,
                 const char *extra) {
  char line[512];
  int n = snprintf(line, sizeof line, "{\"op\": \"%s\", \"ms\": %.5f", op, ms);
  if (bytes > 0)
    n += snprintf(line + n, sizeof line - n, ", \"GB/s\": %.1f",
                  bytes / ms / 1e6);
  if (flops > 0)
    n += snprintf(line + n, sizeof line - n, ", \"TFLOP/s\": %.2f",
                  flops / ms / 1e9);
  if (extra && *extra)
    n += snprintf(line + n, sizeof line - n, ", %s", extra);
  snprintf(line + n, sizeof line - n, "}");
  printf("%s\n", line);
  fflush(stdout);
  if (g_out) {
    fprintf(g_out, "%s\n", line);
    fflush(g_out);
  }
}

static void check(bool ok, const char *what, double got, double want) {
  if (!ok) {
    fprintf(stderr, "CHECK FAILED: %s: got %.9g, want %.9g\n", what, got, want);
    g_fail++;
  }
}

/* splitmix64 of (seed, i) -> uniform in (0, 1) */
__device__ __forceinline__ double u01(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + i * 0xD1B54A32D192ED03ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return ((double)(z >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

__device__ __forceinline__ float normal(uint64_t seed, uint64_t i) {
  double a = u01(seed, 2 * i), b = u01(seed, 2 * i + 1);
  return (float)(sqrt(-2.0 * log(a)) * cospi(2.0 * b));
}

__global__ void fill_f32(float *x, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    x[i] = scale * normal(seed, i);
}

__global__ void fill_f16(__half *x, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    x[i] = __float2half_rn(scale * normal(seed, i));
}

__global__ void fill_i8(int8_t *x, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    x[i] = (int8_t)((int)(u01(seed, i) * 255.0) - 127);
}

__global__ void fill_pos(float *x, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    x[i] = (float)(0.5 + u01(seed, i)) / 127.0f;
}

static void *dev(size_t bytes) {
  void *p = nullptr;
  CU(cudaMalloc(&p, bytes));
  return p;
}

static mn_tensor dtensor(void *p, mn_dtype dt, int64_t rows, int64_t cols,
                         size_t elem) {
  mn_tensor t = {p, dt, rows, cols, (int64_t)(cols * elem), MN_DEVICE_GPU};
  return t;
}

template <class T>
static std::vector<T> fetch(const void *p, size_t n, size_t off = 0) {
  std::vector<T> v(n);
  CU(cudaMemcpy(v.data(), (const T *)p + off, n * sizeof(T),
                cudaMemcpyDeviceToHost));
  return v;
}

/* ---------------------------------------------------------------------------
 * Benchmarks
 * ------------------------------------------------------------------------- */
int main(int argc, char **argv) {
  const char *plugin = "./bin/libmnemo-cuda.so";
  const char *out = nullptr;
  bool quick = false, tiny = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--plugin") && i + 1 < argc)
      plugin = argv[++i];
    else if (!strcmp(argv[i], "--out") && i + 1 < argc)
      out = argv[++i];
    else if (!strcmp(argv[i], "--quick"))
      quick = true;
    else if (!strcmp(argv[i], "--tiny"))
      quick = tiny = true;
  }
  if (out)
    g_out = fopen(out, "w");
  void *h = dlopen(plugin, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "cannot load %s: %s\n", plugin, dlerror());
    return 2;
  }
  auto score = (mn_plugin_score_fn)dlsym(h, "mn_plugin_score");
  auto init = (mn_plugin_init_fn)dlsym(h, "mn_plugin_init");
  if (!score || !init || score() <= 0) {
    fprintf(stderr, "plugin %s is not usable here\n", plugin);
    return 2;
  }
  mn_backend_opts o32 = {}, o16 = {};
  o16.precision_f16 = 1;
  mn_backend *b32 = nullptr, *b16 = nullptr;
  MN(init(&o32, &g_host, &b32));
  MN(init(&o16, &g_host, &b16));
  const mn_backend_iface *I = b32->iface;
  cudaDeviceProp prop;
  CU(cudaGetDeviceProperties(&prop, 0));
  char extra[256];
  snprintf(extra, sizeof extra, "\"device\": \"%.100s\", \"sms\": %d",
           prop.name, prop.multiProcessorCount);
  emit("device", 0, 0, 0, extra);
  const int R = quick ? 5 : 20;
  const unsigned G = 4 * prop.multiProcessorCount, T = 256;
  cudaStream_t st;
  CU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  /* 1. the copy ceiling: 1 GiB device to device */
  {
    size_t n = tiny ? (size_t)1 << 20 : (size_t)1 << 30;
    void *a = dev(n), *b = dev(n);
    fill_f32<<<G, T>>>((float *)a, n / 4, 1, 1.f);
    CU(cudaDeviceSynchronize());
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    std::vector<double> ev;
    for (int i = 0; i < R + 3; i++) {
      CU(cudaEventRecord(e0, st));
      CU(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, st));
      CU(cudaEventRecord(e1, st));
      CU(cudaEventSynchronize(e1));
      float ms;
      CU(cudaEventElapsedTime(&ms, e0, e1));
      if (i >= 3)
        ev.push_back(ms);
    }
    std::sort(ev.begin(), ev.end());
    double wall = median_ms(3, R, [&] {
      CU(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, st));
      CU(cudaStreamSynchronize(st));
    });
    snprintf(extra, sizeof extra, "\"event_ms\": %.5f", ev[ev.size() / 2]);
    emit("d2d copy 1GiB", wall, 2.0 * n, 0, extra);
    CU(cudaFree(a));
    CU(cudaFree(b));
  }

  const int64_t D = 768, K = 256;
  /* 2. normalize and int8 quantize, 1M x 768 */
  {
    const int64_t rows = tiny ? 2048 : quick ? 1 << 18 : 1 << 20;
    size_t n = (size_t)(rows * D);
    float *x = (float *)dev(n * 4), *y = (float *)dev(n * 4);
    int8_t *c = (int8_t *)dev(n);
    float *sc = (float *)dev((size_t)rows * 4);
    fill_f32<<<G, T>>>(x, n, 2, 1.f);
    CU(cudaDeviceSynchronize());
    mn_tensor tx = dtensor(x, MN_DTYPE_F32, rows, D, 4);
    mn_tensor ty = dtensor(y, MN_DTYPE_F32, rows, D, 4);
    mn_tensor tc = dtensor(c, MN_DTYPE_I8, rows, D, 1);
    int64_t z = 0;
    MN(I->normalize(b32, &tx, &ty, &z));
    for (int64_t r : {(int64_t)0, rows / 2, rows - 1}) {
      auto xi = fetch<float>(x, D, r * D), yi = fetch<float>(y, D, r * D);
      double ss = 0;
      for (float v : xi)
        ss += (double)v * v;
      for (int64_t i = 0; i < D; i++)
        check(fabs(yi[i] - xi[i] / sqrt(ss)) < 1e-6, "normalize", yi[i],
              xi[i] / sqrt(ss));
    }
    double ms = median_ms(3, R, [&] { MN(I->normalize(b32, &tx, &ty, &z)); });
    char name[96];
    snprintf(name, sizeof name, "normalize %lldx%lld", (long long)rows,
             (long long)D);
    emit(name, ms, 2.0 * n * 4, 0, "");
    MN(I->quantize(b32, &tx, MN_QUANT_INT8, nullptr, &tc, sc));
    for (int64_t r : {(int64_t)1, rows - 2}) {
      auto xi = fetch<float>(x, D, r * D);
      auto ci = fetch<int8_t>(c, D, r * D);
      auto si = fetch<float>(sc, 1, r);
      double m = 0;
      for (float v : xi)
        m = fmax(m, fabs(v));
      check(fabs(si[0] - m / 127.0) <= 1e-6 * m, "int8 scale", si[0],
            m / 127.0);
      for (int64_t i = 0; i < D; i++) {
        double want = rint(xi[i] / (m / 127.0));
        check(fabs(ci[i] - want) <= 1, "int8 code", ci[i], want);
      }
    }
    ms = median_ms(3, R, [&] {
      MN(I->quantize(b32, &tx, MN_QUANT_INT8, nullptr, &tc, sc));
    });
    snprintf(name, sizeof name, "quantize_int8 %lldx%lld", (long long)rows,
             (long long)D);
    emit(name, ms, (double)n * 4 + n + rows * 4, 0, "");

    /* 3. PCA transform 1M x 768 -> 256 with a model fitted below */
    CU(cudaFree(c));
    CU(cudaFree(sc));
    /* 4. PCA fit 100000 x 768 -> 256: rows = z R * 0.05, as the peer */
    const int64_t fr = tiny ? 1000 : quick ? 20000 : 100000;
    float *zf = (float *)dev((size_t)fr * D * 4), *rm = (float *)dev(D * D * 4);
    float *xf = (float *)dev((size_t)fr * D * 4);
    fill_f32<<<G, T>>>(zf, (size_t)fr * D, 3, 1.f);
    fill_f32<<<G, T>>>(rm, (size_t)D * D, 4, 0.05f);
    cublasHandle_t hb;
    if (cublasCreate(&hb) != CUBLAS_STATUS_SUCCESS)
      return 2;
    const float one = 1.f, zero = 0.f;
    /* row-major xf = zf * rm  <=>  column-major xf' = rm' zf' */
    if (cublasSgemm(hb, CUBLAS_OP_N, CUBLAS_OP_N, (int)D, (int)fr, (int)D, &one,
                    rm, (int)D, zf, (int)D, &zero, xf,
                    (int)D) != CUBLAS_STATUS_SUCCESS)
      return 2;
    CU(cudaDeviceSynchronize());
    mn_tensor tf = dtensor(xf, MN_DTYPE_F32, fr, D, 4);
    mn_pca_model m = {};
    m.input_dim = D;
    m.n_components = K;
    std::vector<float> mean(D), comp((size_t)K * D), ev(K), evr(K);
    m.mean = mean.data();
    m.components = comp.data();
    m.explained_variance = ev.data();
    m.explained_variance_ratio = evr.data();
    for (mn_backend *b : {b32, b16}) {
      MN(I->pca_fit(b, &tf, K, &m));
      double tot = 0;
      for (int64_t t = 0; t < K; t++) {
        tot += evr[t];
        if (t)
          check(ev[t] <= ev[t - 1], "pca order", ev[t], ev[t - 1]);
      }
      check(tot > 0 && tot <= 1.0 + 1e-5, "pca ratio sum", tot, 1);
      for (int64_t a = 0; a < 3; a++) {
        double dd = 0;
        for (int64_t i = 0; i < D; i++)
          dd += (double)comp[a * D + i] * comp[(a + 1) * D + i];
        check(fabs(dd) < 1e-4, "pca orthogonal", dd, 0);
      }
      double ms2 =
          median_ms(1, quick ? 3 : 7, [&] { MN(I->pca_fit(b, &tf, K, &m)); });
      snprintf(extra, sizeof extra, "\"solver\": \"%s\"",
               b == b32 ? "float64" : "float32+rayleigh");
      snprintf(name, sizeof name, "pca_fit %lldx%lld->%lld", (long long)fr,
               (long long)D, (long long)K);
      emit(name, ms2, 0, 0, extra);
    }
    /* the other eigensolver (MNEMO_CUDA_EIG=full: syevd, all pairs), for
     * tuning the default (syevdx for the top k when k <= d/2) */
    if (!tiny) {
      setenv("MNEMO_CUDA_EIG", "full", 1);
      for (mn_backend_opts *oo : {&o32, &o16}) {
        mn_backend *bc = nullptr;
        MN(init(oo, &g_host, &bc));
        MN(I->pca_fit(bc, &tf, K, &m));
        double ms3 = median_ms(1, quick ? 3 : 7,
                               [&] { MN(I->pca_fit(bc, &tf, K, &m)); });
        snprintf(extra, sizeof extra, "\"solver\": \"%s, syevd (all)\"",
                 oo == &o32 ? "float64" : "float32+rayleigh");
        snprintf(name, sizeof name, "pca_fit %lldx%lld->%lld eig=full",
                 (long long)fr, (long long)D, (long long)K);
        emit(name, ms3, 0, 0, extra);
        I->destroy(bc);
      }
      unsetenv("MNEMO_CUDA_EIG");
    }
    CU(cudaFree(zf));
    CU(cudaFree(rm));
    CU(cudaFree(xf));
    cublasDestroy(hb);

    float *yt = (float *)dev((size_t)rows * K * 4);
    mn_tensor tyt = dtensor(yt, MN_DTYPE_F32, rows, K, 4);
    for (mn_backend *b : {b32, b16}) {
      MN(I->pca_transform(b, &tx, &m, 0, &tyt));
      auto xi = fetch<float>(x, D, 5 * D);
      auto yi = fetch<float>(yt, K, 5 * K);
      for (int64_t t = 0; t < K; t += 37) {
        double want = 0, mag = 0;
        for (int64_t i = 0; i < D; i++) {
          want += ((double)xi[i] - mean[i]) * comp[t * D + i];
          mag += fabs(((double)xi[i] - mean[i]) * comp[t * D + i]);
        }
        check(fabs(yi[t] - want) <= (b == b32 ? 1e-5 : 3e-3) * mag,
              "pca_transform", yi[t], want);
      }
      double ms2 =
          median_ms(2, R, [&] { MN(I->pca_transform(b, &tx, &m, 0, &tyt)); });
      snprintf(extra, sizeof extra, "\"precision\": \"%s\"",
               b == b32 ? "float32" : "tf32");
      snprintf(name, sizeof name, "pca_transform %lldx%lld->%lld",
               (long long)rows, (long long)D, (long long)K);
      emit(name, ms2, 0, 2.0 * rows * D * K, extra);
    }
    CU(cudaFree(yt));
    CU(cudaFree(x));
    CU(cudaFree(y));
  }

  /* 5. exact search: float16 and int8 storage, N = 10M, k = 10 */
  {
    const int64_t N = tiny ? 20000 : quick ? 1000000 : 10000000, k = 10;
    __half *db16 = (__half *)dev((size_t)N * D * 2);
    fill_f16<<<G, T>>>(db16, (size_t)N * D, 5, 1.0f / sqrtf((float)D));
    float *q = (float *)dev(256 * D * 4);
    fill_f32<<<G, T>>>(q, 256 * D, 6, 1.0f / sqrtf((float)D));
    CU(cudaDeviceSynchronize());
    mn_vecblock vb = {};
    vb.codes = dtensor(db16, MN_DTYPE_F16, N, D, 2);
    std::vector<float> sc(256 * k);
    std::vector<int64_t> id(256 * k);
    auto verify = [&](int64_t nq, bool half_query) {
      /* each reported score is its id's inner product, best first */
      auto qh = fetch<float>(q, (size_t)nq * D);
      for (int64_t j = 0; j<nq; j += nq> 4 ? nq / 4 : 1) {
        for (int64_t i = 0; i < k; i++) {
          int64_t r = id[j * k + i];
          auto row = fetch<__half>(db16, D, (size_t)r * D);
          double want = 0, mag = 0;
          for (int64_t t = 0; t < D; t++) {
            double qv =
                half_query
                    ? (double)__half2float(__float2half_rn(qh[j * D + t]))
                    : qh[j * D + t];
            want += qv * __half2float(row[t]);
            mag += fabs(qv * __half2float(row[t]));
          }
          check(fabs(sc[j * k + i] - want) <= 1e-5 * mag + 1e-6, "search score",
                sc[j * k + i], want);
          if (i)
            check(sc[j * k + i] <= sc[j * k + i - 1], "search order",
                  sc[j * k + i], sc[j * k + i - 1]);
        }
      }
    };
    for (int64_t nq : {(int64_t)256, (int64_t)1}) {
      mn_tensor tq = dtensor(q, MN_DTYPE_F32, nq, D, 4);
      for (mn_backend *b : {b16, b32}) {
        if (nq == 1 && b == b16)
          continue; /* one query never takes the GEMM path */
        MN(I->search(b, &tq, &vb, MN_METRIC_IP, k, 0, sc.data(), id.data()));
        verify(nq, b == b16 && nq >= 16);
        double ms = median_ms(2, quick ? 5 : 10, [&] {
          MN(I->search(b, &tq, &vb, MN_METRIC_IP, k, 0, sc.data(), id.data()));
        });
        char name[96];
        snprintf(name, sizeof name, "search fp16 N=%lld Q=%lld k=10",
                 (long long)N, (long long)nq);
        snprintf(extra, sizeof extra, "\"query\": \"%s\"",
                 nq == 1    ? "float32 (scan)"
                 : b == b16 ? "float16 (as the peer)"
                            : "float32 (split hi+lo float16)");
        emit(name, ms, 2.0 * N * D, nq > 1 ? 2.0 * N * D * nq : 0, extra);
      }
    }
    /* the GEMM chunk size (MNEMO_CUDA_CHUNK_ROWS, read when a backend
     * opens): a few values under the default (262144), for tuning */
    if (!tiny) {
      mn_tensor tq = dtensor(q, MN_DTYPE_F32, 256, D, 4);
      for (const char *rows : {"16384", "65536", "131072"}) {
        setenv("MNEMO_CUDA_CHUNK_ROWS", rows, 1);
        mn_backend *bc = nullptr;
        MN(init(&o16, &g_host, &bc));
        double ms = median_ms(1, 5, [&] {
          MN(I->search(bc, &tq, &vb, MN_METRIC_IP, k, 0, sc.data(), id.data()));
        });
        verify(256, true);
        char name[96];
        snprintf(name, sizeof name, "search fp16 N=%lld Q=256 k=10 chunk=%s",
                 (long long)N, rows);
        emit(name, ms, 2.0 * N * D, 2.0 * N * D * 256,
             "\"query\": \"float16\"");
        I->destroy(bc);
      }
      unsetenv("MNEMO_CUDA_CHUNK_ROWS");
      /* A/B: the float32 score tiles searches used before float16 tiles
       * with an exact re-rank (MNEMO_CUDA_TILE, read when a backend
       * opens) */
      setenv("MNEMO_CUDA_TILE", "f32", 1);
      mn_backend *bt = nullptr;
      MN(init(&o16, &g_host, &bt));
      double ms = median_ms(2, quick ? 5 : 10, [&] {
        MN(I->search(bt, &tq, &vb, MN_METRIC_IP, k, 0, sc.data(), id.data()));
      });
      verify(256, true);
      char name[96];
      snprintf(name, sizeof name, "search fp16 N=%lld Q=256 k=10 tiles=f32",
               (long long)N);
      emit(name, ms, 2.0 * N * D, 2.0 * N * D * 256,
           "\"query\": \"float16, float32 score tiles\"");
      I->destroy(bt);
      unsetenv("MNEMO_CUDA_TILE");
    }
    /* Where the search time goes: cuBLAS alone on one chunk's shape
     * (262144 rows x 256 queries x 768), float32 scores as the search
     * writes them and float16 scores; times 39 chunks = N = 10M. */
    if (!tiny) {
      cublasHandle_t hg;
      if (cublasCreate(&hg) != CUBLAS_STATUS_SUCCESS)
        return 2;
      const int64_t L = 262144;
      void *Sg = dev((size_t)L * 256 * 4);
      __half *qh16 = (__half *)dev(256 * D * 2);
      fill_f16<<<G, T>>>(qh16, 256 * D, 9, 1.0f / sqrtf((float)D));
      const float one = 1.f, zero = 0.f;
      char name[96];
      for (int out16 = 0; out16 <= 1; out16++) {
        double ms = median_ms(3, 10, [&] {
          if (cublasGemmEx(hg, CUBLAS_OP_T, CUBLAS_OP_N, (int)L, 256, (int)D,
                           &one, db16, CUDA_R_16F, (int)D, qh16, CUDA_R_16F,
                           (int)D, &zero, Sg, out16 ? CUDA_R_16F : CUDA_R_32F,
                           (int)L, CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
            exit(2);
          CU(cudaDeviceSynchronize()); /* the host clock times it */
        });
        snprintf(name, sizeof name,
                 "gemm alone 262144x256x768 fp16 in, %s scores",
                 out16 ? "fp16" : "fp32");
        emit(name, ms, 2.0 * L * D + (out16 ? 2.0 : 4.0) * L * 256,
             2.0 * L * 256 * D, "\"query\": \"float16\"");
      }
      CU(cudaFree(Sg));
      CU(cudaFree(qh16));
      cublasDestroy(hg);
    }
    CU(cudaFree(db16));

    int8_t *db8 = (int8_t *)dev((size_t)N * D);
    float *s8 = (float *)dev((size_t)N * 4);
    fill_i8<<<G, T>>>(db8, (size_t)N * D, 7);
    fill_pos<<<G, T>>>(s8, (size_t)N, 8);
    CU(cudaDeviceSynchronize());
    mn_vecblock v8 = {};
    v8.codes = dtensor(db8, MN_DTYPE_I8, N, D, 1);
    v8.scales = s8;
    mn_tensor tq = dtensor(q, MN_DTYPE_F32, 1, D, 4);
    MN(I->search(b32, &tq, &v8, MN_METRIC_IP, k, 0, sc.data(), id.data()));
    {
      auto qh = fetch<float>(q, D);
      for (int64_t i = 0; i < k; i++) {
        int64_t r = id[i];
        auto row = fetch<int8_t>(db8, D, (size_t)r * D);
        auto s = fetch<float>(s8, 1, (size_t)r);
        double want = 0, mag = 0;
        for (int64_t t = 0; t < D; t++) {
          want += (double)qh[t] * row[t] * s[0];
          mag += fabs((double)qh[t] * row[t] * s[0]);
        }
        check(fabs(sc[i] - want) <= 1e-5 * mag, "int8 search score", sc[i],
              want);
      }
    }
    double ms = median_ms(2, quick ? 5 : 20, [&] {
      MN(I->search(b32, &tq, &v8, MN_METRIC_IP, k, 0, sc.data(), id.data()));
    });
    char name[96];
    snprintf(name, sizeof name, "search int8 N=%lld Q=1 k=10", (long long)N);
    emit(name, ms, (double)N * D + 4.0 * N, 0, "");
    CU(cudaFree(db8));
    CU(cudaFree(s8));
    CU(cudaFree(q));
  }

  /* the request path of processEmbeddings: 32 x 768 up, normalize, down */
  {
    std::vector<float> hx(32 * D), hy(32 * D);
    for (size_t i = 0; i < hx.size(); i++)
      hx[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    void *dx, *dy;
    MN(I->alloc(b32, hx.size() * 4, &dx));
    MN(I->alloc(b32, hx.size() * 4, &dy));
    mn_tensor tx = dtensor(dx, MN_DTYPE_F32, 32, D, 4);
    mn_tensor ty = dtensor(dy, MN_DTYPE_F32, 32, D, 4);
    int64_t z;
    double ms = median_ms(20, 200, [&] {
      MN(I->upload(b32, dx, hx.data(), hx.size() * 4));
      MN(I->normalize(b32, &tx, &ty, &z));
      MN(I->download(b32, hy.data(), dy, hy.size() * 4));
    });
    emit("request path 32x768 upload+normalize+download", ms, 0, 0, "");
    I->free(b32, dx);
    I->free(b32, dy);
  }

  I->destroy(b16);
  I->destroy(b32);
  snprintf(extra, sizeof extra, "\"failed_checks\": %d", g_fail);
  emit("checks", 0, 0, 0, extra);
  if (g_out)
    fclose(g_out);
  return g_fail ? 1 : 0;
}
