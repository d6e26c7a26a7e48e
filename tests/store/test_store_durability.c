/*
 * test_store_durability.c - durable writes:
 *  - many threads writing at once, durably: every write acknowledged,
 *    fewer commits than writes (group commit), all present after reopen,
 *    and searches running alongside see consistent results;
 *  - a crash test: a child process writes numbered batches from two
 *    threads, each thread also deleting the first row of its batch before
 *    last (so vector runs lose rows, get rewritten or go), and reports
 *    each acknowledged batch (and delete) on a pipe; it is killed with
 *    SIGKILL at a random moment; the store is reopened and every
 *    acknowledged batch must be present and intact, every acknowledged
 *    delete done, and every batch present complete (all or nothing). The
 *    vectors are checked as read by id and as the reopened chunks hold
 *    them (search scores against a double reference). A few cycles here;
 *    set MNEMO_TEST_SLOW=1 for 200.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>

#include <cmocka.h>

#include "store_helpers.h"

#define DIM 32

/* The vector of memory (a, b, j), reproducible anywhere. */
static void vec_of(uint64_t a, uint64_t b, uint64_t j, float *v) {
  rng r = {a * 1000003ull + b * 7919ull + j};
  rng_vec(&r, v, DIM);
}

/* ------------------------------------------------------------------------
 * Concurrent writers.
 * ---------------------------------------------------------------------- */
typedef struct writer_arg {
  mn_store *s;
  int t, n;
  mn_status st;
} writer_arg;

static void *writer(void *p) {
  writer_arg *a = p;
  for (int i = 0; i < a->n && a->st == MN_OK; i++) {
    float v[DIM];
    vec_of(1, (uint64_t)a->t, (uint64_t)i, v);
    char id[32], content[48];
    snprintf(id, sizeof id, "t%d-%d", a->t, i);
    snprintf(content, sizeof content, "thread %d write %d", a->t, i);
    mn_memory_in m;
    mn_memory_in_init(&m);
    m.id = id;
    m.embedding = v;
    m.content = content;
    m.chat_id = a->t % 2 ? "odd" : "even";
    a->st = mn_store_add(a->s, "c", &m, 1, NULL);
    if (a->st == MN_OK && i % 10 == 9) {
      /* an update now and then, through the same queue */
      mn_memory_update u = {.has_significance = 1, .significance = 0.75};
      a->st = mn_store_update(a->s, "c", id, &u, 0, NULL);
    }
  }
  return NULL;
}

typedef struct reader_arg {
  mn_store *s;
  volatile int stop;
  int searches;
  mn_status st;
} reader_arg;

static void *reader(void *p) {
  reader_arg *a = p;
  float q[DIM];
  vec_of(9, 9, 9, q);
  int64_t last = 0;
  while (!a->stop && a->st == MN_OK) {
    mn_search_params sp;
    mn_search_params_init(&sp);
    sp.queries = q;
    sp.n_queries = 1;
    sp.dim = DIM;
    sp.k = 2000;
    mn_search_result *r;
    a->st = mn_store_search(a->s, "c", &sp, &r);
    if (a->st != MN_OK)
      break;
    int64_t n;
    const mn_search_hit *h = mn_search_result_hits(r, 0, &n);
    /* Acknowledged writes never disappear; order is by score. */
    if (n < last)
      a->st = MN_ERR_INTERNAL;
    for (int64_t j = 1; j < n; j++)
      if (h[j].score > h[j - 1].score)
        a->st = MN_ERR_INTERNAL;
    last = n;
    mn_search_result_free(r);
    a->searches++;
  }
  return NULL;
}

