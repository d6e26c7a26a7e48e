/*
 * test_cpu_search.c - CPU similarity, search and top-k against references
 * computed here in double precision, for every storage dtype, metric and
 * CPU level (scalar, AVX2, AVX-512 as far as this CPU has them), on odd
 * widths and row counts, unaligned rows and strides, and through the public
 * wrappers' error paths.
 *
 * The reference decodes every storage format with its own code (a bit-field
 * float16 decoder, nibble and bit unpacking), independent of the library.
 * Tolerances: float accumulation gives relative errors near 1e-6; the
 * checks allow 3e-5 of the magnitude sum_e |q_e| |x_e| (and of |q|^2+|x|^2
 * for L2). Binary results are exact.
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

#define TOL 3e-5

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double urand(void) {
  return (double)(rnd() >> 11) * 0x1p-53;
}
static float frand(void) {
  return (float)(2.0 * urand() - 1.0);
}

/* Independent float16 decoder: sign, 5-bit exponent, 10-bit mantissa. */
static double ref_f16(uint16_t h) {
  int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
  return s ? -v : v;
}
static double ref_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* A stored block with its double-precision decoding. */
typedef struct dbset {
  mn_dtype dt;
  int64_t n, cols, stride;
  uint8_t *mem, *base;
  float *scales, *vmin, *ascale, *norms;
  mn_affine_params aff;
  double *dec;    /* n x cols decoded values */
  double *absdec; /* n x cols magnitude of what the kernel sums */
  double *n2;     /* squared norms */
} dbset;

static void db_free(dbset *d) {
  free(d->mem);
  free(d->scales);
  free(d->vmin);
  free(d->ascale);
  free(d->norms);
  free(d->dec);
  free(d->absdec);
  free(d->n2);
  memset(d, 0, sizeof *d);
}

/* Random rows of dtype dt; `pad` extra bytes per row and a base offset of
 * `mis` bytes make strides and addresses unaligned. Padding nibbles and
 * bits are filled with garbage on purpose. Row 0 is all zero where the
 * format allows (not U8 or BIN) when zero_row is set. */
static void db_make(dbset *d, mn_dtype dt, int64_t n, int64_t cols, int64_t pad,
                    int64_t mis, int zero_row) {
  memset(d, 0, sizeof *d);
  d->dt = dt;
  d->n = n;
  d->cols = cols;
  int64_t rb = (int64_t)mn_dtype_row_bytes(dt, cols);
  d->stride = rb + pad;
  d->mem = malloc((size_t)(d->stride * n + mis + 64));
  d->base = d->mem + mis;
  for (int64_t i = 0; i < d->stride * n + mis + 64; i++)
    d->mem[i] = (uint8_t)rnd();
  d->scales = malloc((size_t)n * sizeof(float));
  d->vmin = malloc((size_t)cols * sizeof(float));
  d->ascale = malloc((size_t)cols * sizeof(float));
  d->norms = malloc((size_t)n * sizeof(float));
  d->dec = malloc((size_t)(n * cols) * sizeof(double));
  d->absdec = malloc((size_t)(n * cols) * sizeof(double));
  d->n2 = malloc((size_t)n * sizeof(double));
  for (int64_t e = 0; e < cols; e++) {
    d->vmin[e] = frand();
    d->ascale[e] = (float)(0.001 + 0.01 * urand());
  }
  d->aff.dim = cols;
  d->aff.vmin = d->vmin;
  d->aff.scale = d->ascale;
  for (int64_t r = 0; r < n; r++) {
    uint8_t *row = d->base + r * d->stride;
    d->scales[r] = (float)(0.001 + 0.02 * urand());
    int zero = zero_row && r == 0 && dt != MN_DTYPE_U8 && dt != MN_DTYPE_BIN;
    for (int64_t e = 0; e < cols; e++) {
      double v = 0, mag;
      switch (dt) {
      case MN_DTYPE_F32: {
        float f = zero ? 0.0f : frand() * 4.0f;
        memcpy(row + 4 * e, &f, 4);
        v = f;
        break;
      }
      case MN_DTYPE_F16: {
        /* exponents 1..20 and some subnormals: |v| < 64 */
        uint16_t h = (uint16_t)((rnd() & 0x8000u) | (rnd() & 0x3FFu));
        if (rnd() % 8)
          h |= (uint16_t)((1 + rnd() % 20) << 10);
        if (zero)
          h = 0;
        memcpy(row + 2 * e, &h, 2);
        v = ref_f16(h);
        break;
      }
      case MN_DTYPE_BF16: {
        uint16_t h = (uint16_t)((rnd() & 0x807Fu) | ((120 + rnd() % 14) << 7));
        if (zero)
          h = 0;
        memcpy(row + 2 * e, &h, 2);
        v = ref_bf16(h);
        break;
      }
      case MN_DTYPE_I8: {
        int8_t c = zero ? 0 : (int8_t)rnd();
        row[e] = (uint8_t)c;
        v = c * (double)d->scales[r];
        break;
      }
      case MN_DTYPE_I4: {
        int c = zero ? 0 : (int)(rnd() % 16) - 8;
        uint8_t nib = (uint8_t)(c & 15);
        if (e & 1)
          row[e >> 1] = (uint8_t)((row[e >> 1] & 0x0F) | (nib << 4));
        else
          row[e >> 1] = (uint8_t)((row[e >> 1] & 0xF0) | nib);
        v = c * (double)d->scales[r];
        break;
      }
      case MN_DTYPE_U8: {
        uint8_t c = (uint8_t)rnd();
        row[e] = c;
        v = d->vmin[e] + c * (double)d->ascale[e];
        break;
      }
      default: { /* BIN */
        int bit = (row[e >> 3] >> (e & 7)) & 1;
        v = bit ? 1.0 : -1.0;
        break;
      }
      }
      mag = fabs(v);
      if (dt == MN_DTYPE_U8)
        mag = fabs((double)d->vmin[e]) + fabs(v - d->vmin[e]);
      d->dec[r * cols + e] = v;
      d->absdec[r * cols + e] = mag;
    }
    double s = 0;
    for (int64_t e = 0; e < cols; e++)
      s += d->dec[r * cols + e] * d->dec[r * cols + e];
    d->n2[r] = s;
    d->norms[r] = (float)sqrt(s);
  }
}

