/*
 * test_store_norms.c - the row norms the store hands a device backend with
 * its L1 chunks (mn_vecblock.norms, compute.h: "each decoded row's L2
 * norm"). A stand-in GPU backend ("device" memory is host memory) scores
 * in double precision straight from the codes and, for every block it is
 * given, checks the norms: present for cosine and L2 (binary rows have
 * none), inside the device buffer that holds the block's codes and past
 * its rows, and equal to the norm of each decoded row computed here in
 * double. Its results must match a CPU-only store holding the same
 * memories.
 *
 * Covered: float32 (raw and normalised), float16 and int8 storage; cosine
 * and L2 (ip and binary for the results); rows appended to a chunk already
 * on the device; rows deleted and updated; chunks moved down to L2 and
 * uploaded again; rows appended while a chunk is in L2; chunks read back
 * from disk after a reopen; device out of memory (the search finishes on
 * the CPU, L1 shrinks, chunks come back up once the ceiling lifts).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <cmocka.h>

#include "common/internal.h"
#include "compute/backend_impl.h"
#include "store_helpers.h"

/* ------------------------------------------------------------------------
 * The stand-in device.
 * ---------------------------------------------------------------------- */
typedef struct ng_alloc {
  char *p;
  size_t n;
} ng_alloc;

typedef struct ngpu {
  mn_backend base;
  pthread_mutex_t mu;
  ng_alloc *allocs; /* live allocations */
  int64_t nallocs, cap;
  int fail_ops; /* this many batched calls fail with device out of memory */
  /* what the store handed over (under mu) */
  int64_t blocks;    /* blocks scored */
  int64_t need;      /* of those, cosine / L2 on non-binary rows */
  int64_t missing;   /* of those, without norms */
  int64_t misplaced; /* norms outside the codes' device buffer */
  int64_t checked;   /* rows whose norm was checked */
  int64_t bad;       /* rows whose norm is off */
  double max_rel;    /* largest relative error of a checked norm */
  char first_bad[256];
} ngpu;

static ngpu *ng(mn_backend *b) {
  return (ngpu *)b;
}

static void ng_destroy(mn_backend *b) {
  assert_int_equal(ng(b)->nallocs, 0);
  pthread_mutex_destroy(&ng(b)->mu);
  free(ng(b)->allocs);
  free(b);
}

static mn_status ng_alloc_fn(mn_backend *b, size_t n, void **out) {
  ngpu *g = ng(b);
  char *p = malloc(n ? n : 1);
  if (!p)
    return mn__set_error(MN_ERR_DEVICE_OOM, "stand-in gpu: no %zu bytes", n);
  pthread_mutex_lock(&g->mu);
  if (g->nallocs == g->cap) {
    int64_t cap = g->cap ? 2 * g->cap : 64;
    ng_alloc *v = realloc(g->allocs, sizeof *v * (size_t)cap);
    if (!v) {
      pthread_mutex_unlock(&g->mu);
      free(p);
      return mn__set_error(MN_ERR_DEVICE_OOM, "stand-in gpu: no room to "
                                              "track an allocation");
    }
    g->allocs = v;
    g->cap = cap;
  }
  g->allocs[g->nallocs++] = (ng_alloc){p, n};
  pthread_mutex_unlock(&g->mu);
  *out = p;
  return MN_OK;
}

static void ng_free(mn_backend *b, void *p) {
  ngpu *g = ng(b);
  pthread_mutex_lock(&g->mu);
  for (int64_t i = 0; i < g->nallocs; i++)
    if (g->allocs[i].p == p) {
      g->allocs[i] = g->allocs[--g->nallocs];
      break;
    }
  pthread_mutex_unlock(&g->mu);
  free(p);
}

static mn_status ng_copy(mn_backend *b, void *d, const void *s, size_t n) {
  (void)b;
  memcpy(d, s, n);
  return MN_OK;
}

static mn_status ng_info(mn_backend *b, uint64_t *fr, uint64_t *tot) {
  (void)b;
  *fr = *tot = 1ull << 30;
  return MN_OK;
}

