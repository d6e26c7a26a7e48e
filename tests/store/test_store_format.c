/*
 * test_store_format.c - the store's on-disk layout (docs/store.md,
 * src/store/store_internal.h):
 *  - vectors packed in runs: every row read back exactly (by id, and as
 *    the reopened chunks hold it, through search), with the layout checked
 *    in LMDB directly: runs never overlap, every live row has its vector
 *    in exactly one run, a run of a full add holds run_rows rows, deletes
 *    remove a run that has no live row left and rewrite one that is at
 *    least half dead (so no run is half dead or worse);
 *  - a store in format 1 (one vector record per row), written here by
 *    hand from a format 2 store, partly converted already as a crash in
 *    the middle of a conversion leaves it, is converted at open;
 *  - an unknown format version, or a damaged format 1 record, is refused
 *    with an error naming the store's directory.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <lmdb.h>

#include "store_helpers.h"

#define BIG 768 /* a float32 row is 3 KiB: one 4 KiB page each in format 1 */
#define SMALL 40
#define MAXROWS 1024

/* The vector of row i of a collection. */
static void vec_of(int coll, int i, float *v, int dim) {
  rng r = {(uint64_t)coll * 1000003ull + (uint64_t)i};
  rng_vec(&r, v, dim);
}

static void open_store(const char *dir, mn_store **s) {
  mn_store_opts o;
  test_opts(&o, dir);
  o.map_size = 64u << 20;
  ST_OK(mn_store_open(&o, s));
}

static void add_rows(mn_store *s, const char *coll, int ci, int dim, int from,
                     int n) {
  mn_memory_in *m = calloc((size_t)n, sizeof *m);
  float *v = malloc(sizeof(float) * (size_t)(n * dim));
  char(*ids)[32] = malloc(32 * (size_t)n);
  for (int i = 0; i < n; i++) {
    vec_of(ci, from + i, v + i * dim, dim);
    snprintf(ids[i], 32, "r%d", from + i);
    mn_memory_in_init(&m[i]);
    m[i].id = ids[i];
    m[i].embedding = v + i * dim;
    m[i].content = ids[i];
    m[i].chat_id = "c";
  }
  ST_OK(mn_store_add(s, coll, m, n, NULL));
  free(m);
  free(v);
  free(ids);
}

static void del_rows(mn_store *s, const char *coll, const int *rows, int n) {
  char(*ids)[32] = malloc(32 * (size_t)n);
  const char **p = malloc(sizeof *p * (size_t)n);
  for (int i = 0; i < n; i++) {
    snprintf(ids[i], 32, "r%d", rows[i]);
    p[i] = ids[i];
  }
  int64_t deleted = 0;
  ST_OK(mn_store_delete(s, coll, p, n, &deleted, NULL));
  assert_int_equal(deleted, n);
  free(ids);
  free(p);
}

/* Every row 0..total-1: present with its exact vector (float32) or within
 * float16 rounding when live[i], absent otherwise; and each live row found
 * first by an exact cosine search for its own vector (the chunks' copy). */
static void verify(mn_store *s, const char *coll, int ci, int dim, int f16,
                   const uint8_t *live, int total) {
  static const char *ids[MAXROWS];
  static char buf[MAXROWS][32];
  assert_true(total > 0 && total <= MAXROWS);
  for (int i = 0; i < total; i++) {
    snprintf(buf[i], 32, "r%d", i);
    ids[i] = buf[i];
  }
  mn_memory_list *l;
  ST_OK(mn_store_get(s, coll, ids, total, MN_INCLUDE_EMBEDDING, &l));
  int n_live = 0;
  for (int i = 0; i < total; i++)
    n_live += live[i];
  assert_int_equal(mn_memory_list_count(l), n_live);
  float *v = malloc(sizeof(float) * (size_t)dim);
  for (int64_t j = 0; j < mn_memory_list_count(l); j++) {
    const mn_memory *m = mn_memory_list_at(l, j);
    int i = atoi(m->id + 1);
    assert_true(i >= 0 && i < total && live[i]);
    vec_of(ci, i, v, dim);
    for (int d = 0; d < dim; d++) {
      if (f16)
        assert_true(fabsf(m->embedding[d] - v[d]) <=
                    fabsf(v[d]) / 2048 + 6.2e-5f);
      else
        assert_true(m->embedding[d] == v[d]);
    }
  }
  mn_memory_list_free(l);
  for (int i = 0; i < total; i += 7) {
    if (!live[i])
      continue;
    vec_of(ci, i, v, dim);
    mn_search_params sp;
    mn_search_params_init(&sp);
    sp.queries = v;
    sp.n_queries = 1;
    sp.dim = dim;
    sp.k = 1;
    mn_search_result *r;
    ST_OK(mn_store_search(s, coll, &sp, &r));
    int64_t n;
    const mn_search_hit *h = mn_search_result_hits(r, 0, &n);
    assert_int_equal(n, 1);
    assert_string_equal(h[0].id, buf[i]);
    assert_true(fabs(h[0].similarity - 1.0) < 1e-3);
    mn_search_result_free(r);
  }
  free(v);
}

