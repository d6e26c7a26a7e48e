/*
 * bench_ops.c - times libmnemo's backend ops the way bench/peers.py times
 * numpy, scikit-learn and FAISS, and prints one JSON object per line for
 * bench/run_bench.py to join with the peers' lines by their "key".
 *
 *   normalize, PCA transform 768 -> 256, int8 / fp16 / int4 / binary
 *   quantize                    at 32x768, 4096x768, 65536x768
 *   PCA fit                     100000x768 -> 256 on correlated data (the
 *                               peer's X = Z @ (M * 0.05)), with the
 *                               explained variance checked against a
 *                               double-precision fit
 *   exact search, k = 10, IP    N = 100k and 1M rows of float32, float16,
 *                               int8 and binary storage, Q = 1 and 32
 *   memcpy                      large buffers, one thread and all threads;
 *                               bytes read + written
 *
 * Each op: warm-up runs, then the median (and minimum) of timed repeats,
 * as in ../shared/anchors/cpu_baseline.py. --quick uses small sizes so the
 * harness can be smoke-tested; the sizes must match peers.py's.
 *
 * Usage: bench_ops [--quick] [--device auto|cpu|cuda] [--no-search]
 *                  [--no-fit]
 */
#include "mnemo.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define D 768
#define K_PCA 256
#define TOPK 10

typedef struct sizes {
  int64_t batches[3];
  int nbatches;
  int64_t fit_rows;
  int64_t search_n[2];
  int nsearch;
  size_t memcpy_bytes;
  int reps_elem, warm_elem, reps_fit, warm_fit, reps_search, warm_search;
} sizes;

/* Keep in step with SIZES in peers.py. */
static const sizes full = {{32, 4096, 65536},
                           3,
                           100000,
                           {100000, 1000000},
                           2,
                           (size_t)512 << 20,
                           20,
                           3,
                           3,
                           1,
                           5,
                           1};
static const sizes quick = {
    {32, 4096, 0}, 2, 5000, {20000, 0}, 1, (size_t)64 << 20, 5, 1, 2, 1, 3, 1};

static mn_backend *be;

static void die(const char *what, mn_status s) {
  printf("{\"impl\":\"mnemo\",\"error\":\"%s: %s: %s\"}\n", what,
         mn_status_name(s), mn_errmsg());
  fflush(stdout);
  exit(1);
}

#define CHECK(what, expr)                                                      \
  do {                                                                         \
    mn_status s_ = (expr);                                                     \
    if (s_ != MN_OK)                                                           \
      die(what, s_);                                                           \
  } while (0)

static void *xmalloc(size_t n) {
  void *p = mn_malloc(n);
  if (!p)
    die("allocation", MN_ERR_NOMEM);
  memset(p, 0, n); /* fault the pages in before anything is timed */
  return p;
}

/* --------------------------------------------------------- random data */
static uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* n values: Gaussian (Box-Muller) or uniform in [-1, 1), in parallel. */
static void fill_random(float *x, size_t n, uint64_t seed, int gauss) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i += 2) {
    uint64_t a = mix(seed ^ (i * 0x2545f4914f6cdd1dull));
    uint64_t b = mix(a);
    double u = ((double)(a >> 11) + 0.5) / 9007199254740992.0;
    double v = ((double)(b >> 11) + 0.5) / 9007199254740992.0;
    double p, q;
    if (gauss) {
      double rr = sqrt(-2 * log(u));
      p = rr * cos(6.283185307179586 * v);
      q = rr * sin(6.283185307179586 * v);
    } else {
      p = 2 * u - 1;
      q = 2 * v - 1;
    }
    x[i] = (float)p;
    if (i + 1 < n)
      x[i + 1] = (float)q;
  }
}

/* ------------------------------------------------------------- timing */
static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef void (*op_fn)(void *ctx);

/* Warm up, time `reps` runs, print a JSON line. bytes = bytes read and
 * written by one run (0: not a bandwidth figure). */
static double flops_next; /* set before bench() for a GFLOP/s figure */

static void bench(const char *op, const char *shape, int reps, int warm,
                  double bytes, op_fn fn, void *ctx, const char *extra) {
  double ts[64];
  if (reps > 64)
    reps = 64;
  for (int i = 0; i < warm; i++)
    fn(ctx);
  for (int i = 0; i < reps; i++) {
    uint64_t t0 = mn_time_ns();
    fn(ctx);
    ts[i] = (double)(mn_time_ns() - t0) / 1e6;
  }
  qsort(ts, (size_t)reps, sizeof ts[0], cmp_d);
  double med = reps % 2 ? ts[reps / 2] : (ts[reps / 2 - 1] + ts[reps / 2]) / 2;
  printf("{\"impl\":\"mnemo\",\"key\":\"%s %s\",\"op\":\"%s\",\"shape\":\"%s\","
         "\"ms_p50\":%.4f,\"ms_min\":%.4f,\"reps\":%d",
         op, shape, op, shape, med, ts[0], reps);
  if (bytes > 0)
    printf(",\"bytes\":%.0f,\"gbps\":%.3f", bytes, bytes / (med * 1e6));
  if (flops_next > 0)
    printf(",\"gflops\":%.1f", flops_next / (med * 1e6));
  flops_next = 0;
  if (extra)
    printf(",%s", extra);
  printf("}\n");
  fflush(stdout);
}

