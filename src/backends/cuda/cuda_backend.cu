/*
 * cuda_backend.cu - the CUDA plugin's entry points (mn_plugin_score,
 * mn_plugin_init), its vtable, the device memory pool, the lanes and the
 * staged host <-> device copies. The ops live in cuda_elementwise.cu,
 * cuda_pca.cu and cuda_search.cu.
 *
 * DESIGN: two mutexes, never held together. The pool mutex guards the size
 * class free lists and the pointer hash; memory is taken from cudaMalloc
 * only when a class has no free block, and given back (cudaFree) only when
 * gpu.memory_limit or a failed cudaMalloc asks for room, so the request
 * path does not call cudaMalloc once the pool is warm. Bytes held from the
 * device are accounted to MN_TIER_DEVICE. The lane mutex guards the stack
 * of idle lanes; a thread takes one lane per op (creating one when all are
 * busy, at most MNC_MAX_LANES, then waiting), so every worker thread ends
 * up with a stream and cuBLAS handle of its own without thread-local state.
 */
#include "cuda_internal.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const mn_backend_host *mn__cuda_host;

/* ---------------------------------------------------------------------------
 * Error conversion
 * ------------------------------------------------------------------------- */
static const char *base_name(const char *path) {
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

mn_status mn__cuda_status(cudaError_t e, const char *call, const char *file,
                          int line) {
  if (e == cudaSuccess)
    return MN_OK;
  cudaGetLastError(); /* clear it unless it is sticky */
  mn_status s =
      e == cudaErrorMemoryAllocation ? MN_ERR_DEVICE_OOM : MN_ERR_DEVICE;
  return MNC_ERR(s, "CUDA error %s (%s) in %s at %s:%d", cudaGetErrorName(e),
                 cudaGetErrorString(e), call, base_name(file), line);
}

mn_status mn__cuda_status(cublasStatus_t e, const char *call, const char *file,
                          int line) {
  if (e == CUBLAS_STATUS_SUCCESS)
    return MN_OK;
  mn_status s =
      e == CUBLAS_STATUS_ALLOC_FAILED ? MN_ERR_DEVICE_OOM : MN_ERR_DEVICE;
  return MNC_ERR(s, "cuBLAS error %d (%s) in %s at %s:%d", (int)e,
                 cublasGetStatusString(e), call, base_name(file), line);
}

static const char *solver_text(cusolverStatus_t e) {
  switch (e) {
  case CUSOLVER_STATUS_NOT_INITIALIZED:
    return "not initialized";
  case CUSOLVER_STATUS_ALLOC_FAILED:
    return "allocation failed";
  case CUSOLVER_STATUS_INVALID_VALUE:
    return "invalid value";
  case CUSOLVER_STATUS_ARCH_MISMATCH:
    return "architecture mismatch";
  case CUSOLVER_STATUS_EXECUTION_FAILED:
    return "execution failed";
  case CUSOLVER_STATUS_INTERNAL_ERROR:
    return "internal error";
  case CUSOLVER_STATUS_NOT_SUPPORTED:
    return "not supported";
  default:
    return "unknown status";
  }
}

mn_status mn__cuda_status(cusolverStatus_t e, const char *call,
                          const char *file, int line) {
  if (e == CUSOLVER_STATUS_SUCCESS)
    return MN_OK;
  mn_status s =
      e == CUSOLVER_STATUS_ALLOC_FAILED ? MN_ERR_DEVICE_OOM : MN_ERR_DEVICE;
  return MNC_ERR(s, "cuSOLVER error %d (%s) in %s at %s:%d", (int)e,
                 solver_text(e), call, base_name(file), line);
}

/* ---------------------------------------------------------------------------
 * Device memory pool
 * ------------------------------------------------------------------------- */

/* Round up to a size class: 256 bytes, then four classes per octave. */
static size_t class_size(size_t n, int *cls) {
  if (n <= 256) {
    *cls = 0;
    return 256;
  }
  int e = 63 - __builtin_clzll((unsigned long long)(n - 1)); /* 2^e < n */
  size_t step = (size_t)1 << (e - 2);
  size_t m = (n + step - 1) / step; /* 5 .. 8 */
  *cls = 1 + (e - 8) * 4 + (int)(m - 5);
  return m * step;
}

static unsigned bucket_of(const void *p) {
  uint64_t h = ((uint64_t)(uintptr_t)p >> 8) * 0x9E3779B97F4A7C15ull;
  return (unsigned)(h >> 52) & (MNC_POOL_BUCKETS - 1);
}

/* Give cached blocks back to the device until `need` bytes are released
 * (or all of them). Pool mutex held. */
static void pool_trim(mnc_backend *cb, uint64_t need) {
  uint64_t freed = 0;
  for (int c = MNC_POOL_CLASSES - 1; c >= 0 && freed < need; c--) {
    while (cb->free_lists[c] && freed < need) {
      mnc_block *blk = cb->free_lists[c];
      cb->free_lists[c] = blk->fnext;
      mnc_block **pp = &cb->buckets[bucket_of(blk->ptr)];
      while (*pp != blk)
        pp = &(*pp)->hnext;
      *pp = blk->hnext;
      cudaFree(blk->ptr);
      cudaGetLastError();
      cb->reserved -= blk->size;
      freed += blk->size;
      mn__cuda_host->account_add(MN_TIER_DEVICE, -(int64_t)blk->size);
      free(blk);
    }
  }
}

mn_status mn__cuda_pool_alloc(mnc_backend *cb, size_t bytes, void **out) {
  int cls;
  size_t sz = class_size(bytes, &cls);
  if (cb->pool_exact) /* blocks of the asked size, never reused */
    sz = bytes ? bytes : 1, cls = -1;
  *out = nullptr;
  pthread_mutex_lock(&cb->pool_mu);
  mnc_block *blk = cls >= 0 ? cb->free_lists[cls] : nullptr;
  if (blk) {
    cb->free_lists[cls] = blk->fnext;
    blk->in_use = 1;
    cb->in_use += sz;
    pthread_mutex_unlock(&cb->pool_mu);
    *out = blk->ptr;
    return MN_OK;
  }
  if (cb->limit && cb->in_use + sz > cb->limit) {
    uint64_t used = cb->in_use;
    pthread_mutex_unlock(&cb->pool_mu);
    return MNC_ERR(MN_ERR_DEVICE_OOM,
                   "device memory: %zu more bytes would exceed gpu.memory_"
                   "limit (%llu bytes, %llu in use); raise the limit or send "
                   "smaller batches",
                   sz, (unsigned long long)cb->limit, (unsigned long long)used);
  }
  if (cb->limit && cb->reserved + sz > cb->limit)
    pool_trim(cb, cb->reserved + sz - cb->limit);
  void *p = nullptr;
  cudaError_t e = cudaMalloc(&p, sz);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    pool_trim(cb, UINT64_MAX);
    e = cudaMalloc(&p, sz);
  }
  if (e != cudaSuccess) {
    uint64_t used = cb->in_use;
    pthread_mutex_unlock(&cb->pool_mu);
    cudaGetLastError();
    mn_status s =
        e == cudaErrorMemoryAllocation ? MN_ERR_DEVICE_OOM : MN_ERR_DEVICE;
    return MNC_ERR(s,
                   "cudaMalloc of %zu bytes failed: %s (%llu bytes in use "
                   "by mnemo)",
                   sz, cudaGetErrorString(e), (unsigned long long)used);
  }
  blk = (mnc_block *)calloc(1, sizeof *blk);
  if (!blk) {
    cudaFree(p);
    pthread_mutex_unlock(&cb->pool_mu);
    return MNC_ERR(MN_ERR_NOMEM, "out of host memory for a pool block");
  }
  blk->ptr = p;
  blk->size = sz;
  blk->in_use = 1;
  unsigned h = bucket_of(p);
  blk->hnext = cb->buckets[h];
  cb->buckets[h] = blk;
  cb->reserved += sz;
  cb->in_use += sz;
  pthread_mutex_unlock(&cb->pool_mu);
  mn__cuda_host->account_add(MN_TIER_DEVICE, (int64_t)sz);
  *out = p;
  return MN_OK;
}

