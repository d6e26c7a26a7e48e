/*
 * cuda_scan.cuh - the scan kernel of similarity and search (see
 * cuda_search.cu for the design) and the warp top-k pools it shares with
 * the select kernel. Its instantiations are split by storage dtype over
 * cuda_scan_float.cu and cuda_scan_int.cu so that they compile in
 * parallel; mn__cuda_scan_kernel() picks one.
 */
#ifndef MNEMO_CUDA_SCAN_CUH
#define MNEMO_CUDA_SCAN_CUH

#include "cuda_internal.cuh"

#include <limits.h>
#include <math.h>

namespace mnc {

constexpr int QB_MAX = 8; /* queries per scan pass */

/* ---------------------------------------------------------------------------
 * Descriptors
 * ------------------------------------------------------------------------- */
struct Db {
  const unsigned char *codes;
  int64_t stride;
  int rowbytes;
  int d;
  int nvec;  /* 16-byte vectors per row (last may be partial) */
  int nfull; /* vectors that may be loaded whole (0: unaligned layout) */
  const float *scales;     /* int8 / int4 row scales */
  const float *vmin, *vsc; /* uint8 affine */
  const float *norms;      /* optional row norms */
};

struct Qry {
  const float *qf; /* float queries, zero padded to ldq */
  int ldq;
  const int8_t *q8; /* int8: three parts per query, each ld8 bytes */
  int ld8;
  const float *q8s;   /* int8: three part scales per query */
  const uint32_t *qb; /* binary: ldb words per query */
  int ldb;
  const float *qn; /* query norms */
};

struct ScanArgs {
  Db db;
  Qry q;
  int64_t rows;
  int q0, nq;
  int metric, need_xx, G;
  int qsmem; /* bytes of staged queries in shared memory (0: read global) */
  int k, P;
  float *out_key; /* [nq][gridDim.x][k] */
  int *out_id;
  float *out; /* similarity matrix rows for queries q0.. */
  int64_t ldo;
};

struct Epi {
  int metric;
  const float *qn;     /* per query */
  const float *qmul;   /* per query, or null */
  const float *rscale; /* per chunk row, or null */
  const float *xn;     /* per chunk row, needed for cosine / L2 */
};

template <int DT> struct Traits;
template <> struct Traits<MN_DTYPE_F32> { static constexpr int EPW = 1; };
template <> struct Traits<MN_DTYPE_F16> { static constexpr int EPW = 2; };
template <> struct Traits<MN_DTYPE_BF16> { static constexpr int EPW = 2; };
template <> struct Traits<MN_DTYPE_U8> { static constexpr int EPW = 4; };
template <> struct Traits<MN_DTYPE_I4> { static constexpr int EPW = 8; };

/* ---------------------------------------------------------------------------
 * Device helpers
 * ------------------------------------------------------------------------- */
__device__ __forceinline__ uint4 load_vec(const Db &db, int64_t row, int v) {
  const unsigned char *p = db.codes + row * db.stride + (int64_t)v * 16;
  if (v < db.nfull)
    return __ldg((const uint4 *)p);
  uint32_t w[4] = {0u, 0u, 0u, 0u};
  const int off = v * 16;
#pragma unroll
  for (int b = 0; b < 16; b++)
    if (off + b < db.rowbytes)
      w[b >> 2] |= (uint32_t)p[b] << (8 * (b & 3));
  return make_uint4(w[0], w[1], w[2], w[3]);
}

__device__ __forceinline__ uint32_t vword(const uint4 &v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

__device__ __forceinline__ float metric_value(int metric, float dot, float qn,
                                              float xn, float x2) {
  if (metric == MN_METRIC_IP)
    return dot;
  if (metric == MN_METRIC_COSINE)
    return (qn > 0.f && xn > 0.f) ? dot / (qn * xn) : 0.f;
  return fmaxf(fmaf(qn, qn, x2) - 2.f * dot, 0.f);
}

__device__ __forceinline__ float binary_value(int metric, int ham, int d) {
  if (metric == MN_METRIC_IP)
    return (float)(d - 2 * ham);
  if (metric == MN_METRIC_COSINE)
    return (float)(d - 2 * ham) / (float)d;
  return 4.f * (float)ham;
}

__device__ __forceinline__ float to_key(int metric, float v) {
  return metric == MN_METRIC_L2 ? -v : v;
}

__device__ __forceinline__ bool better(float ka, int ia, float kb, int ib) {
  return ka > kb || (ka == kb && ia < ib);
}

/* A pool's state, the same in every lane of the warp that owns it:
 * entries in use, and the k-th best (key, id) once k are kept. */
struct Pool {
  int cnt;
  float tk;
  int ti;
};

__device__ __forceinline__ Pool pool_empty() {
  Pool p = {0, -INFINITY, INT_MAX};
  return p;
}

/* Warp-collective: offer one candidate per lane to a pool. */
__device__ __forceinline__ void pool_offer(float *pk, int *pi, Pool &s,
                                           bool valid, float key, int id,
                                           int lane) {
  bool pass = valid && better(key, id, s.tk, s.ti);
  unsigned m = __ballot_sync(0xffffffffu, pass);
  if (pass) {
    int pos = s.cnt + __popc(m & ((1u << lane) - 1u));
    pk[pos] = key;
    pi[pos] = id;
  }
  s.cnt += __popc(m);
}

/* Warp-collective: sort the pool best first and keep its k best. Rare on
 * the hot path, so a real call (state by value, in registers): inlined at
 * every unrolled site it would multiply the kernels' code and compile
 * time. */
static __device__ __noinline__ Pool pool_flush(float *pk, int *pi, Pool s,
                                               int k, int P, int lane) {
  __syncwarp();
  for (int i = s.cnt + lane; i < P; i += 32) {
    pk[i] = -INFINITY;
    pi[i] = INT_MAX;
  }
  __syncwarp();
  for (int size = 2; size <= P; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = lane; t < (P >> 1); t += 32) {
        int a = 2 * t - (t & (stride - 1));
        int b = a + stride;
        float ka = pk[a], kb = pk[b];
        int ia = pi[a], ib = pi[b];
        bool best_first = (a & size) == 0;
        bool swap =
            best_first ? better(kb, ib, ka, ia) : better(ka, ia, kb, ib);
        if (swap) {
          pk[a] = kb;
          pk[b] = ka;
          pi[a] = ib;
          pi[b] = ia;
        }
      }
      __syncwarp();
    }
  }
  if (s.cnt >= k) {
    s.cnt = k;
    s.tk = pk[k - 1];
    s.ti = pi[k - 1];
  }
  __syncwarp();
  return s;
}