/* ----------------------------------------------------------- elementwise */
typedef struct elem_ctx {
  mn_tensor x, y, p, codes[4];
  float *scales;
  mn_pca_model *m;
  mn_quant_kind kind;
  int ci;
} elem_ctx;

static void op_normalize(void *c) {
  elem_ctx *e = c;
  CHECK("normalize", mn_backend_normalize(be, &e->x, &e->y, NULL));
}

static void op_transform(void *c) {
  elem_ctx *e = c;
  CHECK("pca_transform", mn_backend_pca_transform(be, &e->x, e->m, 0, &e->p));
}

static void op_quantize(void *c) {
  elem_ctx *e = c;
  CHECK("quantize", mn_backend_quantize(be, &e->x, e->kind, NULL,
                                        &e->codes[e->ci], e->scales));
}

static void bench_elementwise(const sizes *sz) {
  const mn_quant_kind kinds[4] = {MN_QUANT_INT8, MN_QUANT_FP16, MN_QUANT_INT4,
                                  MN_QUANT_BINARY};
  const char *names[4] = {"quantize_int8", "quantize_fp16", "quantize_int4",
                          "quantize_binary"};
  mn_pca_model *m = NULL;
  CHECK("pca_alloc", mn_pca_alloc(D, K_PCA, &m));
  fill_random(m->components, (size_t)D * K_PCA, 7, 1);
  fill_random(m->mean, D, 8, 1);
  for (int bi = 0; bi < sz->nbatches; bi++) {
    int64_t B = sz->batches[bi];
    elem_ctx e;
    memset(&e, 0, sizeof e);
    e.m = m;
    e.x = mn_tensor_host(xmalloc((size_t)B * D * 4), MN_DTYPE_F32, B, D);
    e.y = mn_tensor_host(xmalloc((size_t)B * D * 4), MN_DTYPE_F32, B, D);
    e.p =
        mn_tensor_host(xmalloc((size_t)B * K_PCA * 4), MN_DTYPE_F32, B, K_PCA);
    e.scales = xmalloc((size_t)B * 4);
    fill_random(e.x.data, (size_t)B * D, 100 + (uint64_t)B, 1);
    char shape[64];
    snprintf(shape, sizeof shape, "%lldx%d", (long long)B, D);
    double fbytes = (double)B * D * 4;
    bench("normalize", shape, sz->reps_elem, sz->warm_elem, 2 * fbytes,
          op_normalize, &e, NULL);
    char pshape[64];
    snprintf(pshape, sizeof pshape, "%lldx%d->%d", (long long)B, D, K_PCA);
    /* Compute-bound: reported in GFLOP/s rather than GB/s. */
    flops_next = 2.0 * (double)B * D * K_PCA;
    bench("pca_transform", pshape, sz->reps_elem, sz->warm_elem, 0,
          op_transform, &e, NULL);
    for (int ki = 0; ki < 4; ki++) {
      mn_dtype dt = mn_quant_dtype(kinds[ki]);
      size_t rb = mn_dtype_row_bytes(dt, D);
      e.codes[ki] = mn_tensor_host(xmalloc(rb * (size_t)B), dt, B, D);
      e.kind = kinds[ki];
      e.ci = ki;
      double extra = kinds[ki] == MN_QUANT_INT8 || kinds[ki] == MN_QUANT_INT4
                         ? (double)B * 4
                         : 0;
      bench(names[ki], shape, sz->reps_elem, sz->warm_elem,
            fbytes + (double)rb * B + extra, op_quantize, &e, NULL);
      mn_free(e.codes[ki].data);
    }
    mn_free(e.x.data);
    mn_free(e.y.data);
    mn_free(e.p.data);
    mn_free(e.scales);
  }
  mn_pca_free(m);
}

/* --------------------------------------------------------------- PCA fit */
typedef struct fit_ctx {
  mn_tensor x;
  mn_pca_model *last;
} fit_ctx;

static void op_fit(void *c) {
  fit_ctx *f = c;
  mn_pca_free(f->last);
  f->last = NULL;
  CHECK("pca_fit", mn_backend_pca_fit(be, &f->x, K_PCA, &f->last));
}

