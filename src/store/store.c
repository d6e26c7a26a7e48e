/*
 * store.c - the memory store's front: options, open and close, the
 * collection registry and the collection API, id generation, statistics,
 * pressure, cleanup and the maintenance thread.
 *
 * DESIGN: see store_internal.h for locks and ownership. Open builds the
 * registry from LMDB before the writer thread starts, so nothing else runs
 * during the rebuild. A collection is reference counted: the registry holds
 * one reference, every call working on it another; drop unregisters it
 * (after its deletion committed) and the last reference frees it.
 */
#include "store/store_internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local uint64_t tl_res_req, tl_res_avail;

mn_status mn__st_resource(uint64_t req, uint64_t avail, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  tl_res_req = req;
  tl_res_avail = avail;
  return mn__set_error(MN_ERR_RESOURCE, "%s", buf);
}

void mn__st_resource_clear(void) {
  tl_res_req = tl_res_avail = 0;
}

void mn_store_last_resource(uint64_t *requested, uint64_t *available) {
  if (requested)
    *requested = tl_res_req;
  if (available)
    *available = tl_res_avail;
}

const char *mn_pressure_name(mn_pressure p) {
  switch (p) {
  case MN_PRESSURE_NORMAL:
    return "normal";
  case MN_PRESSURE_HIGH_LOAD:
    return "high_load";
  case MN_PRESSURE_RECOVERY:
    return "recovery";
  }
  return "unknown";
}

double mn__st_now(mn_store *s) {
  return s->opts.clock ? s->opts.clock(s->opts.clock_user) : mn_time_unix();
}

/* ------------------------------------------------------------------------
 * Options.
 * ---------------------------------------------------------------------- */
void mn_store_opts_init(mn_store_opts *o) {
  memset(o, 0, sizeof *o);
  o->data_dir = "./data";
  o->durable = 1;
  o->chunk_ttl_s = 3600;
  o->map_size = 0;
  o->chunk_rows = ST_DEFAULT_CHUNK_ROWS;
  o->maintenance_ms = 1000;
}

mn_status mn_store_opts_from_config(mn_store_opts *o, const mn_config *c) {
  if (!o || !c)
    return mn__set_error(MN_ERR_INVALID, "options or config is NULL");
  o->data_dir = c->data_dir;
  o->l1_budget = c->gpu_memory_limit;
  o->l2_budget = c->cache_size;
  o->l3_budget = c->disk_limit;
  o->chunk_ttl_s = (double)c->chunk_ttl_s;
  if (strcmp(c->sync, "durable") == 0)
    o->durable = 1;
  else if (strcmp(c->sync, "none") == 0)
    o->durable = 0;
  else
    return mn__set_error(MN_ERR_INVALID,
                         "storage.sync is '%s': use \"durable\" or \"none\"",
                         c->sync);
  return MN_OK;
}

/* ------------------------------------------------------------------------
 * Collections: objects and registry.
 * ---------------------------------------------------------------------- */
/* A read-write lock that lets a waiting writer in before new readers
 * (glibc's default lets readers starve it); no thread may then take it
 * for reading twice. */
static void rwlock_init_writer_first(pthread_rwlock_t *l) {
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init(&ra);
  pthread_rwlockattr_setkind_np(&ra,
                                PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(l, &ra);
  pthread_rwlockattr_destroy(&ra);
}

mn_status mn__st_check_name(const char *name) {
  if (!name)
    return mn__set_error(MN_ERR_INVALID, "collection name is missing");
  size_t n = strlen(name);
  if (n < 1 || n > MN_COLLECTION_NAME_MAX)
    return mn__set_error(MN_ERR_INVALID,
                         "collection name must be 1 to %d characters, got "
                         "%zu",
                         MN_COLLECTION_NAME_MAX, n);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)name[i];
    if (!(isalnum(ch) || ch == '_' || ch == '.' || ch == '-'))
      return mn__set_error(MN_ERR_INVALID,
                           "collection name '%.64s' has character '%c' at "
                           "%zu: use letters, digits, '_', '.' and '-'",
                           name, isprint(ch) ? ch : '?', i);
  }
  return MN_OK;
}