/* ------------------------------------------------------------------------
 * Raw LMDB (the store closed).
 * ---------------------------------------------------------------------- */
static void env_open(const char *dir, MDB_env **env) {
  char path[600];
  snprintf(path, sizeof path, "%s/store", dir);
  assert_int_equal(mdb_env_create(env), 0);
  assert_int_equal(mdb_env_set_maxdbs(*env, 16), 0);
  assert_int_equal(mdb_env_set_mapsize(*env, 64u << 20), 0);
  assert_int_equal(mdb_env_open(*env, path, MDB_NOTLS, 0644), 0);
}

static uint64_t be(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

static void key12(uint8_t *k, uint32_t cid, uint64_t seq) {
  for (int i = 0; i < 4; i++)
    k[i] = (uint8_t)(cid >> (24 - 8 * i));
  for (int i = 0; i < 8; i++)
    k[4 + i] = (uint8_t)(seq >> (56 - 8 * i));
}

static uint32_t u32le(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* One parsed run, as the layout documents it. */
typedef struct run {
  uint32_t cid;
  uint64_t first;
  uint32_t count, span;
  uint32_t off[MAXROWS];
  const uint8_t *codes;
} run;

static void parse_run(const MDB_val *k, const MDB_val *v, size_t row_bytes,
                      run *r) {
  const uint8_t *p = v->mv_data;
  assert_int_equal(k->mv_size, 12);
  assert_true(v->mv_size >= 16);
  assert_int_equal(p[0], 2); /* run version */
  assert_true(p[1] == 0 || p[1] == 1);
  r->cid = (uint32_t)be(k->mv_data, 4);
  r->first = be((const uint8_t *)k->mv_data + 4, 8);
  r->count = u32le(p + 4);
  r->span = u32le(p + 8);
  assert_true(r->count >= 1 && r->count <= MAXROWS);
  size_t hdr = 16;
  if (p[1] == 1) {
    hdr += ((size_t)r->count * 4 + 15) & ~(size_t)15;
    for (uint32_t i = 0; i < r->count; i++) {
      r->off[i] = u32le(p + 16 + 4 * i);
      if (i)
        assert_true(r->off[i] > r->off[i - 1]);
    }
    assert_int_equal(r->off[r->count - 1] + 1, r->span);
  } else {
    for (uint32_t i = 0; i < r->count; i++)
      r->off[i] = i;
    assert_int_equal(r->span, r->count);
  }
  assert_int_equal(v->mv_size, hdr + r->count * row_bytes);
  r->codes = p + hdr;
}

static int g_sparse; /* sparse runs seen by the last check_layout */

/* Check the runs of collection `cid`: no overlap; the live rows (row
 * records) in a run's range are all in it and more than half of it; every
 * live row is in a run. Returns the number of runs; *max_count the
 * largest count. */
static int check_layout(const char *dir, uint32_t cid, size_t row_bytes,
                        int64_t live_rows, uint32_t *max_count) {
  MDB_env *env;
  env_open(dir, &env);
  MDB_txn *txn;
  MDB_dbi vec, rows;
  assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "vec", 0, &vec), 0);
  assert_int_equal(mdb_dbi_open(txn, "rows", 0, &rows), 0);
  MDB_cursor *cv, *cr;
  assert_int_equal(mdb_cursor_open(txn, vec, &cv), 0);
  assert_int_equal(mdb_cursor_open(txn, rows, &cr), 0);
  static run r;
  MDB_val k, v;
  int runs = 0;
  int64_t covered = 0;
  uint64_t next_free = 0; /* first seq after the previous run */
  *max_count = 0;
  g_sparse = 0;
  for (int rc = mdb_cursor_get(cv, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cv, &k, &v, MDB_NEXT)) {
    if (be(k.mv_data, 4) != cid)
      continue;
    parse_run(&k, &v, row_bytes, &r);
    g_sparse += ((const uint8_t *)v.mv_data)[1] == 1;
    assert_true(r.first >= next_free);
    next_free = r.first + r.span;
    runs++;
    if (r.count > *max_count)
      *max_count = r.count;
    /* The live rows in [first, first + span). */
    uint8_t kb[12];
    key12(kb, cid, r.first);
    MDB_val rk = {12, kb}, rv;
    uint32_t live = 0, j = 0;
    for (int rc2 = mdb_cursor_get(cr, &rk, &rv, MDB_SET_RANGE); rc2 == 0;
         rc2 = mdb_cursor_get(cr, &rk, &rv, MDB_NEXT)) {
      uint64_t seq = be((const uint8_t *)rk.mv_data + 4, 8);
      if (be(rk.mv_data, 4) != cid || seq >= r.first + r.span)
        break;
      while (j < r.count && r.first + r.off[j] < seq)
        j++;
      assert_true(j < r.count && r.first + r.off[j] == seq);
      live++;
    }
    assert_true(2 * live > r.count);
    covered += live;
  }
  assert_int_equal(covered, live_rows);
  mdb_cursor_close(cv);
  mdb_cursor_close(cr);
  mdb_txn_abort(txn);
  mdb_env_close(env);
  return runs;
}

