/*
 * cuda_elementwise.cu - normalize, quantize (every kind), dequantize and
 * affine_train on the device.
 *
 * DESIGN: ops that need a per-row reduction (normalize: sum of squares;
 * int8 / int4: max |x|) give one warp a row: when the row is 16-byte
 * aligned and at most 2048 wide the warp keeps it in registers (float4
 * loads, VEC of them per lane), so the data is read once and written once;
 * other layouts take a generic warp loop that reads the row twice (the
 * second read comes from L1/L2). Kinds without a row reduction (fp16,
 * bf16, binary, int8_affine) and dequantize give a thread 8 elements.
 * Rounding follows compute.h exactly: IEEE division then round-half-even
 * (rintf), clamp to the code range, fp16 / bf16 round to nearest even. Each
 * op synchronises its stream before returning.
 */
#include "cuda_internal.cuh"

#include <float.h>
#include <limits.h>

namespace {

enum { OP_NORM = 0, OP_I8 = 1, OP_I4 = 2 };

struct RowArgs {
  const char *x;
  int64_t xs;
  char *y;
  int64_t ys;
  float *scales;
  int64_t rows;
  int cols;
  unsigned long long *zeros;
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/* Symmetric code: round-half-even of x / scale, clamped to +-lim. */
__device__ __forceinline__ int sym_code(float x, float scale, int lim) {
  float r = rintf(__fdiv_rn(x, scale));
  r = fminf(fmaxf(r, (float)-lim), (float)lim);
  return (int)r;
}

__device__ __forceinline__ float4 f4_zero() {
  return make_float4(0.f, 0.f, 0.f, 0.f);
}

__device__ __forceinline__ float f4_sumsq(float4 v, float acc) {
  acc = fmaf(v.x, v.x, acc);
  acc = fmaf(v.y, v.y, acc);
  acc = fmaf(v.z, v.z, acc);
  return fmaf(v.w, v.w, acc);
}

__device__ __forceinline__ float f4_maxabs(float4 v, float acc) {
  return fmaxf(fmaxf(fmaxf(acc, fabsf(v.x)), fmaxf(fabsf(v.y), fabsf(v.z))),
               fabsf(v.w));
}

__device__ __forceinline__ float4 f4_div(float4 v, float d) {
  return make_float4(__fdiv_rn(v.x, d), __fdiv_rn(v.y, d), __fdiv_rn(v.z, d),
                     __fdiv_rn(v.w, d));
}

__device__ __forceinline__ float4 f4_mul(float4 v, float m) {
  return make_float4(v.x * m, v.y * m, v.z * m, v.w * m);
}

/*
 * Row kernel, register-resident: lane l holds float4 number i*32+l of the
 * row for i < VEC. Requires cols % 4 == 0, cols <= VEC * 128 and 16-byte
 * aligned input rows; output alignment per op (16 / 4 / 2 bytes).
 */
template <int VEC, int OP>
__global__ void __launch_bounds__(MNC_THREADS) row_vec_kernel(RowArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t w0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
  const int c4n = a.cols >> 2;
  for (int64_t r = w0; r < a.rows; r += nw) {
    const float4 *xr = (const float4 *)(a.x + r * a.xs);
    float4 v[VEC];
#pragma unroll
    for (int i = 0; i < VEC; i++) {
      int c = i * 32 + lane;
      v[i] = c < c4n ? __ldcs(xr + c) : f4_zero();
    }
    float red = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; i++)
      red = OP == OP_NORM ? f4_sumsq(v[i], red) : f4_maxabs(v[i], red);
    red = OP == OP_NORM ? warp_sum(red) : warp_max(red);

    if (OP == OP_NORM) {
      float mul = 0.f, pre = 0.f; /* pre > 0: divide by pre first */
      if (red >= FLT_MIN && red <= FLT_MAX) {
        mul = 1.0f / sqrtf(red);
      } else { /* zero, underflowing or overflowing row: rescale */
        float m = 0.f;
#pragma unroll
        for (int i = 0; i < VEC; i++)
          m = f4_maxabs(v[i], m);
        m = warp_max(m);
        if (m > 0.f) {
          float ss = 0.f;
#pragma unroll
          for (int i = 0; i < VEC; i++)
            ss = f4_sumsq(f4_div(v[i], m), ss);
          ss = warp_sum(ss);
          pre = m;
          mul = 1.0f / sqrtf(ss);
        } else if (lane == 0) {
          atomicAdd(a.zeros, 1ull);
        }
      }
      float4 *yr = (float4 *)(a.y + r * a.ys);
#pragma unroll
      for (int i = 0; i < VEC; i++) {
        int c = i * 32 + lane;
        if (c < c4n)
          __stcs(yr + c, f4_mul(pre > 0.f ? f4_div(v[i], pre) : v[i], mul));
      }
    } else if (OP == OP_I8) {
      float scale = red / 127.0f;
      if (lane == 0)
        a.scales[r] = scale;
      uint32_t *yr = (uint32_t *)(a.y + r * a.ys);
#pragma unroll
      for (int i = 0; i < VEC; i++) {
        int c = i * 32 + lane;
        if (c < c4n) {
          uint32_t w = 0;
          if (red > 0.f)
            w = ((uint32_t)sym_code(v[i].x, scale, 127) & 0xFFu) |
                (((uint32_t)sym_code(v[i].y, scale, 127) & 0xFFu) << 8) |
                (((uint32_t)sym_code(v[i].z, scale, 127) & 0xFFu) << 16) |
                (((uint32_t)sym_code(v[i].w, scale, 127) & 0xFFu) << 24);
          yr[c] = w;
        }
      }
    } else {
      float scale = red / 7.0f;
      if (lane == 0)
        a.scales[r] = scale;
      uint16_t *yr = (uint16_t *)(a.y + r * a.ys);
#pragma unroll
      for (int i = 0; i < VEC; i++) {
        int c = i * 32 + lane;
        if (c < c4n) {
          uint32_t w = 0;
          if (red > 0.f)
            w = ((uint32_t)sym_code(v[i].x, scale, 7) & 0xFu) |
                (((uint32_t)sym_code(v[i].y, scale, 7) & 0xFu) << 4) |
                (((uint32_t)sym_code(v[i].z, scale, 7) & 0xFu) << 8) |
                (((uint32_t)sym_code(v[i].w, scale, 7) & 0xFu) << 12);
          yr[c] = (uint16_t)w;
        }
      }
    }
  }
}

/* Row kernel for any width and 4-byte aligned rows: reads the row twice. */
template <int OP>
__global__ void __launch_bounds__(MNC_THREADS) row_generic_kernel(RowArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t w0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
  const int cols = a.cols;
  for (int64_t r = w0; r < a.rows; r += nw) {
    const float *xr = (const float *)(a.x + r * a.xs);
    float red = 0.f;
    for (int c = lane; c < cols; c += 32) {
      float v = xr[c];
      red = OP == OP_NORM ? fmaf(v, v, red) : fmaxf(red, fabsf(v));
    }
    red = OP == OP_NORM ? warp_sum(red) : warp_max(red);

    if (OP == OP_NORM) {
      float mul = 0.f, pre = 0.f;
      if (red >= FLT_MIN && red <= FLT_MAX) {
        mul = 1.0f / sqrtf(red);
      } else {
        float m = 0.f;
        for (int c = lane; c < cols; c += 32)
          m = fmaxf(m, fabsf(xr[c]));
        m = warp_max(m);
        if (m > 0.f) {
          float ss = 0.f;
          for (int c = lane; c < cols; c += 32) {
            float t = __fdiv_rn(xr[c], m);
            ss = fmaf(t, t, ss);
          }
          ss = warp_sum(ss);
          pre = m;
          mul = 1.0f / sqrtf(ss);
        } else if (lane == 0) {
          atomicAdd(a.zeros, 1ull);
        }
      }
      float *yr = (float *)(a.y + r * a.ys);
      for (int c = lane; c < cols; c += 32) {
        float v = xr[c];
        yr[c] = (pre > 0.f ? __fdiv_rn(v, pre) : v) * mul;
      }
    } else if (OP == OP_I8) {
      float scale = red / 127.0f;
      if (lane == 0)
        a.scales[r] = scale;
      int8_t *yr = (int8_t *)(a.y + r * a.ys);
      for (int c = lane; c < cols; c += 32)
        yr[c] = (int8_t)(red > 0.f ? sym_code(xr[c], scale, 127) : 0);
    } else {
      float scale = red / 7.0f;
      if (lane == 0)
        a.scales[r] = scale;
      uint8_t *yr = (uint8_t *)(a.y + r * a.ys);
      int pairs = (cols + 1) >> 1;
      for (int p = lane; p < pairs; p += 32) {
        int c0 = 2 * p, c1 = 2 * p + 1;
        int q0 = red > 0.f ? sym_code(xr[c0], scale, 7) : 0;
        int q1 = (red > 0.f && c1 < cols) ? sym_code(xr[c1], scale, 7) : 0;
        yr[p] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
      }
    }
  }
}

template <int OP>
mn_status launch_rows(const mnc_backend *cb, cudaStream_t s, const RowArgs &a,
                      int out_align) {
  bool vec = a.cols % 4 == 0 && a.cols <= 2048 && (uintptr_t)a.x % 16 == 0 &&
             (a.rows <= 1 || a.xs % 16 == 0) &&
             (uintptr_t)a.y % out_align == 0 &&
             (a.rows <= 1 || a.ys % out_align == 0);
  unsigned grid = mnc_grid(cb, (a.rows + 7) / 8, 16);
  if (vec) {
    int per_lane = (a.cols / 4 + 31) / 32;
    if (per_lane <= 2)
      row_vec_kernel<2, OP><<<grid, MNC_THREADS, 0, s>>>(a);
    else if (per_lane <= 4)
      row_vec_kernel<4, OP><<<grid, MNC_THREADS, 0, s>>>(a);
    else if (per_lane <= 8)
      row_vec_kernel<8, OP><<<grid, MNC_THREADS, 0, s>>>(a);
    else
      row_vec_kernel<16, OP><<<grid, MNC_THREADS, 0, s>>>(a);
  } else {
    row_generic_kernel<OP><<<grid, MNC_THREADS, 0, s>>>(a);
  }
  MNC_LAUNCHED("row kernel");
  return MN_OK;
}

/* ---------------------------------------------------------------------------
 * Elementwise quantize / dequantize: one thread per 8 elements of a row.
 * ------------------------------------------------------------------------- */
struct ElemArgs {
  const char *x; /* float32 input (quantize) or codes (dequantize) */
  int64_t xs;
  char *y; /* codes (quantize) or float32 output (dequantize) */
  int64_t ys;
  int64_t rows;
  int cols;
  int groups;              /* ceil(cols / 8) */
  const float *scales;     /* dequantize int8 / int4 */
  const float *vmin, *vsc; /* int8_affine */
  int x_vec; /* float32 input rows 16-byte aligned and cols % 8 == 0 */
  int y_vec; /* output rows aligned for one wide store per group */
};

__device__ __forceinline__ int affine_code(float x, float vmin, float sc) {
  if (!(sc > 0.f))
    return 0;
  float r = rintf(__fdiv_rn(x - vmin, sc));
  return (int)fminf(fmaxf(r, 0.f), 255.f);
}

template <int KIND>
__global__ void __launch_bounds__(MNC_THREADS) quant_elem_kernel(ElemArgs a) {
  const int64_t total = a.rows * a.groups;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += step) {
    int64_t r = t / a.groups;
    int g = (int)(t - r * a.groups), c0 = g * 8;
    const float *xr = (const float *)(a.x + r * a.xs);
    float v[8];
    if (a.x_vec) {
      float4 u = __ldcs((const float4 *)(xr + c0));
      float4 w = __ldcs((const float4 *)(xr + c0 + 4));
      v[0] = u.x, v[1] = u.y, v[2] = u.z, v[3] = u.w;
      v[4] = w.x, v[5] = w.y, v[6] = w.z, v[7] = w.w;
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++)
        v[e] = c0 + e < a.cols ? xr[c0 + e] : 0.f;
    }
    unsigned char *yr = (unsigned char *)(a.y + r * a.ys);
    if (KIND == MN_QUANT_FP16 || KIND == MN_QUANT_BF16) {
      uint16_t h[8];
#pragma unroll
      for (int e = 0; e < 8; e++) {
        if (KIND == MN_QUANT_FP16)
          h[e] = __half_as_ushort(__float2half_rn(v[e]));
        else
          h[e] = __bfloat16_as_ushort(__float2bfloat16_rn(v[e]));
      }
      if (a.y_vec) {
        uint4 o;
        o.x = h[0] | ((uint32_t)h[1] << 16);
        o.y = h[2] | ((uint32_t)h[3] << 16);
        o.z = h[4] | ((uint32_t)h[5] << 16);
        o.w = h[6] | ((uint32_t)h[7] << 16);
        __stcs((uint4 *)(yr + (size_t)c0 * 2), o);
      } else {
        uint16_t *yh = (uint16_t *)yr;
#pragma unroll
        for (int e = 0; e < 8; e++)
          if (c0 + e < a.cols)
            yh[c0 + e] = h[e];
      }
    } else if (KIND == MN_QUANT_INT8_AFFINE) {
      uint32_t q[8];
#pragma unroll
      for (int e = 0; e < 8; e++)
        q[e] = c0 + e < a.cols
                   ? (uint32_t)affine_code(v[e], a.vmin[c0 + e], a.vsc[c0 + e])
                   : 0u;
      if (a.y_vec) {
        uint2 o;
        o.x = q[0] | (q[1] << 8) | (q[2] << 16) | (q[3] << 24);
        o.y = q[4] | (q[5] << 8) | (q[6] << 16) | (q[7] << 24);
        *(uint2 *)(yr + c0) = o;
      } else {
#pragma unroll
        for (int e = 0; e < 8; e++)
          if (c0 + e < a.cols)
            yr[c0 + e] = (unsigned char)q[e];
      }
    } else { /* MN_QUANT_BINARY: bit j % 8 of byte j / 8 when x > 0 */
      uint32_t byte = 0;
#pragma unroll
      for (int e = 0; e < 8; e++)
        if (c0 + e < a.cols && v[e] > 0.f)
          byte |= 1u << e;
      yr[g] = (unsigned char)byte;
    }
  }
}