/* The live allocation holding p (mu held), or NULL. */
static const ng_alloc *ng_find(const ngpu *g, const void *p) {
  for (int64_t i = 0; i < g->nallocs; i++)
    if ((const char *)p >= g->allocs[i].p &&
        (const char *)p < g->allocs[i].p + g->allocs[i].n)
      return &g->allocs[i];
  return NULL;
}

static double half_to_double(uint16_t h) {
  int e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0    ? ldexp(m, -24)
             : e == 31 ? (m ? NAN : INFINITY)
                       : ldexp(m + 1024, e - 25);
  return h >> 15 ? -v : v;
}

/* Row r of a block, decoded in double (binary: +1 / -1). The backend's
 * functions run on the store's threads: they report, never assert. */
static mn_status decode_row(const mn_vecblock *db, int64_t r, double *x) {
  const char *row = (const char *)db->codes.data + r * db->codes.stride;
  for (int64_t c = 0; c < db->codes.cols; c++) {
    switch (db->codes.dtype) {
    case MN_DTYPE_F32: {
      float v;
      memcpy(&v, row + 4 * c, 4);
      x[c] = v;
      break;
    }
    case MN_DTYPE_F16: {
      uint16_t h;
      memcpy(&h, row + 2 * c, 2);
      x[c] = half_to_double(h);
      break;
    }
    case MN_DTYPE_I8:
      x[c] = (double)((const int8_t *)row)[c] * (double)db->scales[r];
      break;
    case MN_DTYPE_BIN:
      x[c] = ((const uint8_t *)row)[c >> 3] >> (c & 7) & 1 ? 1.0 : -1.0;
      break;
    default:
      return mn__set_error(MN_ERR_UNSUPPORTED, "stand-in gpu: dtype %s",
                           mn_dtype_name(db->codes.dtype));
    }
  }
  return MN_OK;
}

/* Record what the block brings: where its norms are, and whether each is
 * its decoded row's norm (x: rows x cols decoded). */
static void ng_check_norms(ngpu *g, const mn_vecblock *db, mn_metric m,
                           const double *x) {
  const int64_t rows = db->codes.rows, cols = db->codes.cols;
  const int need = m != MN_METRIC_IP && db->codes.dtype != MN_DTYPE_BIN;
  pthread_mutex_lock(&g->mu);
  g->blocks++;
  g->need += need;
  if (!db->norms) {
    g->missing += need;
    pthread_mutex_unlock(&g->mu);
    return;
  }
  /* The norms live in the device buffer of the codes, after its rows. */
  const ng_alloc *a = ng_find(g, db->codes.data);
  const char *nb = (const char *)db->norms, *ne = nb + 4 * rows;
  if (!a || nb < (const char *)db->codes.data + rows * db->codes.stride ||
      ne > a->p + a->n || (uintptr_t)nb % 4 != 0)
    g->misplaced++;
  for (int64_t r = 0; r < rows && a; r++) {
    double s = 0;
    for (int64_t c = 0; c < cols; c++)
      s += x[r * cols + c] * x[r * cols + c];
    const double want = sqrt(s), got = db->norms[r];
    const double rel = fabs(got - want) / (want > 0 ? want : 1.0);
    g->checked++;
    if (rel > g->max_rel)
      g->max_rel = rel;
    if (!(rel <= 1e-5)) {
      if (!g->bad++)
        snprintf(g->first_bad, sizeof g->first_bad,
                 "%s row %lld of %lld: norm %.9g, decoded row's %.9g",
                 mn_dtype_name(db->codes.dtype), (long long)r, (long long)rows,
                 got, want);
    }
  }
  pthread_mutex_unlock(&g->mu);
}

/* Similarities of q with the block's rows into out (row qi at
 * out + qi * ldo), in double from the codes, the norms as given. */