static mn_vecblock db_block(const dbset *d, int with_norms) {
  mn_vecblock b;
  memset(&b, 0, sizeof b);
  b.codes.data = d->base;
  b.codes.dtype = d->dt;
  b.codes.rows = d->n;
  b.codes.cols = d->cols;
  b.codes.stride = d->stride;
  b.codes.device = MN_DEVICE_HOST;
  b.scales = d->scales;
  b.affine = &d->aff;
  b.norms = with_norms ? d->norms : NULL;
  return b;
}

/* Reference inner products, magnitudes and norms of nq queries against
 * every row, computed once per data set. */
typedef struct refmat {
  const dbset *d;
  const float *q;
  int64_t nq;
  double *ip, *mag, *q2;
} refmat;

static void ref_init(refmat *R, const dbset *d, const float *q, int64_t nq) {
  R->d = d;
  R->q = q;
  R->nq = nq;
  R->ip = malloc((size_t)(nq * d->n) * sizeof(double));
  R->mag = malloc((size_t)(nq * d->n) * sizeof(double));
  R->q2 = malloc((size_t)nq * sizeof(double));
  for (int64_t i = 0; i < nq; i++) {
    const float *qv = q + i * d->cols;
    double q2 = 0;
    for (int64_t e = 0; e < d->cols; e++)
      q2 += (double)qv[e] * qv[e];
    R->q2[i] = q2;
    for (int64_t r = 0; r < d->n; r++) {
      const double *x = d->dec + r * d->cols, *ax = d->absdec + r * d->cols;
      double ip = 0, mag = 0;
      if (d->dt == MN_DTYPE_BIN) {
        /* the query is binarised: +1 where q > 0 */
        for (int64_t e = 0; e < d->cols; e++)
          ip += ((qv[e] > 0) ? 1.0 : -1.0) * x[e];
      } else {
        for (int64_t e = 0; e < d->cols; e++) {
          ip += qv[e] * x[e];
          mag += fabs(qv[e]) * ax[e];
        }
      }
      R->ip[i * d->n + r] = ip;
      R->mag[i * d->n + r] = mag;
    }
  }
}

static void ref_free(refmat *R) {
  free(R->ip);
  free(R->mag);
  free(R->q2);
}