static void test_concurrent_writers(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  o.durable = 1;
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  mn_collection_opts co = coll_opts("c", DIM, MN_METRIC_COSINE, MN_DTYPE_F32);
  ST_OK(mn_store_collection_create(s, &co, NULL));
  mn_store_stats before;
  mn_store_get_stats(s, &before);
  enum { T = 8, N = 40 };
  pthread_t th[T], rt;
  writer_arg wa[T];
  reader_arg ra = {s, 0, 0, MN_OK};
  pthread_create(&rt, NULL, reader, &ra);
  for (int t = 0; t < T; t++) {
    wa[t] = (writer_arg){s, t, N, MN_OK};
    pthread_create(&th[t], NULL, writer, &wa[t]);
  }
  for (int t = 0; t < T; t++) {
    pthread_join(th[t], NULL);
    ST_OK(wa[t].st);
  }
  ra.stop = 1;
  pthread_join(rt, NULL);
  ST_OK(ra.st);
  mn_store_stats after;
  mn_store_get_stats(s, &after);
  uint64_t writes = after.writes - before.writes;
  uint64_t commits = after.commits - before.commits;
  printf("# %d threads: %llu writes acknowledged in %llu commits; %d "
         "searches alongside\n",
         T, (unsigned long long)writes, (unsigned long long)commits,
         ra.searches);
  assert_int_equal(writes, T * N + T * (N / 10));
  assert_true(commits < writes);
  assert_int_equal(after.memories, T * N);
  mn_store_close(s);
  ST_OK(mn_store_open(&o, &s));
  for (int t = 0; t < T; t++) {
    const char *ids[N];
    char buf[N][32];
    for (int i = 0; i < N; i++) {
      snprintf(buf[i], 32, "t%d-%d", t, i);
      ids[i] = buf[i];
    }
    mn_memory_list *l;
    ST_OK(mn_store_get(s, "c", ids, N,
                       MN_INCLUDE_DEFAULT | MN_INCLUDE_EMBEDDING, &l));
    assert_int_equal(mn_memory_list_count(l), N);
    for (int i = 0; i < N; i++) {
      const mn_memory *m = mn_memory_list_at(l, i);
      float v[DIM];
      vec_of(1, (uint64_t)t, (uint64_t)i, v);
      assert_memory_equal(m->embedding, v, sizeof v);
      char content[48];
      snprintf(content, sizeof content, "thread %d write %d", t, i);
      assert_string_equal(m->content, content);
      assert_string_equal(m->chat_id, t % 2 ? "odd" : "even");
      if (i % 10 == 9)
        assert_true(m->significance == 0.75f);
    }
    mn_memory_list_free(l);
  }
  mn_store_close(s);
  rm_rf(dir);
  free(dir);
}

/* ------------------------------------------------------------------------
 * Mixed load: adds, deletes, updates, gets, searches of both kinds, and a
 * collection created and dropped over and over, from several threads at
 * once with small chunks and a small L2 budget (so chunks move between
 * tiers all the time). Every search result must be a memory that exists
 * (or existed during the search) with the right content for its id, and
 * the final counts must match what the threads report.
 * ---------------------------------------------------------------------- */
typedef struct mix_arg {
  mn_store *s;
  int t;
  volatile int *stop;
  int64_t added, deleted;
  mn_status st;
} mix_arg;

static void *mix_writer(void *p) {
  mix_arg *a = p;
  rng r = {(uint64_t)a->t * 77 + 1};
  int next = 0;
  while (!*a->stop && a->st == MN_OK) {
    int op = (int)(rng_next(&r) % 10);
    if (op < 6 || next < 20) {
      int n = 1 + (int)(rng_next(&r) % 20);
      mn_memory_in m[20];
      float v[20 * DIM];
      char ids[20][32], content[20][32];
      for (int j = 0; j < n; j++) {
        mn_memory_in_init(&m[j]);
        vec_of(5, (uint64_t)a->t, (uint64_t)(next + j), v + j * DIM);
        snprintf(ids[j], 32, "w%d-%d", a->t, next + j);
        snprintf(content[j], 32, "content w%d-%d", a->t, next + j);
        m[j].id = ids[j];
        m[j].content = content[j];
        m[j].embedding = v + j * DIM;
        m[j].chat_id = j % 2 ? "x" : "y";
      }
      a->st = mn_store_add(a->s, "mix", m, n, NULL);
      next += n;
      a->added += n;
    } else if (op < 8) {
      char id[32];
      snprintf(id, 32, "w%d-%d", a->t, (int)(rng_next(&r) % (uint64_t)next));
      const char *ids[1] = {id};
      int64_t d = 0;
      a->st = mn_store_delete(a->s, "mix", ids, 1, &d, NULL);
      a->deleted += d;
    } else {
      char id[32];
      snprintf(id, 32, "w%d-%d", a->t, (int)(rng_next(&r) % (uint64_t)next));
      mn_memory_update u = {.has_significance = 1, .significance = 0.3};
      mn_status st = mn_store_update(a->s, "mix", id, &u, 0, NULL);
      if (st != MN_ERR_NOT_FOUND)
        a->st = st;
    }
  }
  return NULL;
}

