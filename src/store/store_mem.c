/*
 * store_mem.c - the memory API: add (validation, processing and encoding
 * in the caller's thread, then one queued write), get, update, delete, and
 * the result lists they return.
 *
 * DESIGN: everything that can be checked without the database is checked
 * here, before anything is queued, so a bad batch changes nothing; checks
 * that need the database (an id already stored) run in the writer before
 * any write of that op. A returned list owns its strings in one arena,
 * freed in one step.
 */
#include "store/store_internal.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Arena.
 * ---------------------------------------------------------------------- */
typedef struct st_blk {
  struct st_blk *next;
  size_t used, cap;
  _Alignas(16) char data[];
} st_blk;

void *mn__st_arena_alloc(st_arena *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (!a->head || a->head->used + n > a->head->cap) {
    size_t cap = n > 65536 ? n : 65536;
    st_blk *b = malloc(sizeof *b + cap);
    if (!b)
      return NULL;
    b->used = 0;
    b->cap = cap;
    b->next = a->head;
    a->head = b;
  }
  void *p = a->head->data + a->head->used;
  a->head->used += n;
  return p;
}

char *mn__st_arena_str(st_arena *a, const char *s, size_t n) {
  char *p = mn__st_arena_alloc(a, n + 1);
  if (p) {
    if (n)
      memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

void mn__st_arena_free(st_arena *a) {
  st_blk *b = a->head;
  while (b) {
    st_blk *nx = b->next;
    free(b);
    b = nx;
  }
  a->head = NULL;
}

/* ------------------------------------------------------------------------
 * Memory lists.
 * ---------------------------------------------------------------------- */
struct mn_memory_list {
  int64_t n, cap;
  mn_memory *items;
  int64_t n_missing;
  const char **missing;
  st_arena arena;
};

int64_t mn_memory_list_count(const mn_memory_list *l) {
  return l ? l->n : 0;
}

const mn_memory *mn_memory_list_at(const mn_memory_list *l, int64_t i) {
  return l && i >= 0 && i < l->n ? &l->items[i] : NULL;
}

int64_t mn_memory_list_missing_count(const mn_memory_list *l) {
  return l ? l->n_missing : 0;
}

const char *mn_memory_list_missing_at(const mn_memory_list *l, int64_t i) {
  return l && i >= 0 && i < l->n_missing ? l->missing[i] : NULL;
}

void mn_memory_list_free(mn_memory_list *l) {
  if (!l)
    return;
  free(l->items);
  free(l->missing);
  mn__st_arena_free(&l->arena);
  free(l);
}

/* Read one memory (by seq) into `m`, strings in `a`. */
mn_status mn__st_read_memory(mn_store *s, st_coll *c, MDB_txn *txn,
                             uint64_t seq, unsigned include, st_arena *a,
                             mn_memory *m) {
  st_vec_hdr h;
  mn_status st = mn__st_read_row(s, txn, c, seq,
                                 (include & MN_INCLUDE_EMBEDDING) != 0, &h);
  if (st != MN_OK)
    return st;
  uint8_t key[12];
  mn__st_key_seq(key, c->cid, seq);
  MDB_val k = {12, key}, r;
  int rc = mdb_get(txn, s->dbi[ST_DBI_REC], &k, &r);
  if (rc == MDB_NOTFOUND)
    return MN_ERR_NOT_FOUND;
  if (rc)
    return mn__st_lmdb(rc, "read a memory");
  const char *id, *content, *meta;
  uint32_t il, cl, ml;
  if (mn__st_rec_parse(&r, &id, &il, &content, &cl, &meta, &ml) != 0)
    return mn__set_error(MN_ERR_VERSION,
                         "memory %llu of '%s' has an unknown record format",
                         (unsigned long long)seq, c->name);
  memset(m, 0, sizeof *m);
  m->id = mn__st_arena_str(a, id, il);
  m->chat_id = mn__st_arena_str(a, h.chat, h.chat_len);
  m->timestamp = h.ts;
  m->significance = h.sig;
  m->width = c->width;
  if (include & MN_INCLUDE_CONTENT)
    m->content = mn__st_arena_str(a, content, cl);
  if (include & MN_INCLUDE_METADATA)
    m->metadata = mn__st_arena_str(a, meta, ml);
  if (include & MN_INCLUDE_EMBEDDING) {
    float *e = mn__st_arena_alloc(a, sizeof(float) * (size_t)c->width);
    if (e)
      mn__st_decode_row(c, h.codes, h.scale, e);
    m->embedding = e;
    if (!e)
      return mn__set_error(MN_ERR_NOMEM, "out of memory");
  }
  if (!m->id || !m->chat_id ||
      ((include & MN_INCLUDE_CONTENT) && !m->content) ||
      ((include & MN_INCLUDE_METADATA) && !m->metadata))
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  return MN_OK;
}

static mn_status check_id(const char *id, int64_t i, const char *what) {
  if (!id)
    return mn__set_error(MN_ERR_INVALID, "%s %lld is missing", what,
                         (long long)i);
  size_t n = strlen(id);
  if (n < 1 || n > MN_MEMORY_ID_MAX)
    return mn__set_error(MN_ERR_INVALID,
                         "%s %lld must be 1 to %d bytes long, got %zu", what,
                         (long long)i, MN_MEMORY_ID_MAX, n);
  for (size_t j = 0; j < n; j++)
    if ((unsigned char)id[j] < 0x20 || id[j] == 0x7f)
      return mn__set_error(MN_ERR_INVALID,
                           "%s %lld contains a control character at byte %zu",
                           what, (long long)i, j);
  return MN_OK;
}

mn_status mn_store_get(mn_store *s, const char *coll, const char *const *ids,
                       int64_t n, unsigned include, mn_memory_list **out) {
  if (!s || !out)
    return mn__set_error(MN_ERR_INVALID, "store or out is NULL");
  *out = NULL;
  if (n < 0 || (n > 0 && !ids))
    return mn__set_error(MN_ERR_INVALID, "ids are missing");
  for (int64_t i = 0; i < n; i++)
    MN__TRY(check_id(ids[i], i, "id"));
  st_coll *c = NULL;
  MN__TRY(mn__st_coll_ref(s, coll, &c));
  mn_memory_list *l = calloc(1, sizeof *l);
  if (l && n) {
    l->items = calloc((size_t)n, sizeof *l->items);
    l->missing = calloc((size_t)n, sizeof *l->missing);
  }
  if (!l || (n && (!l->items || !l->missing))) {
    mn_memory_list_free(l);
    mn__st_coll_unref(c);
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  }
  MDB_txn *txn = NULL;
  mn_status st = mn__st_read_begin(s, &txn);
  int have_txn = st == MN_OK;
  for (int64_t i = 0; i < n && st == MN_OK; i++) {
    uint64_t seq;
    st = mn__st_find_seq(s, txn, c, ids[i], &seq);
    if (st == MN_OK)
      st = mn__st_read_memory(s, c, txn, seq, include, &l->arena,
                              &l->items[l->n]);
    if (st == MN_OK) {
      l->n++;
    } else if (st == MN_ERR_NOT_FOUND) {
      l->missing[l->n_missing++] =
          mn__st_arena_str(&l->arena, ids[i], strlen(ids[i]));
      st = MN_OK;
    }
  }
  if (have_txn)
    mn__st_read_end(s, txn);
  mn__st_coll_unref(c);
  if (st != MN_OK) {
    mn_memory_list_free(l);
    return st;
  }
  *out = l;
  return MN_OK;
}

/* ------------------------------------------------------------------------
 * Add.
 * ---------------------------------------------------------------------- */
void mn_memory_in_init(mn_memory_in *m) {
  if (m)
    memset(m, 0, sizeof *m);
}

/* Parse and re-serialise a metadata object (compact, keys in order). */
mn_status mn__st_norm_metadata(const char *text, char **out, const char *what) {
  *out = NULL;
  if (!text) {
    *out = strdup("{}");
    return *out ? MN_OK : mn__set_error(MN_ERR_NOMEM, "out of memory");
  }
  json_error_t err;
  json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &err);
  if (!j && strstr(err.text, "NUL")) /* valid JSON, but a C-string trap */
    return mn__set_error(MN_ERR_INVALID,
                         "%s must not contain the NUL character (\\u0000) "
                         "in its keys or values (column %d)",
                         what, err.column);
  if (!j)
    return mn__set_error(MN_ERR_INVALID,
                         "%s is not valid JSON: %s "
                         "(column %d)",
                         what, err.text, err.column);
  if (!json_is_object(j)) {
    json_decref(j);
    return mn__set_error(MN_ERR_INVALID, "%s must be a JSON object", what);
  }
  *out = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  return *out ? MN_OK : mn__set_error(MN_ERR_NOMEM, "out of memory");
}

typedef struct id_ix {
  const char *id;
  int64_t i;
} id_ix;

static int cmp_id_ix(const void *a, const void *b) {
  int r = strcmp(((const id_ix *)a)->id, ((const id_ix *)b)->id);
  if (r)
    return r;
  int64_t x = ((const id_ix *)a)->i, y = ((const id_ix *)b)->i;
  return (x > y) - (x < y);
}

/* Normalise and reduce float32 rows as the collection says: in is n x dim,
 * out is n x width (may be `in` when there is no PCA). */
mn_status mn__st_process(mn_store *s, const st_coll *c, float *in, int64_t n,
                         float *out) {
  mn_tensor x = mn_tensor_host(in, MN_DTYPE_F32, n, c->dim);
  if (c->normalize) {
    int64_t zero = 0;
    MN__TRY(mn_backend_normalize(s->cpu, &x, &x, &zero));
  }
  if (c->pca) {
    mn_tensor y = mn_tensor_host(out, MN_DTYPE_F32, n, c->width);
    MN__TRY(mn_backend_pca_transform(s->cpu, &x, c->pca, 0, &y));
  } else if (out != in) {
    memcpy(out, in, sizeof(float) * (size_t)(n * c->dim));
  }
  return MN_OK;
}

static mn_status validate_batch(const st_coll *c, const mn_memory_in *m,
                                int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    if (!m[i].embedding)
      return mn__set_error(MN_ERR_INVALID, "memory %lld has no embedding",
                           (long long)i);
    if (m[i].id && m[i].id[0])
      MN__TRY(check_id(m[i].id, i, "id of memory"));
    if (m[i].chat_id && strlen(m[i].chat_id) > MN_CHAT_ID_MAX)
      return mn__set_error(MN_ERR_INVALID,
                           "chatId of memory %lld is longer than %d bytes",
                           (long long)i, MN_CHAT_ID_MAX);
    if (m[i].content && strlen(m[i].content) > (1u << 30))
      return mn__set_error(MN_ERR_INVALID,
                           "content of memory %lld is larger than 1 GiB",
                           (long long)i);
    if (m[i].has_timestamp && !isfinite(m[i].timestamp))
      return mn__set_error(MN_ERR_INVALID,
                           "timestamp of memory %lld is not a finite number",
                           (long long)i);
    if (m[i].has_significance &&
        !(m[i].significance >= 0.0 && m[i].significance <= 1.0))
      return mn__set_error(MN_ERR_INVALID,
                           "significance of memory %lld is %g: it must be "
                           "between 0 and 1",
                           (long long)i, m[i].significance);
  }
  /* Duplicate ids within the batch. */
  id_ix *v = malloc(sizeof *v * (size_t)n);
  if (!v)
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  int64_t k = 0;
  for (int64_t i = 0; i < n; i++)
    if (m[i].id && m[i].id[0])
      v[k++] = (id_ix){m[i].id, i};
  qsort(v, (size_t)k, sizeof *v, cmp_id_ix);
  for (int64_t i = 1; i < k; i++)
    if (strcmp(v[i].id, v[i - 1].id) == 0) {
      mn_status st =
          mn__set_error(MN_ERR_EXISTS,
                        "memory id '%s' appears twice in the "
                        "batch (indexes %lld and %lld)",
                        v[i].id, (long long)v[i - 1].i, (long long)v[i].i);
      free(v);
      return st;
    }
  free(v);
  return MN_OK;
}