static mn_status ng_score(ngpu *g, const mn_tensor *q, const mn_vecblock *db,
                          mn_metric m, float *out, int64_t ldo) {
  if (q->device != MN_DEVICE_GPU || db->codes.device != MN_DEVICE_GPU)
    return mn__set_error(MN_ERR_INTERNAL, "stand-in gpu: host tensors");
  const int64_t rows = db->codes.rows, cols = db->codes.cols;
  double *x = malloc(sizeof(double) * (size_t)(rows * cols + 1));
  if (!x)
    return mn__set_error(MN_ERR_NOMEM, "stand-in gpu: out of memory");
  for (int64_t r = 0; r < rows; r++) {
    mn_status st = decode_row(db, r, x + r * cols);
    if (st != MN_OK) {
      free(x);
      return st;
    }
  }
  ng_check_norms(g, db, m, x);
  const int bin = db->codes.dtype == MN_DTYPE_BIN;
  for (int64_t qi = 0; qi < q->rows; qi++) {
    const float *qv = (const float *)((const char *)q->data + qi * q->stride);
    double qq = 0;
    for (int64_t c = 0; c < cols; c++)
      qq += (double)qv[c] * qv[c];
    for (int64_t r = 0; r < rows; r++) {
      const double *xr = x + r * cols;
      double dot = 0, xx = 0, v;
      for (int64_t c = 0; c < cols; c++) {
        double qc = bin ? (qv[c] > 0 ? 1.0 : -1.0) : qv[c];
        dot += qc * xr[c];
        xx += xr[c] * xr[c];
      }
      if (bin) {
        v = m == MN_METRIC_IP       ? dot
            : m == MN_METRIC_COSINE ? dot / (double)cols
                                    : 2.0 * ((double)cols - dot);
      } else {
        double xn = db->norms ? fabs((double)db->norms[r]) : sqrt(xx);
        double qn = sqrt(qq);
        v = m == MN_METRIC_IP       ? dot
            : m == MN_METRIC_COSINE ? (qn > 0 && xn > 0 ? dot / (qn * xn) : 0.0)
                                    : fmax(qq + xn * xn - 2.0 * dot, 0.0);
      }
      out[qi * ldo + r] = (float)v;
    }
  }
  free(x);
  return MN_OK;
}

static mn_status ng_similarity(mn_backend *b, const mn_tensor *q,
                               const mn_vecblock *db, mn_metric m,
                               mn_tensor *out) {
  return ng_score(ng(b), q, db, m, out->data, out->stride / 4);
}

static mn_status ng_search(mn_backend *b, const mn_tensor *q,
                           const mn_vecblock *db, mn_metric m, int64_t k,
                           int64_t base, float *sc, int64_t *ids) {
  const int64_t rows = db->codes.rows;
  float *sims = malloc(sizeof(float) * (size_t)(q->rows * rows + 1));
  if (!sims)
    return mn__set_error(MN_ERR_NOMEM, "stand-in gpu: out of memory");
  mn_status st = ng_score(ng(b), q, db, m, sims, rows);
  mn_tensor t = mn_tensor_host(sims, MN_DTYPE_F32, q->rows, rows);
  if (st == MN_OK)
    st = mn_topk(&t, k, m != MN_METRIC_L2, sc, ids);
  for (int64_t i = 0; st == MN_OK && i < q->rows * k; i++)
    if (ids[i] >= 0)
      ids[i] += base;
  free(sims);
  return st;
}

static mn_status ng_fail(ngpu *g, const char *op) {
  pthread_mutex_lock(&g->mu);
  int fail = g->fail_ops > 0;
  g->fail_ops -= fail;
  pthread_mutex_unlock(&g->mu);
  return fail ? mn__set_error(MN_ERR_DEVICE_OOM,
                              "stand-in gpu: %s out of memory", op)
              : MN_OK;
}

static mn_status ng_search_many(mn_backend *b, const mn_tensor *q,
                                mn_search_block *bl, int64_t nb, mn_metric m) {
  MN__TRY(ng_fail(ng(b), "search_many"));
  for (int64_t i = 0; i < nb; i++)
    MN__TRY(ng_search(b, q, &bl[i].db, m, bl[i].k, 0, bl[i].scores, bl[i].ids));
  return MN_OK;
}

