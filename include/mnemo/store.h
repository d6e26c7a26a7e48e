/*
 * mnemo/store.h - the memory store: collections of memories (an embedding
 * with its text, metadata, time and significance), kept durable in LMDB,
 * placed in a device / host / disk hierarchy, and found again by exact
 * similarity search with filters and ranking. Also the seed's per-chat
 * working-memory chunks (allocateMemory / processChunk / readChunk /
 * freeMemory / listChunks).
 *
 * Durability: a call that writes returns only after its LMDB transaction
 * committed (durably unless opts.durable is 0). Writes from many threads
 * share commits: one writer thread drains the queue of pending writes into
 * one transaction and then wakes every caller (group commit).
 *
 * Tiers: a collection's vectors live in chunks of opts.chunk_rows rows of
 * the collection's storage dtype. A chunk's vectors are in L1 (device
 * memory; only when the store's backend is a GPU backend), L2 (host
 * memory) or L3 (only on disk, in LMDB; searched by reading its rows back).
 * LMDB always holds every memory, so moving a chunk down never loses one.
 * Least-recently-used chunks move down when a tier's budget would be
 * crossed and come back up when a search uses them and there is room.
 * Device out of memory is not an error: a search finishes on the CPU
 * (mn_search_result_cpu_fallback says so) with the same results, and L1
 * gets a lower ceiling (mn_store_stats.l1_cap) so that the device's own
 * work has room again.
 *
 * Pressure (the seed's states) is read from L2 usage against its budget:
 * normal below 60 %, high_load from 60 % to 80 %, recovery above 80 %. In
 * recovery the store runs a cleanup (idle working chunks past their TTL are
 * freed, least-recently-used memory chunks move to L3 until usage is below
 * 60 %), and a new allocation that cannot fit fails with MN_ERR_RESOURCE;
 * mn_store_last_resource() then gives the requested and available bytes.
 *
 * Ranking: for a query q and a memory m,
 *     score = similarity(q, m) * significance(m)^w * decay(m)
 *     decay = exp(-time_decay * max(0, now - timestamp(m)))
 * where w is significance_weight. similarity is the cosine or the inner
 * product for those metrics; for "l2" it is 1 / (1 + d) with d the squared
 * Euclidean distance, so that higher is always closer. Stored vectors are
 * compared as stored (decoded from their dtype, compute.h mn_vecblock).
 * Ties are broken by insertion order (older first).
 *
 * Significance, when a memory comes without one (per collection and chat;
 * the vector x is the processed one: normalised and PCA-reduced as the
 * collection says; r is the raw norm of the embedding as given):
 *     significance = 0.4 * surprise + 0.3 * magnitude + 0.3 * diversity
 *     surprise  = clip(1 - cos(x, momentum), 0, 1); 1 for a chat's first
 *                 memory. momentum is an exponential moving average of the
 *                 chat's processed vectors: m <- (1 - a) m + a x, a =
 *                 MN_SIG_MOMENTUM_ALPHA (0.1), m = x for the first memory.
 *     magnitude = clip(r / (2 * mean_r), 0, 1), mean_r the running mean of
 *                 the chat's previous raw norms (0.5 for the first memory,
 *                 or when mean_r is 0). A memory as large as the chat's
 *                 average scores 0.5; twice as large or more scores 1.
 *     diversity = clip(1 - max_j cos(x, y_j), 0, 1) over the chat's last
 *                 MN_SIG_RECENT (16) memories y_j; 1 when there are none.
 * Every memory added to a chat (with or without a significance) updates
 * that chat's momentum, mean norm and recent list, in insertion order, in
 * the same transaction as the memory. The momentum and mean norm persist;
 * after a restart the recent list is rebuilt from the chat's last stored
 * vectors (as stored: for quantised dtypes, their decoded values).
 * Memories without a chatId share the chat "" for this purpose.
 * Reinforcement (mn_search_params.reinforce): every memory a search
 * returns gets significance += MN_SIG_REINFORCE_BETA * (1 - significance),
 * persisted before the search returns; the results show the values used
 * for ranking, from before the reinforcement.
 *
 * Threads: every function may be called from any thread at once. Searches
 * and reads of one collection run together; writes to it wait for them
 * briefly while their committed effects are published.
 */
