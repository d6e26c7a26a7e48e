/*
 * cuda_search.cu - similarity and fused similarity + top-k on the device,
 * for every storage dtype and metric.
 *
 * Two ways through:
 *  - scan (any dtype, few queries): one kernel streams the stored rows
 *    once per group of at most QB queries. A group of G lanes shares a row
 *    (16-byte loads, G chosen so each lane has a few), the query sits in
 *    shared memory, and the score feeds either the output matrix
 *    (similarity) or a warp-private top-k pool in shared memory (search).
 *    float16 / bfloat16 / float32 / int4 / uint8 rows are decoded to float;
 *    int8 rows use dp4a against the query split into three int8 parts
 *    (q ~ s1*a + s2*b + s3*c, error ~1e-7 of max|q|); binary rows use
 *    popcount of XOR with the binarised query.
 *  - GEMM (float32, float16, int8 storage, 16 or more queries): chunks of
 *    rows go through cuBLAS (float16: the query in two halves hi + lo, so
 *    the product is float32-exact, or hi only when precision_f16 allows;
 *    int8: codes widened to float16 first) into a score tile that stays in
 *    L2; a select kernel applies the metric and keeps the top k, merging
 *    with the best of earlier chunks. The next chunk's GEMM runs on the
 *    lane's second stream while the current chunk is selected.
 *    Where the query is float16 anyway (precision_f16, not split), a
 *    search writes float16 tiles instead, keeps k + margin candidates by
 *    an upper bound of their float32 keys, and re-ranks them exactly
 *    (gemm_search).
 *
 * Top-k pools: a warp owns P = 2^ceil(log2(k + per-step)) entries per
 * query. A candidate enters when it beats the pool's current k-th best
 * (ties: the lower id wins); when the pool is nearly full the warp sorts it
 * (bitonic, best first) and keeps k. At the end warp 0 of each block
 * absorbs the other warps' k best, each block writes one list, and a select
 * kernel merges the lists. L2 is ranked on -distance. k above 1024 takes
 * similarity + the host's top-k instead.
 *
 * DESIGN: ids inside kernels are int32 row numbers; blocks of more than
 * 2^30 rows are searched in segments merged on the host. The scan kernel
 * and the pools live in cuda_scan.cuh (instantiated in cuda_scan_float.cu
 * and cuda_scan_int.cu); this file holds the select, query preparation and
 * GEMM-path kernels and all the host-side orchestration.
 */
#include "cuda_scan.cuh"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <new>
#include <stdlib.h>
#include <string.h>

using namespace mnc;

namespace {

constexpr int GEMM_MIN_Q = 16; /* from here on, GEMM path */
constexpr int64_t SEGMENT = (int64_t)1 << 30;

struct SelArgs {
  const float *ckey; /* explicit candidates [j][ldc] */
  const int *cid;
  int64_t ldc;
  const void *S; /* dense scores [j][ldS] of one chunk (float / __half) */
  int64_t ldS;
  float tmul; /* multiplier of the tile's entries (0: none) */
  int id0;
  Epi epi;
  int64_t m;             /* candidates per query */
  const float *prev_key; /* [j][k] or null */
  const int *prev_id;
  int k, P;
  float *out_key; /* [j][gridDim.y][k] */
  int *out_id;
};

int epv_of(int dt) {
  switch (dt) {
  case MN_DTYPE_F32:
    return 4;
  case MN_DTYPE_F16:
  case MN_DTYPE_BF16:
    return 8;
  case MN_DTYPE_I8:
  case MN_DTYPE_U8:
    return 16;
  case MN_DTYPE_I4:
    return 32;
  default:
    return 128;
  }
}

/* A float16 tile entry s was rounded from the GEMM's float32 sum: this is
 * an upper bound of that sum (|rounding| <= 2^-11 |s| for normal s, 2^-25
 * below; both doubled for the float32 sums' own order). Non-decreasing in
 * s, and every metric's key is non-decreasing in the dot product, so a
 * key computed from it bounds the float32 key from above. */
__device__ __forceinline__ float tile16_up(float s) {
  if (s == -INFINITY)
    return -FLT_MAX;
  return s + fmaf(fabsf(s), 0x1p-10f, 0x1p-24f);
}

template <class T>
__device__ __forceinline__ float tile_at(const T *S, int64_t i);
template <>
__device__ __forceinline__ float tile_at(const float *S, int64_t i) {
  return S[i];
}
template <>
__device__ __forceinline__ float tile_at(const __half *S, int64_t i) {
  return __half2float(S[i]);
}

/* The key of dense tile entry s at column c (T = __half: its upper bound). */
template <class T>
__device__ __forceinline__ float dense_key(const Epi &e, float s, float qmul,
                                           float qn, int64_t c) {
  if (sizeof(T) == 2)
    s = tile16_up(s);
  float dot = s * qmul;
  if (e.rscale)
    dot *= e.rscale[c];
  float xn = e.xn ? fabsf(e.xn[c]) : 0.f;
  return to_key(e.metric, metric_value(e.metric, dot, qn, xn, xn * xn));
}

/* ---------------------------------------------------------------------------
 * Select: top k over candidate lists (explicit) or a dense score tile from
 * a GEMM (metric applied on the fly; T the tile's type), optionally merged
 * with a previous top-k list. Block (j, split) writes list [j][split].
 * ------------------------------------------------------------------------- */
template <bool DENSE, class T = float>
__global__ void __launch_bounds__(256) select_kernel(SelArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nw = blockDim.x >> 5;
  const int j = blockIdx.x, split = blockIdx.y, nsplit = gridDim.y;
  const int P = a.P, k = a.k;
  float *pk = (float *)smem;
  int *pi = (int *)(pk + (int64_t)nw * P);
  float *mk = pk + (int64_t)warp * P;
  int *mi = pi + (int64_t)warp * P;
  Pool ps = pool_empty();

  if (a.prev_key && split == 0 && warp == 0) {
    const float *pkey = a.prev_key + (int64_t)j * k;
    const int *pid = a.prev_id + (int64_t)j * k;
    for (int i0 = 0; i0 < k; i0 += 32) {
      int i = i0 + lane;
      int id = i < k ? pid[i] : INT_MAX;
      float key = i < k ? pkey[i] : -INFINITY;
      pool_offer(mk, mi, ps, id != INT_MAX, key, id, lane);
      if (ps.cnt > P - 32)
        ps = pool_flush(mk, mi, ps, k, P, lane);
    }
  }

  float qn = 0.f, qmul = 1.f;
  if (DENSE) {
    qn = a.epi.qn[j];
    if (a.epi.qmul)
      qmul = a.epi.qmul[j];
    if (a.tmul > 0.f)
      qmul *= a.tmul;
  }
  const T *tile = (const T *)a.S + (int64_t)j * a.ldS;
  /* splits start on 256-entry boundaries, so that a dense tile can be
   * read 16 bytes per lane */
  const int64_t per = ((a.m + nsplit - 1) / nsplit + 255) & ~(int64_t)255;
  const int64_t c0 = (int64_t)split * per;
  const int64_t c1 = c0 + per < a.m ? c0 + per : a.m;
  constexpr int EPL = 16 / sizeof(T); /* entries per 16-byte load */
  const bool vec = DENSE && a.ldS % EPL == 0 && ((uintptr_t)a.S & 15) == 0;
  if (DENSE && vec) {
    /* Two 16-byte loads per lane in flight (1 KB per warp): the select ran
     * at about 1.2 TB/s with four scalar loads (third H200 run). Reads
     * past c1 stay inside the row's ldS entries and are masked. A group
     * of loads where no lane holds an entry that could enter its pool is
     * passed over with one vote. */
    constexpr int V = 2, SPAN = 32 * EPL;
    for (int64_t base = c0 + (int64_t)warp * SPAN * V; base < c1;
         base += (int64_t)nw * SPAN * V) {
      uint4 v[V];
#pragma unroll
      for (int u = 0; u < V; u++) {
        const int64_t c = base + u * SPAN + lane * EPL;
        v[u] = c < c1 ? *(const uint4 *)(tile + c) : make_uint4(0, 0, 0, 0);
      }
      float key[V][EPL];
      bool maybe = false;
#pragma unroll
      for (int u = 0; u < V; u++) {
        const T *vals = (const T *)&v[u];
#pragma unroll
        for (int e = 0; e < EPL; e++) {
          const int64_t c = base + u * SPAN + lane * EPL + e;
          key[u][e] = -INFINITY;
          if (c < c1) {
            key[u][e] = dense_key<T>(a.epi, tile_at(vals, e), qmul, qn, c);
            maybe |= key[u][e] >= ps.tk;
          }
        }
      }
      if (!__ballot_sync(0xffffffffu, maybe))
        continue;
#pragma unroll
      for (int u = 0; u < V; u++) {
#pragma unroll
        for (int e = 0; e < EPL; e++) {
          const int64_t c = base + u * SPAN + lane * EPL + e;
          const bool valid = c < c1;
          pool_offer(mk, mi, ps, valid, key[u][e],
                     valid ? a.id0 + (int)c : INT_MAX, lane);
          if (ps.cnt > P - 32)
            ps = pool_flush(mk, mi, ps, k, P, lane);
        }
      }
    }
  }
  /* U coalesced loads in flight per lane before any is used: with one,
   * a warp had 128 bytes in flight and the select read its score tile at
   * about 0.5 TB/s, half the search time on the first H200 run. */
  constexpr int U = 4;
  for (int64_t base = c0 + (int64_t)warp * 32 * U; base < c1 && !vec;
       base += (int64_t)nw * 32 * U) {
    float key[U];
    int id[U];
    bool valid[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t c = base + u * 32 + lane;
      valid[u] = c < c1;
      key[u] = -INFINITY;
      id[u] = INT_MAX;
      if (valid[u]) {
        if (DENSE) {
          key[u] = dense_key<T>(a.epi, tile_at(tile, c), qmul, qn, c);
          id[u] = a.id0 + (int)c;
        } else {
          key[u] = a.ckey[(int64_t)j * a.ldc + c];
          id[u] = a.cid[(int64_t)j * a.ldc + c];
          valid[u] = id[u] != INT_MAX;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      pool_offer(mk, mi, ps, valid[u], key[u], id[u], lane);
      if (ps.cnt > P - 32)
        ps = pool_flush(mk, mi, ps, k, P, lane);
    }
  }
  ps = pool_flush(mk, mi, ps, k, P, lane);
  __syncthreads();
  if (warp == 0) {
    int64_t o = ((int64_t)j * nsplit + split) * k;
    block_merge_write(pk, pi, ps, P, nw, k, P, lane, a.out_key + o,
                      a.out_id + o);
  }
}

/* ---------------------------------------------------------------------------
 * Query preparation: one block per query.
 * ------------------------------------------------------------------------- */
struct PrepArgs {
  const char *q;
  int64_t qs;
  int d;
  float *qn;
  float *qf;
  int ldq;
  int8_t *q8;
  int ld8;
  float *q8s;
  uint32_t *qb;
  int ldb;
  __half *qh, *ql; /* GEMM halves; ql may be null */
  int ldh;
  float *qmul;
};

__device__ float block_max(float v, float *sh) {
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0)
    sh[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < (int)(blockDim.x >> 5); i++)
    t = fmaxf(t, sh[i]);
  return t;
}

__device__ double block_sum(double v, double *sh) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0)
    sh[threadIdx.x >> 5] = v;
  __syncthreads();
  double t = 0.0;
  for (int i = 0; i < (int)(blockDim.x >> 5); i++)
    t += sh[i];
  return t;
}

