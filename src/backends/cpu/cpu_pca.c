/* cpu_pca.c - PLACEHOLDER until PCA lands. */
#include "backends/cpu/cpu_internal.h"
mn_status mn__cpu_pca_fit(mn_backend *b, const mn_tensor *x, int64_t k,
                          mn_pca_model *out) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "pca_fit: not yet");
}
mn_status mn__cpu_pca_transform(mn_backend *b, const mn_tensor *x,
                                const mn_pca_model *m, int whiten,
                                mn_tensor *y) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "pca_transform: not yet");
}
