/*
 * test_batcher.c - dynamic batching (src/compute/batcher.c) on the CPU
 * backend. Several threads hand jobs to one batcher at once; every job's
 * result must be the bytes mn_pipeline_run gives that job alone (out,
 * scales, zero_rows, shape, dtype; after a PCA transform the same to float
 * rounding, see check_close), compatible jobs must have run as one
 * pipeline run (the run function sees it), incompatible ones never
 * together, jobs that are not row-wise never merged, a bad job must not
 * join, a failed merged run must be retried job by job, a lone job must
 * not wait, and window 0 turns batching off.
 *
 * The engine brackets each request with mn__batcher_arrive / _depart; the
 * jobs here do the same, and all of a test's threads arrive (and wait at a
 * barrier) before any of them reaches the batcher, so every job is known
 * to be on its way: a group closes when it is full or when nothing is
 * pending any more, both deterministic. A "blocker" job of another width,
 * held inside the run function, stands for a worker that is busy.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "common/internal.h"
#include "compute/batcher.h"
#include "compute/refops.h"
#include "mnemo/compute.h"

static mn_backend *be;

/* ------------------------------------------------------ the run function */
#define BLOCK_COLS 7
#define MAX_CALLS 256
static struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int blocker_in, release;
  int calls;
  int64_t rows[MAX_CALLS]; /* rows of each call, in order */
  int64_t cols[MAX_CALLS];
  int64_t fail_over_rows; /* > 0: calls with more rows fail (DEVICE_OOM) */
} rf = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static mn_status run_fn(void *ctx, const mn_tensor *in,
                        const mn_pipeline_opts *o, mn_pipeline_result *res,
                        unsigned *flags) {
  /* (No cmocka asserts here: this runs on the jobs' threads.) */
  if (ctx != &rf)
    abort();
  pthread_mutex_lock(&rf.lock);
  if (in->cols == BLOCK_COLS) {
    rf.blocker_in = 1;
    pthread_cond_broadcast(&rf.cond);
    while (!rf.release)
      pthread_cond_wait(&rf.cond, &rf.lock);
    pthread_mutex_unlock(&rf.lock);
    return mn_pipeline_run(be, in, o, res);
  }
  if (rf.calls < MAX_CALLS) {
    rf.rows[rf.calls] = in->rows;
    rf.cols[rf.calls] = in->cols;
  }
  rf.calls++;
  int64_t lim = rf.fail_over_rows;
  pthread_mutex_unlock(&rf.lock);
  if (lim > 0 && in->rows > lim) {
    *flags |= MN__RUN_CPU_FALLBACK; /* must not reach the jobs */
    memset(res, 0, sizeof *res);
    return mn__set_error(MN_ERR_DEVICE_OOM, "injected: %lld rows",
                         (long long)in->rows);
  }
  return mn_pipeline_run(be, in, o, res);
}

static void reset_calls(void) {
  pthread_mutex_lock(&rf.lock);
  rf.calls = 0;
  rf.blocker_in = 0;
  rf.release = 0;
  rf.fail_over_rows = 0;
  pthread_mutex_unlock(&rf.lock);
}

static mn__batcher *make(int64_t window_us, int64_t max_rows, int max_jobs) {
  mn__batcher_opts o = {.window_us = window_us,
                        .max_rows = max_rows,
                        .max_jobs = max_jobs,
                        .run = run_fn,
                        .ctx = &rf};
  mn__batcher *bt = NULL;
  assert_int_equal(mn__batcher_create(&o, &bt), MN_OK);
  return bt;
}

/* ------------------------------------------------------------------ jobs */
typedef struct job {
  mn__batcher *bt;
  pthread_barrier_t *all_here; /* NULL: run at once */
  const void *src;             /* the client (NULL: unknown) */
  int no_arrive;               /* reaches the batcher without arriving */
  float *x;
  mn_tensor in;
  mn_pipeline_opts o;
  mn_pipeline_result res;
  mn_status st;
  mn__batch_info info;
  char err[512];
} job;