/* Warp 0: take in the k best of pools 1..nw-1 (wstride entries apart),
 * then write its k best to ok / oi. */
static __device__ __noinline__ void
block_merge_write(float *pk0, int *pi0, Pool s, int64_t wstride, int nw, int k,
                  int P, int lane, float *ok, int *oi) {
  for (int w = 1; w < nw; w++) {
    const float *wk = pk0 + (int64_t)w * wstride;
    const int *wi = pi0 + (int64_t)w * wstride;
    for (int i0 = 0; i0 < k; i0 += 32) {
      int i = i0 + lane;
      int id = i < k ? wi[i] : INT_MAX;
      float key = i < k ? wk[i] : -INFINITY;
      pool_offer(pk0, pi0, s, id != INT_MAX, key, id, lane);
      if (s.cnt > P - 32)
        s = pool_flush(pk0, pi0, s, k, P, lane);
    }
  }
  s = pool_flush(pk0, pi0, s, k, P, lane);
  for (int i = lane; i < k; i += 32) {
    ok[i] = pk0[i];
    oi[i] = pi0[i];
  }
}

/* ---------------------------------------------------------------------------
 * Per-dtype accumulation over one 16-byte vector of R rows.
 * ------------------------------------------------------------------------- */
template <int DT, int QB, int R> struct Acc {
  float f[R][QB];
  float xx[R];
  int i8[R][QB][3];
  int ixx[R];
  int ham[R][QB];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int r = 0; r < R; r++) {
      xx[r] = 0.f;
      ixx[r] = 0;
#pragma unroll
      for (int j = 0; j < QB; j++) {
        f[r][j] = 0.f;
        ham[r][j] = 0;
        i8[r][j][0] = i8[r][j][1] = i8[r][j][2] = 0;
      }
    }
  }
};