#ifndef MNEMO_STORE_H
#define MNEMO_STORE_H

#include "mnemo/common.h"
#include "mnemo/compute.h"
#include "mnemo/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mn_store mn_store;

/** Limits. */
#define MN_COLLECTION_NAME_MAX 64 /* bytes, [A-Za-z0-9_.-] */
#define MN_MEMORY_ID_MAX 128      /* bytes */
#define MN_CHAT_ID_MAX 128        /* bytes */
#define MN_CHUNK_ID_MAX 32        /* bytes of a working-chunk id */
#define MN_SEARCH_MAX_K 4096
#define MN_STORE_MAX_DIM 65536

/** Significance parameters (see the header comment). */
#define MN_SIG_MOMENTUM_ALPHA 0.1
#define MN_SIG_RECENT 16
#define MN_SIG_REINFORCE_BETA 0.1

/** Pressure thresholds, fractions of the L2 budget. */
#define MN_PRESSURE_HIGH_FRAC 0.60
#define MN_PRESSURE_RECOVERY_FRAC 0.80

/* ------------------------------------------------------------------------
 * Opening and closing.
 * ---------------------------------------------------------------------- */

/** Resolve a PCA model by name for a new collection. Return a model the
 *  store then owns (freed with mn_pca_free), or an error (MN_ERR_NOT_FOUND
 *  with a detail message). */
typedef mn_status (*mn_pca_resolve_fn)(void *user, const char *name,
                                       mn_pca_model **out);

/** Wall clock in Unix seconds; tests inject their own. */
typedef double (*mn_clock_fn)(void *user);

typedef struct mn_store_opts {
  const char *data_dir;   /* LMDB lives in <data_dir>/store (created) */
  mn_backend *backend;    /* borrowed; L1 is used when it is a GPU backend.
                             NULL: the store uses a CPU backend of its own */
  uint64_t l1_budget;     /* bytes of device memory for chunks; 0: 80 % of
                             the device's free memory at open */
  uint64_t l2_budget;     /* bytes of host memory for chunks and working
                             chunks (processing.cache_size); 0: no limit */
  uint64_t l3_budget;     /* bytes on disk (storage.disk_limit); 0: none */
  int durable;            /* 1: fsync every commit; 0: MDB_NOSYNC
                             (storage.sync "none") */
  double chunk_ttl_s;     /* idle working chunks are freed after this
                             (storage.chunk_ttl); <= 0: never */
  uint64_t map_size;      /* initial LMDB map size, bytes; 0: 1 GiB. The
                             map grows by doubling whenever it is full */
  int64_t chunk_rows;     /* rows per chunk, 0: 4096 (at most 4096) */
  int64_t maintenance_ms; /* run maintenance (TTL cleanup, pressure) on a
                             thread this often; 0: only when asked */
  mn_pca_resolve_fn pca_resolve; /* NULL: load <data_dir>/pca/<name>.pca
                                    with mn_pca_load */
  void *pca_user;
  mn_clock_fn clock; /* NULL: mn_time_unix */
  void *clock_user;
} mn_store_opts;

/** Defaults: data_dir "./data", no backend, no budgets, durable, TTL 3600
 *  s, 1 GiB map, 4096-row chunks, maintenance every 1000 ms. */
MN_API void mn_store_opts_init(mn_store_opts *o);

/**
 * Take data_dir, budgets (gpu.memory_limit, processing.cache_size,
 * storage.disk_limit), storage.sync and storage.chunk_ttl from a
 * configuration. `o` keeps pointers into `c`, which must outlive the open.
 * @return MN_OK; MN_ERR_INVALID when storage.sync is not "durable" or
 *         "none".
 */
