/*
 * bench_store.c - the memory store's benchmark:
 *   1. durable insert throughput: 768-wide float32 memories in batches of
 *      1000 from several client threads (significance computed by the
 *      store, and given by the client);
 *   2. exact search over N memories (default 1M), Q = 1, k = 10, float32
 *      and int8 storage, median of repeated queries; FAISS IndexFlatIP
 *      (bench/peers_store.py, /usr/bin/python3) on data of the same shape,
 *      measured in the same run;
 *   3. reopen time with everything stored (ready to serve), and the first
 *      search after it.
 *
 * Usage: bench_store [--n N] [--dim D] [--batch B] [--clients T]
 *                    [--queries R] [--dir DIR] [--no-peer] [--keep]
 *                    [--quick] [--gpu] [--insert-only [--repeat R]]
 * --insert-only: only the float32 durable inserts and the LMDB peers (no
 * FAISS, no search, no reopen), for quick insert timings; with --repeat R,
 * then R more rounds of (the store inserting N more rows, each LMDB peer
 * writing N rows) back to back, each round's ratios taken from its own
 * figures, and their medians: the shared disk's speed drifts by several
 * times within minutes, so only neighbouring figures compare.
 * The machine is shared: figures are noisy; ratios are taken in one run.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lmdb.h>

#include "mnemo/store.h"

static int64_t opt_n = 1000000, opt_dim = 768, opt_batch = 1000;
static int opt_clients = 2, opt_queries = 20, opt_peer = 1, opt_keep = 0;
static int opt_insert_only = 0, opt_repeat = 1;
static char opt_dir[512] = "";
/* --gpu: the store on the CUDA backend (chunks in device memory, L1); the
 * insert-rate phases and the FAISS peer are left out, and the same
 * searches run again after a reopen on the CPU backend (same data, same
 * run) with their top-10 ids compared. */
static int opt_gpu = 0;
static mn_backend *g_backend = NULL;

static double now_s(void) {
  return (double)mn_time_ns() * 1e-9;
}

static void die(const char *what, mn_status st) {
  fprintf(stderr, "bench_store: %s: %s: %s\n", what, mn_status_name(st),
          mn_errmsg());
  exit(1);
}

/* xorshift64*: fast uniform floats in [-1, 1) for bulk data. */
static void fill_uniform(uint64_t seed, float *v, int64_t n) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (int64_t i = 0; i < n; i++) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    uint64_t r = x * 0x2545f4914f6cdd1dull;
    v[i] = (float)((double)(r >> 40) * (2.0 / 16777216.0) - 1.0);
  }
}

typedef struct client {
  mn_store *s;
  const char *coll;
  int64_t first, count; /* batches */
  int give_sig;
  double busy;
} client;

static void *client_main(void *p) {
  client *c = p;
  int64_t b = opt_batch, d = opt_dim;
  float *v = malloc(sizeof(float) * (size_t)(b * d));
  mn_memory_in *m = calloc((size_t)b, sizeof *m);
  char(*content)[40] = malloc(40 * (size_t)b);
  for (int64_t k = c->first; k < c->first + c->count; k++) {
    fill_uniform((uint64_t)k + 1, v, b * d);
    for (int64_t i = 0; i < b; i++) {
      mn_memory_in_init(&m[i]);
      m[i].embedding = v + i * d;
      snprintf(content[i], 40, "memory %lld", (long long)(k * b + i));
      m[i].content = content[i];
      m[i].chat_id = (i & 1) ? "chat-a" : "chat-b";
      if (c->give_sig) {
        m[i].has_significance = 1;
        m[i].significance = 0.5;
      }
    }
    mn_status st = mn_store_add(c->s, c->coll, m, b, NULL);
    if (st != MN_OK)
      die("add", st);
  }
  free(v);
  free(m);
  free(content);
  return NULL;
}