template <int KIND>
__global__ void __launch_bounds__(MNC_THREADS) dequant_kernel(ElemArgs a) {
  const int64_t total = a.rows * a.groups;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += step) {
    int64_t r = t / a.groups;
    int g = (int)(t - r * a.groups), c0 = g * 8;
    const unsigned char *cr = (const unsigned char *)(a.x + r * a.xs);
    float s =
        (KIND == MN_QUANT_INT8 || KIND == MN_QUANT_INT4) ? a.scales[r] : 0.f;
    float v[8];
#pragma unroll
    for (int e = 0; e < 8; e++) {
      int c = c0 + e;
      float o = 0.f;
      if (c < a.cols) {
        if (KIND == MN_QUANT_INT8) {
          o = __fmul_rn((float)(int8_t)cr[c], s);
        } else if (KIND == MN_QUANT_INT4) {
          int nib = (c & 1) ? (cr[c >> 1] >> 4) : (cr[c >> 1] & 0xF);
          o = __fmul_rn((float)((nib ^ 8) - 8), s);
        } else if (KIND == MN_QUANT_INT8_AFFINE) {
          o = fmaf((float)cr[c], a.vsc[c], a.vmin[c]); /* as the CPU */
        } else if (KIND == MN_QUANT_FP16) {
          o = __half2float(__ushort_as_half(((const uint16_t *)cr)[c]));
        } else if (KIND == MN_QUANT_BF16) {
          o = __bfloat162float(__ushort_as_bfloat16(((const uint16_t *)cr)[c]));
        } else {
          o = (cr[c >> 3] >> (c & 7)) & 1 ? 1.0f : -1.0f;
        }
      }
      v[e] = o;
    }
    float *yr = (float *)(a.y + r * a.ys);
    if (a.y_vec) {
      __stcs((float4 *)(yr + c0), make_float4(v[0], v[1], v[2], v[3]));
      __stcs((float4 *)(yr + c0 + 4), make_float4(v[4], v[5], v[6], v[7]));
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++)
        if (c0 + e < a.cols)
          yr[c0 + e] = v[e];
    }
  }
}

