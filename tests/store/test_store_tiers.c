/*
 * test_store_tiers.c - tiers, budgets and the working-chunk API:
 *  - pressure moving through normal / high_load / recovery with a tiny L2
 *    budget, MN_ERR_RESOURCE with requested and available bytes, cleanup;
 *  - memory chunks limited to 80 % of L2, moved to disk to make room for
 *    working chunks, and brought back on use, with results unchanged;
 *  - working chunks: allocate, write, read, list, free, too small, TTL
 *    with an injected clock, explicit cleanup;
 *  - the disk budget (storage.disk_limit) refusing a write;
 *  - LMDB map growth from a tiny initial map;
 *  - stale reader slots of a killed process cleared at open;
 *  - L1 with a stand-in GPU backend (device memory emulated on the host):
 *    chunks uploaded, demoted to L2 when L1 is full, promoted on use, and
 *    searches exact against a double reference;
 *  - device out of memory (the stand-in's ops or allocations failing):
 *    searches finish on the CPU with the same exact results and say so,
 *    and L1's ceiling comes down step by step.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/wait.h>

#include <cmocka.h>
#include <lmdb.h>
#include <omp.h>

#include "common/internal.h"
#include "compute/backend_impl.h"
#include "store_helpers.h"

static void add_rows(mn_store *s, const char *coll, int64_t dim, int64_t n,
                     int64_t base, uint64_t seed, float *keep) {
  rng r = {seed};
  float *v = malloc(sizeof(float) * (size_t)(n * dim));
  mn_memory_in *m = calloc((size_t)n, sizeof *m);
  char(*ids)[24] = malloc(24 * (size_t)n);
  rng_vec(&r, v, n * dim);
  for (int64_t i = 0; i < n; i++) {
    snprintf(ids[i], 24, "x%lld", (long long)(base + i));
    m[i].id = ids[i];
    m[i].embedding = v + i * dim;
  }
  ST_OK(mn_store_add(s, coll, m, n, NULL));
  if (keep)
    memcpy(keep, v, sizeof(float) * (size_t)(n * dim));
  free(v);
  free(m);
  free(ids);
}

/* ------------------------------------------------------------------------ */

static void test_pressure_states(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  test_clock clk = {1000.0};
  mn_store_opts o;
  test_opts(&o, dir);
  o.l2_budget = 100000;
  o.chunk_ttl_s = 60;
  o.clock = test_clock_fn;
  o.clock_user = &clk;
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  assert_int_equal(mn_store_pressure(s), MN_PRESSURE_NORMAL);
  mn_chunk_info a, b, c;
  ST_OK(mn_store_chunk_alloc(s, 50000, "chat-1", NULL, &a));
  assert_int_equal(mn_store_pressure(s), MN_PRESSURE_NORMAL);
  clk.now += 10;
  ST_OK(mn_store_chunk_alloc(s, 15000, "chat-1", NULL, &b));
  assert_int_equal(mn_store_pressure(s), MN_PRESSURE_HIGH_LOAD);
  assert_string_equal(mn_pressure_name(mn_store_pressure(s)), "high_load");
  clk.now += 10;
  ST_OK(mn_store_chunk_alloc(s, 20000, "chat-2", NULL, &c));
  /* 85 %: recovery. Cleanup ran but nothing was idle long enough. */
  assert_int_equal(mn_store_pressure(s), MN_PRESSURE_RECOVERY);
  mn_store_stats st;
  mn_store_get_stats(s, &st);
  assert_int_equal(st.used[MN_TIER_HOST], 85000);
  assert_int_equal(st.working_chunks, 3);
  /* A new allocation that cannot fit: requested and available reported. */
  mn_chunk_info d;
  assert_int_equal(mn_store_chunk_alloc(s, 20000, "chat-2", NULL, &d),
                   MN_ERR_RESOURCE);
  uint64_t req, avail;
  mn_store_last_resource(&req, &avail);
  assert_int_equal(req, 20000);
  assert_int_equal(avail, 15000);
  assert_non_null(strstr(mn_errmsg(), "20000"));
  assert_non_null(strstr(mn_errmsg(), "15000"));
  /* Keep b in use; a goes idle past its TTL; maintenance frees it. */
  clk.now += 45;
  float row[4] = {1, 2, 3, 4};
  ST_OK(mn_store_chunk_write(s, b.id, row, 1, 4, NULL));
  clk.now += 20; /* a: idle 75 s, b: 20 s, c: 65 s */
  mn_store_maintain(s);
  mn_chunk_info *list;
  int64_t n;
  ST_OK(mn_store_chunk_list(s, NULL, &list, &n));
  assert_int_equal(n, 1);
  assert_string_equal(list[0].id, b.id);
  free(list);
  assert_int_equal(mn_store_pressure(s), MN_PRESSURE_NORMAL);
  /* Now it fits. */
  ST_OK(mn_store_chunk_alloc(s, 20000, "chat-2", NULL, &d));
  mn_store_get_stats(s, &st);
  assert_int_equal(st.used[MN_TIER_HOST], 35000);
  mn_store_close(s);
  rm_rf(dir);
  free(dir);
}