bool mn__cuda_pool_block(mnc_backend *cb, const void *p, uintptr_t *lo,
                         uintptr_t *hi) {
  if (!p)
    return false;
  pthread_mutex_lock(&cb->pool_mu);
  mnc_block *blk = cb->buckets[bucket_of(p)];
  while (blk && blk->ptr != p)
    blk = blk->hnext;
  bool held = blk && blk->in_use;
  if (held) {
    *lo = (uintptr_t)blk->ptr;
    *hi = *lo + blk->size;
  }
  pthread_mutex_unlock(&cb->pool_mu);
  return held;
}

void mn__cuda_pool_free(mnc_backend *cb, void *p) {
  if (!p)
    return;
  pthread_mutex_lock(&cb->pool_mu);
  mnc_block *blk = cb->buckets[bucket_of(p)];
  while (blk && blk->ptr != p)
    blk = blk->hnext;
  if (!blk || !blk->in_use) {
    pthread_mutex_unlock(&cb->pool_mu);
    MNC_LOGW("free of %p, which is not a live CUDA pool block; ignored", p);
    return;
  }
  blk->in_use = 0;
  cb->in_use -= blk->size;
  if (cb->pool_exact) {
    mnc_block **pp = &cb->buckets[bucket_of(p)];
    while (*pp != blk)
      pp = &(*pp)->hnext;
    *pp = blk->hnext;
    cb->reserved -= blk->size;
    pthread_mutex_unlock(&cb->pool_mu);
    cudaFree(p);
    cudaGetLastError();
    mn__cuda_host->account_add(MN_TIER_DEVICE, -(int64_t)blk->size);
    free(blk);
    return;
  }
  int cls;
  class_size(blk->size, &cls);
  blk->fnext = cb->free_lists[cls];
  cb->free_lists[cls] = blk;
  pthread_mutex_unlock(&cb->pool_mu);
}