static mn_status ng_similarity_many(mn_backend *b, const mn_tensor *q,
                                    const mn_vecblock *dbs, int64_t nb,
                                    mn_metric m, mn_tensor *out) {
  MN__TRY(ng_fail(ng(b), "similarity_many"));
  int64_t col = 0;
  for (int64_t i = 0; i < nb; i++) {
    MN__TRY(ng_score(ng(b), q, &dbs[i], m, (float *)out->data + col,
                     out->stride / 4));
    col += dbs[i].codes.rows;
  }
  return MN_OK;
}

static const mn_backend_iface ng_iface = {
    .api_version = MN_BACKEND_API_VERSION,
    .name = "normgpu",
    .destroy = ng_destroy,
    .alloc = ng_alloc_fn,
    .free = ng_free,
    .upload = ng_copy,
    .download = ng_copy,
    .memory_info = ng_info,
    .similarity = ng_similarity,
    .search = ng_search,
    .search_many = ng_search_many,
    .similarity_many = ng_similarity_many,
};

static ngpu *ng_new(void) {
  ngpu *g = calloc(1, sizeof *g);
  assert_non_null(g);
  g->base.iface = &ng_iface;
  g->base.device_kind = MN_DEVICE_GPU;
  snprintf(g->base.device, sizeof g->base.device, "norm-checking gpu");
  pthread_mutex_init(&g->mu, NULL);
  return g;
}

static void ng_reset(ngpu *g) {
  pthread_mutex_lock(&g->mu);
  g->blocks = g->need = g->missing = g->misplaced = 0;
  g->checked = g->bad = 0;
  g->max_rel = 0;
  g->first_bad[0] = '\0';
  pthread_mutex_unlock(&g->mu);
}

/* Every block that needed norms had them, in place and right. */
static void ng_expect_good(const ngpu *g, const char *what) {
  if (g->missing)
    fail_msg("%s: %lld of %lld cosine / L2 blocks came without norms", what,
             (long long)g->missing, (long long)g->need);
  if (g->misplaced)
    fail_msg("%s: %lld blocks had norms outside their device buffer", what,
             (long long)g->misplaced);
  if (g->bad)
    fail_msg("%s: %lld of %lld norms are off (largest relative error %.3g); "
             "first: %s",
             what, (long long)g->bad, (long long)g->checked, g->max_rel,
             g->first_bad);
}

/* ------------------------------------------------------------------------
 * Helpers.
 * ---------------------------------------------------------------------- */
typedef struct fixture {
  ngpu *g;
  mn_store *s, *cpu;
  char *dir, *dir2;
  mn_store_opts o;
  test_clock clk;
} fixture;

static void fx_open(fixture *f, int64_t chunk_rows, uint64_t l1_budget) {
  f->g = ng_new();
  f->dir = make_tmpdir();
  f->dir2 = make_tmpdir();
  mn_store_opts o2;
  test_opts(&f->o, f->dir);
  test_opts(&o2, f->dir2);
  f->clk.now = 1e6;
  f->o.clock = test_clock_fn;
  f->o.clock_user = &f->clk;
  f->o.backend = &f->g->base;
  f->o.chunk_rows = o2.chunk_rows = chunk_rows;
  f->o.l1_budget = l1_budget;
  ST_OK(mn_store_open(&f->o, &f->s));
  ST_OK(mn_store_open(&o2, &f->cpu));
}

static void fx_close(fixture *f) {
  mn_store_close(f->s);
  mn_store_close(f->cpu);
  mn_backend_close(&f->g->base);
  rm_rf(f->dir);
  rm_rf(f->dir2);
  free(f->dir);
  free(f->dir2);
}

static void fx_create(fixture *f, const char *name, int64_t dim, mn_metric m,
                      mn_dtype dt, int normalize) {
  mn_collection_opts co = coll_opts(name, dim, m, dt);
  co.normalize = normalize;
  ST_OK(mn_store_collection_create(f->s, &co, NULL));
  ST_OK(mn_store_collection_create(f->cpu, &co, NULL));
}

static mn_collection_info coll_info(mn_store *s, const char *name) {
  mn_collection_info ci;
  ST_OK(mn_store_collection_get(s, name, &ci));
  return ci;
}

/* One fast-path search of the device store (one query: every chunk with a
 * live row is scored whole, once) against the CPU store. Returns the rows
 * whose norms the device checked. */