static void test_working_chunks(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  test_clock clk = {5000.0};
  mn_store_opts o;
  test_opts(&o, dir);
  o.chunk_ttl_s = 30;
  o.clock = test_clock_fn;
  o.clock_user = &clk;
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  mn_chunk_info a, b, info;
  ST_OK(mn_store_chunk_alloc(s, 10 * 8 * 4, "alice", NULL, &a));
  assert_int_equal(a.size, 320);
  assert_int_equal(a.used, 0);
  assert_true(a.created == 5000.0 && a.last_accessed == 5000.0);
  assert_int_equal(strncmp(a.id, "chunk_", 6), 0);
  ST_OK(mn_store_chunk_alloc(s, 64, "bob", NULL, &b));
  assert_string_not_equal(a.id, b.id);
  float rows[10 * 8];
  rng r = {3};
  rng_vec(&r, rows, 80);
  clk.now += 5;
  ST_OK(mn_store_chunk_write(s, a.id, rows, 4, 8, &info));
  assert_int_equal(info.rows, 4);
  assert_int_equal(info.used, 128);
  assert_int_equal(info.width, 8);
  assert_true(info.last_accessed == 5005.0);
  ST_OK(mn_store_chunk_write(s, a.id, rows + 32, 6, 8, &info));
  assert_int_equal(info.rows, 10);
  assert_int_equal(info.used, 320);
  /* Full: one more row is refused with requested and available. */
  assert_int_equal(mn_store_chunk_write(s, a.id, rows, 1, 8, NULL),
                   MN_ERR_RESOURCE);
  uint64_t req, avail;
  mn_store_last_resource(&req, &avail);
  assert_int_equal(req, 32);
  assert_int_equal(avail, 0);
  assert_int_equal(mn_store_chunk_write(s, b.id, rows, 3, 8, NULL),
                   MN_ERR_RESOURCE);
  mn_store_last_resource(&req, &avail);
  assert_int_equal(req, 96);
  assert_int_equal(avail, 64);
  assert_non_null(strstr(mn_errmsg(), "too small"));
  /* Width mismatch, NaN, unknown chunk. */
  ST_OK(mn_store_chunk_write(s, b.id, rows, 1, 8, NULL));
  assert_int_equal(mn_store_chunk_write(s, b.id, rows, 1, 4, NULL),
                   MN_ERR_INVALID);
  float bad[8] = {0, 0, NAN, 0, 0, 0, 0, 0};
  assert_int_equal(mn_store_chunk_write(s, b.id, bad, 1, 8, NULL),
                   MN_ERR_INVALID);
  assert_int_equal(mn_store_chunk_write(s, "chunk_nope", rows, 1, 8, NULL),
                   MN_ERR_NOT_FOUND);
  assert_int_equal(mn_store_chunk_alloc(s, 0, "x", NULL, NULL), MN_ERR_INVALID);
  /* The caller may name a chunk; names are unique. */
  mn_chunk_info named;
  ST_OK(mn_store_chunk_alloc(s, 16, "x", "my-chunk.1", &named));
  assert_string_equal(named.id, "my-chunk.1");
  assert_int_equal(mn_store_chunk_alloc(s, 16, "x", "my-chunk.1", NULL),
                   MN_ERR_EXISTS);
  assert_int_equal(mn_store_chunk_alloc(s, 16, "x", "bad id", NULL),
                   MN_ERR_INVALID);
  ST_OK(mn_store_chunk_free(s, "my-chunk.1"));
  /* Read back exactly what was written. */
  float *out;
  ST_OK(mn_store_chunk_read(s, a.id, &out, &info));
  assert_int_equal(info.rows, 10);
  assert_memory_equal(out, rows, sizeof rows);
  free(out);
  /* List, per chat. */
  mn_chunk_info *list;
  int64_t n;
  ST_OK(mn_store_chunk_list(s, NULL, &list, &n));
  assert_int_equal(n, 2);
  assert_string_equal(list[0].id, a.id);
  assert_string_equal(list[0].chat_id, "alice");
  free(list);
  ST_OK(mn_store_chunk_list(s, "bob", &list, &n));
  assert_int_equal(n, 1);
  assert_string_equal(list[0].id, b.id);
  assert_int_equal(list[0].rows, 1);
  free(list);
  /* TTL: b untouched since 5005 (its last write), a read at 5005. */
  clk.now = 5030;
  mn_cleanup_report rep;
  ST_OK(mn_store_cleanup(s, 0, &rep));
  assert_int_equal(rep.chunks_freed, 0);
  clk.now = 5036;
  ST_OK(mn_store_cleanup(s, 0, &rep));
  assert_int_equal(rep.chunks_freed, 2);
  assert_int_equal(rep.bytes_freed, 320 + 64);
  ST_OK(mn_store_chunk_list(s, NULL, &list, &n));
  assert_int_equal(n, 0);
  assert_null(list);
  assert_int_equal(mn_store_chunk_read(s, a.id, &out, NULL), MN_ERR_NOT_FOUND);
  /* An explicit cleanup of everything, and free. */
  ST_OK(mn_store_chunk_alloc(s, 100, "c", NULL, &a));
  ST_OK(mn_store_chunk_alloc(s, 200, "c", NULL, &b));
  ST_OK(mn_store_chunk_free(s, a.id));
  assert_int_equal(mn_store_chunk_free(s, a.id), MN_ERR_NOT_FOUND);
  ST_OK(mn_store_cleanup(s, 1, &rep));
  assert_int_equal(rep.chunks_freed, 1);
  assert_int_equal(rep.bytes_freed, 200);
  mn_store_stats st;
  mn_store_get_stats(s, &st);
  assert_int_equal(st.working_chunks, 0);
  assert_int_equal(st.used[MN_TIER_HOST], 0);
  mn_store_close(s);
  rm_rf(dir);
  free(dir);
}

/* The maintenance thread frees idle chunks on its own. */
static void test_ttl_thread(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  o.chunk_ttl_s = 0.05;
  o.maintenance_ms = 10;
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  mn_chunk_info a;
  ST_OK(mn_store_chunk_alloc(s, 1000, "t", NULL, &a));
  int64_t n = 1;
  for (int i = 0; i < 200 && n; i++) {
    usleep(10000);
    mn_chunk_info *list;
    ST_OK(mn_store_chunk_list(s, NULL, &list, &n));
    free(list);
  }
  assert_int_equal(n, 0);
  mn_store_close(s);
  rm_rf(dir);
  free(dir);
}

/* Memory chunks in L2: at most 80 % of the budget; moved to disk to make
 * room for working chunks; back on use; the same results throughout. */