/* ---------------------------------------------------------------------------
 * Lanes
 * ------------------------------------------------------------------------- */
static void lane_destroy(mnc_lane *l) {
  if (!l)
    return;
  if (l->stream)
    cudaStreamSynchronize(l->stream);
  if (l->aux)
    cudaStreamSynchronize(l->aux);
  if (l->solver)
    cusolverDnDestroy(l->solver);
  if (l->blas)
    cublasDestroy(l->blas);
  for (int i = 0; i < 4; i++)
    if (l->ev[i])
      cudaEventDestroy(l->ev[i]);
  for (int i = 0; i < 2; i++)
    if (l->stage[i]) {
      cudaFreeHost(l->stage[i]);
    }
  if (l->aux)
    cudaStreamDestroy(l->aux);
  if (l->stream)
    cudaStreamDestroy(l->stream);
  cudaGetLastError();
  free(l);
}

static mn_status lane_fill(mnc_backend *cb, mnc_lane *l) {
  MNC_TRY(cudaSetDevice(cb->device));
  MNC_TRY(cudaStreamCreateWithFlags(&l->stream, cudaStreamNonBlocking));
  MNC_TRY(cudaStreamCreateWithFlags(&l->aux, cudaStreamNonBlocking));
  for (int i = 0; i < 4; i++)
    MNC_TRY(cudaEventCreateWithFlags(&l->ev[i], cudaEventDisableTiming));
  MNC_TRY(cublasCreate(&l->blas));
  MNC_TRY(cublasSetStream(l->blas, l->stream));
  for (int i = 0; i < 2; i++) {
    /* Not accounted to MN_TIER_HOST: processing.cache_size budgets what
     * requests and the store hold, and this fixed 8 MiB per lane would
     * otherwise eat a small budget before the first request. */
    MNC_TRY(cudaMallocHost(&l->stage[i], MNC_STAGE_BYTES));
  }
  return MN_OK;
}