/* The residual of element x after `parts` int8 parts of the split. */
__device__ __forceinline__ float split_residual(float x, const float *sc,
                                                int parts) {
  for (int p = 0; p < parts; p++) {
    if (sc[p] > 0.f) {
      float c = fminf(fmaxf(rintf(__fdiv_rn(x, sc[p])), -127.f), 127.f);
      x = fmaf(-sc[p], c, x);
    }
  }
  return x;
}

__global__ void __launch_bounds__(256) prep_kernel(PrepArgs a) {
  __shared__ double shd[32];
  __shared__ float shf[32];
  const int j = blockIdx.x;
  const float *qr = (const float *)(a.q + (int64_t)j * a.qs);
  double ss = 0.0;
  float mx = 0.f;
  for (int e = threadIdx.x; e < a.d; e += blockDim.x) {
    float v = qr[e];
    ss += (double)v * v;
    mx = fmaxf(mx, fabsf(v));
  }
  ss = block_sum(ss, shd);
  mx = block_max(mx, shf);
  if (a.qn && threadIdx.x == 0)
    a.qn[j] = (float)sqrt(ss);
  if (a.qf)
    for (int e = threadIdx.x; e < a.ldq; e += blockDim.x)
      a.qf[(int64_t)j * a.ldq + e] = e < a.d ? qr[e] : 0.f;
  if (a.qb)
    for (int w = threadIdx.x; w < a.ldb; w += blockDim.x) {
      uint32_t bits = 0;
      for (int b = 0; b < 32; b++) {
        int e = w * 32 + b;
        if (e < a.d && qr[e] > 0.f)
          bits |= 1u << b;
      }
      a.qb[(int64_t)j * a.ldb + w] = bits;
    }
  if (a.q8) {
    float sc[3] = {0.f, 0.f, 0.f};
    float m = mx;
    for (int p = 0; p < 3; p++) {
      sc[p] = m / 127.0f;
      int8_t *dst = a.q8 + (int64_t)(j * 3 + p) * a.ld8;
      float nm = 0.f;
      for (int e = threadIdx.x; e < a.ld8; e += blockDim.x) {
        int c = 0;
        if (e < a.d && sc[p] > 0.f) {
          float r = split_residual(qr[e], sc, p);
          c = (int)fminf(fmaxf(rintf(__fdiv_rn(r, sc[p])), -127.f), 127.f);
          nm = fmaxf(nm, fabsf(fmaf(-sc[p], (float)c, r)));
        }
        dst[e] = (int8_t)c;
      }
      m = block_max(nm, shf);
    }
    if (threadIdx.x == 0)
      for (int p = 0; p < 3; p++)
        a.q8s[(int64_t)j * 3 + p] = sc[p];
  }
  if (a.qh) {
    int ex = 0;
    if (mx > 0.f)
      frexpf(mx, &ex);
    int sh = 14 - ex; /* max |q| * 2^sh < 2^14: inside float16 range */
    if (sh > 100)
      sh = 100;
    if (sh < -100)
      sh = -100;
    float up = ldexpf(1.f, sh);
    if (threadIdx.x == 0)
      a.qmul[j] = ldexpf(1.f, -sh);
    for (int e = threadIdx.x; e < a.ldh; e += blockDim.x) {
      float v = e < a.d ? qr[e] * up : 0.f;
      __half h = __float2half_rn(v);
      a.qh[(int64_t)j * a.ldh + e] = h;
      if (a.ql)
        a.ql[(int64_t)j * a.ldh + e] = __float2half_rn(v - __half2float(h));
    }
  }
}

/* ---------------------------------------------------------------------------
 * GEMM path helpers
 * ------------------------------------------------------------------------- */

/* Two int8 codes as a float16 pair (exact), a in the low half. */
__device__ __forceinline__ unsigned half2_bits(int a, int b) {
  return (unsigned)__half_as_ushort(__int2half_rn(a)) |
         ((unsigned)__half_as_ushort(__int2half_rn(b)) << 16);
}

/* Four int8 codes (a word, first code in the low byte) as four float16;
 * their squares added to s2 when NORMS. */
template <bool NORMS> __device__ __forceinline__ uint2 widen4(int w, int &s2) {
  if constexpr (NORMS)
    s2 = __dp4a(w, w, s2);
  return make_uint2(half2_bits((int8_t)w, (int8_t)(w >> 8)),
                    half2_bits((int8_t)(w >> 16), (int8_t)(w >> 24)));
}

/* int8 rows -> float16 (exact), packed [len][ldh] (ldh a multiple of 8,
 * zeros past d; out 16-byte aligned, a pool buffer), one warp per row;
 * with NORMS, each row's norm to xn.
 * V: bytes per load, 16 or 4 when every row starts on such a boundary
 * (the block's start and stride), else 1. The wide loads take a row's
 * whole V-byte groups, never a byte past its d codes; the rest goes byte
 * by byte. The squares are integers: their sum is exact in any order. */
template <int V, bool NORMS>
__global__ void __launch_bounds__(256)
    widen_i8_kernel(const Db db, int64_t r0, int64_t len, int ldh, __half *out,
                    float *xn) {
  const int lane = threadIdx.x & 31;
  const int64_t w0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
  const int nv = V > 1 ? db.d / V : 0;
  for (int64_t i = w0; i < len; i += nw) {
    const int8_t *src = (const int8_t *)(db.codes + (r0 + i) * db.stride);
    __half *dst = out + i * ldh;
    int s2 = 0;
    for (int v = lane; v < nv; v += 32) {
      if constexpr (V == 16) {
        const int4 w = __ldg((const int4 *)src + v);
        const uint2 h0 = widen4<NORMS>(w.x, s2), h1 = widen4<NORMS>(w.y, s2),
                    h2 = widen4<NORMS>(w.z, s2), h3 = widen4<NORMS>(w.w, s2);
        uint4 *o = (uint4 *)dst + 2 * v;
        o[0] = make_uint4(h0.x, h0.y, h1.x, h1.y);
        o[1] = make_uint4(h2.x, h2.y, h3.x, h3.y);
      } else if constexpr (V == 4) {
        ((uint2 *)dst)[v] = widen4<NORMS>(__ldg((const int *)src + v), s2);
      }
    }
    for (int e = nv * V + lane; e < ldh; e += 32) {
      const int c = e < db.d ? src[e] : 0;
      if constexpr (NORMS)
        s2 += c * c;
      dst[e] = __int2half_rn(c);
    }
    if constexpr (NORMS) {
      s2 = group_sum(s2, 32);
      if (lane == 0)
        xn[i] = db.scales[r0 + i] * sqrtf((float)s2);
    }
  }
}

/* Row norms of float32 / float16 rows of a chunk. */
template <int DT>
__global__ void __launch_bounds__(256)
    norms_kernel(const Db db, int64_t r0, int64_t len, float *xn) {
  const int lane = threadIdx.x & 31;
  const int64_t w0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t i = w0; i < len; i += nw) {
    const unsigned char *row = db.codes + (r0 + i) * db.stride;
    float s = 0.f;
    for (int e = lane; e < db.d; e += 32) {
      float v = DT == MN_DTYPE_F32 ? ((const float *)row)[e]
                                   : __half2float(((const __half *)row)[e]);
      s = fmaf(v, v, s);
    }
    s = group_sum(s, 32);
    if (lane == 0)
      xn[i] = sqrtf(s);
  }
}

/* Similarity epilogue over a GEMM tile written straight into the output. */
__global__ void epilogue_kernel(float *out, int64_t ldo, int nq, int64_t len,
                                Epi e) {
  int64_t total = (int64_t)nq * len;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (int64_t)gridDim.x * blockDim.x) {
    int j = (int)(t / len);
    int64_t c = t - (int64_t)j * len;
    float *p = out + (int64_t)j * ldo + c;
    float dot = *p * (e.qmul ? e.qmul[j] : 1.f);
    if (e.rscale)
      dot *= e.rscale[c];
    float xn = e.xn ? fabsf(e.xn[c]) : 0.f;
    *p = metric_value(e.metric, dot, e.qn[j], xn, xn * xn);
  }
}