st_coll *mn__st_coll_new(mn_store *s) {
  st_coll *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->store = s;
  /* Writer preference: a steady stream of overlapping searches must not
   * starve the publication of committed writes (nothing takes this lock
   * for reading twice in one thread). */
  rwlock_init_writer_first(&c->lock);
  pthread_mutex_init(&c->chat_mu, NULL);
  atomic_init(&c->refs, 1);
  return c;
}

void mn__st_coll_free(st_coll *c) {
  if (!c)
    return;
  for (int64_t i = 0; i < c->n_chunks; i++)
    mn__st_chunk_free(c->store, st_chunk_at(c, i));
  for (int i = 0; i < ST_SEG_MAX && c->segs[i]; i++)
    free(c->segs[i]);
  pthread_mutex_destroy(&c->chat_mu);
  for (uint32_t i = 0; i < c->n_chats; i++)
    mn__st_chat_free(c->chats[i]);
  free(c->chats);
  free(c->chat_hash);
  mn_pca_free(c->pca);
  pthread_rwlock_destroy(&c->lock);
  free(c);
}

mn_status mn__st_coll_ref(mn_store *s, const char *name, st_coll **out) {
  MN__TRY(mn__st_check_name(name));
  pthread_rwlock_rdlock(&s->reg_lock);
  for (int64_t i = 0; i < s->n_colls; i++) {
    st_coll *c = s->colls[i];
    if (strcmp(c->name, name) == 0) {
      atomic_fetch_add(&c->refs, 1);
      pthread_rwlock_unlock(&s->reg_lock);
      *out = c;
      return MN_OK;
    }
  }
  pthread_rwlock_unlock(&s->reg_lock);
  return mn__set_error(MN_ERR_NOT_FOUND, "collection '%s' does not exist",
                       name);
}

void mn__st_coll_unref(st_coll *c) {
  if (c && atomic_fetch_sub(&c->refs, 1) == 1)
    mn__st_coll_free(c);
}

void mn__st_register(mn_store *s, st_coll *c, mn_pca_model *pca) {
  c->pca = pca;
  pthread_rwlock_wrlock(&s->reg_lock);
  if (s->n_colls == s->cap_colls) {
    int64_t nc = s->cap_colls ? s->cap_colls * 2 : 8;
    st_coll **a = realloc(s->colls, sizeof *a * (size_t)nc);
    if (!a) {
      pthread_rwlock_unlock(&s->reg_lock);
      MN__LOGE(ST_MOD,
               "out of memory registering '%s'; it reappears at the "
               "next open",
               c->name);
      mn__st_coll_unref(c);
      return;
    }
    s->colls = a;
    s->cap_colls = nc;
  }
  s->colls[s->n_colls++] = c;
  pthread_rwlock_unlock(&s->reg_lock);
}

void mn__st_unregister(mn_store *s, st_coll *c) {
  pthread_rwlock_wrlock(&s->reg_lock);
  for (int64_t i = 0; i < s->n_colls; i++)
    if (s->colls[i] == c) {
      s->colls[i] = s->colls[--s->n_colls];
      break;
    }
  pthread_rwlock_unlock(&s->reg_lock);
  c->dead = 1;
  c->dropping = 0;
  mn__st_coll_unref(c); /* the registry's reference */
}

/* ------------------------------------------------------------------------
 * Ids: "m_" + 12 hex digits of milliseconds + 8 hex digits of a counter,
 * so that ids sort by creation time even within one millisecond.
 * ---------------------------------------------------------------------- */
void mn__st_gen_id(mn_store *s, char *out) {
  pthread_mutex_lock(&s->id_mu);
  uint64_t ms = (uint64_t)(mn_time_unix() * 1000.0);
  if (ms > s->id_last_ms) {
    s->id_last_ms = ms;
    s->id_counter = 0;
  } else {
    s->id_counter++;
    if (s->id_counter == 0) /* 2^32 ids in one ms: borrow the next ms */
      s->id_last_ms++;
  }
  snprintf(out, MN_MEMORY_ID_MAX + 1, "m_%012llx%08x",
           (unsigned long long)(s->id_last_ms & 0xffffffffffffull),
           s->id_counter);
  pthread_mutex_unlock(&s->id_mu);
}