/* ---------------------------------------------------------------------------
 * Per-column min / max for int8_affine training: a grid of (column blocks x
 * row splits) writes partial extrema, a second kernel folds the splits.
 * ------------------------------------------------------------------------- */
__global__ void col_minmax_kernel(const char *x, int64_t xs, int64_t rows,
                                  int cols, int64_t rps, float *pmin,
                                  float *pmax) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols)
    return;
  int64_t r0 = (int64_t)blockIdx.y * rps;
  int64_t r1 = r0 + rps < rows ? r0 + rps : rows;
  float mn = INFINITY, mx = -INFINITY;
  for (int64_t r = r0; r < r1; r++) {
    float v = ((const float *)(x + r * xs))[c];
    mn = fminf(mn, v);
    mx = fmaxf(mx, v);
  }
  pmin[(int64_t)blockIdx.y * cols + c] = mn;
  pmax[(int64_t)blockIdx.y * cols + c] = mx;
}

__global__ void col_minmax_final(const float *pmin, const float *pmax,
                                 int splits, int cols, float *vmin,
                                 float *vsc) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols)
    return;
  float mn = INFINITY, mx = -INFINITY;
  for (int s = 0; s < splits; s++) {
    mn = fminf(mn, pmin[(int64_t)s * cols + c]);
    mx = fmaxf(mx, pmax[(int64_t)s * cols + c]);
  }
  vmin[c] = mn;
  /* in double, as the CPU: max - min may exceed FLT_MAX */
  vsc[c] = (float)(((double)mx - (double)mn) / 255.0);
}

