/*
 * cuda_scan_int.cu - the scan kernel's instantiations for int8, uint8 (affine)
 * and int4 storage (cuda_scan.cuh). A file of its own so that the build
 * compiles it in parallel with the other dtypes.
 */
#include "cuda_scan.cuh"

namespace mnc {

scan_fn scan_kernel_int(int dt, int qb) {
  switch (dt) {
  case MN_DTYPE_I8:
    return qb == 1 ? scan_kernel<MN_DTYPE_I8, 1>
                   : scan_kernel<MN_DTYPE_I8, QB_MAX>;
  case MN_DTYPE_U8:
    return qb == 1 ? scan_kernel<MN_DTYPE_U8, 1>
                   : scan_kernel<MN_DTYPE_U8, QB_MAX>;
  case MN_DTYPE_I4:
    return qb == 1 ? scan_kernel<MN_DTYPE_I4, 1>
                   : scan_kernel<MN_DTYPE_I4, QB_MAX>;
  default:
    return nullptr;
  }
}

} // namespace mnc
