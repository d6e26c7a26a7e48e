/*
 * batcher.c - dynamic batching: small processEmbeddings jobs with the same
 * row-wise op chain and width, arriving close together on different
 * worker threads, run as one pipeline run and are split again.
 *
 * Which jobs merge. A job is row-wise when each output row depends on its
 * own input row only: normalize, a PCA transform with a model given by the
 * caller, and the quantizations whose parameters are per row (int8 and
 * int4 with one scale per row, fp16, bf16, binary). A PCA fitted on the
 * input and int8_affine trained on it depend on every row, so those jobs
 * always run alone. Two jobs are compatible when their widths and op
 * chains are the same: normalize flag, the same model arrays (pointer
 * equality: both jobs hold the model, so it cannot be freed and its
 * address reused while they wait) with the same number of components and
 * whitening, the same quantization and output precision. `batch_size`
 * does not matter for row-wise ops, and a merged run goes in one backend
 * call. Only jobs of at most max_rows / 4 rows merge, and a merged run
 * holds at most max_rows rows.
 *
 * Results. The CPU kernels compute each row the same way whatever its
 * position or alignment (cpu_elementwise.c), and so do the CUDA row
 * kernels (one warp per row), so normalize and the quantizations give
 * each job the bytes it would get alone. A PCA transform is a matrix
 * product whose blocking a BLAS may choose by the number of rows; its rows
 * are the same to rounding, not necessarily to the bit. zero_rows is
 * counted per job from its own input: a row is zero for normalize exactly
 * when all its elements are +-0, on every backend.
 *
 * DESIGN: leaders and followers on the callers' threads; no thread of its
 * own. When a job reaches the batcher it joins an open group of the same
 * key with room, if there is one. Otherwise it leads a new group only when
 * company is likely within the window:
 *   - a request is pending: the caller (the JSON-RPC engine) brackets every
 *     request it handles, whatever the method, with mn__batcher_arrive /
 *     _depart, and `pending` counts those that have neither reached
 *     mn__batcher_run nor departed (a per-thread flag says whether this
 *     thread's request still counts); or
 *   - the last job to arrive came from another source (connection) less
 *     than a window ago: other clients are sending.
 * and when not every worker is inside the batcher already (`inside` <
 * max_jobs: a free worker is needed to bring a partner). Else it runs at
 * once, alone. So a lone client, whose next request cannot come before
 * this reply, never waits for a window. The leader waits on `lead_cond`
 * until the group is full (max_rows rows or max_jobs jobs), every worker
 * is inside, the pending requests have all arrived (when only they made it
 * wait), or the window ends. It then
 * closes the group (no more joins), copies the members' rows end to end
 * and runs them; followers sleep on the group's `done_cond`. Each member
 * copies its own rows out of the merged result on its own thread, and the
 * last one frees the group. A job that fails the checks that would make it
 * fail in a batch (NaN / Inf) never joins one: it runs alone and gets its
 * own message. If a merged run fails anyway, every member runs again
 * alone. The batcher's lock guards the open list, every group's fields
 * until the group is done (after that its result is only read), and the
 * step in which a job that then joins or leads leaves `pending` and
 * enters `inside`, so a leader never counts a partner in neither or in
 * both. The
 * last arrival's time and source are read and written without the lock:
 * they only steer a guess.
 *
 * Deadlines and shutdown: a leader waits at most window_us (at most 1 s by
 * configuration), then the run takes what the job would take alone, so a
 * follower's wait is bounded by what its leader's run costs. The server's
 * watchdog may answer a waiting or running job with a timeout; the thread
 * still finishes its part of the batch and its result is dropped, so the
 * other members are not disturbed. Nothing waits on anything outside the
 * batch, so a draining server finishes batches like any other job.
 */
#include "compute/batcher.h"
#include "common/internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MOD "batcher"

typedef struct member {
  const mn_tensor *in;
  int64_t r0; /* first row in the merged input */
  struct member *next;
} member;

typedef struct group {
  struct group *next;           /* in the open list */
  const mn_pipeline_opts *opts; /* the leader's, valid while it runs */
  int64_t cols;
  member *head, *tail;
  int jobs;
  int64_t rows;
  int open; /* still taking members */
  int done; /* the merged run has finished: status, flags, res are set */
  int refs; /* members that have not copied their rows out yet */
  mn_status status;
  unsigned flags;
  mn_pipeline_result res;
  pthread_cond_t done_cond;
} group;