/* ------------------------------------------------------------------------
 * Open and close.
 * ---------------------------------------------------------------------- */
static void *maint_main(void *arg) {
  mn_store *s = arg;
  pthread_mutex_lock(&s->maint_mu);
  while (s->maint_running) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ms = s->opts.maintenance_ms;
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&s->maint_cv, &s->maint_mu, &ts);
    if (!s->maint_running)
      break;
    pthread_mutex_unlock(&s->maint_mu);
    mn_store_maintain(s);
    pthread_mutex_lock(&s->maint_mu);
  }
  pthread_mutex_unlock(&s->maint_mu);
  return NULL;
}

/* ------------------------------------------------------------------------
 * Warm-up: after open every chunk is on disk; this thread reads them into
 * the free room of L1 / L2, newest chunks of each collection first, and
 * stops at the first chunk that does not fit (it never evicts).
 * ---------------------------------------------------------------------- */
static void *loader_main(void *arg) {
  mn_store *s = arg;
  pthread_rwlock_rdlock(&s->reg_lock);
  int64_t n = s->n_colls;
  st_coll **cs = n ? malloc(sizeof *cs * (size_t)n) : NULL;
  if (!cs)
    n = 0;
  for (int64_t i = 0; i < n; i++) {
    cs[i] = s->colls[i];
    atomic_fetch_add(&cs[i]->refs, 1);
  }
  pthread_rwlock_unlock(&s->reg_lock);
  uint64_t t0 = mn_time_ns();
  int64_t loaded = 0;
  int full = 0;
  for (int64_t k = 0; k < n && !full; k++) {
    st_coll *c = cs[k];
    int64_t i = st_nchunks(c) - 1;
    for (; i >= 0 && !atomic_load(&s->loader_stop); i--) {
      /* Chunks never move or go away while the collection is referenced;
       * mn__st_chunk_warm copes with rows appended meanwhile. */
      int r = c->dead ? 1 : mn__st_chunk_warm(s, st_chunk_at(c, i));
      if (r == 0) {
        full = 1;
        break;
      }
      if (r < 0) {
        MN__LOGW(ST_MOD, "warm-up of '%s' stopped: %s", c->name, mn_errmsg());
        break;
      }
      loaded++;
    }
  }
  for (int64_t k = 0; k < n; k++)
    mn__st_coll_unref(cs[k]);
  free(cs);
  MN__LOGI(ST_MOD, "warm-up read %lld chunk(s) in %.2f s%s", (long long)loaded,
           (double)(mn_time_ns() - t0) * 1e-9,
           full ? "; memory budget reached, the rest stays on disk" : "");
  atomic_store(&s->warming, 0);
  return NULL;
}

mn_status mn__st_loader_start(mn_store *s) {
  atomic_store(&s->loader_stop, 0);
  atomic_store(&s->warming, 1);
  if (pthread_create(&s->loader, NULL, loader_main, s) != 0) {
    atomic_store(&s->warming, 0);
    return mn__set_error(MN_ERR_INTERNAL, "cannot start the loader thread");
  }
  s->loader_running = 1;
  return MN_OK;
}

void mn__st_loader_stop(mn_store *s) {
  if (!s->loader_running)
    return;
  atomic_store(&s->loader_stop, 1);
  pthread_join(s->loader, NULL);
  s->loader_running = 0;
}