MN_API mn_status mn_store_opts_from_config(mn_store_opts *o,
                                           const mn_config *c);

/**
 * Open (creating when absent) the store under opts->data_dir and rebuild
 * every collection's chunks from LMDB. Stale reader slots left by dead
 * processes are cleared first. Open reads only the small per-memory row
 * records and returns ready to serve; a background thread then reads the
 * vectors into the free room of L1 / L2 (newest chunks first), while
 * searches read from disk whatever is not in memory yet
 * (mn_store_stats.warming).
 * @param[in]  opts  options (NULL: defaults)
 * @param[out] out   the store, to be closed with mn_store_close()
 * @return MN_OK; MN_ERR_IO when the directory or the LMDB environment
 *         cannot be opened (detail says why); MN_ERR_VERSION when the data
 *         was written by an incompatible format version; MN_ERR_NOMEM.
 */
MN_API mn_status mn_store_open(const mn_store_opts *opts, mn_store **out);

/** Finish queued writes, stop the threads, free everything. Call it when
 *  no other call on this store is in flight. NULL is accepted. */
MN_API void mn_store_close(mn_store *s);

/* ------------------------------------------------------------------------
 * Collections.
 * ---------------------------------------------------------------------- */
typedef struct mn_collection_opts {
  const char *name;      /* 1-64 bytes of [A-Za-z0-9_.-] */
  int64_t dim;           /* width of the embeddings clients send */
  mn_metric metric;      /* cosine, ip or l2 */
  mn_dtype dtype;        /* storage: F32, F16, I8 (per-row scale) or BIN */
  const char *pca_model; /* NULL or a model name: vectors are reduced to its
                            n_components; the model is copied into the
                            store, so later changes to it do not matter */
  int normalize;         /* L2-normalise embeddings (and queries) first */
} mn_collection_opts;

typedef struct mn_collection_info {
  char name[MN_COLLECTION_NAME_MAX + 1];
  int64_t dim;   /* embedding width clients send */
  int64_t width; /* stored width (n_components with a PCA model) */
  mn_metric metric;
  mn_dtype dtype;
  int normalize;
  char pca_model[MN_MEMORY_ID_MAX + 1]; /* "" when none */
  double created;                       /* Unix seconds */
  int64_t count;                        /* live memories */
  int64_t chunks;                       /* chunks, and how many in each tier */
  int64_t chunks_tier[MN_TIER_COUNT];
  uint64_t bytes[MN_TIER_COUNT]; /* vector bytes resident in L1 / L2, and
                                    held in LMDB for L3 */
  int64_t row_bytes;             /* bytes of one stored vector */
} mn_collection_info;

/**
 * Create a collection.
 * @param[out] info  may be NULL; filled with the new collection's info
 * @return MN_OK; MN_ERR_INVALID (bad name, dim outside 1..65536, unknown
 *         metric or dtype, dtype not one of float32/float16/int8/binary,
 *         PCA model width not equal to dim); MN_ERR_EXISTS; MN_ERR_NOT_FOUND
 *         (PCA model); MN_ERR_RESOURCE (disk budget); MN_ERR_IO.
 */
MN_API mn_status mn_store_collection_create(mn_store *s,
                                            const mn_collection_opts *opts,
                                            mn_collection_info *info);

/** @return MN_OK; MN_ERR_NOT_FOUND; MN_ERR_INVALID (bad name). */
MN_API mn_status mn_store_collection_get(mn_store *s, const char *name,
                                         mn_collection_info *info);

/**
 * Every collection, sorted by name.
 * @param[out] out  a malloc'd array the caller frees with free() (NULL when
 *                  there are none)
 * @param[out] n    its length
 * @return MN_OK; MN_ERR_NOMEM.
 */
MN_API mn_status mn_store_collection_list(mn_store *s, mn_collection_info **out,
                                          int64_t *n);

/**
 * Drop a collection with every memory in it (durably).
 * @return MN_OK; MN_ERR_NOT_FOUND; MN_ERR_INVALID; MN_ERR_IO.
 */