/* float16-tile search, last step. Each query's kc candidates (the best by
 * upper bound of their float32 keys, best first) are scored again exactly
 * (double sums of the float16 query against the stored row, then the
 * float32 epilogue's metric), and the k best are written best first. The
 * result is certain when the k-th exact key beats the kc-th candidate's
 * bound, which bounds every row left out; else fail[j] = 1 and the caller
 * searches again with float32 tiles. One block per query. */
struct RerankArgs {
  Db db;
  int dt, metric;
  const __half *qh;
  int ldh;
  const float *qmul, *qn;
  const float *ckey; /* [j][kc] */
  const int *cid;
  int kc, k, P;
  float *out_key; /* [j][k] */
  int *out_id;
  int *fail; /* [j] */
};

__global__ void __launch_bounds__(256) rerank_kernel(RerankArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  float *pk = (float *)smem;
  int *pi = (int *)(pk + a.P);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nw = blockDim.x >> 5, j = blockIdx.x;
  const float *ck = a.ckey + (int64_t)j * a.kc;
  const int *ci = a.cid + (int64_t)j * a.kc;
  const __half *q = a.qh + (int64_t)j * a.ldh;
  for (int i = warp; i < a.P; i += nw) {
    const int id = i < a.kc ? ci[i] : INT_MAX;
    float key = -INFINITY;
    if (id != INT_MAX) {
      const unsigned char *row = a.db.codes + (int64_t)id * a.db.stride;
      double s = 0.0, xx = 0.0;
      for (int e = lane; e < a.db.d; e += 32) {
        double x = a.dt == MN_DTYPE_I8
                       ? (double)((const int8_t *)row)[e]
                       : (double)__half2float(((const __half *)row)[e]);
        s += (double)__half2float(q[e]) * x;
        xx += x * x;
      }
      s = group_sum(s, 32);
      xx = group_sum(xx, 32);
      float dot = (float)s * a.qmul[j];
      double rs = 1.0;
      if (a.dt == MN_DTYPE_I8) {
        rs = a.db.scales[id];
        dot *= a.db.scales[id];
      }
      float xn =
          a.db.norms ? fabsf(a.db.norms[id]) : (float)(sqrt(xx) * fabs(rs));
      key = to_key(a.metric, metric_value(a.metric, dot, a.qn[j], xn, xn * xn));
    }
    if (lane == 0) {
      pk[i] = key;
      pi[i] = id;
    }
  }
  __syncthreads();
  if (warp != 0)
    return;
  Pool ps = pool_empty();
  ps.cnt = a.kc;
  ps = pool_flush(pk, pi, ps, a.k, a.P, lane);
  /* a list that is not full holds every row whose bound is a number */
  const bool full = ci[a.kc - 1] != INT_MAX;
  const bool sure =
      !full || (pi[a.k - 1] != INT_MAX && pk[a.k - 1] > ck[a.kc - 1]);
  for (int i = lane; i < a.k; i += 32) {
    a.out_key[(int64_t)j * a.k + i] = pk[i];
    a.out_id[(int64_t)j * a.k + i] = pi[i];
  }
  if (lane == 0)
    a.fail[j] = !sure;
}

/* ---------------------------------------------------------------------------
 * Host side
 * ------------------------------------------------------------------------- */
int pow2_at_least(int v) {
  int p = 64;
  while (p < v)
    p <<= 1;
  return p;
}

size_t smem_budget(const mnc_backend *cb) {
  size_t b = cb->smem_optin;
  return b > ((size_t)200 << 10) ? ((size_t)200 << 10) : b;
}

/* Candidates a float16-tile search of k best keeps for its exact re-rank
 * (0: too many for the fused select; float32 tiles then). */
int tile16_kc(int k) {
  if (k <= 0)
    return 0;
  int kc = k + (k / 4 > 16 ? k / 4 : 16);
  return kc <= MNC_MAX_FUSED_K ? kc : 0;
}

/* The power of two the float16 tile's entries are scaled by: the float16
 * queries (largest element below 2^14) times a row stay below the row's
 * norm, far inside float16's range. */
float tile16_alpha(int d) {
  int e = 14;
  while ((int64_t)1 << (2 * (e - 14)) < d)
    e++;
  return ldexpf(1.f, -e);
}

/* Everything a search or similarity call prepares once. */
struct Ctx {
  mnc_backend *cb = nullptr;
  mnc_lane *l = nullptr;
  cudaStream_t s = nullptr;
  int dt = 0, d = 0, Q = 0, metric = 0;
  int64_t N = 0;
  Db db = {};
  Qry q = {};
  bool gemm = false, split = false, need_norm = false;
  /* float16 score tiles (see gemm_search): asked for by a search of k
   * best (tile16_k), taken when the path allows it */
  int tile16_k = 0;
  bool tile16 = false;
  bool has_q = false; /* queries prepared or borrowed (batched calls) */
  int ldh = 0;
  const float *qmul = nullptr;
  const __half *qh = nullptr, *ql = nullptr;
  MncBuf b_scales, b_norms, b_vmin, b_vsc;
  MncBuf b_qn, b_qf, b_q8, b_q8s, b_qb, b_qh, b_ql, b_qmul;
};

/* The stored block's side of a call: its layout, its per-row arrays on the
 * device, and the path (scan or GEMM) it takes. Launches nothing (uploads
 * host scales / norms / affine parameters synchronously). `where` is the
 * call's: what it learnt of earlier blocks' arrays holds for this one's. */
mn_status ctx_db(Ctx &c, mnc_backend *cb, mnc_lane *l, MncWhere &where,
                 const mn_tensor *q, const mn_vecblock *vb, int metric,
                 bool want_gemm) {
  c.cb = cb;
  c.l = l;
  c.s = l->stream;
  c.dt = vb->codes.dtype;
  c.d = (int)q->cols;
  c.Q = (int)q->rows;
  c.N = vb->codes.rows;
  c.metric = metric;
  const mn_tensor *t = &vb->codes;
  Db &db = c.db;
  db.codes = (const unsigned char *)t->data;
  db.stride = t->stride;
  db.rowbytes = (int)mnc_row_bytes(t->dtype, t->cols);
  db.d = c.d;
  db.nvec = (db.rowbytes + 15) / 16;
  bool al16 = (uintptr_t)t->data % 16 == 0 && (c.N <= 1 || t->stride % 16 == 0);
  db.nfull = al16 ? db.rowbytes / 16 : 0;
  const bool scales = c.dt == MN_DTYPE_I8 || c.dt == MN_DTYPE_I4;
  const bool norms = c.dt != MN_DTYPE_BIN && metric != MN_METRIC_IP;
  if ((scales && vb->scales) || (norms && vb->norms))
    where.see_codes(t->data);
  if (scales)
    MNC_CHECK(mn__cuda_device_floats(cb, l, vb->scales, (size_t)c.N,
                                     &c.b_scales, &db.scales, &where));
  if (c.dt == MN_DTYPE_U8) {
    MNC_CHECK(mn__cuda_device_floats(cb, l, vb->affine->vmin, (size_t)c.d,
                                     &c.b_vmin, &db.vmin, &where));
    MNC_CHECK(mn__cuda_device_floats(cb, l, vb->affine->scale, (size_t)c.d,
                                     &c.b_vsc, &db.vsc, &where));
  }
  if (norms)
    MNC_CHECK(mn__cuda_device_floats(cb, l, vb->norms, (size_t)c.N, &c.b_norms,
                                     &db.norms, &where));
  c.need_norm = c.dt != MN_DTYPE_BIN && metric != MN_METRIC_IP && !db.norms;

  const int64_t elem = c.dt == MN_DTYPE_F32 ? 4 : c.dt == MN_DTYPE_F16 ? 2 : 1;
  c.gemm =
      want_gemm && c.Q >= GEMM_MIN_Q && c.N >= 1024 &&
      (c.dt == MN_DTYPE_F32 || c.dt == MN_DTYPE_F16 || c.dt == MN_DTYPE_I8) &&
      t->stride / elem <= INT_MAX && c.d <= 65536;
  c.split = c.gemm && c.dt != MN_DTYPE_F32 && !cb->allow_f16;
  c.tile16 = c.gemm && !c.split && c.dt != MN_DTYPE_F32 && cb->tile16 &&
             tile16_kc(c.tile16_k) > 0;
  return MN_OK;
}

/* The queries' side: prepared on the device for c's dtype and path (one
 * kernel on c.s). */