static uint32_t cid_of(const char *dir, const char *coll) {
  MDB_env *env;
  env_open(dir, &env);
  MDB_txn *txn;
  MDB_dbi db;
  assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "coll", 0, &db), 0);
  MDB_val k = {strlen(coll), (void *)coll}, v;
  assert_int_equal(mdb_get(txn, db, &k, &v), 0);
  uint32_t cid = u32le((const uint8_t *)v.mv_data + 4);
  mdb_txn_abort(txn);
  mdb_env_close(env);
  return cid;
}

/* ------------------------------------------------------------------------ */
static void test_runs(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store *s;
  open_store(dir, &s);
  mn_collection_opts co = coll_opts("v", BIG, MN_METRIC_COSINE, MN_DTYPE_F32);
  ST_OK(mn_store_collection_create(s, &co, NULL));
  /* Adds of 1, 7, 100, 392, 50, 50 rows: rows 0 | 1-7 | 8-107 | 108-499
   * | 500-549 | 550-599. */
  static const int sizes[] = {1, 7, 100, 392, 50, 50};
  static uint8_t live[MAXROWS];
  int total = 0;
  for (size_t b = 0; b < sizeof sizes / sizeof *sizes; b++) {
    add_rows(s, "v", 1, BIG, total, sizes[b]);
    memset(live + total, 1, (size_t)sizes[b]);
    total += sizes[b];
  }
  verify(s, "v", 1, BIG, 0, live, total);
  mn_store_close(s);
  uint32_t cid = cid_of(dir, "v"), R;
  int runs = check_layout(dir, cid, 4 * BIG, total, &R);
  /* Full runs fill whole pages but for a few hundred bytes. */
  assert_true(R >= 20 && R * 4 * BIG <= 32 * 4096);
  int expect = 0;
  for (size_t b = 0; b < sizeof sizes / sizeof *sizes; b++)
    expect += (sizes[b] + (int)R - 1) / (int)R;
  assert_int_equal(runs, expect);
  open_store(dir, &s);
  verify(s, "v", 1, BIG, 0, live, total);

  /* Rows 8.. are run-aligned in the add of 100: its first run is rows
   * 8..8+R-1, its second 8+R..8+2R-1. */
  int del[MAXROWS], nd = 0;
  for (int i = 8; i < 8 + (int)R; i++) /* a whole run: removed */
    del[nd++] = i;
  for (int i = 8 + (int)R; i < 8 + (int)R + (int)R / 2 + 2; i++)
    del[nd++] = i; /* more than half of the next: rewritten */
  for (int i = 108; i < 108 + (int)R / 4; i++)
    del[nd++] = i; /* a quarter of one: left as it is */
  del[nd++] = 0;   /* a run of one row */
  del_rows(s, "v", del, nd);
  for (int i = 0; i < nd; i++)
    live[del[i]] = 0;
  int n_live = 0;
  for (int i = 0; i < total; i++)
    n_live += live[i];
  verify(s, "v", 1, BIG, 0, live, total);
  mn_store_close(s);
  assert_int_equal(g_sparse, 0);
  int runs2 = check_layout(dir, cid, 4 * BIG, n_live, &R);
  assert_int_equal(runs2, runs - 2);
  assert_int_equal(g_sparse, 1); /* the one at least half dead */
  open_store(dir, &s);
  verify(s, "v", 1, BIG, 0, live, total);

  /* The rewritten (sparse) run loses more rows until it is rewritten
   * again; updates of rows in it leave their vectors alone. */
  int first_live = -1, left = 0;
  for (int i = 8 + (int)R; i < 8 + 2 * (int)R; i++)
    if (live[i]) {
      if (first_live < 0)
        first_live = i;
      left++;
    }
  assert_true(left >= 4);
  char kept[32];
  snprintf(kept, sizeof kept, "r%d", first_live);
  mn_memory_update u = {
      .content = "changed", .has_significance = 1, .significance = 0.25};
  ST_OK(mn_store_update(s, "v", kept, &u, 0, NULL));
  nd = 0;
  for (int i = first_live + 1; nd < left / 2 + 1; i++)
    if (live[i])
      del[nd++] = i;
  del_rows(s, "v", del, nd);
  for (int i = 0; i < nd; i++)
    live[del[i]] = 0;
  n_live -= nd;
  /* Appends after deletes. */
  add_rows(s, "v", 1, BIG, total, 90);
  memset(live + total, 1, 90);
  total += 90;
  n_live += 90;
  verify(s, "v", 1, BIG, 0, live, total);
  mn_store_close(s);
  assert_int_equal(check_layout(dir, cid, 4 * BIG, n_live, &R), runs2 + 3);
  assert_int_equal(g_sparse, 1);
  open_store(dir, &s);
  verify(s, "v", 1, BIG, 0, live, total);
  const char *kid[1] = {kept};
  mn_memory_list *l;
  ST_OK(mn_store_get(s, "v", kid, 1, MN_INCLUDE_CONTENT, &l));
  assert_int_equal(mn_memory_list_count(l), 1);
  assert_string_equal(mn_memory_list_at(l, 0)->content, "changed");
  assert_true(fabs(mn_memory_list_at(l, 0)->significance - 0.25) < 1e-6);
  mn_memory_list_free(l);
  mn_collection_info info;
  ST_OK(mn_store_collection_get(s, "v", &info));
  assert_int_equal(info.count, n_live);
  mn_store_close(s);
  rm_rf(dir);
  free(dir);
}

