/*
 * store_db.c - the store's persistence: the LMDB environment and its
 * databases, record encoding, the writer thread with group commit and map
 * growth, and the rebuild of every collection from LMDB at open.
 *
 * Key layout:
 *   meta   "format" -> u32, "next_cid" -> u32, "pca:"+cid -> PCA model
 *   coll   name -> collection record
 *   rows   cid(be32) seq(be64) -> row record (time, significance, norm,
 *          scale, chat): what the in-memory chunks need besides the
 *          vectors, so open reads only this database
 *   vec    cid first-seq -> vector run: the codes of up to run_rows
 *          consecutive rows of one add in one value (store_internal.h),
 *          so a 3 KiB row does not take a 4 KiB overflow page of its own
 *          and an add of 1000 rows is a dozen puts, not a thousand
 *   rec    cid seq -> id, content, metadata (read for results only)
 *   ids    cid id -> seq
 *   chats  cid chat -> significance state (momentum, mean norm)
 * Big-endian integers make byte order equal numeric order. A row is live
 * when its `rows` record exists; a run may still hold codes of deleted
 * rows until a delete leaves half of it dead (then it is rewritten with
 * the live rows only, sparse) or all of it (then it is deleted).
 *
 * DESIGN: one writer thread owns every write transaction. Callers queue an
 * st_op and wait; the writer takes everything queued (up to a bound),
 * applies the ops in order in one transaction, commits (fsync unless
 * MDB_NOSYNC) and hands the group to the publisher thread, which
 * publishes each successful op's effects in memory (the copy into chunk
 * images being most of it) and then wakes all the callers: concurrent
 * writers share one commit, and publishing group k overlaps applying and
 * committing group k + 1. A caller returns only after both steps. An op that
 * fails its checks (duplicate id, budget) fails alone: checks come before
 * any write of that op. MDB_MAP_FULL anywhere aborts the transaction,
 * undoes the writer-only state of the group, doubles the map (with no
 * transaction active: env_lock held for writing) and replays the group.
 */
#include "store/store_internal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const dbi_names[ST_DBI_COUNT] = {
    "meta", "coll", "rows", "vec", "rec", "ids", "chats"};

/* A status the writer uses internally for "the map is full: grow, replay". */
#define ST_MAP_FULL ((mn_status)1)

mn_status mn__st_lmdb(int rc, const char *what) {
  if (rc == 0)
    return MN_OK;
  if (rc == MDB_MAP_FULL)
    return ST_MAP_FULL;
  if (rc == ENOMEM)
    return mn__set_error(MN_ERR_NOMEM, "out of memory in LMDB (%s)", what);
  if (rc == MDB_VERSION_MISMATCH || rc == MDB_INVALID)
    return mn__set_error(MN_ERR_VERSION, "LMDB %s: %s", what, mdb_strerror(rc));
  return mn__set_error(MN_ERR_IO, "LMDB %s failed: %s", what, mdb_strerror(rc));
}

/* ------------------------------------------------------------------------
 * Little-endian packing.
 * ---------------------------------------------------------------------- */
/* put_<name>(p, v) and get_<name>(p): a T at p, unaligned, in the host's
 * byte order (little-endian on every target). */
#define ST_PACK(name, T)                                                       \
  static void put_##name(uint8_t *p, T v) {                                    \
    memcpy(p, &v, sizeof v);                                                   \
  }                                                                            \
  static T get_##name(const uint8_t *p) {                                      \
    T v;                                                                       \
    memcpy(&v, p, sizeof v);                                                   \
    return v;                                                                  \
  }
ST_PACK(u16, uint16_t)
ST_PACK(u32, uint32_t)
ST_PACK(u64, uint64_t)
ST_PACK(f32, float)
ST_PACK(f64, double)
#undef ST_PACK

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}
static uint32_t get_be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}
static void put_be64(uint8_t *p, uint64_t v) {
  put_be32(p, (uint32_t)(v >> 32));
  put_be32(p + 4, (uint32_t)v);
}
static uint64_t get_be64(const uint8_t *p) {
  return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

void mn__st_key_seq(uint8_t key[12], uint32_t cid, uint64_t seq) {
  put_be32(key, cid);
  put_be64(key + 4, seq);
}

size_t mn__st_key_str(uint8_t *key, uint32_t cid, const char *str, size_t len) {
  put_be32(key, cid);
  if (len)
    memcpy(key + 4, str, len);
  return 4 + len;
}

int mn__st_row_parse(const MDB_val *v, st_vec_hdr *h) {
  const uint8_t *p = v->mv_data;
  if (v->mv_size < ST_ROW_HDR || p[0] != ST_REC_VERSION)
    return -1;
  h->chat_len = get_u16(p + 2);
  h->sig = get_f32(p + 4);
  h->ts = get_f64(p + 8);
  h->norm = get_f32(p + 16);
  h->scale = get_f32(p + 20);
  if (v->mv_size != ST_ROW_HDR + (size_t)h->chat_len)
    return -1;
  h->chat = (const char *)p + ST_ROW_HDR;
  h->codes = NULL;
  return 0;
}

/* ------------------------------------------------------------------------
 * Vector runs.
 * ---------------------------------------------------------------------- */
static size_t run_hdr_size(uint32_t count, int sparse) {
  return ST_RUN_HDR + (sparse ? ((size_t)count * 4 + 15) & ~(size_t)15 : 0);
}

static size_t run_size(uint32_t count, int sparse, int64_t row_bytes) {
  return run_hdr_size(count, sparse) + (size_t)count * (size_t)row_bytes;
}

/* Rows per full run: as many as fit in ST_RUN_TARGET_PAGES overflow pages,
 * then, among the counts down to half of that, the one that wastes the
 * least of its last page (a 3072-byte row: 42 rows in 32 pages leave
 * 2 KiB unused, 41 rows in 31 pages 800 bytes). */
int32_t mn__st_run_rows(unsigned psize, int64_t row_bytes) {
  const size_t ovh = 16 + ST_RUN_HDR; /* LMDB page header, run header */
  size_t room = (size_t)ST_RUN_TARGET_PAGES * psize - ovh;
  if (row_bytes <= 0 || (size_t)row_bytes >= room)
    return 1;
  int64_t max = (int64_t)(room / (size_t)row_bytes);
  if (max > (int64_t)1 << 20)
    max = (int64_t)1 << 20;
  int64_t best = max;
  double best_eff = 0;
  for (int64_t r = max; r >= (max + 1) / 2; r--) {
    size_t bytes = ovh + (size_t)r * (size_t)row_bytes;
    size_t pages = (bytes + psize - 1) / psize;
    double eff =
        (double)((size_t)r * (size_t)row_bytes) / (double)(pages * psize);
    if (eff > best_eff + 1e-9) {
      best_eff = eff;
      best = r;
    }
  }
  return (int32_t)best;
}

static void run_write_hdr(uint8_t *p, uint32_t count, uint32_t span,
                          int sparse) {
  memset(p, 0, run_hdr_size(count, sparse));
  p[0] = ST_RUN_VERSION;
  p[1] = sparse ? ST_RUN_SPARSE : 0;
  put_u32(p + 4, count);
  put_u32(p + 8, span);
}

int mn__st_run_parse(const MDB_val *k, const MDB_val *v, int64_t row_bytes,
                     st_run *r) {
  const uint8_t *p = v->mv_data;
  if (k->mv_size != 12 || v->mv_size < ST_RUN_HDR || p[0] != ST_RUN_VERSION ||
      (p[1] & ~ST_RUN_SPARSE) != 0)
    return -1;
  int sparse = p[1] & ST_RUN_SPARSE;
  r->first = get_be64((const uint8_t *)k->mv_data + 4);
  r->count = get_u32(p + 4);
  r->span = get_u32(p + 8);
  if (r->count == 0 || v->mv_size != run_size(r->count, sparse, row_bytes))
    return -1;
  r->off = sparse ? p + ST_RUN_HDR : NULL;
  r->codes = p + run_hdr_size(r->count, sparse);
  if (sparse ? get_u32(r->off + 4 * (size_t)(r->count - 1)) + 1ull != r->span
             : r->span != r->count)
    return -1;
  return 0;
}

/* The index of `seq` in the run, or -1. */
int64_t mn__st_run_index(const st_run *r, uint64_t seq) {
  if (seq < r->first || seq - r->first >= r->span)
    return -1;
  uint32_t d = (uint32_t)(seq - r->first);
  if (!r->off)
    return d;
  int64_t lo = 0, hi = (int64_t)r->count - 1;
  while (lo <= hi) {
    int64_t m = (lo + hi) / 2;
    uint32_t o = get_u32(r->off + 4 * (size_t)m);
    if (o == d)
      return m;
    if (o < d)
      lo = m + 1;
    else
      hi = m - 1;
  }
  return -1;
}

/* Put the cursor on the run of collection `cid` with the greatest first
 * seq <= seq (the only one that can hold seq) and parse it. Returns
 * MN_ERR_NOT_FOUND (no error set) when there is none; the cursor's
 * position is then unspecified. */
mn_status mn__st_run_seek(MDB_cursor *cur, uint32_t cid, uint64_t seq,
                          int64_t row_bytes, st_run *r) {
  uint8_t kb[12];
  mn__st_key_seq(kb, cid, seq);
  MDB_val k = {12, kb}, v;
  int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  if (rc == 0 && !(k.mv_size == 12 && memcmp(k.mv_data, kb, 12) == 0))
    rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
  else if (rc == MDB_NOTFOUND)
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
  if (rc == MDB_NOTFOUND)
    return MN_ERR_NOT_FOUND;
  if (rc)
    return mn__st_lmdb(rc, "find a vector run");
  if (k.mv_size != 12 || get_be32(k.mv_data) != cid)
    return MN_ERR_NOT_FOUND;
  if (mn__st_run_parse(&k, &v, row_bytes, r) != 0)
    return mn__set_error(MN_ERR_VERSION,
                         "a vector run of collection %u has an unknown "
                         "format or size",
                         cid);
  return MN_OK;
}

/* The codes of one row, or MN_ERR_NOT_FOUND (no error set). */
static mn_status vec_get(mn_store *s, MDB_txn *txn, const st_coll *c,
                         uint64_t seq, const void **codes) {
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi[ST_DBI_VEC], &cur);
  if (rc)
    return mn__st_lmdb(rc, "open cursor");
  st_run r;
  mn_status st = mn__st_run_seek(cur, c->cid, seq, c->row_bytes, &r);
  if (st == MN_OK) {
    int64_t i = mn__st_run_index(&r, seq);
    if (i < 0)
      st = MN_ERR_NOT_FOUND;
    else
      *codes = r.codes + i * c->row_bytes;
  }
  mdb_cursor_close(cur);
  return st;
}

