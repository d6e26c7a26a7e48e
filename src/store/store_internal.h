/*
 * store_internal.h - the memory store's private structures, shared by the
 * files of src/store/.
 *
 * DESIGN (threads and ownership):
 *  - s->reg_lock (rwlock) guards the collection registry (s->colls). A
 *    caller looks a collection up and takes a reference (st_coll.refs);
 *    a dropped collection is freed when its last reference goes.
 *  - Every change to LMDB goes through one writer thread (store_db.c):
 *    callers queue an st_op and sleep until the writer has committed the
 *    group of ops it drained and the publisher thread has published their
 *    effects in memory. Groups are published in commit order, one behind
 *    the writer at most in practice: the writer applies and commits group
 *    k + 1 while group k is published.
 *  - Row bookkeeping of a collection (chunks, seq / ts / sig / chat / live
 *    arrays, counts, next_seq) is changed only by the publisher thread;
 *    the chat table only by the writer (the publisher reads only the
 *    indexes the writer put in the ops). Appends need no collection lock: rows
 * are written past a chunk's `n` and then `n` is released (stored with release
 * order, under tier_mu), then `live`; new chunks go into a directory of fixed
 * segments that never move, and `n_chunks` is released after them. Readers load
 *    `n_chunks`, then per chunk `live` before `n` (acquire), so a racing
 *    append can only make them over-estimate dead rows. Deletes and
 *    significance changes take the collection's rwlock for writing;
 *    searches hold it for reading. The chat table has its own mutex
 *    (chat_mu) for readers; the writer, its only mutator, reads it freely.
 *    Writer-only fields (pending_seq, committed_seq, chat significance
 *    state, `dropping`) need no lock at all. The writer reads chunk
 *    bookkeeping only to refill a chat's recent rows after an open
 *    (store_sig.c), with acquire loads of n_chunks and n.
 *  - Tier placement of chunk vectors (tier, host / dev buffers, pins, LRU
 *    lists, tier usage) is guarded by s->tier_mu. A chunk's codes may be
 *    read only while it is pinned; an eviction never touches a pinned
 *    chunk.
 *  - LMDB read transactions are taken under s->env_lock for reading; the
 *    writer takes it for writing only to grow the map (LMDB requires that
 *    no transaction is active then).
 *  - The loader thread (after open) reads chunks from disk into free room
 *    under the same rules as a search.
 *  Lock order: reg_lock -> coll->lock -> env_lock -> tier_mu; q_mu and
 *  chat_mu are leaves. Nothing holding a collection lock waits for the
 *  writer or publisher thread.
 */
#ifndef MNEMO_STORE_INTERNAL_H
#define MNEMO_STORE_INTERNAL_H

#include "common/internal.h"
#include "mnemo/store.h"

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#define ST_MOD "store"
/* meta "format": 2 = vectors packed in runs; 1 = one vector record per row
 * (converted at open, see store_db.c) */
#define ST_FORMAT_VERSION 2
#define ST_REC_VERSION 1 /* first byte of every record value but runs */
#define ST_RUN_VERSION 2 /* first byte of a vector run */
#define ST_DEFAULT_CHUNK_ROWS 4096
#define ST_DEFAULT_MAP_SIZE (1ull << 30)
#define ST_MAX_QUERIES 1024
#define ST_GROUP_MAX_OPS 1024
#define ST_GROUP_MAX_BYTES (64ull << 20)
#define ST_SEG_BITS 10  /* chunk pointers per directory segment: 1024 */
#define ST_SEG_MAX 4096 /* segments: up to 4M chunks per collection */

/* LMDB databases. */
enum {
  ST_DBI_META = 0, /* "format", "next_cid", "pca:<cid>" */
  ST_DBI_COLL,     /* name -> collection record */
  ST_DBI_ROWS,     /* cid|seq -> row record (time, significance, chat...) */
  ST_DBI_VEC,      /* cid|first seq -> vector run (codes of many rows) */
  ST_DBI_REC,      /* cid|seq -> id, content, metadata */
  ST_DBI_IDS,      /* cid|id -> seq */
  ST_DBI_CHATS,    /* cid|chat -> significance state */
  ST_DBI_COUNT
};

