/*
 * store_sig.c - the chat table of a collection and the significance of
 * memories that come without one (formula and parameters in
 * include/mnemo/store.h): surprise against the chat's momentum, magnitude
 * against the chat's mean raw norm, diversity against its recent memories.
 *
 * DESIGN: significance state is touched only by the writer thread, in the
 * order rows are applied, so it needs no lock. The first time a group
 * touches a chat, a copy of its state goes into an undo log: when the
 * group's transaction aborts (map full, I/O) the state is restored and the
 * replay computes the same values again. At the end of a successful group
 * every touched chat's momentum and mean norm are written to the chats
 * database in the same transaction as the rows. The chat table itself
 * (name -> index) is also read by searches, so insertions into it happen
 * under the collection's write lock (taken by the caller).
 */
#include "store/store_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Chat table.
 * ---------------------------------------------------------------------- */
static uint32_t hash_bytes(const char *p, uint32_t n) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (uint32_t i = 0; i < n; i++) {
    h ^= (uint8_t)p[i];
    h *= 16777619u;
  }
  return h;
}

void mn__st_chat_free(st_chat *ch) {
  if (!ch)
    return;
  free(ch->name);
  mn_free(ch->momentum);
  mn_free(ch->recent);
  free(ch);
}

static int rehash(st_coll *c, uint32_t cap) {
  uint32_t *t = calloc(cap, sizeof *t);
  if (!t)
    return -1;
  for (uint32_t i = 0; i < c->n_chats; i++) {
    uint32_t h = hash_bytes(c->chats[i]->name, c->chats[i]->len) & (cap - 1);
    while (t[h])
      h = (h + 1) & (cap - 1);
    t[h] = i + 1;
  }
  free(c->chat_hash);
  c->chat_hash = t;
  c->hash_cap = cap;
  return 0;
}

/* Look up without a lock: only for the writer thread (the table's only
 * mutator) and for open. */
static st_chat *chat_find(const st_coll *c, const char *name, uint32_t len) {
  if (!c->hash_cap)
    return NULL;
  uint32_t h = hash_bytes(name, len) & (c->hash_cap - 1);
  while (c->chat_hash[h]) {
    st_chat *ch = c->chats[c->chat_hash[h] - 1];
    if (ch->len == len && memcmp(ch->name, name, len) == 0)
      return ch;
    h = (h + 1) & (c->hash_cap - 1);
  }
  return NULL;
}

st_chat *mn__st_chat_get(st_coll *c, const char *name, uint32_t len,
                         int create) {
  st_chat *found = chat_find(c, name, len);
  if (found || !create)
    return found;
  st_chat *ch = calloc(1, sizeof *ch);
  if (!ch)
    return NULL;
  ch->name = malloc(len + 1);
  ch->momentum = mn_calloc((size_t)c->width, sizeof(float));
  if (!ch->name || !ch->momentum) {
    mn__st_chat_free(ch);
    return NULL;
  }
  memcpy(ch->name, name, len);
  ch->name[len] = '\0';
  ch->len = len;
  /* Readers look names up under chat_mu; the table may move here. */
  pthread_mutex_lock(&c->chat_mu);
  int ok = 1;
  if ((c->n_chats + 1) * 2 > c->hash_cap &&
      rehash(c, c->hash_cap ? c->hash_cap * 2 : 64) != 0)
    ok = 0;
  if (ok && c->n_chats == c->cap_chats) {
    uint32_t nc = c->cap_chats ? c->cap_chats * 2 : 16;
    st_chat **a = realloc(c->chats, sizeof *a * nc);
    if (a) {
      c->chats = a;
      c->cap_chats = nc;
    } else {
      ok = 0;
    }
  }
  if (ok) {
    ch->idx = c->n_chats;
    c->chats[c->n_chats++] = ch;
    uint32_t h = hash_bytes(name, len) & (c->hash_cap - 1);
    while (c->chat_hash[h])
      h = (h + 1) & (c->hash_cap - 1);
    c->chat_hash[h] = ch->idx + 1;
  }
  pthread_mutex_unlock(&c->chat_mu);
  if (!ok) {
    mn__st_chat_free(ch);
    return NULL;
  }
  return ch;
}

int mn__st_chat_lookup(st_coll *c, const char *name, uint32_t *idx) {
  pthread_mutex_lock(&c->chat_mu);
  st_chat *ch = chat_find(c, name, (uint32_t)strlen(name));
  if (ch)
    *idx = ch->idx;
  pthread_mutex_unlock(&c->chat_mu);
  return ch != NULL;
}

void mn__st_chat_name(st_coll *c, uint32_t idx, char *out, size_t cap) {
  pthread_mutex_lock(&c->chat_mu);
  snprintf(out, cap, "%s", idx < c->n_chats ? c->chats[idx]->name : "");
  pthread_mutex_unlock(&c->chat_mu);
}

/* ------------------------------------------------------------------------
 * Arithmetic.
 * ---------------------------------------------------------------------- */