static int64_t one_search(fixture *f, const char *name, int64_t dim,
                          uint64_t seed, const char *want_fallback) {
  rng r = {seed};
  float *q = malloc(sizeof(float) * (size_t)dim);
  rng_vec(&r, q, dim);
  mn_search_params p;
  mn_search_params_init(&p);
  p.queries = q;
  p.n_queries = 1;
  p.dim = dim;
  p.k = 10;
  ng_reset(f->g);
  mn_search_result *a, *b;
  ST_OK(mn_store_search(f->s, name, &p, &a));
  ST_OK(mn_store_search(f->cpu, name, &p, &b));
  const char *fb = mn_search_result_cpu_fallback(a);
  if (want_fallback ? !fb || !strstr(fb, want_fallback) : fb != NULL)
    fail_msg("%s: CPU fallback \"%s\", expected %s", name, fb ? fb : "none",
             want_fallback ? want_fallback : "none");
  ng_expect_good(f->g, name);
  results_agree(a, b, 1e-4, name);
  mn_search_result_free(a);
  mn_search_result_free(b);
  free(q);
  return f->g->checked;
}

/* The pair's searches (fast and general paths, 1 and 3 queries) with every
 * device block's norms checked. */
static void all_searches(fixture *f, const char *name, int64_t dim,
                         int64_t big_k, uint64_t seed) {
  ng_reset(f->g);
  pair_searches(f->s, f->cpu, name, dim, 1, big_k, seed, 1e-4);
  pair_searches(f->s, f->cpu, name, dim, 3, big_k, seed + 1, 1e-4);
  ng_expect_good(f->g, name);
  assert_true(f->g->blocks > 0);
}

/* Device bytes of a chunk of `rows` rows of `row_bytes` (store_chunk.c:
 * codes, int8 scales, norms; 256-byte sections). */
static uint64_t dev_chunk_bytes(int64_t rows, int64_t row_bytes, int i8) {
  uint64_t codes = ((uint64_t)(rows * row_bytes) + 255) & ~(uint64_t)255;
  uint64_t scales = i8 ? ((uint64_t)rows * 4 + 255) & ~(uint64_t)255 : 0;
  return codes + scales + (uint64_t)rows * 4;
}

static int64_t row_bytes_of(mn_dtype dt, int64_t dim) {
  return dt == MN_DTYPE_F32   ? 4 * dim
         : dt == MN_DTYPE_F16 ? 2 * dim
         : dt == MN_DTYPE_I8  ? dim
                              : (dim + 7) / 8;
}

/* ------------------------------------------------------------------------
 * Tests.
 * ---------------------------------------------------------------------- */
enum { CR = 64, DIM = 37 };

typedef struct variant {
  mn_dtype dt;
  mn_metric m;
  int normalize;
} variant;

static const variant variants[] = {
    {MN_DTYPE_F32, MN_METRIC_COSINE, 0}, {MN_DTYPE_F32, MN_METRIC_L2, 0},
    {MN_DTYPE_F32, MN_METRIC_COSINE, 1}, {MN_DTYPE_F16, MN_METRIC_COSINE, 0},
    {MN_DTYPE_F16, MN_METRIC_L2, 0},     {MN_DTYPE_I8, MN_METRIC_COSINE, 0},
    {MN_DTYPE_I8, MN_METRIC_L2, 0},      {MN_DTYPE_I8, MN_METRIC_IP, 0},
    {MN_DTYPE_BIN, MN_METRIC_COSINE, 0},
};

static void variant_name(const variant *v, char *out, size_t cap) {
  snprintf(out, cap, "%s_%s%s", mn_dtype_name(v->dt), mn_metric_name(v->m),
           v->normalize ? "_norm" : "");
}

/* Rows added, then appended to chunks already on the device (several small
 * adds), then some deleted and updated: every search hands over every
 * row's norm, right. */