/* Copy n floats from the device to `dst`, which may be host or device. */
mn_status floats_out(mnc_lane *l, float *dst, const float *src, size_t n) {
  if (n == 0)
    return MN_OK;
  if (mn__cuda_is_device_ptr(dst)) {
    MNC_TRY(cudaMemcpyAsync(dst, src, n * sizeof(float),
                            cudaMemcpyDeviceToDevice, l->stream));
    MNC_TRY(cudaStreamSynchronize(l->stream));
    return MN_OK;
  }
  return mn__cuda_d2h(l, dst, src, n * sizeof(float));
}

mn_status check_cols(const mn_tensor *t) {
  if (t->cols > INT_MAX / 8)
    return MNC_ERR(MN_ERR_INVALID,
                   "rows of %lld elements are too wide for "
                   "the CUDA backend",
                   (long long)t->cols);
  return MN_OK;
}

} // namespace

/* ---------------------------------------------------------------------------
 * Ops
 * ------------------------------------------------------------------------- */
mn_status mn__cuda_normalize(mn_backend *b, const mn_tensor *x, mn_tensor *y,
                             int64_t *zero_rows) {
  mnc_backend *cb = mnc_of(b);
  if (zero_rows)
    *zero_rows = 0;
  MNC_CHECK(mn__cuda_check_layout(x, "input"));
  MNC_CHECK(mn__cuda_check_layout(y, "output"));
  MNC_CHECK(check_cols(x));
  if (x->rows == 0)
    return MN_OK;
  MncLane lane;
  MNC_CHECK(lane.get(cb));
  MncBuf zc;
  MNC_CHECK(zc.alloc(cb, lane.l, sizeof(unsigned long long)));
  MNC_TRY(cudaMemsetAsync(zc.p, 0, sizeof(unsigned long long), lane.s()));
  RowArgs a = {(const char *)x->data,
               x->stride,
               (char *)y->data,
               y->stride,
               nullptr,
               x->rows,
               (int)x->cols,
               zc.as<unsigned long long>()};
  MNC_CHECK(launch_rows<OP_NORM>(cb, lane.s(), a, 16));
  unsigned long long z = 0;
  MNC_CHECK(mn__cuda_d2h(lane.l, &z, zc.p, sizeof z));
  if (zero_rows)
    *zero_rows = (int64_t)z;
  return MN_OK;
}