/* rows x cols N(0, 1), with rows listed in `zero` set to +-0. */
static void job_init(job *j, mn__batcher *bt, trng *r, int64_t rows,
                     int64_t cols, const mn_pipeline_opts *o, int zero_every) {
  memset(j, 0, sizeof *j);
  j->bt = bt;
  j->x = ref_random(r, rows, cols, 1.0, 0);
  for (int64_t i = 0; zero_every && i < rows; i += zero_every)
    for (int64_t c = 0; c < cols; c++)
      j->x[i * cols + c] = (c & 1) ? -0.0f : 0.0f;
  j->in = mn_tensor_host(j->x, MN_DTYPE_F32, rows, cols);
  j->o = *o;
}

static void job_free(job *j) {
  mn_pipeline_result_free(&j->res);
  free(j->x);
}

/* What the engine does with a request: arrive, run, depart. */
static void *job_main(void *arg) {
  job *j = arg;
  if (!j->no_arrive)
    mn__batcher_arrive(j->bt);
  if (j->all_here)
    pthread_barrier_wait(j->all_here);
  j->st = mn__batcher_run(j->bt, &j->in, &j->o, j->src, &j->res, &j->info);
  snprintf(j->err, sizeof j->err, "%s", j->st ? mn_errmsg() : "");
  mn__batcher_depart(j->bt);
  return NULL;
}

/* A PCA transform is a matrix product whose kernel OpenBLAS picks by size
 * (a different one below about 1e5 multiply-adds), so a row projected in a
 * batch of many rows is the same as alone to float rounding, not to the
 * bit; test_pipeline allows the same between batch sizes. Float outputs
 * within 1e-5 of the largest value, int8 codes within one step, scales to
 * 1e-5 relative. */
static void check_close(const mn_pipeline_result *got,
                        const mn_pipeline_result *ref) {
  int64_t rows = ref->out.rows, cols = ref->out.cols;
  assert_true(ref->out.dtype == MN_DTYPE_F32 || ref->out.dtype == MN_DTYPE_I8);
  double mag = 0;
  int64_t differ = 0;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) {
      double v = ref->out.dtype == MN_DTYPE_F32
                     ? ((const float *)mn_tensor_row(&ref->out, r))[c]
                     : ref->scales[r] *
                           ((const int8_t *)mn_tensor_row(&ref->out, r))[c];
      mag = fmax(mag, fabs(v));
    }
  for (int64_t r = 0; r < rows; r++) {
    if (ref->scales &&
        !(fabs(got->scales[r] - ref->scales[r]) <= 1e-5 * ref->scales[r]))
      fail_msg("row %lld: scale %.9g, alone %.9g", (long long)r, got->scales[r],
               ref->scales[r]);
    for (int64_t c = 0; c < cols; c++) {
      double a, b, tol = 1e-5 * mag;
      if (ref->out.dtype == MN_DTYPE_F32) {
        a = ((const float *)mn_tensor_row(&got->out, r))[c];
        b = ((const float *)mn_tensor_row(&ref->out, r))[c];
      } else {
        a = got->scales[r] * ((const int8_t *)mn_tensor_row(&got->out, r))[c];
        b = ref->scales[r] * ((const int8_t *)mn_tensor_row(&ref->out, r))[c];
        tol += 1.001 * fmax(got->scales[r], ref->scales[r]);
      }
      if (!(fabs(a - b) <= tol))
        fail_msg("row %lld col %lld: %.9g, alone %.9g", (long long)r,
                 (long long)c, a, b);
      if (ref->out.dtype == MN_DTYPE_I8)
        differ += ((const int8_t *)mn_tensor_row(&got->out, r))[c] !=
                  ((const int8_t *)mn_tensor_row(&ref->out, r))[c];
    }
  }
  if (ref->out.dtype == MN_DTYPE_I8 && differ * 100 > rows * cols)
    fail_msg("%lld of %lld codes differ from the job run alone",
             (long long)differ, (long long)(rows * cols));
}

/* The job's result against mn_pipeline_run of the job alone: the same
 * bytes (to rounding after a PCA transform, see check_close). */