mn_status mn__st_read_row(mn_store *s, MDB_txn *txn, const st_coll *c,
                          uint64_t seq, int want_codes, st_vec_hdr *h) {
  uint8_t key[12];
  mn__st_key_seq(key, c->cid, seq);
  MDB_val k = {12, key}, v;
  int rc = mdb_get(txn, s->dbi[ST_DBI_ROWS], &k, &v);
  if (rc == MDB_NOTFOUND)
    return MN_ERR_NOT_FOUND;
  if (rc)
    return mn__st_lmdb(rc, "read a row");
  if (mn__st_row_parse(&v, h) != 0)
    return mn__set_error(MN_ERR_VERSION,
                         "row %llu of '%s' has an unknown record format",
                         (unsigned long long)seq, c->name);
  if (!want_codes)
    return MN_OK;
  return vec_get(s, txn, c, seq, &h->codes);
}

static size_t row_size(uint32_t chat_len) {
  return ST_ROW_HDR + (size_t)chat_len;
}

static void row_write(uint8_t *p, const st_add_row *r) {
  p[0] = ST_REC_VERSION;
  p[1] = 0;
  put_u16(p + 2, (uint16_t)r->chat_len);
  put_f32(p + 4, r->sig);
  put_f64(p + 8, r->ts);
  put_f32(p + 16, r->norm);
  put_f32(p + 20, r->scale);
  memcpy(p + ST_ROW_HDR, r->chat, r->chat_len);
}

int mn__st_rec_parse(const MDB_val *v, const char **id, uint32_t *id_len,
                     const char **content, uint32_t *content_len,
                     const char **meta, uint32_t *meta_len) {
  const uint8_t *p = v->mv_data;
  if (v->mv_size < ST_REC_HDR || p[0] != ST_REC_VERSION)
    return -1;
  *id_len = get_u16(p + 2);
  *content_len = get_u32(p + 4);
  *meta_len = get_u32(p + 8);
  if (v->mv_size != (size_t)ST_REC_HDR + *id_len + *content_len + *meta_len)
    return -1;
  *id = (const char *)p + ST_REC_HDR;
  *content = *id + *id_len;
  *meta = *content + *content_len;
  return 0;
}

static size_t rec_size(uint32_t id_len, uint32_t content_len,
                       uint32_t meta_len) {
  return ST_REC_HDR + (size_t)id_len + content_len + meta_len;
}

static void rec_write(uint8_t *p, const char *id, uint32_t id_len,
                      const char *content, uint32_t content_len,
                      const char *meta, uint32_t meta_len) {
  p[0] = ST_REC_VERSION;
  p[1] = 0;
  put_u16(p + 2, (uint16_t)id_len);
  put_u32(p + 4, content_len);
  put_u32(p + 8, meta_len);
  memcpy(p + ST_REC_HDR, id, id_len);
  if (content_len)
    memcpy(p + ST_REC_HDR + id_len, content, content_len);
  if (meta_len)
    memcpy(p + ST_REC_HDR + id_len + content_len, meta, meta_len);
}

#define COLL_REC_FIXED 48

static size_t coll_rec(const st_coll *c, uint64_t next_seq, uint8_t *p) {
  size_t pl = strlen(c->pca_name);
  if (!p)
    return COLL_REC_FIXED + pl;
  memset(p, 0, COLL_REC_FIXED);
  p[0] = ST_REC_VERSION;
  p[1] = (uint8_t)c->metric;
  p[2] = (uint8_t)c->dtype;
  p[3] = (uint8_t)c->normalize;
  put_u32(p + 4, c->cid);
  put_u64(p + 8, (uint64_t)c->dim);
  put_u64(p + 16, (uint64_t)c->width);
  put_f64(p + 24, c->created);
  put_u64(p + 32, next_seq);
  put_u16(p + 40, (uint16_t)pl);
  memcpy(p + COLL_REC_FIXED, c->pca_name, pl);
  return COLL_REC_FIXED + pl;
}

static mn_status put_coll(MDB_txn *txn, mn_store *s, const st_coll *c,
                          uint64_t next_seq) {
  uint8_t buf[COLL_REC_FIXED + MN_MEMORY_ID_MAX + 1];
  MDB_val k = {strlen(c->name), (void *)c->name};
  MDB_val v = {coll_rec(c, next_seq, buf), buf};
  return mn__st_lmdb(mdb_put(txn, s->dbi[ST_DBI_COLL], &k, &v, 0),
                     "put collection");
}

/* PCA model blob: i64 input_dim, i64 k, i64 n_samples, f64 total, then
 * mean, components, explained_variance, explained_variance_ratio. */
static size_t pca_blob_size(const mn_pca_model *m) {
  return 32 + sizeof(float) *
                  (size_t)(m->input_dim + m->n_components * m->input_dim +
                           2 * m->n_components);
}

static void pca_blob_write(const mn_pca_model *m, uint8_t *p) {
  put_u64(p, (uint64_t)m->input_dim);
  put_u64(p + 8, (uint64_t)m->n_components);
  put_u64(p + 16, (uint64_t)m->n_samples);
  put_f64(p + 24, m->total_variance);
  p += 32;
  size_t d = (size_t)m->input_dim, k = (size_t)m->n_components;
  memcpy(p, m->mean, d * 4);
  p += d * 4;
  memcpy(p, m->components, d * k * 4);
  p += d * k * 4;
  memcpy(p, m->explained_variance, k * 4);
  p += k * 4;
  memcpy(p, m->explained_variance_ratio, k * 4);
}

static mn_status pca_blob_read(const MDB_val *v, mn_pca_model **out) {
  const uint8_t *p = v->mv_data;
  if (v->mv_size < 32)
    return mn__set_error(MN_ERR_IO, "stored PCA model is truncated");
  int64_t d = (int64_t)get_u64(p), k = (int64_t)get_u64(p + 8);
  mn_pca_model *m = NULL;
  MN__TRY(mn_pca_alloc(d, k, &m));
  if (v->mv_size != pca_blob_size(m)) {
    mn_pca_free(m);
    return mn__set_error(MN_ERR_IO, "stored PCA model has a bad size");
  }
  m->n_samples = (int64_t)get_u64(p + 16);
  m->total_variance = get_f64(p + 24);
  p += 32;
  memcpy(m->mean, p, (size_t)d * 4);
  p += d * 4;
  memcpy(m->components, p, (size_t)(d * k) * 4);
  p += d * k * 4;
  memcpy(m->explained_variance, p, (size_t)k * 4);
  p += k * 4;
  memcpy(m->explained_variance_ratio, p, (size_t)k * 4);
  *out = m;
  return MN_OK;
}

/* ------------------------------------------------------------------------
 * Environment.
 * ---------------------------------------------------------------------- */
static mn_status mkdir_p(const char *path) {
  char tmp[1100];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *p = tmp + 1; *p; p++) {
    if (*p == '/') {
      *p = '\0';
      if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        return mn__set_error(MN_ERR_IO, "cannot create directory %s: %s", tmp,
                             strerror(errno));
      *p = '/';
    }
  }
  if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
    return mn__set_error(MN_ERR_IO, "cannot create directory %s: %s", tmp,
                         strerror(errno));
  return MN_OK;
}

mn_status mn__st_read_begin(mn_store *s, MDB_txn **txn) {
  pthread_rwlock_rdlock(&s->env_lock);
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn);
  if (rc) {
    pthread_rwlock_unlock(&s->env_lock);
    return mn__st_lmdb(rc, "begin read transaction");
  }
  return MN_OK;
}

void mn__st_read_end(mn_store *s, MDB_txn *txn) {
  if (txn)
    mdb_txn_abort(txn);
  pthread_rwlock_unlock(&s->env_lock);
}

/* Pages in use by every database, the free list and the two meta pages. */
static uint64_t disk_in_use(mn_store *s, MDB_txn *txn) {
  uint64_t pages = 2;
  MDB_stat st;
  for (int i = 0; i < ST_DBI_COUNT; i++)
    if (mdb_stat(txn, s->dbi[i], &st) == 0)
      pages += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
  if (mdb_stat(txn, 0, &st) == 0) /* FREE_DBI */
    pages += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
  if (mdb_stat(txn, 1, &st) == 0) /* MAIN_DBI: names of the databases */
    pages += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
  return pages * s->psize;
}

static mn_status grow_map(mn_store *s, uint64_t at_least) {
  pthread_rwlock_wrlock(&s->env_lock);
  uint64_t want = s->map_size * 2;
  while (want < at_least)
    want *= 2;
  int rc = mdb_env_set_mapsize(s->env, (size_t)want);
  if (rc == 0) {
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    s->map_size = info.me_mapsize;
    s->map_grows++;
  }
  pthread_rwlock_unlock(&s->env_lock);
  if (rc)
    return mn__st_lmdb(rc, "grow the map");
  MN__LOGI(ST_MOD, "LMDB map grown to %llu bytes",
           (unsigned long long)s->map_size);
  return MN_OK;
}