static void test_norms_after_writes(void **state) {
  (void)state;
  fixture f;
  fx_open(&f, CR, 0);
  for (size_t vi = 0; vi < sizeof variants / sizeof *variants; vi++) {
    const variant *v = &variants[vi];
    /* Every decoded row but a binary one has its norm handed over (ip
     * needs none but gets them, as on the host). */
    const int norms = v->dt != MN_DTYPE_BIN;
    char name[48];
    variant_name(v, name, sizeof name);
    fx_create(&f, name, DIM, v->m, v->dt, v->normalize);
    const uint64_t seed = 1000 + 10 * vi;
    int64_t n = CR + 36;
    pair_add(f.s, f.cpu, name, DIM, n, 0, seed);
    assert_int_equal(coll_info(f.s, name).chunks_tier[MN_TIER_DEVICE], 2);
    assert_int_equal(one_search(&f, name, DIM, seed + 1, NULL), norms ? n : 0);
    all_searches(&f, name, DIM, 70, seed + 2);

    /* Appends: the second chunk (on the device) fills, a third starts. */
    for (int b = 0; b < 4; b++, n += 10)
      pair_add(f.s, f.cpu, name, DIM, 10, n, seed + 3 + (uint64_t)b);
    assert_int_equal(coll_info(f.s, name).chunks_tier[MN_TIER_DEVICE], 3);
    assert_int_equal(one_search(&f, name, DIM, seed + 7, NULL), norms ? n : 0);

    /* Deletes and updates leave the rows (and their norms) in place. */
    pair_delete(f.s, f.cpu, name, n, 7, 3);
    for (int64_t i = 1; i < n; i += 11) {
      char id[24];
      snprintf(id, sizeof id, "x%lld", (long long)i);
      if (i % 7 == 3)
        continue;
      mn_memory_update u = {0};
      u.content = "changed";
      u.has_significance = 1;
      u.significance = 0.9;
      ST_OK(mn_store_update(f.s, name, id, &u, 0, NULL));
      ST_OK(mn_store_update(f.cpu, name, id, &u, 0, NULL));
    }
    assert_int_equal(one_search(&f, name, DIM, seed + 8, NULL), norms ? n : 0);
    all_searches(&f, name, DIM, 70, seed + 9);
  }
  fx_close(&f);
}

/* Chunks moved down to L2 by another collection's, uploaded again when
 * used; rows appended to a chunk while it is in L2. */
static void test_norms_reupload(void **state) {
  (void)state;
  const mn_dtype dts[] = {MN_DTYPE_F32, MN_DTYPE_F16, MN_DTYPE_I8};
  for (int di = 0; di < 3; di++) {
    const mn_dtype dt = dts[di];
    /* L1 holds three chunks. */
    const uint64_t chunk =
        dev_chunk_bytes(CR, row_bytes_of(dt, DIM), dt == MN_DTYPE_I8);
    fixture f;
    fx_open(&f, CR, 3 * chunk);
    fx_create(&f, "a", DIM, MN_METRIC_COSINE, dt, 0);
    fx_create(&f, "b", DIM, MN_METRIC_L2, dt, 0);
    const int64_t na = 2 * CR + 20, nb = 3 * CR;
    pair_add(f.s, f.cpu, "a", DIM, na, 0, 50 + (uint64_t)di);
    pair_add(f.s, f.cpu, "b", DIM, nb, 0, 60 + (uint64_t)di);
    /* b's chunks took L1 from a's. */
    assert_int_equal(coll_info(f.s, "a").chunks_tier[MN_TIER_DEVICE], 0);
    assert_int_equal(coll_info(f.s, "b").chunks_tier[MN_TIER_DEVICE], 3);
    mn_store_stats st;
    mn_store_get_stats(f.s, &st);
    const int64_t promotions = st.promotions;

    /* Using a brings its chunks back up (and sends b's down). */
    assert_int_equal(one_search(&f, "a", DIM, 70, NULL), na);
    assert_int_equal(coll_info(f.s, "a").chunks_tier[MN_TIER_DEVICE], 3);
    assert_int_equal(coll_info(f.s, "b").chunks_tier[MN_TIER_DEVICE], 0);
    all_searches(&f, "a", DIM, 100, 71);

    /* ... and b's come back in turn. */
    assert_int_equal(one_search(&f, "b", DIM, 72, NULL), nb);
    assert_int_equal(coll_info(f.s, "b").chunks_tier[MN_TIER_DEVICE], 3);
    assert_int_equal(coll_info(f.s, "a").chunks_tier[MN_TIER_HOST], 3);
    all_searches(&f, "b", DIM, 100, 73);

    /* Rows appended to a's last chunk while it is in L2, uploaded with it
     * when a is used again. */
    pair_add(f.s, f.cpu, "a", DIM, 30, na, 74);
    assert_int_equal(coll_info(f.s, "a").chunks_tier[MN_TIER_DEVICE], 0);
    assert_int_equal(one_search(&f, "a", DIM, 75, NULL), na + 30);
    assert_int_equal(coll_info(f.s, "a").chunks_tier[MN_TIER_DEVICE], 3);
    all_searches(&f, "a", DIM, 100, 76);
    mn_store_get_stats(f.s, &st);
    assert_int_equal(st.promotions - promotions, 9);
    fx_close(&f);
  }
}