/* ------------------------------------------------------------------------
 * Format 1.
 * ---------------------------------------------------------------------- */
/* Rewrite the vectors of the live rows of collection `cid` whose seq is
 * >= from_seq into format 1 records (u8 1, 7 bytes 0, codes), keeping the
 * runs of earlier rows (what a conversion cut short leaves), and set meta
 * "format" to 1. */
static void to_format1(const char *dir, uint32_t cid, size_t row_bytes,
                       uint64_t from_seq) {
  MDB_env *env;
  env_open(dir, &env);
  MDB_txn *txn;
  MDB_dbi vec, meta, rows;
  assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "vec", 0, &vec), 0);
  assert_int_equal(mdb_dbi_open(txn, "meta", 0, &meta), 0);
  assert_int_equal(mdb_dbi_open(txn, "rows", 0, &rows), 0);
  /* Collect the rows to rewrite, then delete their runs. */
  uint64_t *seqs = malloc(sizeof(uint64_t) * MAXROWS);
  uint8_t *codes = malloc(row_bytes * MAXROWS);
  uint64_t *gone = malloc(sizeof(uint64_t) * MAXROWS);
  int n = 0, ng = 0;
  MDB_cursor *cur;
  assert_int_equal(mdb_cursor_open(txn, vec, &cur), 0);
  MDB_val k, v;
  static run r;
  for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (be(k.mv_data, 4) != cid)
      continue;
    parse_run(&k, &v, row_bytes, &r);
    if (r.first + r.span <= from_seq)
      continue;
    assert_true(r.first >= from_seq); /* the test cuts between runs */
    for (uint32_t i = 0; i < r.count; i++) {
      uint8_t kb[12];
      key12(kb, cid, r.first + r.off[i]);
      MDB_val rk = {12, kb}, rv;
      if (mdb_get(txn, rows, &rk, &rv) != 0)
        continue; /* deleted: format 1 had no record for it */
      seqs[n] = r.first + r.off[i];
      memcpy(codes + (size_t)n * row_bytes, r.codes + (size_t)i * row_bytes,
             row_bytes);
      n++;
    }
    gone[ng++] = r.first;
  }
  mdb_cursor_close(cur);
  for (int i = 0; i < ng; i++) {
    uint8_t kb[12];
    key12(kb, cid, gone[i]);
    MDB_val dk = {12, kb};
    assert_int_equal(mdb_del(txn, vec, &dk, NULL), 0);
  }
  uint8_t *rec = calloc(1, 8 + row_bytes);
  rec[0] = 1;
  for (int i = 0; i < n; i++) {
    uint8_t kb[12];
    key12(kb, cid, seqs[i]);
    memcpy(rec + 8, codes + (size_t)i * row_bytes, row_bytes);
    MDB_val rk = {12, kb}, rv = {8 + row_bytes, rec};
    assert_int_equal(mdb_put(txn, vec, &rk, &rv, 0), 0);
  }
  uint32_t one = 1;
  MDB_val fk = {6, "format"}, fv = {4, &one};
  assert_int_equal(mdb_put(txn, meta, &fk, &fv, 0), 0);
  assert_int_equal(mdb_txn_commit(txn), 0);
  mdb_env_close(env);
  free(seqs);
  free(codes);
  free(gone);
  free(rec);
}