/* Insert n memories into coll from opt_clients threads; memories/s. */
static double insert(mn_store *s, const char *coll, int64_t n, int give_sig,
                     uint64_t *commits) {
  int64_t batches = n / opt_batch;
  pthread_t th[64];
  client c[64];
  mn_store_stats a, b;
  mn_store_get_stats(s, &a);
  double t0 = now_s();
  int64_t per = batches / opt_clients, rest = batches % opt_clients, next = 0;
  for (int i = 0; i < opt_clients; i++) {
    c[i] = (client){s, coll, next, per + (i < rest), give_sig, 0};
    next += c[i].count;
    pthread_create(&th[i], NULL, client_main, &c[i]);
  }
  for (int i = 0; i < opt_clients; i++)
    pthread_join(th[i], NULL);
  double dt = now_s() - t0;
  mn_store_get_stats(s, &b);
  if (commits)
    *commits = b.commits - a.commits;
  return (double)(batches * opt_batch) / dt;
}

/* The floor under durable inserts on this disk, measured in the same run:
 * LMDB alone writing `n` rows of `vbytes` (one store row's vector plus its
 * small records) in durable transactions of `per` rows, `rpv` rows to a
 * value: rpv = 1 is one value per row (a 4 KiB overflow page each when
 * vbytes is 3 KiB), larger rpv packs them as the store's vector runs do. */