static void check_alone(const job *j) {
  assert_int_equal(j->st, MN_OK);
  mn_pipeline_result ref;
  assert_int_equal(mn_pipeline_run(be, &j->in, &j->o, &ref), MN_OK);
  const mn_pipeline_result *got = &j->res;
  assert_int_equal(got->out.rows, ref.out.rows);
  assert_int_equal(got->out.cols, ref.out.cols);
  assert_int_equal(got->out.dtype, ref.out.dtype);
  assert_int_equal(got->out.device, MN_DEVICE_HOST);
  assert_int_equal(got->quant, ref.quant);
  assert_int_equal(got->zero_rows, ref.zero_rows);
  assert_null(got->fitted);
  assert_null(got->affine.vmin);
  if (j->o.pca) {
    check_close(got, &ref);
    mn_pipeline_result_free(&ref);
    return;
  }
  size_t rb = mn_dtype_row_bytes(ref.out.dtype, ref.out.cols);
  for (int64_t r = 0; r < ref.out.rows; r++) {
    if (memcmp(mn_tensor_row(&got->out, r), mn_tensor_row(&ref.out, r), rb))
      fail_msg("row %lld of a %lld-row %s job differs from the job run "
               "alone",
               (long long)r, (long long)ref.out.rows,
               mn_dtype_name(ref.out.dtype));
  }
  assert_int_equal(!got->scales, !ref.scales);
  if (ref.scales)
    assert_memory_equal(got->scales, ref.scales,
                        sizeof(float) * (size_t)ref.out.rows);
  mn_pipeline_result_free(&ref);
}

/* Start the blocker (a job of width BLOCK_COLS) and wait until it sits in
 * the run function. */
static void blocker_start(pthread_t *t, job *blk, mn__batcher *bt, trng *r) {
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  job_init(blk, bt, r, 1, BLOCK_COLS, &o, 0);
  assert_int_equal(pthread_create(t, NULL, job_main, blk), 0);
  pthread_mutex_lock(&rf.lock);
  while (!rf.blocker_in)
    pthread_cond_wait(&rf.cond, &rf.lock);
  pthread_mutex_unlock(&rf.lock);
}

static void blocker_stop(pthread_t t, job *blk) {
  pthread_mutex_lock(&rf.lock);
  rf.release = 1;
  pthread_cond_broadcast(&rf.cond);
  pthread_mutex_unlock(&rf.lock);
  assert_int_equal(pthread_join(t, NULL), 0);
  assert_int_equal(blk->st, MN_OK);
  assert_int_equal(blk->info.jobs, 1);
  job_free(blk);
}

/* Every job on a thread of its own, all arrived before any runs. */
static void run_all(job *jobs, int n) {
  pthread_t t[32];
  pthread_barrier_t b;
  assert_true(n <= 32);
  assert_int_equal(pthread_barrier_init(&b, NULL, (unsigned)n), 0);
  for (int i = 0; i < n; i++) {
    jobs[i].all_here = &b;
    assert_int_equal(pthread_create(&t[i], NULL, job_main, &jobs[i]), 0);
  }
  for (int i = 0; i < n; i++)
    assert_int_equal(pthread_join(t[i], NULL), 0);
  pthread_barrier_destroy(&b);
}

/* A PCA model that is not a fit: random mean, unit random components. */
static mn_pca_model *make_model(trng *r, int64_t cols, int64_t k) {
  mn_pca_model *m = NULL;
  assert_int_equal(mn_pca_alloc(cols, k, &m), MN_OK);
  for (int64_t c = 0; c < cols; c++)
    m->mean[c] = (float)(0.1 * trng_gauss(r));
  for (int64_t j = 0; j < k; j++) {
    double n = 0;
    for (int64_t c = 0; c < cols; c++) {
      double v = trng_gauss(r);
      m->components[j * cols + c] = (float)v;
      n += v * v;
    }
    for (int64_t c = 0; c < cols; c++)
      m->components[j * cols + c] /= (float)sqrt(n);
    m->explained_variance[j] = (float)(0.02 + 0.5 / (double)(j + 1));
  }
  m->n_samples = 1000;
  m->total_variance = 2.0;
  return m;
}

/* ----------------------------------------------------------------- tests */
#define T 6

/* One op chain: T jobs of different sizes merge into one run; each gets
 * exactly its own rows. */