static void test_memory_chunks_budget(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  o.chunk_rows = 64;
  const int64_t dim = 16, chunk_bytes = 64 * 16 * 4;
  o.l2_budget = 10 * chunk_bytes;
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  mn_collection_opts co = coll_opts("v", dim, MN_METRIC_L2, MN_DTYPE_F32);
  ST_OK(mn_store_collection_create(s, &co, NULL));
  float *vecs = malloc(sizeof(float) * 12 * 64 * dim);
  add_rows(s, "v", dim, 12 * 64, 0, 11, vecs);
  mn_store_stats st;
  mn_store_get_stats(s, &st);
  assert_int_equal(st.chunks[MN_TIER_HOST], 8);
  assert_int_equal(st.chunks[MN_TIER_DISK], 4);
  assert_int_equal(st.used[MN_TIER_HOST], 8 * chunk_bytes);
  assert_int_equal(st.pressure, MN_PRESSURE_HIGH_LOAD);
  mn_collection_info info;
  ST_OK(mn_store_collection_get(s, "v", &info));
  assert_int_equal(info.chunks_tier[MN_TIER_HOST], 8);
  assert_int_equal(info.bytes[MN_TIER_HOST], 8 * chunk_bytes);

  /* Reference result from the resident state. */
  float q[16];
  rng r = {4};
  rng_vec(&r, q, dim);
  mn_search_params p;
  mn_search_params_init(&p);
  p.queries = q;
  p.n_queries = 1;
  p.dim = dim;
  p.k = 20;
  mn_search_result *res0, *res1;
  ST_OK(mn_store_search(s, "v", &p, &res0));
  /* The brute-force best (double) is the first hit. */
  int best = -1;
  double bd = 1e300;
  for (int i = 0; i < 12 * 64; i++) {
    double dd = 0;
    for (int c = 0; c < dim; c++)
      dd += ((double)q[c] - vecs[i * dim + c]) *
            ((double)q[c] - vecs[i * dim + c]);
    if (dd < bd) {
      bd = dd;
      best = i;
    }
  }
  int64_t n0;
  const mn_search_hit *h0 = mn_search_result_hits(res0, 0, &n0);
  char bid[24];
  snprintf(bid, sizeof bid, "x%d", best);
  assert_string_equal(h0[0].id, bid);
  assert_true(fabs(h0[0].similarity - 1.0 / (1.0 + bd)) < 1e-5);

  /* Working chunks push memory chunks to disk. */
  mn_chunk_info w;
  ST_OK(mn_store_chunk_alloc(s, 7 * chunk_bytes, "w", NULL, &w));
  mn_store_get_stats(s, &st);
  assert_true(st.chunks[MN_TIER_HOST] <= 3);
  assert_true(st.used[MN_TIER_HOST] <= o.l2_budget);
  /* The allocation took L2 to 100 %: recovery, so cleanup ran and moved
   * memory chunks out to get below 60 %. Only the working chunk (70 %,
   * not idle) is left: high_load. */
  assert_int_equal(st.demotions, 4 + 5 + 3);
  assert_int_equal(st.chunks[MN_TIER_HOST], 0);
  assert_int_equal(st.pressure, MN_PRESSURE_HIGH_LOAD);
  /* Searching reads the chunks back from disk: same results. */
  ST_OK(mn_store_search(s, "v", &p, &res1));
  int64_t n1;
  const mn_search_hit *h1 = mn_search_result_hits(res1, 0, &n1);
  assert_int_equal(n0, n1);
  for (int64_t j = 0; j < n0; j++) {
    assert_string_equal(h0[j].id, h1[j].id);
    assert_true(h0[j].score == h1[j].score);
  }
  mn_search_result_free(res1);
  /* Freeing the working chunk: chunks come back up on use, to 80 %. */
  ST_OK(mn_store_chunk_free(s, w.id));
  ST_OK(mn_store_search(s, "v", &p, &res1));
  mn_store_get_stats(s, &st);
  assert_int_equal(st.chunks[MN_TIER_HOST], 8);
  assert_true(st.promotions >= 8);
  h1 = mn_search_result_hits(res1, 0, &n1);
  for (int64_t j = 0; j < n0; j++)
    assert_string_equal(h0[j].id, h1[j].id);
  mn_search_result_free(res1);
  mn_search_result_free(res0);
  /* A working chunk larger than the whole budget is refused. */
  assert_int_equal(mn_store_chunk_alloc(s, 11 * chunk_bytes, "w", NULL, &w),
                   MN_ERR_RESOURCE);
  uint64_t req, avail;
  mn_store_last_resource(&req, &avail);
  assert_int_equal(req, 11 * chunk_bytes);
  assert_int_equal(avail, 10 * chunk_bytes);
  free(vecs);
  mn_store_close(s);
  rm_rf(dir);
  free(dir);
}

static void test_disk_budget(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  o.l3_budget = 256 * 1024;
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  mn_collection_opts co = coll_opts("d", 128, MN_METRIC_IP, MN_DTYPE_F32);
  ST_OK(mn_store_collection_create(s, &co, NULL));
  add_rows(s, "d", 128, 20, 0, 1, NULL);
  mn_store_stats before, after;
  mn_store_get_stats(s, &before);
  /* 1000 rows of 512 bytes and more: far over what is left. */
  rng r = {2};
  enum { N = 1000 };
  static float v[N * 128];
  static mn_memory_in m[N];
  rng_vec(&r, v, N * 128);
  for (int i = 0; i < N; i++)
    m[i].embedding = v + i * 128;
  assert_int_equal(mn_store_add(s, "d", m, N, NULL), MN_ERR_RESOURCE);
  uint64_t req, avail;
  mn_store_last_resource(&req, &avail);
  assert_true(req > (uint64_t)N * 512);
  assert_true(avail < 256 * 1024);
  assert_non_null(strstr(mn_errmsg(), "disk"));
  mn_store_get_stats(s, &after);
  assert_int_equal(after.memories, 20);
  assert_int_equal(after.commits, before.commits);
  /* A small write still fits. */
  ST_OK(mn_store_add(s, "d", m, 5, NULL));
  mn_store_close(s);
  ST_OK(mn_store_open(&o, &s));
  mn_store_get_stats(s, &after);
  assert_int_equal(after.memories, 25);
  assert_true(after.used[MN_TIER_DISK] > 0);
  assert_true(after.used[MN_TIER_DISK] <= o.l3_budget);
  /* The process-wide account carries the same figure. */
  assert_int_equal(mn_account_get(MN_TIER_DISK),
                   (int64_t)after.used[MN_TIER_DISK]);
  mn_store_close(s);
  assert_int_equal(mn_account_get(MN_TIER_DISK), 0);
  rm_rf(dir);
  free(dir);
}