static mn_status open_dbis(mn_store *s, uint32_t *old_format) {
  MDB_txn *txn;
  *old_format = 0;
  int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc)
    return mn__st_lmdb(rc, "begin");
  for (int i = 0; i < ST_DBI_COUNT && !rc; i++)
    rc = mdb_dbi_open(txn, dbi_names[i], MDB_CREATE, &s->dbi[i]);
  MDB_val k = {6, "format"}, v;
  if (!rc) {
    rc = mdb_get(txn, s->dbi[ST_DBI_META], &k, &v);
    if (rc == MDB_NOTFOUND) {
      uint8_t b[4];
      put_u32(b, ST_FORMAT_VERSION);
      v.mv_size = 4;
      v.mv_data = b;
      rc = mdb_put(txn, s->dbi[ST_DBI_META], &k, &v, 0);
    } else if (rc == 0) {
      uint32_t fmt = v.mv_size == 4 ? get_u32(v.mv_data) : 0;
      if (fmt == 1) {
        *old_format = fmt; /* converted by the caller */
      } else if (fmt != ST_FORMAT_VERSION) {
        mdb_txn_abort(txn);
        return mn__set_error(MN_ERR_VERSION,
                             "the store at %s has format version %u; this "
                             "build reads versions 1 (converted at open) "
                             "and %u",
                             s->path, fmt, ST_FORMAT_VERSION);
      }
    }
  }
  if (!rc) {
    MDB_val nk = {8, "next_cid"};
    s->next_cid = 1;
    if (mdb_get(txn, s->dbi[ST_DBI_META], &nk, &v) == 0 && v.mv_size == 4)
      s->next_cid = get_u32(v.mv_data);
    s->disk_used = disk_in_use(s, txn);
    rc = mdb_txn_commit(txn);
  } else {
    mdb_txn_abort(txn);
  }
  return mn__st_lmdb(rc, "open the databases");
}

/* ------------------------------------------------------------------------
 * Converting a format 1 store: one vector record per row (u8 1, 7 bytes
 * 0, codes) becomes runs. A bounded amount is converted per write
 * transaction; each transaction leaves every row's vector in exactly one
 * place (its old record, first byte 1, or a run, first byte
 * ST_RUN_VERSION), so a conversion cut short by a crash resumes at the
 * next open. The format number changes in the last transaction.
 * ---------------------------------------------------------------------- */
#define ST_CONVERT_TXN_BYTES (64u << 20)

static mn_status convert_step(mn_store *s, uint8_t resume[12], int *done,
                              uint64_t *converted) {
  MDB_txn *txn;
  MDB_cursor *cur = NULL;
  int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc)
    return mn__st_lmdb(rc, "begin the format conversion");
  rc = mdb_cursor_open(txn, s->dbi[ST_DBI_VEC], &cur);
  mn_status st = mn__st_lmdb(rc, "open cursor");
  uint8_t *buf = NULL;
  uint32_t *offs = NULL;
  uint64_t bytes = 0, n_rows = 0;
  MDB_val k = {12, resume}, v;
  if (st == MN_OK)
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  while (st == MN_OK && rc == 0 && bytes < ST_CONVERT_TXN_BYTES) {
    const uint8_t *p = v.mv_data;
    if (k.mv_size == 12 && v.mv_size >= 1 && p[0] == ST_RUN_VERSION) {
      rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT); /* converted already */
      continue;
    }
    if (k.mv_size != 12 || v.mv_size <= ST_VEC_HDR || p[0] != 1) {
      st = mn__set_error(MN_ERR_VERSION,
                         "the store at %s has a vector record of unknown "
                         "format; cannot convert it to format %u",
                         s->path, ST_FORMAT_VERSION);
      break;
    }
    /* Up to run_rows records of this collection, in key order. */
    uint32_t cid = get_be32(k.mv_data);
    int64_t rb = (int64_t)(v.mv_size - ST_VEC_HDR);
    int32_t max = mn__st_run_rows(s->psize, rb);
    uint64_t first = get_be64((const uint8_t *)k.mv_data + 4), last = first;
    uint8_t *nb = realloc(buf, ST_RUN_HDR + (size_t)max * 4 + 16 +
                                   (size_t)max * (size_t)rb);
    uint32_t *no = realloc(offs, sizeof *offs * (size_t)max);
    if (nb)
      buf = nb;
    if (no)
      offs = no;
    if (!nb || !no) {
      st = mn__set_error(MN_ERR_NOMEM, "out of memory converting the store");
      break;
    }
    uint8_t *codes = buf + ST_RUN_HDR + (size_t)max * 4 + 16;
    uint32_t cnt = 0;
    while (rc == 0 && cnt < (uint32_t)max) {
      p = v.mv_data;
      if (k.mv_size != 12 || get_be32(k.mv_data) != cid || p[0] != 1 ||
          v.mv_size != ST_VEC_HDR + (size_t)rb)
        break;
      uint64_t seq = get_be64((const uint8_t *)k.mv_data + 4);
      if (seq - first > UINT32_MAX - 1)
        break;
      offs[cnt] = (uint32_t)(seq - first);
      memcpy(codes + (size_t)cnt * (size_t)rb, p + ST_VEC_HDR, (size_t)rb);
      cnt++;
      last = seq;
      if ((rc = mdb_cursor_del(cur, 0)) != 0)
        break;
      rc = mdb_cursor_get(cur, &k, &v, MDB_GET_CURRENT);
    }
    if (rc && rc != MDB_NOTFOUND && rc != EINVAL) {
      st = mn__st_lmdb(rc, "convert vector records");
      break;
    }
    int sparse = last - first + 1 != cnt;
    size_t hs = run_hdr_size(cnt, sparse);
    uint8_t *val = codes - hs;
    run_write_hdr(val, cnt, (uint32_t)(last - first + 1), sparse);
    for (uint32_t i = 0; sparse && i < cnt; i++)
      put_u32(val + ST_RUN_HDR + 4 * (size_t)i, offs[i]);
    uint8_t kb[12];
    mn__st_key_seq(kb, cid, first);
    MDB_val rk = {12, kb}, rv = {hs + (size_t)cnt * (size_t)rb, val};
    st = mn__st_lmdb(mdb_put(txn, s->dbi[ST_DBI_VEC], &rk, &rv, 0),
                     "write a vector run");
    bytes += rv.mv_size;
    n_rows += cnt;
    /* On after the run just written. */
    mn__st_key_seq(kb, cid, last + 1);
    memcpy(resume, kb, 12);
    k.mv_size = 12;
    k.mv_data = resume;
    if (st == MN_OK)
      rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  }
  if (st == MN_OK && rc && rc != MDB_NOTFOUND)
    st = mn__st_lmdb(rc, "convert vector records");
  *done = st == MN_OK && rc == MDB_NOTFOUND;
  if (st == MN_OK && !*done)
    memmove(resume, k.mv_data, 12);
  if (st == MN_OK && *done) {
    uint8_t b[4];
    put_u32(b, ST_FORMAT_VERSION);
    MDB_val fk = {6, "format"}, fv = {4, b};
    st = mn__st_lmdb(mdb_put(txn, s->dbi[ST_DBI_META], &fk, &fv, 0),
                     "write the format version");
  }
  if (cur)
    mdb_cursor_close(cur);
  free(buf);
  free(offs);
  if (st == MN_OK) {
    st = mn__st_lmdb(mdb_txn_commit(txn), "commit the format conversion");
    if (st == MN_OK)
      *converted += n_rows;
  } else {
    mdb_txn_abort(txn);
  }
  return st;
}

static mn_status migrate_v1(mn_store *s) {
  MN__LOGI(ST_MOD,
           "converting the store at %s from format 1 (one vector record per "
           "row) to format %u (vector runs)",
           s->path, ST_FORMAT_VERSION);
  uint8_t resume[12] = {0}, at[12];
  uint64_t rows = 0;
  for (int done = 0; !done;) {
    memcpy(at, resume, 12);
    mn_status st = convert_step(s, resume, &done, &rows);
    if (st == ST_MAP_FULL) {
      memcpy(resume, at, 12); /* the step was undone: again, bigger */
      done = 0;
      MN__TRY(grow_map(s, 0));
      continue;
    }
    if (st != MN_OK) {
      char why[512];
      snprintf(why, sizeof why, "%s", mn_errmsg());
      return mn__set_error(st,
                           "converting the store at %s to format %u failed "
                           "(it stays in format 1; the conversion goes on "
                           "at the next open): %s",
                           s->path, ST_FORMAT_VERSION, why);
    }
  }
  MN__LOGI(ST_MOD, "store at %s converted: %llu vectors now in runs", s->path,
           (unsigned long long)rows);
  return MN_OK;
}

mn_status mn__st_db_open(mn_store *s) {
  snprintf(s->path, sizeof s->path, "%s/store", s->data_dir);
  MN__TRY(mkdir_p(s->path));
  int rc = mdb_env_create(&s->env);
  if (rc)
    return mn__st_lmdb(rc, "create environment");
  mdb_env_set_maxdbs(s->env, ST_DBI_COUNT + 2);
  mdb_env_set_maxreaders(s->env, 512);
  uint64_t map = s->opts.map_size ? s->opts.map_size : ST_DEFAULT_MAP_SIZE;
  mdb_env_set_mapsize(s->env, (size_t)map);
  unsigned flags = MDB_NOTLS;
  if (!s->opts.durable)
    flags |= MDB_NOSYNC;
  rc = mdb_env_open(s->env, s->path, flags, 0644);
  if (rc) {
    mdb_env_close(s->env);
    s->env = NULL;
    return mn__set_error(
        rc == MDB_VERSION_MISMATCH || rc == MDB_INVALID ? MN_ERR_VERSION
                                                        : MN_ERR_IO,
        "cannot open the store at %s: %s", s->path, mdb_strerror(rc));
  }
  int dead = 0;
  mdb_reader_check(s->env, &dead);
  s->stale_readers = dead;
  if (dead)
    MN__LOGW(ST_MOD, "cleared %d stale LMDB reader slot(s)", dead);
  MDB_envinfo info;
  mdb_env_info(s->env, &info);
  s->map_size = info.me_mapsize;
  MDB_stat est;
  mdb_env_stat(s->env, &est);
  s->psize = est.ms_psize;
  mn_status st;
  uint32_t old = 0;
  while ((st = open_dbis(s, &old)) == ST_MAP_FULL)
    MN__TRY(grow_map(s, 0));
  if (st == MN_OK && old == 1) {
    MN__TRY(migrate_v1(s));
    while ((st = open_dbis(s, &old)) == ST_MAP_FULL)
      MN__TRY(grow_map(s, 0));
  }
  return st;
}

