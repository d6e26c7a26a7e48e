/*
 * cpu_internal.h - the CPU backend's private interface: the backend struct,
 * instruction-set dispatch and the op entry points that cpu_backend.c puts
 * in its vtable.
 *
 * DESIGN: kernels for one instruction set live in files named *_avx512.c
 * and *_avx2.c (CMake compiles each with its own -m flags); the portable C
 * versions live beside them. mn__cpu_level() is read once and picks the
 * kernels; MNEMO_CPU_LEVEL=scalar|avx2|avx512 lowers it, so the fallback
 * paths are tested on a machine that has AVX-512. Work is split over the
 * cores with OpenMP, `threads` at most.
 */
#ifndef MNEMO_CPU_INTERNAL_H
#define MNEMO_CPU_INTERNAL_H

#include "common/internal.h"
#include "compute/backend_impl.h"

typedef enum mn_cpu_level {
  MN_CPU_SCALAR = 0,
  MN_CPU_AVX2 = 1,  /* AVX2 + FMA + F16C */
  MN_CPU_AVX512 = 2 /* AVX-512 F/BW/VL/DQ/VNNI/VPOPCNTDQ */
} mn_cpu_level;

/** The highest level this CPU supports, capped by $MNEMO_CPU_LEVEL. */
mn_cpu_level mn__cpu_level(void);
const char *mn__cpu_level_name(mn_cpu_level l);
/** Tests: cap the level used from now on (never raises it above what the
 *  CPU supports). Returns the level in force afterwards. */
mn_cpu_level mn__cpu_level_cap(mn_cpu_level cap);

typedef struct mn_cpu_backend {
  mn_backend base;
  int threads;
  mn_cpu_level level;
} mn_cpu_backend;

static inline int mn__cpu_threads(mn_backend *b) {
  return ((mn_cpu_backend *)b)->threads;
}

/* Elementwise ops: cpu_elementwise.c (+ _avx2.c / _avx512.c kernels). */
mn_status mn__cpu_normalize(mn_backend *b, const mn_tensor *x, mn_tensor *y,
                            int64_t *zero_rows);
mn_status mn__cpu_affine_train(mn_backend *b, const mn_tensor *x,
                               mn_affine_params *out);
mn_status mn__cpu_quantize(mn_backend *b, const mn_tensor *x,
                           mn_quant_kind kind, const mn_affine_params *affine,
                           mn_tensor *codes, float *scales);
mn_status mn__cpu_dequantize(mn_backend *b, const mn_tensor *codes,
                             mn_quant_kind kind, const float *scales,
                             const mn_affine_params *affine, mn_tensor *y);

/* PCA: cpu_pca.c (OpenBLAS + LAPACKE). */
mn_status mn__cpu_pca_fit(mn_backend *b, const mn_tensor *x, int64_t k,
                          mn_pca_model *out);
mn_status mn__cpu_pca_transform(mn_backend *b, const mn_tensor *x,
                                const mn_pca_model *m, int whiten,
                                mn_tensor *y);

/* Similarity and search: cpu_search.c (+ kernels). */
mn_status mn__cpu_similarity(mn_backend *b, const mn_tensor *q,
                             const mn_vecblock *db, mn_metric metric,
                             mn_tensor *out);
mn_status mn__cpu_search(mn_backend *b, const mn_tensor *q,
                         const mn_vecblock *db, mn_metric metric, int64_t k,
                         int64_t id_base, float *scores, int64_t *ids);
/* mn__cpu_topk (backend_impl.h) is in cpu_search.c too. */

#endif /* MNEMO_CPU_INTERNAL_H */