/* Sixteen partial sums let the compiler keep the loop in vector registers
 * without -ffast-math; the result is accurate to float rounding. The
 * clones are picked at load time for the CPU at hand (GNU ifunc), so the
 * build stays portable. */
__attribute__((target_clones("avx512f", "avx2", "default"))) float
mn__st_dot(const float *a, const float *b, int64_t n) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; j++)
      acc[j] += a[i + j] * b[i + j];
  float s = 0;
  for (int j = 0; j < 16; j++)
    s += acc[j];
  for (; i < n; i++)
    s += a[i] * b[i];
  return s;
}

static double clip01(double v) {
  return v < 0 ? 0 : (v > 1 ? 1 : v);
}

static double cosine(const float *a, double na, const float *b, double nb,
                     int64_t n) {
  if (na <= 0 || nb <= 0)
    return 0;
  return mn__st_dot(a, b, n) / (na * nb);
}

/* ------------------------------------------------------------------------
 * Undo log of a group.
 * ---------------------------------------------------------------------- */
typedef struct st_sig_undo {
  st_coll *c;
  st_chat *ch;
  uint64_t n;
  double mean_norm;
  float *momentum;
  float *recent;
  float recent_norm[MN_SIG_RECENT];
  int n_recent, recent_head, recent_loaded;
} st_sig_undo;

struct st_sig_log {
  st_sig_undo *u;
  int n, cap;
};

void mn__st_sig_begin_group(mn_store *s) {
  if (!s->sig_log)
    s->sig_log = calloc(1, sizeof *s->sig_log);
  if (s->sig_log)
    s->sig_log->n = 0;
}

static mn_status touch(mn_store *s, st_coll *c, st_chat *ch) {
  if (ch->dirty)
    return MN_OK;
  struct st_sig_log *lg = s->sig_log;
  if (!lg)
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  if (lg->n == lg->cap) {
    int nc = lg->cap ? lg->cap * 2 : 16;
    st_sig_undo *a = realloc(lg->u, sizeof *a * (size_t)nc);
    if (!a)
      return mn__set_error(MN_ERR_NOMEM, "out of memory");
    lg->u = a;
    lg->cap = nc;
  }
  st_sig_undo *u = &lg->u[lg->n];
  memset(u, 0, sizeof *u);
  size_t w = (size_t)c->width;
  u->momentum = malloc(w * sizeof(float));
  if (!u->momentum)
    return mn__set_error(MN_ERR_NOMEM, "out of memory");
  memcpy(u->momentum, ch->momentum, w * sizeof(float));
  if (ch->recent) {
    u->recent = malloc(w * MN_SIG_RECENT * sizeof(float));
    if (!u->recent) {
      free(u->momentum);
      return mn__set_error(MN_ERR_NOMEM, "out of memory");
    }
    memcpy(u->recent, ch->recent, w * MN_SIG_RECENT * sizeof(float));
  }
  memcpy(u->recent_norm, ch->recent_norm, sizeof u->recent_norm);
  u->c = c;
  u->ch = ch;
  u->n = ch->n;
  u->mean_norm = ch->mean_norm;
  u->n_recent = ch->n_recent;
  u->recent_head = ch->recent_head;
  u->recent_loaded = ch->recent_loaded;
  lg->n++;
  ch->dirty = 1;
  return MN_OK;
}

void mn__st_sig_end_group(mn_store *s, int ok) {
  struct st_sig_log *lg = s->sig_log;
  if (!lg)
    return;
  for (int i = 0; i < lg->n; i++) {
    st_sig_undo *u = &lg->u[i];
    st_chat *ch = u->ch;
    if (!ok) {
      size_t w = (size_t)u->c->width;
      ch->n = u->n;
      ch->mean_norm = u->mean_norm;
      memcpy(ch->momentum, u->momentum, w * sizeof(float));
      if (u->recent)
        memcpy(ch->recent, u->recent, w * MN_SIG_RECENT * sizeof(float));
      memcpy(ch->recent_norm, u->recent_norm, sizeof u->recent_norm);
      ch->n_recent = u->n_recent;
      ch->recent_head = u->recent_head;
      ch->recent_loaded = u->recent_loaded;
    }
    ch->dirty = 0;
    free(u->momentum);
    free(u->recent);
  }
  lg->n = 0;
}

void mn__st_sig_log_free(mn_store *s) {
  if (s->sig_log) {
    mn__st_sig_end_group(s, 1);
    free(s->sig_log->u);
    free(s->sig_log);
    s->sig_log = NULL;
  }
}