void mn__st_db_close(mn_store *s) {
  if (s->env)
    mdb_env_close(s->env);
  s->env = NULL;
}

/* ------------------------------------------------------------------------
 * Rebuild at open.
 * ---------------------------------------------------------------------- */
static st_coll *coll_by_cid(mn_store *s, uint32_t cid) {
  for (int64_t i = 0; i < s->n_colls; i++)
    if (s->colls[i]->cid == cid)
      return s->colls[i];
  return NULL;
}

static mn_status load_colls(mn_store *s, MDB_txn *txn) {
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi[ST_DBI_COLL], &cur);
  if (rc)
    return mn__st_lmdb(rc, "open cursor");
  MDB_val k, v;
  mn_status st = MN_OK;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && st == MN_OK;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    const uint8_t *p = v.mv_data;
    if (v.mv_size < COLL_REC_FIXED || p[0] != ST_REC_VERSION ||
        k.mv_size > MN_COLLECTION_NAME_MAX) {
      st = mn__set_error(MN_ERR_VERSION,
                         "collection record %.*s has an unknown format",
                         (int)MN__MIN(k.mv_size, 64), (char *)k.mv_data);
      break;
    }
    st_coll *c = mn__st_coll_new(s);
    if (!c) {
      st = MN_ERR_NOMEM;
      break;
    }
    memcpy(c->name, k.mv_data, k.mv_size);
    c->name[k.mv_size] = '\0';
    c->metric = (mn_metric)p[1];
    c->dtype = (mn_dtype)p[2];
    c->normalize = p[3];
    c->cid = get_u32(p + 4);
    c->dim = (int64_t)get_u64(p + 8);
    c->width = (int64_t)get_u64(p + 16);
    c->created = get_f64(p + 24);
    c->next_seq = get_u64(p + 32);
    uint16_t pl = get_u16(p + 40);
    if (pl > MN_MEMORY_ID_MAX || v.mv_size != COLL_REC_FIXED + (size_t)pl) {
      mn__st_coll_free(c);
      st = mn__set_error(MN_ERR_VERSION, "collection record %s is damaged",
                         c->name);
      break;
    }
    memcpy(c->pca_name, p + COLL_REC_FIXED, pl);
    c->pca_name[pl] = '\0';
    c->row_bytes = (int64_t)mn_dtype_row_bytes(c->dtype, c->width);
    c->run_rows = mn__st_run_rows(s->psize, c->row_bytes);
    if (pl) {
      uint8_t kb[8];
      memcpy(kb, "pca:", 4);
      put_be32(kb + 4, c->cid);
      MDB_val pk = {8, kb}, pv;
      rc = mdb_get(txn, s->dbi[ST_DBI_META], &pk, &pv);
      if (rc == 0)
        st = pca_blob_read(&pv, &c->pca);
      else
        st = mn__set_error(MN_ERR_IO,
                           "the PCA model of collection %s is "
                           "missing from the store",
                           c->name);
      if (st != MN_OK) {
        mn__st_coll_free(c);
        break;
      }
    }
    c->pending_seq = c->committed_seq = c->next_seq;
    if (s->n_colls == s->cap_colls) {
      int64_t nc = s->cap_colls ? 2 * s->cap_colls : 8;
      st_coll **a = realloc(s->colls, sizeof *a * (size_t)nc);
      if (!a) {
        mn__st_coll_free(c);
        st = MN_ERR_NOMEM;
        break;
      }
      s->colls = a;
      s->cap_colls = nc;
    }
    s->colls[s->n_colls++] = c;
  }
  mdb_cursor_close(cur);
  if (st == MN_OK && rc != MDB_NOTFOUND)
    st = mn__st_lmdb(rc, "scan collections");
  return st;
}

static mn_status load_chats(mn_store *s, MDB_txn *txn) {
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi[ST_DBI_CHATS], &cur);
  if (rc)
    return mn__st_lmdb(rc, "open cursor");
  MDB_val k, v;
  mn_status st = MN_OK;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size < 4)
      continue;
    st_coll *c = coll_by_cid(s, get_be32(k.mv_data));
    const uint8_t *p = v.mv_data;
    if (!c)
      continue;
    if (v.mv_size < 24 || p[0] != ST_REC_VERSION ||
        get_u32(p + 4) != (uint32_t)c->width ||
        v.mv_size != 24 + 4 * (size_t)c->width) {
      st = mn__set_error(MN_ERR_VERSION,
                         "a chat record of collection %s "
                         "has an unknown format",
                         c->name);
      break;
    }
    st_chat *ch = mn__st_chat_get(c, (const char *)k.mv_data + 4,
                                  (uint32_t)(k.mv_size - 4), 1);
    if (!ch) {
      st = MN_ERR_NOMEM;
      break;
    }
    ch->n = get_u64(p + 8);
    ch->mean_norm = get_f64(p + 16);
    memcpy(ch->momentum, p + 24, 4 * (size_t)c->width);
  }
  mdb_cursor_close(cur);
  if (st == MN_OK && rc != MDB_NOTFOUND)
    st = mn__st_lmdb(rc, "scan chats");
  return st;
}

/* The row records of every collection, in key order, become the chunks'
 * bookkeeping. Chunks start on disk (L3); the loader thread brings their
 * vectors up afterwards, so open reads a few dozen bytes per memory. */
static mn_status load_rows(mn_store *s, MDB_txn *txn) {
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi[ST_DBI_ROWS], &cur);
  if (rc)
    return mn__st_lmdb(rc, "open cursor");
  MDB_val k, v;
  mn_status st = MN_OK;
  st_coll *c = NULL;
  st_chunk *ch = NULL;
  uint32_t skip_cid = 0;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != 12)
      continue;
    uint32_t cid = get_be32(k.mv_data);
    uint64_t seq = get_be64((const uint8_t *)k.mv_data + 4);
    if (!c || c->cid != cid) {
      if (ch) {
        mn__st_chunk_place_disk(s, ch);
        mn__st_chunk_link(c, ch);
      }
      ch = NULL;
      c = coll_by_cid(s, cid);
      if (!c) {
        if (cid != skip_cid)
          MN__LOGW(ST_MOD, "rows of unknown collection %u skipped", cid);
        skip_cid = cid;
        continue;
      }
    }
    st_vec_hdr h;
    if (mn__st_row_parse(&v, &h) != 0) {
      st = mn__set_error(MN_ERR_VERSION,
                         "row record %llu of collection %s has an unknown "
                         "format or size",
                         (unsigned long long)seq, c->name);
      break;
    }
    if (!ch || ch->n == ch->cap) {
      if (ch) {
        mn__st_chunk_place_disk(s, ch);
        mn__st_chunk_link(c, ch);
      }
      ch = mn__st_chunk_new(c);
      if (!ch) {
        st =
            mn__set_error(MN_ERR_NOMEM, "out of memory rebuilding %s", c->name);
        break;
      }
    }
    st_chat *chat = mn__st_chat_get(c, h.chat, h.chat_len, 1);
    if (!chat) {
      st = mn__set_error(MN_ERR_NOMEM, "out of memory rebuilding %s", c->name);
      break;
    }
    int32_t r = ch->n++;
    ch->seq[r] = seq;
    ch->ts[r] = h.ts;
    ch->sig[r] = h.sig;
    ch->norm[r] = h.norm;
    if (ch->scale)
      ch->scale[r] = h.scale;
    ch->chat[r] = chat->idx;
    ch->live_bits[r >> 6] |= 1ull << (r & 63);
    ch->live++;
    c->count++;
    if (seq >= c->next_seq)
      c->next_seq = seq + 1;
  }
  if (ch) {
    if (st == MN_OK) {
      mn__st_chunk_place_disk(s, ch);
      mn__st_chunk_link(ch->coll, ch);
    } else {
      mn__st_chunk_free(s, ch);
    }
  }
  mdb_cursor_close(cur);
  if (st == MN_OK && rc != MDB_NOTFOUND)
    st = mn__st_lmdb(rc, "scan rows");
  for (int64_t i = 0; i < s->n_colls; i++)
    s->colls[i]->pending_seq = s->colls[i]->committed_seq =
        s->colls[i]->next_seq;
  return st;
}

mn_status mn__st_load(mn_store *s) {
  MDB_txn *txn;
  MN__TRY(mn__st_read_begin(s, &txn));
  mn_status st = load_colls(s, txn);
  if (st == MN_OK)
    st = load_chats(s, txn);
  if (st == MN_OK)
    st = load_rows(s, txn);
  mn__st_read_end(s, txn);
  return st;
}

/* ------------------------------------------------------------------------
 * Applying operations inside the writer's transaction.
 * ---------------------------------------------------------------------- */
#define PUT(which, kp, kl, vp, vl, what)                                       \
  do {                                                                         \
    MDB_val k_ = {(kl), (void *)(kp)}, v_ = {(vl), (void *)(vp)};              \
    mn_status s_ =                                                             \
        mn__st_lmdb(mdb_put(txn, s->dbi[which], &k_, &v_, 0), what);           \
    if (s_ != MN_OK)                                                           \
      return s_;                                                               \
  } while (0)

