/*
 * test_store_search.c - search and ranking against a brute-force
 * double-precision reference computed here: 20k random memories per
 * metric, with deletions, time decay, significance weight, chat / time /
 * metadata filters, min_similarity and several queries; the storage dtypes
 * float16, int8 and binary (reference on the decoded stored vectors, which
 * are first checked against the originals); the same searches again after
 * a reopen with an L2 budget so small that most chunks live only on disk;
 * a PCA collection (projection done here in double); and the decay's
 * reference time given as 0 (the epoch, not the clock).
 *
 * Results must equal the reference up to ties: the same number of hits,
 * each hit's score, similarity, significance, decay and timestamp equal to
 * the reference's values for that memory, hits in non-increasing score
 * order, and the j-th hit as good as the reference's j-th best (so nothing
 * better was missed).
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "store_helpers.h"

#define T0 1.75e9
#define NCHAT 5

typedef struct dataset {
  int64_t n, dim, width;
  mn_metric metric;
  mn_dtype dtype;
  double *vec; /* n x width: the stored vectors, decoded */
  double *ts;
  float *sig;
  int *chat; /* -1: no chat */
  int *deleted;
} dataset;

static void ds_free(dataset *d) {
  free(d->vec);
  free(d->ts);
  free(d->sig);
  free(d->chat);
  free(d->deleted);
}

static int meta_tag(int64_t i) {
  return (int)(i % 4);
}
static int meta_n(int64_t i) {
  return (int)(i % 7);
}
static int meta_flag(int64_t i) {
  return i % 2 == 0;
}

static const char *chat_name(int c) {
  static const char *names[NCHAT] = {"chat0", "chat1", "chat2", "chat3",
                                     "chat4"};
  return c < 0 ? NULL : names[c];
}

/* Add n random memories "m<i>" and fill the dataset with what the store is
 * expected to hold. Stored vectors are read back and checked against the
 * originals within the dtype's error bound. */
