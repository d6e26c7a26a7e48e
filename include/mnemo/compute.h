/*
 * mnemo/compute.h - backends (CPU, CUDA plugin), their operations, PCA
 * models and the processing pipeline behind processEmbeddings.
 *
 * A backend works on tensors that live where it computes: host memory for
 * the CPU backend, device memory for the CUDA backend. mn_backend_alloc /
 * upload / download move data; the pipeline does this for the caller.
 *
 * Every operation returns an mn_status; on failure mn_errmsg() says why.
 * A backend handle may be used from several threads at once.
 */
#ifndef MNEMO_COMPUTE_H
#define MNEMO_COMPUTE_H

#include "mnemo/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mn_backend mn_backend;

/* ------------------------------------------------------------------------
 * Operation parameters.
 * ---------------------------------------------------------------------- */
typedef enum mn_quant_kind {
  MN_QUANT_NONE = 0,
  MN_QUANT_INT8 = 1,        /* int8 codes, one symmetric scale per row */
  MN_QUANT_INT8_AFFINE = 2, /* uint8 codes, per-dimension min + scale */
  MN_QUANT_INT4 = 3,        /* packed int4, one symmetric scale per row */
  MN_QUANT_FP16 = 4,
  MN_QUANT_BF16 = 5,
  MN_QUANT_BINARY = 6 /* sign bits: 1 where x > 0 */
} mn_quant_kind;

/** "none", "int8", "int8_affine", "int4", "fp16", "bf16", "binary". */
MN_API const char *mn_quant_name(mn_quant_kind q);
MN_API mn_status mn_quant_parse(const char *s, mn_quant_kind *out);
/** The dtype of the codes a quantization kind produces. */
MN_API mn_dtype mn_quant_dtype(mn_quant_kind q);

/**
 * Per-dimension affine parameters for MN_QUANT_INT8_AFFINE:
 * x ~= vmin[d] + code * scale[d], code in [0, 255]. Both arrays have `dim`
 * entries and live in host memory.
 */
typedef struct mn_affine_params {
  int64_t dim;
  float *vmin;
  float *scale;
} mn_affine_params;

typedef enum mn_metric {
  MN_METRIC_IP = 0,     /* inner product, higher is closer */
  MN_METRIC_COSINE = 1, /* cosine similarity, higher is closer */
  MN_METRIC_L2 = 2      /* squared Euclidean distance, lower is closer */
} mn_metric;

MN_API const char *mn_metric_name(mn_metric m);
MN_API mn_status mn_metric_parse(const char *s, mn_metric *out);

/**
 * A block of stored vectors for similarity: `codes` rows of any storage
 * dtype plus what is needed to decode them.
 *  - MN_DTYPE_F32 / F16 / BF16: values as stored.
 *  - MN_DTYPE_I8 / I4: x = code * scales[row].
 *  - MN_DTYPE_U8: x = affine->vmin[d] + code * affine->scale[d].
 *  - MN_DTYPE_BIN: sign vectors (+1 for a set bit, -1 otherwise); the query
 *    is binarised the same way and similarity is (cols - 2 * hamming).
 * `norms` (optional, rows entries) holds each decoded row's L2 norm; when
 * NULL the backend computes what cosine and L2 need.
 */
typedef struct mn_vecblock {
  mn_tensor codes;
  const float *scales;            /* I8, I4: per row */
  const mn_affine_params *affine; /* U8 */
  const float *norms;             /* optional */
} mn_vecblock;

/* ------------------------------------------------------------------------
 * PCA models. Host memory, owned by the model; free with mn_pca_free().
 * ---------------------------------------------------------------------- */
typedef struct mn_pca_model {
  int64_t input_dim;
  int64_t n_components;
  int64_t n_samples;         /* rows the model was fitted on */
  float *mean;               /* [input_dim] */
  float *components;         /* [n_components x input_dim], row-major,
                                unit rows, by decreasing variance */
  float *explained_variance; /* [n_components], eigenvalues (n-1 divisor) */
  float *explained_variance_ratio; /* [n_components] */
  double total_variance;           /* trace of the covariance */
} mn_pca_model;

/** Allocate an empty model with arrays sized for (input_dim, k). */
MN_API mn_status mn_pca_alloc(int64_t input_dim, int64_t k, mn_pca_model **out);
MN_API void mn_pca_free(mn_pca_model *m);
/** Sum of explained_variance_ratio. */
MN_API double mn_pca_total_ratio(const mn_pca_model *m);
/**
 * Save / load a model as a small binary file (magic, version, shapes,
 * arrays). Load checks the magic, version and sizes: MN_ERR_VERSION or
 * MN_ERR_PARSE on a bad file.
 */
MN_API mn_status mn_pca_save(const mn_pca_model *m, const char *path);
MN_API mn_status mn_pca_load(const char *path, mn_pca_model **out);

/* ------------------------------------------------------------------------
 * Backends: registry and factory.
 * ---------------------------------------------------------------------- */
