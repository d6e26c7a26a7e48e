/*
 * cuda_scan_float.cu - the scan kernel's instantiations for float32, float16,
 * bfloat16 and binary storage (cuda_scan.cuh). A file of its own so that the
 * build compiles it in parallel with the other dtypes.
 */
#include "cuda_scan.cuh"

namespace mnc {

scan_fn scan_kernel_float(int dt, int qb) {
  switch (dt) {
  case MN_DTYPE_F32:
    return qb == 1 ? scan_kernel<MN_DTYPE_F32, 1>
                   : scan_kernel<MN_DTYPE_F32, QB_MAX>;
  case MN_DTYPE_F16:
    return qb == 1 ? scan_kernel<MN_DTYPE_F16, 1>
                   : scan_kernel<MN_DTYPE_F16, QB_MAX>;
  case MN_DTYPE_BF16:
    return qb == 1 ? scan_kernel<MN_DTYPE_BF16, 1>
                   : scan_kernel<MN_DTYPE_BF16, QB_MAX>;
  case MN_DTYPE_BIN:
    return qb == 1 ? scan_kernel<MN_DTYPE_BIN, 1>
                   : scan_kernel<MN_DTYPE_BIN, QB_MAX>;
  default:
    return nullptr;
  }
}

} // namespace mnc