mn_status ctx_query(Ctx &c, const mn_tensor *q) {
  mnc_backend *cb = c.cb;
  mnc_lane *l = c.l;
  Db &db = c.db;
  PrepArgs pa = {};
  pa.q = (const char *)q->data;
  pa.qs = q->stride;
  pa.d = c.d;
  MNC_CHECK(c.b_qn.alloc(cb, l, (size_t)c.Q * sizeof(float)));
  pa.qn = c.b_qn.as<float>();
  c.q.qn = pa.qn;
  const int epv = epv_of(c.dt);
  if (c.dt == MN_DTYPE_I8 && !c.gemm) {
    c.q.ld8 = db.nvec * 16;
    MNC_CHECK(c.b_q8.alloc(cb, l, (size_t)c.Q * 3 * c.q.ld8));
    MNC_CHECK(c.b_q8s.alloc(cb, l, (size_t)c.Q * 3 * sizeof(float)));
    pa.q8 = c.b_q8.as<int8_t>();
    pa.ld8 = c.q.ld8;
    pa.q8s = c.b_q8s.as<float>();
    c.q.q8 = pa.q8;
    c.q.q8s = pa.q8s;
  } else if (c.dt == MN_DTYPE_BIN) {
    c.q.ldb = db.nvec * 4;
    MNC_CHECK(c.b_qb.alloc(cb, l, (size_t)c.Q * c.q.ldb * 4));
    pa.qb = c.b_qb.as<uint32_t>();
    pa.ldb = c.q.ldb;
    c.q.qb = pa.qb;
  } else if (!c.gemm || c.dt == MN_DTYPE_F32) {
    c.q.ldq = db.nvec * epv;
    MNC_CHECK(c.b_qf.alloc(cb, l, (size_t)c.Q * c.q.ldq * sizeof(float)));
    pa.qf = c.b_qf.as<float>();
    pa.ldq = c.q.ldq;
    c.q.qf = pa.qf;
  }
  if (c.gemm && c.dt != MN_DTYPE_F32) {
    c.ldh = (c.d + 7) / 8 * 8;
    MNC_CHECK(c.b_qh.alloc(cb, l, (size_t)c.Q * c.ldh * sizeof(__half)));
    MNC_CHECK(c.b_qmul.alloc(cb, l, (size_t)c.Q * sizeof(float)));
    pa.qh = c.b_qh.as<__half>();
    pa.ldh = c.ldh;
    pa.qmul = c.b_qmul.as<float>();
    if (c.split) {
      MNC_CHECK(c.b_ql.alloc(cb, l, (size_t)c.Q * c.ldh * sizeof(__half)));
      pa.ql = c.b_ql.as<__half>();
    }
    c.qh = pa.qh;
    c.ql = pa.ql;
    c.qmul = pa.qmul;
  }
  prep_kernel<<<c.Q, 256, 0, c.s>>>(pa);
  MNC_LAUNCHED("prep_kernel");
  return MN_OK;
}

mn_status ctx_init(Ctx &c, mnc_backend *cb, mnc_lane *l, MncWhere &where,
                   const mn_tensor *q, const mn_vecblock *vb, int metric,
                   bool want_gemm) {
  MNC_CHECK(ctx_db(c, cb, l, where, q, vb, metric, want_gemm));
  return ctx_query(c, q);
}

/* Whether c can use the queries `from` prepared: the layout of prepared
 * queries depends only on the storage dtype (and width, the same for every
 * block of a call) and the path. */
bool ctx_query_fits(const Ctx &c, const Ctx &from) {
  return c.dt == from.dt && c.gemm == from.gemm && c.split == from.split &&
         c.tile16 == from.tile16;
}

/* Borrow the queries `from` prepared (which must outlive c's use). */
void ctx_share_query(Ctx &c, const Ctx &from) {
  c.q = from.q;
  c.ldh = from.ldh;
  c.qmul = from.qmul;
  c.qh = from.qh;
  c.ql = from.ql;
}

/* Per-query bytes of staged query data in the scan kernel. */
size_t query_bytes(const Ctx &c) {
  if (c.dt == MN_DTYPE_I8)
    return (size_t)3 * c.q.ld8;
  if (c.dt == MN_DTYPE_BIN)
    return (size_t)c.q.ldb * 4;
  return (size_t)c.q.ldq * 4;
}

int choose_g(int nvec) {
  int g = 1;
  while (g < 32 && g * 2 * 2 <= nvec)
    g <<= 1;
  return g;
}

/* Launch configuration of one scan pass. */
struct ScanCfg {
  int qb, nw, G, P;
  size_t qsmem, smem;
  unsigned grid;
};

mn_status scan_config(const Ctx &c, bool topk, int k, int qb, int nq,
                      scan_fn fn, ScanCfg *cfg) {
  cfg->qb = qb;
  const int R = cfg->qb == 1 ? 4 : 1;
  cfg->G = choose_g(c.db.nvec);
  const int rps = (32 / cfg->G) * R;
  cfg->P = topk ? pow2_at_least(k + (rps > 32 ? rps : 32)) : 0;
  const size_t budget = smem_budget(c.cb);
  size_t qbytes = query_bytes(c) * (size_t)nq;
  cfg->qsmem = qbytes <= ((size_t)64 << 10) ? qbytes : 0;
  size_t per_warp = topk ? (size_t)cfg->qb * cfg->P * 8 : 0;
  cfg->nw = 8;
  while (cfg->nw > 1 && cfg->qsmem + per_warp * cfg->nw > budget)
    cfg->nw >>= 1;
  if (cfg->qsmem + per_warp * cfg->nw > budget)
    cfg->qsmem = 0;
  cfg->smem = cfg->qsmem + per_warp * cfg->nw;
  if (cfg->smem > c.cb->smem_optin)
    return MNC_ERR(MN_ERR_INVALID,
                   "top-%d needs %zu bytes of shared memory per block; this "
                   "GPU allows %zu",
                   k, cfg->smem, c.cb->smem_optin);
  int per_sm = 0;
  MNC_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, (const void *)fn, cfg->nw * 32, cfg->smem));
  if (per_sm < 1)
    per_sm = 1;
  int64_t need = (c.N + (int64_t)cfg->nw * rps - 1) / ((int64_t)cfg->nw * rps);
  cfg->grid = mnc_grid(c.cb, need, per_sm);
  return MN_OK;
}

ScanArgs scan_args(const Ctx &c) {
  ScanArgs a = {};
  a.db = c.db;
  a.q = c.q;
  a.rows = c.N;
  a.metric = c.metric;
  a.need_xx = c.need_norm;
  return a;
}

size_t select_smem(const mnc_backend *cb, int P, int *nw) {
  *nw = 8;
  while (*nw > 1 && (size_t)*nw * P * 8 > smem_budget(cb))
    *nw >>= 1;
  return (size_t)*nw * P * 8;
}

/* A scan-path search's launch plan: passes of qb queries (the last one
 * maybe fewer), and the most per-block candidate list entries a pass
 * writes (the scratch it needs). */
struct ScanPlan {
  int qb;
  ScanCfg full, last;
  size_t lists;
};

mn_status scan_plan(const Ctx &c, int k, ScanPlan *p) {
  /* one query per pass when there is only one or k is large (pools of
   * 2k entries per query would crowd shared memory), else QB_MAX */
  p->qb = (c.Q == 1 || k > 128) ? 1 : QB_MAX;
  scan_fn fn = scan_kernel_for(c.dt, p->qb);
  const int nfull = c.Q / p->qb, rest = c.Q % p->qb;
  p->lists = 0;
  if (nfull > 0) {
    MNC_CHECK(scan_config(c, true, k, p->qb, p->qb, fn, &p->full));
    p->lists = (size_t)p->qb * p->full.grid * k;
  }
  if (rest > 0) {
    MNC_CHECK(scan_config(c, true, k, p->qb, rest, fn, &p->last));
    size_t n = (size_t)rest * p->last.grid * k;
    p->lists = n > p->lists ? n : p->lists;
  }
  return MN_OK;
}

/* Scan-path search: best lists for every query into bk / bi ([Q][k]), on
 * c.s, with pk / pi (plan.lists entries each) as the blocks' lists. */
mn_status scan_enqueue(Ctx &c, const ScanPlan &p, int k, float *bk, int *bi,
                       float *pk, int *pi) {
  scan_fn fn = scan_kernel_for(c.dt, p.qb);
  for (int q0 = 0; q0 < c.Q; q0 += p.qb) {
    const int nq = c.Q - q0 < p.qb ? c.Q - q0 : p.qb;
    const ScanCfg &cfg = nq == p.qb ? p.full : p.last;
    ScanArgs a = scan_args(c);
    a.q0 = q0;
    a.nq = nq;
    a.G = cfg.G;
    a.qsmem = (int)cfg.qsmem;
    a.k = k;
    a.P = cfg.P;
    a.out_key = pk;
    a.out_id = pi;
    fn<<<cfg.grid, cfg.nw * 32, cfg.smem, c.s>>>(a);
    MNC_LAUNCHED("scan_kernel");

    SelArgs sa = {};
    sa.ckey = pk;
    sa.cid = pi;
    sa.ldc = (int64_t)cfg.grid * k;
    sa.m = sa.ldc;
    sa.k = k;
    sa.P = pow2_at_least(k + 32);
    sa.out_key = bk + (int64_t)q0 * k;
    sa.out_id = bi + (int64_t)q0 * k;
    int snw;
    size_t ssm = select_smem(c.cb, sa.P, &snw);
    select_kernel<false><<<dim3(nq, 1), snw * 32, ssm, c.s>>>(sa);
    MNC_LAUNCHED("select_kernel");
  }
  return MN_OK;
}

mn_status scan_search(Ctx &c, int k, float *bk, int *bi) {
  ScanPlan p;
  MNC_CHECK(scan_plan(c, k, &p));
  MncBuf pk, pi;
  MNC_CHECK(pk.alloc(c.cb, c.l, p.lists * sizeof(float)));
  MNC_CHECK(pi.alloc(c.cb, c.l, p.lists * sizeof(int)));
  return scan_enqueue(c, p, k, bk, bi, pk.as<float>(), pi.as<int>());
}

/* Rows [r0, r0 + len) of c's int8 block widened into `wide` (their norms
 * into xn when c needs them), with the widest loads its layout allows. */
template <bool NORMS>
mn_status widen_i8(const Ctx &c, unsigned g, int64_t r0, int64_t len,
                   __half *wide, float *xn) {
  const uintptr_t at =
      (uintptr_t)c.db.codes | (uintptr_t)(c.N > 1 ? c.db.stride : (int64_t)0);
  if (at % 16 == 0)
    widen_i8_kernel<16, NORMS>
        <<<g, 256, 0, c.s>>>(c.db, r0, len, c.ldh, wide, xn);
  else if (at % 4 == 0)
    widen_i8_kernel<4, NORMS>
        <<<g, 256, 0, c.s>>>(c.db, r0, len, c.ldh, wide, xn);
  else
    widen_i8_kernel<1, NORMS>
        <<<g, 256, 0, c.s>>>(c.db, r0, len, c.ldh, wide, xn);
  MNC_LAUNCHED("widen_i8_kernel");
  return MN_OK;
}