/* Bytes an op will add to the database, for the disk budget: overflow
 * pages for large values, the value plus node overhead otherwise. */
static uint64_t value_cost(mn_store *s, size_t key, size_t val) {
  size_t node = 8 + key + val;
  if (node > s->psize / 2 - 16)
    return ((val + 16 + s->psize - 1) / s->psize) * s->psize + 8 + key + 8;
  return node + 2;
}

static mn_status check_disk(mn_store *s, uint64_t group_bytes, uint64_t est,
                            st_op *op) {
  uint64_t budget = s->budget[MN_TIER_DISK];
  if (!budget)
    return MN_OK;
  uint64_t used = s->disk_used + group_bytes;
  /* B-tree pages are rarely full: count a third more than the payload. */
  uint64_t need = est + est / 3;
  if (used + need > budget) {
    uint64_t avail = used < budget ? budget - used : 0;
    op->res_req = need;
    op->res_avail = avail;
    return mn__set_error(MN_ERR_RESOURCE,
                         "disk budget exceeded: this write needs about %llu "
                         "bytes, %llu of storage.disk_limit %llu remain",
                         (unsigned long long)need, (unsigned long long)avail,
                         (unsigned long long)budget);
  }
  op->est_bytes = need;
  return MN_OK;
}

/* Reserve room for k's value at the cursor: appended while *append
 * holds (keys in order, the cheap case), and, at the first key out of
 * order, put the ordinary way with *append off for the rest. */
static int reserve_put(MDB_cursor *cur, MDB_val *k, MDB_val *v, int *append) {
  int rc = mdb_cursor_put(cur, k, v, MDB_RESERVE | (*append ? MDB_APPEND : 0));
  if (rc == MDB_KEYEXIST && *append) {
    *append = 0;
    v->mv_data = NULL;
    rc = mdb_cursor_put(cur, k, v, MDB_RESERVE);
  }
  return rc;
}

/* MN_ERR_NOT_FOUND for an op on a collection dropped meanwhile. */
static mn_status check_live(const st_coll *c) {
  if (c->dropping || c->dead)
    return mn__set_error(MN_ERR_NOT_FOUND, "collection '%s' was dropped",
                         c->name);
  return MN_OK;
}

static mn_status apply_add(mn_store *s, MDB_txn *txn, st_op *op,
                           uint64_t group_bytes) {
  st_coll *c = op->coll;
  MN__TRY(check_live(c));
  int64_t n = op->u.add.n;
  st_add_row *rows = op->u.add.rows;
  uint8_t key[4 + MN_MEMORY_ID_MAX];
  uint64_t est = 0;
  for (int64_t i = 0; i < n; i++) {
    st_add_row *r = &rows[i];
    if (r->id_len) {
      size_t kl = mn__st_key_str(key, c->cid, r->id, r->id_len);
      MDB_val k = {kl, key}, v;
      int rc = mdb_get(txn, s->dbi[ST_DBI_IDS], &k, &v);
      if (rc == 0)
        return mn__set_error(MN_ERR_EXISTS,
                             "memory id '%s' (index %lld) already exists in "
                             "collection '%s'",
                             r->id, (long long)i, c->name);
      if (rc != MDB_NOTFOUND)
        return mn__st_lmdb(rc, "look up an id");
    }
    est += value_cost(s, 12, row_size(r->chat_len)) +
           value_cost(s, 12,
                      rec_size(r->id_len ? r->id_len : 22, r->content_len,
                               r->metadata_len)) +
           value_cost(s, 4 + (r->id_len ? r->id_len : 22), 8);
  }
  /* The vector runs: full ones and the rest. */
  int64_t full = n / c->run_rows, tail = n % c->run_rows;
  est += (uint64_t)full *
         value_cost(s, 12, run_size((uint32_t)c->run_rows, 0, c->row_bytes));
  if (tail)
    est += value_cost(s, 12, run_size((uint32_t)tail, 0, c->row_bytes));
  MN__TRY(check_disk(s, group_bytes, est, op));
  /* Server-assigned ids: time-ordered, checked against the index. */
  for (int64_t i = 0; i < n; i++) {
    st_add_row *r = &rows[i];
    if (r->id_len)
      continue;
    for (;;) {
      mn__st_gen_id(s, r->id);
      r->id_len = (uint32_t)strlen(r->id);
      r->id_assigned = 1;
      size_t kl = mn__st_key_str(key, c->cid, r->id, r->id_len);
      MDB_val k = {kl, key}, v;
      int rc = mdb_get(txn, s->dbi[ST_DBI_IDS], &k, &v);
      if (rc == MDB_NOTFOUND)
        break;
      if (rc)
        return mn__st_lmdb(rc, "look up an id");
    }
  }
  /* Significance: in order, each row seeing the chat state left by the
   * rows before it. */
  for (int64_t i = 0; i < n; i++) {
    st_add_row *r = &rows[i];
    st_chat *ch = mn__st_chat_get(c, r->chat, r->chat_len, 1);
    if (!ch)
      return mn__set_error(MN_ERR_NOMEM, "out of memory for a chat");
    r->chat_idx = ch->idx;
    MN__TRY(mn__st_sig_row(s, c, txn, ch, op->u.add.x + i * c->width,
                           r->raw_norm, r->has_sig, &r->sig));
  }
  /* Rows go in key order through cursors. Keys of the newest collection
   * are always past the end of rows, vec and rec, where MDB_APPEND saves
   * the search and fills pages completely; anywhere else the cursor falls
   * back to an ordinary insert. Values are written in place
   * (MDB_RESERVE). The vectors go last, in runs of up to run_rows rows. */
  MDB_cursor *cw = NULL, *cv = NULL, *cr = NULL, *ci = NULL;
  int rc = mdb_cursor_open(txn, s->dbi[ST_DBI_ROWS], &cw);
  if (!rc)
    rc = mdb_cursor_open(txn, s->dbi[ST_DBI_VEC], &cv);
  if (!rc)
    rc = mdb_cursor_open(txn, s->dbi[ST_DBI_REC], &cr);
  if (!rc)
    rc = mdb_cursor_open(txn, s->dbi[ST_DBI_IDS], &ci);
  mn_status st = mn__st_lmdb(rc, "open cursor");
  int append = 1, id_append = 1;
  for (int64_t i = 0; i < n && st == MN_OK; i++) {
    st_add_row *r = &rows[i];
    r->seq = c->pending_seq++;
    uint8_t sk[12];
    mn__st_key_seq(sk, c->cid, r->seq);
    MDB_val k = {12, sk}, w = {row_size(r->chat_len), NULL};
    rc = reserve_put(cw, &k, &w, &append);
    if ((st = mn__st_lmdb(rc, "put row")) != MN_OK)
      break;
    row_write(w.mv_data, r);
    MDB_val rv = {rec_size(r->id_len, r->content_len, r->metadata_len), NULL};
    rc = reserve_put(cr, &k, &rv, &append);
    if ((st = mn__st_lmdb(rc, "put record")) != MN_OK)
      break;
    rec_write(rv.mv_data, r->id, r->id_len, r->content, r->content_len,
              r->metadata ? r->metadata : "{}", r->metadata_len);
    /* Assigned ids are time-ordered, so they too mostly append. */
    size_t kl = mn__st_key_str(key, c->cid, r->id, r->id_len);
    uint8_t sv[8];
    put_u64(sv, r->seq);
    MDB_val ik = {kl, key}, iv = {8, sv};
    rc = mdb_cursor_put(ci, &ik, &iv, id_append ? MDB_APPEND : 0);
    if (rc == MDB_KEYEXIST && id_append) {
      id_append = 0;
      rc = mdb_cursor_put(ci, &ik, &iv, MDB_NOOVERWRITE);
    }
    st = mn__st_lmdb(rc, "put id");
  }
  int vappend = 1;
  for (int64_t i = 0; i < n && st == MN_OK; i += c->run_rows) {
    uint32_t cnt = (uint32_t)MN__MIN((int64_t)c->run_rows, n - i);
    uint8_t sk[12];
    mn__st_key_seq(sk, c->cid, rows[i].seq);
    MDB_val k = {12, sk}, v = {run_size(cnt, 0, c->row_bytes), NULL};
    rc = reserve_put(cv, &k, &v, &vappend);
    if ((st = mn__st_lmdb(rc, "put vectors")) != MN_OK)
      break;
    run_write_hdr(v.mv_data, cnt, cnt, 0);
    memcpy((uint8_t *)v.mv_data + ST_RUN_HDR,
           (const char *)op->u.add.codes + i * c->row_bytes,
           (size_t)cnt * (size_t)c->row_bytes);
  }
  if (cw)
    mdb_cursor_close(cw);
  if (cv)
    mdb_cursor_close(cv);
  if (cr)
    mdb_cursor_close(cr);
  if (ci)
    mdb_cursor_close(ci);
  if (st == MN_OK)
    st = put_coll(txn, s, c, c->pending_seq);
  return st;
}

mn_status mn__st_find_seq(mn_store *s, MDB_txn *txn, const st_coll *c,
                          const char *id, uint64_t *seq) {
  uint8_t key[4 + MN_MEMORY_ID_MAX];
  size_t kl = mn__st_key_str(key, c->cid, id, strlen(id));
  MDB_val k = {kl, key}, v;
  int rc = mdb_get(txn, s->dbi[ST_DBI_IDS], &k, &v);
  if (rc == MDB_NOTFOUND)
    return MN_ERR_NOT_FOUND;
  if (rc)
    return mn__st_lmdb(rc, "look up an id");
  if (v.mv_size != 8)
    return mn__set_error(MN_ERR_IO, "id index entry for '%s' is damaged", id);
  *seq = get_u64(v.mv_data);
  return MN_OK;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* The live rows of a run: the seqs in [first, first + span) that still
 * have a row record (runs of a collection never overlap). */
static mn_status run_live(mn_store *s, MDB_txn *txn, uint32_t cid,
                          const st_run *r, uint64_t *live, uint32_t *n) {
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi[ST_DBI_ROWS], &cur);
  if (rc)
    return mn__st_lmdb(rc, "open cursor");
  uint8_t kb[12];
  mn__st_key_seq(kb, cid, r->first);
  MDB_val k = {12, kb}, v;
  *n = 0;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != 12 || get_be32(k.mv_data) != cid)
      break;
    uint64_t seq = get_be64((const uint8_t *)k.mv_data + 4);
    if (seq - r->first >= r->span)
      break;
    if (mn__st_run_index(r, seq) >= 0 && *n < r->count)
      live[(*n)++] = seq;
  }
  mdb_cursor_close(cur);
  if (rc && rc != MDB_NOTFOUND)
    return mn__st_lmdb(rc, "scan rows");
  return MN_OK;
}