static void fill(mn_store *s, const char *coll, dataset *d, int64_t n,
                 int64_t dim, mn_metric metric, mn_dtype dtype, uint64_t seed,
                 const float *proj /* width x dim or NULL */, int64_t width) {
  memset(d, 0, sizeof *d);
  d->n = n;
  d->dim = dim;
  d->width = width;
  d->metric = metric;
  d->dtype = dtype;
  d->vec = calloc((size_t)(n * width), sizeof(double));
  d->ts = calloc((size_t)n, sizeof(double));
  d->sig = calloc((size_t)n, sizeof(float));
  d->chat = calloc((size_t)n, sizeof(int));
  d->deleted = calloc((size_t)n, sizeof(int));
  rng r = {seed};
  enum { B = 1000 };
  float *v = malloc(sizeof(float) * (size_t)(B * dim));
  mn_memory_in *m = calloc(B, sizeof *m);
  char(*ids)[24] = malloc(24 * B);
  char(*meta)[80] = malloc(80 * B);
  char(*content)[32] = malloc(32 * B);
  for (int64_t base = 0; base < n; base += B) {
    int64_t cnt = n - base < B ? n - base : B;
    for (int64_t j = 0; j < cnt; j++) {
      int64_t i = base + j;
      rng_vec(&r, v + j * dim, dim);
      mn_memory_in_init(&m[j]);
      snprintf(ids[j], 24, "m%lld", (long long)i);
      snprintf(meta[j], 80, "{\"tag\":\"t%d\",\"n\":%d,\"flag\":%s}",
               meta_tag(i), meta_n(i), meta_flag(i) ? "true" : "false");
      snprintf(content[j], 32, "c%lld", (long long)i);
      m[j].id = ids[j];
      m[j].embedding = v + j * dim;
      m[j].metadata = meta[j];
      m[j].content = content[j];
      d->chat[i] = i % 11 == 0 ? -1 : (int)(rng_next(&r) % NCHAT);
      m[j].chat_id = chat_name(d->chat[i]);
      m[j].has_timestamp = 1;
      m[j].timestamp = d->ts[i] = T0 - rng_unif(&r) * 30 * 86400.0;
      m[j].has_significance = 1;
      /* Some exact ties in significance, plus a few zeros. */
      double sg = i % 13 == 0 ? 0.0 : floor(rng_unif(&r) * 1000) / 1000.0;
      m[j].significance = sg;
      d->sig[i] = (float)sg;
    }
    ST_OK(mn_store_add(s, coll, m, cnt, NULL));
    /* Read the stored vectors back. */
    const char **want = malloc(sizeof(char *) * (size_t)cnt);
    for (int64_t j = 0; j < cnt; j++)
      want[j] = ids[j];
    mn_memory_list *l;
    ST_OK(mn_store_get(s, coll, want, cnt, MN_INCLUDE_EMBEDDING, &l));
    assert_int_equal(mn_memory_list_count(l), cnt);
    for (int64_t j = 0; j < cnt; j++) {
      const mn_memory *g = mn_memory_list_at(l, j);
      assert_int_equal(g->width, width);
      double *dst = d->vec + (base + j) * width;
      /* What the store should hold, before quantisation, in double. */
      double want_v[1024];
      const float *x = v + j * dim;
      for (int64_t c = 0; c < width; c++)
        want_v[c] = proj ? 0 : x[c];
      if (proj)
        for (int64_t c = 0; c < width; c++)
          for (int64_t e = 0; e < dim; e++)
            want_v[c] += (double)proj[c * dim + e] * x[e];
      double amax = 0;
      for (int64_t c = 0; c < width; c++)
        amax = fmax(amax, fabs(want_v[c]));
      for (int64_t c = 0; c < width; c++) {
        double got = g->embedding[c], err = fabs(got - want_v[c]);
        switch (dtype) {
        case MN_DTYPE_F32:
          if (!(err <= 1e-5 * (1 + fabs(want_v[c]))))
            fprintf(stderr, "row %lld col %lld: stored %.8g, expected %.8g\n",
                    (long long)(base + j), (long long)c, got, want_v[c]);
          assert_true(err <= 1e-5 * (1 + fabs(want_v[c])));
          break;
        case MN_DTYPE_F16:
          assert_true(err <= fabs(want_v[c]) * (1.0 / 2048) + 6.2e-5);
          break;
        case MN_DTYPE_I8:
          /* scale = max|x| / 127; rounding error at most half a step */
          assert_true(err <= amax / 127.0 * 0.5 * 1.0001 + 1e-7);
          break;
        case MN_DTYPE_BIN:
          assert_true(got == (want_v[c] > 0 ? 1.0 : -1.0));
          break;
        default:
          fail();
        }
        dst[c] = got;
      }
    }
    mn_memory_list_free(l);
    free(want);
  }
  free(v);
  free(m);
  free(ids);
  free(meta);
  free(content);
}

static void delete_some(mn_store *s, const char *coll, dataset *d,
                        uint64_t seed, int count) {
  rng r = {seed};
  char(*ids)[24] = malloc(24 * (size_t)count);
  const char **p = malloc(sizeof(char *) * (size_t)count);
  int k = 0;
  while (k < count) {
    int64_t i = (int64_t)(rng_next(&r) % (uint64_t)d->n);
    if (d->deleted[i])
      continue;
    d->deleted[i] = 1;
    snprintf(ids[k], 24, "m%lld", (long long)i);
    p[k] = ids[k];
    k++;
  }
  int64_t got;
  ST_OK(mn_store_delete(s, coll, p, count, &got, NULL));
  assert_int_equal(got, count);
  free(ids);
  free(p);
}

/* ------------------------------------------------------------------------
 * The reference.
 * ---------------------------------------------------------------------- */
typedef struct ref_hit {
  double score, sim, decay;
  int64_t i;
} ref_hit;

static int cmp_ref(const void *a, const void *b) {
  const ref_hit *x = a, *y = b;
  if (x->score != y->score)
    return x->score < y->score ? 1 : -1;
  return (x->i > y->i) - (x->i < y->i);
}

typedef struct filt {
  int chat; /* -2: any */
  int has_since, has_until;
  double since, until;
  int tag, n, flag; /* -1: not filtered */
} filt;

