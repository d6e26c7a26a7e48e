/*
 * fake_plugin_oom.c - a "GPU" backend plugin whose device is small: for
 * test_cpu_fallback. Its tensors are on MN_DEVICE_GPU (plain malloc'd
 * memory behind the scenes, so the pipeline's upload / download path runs),
 * normalize works on up to FAKE_OOM_ROWS rows and fails with
 * MN_ERR_DEVICE_OOM above that, and every other op (quantize, PCA fit and
 * transform, affine training, similarity, search) always fails with
 * MN_ERR_DEVICE_OOM, as a CUDA backend does when its memory pool cannot
 * grow. The engine must retry those jobs on the CPU and keep serving.
 */
#include "fake_plugin.h"

#define FAKE_OOM_ROWS 16
#define FAKE_TOTAL (1u << 20)

static mn_status fake_memory_info(mn_backend *b, uint64_t *fr, uint64_t *tot) {
  (void)b;
  *tot = FAKE_TOTAL;
  *fr = 0;
  return MN_OK;
}

static mn_status oom(const char *op, int64_t rows, int64_t cols) {
  return host->set_error(MN_ERR_DEVICE_OOM,
                         "fake gpu: out of device memory in %s of %lld x "
                         "%lld (fake_plugin_oom.c:%d)",
                         op, (long long)rows, (long long)cols, __LINE__);
}

static mn_status fake_normalize(mn_backend *b, const mn_tensor *x, mn_tensor *y,
                                int64_t *zero_rows) {
  (void)b;
  if (x->rows > FAKE_OOM_ROWS)
    return oom("normalize", x->rows, x->cols);
  return fake_normalize_rows(x, y, zero_rows);
}

static mn_status fake_pca_fit(mn_backend *b, const mn_tensor *x, int64_t k,
                              mn_pca_model *out) {
  (void)b, (void)k, (void)out;
  return oom("pca_fit", x->rows, x->cols);
}

static mn_status fake_pca_transform(mn_backend *b, const mn_tensor *x,
                                    const mn_pca_model *m, int whiten,
                                    mn_tensor *y) {
  (void)b, (void)m, (void)whiten, (void)y;
  return oom("pca_transform", x->rows, x->cols);
}

static mn_status fake_affine_train(mn_backend *b, const mn_tensor *x,
                                   mn_affine_params *out) {
  (void)b, (void)out;
  return oom("affine_train", x->rows, x->cols);
}

static mn_status fake_quantize(mn_backend *b, const mn_tensor *x,
                               mn_quant_kind kind,
                               const mn_affine_params *affine, mn_tensor *codes,
                               float *scales) {
  (void)b, (void)kind, (void)affine, (void)codes, (void)scales;
  return oom("quantize", x->rows, x->cols);
}

static mn_status fake_similarity(mn_backend *b, const mn_tensor *q,
                                 const mn_vecblock *db, mn_metric metric,
                                 mn_tensor *out) {
  (void)b, (void)metric, (void)out;
  return oom("similarity", q->rows, db->codes.rows);
}

static mn_status fake_search(mn_backend *b, const mn_tensor *q,
                             const mn_vecblock *db, mn_metric metric, int64_t k,
                             int64_t id_base, float *scores, int64_t *ids) {
  (void)b, (void)db, (void)metric, (void)k, (void)id_base, (void)scores,
      (void)ids;
  return oom("search", q->rows, q->cols);
}

static const mn_backend_iface fake_iface = {
    FAKE_IFACE_COMMON("fakegpu", fake_destroy_plain, fake_memory_info,
                      fake_normalize),
    .pca_fit = fake_pca_fit,
    .pca_transform = fake_pca_transform,
    .affine_train = fake_affine_train,
    .quantize = fake_quantize,
    .similarity = fake_similarity,
    .search = fake_search,
};

EXPORT mn_status mn_plugin_init(const mn_backend_opts *opts,
                                const mn_backend_host *h, mn_backend **out) {
  (void)opts;
  return fake_new(h, &fake_iface, MN_DEVICE_GPU,
                  "fakegpu:0 out-of-memory test device", out);
}