static void free_add(st_op *op) {
  if (op->u.add.rows)
    for (int64_t i = 0; i < op->u.add.n; i++)
      free(op->u.add.rows[i].metadata);
  free(op->u.add.rows);
  mn_free(op->u.add.x);
  mn_free(op->u.add.codes);
}

mn_status mn_store_add(mn_store *s, const char *coll, const mn_memory_in *mems,
                       int64_t n, mn_memory_id *ids) {
  if (!s)
    return mn__set_error(MN_ERR_INVALID, "store is NULL");
  mn__st_resource_clear();
  if (n < 1 || !mems)
    return mn__set_error(MN_ERR_INVALID,
                         "a batch needs at least one memory, got %lld",
                         (long long)n);
  st_coll *c = NULL;
  MN__TRY(mn__st_coll_ref(s, coll, &c));
  st_op op;
  st_op_init(&op, ST_OP_ADD, c);
  op.u.add.n = n;
  mn_status st = validate_batch(c, mems, n);
  /* Buffers: `in` gathers the embeddings (n x dim); `x` is the processed
   * float form (n x width; `in` itself without PCA); `codes` the stored
   * form (`x` itself for float32). */
  float *in = NULL, *norms = NULL, *scales = NULL;
  const int f32 = c->dtype == MN_DTYPE_F32;
  if (st == MN_OK) {
    op.u.add.rows = calloc((size_t)n, sizeof *op.u.add.rows);
    in = mn_malloc(sizeof(float) * (size_t)(n * c->dim));
    op.u.add.x =
        c->pca ? mn_malloc(sizeof(float) * (size_t)(n * c->width)) : in;
    op.u.add.codes =
        f32 ? (void *)op.u.add.x : mn_malloc((size_t)(n * c->row_bytes));
    norms = malloc(sizeof(float) * (size_t)n);
    scales = calloc((size_t)n, sizeof(float));
    if (!op.u.add.rows || !in || !op.u.add.x || !op.u.add.codes || !norms ||
        !scales)
      st = mn__set_error(MN_ERR_NOMEM, "out of memory for a batch of %lld",
                         (long long)n);
  }
  double now = mn__st_now(s);
  for (int64_t i = 0; i < n && st == MN_OK; i++) {
    const mn_memory_in *m = &mems[i];
    st_add_row *r = &op.u.add.rows[i];
    if (m->metadata) {
      char what[64];
      snprintf(what, sizeof what, "metadata of memory %lld", (long long)i);
      st = mn__st_norm_metadata(m->metadata, &r->metadata, what);
      if (st != MN_OK)
        break;
      r->metadata_len = (uint32_t)strlen(r->metadata);
    } else {
      r->metadata = NULL; /* "{}" */
      r->metadata_len = 2;
    }
    if (m->id && m->id[0]) {
      snprintf(r->id, sizeof r->id, "%s", m->id);
      r->id_len = (uint32_t)strlen(r->id);
    }
    r->content = m->content ? m->content : "";
    r->content_len = (uint32_t)strlen(r->content);
    r->chat = m->chat_id ? m->chat_id : "";
    r->chat_len = (uint32_t)strlen(r->chat);
    r->ts = m->has_timestamp ? m->timestamp : now;
    r->has_sig = m->has_significance;
    r->sig = (float)m->significance;
    /* Gather, check finiteness and take the raw norm in one pass. */
    float *dst = in + i * c->dim;
    memcpy(dst, m->embedding, sizeof(float) * (size_t)c->dim);
    float nn = mn__st_dot(dst, dst, c->dim);
    if (!isfinite(nn)) {
      for (int64_t d = 0; d < c->dim; d++)
        if (!isfinite(dst[d])) {
          st = mn__set_error(MN_ERR_INVALID,
                             "embedding of memory %lld has %s at column "
                             "%lld: embeddings must be finite numbers",
                             (long long)i, isnan(dst[d]) ? "NaN" : "Inf",
                             (long long)d);
          break;
        }
      if (st == MN_OK) /* finite values whose squares overflow */
        nn = INFINITY;
      else
        break;
    }
    r->raw_norm = sqrt((double)nn);
    norms[i] = (float)r->raw_norm;
  }
  if (st == MN_OK)
    st = mn__st_process(s, c, in, n, op.u.add.x);
  if (st == MN_OK) {
    /* The stored rows equal the input when nothing transforms them: their
     * norms are the raw norms already taken. */
    int same = f32 && !c->normalize && !c->pca;
    st = mn__st_encode_rows(s, c, op.u.add.x, n, op.u.add.codes, scales,
                            same ? NULL : norms);
  }
  if (st == MN_OK) {
    for (int64_t i = 0; i < n; i++) {
      op.u.add.rows[i].norm = norms[i];
      op.u.add.rows[i].scale = scales[i];
    }
    op.payload = (uint64_t)(n * c->row_bytes);
    st = mn__st_submit(s, &op);
  }
  if (st == MN_OK && ids)
    for (int64_t i = 0; i < n; i++)
      snprintf(ids[i].s, sizeof ids[i].s, "%s", op.u.add.rows[i].id);
  if (op.u.add.codes == (void *)op.u.add.x)
    op.u.add.codes = NULL;
  if (op.u.add.x == in)
    op.u.add.x = NULL;
  free_add(&op);
  mn_free(in);
  free(norms);
  free(scales);
  mn__st_coll_unref(c);
  return st;
}