/* Reference score of query i against row r, and its tolerance. */
static double ref_score(const refmat *R, int64_t i, int64_t r, mn_metric m,
                        double *tol) {
  const dbset *d = R->d;
  const double ip = R->ip[i * d->n + r], mag = R->mag[i * d->n + r];
  if (d->dt == MN_DTYPE_BIN) {
    double h = ((double)d->cols - ip) / 2;
    *tol = m == MN_METRIC_COSINE ? 1e-6 : 0; /* a float division */
    return m == MN_METRIC_IP       ? ip
           : m == MN_METRIC_COSINE ? ip / d->cols
                                   : 4 * h;
  }
  const double q2 = R->q2[i];
  if (m == MN_METRIC_IP) {
    *tol = TOL * mag + 1e-30;
    return ip;
  }
  if (m == MN_METRIC_COSINE) {
    double den = sqrt(q2) * sqrt(d->n2[r]);
    *tol = den > 0 ? TOL * mag / den + 1e-6 : 1e-6;
    return den > 0 ? ip / den : 0.0;
  }
  *tol = TOL * (q2 + d->n2[r] + 2 * mag) + 1e-30;
  double l2 = q2 + d->n2[r] - 2 * ip;
  return l2 > 0 ? l2 : 0;
}

static float *make_queries(int64_t nq, int64_t cols, int zero_first) {
  float *q = malloc((size_t)(nq * cols) * sizeof(float));
  for (int64_t i = 0; i < nq * cols; i++)
    q[i] = frand();
  if (zero_first)
    memset(q, 0, (size_t)cols * sizeof(float));
  return q;
}

static mn_backend *open_cpu(int threads) {
  mn_backend_opts o;
  mn_backend_opts_init(&o);
  o.threads = threads;
  mn_backend *b = NULL;
  assert_int_equal(mn_backend_open_cpu(&o, &b), MN_OK);
  return b;
}

static const mn_dtype all_dtypes[] = {MN_DTYPE_F32, MN_DTYPE_F16, MN_DTYPE_BF16,
                                      MN_DTYPE_I8,  MN_DTYPE_I4,  MN_DTYPE_U8,
                                      MN_DTYPE_BIN};
static const mn_metric all_metrics[] = {MN_METRIC_IP, MN_METRIC_COSINE,
                                        MN_METRIC_L2};

static void check_similarity(mn_backend *b, const refmat *R, int with_norms,
                             const char *what) {
  const dbset *d = R->d;
  const float *q = R->q;
  const int64_t nq = R->nq;
  mn_vecblock blk = db_block(d, with_norms);
  mn_tensor qt = mn_tensor_host((void *)q, MN_DTYPE_F32, nq, d->cols);
  float *out = malloc((size_t)(nq * d->n + 1) * sizeof(float));
  for (size_t mi = 0; mi < 3; mi++) {
    mn_metric m = all_metrics[mi];
    for (int64_t i = 0; i < nq * d->n; i++)
      out[i] = NAN; /* poison: every entry must be written */
    mn_tensor ot = mn_tensor_host(out, MN_DTYPE_F32, nq, d->n);
    mn_status s = mn_backend_similarity(b, &qt, &blk, m, &ot);
    if (s != MN_OK)
      fail_msg("%s: similarity failed: %s", what, mn_errmsg());
    for (int64_t i = 0; i < nq; i++)
      for (int64_t r = 0; r < d->n; r++) {
        double tol, ref = ref_score(R, i, r, m, &tol);
        double got = out[i * d->n + r];
        if (!(fabs(got - ref) <= tol))
          fail_msg("%s %s metric %s norms %d: q %lld row %lld got %.9g "
                   "want %.9g (tol %.3g)",
                   what, mn_dtype_name(d->dt), mn_metric_name(m), with_norms,
                   (long long)i, (long long)r, got, ref, tol);
      }
  }
  free(out);
}

static const mn_cpu_level levels[] = {MN_CPU_SCALAR, MN_CPU_AVX2,
                                      MN_CPU_AVX512};