static void merge_case(const mn_pipeline_opts *o, int64_t cols, trng *r) {
  reset_calls();
  mn__batcher *bt = make(5000000, 4096, T);
  job jobs[T];
  int64_t total = 0;
  for (int i = 0; i < T; i++) {
    int64_t rows = 1 + 7 * i; /* 1, 8, 15, ... */
    job_init(&jobs[i], bt, r, rows, cols, o, i % 2 ? 3 : 0);
    total += rows;
  }
  run_all(jobs, T);
  /* One run of every row. */
  pthread_mutex_lock(&rf.lock);
  int calls = rf.calls;
  int64_t rows0 = rf.rows[0], cols0 = rf.cols[0];
  pthread_mutex_unlock(&rf.lock);
  assert_int_equal(calls, 1);
  assert_int_equal(rows0, total);
  assert_int_equal(cols0, cols);
  int leaders = 0;
  for (int i = 0; i < T; i++) {
    assert_int_equal(jobs[i].info.jobs, T);
    assert_int_equal(jobs[i].info.rows, total);
    assert_int_equal(jobs[i].info.flags, 0);
    leaders += jobs[i].info.leader;
    check_alone(&jobs[i]);
    job_free(&jobs[i]);
  }
  assert_int_equal(leaders, 1);
  mn__batcher_stats st;
  mn__batcher_stats_get(bt, &st);
  assert_int_equal(st.batches, 1);
  assert_int_equal(st.jobs, T);
  assert_int_equal(st.rows, total);
  mn__batcher_destroy(bt);
}

static void test_merge_rowwise_chains(void **state) {
  (void)state;
  trng r = {11};
  static const struct {
    int normalize;
    mn_quant_kind q;
    mn_dtype prec;
  } chains[] = {
      {1, MN_QUANT_NONE, MN_DTYPE_F32},   {1, MN_QUANT_INT8, MN_DTYPE_F32},
      {0, MN_QUANT_INT8, MN_DTYPE_F32},   {1, MN_QUANT_INT4, MN_DTYPE_F32},
      {1, MN_QUANT_BINARY, MN_DTYPE_F32}, {1, MN_QUANT_FP16, MN_DTYPE_F32},
      {1, MN_QUANT_BF16, MN_DTYPE_F32},   {1, MN_QUANT_NONE, MN_DTYPE_F16},
      {0, MN_QUANT_NONE, MN_DTYPE_BF16},  {0, MN_QUANT_NONE, MN_DTYPE_F32},
  };
  static const int64_t widths[] = {768, 37};
  for (size_t w = 0; w < 2; w++) {
    for (size_t i = 0; i < sizeof chains / sizeof chains[0]; i++) {
      mn_pipeline_opts o;
      mn_pipeline_opts_init(&o);
      o.normalize = chains[i].normalize;
      o.quant = chains[i].q;
      o.precision = chains[i].prec;
      o.batch_size = 4; /* per-job option; the merged run ignores it */
      merge_case(&o, widths[w], &r);
    }
  }
}

/* A stored model (not fitted on the input), with and without whitening,
 * then int8: merged too. */
static void test_merge_pca_model(void **state) {
  (void)state;
  trng r = {12};
  mn_pca_model *m = make_model(&r, 96, 12);
  for (int whiten = 0; whiten < 2; whiten++) {
    mn_pipeline_opts o;
    mn_pipeline_opts_init(&o);
    o.normalize = 1;
    o.pca = m;
    o.reduce_dims = 12;
    o.whiten = whiten;
    o.quant = whiten ? MN_QUANT_INT8 : MN_QUANT_NONE;
    merge_case(&o, 96, &r);
  }
  mn_pca_free(m);
}

/* Jobs of two op chains and two widths at once: four groups, never mixed;
 * jobs that are not row-wise run alone. */
