/*
 * store_helpers.h - shared pieces of the store tests: temporary data
 * directories, a seeded random generator, a settable clock, and opening a
 * store with small, test-friendly options.
 */
#ifndef MNEMO_TEST_STORE_HELPERS_H
#define MNEMO_TEST_STORE_HELPERS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mnemo/store.h"

/* Print both values when an mn_status check fails (cmocka prints ints). */
#define ST_OK(expr)                                                            \
  do {                                                                         \
    mn_status st_ok_ = (expr);                                                 \
    if (st_ok_ != MN_OK)                                                       \
      print_error("%s failed: %s: %s\n", #expr, mn_status_name(st_ok_),        \
                  mn_errmsg());                                                \
    assert_int_equal(st_ok_, MN_OK);                                           \
  } while (0)

static int rm_entry(const char *p, const struct stat *sb, int flag,
                    struct FTW *f) {
  (void)sb;
  (void)flag;
  (void)f;
  return remove(p);
}

static inline void rm_rf(const char *dir) {
  nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh directory under $TMPDIR (or /tmp). */
static inline char *make_tmpdir(void) {
  const char *base = getenv("TMPDIR");
  char tmpl[512];
  snprintf(tmpl, sizeof tmpl, "%s/mnemo-store-XXXXXX",
           base && *base ? base : "/tmp");
  char *d = mkdtemp(tmpl);
  return d ? strdup(d) : NULL;
}

/* splitmix64: a small, seeded, reproducible generator. */
typedef struct rng {
  uint64_t s;
} rng;

static inline uint64_t rng_next(rng *r) {
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static inline double rng_unif(rng *r) {
  return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Standard normal (Box-Muller). */
static inline double rng_normal(rng *r) {
  double u = rng_unif(r), v = rng_unif(r);
  if (u < 1e-300)
    u = 1e-300;
  return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static inline void rng_vec(rng *r, float *v, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    v[i] = (float)rng_normal(r);
}

/* A clock the test moves by hand. */
typedef struct test_clock {
  double now;
} test_clock;

static inline double test_clock_fn(void *user) {
  return ((test_clock *)user)->now;
}

static inline void test_opts(mn_store_opts *o, const char *dir) {
  mn_store_opts_init(o);
  o->data_dir = dir;
  o->maintenance_ms = 0;
  o->durable = 0; /* tests that need fsync set it back */
  o->chunk_rows = 256;
  o->map_size = 64u << 20;
}

static inline mn_collection_opts coll_opts(const char *name, int64_t dim,
                                           mn_metric m, mn_dtype dt) {
  mn_collection_opts o;
  memset(&o, 0, sizeof o);
  o.name = name;
  o.dim = dim;
  o.metric = m;
  o.dtype = dt;
  return o;
}

/* ------------------------------------------------------------------------
 * A pair of stores holding the same memories (ids "x<i>", explicit
 * timestamps, significances and chats), to compare one search path with
 * another: a store with L1 on a device backend against a CPU-only one.
 * ---------------------------------------------------------------------- */
static inline void pair_add(mn_store *a, mn_store *b, const char *coll,
                            int64_t dim, int64_t n, int64_t base,
                            uint64_t seed) {
  rng r = {seed};
  float *v = malloc(sizeof(float) * (size_t)(n * dim));
  mn_memory_in *m = calloc((size_t)n, sizeof *m);
  char(*ids)[24] = malloc(24 * (size_t)n);
  static const char *const chats[] = {"c0", "c1", "c2"};
  rng_vec(&r, v, n * dim);
  for (int64_t i = 0; i < n; i++) {
    snprintf(ids[i], 24, "x%lld", (long long)(base + i));
    m[i].id = ids[i];
    m[i].embedding = v + i * dim;
    m[i].chat_id = chats[(base + i) % 3];
    m[i].has_timestamp = 1;
    m[i].timestamp = 1000.0 + (double)(base + i);
    m[i].has_significance = 1;
    m[i].significance = 0.05 + 0.9 * rng_unif(&r);
  }
  ST_OK(mn_store_add(a, coll, m, n, NULL));
  ST_OK(mn_store_add(b, coll, m, n, NULL));
  free(v);
  free(m);
  free(ids);
}

/* Delete x<i> for i in [0, n) with i % every == phase from both stores
 * (dead rows in every chunk: the fast path asks for k + dead rows). */
static inline void pair_delete(mn_store *a, mn_store *b, const char *coll,
                               int64_t n, int every, int phase) {
  const char **ids = malloc(sizeof(char *) * (size_t)n);
  char(*buf)[24] = malloc(24 * (size_t)n);
  int64_t m = 0;
  for (int64_t i = phase; i < n; i += every) {
    snprintf(buf[m], 24, "x%lld", (long long)i);
    ids[m] = buf[m];
    m++;
  }
  int64_t da = 0, db = 0;
  ST_OK(mn_store_delete(a, coll, ids, m, &da, NULL));
  ST_OK(mn_store_delete(b, coll, ids, m, &db, NULL));
  assert_int_equal(da, m);
  assert_int_equal(db, m);
  free(ids);
  free(buf);
}

/* `got` and `want` give the same hits up to float rounding: as many per
 * query, rank by rank scores within tol (relative to 1 + |score|), and
 * each hit of `got` either in `want` with its score or, where rounding
 * may swap near-ties at the cut, scoring as the last hit of `want`. */
static inline void results_agree(const mn_search_result *got,
                                 const mn_search_result *want, double tol,
                                 const char *what) {
  assert_int_equal(mn_search_result_queries(got),
                   mn_search_result_queries(want));
  for (int64_t qi = 0; qi < mn_search_result_queries(want); qi++) {
    int64_t ng, nw;
    const mn_search_hit *g = mn_search_result_hits(got, qi, &ng);
    const mn_search_hit *w = mn_search_result_hits(want, qi, &nw);
    if (ng != nw)
      fail_msg("%s: query %lld has %lld hits, the reference %lld", what,
               (long long)qi, (long long)ng, (long long)nw);
    for (int64_t j = 0; j < nw; j++) {
      double t = tol * (1 + fabs(w[j].score));
      if (!(fabs(g[j].score - w[j].score) <= t))
        fail_msg("%s: query %lld rank %lld scores %.9g (%s), the reference "
                 "%.9g (%s)",
                 what, (long long)qi, (long long)j, g[j].score, g[j].id,
                 w[j].score, w[j].id);
      int64_t f = -1;
      for (int64_t i = 0; i < nw && f < 0; i++)
        if (strcmp(w[i].id, g[j].id) == 0)
          f = i;
      if (f >= 0 ? !(fabs(g[j].score - w[f].score) <= t)
                 : !(fabs(g[j].score - w[nw - 1].score) <= t))
        fail_msg("%s: query %lld rank %lld is %s (%.9g), %s in the "
                 "reference",
                 what, (long long)qi, (long long)j, g[j].id, g[j].score,
                 f >= 0 ? "scored otherwise" : "missing");
    }
  }
}

/* The searches a pair is compared on: fast path (k from 1 to more than a
 * chunk, min_similarity) and general path (significance weight, decay,
 * chat and time filters), for `nq` queries. */
static inline void pair_searches(mn_store *dev, mn_store *cpu, const char *coll,
                                 int64_t dim, int64_t nq, int64_t big_k,
                                 uint64_t seed, double tol) {
  rng r = {seed};
  float *q = malloc(sizeof(float) * (size_t)(nq * dim));
  rng_vec(&r, q, nq * dim);
  const int64_t ks[] = {1, 10, big_k};
  for (int variant = 0; variant < 7; variant++) {
    mn_search_params p;
    mn_search_params_init(&p);
    p.queries = q;
    p.n_queries = nq;
    p.dim = dim;
    p.k = ks[variant % 3];
    p.has_now = 1;
    p.now = 5000;
    const char *name = "fast";
    switch (variant) {
    case 3:
      p.has_min_similarity = 1;
      p.min_similarity = 0.05;
      name = "fast, min_similarity";
      break;
    case 4:
      p.significance_weight = 0.5;
      name = "significance";
      break;
    case 5:
      p.chat_id = "c1";
      p.time_decay = 1e-4;
      name = "chat, decay";
      break;
    case 6:
      p.has_since = p.has_until = 1;
      p.since = 1100;
      p.until = 1000 + 1e9;
      name = "since";
      break;
    default:
      break;
    }
    mn_search_result *a, *b;
    ST_OK(mn_store_search(dev, coll, &p, &a));
    ST_OK(mn_store_search(cpu, coll, &p, &b));
    if (mn_search_result_cpu_fallback(a))
      fail_msg("%s: unexpected CPU fallback: %s", name,
               mn_search_result_cpu_fallback(a));
    char what[128];
    snprintf(what, sizeof what, "%s %s nq=%lld k=%lld", coll, name,
             (long long)nq, (long long)p.k);
    results_agree(a, b, tol, what);
    mn_search_result_free(a);
    mn_search_result_free(b);
  }
  free(q);
}

#endif /* MNEMO_TEST_STORE_HELPERS_H */