/* Largest relative error of the model's top variances against a fit in
 * double (covariance by chunked dsyrk, eigenvalues by dsyevd). */
static double variance_error(const float *x, int64_t n, const mn_pca_model *m) {
  double *mean = calloc(D, sizeof(double));
  double *cov = calloc((size_t)D * D, sizeof(double));
  double *w = malloc(sizeof(double) * D);
  const int64_t chunk = 8192;
  double *xc = malloc(sizeof(double) * (size_t)chunk * D);
  for (int64_t i = 0; i < n; i++)
    for (int c = 0; c < D; c++)
      mean[c] += x[i * D + c];
  for (int c = 0; c < D; c++)
    mean[c] /= (double)n;
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    int64_t rows = n - r0 < chunk ? n - r0 : chunk;
    for (int64_t i = 0; i < rows; i++)
      for (int c = 0; c < D; c++)
        xc[i * D + c] = x[(r0 + i) * D + c] - mean[c];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, D, (int)rows, 1.0, xc, D,
                1.0, cov, D);
  }
  for (int64_t i = 0; i < (int64_t)D * D; i++)
    cov[i] /= (double)(n - 1);
  double err = INFINITY;
  if (LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'N', 'U', D, cov, D, w) == 0) {
    err = 0;
    for (int j = 0; j < m->n_components; j++) {
      double ref = w[D - 1 - j];
      err = fmax(err, fabs(m->explained_variance[j] - ref) / ref);
    }
  }
  free(xc);
  free(mean);
  free(cov);
  free(w);
  return err;
}

static void bench_fit(const sizes *sz) {
  int64_t n = sz->fit_rows;
  /* X = Z @ (M * 0.05), Z and M standard normal, as peers.py does. */
  float *z = xmalloc((size_t)n * D * 4);
  float *mm = xmalloc((size_t)D * D * 4);
  float *x = xmalloc((size_t)n * D * 4);
  fill_random(z, (size_t)n * D, 11, 1);
  fill_random(mm, (size_t)D * D, 12, 1);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, D, D, 0.05f, z,
              D, mm, D, 0.0f, x, D);
  mn_free(z);
  mn_free(mm);
  fit_ctx f = {mn_tensor_host(x, MN_DTYPE_F32, n, D), NULL};
  char shape[64], extra[128];
  snprintf(shape, sizeof shape, "%lldx%d->%d", (long long)n, D, K_PCA);
  /* Time first (the model of the last run is kept), then check it. */
  uint64_t t0 = mn_time_ns();
  op_fit(&f);
  double first_ms = (double)(mn_time_ns() - t0) / 1e6;
  double err = variance_error(x, n, f.last);
  snprintf(extra, sizeof extra,
           "\"ev_max_rel_err\":%.3g,\"total_ratio\":%.6f,\"first_ms\":%.1f",
           err, mn_pca_total_ratio(f.last), first_ms);
  /* That first run was a warm-up. */
  int warm = sz->warm_fit > 1 ? sz->warm_fit - 1 : 0;
  bench("pca_fit", shape, sz->reps_fit, warm, 0, op_fit, &f, extra);
  mn_pca_free(f.last);
  mn_free(x);
}

/* ---------------------------------------------------------------- search */
typedef struct search_ctx {
  mn_tensor q;
  mn_vecblock vb;
  float scores[32 * TOPK];
  int64_t ids[32 * TOPK];
} search_ctx;

static void op_search(void *c) {
  search_ctx *s = c;
  CHECK("search", mn_backend_search(be, &s->q, &s->vb, MN_METRIC_IP, TOPK, 0,
                                    s->scores, s->ids));
}