static void *mix_reader(void *p) {
  mix_arg *a = p;
  rng r = {(uint64_t)a->t * 99 + 7};
  while (!*a->stop && a->st == MN_OK) {
    float q[DIM];
    rng_vec(&r, q, DIM);
    mn_search_params sp;
    mn_search_params_init(&sp);
    sp.queries = q;
    sp.n_queries = 1;
    sp.dim = DIM;
    sp.k = 1 + (int64_t)(rng_next(&r) % 50);
    if (rng_next(&r) % 2) {
      sp.significance_weight = 0.5;
      sp.chat_id = "x";
    }
    sp.reinforce = rng_next(&r) % 5 == 0;
    mn_search_result *res;
    a->st = mn_store_search(a->s, "mix", &sp, &res);
    if (a->st != MN_OK)
      break;
    int64_t n;
    const mn_search_hit *h = mn_search_result_hits(res, 0, &n);
    for (int64_t j = 0; j < n; j++) {
      char want[40];
      snprintf(want, sizeof want, "content %s", h[j].id);
      if (strcmp(h[j].content, want) != 0 ||
          (sp.chat_id && strcmp(h[j].chat_id, "x") != 0) ||
          (j > 0 && h[j].score > h[j - 1].score))
        a->st = MN_ERR_INTERNAL;
    }
    mn_search_result_free(res);
    /* A get of the same ids never fails. */
    mn_memory_list *l;
    const char *ids[2] = {"w0-1", "w1-2"};
    if (a->st == MN_OK)
      a->st = mn_store_get(a->s, "mix", ids, 2, MN_INCLUDE_DEFAULT, &l);
    if (a->st == MN_OK)
      mn_memory_list_free(l);
  }
  return NULL;
}

static void *mix_admin(void *p) {
  mix_arg *a = p;
  int round = 0;
  while (!*a->stop && a->st == MN_OK) {
    mn_collection_opts co = coll_opts("tmp", DIM, MN_METRIC_L2, MN_DTYPE_I8);
    a->st = mn_store_collection_create(a->s, &co, NULL);
    float v[DIM];
    vec_of(1, 2, (uint64_t)round, v);
    mn_memory_in m;
    mn_memory_in_init(&m);
    m.embedding = v;
    if (a->st == MN_OK)
      a->st = mn_store_add(a->s, "tmp", &m, 1, NULL);
    mn_chunk_info ci;
    if (a->st == MN_OK &&
        mn_store_chunk_alloc(a->s, 4096, "admin", NULL, &ci) == MN_OK)
      mn_store_chunk_free(a->s, ci.id);
    mn_store_maintain(a->s);
    if (a->st == MN_OK)
      a->st = mn_store_collection_drop(a->s, "tmp");
    round++;
  }
  return NULL;
}

static void test_mixed_load(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  mn_store_opts o;
  test_opts(&o, dir);
  o.chunk_rows = 32;
  o.l2_budget = 40 * 32 * DIM * 4; /* about 32 resident chunks */
  mn_store *s;
  ST_OK(mn_store_open(&o, &s));
  mn_collection_opts co = coll_opts("mix", DIM, MN_METRIC_IP, MN_DTYPE_F32);
  ST_OK(mn_store_collection_create(s, &co, NULL));
  volatile int stop = 0;
  enum { W = 3, R = 3 };
  pthread_t th[W + R + 1];
  mix_arg a[W + R + 1];
  for (int i = 0; i < W + R + 1; i++) {
    a[i] = (mix_arg){s, i, &stop, 0, 0, MN_OK};
    pthread_create(&th[i], NULL,
                   i < W       ? mix_writer
                   : i < W + R ? mix_reader
                               : mix_admin,
                   &a[i]);
  }
  struct timespec ts = {1, 500000000L};
  nanosleep(&ts, NULL);
  stop = 1;
  int64_t added = 0, deleted = 0;
  for (int i = 0; i < W + R + 1; i++) {
    pthread_join(th[i], NULL);
    if (a[i].st != MN_OK)
      fprintf(stderr, "thread %d: %s: %s\n", i, mn_status_name(a[i].st),
              mn_errmsg());
    ST_OK(a[i].st);
    added += a[i].added;
    deleted += a[i].deleted;
  }
  mn_collection_info info;
  ST_OK(mn_store_collection_get(s, "mix", &info));
  printf("# mixed load: %lld added, %lld deleted, %lld chunks\n",
         (long long)added, (long long)deleted, (long long)info.chunks);
  assert_int_equal(info.count, added - deleted);
  mn_store_stats st;
  mn_store_get_stats(s, &st);
  assert_true(st.used[MN_TIER_HOST] <= o.l2_budget);
  mn_store_close(s);
  ST_OK(mn_store_open(&o, &s));
  ST_OK(mn_store_collection_get(s, "mix", &info));
  assert_int_equal(info.count, added - deleted);
  mn_store_close(s);
  rm_rf(dir);
  free(dir);
}