/* Decode one 32-bit word of stored codes into EPW floats. */
template <int DT>
__device__ __forceinline__ void decode_word(uint32_t w, int e0, const Db &db,
                                            float *x) {
  if constexpr (DT == MN_DTYPE_F32) {
    x[0] = __uint_as_float(w);
  } else if constexpr (DT == MN_DTYPE_F16) {
    x[0] = __half2float(__ushort_as_half((unsigned short)(w & 0xFFFFu)));
    x[1] = __half2float(__ushort_as_half((unsigned short)(w >> 16)));
  } else if constexpr (DT == MN_DTYPE_BF16) {
    x[0] = __uint_as_float(w << 16);
    x[1] = __uint_as_float(w & 0xFFFF0000u);
  } else if constexpr (DT == MN_DTYPE_U8) {
#pragma unroll
    for (int b = 0; b < 4; b++) {
      int e = e0 + b;
      x[b] = e < db.d ? fmaf((float)((w >> (8 * b)) & 0xFFu), __ldg(db.vsc + e),
                             __ldg(db.vmin + e))
                      : 0.f;
    }
  } else if constexpr (DT == MN_DTYPE_I4) {
#pragma unroll
    for (int n = 0; n < 8; n++) {
      int v = (int)((w >> (4 * n)) & 0xFu);
      x[n] = e0 + n < db.d ? (float)((v ^ 8) - 8) : 0.f;
    }
  }
}

template <int DT, int QB, int R>
__device__ __forceinline__ void
accumulate(Acc<DT, QB, R> &acc, const uint4 (&xv)[R], int v, const Db &db,
           const float *qf, int ldq, const int8_t *q8, int ld8,
           const uint32_t *qb, int ldb, int nq, bool need_xx) {
  if constexpr (DT == MN_DTYPE_I8) {
#pragma unroll
    for (int r = 0; r < R; r++)
      if (need_xx) {
        int t = acc.ixx[r];
        t = __dp4a((int)xv[r].x, (int)xv[r].x, t);
        t = __dp4a((int)xv[r].y, (int)xv[r].y, t);
        t = __dp4a((int)xv[r].z, (int)xv[r].z, t);
        acc.ixx[r] = __dp4a((int)xv[r].w, (int)xv[r].w, t);
      }
#pragma unroll
    for (int j = 0; j < QB; j++) {
      if (j >= nq)
        break;
#pragma unroll
      for (int p = 0; p < 3; p++) {
        uint4 qv = *(const uint4 *)(q8 + (int64_t)(j * 3 + p) * ld8 + v * 16);
#pragma unroll
        for (int r = 0; r < R; r++) {
          int t = acc.i8[r][j][p];
          t = __dp4a((int)xv[r].x, (int)qv.x, t);
          t = __dp4a((int)xv[r].y, (int)qv.y, t);
          t = __dp4a((int)xv[r].z, (int)qv.z, t);
          acc.i8[r][j][p] = __dp4a((int)xv[r].w, (int)qv.w, t);
        }
      }
    }
  } else if constexpr (DT == MN_DTYPE_BIN) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
      int wg = v * 4 + i, bits = db.d - 32 * wg;
      uint32_t mask =
          bits >= 32 ? 0xFFFFFFFFu : (bits <= 0 ? 0u : ((1u << bits) - 1u));
#pragma unroll
      for (int j = 0; j < QB; j++) {
        if (j >= nq)
          break;
        uint32_t q = qb[(int64_t)j * ldb + wg];
#pragma unroll
        for (int r = 0; r < R; r++)
          acc.ham[r][j] += __popc((vword(xv[r], i) ^ q) & mask);
      }
    }
  } else {
    constexpr int EPW = Traits<DT>::EPW;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int e0 = v * (4 * EPW) + i * EPW;
      float x[R][EPW];
#pragma unroll
      for (int r = 0; r < R; r++) {
        decode_word<DT>(vword(xv[r], i), e0, db, x[r]);
        if (need_xx)
#pragma unroll
          for (int e = 0; e < EPW; e++)
            acc.xx[r] = fmaf(x[r][e], x[r][e], acc.xx[r]);
      }
#pragma unroll
      for (int j = 0; j < QB; j++) {
        if (j >= nq)
          break;
        const float *qp = qf + (int64_t)j * ldq + e0;
        float q[EPW];
        if constexpr (EPW == 1) {
          q[0] = qp[0];
        } else if constexpr (EPW == 2) {
          float2 t = *(const float2 *)qp;
          q[0] = t.x, q[1] = t.y;
        } else {
#pragma unroll
          for (int e = 0; e < EPW; e += 4) {
            float4 t = *(const float4 *)(qp + e);
            q[e] = t.x, q[e + 1] = t.y, q[e + 2] = t.z, q[e + 3] = t.w;
          }
        }
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
          for (int e = 0; e < EPW; e++)
            acc.f[r][j] = fmaf(q[e], x[r][e], acc.f[r][j]);
      }
    }
  }
}