MN_API mn_status mn_store_collection_drop(mn_store *s, const char *name);

/**
 * The stored vectors of a collection, decoded to float32 (after the
 * collection's normalize / PCA, as its dtype keeps them), oldest first; at
 * most max_rows of them, evenly spaced, when max_rows > 0. For fitting a
 * PCA model on what a collection holds.
 * @param[out] out    malloc'd rows x width floats (NULL when empty), freed
 *                    by the caller with free()
 * @return MN_OK; MN_ERR_NOT_FOUND; MN_ERR_INVALID; MN_ERR_NOMEM; MN_ERR_IO.
 */
MN_API mn_status mn_store_collection_vectors(mn_store *s, const char *name,
                                             int64_t max_rows, float **out,
                                             int64_t *rows, int64_t *width);

/* ------------------------------------------------------------------------
 * Memories.
 * ---------------------------------------------------------------------- */
typedef struct mn_memory_in {
  const char *id;         /* NULL or "": the store assigns a time-ordered id
                             "m_<12 hex ms><8 hex counter>" */
  const float *embedding; /* dim floats (the collection's dim) */
  const char *content;    /* NULL: "" */
  const char *metadata;   /* JSON object text; NULL: "{}" */
  const char *chat_id;    /* NULL: "" (no chat) */
  int has_timestamp;      /* else: now */
  double timestamp;       /* Unix seconds */
  int has_significance;   /* else: computed (header comment) */
  double significance;    /* [0, 1] */
} mn_memory_in;

/** Zero the struct (every field absent). */
MN_API void mn_memory_in_init(mn_memory_in *m);

typedef struct mn_memory_id {
  char s[MN_MEMORY_ID_MAX + 1];
} mn_memory_id;

/**
 * Add a batch of memories, all or nothing. Embeddings go through the
 * collection's processing (normalize, PCA) and are stored in its dtype.
 * @param[in]  coll  collection name
 * @param[in]  mems  n memories
 * @param[out] ids   n slots for the ids (given or assigned); may be NULL
 * @return MN_OK; MN_ERR_NOT_FOUND (collection); MN_ERR_INVALID (n < 1;
 *         missing embedding, NaN or Inf, bad id, metadata not a JSON
 *         object, timestamp not finite, significance outside [0, 1]: the
 *         detail names the index); MN_ERR_EXISTS (an id repeated in the
 *         batch or already stored: the detail names it); MN_ERR_RESOURCE
 *         (disk budget; mn_store_last_resource() says how much);
 *         MN_ERR_IO.
 */
MN_API mn_status mn_store_add(mn_store *s, const char *coll,
                              const mn_memory_in *mems, int64_t n,
                              mn_memory_id *ids);

/** What a read returns besides id, timestamp, significance and chat. */
enum {
  MN_INCLUDE_CONTENT = 1u << 0,
  MN_INCLUDE_METADATA = 1u << 1,
  MN_INCLUDE_EMBEDDING = 1u << 2, /* the stored vector, decoded */
  MN_INCLUDE_DEFAULT = MN_INCLUDE_CONTENT | MN_INCLUDE_METADATA
};

/** One memory as read back. Every pointer is owned by the list it came
 *  from and valid until that list is freed. */
typedef struct mn_memory {
  const char *id;
  const char *content;  /* NULL unless MN_INCLUDE_CONTENT */
  const char *metadata; /* JSON object text; NULL unless included */
  const char *chat_id;
  double timestamp;
  double significance;
  const float *embedding; /* width floats; NULL unless included */
  int64_t width;
} mn_memory;

typedef struct mn_memory_list mn_memory_list;

MN_API int64_t mn_memory_list_count(const mn_memory_list *l);
/** Borrowed; i in [0, count). */
MN_API const mn_memory *mn_memory_list_at(const mn_memory_list *l, int64_t i);
/** Ids asked for that were not found, in the order asked. */
MN_API int64_t mn_memory_list_missing_count(const mn_memory_list *l);
MN_API const char *mn_memory_list_missing_at(const mn_memory_list *l,
                                             int64_t i);