/* One chunk's dot products into S ([Q][ldS] floats; float16 times
 * tile16_alpha when c.tile16): cuBLAS on c.s. */
mn_status chunk_gemm(Ctx &c, int64_t r0, int64_t len, void *S, int64_t ldS,
                     __half *wide, float *xn) {
  const float one = 1.f, zero = 0.f;
  cublasHandle_t h = c.l->blas;
  const unsigned g = mnc_grid(c.cb, (len + 7) / 8, 16);
  if (c.dt == MN_DTYPE_I8) {
    if (c.need_norm)
      MNC_CHECK(widen_i8<true>(c, g, r0, len, wide, xn));
    else
      MNC_CHECK(widen_i8<false>(c, g, r0, len, wide, nullptr));
  } else if (c.need_norm) {
    if (c.dt == MN_DTYPE_F32)
      norms_kernel<MN_DTYPE_F32><<<g, 256, 0, c.s>>>(c.db, r0, len, xn);
    else
      norms_kernel<MN_DTYPE_F16><<<g, 256, 0, c.s>>>(c.db, r0, len, xn);
    MNC_LAUNCHED("norms_kernel");
  }
  if (c.dt == MN_DTYPE_F32) {
    const float *A = (const float *)(c.db.codes + r0 * c.db.stride);
    int lda = c.N > 1 ? (int)(c.db.stride / 4) : c.d;
    if (c.cb->allow_f16)
      MNC_TRY(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)len, c.Q, c.d,
                           &one, A, CUDA_R_32F, lda, c.q.qf, CUDA_R_32F,
                           c.q.ldq, &zero, S, CUDA_R_32F, (int)ldS,
                           CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
    else
      MNC_TRY(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)len, c.Q, c.d, &one,
                          A, lda, c.q.qf, c.q.ldq, &zero, (float *)S,
                          (int)ldS));
    return MN_OK;
  }
  const void *A;
  int lda;
  if (c.dt == MN_DTYPE_I8) {
    A = wide;
    lda = c.ldh;
  } else {
    A = c.db.codes + r0 * c.db.stride;
    lda = c.N > 1 ? (int)(c.db.stride / 2) : c.d;
  }
  if (c.tile16) {
    const float alpha = tile16_alpha(c.d);
    MNC_TRY(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)len, c.Q, c.d,
                         &alpha, A, CUDA_R_16F, lda, c.qh, CUDA_R_16F, c.ldh,
                         &zero, S, CUDA_R_16F, (int)ldS, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT));
    return MN_OK;
  }
  MNC_TRY(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)len, c.Q, c.d, &one, A,
                       CUDA_R_16F, lda, c.qh, CUDA_R_16F, c.ldh, &zero, S,
                       CUDA_R_32F, (int)ldS, CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT));
  if (c.split)
    MNC_TRY(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)len, c.Q, c.d, &one,
                         A, CUDA_R_16F, lda, c.ql, CUDA_R_16F, c.ldh, &one, S,
                         CUDA_R_32F, (int)ldS, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT));
  return MN_OK;
}

Epi chunk_epi(const Ctx &c, int64_t r0, const float *xn) {
  Epi e = {};
  e.metric = c.metric;
  e.qn = c.q.qn;
  e.qmul = c.qmul;
  e.rscale = c.dt == MN_DTYPE_I8 ? c.db.scales + r0 : nullptr;
  e.xn = c.db.norms ? c.db.norms + r0 : xn;
  return e;
}

/* Rows per GEMM chunk: the tuning value, fewer when many queries would
 * make the score tile large (at most 64M scores, 256 MiB, per buffer; two
 * buffers), or when gpu.memory_limit is small (a sixteenth of it). */
int64_t chunk_of(const Ctx &c) {
  int64_t C = c.cb->chunk_rows;
  int64_t scores = (int64_t)64 << 20;
  if (c.cb->limit > 0 && (int64_t)(c.cb->limit / 64) < scores)
    scores = (int64_t)(c.cb->limit / 64);
  int64_t cap = scores / c.Q;
  if (cap < 1024)
    cap = 1024;
  if (C > cap)
    C = cap;
  return C < c.N ? C : c.N;
}

/* A GEMM-path search's shape: rows per chunk, and how many parts each
 * chunk's select is split into (few queries: more blocks). */
struct GemmPlan {
  int64_t C;
  int splits;
};

GemmPlan gemm_plan(const Ctx &c) {
  GemmPlan g;
  g.C = chunk_of(c);
  g.splits = 1;
  if (c.Q < 2 * c.cb->sm_count) {
    int64_t want = (2 * c.cb->sm_count + c.Q - 1) / c.Q;
    int64_t most = g.C / 2048 > 1 ? g.C / 2048 : 1;
    g.splits = (int)(want < most ? want : most);
  }
  return g;
}

/* Device scratch of a GEMM-path search, two of each per-chunk buffer for
 * the pipelined form (the serial form uses [0] only). Sizes in elements:
 * S Q*C, wide C*ldh (int8), xn C (row norms needed), part Q*splits*k,
 * best Q*k. */
struct GemmWs {
  void *S[2]; /* float, or __half when c.tile16 */
  __half *wide[2];
  float *xn[2];
  float *part_k, *best_k;
  int *part_i, *best_i;
};

/* GEMM-path search. Pipelined: each chunk's GEMM on c.s, its select on the
 * lane's second stream, the next chunk's GEMM overlapping it; the caller
 * synchronises both streams. Serial: everything on c.s, one set of
 * scratch, so that a caller may enqueue several blocks' searches reusing
 * the same scratch and synchronise once. */
mn_status gemm_enqueue(Ctx &c, int k, const GemmPlan &g, const GemmWs &w,
                       bool serial, float *bk, int *bi) {
  mnc_backend *cb = c.cb;
  mnc_lane *l = c.l;
  const int64_t C = g.C;
  const int splits = g.splits;
  const int P = pow2_at_least(k + 32);
  int snw;
  const size_t ssm = select_smem(cb, P, &snw);
  cudaStream_t sel = serial ? c.s : l->aux;
  void (*dense)(SelArgs) =
      c.tile16 ? select_kernel<true, __half> : select_kernel<true, float>;
  /* ping-pong between bk/bi (the caller's) and best_k/best_i so that the
   * last chunk lands in bk/bi */
  int64_t nchunks = (c.N + C - 1) / C;
  float *outk[2];
  int *outi[2];
  outk[(nchunks - 1) & 1] = bk;
  outi[(nchunks - 1) & 1] = bi;
  outk[nchunks & 1] = w.best_k;
  outi[nchunks & 1] = w.best_i;

  for (int64_t i = 0; i < nchunks; i++) {
    const int b = serial ? 0 : (int)(i & 1);
    const int64_t r0 = i * C, len = c.N - r0 < C ? c.N - r0 : C;
    if (!serial && i >= 2)
      MNC_TRY(cudaStreamWaitEvent(l->stream, l->ev[2 + b], 0));
    MNC_CHECK(chunk_gemm(c, r0, len, w.S[b], C, w.wide[b], w.xn[b]));
    if (!serial) {
      MNC_TRY(cudaEventRecord(l->ev[b], l->stream));
      MNC_TRY(cudaStreamWaitEvent(l->aux, l->ev[b], 0));
    }

    SelArgs sa = {};
    sa.S = w.S[b];
    sa.ldS = C;
    sa.tmul = c.tile16 ? 1.f / tile16_alpha(c.d) : 0.f;
    sa.id0 = (int)r0;
    sa.epi = chunk_epi(c, r0, w.xn[b]);
    sa.m = len;
    sa.k = k;
    sa.P = P;
    const float *prev_k = i > 0 ? outk[(i - 1) & 1] : nullptr;
    const int *prev_i = i > 0 ? outi[(i - 1) & 1] : nullptr;
    if (splits == 1) {
      sa.prev_key = prev_k;
      sa.prev_id = prev_i;
      sa.out_key = outk[i & 1];
      sa.out_id = outi[i & 1];
      dense<<<dim3(c.Q, 1), snw * 32, ssm, sel>>>(sa);
      MNC_LAUNCHED("select_kernel");
    } else {
      sa.out_key = w.part_k;
      sa.out_id = w.part_i;
      dense<<<dim3(c.Q, splits), snw * 32, ssm, sel>>>(sa);
      MNC_LAUNCHED("select_kernel");
      SelArgs m = {};
      m.ckey = w.part_k;
      m.cid = w.part_i;
      m.ldc = (int64_t)splits * k;
      m.m = m.ldc;
      m.prev_key = prev_k;
      m.prev_id = prev_i;
      m.k = k;
      m.P = P;
      m.out_key = outk[i & 1];
      m.out_id = outi[i & 1];
      select_kernel<false><<<dim3(c.Q, 1), snw * 32, ssm, sel>>>(m);
      MNC_LAUNCHED("select_kernel");
    }
    if (!serial)
      MNC_TRY(cudaEventRecord(l->ev[2 + b], l->aux));
  }
  return MN_OK;
}

/* GEMM-path search of one block: chunks pipelined over the lane's two
 * streams.
 *
 * With float16 score tiles (c.tile16: float16 rows or widened int8 codes
 * against the float16 query, which float16 precision allows) the GEMM
 * writes half the bytes and the select reads half: the select keeps the
 * kc best by an upper bound of each float32 key, and rerank_kernel scores
 * those exactly. Where it cannot prove the k best among them (ties or
 * near-ties across the bound), the block is searched again with float32
 * tiles, so the result is the float32 search's. One pass with c's tiles;
 * `unsure` (float16 tiles): queries whose k best it could not prove. */