mn_status mn__cuda_lane_get(mnc_backend *cb, mnc_lane **out) {
  *out = nullptr;
  pthread_mutex_lock(&cb->lane_mu);
  while (!cb->lanes_free && cb->lanes_total >= MNC_MAX_LANES)
    pthread_cond_wait(&cb->lane_cv, &cb->lane_mu);
  mnc_lane *l = cb->lanes_free;
  if (l) {
    cb->lanes_free = l->next_free;
    pthread_mutex_unlock(&cb->lane_mu);
    /* the calling thread may be new to CUDA: make device 0 current */
    MNC_TRY(cudaSetDevice(cb->device));
    *out = l;
    return MN_OK;
  }
  cb->lanes_total++;
  pthread_mutex_unlock(&cb->lane_mu);

  l = (mnc_lane *)calloc(1, sizeof *l);
  mn_status s = l ? lane_fill(cb, l)
                  : MNC_ERR(MN_ERR_NOMEM, "out of host memory for a lane");
  pthread_mutex_lock(&cb->lane_mu);
  if (s != MN_OK) {
    cb->lanes_total--;
    pthread_cond_signal(&cb->lane_cv);
    pthread_mutex_unlock(&cb->lane_mu);
    lane_destroy(l);
    return s;
  }
  l->all_next = cb->lanes_all;
  cb->lanes_all = l;
  pthread_mutex_unlock(&cb->lane_mu);
  *out = l;
  return MN_OK;
}

void mn__cuda_lane_put(mnc_backend *cb, mnc_lane *l) {
  /* An op that failed may have left work queued: drain it first. */
  cudaStreamSynchronize(l->stream);
  cudaStreamSynchronize(l->aux);
  cudaGetLastError();
  pthread_mutex_lock(&cb->lane_mu);
  l->next_free = cb->lanes_free;
  cb->lanes_free = l;
  pthread_cond_signal(&cb->lane_cv);
  pthread_mutex_unlock(&cb->lane_mu);
}

mn_status mn__cuda_lane_solver(mnc_lane *l, cusolverDnHandle_t *out) {
  if (!l->solver) {
    MNC_TRY(cusolverDnCreate(&l->solver));
    MNC_TRY(cusolverDnSetStream(l->solver, l->stream));
  }
  *out = l->solver;
  return MN_OK;
}

/* ---------------------------------------------------------------------------
 * Copies
 * ------------------------------------------------------------------------- */
static int is_pinned_host(const void *p) {
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return a.type == cudaMemoryTypeHost;
}

int mn__cuda_is_device_ptr(const void *p) {
  cudaPointerAttributes a;
  if (!p || cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

bool MncWhere::in_range(uintptr_t a) const {
  for (int i = 0; i < nrange; i++)
    if (a >= lo[i] && a < hi[i])
      return true;
  return false;
}

void MncWhere::add_range(uintptr_t l, uintptr_t h) {
  lo[next_range] = l;
  hi[next_range] = h;
  next_range = (next_range + 1) % NRANGE;
  if (nrange < NRANGE)
    nrange++;
}

void MncWhere::see_codes(const void *codes) {
  uintptr_t l, h;
  if (codes && !in_range((uintptr_t)codes) &&
      mn__cuda_pool_block(cb, codes, &l, &h))
    add_range(l, h);
}

bool MncWhere::is_device(const void *p) {
  if (!p)
    return false;
  if (in_range((uintptr_t)p))
    return true;
  for (int i = 0; i < nseen; i++)
    if (seen[i] == p)
      return seen_dev[i];
  uintptr_t l, h;
  if (mn__cuda_pool_block(cb, p, &l, &h)) {
    add_range(l, h);
    return true;
  }
  bool dev = mn__cuda_is_device_ptr(p) != 0;
  seen[next_seen] = p;
  seen_dev[next_seen] = dev;
  next_seen = (next_seen + 1) % NSEEN;
  if (nseen < NSEEN)
    nseen++;
  return dev;
}

/* Pageable host memory goes through the two pinned buffers, so that the
 * host copy of one chunk overlaps the DMA of the other. */
mn_status mn__cuda_h2d(mnc_lane *l, void *dst, const void *src, size_t n) {
  if (n == 0)
    return MN_OK;
  if (is_pinned_host(src)) {
    MNC_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, l->stream));
    MNC_TRY(cudaStreamSynchronize(l->stream));
    return MN_OK;
  }
  size_t off = 0;
  for (int i = 0; off < n; i++) {
    size_t len = n - off < MNC_STAGE_BYTES ? n - off : MNC_STAGE_BYTES;
    int bi = i & 1;
    if (i >= 2)
      MNC_TRY(cudaEventSynchronize(l->ev[bi]));
    memcpy(l->stage[bi], (const char *)src + off, len);
    MNC_TRY(cudaMemcpyAsync((char *)dst + off, l->stage[bi], len,
                            cudaMemcpyHostToDevice, l->stream));
    MNC_TRY(cudaEventRecord(l->ev[bi], l->stream));
    off += len;
  }
  MNC_TRY(cudaStreamSynchronize(l->stream));
  return MN_OK;
}