struct mn__batcher {
  mn__batcher_opts o;
  pthread_mutex_t lock;
  pthread_cond_t lead_cond; /* leaders: a member came, or a caller left */
  group *open;              /* groups taking members */
  int n_open;               /* length of `open` (read without the lock) */
  int pending;              /* requests arrived, not yet here nor departed */
  int inside;               /* callers inside mn__batcher_run (atomic) */
  uint64_t last_ns;         /* the last eligible job's arrival (atomic) */
  const void *last_src;     /* and its source (atomic) */
  mn__batcher_stats st;     /* atomics */
};

/* This thread's request has arrived and still counts in `pending`. */
static __thread mn__batcher *tls_pending;

mn_status mn__batcher_create(const mn__batcher_opts *o, mn__batcher **out) {
  if (!o || !o->run || !out)
    return mn__set_error(MN_ERR_INVALID,
                         "the batcher needs options with a run function");
  *out = NULL;
  mn__batcher *bt = calloc(1, sizeof *bt);
  if (!bt)
    return mn__set_error(MN_ERR_NOMEM, "out of memory creating the batcher");
  bt->o = *o;
  if (bt->o.window_us < 0)
    bt->o.window_us = 0;
  if (bt->o.max_rows < 1)
    bt->o.max_rows = 1;
  if (bt->o.max_jobs < 1)
    bt->o.max_jobs = 1;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  int rc = pthread_mutex_init(&bt->lock, NULL);
  if (rc == 0 && pthread_cond_init(&bt->lead_cond, &ca) != 0) {
    pthread_mutex_destroy(&bt->lock);
    rc = -1;
  }
  pthread_condattr_destroy(&ca);
  if (rc != 0) {
    free(bt);
    return mn__set_error(MN_ERR_INTERNAL,
                         "cannot initialise the batcher's lock");
  }
  *out = bt;
  return MN_OK;
}

void mn__batcher_destroy(mn__batcher *bt) {
  if (!bt)
    return;
  pthread_cond_destroy(&bt->lead_cond);
  pthread_mutex_destroy(&bt->lock);
  free(bt);
}

void mn__batcher_stats_get(mn__batcher *bt, mn__batcher_stats *out) {
  memset(out, 0, sizeof *out);
  if (!bt)
    return;
  out->batches = __atomic_load_n(&bt->st.batches, __ATOMIC_RELAXED);
  out->jobs = __atomic_load_n(&bt->st.jobs, __ATOMIC_RELAXED);
  out->rows = __atomic_load_n(&bt->st.rows, __ATOMIC_RELAXED);
  out->lone_waits = __atomic_load_n(&bt->st.lone_waits, __ATOMIC_RELAXED);
  out->alone = __atomic_load_n(&bt->st.alone, __ATOMIC_RELAXED);
}