static void test_similarity_all(void **state) {
  (void)state;
  mn_backend *b = open_cpu(2);
  const int64_t widths[] = {1, 7, 767, 768, 1031};
  const int64_t rowcounts[] = {1, 17, 4097};
  for (size_t di = 0; di < 7; di++) {
    for (size_t wi = 0; wi < 5; wi++) {
      for (size_t ri = 0; ri < 3; ri++) {
        int64_t cols = widths[wi], n = rowcounts[ri];
        dbset d;
        db_make(&d, all_dtypes[di], n, cols, (int64_t)(ri + wi) % 5,
                (int64_t)di % 3, 1);
        int64_t nq = n == 4097 ? 2 : 3;
        float *q = make_queries(nq, cols, 1);
        refmat R;
        ref_init(&R, &d, q, nq);
        for (size_t li = 0; li < 3; li++) {
          mn_cpu_level got = mn__cpu_level_cap(levels[li]);
          if (got != levels[li])
            continue; /* this CPU lacks the level */
          char what[64];
          snprintf(what, sizeof what, "[%s %lldx%lld]", mn__cpu_level_name(got),
                   (long long)n, (long long)cols);
          check_similarity(b, &R, 0, what);
          if (n != 4097 || li == 2)
            check_similarity(b, &R, 1, what);
        }
        mn__cpu_level_cap(MN_CPU_AVX512);
        ref_free(&R);
        free(q);
        db_free(&d);
      }
    }
  }
  /* more queries than one register group, several tiles of rows */
  dbset d;
  db_make(&d, MN_DTYPE_F32, 700, 33, 0, 0, 0);
  float *q = make_queries(45, 33, 0);
  refmat R;
  ref_init(&R, &d, q, 45);
  for (size_t li = 0; li < 3; li++)
    if (mn__cpu_level_cap(levels[li]) == levels[li])
      check_similarity(b, &R, 0, "[many queries]");
  mn__cpu_level_cap(MN_CPU_AVX512);
  ref_free(&R);
  free(q);
  db_free(&d);
  mn_backend_close(b);
}

/* ---------------------------------------------------------------------------
 * Search
 * ------------------------------------------------------------------------- */