mn_status mn__cuda_affine_train(mn_backend *b, const mn_tensor *x,
                                mn_affine_params *out) {
  mnc_backend *cb = mnc_of(b);
  MNC_CHECK(mn__cuda_check_layout(x, "input"));
  MNC_CHECK(check_cols(x));
  const int cols = (int)x->cols;
  const int cblocks = (cols + 255) / 256;
  int64_t want = (int64_t)cb->sm_count * 8 / cblocks;
  if (want < 1)
    want = 1;
  int64_t splits = (x->rows + 31) / 32;
  if (splits > want)
    splits = want;
  if (splits > 65535)
    splits = 65535;
  if (splits < 1)
    splits = 1;
  int64_t rps = (x->rows + splits - 1) / splits;
  splits = (x->rows + rps - 1) / rps;

  MncLane lane;
  MNC_CHECK(lane.get(cb));
  MncBuf part, par;
  MNC_CHECK(part.alloc(cb, lane.l, (size_t)splits * cols * 2 * sizeof(float)));
  MNC_CHECK(par.alloc(cb, lane.l, (size_t)cols * 2 * sizeof(float)));
  float *pmin = part.as<float>(), *pmax = pmin + splits * cols;
  float *vmin = par.as<float>(), *vsc = vmin + cols;
  col_minmax_kernel<<<dim3(cblocks, (unsigned)splits), 256, 0, lane.s()>>>(
      (const char *)x->data, x->stride, x->rows, cols, rps, pmin, pmax);
  MNC_LAUNCHED("col_minmax_kernel");
  col_minmax_final<<<cblocks, 256, 0, lane.s()>>>(pmin, pmax, (int)splits, cols,
                                                  vmin, vsc);
  MNC_LAUNCHED("col_minmax_final");
  MNC_CHECK(floats_out(lane.l, out->vmin, vmin, (size_t)cols));
  MNC_CHECK(floats_out(lane.l, out->scale, vsc, (size_t)cols));
  return MN_OK;
}