/* ------------------------------------------------------------------------
 * Records (little-endian, packed by hand in store_db.c).
 *
 * row record: u8 version, u8 flags, u16 chat_len, f32 significance,
 *   f64 timestamp, f32 norm, f32 scale, chat bytes. Everything the
 *   in-memory chunks need besides the vectors: open reads only these.
 * vector run (format 2): the codes of up to coll->run_rows rows written by
 *   one add, keyed by the first row's seq: u8 version (ST_RUN_VERSION),
 *   u8 flags (ST_RUN_SPARSE), u16 0, u32 count, u32 span, u32 0; when
 *   sparse, u32 offset[count] (seq - first seq, ascending) padded to a
 *   multiple of 16 bytes; then count x row_bytes codes in the collection's
 *   storage dtype. Dense: row i has seq first + i and span == count.
 *   Sparse runs are what deletes leave behind (only the live rows kept);
 *   span is the last offset + 1. The seq ranges [first, first + span) of
 *   a collection's runs never overlap.
 * vector record (format 1, read only to convert it): u8 version (1),
 *   7 bytes 0, codes.
 * memory record: u8 version, u8 0, u16 id_len, u32 content_len,
 *   u32 metadata_len, id, content, metadata.
 * collection record: u8 version, u8 metric, u8 dtype, u8 normalize,
 *   u32 cid, i64 dim, i64 width, f64 created, u64 next_seq, u16 pca_len,
 *   pca name.
 * chat record: u8 version, u8 0,0,0, u32 width, u64 n, f64 mean_norm,
 *   f32 momentum[width].
 * ---------------------------------------------------------------------- */
#define ST_ROW_HDR 24
#define ST_VEC_HDR 8 /* format 1 vector record */
#define ST_REC_HDR 12
#define ST_RUN_HDR 16
#define ST_RUN_SPARSE 1
/* A run's size aims at this many LMDB pages (128 KiB with 4 KiB pages):
 * the run is one overflow value, so at most part of its last page is
 * wasted, and deleting or reading one row touches a bounded amount. */
#define ST_RUN_TARGET_PAGES 32

/* A parsed vector run (pointers into the LMDB value). */
typedef struct st_run {
  uint64_t first; /* seq of the key */
  uint32_t count, span;
  const uint8_t *off; /* u32 offsets when sparse, else NULL; unaligned */
  const uint8_t *codes;
} st_run;

typedef struct st_vec_hdr {
  uint32_t chat_len;
  float sig;
  double ts;
  float norm;
  float scale;
  const char *chat;
  const void *codes; /* NULL unless the vector was read too */
} st_vec_hdr;

/* ------------------------------------------------------------------------
 * In-memory structures.
 * ---------------------------------------------------------------------- */
typedef struct st_coll st_coll;
typedef struct mn_store mn_store;

typedef struct st_chunk {
  st_coll *coll;
  int64_t index; /* position in the collection's chunk directory */
  int32_t cap;   /* rows */
  int32_t n;     /* rows appended (live or dead); atomic, see DESIGN */
  int32_t live;  /* atomic, see DESIGN */
  uint64_t *seq; /* [cap], ascending */
  double *ts;
  float *sig;
  float *norm;    /* norm of each decoded stored row */
  float *scale;   /* [cap] for int8 storage, else NULL */
  uint32_t *chat; /* interned chat index */
  uint64_t *live_bits;
  /* placement: guarded by store->tier_mu */
  int tier;   /* MN_TIER_DEVICE / HOST / DISK */
  void *host; /* cap * row_bytes codes when tier == HOST */
  void *dev;  /* device buffer when tier == DEVICE: codes, then
                 scales (int8) and norms, cap entries each */
  int pins;
  uint64_t last_used;
  struct st_chunk *lru_prev, *lru_next; /* in s->lru[tier] */
} st_chunk;

typedef struct st_chat {
  char *name;
  uint32_t len;
  uint32_t idx;
  /* significance state: writer thread only */
  uint64_t n;
  double mean_norm;
  float *momentum; /* [width] */
  float *recent;   /* [MN_SIG_RECENT * width] ring */
  int n_recent;
  int recent_head; /* next slot to write */
  float recent_norm[MN_SIG_RECENT];
  int recent_loaded; /* rebuilt from stored rows after an open */
  int dirty;         /* touched in the current group */
} st_chat;

struct st_coll {
  mn_store *store;
  uint32_t cid;
  char name[MN_COLLECTION_NAME_MAX + 1];
  int64_t dim, width, row_bytes;
  int32_t run_rows; /* rows per full vector run */
  mn_metric metric;
  mn_dtype dtype;
  int normalize;
  char pca_name[MN_MEMORY_ID_MAX + 1];
  mn_pca_model *pca;
  double created;

  pthread_rwlock_t lock;
  st_chunk **segs[ST_SEG_MAX]; /* chunk directory, see st_chunk_at */
  int64_t n_chunks;            /* atomic, see DESIGN */
  int64_t count;               /* live memories, atomic */
  uint64_t next_seq;           /* published (publisher thread) */