static void bench_search(const sizes *sz) {
  const mn_quant_kind kinds[4] = {MN_QUANT_NONE, MN_QUANT_FP16, MN_QUANT_INT8,
                                  MN_QUANT_BINARY};
  const char *names[4] = {"float32", "float16", "int8", "binary"};
  for (int ni = 0; ni < sz->nsearch; ni++) {
    int64_t n = sz->search_n[ni];
    /* Unit rows of uniform noise, like the peer's normalised Gaussians. */
    mn_tensor db =
        mn_tensor_host(xmalloc((size_t)n * D * 4), MN_DTYPE_F32, n, D);
    fill_random(db.data, (size_t)n * D, 21 + (uint64_t)n, 0);
    CHECK("normalize db", mn_backend_normalize(be, &db, &db, NULL));
    search_ctx *s = calloc(1, sizeof *s);
    s->q = mn_tensor_host(xmalloc(32 * D * 4), MN_DTYPE_F32, 32, D);
    fill_random(s->q.data, 32 * D, 22, 1);
    CHECK("normalize q", mn_backend_normalize(be, &s->q, &s->q, NULL));
    for (int ki = 0; ki < 4; ki++) {
      mn_tensor codes = db;
      float *scales = NULL;
      if (kinds[ki] != MN_QUANT_NONE) {
        mn_dtype dt = mn_quant_dtype(kinds[ki]);
        codes = mn_tensor_host(xmalloc(mn_dtype_row_bytes(dt, D) * (size_t)n),
                               dt, n, D);
        if (kinds[ki] == MN_QUANT_INT8)
          scales = xmalloc((size_t)n * 4);
        CHECK("quantize db",
              mn_backend_quantize(be, &db, kinds[ki], NULL, &codes, scales));
      }
      memset(&s->vb, 0, sizeof s->vb);
      s->vb.codes = codes;
      s->vb.scales = scales;
      for (int qi = 0; qi < 2; qi++) {
        int64_t nq = qi ? 32 : 1;
        s->q.rows = nq; /* the first nq of the 32 queries */
        char shape[96];
        snprintf(shape, sizeof shape, "N=%lld Q=%lld k=%d", (long long)n,
                 (long long)nq, TOPK);
        char op[32];
        snprintf(op, sizeof op, "search_%s", names[ki]);
        bench(op, shape, sz->reps_search, sz->warm_search,
              (double)mn_tensor_bytes(&codes), op_search, s, NULL);
        s->q.rows = 32;
      }
      if (codes.data != db.data)
        mn_free(codes.data);
      mn_free(scales);
    }
    mn_free(s->q.data);
    free(s);
    mn_free(db.data);
  }
}

/* ---------------------------------------------------------------- memcpy */
typedef struct copy_ctx {
  char *src, *dst;
  size_t n;
  int threads;
} copy_ctx;

static void op_copy(void *c) {
  copy_ctx *m = c;
  if (m->threads == 1) {
    memcpy(m->dst, m->src, m->n);
    return;
  }
  size_t per = (m->n / (size_t)m->threads + 63) & ~(size_t)63;
#pragma omp parallel num_threads(m->threads)
  {
    size_t off = per * (size_t)omp_get_thread_num();
    if (off < m->n)
      memcpy(m->dst + off, m->src + off, off + per > m->n ? m->n - off : per);
  }
}

static void bench_memcpy(const sizes *sz) {
  copy_ctx m = {xmalloc(sz->memcpy_bytes), xmalloc(sz->memcpy_bytes),
                sz->memcpy_bytes, 1};
  memset(m.src, 1, m.n);
  char shape[64];
  snprintf(shape, sizeof shape, "%zuMiB", m.n >> 20);
  bench("memcpy_1thread", shape, 10, 2, 2.0 * (double)m.n, op_copy, &m, NULL);
  m.threads = omp_get_num_procs();
  char extra[32];
  snprintf(extra, sizeof extra, "\"threads\":%d", m.threads);
  bench("memcpy", shape, 10, 2, 2.0 * (double)m.n, op_copy, &m, extra);
  mn_free(m.src);
  mn_free(m.dst);
}

int main(int argc, char **argv) {
  const sizes *sz = &full;
  int do_search = 1, do_fit = 1;
  mn_backend_opts o;
  mn_backend_opts_init(&o);
  o.pref = MN_BACKEND_CPU;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--quick") == 0)
      sz = &quick;
    else if (strcmp(argv[i], "--no-search") == 0)
      do_search = 0;
    else if (strcmp(argv[i], "--no-fit") == 0)
      do_fit = 0;
    else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
      if (mn_backend_pref_parse(argv[++i], &o.pref) != MN_OK) {
        fprintf(stderr, "bench_ops: %s\n", mn_errmsg());
        return 2;
      }
    } else {
      fprintf(stderr, "usage: bench_ops [--quick] [--device auto|cpu|cuda] "
                      "[--no-search] [--no-fit]\n");
      return 2;
    }
  }
  CHECK("open backend", mn_backend_open(&o, &be));
  if (mn_backend_device_kind(be) != MN_DEVICE_HOST) {
    /* The ops here pass host tensors; device timing is bench/gpu's job. */
    fprintf(stderr, "bench_ops: times host backends only, got %s\n",
            mn_backend_device(be));
    return 2;
  }
  printf("{\"impl\":\"mnemo\",\"info\":\"backend\",\"device\":\"%s\","
         "\"threads\":%d,\"quick\":%s}\n",
         mn_backend_device(be), omp_get_num_procs(),
         sz == &quick ? "true" : "false");
  fflush(stdout);
  bench_memcpy(sz);
  bench_elementwise(sz);
  if (do_fit)
    bench_fit(sz);
  if (do_search)
    bench_search(sz);
  mn_backend_close(be);
  return 0;
}