static uint32_t read_format(const char *dir) {
  MDB_env *env;
  env_open(dir, &env);
  MDB_txn *txn;
  MDB_dbi meta;
  assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "meta", 0, &meta), 0);
  MDB_val k = {6, "format"}, v;
  assert_int_equal(mdb_get(txn, meta, &k, &v), 0);
  assert_int_equal(v.mv_size, 4);
  uint32_t f = u32le(v.mv_data);
  mdb_txn_abort(txn);
  mdb_env_close(env);
  return f;
}

static void set_format(const char *dir, uint32_t f) {
  MDB_env *env;
  env_open(dir, &env);
  MDB_txn *txn;
  MDB_dbi meta;
  assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "meta", 0, &meta), 0);
  MDB_val k = {6, "format"}, v = {4, &f};
  assert_int_equal(mdb_put(txn, meta, &k, &v, 0), 0);
  assert_int_equal(mdb_txn_commit(txn), 0);
  mdb_env_close(env);
}

static void test_convert_format1(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store *s;
  open_store(dir, &s);
  mn_collection_opts cb = coll_opts("big", BIG, MN_METRIC_COSINE, MN_DTYPE_F32);
  mn_collection_opts cs =
      coll_opts("small", SMALL, MN_METRIC_COSINE, MN_DTYPE_F16);
  ST_OK(mn_store_collection_create(s, &cb, NULL));
  ST_OK(mn_store_collection_create(s, &cs, NULL));
  static uint8_t live_b[MAXROWS], live_s[MAXROWS];
  /* big: an add of 200 (runs), then adds of 1, 60, 139 (format 1 below) */
  add_rows(s, "big", 1, BIG, 0, 200);
  add_rows(s, "big", 1, BIG, 200, 1);
  add_rows(s, "big", 1, BIG, 201, 60);
  add_rows(s, "big", 1, BIG, 261, 139);
  add_rows(s, "small", 2, SMALL, 0, 300);
  memset(live_b, 1, 400);
  memset(live_s, 1, 300);
  int del_b[] = {3, 205, 206, 207, 300, 301, 399};
  int del_s[] = {0, 1, 2, 150, 299};
  del_rows(s, "big", del_b, 7);
  del_rows(s, "small", del_s, 5);
  for (int i = 0; i < 7; i++)
    live_b[del_b[i]] = 0;
  for (int i = 0; i < 5; i++)
    live_s[del_s[i]] = 0;
  mn_store_close(s);
  uint32_t cid_b = cid_of(dir, "big"), cid_s = cid_of(dir, "small");
  /* big keeps its runs for seqs < 200 (a conversion cut short); the rest
   * of big and all of small go back to format 1. */
  to_format1(dir, cid_b, 4 * BIG, 200);
  to_format1(dir, cid_s, 2 * SMALL, 0);
  assert_int_equal(read_format(dir), 1);

  open_store(dir, &s);
  verify(s, "big", 1, BIG, 0, live_b, 400);
  verify(s, "small", 2, SMALL, 1, live_s, 300);
  mn_store_close(s);
  assert_int_equal(read_format(dir), 2);
  uint32_t R;
  /* big: the 5 runs of the first add kept; 193 rows converted into runs
   * of up to R rows, sparse where rows were deleted */
  int rb = check_layout(dir, cid_b, 4 * BIG, 400 - 7, &R);
  assert_int_equal(rb, 5 + (193 + (int)R - 1) / (int)R);
  assert_true(g_sparse >= 1);
  /* small: one run (295 rows of 80 bytes fit one) */
  assert_int_equal(check_layout(dir, cid_s, 2 * SMALL, 300 - 5, &R), 1);
  assert_int_equal(R, 295);
  /* The converted store takes writes and deletes as any other. */
  open_store(dir, &s);
  add_rows(s, "big", 1, BIG, 400, 20);
  memset(live_b + 400, 1, 20);
  int more[] = {201, 202, 203, 204};
  del_rows(s, "big", more, 4);
  for (int i = 0; i < 4; i++)
    live_b[more[i]] = 0;
  verify(s, "big", 1, BIG, 0, live_b, 420);
  mn_store_close(s);
  check_layout(dir, cid_b, 4 * BIG, 420 - 11, &R);
  rm_rf(dir);
  free(dir);
}

