/*
 * cuda_internal.cuh - the CUDA plugin's private interface: the backend
 * struct, the device memory pool, the per-call lanes (stream + cuBLAS +
 * cuSOLVER + pinned staging), error conversion and the op entry points the
 * vtable in cuda_backend.cu points at.
 *
 * DESIGN: the plugin is CUDA C++ used as "C with destructors": RAII guards
 * give back lanes and pooled buffers on every return path, nothing throws,
 * no STL. Every op takes a lane for the whole call (one thread at a time
 * per lane, so a cuBLAS handle is never shared), runs its kernels on the
 * lane's stream and synchronises that stream before returning, so a result
 * is complete when the op returns and may be handed to another thread.
 * Every CUDA, cuBLAS and cuSOLVER status goes through MNC_TRY, which turns
 * a failure into MN_ERR_DEVICE / MN_ERR_DEVICE_OOM with the call, file and
 * line in the thread's detail message. Nothing here prints or aborts.
 */
#ifndef MNEMO_CUDA_INTERNAL_CUH
#define MNEMO_CUDA_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "compute/backend_impl.h"
}

/* The host services the core lent us (mn_plugin_init). */
extern const mn_backend_host *mn__cuda_host;

#define MNC_MOD "cuda"
#define MNC_THREADS 256 /* threads per block for the row kernels */
#define MNC_MAX_LANES 64
#define MNC_STAGE_BYTES ((size_t)4 << 20) /* each of a lane's 2 buffers */
#define MNC_POOL_BUCKETS 4096
#define MNC_POOL_CLASSES 256
#define MNC_MAX_FUSED_K 1024 /* larger k: similarity + host top-k */

#define MNC_LOGW(...) mn__cuda_host->log(MN_LOG_WARN, MNC_MOD, __VA_ARGS__)
#define MNC_LOGI(...) mn__cuda_host->log(MN_LOG_INFO, MNC_MOD, __VA_ARGS__)
#define MNC_LOGD(...) mn__cuda_host->log(MN_LOG_DEBUG, MNC_MOD, __VA_ARGS__)
#define MNC_ERR(status, ...) mn__cuda_host->set_error(status, __VA_ARGS__)

/* ---------------------------------------------------------------------------
 * Error conversion. One overload per library status type.
 * ------------------------------------------------------------------------- */
mn_status mn__cuda_status(cudaError_t e, const char *call, const char *file,
                          int line);
mn_status mn__cuda_status(cublasStatus_t e, const char *call, const char *file,
                          int line);
mn_status mn__cuda_status(cusolverStatus_t e, const char *call,
                          const char *file, int line);