static void store_free(mn_store *s) {
  if (s->disk_accounted)
    mn_account_add(MN_TIER_DISK, -(int64_t)s->disk_used);
  for (int64_t i = 0; i < s->n_colls; i++)
    mn__st_coll_free(s->colls[i]);
  free(s->colls);
  mn__st_work_free_all(s);
  mn__st_sig_log_free(s);
  mn__st_db_close(s);
  if (s->own_backend)
    mn_backend_close(s->backend);
  mn_backend_close(s->cpu);
  pthread_rwlock_destroy(&s->env_lock);
  pthread_rwlock_destroy(&s->reg_lock);
  pthread_mutex_destroy(&s->q_mu);
  pthread_cond_destroy(&s->q_cv);
  pthread_cond_destroy(&s->done_cv);
  pthread_cond_destroy(&s->pub_cv);
  pthread_mutex_destroy(&s->tier_mu);
  pthread_mutex_destroy(&s->work_mu);
  pthread_mutex_destroy(&s->id_mu);
  pthread_mutex_destroy(&s->maint_mu);
  pthread_cond_destroy(&s->maint_cv);
  free(s);
}

mn_status mn_store_open(const mn_store_opts *opts, mn_store **out) {
  if (!out)
    return mn__set_error(MN_ERR_INVALID, "out is NULL");
  *out = NULL;
  mn_store_opts defaults;
  if (!opts) {
    mn_store_opts_init(&defaults);
    opts = &defaults;
  }
  if (!opts->data_dir || !opts->data_dir[0])
    return mn__set_error(MN_ERR_INVALID, "data_dir is empty");
  if (strlen(opts->data_dir) >= 1000)
    return mn__set_error(MN_ERR_INVALID, "data_dir is too long");
  if (opts->chunk_rows < 0 || opts->chunk_rows > MN_SEARCH_MAX_K)
    return mn__set_error(MN_ERR_INVALID,
                         "chunk_rows must be between 1 and %d, got %lld",
                         MN_SEARCH_MAX_K, (long long)opts->chunk_rows);
  mn_store *s = calloc(1, sizeof *s);
  if (!s)
    return mn__set_error(MN_ERR_NOMEM, "out of memory opening the store");
  s->opts = *opts;
  if (!s->opts.chunk_rows)
    s->opts.chunk_rows = ST_DEFAULT_CHUNK_ROWS;
  snprintf(s->data_dir, sizeof s->data_dir, "%s", opts->data_dir);
  s->opts.data_dir = s->data_dir;
  /* Writer preference: a map resize must not starve behind searches. */
  rwlock_init_writer_first(&s->env_lock);
  pthread_rwlock_init(&s->reg_lock, NULL);
  pthread_mutex_init(&s->q_mu, NULL);
  pthread_cond_init(&s->q_cv, NULL);
  pthread_cond_init(&s->done_cv, NULL);
  pthread_cond_init(&s->pub_cv, NULL);
  pthread_mutex_init(&s->tier_mu, NULL);
  pthread_mutex_init(&s->work_mu, NULL);
  pthread_mutex_init(&s->id_mu, NULL);
  pthread_mutex_init(&s->maint_mu, NULL);
  pthread_cond_init(&s->maint_cv, NULL);
  atomic_init(&s->tick, 1);
  s->work_counter = (uint64_t)(mn_time_unix() * 1000.0) << 16;

  mn_status st = mn_backend_open_cpu(NULL, &s->cpu);
  if (st != MN_OK) {
    store_free(s);
    return st;
  }
  if (opts->backend) {
    s->backend = opts->backend;
  } else {
    s->backend = s->cpu;
  }
  s->l1_enabled = mn_backend_device_kind(s->backend) == MN_DEVICE_GPU;
  s->budget[MN_TIER_HOST] = opts->l2_budget;
  s->budget[MN_TIER_DISK] = opts->l3_budget;
  s->l1_cap = UINT64_MAX;
  if (s->l1_enabled) {
    uint64_t fr = 0, tot = 0;
    s->budget[MN_TIER_DEVICE] = opts->l1_budget;
    if (!opts->l1_budget &&
        mn_backend_memory_info(s->backend, &fr, &tot) == MN_OK)
      s->budget[MN_TIER_DEVICE] = (uint64_t)(0.8 * (double)fr);
  }
  st = mn__st_db_open(s);
  if (st == MN_OK)
    st = mn__st_load(s);
  if (st == MN_OK)
    st = mn__st_writer_start(s);
  if (st == MN_OK)
    st = mn__st_loader_start(s);
  if (st != MN_OK) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mn_errmsg());
    mn__st_loader_stop(s);
    if (s->writer_running)
      mn__st_writer_stop(s);
    store_free(s);
    return mn__set_error(st, "%s", msg);
  }
  s->stat_disk_used = s->disk_used;
  mn_account_add(MN_TIER_DISK, (int64_t)s->disk_used);
  s->disk_accounted = 1;
  s->stat_map_size = s->map_size;
  s->stat_map_grows = s->map_grows;
  if (opts->maintenance_ms > 0) {
    s->maint_running = 1;
    if (pthread_create(&s->maint, NULL, maint_main, s) != 0)
      s->maint_running = 0;
  }
  int64_t total = 0;
  for (int64_t i = 0; i < s->n_colls; i++)
    total += s->colls[i]->count;
  MN__LOGI(ST_MOD,
           "store at %s open: %lld collections, %lld memories, "
           "backend %s",
           s->path, (long long)s->n_colls, (long long)total,
           mn_backend_device(s->backend));
  *out = s;
  return MN_OK;
}