static void test_map_growth(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  o.map_size = 128 * 1024;
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  const int64_t dim = 64, n = 4000;
  mn_collection_opts co = coll_opts("g", dim, MN_METRIC_IP, MN_DTYPE_F32);
  ST_OK(mn_store_collection_create(s, &co, NULL));
  float *v = malloc(sizeof(float) * (size_t)(n * dim));
  for (int64_t b = 0; b < n; b += 500)
    add_rows(s, "g", dim, 500, b, 100 + (uint64_t)b, v + b * dim);
  mn_store_stats st;
  mn_store_get_stats(s, &st);
  assert_true(st.map_grows >= 3);
  assert_true(st.map_size >= (uint64_t)n * dim * 4);
  mn_store_close(s);
  ST_OK(mn_store_open(&o, &s));
  const char **ids = malloc(sizeof(char *) * (size_t)n);
  char(*buf)[24] = malloc(24 * (size_t)n);
  for (int64_t i = 0; i < n; i++) {
    snprintf(buf[i], 24, "x%lld", (long long)i);
    ids[i] = buf[i];
  }
  mn_memory_list *l;
  ST_OK(mn_store_get(s, "g", ids, n, MN_INCLUDE_EMBEDDING, &l));
  assert_int_equal(mn_memory_list_count(l), n);
  for (int64_t i = 0; i < n; i++)
    assert_memory_equal(mn_memory_list_at(l, i)->embedding, v + i * dim,
                        dim * 4);
  mn_memory_list_free(l);
  free(ids);
  free(buf);
  free(v);
  mn_store_close(s);
  rm_rf(dir);
  free(dir);
}

/* Open the store's environment with raw LMDB in a child. */
static MDB_env *child_env(const char *dir) {
  char path[600];
  snprintf(path, sizeof path, "%s/store", dir);
  MDB_env *env;
  if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 8) ||
      mdb_env_set_maxreaders(env, 512) || mdb_env_set_mapsize(env, 64u << 20) ||
      mdb_env_open(env, path, MDB_NOTLS, 0644))
    _exit(3);
  return env;
}

/* A reader that dies holding its slot is cleared when the store opens.
 * (LMDB resets the reader table itself when the opener is alone, so a
 * second process keeps the environment open meanwhile.) */
static void test_stale_readers(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  mn_store_close(s);
  int ready[2];
  assert_int_equal(pipe(ready), 0);
  pid_t holder = fork();
  assert_true(holder >= 0);
  if (holder == 0) {
    child_env(dir);
    char c = 1;
    if (write(ready[1], &c, 1) != 1)
      _exit(5);
    pause();
    _exit(0);
  }
  char c;
  assert_int_equal(read(ready[0], &c, 1), 1);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    MDB_env *env = child_env(dir);
    MDB_txn *txn;
    if (mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))
      _exit(4);
    raise(SIGKILL);
    _exit(4);
  }
  int status;
  waitpid(pid, &status, 0);
  assert_true(WIFSIGNALED(status));
  ST_OK(mn_store_open(&o, &s));
  mn_store_stats st;
  mn_store_get_stats(s, &st);
  assert_int_equal(st.stale_readers_cleared, 1);
  mn_store_close(s);
  kill(holder, SIGKILL);
  waitpid(holder, &status, 0);
  close(ready[0]);
  close(ready[1]);
  rm_rf(dir);
  free(dir);
}

/* ------------------------------------------------------------------------
 * A stand-in GPU backend: "device" memory is host memory, but the backend
 * says MN_DEVICE_GPU, so the store takes its L1 path (upload, device
 * tensors, download) and the wrappers check that every tensor handed to it
 * is marked as device memory. Arithmetic is the CPU backend's.
 * ---------------------------------------------------------------------- */
typedef struct fake_gpu {
  mn_backend base;
  mn_backend *cpu;
  int64_t live_allocs, searches, uploads;
  /* out-of-memory injection: similarity and search fail; allocations
   * larger than alloc_max fail (SIZE_MAX: none) */
  int oom_ops;
  size_t alloc_max;
  int64_t ooms;
  /* batched calls, and the blocks they carried */
  int64_t many_calls, many_blocks;
} fake_gpu;

static void fg_destroy(mn_backend *b) {
  mn_backend_close(((fake_gpu *)b)->cpu);
  free(b);
}
static mn_status fg_alloc(mn_backend *b, size_t n, void **out) {
  fake_gpu *g = (fake_gpu *)b;
  if (g->alloc_max != 0 && n > g->alloc_max) {
    g->ooms++;
    return mn__set_error(MN_ERR_DEVICE_OOM,
                         "stand-in gpu: no room for %zu bytes (at most %zu)", n,
                         g->alloc_max);
  }
  *out = malloc(n ? n : 1);
  ((fake_gpu *)b)->live_allocs++;
  return *out ? MN_OK : MN_ERR_DEVICE_OOM;
}
static void fg_free(mn_backend *b, void *p) {
  ((fake_gpu *)b)->live_allocs--;
  free(p);
}
static mn_status fg_upload(mn_backend *b, void *d, const void *s, size_t n) {
  ((fake_gpu *)b)->uploads++;
  memcpy(d, s, n);
  return MN_OK;
}
static mn_status fg_download(mn_backend *b, void *d, const void *s, size_t n) {
  (void)b;
  memcpy(d, s, n);
  return MN_OK;
}
static mn_status fg_info(mn_backend *b, uint64_t *fr, uint64_t *tot) {
  (void)b;
  *fr = *tot = 1ull << 30;
  return MN_OK;
}
static mn_tensor on_host(const mn_tensor *t) {
  mn_tensor h = *t;
  h.device = MN_DEVICE_HOST;
  return h;
}
static mn_status fg_similarity(mn_backend *b, const mn_tensor *q,
                               const mn_vecblock *db, mn_metric m,
                               mn_tensor *out) {
  if (((fake_gpu *)b)->oom_ops) {
    ((fake_gpu *)b)->ooms++;
    return mn__set_error(MN_ERR_DEVICE_OOM, "stand-in gpu: similarity "
                                            "out of memory");
  }
  mn_tensor hq = on_host(q), ho = on_host(out);
  mn_vecblock hb = *db;
  hb.codes = on_host(&db->codes);
  return mn_backend_similarity(((fake_gpu *)b)->cpu, &hq, &hb, m, &ho);
}
static mn_status fg_search(mn_backend *b, const mn_tensor *q,
                           const mn_vecblock *db, mn_metric m, int64_t k,
                           int64_t base, float *sc, int64_t *ids) {
  if (((fake_gpu *)b)->oom_ops) {
    ((fake_gpu *)b)->ooms++;
    return mn__set_error(MN_ERR_DEVICE_OOM, "stand-in gpu: search out of "
                                            "memory");
  }
  ((fake_gpu *)b)->searches++;
  mn_tensor hq = on_host(q);
  mn_vecblock hb = *db;
  hb.codes = on_host(&db->codes);
  return mn_backend_search(((fake_gpu *)b)->cpu, &hq, &hb, m, k, base, sc, ids);
}