/* After rows were deleted (`gone`, ascending): a run with no live row
 * left is deleted; one with half or more of its rows dead is rewritten
 * with the live ones only (sparse, same key). Each rewrite at least halves
 * a run, so the bytes rewritten are bounded by the bytes deleted. */
static mn_status prune_runs(mn_store *s, MDB_txn *txn, const st_coll *c,
                            const uint64_t *gone, int64_t ng) {
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi[ST_DBI_VEC], &cur);
  if (rc)
    return mn__st_lmdb(rc, "open cursor");
  uint64_t *live = NULL;
  uint8_t *buf = NULL;
  mn_status st = MN_OK;
  for (int64_t i = 0; i < ng && st == MN_OK;) {
    st_run r;
    st = mn__st_run_seek(cur, c->cid, gone[i], c->row_bytes, &r);
    if (st == MN_ERR_NOT_FOUND) {
      st = MN_OK;
      i++;
      continue;
    }
    if (st != MN_OK)
      break;
    if (gone[i] - r.first >= r.span) { /* in no run */
      i++;
      continue;
    }
    while (i < ng && gone[i] - r.first < r.span) /* gone is ascending */
      i++;
    live = realloc(live, sizeof *live * r.count);
    if (!live) {
      st = mn__set_error(MN_ERR_NOMEM, "out of memory");
      break;
    }
    uint32_t nl = 0;
    if ((st = run_live(s, txn, c->cid, &r, live, &nl)) != MN_OK)
      break;
    if (nl == 0) {
      st = mn__st_lmdb(mdb_cursor_del(cur, 0), "delete vectors");
      continue;
    }
    if (nl * 2 > r.count)
      continue;
    /* Rewrite: build the new value aside (the old one is in pages the
     * put may reuse), then replace it under the same key. */
    size_t sz = run_size(nl, 1, c->row_bytes);
    uint8_t *nb = realloc(buf, sz);
    if (!nb) {
      st = mn__set_error(MN_ERR_NOMEM, "out of memory");
      break;
    }
    buf = nb;
    uint32_t span = (uint32_t)(live[nl - 1] - r.first + 1);
    run_write_hdr(buf, nl, span, 1);
    uint8_t *codes = buf + run_hdr_size(nl, 1);
    for (uint32_t j = 0; j < nl; j++) {
      put_u32(buf + ST_RUN_HDR + 4 * (size_t)j, (uint32_t)(live[j] - r.first));
      memcpy(codes + (size_t)j * (size_t)c->row_bytes,
             r.codes + mn__st_run_index(&r, live[j]) * c->row_bytes,
             (size_t)c->row_bytes);
    }
    uint8_t kb[12];
    mn__st_key_seq(kb, c->cid, r.first);
    MDB_val k = {12, kb}, v = {sz, buf};
    st = mn__st_lmdb(mdb_put(txn, s->dbi[ST_DBI_VEC], &k, &v, 0),
                     "rewrite vectors");
  }
  mdb_cursor_close(cur);
  free(live);
  free(buf);
  return st;
}

static mn_status apply_delete(mn_store *s, MDB_txn *txn, st_op *op) {
  st_coll *c = op->coll;
  MN__TRY(check_live(c));
  op->u.del.deleted = 0;
  for (int64_t i = 0; i < op->u.del.n; i++) {
    const char *id = op->u.del.ids[i];
    uint64_t seq;
    op->u.del.seqs[i] = UINT64_MAX;
    mn_status st = mn__st_find_seq(s, txn, c, id, &seq);
    if (st == MN_ERR_NOT_FOUND)
      continue;
    MN__TRY(st);
    uint8_t key[4 + MN_MEMORY_ID_MAX], sk[12];
    size_t kl = mn__st_key_str(key, c->cid, id, strlen(id));
    MDB_val k = {kl, key};
    MN__TRY(mn__st_lmdb(mdb_del(txn, s->dbi[ST_DBI_IDS], &k, NULL), "del"));
    mn__st_key_seq(sk, c->cid, seq);
    MDB_val k2 = {12, sk};
    int rc = mdb_del(txn, s->dbi[ST_DBI_ROWS], &k2, NULL);
    if (rc && rc != MDB_NOTFOUND)
      return mn__st_lmdb(rc, "delete row");
    rc = mdb_del(txn, s->dbi[ST_DBI_REC], &k2, NULL);
    if (rc && rc != MDB_NOTFOUND)
      return mn__st_lmdb(rc, "delete record");
    op->u.del.seqs[i] = seq;
    op->u.del.deleted++;
  }
  if (!op->u.del.deleted)
    return MN_OK;
  uint64_t *gone = malloc(sizeof(uint64_t) * (size_t)op->u.del.deleted);
  if (!gone)
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  int64_t ng = 0;
  for (int64_t i = 0; i < op->u.del.n; i++)
    if (op->u.del.seqs[i] != UINT64_MAX)
      gone[ng++] = op->u.del.seqs[i];
  qsort(gone, (size_t)ng, sizeof *gone, cmp_u64);
  mn_status st = prune_runs(s, txn, c, gone, ng);
  free(gone);
  if (st == MN_ERR_VERSION) {
    /* A damaged run: the rows are deleted in this transaction already, so
     * the op cannot fail alone; the group fails (MN_ERR_IO). */
    char why[512];
    snprintf(why, sizeof why, "%s", mn_errmsg());
    st = mn__set_error(MN_ERR_IO, "%s", why);
  }
  return st;
}

/* Rewrite the significance field of a row record. */
static mn_status set_sig(mn_store *s, MDB_txn *txn, const st_coll *c,
                         uint64_t seq, float sig, float *old) {
  uint8_t sk[12];
  mn__st_key_seq(sk, c->cid, seq);
  MDB_val k = {12, sk}, v;
  int rc = mdb_get(txn, s->dbi[ST_DBI_ROWS], &k, &v);
  if (rc == MDB_NOTFOUND)
    return MN_ERR_NOT_FOUND;
  if (rc)
    return mn__st_lmdb(rc, "read row");
  if (v.mv_size < ST_ROW_HDR)
    return mn__set_error(MN_ERR_IO, "row record is damaged");
  if (old)
    *old = get_f32((const uint8_t *)v.mv_data + 4);
  if (sig < 0) /* caller only wanted the old value */
    return MN_OK;
  uint8_t copy[ST_ROW_HDR + MN_CHAT_ID_MAX];
  size_t sz = v.mv_size;
  if (sz > sizeof copy)
    return mn__set_error(MN_ERR_IO, "row record is damaged");
  memcpy(copy, v.mv_data, sz);
  put_f32(copy + 4, sig);
  MDB_val nv = {sz, copy};
  rc = mdb_put(txn, s->dbi[ST_DBI_ROWS], &k, &nv, 0);
  return mn__st_lmdb(rc, "rewrite row");
}

static mn_status apply_update(mn_store *s, MDB_txn *txn, st_op *op,
                              uint64_t group_bytes) {
  st_coll *c = op->coll;
  MN__TRY(check_live(c));
  const mn_memory_update *u = op->u.upd.u;
  uint64_t seq;
  mn_status st = mn__st_find_seq(s, txn, c, op->u.upd.id, &seq);
  if (st == MN_ERR_NOT_FOUND)
    return mn__set_error(MN_ERR_NOT_FOUND,
                         "memory '%s' is not in collection '%s'", op->u.upd.id,
                         c->name);
  MN__TRY(st);
  op->u.upd.seq = seq;
  uint8_t sk[12];
  mn__st_key_seq(sk, c->cid, seq);
  if (u->content || op->u.upd.metadata) {
    MDB_val k = {12, sk}, v;
    int rc = mdb_get(txn, s->dbi[ST_DBI_REC], &k, &v);
    if (rc)
      return mn__st_lmdb(rc, "read record");
    const char *id, *content, *meta;
    uint32_t il, cl, ml;
    if (mn__st_rec_parse(&v, &id, &il, &content, &cl, &meta, &ml) != 0)
      return mn__set_error(MN_ERR_VERSION,
                           "memory record of '%s' has an "
                           "unknown format",
                           op->u.upd.id);
    if (u->content) {
      content = u->content;
      cl = (uint32_t)strlen(u->content);
    }
    if (op->u.upd.metadata) {
      meta = op->u.upd.metadata;
      ml = (uint32_t)strlen(meta);
    }
    size_t sz = rec_size(il, cl, ml);
    MN__TRY(check_disk(s, group_bytes, value_cost(s, 12, sz), op));
    uint8_t *nb = malloc(sz);
    if (!nb)
      return mn__set_error(MN_ERR_NOMEM, "out of memory");
    rec_write(nb, id, il, content, cl, meta, ml);
    MDB_val nv = {sz, nb};
    rc = mdb_put(txn, s->dbi[ST_DBI_REC], &k, &nv, 0);
    free(nb);
    MN__TRY(mn__st_lmdb(rc, "rewrite record"));
  }
  if (u->has_significance) {
    op->u.upd.sig = (float)u->significance;
    MN__TRY(set_sig(s, txn, c, seq, op->u.upd.sig, NULL));
  }
  return MN_OK;
}