mn_status gemm_pass(Ctx &c, int k, float *bk, int *bi, int *unsure) {
  mnc_backend *cb = c.cb;
  mnc_lane *l = c.l;
  const GemmPlan g = gemm_plan(c);
  const int64_t C = g.C;
  const int kc = c.tile16 ? tile16_kc(k) : k;
  const size_t tb = c.tile16 ? sizeof(__half) : sizeof(float);
  MncBuf S[2], wide[2], xn[2], part_k, part_i, best_k, best_i, cand_k, cand_i,
      fail;
  GemmWs w = {};
  for (int b = 0; b < 2; b++) {
    MNC_CHECK(S[b].alloc(cb, l, (size_t)c.Q * C * tb));
    w.S[b] = S[b].p;
    if (c.dt == MN_DTYPE_I8) {
      MNC_CHECK(wide[b].alloc(cb, l, (size_t)C * c.ldh * sizeof(__half)));
      w.wide[b] = wide[b].as<__half>();
    }
    if (c.need_norm) {
      MNC_CHECK(xn[b].alloc(cb, l, (size_t)C * sizeof(float)));
      w.xn[b] = xn[b].as<float>();
    }
  }
  const size_t lists = (size_t)c.Q * g.splits * kc;
  MNC_CHECK(part_k.alloc(cb, l, lists * sizeof(float)));
  MNC_CHECK(part_i.alloc(cb, l, lists * sizeof(int)));
  MNC_CHECK(best_k.alloc(cb, l, (size_t)c.Q * kc * sizeof(float)));
  MNC_CHECK(best_i.alloc(cb, l, (size_t)c.Q * kc * sizeof(int)));
  w.part_k = part_k.as<float>();
  w.part_i = part_i.as<int>();
  w.best_k = best_k.as<float>();
  w.best_i = best_i.as<int>();
  if (!c.tile16) {
    MNC_CHECK(gemm_enqueue(c, k, g, w, false, bk, bi));
    MNC_TRY(cudaStreamSynchronize(l->aux));
    MNC_TRY(cudaStreamSynchronize(l->stream));
    return MN_OK;
  }
  MNC_CHECK(cand_k.alloc(cb, l, (size_t)c.Q * kc * sizeof(float)));
  MNC_CHECK(cand_i.alloc(cb, l, (size_t)c.Q * kc * sizeof(int)));
  MNC_CHECK(fail.alloc(cb, l, (size_t)c.Q * sizeof(int)));
  MNC_CHECK(
      gemm_enqueue(c, kc, g, w, false, cand_k.as<float>(), cand_i.as<int>()));
  RerankArgs ra = {};
  ra.db = c.db;
  ra.dt = c.dt;
  ra.metric = c.metric;
  ra.qh = c.qh;
  ra.ldh = c.ldh;
  ra.qmul = c.qmul;
  ra.qn = c.q.qn;
  ra.ckey = cand_k.as<float>();
  ra.cid = cand_i.as<int>();
  ra.kc = kc;
  ra.k = k;
  ra.P = pow2_at_least(kc);
  ra.out_key = bk;
  ra.out_id = bi;
  ra.fail = fail.as<int>();
  /* after the last select, on its stream */
  rerank_kernel<<<c.Q, 256, (size_t)ra.P * 8, l->aux>>>(ra);
  MNC_LAUNCHED("rerank_kernel");
  MNC_TRY(cudaStreamSynchronize(l->aux));
  MNC_TRY(cudaStreamSynchronize(l->stream));
  int *hf = (int *)malloc((size_t)c.Q * sizeof(int));
  if (!hf)
    return MNC_ERR(MN_ERR_NOMEM, "out of host memory for search flags");
  mn_status st = mn__cuda_d2h(l, hf, fail.p, (size_t)c.Q * sizeof(int));
  for (int j = 0; st == MN_OK && j < c.Q; j++)
    *unsure += hf[j] != 0;
  free(hf);
  return st;
}

/* GEMM-path search of one block (float16 tiles first where they apply;
 * their scratch is given back before a float32-tile rerun). */
mn_status gemm_search(Ctx &c, int k, float *bk, int *bi) {
  if (c.tile16) {
    int unsure = 0;
    MNC_CHECK(gemm_pass(c, k, bk, bi, &unsure));
    if (unsure == 0)
      return MN_OK;
    MNC_LOGD("search: float16 tiles left the k best of %d of %d queries "
             "unproven; float32 tiles again",
             unsure, c.Q);
    c.tile16 = false;
  }
  return gemm_pass(c, k, bk, bi, nullptr);
}

/* Search rows [0, N) of c.db; results to host keys / int32 row ids. */
mn_status search_block(Ctx &c, int k, float *hkey, int *hid) {
  MncBuf bk, bi;
  MNC_CHECK(bk.alloc(c.cb, c.l, (size_t)c.Q * k * sizeof(float)));
  MNC_CHECK(bi.alloc(c.cb, c.l, (size_t)c.Q * k * sizeof(int)));
  if (c.gemm)
    MNC_CHECK(gemm_search(c, k, bk.as<float>(), bi.as<int>()));
  else
    MNC_CHECK(scan_search(c, k, bk.as<float>(), bi.as<int>()));
  MNC_CHECK(mn__cuda_d2h(c.l, hkey, bk.p, (size_t)c.Q * k * sizeof(float)));
  MNC_CHECK(mn__cuda_d2h(c.l, hid, bi.p, (size_t)c.Q * k * sizeof(int)));
  return MN_OK;
}

/* Whether similarity takes the GEMM path for c with this output. */
bool similarity_gemm(const Ctx &c, int64_t ldo) {
  return c.gemm && ldo <= INT_MAX;
}

/* Similarity into a device matrix (rows = queries), 4-byte aligned, on
 * c.s. The GEMM path needs per-chunk scratch (chunk_of(c) rows: int8
 * widened rows, row norms): `ws` when given (reused in stream order),
 * else its own. */
mn_status similarity_impl(Ctx &c, float *out, int64_t ldo,
                          const GemmWs *ws = nullptr) {
  if (similarity_gemm(c, ldo)) {
    int64_t C = chunk_of(c);
    MncBuf wide, xn;
    __half *wp = ws ? ws->wide[0] : nullptr;
    float *xp = ws ? ws->xn[0] : nullptr;
    if (!ws && c.dt == MN_DTYPE_I8) {
      MNC_CHECK(wide.alloc(c.cb, c.l, (size_t)C * c.ldh * sizeof(__half)));
      wp = wide.as<__half>();
    }
    if (!ws && c.need_norm) {
      MNC_CHECK(xn.alloc(c.cb, c.l, (size_t)C * sizeof(float)));
      xp = xn.as<float>();
    }
    for (int64_t r0 = 0; r0 < c.N; r0 += C) {
      int64_t len = c.N - r0 < C ? c.N - r0 : C;
      MNC_CHECK(chunk_gemm(c, r0, len, out + r0, ldo, wp, xp));
      unsigned g = mnc_grid(c.cb, ((int64_t)c.Q * len + 255) / 256, 16);
      epilogue_kernel<<<g, 256, 0, c.s>>>(out + r0, ldo, c.Q, len,
                                          chunk_epi(c, r0, xp));
      MNC_LAUNCHED("epilogue_kernel");
    }
    return MN_OK;
  }
  for (int q0 = 0; q0 < c.Q; q0 += QB_MAX) {
    int nq = c.Q - q0 < QB_MAX ? c.Q - q0 : QB_MAX;
    scan_fn fn = scan_kernel_for(c.dt, QB_MAX);
    ScanCfg cfg;
    MNC_CHECK(scan_config(c, false, 0, QB_MAX, nq, fn, &cfg));
    ScanArgs a = scan_args(c);
    a.q0 = q0;
    a.nq = nq;
    a.G = cfg.G;
    a.qsmem = (int)cfg.qsmem;
    a.out = out + (int64_t)q0 * ldo;
    a.ldo = ldo;
    fn<<<cfg.grid, cfg.nw * 32, cfg.smem, c.s>>>(a);
    MNC_LAUNCHED("scan_kernel");
  }
  return MN_OK;
}

/* Rows [r0, r0 + n) of db as a block of its own (a segment of at most
 * SEGMENT rows: ids inside kernels are int32). */
mn_vecblock segment_of(const mn_vecblock *db, int64_t r0, int64_t n) {
  mn_vecblock seg = *db;
  seg.codes.data = (char *)db->codes.data + r0 * db->codes.stride;
  seg.codes.rows = n;
  if (seg.scales)
    seg.scales += r0;
  if (seg.norms)
    seg.norms += r0;
  return seg;
}

/* Merge a segment's sorted lists into the running result (host). */
void merge_host(int Q, int k, int metric, float *acc_s, int64_t *acc_i,
                const float *seg_key, const int *seg_id, int64_t id_off,
                float *tmp_s, int64_t *tmp_i) {
  for (int j = 0; j < Q; j++) {
    float *as = acc_s + (int64_t)j * k;
    int64_t *ai = acc_i + (int64_t)j * k;
    const float *sk = seg_key + (int64_t)j * k;
    const int *si = seg_id + (int64_t)j * k;
    int x = 0, y = 0;
    for (int o = 0; o < k; o++) {
      /* accumulated entries are in key form here (see mn__cuda_search) */
      bool take_new;
      if (ai[x] < 0)
        take_new = si[y] != INT_MAX;
      else if (si[y] == INT_MAX)
        take_new = false;
      else
        take_new = sk[y] > as[x] || (sk[y] == as[x] && si[y] + id_off < ai[x]);
      if (take_new) {
        tmp_s[o] = sk[y];
        tmp_i[o] = si[y] + id_off;
        y++;
      } else {
        tmp_s[o] = as[x];
        tmp_i[o] = ai[x];
        x++;
      }
    }
    memcpy(as, tmp_s, (size_t)k * sizeof(float));
    memcpy(ai, tmp_i, (size_t)k * sizeof(int64_t));
  }
  (void)metric;
}

} // namespace

/* ---------------------------------------------------------------------------
 * Setup and ops
 * ------------------------------------------------------------------------- */