/* The batched ops as a device backend has them: one call for several
 * blocks (counted), each scored as a single block would be. */
static mn_status fg_search_many(mn_backend *b, const mn_tensor *q,
                                mn_search_block *bl, int64_t nb, mn_metric m) {
  fake_gpu *g = (fake_gpu *)b;
  g->many_calls++;
  g->many_blocks += nb;
  for (int64_t i = 0; i < nb; i++)
    MN__TRY(fg_search(b, q, &bl[i].db, m, bl[i].k, 0, bl[i].scores, bl[i].ids));
  return MN_OK;
}
static mn_status fg_similarity_many(mn_backend *b, const mn_tensor *q,
                                    const mn_vecblock *dbs, int64_t nb,
                                    mn_metric m, mn_tensor *out) {
  fake_gpu *g = (fake_gpu *)b;
  g->many_calls++;
  g->many_blocks += nb;
  int64_t col = 0;
  for (int64_t i = 0; i < nb; i++) {
    mn_tensor part = *out;
    part.data = (float *)out->data + col;
    part.cols = dbs[i].codes.rows;
    MN__TRY(fg_similarity(b, q, &dbs[i], m, &part));
    col += dbs[i].codes.rows;
  }
  return MN_OK;
}

static const mn_backend_iface fake_iface = {
    .api_version = MN_BACKEND_API_VERSION,
    .name = "fakegpu",
    .destroy = fg_destroy,
    .alloc = fg_alloc,
    .free = fg_free,
    .upload = fg_upload,
    .download = fg_download,
    .memory_info = fg_info,
    .similarity = fg_similarity,
    .search = fg_search,
    .search_many = fg_search_many,
    .similarity_many = fg_similarity_many,
};

static fake_gpu *fake_gpu_new(void) {
  fake_gpu *g = calloc(1, sizeof *g);
  g->base.iface = &fake_iface;
  g->base.device_kind = MN_DEVICE_GPU;
  snprintf(g->base.device, sizeof g->base.device, "fake gpu");
  ST_OK(mn_backend_open_cpu(NULL, &g->cpu));
  return g;
}