MN_API void mn_memory_list_free(mn_memory_list *l);

/**
 * Read memories by id, in the order asked; unknown ids are listed apart
 * (not an error).
 * @param[out] out  free with mn_memory_list_free()
 * @return MN_OK; MN_ERR_NOT_FOUND (collection); MN_ERR_INVALID (n < 0, a
 *         NULL or over-long id); MN_ERR_NOMEM.
 */
MN_API mn_status mn_store_get(mn_store *s, const char *coll,
                              const char *const *ids, int64_t n,
                              unsigned include, mn_memory_list **out);

typedef struct mn_memory_update {
  const char *content;  /* NULL: keep */
  const char *metadata; /* JSON object text replacing it; NULL: keep */
  int has_significance;
  double significance; /* [0, 1] */
} mn_memory_update;

/**
 * Change a memory's content, metadata or significance.
 * @param[out] out  may be NULL; the memory after the change
 * @return MN_OK; MN_ERR_NOT_FOUND (collection or id); MN_ERR_INVALID
 *         (metadata not a JSON object, significance outside [0, 1], nothing
 *         to change); MN_ERR_RESOURCE; MN_ERR_IO.
 */
MN_API mn_status mn_store_update(mn_store *s, const char *coll, const char *id,
                                 const mn_memory_update *u, unsigned include,
                                 mn_memory_list **out);

/**
 * Delete memories by id. Unknown ids are not an error.
 * @param[out] deleted  may be NULL; how many were deleted
 * @param[out] found    may be NULL; n flags, 1 where that id was deleted
 * @return MN_OK; MN_ERR_NOT_FOUND (collection); MN_ERR_INVALID; MN_ERR_IO.
 */
MN_API mn_status mn_store_delete(mn_store *s, const char *coll,
                                 const char *const *ids, int64_t n,
                                 int64_t *deleted, uint8_t *found);

/* ------------------------------------------------------------------------
 * Search.
 * ---------------------------------------------------------------------- */
typedef struct mn_search_params {
  const float *queries; /* n_queries x dim float32, row-major */
  int64_t n_queries;    /* >= 1 */
  int64_t dim;          /* must equal the collection's dim */
  int64_t k;            /* 1..MN_SEARCH_MAX_K */
  const char *chat_id;  /* filter: only this chat; NULL: any */
  int has_since, has_until;
  double since, until;  /* filter: since <= timestamp <= until */
  const char *metadata; /* filter: JSON object of top-level key ->
                           string / number / boolean / null; a memory
                           matches when each key is present with an
                           equal value (numbers compare by value) */
  int has_min_similarity;
  double min_similarity;      /* drop results whose similarity is lower */
  double time_decay;          /* per second, >= 0; 0: no decay */
  double significance_weight; /* >= 0; 0: significance does not count */
  int has_now;                /* else: now is the store's clock */
  double now;                 /* reference time for decay: any finite
                                 time, 0 (the epoch) included */
  unsigned include;           /* MN_INCLUDE_* */
  int reinforce;              /* reinforce the significance of what is
                                 returned (header comment) */
} mn_search_params;

/** Defaults: k 10, no filters, no decay, weight 0, MN_INCLUDE_DEFAULT. */
MN_API void mn_search_params_init(mn_search_params *p);

typedef struct mn_search_hit {
  const char *id;
  double score;
  double similarity;
  double significance;
  double decay;
  double timestamp;
  const char *chat_id;
  const char *content;    /* NULL unless included */
  const char *metadata;   /* NULL unless included */
  const float *embedding; /* NULL unless included */
} mn_search_hit;

typedef struct mn_search_result mn_search_result;

MN_API int64_t mn_search_result_queries(const mn_search_result *r);
/** Hits for query q, best first; *n receives their count (<= k).
 *  Borrowed, valid until mn_search_result_free(). */