mn_status mn__cuda_d2h(mnc_lane *l, void *dst, const void *src, size_t n) {
  if (n == 0)
    return MN_OK;
  if (is_pinned_host(dst)) {
    MNC_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, l->stream));
    MNC_TRY(cudaStreamSynchronize(l->stream));
    return MN_OK;
  }
  size_t off = 0, prev_off = 0, prev_len = 0;
  int i = 0;
  for (; off < n; i++) {
    size_t len = n - off < MNC_STAGE_BYTES ? n - off : MNC_STAGE_BYTES;
    int bi = i & 1;
    MNC_TRY(cudaMemcpyAsync(l->stage[bi], (const char *)src + off, len,
                            cudaMemcpyDeviceToHost, l->stream));
    MNC_TRY(cudaEventRecord(l->ev[bi], l->stream));
    if (i >= 1) { /* drain the previous chunk while this one copies */
      MNC_TRY(cudaEventSynchronize(l->ev[bi ^ 1]));
      memcpy((char *)dst + prev_off, l->stage[bi ^ 1], prev_len);
    }
    prev_off = off;
    prev_len = len;
    off += len;
  }
  int last = (i - 1) & 1;
  MNC_TRY(cudaEventSynchronize(l->ev[last]));
  memcpy((char *)dst + prev_off, l->stage[last], prev_len);
  return MN_OK;
}

mn_status mn__cuda_device_floats(mnc_backend *cb, mnc_lane *l, const float *p,
                                 size_t n, MncBuf *tmp, const float **out,
                                 MncWhere *where) {
  *out = nullptr;
  if (!p || n == 0)
    return MN_OK;
  if (where ? where->is_device(p) : mn__cuda_is_device_ptr(p)) {
    *out = p;
    return MN_OK;
  }
  MNC_CHECK(tmp->alloc(cb, l, n * sizeof(float)));
  MNC_CHECK(mn__cuda_h2d(l, tmp->p, p, n * sizeof(float)));
  *out = tmp->as<const float>();
  return MN_OK;
}

mn_status mn__cuda_check_layout(const mn_tensor *t, const char *what) {
  int e = 1;
  if (t->dtype == MN_DTYPE_F32)
    e = 4;
  else if (t->dtype == MN_DTYPE_F16 || t->dtype == MN_DTYPE_BF16)
    e = 2;
  if (((uintptr_t)t->data % (uintptr_t)e) != 0 ||
      (t->rows > 1 && t->stride % e != 0))
    return MNC_ERR(MN_ERR_INVALID,
                   "%s: device rows of %s must start on %d-byte boundaries "
                   "(stride %lld)",
                   what, mnc_dtype_name(t->dtype), e, (long long)t->stride);
  return MN_OK;
}

/* ---------------------------------------------------------------------------
 * Buffer vtable entries
 * ------------------------------------------------------------------------- */
static mn_status cuda_alloc(mn_backend *b, size_t bytes, void **out) {
  mnc_backend *cb = mnc_of(b);
  MNC_TRY(cudaSetDevice(cb->device));
  return mn__cuda_pool_alloc(cb, bytes, out);
}