mn_status mn__cuda_search_setup(mnc_backend *cb) {
  int optin = (int)cb->smem_optin;
  const int dts[] = {MN_DTYPE_F32, MN_DTYPE_F16, MN_DTYPE_BF16, MN_DTYPE_I8,
                     MN_DTYPE_U8,  MN_DTYPE_I4,  MN_DTYPE_BIN};
  for (int dt : dts) {
    for (int qb : {1, QB_MAX})
      MNC_TRY(cudaFuncSetAttribute((const void *)scan_kernel_for(dt, qb),
                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   optin));
  }
  const void *selects[] = {(const void *)select_kernel<true, float>,
                           (const void *)select_kernel<true, __half>,
                           (const void *)select_kernel<false, float>};
  for (const void *f : selects)
    MNC_TRY(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 optin));
  return MN_OK;
}

static mn_status check_search_args(const mn_tensor *q, const mn_vecblock *db) {
  MNC_CHECK(mn__cuda_check_layout(q, "query"));
  MNC_CHECK(mn__cuda_check_layout(&db->codes, "stored vectors"));
  if (q->rows > INT_MAX / 4 || q->cols > (1 << 24))
    return MNC_ERR(MN_ERR_INVALID,
                   "query batch [%lld, %lld] is too large "
                   "for the CUDA backend",
                   (long long)q->rows, (long long)q->cols);
  return MN_OK;
}

mn_status mn__cuda_similarity(mn_backend *b, const mn_tensor *q,
                              const mn_vecblock *db, mn_metric metric,
                              mn_tensor *out) {
  mnc_backend *cb = mnc_of(b);
  MNC_CHECK(check_search_args(q, db));
  MNC_CHECK(mn__cuda_check_layout(out, "output"));
  if (q->rows == 0 || db->codes.rows == 0)
    return MN_OK;
  MncLane lane;
  MNC_CHECK(lane.get(cb));
  const int64_t ldo = q->rows > 1 ? out->stride / 4 : db->codes.rows;
  MncWhere where(cb);
  for (int64_t r0 = 0; r0 < db->codes.rows; r0 += SEGMENT) {
    int64_t n = db->codes.rows - r0 < SEGMENT ? db->codes.rows - r0 : SEGMENT;
    mn_vecblock seg = segment_of(db, r0, n);
    Ctx c;
    MNC_CHECK(ctx_init(c, cb, lane.l, where, q, &seg, metric, true));
    MNC_CHECK(similarity_impl(c, (float *)out->data + r0, ldo));
    MNC_TRY(cudaStreamSynchronize(lane.s()));
  }
  return MN_OK;
}

/* k above what the fused kernels hold: similarity, then the host's top-k. */
static mn_status search_via_similarity(mn_backend *b, const mn_tensor *q,
                                       const mn_vecblock *db, mn_metric metric,
                                       int64_t k, int64_t id_base,
                                       float *scores, int64_t *ids) {
  mnc_backend *cb = mnc_of(b);
  const int64_t N = db->codes.rows;
  int64_t batch = ((int64_t)64 << 20) / N;
  if (batch < 1)
    batch = 1;
  if (batch > q->rows)
    batch = q->rows;
  MncBuf dev;
  MNC_CHECK(dev.alloc(cb, nullptr, (size_t)batch * N * sizeof(float)));
  float *host = (float *)malloc((size_t)batch * N * sizeof(float));
  if (!host)
    return MNC_ERR(MN_ERR_NOMEM, "out of host memory for %lld x %lld scores",
                   (long long)batch, (long long)N);
  mn_status st = MN_OK;
  for (int64_t q0 = 0; q0 < q->rows && st == MN_OK; q0 += batch) {
    int64_t nq = q->rows - q0 < batch ? q->rows - q0 : batch;
    mn_tensor qv = *q;
    qv.data = (char *)q->data + q0 * q->stride;
    qv.rows = nq;
    mn_tensor sim = {dev.p, MN_DTYPE_F32, nq, N, N * 4, MN_DEVICE_GPU};
    st = mn__cuda_similarity(b, &qv, db, metric, &sim);
    if (st == MN_OK) {
      MncLane lane;
      st = lane.get(cb);
      if (st == MN_OK)
        st = mn__cuda_d2h(lane.l, host, dev.p, (size_t)nq * N * 4);
    }
    if (st == MN_OK) {
      mn_tensor hs = {host, MN_DTYPE_F32, nq, N, N * 4, MN_DEVICE_HOST};
      st = mn__cuda_host->cpu_topk(&hs, k, metric != MN_METRIC_L2,
                                   scores + q0 * k, ids + q0 * k);
    }
  }
  free(host);
  if (st == MN_OK)
    for (int64_t i = 0; i < q->rows * k; i++)
      if (ids[i] >= 0)
        ids[i] += id_base;
  return st;
}

mn_status mn__cuda_search(mn_backend *b, const mn_tensor *q,
                          const mn_vecblock *db, mn_metric metric, int64_t k64,
                          int64_t id_base, float *scores, int64_t *ids) {
  mnc_backend *cb = mnc_of(b);
  MNC_CHECK(check_search_args(q, db));
  const int Q = (int)q->rows, k = (int)k64;
  const int64_t N = db->codes.rows;
  const float tail = metric == MN_METRIC_L2 ? INFINITY : -INFINITY;
  if (Q == 0)
    return MN_OK;
  if (N == 0) {
    for (int64_t i = 0; i < (int64_t)Q * k; i++) {
      scores[i] = tail;
      ids[i] = -1;
    }
    return MN_OK;
  }
  if (k > MNC_MAX_FUSED_K)
    return search_via_similarity(b, q, db, metric, k64, id_base, scores, ids);

  MncLane lane;
  MNC_CHECK(lane.get(cb));
  const size_t n = (size_t)Q * k;
  float *hkey = (float *)malloc(n * sizeof(float));
  int *hid = (int *)malloc(n * sizeof(int));
  float *tmp_s = (float *)malloc((size_t)k * sizeof(float));
  int64_t *tmp_i = (int64_t *)malloc((size_t)k * sizeof(int64_t));
  mn_status st = MN_OK;
  if (!hkey || !hid || !tmp_s || !tmp_i)
    st = MNC_ERR(MN_ERR_NOMEM, "out of host memory for search results");
  /* scores hold keys (higher is better) until the end */
  for (size_t i = 0; i < n && st == MN_OK; i++) {
    scores[i] = -INFINITY;
    ids[i] = -1;
  }
  MncWhere where(cb);
  for (int64_t r0 = 0; r0 < N && st == MN_OK; r0 += SEGMENT) {
    int64_t len = N - r0 < SEGMENT ? N - r0 : SEGMENT;
    mn_vecblock seg = segment_of(db, r0, len);
    Ctx c;
    c.tile16_k = k;
    st = ctx_init(c, cb, lane.l, where, q, &seg, metric, true);
    if (st == MN_OK)
      st = search_block(c, k, hkey, hid);
    if (st == MN_OK)
      merge_host(Q, k, metric, scores, ids, hkey, hid, r0, tmp_s, tmp_i);
  }
  if (st == MN_OK)
    for (size_t i = 0; i < n; i++) {
      if (ids[i] < 0) {
        scores[i] = tail;
      } else {
        ids[i] += id_base;
        if (metric == MN_METRIC_L2)
          scores[i] = -scores[i];
      }
    }
  free(hkey);
  free(hid);
  free(tmp_s);
  free(tmp_i);
  return st;
}

/* ---------------------------------------------------------------------------
 * Batched ops: several blocks for the same queries, enqueued on one lane's
 * stream and synchronised once (the store's 4096-row chunks: one call per
 * chunk was a launch, a copy and a stream sync each, ~20 us).
 * ------------------------------------------------------------------------- */
