/*
 * backend_impl.h - the private backend interface (a versioned vtable).
 *
 * DESIGN: a backend is a vtable plus its own state. The public wrappers in
 * backend.c check arguments once (shapes, dtypes, finiteness) and then call
 * the vtable, so implementations may assume well-formed input. Members
 * marked OPTIONAL may be NULL: the wrapper then gives MN_ERR_UNSUPPORTED or
 * a default. A plugin (libmnemo-cuda.so) exports two C symbols:
 *
 *   int        mn_plugin_score(void);          0 = not usable here
 *   mn_status  mn_plugin_init(const mn_backend_opts *, mn_backend_host *,
 *                             mn_backend **out);
 *
 * The loader refuses a backend whose iface->api_version differs from
 * MN_BACKEND_API_VERSION. Nothing links against a plugin; a plugin calls
 * back into the core only through mn_backend_host.
 */
#ifndef MNEMO_BACKEND_IMPL_H
#define MNEMO_BACKEND_IMPL_H

#include "mnemo/compute.h"

/* 2: search_many and similarity_many (a version 1 plugin's vtable is
 * shorter than the core would read). */
#define MN_BACKEND_API_VERSION 2

typedef struct mn_backend_iface {
  int api_version; /* MN_BACKEND_API_VERSION */
  const char *name;

  void (*destroy)(mn_backend *b);

  /* buffers on the backend's device */
  mn_status (*alloc)(mn_backend *b, size_t bytes, void **out);
  void (*free)(mn_backend *b, void *p);
  mn_status (*upload)(mn_backend *b, void *dst, const void *src, size_t n);
  mn_status (*download)(mn_backend *b, void *dst, const void *src, size_t n);
  mn_status (*memory_info)(mn_backend *b, uint64_t *free_b, uint64_t *total);
  mn_status (*synchronize)(mn_backend *b); /* OPTIONAL */

  /* operations; tensors are on the backend's device, already checked */
  mn_status (*normalize)(mn_backend *b, const mn_tensor *x, mn_tensor *y,
                         int64_t *zero_rows);
  mn_status (*pca_fit)(mn_backend *b, const mn_tensor *x, int64_t k,
                       mn_pca_model *out);
  mn_status (*pca_transform)(mn_backend *b, const mn_tensor *x,
                             const mn_pca_model *m, int whiten, mn_tensor *y);
  mn_status (*affine_train)(mn_backend *b, const mn_tensor *x,
                            mn_affine_params *out);
  mn_status (*quantize)(mn_backend *b, const mn_tensor *x, mn_quant_kind kind,
                        const mn_affine_params *affine, mn_tensor *codes,
                        float *scales);
  mn_status (*dequantize)(mn_backend *b, const mn_tensor *codes,
                          mn_quant_kind kind, const float *scales,
                          const mn_affine_params *affine, mn_tensor *y);
  mn_status (*similarity)(mn_backend *b, const mn_tensor *q,
                          const mn_vecblock *db, mn_metric metric,
                          mn_tensor *out);
  mn_status (*search)(mn_backend *b, const mn_tensor *q, const mn_vecblock *db,
                      mn_metric metric, int64_t k, int64_t id_base,
                      float *scores, int64_t *ids);

  /* MN_BACKEND_CAP_* bits. */
  unsigned caps;

  /* OPTIONAL batched forms (API version 2): every block already checked,
   * at least one block, `out` q->rows x the blocks' total rows. Without
   * them the wrappers call search / similarity block by block. */
  mn_status (*search_many)(mn_backend *b, const mn_tensor *q,
                           mn_search_block *blocks, int64_t nblocks,
                           mn_metric metric);
  mn_status (*similarity_many)(mn_backend *b, const mn_tensor *q,
                               const mn_vecblock *dbs, int64_t nblocks,
                               mn_metric metric, mn_tensor *out);
} mn_backend_iface;

/*
 * normalize, quantize and affine_train detect NaN / Inf in host input
 * themselves, inside their single pass, and fail with MN_ERR_INVALID and a
 * detail message naming the row and column (the output is then
 * unspecified; an in-place normalize may have rewritten earlier rows). The
 * wrappers then skip their own scan, which would cost one more read of the
 * whole input.
 */
#define MN_BACKEND_CAP_CHECKS_FINITE 0x1u

/*
 * Services the core lends to a plugin, so that the plugin needs no link
 * dependency on libmnemo: logging, error detail and the host tier account.
 */
typedef struct mn_backend_host {
  int api_version;
  void (*log)(mn_log_level level, const char *module, const char *fmt, ...)
      __attribute__((format(printf, 3, 4)));
  mn_status (*set_error)(mn_status s, const char *fmt, ...)
      __attribute__((format(printf, 2, 3)));
  void (*account_add)(mn_tier tier, int64_t bytes);
  /* the CPU reference implementations, for ops a plugin leaves to the host */
  mn_status (*cpu_topk)(const mn_tensor *scores, int64_t k, int largest,
                        float *out_scores, int64_t *out_ids);
} mn_backend_host;

/* Every backend struct starts with this header. */
struct mn_backend {
  const mn_backend_iface *iface;
  mn_device_kind device_kind;
  char device[96];
  void *dl_handle; /* set by the loader for plugins */
};

typedef int (*mn_plugin_score_fn)(void);
typedef mn_status (*mn_plugin_init_fn)(const mn_backend_opts *opts,
                                       const mn_backend_host *host,
                                       mn_backend **out);

/* The CPU backend (src/backends/cpu). */
mn_status mn__cpu_backend_create(const mn_backend_opts *opts, mn_backend **out);
mn_status mn__cpu_topk(const mn_tensor *scores, int64_t k, int largest,
                       float *out_scores, int64_t *out_ids);

#endif /* MNEMO_BACKEND_IMPL_H */