typedef enum mn_backend_pref {
  MN_BACKEND_AUTO = 0, /* CUDA when a usable device is there, else CPU */
  MN_BACKEND_CPU = 1,
  MN_BACKEND_CUDA = 2 /* CUDA or fail */
} mn_backend_pref;

MN_API mn_status mn_backend_pref_parse(const char *s, mn_backend_pref *out);

typedef struct mn_backend_opts {
  mn_backend_pref pref;
  const char *plugin_dir;    /* searched first for libmnemo-cuda.so; NULL */
  uint64_t device_mem_limit; /* bytes, 0 = no limit (gpu.memory_limit) */
  int precision_f16;         /* allow float16 / TF32 matrix products */
  int threads;               /* CPU threads, 0 = all cores */
} mn_backend_opts;

/** Defaults: AUTO, no plugin dir, no limit, float32, all cores. */
MN_API void mn_backend_opts_init(mn_backend_opts *o);

/**
 * Open a backend as the options ask. With AUTO a plugin that cannot be
 * loaded, has the wrong API version or scores 0 is logged and the CPU
 * backend is returned instead. Plugin search order: opts->plugin_dir, the
 * executable's directory (and its ../lib), then $MNEMO_BACKEND_PATH.
 * @return MN_OK; MN_ERR_UNSUPPORTED when CUDA was required and is not
 *         usable; MN_ERR_NOMEM.
 */
MN_API mn_status mn_backend_open(const mn_backend_opts *opts, mn_backend **out);
/** Always-available CPU backend. */
MN_API mn_status mn_backend_open_cpu(const mn_backend_opts *opts,
                                     mn_backend **out);
/**
 * Load a plugin from an explicit path. MN_ERR_NOT_FOUND when dlopen fails,
 * MN_ERR_VERSION on an API mismatch, MN_ERR_UNSUPPORTED when it scores 0.
 */
MN_API mn_status mn_backend_open_plugin(const char *path,
                                        const mn_backend_opts *opts,
                                        mn_backend **out);
MN_API void mn_backend_close(mn_backend *b);

/** "cpu" or "cuda". */
MN_API const char *mn_backend_name(const mn_backend *b);
/** Human description, e.g. "cpu (2 threads, avx512)" or
 *  "cuda:0 NVIDIA H200". */
MN_API const char *mn_backend_device(const mn_backend *b);
/** Where this backend's tensors live. */
MN_API mn_device_kind mn_backend_device_kind(const mn_backend *b);

/* Buffers (on the backend's device). */
MN_API mn_status mn_backend_alloc(mn_backend *b, size_t bytes, void **out);
MN_API void mn_backend_free(mn_backend *b, void *p);
MN_API mn_status mn_backend_upload(mn_backend *b, void *dst, const void *src,
                                   size_t bytes);
MN_API mn_status mn_backend_download(mn_backend *b, void *dst, const void *src,
                                     size_t bytes);
MN_API mn_status mn_backend_memory_info(mn_backend *b, uint64_t *free_bytes,
                                        uint64_t *total_bytes);
MN_API mn_status mn_backend_synchronize(mn_backend *b);

/* ------------------------------------------------------------------------
 * Operations. Inputs are float32 unless said; `x` and `y` may be the same
 * tensor where shapes allow (normalize). Non-finite input is refused with
 * MN_ERR_INVALID naming the row and column.
 * ---------------------------------------------------------------------- */

/**
 * L2-normalise each row of x into y (same shape, float32). A zero row stays
 * zero; their count goes to *zero_rows (may be NULL).
 */
MN_API mn_status mn_backend_normalize(mn_backend *b, const mn_tensor *x,
                                      mn_tensor *y, int64_t *zero_rows);

/**
 * Fit PCA with k components on the rows of x (float32). The mean and
 * covariance are accumulated so that explained variance matches a
 * double-precision fit to 1e-4 relative.
 * @return MN_ERR_INVALID when rows < 2, k < 1, k > cols or k > rows;
 *         MN_ERR_NUMERIC when the eigensolver fails.
 */
MN_API mn_status mn_backend_pca_fit(mn_backend *b, const mn_tensor *x,
                                    int64_t k, mn_pca_model **out);

/**
 * y = (x - mean) * components^T, optionally divided per component by
 * sqrt(explained_variance) (whitening). y is rows x n_components float32.
 */
MN_API mn_status mn_backend_pca_transform(mn_backend *b, const mn_tensor *x,
                                          const mn_pca_model *m, int whiten,
                                          mn_tensor *y);

/**
 * Train per-dimension affine parameters (min and scale over the rows of x)
 * for MN_QUANT_INT8_AFFINE. `out` arrays must hold x->cols entries.
 */
MN_API mn_status mn_backend_affine_train(mn_backend *b, const mn_tensor *x,
                                         mn_affine_params *out);

/**
 * Quantise x (float32) into codes of mn_quant_dtype(kind), same rows and
 * cols. `scales` receives one scale per row for INT8 / INT4 (else unused,
 * may be NULL); `affine` is required for INT8_AFFINE.
 */
MN_API mn_status mn_backend_quantize(mn_backend *b, const mn_tensor *x,
                                     mn_quant_kind kind,
                                     const mn_affine_params *affine,
                                     mn_tensor *codes, float *scales);