static mn_status apply_reinforce(mn_store *s, MDB_txn *txn, st_op *op) {
  st_coll *c = op->coll;
  if (c->dropping || c->dead)
    return MN_OK; /* nothing left to reinforce */
  for (int64_t i = 0; i < op->u.rein.n; i++) {
    float old;
    op->u.rein.ok[i] = 0;
    mn_status st = set_sig(s, txn, c, op->u.rein.seqs[i], -1.0f, &old);
    if (st == MN_ERR_NOT_FOUND)
      continue; /* deleted meanwhile */
    MN__TRY(st);
    float nv = (float)(old + MN_SIG_REINFORCE_BETA * (1.0 - old));
    if (nv > 1.0f)
      nv = 1.0f;
    MN__TRY(set_sig(s, txn, c, op->u.rein.seqs[i], nv, NULL));
    op->u.rein.sig[i] = nv;
    op->u.rein.ok[i] = 1;
  }
  return MN_OK;
}

static mn_status apply_create(mn_store *s, MDB_txn *txn, st_op *op,
                              uint64_t group_bytes) {
  const mn_collection_opts *o = &op->u.create.opts;
  MDB_val k = {strlen(o->name), (void *)o->name}, v;
  int rc = mdb_get(txn, s->dbi[ST_DBI_COLL], &k, &v);
  if (rc == 0)
    return mn__set_error(MN_ERR_EXISTS, "collection '%s' already exists",
                         o->name);
  if (rc != MDB_NOTFOUND)
    return mn__st_lmdb(rc, "look up a collection");
  mn_pca_model *pca = op->u.create.pca;
  MN__TRY(check_disk(s, group_bytes,
                     value_cost(s, 64, 64) +
                         (pca ? value_cost(s, 8, pca_blob_size(pca)) : 0),
                     op));
  st_coll *c = op->u.create.made;
  if (!c) {
    c = mn__st_coll_new(s);
    if (!c)
      return mn__set_error(MN_ERR_NOMEM, "out of memory");
    op->u.create.made = c;
  }
  snprintf(c->name, sizeof c->name, "%s", o->name);
  c->dim = o->dim;
  c->width = pca ? pca->n_components : o->dim;
  c->metric = o->metric;
  c->dtype = o->dtype;
  c->normalize = o->normalize ? 1 : 0;
  snprintf(c->pca_name, sizeof c->pca_name, "%s",
           o->pca_model ? o->pca_model : "");
  c->row_bytes = (int64_t)mn_dtype_row_bytes(c->dtype, c->width);
  c->run_rows = mn__st_run_rows(s->psize, c->row_bytes);
  c->created = mn__st_now(s);
  c->cid = s->next_cid++;
  c->next_seq = c->pending_seq = c->committed_seq = 0;
  MN__TRY(put_coll(txn, s, c, 0));
  uint8_t b[4];
  put_u32(b, s->next_cid);
  PUT(ST_DBI_META, "next_cid", 8, b, 4, "put next_cid");
  if (pca) {
    uint8_t kb[8];
    memcpy(kb, "pca:", 4);
    put_be32(kb + 4, c->cid);
    MDB_val pk = {8, kb}, pv = {pca_blob_size(pca), NULL};
    MN__TRY(mn__st_lmdb(
        mdb_put(txn, s->dbi[ST_DBI_META], &pk, &pv, MDB_RESERVE), "put pca"));
    pca_blob_write(pca, pv.mv_data);
  }
  return MN_OK;
}

/* Delete every key of one collection from a cid-prefixed database. */
static mn_status del_prefix(mn_store *s, MDB_txn *txn, int dbi, uint32_t cid) {
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi[dbi], &cur);
  if (rc)
    return mn__st_lmdb(rc, "open cursor");
  uint8_t kb[4];
  put_be32(kb, cid);
  MDB_val k = {4, kb}, v;
  rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  while (rc == 0 && k.mv_size >= 4 && get_be32(k.mv_data) == cid) {
    rc = mdb_cursor_del(cur, 0);
    if (rc)
      break;
    rc = mdb_cursor_get(cur, &k, &v, MDB_GET_CURRENT);
  }
  mdb_cursor_close(cur);
  if (rc == MDB_NOTFOUND || rc == EINVAL)
    rc = 0;
  return mn__st_lmdb(rc, "delete a collection's rows");
}

static mn_status apply_drop(mn_store *s, MDB_txn *txn, st_op *op) {
  st_coll *c = op->coll;
  if (c->dropping || c->dead)
    return mn__set_error(MN_ERR_NOT_FOUND, "collection '%s' does not exist",
                         c->name);
  MDB_val k = {strlen(c->name), c->name};
  int rc = mdb_del(txn, s->dbi[ST_DBI_COLL], &k, NULL);
  if (rc)
    return mn__st_lmdb(rc, "delete collection");
  for (int dbi = ST_DBI_ROWS; dbi <= ST_DBI_CHATS; dbi++)
    MN__TRY(del_prefix(s, txn, dbi, c->cid));
  if (c->pca_name[0]) {
    uint8_t kb[8];
    memcpy(kb, "pca:", 4);
    put_be32(kb + 4, c->cid);
    MDB_val pk = {8, kb};
    rc = mdb_del(txn, s->dbi[ST_DBI_META], &pk, NULL);
    if (rc && rc != MDB_NOTFOUND)
      return mn__st_lmdb(rc, "delete pca");
  }
  c->dropping = 1;
  return MN_OK;
}

static mn_status apply(mn_store *s, MDB_txn *txn, st_op *op,
                       uint64_t group_bytes) {
  switch (op->kind) {
  case ST_OP_ADD:
    return apply_add(s, txn, op, group_bytes);
  case ST_OP_DELETE:
    return apply_delete(s, txn, op);
  case ST_OP_UPDATE:
    return apply_update(s, txn, op, group_bytes);
  case ST_OP_REINFORCE:
    return apply_reinforce(s, txn, op);
  case ST_OP_CREATE:
    return apply_create(s, txn, op, group_bytes);
  case ST_OP_DROP:
    return apply_drop(s, txn, op);
  }
  return mn__set_error(MN_ERR_INTERNAL, "unknown write op %d", op->kind);
}

/* ------------------------------------------------------------------------
 * Publishing committed effects in memory.
 * ---------------------------------------------------------------------- */
/* Appends take no collection lock (store_internal.h, DESIGN): rows are
 * written past each chunk's `n`, then mn__st_chunk_append publishes them. */
static void publish_add(mn_store *s, st_op *op) {
  st_coll *c = op->coll;
  int64_t n = op->u.add.n;
  int64_t i = 0;
  while (i < n) {
    st_chunk *ch = c->n_chunks ? st_chunk_at(c, c->n_chunks - 1) : NULL;
    if (!ch || ch->n == ch->cap) {
      ch = mn__st_chunk_new(c);
      if (!ch) {
        /* The rows are durable; they come back at the next open. */
        MN__LOGE(ST_MOD, "out of memory publishing rows of '%s'", c->name);
        break;
      }
      mn__st_chunk_place(s, ch, NULL);
      mn__st_chunk_link(c, ch);
    }
    int32_t at = ch->n;
    int32_t take = (int32_t)MN__MIN((int64_t)(ch->cap - at), n - i);
    for (int32_t j = 0; j < take; j++) {
      const st_add_row *r = &op->u.add.rows[i + j];
      ch->seq[at + j] = r->seq;
      ch->ts[at + j] = r->ts;
      ch->sig[at + j] = r->sig;
      ch->norm[at + j] = r->norm;
      if (ch->scale)
        ch->scale[at + j] = r->scale;
      ch->chat[at + j] = r->chat_idx;
      __atomic_fetch_or(&ch->live_bits[(at + j) >> 6], 1ull << ((at + j) & 63),
                        __ATOMIC_RELAXED);
    }
    mn_status st = mn__st_chunk_append(
        s, ch, at, (const char *)op->u.add.codes + i * c->row_bytes, take);
    if (st != MN_OK)
      MN__LOGW(ST_MOD, "chunk append: %s", mn_errmsg());
    __atomic_add_fetch(&c->count, take, __ATOMIC_RELAXED);
    i += take;
  }
  if (n > 0)
    c->next_seq = op->u.add.rows[n - 1].seq + 1;
}

static void publish_sig(st_coll *c, uint64_t seq, float sig) {
  int32_t row;
  int ci = mn__st_chunk_find(c, seq, &row);
  if (ci >= 0)
    st_chunk_at(c, ci)->sig[row] = sig;
}

static void publish(mn_store *s, st_op *op) {
  st_coll *c = op->coll;
  switch (op->kind) {
  case ST_OP_ADD:
    publish_add(s, op);
    break;
  case ST_OP_DELETE:
    pthread_rwlock_wrlock(&c->lock);
    for (int64_t i = 0; i < op->u.del.n; i++) {
      if (op->u.del.found)
        op->u.del.found[i] = op->u.del.seqs[i] != UINT64_MAX;
      if (op->u.del.seqs[i] == UINT64_MAX)
        continue;
      int32_t row;
      int ci = mn__st_chunk_find(c, op->u.del.seqs[i], &row);
      if (ci < 0)
        continue;
      st_chunk *ch = st_chunk_at(c, ci);
      uint64_t bit = 1ull << (row & 63);
      if (st_row_live(ch, row)) {
        __atomic_fetch_and(&ch->live_bits[row >> 6], ~bit, __ATOMIC_RELAXED);
        __atomic_sub_fetch(&ch->live, 1, __ATOMIC_RELEASE);
        __atomic_sub_fetch(&c->count, 1, __ATOMIC_RELAXED);
      }
    }
    pthread_rwlock_unlock(&c->lock);
    break;
  case ST_OP_UPDATE:
    if (op->u.upd.u->has_significance) {
      pthread_rwlock_wrlock(&c->lock);
      publish_sig(c, op->u.upd.seq, op->u.upd.sig);
      pthread_rwlock_unlock(&c->lock);
    }
    break;
  case ST_OP_REINFORCE:
    pthread_rwlock_wrlock(&c->lock);
    for (int64_t i = 0; i < op->u.rein.n; i++)
      if (op->u.rein.ok[i])
        publish_sig(c, op->u.rein.seqs[i], op->u.rein.sig[i]);
    pthread_rwlock_unlock(&c->lock);
    break;
  case ST_OP_CREATE:
    /* The creator's reference, dropped once it has read the collection's
     * info: from here on a concurrent drop may release the registry's. */
    atomic_fetch_add(&op->u.create.made->refs, 1);
    mn__st_register(s, op->u.create.made, op->u.create.pca);
    op->u.create.pca = NULL;
    break;
  case ST_OP_DROP:
    mn__st_unregister(s, c);
    break;
  }
}