MN_API const mn_search_hit *mn_search_result_hits(const mn_search_result *r,
                                                  int64_t q, int64_t *n);
/** The embedding width of included embeddings. */
MN_API int64_t mn_search_result_width(const mn_search_result *r);
/**
 * NULL when the search ran where its chunks live. Otherwise the device ran
 * out of memory during it, and what was left of it (every chunk from then
 * on, device-resident ones read back from LMDB) ran on the CPU: the
 * device's message. The results are the same either way. Borrowed, valid
 * until mn_search_result_free().
 */
MN_API const char *mn_search_result_cpu_fallback(const mn_search_result *r);
MN_API void mn_search_result_free(mn_search_result *r);

/**
 * Exact top-k search with filters and ranking (header comment).
 * @param[out] out  free with mn_search_result_free()
 * @return MN_OK; MN_ERR_NOT_FOUND (collection); MN_ERR_INVALID (k outside
 *         1..4096, dim not the collection's, NaN or Inf in a query, a
 *         metadata filter that is not an object of scalars, a negative
 *         decay or weight, since after until); MN_ERR_IO; MN_ERR_NOMEM;
 *         what the backend returns (MN_ERR_DEVICE...), except
 *         MN_ERR_DEVICE_OOM, after which the search goes on on the CPU
 *         (mn_search_result_cpu_fallback).
 */
MN_API mn_status mn_store_search(mn_store *s, const char *coll,
                                 const mn_search_params *p,
                                 mn_search_result **out);

/* ------------------------------------------------------------------------
 * Working-memory chunks (the seed's allocateMemory / processChunk /
 * readChunk / freeMemory / listChunks). A chunk is `size` bytes of host
 * memory holding float32 rows of one width, counted against the L2
 * budget, owned by a chat. It is not persisted: it is scratch memory that
 * is freed after chunk_ttl_s without use, by mn_store_cleanup(), or by
 * mn_store_chunk_free().
 * ---------------------------------------------------------------------- */
typedef struct mn_chunk_info {
  char id[MN_CHUNK_ID_MAX + 1]; /* "chunk_<hex>" */
  char chat_id[MN_CHAT_ID_MAX + 1];
  uint64_t size; /* bytes allocated */
  uint64_t used; /* bytes written */
  int64_t rows;
  int64_t width;  /* 0 until the first write */
  double created; /* Unix seconds */
  double last_accessed;
} mn_chunk_info;

/**
 * Allocate a working chunk of `size` bytes for a chat.
 * @param[in] chunk_id  NULL: the store assigns "chunk_<16 hex>"; else the
 *                      caller's id, 1-32 bytes of [A-Za-z0-9_.-]
 * @return MN_OK; MN_ERR_INVALID (size 0 or above 2^40, bad chat or chunk
 *         id); MN_ERR_EXISTS (that chunk id is taken); MN_ERR_RESOURCE (does
 *         not fit in L2 even after moving memory chunks to disk;
 *         mn_store_last_resource() has the figures); MN_ERR_NOMEM.
 */
MN_API mn_status mn_store_chunk_alloc(mn_store *s, uint64_t size,
                                      const char *chat_id, const char *chunk_id,
                                      mn_chunk_info *info);

/**
 * Append `rows` float32 rows of `width` to a chunk.
 * @param[out] info  may be NULL; the chunk after the write
 * @return MN_OK; MN_ERR_NOT_FOUND; MN_ERR_INVALID (width differs from the
 *         chunk's rows, NaN or Inf, rows < 1); MN_ERR_RESOURCE (the chunk
 *         is too small: requested and available bytes via
 *         mn_store_last_resource()).
 */
MN_API mn_status mn_store_chunk_write(mn_store *s, const char *chunk_id,
                                      const float *data, int64_t rows,
                                      int64_t width, mn_chunk_info *info);