/** Inverse of mn_backend_quantize into float32 y (binary: +1 / -1). */
MN_API mn_status mn_backend_dequantize(mn_backend *b, const mn_tensor *codes,
                                       mn_quant_kind kind, const float *scales,
                                       const mn_affine_params *affine,
                                       mn_tensor *y);

/**
 * Similarity of every query row (float32, q->cols == db->codes.cols) with
 * every stored row: out is q->rows x db->codes.rows float32. IP and COSINE
 * give similarities, L2 squared distances.
 */
MN_API mn_status mn_backend_similarity(mn_backend *b, const mn_tensor *q,
                                       const mn_vecblock *db, mn_metric metric,
                                       mn_tensor *out);

/**
 * Fused similarity and top-k: for each query the k best stored rows
 * (largest similarity; smallest distance for L2), best first. `scores` and
 * `ids` are host arrays of q->rows * k; where fewer than k rows exist the
 * tail holds id -1 and score -INFINITY (L2: +INFINITY). Ids are row
 * indices into db, plus `id_base`.
 */
MN_API mn_status mn_backend_search(mn_backend *b, const mn_tensor *q,
                                   const mn_vecblock *db, mn_metric metric,
                                   int64_t k, int64_t id_base, float *scores,
                                   int64_t *ids);

/** One block of a batched search: its stored rows, how many best rows are
 *  wanted from it, and host arrays of q->rows * k for them. */
typedef struct mn_search_block {
  mn_vecblock db;
  int64_t k;
  float *scores;
  int64_t *ids;
} mn_search_block;

/**
 * mn_backend_search over several blocks at once for the same queries: each
 * block gets its own top-k (its own k, 1..4096; ids are row indices into
 * that block, layout and tail as in mn_backend_search). The blocks may have
 * different row counts (0 included) but share the query's width. A device
 * backend enqueues every block's work and synchronises once, which is the
 * point when the blocks are small (the store's 4096-row chunks); a backend
 * without a batched implementation is called block by block. On failure the
 * output arrays are unspecified.
 */
MN_API mn_status mn_backend_search_many(mn_backend *b, const mn_tensor *q,
                                        mn_search_block *blocks,
                                        int64_t nblocks, mn_metric metric);

/**
 * mn_backend_similarity over several blocks at once: `out` is q->rows x
 * (the sum of the blocks' rows), block i's scores in the columns after
 * those of blocks 0..i-1, as if the blocks were one. Synchronised once on
 * a device backend; block by block on a backend without a batched
 * implementation.
 */
MN_API mn_status mn_backend_similarity_many(mn_backend *b, const mn_tensor *q,
                                            const mn_vecblock *dbs,
                                            int64_t nblocks, mn_metric metric,
                                            mn_tensor *out);

/**
 * Top-k over rows of a host score matrix (rows x cols float32), best
 * first; `largest` = 0 selects the smallest. Same output layout as search.
 */
MN_API mn_status mn_topk(const mn_tensor *scores, int64_t k, int largest,
                         float *out_scores, int64_t *out_ids);

/* ------------------------------------------------------------------------
 * The processing pipeline (processEmbeddings).
 * ---------------------------------------------------------------------- */
typedef struct mn_pipeline_opts {
  int normalize;           /* L2-normalise rows first */
  int64_t reduce_dims;     /* 0: no PCA */
  const mn_pca_model *pca; /* named model (borrowed) or NULL: fit on the
                              batch when reduce_dims > 0 */
  int whiten;
  mn_quant_kind quant;
  const mn_affine_params *affine; /* INT8_AFFINE: given, or NULL to train
                                     on the batch */
  mn_dtype precision;             /* output dtype when quant is NONE: F32, F16
                                     or BF16 */
  int64_t batch_size;             /* rows per backend call, 0 = all at once */
} mn_pipeline_opts;

MN_API void mn_pipeline_opts_init(mn_pipeline_opts *o);

typedef struct mn_pipeline_result {
  mn_tensor out;           /* host memory owned by the result */
  float *scales;           /* INT8 / INT4: out.rows entries, else NULL */
  mn_affine_params affine; /* INT8_AFFINE: the parameters used */
  mn_pca_model *fitted;    /* the model fitted on the batch, or NULL */
  double processing_ms;
  int64_t zero_rows;
  mn_quant_kind quant;
  char device[96];
} mn_pipeline_result;

/**
 * Run normalize -> PCA -> quantize (each as the options ask) over a host
 * float32 input, `batch_size` rows at a time, on backend b. The input is
 * checked for NaN / Inf first.
 */
MN_API mn_status mn_pipeline_run(mn_backend *b, const mn_tensor *in,
                                 const mn_pipeline_opts *opts,
                                 mn_pipeline_result *res);
/** Free what a result owns (not the struct itself). NULL is accepted. */
MN_API void mn_pipeline_result_free(mn_pipeline_result *res);

#ifdef __cplusplus
}
#endif
#endif /* MNEMO_COMPUTE_H */