void mn_store_close(mn_store *s) {
  if (!s)
    return;
  mn__st_loader_stop(s);
  if (s->maint_running) {
    pthread_mutex_lock(&s->maint_mu);
    s->maint_running = 0;
    pthread_cond_signal(&s->maint_cv);
    pthread_mutex_unlock(&s->maint_mu);
    pthread_join(s->maint, NULL);
  }
  mn__st_writer_stop(s);
  store_free(s);
}

/* ------------------------------------------------------------------------
 * Collection API.
 * ---------------------------------------------------------------------- */
static void fill_info(mn_store *s, st_coll *c, mn_collection_info *info) {
  memset(info, 0, sizeof *info);
  snprintf(info->name, sizeof info->name, "%s", c->name);
  info->dim = c->dim;
  info->width = c->width;
  info->metric = c->metric;
  info->dtype = c->dtype;
  info->normalize = c->normalize;
  snprintf(info->pca_model, sizeof info->pca_model, "%s", c->pca_name);
  info->created = c->created;
  info->row_bytes = c->row_bytes;
  info->count = __atomic_load_n(&c->count, __ATOMIC_RELAXED);
  int64_t nch = st_nchunks(c);
  info->chunks = nch;
  info->bytes[MN_TIER_DISK] = (uint64_t)info->count * (uint64_t)c->row_bytes;
  pthread_mutex_lock(&s->tier_mu);
  for (int64_t i = 0; i < nch; i++) {
    st_chunk *ch = st_chunk_at(c, i);
    if (ch->tier < 0)
      continue;
    info->chunks_tier[ch->tier]++;
    if (ch->tier == MN_TIER_HOST)
      info->bytes[MN_TIER_HOST] += (uint64_t)ch->cap * (uint64_t)c->row_bytes;
    else if (ch->tier == MN_TIER_DEVICE)
      info->bytes[MN_TIER_DEVICE] += (uint64_t)ch->cap * (uint64_t)c->row_bytes;
  }
  pthread_mutex_unlock(&s->tier_mu);
}

static mn_status default_pca_resolve(mn_store *s, const char *name,
                                     mn_pca_model **out) {
  char path[1300];
  for (const char *p = name; *p; p++)
    if (*p == '/' || (p == name && *p == '.'))
      return mn__set_error(MN_ERR_INVALID,
                           "PCA model name '%s' is not a plain name", name);
  snprintf(path, sizeof path, "%s/pca/%s.pca", s->data_dir, name);
  mn_status st = mn_pca_load(path, out);
  if (st == MN_ERR_IO || st == MN_ERR_NOT_FOUND)
    return mn__set_error(MN_ERR_NOT_FOUND, "PCA model '%s' not found (%s)",
                         name, path);
  return st;
}