static void test_incompatible_not_merged(void **state) {
  (void)state;
  trng r = {13};
  reset_calls();
  /* max_jobs above what any group reaches: groups close when nothing is
   * pending (or, should that fail, at the window). */
  mn__batcher *bt = make(5000000, 4096, 64);
  job jobs[16];
  int n = 0;
  for (int i = 0; i < 12; i++) {
    mn_pipeline_opts o;
    mn_pipeline_opts_init(&o);
    o.normalize = 1;
    o.quant = (i & 1) ? MN_QUANT_INT8 : MN_QUANT_NONE;
    int64_t cols = (i & 2) ? 64 : 48;
    job_init(&jobs[n++], bt, &r, 2 + i, cols, &o, 0);
  }
  /* Not row-wise: PCA fitted on the input, int8_affine trained on it. */
  mn_pipeline_opts fit;
  mn_pipeline_opts_init(&fit);
  fit.reduce_dims = 3;
  job_init(&jobs[n++], bt, &r, 20, 64, &fit, 0);
  mn_pipeline_opts aff;
  mn_pipeline_opts_init(&aff);
  aff.normalize = 1;
  aff.quant = MN_QUANT_INT8_AFFINE;
  job_init(&jobs[n++], bt, &r, 20, 64, &aff, 0);
  assert_false(mn__batcher_eligible(bt, &jobs[n - 2].in, &fit));
  assert_false(mn__batcher_eligible(bt, &jobs[n - 1].in, &aff));
  /* Same model, but a job with more rows than max_rows / 4. */
  mn_pipeline_opts big;
  mn_pipeline_opts_init(&big);
  big.normalize = 1;
  job_init(&jobs[n++], bt, &r, 1025, 48, &big, 0);
  assert_false(mn__batcher_eligible(bt, &jobs[n - 1].in, &big));
  run_all(jobs, n);
  for (int i = 0; i < 12; i++) {
    /* Its group: the jobs with the same i & 3. */
    int64_t rows = 0;
    for (int k = i & 3; k < 12; k += 4)
      rows += 2 + k;
    assert_int_equal(jobs[i].info.jobs, 3);
    assert_int_equal(jobs[i].info.rows, rows);
  }
  for (int i = 0; i < n; i++) {
    if (i >= 12)
      assert_int_equal(jobs[i].info.jobs, 1);
    if (jobs[i].o.quant == MN_QUANT_INT8_AFFINE || jobs[i].o.reduce_dims) {
      /* Checked against its own run: fitted outputs are the job's own. */
      assert_int_equal(jobs[i].st, MN_OK);
      mn_pipeline_result ref;
      assert_int_equal(mn_pipeline_run(be, &jobs[i].in, &jobs[i].o, &ref),
                       MN_OK);
      assert_memory_equal(jobs[i].res.out.data, ref.out.data,
                          mn_tensor_bytes(&ref.out));
      mn_pipeline_result_free(&ref);
    } else {
      check_alone(&jobs[i]);
    }
    job_free(&jobs[i]);
  }
  pthread_mutex_lock(&rf.lock);
  int calls = rf.calls;
  for (int c = 0; c < calls; c++)
    assert_true(rf.rows[c] == 20 || rf.rows[c] == 1025 ||
                rf.rows[c] == 2 + 0 + 6 + 10 || rf.rows[c] == 3 + 7 + 11 ||
                rf.rows[c] == 4 + 8 + 12 || rf.rows[c] == 5 + 9 + 13);
  pthread_mutex_unlock(&rf.lock);
  assert_int_equal(calls, 4 + 3);
  mn__batcher_stats st;
  mn__batcher_stats_get(bt, &st);
  assert_int_equal(st.batches, 4);
  assert_int_equal(st.jobs, 12);
  mn__batcher_destroy(bt);
}

/* A job holding NaN does not join: it fails alone, naming its own row and
 * column, and the others merge. */
static void test_bad_job_does_not_join(void **state) {
  (void)state;
  trng r = {14};
  reset_calls();
  mn__batcher *bt = make(5000000, 4096, T);
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  o.quant = MN_QUANT_INT8;
  job jobs[T];
  for (int i = 0; i < T; i++)
    job_init(&jobs[i], bt, &r, 4 + i, 40, &o, 0);
  jobs[2].x[3 * 40 + 5] = NAN;
  run_all(jobs, T);
  assert_int_equal(jobs[2].st, MN_ERR_INVALID);
  assert_non_null(strstr(jobs[2].err, "row 3, column 5"));
  assert_int_equal(jobs[2].info.jobs, 1);
  for (int i = 0; i < T; i++) {
    if (i == 2)
      continue;
    assert_int_equal(jobs[i].info.jobs, T - 1);
    check_alone(&jobs[i]);
  }
  for (int i = 0; i < T; i++)
    job_free(&jobs[i]);
  mn__batcher_destroy(bt);
}