static void test_bad_format(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store *s;
  open_store(dir, &s);
  mn_collection_opts cs =
      coll_opts("small", SMALL, MN_METRIC_COSINE, MN_DTYPE_F16);
  ST_OK(mn_store_collection_create(s, &cs, NULL));
  add_rows(s, "small", 2, SMALL, 0, 10);
  mn_store_close(s);
  char path[600];
  snprintf(path, sizeof path, "%s/store", dir);
  mn_store_opts o;
  test_opts(&o, dir);

  /* A version from the future. */
  set_format(dir, 99);
  assert_int_equal(mn_store_open(&o, &s), MN_ERR_VERSION);
  assert_non_null(strstr(mn_errmsg(), path));
  assert_non_null(strstr(mn_errmsg(), "format version 99"));

  /* Format 1 with a record that is not a format 1 vector record: refused,
   * naming the directory, and left in format 1. */
  uint32_t cid = cid_of(dir, "small");
  to_format1(dir, cid, 2 * SMALL, 0);
  {
    MDB_env *env;
    env_open(dir, &env);
    MDB_txn *txn;
    MDB_dbi vec;
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "vec", 0, &vec), 0);
    uint8_t kb[12], bad[8 + 2 * SMALL];
    key12(kb, cid, 5);
    memset(bad, 0, sizeof bad);
    bad[0] = 7;
    MDB_val k = {12, kb}, v = {sizeof bad, bad};
    assert_int_equal(mdb_put(txn, vec, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
  }
  assert_int_equal(mn_store_open(&o, &s), MN_ERR_VERSION);
  assert_non_null(strstr(mn_errmsg(), path));
  assert_non_null(strstr(mn_errmsg(), "format 1"));
  assert_int_equal(read_format(dir), 1);
  rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_runs),
      cmocka_unit_test(test_convert_format1),
      cmocka_unit_test(test_bad_format),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
