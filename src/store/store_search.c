/*
 * store_search.c - exact search over a collection: similarity on the
 * backend where each chunk lives, filters, ranking, top-k, and the
 * records of the results.
 *
 * Two paths. The fast path (no chat / time / metadata filter, no decay,
 * significance weight 0) asks the backend's fused search for each chunk's
 * best k + (dead rows of that chunk) rows, so that at least k live rows
 * survive, and merges them. The general path computes each chunk's
 * similarity matrix into a scratch buffer, applies the filters and the
 * score (similarity * significance^w * decay) row by row and keeps the
 * best k per query in a bounded heap. A metadata filter is evaluated last,
 * on candidates in score order, reading each candidate's record until k
 * match (metadata lives in LMDB, not in memory).
 *
 * DESIGN: the collection's read lock is held for the whole scan, so the
 * rows of every chunk are stable; chunks are scanned in parallel (OpenMP,
 * one heap per thread and query, merged at the end); each chunk is pinned
 * while read. Ties order by insertion (older first). Host and disk chunks
 * are scored one at a time on the store's CPU backend; device (L1) chunks
 * are gathered per thread into groups scored in one backend call each
 * (mn_backend_search_many / similarity_many: one synchronisation per
 * group instead of per chunk) and merged exactly as a single chunk is.
 *
 * Device out of memory (the queries' or a group's score buffers, or a
 * group's similarity / search on the device) is not an error: from then
 * on the search runs on the CPU backend, the same code that scans host
 * and disk chunks. A device-resident chunk is then read back from LMDB
 * as a disk chunk is (nothing more is asked of the device; a group that
 * failed goes there whole), and what was already merged from device
 * chunks stays: a failed backend call leaves the heaps as they were, and
 * both backends score alike (within float rounding). Chunks are not promoted
 * for the rest of that search, the result says it fell back
 * (mn_search_result_cpu_fallback), and L1 makes room (store_chunk.c,
 * mn__st_l1_oom).
 */
#include "store/store_internal.h"

#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct st_cand {
  double score;
  double decay;
  double ts;
  uint64_t seq;
  float sim;
  float sig;
  uint32_t chat;
} st_cand;

/* a is worse than b: lower score, or equal score and inserted later. */
static int worse(const st_cand *a, const st_cand *b) {
  return a->score < b->score || (a->score == b->score && a->seq > b->seq);
}

static int cmp_best_first(const void *pa, const void *pb) {
  const st_cand *a = pa, *b = pb;
  if (worse(a, b))
    return 1;
  if (worse(b, a))
    return -1;
  return 0;
}

/* A bounded heap of the `cap` best candidates (root = worst). */
typedef struct st_heap {
  st_cand *v;
  int64_t n, cap;
} st_heap;