namespace {

/* The contexts of a batched call, one per block (or segment). They live
 * until the call has synchronised: they own host arrays' uploads and the
 * prepared queries that later contexts borrow. */
struct CtxArray {
  Ctx *v = nullptr;
  CtxArray() = default;
  CtxArray(const CtxArray &) = delete;
  CtxArray &operator=(const CtxArray &) = delete;
  ~CtxArray() {
    delete[] v;
  }
  mn_status make(int64_t n) {
    v = new (std::nothrow) Ctx[n];
    return v ? MN_OK
             : MNC_ERR(MN_ERR_NOMEM, "out of host memory for %lld blocks",
                       (long long)n);
  }
};

inline size_t zmax(size_t a, size_t b) {
  return a > b ? a : b;
}

struct HostMem {
  void *p = nullptr;
  HostMem() = default;
  HostMem(const HostMem &) = delete;
  HostMem &operator=(const HostMem &) = delete;
  ~HostMem() {
    free(p);
  }
  mn_status alloc(size_t n) {
    p = malloc(n ? n : 1);
    return p ? MN_OK
             : MNC_ERR(MN_ERR_NOMEM, "out of host memory (%zu bytes)", n);
  }
};

/* Context i's queries: borrowed from an earlier context of the call with
 * the same layout (usually the one before), else prepared. */
mn_status ctx_query_batched(Ctx *cs, int64_t i, const mn_tensor *q) {
  for (int64_t j = i - 1; j >= 0; j--)
    if (cs[j].has_q && ctx_query_fits(cs[i], cs[j])) {
      ctx_share_query(cs[i], cs[j]);
      cs[i].has_q = true;
      return MN_OK;
    }
  MNC_CHECK(ctx_query(cs[i], q));
  cs[i].has_q = true;
  return MN_OK;
}

/* A block the batch takes: rows in one segment, k within the fused
 * kernels. The others go through mn__cuda_search on their own. */
bool batchable(const mn_search_block *bl) {
  return bl->db.codes.rows > 0 && bl->db.codes.rows <= SEGMENT &&
         bl->k <= MNC_MAX_FUSED_K;
}

struct BlockPlan {
  ScanPlan scan;
  GemmPlan gemm;
  int64_t off; /* first entry of its lists in the call's output */
};

/* Every batchable block: scored and selected on one stream into one device
 * buffer of [Q][k] lists, downloaded once, converted to scores / ids. */
mn_status search_batch(mnc_backend *cb, const mn_tensor *q,
                       mn_search_block *blocks, int64_t nb, int metric) {
  int64_t nbat = 0;
  for (int64_t i = 0; i < nb; i++)
    nbat += batchable(&blocks[i]);
  if (nbat == 0)
    return MN_OK;
  const int Q = (int)q->rows;
  MncLane lane;
  MNC_CHECK(lane.get(cb));
  mnc_lane *l = lane.l;
  CtxArray cs;
  MNC_CHECK(cs.make(nb));
  MncWhere where(cb);
  HostMem plan_mem;
  MNC_CHECK(plan_mem.alloc((size_t)nb * sizeof(BlockPlan)));
  BlockPlan *plans = (BlockPlan *)plan_mem.p;

  /* contexts, prepared queries, and the scratch the largest block needs */
  size_t lists = 0, s_elems = 0, wide_elems = 0, xn_elems = 0, part = 0,
         best = 0;
  int64_t total = 0;
  for (int64_t i = 0; i < nb; i++) {
    const mn_search_block *bl = &blocks[i];
    if (!batchable(bl))
      continue;
    Ctx &c = cs.v[i];
    const int k = (int)bl->k;
    MNC_CHECK(ctx_db(c, cb, l, where, q, &bl->db, metric, true));
    MNC_CHECK(ctx_query_batched(cs.v, i, q));
    BlockPlan &p = plans[i];
    if (c.gemm) {
      p.gemm = gemm_plan(c);
      const size_t C = (size_t)p.gemm.C;
      s_elems = zmax(s_elems, (size_t)Q * C);
      if (c.dt == MN_DTYPE_I8)
        wide_elems = zmax(wide_elems, C * (size_t)c.ldh);
      if (c.need_norm)
        xn_elems = zmax(xn_elems, C);
      part = zmax(part, (size_t)Q * p.gemm.splits * k);
      best = zmax(best, (size_t)Q * k);
    } else {
      MNC_CHECK(scan_plan(c, k, &p.scan));
      lists = zmax(lists, p.scan.lists);
    }
    p.off = total;
    total += (int64_t)Q * k;
  }

  MncBuf out, pk, pi, S, wide, xn, part_k, part_i, best_k, best_i;
  MNC_CHECK(out.alloc(cb, l, (size_t)total * (sizeof(float) + sizeof(int))));
  float *okey = out.as<float>();
  int *oid = (int *)(okey + total);
  if (lists) {
    MNC_CHECK(pk.alloc(cb, l, lists * sizeof(float)));
    MNC_CHECK(pi.alloc(cb, l, lists * sizeof(int)));
  }
  GemmWs w = {};
  if (s_elems) {
    MNC_CHECK(S.alloc(cb, l, s_elems * sizeof(float)));
    MNC_CHECK(part_k.alloc(cb, l, part * sizeof(float)));
    MNC_CHECK(part_i.alloc(cb, l, part * sizeof(int)));
    MNC_CHECK(best_k.alloc(cb, l, best * sizeof(float)));
    MNC_CHECK(best_i.alloc(cb, l, best * sizeof(int)));
    w.S[0] = w.S[1] = S.p;
    w.part_k = part_k.as<float>();
    w.part_i = part_i.as<int>();
    w.best_k = best_k.as<float>();
    w.best_i = best_i.as<int>();
  }
  if (wide_elems) {
    MNC_CHECK(wide.alloc(cb, l, wide_elems * sizeof(__half)));
    w.wide[0] = w.wide[1] = wide.as<__half>();
  }
  if (xn_elems) {
    MNC_CHECK(xn.alloc(cb, l, xn_elems * sizeof(float)));
    w.xn[0] = w.xn[1] = xn.as<float>();
  }

  /* enqueue: the scratch is reused block after block in stream order */
  for (int64_t i = 0; i < nb; i++) {
    const mn_search_block *bl = &blocks[i];
    if (!batchable(bl))
      continue;
    Ctx &c = cs.v[i];
    const BlockPlan &p = plans[i];
    const int k = (int)bl->k;
    if (c.gemm)
      MNC_CHECK(gemm_enqueue(c, k, p.gemm, w, true, okey + p.off, oid + p.off));
    else
      MNC_CHECK(scan_enqueue(c, p.scan, k, okey + p.off, oid + p.off,
                             pk.as<float>(), pi.as<int>()));
  }

  /* one download (it waits for the stream), then keys -> scores */
  HostMem host;
  MNC_CHECK(host.alloc((size_t)total * (sizeof(float) + sizeof(int))));
  MNC_CHECK(mn__cuda_d2h(l, host.p, out.p,
                         (size_t)total * (sizeof(float) + sizeof(int))));
  const float *hkey = (const float *)host.p;
  const int *hid = (const int *)(hkey + total);
  const float tail = metric == MN_METRIC_L2 ? INFINITY : -INFINITY;
  for (int64_t i = 0; i < nb; i++) {
    mn_search_block *bl = &blocks[i];
    if (!batchable(bl))
      continue;
    const int64_t off = plans[i].off, n = (int64_t)Q * bl->k;
    for (int64_t e = 0; e < n; e++) {
      const int id = hid[off + e];
      if (id < 0 || id == INT_MAX) {
        bl->scores[e] = tail;
        bl->ids[e] = -1;
      } else {
        bl->ids[e] = id;
        bl->scores[e] = metric == MN_METRIC_L2 ? -hkey[off + e] : hkey[off + e];
      }
    }
  }
  return MN_OK;
}

} // namespace

mn_status mn__cuda_search_many(mn_backend *b, const mn_tensor *q,
                               mn_search_block *blocks, int64_t nblocks,
                               mn_metric metric) {
  mnc_backend *cb = mnc_of(b);
  for (int64_t i = 0; i < nblocks; i++)
    MNC_CHECK(check_search_args(q, &blocks[i].db));
  if (q->rows == 0)
    return MN_OK;
  MNC_CHECK(search_batch(cb, q, blocks, nblocks, metric));
  /* the rest one by one, after the batch has given its lane back */
  const float tail = metric == MN_METRIC_L2 ? INFINITY : -INFINITY;
  for (int64_t i = 0; i < nblocks; i++) {
    mn_search_block *bl = &blocks[i];
    if (batchable(bl))
      continue;
    if (bl->db.codes.rows == 0) {
      for (int64_t e = 0; e < q->rows * bl->k; e++) {
        bl->scores[e] = tail;
        bl->ids[e] = -1;
      }
      continue;
    }
    MNC_CHECK(
        mn__cuda_search(b, q, &bl->db, metric, bl->k, 0, bl->scores, bl->ids));
  }
  return MN_OK;
}

mn_status mn__cuda_similarity_many(mn_backend *b, const mn_tensor *q,
                                   const mn_vecblock *dbs, int64_t nblocks,
                                   mn_metric metric, mn_tensor *out) {
  mnc_backend *cb = mnc_of(b);
  MNC_CHECK(mn__cuda_check_layout(out, "output"));
  int64_t total = 0, pieces = 0;
  for (int64_t i = 0; i < nblocks; i++) {
    MNC_CHECK(check_search_args(q, &dbs[i]));
    total += dbs[i].codes.rows;
    pieces += (dbs[i].codes.rows + SEGMENT - 1) / SEGMENT;
  }
  if (q->rows == 0 || total == 0)
    return MN_OK;
  const int64_t ldo = q->rows > 1 ? out->stride / 4 : total;
  MncLane lane;
  MNC_CHECK(lane.get(cb));
  CtxArray cs;
  MNC_CHECK(cs.make(pieces));
  MncWhere where(cb);
  /* blocks of more than SEGMENT rows in segments, as mn__cuda_similarity */
  size_t wide_elems = 0, xn_elems = 0;
  for (int pass = 0; pass < 2; pass++) {
    GemmWs w = {};
    MncBuf wide, xn;
    if (pass == 1) {
      if (wide_elems) {
        MNC_CHECK(wide.alloc(cb, lane.l, wide_elems * sizeof(__half)));
        w.wide[0] = w.wide[1] = wide.as<__half>();
      }
      if (xn_elems) {
        MNC_CHECK(xn.alloc(cb, lane.l, xn_elems * sizeof(float)));
        w.xn[0] = w.xn[1] = xn.as<float>();
      }
    }
    int64_t p = 0, col = 0;
    for (int64_t i = 0; i < nblocks; i++) {
      const mn_vecblock *db = &dbs[i];
      for (int64_t r0 = 0; r0 < db->codes.rows; r0 += SEGMENT, p++) {
        int64_t n =
            db->codes.rows - r0 < SEGMENT ? db->codes.rows - r0 : SEGMENT;
        Ctx &c = cs.v[p];
        if (pass == 0) {
          mn_vecblock seg = segment_of(db, r0, n);
          MNC_CHECK(ctx_db(c, cb, lane.l, where, q, &seg, metric, true));
          MNC_CHECK(ctx_query_batched(cs.v, p, q));
          if (similarity_gemm(c, ldo)) {
            const size_t C = (size_t)chunk_of(c);
            if (c.dt == MN_DTYPE_I8)
              wide_elems = zmax(wide_elems, C * (size_t)c.ldh);
            if (c.need_norm)
              xn_elems = zmax(xn_elems, C);
          }
        } else {
          MNC_CHECK(similarity_impl(c, (float *)out->data + col + r0, ldo, &w));
        }
      }
      col += db->codes.rows;
    }
    if (pass == 1)
      MNC_TRY(cudaStreamSynchronize(lane.s()));
  }
  return MN_OK;
}