/* The merged run fails: each job runs again alone and succeeds; the flag
 * the failed run set does not reach them. */
static void test_failed_batch_reruns_alone(void **state) {
  (void)state;
  trng r = {15};
  reset_calls();
  mn__batcher *bt = make(5000000, 4096, T);
  pthread_mutex_lock(&rf.lock);
  rf.fail_over_rows = 10;
  pthread_mutex_unlock(&rf.lock);
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  job jobs[T];
  for (int i = 0; i < T; i++)
    job_init(&jobs[i], bt, &r, 5, 64, &o, 0);
  run_all(jobs, T);
  for (int i = 0; i < T; i++) {
    assert_int_equal(jobs[i].info.jobs, 1);
    assert_int_equal(jobs[i].info.flags, 0);
    check_alone(&jobs[i]);
    job_free(&jobs[i]);
  }
  pthread_mutex_lock(&rf.lock);
  assert_int_equal(rf.calls, 1 + T);
  assert_int_equal(rf.rows[0], 5 * T);
  pthread_mutex_unlock(&rf.lock);
  mn__batcher_stats st;
  mn__batcher_stats_get(bt, &st);
  assert_int_equal(st.batches, 0);
  mn__batcher_destroy(bt);
}

/* Alone in the batcher: no window is waited for, even a long one. */
static void test_lone_job_does_not_wait(void **state) {
  (void)state;
  trng r = {16};
  reset_calls();
  mn__batcher *bt = make(1000000, 4096, 8);
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  for (int i = 0; i < 5; i++) {
    job j;
    job_init(&j, bt, &r, 32, 768, &o, 0);
    job_main(&j);
    assert_int_equal(j.info.jobs, 1);
    assert_int_equal(j.info.waited, 0);
    check_alone(&j);
    job_free(&j);
  }
  mn__batcher_stats st;
  mn__batcher_stats_get(bt, &st);
  assert_int_equal(st.lone_waits, 0);
  assert_int_equal(st.alone, 5);
  mn__batcher_destroy(bt);
}

/* window 0: nothing is eligible, every job runs alone, even with company. */
static void test_window_zero_is_off(void **state) {
  (void)state;
  trng r = {17};
  reset_calls();
  mn__batcher *bt = make(0, 4096, T);
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  job jobs[T];
  for (int i = 0; i < T; i++)
    job_init(&jobs[i], bt, &r, 3, 64, &o, 0);
  assert_false(mn__batcher_eligible(bt, &jobs[0].in, &o));
  run_all(jobs, T);
  for (int i = 0; i < T; i++) {
    assert_int_equal(jobs[i].info.jobs, 1);
    assert_int_equal(jobs[i].info.waited, 0);
    check_alone(&jobs[i]);
    job_free(&jobs[i]);
  }
  pthread_mutex_lock(&rf.lock);
  assert_int_equal(rf.calls, T);
  pthread_mutex_unlock(&rf.lock);
  mn__batcher_stats st;
  mn__batcher_stats_get(bt, &st);
  assert_int_equal(st.batches, 0);
  mn__batcher_destroy(bt);
}

/* A group stops at max_rows: jobs that do not fit start another. */
static void test_max_rows(void **state) {
  (void)state;
  trng r = {18};
  reset_calls();
  /* Jobs of 16 rows (max_rows / 4), groups of at most 64 rows. */
  mn__batcher *bt = make(5000000, 64, 64);
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  job jobs[8];
  for (int i = 0; i < 8; i++)
    job_init(&jobs[i], bt, &r, 16, 32, &o, 0);
  run_all(jobs, 8);
  for (int i = 0; i < 8; i++) {
    assert_true(jobs[i].info.rows <= 64);
    check_alone(&jobs[i]);
    job_free(&jobs[i]);
  }
  pthread_mutex_lock(&rf.lock);
  for (int c = 0; c < rf.calls; c++)
    assert_true(rf.rows[c] <= 64);
  pthread_mutex_unlock(&rf.lock);
  mn__batcher_stats st;
  mn__batcher_stats_get(bt, &st);
  assert_true(st.batches >= 2);
  mn__batcher_destroy(bt);
}