static int heap_push(st_heap *h, const st_cand *c) {
  if (h->n < h->cap) {
    int64_t i = h->n++;
    h->v[i] = *c;
    while (i > 0) {
      int64_t p = (i - 1) / 2;
      if (!worse(&h->v[i], &h->v[p]))
        break;
      st_cand t = h->v[i];
      h->v[i] = h->v[p];
      h->v[p] = t;
      i = p;
    }
    return 0;
  }
  if (!worse(&h->v[0], c))
    return 0;
  h->v[0] = *c;
  int64_t i = 0;
  for (;;) {
    int64_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < h->n && worse(&h->v[l], &h->v[m]))
      m = l;
    if (r < h->n && worse(&h->v[r], &h->v[m]))
      m = r;
    if (m == i)
      break;
    st_cand t = h->v[i];
    h->v[i] = h->v[m];
    h->v[m] = t;
    i = m;
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * Results.
 * ---------------------------------------------------------------------- */
struct mn_search_result {
  int64_t nq;
  int64_t width;
  int64_t *counts;
  mn_search_hit **hits;
  uint64_t **seqs;    /* the hits' row sequence numbers (for reinforcement) */
  char *cpu_fallback; /* the device's message, or NULL */
  st_arena arena;
};

int64_t mn_search_result_queries(const mn_search_result *r) {
  return r ? r->nq : 0;
}

const mn_search_hit *mn_search_result_hits(const mn_search_result *r, int64_t q,
                                           int64_t *n) {
  if (!r || q < 0 || q >= r->nq) {
    if (n)
      *n = 0;
    return NULL;
  }
  if (n)
    *n = r->counts[q];
  return r->hits[q];
}

int64_t mn_search_result_width(const mn_search_result *r) {
  return r ? r->width : 0;
}

const char *mn_search_result_cpu_fallback(const mn_search_result *r) {
  return r ? r->cpu_fallback : NULL;
}

void mn_search_result_free(mn_search_result *r) {
  if (!r)
    return;
  free(r->cpu_fallback);
  free(r->counts);
  free(r->hits);
  free(r->seqs);
  mn__st_arena_free(&r->arena);
  free(r);
}

void mn_search_params_init(mn_search_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->k = 10;
  p->include = MN_INCLUDE_DEFAULT;
}

/* ------------------------------------------------------------------------
 * Metadata filter.
 * ---------------------------------------------------------------------- */
static mn_status parse_filter(const char *text, json_t **out) {
  *out = NULL;
  if (!text)
    return MN_OK;
  json_error_t err;
  json_t *j = json_loads(text, 0, &err);
  if (!j && strstr(err.text, "NUL")) /* valid JSON, but a C-string trap */
    return mn__set_error(MN_ERR_INVALID,
                         "metadata filter must not contain the NUL character "
                         "(\\u0000) in its keys or values");
  if (!j)
    return mn__set_error(MN_ERR_INVALID,
                         "metadata filter is not valid JSON: %s", err.text);
  if (!json_is_object(j)) {
    json_decref(j);
    return mn__set_error(MN_ERR_INVALID,
                         "metadata filter must be a JSON object of key -> "
                         "value");
  }
  const char *key;
  json_t *v;
  json_object_foreach(j, key, v) {
    if (json_is_object(v) || json_is_array(v)) {
      mn_status st = mn__set_error(
          MN_ERR_INVALID,
          "metadata filter value for key '%s' is an %s: only strings, "
          "numbers, booleans and null can be matched",
          key, json_is_object(v) ? "object" : "array");
      json_decref(j);
      return st;
    }
  }
  *out = j;
  return MN_OK;
}

static int value_equal(json_t *a, json_t *b) {
  if (json_is_number(a) && json_is_number(b))
    return json_number_value(a) == json_number_value(b);
  return json_equal(a, b);
}

static int meta_match(json_t *filter, const char *meta, size_t len) {
  json_t *m = json_loadb(meta, len, 0, NULL);
  if (!m)
    return 0;
  int ok = 1;
  const char *key;
  json_t *want;
  json_object_foreach(filter, key, want) {
    json_t *have = json_object_get(m, key);
    if (!have || !value_equal(have, want)) {
      ok = 0;
      break;
    }
  }
  json_decref(m);
  return ok;
}

/* ------------------------------------------------------------------------
 * The scan.
 * ---------------------------------------------------------------------- */
typedef struct st_ctx {
  mn_store *s;
  st_coll *c;
  const mn_search_params *p;
  int64_t nq, k;
  const float *q_host; /* nq x width */
  void *q_dev;         /* on the device when L1 is in use */
  int fast;
  int use_chat;
  uint32_t chat;
  double now;
  uint64_t tick;
  int64_t cap;       /* candidates kept per query: k, or more when a
                        metadata filter is applied afterwards */
  json_t *filter;    /* metadata filter */
  int meta_inline;   /* evaluate the metadata filter during the scan */
  int empty;         /* nothing can match (unknown chat) */
  atomic_int oom;    /* the device ran out of memory: on the CPU from now */
  char oom_msg[512]; /* the device's message (written once, by whoever
                        set oom; read after the scan) */
  int group_max;     /* device chunks per backend call (1 without L1) */
} st_ctx;

/* Device-resident chunks are not scored one backend call each (a launch, a
 * copy and a stream sync, ~20 us on a GPU: 244 of them for 1M rows): a
 * thread keeps the ones it acquires pinned in a group and scores the group
 * in one call (mn_backend_search_many / similarity_many), up to
 * ST_GROUP_CHUNKS chunks and ST_GROUP_SCORES scores, or when it runs out
 * of chunks. */
#define ST_GROUP_CHUNKS 64
#define ST_GROUP_SCORES ((int64_t)1 << 22)

/* A pinned device chunk waiting for its group's call. */
typedef struct st_pend {
  st_chunk *ch;
  void *scratch;
  const void *host, *dev;
  int32_t n, live;
} st_pend;

typedef struct st_tstate {
  st_heap *heaps; /* nq */
  int64_t *seen;  /* nq: candidates that passed the row filters */
  uint8_t *mask;  /* group_max x cap rows: passes the row filters (one slot
                     per pending chunk, the next slot for the chunk at hand) */
  float *sims;    /* nq x cap (host) */
  float *fscores; /* nq x cap */
  int64_t *fids;  /* nq x cap */
  /* the pending group */
  st_pend *pend; /* group_max */
  int npend;
  int64_t pend_scores;  /* scores its call will produce */
  mn_search_block *blk; /* group_max */
  mn_vecblock *vbs;     /* group_max */
  float *gscores;       /* fast: nq x the blocks' k; general: nq x rows */
  int64_t *gids;        /* fast */
  int64_t gcap;         /* entries gscores (and gids) hold */
  void *gdsims;         /* general: nq x rows on the device */
  int64_t gdcap;
} st_tstate;

/* The device ran out of memory (mn_errmsg() says how): the rest of the
 * search runs on the CPU. The first thread to see it keeps the message and
 * has L1 make room. */
static void device_oom(st_ctx *x) {
  if (atomic_exchange(&x->oom, 1))
    return;
  snprintf(x->oom_msg, sizeof x->oom_msg, "%s", mn_errmsg());
  mn__st_l1_oom(x->s);
}

static double to_similarity(mn_metric m, float v) {
  if (m == MN_METRIC_L2)
    return 1.0 / (1.0 + (v > 0 ? (double)v : 0.0));
  return (double)v;
}

/* Which rows of a chunk pass the filters that do not depend on the query
 * (live, chat, time range, and the metadata filter when evaluated inline).
 * Returns how many do. */
static int64_t row_mask(st_ctx *x, uint8_t *mask, st_chunk *ch, int32_t n,
                        mn_status *st) {
  const mn_search_params *p = x->p;
  int64_t pass = 0;
  for (int32_t r = 0; r < n; r++) {
    int ok = st_row_live(ch, r) && (!x->use_chat || ch->chat[r] == x->chat);
    if (ok && ((p->has_since && ch->ts[r] < p->since) ||
               (p->has_until && ch->ts[r] > p->until)))
      ok = 0;
    mask[r] = (uint8_t)ok;
    pass += ok;
  }
  if (!x->meta_inline || pass == 0)
    return pass;
  /* The metadata lives in the memory records: read them for the rows that
   * are left, in one read transaction for the chunk. */
  MDB_txn *txn;
  if ((*st = mn__st_read_begin(x->s, &txn)) != MN_OK)
    return 0;
  pass = 0;
  for (int32_t r = 0; r < n && *st == MN_OK; r++) {
    if (!mask[r])
      continue;
    uint8_t key[12];
    mn__st_key_seq(key, x->c->cid, ch->seq[r]);
    MDB_val k = {12, key}, v;
    const char *id, *content, *meta;
    uint32_t il, cl, ml;
    int rc = mdb_get(txn, x->s->dbi[ST_DBI_REC], &k, &v);
    if (rc == 0 &&
        mn__st_rec_parse(&v, &id, &il, &content, &cl, &meta, &ml) == 0 &&
        meta_match(x->filter, meta, ml)) {
      pass++;
    } else {
      mask[r] = 0;
      if (rc && rc != MDB_NOTFOUND)
        *st = mn__st_lmdb(rc, "read a record");
    }
  }
  mn__st_read_end(x->s, txn);
  return pass;
}

/* The stored rows of a pinned chunk's first n rows, on the device
 * (`codes` is the chunk's device buffer) or on the host, with their scales
 * (int8) and norms from the same place: the device buffer holds copies of
 * both for every row below `n` (store_chunk.c, upload_rows), so that the
 * backend need not recompute the norms cosine and L2 take. Binary rows
 * have no norms to give (their similarity is a Hamming count). */
static void chunk_vecblock(const st_ctx *x, const st_chunk *ch, int32_t n,
                           const void *codes, int on_dev, mn_vecblock *db) {
  const st_coll *c = x->c;
  memset(db, 0, sizeof *db);
  db->codes.data = (void *)codes;
  db->codes.dtype = c->dtype;
  db->codes.rows = n;
  db->codes.cols = c->width;
  db->codes.stride = c->row_bytes;
  db->codes.device = on_dev ? MN_DEVICE_GPU : MN_DEVICE_HOST;
  const char *dev = codes;
  if (c->dtype == MN_DTYPE_I8)
    db->scales =
        on_dev ? (const float *)(dev + mn__st_dev_scale_off(ch)) : ch->scale;
  if (c->dtype != MN_DTYPE_BIN)
    db->norms =
        on_dev ? (const float *)(dev + mn__st_dev_norm_off(ch)) : ch->norm;
}

/* The queries as the backend of `on_dev` takes them. */
static mn_tensor query_tensor(const st_ctx *x, int on_dev) {
  mn_tensor q;
  if (on_dev) {
    q = mn_tensor_host(x->q_dev, MN_DTYPE_F32, x->nq, x->c->width);
    q.device = MN_DEVICE_GPU;
  } else {
    q = mn_tensor_host((void *)x->q_host, MN_DTYPE_F32, x->nq, x->c->width);
  }
  return q;
}

/* Best rows asked of a chunk's fused search: k + its dead rows, so that at
 * least k live ones come back. */
static int64_t fast_k(const st_ctx *x, int32_t n, int32_t live) {
  return MN__MIN((int64_t)n, x->k + (n - live));
}

/* Merge a chunk's fused-search lists (nq x kc, best first) into the heaps. */
static void merge_fast(st_ctx *x, st_tstate *t, st_chunk *ch, int32_t n,
                       int64_t kc, const float *scores, const int64_t *ids) {
  const mn_search_params *p = x->p;
  const mn_metric metric = x->c->metric;
  const int has_min = p->has_min_similarity;
  const double minsim = p->min_similarity;
  for (int64_t qi = 0; qi < x->nq; qi++) {
    for (int64_t j = 0; j < kc; j++) {
      int64_t id = ids[qi * kc + j];
      if (id < 0 || id >= n)
        break;
      int32_t r = (int32_t)id;
      if (!st_row_live(ch, r))
        continue;
      double sim = to_similarity(metric, scores[qi * kc + j]);
      if (has_min && sim < minsim)
        continue;
      st_cand cd = {sim,        1.0,        ch->ts[r],  ch->seq[r],
                    (float)sim, ch->sig[r], ch->chat[r]};
      heap_push(&t->heaps[qi], &cd);
    }
  }
}

/* Merge a chunk's similarities (query qi, row r at sims[qi * ld + r]) of
 * the rows that pass `mask` into the heaps, scored with significance and
 * decay. */
static void merge_general(st_ctx *x, st_tstate *t, st_chunk *ch, int32_t n,
                          const uint8_t *mask, const float *sims, int64_t ld) {
  const mn_search_params *p = x->p;
  const mn_metric metric = x->c->metric;
  const int has_min = p->has_min_similarity;
  const double minsim = p->min_similarity;
  const double rate = p->time_decay, w = p->significance_weight;
  for (int32_t r = 0; r < n; r++) {
    if (!mask[r])
      continue;
    double ts = ch->ts[r];
    double decay = rate > 0 ? exp(-rate * fmax(0.0, x->now - ts)) : 1.0;
    double sigf = w > 0 ? pow((double)ch->sig[r], w) : 1.0;
    for (int64_t qi = 0; qi < x->nq; qi++) {
      double sim = to_similarity(metric, sims[qi * ld + r]);
      if (has_min && sim < minsim)
        continue;
      t->seen[qi]++;
      st_cand cd = {sim * sigf * decay, decay,      ts,         ch->seq[r],
                    (float)sim,         ch->sig[r], ch->chat[r]};
      heap_push(&t->heaps[qi], &cd);
    }
  }
}

/* Score a pinned chunk's first n rows, held on the host, on the store's CPU
 * backend into the thread's heaps (`mask`: the row filters, general path).
 * A failing backend call leaves the heaps as they were. */
static mn_status scan_host(st_ctx *x, st_tstate *t, st_chunk *ch, int32_t n,
                           int32_t live, const void *codes,
                           const uint8_t *mask) {
  mn_store *s = x->s;
  st_coll *c = x->c;
  mn_vecblock db;
  chunk_vecblock(x, ch, n, codes, 0, &db);
  mn_tensor q = query_tensor(x, 0);
  mn_status st;
  if (x->fast) {
    int64_t kc = fast_k(x, n, live);
    st = mn_backend_search(s->cpu, &q, &db, c->metric, kc, 0, t->fscores,
                           t->fids);
    if (st == MN_OK)
      merge_fast(x, t, ch, n, kc, t->fscores, t->fids);
  } else {
    mn_tensor out = mn_tensor_host(t->sims, MN_DTYPE_F32, x->nq, n);
    st = mn_backend_similarity(s->cpu, &q, &db, c->metric, &out);
    if (st == MN_OK)
      merge_general(x, t, ch, n, mask, t->sims, n);
  }
  return st;
}

/* scan_host for a chunk whose vectors may be on the device only: those are
 * read back from LMDB, as for a chunk on disk. */
static mn_status scan_host_any(st_ctx *x, st_tstate *t, st_chunk *ch, int32_t n,
                               int32_t live, const void *host,
                               const uint8_t *mask) {
  void *copy = NULL;
  mn_status st = MN_OK;
  if (!host) {
    copy = mn_malloc((size_t)n * (size_t)x->c->row_bytes);
    st = copy ? mn__st_chunk_load_rows(x->s, ch, n, copy)
              : mn__set_error(MN_ERR_NOMEM, "out of memory reading a chunk");
    host = copy;
  }
  if (st == MN_OK)
    st = scan_host(x, t, ch, n, live, host, mask);
  mn_free(copy);
  return st;
}

/* Room for `n` entries in the group's host result arrays. */
static mn_status group_room(st_ctx *x, st_tstate *t, int64_t n) {
  if (n <= t->gcap)
    return MN_OK;
  free(t->gscores);
  free(t->gids);
  t->gids = NULL;
  t->gcap = 0;
  t->gscores = malloc(sizeof(float) * (size_t)n);
  if (x->fast)
    t->gids = malloc(sizeof(int64_t) * (size_t)n);
  if (!t->gscores || (x->fast && !t->gids))
    return mn__set_error(MN_ERR_NOMEM,
                         "out of memory for %lld scores of a chunk group",
                         (long long)n);
  t->gcap = n;
  return MN_OK;
}

/* The pending group on the device in one backend call, merged into the
 * heaps when (and only when) the call succeeds. */
static mn_status group_device(st_ctx *x, st_tstate *t) {
  mn_store *s = x->s;
  st_coll *c = x->c;
  const int np = t->npend;
  mn_tensor q = query_tensor(x, 1);
  MN__TRY(group_room(x, t, t->pend_scores));
  int64_t off = 0;
  for (int i = 0; i < np; i++) {
    const st_pend *pd = &t->pend[i];
    chunk_vecblock(x, pd->ch, pd->n, pd->dev, 1, &t->vbs[i]);
    if (x->fast) {
      mn_search_block *b = &t->blk[i];
      b->db = t->vbs[i];
      b->k = fast_k(x, pd->n, pd->live);
      b->scores = t->gscores + off;
      b->ids = t->gids + off;
      off += x->nq * b->k;
    }
  }
  if (x->fast) {
    MN__TRY(mn_backend_search_many(s->backend, &q, t->blk, np, c->metric));
    for (int i = 0; i < np; i++)
      merge_fast(x, t, t->pend[i].ch, t->pend[i].n, t->blk[i].k,
                 t->blk[i].scores, t->blk[i].ids);
    return MN_OK;
  }
  /* general: the group's similarities side by side, one download */
  int64_t rows = 0;
  for (int i = 0; i < np; i++)
    rows += t->pend[i].n;
  const int64_t n = x->nq * rows;
  if (n > t->gdcap) {
    if (t->gdsims)
      mn_backend_free(s->backend, t->gdsims);
    t->gdsims = NULL;
    t->gdcap = 0;
    MN__TRY(
        mn_backend_alloc(s->backend, sizeof(float) * (size_t)n, &t->gdsims));
    t->gdcap = n;
  }
  mn_tensor out = mn_tensor_host(t->gdsims, MN_DTYPE_F32, x->nq, rows);
  out.device = MN_DEVICE_GPU;
  MN__TRY(
      mn_backend_similarity_many(s->backend, &q, t->vbs, np, c->metric, &out));
  MN__TRY(mn_backend_download(s->backend, t->gscores, t->gdsims,
                              sizeof(float) * (size_t)n));
  const size_t cap = (size_t)s->opts.chunk_rows;
  int64_t col = 0;
  for (int i = 0; i < np; i++) {
    const st_pend *pd = &t->pend[i];
    merge_general(x, t, pd->ch, pd->n, t->mask + (size_t)i * cap,
                  t->gscores + col, rows);
    col += pd->n;
  }
  return MN_OK;
}

/* Score the pending group and unpin its chunks. Device out of memory (in
 * the call or its buffers) sends the whole group to the CPU; after an
 * earlier error (`st`) the chunks are only released. */
static mn_status group_flush(st_ctx *x, st_tstate *t, mn_status st) {
  const int np = t->npend;
  if (np == 0)
    return st;
  int done = 0;
  if (st == MN_OK && !atomic_load(&x->oom)) {
    st = group_device(x, t);
    if (st == MN_ERR_DEVICE_OOM) {
      device_oom(x);
      st = MN_OK;
    } else {
      done = 1;
    }
  }
  const size_t cap = (size_t)x->s->opts.chunk_rows;
  for (int i = 0; i < np && st == MN_OK && !done; i++) {
    const st_pend *pd = &t->pend[i];
    st = scan_host_any(x, t, pd->ch, pd->n, pd->live, pd->host,
                       t->mask + (size_t)i * cap);
  }
  for (int i = 0; i < np; i++)
    mn__st_chunk_release(x->s, t->pend[i].ch, t->pend[i].scratch);
  t->npend = 0;
  t->pend_scores = 0;
  return st;
}

static mn_status scan_chunk(st_ctx *x, st_tstate *t, st_chunk *ch) {
  mn_store *s = x->s;
  /* `live` before `n`: a racing append can only make dead rows look more
   * numerous (store_internal.h, DESIGN), never fewer. */
  const int32_t live = st_chunk_live(ch);
  const int32_t n = st_chunk_n(ch);
  if (live == 0)
    return MN_OK;
  /* Were this chunk on the device, would the group hold it? */
  const int64_t scores = x->nq * (x->fast ? fast_k(x, n, live) : n);
  if (t->npend > 0 &&
      (t->npend == x->group_max || t->pend_scores + scores > ST_GROUP_SCORES))
    MN__TRY(group_flush(x, t, MN_OK));
  uint8_t *mask = t->mask + (size_t)t->npend * (size_t)s->opts.chunk_rows;
  mn_status st = MN_OK;
  if (!x->fast) {
    /* A chunk none of whose rows can match is not read at all. */
    if (row_mask(x, mask, ch, n, &st) == 0)
      return st;
  }
  /* After device out of memory: no promotion, and the CPU reads. */
  int cpu = atomic_load(&x->oom);
  void *scratch;
  const void *host, *dev;
  MN__TRY(mn__st_chunk_acquire(s, ch, x->tick, n, !cpu, &scratch, &host, &dev));
  if (dev && !cpu && x->q_dev) {
    /* pinned until its group is scored */
    t->pend[t->npend++] = (st_pend){ch, scratch, host, dev, n, live};
    t->pend_scores += scores;
    return MN_OK;
  }
  st = scan_host_any(x, t, ch, n, live, host, mask);
  mn__st_chunk_release(s, ch, scratch);
  return st;
}

static void tstate_free(mn_store *s, st_tstate *t, int64_t nq) {
  if (!t)
    return;
  if (t->heaps)
    for (int64_t i = 0; i < nq; i++)
      free(t->heaps[i].v);
  free(t->heaps);
  free(t->seen);
  free(t->mask);
  free(t->sims);
  free(t->fscores);
  free(t->fids);
  free(t->pend);
  free(t->blk);
  free(t->vbs);
  free(t->gscores);
  free(t->gids);
  if (t->gdsims)
    mn_backend_free(s->backend, t->gdsims);
}

static mn_status tstate_init(st_ctx *x, st_tstate *t) {
  memset(t, 0, sizeof *t);
  size_t cap = (size_t)x->s->opts.chunk_rows, nq = (size_t)x->nq;
  size_t gm = (size_t)x->group_max;
  t->heaps = calloc(nq, sizeof *t->heaps);
  t->seen = calloc(nq, sizeof *t->seen);
  t->mask = malloc(cap * gm);
  t->pend = malloc(sizeof *t->pend * gm);
  t->blk = malloc(sizeof *t->blk * gm);
  t->vbs = malloc(sizeof *t->vbs * gm);
  if (!t->heaps || !t->seen || !t->mask || !t->pend || !t->blk || !t->vbs)
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  for (size_t i = 0; i < nq; i++) {
    t->heaps[i].cap = x->cap;
    t->heaps[i].v = malloc(sizeof(st_cand) * (size_t)x->cap);
    if (!t->heaps[i].v)
      return mn__set_error(MN_ERR_NOMEM, "out of memory");
  }
  if (x->fast) {
    t->fscores = malloc(sizeof(float) * cap * nq);
    t->fids = malloc(sizeof(int64_t) * cap * nq);
    if (!t->fscores || !t->fids)
      return mn__set_error(MN_ERR_NOMEM, "out of memory");
  } else {
    t->sims = malloc(sizeof(float) * cap * nq);
    if (!t->sims)
      return mn__set_error(MN_ERR_NOMEM, "out of memory");
  }
  return MN_OK;
}

/* ------------------------------------------------------------------------
 * Entry point.
 * ---------------------------------------------------------------------- */
static mn_status check_params(const st_coll *c, const mn_search_params *p) {
  if (!p->queries || p->n_queries < 1 || p->n_queries > ST_MAX_QUERIES)
    return mn__set_error(MN_ERR_INVALID,
                         "give between 1 and %d query vectors, got %lld",
                         ST_MAX_QUERIES, (long long)p->n_queries);
  if (p->dim != c->dim)
    return mn__set_error(MN_ERR_INVALID,
                         "query vectors are %lld wide but collection '%s' "
                         "takes %lld",
                         (long long)p->dim, c->name, (long long)c->dim);
  if (p->k < 1 || p->k > MN_SEARCH_MAX_K)
    return mn__set_error(MN_ERR_INVALID, "k must be between 1 and %d, got %lld",
                         MN_SEARCH_MAX_K, (long long)p->k);
  if (!(p->time_decay >= 0) || !isfinite(p->time_decay))
    return mn__set_error(MN_ERR_INVALID,
                         "time_decay must be a finite rate >= 0 per second");
  if (!(p->significance_weight >= 0) || !isfinite(p->significance_weight))
    return mn__set_error(MN_ERR_INVALID,
                         "significance_weight must be a finite number >= 0");
  if ((p->has_since && !isfinite(p->since)) ||
      (p->has_until && !isfinite(p->until)))
    return mn__set_error(MN_ERR_INVALID, "since and until must be finite "
                                         "Unix times");
  if (p->has_since && p->has_until && p->since > p->until)
    return mn__set_error(MN_ERR_INVALID, "since (%.3f) is after until (%.3f)",
                         p->since, p->until);
  if (p->has_min_similarity && !isfinite(p->min_similarity))
    return mn__set_error(MN_ERR_INVALID, "min_similarity must be finite");
  if (p->has_now && !isfinite(p->now))
    return mn__set_error(MN_ERR_INVALID, "now must be finite");
  if (p->chat_id && strlen(p->chat_id) > MN_CHAT_ID_MAX)
    return mn__set_error(MN_ERR_INVALID,
                         "chatId filter is longer than %d "
                         "bytes",
                         MN_CHAT_ID_MAX);
  mn_tensor qt =
      mn_tensor_host((void *)p->queries, MN_DTYPE_F32, p->n_queries, p->dim);
  mn_status st = mn_tensor_check_finite(&qt);
  if (st != MN_OK)
    return mn__set_error(st, "query %s", mn_errmsg());
  return MN_OK;
}

/* Fill `res` from the merged candidates, best first, up to k per query;
 * with `filter`, candidates whose metadata does not match are passed over.
 * *short_q is set when some query got fewer than k hits while more
 * candidates existed than were kept. */
static mn_status build_result(st_ctx *x, st_heap *merged, const int64_t *seen,
                              json_t *filter, mn_search_result *res,
                              int *short_q) {
  *short_q = 0;
  mn_store *s = x->s;
  st_coll *c = x->c;
  unsigned inc = x->p->include;
  res->counts = calloc((size_t)x->nq, sizeof *res->counts);
  res->hits = calloc((size_t)x->nq, sizeof *res->hits);
  res->seqs = calloc((size_t)x->nq, sizeof *res->seqs);
  if (!res->counts || !res->hits || !res->seqs)
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  MDB_txn *txn;
  MN__TRY(mn__st_read_begin(s, &txn));
  mn_status st = MN_OK;
  for (int64_t qi = 0; qi < x->nq && st == MN_OK; qi++) {
    st_heap *h = &merged[qi];
    if (h->n > 1)
      qsort(h->v, (size_t)h->n, sizeof *h->v, cmp_best_first);
    res->hits[qi] = mn__st_arena_alloc(
        &res->arena, sizeof(mn_search_hit) * (size_t)MN__MIN(h->n, x->k) + 1);
    res->seqs[qi] = mn__st_arena_alloc(
        &res->arena, sizeof(uint64_t) * (size_t)MN__MIN(h->n, x->k) + 1);
    if (!res->hits[qi] || !res->seqs[qi]) {
      st = mn__set_error(MN_ERR_NOMEM, "out of memory");
      break;
    }
    int64_t got = 0;
    for (int64_t i = 0; i < h->n && got < x->k; i++) {
      const st_cand *cd = &h->v[i];
      uint8_t key[12];
      mn__st_key_seq(key, c->cid, cd->seq);
      MDB_val k = {12, key}, rv;
      int rc = mdb_get(txn, s->dbi[ST_DBI_REC], &k, &rv);
      if (rc == MDB_NOTFOUND)
        continue; /* deleted after the scan began */
      if (rc) {
        st = mn__st_lmdb(rc, "read a result");
        break;
      }
      const char *id, *content, *meta;
      uint32_t il, cl, ml;
      if (mn__st_rec_parse(&rv, &id, &il, &content, &cl, &meta, &ml) != 0) {
        st = mn__set_error(MN_ERR_VERSION,
                           "a memory record of '%s' has an "
                           "unknown format",
                           c->name);
        break;
      }
      if (filter && !meta_match(filter, meta, ml))
        continue;
      mn_search_hit *hit = &res->hits[qi][got];
      memset(hit, 0, sizeof *hit);
      hit->id = mn__st_arena_str(&res->arena, id, il);
      hit->score = cd->score;
      hit->similarity = cd->sim;
      hit->significance = cd->sig;
      hit->decay = cd->decay;
      hit->timestamp = cd->ts;
      char chat[MN_CHAT_ID_MAX + 1];
      mn__st_chat_name(c, cd->chat, chat, sizeof chat);
      hit->chat_id = mn__st_arena_str(&res->arena, chat, strlen(chat));
      if (inc & MN_INCLUDE_CONTENT)
        hit->content = mn__st_arena_str(&res->arena, content, cl);
      if (inc & MN_INCLUDE_METADATA)
        hit->metadata = mn__st_arena_str(&res->arena, meta, ml);
      if (inc & MN_INCLUDE_EMBEDDING) {
        st_vec_hdr vh;
        float *e =
            mn__st_arena_alloc(&res->arena, sizeof(float) * (size_t)c->width);
        if (e && mn__st_read_row(s, txn, c, cd->seq, 1, &vh) == MN_OK)
          mn__st_decode_row(c, vh.codes, vh.scale, e);
        else if (e)
          memset(e, 0, sizeof(float) * (size_t)c->width);
        hit->embedding = e;
      }
      if (!hit->id || !hit->chat_id) {
        st = mn__set_error(MN_ERR_NOMEM, "out of memory");
        break;
      }
      res->seqs[qi][got] = cd->seq;
      got++;
    }
    res->counts[qi] = got;
    if (got < x->k && seen && seen[qi] > h->n)
      *short_q = 1;
  }
  mn__st_read_end(s, txn);
  return st;
}

static mn_status reinforce(mn_store *s, st_coll *c, uint64_t *seqs, int64_t n) {
  if (n == 0)
    return MN_OK;
  st_op op;
  st_op_init(&op, ST_OP_REINFORCE, c);
  op.u.rein.n = n;
  op.u.rein.seqs = seqs;
  op.u.rein.sig = malloc(sizeof(float) * (size_t)n);
  op.u.rein.ok = malloc((size_t)n);
  mn_status st = (op.u.rein.sig && op.u.rein.ok)
                     ? mn__st_submit(s, &op)
                     : mn__set_error(MN_ERR_NOMEM, "out of memory");
  free(op.u.rein.sig);
  free(op.u.rein.ok);
  return st;
}

static void heaps_free(st_heap *h, int64_t nq) {
  if (!h)
    return;
  for (int64_t i = 0; i < nq; i++)
    free(h[i].v);
  free(h);
}

/* One pass over the collection's chunks (in parallel, one set of heaps per
 * thread), merged into the best x->cap candidates per query. */
static mn_status run_scan(st_ctx *x, st_heap **out, int64_t **seen_out) {
  mn_store *s = x->s;
  st_coll *c = x->c;
  int64_t nch = x->empty ? 0 : st_nchunks(c);
  int nt = omp_get_max_threads();
  if (nt > nch)
    nt = (int)(nch > 0 ? nch : 1);
  st_tstate *ts = calloc((size_t)nt, sizeof *ts);
  st_heap *merged = calloc((size_t)x->nq, sizeof *merged);
  int64_t *seen = calloc((size_t)x->nq, sizeof *seen);
  if (!ts || !merged || !seen) {
    free(ts);
    free(merged);
    free(seen);
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  }
  mn_status err = MN_OK;
  char errmsg[512] = "";
#pragma omp parallel num_threads(nt)
  {
    st_tstate *t = &ts[omp_get_thread_num()];
    mn_status ts_st = tstate_init(x, t);
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t i = 0; i < nch; i++) {
      if (ts_st == MN_OK)
        ts_st = scan_chunk(x, t, st_chunk_at(c, i));
    }
    /* the device chunks this thread still holds (released on error too) */
    ts_st = group_flush(x, t, ts_st);
    if (ts_st != MN_OK) {
#pragma omp critical(mn_store_search_err)
      {
        if (err == MN_OK) {
          err = ts_st;
          snprintf(errmsg, sizeof errmsg, "%s", mn_errmsg());
        }
      }
    }
  }
  mn_status st = err != MN_OK ? mn__set_error(err, "%s", errmsg) : MN_OK;
  for (int64_t qi = 0; qi < x->nq && st == MN_OK; qi++) {
    merged[qi].cap = x->cap;
    merged[qi].v = malloc(sizeof(st_cand) * (size_t)x->cap);
    if (!merged[qi].v) {
      st = mn__set_error(MN_ERR_NOMEM, "out of memory");
      break;
    }
    for (int i = 0; i < nt; i++) {
      seen[qi] += ts[i].seen ? ts[i].seen[qi] : 0;
      if (ts[i].heaps)
        for (int64_t j = 0; j < ts[i].heaps[qi].n; j++)
          heap_push(&merged[qi], &ts[i].heaps[qi].v[j]);
    }
  }
  for (int i = 0; i < nt; i++)
    tstate_free(s, &ts[i], x->nq);
  free(ts);
  if (st != MN_OK) {
    heaps_free(merged, x->nq);
    free(seen);
    return st;
  }
  *out = merged;
  *seen_out = seen;
  return MN_OK;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

mn_status mn_store_search(mn_store *s, const char *coll,
                          const mn_search_params *p, mn_search_result **out) {
  if (!s || !p || !out)
    return mn__set_error(MN_ERR_INVALID, "store, params or out is NULL");
  *out = NULL;
  st_coll *c = NULL;
  MN__TRY(mn__st_coll_ref(s, coll, &c));
  mn_status st = check_params(c, p);
  json_t *filter = NULL;
  if (st == MN_OK)
    st = parse_filter(p->metadata, &filter);
  if (st != MN_OK) {
    mn__st_coll_unref(c);
    return st;
  }
  st_ctx x;
  memset(&x, 0, sizeof x);
  atomic_init(&x.oom, 0);
  x.s = s;
  x.c = c;
  x.p = p;
  x.nq = p->n_queries;
  x.k = p->k;
  x.now = p->has_now ? p->now : mn__st_now(s);
  x.fast = !p->chat_id && !p->has_since && !p->has_until && !filter &&
           p->time_decay == 0 && p->significance_weight == 0;
  mn_search_result *res = calloc(1, sizeof *res);
  float *qbuf = malloc(sizeof(float) * (size_t)(x.nq * c->dim));
  float *qproc =
      c->pca ? malloc(sizeof(float) * (size_t)(x.nq * c->width)) : qbuf;
  if (!res || !qbuf || !qproc) {
    st = mn__set_error(MN_ERR_NOMEM, "out of memory");
  } else {
    res->nq = x.nq;
    res->width = c->width;
    memcpy(qbuf, p->queries, sizeof(float) * (size_t)(x.nq * c->dim));
    st = mn__st_process(s, c, qbuf, x.nq, qproc);
  }
  x.q_host = qproc;
  if (st == MN_OK && s->l1_enabled) {
    size_t qb = sizeof(float) * (size_t)(x.nq * c->width);
    st = mn_backend_alloc(s->backend, qb, &x.q_dev);
    if (st != MN_OK)
      x.q_dev = NULL;
    else
      st = mn_backend_upload(s->backend, x.q_dev, qproc, qb);
    if (st == MN_ERR_DEVICE_OOM) {
      /* No room for the queries: the whole search runs on the CPU. */
      device_oom(&x);
      if (x.q_dev)
        mn_backend_free(s->backend, x.q_dev);
      x.q_dev = NULL;
      st = MN_OK;
    }
  }

  pthread_rwlock_rdlock(&c->lock);
  if (p->chat_id && !mn__st_chat_lookup(c, p->chat_id, &x.chat))
    x.empty = 1; /* no memory of that chat */
  else if (p->chat_id)
    x.use_chat = 1;
  x.tick = atomic_fetch_add(&s->tick, 1) + 1;
  x.group_max = x.q_dev ? ST_GROUP_CHUNKS : 1;
  /* With a metadata filter, keep more candidates than k and read their
   * records afterwards; if that is not enough, scan again evaluating the
   * filter on every row that passes the others. */
  x.filter = filter;
  x.cap = filter ? MN__MAX(16 * x.k, 1024) : x.k;
  st_heap *merged = NULL;
  int64_t *seen = NULL;
  int short_q = 0;
  if (st == MN_OK)
    st = run_scan(&x, &merged, &seen);
  if (st == MN_OK)
    st = build_result(&x, merged, seen, filter, res, &short_q);
  if (st == MN_OK && filter && short_q) {
    heaps_free(merged, x.nq);
    free(seen);
    merged = NULL;
    seen = NULL;
    mn_search_result *again = calloc(1, sizeof *again);
    if (!again) {
      st = mn__set_error(MN_ERR_NOMEM, "out of memory");
    } else {
      again->nq = res->nq;
      again->width = res->width;
      mn_search_result_free(res);
      res = again;
      x.meta_inline = 1;
      x.cap = x.k;
      st = run_scan(&x, &merged, &seen);
      if (st == MN_OK)
        st = build_result(&x, merged, NULL, NULL, res, &short_q);
    }
  }
  pthread_rwlock_unlock(&c->lock);
  heaps_free(merged, x.nq);
  free(seen);

  uint64_t *seqs = NULL;
  int64_t nseq = 0;
  if (st == MN_OK && p->reinforce) {
    /* Every returned memory once, even when several queries found it. */
    for (int64_t qi = 0; qi < x.nq; qi++)
      nseq += res->counts[qi];
    seqs = malloc(sizeof(uint64_t) * (size_t)(nseq ? nseq : 1));
    if (!seqs) {
      st = mn__set_error(MN_ERR_NOMEM, "out of memory");
    } else {
      int64_t m = 0;
      for (int64_t qi = 0; qi < x.nq; qi++)
        for (int64_t j = 0; j < res->counts[qi]; j++)
          seqs[m++] = res->seqs[qi][j];
    }
  }
  if (st == MN_OK && p->reinforce) {
    qsort(seqs, (size_t)nseq, sizeof *seqs, cmp_u64);
    int64_t u = 0;
    for (int64_t i = 0; i < nseq; i++)
      if (u == 0 || seqs[u - 1] != seqs[i])
        seqs[u++] = seqs[i];
    st = reinforce(s, c, seqs, u);
  }
  free(seqs);
  if (x.q_dev)
    mn_backend_free(s->backend, x.q_dev);
  if (qproc != qbuf)
    free(qproc);
  free(qbuf);
  json_decref(filter);
  mn__st_coll_unref(c);
  if (st == MN_OK && atomic_load(&x.oom) &&
      !(res->cpu_fallback =
            strdup(x.oom_msg[0] ? x.oom_msg : "device out of memory")))
    st = mn__set_error(MN_ERR_NOMEM, "out of memory");
  if (st != MN_OK) {
    mn_search_result_free(res);
    return st;
  }
  *out = res;
  return MN_OK;
}