static int passes(const dataset *d, const filt *f, int64_t i) {
  if (d->deleted[i])
    return 0;
  if (f->chat != -2 && d->chat[i] != f->chat)
    return 0;
  if (f->has_since && d->ts[i] < f->since)
    return 0;
  if (f->has_until && d->ts[i] > f->until)
    return 0;
  if (f->tag >= 0 && meta_tag(i) != f->tag)
    return 0;
  if (f->n >= 0 && meta_n(i) != f->n)
    return 0;
  if (f->flag >= 0 && meta_flag(i) != f->flag)
    return 0;
  return 1;
}

static double ref_similarity(const dataset *d, const double *q, int64_t i) {
  const double *y = d->vec + i * d->width;
  double ip = 0, qq = 0, yy = 0, l2 = 0;
  for (int64_t c = 0; c < d->width; c++) {
    double qc = d->dtype == MN_DTYPE_BIN ? (q[c] > 0 ? 1.0 : -1.0) : q[c];
    ip += qc * y[c];
    qq += qc * qc;
    yy += y[c] * y[c];
    l2 += (qc - y[c]) * (qc - y[c]);
  }
  switch (d->metric) {
  case MN_METRIC_IP:
    return ip;
  case MN_METRIC_COSINE:
    return qq > 0 && yy > 0 ? ip / sqrt(qq * yy) : 0;
  default:
    return 1.0 / (1.0 + l2);
  }
}

static int64_t parse_idx(const char *id) {
  assert_true(id[0] == 'm');
  return strtoll(id + 1, NULL, 10);
}

/* Run one search and compare with the reference. Returns the hits of the
 * first query (count) so that callers can check extras. */
static int64_t check_search(mn_store *s, const char *coll, const dataset *d,
                            const float *qf /* nq x width */, int64_t nq,
                            int64_t k, const filt *f, double rate, double w,
                            int has_min, double minsim, const char *meta) {
  mn_search_params p;
  mn_search_params_init(&p);
  p.queries = qf;
  p.n_queries = nq;
  p.dim = d->dim;
  p.k = k;
  p.time_decay = rate;
  p.significance_weight = w;
  p.has_now = 1;
  p.now = T0;
  p.has_min_similarity = has_min;
  p.min_similarity = minsim;
  p.metadata = meta;
  p.include = MN_INCLUDE_CONTENT;
  if (f->chat != -2)
    p.chat_id = f->chat >= 0 ? chat_name(f->chat) : "";
  p.has_since = f->has_since;
  p.since = f->since;
  p.has_until = f->has_until;
  p.until = f->until;
  mn_search_result *res;
  ST_OK(mn_store_search(s, coll, &p, &res));
  assert_int_equal(mn_search_result_queries(res), nq);
  ref_hit *all = malloc(sizeof *all * (size_t)d->n);
  int64_t first = 0;
  for (int64_t qi = 0; qi < nq; qi++) {
    double q[1024];
    for (int64_t c = 0; c < d->width; c++)
      q[c] = qf[qi * d->width + c];
    int64_t ne = 0;
    for (int64_t i = 0; i < d->n; i++) {
      if (!passes(d, f, i))
        continue;
      double sim = ref_similarity(d, q, i);
      if (has_min && sim < minsim)
        continue;
      double decay = rate > 0 ? exp(-rate * fmax(0, T0 - d->ts[i])) : 1;
      double sf = w > 0 ? pow((double)d->sig[i], w) : 1;
      all[ne++] = (ref_hit){sim * sf * decay, sim, decay, i};
    }
    qsort(all, (size_t)ne, sizeof *all, cmp_ref);
    int64_t n;
    const mn_search_hit *h = mn_search_result_hits(res, qi, &n);
    int64_t want = ne < k ? ne : k;
    if (n != want)
      fprintf(stderr, "query %lld: %lld hits, reference %lld\n", (long long)qi,
              (long long)n, (long long)want);
    assert_int_equal(n, want);
    if (qi == 0)
      first = n;
    for (int64_t j = 0; j < n; j++) {
      int64_t i = parse_idx(h[j].id);
      assert_true(i >= 0 && i < d->n);
      assert_true(passes(d, f, i));
      for (int64_t jj = 0; jj < j; jj++)
        assert_string_not_equal(h[jj].id, h[j].id);
      double sim = ref_similarity(d, q, i);
      double decay = rate > 0 ? exp(-rate * fmax(0, T0 - d->ts[i])) : 1;
      double sf = w > 0 ? pow((double)d->sig[i], w) : 1;
      double score = sim * sf * decay;
      double tol = 2e-5 * (1 + fabs(score));
      if (fabs(h[j].score - score) > tol || score < all[j].score - tol)
        fprintf(stderr,
                "query %lld hit %lld: %s score %.9g, reference %.9g, "
                "reference rank-%lld score %.9g\n",
                (long long)qi, (long long)j, h[j].id, h[j].score, score,
                (long long)j, all[j].score);
      assert_true(fabs(h[j].score - score) <= tol);
      assert_true(fabs(h[j].similarity - sim) <= 2e-5 * (1 + fabs(sim)));
      assert_true(fabs(h[j].decay - decay) <= 1e-9);
      assert_true(h[j].significance == d->sig[i]);
      assert_true(h[j].timestamp == d->ts[i]);
      if (has_min)
        assert_true(h[j].similarity >= minsim - 1e-6);
      /* As good as the reference's j-th best: nothing better missed. */
      assert_true(score >= all[j].score - tol);
      if (j > 0)
        assert_true(h[j].score <= h[j - 1].score);
      char c[32];
      snprintf(c, sizeof c, "c%lld", (long long)i);
      assert_string_equal(h[j].content, c);
      assert_null(h[j].metadata);
      const char *cn = chat_name(d->chat[i]);
      assert_string_equal(h[j].chat_id, cn ? cn : "");
    }
  }
  free(all);
  mn_search_result_free(res);
  return first;
}