static void test_l1_device(void **state) {
  (void)state;
  fake_gpu *g = calloc(1, sizeof *g);
  g->base.iface = &fake_iface;
  g->base.device_kind = MN_DEVICE_GPU;
  snprintf(g->base.device, sizeof g->base.device, "fake gpu");
  ST_OK(mn_backend_open_cpu(NULL, &g->cpu));
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  o.backend = &g->base;
  o.chunk_rows = 64;
  const int64_t dim = 32;
  /* Device chunk: codes (8 KiB, 256-aligned), int8 scales, norms. */
  const uint64_t dev_chunk = 64 * 32 + 256 + 256;
  o.l1_budget = 4 * dev_chunk;
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  mn_collection_opts co = coll_opts("g", dim, MN_METRIC_IP, MN_DTYPE_I8);
  ST_OK(mn_store_collection_create(s, &co, NULL));
  int64_t dev_before = mn_account_get(MN_TIER_DEVICE);
  add_rows(s, "g", dim, 6 * 64, 0, 21, NULL);
  mn_store_stats st;
  mn_store_get_stats(s, &st);
  assert_true(st.l1_enabled);
  assert_int_equal(st.chunks[MN_TIER_DEVICE], 4);
  assert_int_equal(st.chunks[MN_TIER_HOST], 2);
  assert_int_equal(st.used[MN_TIER_DEVICE], 4 * dev_chunk);
  assert_int_equal(mn_account_get(MN_TIER_DEVICE) - dev_before,
                   (int64_t)(4 * dev_chunk));
  assert_int_equal(g->live_allocs, 4);

  /* The newest chunks took L1; the two oldest went down to L2. */
  assert_int_equal(st.demotions, 2);

  /* Reference: the stored (int8-decoded) vectors, read back. */
  const int64_t n = 6 * 64;
  const char **ids = malloc(sizeof(char *) * (size_t)n);
  char(*buf)[24] = malloc(24 * (size_t)n);
  for (int64_t i = 0; i < n; i++) {
    snprintf(buf[i], 24, "x%lld", (long long)i);
    ids[i] = buf[i];
  }
  mn_memory_list *l;
  ST_OK(mn_store_get(s, "g", ids, n, MN_INCLUDE_EMBEDDING, &l));
  rng r = {8};
  float q[2 * 32];
  rng_vec(&r, q, 2 * dim);
  for (int round = 0; round < 3; round++) {
    if (round == 1) {
      /* A second collection takes L1 from the first (newest first)... */
      mn_collection_opts c2 = coll_opts("h", dim, MN_METRIC_IP, MN_DTYPE_I8);
      ST_OK(mn_store_collection_create(s, &c2, NULL));
      add_rows(s, "h", dim, 2 * 64, 0, 5, NULL);
      mn_collection_info gi;
      ST_OK(mn_store_collection_get(s, "g", &gi));
      assert_int_equal(gi.chunks_tier[MN_TIER_DEVICE], 2);
      assert_int_equal(gi.chunks_tier[MN_TIER_HOST], 4);
    }
    mn_search_params p;
    mn_search_params_init(&p);
    p.queries = q;
    p.n_queries = 2;
    p.dim = dim;
    p.k = 15;
    p.significance_weight = round == 1 ? 0.5 : 0; /* general path too */
    mn_search_result *res;
    int64_t searches = g->searches;
    ST_OK(mn_store_search(s, "g", &p, &res));
    for (int qi = 0; qi < 2; qi++) {
      double sc[6 * 64];
      for (int64_t i = 0; i < n; i++) {
        const mn_memory *mm = mn_memory_list_at(l, i);
        double d = 0;
        for (int c = 0; c < dim; c++)
          d += (double)q[qi * dim + c] * mm->embedding[c];
        sc[i] = p.significance_weight > 0
                    ? d * pow(mm->significance, p.significance_weight)
                    : d;
      }
      int64_t nh;
      const mn_search_hit *h = mn_search_result_hits(res, qi, &nh);
      assert_int_equal(nh, 15);
      for (int j = 0; j < 15; j++) {
        int64_t i = strtoll(h[j].id + 1, NULL, 10);
        assert_true(fabs(h[j].score - sc[i]) < 1e-4 * (1 + fabs(sc[i])));
        int better = 0;
        for (int64_t t = 0; t < n; t++)
          better += sc[t] > sc[i] + 1e-4 * (1 + fabs(sc[i]));
        assert_true(better <= j);
      }
    }
    if (round != 1)
      assert_true(g->searches > searches); /* device chunks on the device */
    mn_search_result_free(res);
    if (round == 1) {
      /* ...and using the first brings its chunks back up, at the expense
       * of the other collection's least recently used ones. */
      mn_collection_info gi, hi;
      ST_OK(mn_store_collection_get(s, "g", &gi));
      ST_OK(mn_store_collection_get(s, "h", &hi));
      assert_int_equal(gi.chunks_tier[MN_TIER_DEVICE], 4);
      assert_int_equal(hi.chunks_tier[MN_TIER_DEVICE], 0);
      assert_int_equal(hi.chunks_tier[MN_TIER_HOST], 2);
    }
  }
  mn_memory_list_free(l);
  mn_store_get_stats(s, &st);
  assert_int_equal(st.promotions, 2);
  assert_int_equal(st.demotions, 2 + 2 + 2);
  assert_true(st.used[MN_TIER_DEVICE] <= o.l1_budget);
  assert_int_equal(st.chunks[MN_TIER_DEVICE] + st.chunks[MN_TIER_HOST], 8);
  /* Rows appended to a device chunk are uploaded. */
  add_rows(s, "g", dim, 10, 10000, 99, NULL);
  ST_OK(mn_store_collection_drop(s, "g"));
  ST_OK(mn_store_collection_drop(s, "h"));
  mn_store_get_stats(s, &st);
  assert_int_equal(st.used[MN_TIER_DEVICE], 0);
  assert_int_equal(g->live_allocs, 0);
  assert_int_equal(mn_account_get(MN_TIER_DEVICE), dev_before);
  mn_store_close(s);
  mn_backend_close(&g->base);
  free(ids);
  free(buf);
  rm_rf(dir);
  free(dir);
}

/* The search against a double reference over the stored vectors: each hit
 * has its reference score, and no more than j memories score better than
 * the j-th hit. */
static void check_search(mn_store *s, const char *coll, const float *x,
                         const float *sig, int64_t n, int64_t dim,
                         const float *q, int64_t nq, int64_t k, double w,
                         const char *want_fallback) {
  mn_search_params p;
  mn_search_params_init(&p);
  p.queries = q;
  p.n_queries = nq;
  p.dim = dim;
  p.k = k;
  p.significance_weight = w; /* > 0: the general path */
  mn_search_result *res;
  ST_OK(mn_store_search(s, coll, &p, &res));
  const char *fb = mn_search_result_cpu_fallback(res);
  if (want_fallback) {
    if (!fb || !strstr(fb, want_fallback))
      fail_msg("fallback message \"%s\", expected one with \"%s\"",
               fb ? fb : "(none)", want_fallback);
  } else if (fb) {
    fail_msg("unexpected fallback: %s", fb);
  }
  double *sc = malloc(sizeof(double) * (size_t)n);
  for (int64_t qi = 0; qi < nq; qi++) {
    const float *qv = q + qi * dim;
    for (int64_t i = 0; i < n; i++) {
      double d = 0, qq = 0, xx = 0;
      for (int64_t c = 0; c < dim; c++) {
        d += (double)qv[c] * x[i * dim + c];
        qq += (double)qv[c] * qv[c];
        xx += (double)x[i * dim + c] * x[i * dim + c];
      }
      sc[i] = d / sqrt(qq * xx) * (w > 0 ? pow(sig[i], w) : 1.0);
    }
    int64_t nh;
    const mn_search_hit *h = mn_search_result_hits(res, qi, &nh);
    assert_int_equal(nh, k);
    for (int64_t j = 0; j < k; j++) {
      int64_t i = strtoll(h[j].id + 1, NULL, 10);
      assert_true(i >= 0 && i < n);
      if (!(fabs(h[j].score - sc[i]) <= 1e-5))
        fail_msg("query %lld hit %lld (%s): score %.9g, reference %.9g",
                 (long long)qi, (long long)j, h[j].id, h[j].score, sc[i]);
      int64_t better = 0;
      for (int64_t t = 0; t < n; t++)
        better += sc[t] > sc[i] + 1e-5;
      assert_true(better <= j);
    }
  }
  free(sc);
  mn_search_result_free(res);
}