/* Undo the writer-only state an aborted group left behind. */
static void group_reset(mn_store *s, st_op *ops, uint32_t next_cid) {
  for (st_op *op = ops; op; op = op->next) {
    if (op->coll) {
      op->coll->pending_seq = op->coll->committed_seq;
      op->coll->dropping = 0;
    }
    if (op->kind == ST_OP_ADD)
      for (int64_t i = 0; i < op->u.add.n; i++)
        if (op->u.add.rows[i].id_assigned) {
          op->u.add.rows[i].id_len = 0;
          op->u.add.rows[i].id[0] = '\0';
        }
    op->status = MN_OK;
    op->msg[0] = '\0';
    op->est_bytes = 0;
  }
  s->next_cid = next_cid;
}

/* ------------------------------------------------------------------------
 * The writer thread.
 * ---------------------------------------------------------------------- */
static void run_group(mn_store *s, st_op *ops) {
  uint32_t next_cid = s->next_cid;
  s->grp_committed = 0;
  for (;;) {
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    mn_status fatal = MN_OK;
    if (rc) {
      fatal = mn__st_lmdb(rc, "begin write transaction");
      if (fatal == ST_MAP_FULL)
        fatal = mn__set_error(MN_ERR_IO, "map full at begin");
    }
    int map_full = 0;
    uint64_t group_bytes = 0;
    mn__st_sig_begin_group(s);
    if (fatal)
      txn = NULL;
    for (st_op *op = ops; op && !fatal; op = op->next) {
      mn_errmsg_clear();
      mn_status st = apply(s, txn, op, group_bytes);
      if (st == ST_MAP_FULL) {
        map_full = 1;
        break;
      }
      if (st == MN_ERR_IO || st == MN_ERR_NOMEM || st == MN_ERR_INTERNAL) {
        /* The transaction may hold part of this op: fail the group. */
        fatal = st;
        break;
      }
      op->status = st;
      if (st != MN_OK)
        snprintf(op->msg, sizeof op->msg, "%s", mn_errmsg());
      else
        group_bytes += op->est_bytes;
    }
    if (!fatal && !map_full) {
      mn_status st = mn__st_sig_persist(s, txn);
      if (st == ST_MAP_FULL)
        map_full = 1;
      else
        fatal = st;
    }
    int any_ok = 0;
    for (st_op *op = ops; op; op = op->next)
      any_ok |= op->status == MN_OK;
    if (!fatal && !map_full && !any_ok) {
      /* Every op failed its checks: nothing to make durable. */
      mdb_txn_abort(txn);
      mn__st_sig_end_group(s, 0);
      return;
    }
    if (!fatal && !map_full) {
      uint64_t used = disk_in_use(s, txn);
      rc = mdb_txn_commit(txn);
      txn = NULL;
      if (rc == 0) {
        mn_account_add(MN_TIER_DISK, (int64_t)used - (int64_t)s->disk_used);
        s->disk_used = used; /* writer-only; copied for stats below */
        s->grp_committed = 1;
        mn__st_sig_end_group(s, 1);
        /* Published by the publisher thread, in group order. */
        for (st_op *op = ops; op; op = op->next)
          if (op->coll)
            op->coll->committed_seq = op->coll->pending_seq;
        return;
      }
      fatal = mn__st_lmdb(rc, "commit");
      if (fatal == ST_MAP_FULL) {
        fatal = MN_OK;
        map_full = 1;
      }
    }
    if (txn)
      mdb_txn_abort(txn);
    mn__st_sig_end_group(s, 0);
    group_reset(s, ops, next_cid);
    if (map_full) {
      mn_status g = grow_map(s, 0);
      if (g == MN_OK)
        continue;
      fatal = g;
    }
    char msg[512];
    snprintf(msg, sizeof msg, "%s", mn_errmsg());
    for (st_op *op = ops; op; op = op->next) {
      op->status = fatal;
      snprintf(op->msg, sizeof op->msg, "write not stored: %.400s", msg);
    }
    return;
  }
}

static void *writer_main(void *arg) {
  mn_store *s = arg;
  pthread_mutex_lock(&s->q_mu);
  for (;;) {
    while (!s->q_head && !s->stopping)
      pthread_cond_wait(&s->q_cv, &s->q_mu);
    if (!s->q_head && s->stopping)
      break;
    /* Drain what is queued, up to a bound, as one group. */
    st_op *head = s->q_head, *tail = head;
    int nops = 1;
    uint64_t bytes = head->payload;
    while (tail->next && nops < ST_GROUP_MAX_OPS &&
           bytes + tail->next->payload <= ST_GROUP_MAX_BYTES) {
      tail = tail->next;
      bytes += tail->payload;
      nops++;
    }
    s->q_head = tail->next;
    if (!s->q_head)
      s->q_tail = NULL;
    tail->next = NULL;
    pthread_mutex_unlock(&s->q_mu);

    run_group(s, head);

    pthread_mutex_lock(&s->q_mu);
    s->commits += (uint64_t)s->grp_committed;
    s->stat_disk_used = s->disk_used;
    s->stat_map_size = s->map_size;
    s->stat_map_grows = s->map_grows;
    /* To the publisher: it makes the effects visible in memory and wakes
     * the callers, while this thread goes on with the next group. */
    head->grp_next = NULL;
    head->grp_committed = s->grp_committed;
    if (s->pub_tail)
      s->pub_tail->grp_next = head;
    else
      s->pub_head = head;
    s->pub_tail = head;
    pthread_cond_signal(&s->pub_cv);
  }
  pthread_mutex_unlock(&s->q_mu);
  return NULL;
}

/* The publisher thread: groups in commit order; each committed group's
 * successful ops are published (chunks appended, deletes and significance
 * applied, collections registered), then every caller of the group is
 * woken. Only this thread changes row bookkeeping (store_internal.h). */
static void *publisher_main(void *arg) {
  mn_store *s = arg;
  pthread_mutex_lock(&s->q_mu);
  for (;;) {
    while (!s->pub_head && !s->pub_stopping)
      pthread_cond_wait(&s->pub_cv, &s->q_mu);
    if (!s->pub_head)
      break;
    st_op *head = s->pub_head;
    s->pub_head = head->grp_next;
    if (!s->pub_head)
      s->pub_tail = NULL;
    pthread_mutex_unlock(&s->q_mu);
    if (head->grp_committed)
      for (st_op *op = head; op; op = op->next)
        if (op->status == MN_OK)
          publish(s, op);
    pthread_mutex_lock(&s->q_mu);
    for (st_op *op = head, *nx; op; op = nx) {
      nx = op->next;
      op->next = NULL;
      op->done = 1;
      if (op->status == MN_OK)
        s->writes++;
    }
    pthread_cond_broadcast(&s->done_cv);
  }
  pthread_mutex_unlock(&s->q_mu);
  return NULL;
}

mn_status mn__st_submit(mn_store *s, st_op *op) {
  op->done = 0;
  op->next = NULL;
  op->status = MN_OK;
  op->msg[0] = '\0';
  pthread_mutex_lock(&s->q_mu);
  if (s->stopping) {
    pthread_mutex_unlock(&s->q_mu);
    return mn__set_error(MN_ERR_BUSY, "the store is closing");
  }
  if (s->q_tail)
    s->q_tail->next = op;
  else
    s->q_head = op;
  s->q_tail = op;
  pthread_cond_signal(&s->q_cv);
  while (!op->done)
    pthread_cond_wait(&s->done_cv, &s->q_mu);
  pthread_mutex_unlock(&s->q_mu);
  if (op->status != MN_OK) {
    if (op->status == MN_ERR_RESOURCE)
      mn__st_resource(op->res_req, op->res_avail, "%s", op->msg);
    else
      mn__set_error(op->status, "%s", op->msg);
  }
  return op->status;
}

mn_status mn__st_writer_start(mn_store *s) {
  if (pthread_create(&s->publisher, NULL, publisher_main, s) != 0)
    return mn__set_error(MN_ERR_INTERNAL, "cannot start the publisher thread");
  if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
    pthread_mutex_lock(&s->q_mu);
    s->pub_stopping = 1;
    pthread_cond_signal(&s->pub_cv);
    pthread_mutex_unlock(&s->q_mu);
    pthread_join(s->publisher, NULL);
    return mn__set_error(MN_ERR_INTERNAL, "cannot start the writer thread");
  }
  s->writer_running = 1;
  return MN_OK;
}

void mn__st_writer_stop(mn_store *s) {
  pthread_mutex_lock(&s->q_mu);
  s->stopping = 1;
  pthread_cond_signal(&s->q_cv);
  pthread_mutex_unlock(&s->q_mu);
  pthread_join(s->writer, NULL);
  /* The writer has handed over its last group: the publisher drains. */
  pthread_mutex_lock(&s->q_mu);
  s->pub_stopping = 1;
  pthread_cond_signal(&s->pub_cv);
  pthread_mutex_unlock(&s->q_mu);
  pthread_join(s->publisher, NULL);
  s->writer_running = 0;
}