static const filt NOF = {-2, 0, 0, 0, 0, -1, -1, -1};

/* The suite of searches every dataset goes through. */
static void run_suite(mn_store *s, const char *coll, const dataset *d,
                      uint64_t seed, int full) {
  rng r = {seed};
  enum { NQ = 3 };
  float q[NQ * 1024];
  rng_vec(&r, q, NQ * d->width);
  filt f = NOF;
  /* Fast path (no filters, no decay, w = 0), several k. */
  assert_true(check_search(s, coll, d, q, NQ, 10, &f, 0, 0, 0, 0, NULL) == 10);
  check_search(s, coll, d, q, 1, 1, &f, 0, 0, 0, 0, NULL);
  check_search(s, coll, d, q, NQ, 300, &f, 0, 0, 0, 0, NULL);
  /* min_similarity on the fast path: most results cut. */
  double cut = d->metric == MN_METRIC_L2 ? 0.0 : 1.0;
  if (d->metric == MN_METRIC_IP)
    cut = 2.0 * sqrt((double)d->width);
  if (d->metric == MN_METRIC_COSINE)
    cut = 0.3;
  check_search(s, coll, d, q, NQ, 50, &f, 0, 0, 1, cut, NULL);
  /* Decay only; significance only; both. */
  check_search(s, coll, d, q, NQ, 10, &f, 1e-6, 0, 0, 0, NULL);
  check_search(s, coll, d, q, NQ, 25, &f, 0, 1.5, 0, 0, NULL);
  check_search(s, coll, d, q, NQ, 10, &f, 3e-7, 0.7, 0, 0, NULL);
  if (!full)
    return;
  /* Chat filter (and the "no chat" chat), with ranking. */
  f.chat = 2;
  check_search(s, coll, d, q, NQ, 10, &f, 1e-6, 1.0, 0, 0, NULL);
  f.chat = -1;
  check_search(s, coll, d, q, NQ, 10, &f, 0, 0, 0, 0, NULL);
  /* Time range. */
  f = NOF;
  f.has_since = 1;
  f.since = T0 - 10 * 86400.0;
  f.has_until = 1;
  f.until = T0 - 3 * 86400.0;
  check_search(s, coll, d, q, NQ, 20, &f, 0, 2.0, 0, 0, NULL);
  f.has_until = 0;
  check_search(s, coll, d, q, NQ, 20, &f, 2e-6, 0, 0, 0, NULL);
  /* Metadata: string, number by value, boolean; combined with chat. */
  f = NOF;
  f.tag = 1;
  check_search(s, coll, d, q, NQ, 10, &f, 1e-6, 0, 0, 0, "{\"tag\":\"t1\"}");
  f.tag = -1;
  f.n = 3;
  f.chat = 4;
  check_search(s, coll, d, q, NQ, 10, &f, 0, 1, 0, 0, "{\"n\": 3.0}");
  f = NOF;
  f.flag = 1;
  f.n = 5;
  check_search(s, coll, d, q, NQ, 7, &f, 0, 0, 0, 0,
               "{\"flag\": true, \"n\": 5}");
  /* A selective filter with a large k: the candidates kept in the first
   * pass hold too few matches, so the store scans again evaluating the
   * metadata on every row. */
  f = NOF;
  f.tag = 1;
  f.n = 5;
  check_search(s, coll, d, q, NQ, 200, &f, 1e-6, 0.5, 0, 0,
               "{\"tag\":\"t1\",\"n\":5}");
  /* Filters that match nothing. */
  f = NOF;
  f.tag = 9;
  assert_int_equal(
      check_search(s, coll, d, q, NQ, 10, &f, 0, 0, 0, 0, "{\"tag\":\"t9\"}"),
      0);
  mn_search_params p;
  mn_search_params_init(&p);
  p.queries = q;
  p.n_queries = 1;
  p.dim = d->dim;
  p.chat_id = "no-such-chat";
  mn_search_result *res;
  ST_OK(mn_store_search(s, coll, &p, &res));
  int64_t n;
  mn_search_result_hits(res, 0, &n);
  assert_int_equal(n, 0);
  mn_search_result_free(res);
}