static void cuda_free(mn_backend *b, void *p) {
  mn__cuda_pool_free(mnc_of(b), p);
}

static mn_status cuda_upload(mn_backend *b, void *dst, const void *src,
                             size_t n) {
  MncLane lane;
  MNC_CHECK(lane.get(mnc_of(b)));
  return mn__cuda_h2d(lane.l, dst, src, n);
}

static mn_status cuda_download(mn_backend *b, void *dst, const void *src,
                               size_t n) {
  MncLane lane;
  MNC_CHECK(lane.get(mnc_of(b)));
  return mn__cuda_d2h(lane.l, dst, src, n);
}

static mn_status cuda_memory_info(mn_backend *b, uint64_t *free_b,
                                  uint64_t *total) {
  mnc_backend *cb = mnc_of(b);
  size_t f = 0, t = 0;
  MNC_TRY(cudaSetDevice(cb->device));
  MNC_TRY(cudaMemGetInfo(&f, &t));
  pthread_mutex_lock(&cb->pool_mu);
  uint64_t cached = cb->reserved - cb->in_use, used = cb->in_use;
  pthread_mutex_unlock(&cb->pool_mu);
  uint64_t fr = (uint64_t)f + cached, tt = (uint64_t)t;
  if (cb->limit) {
    if (tt > cb->limit)
      tt = cb->limit;
    uint64_t room = cb->limit > used ? cb->limit - used : 0;
    if (fr > room)
      fr = room;
  }
  *free_b = fr;
  *total = tt;
  return MN_OK;
}

static mn_status cuda_synchronize(mn_backend *b) {
  MNC_TRY(cudaSetDevice(mnc_of(b)->device));
  MNC_TRY(cudaDeviceSynchronize());
  return MN_OK;
}

static void cuda_destroy(mn_backend *b) {
  mnc_backend *cb = mnc_of(b);
  if (!cb)
    return;
  cudaSetDevice(cb->device);
  mnc_lane *l = cb->lanes_all;
  while (l) {
    mnc_lane *n = l->all_next;
    lane_destroy(l);
    l = n;
  }
  for (int h = 0; h < MNC_POOL_BUCKETS; h++) {
    mnc_block *blk = cb->buckets[h];
    while (blk) {
      mnc_block *n = blk->hnext;
      cudaFree(blk->ptr);
      mn__cuda_host->account_add(MN_TIER_DEVICE, -(int64_t)blk->size);
      free(blk);
      blk = n;
    }
  }
  cudaGetLastError();
  pthread_mutex_destroy(&cb->pool_mu);
  pthread_mutex_destroy(&cb->lane_mu);
  pthread_cond_destroy(&cb->lane_cv);
  free(cb);
}

static const mn_backend_iface cuda_iface = {
    MN_BACKEND_API_VERSION,
    "cuda",
    cuda_destroy,
    cuda_alloc,
    cuda_free,
    cuda_upload,
    cuda_download,
    cuda_memory_info,
    cuda_synchronize,
    mn__cuda_normalize,
    mn__cuda_pca_fit,
    mn__cuda_pca_transform,
    mn__cuda_affine_train,
    mn__cuda_quantize,
    mn__cuda_dequantize,
    mn__cuda_similarity,
    mn__cuda_search,
    0u, /* caps: device input is not host memory, the wrappers' finiteness
           scan does not apply */
    mn__cuda_search_many,
    mn__cuda_similarity_many,
};

/* ---------------------------------------------------------------------------
 * Plugin entry points: the only symbols the module exports.
 * ------------------------------------------------------------------------- */
#define MNC_EXPORT extern "C" __attribute__((visibility("default")))

/* 0 when no driver, no device or a device older than compute 8.0 (the
 * module carries sm_80 / sm_90 code and compute_90 PTX). Quiet by design:
 * the core calls this on machines without a GPU. */