/* ------------------------------------------------------------------------
 * Crash test.
 * ---------------------------------------------------------------------- */
typedef struct ack {
  uint32_t cycle, thread, batch, size;
} ack;

/* Batch b of a thread comes with the delete of row 0 of batch b - 2 when
 * that batch has more than one row (so a batch never vanishes whole). */
static int deletes_row0(uint32_t cycle, uint32_t t, uint32_t b);

typedef struct child_arg {
  mn_store *s;
  int fd;
  uint32_t cycle, thread;
} child_arg;

static uint32_t batch_size(uint32_t cycle, uint32_t t, uint32_t b) {
  return 1 + (uint32_t)((cycle * 31u + t * 17u + b * 7u) % 40u);
}

static void *child_writer(void *p) {
  child_arg *a = p;
  static _Thread_local mn_memory_in m[64];
  static _Thread_local float v[64 * DIM];
  static _Thread_local char ids[64][48], content[64][64];
  for (uint32_t b = 0;; b++) {
    uint32_t n = batch_size(a->cycle, a->thread, b);
    for (uint32_t j = 0; j < n; j++) {
      uint64_t key = (uint64_t)a->cycle << 20 | (uint64_t)a->thread << 16;
      vec_of(key, b, j, v + j * DIM);
      snprintf(ids[j], sizeof ids[j], "c%u-t%u-b%u-%u", a->cycle, a->thread, b,
               j);
      snprintf(content[j], sizeof content[j],
               "cycle %u thread %u batch %u "
               "row %u",
               a->cycle, a->thread, b, j);
      mn_memory_in_init(&m[j]);
      m[j].id = ids[j];
      m[j].embedding = v + j * DIM;
      m[j].content = content[j];
      m[j].chat_id = "crash";
    }
    if (mn_store_add(a->s, "crash", m, n, NULL) != MN_OK)
      _exit(2);
    if (b >= 2 && deletes_row0(a->cycle, a->thread, b - 2)) {
      char id[48];
      snprintf(id, sizeof id, "c%u-t%u-b%u-0", a->cycle, a->thread, b - 2);
      const char *ids1[1] = {id};
      int64_t deleted = 0;
      if (mn_store_delete(a->s, "crash", ids1, 1, &deleted, NULL) != MN_OK ||
          deleted != 1)
        _exit(7);
    }
    ack k = {a->cycle, a->thread, b, n};
    /* The write is acknowledged: tell the parent (atomic, < PIPE_BUF). */
    if (write(a->fd, &k, sizeof k) != (ssize_t)sizeof k)
      _exit(3);
  }
  return NULL;
}

static void run_child(const char *dir, uint32_t cycle, int fd) {
  mn_store_opts o;
  test_opts(&o, dir);
  o.durable = 1;
  mn_store *s;
  if (mn_store_open(&o, &s) != MN_OK)
    _exit(4);
  mn_collection_opts co = coll_opts("crash", DIM, MN_METRIC_IP, MN_DTYPE_F16);
  mn_status st = mn_store_collection_create(s, &co, NULL);
  if (st != MN_OK && st != MN_ERR_EXISTS)
    _exit(5);
  ack hello = {cycle, 99, 0, 0};
  if (write(fd, &hello, sizeof hello) != (ssize_t)sizeof hello)
    _exit(6);
  pthread_t th[2];
  child_arg a[2];
  for (uint32_t t = 0; t < 2; t++) {
    a[t] = (child_arg){s, fd, cycle, t};
    pthread_create(&th[t], NULL, child_writer, &a[t]);
  }
  for (;;)
    pause();
}