static void test_metrics(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  o.chunk_rows = 1024;
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  const mn_metric metrics[3] = {MN_METRIC_IP, MN_METRIC_COSINE, MN_METRIC_L2};
  const char *names[3] = {"ip", "cos", "l2"};
  dataset d[3];
  for (int m = 0; m < 3; m++) {
    mn_collection_opts co = coll_opts(names[m], 48, metrics[m], MN_DTYPE_F32);
    ST_OK(mn_store_collection_create(s, &co, NULL));
    /* 20k memories for the inner product (every filter), 8k for the
     * other metrics (the ranking paths). */
    int64_t n = m == 0 ? 20000 : 8000;
    fill(s, names[m], &d[m], n, 48, metrics[m], MN_DTYPE_F32, 100 + m, NULL,
         48);
    delete_some(s, names[m], &d[m], 7 + m, (int)(n / 30));
    run_suite(s, names[m], &d[m], 1000 + m, m == 0);
  }
  /* Reopen with an L2 budget of three chunks: most chunks stay on disk,
   * are read back for each search, and the results stay exact. */
  mn_store_close(s);
  o.l2_budget = (uint64_t)(3 * 1024 * 48 * 4 / MN_PRESSURE_RECOVERY_FRAC) + 1;
  ST_OK(mn_store_open(&o, &s));
  mn_store_stats st;
  mn_store_get_stats(s, &st);
  assert_true(st.chunks[MN_TIER_DISK] >= 30);
  assert_true(st.chunks[MN_TIER_HOST] <= 3);
  assert_true(st.used[MN_TIER_HOST] <= o.l2_budget);
  for (int m = 0; m < 3; m++)
    run_suite(s, names[m], &d[m], 1000 + m, m == 0);
  mn_store_get_stats(s, &st);
  assert_true(st.used[MN_TIER_HOST] <= o.l2_budget);
  assert_true(st.promotions > 0);
  assert_true(st.demotions > 0);
  mn_store_close(s);
  for (int m = 0; m < 3; m++)
    ds_free(&d[m]);
  rm_rf(dir);
  free(dir);
}

static void test_dtypes(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  struct {
    const char *name;
    mn_dtype dt;
    mn_metric m;
  } cases[] = {{"f16cos", MN_DTYPE_F16, MN_METRIC_COSINE},
               {"f16l2", MN_DTYPE_F16, MN_METRIC_L2},
               {"i8ip", MN_DTYPE_I8, MN_METRIC_IP},
               {"i8cos", MN_DTYPE_I8, MN_METRIC_COSINE},
               {"i8l2", MN_DTYPE_I8, MN_METRIC_L2},
               {"binip", MN_DTYPE_BIN, MN_METRIC_IP}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    dataset d;
    int64_t dim = c % 2 ? 37 : 64; /* odd widths too */
    mn_collection_opts co =
        coll_opts(cases[c].name, dim, cases[c].m, cases[c].dt);
    ST_OK(mn_store_collection_create(s, &co, NULL));
    fill(s, cases[c].name, &d, 3000, dim, cases[c].m, cases[c].dt, 50 + c, NULL,
         dim);
    delete_some(s, cases[c].name, &d, 3 + c, 100);
    run_suite(s, cases[c].name, &d, 500 + c, 1);
    ds_free(&d);
  }
  mn_store_close(s);
  rm_rf(dir);
  free(dir);
}