/* Return from the enclosing function when a library call fails. */
#define MNC_TRY(call)                                                          \
  do {                                                                         \
    mn_status mnc_s_ = mn__cuda_status((call), #call, __FILE__, __LINE__);     \
    if (mnc_s_ != MN_OK)                                                       \
      return mnc_s_;                                                           \
  } while (0)

/* After a kernel launch: configuration errors show up here. */
#define MNC_LAUNCHED(name)                                                     \
  do {                                                                         \
    mn_status mnc_s_ = mn__cuda_status(cudaGetLastError(), "launch of " name,  \
                                       __FILE__, __LINE__);                    \
    if (mnc_s_ != MN_OK)                                                       \
      return mnc_s_;                                                           \
  } while (0)

#define MNC_CHECK(expr)                                                        \
  do {                                                                         \
    mn_status mnc_s_ = (expr);                                                 \
    if (mnc_s_ != MN_OK)                                                       \
      return mnc_s_;                                                           \
  } while (0)

/* ---------------------------------------------------------------------------
 * Backend state
 * ------------------------------------------------------------------------- */
typedef struct mnc_block {
  void *ptr;
  size_t size;             /* the size class, what cudaMalloc gave */
  struct mnc_block *hnext; /* hash chain by ptr */
  struct mnc_block *fnext; /* free list of its class */
  int in_use;
} mnc_block;

typedef struct mnc_lane {
  cudaStream_t stream;
  cudaStream_t aux;  /* second stream for overlapped search chunks */
  cudaEvent_t ev[4]; /* staging and chunk pipelining */
  cublasHandle_t blas;
  cusolverDnHandle_t solver; /* created on first PCA fit */
  void *stage[2];            /* pinned host staging */
  struct mnc_lane *next_free;
  struct mnc_lane *all_next; /* every lane, for destroy */
} mnc_lane;

typedef struct mnc_backend {
  mn_backend base; /* must be first */
  int device;
  int sm_count;
  int cc_major, cc_minor;
  size_t smem_optin;  /* dynamic shared memory a block may opt into */
  uint64_t limit;     /* gpu.memory_limit, 0 = none */
  int allow_f16;      /* TF32 / float16 products allowed */
  int64_t chunk_rows; /* rows per GEMM chunk in search (tuning) */
  int tile16;         /* float16 score tiles + exact re-rank in the GEMM
                         search where the query is float16 anyway;
                         MNEMO_CUDA_TILE=f32 turns it off (A/B) */
  int eig_mode;       /* PCA eigensolver: -1 auto (top k by syevdx when
                         k <= d/2), 0 all (syevd), 1 top k (syevdx);
                         MNEMO_CUDA_EIG = auto | full | partial (tuning) */
  int pool_exact;     /* debug: exact sizes, no caching (memcheck) */

  pthread_mutex_t pool_mu;
  mnc_block *buckets[MNC_POOL_BUCKETS];
  mnc_block *free_lists[MNC_POOL_CLASSES];
  uint64_t reserved; /* bytes held from cudaMalloc */
  uint64_t in_use;   /* bytes handed out */

  pthread_mutex_t lane_mu;
  pthread_cond_t lane_cv;
  mnc_lane *lanes_free;
  mnc_lane *lanes_all; /* list through all_next */
  int lanes_total;     /* created or being created */
} mnc_backend;

static inline mnc_backend *mnc_of(mn_backend *b) {
  return (mnc_backend *)b;
}

/* Pool (cuda_backend.cu). Sizes are rounded up to a class (4 per octave). */
mn_status mn__cuda_pool_alloc(mnc_backend *cb, size_t bytes, void **out);
void mn__cuda_pool_free(mnc_backend *cb, void *p);

/* Lanes (cuda_backend.cu). */
mn_status mn__cuda_lane_get(mnc_backend *cb, mnc_lane **out);
void mn__cuda_lane_put(mnc_backend *cb, mnc_lane *l);
mn_status mn__cuda_lane_solver(mnc_lane *l, cusolverDnHandle_t *out);

/* Synchronous copies through the lane's pinned staging buffers. */
mn_status mn__cuda_h2d(mnc_lane *l, void *dst, const void *src, size_t n);
mn_status mn__cuda_d2h(mnc_lane *l, void *dst, const void *src, size_t n);

/* 1 when p is device (or managed) memory, 0 for host memory (asks the
 * driver: cudaPointerGetAttributes). */
int mn__cuda_is_device_ptr(const void *p);

/* Whether p is the start of a pool block now handed out (device memory,
 * known without asking the driver); [*lo, *hi) are then its bytes. */
bool mn__cuda_pool_block(mnc_backend *cb, const void *p, uintptr_t *lo,
                         uintptr_t *hi);

/*
 * Where one call's per-row arrays live (scales, norms, affine parameters).
 * search_many / similarity_many would otherwise ask the driver for two
 * arrays of every block: 128 queries for the store's group of 64 chunks.
 * An array is known to be device memory when it lies in a pool block the
 * call has seen handed out: its block's codes' (the store keeps a chunk's
 * scales and norms in the buffer of its codes; see_codes) or its own. Any
 * other pointer is asked of the driver, and the answer kept for the call
 * (the last NSEEN pointers asked). The answers are the driver's: a pool
 * block handed out is cudaMalloc'd memory, and no array changes kind while
 * a call uses it. For one thread, for one call.
 */
struct MncWhere {
  explicit MncWhere(mnc_backend *b) : cb(b) {}
  MncWhere(const MncWhere &) = delete;
  MncWhere &operator=(const MncWhere &) = delete;
  /* A block's codes: the pool block they start, if any, is device memory. */
  void see_codes(const void *codes);
  /* As mn__cuda_is_device_ptr(p). */
  bool is_device(const void *p);

private:
  static constexpr int NRANGE = 8, NSEEN = 8;
  mnc_backend *cb;
  uintptr_t lo[NRANGE], hi[NRANGE]; /* device ranges (pool blocks) */
  int nrange = 0, next_range = 0;
  const void *seen[NSEEN]; /* the driver's answers */
  bool seen_dev[NSEEN];
  int nseen = 0, next_seen = 0;
  bool in_range(uintptr_t a) const;
  void add_range(uintptr_t l, uintptr_t h);
};

/* Element alignment of a device tensor's rows (what the kernels assume). */
mn_status mn__cuda_check_layout(const mn_tensor *t, const char *what);

/* The core's dtype helpers, restated: the plugin links nothing of libmnemo. */
static inline size_t mnc_row_bytes(mn_dtype dt, int64_t cols) {
  switch (dt) {
  case MN_DTYPE_F32:
    return (size_t)cols * 4;
  case MN_DTYPE_F16:
  case MN_DTYPE_BF16:
    return (size_t)cols * 2;
  case MN_DTYPE_I4:
    return (size_t)(cols + 1) / 2;
  case MN_DTYPE_BIN:
    return (size_t)(cols + 7) / 8;
  default:
    return (size_t)cols;
  }
}

static inline const char *mnc_dtype_name(mn_dtype dt) {
  static const char *const names[] = {"float32", "float16", "bfloat16", "int8",
                                      "uint8",   "int4",    "binary"};
  return (unsigned)dt < 7 ? names[dt] : "unknown";
}

/* Grid size for a grid-stride kernel: enough blocks to fill the device. */
static inline unsigned mnc_grid(const mnc_backend *cb, int64_t work_blocks,
                                int per_sm) {
  int64_t cap = (int64_t)cb->sm_count * per_sm;
  if (work_blocks < 1)
    work_blocks = 1;
  return (unsigned)(work_blocks < cap ? work_blocks : cap);
}

/* ---------------------------------------------------------------------------
 * RAII guards
 * ------------------------------------------------------------------------- */
struct MncLane {
  mnc_backend *cb = nullptr;
  mnc_lane *l = nullptr;
  MncLane() = default;
  MncLane(const MncLane &) = delete;
  MncLane &operator=(const MncLane &) = delete;
  ~MncLane() {
    if (l)
      mn__cuda_lane_put(cb, l);
  }
  mn_status get(mnc_backend *b) {
    cb = b;
    return mn__cuda_lane_get(b, &l);
  }
  cudaStream_t s() const {
    return l->stream;
  }
};

/*
 * A pooled device buffer that goes back to the pool when it leaves scope.
 * It first waits for the lane's streams, so that a buffer is never reused
 * while a kernel of an op that failed half-way may still touch it.
 */
struct MncBuf {
  mnc_backend *cb = nullptr;
  mnc_lane *lane = nullptr;
  void *p = nullptr;
  size_t bytes = 0;
  MncBuf() = default;
  MncBuf(const MncBuf &) = delete;
  MncBuf &operator=(const MncBuf &) = delete;
  ~MncBuf() {
    release();
  }
  void release() {
    if (p) {
      if (lane) {
        cudaStreamSynchronize(lane->stream);
        cudaStreamSynchronize(lane->aux);
        cudaGetLastError();
      }
      mn__cuda_pool_free(cb, p);
      p = nullptr;
    }
  }
  mn_status alloc(mnc_backend *b, mnc_lane *l, size_t n) {
    release();
    cb = b;
    lane = l;
    bytes = n;
    return mn__cuda_pool_alloc(b, n ? n : 1, &p);
  }
  template <class T> T *as() const {
    return (T *)p;
  }
};

/*
 * A per-row or per-dimension float array that may live on the host or the
 * device: on the device it is used in place, from the host it is uploaded
 * into a pooled buffer for the duration of the op.
 */
mn_status mn__cuda_device_floats(mnc_backend *cb, mnc_lane *l, const float *p,
                                 size_t n, MncBuf *tmp, const float **out,
                                 MncWhere *where = nullptr);

/* ---------------------------------------------------------------------------
 * Ops (vtable entries)
 * ------------------------------------------------------------------------- */
mn_status mn__cuda_normalize(mn_backend *b, const mn_tensor *x, mn_tensor *y,
                             int64_t *zero_rows);
mn_status mn__cuda_affine_train(mn_backend *b, const mn_tensor *x,
                                mn_affine_params *out);
mn_status mn__cuda_quantize(mn_backend *b, const mn_tensor *x,
                            mn_quant_kind kind, const mn_affine_params *affine,
                            mn_tensor *codes, float *scales);
mn_status mn__cuda_dequantize(mn_backend *b, const mn_tensor *codes,
                              mn_quant_kind kind, const float *scales,
                              const mn_affine_params *affine, mn_tensor *y);
mn_status mn__cuda_pca_fit(mn_backend *b, const mn_tensor *x, int64_t k,
                           mn_pca_model *out);
mn_status mn__cuda_pca_transform(mn_backend *b, const mn_tensor *x,
                                 const mn_pca_model *m, int whiten,
                                 mn_tensor *y);
mn_status mn__cuda_similarity(mn_backend *b, const mn_tensor *q,
                              const mn_vecblock *db, mn_metric metric,
                              mn_tensor *out);
mn_status mn__cuda_search(mn_backend *b, const mn_tensor *q,
                          const mn_vecblock *db, mn_metric metric, int64_t k,
                          int64_t id_base, float *scores, int64_t *ids);
mn_status mn__cuda_search_many(mn_backend *b, const mn_tensor *q,
                               mn_search_block *blocks, int64_t nblocks,
                               mn_metric metric);
mn_status mn__cuda_similarity_many(mn_backend *b, const mn_tensor *q,
                                   const mn_vecblock *dbs, int64_t nblocks,
                                   mn_metric metric, mn_tensor *out);

/* One-time kernel attribute setup (dynamic shared memory opt-in). */
mn_status mn__cuda_search_setup(mnc_backend *cb);

#endif /* MNEMO_CUDA_INTERNAL_CUH */