mn_status mn_store_collection_create(mn_store *s, const mn_collection_opts *o,
                                     mn_collection_info *info) {
  if (!s || !o)
    return mn__set_error(MN_ERR_INVALID, "store or options is NULL");
  mn__st_resource_clear();
  MN__TRY(mn__st_check_name(o->name));
  if (o->dim < 1 || o->dim > MN_STORE_MAX_DIM)
    return mn__set_error(MN_ERR_INVALID,
                         "dim must be between 1 and %d, got %lld",
                         MN_STORE_MAX_DIM, (long long)o->dim);
  if ((unsigned)o->metric > MN_METRIC_L2)
    return mn__set_error(MN_ERR_INVALID, "metric %d is not cosine, ip or l2",
                         (int)o->metric);
  if (o->dtype != MN_DTYPE_F32 && o->dtype != MN_DTYPE_F16 &&
      o->dtype != MN_DTYPE_I8 && o->dtype != MN_DTYPE_BIN)
    return mn__set_error(MN_ERR_INVALID,
                         "storage dtype %s is not one of float32, float16, "
                         "int8, binary",
                         mn_dtype_name(o->dtype));
  mn_pca_model *pca = NULL;
  if (o->pca_model && o->pca_model[0]) {
    if (strlen(o->pca_model) > MN_MEMORY_ID_MAX)
      return mn__set_error(MN_ERR_INVALID, "PCA model name is too long");
    mn_status st =
        s->opts.pca_resolve
            ? s->opts.pca_resolve(s->opts.pca_user, o->pca_model, &pca)
            : default_pca_resolve(s, o->pca_model, &pca);
    if (st != MN_OK)
      return st;
    if (!pca)
      return mn__set_error(MN_ERR_NOT_FOUND, "PCA model '%s' not found",
                           o->pca_model);
    if (pca->input_dim != o->dim) {
      int64_t in = pca->input_dim;
      mn_pca_free(pca);
      return mn__set_error(MN_ERR_INVALID,
                           "PCA model '%s' takes %lld-wide vectors but the "
                           "collection's dim is %lld",
                           o->pca_model, (long long)in, (long long)o->dim);
    }
  }
  st_op op;
  st_op_init(&op, ST_OP_CREATE, NULL);
  op.u.create.opts = *o;
  op.u.create.pca = pca;
  mn_status st = mn__st_submit(s, &op);
  if (st != MN_OK) {
    mn_pca_free(op.u.create.pca);
    mn__st_coll_free(op.u.create.made);
    return st;
  }
  if (info)
    fill_info(s, op.u.create.made, info);
  mn__st_coll_unref(op.u.create.made); /* the creator's (see publish) */
  return MN_OK;
}

mn_status mn_store_collection_get(mn_store *s, const char *name,
                                  mn_collection_info *info) {
  if (!s || !info)
    return mn__set_error(MN_ERR_INVALID, "store or info is NULL");
  st_coll *c = NULL;
  MN__TRY(mn__st_coll_ref(s, name, &c));
  fill_info(s, c, info);
  mn__st_coll_unref(c);
  return MN_OK;
}

static int cmp_info(const void *a, const void *b) {
  return strcmp(((const mn_collection_info *)a)->name,
                ((const mn_collection_info *)b)->name);
}

mn_status mn_store_collection_list(mn_store *s, mn_collection_info **out,
                                   int64_t *n) {
  if (!s || !out || !n)
    return mn__set_error(MN_ERR_INVALID, "NULL argument");
  *out = NULL;
  *n = 0;
  pthread_rwlock_rdlock(&s->reg_lock);
  int64_t cnt = s->n_colls;
  st_coll **refs = cnt ? malloc(sizeof *refs * (size_t)cnt) : NULL;
  if (cnt && !refs) {
    pthread_rwlock_unlock(&s->reg_lock);
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  }
  for (int64_t i = 0; i < cnt; i++) {
    refs[i] = s->colls[i];
    atomic_fetch_add(&refs[i]->refs, 1);
  }
  pthread_rwlock_unlock(&s->reg_lock);
  mn_collection_info *arr = cnt ? calloc((size_t)cnt, sizeof *arr) : NULL;
  for (int64_t i = 0; i < cnt; i++) {
    if (arr)
      fill_info(s, refs[i], &arr[i]);
    mn__st_coll_unref(refs[i]);
  }
  free(refs);
  if (cnt && !arr)
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  if (cnt)
    qsort(arr, (size_t)cnt, sizeof *arr, cmp_info);
  *out = arr;
  *n = cnt;
  return MN_OK;
}