/* After a reopen the chunks come from disk (norms from the row records)
 * onto the device. */
static void test_norms_reopen(void **state) {
  (void)state;
  fixture f;
  fx_open(&f, CR, 0);
  fx_create(&f, "c", DIM, MN_METRIC_COSINE, MN_DTYPE_I8, 0);
  fx_create(&f, "d", DIM, MN_METRIC_L2, MN_DTYPE_F16, 0);
  const int64_t n = 3 * CR - 5;
  pair_add(f.s, f.cpu, "c", DIM, n, 0, 80);
  pair_add(f.s, f.cpu, "d", DIM, n, 0, 81);
  pair_delete(f.s, f.cpu, "c", n, 4, 1);
  mn_store_close(f.s);
  ST_OK(mn_store_open(&f.o, &f.s));
  mn_store_stats st;
  for (int i = 0; i < 2000; i++) {
    mn_store_get_stats(f.s, &st);
    if (!st.warming)
      break;
    nanosleep(&(struct timespec){0, 5000000}, NULL);
  }
  assert_false(st.warming);
  assert_int_equal(st.chunks[MN_TIER_DEVICE], 6);
  /* c's chunks hold only the rows the deletes left (rebuilt from the row
   * records). */
  assert_int_equal(one_search(&f, "c", DIM, 82, NULL),
                   coll_info(f.s, "c").count);
  assert_true(coll_info(f.s, "c").count < n);
  assert_int_equal(one_search(&f, "d", DIM, 83, NULL), n);
  all_searches(&f, "c", DIM, 100, 84);
  all_searches(&f, "d", DIM, 100, 85);
  fx_close(&f);
}

/* Device out of memory in a search: the CPU finishes it, L1 gives chunks
 * back to L2; once the ceiling lifts they are uploaded again. */
static void test_norms_after_oom(void **state) {
  (void)state;
  fixture f;
  fx_open(&f, CR, 0);
  fx_create(&f, "e", DIM, MN_METRIC_COSINE, MN_DTYPE_I8, 0);
  const int64_t n = 4 * CR;
  pair_add(f.s, f.cpu, "e", DIM, n, 0, 90);
  assert_int_equal(coll_info(f.s, "e").chunks_tier[MN_TIER_DEVICE], 4);
  f.g->fail_ops = 1;
  one_search(&f, "e", DIM, 91, "search_many out of memory");
  assert_int_equal(coll_info(f.s, "e").chunks_tier[MN_TIER_DEVICE], 3);
  /* Three chunks on the device, one read from L2. */
  assert_int_equal(one_search(&f, "e", DIM, 92, NULL), 3 * CR);
  all_searches(&f, "e", DIM, 100, 93);
  /* The ceiling lifts: the chunk comes back up. */
  f.clk.now += 120;
  assert_int_equal(one_search(&f, "e", DIM, 94, NULL), n);
  assert_int_equal(coll_info(f.s, "e").chunks_tier[MN_TIER_DEVICE], 4);
  all_searches(&f, "e", DIM, 100, 95);
  fx_close(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_norms_after_writes),
      cmocka_unit_test(test_norms_reupload),
      cmocka_unit_test(test_norms_reopen),
      cmocka_unit_test(test_norms_after_oom),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
