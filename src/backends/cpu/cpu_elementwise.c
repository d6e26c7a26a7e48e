/* cpu_elementwise.c - PLACEHOLDER until the elementwise ops land. */
#include "backends/cpu/cpu_internal.h"
mn_status mn__cpu_normalize(mn_backend *b, const mn_tensor *x, mn_tensor *y,
                            int64_t *zero_rows) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "normalize: not yet");
}
mn_status mn__cpu_affine_train(mn_backend *b, const mn_tensor *x,
                               mn_affine_params *out) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "affine_train: not yet");
}
mn_status mn__cpu_quantize(mn_backend *b, const mn_tensor *x,
                           mn_quant_kind kind, const mn_affine_params *affine,
                           mn_tensor *codes, float *scales) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "quantize: not yet");
}
mn_status mn__cpu_dequantize(mn_backend *b, const mn_tensor *codes,
                             mn_quant_kind kind, const float *scales,
                             const mn_affine_params *affine, mn_tensor *y) {
  return mn__set_error(MN_ERR_UNSUPPORTED, "dequantize: not yet");
}