/* A PCA collection: the model is given here (orthonormal rows, a mean),
 * the store projects embeddings and queries, and search matches a double
 * projection done in the test. */
static mn_pca_model *g_model;

static mn_status resolve(void *user, const char *name, mn_pca_model **out) {
  (void)user;
  if (strcmp(name, "proj") != 0)
    return MN_ERR_NOT_FOUND;
  mn_pca_model *m;
  mn_status st = mn_pca_alloc(g_model->input_dim, g_model->n_components, &m);
  if (st != MN_OK)
    return st;
  memcpy(m->mean, g_model->mean, sizeof(float) * (size_t)m->input_dim);
  memcpy(m->components, g_model->components,
         sizeof(float) * (size_t)(m->input_dim * m->n_components));
  *out = m;
  return MN_OK;
}

static void test_pca(void **state) {
  (void)state;
  const int64_t dim = 40, k = 12;
  ST_OK(mn_pca_alloc(dim, k, &g_model));
  rng r = {77};
  /* Gram-Schmidt on random rows. */
  double rows[12][40];
  for (int i = 0; i < k; i++) {
    for (int j = 0; j < dim; j++)
      rows[i][j] = rng_normal(&r);
    for (int p = 0; p < i; p++) {
      double dp = 0;
      for (int j = 0; j < dim; j++)
        dp += rows[i][j] * rows[p][j];
      for (int j = 0; j < dim; j++)
        rows[i][j] -= dp * rows[p][j];
    }
    double nn = 0;
    for (int j = 0; j < dim; j++)
      nn += rows[i][j] * rows[i][j];
    for (int j = 0; j < dim; j++) {
      rows[i][j] /= sqrt(nn);
      g_model->components[i * dim + j] = (float)rows[i][j];
    }
  }
  for (int j = 0; j < dim; j++)
    g_model->mean[j] = 0.0f; /* a zero mean keeps the reference a product */
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  o.pca_resolve = resolve;
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  mn_collection_opts co = coll_opts("pca", dim, MN_METRIC_IP, MN_DTYPE_F32);
  co.pca_model = "proj";
  mn_collection_info info;
  ST_OK(mn_store_collection_create(s, &co, &info));
  assert_int_equal(info.width, k);
  assert_string_equal(info.pca_model, "proj");
  co.name = "pca2";
  co.pca_model = "missing";
  assert_int_equal(mn_store_collection_create(s, &co, NULL), MN_ERR_NOT_FOUND);
  co.pca_model = "proj";
  co.dim = dim + 1;
  assert_int_equal(mn_store_collection_create(s, &co, NULL), MN_ERR_INVALID);
  dataset d;
  fill(s, "pca", &d, 2000, dim, MN_METRIC_IP, MN_DTYPE_F32, 9,
       g_model->components, k);
  /* Queries are projected too: build them in the projected space by
   * searching with raw queries and a dataset of projected vectors. */
  float q[3 * 40];
  rng_vec(&r, q, 3 * dim);
  double qp[3 * 12];
  float qpf[3 * 12];
  for (int qi = 0; qi < 3; qi++)
    for (int c = 0; c < k; c++) {
      qp[qi * k + c] = 0;
      for (int e = 0; e < dim; e++)
        qp[qi * k + c] +=
            (double)g_model->components[c * dim + e] * q[qi * dim + e];
      qpf[qi * k + c] = (float)qp[qi * k + c];
    }
  /* The reference scores raw queries after projection; check the store's
   * hits for each raw query against the projected reference query. */
  mn_search_params p;
  mn_search_params_init(&p);
  p.queries = q;
  p.n_queries = 3;
  p.dim = dim;
  p.k = 10;
  mn_search_result *res;
  ST_OK(mn_store_search(s, "pca", &p, &res));
  for (int qi = 0; qi < 3; qi++) {
    int64_t n;
    const mn_search_hit *h = mn_search_result_hits(res, qi, &n);
    assert_int_equal(n, 10);
    double best[10];
    for (int j = 0; j < 10; j++)
      best[j] = -1e300;
    for (int64_t i = 0; i < d.n; i++) {
      double sc = 0;
      for (int c = 0; c < k; c++)
        sc += qp[qi * k + c] * d.vec[i * k + c];
      for (int j = 0; j < 10; j++)
        if (sc > best[j]) {
          memmove(best + j + 1, best + j, sizeof(double) * (size_t)(9 - j));
          best[j] = sc;
          break;
        }
    }
    for (int j = 0; j < 10; j++) {
      int64_t i = parse_idx(h[j].id);
      double sc = 0;
      for (int c = 0; c < k; c++)
        sc += qp[qi * k + c] * d.vec[i * k + c];
      assert_true(fabs(h[j].score - sc) < 1e-4 * (1 + fabs(sc)));
      assert_true(sc >= best[j] - 1e-4 * (1 + fabs(sc)));
    }
  }
  mn_search_result_free(res);
  (void)qpf;
  /* The model was copied into the store: a reopen without the resolver
   * still searches the same way. */
  mn_store_close(s);
  o.pca_resolve = NULL;
  ST_OK(mn_store_open(&o, &s));
  ST_OK(mn_store_collection_get(s, "pca", &info));
  assert_int_equal(info.width, k);
  assert_int_equal(info.count, 2000);
  ST_OK(mn_store_search(s, "pca", &p, &res));
  int64_t n;
  const mn_search_hit *h = mn_search_result_hits(res, 0, &n);
  assert_int_equal(n, 10);
  double sc = 0;
  int64_t i = parse_idx(h[0].id);
  for (int c = 0; c < k; c++)
    sc += qp[c] * d.vec[i * k + c];
  assert_true(fabs(h[0].score - sc) < 1e-4 * (1 + fabs(sc)));
  mn_search_result_free(res);
  mn_store_close(s);
  ds_free(&d);
  mn_pca_free(g_model);
  rm_rf(dir);
  free(dir);
}