/* Write the momentum and mean norm of every chat the group touched. */
mn_status mn__st_sig_persist(mn_store *s, MDB_txn *txn) {
  struct st_sig_log *lg = s->sig_log;
  if (!lg)
    return MN_OK;
  for (int i = 0; i < lg->n; i++) {
    st_coll *c = lg->u[i].c;
    st_chat *ch = lg->u[i].ch;
    if (c->dropping || c->dead)
      continue;
    uint8_t key[4 + MN_CHAT_ID_MAX];
    size_t kl = mn__st_key_str(key, c->cid, ch->name, ch->len);
    MDB_val k = {kl, key}, v = {24 + 4 * (size_t)c->width, NULL};
    int rc = mdb_put(txn, s->dbi[ST_DBI_CHATS], &k, &v, MDB_RESERVE);
    if (rc)
      return mn__st_lmdb(rc, "put chat state");
    uint8_t *p = v.mv_data;
    uint32_t w = (uint32_t)c->width;
    memset(p, 0, 24);
    p[0] = ST_REC_VERSION;
    memcpy(p + 4, &w, 4);
    memcpy(p + 8, &ch->n, 8);
    memcpy(p + 16, &ch->mean_norm, 8);
    memcpy(p + 24, ch->momentum, 4 * (size_t)c->width);
  }
  return MN_OK;
}

/* After an open, fill the recent list from the chat's last stored rows
 * (newest last), decoded from their stored form. */
static mn_status load_recent(mn_store *s, st_coll *c, MDB_txn *txn,
                             st_chat *ch) {
  uint64_t seqs[MN_SIG_RECENT];
  int found = 0;
  /* The publisher may be appending meanwhile: rows below an acquired n
   * are complete. A chat's first rows after an open are never in a group
   * still being published (that group would have loaded them). */
  for (int64_t k = st_nchunks(c) - 1; k >= 0 && found < MN_SIG_RECENT; k--) {
    const st_chunk *cb = st_chunk_at(c, k);
    for (int32_t r = st_chunk_n(cb) - 1; r >= 0 && found < MN_SIG_RECENT; r--)
      if (cb->chat[r] == ch->idx && st_row_live(cb, r))
        seqs[found++] = cb->seq[r];
  }
  size_t w = (size_t)c->width;
  for (int i = found - 1; i >= 0; i--) {
    st_vec_hdr h;
    mn_status st = mn__st_read_row(s, txn, c, seqs[i], 1, &h);
    if (st == MN_ERR_NOT_FOUND)
      continue;
    MN__TRY(st);
    float *dst = ch->recent + (size_t)ch->recent_head * w;
    mn__st_decode_row(c, h.codes, h.scale, dst);
    ch->recent_norm[ch->recent_head] = sqrtf(mn__st_dot(dst, dst, c->width));
    ch->recent_head = (ch->recent_head + 1) % MN_SIG_RECENT;
    if (ch->n_recent < MN_SIG_RECENT)
      ch->n_recent++;
  }
  return MN_OK;
}

mn_status mn__st_sig_row(mn_store *s, st_coll *c, MDB_txn *txn, st_chat *ch,
                         const float *x, double raw_norm, int has_sig,
                         float *sig) {
  MN__TRY(touch(s, c, ch));
  int64_t w = c->width;
  if (!ch->recent) {
    ch->recent = mn_calloc((size_t)w * MN_SIG_RECENT, sizeof(float));
    if (!ch->recent)
      return mn__set_error(MN_ERR_NOMEM, "out of memory");
  }
  if (!ch->recent_loaded) {
    ch->n_recent = 0;
    ch->recent_head = 0;
    MN__TRY(load_recent(s, c, txn, ch));
    ch->recent_loaded = 1;
  }
  double nx = sqrt((double)mn__st_dot(x, x, w));
  if (!has_sig) {
    double surprise = 1.0, magnitude = 0.5, diversity = 1.0;
    if (ch->n > 0) {
      double nm = sqrt((double)mn__st_dot(ch->momentum, ch->momentum, w));
      surprise = clip01(1.0 - cosine(x, nx, ch->momentum, nm, w));
      if (ch->mean_norm > 0)
        magnitude = clip01(raw_norm / (2.0 * ch->mean_norm));
    }
    if (ch->n_recent > 0) {
      double best = -1.0;
      for (int j = 0; j < ch->n_recent; j++) {
        double cs = cosine(x, nx, ch->recent + (size_t)j * (size_t)w,
                           ch->recent_norm[j], w);
        if (cs > best)
          best = cs;
      }
      diversity = clip01(1.0 - best);
    }
    *sig = (float)clip01(0.4 * surprise + 0.3 * magnitude + 0.3 * diversity);
  }
  /* Update the chat's state with this memory. */
  if (ch->n == 0) {
    memcpy(ch->momentum, x, sizeof(float) * (size_t)w);
  } else {
    const float a = (float)MN_SIG_MOMENTUM_ALPHA;
    for (int64_t i = 0; i < w; i++)
      ch->momentum[i] = (1.0f - a) * ch->momentum[i] + a * x[i];
  }
  ch->mean_norm =
      (ch->mean_norm * (double)ch->n + raw_norm) / (double)(ch->n + 1);
  ch->n++;
  memcpy(ch->recent + (size_t)ch->recent_head * (size_t)w, x,
         sizeof(float) * (size_t)w);
  ch->recent_norm[ch->recent_head] = (float)nx;
  ch->recent_head = (ch->recent_head + 1) % MN_SIG_RECENT;
  if (ch->n_recent < MN_SIG_RECENT)
    ch->n_recent++;
  return MN_OK;
}