/* ------------------------------------------------------------------------
 * Update and delete.
 * ---------------------------------------------------------------------- */
mn_status mn_store_update(mn_store *s, const char *coll, const char *id,
                          const mn_memory_update *u, unsigned include,
                          mn_memory_list **out) {
  if (!s || !u)
    return mn__set_error(MN_ERR_INVALID, "store or update is NULL");
  if (out)
    *out = NULL;
  mn__st_resource_clear();
  MN__TRY(check_id(id, 0, "id"));
  if (!u->content && !u->metadata && !u->has_significance)
    return mn__set_error(MN_ERR_INVALID,
                         "nothing to update: give content, metadata or "
                         "significance");
  if (u->has_significance &&
      !(u->significance >= 0.0 && u->significance <= 1.0))
    return mn__set_error(MN_ERR_INVALID,
                         "significance is %g: it must be between 0 and 1",
                         u->significance);
  if (u->content && strlen(u->content) > (1u << 30))
    return mn__set_error(MN_ERR_INVALID, "content is larger than 1 GiB");
  st_op op;
  st_op_init(&op, ST_OP_UPDATE, NULL);
  if (u->metadata)
    MN__TRY(mn__st_norm_metadata(u->metadata, &op.u.upd.metadata, "metadata"));
  st_coll *c = NULL;
  mn_status st = mn__st_coll_ref(s, coll, &c);
  if (st != MN_OK) {
    free(op.u.upd.metadata);
    return st;
  }
  op.coll = c;
  op.u.upd.id = id;
  op.u.upd.u = u;
  st = mn__st_submit(s, &op);
  free(op.u.upd.metadata);
  mn__st_coll_unref(c);
  if (st == MN_OK && out) {
    const char *one[1] = {id};
    st = mn_store_get(s, coll, one, 1, include, out);
  }
  return st;
}