/* Every worker inside the batcher (the blocker runs, max_jobs 2): a job
 * from another client, arriving just after the blocker's, has no one to
 * wait for. */
static void test_all_workers_inside_no_wait(void **state) {
  (void)state;
  trng r = {19};
  reset_calls();
  mn__batcher *bt = make(5000000, 4096, 2);
  pthread_t bt_thread;
  job blk;
  blocker_start(&bt_thread, &blk, bt, &r);
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  job a;
  job_init(&a, bt, &r, 9, 64, &o, 0);
  a.src = &a;
  job_main(&a);
  assert_int_equal(a.st, MN_OK);
  assert_int_equal(a.info.jobs, 1);
  assert_int_equal(a.info.waited, 0);
  check_alone(&a);
  job_free(&a);
  blocker_stop(bt_thread, &blk);
  mn__batcher_stats st;
  mn__batcher_stats_get(bt, &st);
  assert_int_equal(st.lone_waits, 0);
  mn__batcher_destroy(bt);
}

/* Nothing pending, but other clients are sending: after client A's job,
 * client B's leads and waits, and client C's, arriving later, joins it. */
static void *late_start(void *arg) {
  job *j = arg;
  struct timespec ts = {0, 20 * 1000 * 1000}; /* 20 ms */
  nanosleep(&ts, NULL);
  return job_main(j);
}

static void test_other_clients_sending_make_a_leader_wait(void **state) {
  (void)state;
  trng r = {20};
  reset_calls();
  mn__batcher *bt = make(500000, 4096, 2);
  mn_pipeline_opts o;
  mn_pipeline_opts_init(&o);
  o.normalize = 1;
  job j[3];
  for (int i = 0; i < 3; i++) {
    job_init(&j[i], bt, &r, 2 + i, 64, &o, 0);
    j[i].src = &j[i];
    j[i].no_arrive = 1; /* nothing pending: only the arrival rate counts */
  }
  job_main(&j[0]); /* the first job ever: nothing to wait for */
  assert_int_equal(j[0].info.jobs, 1);
  assert_int_equal(j[0].info.waited, 0);
  pthread_t tb, tc;
  assert_int_equal(pthread_create(&tb, NULL, job_main, &j[1]), 0);
  assert_int_equal(pthread_create(&tc, NULL, late_start, &j[2]), 0);
  assert_int_equal(pthread_join(tb, NULL), 0);
  assert_int_equal(pthread_join(tc, NULL), 0);
  for (int i = 1; i < 3; i++) {
    assert_int_equal(j[i].info.jobs, 2);
    assert_int_equal(j[i].info.rows, 3 + 4);
  }
  assert_true(j[1].info.leader && j[1].info.waited);
  for (int i = 0; i < 3; i++) {
    check_alone(&j[i]);
    job_free(&j[i]);
  }
  /* The same client again and again: never a wait (but for the first
   * time, when C sent last: that one waits out the 0.5 s window). */
  for (int i = 0; i < 3; i++) {
    job k;
    job_init(&k, bt, &r, 5, 64, &o, 0);
    k.src = bt;
    k.no_arrive = 1;
    job_main(&k);
    if (i > 0)
      assert_int_equal(k.info.waited, 0);
    job_free(&k);
  }
  mn__batcher_destroy(bt);
}

static int setup(void **state) {
  (void)state;
  mn_backend_opts o;
  mn_backend_opts_init(&o);
  o.pref = MN_BACKEND_CPU;
  o.threads = 2;
  return mn_backend_open(&o, &be) == MN_OK ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  mn_backend_close(be);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_merge_rowwise_chains),
      cmocka_unit_test(test_merge_pca_model),
      cmocka_unit_test(test_incompatible_not_merged),
      cmocka_unit_test(test_bad_job_does_not_join),
      cmocka_unit_test(test_failed_batch_reruns_alone),
      cmocka_unit_test(test_lone_job_does_not_wait),
      cmocka_unit_test(test_window_zero_is_off),
      cmocka_unit_test(test_max_rows),
      cmocka_unit_test(test_all_workers_inside_no_wait),
      cmocka_unit_test(test_other_clients_sending_make_a_leader_wait),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