static void test_l1_device_oom(void **state) {
  (void)state;
  fake_gpu *g = fake_gpu_new();
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  o.backend = &g->base;
  o.chunk_rows = 64;
  test_clock clk = {1000.0};
  o.clock = test_clock_fn;
  o.clock_user = &clk;
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  const int64_t dim = 32, n = 4 * 64, nq = 2, k = 12;
  /* Device chunk: float32 codes (8 KiB) and norms. */
  const uint64_t dev_chunk = 64 * 32 * 4 + 64 * 4;
  mn_collection_opts co = coll_opts("o", dim, MN_METRIC_COSINE, MN_DTYPE_F32);
  ST_OK(mn_store_collection_create(s, &co, NULL));
  float *x = malloc(sizeof(float) * (size_t)((n + 64) * dim));
  add_rows(s, "o", dim, n, 0, 31, x);
  mn_store_stats st;
  mn_store_get_stats(s, &st);
  assert_int_equal(st.chunks[MN_TIER_DEVICE], 4);
  assert_true(st.l1_cap == UINT64_MAX);
  rng r = {77};
  float q[2 * 32];
  rng_vec(&r, q, nq * dim);

  /* A chunk that finds no room on the device stays in L2, and L1 is
   * capped at what it holds: it takes no more. */
  g->alloc_max = 1024;
  add_rows(s, "o", dim, 64, n, 32, x + n * dim);
  const int64_t nall = n + 64;
  float *sig = malloc(sizeof(float) * (size_t)nall);
  const char **ids = malloc(sizeof(char *) * (size_t)nall);
  char(*idb)[24] = malloc(24 * (size_t)nall);
  for (int64_t i = 0; i < nall; i++) {
    snprintf(idb[i], 24, "x%lld", (long long)i);
    ids[i] = idb[i];
  }
  mn_memory_list *l;
  ST_OK(mn_store_get(s, "o", ids, nall, 0, &l));
  for (int64_t i = 0; i < nall; i++)
    sig[i] = (float)mn_memory_list_at(l, i)->significance;
  mn_memory_list_free(l);
  mn_store_get_stats(s, &st);
  assert_int_equal(st.chunks[MN_TIER_DEVICE], 4);
  assert_int_equal(st.chunks[MN_TIER_HOST], 1);
  assert_int_equal(st.l1_cap, 4 * dev_chunk);
  assert_int_equal(g->ooms, 1);
  int64_t searches = g->searches;
  check_search(s, "o", x, sig, nall, dim, q, nq, k, 0, NULL);
  assert_true(g->searches > searches); /* L1 chunks still on the device */
  mn_store_get_stats(s, &st);
  assert_int_equal(st.chunks[MN_TIER_DEVICE], 4); /* no promotion */
  g->alloc_max = 0;

  /* The fused search runs out of memory: the CPU finishes the search,
   * L1 gives back a quarter. */
  g->oom_ops = 1;
  int64_t promotions = st.promotions;
  check_search(s, "o", x, sig, nall, dim, q, nq, k, 0, "search out of memory");
  mn_store_get_stats(s, &st);
  assert_int_equal(st.l1_cap, 3 * dev_chunk);
  assert_int_equal(st.chunks[MN_TIER_DEVICE], 3);
  assert_int_equal(st.chunks[MN_TIER_HOST], 2);
  assert_int_equal(st.promotions, promotions);
  /* The same for the similarity of the general path. */
  check_search(s, "o", x, sig, nall, dim, q, nq, k, 0.5,
               "similarity out of memory");
  mn_store_get_stats(s, &st);
  assert_int_equal(st.l1_cap, 3 * dev_chunk - 3 * dev_chunk / 4);
  assert_int_equal(st.chunks[MN_TIER_DEVICE], 2);
  g->oom_ops = 0;

  /* No room for the scores on the device (the queries fit: 256 bytes,
   * the scores of a chunk do not: 512), then not even for the queries:
   * all of it on the CPU. */
  g->alloc_max = 300;
  check_search(s, "o", x, sig, nall, dim, q, nq, k, 0.5, "at most 300");
  mn_store_get_stats(s, &st);
  assert_int_equal(st.chunks[MN_TIER_DEVICE], 1);
  g->alloc_max = 100;
  check_search(s, "o", x, sig, nall, dim, q, nq, k, 0, "at most 100");
  mn_store_get_stats(s, &st);
  assert_int_equal(st.chunks[MN_TIER_DEVICE], 0);
  assert_int_equal(st.used[MN_TIER_DEVICE], 0);
  assert_int_equal(st.l1_cap, dev_chunk - dev_chunk / 4); /* < a chunk */
  assert_int_equal(st.chunks[MN_TIER_HOST], 5);
  g->alloc_max = 0;

  /* The device works again, but the ceiling stays for a minute: L2
   * serves. */
  clk.now += 59;
  check_search(s, "o", x, sig, nall, dim, q, nq, k, 0, NULL);
  check_search(s, "o", x, sig, nall, dim, q, nq, k, 0.5, NULL);
  mn_store_get_stats(s, &st);
  assert_int_equal(st.chunks[MN_TIER_DEVICE], 0);
  assert_int_equal(g->live_allocs, 0);

  /* A minute after it was last lowered the ceiling is lifted: searches
   * bring chunks back to the device, with the same results. */
  clk.now += 2;
  searches = g->searches;
  check_search(s, "o", x, sig, nall, dim, q, nq, k, 0, NULL);
  check_search(s, "o", x, sig, nall, dim, q, nq, k, 0, NULL);
  mn_store_get_stats(s, &st);
  assert_true(st.l1_cap == UINT64_MAX);
  assert_true(st.chunks[MN_TIER_DEVICE] > 0);
  assert_true(g->searches > searches);
  check_search(s, "o", x, sig, nall, dim, q, nq, k, 0.5, NULL);
  /* Still short: the next failure lowers it again. */
  g->oom_ops = 1;
  check_search(s, "o", x, sig, nall, dim, q, nq, k, 0, "search out of memory");
  mn_store_get_stats(s, &st);
  assert_true(st.l1_cap != UINT64_MAX);
  g->oom_ops = 0;
  mn_store_close(s);
  mn_backend_close(&g->base);
  free(x);
  free(sig);
  free(ids);
  free(idb);
  rm_rf(dir);
  free(dir);
}