mn_status mn__cuda_quantize(mn_backend *b, const mn_tensor *x,
                            mn_quant_kind kind, const mn_affine_params *affine,
                            mn_tensor *codes, float *scales) {
  mnc_backend *cb = mnc_of(b);
  MNC_CHECK(mn__cuda_check_layout(x, "input"));
  MNC_CHECK(mn__cuda_check_layout(codes, "codes"));
  MNC_CHECK(check_cols(x));
  if (x->rows == 0)
    return MN_OK;
  MncLane lane;
  MNC_CHECK(lane.get(cb));
  cudaStream_t s = lane.s();

  if (kind == MN_QUANT_INT8 || kind == MN_QUANT_INT4) {
    MncBuf sbuf;
    float *sdev = scales;
    int on_dev = mn__cuda_is_device_ptr(scales);
    if (!on_dev) {
      MNC_CHECK(sbuf.alloc(cb, lane.l, (size_t)x->rows * sizeof(float)));
      sdev = sbuf.as<float>();
    }
    RowArgs a = {(const char *)x->data, x->stride, (char *)codes->data,
                 codes->stride,         sdev,      x->rows,
                 (int)x->cols,          nullptr};
    if (kind == MN_QUANT_INT8)
      MNC_CHECK(launch_rows<OP_I8>(cb, s, a, 4));
    else
      MNC_CHECK(launch_rows<OP_I4>(cb, s, a, 2));
    if (!on_dev)
      MNC_CHECK(
          mn__cuda_d2h(lane.l, scales, sdev, (size_t)x->rows * sizeof(float)));
    MNC_TRY(cudaStreamSynchronize(s));
    return MN_OK;
  }

  ElemArgs a = {};
  a.x = (const char *)x->data;
  a.xs = x->stride;
  a.y = (char *)codes->data;
  a.ys = codes->stride;
  a.rows = x->rows;
  a.cols = (int)x->cols;
  a.groups = (a.cols + 7) / 8;
  a.x_vec = a.cols % 8 == 0 && (uintptr_t)a.x % 16 == 0 &&
            (a.rows <= 1 || a.xs % 16 == 0);
  int yal = kind == MN_QUANT_INT8_AFFINE ? 8 : 16;
  a.y_vec = a.cols % 8 == 0 && (uintptr_t)a.y % yal == 0 &&
            (a.rows <= 1 || a.ys % yal == 0);
  MncBuf vm, vs;
  if (kind == MN_QUANT_INT8_AFFINE) {
    MNC_CHECK(mn__cuda_device_floats(cb, lane.l, affine->vmin, (size_t)a.cols,
                                     &vm, &a.vmin));
    MNC_CHECK(mn__cuda_device_floats(cb, lane.l, affine->scale, (size_t)a.cols,
                                     &vs, &a.vsc));
  }
  unsigned grid =
      mnc_grid(cb, (a.rows * a.groups + MNC_THREADS - 1) / MNC_THREADS, 16);
  switch (kind) {
  case MN_QUANT_FP16:
    quant_elem_kernel<MN_QUANT_FP16><<<grid, MNC_THREADS, 0, s>>>(a);
    break;
  case MN_QUANT_BF16:
    quant_elem_kernel<MN_QUANT_BF16><<<grid, MNC_THREADS, 0, s>>>(a);
    break;
  case MN_QUANT_INT8_AFFINE:
    quant_elem_kernel<MN_QUANT_INT8_AFFINE><<<grid, MNC_THREADS, 0, s>>>(a);
    break;
  case MN_QUANT_BINARY:
    quant_elem_kernel<MN_QUANT_BINARY><<<grid, MNC_THREADS, 0, s>>>(a);
    break;
  default:
    return MNC_ERR(MN_ERR_INVALID, "quantization kind %d is not valid",
                   (int)kind);
  }
  MNC_LAUNCHED("quant_elem_kernel");
  MNC_TRY(cudaStreamSynchronize(s));
  return MN_OK;
}