/* A delete that names an id twice is refused: it is almost certainly a
 * client bug, and refusing it keeps "deleted" equal to the ids found. */
static mn_status check_unique(const char *const *ids, int64_t n) {
  id_ix *v = malloc(sizeof *v * (size_t)n);
  if (!v)
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  for (int64_t i = 0; i < n; i++)
    v[i] = (id_ix){ids[i], i};
  qsort(v, (size_t)n, sizeof *v, cmp_id_ix);
  mn_status st = MN_OK;
  for (int64_t i = 1; i < n && st == MN_OK; i++)
    if (strcmp(v[i].id, v[i - 1].id) == 0)
      st = mn__set_error(MN_ERR_INVALID,
                         "id '%s' appears twice in the request (indexes "
                         "%lld and %lld)",
                         v[i].id, (long long)v[i - 1].i, (long long)v[i].i);
  free(v);
  return st;
}

mn_status mn_store_delete(mn_store *s, const char *coll, const char *const *ids,
                          int64_t n, int64_t *deleted, uint8_t *found) {
  if (!s)
    return mn__set_error(MN_ERR_INVALID, "store is NULL");
  if (deleted)
    *deleted = 0;
  if (n < 1 || !ids)
    return mn__set_error(MN_ERR_INVALID, "give at least one id to delete");
  for (int64_t i = 0; i < n; i++)
    MN__TRY(check_id(ids[i], i, "id"));
  MN__TRY(check_unique(ids, n));
  st_coll *c = NULL;
  MN__TRY(mn__st_coll_ref(s, coll, &c));
  st_op op;
  st_op_init(&op, ST_OP_DELETE, c);
  op.u.del.n = n;
  op.u.del.ids = ids;
  op.u.del.found = found;
  op.u.del.seqs = malloc(sizeof(uint64_t) * (size_t)n);
  mn_status st = op.u.del.seqs ? mn__st_submit(s, &op)
                               : mn__set_error(MN_ERR_NOMEM, "out of memory");
  if (st == MN_OK && deleted)
    *deleted = op.u.del.deleted;
  free(op.u.del.seqs);
  mn__st_coll_unref(c);
  return st;
}

