/* cpu_search.c - PLACEHOLDER until similarity and search land. */
#include "backends/cpu/cpu_internal.h"
mn_status mn__cpu_similarity(mn_backend *b, const mn_tensor *q,
                             const mn_vecblock *db, mn_metric metric,
                             mn_tensor *out) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "similarity: not yet");
}
mn_status mn__cpu_search(mn_backend *b, const mn_tensor *q,
                         const mn_vecblock *db, mn_metric metric, int64_t k,
                         int64_t id_base, float *scores, int64_t *ids) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "search: not yet");
}
mn_status mn__cpu_topk(const mn_tensor *scores, int64_t k, int largest,
                       float *out_scores, int64_t *out_ids) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "topk: not yet");
}