/* The best rows of a chunk deleted: the fast path must still find k live
 * rows (it asks each chunk for k + its dead rows). Vectors are multiples
 * of e0, so with the inner product row i scores i. */
static void test_dead_rows(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  o.chunk_rows = 256;
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  mn_collection_opts co = coll_opts("dead", 4, MN_METRIC_IP, MN_DTYPE_F32);
  ST_OK(mn_store_collection_create(s, &co, NULL));
  enum { N = 512 };
  static float v[N * 4];
  static mn_memory_in m[N];
  static char ids[N][16];
  for (int i = 0; i < N; i++) {
    /* Chunk 0 holds the high scores (rows 0..255 score 1000+i). */
    v[i * 4] = (float)(i < 256 ? 1000 + i : i - 256);
    mn_memory_in_init(&m[i]);
    snprintf(ids[i], sizeof ids[i], "r%d", i);
    m[i].id = ids[i];
    m[i].embedding = v + i * 4;
  }
  ST_OK(mn_store_add(s, "dead", m, N, NULL));
  const char *del[40];
  for (int i = 0; i < 40; i++)
    del[i] = ids[255 - i];
  ST_OK(mn_store_delete(s, "dead", del, 40, NULL, NULL));
  float q[4] = {1, 0, 0, 0};
  mn_search_params p;
  mn_search_params_init(&p);
  p.queries = q;
  p.n_queries = 1;
  p.dim = 4;
  p.k = 30;
  mn_search_result *res;
  for (int pass = 0; pass < 2; pass++) {
    ST_OK(mn_store_search(s, "dead", &p, &res));
    int64_t n;
    const mn_search_hit *h = mn_search_result_hits(res, 0, &n);
    assert_int_equal(n, 30);
    for (int j = 0; j < 30; j++) {
      char want[16];
      snprintf(want, sizeof want, "r%d", 215 - j);
      assert_string_equal(h[j].id, want);
      assert_true(h[j].score == 1000.0 + 215 - j);
    }
    mn_search_result_free(res);
    /* Second pass: every row of chunk 0 deleted; chunk 1 answers. */
    const char *rest[216];
    for (int i = 0; i < 216; i++)
      rest[i] = ids[i];
    if (pass == 0)
      ST_OK(mn_store_delete(s, "dead", rest, 216, NULL, NULL));
    p.k = 30;
    if (pass == 0) {
      ST_OK(mn_store_search(s, "dead", &p, &res));
      h = mn_search_result_hits(res, 0, &n);
      assert_int_equal(n, 30);
      assert_string_equal(h[0].id, "r511");
      assert_true(h[0].score == 255.0);
      mn_search_result_free(res);
      break;
    }
  }
  mn_store_close(s);
  rm_rf(dir);
  free(dir);
}