typedef struct rs {
  double s;
  int64_t id;
  double tol;
} rs;
static int rs_metric_l2;
static int rs_cmp(const void *a, const void *b) {
  const rs *x = a, *y = b;
  double sx = rs_metric_l2 ? -x->s : x->s, sy = rs_metric_l2 ? -y->s : y->s;
  if (sx > sy)
    return -1;
  if (sx < sy)
    return 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

/* The results must be the reference's up to ties within tolerance: valid
 * distinct ids whose reference scores match the reported scores and, rank
 * by rank, the reference's sorted scores. */
static void check_search_one(const refmat *R, int64_t qi, mn_metric m,
                             int64_t k, int64_t id_base, const float *sc,
                             const int64_t *ids, const char *what) {
  const dbset *d = R->d;
  rs *ref = malloc((size_t)d->n * sizeof(rs));
  for (int64_t r = 0; r < d->n; r++) {
    ref[r].s = ref_score(R, qi, r, m, &ref[r].tol);
    ref[r].id = r;
  }
  /* the reference's best cnt, in order, by insertion (cnt is small) */
  int64_t cnt = k < d->n ? k : d->n, have = 0;
  rs *sorted = malloc((size_t)cnt * sizeof(rs));
  rs_metric_l2 = m == MN_METRIC_L2;
  for (int64_t r = 0; r < d->n; r++) {
    if (have == cnt && rs_cmp(&ref[r], &sorted[cnt - 1]) >= 0)
      continue;
    int64_t i = have < cnt ? have++ : cnt - 1;
    while (i > 0 && rs_cmp(&ref[r], &sorted[i - 1]) < 0) {
      sorted[i] = sorted[i - 1];
      i--;
    }
    sorted[i] = ref[r];
  }
  char *seen = calloc((size_t)d->n, 1);
  for (int64_t i = 0; i < cnt; i++) {
    int64_t id = ids[i] - id_base;
    if (id < 0 || id >= d->n)
      fail_msg("%s rank %lld: id %lld out of range", what, (long long)i,
               (long long)ids[i]);
    if (seen[id])
      fail_msg("%s rank %lld: id %lld twice", what, (long long)i,
               (long long)ids[i]);
    seen[id] = 1;
    double tol = ref[id].tol + sorted[i].tol;
    if (!(fabs(sc[i] - ref[id].s) <= ref[id].tol))
      fail_msg("%s rank %lld id %lld: score %.9g, reference %.9g", what,
               (long long)i, (long long)id, sc[i], ref[id].s);
    if (!(fabs(ref[id].s - sorted[i].s) <= tol))
      fail_msg("%s rank %lld: id %lld has reference score %.9g but the "
               "reference's rank %lld is id %lld with %.9g",
               what, (long long)i, (long long)id, ref[id].s, (long long)i,
               (long long)sorted[i].id, sorted[i].s);
    if (i > 0) {
      int ordered = m == MN_METRIC_L2 ? sc[i - 1] <= sc[i] : sc[i - 1] >= sc[i];
      if (!ordered || (sc[i - 1] == sc[i] && ids[i - 1] > ids[i]))
        fail_msg("%s ranks %lld, %lld out of order", what, (long long)i - 1,
                 (long long)i);
    }
  }
  for (int64_t i = cnt; i < k; i++) {
    assert_int_equal(ids[i], -1);
    assert_true(isinf(sc[i]));
    assert_true(m == MN_METRIC_L2 ? sc[i] > 0 : sc[i] < 0);
  }
  free(seen);
  free(sorted);
  free(ref);
}

static void run_search(mn_backend *b, const refmat *R, int64_t nq, mn_metric m,
                       int64_t k, int64_t id_base, int with_norms,
                       const char *what) {
  const dbset *d = R->d;
  const float *q = R->q;
  mn_vecblock blk = db_block(d, with_norms);
  mn_tensor qt = mn_tensor_host((void *)q, MN_DTYPE_F32, nq, d->cols);
  float *sc = malloc((size_t)(nq * k) * sizeof(float));
  int64_t *ids = malloc((size_t)(nq * k) * sizeof(int64_t));
  for (int64_t i = 0; i < nq * k; i++) {
    sc[i] = NAN;
    ids[i] = -7;
  }
  mn_status s = mn_backend_search(b, &qt, &blk, m, k, id_base, sc, ids);
  if (s != MN_OK)
    fail_msg("%s: search failed: %s", what, mn_errmsg());
  for (int64_t i = 0; i < nq; i++) {
    char w[160];
    snprintf(w, sizeof w, "%s %s %s k=%lld q=%lld", what, mn_dtype_name(d->dt),
             mn_metric_name(m), (long long)k, (long long)i);
    check_search_one(R, i, m, k, id_base, sc + i * k, ids + i * k, w);
  }
  free(sc);
  free(ids);
}

static void test_search_all(void **state) {
  (void)state;
  mn_backend *b = open_cpu(2);
  for (size_t di = 0; di < 7; di++) {
    /* 4500 rows: two threads with their own heaps, merged */
    dbset d;
    db_make(&d, all_dtypes[di], 4500, 767, 1, 1, 1);
    mn_dtype dt = all_dtypes[di];
    /* 33 queries (more than a register group) for the main formats */
    int64_t nq = (dt == MN_DTYPE_F32 || dt == MN_DTYPE_F16 ||
                  dt == MN_DTYPE_I8 || dt == MN_DTYPE_BIN)
                     ? 33
                     : 1;
    float *q = make_queries(nq, 767, 0);
    refmat R;
    ref_init(&R, &d, q, nq);
    for (size_t li = 0; li < 3; li++) {
      if (mn__cpu_level_cap(levels[li]) != levels[li])
        continue;
      char what[64];
      snprintf(what, sizeof what, "[%s]", mn__cpu_level_name(levels[li]));
      for (size_t mi = 0; mi < 3; mi++) {
        run_search(b, &R, 1, all_metrics[mi], 10, 0, 0, what);
        run_search(b, &R, 1, all_metrics[mi], 1, 1000000007, 1, what);
        /* the portable kernel is slow: one metric of 33 queries there */
        if (nq == 33 && (li > 0 || mi == 0))
          run_search(b, &R, 33, all_metrics[mi], 10, 5, 0, what);
      }
    }
    mn__cpu_level_cap(MN_CPU_AVX512);
    ref_free(&R);
    free(q);
    db_free(&d);
  }
  /* k larger than the row count, tiny and odd shapes */
  const int64_t shapes[][2] = {{1, 1}, {17, 7}, {5, 1031}};
  for (size_t si = 0; si < 3; si++)
    for (size_t di = 0; di < 7; di++) {
      dbset d;
      db_make(&d, all_dtypes[di], shapes[si][0], shapes[si][1], 3, 2, 0);
      float *q = make_queries(3, shapes[si][1], 0);
      refmat R;
      ref_init(&R, &d, q, 3);
      for (size_t mi = 0; mi < 3; mi++) {
        run_search(b, &R, 3, all_metrics[mi], 20, 100, 0, "[k>n]");
        run_search(b, &R, 3, all_metrics[mi], 1, 0, 0, "[k=1]");
      }
      ref_free(&R);
      free(q);
      db_free(&d);
    }
  /* many queries: threads split the queries */
  dbset d;
  db_make(&d, MN_DTYPE_F32, 300, 40, 0, 0, 0);
  float *q = make_queries(130, 40, 0);
  refmat R;
  ref_init(&R, &d, q, 130);
  run_search(b, &R, 130, MN_METRIC_IP, 7, 3, 0, "[split queries]");
  run_search(b, &R, 130, MN_METRIC_L2, 400, 3, 0, "[split queries]");
  ref_free(&R);
  free(q);
  db_free(&d);
  mn_backend_close(b);
}

/* Exact ties: identical rows must come back in id order, also across the
 * threads' row ranges. */
static void test_search_ties(void **state) {
  (void)state;
  mn_backend *b = open_cpu(2);
  const int64_t n = 6000, cols = 19, k = 12;
  for (size_t di = 0; di < 7; di++) {
    dbset d;
    db_make(&d, all_dtypes[di], n, cols, 0, 0, 0);
    for (int64_t r = 1; r < n; r++) {
      memcpy(d.base + r * d.stride, d.base, (size_t)d.stride);
      d.scales[r] = d.scales[0];
    }
    float *q = make_queries(2, cols, 0);
    for (size_t li = 0; li < 3; li++) {
      if (mn__cpu_level_cap(levels[li]) != levels[li])
        continue;
      for (size_t mi = 0; mi < 3; mi++) {
        mn_vecblock blk = db_block(&d, 0);
        mn_tensor qt = mn_tensor_host(q, MN_DTYPE_F32, 2, cols);
        float sc[2 * 12];
        int64_t ids[2 * 12];
        assert_int_equal(
            mn_backend_search(b, &qt, &blk, all_metrics[mi], k, 50, sc, ids),
            MN_OK);
        for (int64_t i = 0; i < 2 * k; i++) {
          if (ids[i] != 50 + i % k)
            fail_msg("%s %s %s: rank %lld has id %lld, want %lld",
                     mn__cpu_level_name(levels[li]),
                     mn_dtype_name(all_dtypes[di]),
                     mn_metric_name(all_metrics[mi]), (long long)(i % k),
                     (long long)ids[i], (long long)(50 + i % k));
          assert_true(sc[i] == sc[i - i % k]);
        }
      }
    }
    mn__cpu_level_cap(MN_CPU_AVX512);
    free(q);
    db_free(&d);
  }
  mn_backend_close(b);
}

/* ---------------------------------------------------------------------------
 * Top-k over a score matrix
 * ------------------------------------------------------------------------- */
typedef struct tk {
  float s;
  int64_t id;
} tk;
static int tk_largest;
static int tk_cmp(const void *a, const void *b) {
  const tk *x = a, *y = b;
  int xn = isnan(x->s), yn = isnan(y->s);
  if (xn != yn)
    return xn ? 1 : -1; /* NaN last */
  if (!xn) {
    if (x->s != y->s)
      return (tk_largest ? x->s > y->s : x->s < y->s) ? -1 : 1;
  }
  return x->id < y->id ? -1 : 1;
}

static void test_topk(void **state) {
  (void)state;
  const int64_t shapes[][3] = {/* rows, cols, k */
                               {1, 1, 1},
                               {3, 17, 5},
                               {2, 17, 40},
                               {4, 5000, 4096},
                               {40, 3000, 10}};
  for (size_t si = 0; si < 5; si++) {
    int64_t rows = shapes[si][0], cols = shapes[si][1], k = shapes[si][2];
    int64_t stride = cols + 3;
    float *m = malloc((size_t)(rows * stride) * sizeof(float));
    for (int64_t i = 0; i < rows * stride; i++)
      m[i] = (float)(int)(rnd() % 50) - 25.0f; /* many exact ties */
    if (cols > 3) {
      m[2] = NAN;
      m[1] = -INFINITY;
    }
    mn_tensor t = mn_tensor_host(m, MN_DTYPE_F32, rows, cols);
    t.stride = stride * (int64_t)sizeof(float);
    float *os = malloc((size_t)(rows * k) * sizeof(float));
    int64_t *oi = malloc((size_t)(rows * k) * sizeof(int64_t));
    tk *ref = malloc((size_t)cols * sizeof(tk));
    for (int largest = 0; largest <= 1; largest++) {
      assert_int_equal(mn_topk(&t, k, largest, os, oi), MN_OK);
      tk_largest = largest;
      for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) {
          ref[c].s = m[r * stride + c];
          ref[c].id = c;
        }
        qsort(ref, (size_t)cols, sizeof(tk), tk_cmp);
        for (int64_t i = 0; i < k; i++) {
          if (i < cols) {
            if (oi[r * k + i] != ref[i].id)
              fail_msg("topk %lldx%lld k=%lld largest=%d row %lld rank %lld: "
                       "id %lld, want %lld",
                       (long long)rows, (long long)cols, (long long)k, largest,
                       (long long)r, (long long)i, (long long)oi[r * k + i],
                       (long long)ref[i].id);
            assert_memory_equal(&os[r * k + i], &ref[i].s, sizeof(float));
          } else {
            assert_int_equal(oi[r * k + i], -1);
            assert_true(os[r * k + i] == (largest ? -INFINITY : INFINITY));
          }
        }
      }
    }
    free(ref);
    free(os);
    free(oi);
    free(m);
  }
}