static int deletes_row0(uint32_t cycle, uint32_t t, uint32_t b) {
  return batch_size(cycle, t, b) > 1;
}

/* Row 0 of a batch: kept, deleted (the delete was acknowledged), or
 * either (the delete may have been in flight when the child died). */
enum { ROW0_KEPT, ROW0_GONE, ROW0_EITHER };

/* Check one batch: 1 when present (rows 1.. all there, intact), 0 when
 * absent; fails the test when partial or damaged, or when row 0 is not
 * as `row0` says. */
static int check_batch(mn_store *s, uint32_t cycle, uint32_t t, uint32_t b,
                       int row0) {
  uint32_t n = batch_size(cycle, t, b);
  char buf[64][48];
  const char *ids[64];
  for (uint32_t j = 0; j < n; j++) {
    snprintf(buf[j], sizeof buf[j], "c%u-t%u-b%u-%u", cycle, t, b, j);
    ids[j] = buf[j];
  }
  mn_memory_list *l;
  ST_OK(mn_store_get(s, "crash", ids, n,
                     MN_INCLUDE_CONTENT | MN_INCLUDE_EMBEDDING, &l));
  int64_t got = mn_memory_list_count(l);
  int has0 = 0;
  for (int64_t i = 0; i < got; i++) {
    const mn_memory *m = mn_memory_list_at(l, i);
    uint32_t j = 0;
    assert_int_equal(sscanf(strrchr(m->id, '-') + 1, "%u", &j), 1);
    assert_true(j < n);
    has0 |= j == 0;
    float v[DIM];
    uint64_t key = (uint64_t)cycle << 20 | (uint64_t)t << 16;
    vec_of(key, b, (uint64_t)j, v);
    for (int d = 0; d < DIM; d++) /* stored as float16 */
      assert_true(fabsf(m->embedding[d] - v[d]) <=
                  fabsf(v[d]) / 2048 + 6.2e-5f);
    char content[64];
    snprintf(content, sizeof content, "cycle %u thread %u batch %u row %u",
             cycle, t, b, j);
    assert_string_equal(m->content, content);
  }
  mn_memory_list_free(l);
  int64_t rest = got - has0; /* rows 1.. present */
  int present = n > 1 ? rest == (int64_t)n - 1 : has0;
  if (rest != 0 && rest != (int64_t)n - 1)
    fprintf(stderr, "batch c%u-t%u-b%u: %lld of rows 1..%u present\n", cycle, t,
            b, (long long)rest, n - 1);
  assert_true(rest == 0 || rest == (int64_t)n - 1);
  if (present && row0 == ROW0_KEPT)
    assert_true(has0);
  if (row0 == ROW0_GONE)
    assert_false(has0);
  if (!present)
    assert_false(has0);
  return present;
}

/* Every stored vector as the reopened chunks hold it: an exact search over
 * everything (k up to the limit) must score each hit as the double dot
 * product of the query with that memory's vector (float16 tolerance). */
static void check_chunks(mn_store *s, int64_t count) {
  if (count == 0) /* killed before its first write (slow machines) */
    return;
  float q[DIM];
  vec_of(7, 7, 7, q);
  mn_search_params sp;
  mn_search_params_init(&sp);
  sp.queries = q;
  sp.n_queries = 1;
  sp.dim = DIM;
  sp.k = count < MN_SEARCH_MAX_K ? count : MN_SEARCH_MAX_K;
  sp.include = 0;
  mn_search_result *r;
  ST_OK(mn_store_search(s, "crash", &sp, &r));
  int64_t n;
  const mn_search_hit *h = mn_search_result_hits(r, 0, &n);
  assert_int_equal(n, sp.k);
  for (int64_t i = 0; i < n; i++) {
    uint32_t c, t, b, j;
    assert_int_equal(sscanf(h[i].id, "c%u-t%u-b%u-%u", &c, &t, &b, &j), 4);
    float v[DIM];
    vec_of((uint64_t)c << 20 | (uint64_t)t << 16, b, j, v);
    double ref = 0, tol = 1e-4;
    for (int d = 0; d < DIM; d++) {
      ref += (double)q[d] * v[d];
      tol += fabs(q[d]) * (fabs(v[d]) / 2048 + 6.2e-5);
    }
    if (fabs(h[i].score - ref) > tol)
      fprintf(stderr, "%s: score %.6f, reference %.6f\n", h[i].id, h[i].score,
              ref);
    assert_true(fabs(h[i].score - ref) <= tol);
  }
  mn_search_result_free(r);
}