  /* chat table: hash of name -> idx, array idx -> chat; chat_mu */
  pthread_mutex_t chat_mu;
  st_chat **chats;
  uint32_t n_chats, cap_chats;
  uint32_t *chat_hash; /* open addressing, idx + 1, 0 = empty */
  uint32_t hash_cap;

  /* writer thread only */
  uint64_t pending_seq;   /* next seq to assign */
  uint64_t committed_seq; /* next seq after the last commit */
  int dropping;
  int created_pending; /* created in the current group */

  atomic_int refs;
  int dead; /* dropped and unregistered */
};

static inline st_chunk *st_chunk_at(const st_coll *c, int64_t i) {
  return c->segs[i >> ST_SEG_BITS][i & ((1 << ST_SEG_BITS) - 1)];
}
static inline int64_t st_nchunks(const st_coll *c) {
  return __atomic_load_n(&c->n_chunks, __ATOMIC_ACQUIRE);
}
static inline int32_t st_chunk_n(const st_chunk *ch) {
  return __atomic_load_n(&ch->n, __ATOMIC_ACQUIRE);
}
static inline int32_t st_chunk_live(const st_chunk *ch) {
  return __atomic_load_n(&ch->live, __ATOMIC_ACQUIRE);
}
static inline int st_row_live(const st_chunk *ch, int32_t r) {
  return (int)(__atomic_load_n(&ch->live_bits[r >> 6], __ATOMIC_RELAXED) >>
                   (r & 63) &
               1);
}

/* Working chunk (the seed's chunk API). */
typedef struct st_work {
  char id[MN_CHUNK_ID_MAX + 1];
  char chat[MN_CHAT_ID_MAX + 1];
  uint64_t size, used;
  int64_t rows, width;
  double created, last_accessed;
  float *data;
  struct st_work *next;
} st_work;

/* ------------------------------------------------------------------------
 * Write operations (queued to the writer thread).
 * ---------------------------------------------------------------------- */
enum {
  ST_OP_ADD = 1,
  ST_OP_DELETE,
  ST_OP_UPDATE,
  ST_OP_REINFORCE,
  ST_OP_CREATE,
  ST_OP_DROP
};

typedef struct st_add_row {
  char id[MN_MEMORY_ID_MAX + 1]; /* "" until assigned */
  uint32_t id_len;
  const char *content; /* borrowed from the caller */
  uint32_t content_len;
  char *metadata; /* normalised JSON text, owned */
  uint32_t metadata_len;
  const char *chat;
  uint32_t chat_len;
  double ts;
  int has_sig;
  float sig;
  double raw_norm;
  float norm;
  float scale;
  /* filled by the writer */
  uint64_t seq;
  uint32_t chat_idx;
  int id_assigned; /* the writer generated the id */
} st_add_row;

typedef struct st_op {
  int kind;
  st_coll *coll;
  struct st_op *next;
  mn_status status;
  char msg[512];
  uint64_t res_req, res_avail;
  int done;
  struct st_op *grp_next; /* first op of the next group (publisher queue) */
  int grp_committed;      /* first op of a group: the group committed */
  uint64_t est_bytes;     /* for the disk budget, set by the writer */
  uint64_t payload;       /* bytes carried, to bound a group */

  union {
    struct {
      int64_t n;
      st_add_row *rows;
      float *x;    /* n x width processed float vectors */
      void *codes; /* n x row_bytes */
    } add;
    struct {
      int64_t n;
      const char *const *ids;
      uint8_t *found;
      uint64_t *seqs; /* n, filled by the writer (UINT64_MAX: unknown) */
      int64_t deleted;
    } del;
    struct {
      const char *id;
      const mn_memory_update *u;
      char *metadata; /* normalised, owned */
      uint64_t seq;
      float sig;
    } upd;
    struct {
      int64_t n;
      uint64_t *seqs;
      float *sig; /* new values, filled by the writer */
      uint8_t *ok;
    } rein;
    struct {
      mn_collection_opts opts;
      mn_pca_model *pca; /* owned until the collection takes it */
      st_coll *made;
    } create;
  } u;
} st_op;

/* op as an op of `kind` on collection c (NULL: none yet), every other
 * field zero. */
static inline void st_op_init(st_op *op, int kind, st_coll *c) {
  memset(op, 0, sizeof *op);
  op->kind = kind;
  op->coll = c;
}

/* ------------------------------------------------------------------------
 * The store.
 * ---------------------------------------------------------------------- */