static double lmdb_alone(const char *dir, int64_t n, size_t vbytes, int64_t per,
                         int64_t rpv) {
  char path[700];
  snprintf(path, sizeof path, "%s/lmdb-alone", dir);
  char cmd[1600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", path, path);
  if (system(cmd) != 0)
    return NAN;
  MDB_env *env;
  MDB_dbi dbi;
  MDB_txn *txn;
  if (mdb_env_create(&env) || mdb_env_set_mapsize(env, 16ull << 30) ||
      mdb_env_open(env, path, 0, 0644))
    return NAN;
  mdb_txn_begin(env, NULL, 0, &txn);
  mdb_dbi_open(txn, NULL, 0, &dbi);
  mdb_txn_commit(txn);
  char *v = malloc(vbytes * (size_t)rpv);
  memset(v, 7, vbytes * (size_t)rpv);
  double t0 = now_s();
  uint64_t key = 0;
  for (int64_t i = 0; i < n / per; i++) {
    mdb_txn_begin(env, NULL, 0, &txn);
    for (int64_t j = 0; j < per; j += rpv) {
      int64_t m = per - j < rpv ? per - j : rpv;
      uint64_t kb = __builtin_bswap64(key);
      key += (uint64_t)m;
      MDB_val k = {8, &kb}, d = {vbytes * (size_t)m, v};
      mdb_put(txn, dbi, &k, &d, MDB_APPEND);
    }
    mdb_txn_commit(txn);
  }
  double rate = (double)(n / per * per) / (now_s() - t0);
  mdb_env_close(env);
  free(v);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", path);
  return rate;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median search time in ms, Q = 1, k = 10. */
static char last_ids[10][64]; /* the last query's top 10 */

static double search_ms(mn_store *s, const char *coll, int reps) {
  float *q = malloc(sizeof(float) * (size_t)opt_dim);
  double *t = malloc(sizeof(double) * (size_t)reps);
  for (int r = -2; r < reps; r++) {
    fill_uniform(777 + (uint64_t)(r + 2), q, opt_dim);
    mn_search_params p;
    mn_search_params_init(&p);
    p.queries = q;
    p.n_queries = 1;
    p.dim = opt_dim;
    p.k = 10;
    p.include = 0;
    mn_search_result *res;
    double t0 = now_s();
    mn_status st = mn_store_search(s, coll, &p, &res);
    double dt = (now_s() - t0) * 1e3;
    if (st != MN_OK)
      die("search", st);
    int64_t n;
    const mn_search_hit *h = mn_search_result_hits(res, 0, &n);
    if (n != 10)
      die("search returned fewer than 10 hits", MN_ERR_INTERNAL);
    for (int i = 0; i < 10; i++)
      snprintf(last_ids[i], sizeof last_ids[i], "%s", h[i].id);
    mn_search_result_free(res);
    if (r >= 0)
      t[r] = dt;
  }
  qsort(t, (size_t)reps, sizeof *t, cmp_d);
  double med = t[reps / 2];
  free(q);
  free(t);
  return med;
}

static void open_store(mn_store **s, const char *dir) {
  mn_store_opts o;
  mn_store_opts_init(&o);
  o.data_dir = dir;
  o.l2_budget = 16ull << 30;
  o.map_size = 1ull << 30;
  o.maintenance_ms = 0;
  o.backend = g_backend;
  mn_status st = mn_store_open(&o, s);
  if (st != MN_OK)
    die("open", st);
}

/* The peer script sits next to this source file; $MNEMO_PEERS_STORE
 * overrides. */
static double run_peer(int64_t n, int64_t dim, int reps, double *sq8_ms) {
  char cmd[1400], script[1024];
  const char *env = getenv("MNEMO_PEERS_STORE");
  if (env && *env) {
    snprintf(script, sizeof script, "%s", env);
  } else {
    snprintf(script, sizeof script, "%s", __FILE__);
    char *slash = strrchr(script, '/');
    if (slash)
      snprintf(slash + 1, sizeof script - (size_t)(slash + 1 - script),
               "peers_store.py");
    else
      snprintf(script, sizeof script, "bench/peers_store.py");
  }
  snprintf(cmd, sizeof cmd,
           "/usr/bin/python3 '%s' --n %lld --dim %lld "
           "--reps %d",
           script, (long long)n, (long long)dim, reps);
  FILE *f = popen(cmd, "r");
  if (!f)
    return NAN;
  char line[512];
  double flat = NAN;
  *sq8_ms = NAN;
  while (fgets(line, sizeof line, f)) {
    double v;
    if (sscanf(line, "faiss_flat_ip_ms %lf", &v) == 1)
      flat = v;
    if (sscanf(line, "faiss_sq8_ms %lf", &v) == 1)
      *sq8_ms = v;
  }
  pclose(f);
  return flat;
}

/* Until every vector is in memory after a reopen; the last stats. */
static void wait_warm(mn_store *s, mn_store_stats *sst) {
  for (;;) {
    mn_store_get_stats(s, sst);
    if (!sst->warming)
      return;
    usleep(20000);
  }
}

/* --gpu (see opt_gpu). Returns the exit code. */
static int gpu_main(void) {
  mn_backend_opts bo;
  mn_backend_opts_init(&bo);
  bo.pref = MN_BACKEND_CUDA;
  mn_status st = mn_backend_open(&bo, &g_backend);
  if (st != MN_OK)
    die("open the CUDA backend", st);
  printf("bench_store --gpu: N=%lld dim=%lld on %s\n", (long long)opt_n,
         (long long)opt_dim, mn_backend_device(g_backend));
  char dir[] = "/tmp/mnemo-bench-store-gpu-XXXXXX";
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  mn_store *s;
  open_store(&s, dir);
  mn_collection_opts co;
  memset(&co, 0, sizeof co);
  co.dim = opt_dim;
  co.metric = MN_METRIC_IP;
  const char *names[2] = {"f32", "i8"};
  mn_dtype types[2] = {MN_DTYPE_F32, MN_DTYPE_I8};
  double ms[2][2]; /* [collection][0 gpu, 1 cpu] */
  char ids[2][2][10][64];
  uint64_t commits;
  for (int c = 0; c < 2; c++) {
    co.name = names[c];
    co.dtype = types[c];
    if ((st = mn_store_collection_create(s, &co, NULL)) != MN_OK)
      die("create", st);
    double rate = insert(s, names[c], opt_n, 1, &commits);
    printf("insert %s: %.0f memories/s (durable)\n", names[c], rate);
  }
  mn_store_stats sst;
  mn_store_get_stats(s, &sst);
  printf("tiers: device %.2f GB, host %.2f GB\n",
         (double)sst.used[MN_TIER_DEVICE] / 1e9,
         (double)sst.used[MN_TIER_HOST] / 1e9);
  for (int c = 0; c < 2; c++) {
    ms[c][0] = search_ms(s, names[c], opt_queries);
    memcpy(ids[c][0], last_ids, sizeof last_ids);
  }
  mn_store_close(s);
  mn_backend_close(g_backend);
  g_backend = NULL; /* the same data on the CPU backend */
  open_store(&s, dir);
  wait_warm(s, &sst);
  for (int c = 0; c < 2; c++) {
    ms[c][1] = search_ms(s, names[c], opt_queries);
    memcpy(ids[c][1], last_ids, sizeof last_ids);
  }
  mn_store_close(s);
  printf("%-40s %10s %10s %8s %s\n", "store search (median ms)", "gpu", "cpu",
         "ratio", "top-10 ids equal");
  for (int c = 0; c < 2; c++) {
    int same = 0;
    for (int i = 0; i < 10; i++)
      for (int j = 0; j < 10; j++)
        same += !strcmp(ids[c][0][i], ids[c][1][j]);
    char lab[80];
    snprintf(lab, sizeof lab, "N=%lld Q=1 k=10 %s", (long long)opt_n, names[c]);
    printf("%-40s %10.3f %10.3f %7.2fx %d/10\n", lab, ms[c][0], ms[c][1],
           ms[c][1] / ms[c][0], same);
    printf("{\"op\": \"store search %s\", \"gpu_ms\": %.4f, "
           "\"cpu_ms\": %.4f, \"same_top10\": %d}\n",
           lab, ms[c][0], ms[c][1], same);
  }
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
  return 0;
}

int main(int argc, char **argv) {
  int quick = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--n") && i + 1 < argc)
      opt_n = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--dim") && i + 1 < argc)
      opt_dim = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
      opt_batch = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--clients") && i + 1 < argc)
      opt_clients = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--queries") && i + 1 < argc)
      opt_queries = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
      snprintf(opt_dir, sizeof opt_dir, "%s", argv[++i]);
    else if (!strcmp(argv[i], "--no-peer"))
      opt_peer = 0;
    else if (!strcmp(argv[i], "--keep"))
      opt_keep = 1;
    else if (!strcmp(argv[i], "--quick"))
      quick = 1;
    else if (!strcmp(argv[i], "--gpu"))
      opt_gpu = 1;
    else if (!strcmp(argv[i], "--insert-only"))
      opt_insert_only = 1;
    else if (!strcmp(argv[i], "--repeat") && i + 1 < argc)
      opt_repeat = atoi(argv[++i]);
    else {
      fprintf(stderr,
              "usage: %s [--n N] [--dim D] [--batch B] [--clients T]"
              " [--queries R] [--dir DIR] [--no-peer] [--keep] [--quick]"
              " [--gpu] [--insert-only [--repeat R]]\n",
              argv[0]);
      return 2;
    }
  }
  if (quick) {
    opt_n = 100000;
    opt_queries = 5;
  }
  if (opt_gpu)
    return gpu_main();
  if (opt_clients < 1 || opt_clients > 64)
    opt_clients = 2;
  opt_n = opt_n / opt_batch * opt_batch;
  char dir[600];
  if (opt_dir[0]) {
    snprintf(dir, sizeof dir, "%s", opt_dir);
  } else {
    snprintf(dir, sizeof dir, "/tmp/mnemo-bench-store-XXXXXX");
    if (!mkdtemp(dir)) {
      perror("mkdtemp");
      return 1;
    }
  }
  printf("bench_store: N=%lld dim=%lld batch=%lld clients=%d, data in %s\n",
         (long long)opt_n, (long long)opt_dim, (long long)opt_batch,
         opt_clients, dir);
  printf("(shared 2-core machine: figures are noisy; peers run in the same "
         "invocation)\n\n");

  double faiss_ms = NAN, faiss_sq8 = NAN;
  if (opt_peer && !opt_insert_only) {
    faiss_ms = run_peer(opt_n, opt_dim, opt_queries, &faiss_sq8);
    fflush(stdout);
  }

  mn_store *s;
  open_store(&s, dir);
  mn_collection_opts co;
  memset(&co, 0, sizeof co);
  co.dim = opt_dim;
  co.metric = MN_METRIC_IP;

  /* 1. Insert throughput on a fresh collection (significance computed),
   *    then one with significance given. */
  int64_t n_ins = opt_n < 200000 ? opt_n : 200000;
  co.name = "ins_sig";
  co.dtype = MN_DTYPE_F32;
  mn_status st = mn_store_collection_create(s, &co, NULL);
  if (st != MN_OK)
    die("create", st);
  uint64_t commits;
  double ins_computed = insert(s, "ins_sig", n_ins, 0, &commits);
  printf("insert (durable, f32, significance computed): %9.0f memories/s "
         "(%lld rows, %llu commits)\n",
         ins_computed, (long long)n_ins, (unsigned long long)commits);
  mn_store_collection_drop(s, "ins_sig");
  double floor_rate =
      lmdb_alone(dir, n_ins, 8 + 4 * (size_t)opt_dim + 160, opt_batch, 1);
  printf("LMDB alone, same bytes per row, %lld per durable commit, one "
         "value per row: %9.0f rows/s\n",
         (long long)opt_batch, floor_rate);
  double packed_rate =
      lmdb_alone(dir, n_ins, 8 + 4 * (size_t)opt_dim + 160, opt_batch, 40);
  printf("LMDB alone, same bytes per row, %lld per durable commit, 40 rows "
         "per value: %9.0f rows/s\n",
         (long long)opt_batch, packed_rate);

  /* 2. The search collections: float32 (its insert timed too) and int8. */
  co.name = "f32";
  co.dtype = MN_DTYPE_F32;
  if ((st = mn_store_collection_create(s, &co, NULL)) != MN_OK)
    die("create", st);
  double ins_given = insert(s, "f32", opt_n, 1, &commits);
  printf("insert (durable, f32, significance given):    %9.0f memories/s "
         "(%lld rows, %llu commits)\n",
         ins_given, (long long)opt_n, (unsigned long long)commits);
  if (opt_insert_only && opt_repeat > 1) {
    double r1[64], r2[64];
    int reps = opt_repeat < 64 ? opt_repeat : 64;
    for (int r = 0; r < reps; r++) {
      double st_rate = insert(s, "f32", opt_n, 1, &commits);
      double p1 =
          lmdb_alone(dir, opt_n, 8 + 4 * (size_t)opt_dim + 160, opt_batch, 1);
      double p2 =
          lmdb_alone(dir, opt_n, 8 + 4 * (size_t)opt_dim + 160, opt_batch, 40);
      r1[r] = st_rate / p1;
      r2[r] = st_rate / p2;
      printf("round %d: store %9.0f /s, LMDB alone %9.0f /s (%.2fx), packed "
             "%9.0f /s (%.2fx)\n",
             r + 1, st_rate, p1, r1[r], p2, r2[r]);
      fflush(stdout);
    }
    qsort(r1, (size_t)reps, sizeof *r1, cmp_d);
    qsort(r2, (size_t)reps, sizeof *r2, cmp_d);
    printf("median of %d rounds: store / LMDB alone %.2fx (range %.2f-%.2f), "
           "store / LMDB packed %.2fx (range %.2f-%.2f)\n",
           reps, r1[reps / 2], r1[0], r1[reps - 1], r2[reps / 2], r2[0],
           r2[reps - 1]);
  }
  if (opt_insert_only) {
    mn_store_stats ist;
    mn_store_get_stats(s, &ist);
    printf("insert f32 given / LMDB alone: %.2fx (one value per row), "
           "%.2fx (packed); disk in use %.2f GB\n",
           ins_given / floor_rate, ins_given / packed_rate,
           (double)ist.used[MN_TIER_DISK] / 1e9);
    mn_store_close(s);
    if (!opt_keep && !opt_dir[0]) {
      char cmd[700];
      snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
      if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    }
    return 0;
  }
  co.name = "i8";
  co.dtype = MN_DTYPE_I8;
  if ((st = mn_store_collection_create(s, &co, NULL)) != MN_OK)
    die("create", st);
  double ins_i8 = insert(s, "i8", opt_n, 1, &commits);
  printf("insert (durable, int8, significance given):   %9.0f memories/s "
         "(%lld rows, %llu commits)\n\n",
         ins_i8, (long long)opt_n, (unsigned long long)commits);

  double f32_ms = search_ms(s, "f32", opt_queries);
  double i8_ms = search_ms(s, "i8", opt_queries);

  /* 3. Reopen. */
  mn_store_close(s);
  double t0 = now_s();
  open_store(&s, dir);
  double reopen_s = now_s() - t0;
  t0 = now_s() - reopen_s;
  double first_ms = search_ms(s, "f32", 1);
  mn_store_stats sst;
  wait_warm(s, &sst);
  double warm_s = now_s() - t0;
  double after_ms = search_ms(s, "f32", opt_queries);
  mn_store_get_stats(s, &sst);
  mn_store_close(s);

  char lab1[80], lab2[80];
  snprintf(lab1, sizeof lab1, "search N=%lld Q=1 k=10 f32 (ms; FAISS flat)",
           (long long)opt_n);
  snprintf(lab2, sizeof lab2, "search N=%lld Q=1 k=10 int8 (ms; FAISS SQ8)",
           (long long)opt_n);
  printf("%-44s %10s %10s %8s\n", "operation", "mnemo", "peer", "ratio");
  printf("%-44s %10.1f %10.1f %7.2fx\n", lab1, f32_ms, faiss_ms,
         faiss_ms / f32_ms);
  printf("%-44s %10.1f %10.1f %7.2fx\n", lab2, i8_ms, faiss_sq8,
         faiss_sq8 / i8_ms);
  printf("%-44s %10.1f %10.1f %7.2fx\n", "search int8 vs float32 (ms, ours)",
         i8_ms, f32_ms, f32_ms / i8_ms);
  printf("%-44s %10.2f %10s %8s\n", "reopen, ready to serve (s)", reopen_s, "-",
         "-");
  printf("%-44s %10.1f %10s %8s\n", "first search after reopen (ms)", first_ms,
         "-", "-");
  printf("%-44s %10.2f %10s %8s\n", "reopen until all vectors in memory (s)",
         warm_s, "-", "-");
  printf("%-44s %10.1f %10s %8s\n", "search f32 after warm-up (ms)", after_ms,
         "-", "-");
  printf("%-44s %10.0f %10s %8s\n", "insert f32, significance computed (/s)",
         ins_computed, "-", "-");
  printf("%-44s %10.0f %10.0f %7.2fx\n",
         "insert f32, sig. given (/s; LMDB alone)", ins_given, floor_rate,
         ins_given / floor_rate);
  printf("%-44s %10.0f %10.0f %7.2fx\n",
         "insert f32, sig. given (/s; LMDB packed)", ins_given, packed_rate,
         ins_given / packed_rate);
  printf("%-44s %10.0f %10s %8s\n", "insert int8, significance given (/s)",
         ins_i8, "-", "-");
  printf("(N here is %lld; memories after reopen: %lld; disk in use %.2f "
         "GB)\n",
         (long long)opt_n, (long long)sst.memories,
         (double)sst.used[MN_TIER_DISK] / 1e9);
  if (!opt_keep && !opt_dir[0]) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
      fprintf(stderr, "could not remove %s\n", dir);
  }
  return 0;
}