mn_status mn__cuda_dequantize(mn_backend *b, const mn_tensor *codes,
                              mn_quant_kind kind, const float *scales,
                              const mn_affine_params *affine, mn_tensor *y) {
  mnc_backend *cb = mnc_of(b);
  MNC_CHECK(mn__cuda_check_layout(codes, "codes"));
  MNC_CHECK(mn__cuda_check_layout(y, "output"));
  MNC_CHECK(check_cols(codes));
  if (codes->rows == 0)
    return MN_OK;
  MncLane lane;
  MNC_CHECK(lane.get(cb));
  cudaStream_t s = lane.s();
  ElemArgs a = {};
  a.x = (const char *)codes->data;
  a.xs = codes->stride;
  a.y = (char *)y->data;
  a.ys = y->stride;
  a.rows = codes->rows;
  a.cols = (int)codes->cols;
  a.groups = (a.cols + 7) / 8;
  a.y_vec = a.cols % 8 == 0 && (uintptr_t)a.y % 16 == 0 &&
            (a.rows <= 1 || a.ys % 16 == 0);
  MncBuf sb, vm, vs;
  if (kind == MN_QUANT_INT8 || kind == MN_QUANT_INT4)
    MNC_CHECK(mn__cuda_device_floats(cb, lane.l, scales, (size_t)a.rows, &sb,
                                     &a.scales));
  if (kind == MN_QUANT_INT8_AFFINE) {
    MNC_CHECK(mn__cuda_device_floats(cb, lane.l, affine->vmin, (size_t)a.cols,
                                     &vm, &a.vmin));
    MNC_CHECK(mn__cuda_device_floats(cb, lane.l, affine->scale, (size_t)a.cols,
                                     &vs, &a.vsc));
  }
  unsigned grid =
      mnc_grid(cb, (a.rows * a.groups + MNC_THREADS - 1) / MNC_THREADS, 16);
  switch (kind) {
  case MN_QUANT_INT8:
    dequant_kernel<MN_QUANT_INT8><<<grid, MNC_THREADS, 0, s>>>(a);
    break;
  case MN_QUANT_INT4:
    dequant_kernel<MN_QUANT_INT4><<<grid, MNC_THREADS, 0, s>>>(a);
    break;
  case MN_QUANT_INT8_AFFINE:
    dequant_kernel<MN_QUANT_INT8_AFFINE><<<grid, MNC_THREADS, 0, s>>>(a);
    break;
  case MN_QUANT_FP16:
    dequant_kernel<MN_QUANT_FP16><<<grid, MNC_THREADS, 0, s>>>(a);
    break;
  case MN_QUANT_BF16:
    dequant_kernel<MN_QUANT_BF16><<<grid, MNC_THREADS, 0, s>>>(a);
    break;
  case MN_QUANT_BINARY:
    dequant_kernel<MN_QUANT_BINARY><<<grid, MNC_THREADS, 0, s>>>(a);
    break;
  default:
    return MNC_ERR(MN_ERR_INVALID, "quantization kind %d is not valid",
                   (int)kind);
  }
  MNC_LAUNCHED("dequant_kernel");
  MNC_TRY(cudaStreamSynchronize(s));
  return MN_OK;
}