struct mn_store {
  mn_store_opts opts;
  char data_dir[1024];
  char path[1100];
  mn_backend *backend; /* the caller's (maybe GPU) */
  mn_backend *cpu;     /* always a CPU backend, owned */
  int own_backend;
  int l1_enabled;

  MDB_env *env;
  MDB_dbi dbi[ST_DBI_COUNT];
  pthread_rwlock_t env_lock;
  uint64_t map_size;
  int64_t map_grows;
  unsigned psize;

  pthread_rwlock_t reg_lock;
  st_coll **colls;
  int64_t n_colls, cap_colls;
  uint32_t next_cid; /* writer thread */

  /* writer and publisher */
  pthread_t writer, publisher;
  int writer_running;
  pthread_mutex_t q_mu;
  pthread_cond_t q_cv, done_cv, pub_cv;
  st_op *q_head, *q_tail;
  st_op *pub_head, *pub_tail; /* committed groups not yet published */
  int stopping, pub_stopping;
  uint64_t commits, writes; /* under q_mu */
  uint64_t disk_used;       /* LMDB pages in use after the last commit
                               (writer thread) */
  int grp_committed;        /* writer thread: the last group committed */
  int disk_accounted;       /* disk_used is in mn_account (MN_TIER_DISK) */
  uint64_t stat_disk_used, stat_map_size; /* copies under q_mu */
  int64_t stat_map_grows;

  /* tiers */
  pthread_mutex_t tier_mu;
  st_chunk *lru_head[MN_TIER_COUNT], *lru_tail[MN_TIER_COUNT];
  uint64_t used[MN_TIER_COUNT]; /* L1 / L2 chunk bytes (L2 also working) */
  uint64_t budget[MN_TIER_COUNT];
  uint64_t l1_cap;  /* UINT64_MAX, or the ceiling device out of memory has
                       put on L1 chunks (store_chunk.c, mn__st_l1_oom) */
  double l1_cap_at; /* mn__st_now() when it was last lowered */
  int64_t tier_chunks[MN_TIER_COUNT];
  atomic_uint_fast64_t tick;
  int64_t promotions, demotions;

  /* working chunks */
  pthread_mutex_t work_mu;
  st_work *work;
  uint64_t work_counter;
  int64_t n_work;
  uint64_t work_bytes;

  /* ids */
  pthread_mutex_t id_mu;
  uint64_t id_last_ms;
  uint32_t id_counter;

  /* maintenance */
  pthread_t maint;
  int maint_running;
  pthread_mutex_t maint_mu;
  pthread_cond_t maint_cv;

  int64_t stale_readers;
  struct st_sig_log *sig_log; /* writer thread only */

  /* warm-up after open: brings chunks from disk into free L1 / L2 room */
  pthread_t loader;
  int loader_running;
  atomic_int loader_stop;
  atomic_int warming;
};

/* A bump allocator whose blocks are freed together. */
typedef struct st_arena {
  struct st_blk *head;
} st_arena;

