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

#endif /* MNEMO_TEST_STORE_HELPERS_H */