/* Device chunks are scored in groups, one backend call per group, and the
 * grouped path returns what the CPU path does: a store with every chunk in
 * L1 (the stand-in) against a CPU-only store with the same memories, some
 * deleted, on both search paths. */
static void test_l1_grouped(void **state) {
  (void)state;
  fake_gpu *g = fake_gpu_new();
  char *dir = make_tmpdir(), *dir2 = make_tmpdir();
  mn_store_opts o, o2;
  test_opts(&o, dir);
  test_opts(&o2, dir2);
  o.backend = &g->base;
  o.chunk_rows = o2.chunk_rows = 64;
  o.l1_budget = 1 << 24;
  mn_store *s, *cpu;
  ST_OK(mn_store_open(&o, &s));
  ST_OK(mn_store_open(&o2, &cpu));
  const int64_t dim = 24, n = 10 * 64 + 17;
  const mn_dtype dts[] = {MN_DTYPE_F32, MN_DTYPE_I8};
  const mn_metric ms[] = {MN_METRIC_COSINE, MN_METRIC_L2};
  for (int v = 0; v < 2; v++) {
    const char *name = v ? "g1" : "g0";
    mn_collection_opts co = coll_opts(name, dim, ms[v], dts[v]);
    ST_OK(mn_store_collection_create(s, &co, NULL));
    ST_OK(mn_store_collection_create(cpu, &co, NULL));
    pair_add(s, cpu, name, dim, n, 0, 40 + (uint64_t)v);
    pair_delete(s, cpu, name, n, 7, 3);
    mn_collection_info ci;
    ST_OK(mn_store_collection_get(s, name, &ci));
    assert_int_equal(ci.chunks_tier[MN_TIER_DEVICE], 11);

    /* one thread: the eleven device chunks in one call per search */
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    int64_t calls = g->many_calls, blocks = g->many_blocks;
    float q[2 * 24];
    rng r = {7};
    rng_vec(&r, q, 2 * dim);
    mn_search_params p;
    mn_search_params_init(&p);
    p.queries = q;
    p.n_queries = 2;
    p.dim = dim;
    p.k = 5;
    mn_search_result *res;
    ST_OK(mn_store_search(s, name, &p, &res));
    mn_search_result_free(res);
    assert_int_equal(g->many_calls - calls, 1);
    assert_int_equal(g->many_blocks - blocks, 11);
    p.significance_weight = 1; /* the general path: similarity_many */
    ST_OK(mn_store_search(s, name, &p, &res));
    mn_search_result_free(res);
    assert_int_equal(g->many_calls - calls, 2);
    assert_int_equal(g->many_blocks - blocks, 22);
    pair_searches(s, cpu, name, dim, 3, 100, 50 + (uint64_t)v, 1e-5);
    omp_set_num_threads(threads);
    /* as many threads as there are: still the CPU path's results */
    pair_searches(s, cpu, name, dim, 1, 100, 60 + (uint64_t)v, 1e-5);
    pair_searches(s, cpu, name, dim, 4, 70, 70 + (uint64_t)v, 1e-5);
  }
  /* The best rows all in one chunk, half of them deleted: that chunk must
   * be asked for k + its dead rows, or live ones are missed. */
  {
    const char *name = "g2";
    mn_collection_opts co = coll_opts(name, dim, MN_METRIC_IP, MN_DTYPE_F32);
    ST_OK(mn_store_collection_create(s, &co, NULL));
    ST_OK(mn_store_collection_create(cpu, &co, NULL));
    pair_add(s, cpu, name, dim, n, 0, 80);
    float base[24];
    rng r = {81};
    rng_vec(&r, base, dim);
    /* x<n>..: a near copy of base each, all in the next chunks */
    float *v = malloc(sizeof(float) * 64 * (size_t)dim);
    mn_memory_in m[64];
    char ids[64][24];
    for (int i = 0; i < 64; i++) {
      mn_memory_in_init(&m[i]);
      for (int c = 0; c < dim; c++)
        v[i * dim + c] = base[c] * (float)(4 + 0.001 * i);
      snprintf(ids[i], 24, "x%lld", (long long)(n + i));
      m[i].id = ids[i];
      m[i].embedding = v + i * dim;
      m[i].has_timestamp = 1;
      m[i].timestamp = 1000;
      m[i].has_significance = 1;
      m[i].significance = 0.5;
    }
    ST_OK(mn_store_add(s, name, m, 64, NULL));
    ST_OK(mn_store_add(cpu, name, m, 64, NULL));
    pair_delete(s, cpu, name, n + 64, 2, 1);
    mn_search_params p;
    mn_search_params_init(&p);
    p.queries = base;
    p.n_queries = 1;
    p.dim = dim;
    p.k = 20;
    mn_search_result *a, *b;
    ST_OK(mn_store_search(s, name, &p, &a));
    ST_OK(mn_store_search(cpu, name, &p, &b));
    results_agree(a, b, 1e-5, "g2 one chunk holds the best");
    int64_t nh;
    const mn_search_hit *h = mn_search_result_hits(a, 0, &nh);
    assert_int_equal(nh, 20);
    for (int j = 0; j < 20; j++) {
      long long id = strtoll(h[j].id + 1, NULL, 10);
      assert_true(id >= n && id % 2 == 0);
    }
    mn_search_result_free(a);
    mn_search_result_free(b);
    free(v);
  }
  mn_store_close(s);
  mn_store_close(cpu);
  mn_backend_close(&g->base);
  rm_rf(dir);
  rm_rf(dir2);
  free(dir);
  free(dir2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pressure_states),
      cmocka_unit_test(test_working_chunks),
      cmocka_unit_test(test_ttl_thread),
      cmocka_unit_test(test_memory_chunks_budget),
      cmocka_unit_test(test_disk_budget),
      cmocka_unit_test(test_map_growth),
      cmocka_unit_test(test_stale_readers),
      cmocka_unit_test(test_l1_device),
      cmocka_unit_test(test_l1_device_oom),
      cmocka_unit_test(test_l1_grouped),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