/* ------------------------------------------------------------------------
 * Export of a collection's vectors.
 * ---------------------------------------------------------------------- */
mn_status mn_store_collection_vectors(mn_store *s, const char *name,
                                      int64_t max_rows, float **out,
                                      int64_t *rows, int64_t *width) {
  if (!s || !out || !rows || !width)
    return mn__set_error(MN_ERR_INVALID, "NULL argument");
  *out = NULL;
  *rows = *width = 0;
  st_coll *c = NULL;
  MN__TRY(mn__st_coll_ref(s, name, &c));
  /* Deletes are excluded while the live rows are listed. */
  pthread_rwlock_rdlock(&c->lock);
  int64_t live = __atomic_load_n(&c->count, __ATOMIC_RELAXED);
  int64_t take = max_rows > 0 && max_rows < live ? max_rows : live;
  uint64_t *seqs = malloc(sizeof(uint64_t) * (size_t)(take ? take : 1));
  float *v = take ? malloc(sizeof(float) * (size_t)(take * c->width)) : NULL;
  mn_status st = MN_OK;
  if (!seqs || (take && !v))
    st = mn__set_error(MN_ERR_NOMEM, "out of memory for %lld vectors",
                       (long long)take);
  int64_t got = 0, seen = 0;
  int64_t nch = st_nchunks(c);
  for (int64_t k = 0; k < nch && st == MN_OK && got < take; k++) {
    const st_chunk *ch = st_chunk_at(c, k);
    int32_t n = st_chunk_n(ch);
    for (int32_t r = 0; r < n && got < take; r++) {
      if (!st_row_live(ch, r))
        continue;
      /* Row `seen` of `live` is taken when it starts a new stride. */
      if ((seen * take) / live == got)
        seqs[got++] = ch->seq[r];
      seen++;
    }
  }
  pthread_rwlock_unlock(&c->lock);
  MDB_txn *txn = NULL;
  if (st == MN_OK && got)
    st = mn__st_read_begin(s, &txn);
  int64_t n = 0;
  for (int64_t i = 0; i < got && st == MN_OK; i++) {
    st_vec_hdr h;
    mn_status r = mn__st_read_row(s, txn, c, seqs[i], 1, &h);
    if (r == MN_ERR_NOT_FOUND)
      continue; /* deleted since */
    if (r != MN_OK) {
      st = r;
      break;
    }
    mn__st_decode_row(c, h.codes, h.scale, v + n * c->width);
    n++;
  }
  if (txn)
    mn__st_read_end(s, txn);
  free(seqs);
  if (st != MN_OK) {
    free(v);
  } else {
    *out = n ? v : (free(v), NULL);
    *rows = n;
    *width = c->width;
  }
  mn__st_coll_unref(c);
  return st;
}