/* store.c */
double mn__st_now(mn_store *s);
mn_status mn__st_coll_ref(mn_store *s, const char *name, st_coll **out);
void mn__st_coll_unref(st_coll *c);
mn_status mn__st_check_name(const char *name);
mn_status mn__st_resource(uint64_t req, uint64_t avail, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void mn__st_resource_clear(void);
void mn__st_coll_free(st_coll *c);
st_coll *mn__st_coll_new(mn_store *s);
void mn__st_register(mn_store *s, st_coll *c, mn_pca_model *pca);
void mn__st_unregister(mn_store *s, st_coll *c);
void mn__st_gen_id(mn_store *s, char *out);

/* store_db.c: LMDB, records, the writer thread */
mn_status mn__st_db_open(mn_store *s);
void mn__st_db_close(mn_store *s);
mn_status mn__st_lmdb(int rc, const char *what);
mn_status mn__st_read_begin(mn_store *s, MDB_txn **txn);
void mn__st_read_end(mn_store *s, MDB_txn *txn);
mn_status mn__st_submit(mn_store *s, st_op *op);
mn_status mn__st_writer_start(mn_store *s);
void mn__st_writer_stop(mn_store *s);
void mn__st_key_seq(uint8_t key[12], uint32_t cid, uint64_t seq);
size_t mn__st_key_str(uint8_t *key, uint32_t cid, const char *str, size_t len);
int mn__st_row_parse(const MDB_val *v, st_vec_hdr *h);
int32_t mn__st_run_rows(unsigned psize, int64_t row_bytes);
int mn__st_run_parse(const MDB_val *k, const MDB_val *v, int64_t row_bytes,
                     st_run *r);
int64_t mn__st_run_index(const st_run *r, uint64_t seq);
mn_status mn__st_run_seek(MDB_cursor *cur, uint32_t cid, uint64_t seq,
                          int64_t row_bytes, st_run *r);
mn_status mn__st_read_row(mn_store *s, MDB_txn *txn, const st_coll *c,
                          uint64_t seq, int want_codes, st_vec_hdr *h);
/* The seq of memory `id` of collection c: MN_ERR_NOT_FOUND when there is
 * none, MN_ERR_IO when its index entry is damaged. */
mn_status mn__st_find_seq(mn_store *s, MDB_txn *txn, const st_coll *c,
                          const char *id, uint64_t *seq);
int mn__st_rec_parse(const MDB_val *v, const char **id, uint32_t *id_len,
                     const char **content, uint32_t *content_len,
                     const char **meta, uint32_t *meta_len);
mn_status mn__st_load(mn_store *s);
mn_status mn__st_loader_start(mn_store *s);
void mn__st_loader_stop(mn_store *s);

/* store_chunk.c: chunks and tiers */
st_chunk *mn__st_chunk_new(st_coll *c);
void mn__st_chunk_link(st_coll *c, st_chunk *ch);
void mn__st_chunk_free(mn_store *s, st_chunk *ch);
void mn__st_chunk_place(mn_store *s, st_chunk *ch, void *buf);
mn_status mn__st_chunk_append(mn_store *s, st_chunk *ch, int32_t at,
                              const void *codes, int32_t n);
int mn__st_chunk_find(const st_coll *c, uint64_t seq, int32_t *row);
mn_status mn__st_chunk_acquire(mn_store *s, st_chunk *ch, uint64_t op_tick,
                               int32_t n, int promote, void **scratch,
                               const void **codes_host, const void **dev);
void mn__st_chunk_release(mn_store *s, st_chunk *ch, void *scratch);
void mn__st_l1_oom(mn_store *s);
/* Offsets in a chunk's device buffer of its scales (int8) and norms. */
uint64_t mn__st_dev_scale_off(const st_chunk *ch);
uint64_t mn__st_dev_norm_off(const st_chunk *ch);
mn_status mn__st_chunk_load_rows(mn_store *s, st_chunk *ch, int32_t n,
                                 void *dst);
int mn__st_chunk_warm(mn_store *s, st_chunk *ch);
void mn__st_chunk_place_disk(mn_store *s, st_chunk *ch);
mn_status mn__st_host_reserve(mn_store *s, uint64_t bytes);
void mn__st_host_release(mn_store *s, uint64_t bytes);
void mn__st_demote_to(mn_store *s, double frac, int64_t *n, uint64_t *bytes);
mn_pressure mn__st_pressure_locked(mn_store *s);
void mn__st_decode_row(const st_coll *c, const void *codes, float scale,
                       float *out);
mn_status mn__st_encode_rows(mn_store *s, const st_coll *c, const float *x,
                             int64_t n, void *codes, float *scales,
                             float *norms);

/* store_sig.c: chats and significance */
st_chat *mn__st_chat_get(st_coll *c, const char *name, uint32_t len,
                         int create);
int mn__st_chat_lookup(st_coll *c, const char *name, uint32_t *idx);
void mn__st_chat_name(st_coll *c, uint32_t idx, char *out, size_t cap);
void mn__st_chat_free(st_chat *ch);
void mn__st_sig_begin_group(mn_store *s);
mn_status mn__st_sig_row(mn_store *s, st_coll *c, MDB_txn *txn, st_chat *ch,
                         const float *x, double raw_norm, int has_sig,
                         float *sig);
mn_status mn__st_sig_persist(mn_store *s, MDB_txn *txn);
void mn__st_sig_end_group(mn_store *s, int ok);
void mn__st_sig_log_free(mn_store *s);
float mn__st_dot(const float *a, const float *b, int64_t n);

/* store_mem.c: memories, arena */
void *mn__st_arena_alloc(st_arena *a, size_t n);
char *mn__st_arena_str(st_arena *a, const char *s, size_t n);
void mn__st_arena_free(st_arena *a);
mn_status mn__st_process(mn_store *s, const st_coll *c, float *in, int64_t n,
                         float *out);

/* store_work.c: working chunks */
void mn__st_work_free_all(mn_store *s);
void mn__st_work_expire(mn_store *s, double now, int all,
                        mn_cleanup_report *rep);

#endif /* MNEMO_STORE_INTERNAL_H */