/* ---------------------------------------------------------------------------
 * Errors through the public wrappers
 * ------------------------------------------------------------------------- */
static void test_errors(void **state) {
  (void)state;
  mn_backend *b = open_cpu(1);
  dbset d;
  db_make(&d, MN_DTYPE_F32, 10, 8, 0, 0, 0);
  mn_vecblock blk = db_block(&d, 0);
  float q[16] = {0};
  float sc[8];
  int64_t ids[8];
  mn_tensor qt = mn_tensor_host(q, MN_DTYPE_F32, 1, 8);
  assert_int_equal(mn_backend_search(b, &qt, &blk, MN_METRIC_IP, 0, 0, sc, ids),
                   MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "k must be"));
  assert_int_equal(
      mn_backend_search(b, &qt, &blk, MN_METRIC_IP, 4097, 0, sc, ids),
      MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "4097"));
  mn_tensor q9 = mn_tensor_host(q, MN_DTYPE_F32, 1, 9);
  assert_int_equal(mn_backend_search(b, &q9, &blk, MN_METRIC_IP, 1, 0, sc, ids),
                   MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "wide"));
  float out[10];
  mn_tensor ot = mn_tensor_host(out, MN_DTYPE_F32, 1, 9);
  assert_int_equal(mn_backend_similarity(b, &qt, &blk, MN_METRIC_L2, &ot),
                   MN_ERR_INVALID);
  assert_true(strlen(mn_errmsg()) > 0);
  q[3] = NAN;
  assert_int_equal(mn_backend_search(b, &qt, &blk, MN_METRIC_IP, 1, 0, sc, ids),
                   MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "NaN"));
  mn_tensor st = mn_tensor_host(out, MN_DTYPE_F32, 1, 10);
  assert_int_equal(mn_topk(&st, 0, 1, sc, ids), MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "k must be"));
  /* int8 rows without scales */
  dbset d8;
  db_make(&d8, MN_DTYPE_I8, 4, 8, 0, 0, 0);
  mn_vecblock b8 = db_block(&d8, 0);
  b8.scales = NULL;
  q[3] = 0;
  assert_int_equal(mn_backend_search(b, &qt, &b8, MN_METRIC_IP, 1, 0, sc, ids),
                   MN_ERR_INVALID);
  assert_non_null(strstr(mn_errmsg(), "scales"));
  db_free(&d8);
  /* an empty block: every slot is a tail */
  blk.codes.rows = 0;
  assert_int_equal(mn_backend_search(b, &qt, &blk, MN_METRIC_L2, 3, 0, sc, ids),
                   MN_OK);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(ids[i], -1);
    assert_true(sc[i] == INFINITY);
  }
  db_free(&d);
  mn_backend_close(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_similarity_all), cmocka_unit_test(test_search_all),
      cmocka_unit_test(test_search_ties),    cmocka_unit_test(test_topk),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