mn_status mn_store_collection_drop(mn_store *s, const char *name) {
  if (!s)
    return mn__set_error(MN_ERR_INVALID, "store is NULL");
  st_coll *c = NULL;
  MN__TRY(mn__st_coll_ref(s, name, &c));
  st_op op;
  st_op_init(&op, ST_OP_DROP, c);
  mn_status st = mn__st_submit(s, &op);
  mn__st_coll_unref(c);
  return st;
}

/* ------------------------------------------------------------------------
 * Statistics, pressure, cleanup.
 * ---------------------------------------------------------------------- */
void mn_store_get_stats(mn_store *s, mn_store_stats *st) {
  memset(st, 0, sizeof *st);
  if (!s)
    return;
  pthread_mutex_lock(&s->tier_mu);
  for (int t = 0; t < MN_TIER_COUNT; t++) {
    st->used[t] = s->used[t];
    st->budget[t] = s->budget[t];
    st->chunks[t] = s->tier_chunks[t];
  }
  st->pressure = mn__st_pressure_locked(s);
  st->l1_cap = s->l1_cap;
  st->promotions = s->promotions;
  st->demotions = s->demotions;
  pthread_mutex_unlock(&s->tier_mu);
  pthread_mutex_lock(&s->q_mu);
  st->commits = s->commits;
  st->writes = s->writes;
  st->used[MN_TIER_DISK] = s->stat_disk_used;
  st->map_size = s->stat_map_size;
  st->map_grows = s->stat_map_grows;
  pthread_mutex_unlock(&s->q_mu);
  pthread_mutex_lock(&s->work_mu);
  st->working_chunks = s->n_work;
  st->working_bytes = s->work_bytes;
  pthread_mutex_unlock(&s->work_mu);
  pthread_rwlock_rdlock(&s->reg_lock);
  st->collections = s->n_colls;
  for (int64_t i = 0; i < s->n_colls; i++)
    st->memories += __atomic_load_n(&s->colls[i]->count, __ATOMIC_RELAXED);
  pthread_rwlock_unlock(&s->reg_lock);
  st->stale_readers_cleared = s->stale_readers;
  st->warming = atomic_load(&s->warming);
  st->l1_enabled = s->l1_enabled;
}

mn_pressure mn_store_pressure(mn_store *s) {
  if (!s)
    return MN_PRESSURE_NORMAL;
  pthread_mutex_lock(&s->tier_mu);
  mn_pressure p = mn__st_pressure_locked(s);
  pthread_mutex_unlock(&s->tier_mu);
  return p;
}

mn_status mn_store_cleanup(mn_store *s, int all_idle, mn_cleanup_report *rep) {
  mn_cleanup_report r;
  memset(&r, 0, sizeof r);
  if (!s)
    return mn__set_error(MN_ERR_INVALID, "store is NULL");
  mn__st_work_expire(s, mn__st_now(s), all_idle, &r);
  if (mn_store_pressure(s) == MN_PRESSURE_RECOVERY)
    mn__st_demote_to(s, MN_PRESSURE_HIGH_FRAC, &r.chunks_demoted,
                     &r.bytes_demoted);
  if (r.chunks_freed || r.chunks_demoted)
    MN__LOGI(ST_MOD,
             "cleanup freed %lld working chunk(s) (%llu bytes), "
             "moved %lld chunk(s) to disk (%llu bytes)",
             (long long)r.chunks_freed, (unsigned long long)r.bytes_freed,
             (long long)r.chunks_demoted, (unsigned long long)r.bytes_demoted);
  if (rep)
    *rep = r;
  return MN_OK;
}

void mn_store_maintain(mn_store *s) {
  mn_store_cleanup(s, 0, NULL);
}