template <class T> __device__ __forceinline__ T group_sum(T v, int G) {
  for (int o = G >> 1; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/* ---------------------------------------------------------------------------
 * The scan kernel
 * ------------------------------------------------------------------------- */
template <int DT, int QB>
__global__ void __launch_bounds__(256) scan_kernel(ScanArgs a) {
  constexpr int R = QB == 1 ? 4 : 1;
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nw = blockDim.x >> 5;
  const int nq = a.nq;
  const bool topk = a.k > 0; /* else similarity: scores to a.out */

  /* queries: stage this pass's queries into shared memory */
  const float *qf = nullptr;
  const int8_t *q8 = nullptr;
  const uint32_t *qb = nullptr;
  {
    const unsigned char *src;
    size_t per;
    if constexpr (DT == MN_DTYPE_I8) {
      src = (const unsigned char *)(a.q.q8 + (int64_t)a.q0 * 3 * a.q.ld8);
      per = (size_t)3 * a.q.ld8;
    } else if constexpr (DT == MN_DTYPE_BIN) {
      src = (const unsigned char *)(a.q.qb + (int64_t)a.q0 * a.q.ldb);
      per = (size_t)a.q.ldb * 4;
    } else {
      src = (const unsigned char *)(a.q.qf + (int64_t)a.q0 * a.q.ldq);
      per = (size_t)a.q.ldq * 4;
    }
    const unsigned char *base = src;
    if (a.qsmem) {
      size_t n16 = per * nq / 16;
      for (size_t i = threadIdx.x; i < n16; i += blockDim.x)
        ((uint4 *)smem)[i] = ((const uint4 *)src)[i];
      base = smem;
    }
    qf = (const float *)base;
    q8 = (const int8_t *)base;
    qb = (const uint32_t *)base;
  }

  const int P = a.P;
  float *pk = (float *)(smem + a.qsmem);
  int *pi = (int *)(pk + (int64_t)nw * QB * P);
  Pool ps[QB];
#pragma unroll
  for (int j = 0; j < QB; j++)
    ps[j] = pool_empty();
  __syncthreads();

  const int G = a.G, gl = lane & (G - 1), grp = lane / G;
  const int rps = (32 / G) * R; /* rows per warp step */
  const int64_t gw = (int64_t)blockIdx.x * nw + warp;
  const int64_t tw = (int64_t)gridDim.x * nw;
  const bool need_xx = a.need_xx != 0;
  const int nvec = a.db.nvec;

  for (int64_t base = gw * rps; base < a.rows; base += tw * rps) {
    const int64_t rb = base + (int64_t)grp * R;
    Acc<DT, QB, R> acc;
    acc.zero();
#pragma unroll(QB == 1 ? 2 : 1)
    for (int v = gl; v < nvec; v += G) {
      uint4 xv[R];
#pragma unroll
      for (int r = 0; r < R; r++)
        xv[r] = rb + r < a.rows ? load_vec(a.db, rb + r, v)
                                : make_uint4(0u, 0u, 0u, 0u);
      accumulate<DT, QB, R>(acc, xv, v, a.db, qf, a.q.ldq, q8, a.q.ld8, qb,
                            a.q.ldb, nq, need_xx);
    }

#pragma unroll
    for (int r = 0; r < R; r++) {
      const int64_t row = rb + r;
      const bool live = gl == 0 && row < a.rows;
      float x2 = 0.f, xn = 0.f, rs = 1.f;
      if constexpr (DT != MN_DTYPE_BIN) {
        if (need_xx) {
          if constexpr (DT == MN_DTYPE_I8)
            x2 = (float)group_sum(acc.ixx[r], G);
          else
            x2 = group_sum(acc.xx[r], G);
        }
        if (live && (DT == MN_DTYPE_I8 || DT == MN_DTYPE_I4))
          rs = a.db.scales[row];
        x2 *= rs * rs;
        if (live && a.db.norms) {
          xn = fabsf(a.db.norms[row]);
          x2 = xn * xn;
        } else {
          xn = sqrtf(x2);
        }
      }
#pragma unroll
      for (int j = 0; j < QB; j++) {
        if (j >= nq)
          break;
        float val;
        if constexpr (DT == MN_DTYPE_BIN) {
          val = binary_value(a.metric, group_sum(acc.ham[r][j], G), a.db.d);
        } else if constexpr (DT == MN_DTYPE_I8) {
          /* The three query parts are weighted on each lane and summed
           * once: one shuffle tree per row instead of three. choose_g
           * keeps a lane under 8 vectors (128 values) up to 4096 wide, so
           * its integer sums convert to float exactly; wider, they round
           * by at most 6e-8 relative. */
          const float *qs = a.q.q8s + (int64_t)(a.q0 + j) * 3;
          float part = qs[0] * (float)acc.i8[r][j][0] +
                       qs[1] * (float)acc.i8[r][j][1] +
                       qs[2] * (float)acc.i8[r][j][2];
          float sum = group_sum(part, G);
          float dot = live ? rs * sum : 0.f;
          val = metric_value(a.metric, dot, a.q.qn[a.q0 + j], xn, x2);
        } else {
          float dot = group_sum(acc.f[r][j], G) * rs;
          val = metric_value(a.metric, dot, a.q.qn[a.q0 + j], xn, x2);
        }
        if (topk) {
          float *k0 = pk + (int64_t)(warp * QB + j) * P;
          int *i0 = pi + (int64_t)(warp * QB + j) * P;
          pool_offer(k0, i0, ps[j], live, to_key(a.metric, val), (int)row,
                     lane);
        } else {
          if (live)
            a.out[(int64_t)j * a.ldo + row] = val;
        }
      }
    }
    if (topk) {
#pragma unroll
      for (int j = 0; j < QB; j++) {
        if (j >= nq)
          break;
        if (ps[j].cnt > P - rps)
          ps[j] = pool_flush(pk + (int64_t)(warp * QB + j) * P,
                             pi + (int64_t)(warp * QB + j) * P, ps[j], a.k, P,
                             lane);
      }
    }
  }

  if (topk) {
#pragma unroll
    for (int j = 0; j < QB; j++) {
      if (j >= nq)
        break;
      ps[j] =
          pool_flush(pk + (int64_t)(warp * QB + j) * P,
                     pi + (int64_t)(warp * QB + j) * P, ps[j], a.k, P, lane);
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
      for (int j = 0; j < QB; j++) {
        if (j >= nq)
          break;
        int64_t o = ((int64_t)j * gridDim.x + blockIdx.x) * a.k;
        block_merge_write(pk + (int64_t)j * P, pi + (int64_t)j * P, ps[j],
                          (int64_t)QB * P, nw, a.k, P, lane, a.out_key + o,
                          a.out_id + o);
      }
    }
  }
}

typedef void (*scan_fn)(ScanArgs);

/* The kernel for a storage dtype and QB (1 or QB_MAX); null if none. */
scan_fn scan_kernel_float(int dt,
                          int qb); /* float32, float16, bfloat16, binary */
scan_fn scan_kernel_int(int dt, int qb); /* int8, uint8, int4 */

inline scan_fn scan_kernel_for(int dt, int qb) {
  scan_fn f = scan_kernel_float(dt, qb);
  return f ? f : scan_kernel_int(dt, qb);
}

} // namespace mnc

#endif /* MNEMO_CUDA_SCAN_CUH */