MNC_EXPORT int mn_plugin_score(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
    cudaGetLastError();
    return 0;
  }
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) !=
          cudaSuccess ||
      major < 8) {
    cudaGetLastError();
    return 0;
  }
  return 100 + major;
}

static mn_status init_backend(mnc_backend *cb, const mn_backend_opts *opts) {
  int n = 0;
  MNC_TRY(cudaGetDeviceCount(&n));
  if (n < 1)
    return MNC_ERR(MN_ERR_UNSUPPORTED, "no CUDA device is present");
  cudaDeviceProp p;
  MNC_TRY(cudaGetDeviceProperties(&p, 0));
  if (p.major < 8)
    return MNC_ERR(MN_ERR_UNSUPPORTED,
                   "%s has compute capability %d.%d; the CUDA plugin needs "
                   "8.0 or newer",
                   p.name, p.major, p.minor);
  cb->device = 0;
  cb->sm_count = p.multiProcessorCount;
  cb->cc_major = p.major;
  cb->cc_minor = p.minor;
  cb->smem_optin = p.sharedMemPerBlockOptin;
  cb->limit = opts ? opts->device_mem_limit : 0;
  cb->allow_f16 = opts ? opts->precision_f16 : 0;
  /* Large chunks: cuBLAS runs far below its rate on thin GEMMs (first H200
   * run, N = 10M, Q = 256: 8192 rows 67 ms, 16384 rows 45 ms, 65536 rows
   * 26 ms); chunk_of caps the score tile by memory. */
  cb->chunk_rows = (int64_t)1 << 18;
  const char *env = getenv("MNEMO_CUDA_CHUNK_ROWS");
  if (env && atoll(env) >= 1024)
    cb->chunk_rows = atoll(env);
  env = getenv("MNEMO_CUDA_TILE");
  cb->tile16 = !(env && !strcmp(env, "f32"));
  env = getenv("MNEMO_CUDA_EIG");
  cb->eig_mode = env && !strcmp(env, "full")      ? 0
                 : env && !strcmp(env, "partial") ? 1
                                                  : -1;
  /* debug aid for compute-sanitizer: every buffer exactly as large as
   * asked, so a read past a tensor's end is past its allocation */
  env = getenv("MNEMO_CUDA_POOL_EXACT");
  cb->pool_exact = env && env[0] == '1';
  MNC_TRY(cudaSetDevice(cb->device));
  MNC_TRY(cudaFree(nullptr)); /* create the context now, not on a request */
  MNC_CHECK(mn__cuda_search_setup(cb));
  { /* warm one lane: stream, cuBLAS handle, pinned staging */
    MncLane lane;
    MNC_CHECK(lane.get(cb));
  }
  snprintf(cb->base.device, sizeof cb->base.device, "cuda:0 %.80s", p.name);
  MNC_LOGI("%s: %d SMs, compute %d.%d, memory limit %llu bytes%s",
           cb->base.device, cb->sm_count, p.major, p.minor,
           (unsigned long long)cb->limit,
           cb->allow_f16 ? ", float16/TF32 products allowed" : "");
  return MN_OK;
}

MNC_EXPORT mn_status mn_plugin_init(const mn_backend_opts *opts,
                                    const mn_backend_host *host,
                                    mn_backend **out) {
  if (!host || host->api_version != MN_BACKEND_API_VERSION || !out)
    return MN_ERR_VERSION;
  mn__cuda_host = host;
  *out = nullptr;
  mnc_backend *cb = (mnc_backend *)calloc(1, sizeof *cb);
  if (!cb)
    return MNC_ERR(MN_ERR_NOMEM, "out of host memory for the CUDA backend");
  pthread_mutex_init(&cb->pool_mu, nullptr);
  pthread_mutex_init(&cb->lane_mu, nullptr);
  pthread_cond_init(&cb->lane_cv, nullptr);
  cb->base.iface = &cuda_iface;
  cb->base.device_kind = MN_DEVICE_GPU;
  mn_status s = init_backend(cb, opts);
  if (s != MN_OK) {
    cuda_destroy(&cb->base);
    return s;
  }
  *out = &cb->base;
  return MN_OK;
}