static void test_crash(void **state) {
  (void)state;
  const char *slow = getenv("MNEMO_TEST_SLOW");
  int cycles = slow && *slow && strcmp(slow, "0") != 0 ? 200 : 4;
  char *dir = make_tmpdir();
  rng r = {(uint64_t)time(NULL)};
  uint64_t acked_rows = 0, present_rows = 0, extra_batches = 0;
  uint64_t deleted_rows = 0;
  for (uint32_t cycle = 0; cycle < (uint32_t)cycles; cycle++) {
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      close(fds[0]);
      run_child(dir, cycle, fds[1]);
      _exit(0);
    }
    close(fds[1]);
    ack hello;
    assert_int_equal(read(fds[0], &hello, sizeof hello), sizeof hello);
    assert_int_equal(hello.thread, 99);
    /* Let it write for a random 2..60 ms, then kill it. */
    struct timespec ts = {0, (long)(2 + rng_next(&r) % 59) * 1000000L};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    /* Every acknowledgement the child got out. */
    uint32_t max_batch[2] = {0, 0};
    int any[2] = {0, 0};
    ack *acks = NULL;
    size_t na = 0, cap = 0;
    ack k;
    ssize_t rd;
    while ((rd = read(fds[0], &k, sizeof k)) == (ssize_t)sizeof k) {
      if (na == cap) {
        cap = cap ? 2 * cap : 256;
        acks = realloc(acks, cap * sizeof *acks);
      }
      acks[na++] = k;
      assert_int_equal(k.cycle, cycle);
      if (!any[k.thread] || k.batch > max_batch[k.thread])
        max_batch[k.thread] = k.batch;
      any[k.thread] = 1;
    }
    close(fds[0]);
    mn_store_opts o;
    test_opts(&o, dir);
    mn_store *s;
    ST_OK(mn_store_open(&o, &s));
    /* A thread acknowledges in order, so batches up to its last
     * acknowledged one were all acknowledged, and so were the deletes that
     * came with them: row 0 of batch b is gone when b + 2 was
     * acknowledged; the delete coming with b + 2 = last + 1 (or later,
     * committed but not reported) may have happened. */
    for (size_t i = 0; i < na; i++) {
      uint32_t t = acks[i].thread, b = acks[i].batch;
      int row0 = !deletes_row0(cycle, t, b) ? ROW0_KEPT
                 : b + 2 <= max_batch[t]    ? ROW0_GONE
                                            : ROW0_EITHER;
      assert_int_equal(check_batch(s, acks[i].cycle, t, b, row0), 1);
      acked_rows += acks[i].size - (row0 == ROW0_GONE);
      deleted_rows += row0 == ROW0_GONE;
    }
    /* Batches after the last acknowledged one may or may not have made it
     * (committed but not yet reported); each must still be whole. The
     * next batches of each thread are checked up to the first absent. */
    for (uint32_t t = 0; t < 2; t++)
      for (uint32_t b = any[t] ? max_batch[t] + 1 : 0;; b++) {
        if (!check_batch(s, cycle, t, b,
                         deletes_row0(cycle, t, b) ? ROW0_EITHER : ROW0_KEPT))
          break;
        extra_batches++;
      }
    mn_collection_info info;
    ST_OK(mn_store_collection_get(s, "crash", &info));
    present_rows = (uint64_t)info.count;
    check_chunks(s, info.count);
    mn_store_close(s);
    free(acks);
  }
  printf("# crash test: %d cycles, %llu acknowledged rows all present, %llu "
         "acknowledged deletes all done, %llu rows stored in total, %llu "
         "batches committed but not yet acknowledged when killed\n",
         cycles, (unsigned long long)acked_rows,
         (unsigned long long)deleted_rows, (unsigned long long)present_rows,
         (unsigned long long)extra_batches);
  assert_true(present_rows >= acked_rows);
  rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_concurrent_writers),
      cmocka_unit_test(test_mixed_load),
      cmocka_unit_test(test_crash),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