static void stat_add(uint64_t *c, uint64_t v) {
  __atomic_add_fetch(c, v, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------------
 * Which jobs merge
 * ---------------------------------------------------------------------- */
int mn__batcher_eligible(const mn__batcher *bt, const mn_tensor *in,
                         const mn_pipeline_opts *o) {
  if (!bt || bt->o.window_us <= 0 || !in || !o || !in->data)
    return 0;
  if (in->dtype != MN_DTYPE_F32 || in->device != MN_DEVICE_HOST ||
      in->rows < 1 || in->cols < 1 ||
      (in->rows > 1 && in->stride < in->cols * (int64_t)sizeof(float)))
    return 0;
  if (in->rows > bt->o.max_rows / 4)
    return 0;
  /* Fitted or trained on the input: not row-wise. */
  if (o->reduce_dims > 0 && !o->pca)
    return 0;
  if (o->quant == MN_QUANT_INT8_AFFINE || o->affine)
    return 0;
  /* Anything the pipeline would refuse runs alone and says why. */
  if ((unsigned)o->quant > MN_QUANT_BINARY || o->batch_size < 0 ||
      o->reduce_dims < 0)
    return 0;
  if (o->quant == MN_QUANT_NONE && o->precision != MN_DTYPE_F32 &&
      o->precision != MN_DTYPE_F16 && o->precision != MN_DTYPE_BF16)
    return 0;
  if (o->pca) {
    const mn_pca_model *m = o->pca;
    if (!m->mean || !m->components || m->input_dim != in->cols ||
        m->n_components < 1 ||
        (o->reduce_dims > 0 && o->reduce_dims != m->n_components))
      return 0;
    if (o->whiten && !m->explained_variance)
      return 0;
  }
  return 1;
}

/* Same width and op chain (both jobs eligible). */
static int same_key(const mn_pipeline_opts *a, int64_t acols,
                    const mn_pipeline_opts *b, int64_t bcols) {
  if (acols != bcols || !a->normalize != !b->normalize || a->quant != b->quant)
    return 0;
  if (a->quant == MN_QUANT_NONE && a->precision != b->precision)
    return 0;
  if (!a->pca != !b->pca)
    return 0;
  if (a->pca) {
    const mn_pca_model *x = a->pca, *y = b->pca;
    if (x->mean != y->mean || x->components != y->components ||
        x->n_components != y->n_components || x->input_dim != y->input_dim ||
        !a->whiten != !b->whiten)
      return 0;
    if (a->whiten && x->explained_variance != y->explained_variance)
      return 0;
  }
  return 1;
}

/* ------------------------------------------------------------------------
 * Running
 * ---------------------------------------------------------------------- */
/* Waiting leaders re-check their conditions. */
static void poke(mn__batcher *bt) {
  if (__atomic_load_n(&bt->n_open, __ATOMIC_SEQ_CST) > 0) {
    pthread_mutex_lock(&bt->lock);
    pthread_cond_broadcast(&bt->lead_cond);
    pthread_mutex_unlock(&bt->lock);
  }
}

void mn__batcher_arrive(mn__batcher *bt) {
  if (!bt || tls_pending == bt)
    return;
  tls_pending = bt;
  __atomic_add_fetch(&bt->pending, 1, __ATOMIC_SEQ_CST);
}

/* This thread's request no longer counts as pending; the caller holds the
 * lock or pokes. Returns what is left pending. */
static int unpend(mn__batcher *bt) {
  if (tls_pending == bt) {
    tls_pending = NULL;
    return __atomic_sub_fetch(&bt->pending, 1, __ATOMIC_SEQ_CST);
  }
  return __atomic_load_n(&bt->pending, __ATOMIC_SEQ_CST);
}

void mn__batcher_depart(mn__batcher *bt) {
  if (!bt || tls_pending != bt)
    return;
  unpend(bt);
  poke(bt);
}

static mn_status run_alone(mn__batcher *bt, const mn_tensor *in,
                           const mn_pipeline_opts *o, mn_pipeline_result *res,
                           mn__batch_info *info, int waited) {
  unsigned flags = 0;
  mn_status s = bt->o.run(bt->o.ctx, in, o, res, &flags);
  stat_add(&bt->st.alone, 1);
  if (info) {
    info->jobs = 1;
    info->rows = in->rows;
    info->leader = 1;
    info->waited = waited;
    info->flags = flags;
  }
  return s;
}

/* Rows of a normalize input whose elements are all +-0. */
static int64_t zero_rows_of(const mn_tensor *in) {
  int64_t z = 0;
  for (int64_t r = 0; r < in->rows; r++) {
    const uint32_t *u = mn_tensor_row(in, r);
    int64_t c = 0;
    while (c < in->cols && (u[c] & 0x7fffffffu) == 0)
      c++;
    z += c == in->cols;
  }
  return z;
}

static void group_release(mn__batcher *bt, group *g) {
  pthread_mutex_lock(&bt->lock);
  int last = --g->refs == 0;
  pthread_mutex_unlock(&bt->lock);
  if (!last)
    return;
  mn_pipeline_result_free(&g->res);
  for (member *m = g->head, *n; m; m = n) {
    n = m->next;
    free(m);
  }
  pthread_cond_destroy(&g->done_cond);
  free(g);
}

/* This member's rows of the merged result, as a result of its own. */
static mn_status take_rows(const group *g, const member *m,
                           const mn_pipeline_opts *o, mn_pipeline_result *res) {
  const mn_pipeline_result *all = &g->res;
  int64_t n = m->in->rows;
  size_t rb = mn_dtype_row_bytes(all->out.dtype, all->out.cols);
  size_t bytes = rb * (size_t)n;
  void *data = mn__malloc_front(bytes, bytes >= 16384 ? MN__TENSOR_FRONT : 0);
  float *scales = NULL;
  if (all->scales)
    scales = mn_malloc(sizeof(float) * (size_t)n);
  if (!data || (all->scales && !scales)) {
    mn_free(data);
    mn_free(scales);
    return mn__set_error(MN_ERR_NOMEM,
                         "out of memory splitting a batch of %lld rows",
                         (long long)g->rows);
  }
  const mn_tensor *src = &all->out;
  if (src->stride == (int64_t)rb) {
    memcpy(data, mn_tensor_row(src, m->r0), rb * (size_t)n);
  } else {
    for (int64_t r = 0; r < n; r++)
      memcpy((char *)data + (size_t)r * rb, mn_tensor_row(src, m->r0 + r), rb);
  }
  if (scales)
    memcpy(scales, all->scales + m->r0, sizeof(float) * (size_t)n);
  memset(res, 0, sizeof *res);
  res->out = mn_tensor_host(data, src->dtype, n, src->cols);
  res->scales = scales;
  res->processing_ms = all->processing_ms;
  res->zero_rows = o->normalize ? zero_rows_of(m->in) : 0;
  res->quant = all->quant;
  memcpy(res->device, all->device, sizeof res->device);
  return MN_OK;
}

/* The leader's part once the group is closed: put the rows end to end,
 * run them, publish the outcome. */
static void run_group(mn__batcher *bt, group *g) {
  mn_status s = MN_OK;
  unsigned flags = 0;
  size_t rowb = (size_t)g->cols * sizeof(float);
  float *x = mn_malloc(rowb * (size_t)g->rows);
  if (!x) {
    s = MN_ERR_NOMEM;
  } else {
    for (member *m = g->head; m; m = m->next) {
      char *dst = (char *)x + (size_t)m->r0 * rowb;
      const mn_tensor *in = m->in;
      if (in->stride == (int64_t)rowb || in->rows == 1) {
        memcpy(dst, in->data, rowb * (size_t)in->rows);
      } else {
        for (int64_t r = 0; r < in->rows; r++)
          memcpy(dst + (size_t)r * rowb, mn_tensor_row(in, r), rowb);
      }
    }
    mn_tensor t = mn_tensor_host(x, MN_DTYPE_F32, g->rows, g->cols);
    mn_pipeline_opts mo = *g->opts;
    mo.batch_size = 0; /* one backend call */
    s = bt->o.run(bt->o.ctx, &t, &mo, &g->res, &flags);
    mn_free(x);
  }
  if (s != MN_OK)
    MN__LOGD(MOD,
             "a batch of %d jobs (%lld rows) failed (%s); each runs "
             "again alone",
             g->jobs, (long long)g->rows, mn_status_name(s));
  else {
    stat_add(&bt->st.batches, 1);
    stat_add(&bt->st.jobs, (uint64_t)g->jobs);
    stat_add(&bt->st.rows, (uint64_t)g->rows);
  }
  pthread_mutex_lock(&bt->lock);
  g->status = s;
  g->flags = flags;
  g->done = 1;
  pthread_cond_broadcast(&g->done_cond);
  pthread_mutex_unlock(&bt->lock);
}

static void deadline_after(struct timespec *ts, int64_t us) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += us / 1000000;
  ts->tv_nsec += (us % 1000000) * 1000;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

static void unlink_open(mn__batcher *bt, group *g) {
  for (group **pp = &bt->open; *pp; pp = &(*pp)->next) {
    if (*pp == g) {
      *pp = g->next;
      break;
    }
  }
  g->next = NULL;
  g->open = 0;
  __atomic_sub_fetch(&bt->n_open, 1, __ATOMIC_SEQ_CST);
}

/* Another source sent a job less than a window ago. */
static int others_sending(mn__batcher *bt, const void *src, uint64_t now) {
  const void *ls = __atomic_load_n(&bt->last_src, __ATOMIC_RELAXED);
  uint64_t lt = __atomic_load_n(&bt->last_ns, __ATOMIC_RELAXED);
  return src && ls && ls != src && now - lt <= (uint64_t)bt->o.window_us * 1000;
}

static mn_status run_job(mn__batcher *bt, const mn_tensor *in,
                         const mn_pipeline_opts *o, const void *src,
                         mn_pipeline_result *res, mn__batch_info *info);

mn_status mn__batcher_run(mn__batcher *bt, const mn_tensor *in,
                          const mn_pipeline_opts *o, const void *source,
                          mn_pipeline_result *res, mn__batch_info *info) {
  if (!bt)
    return mn__set_error(MN_ERR_INVALID, "batcher is NULL");
  mn_status s = run_job(bt, in, o, source, res, info);
  __atomic_sub_fetch(&bt->inside, 1, __ATOMIC_SEQ_CST);
  return s;
}

/* A job that will not join: count it inside, let waiting leaders know,
 * run it. */
static mn_status go_alone(mn__batcher *bt, const mn_tensor *in,
                          const mn_pipeline_opts *o, mn_pipeline_result *res,
                          mn__batch_info *info) {
  __atomic_add_fetch(&bt->inside, 1, __ATOMIC_SEQ_CST);
  unpend(bt);
  poke(bt);
  return run_alone(bt, in, o, res, info, 0);
}

static mn_status run_job(mn__batcher *bt, const mn_tensor *in,
                         const mn_pipeline_opts *o, const void *src,
                         mn_pipeline_result *res, mn__batch_info *info) {
  if (!mn__batcher_eligible(bt, in, o))
    return go_alone(bt, in, o, res, info);
  uint64_t now = mn_time_ns();
  int by_pending =
      __atomic_load_n(&bt->pending, __ATOMIC_SEQ_CST) - (tls_pending == bt) > 0;
  int by_rate = others_sending(bt, src, now);
  if (src) {
    __atomic_store_n(&bt->last_ns, now, __ATOMIC_RELAXED);
    __atomic_store_n(&bt->last_src, src, __ATOMIC_RELAXED);
  }
  int likely = (by_pending || by_rate) &&
               __atomic_load_n(&bt->inside, __ATOMIC_SEQ_CST) < bt->o.max_jobs;
  /* No group to join and nobody likely to come: run now. And a job that
   * would fail in a batch does not join one. */
  if ((!__atomic_load_n(&bt->n_open, __ATOMIC_SEQ_CST) && !likely) ||
      mn_tensor_check_finite(in) != MN_OK)
    return go_alone(bt, in, o, res, info);
  member *me = calloc(1, sizeof *me);
  if (!me)
    return go_alone(bt, in, o, res, info);
  me->in = in;
  group *g = NULL;
  int leader = 0, waited = 0;

  /* Counted inside and no longer pending in one step under the lock: a
   * leader never sees a partner in neither. */
  pthread_mutex_lock(&bt->lock);
  __atomic_add_fetch(&bt->inside, 1, __ATOMIC_SEQ_CST);
  unpend(bt);
  pthread_cond_broadcast(&bt->lead_cond);
  for (group *c = bt->open; c; c = c->next) {
    if (c->jobs < bt->o.max_jobs && c->rows + in->rows <= bt->o.max_rows &&
        same_key(c->opts, c->cols, o, in->cols)) {
      g = c;
      break;
    }
  }
  if (g) {
    /* Follow. */
    me->r0 = g->rows;
    g->tail->next = me;
    g->tail = me;
    g->jobs++;
    g->rows += in->rows;
    g->refs++;
    while (!g->done)
      pthread_cond_wait(&g->done_cond, &bt->lock);
    pthread_mutex_unlock(&bt->lock);
  } else {
    /* Lead, when someone is likely to come. */
    if (likely) {
      g = calloc(1, sizeof *g);
      if (g && pthread_cond_init(&g->done_cond, NULL) != 0) {
        free(g);
        g = NULL;
      }
    }
    if (!g) {
      pthread_mutex_unlock(&bt->lock);
      free(me);
      return run_alone(bt, in, o, res, info, 0);
    }
    leader = 1;
    g->opts = o;
    g->cols = in->cols;
    g->head = g->tail = me;
    g->jobs = 1;
    g->rows = in->rows;
    g->refs = 1;
    g->open = 1;
    g->next = bt->open;
    bt->open = g;
    __atomic_add_fetch(&bt->n_open, 1, __ATOMIC_SEQ_CST);
    struct timespec until;
    deadline_after(&until, bt->o.window_us);
    for (;;) {
      if (g->jobs >= bt->o.max_jobs || g->rows >= bt->o.max_rows)
        break; /* full */
      if (__atomic_load_n(&bt->inside, __ATOMIC_SEQ_CST) >= bt->o.max_jobs)
        break; /* every worker is here: nobody free to bring a partner */
      if (!by_rate && __atomic_load_n(&bt->pending, __ATOMIC_SEQ_CST) <= 0)
        break; /* it was only the pending requests, and they are here */
      waited = 1;
      if (pthread_cond_timedwait(&bt->lead_cond, &bt->lock, &until) ==
          ETIMEDOUT)
        break;
    }
    unlink_open(bt, g);
    pthread_mutex_unlock(&bt->lock);
    if (g->jobs == 1) {
      /* Nobody came. */
      if (waited)
        stat_add(&bt->st.lone_waits, 1);
      pthread_cond_destroy(&g->done_cond);
      free(g);
      free(me);
      return run_alone(bt, in, o, res, info, waited);
    }
    run_group(bt, g);
  }

  /* Every member, the leader included: its own rows. */
  mn_status s = g->status;
  if (s == MN_OK)
    s = take_rows(g, me, o, res);
  if (s == MN_OK && info) {
    info->jobs = g->jobs;
    info->rows = g->rows;
    info->leader = leader;
    info->waited = waited;
    info->flags = g->flags;
  }
  int failed = g->status != MN_OK;
  group_release(bt, g);
  if (failed) {
    /* The merged run failed: this job's own run says whether it fails
     * too, and why, on this thread. */
    s = run_alone(bt, in, o, res, info, waited);
  }
  return s;
}