/* The reference time of the decay is whatever the caller gives, the epoch
 * (0) included; only without has_now does the store read its clock. */
static void test_now_zero(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  test_clock clk = {T0};
  o.clock = test_clock_fn;
  o.clock_user = &clk;
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  mn_collection_opts co = coll_opts("t", 2, MN_METRIC_IP, MN_DTYPE_F32);
  ST_OK(mn_store_collection_create(s, &co, NULL));
  static const float v[2] = {1, 0};
  mn_memory_in m[2];
  static const char *ids[2] = {"epoch", "later"};
  static const double ts[2] = {0.0, 100.0};
  for (int i = 0; i < 2; i++) {
    mn_memory_in_init(&m[i]);
    m[i].id = ids[i];
    m[i].embedding = v;
    m[i].has_timestamp = 1;
    m[i].timestamp = ts[i];
    m[i].has_significance = 1;
    m[i].significance = 1.0;
  }
  ST_OK(mn_store_add(s, "t", m, 2, NULL));
  const double rate = 0.01;
  /* now, and the decay each memory must get (in insertion order). */
  struct {
    int has_now;
    double now;
    double decay[2];
  } cases[] = {
      {1, 0.0, {1.0, 1.0}}, /* neither is older than the epoch */
      {1, 50.0, {exp(-rate * 50.0), 1.0}},
      {1, -20.0, {1.0, 1.0}},
      {0, 0.0, {exp(-rate * T0), exp(-rate * (T0 - 100.0))}}, /* the clock */
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    mn_search_params p;
    mn_search_params_init(&p);
    p.queries = v;
    p.n_queries = 1;
    p.dim = 2;
    p.k = 2;
    p.time_decay = rate;
    p.has_now = cases[c].has_now;
    p.now = cases[c].now;
    mn_search_result *res;
    ST_OK(mn_store_search(s, "t", &p, &res));
    int64_t n;
    const mn_search_hit *h = mn_search_result_hits(res, 0, &n);
    assert_int_equal(n, 2);
    for (int j = 0; j < 2; j++) {
      int i = strcmp(h[j].id, "epoch") == 0 ? 0 : 1;
      double want = cases[c].decay[i];
      if (fabs(h[j].decay - want) > 1e-12 * (1 + want))
        fail_msg("now %g (has_now %d): %s decays %.17g, expected %.17g",
                 cases[c].now, cases[c].has_now, h[j].id, h[j].decay, want);
      assert_true(fabs(h[j].score - want) <= 1e-7 * (1 + want));
    }
    mn_search_result_free(res);
  }
  /* A given now must be finite; without has_now it is not looked at. */
  mn_search_params p;
  mn_search_params_init(&p);
  p.queries = v;
  p.n_queries = 1;
  p.dim = 2;
  p.has_now = 1;
  p.now = INFINITY;
  mn_search_result *res = NULL;
  assert_int_equal(mn_store_search(s, "t", &p, &res), MN_ERR_INVALID);
  p.has_now = 0;
  ST_OK(mn_store_search(s, "t", &p, &res));
  mn_search_result_free(res);
  mn_store_close(s);
  rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_metrics),  cmocka_unit_test(test_dtypes),
      cmocka_unit_test(test_pca),      cmocka_unit_test(test_dead_rows),
      cmocka_unit_test(test_now_zero),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