/**
 * Copy a chunk's rows out.
 * @param[out] data  malloc'd rows x width float32 (NULL when empty); the
 *                   caller frees it with free()
 * @return MN_OK; MN_ERR_NOT_FOUND; MN_ERR_NOMEM.
 */
MN_API mn_status mn_store_chunk_read(mn_store *s, const char *chunk_id,
                                     float **data, mn_chunk_info *info);

/** @return MN_OK; MN_ERR_NOT_FOUND. */
MN_API mn_status mn_store_chunk_free(mn_store *s, const char *chunk_id);

/**
 * Working chunks, oldest first; only those of `chat_id` unless it is NULL.
 * @param[out] out  malloc'd array freed with free() (NULL when none)
 * @return MN_OK; MN_ERR_NOMEM.
 */
MN_API mn_status mn_store_chunk_list(mn_store *s, const char *chat_id,
                                     mn_chunk_info **out, int64_t *n);

/* ------------------------------------------------------------------------
 * Cleanup, pressure and statistics.
 * ---------------------------------------------------------------------- */
typedef enum mn_pressure {
  MN_PRESSURE_NORMAL = 0,
  MN_PRESSURE_HIGH_LOAD = 1,
  MN_PRESSURE_RECOVERY = 2
} mn_pressure;

/** "normal", "high_load", "recovery". */
MN_API const char *mn_pressure_name(mn_pressure p);

typedef struct mn_cleanup_report {
  int64_t chunks_freed; /* idle working chunks freed */
  uint64_t bytes_freed;
  int64_t chunks_demoted; /* memory chunks moved down a tier */
  uint64_t bytes_demoted;
} mn_cleanup_report;

/**
 * Free idle working chunks (not used for chunk_ttl_s) and, in recovery,
 * move least-recently-used memory chunks down until L2 is below 60 %.
 * With `all_idle` set, every working chunk is treated as idle whatever its
 * age and freed (the seed's explicit `cleanup`).
 * @param[out] rep  may be NULL
 * @return MN_OK.
 */
MN_API mn_status mn_store_cleanup(mn_store *s, int all_idle,
                                  mn_cleanup_report *rep);

typedef struct mn_store_stats {
  mn_pressure pressure;
  uint64_t used[MN_TIER_COUNT];   /* bytes: L1 chunks, L2 chunks + working
                                     chunks, L3 LMDB pages in use */
  uint64_t budget[MN_TIER_COUNT]; /* 0: no limit */
  int64_t chunks[MN_TIER_COUNT];  /* memory chunks per tier */
  int64_t working_chunks;
  uint64_t working_bytes;
  int64_t collections;
  int64_t memories;
  uint64_t commits;  /* LMDB write transactions committed */
  uint64_t writes;   /* write requests acknowledged */
  uint64_t map_size; /* current LMDB map size */
  int64_t map_grows; /* times the map grew */
  int64_t promotions, demotions;
  uint64_t l1_cap; /* UINT64_MAX; after device out of memory, the most
                      bytes L1 chunks may take from then on (besides
                      budget[MN_TIER_DEVICE]; it only goes down) */
  int64_t stale_readers_cleared; /* at open */
  int warming;    /* 1 while chunks are still being read into memory after
                     open (searches are exact meanwhile, reading from disk
                     what is not in memory yet) */
  int l1_enabled; /* the backend is a GPU backend */
} mn_store_stats;

MN_API void mn_store_get_stats(mn_store *s, mn_store_stats *st);

/** The current pressure state. */
MN_API mn_pressure mn_store_pressure(mn_store *s);

/**
 * Requested and available bytes of the calling thread's last
 * MN_ERR_RESOURCE from the store (for JSON-RPC -32000 data). Zero when
 * there was none.
 */
MN_API void mn_store_last_resource(uint64_t *requested, uint64_t *available);

/** Run maintenance now (what the maintenance thread does): TTL cleanup
 *  and, in recovery, demotion. */
MN_API void mn_store_maintain(mn_store *s);

#ifdef __cplusplus
}
#endif
#endif /* MNEMO_STORE_H */
