/*
 * cuda_emu.cpp - the emulator's scheduler and the host versions of the
 * CUDA runtime, cuBLAS and cuSOLVER calls the plugin makes (see
 * cuda_emu.h for what it is and is not).
 *
 * DESIGN: a launch runs its blocks one after another on the calling OS
 * thread; a block's threads are fibers with their own stacks, switched by
 * a six-register context switch (x86-64). The scheduler runs every
 * runnable fiber until it blocks in a collective or ends, then completes
 * the collectives whose whole warp (or block) has arrived. All scheduler
 * state is thread_local, so several OS threads may launch at once, as the
 * plugin's worker threads do.
 */
#include "cuda_emu.h"

#include <lapacke.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <map>
#include <mutex>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define MNC_EMU_ASAN 1
#else
#define MNC_EMU_ASAN 0
#endif

extern "C" void mnc_emu_switch(void **save_sp, void *load_sp);
asm(R"(
.pushsection .text
.globl mnc_emu_switch
.type mnc_emu_switch,@function
mnc_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size mnc_emu_switch, .-mnc_emu_switch
.popsection
)");

void mnc_emu_check_align(const void *p, size_t a, const char *what) {
  if ((uintptr_t)p % a != 0) {
    fprintf(stderr, "cuda_emu: %s of %zu bytes at misaligned %p\n", what, a,
            p);
    abort();
  }
}

namespace mnc_emu {

thread_local ThreadPos pos;

namespace {

enum { RUNNABLE = 0, WAITING = 1, DONE = 2 };
enum { OP_BARRIER = 100 };
constexpr size_t STACK = 256 << 10;

struct Fiber {
  void *sp = nullptr;
  char *stack = nullptr;
  unsigned tid = 0;
  dim3 tidx;
  int state = RUNNABLE;
  int op = 0;
  uint64_t val = 0;
  int arg = 0;
  uint64_t result = 0;
  void *fake = nullptr;
};

struct Sched {
  std::vector<Fiber> f;
  void *sched_sp = nullptr;
  Fiber *cur = nullptr;
  const std::function<void()> *fn = nullptr;
  std::vector<unsigned char> smem;
  dim3 bidx, bdim, gdim;
  const void *sched_bottom = nullptr;
  size_t sched_size = 0;
  void *sched_fake = nullptr;
};

thread_local Sched *S = nullptr;

void to_scheduler(bool exiting) {
  Fiber *f = S->cur;
#if MNC_EMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f->fake,
                                 S->sched_bottom, S->sched_size);
#else
  (void)exiting;
#endif
  mnc_emu_switch(&f->sp, S->sched_sp);
#if MNC_EMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake, nullptr, nullptr);
#endif
  pos.tidx = f->tidx;
}

void fiber_entry() {
  Fiber *f = S->cur;
#if MNC_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &S->sched_bottom, &S->sched_size);
#endif
  pos.tidx = f->tidx;
  (*S->fn)();
  f->state = DONE;
  to_scheduler(true);
  abort(); /* never resumed */
}

void run_fiber(Fiber *f) {
  S->cur = f;
  pos.tidx = f->tidx;
  pos.bidx = S->bidx;
  pos.bdim = S->bdim;
  pos.gdim = S->gdim;
#if MNC_EMU_ASAN
  __sanitizer_start_switch_fiber(&S->sched_fake, f->stack, STACK);
#endif
  mnc_emu_switch(&S->sched_sp, f->sp);
#if MNC_EMU_ASAN
  __sanitizer_finish_switch_fiber(S->sched_fake, nullptr, nullptr);
#endif
  S->cur = nullptr;
}

void fiber_init(Fiber *f) {
  /* [r15 r14 r13 r12 rbx rbp] ret=fiber_entry, fake return 0 above it */
  uintptr_t top = ((uintptr_t)(f->stack + STACK)) & ~(uintptr_t)15;
  void **sp = (void **)top;
  *--sp = nullptr;
  *--sp = (void *)&fiber_entry;
  for (int i = 0; i < 6; i++)
    *--sp = nullptr;
  f->sp = sp;
  f->state = RUNNABLE;
  f->op = 0;
}

[[noreturn]] void deadlock(const char *why) {
  fprintf(stderr, "cuda_emu: %s in block (%u,%u,%u)\n", why, S->bidx.x,
          S->bidx.y, S->bidx.z);
  for (auto &f : S->f)
    if (f.state != DONE)
      fprintf(stderr, "  thread %u: state %d op %d\n", f.tid, f.state, f.op);
  abort();
}

/* Complete every collective that can complete; true if any did. */
bool resolve() {
  bool any = false;
  const unsigned n = (unsigned)S->f.size();
  for (unsigned w0 = 0; w0 < n; w0 += 32) {
    unsigned w1 = w0 + 32 < n ? w0 + 32 : n;
    int waiting = 0, done = 0, op = -1;
    bool same = true;
    for (unsigned i = w0; i < w1; i++) {
      Fiber &f = S->f[i];
      if (f.state == DONE) {
        done++;
      } else if (f.state == WAITING && f.op != OP_BARRIER) {
        waiting++;
        if (op < 0)
          op = f.op;
        else if (op != f.op)
          same = false;
      }
    }
    if (waiting == 0 || waiting + done != (int)(w1 - w0))
      continue;
    if (!same)
      deadlock("lanes of one warp in different collectives");
    if (done)
      deadlock("warp collective with exited lanes");
    uint64_t ballot = 0;
    for (unsigned i = w0; i < w1; i++)
      if (S->f[i].val)
        ballot |= 1ull << (i - w0);
    for (unsigned i = w0; i < w1; i++) {
      Fiber &f = S->f[i];
      if (op == OP_SHFL_XOR) {
        unsigned src = w0 + ((i - w0) ^ (unsigned)f.arg);
        f.result = src < w1 ? S->f[src].val : f.val;
      } else if (op == OP_BALLOT) {
        f.result = ballot;
      }
      f.state = RUNNABLE;
    }
    any = true;
  }
  int at_barrier = 0, live = 0;
  for (auto &f : S->f)
    if (f.state != DONE) {
      live++;
      if (f.state == WAITING && f.op == OP_BARRIER)
        at_barrier++;
    }
  if (live && at_barrier == live) {
    for (auto &f : S->f)
      if (f.state == WAITING)
        f.state = RUNNABLE;
    any = true;
  }
  return any;
}

} // namespace

unsigned char *dyn_smem() { return S->smem.data(); }

uint64_t warp_op(int op, uint64_t val, int arg) {
  Fiber *f = S->cur;
  f->op = op;
  f->val = val;
  f->arg = arg;
  f->state = WAITING;
  to_scheduler(false);
  return f->result;
}

void block_barrier() {
  Fiber *f = S->cur;
  f->op = OP_BARRIER;
  f->state = WAITING;
  to_scheduler(false);
}

void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t s,
            const std::function<void()> &fn) {
  (void)s;
  Sched sched;
  Sched *saved = S;
  S = &sched;
  unsigned nt = block.x * block.y * block.z;
  if (nt == 0 || nt > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    fprintf(stderr, "cuda_emu: bad launch grid (%u,%u,%u) block (%u,%u,%u)\n",
            grid.x, grid.y, grid.z, block.x, block.y, block.z);
    abort();
  }
  if (smem > (227u << 10)) {
    fprintf(stderr, "cuda_emu: %zu bytes of dynamic shared memory\n", smem);
    abort();
  }
  sched.f.resize(nt);
  for (unsigned i = 0; i < nt; i++) {
    Fiber &f = sched.f[i];
    f.stack = (char *)malloc(STACK);
    f.tid = i;
    f.tidx = dim3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
  }
  sched.smem.resize(smem ? smem : 1);
  sched.fn = &fn;
  sched.bdim = block;
  sched.gdim = grid;
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        sched.bidx = dim3(bx, by, bz);
        memset(sched.smem.data(), 0xFF, sched.smem.size());
        for (auto &f : sched.f)
          fiber_init(&f);
        unsigned live = nt;
        while (live) {
          bool ran = false;
          for (auto &f : sched.f)
            if (f.state == RUNNABLE) {
              run_fiber(&f);
              ran = true;
            }
          live = 0;
          for (auto &f : sched.f)
            if (f.state != DONE)
              live++;
          if (live && !resolve() && !ran)
            deadlock("deadlock");
        }
      }
  for (auto &f : sched.f)
    free(f.stack);
  S = saved;
}

} // namespace mnc_emu

/* ---------------------------------------------------------------------------
 * CUDA runtime
 * ------------------------------------------------------------------------- */
namespace {
std::mutex mem_mu;
std::map<uintptr_t, std::pair<size_t, int>> blocks; /* kind 1 dev, 2 pinned */
char dummy_handles[64];

int kind_of(const void *p) {
  std::lock_guard<std::mutex> g(mem_mu);
  auto it = blocks.upper_bound((uintptr_t)p);
  if (it == blocks.begin())
    return 0;
  --it;
  if ((uintptr_t)p < it->first + it->second.first)
    return it->second.second;
  return 0;
}

void *reg(size_t n, int kind) {
  void *p = nullptr;
  if (posix_memalign(&p, 256, n ? n : 1) != 0) /* exact: ASan sees past it */
    return nullptr;
  std::lock_guard<std::mutex> g(mem_mu);
  blocks[(uintptr_t)p] = {n ? n : 1, kind};
  return p;
}

void unreg(void *p) {
  if (!p)
    return;
  std::lock_guard<std::mutex> g(mem_mu);
  blocks.erase((uintptr_t)p);
  free(p);
}
} // namespace

extern "C" {

cudaError_t cudaGetDeviceCount(int *n) {
  *n = getenv("MNEMO_EMU_NO_DEVICE") ? 0 : 1;
  return *n ? cudaSuccess : cudaErrorNoDevice;
}

cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int dev) {
  (void)dev;
  *v = a == cudaDevAttrComputeCapabilityMajor ? 9 : 0;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int dev) {
  (void)dev;
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "CUDA emulator (host)");
  /* few SMs keep emulated grids small; MNEMO_EMU_SMS=132 exercises the
   * paths that depend on a large device (split selects) */
  const char *sms = getenv("MNEMO_EMU_SMS");
  p->multiProcessorCount = sms && atoi(sms) > 0 ? atoi(sms) : 4;
  p->major = 9;
  p->minor = 0;
  p->sharedMemPerBlockOptin = 227u << 10;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int d) {
  (void)d;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t n) {
  *p = reg(n, 1);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFree(void *p) {
  unreg(p);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t n) {
  *p = reg(n, 2);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFreeHost(void *p) {
  unreg(p);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *f, size_t *t) {
  *t = (size_t)16 << 30;
  *f = (size_t)15 << 30;
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *a,
                                     const void *p) {
  memset(a, 0, sizeof *a);
  int k = kind_of(p);
  a->type = k == 1 ? cudaMemoryTypeDevice
                   : k == 2 ? cudaMemoryTypeHost : cudaMemoryTypeUnregistered;
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n,
                            enum cudaMemcpyKind k, cudaStream_t st) {
  (void)k;
  (void)st;
  memmove(d, s, n);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t st) {
  (void)st;
  memset(d, v, n);
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
  (void)flags;
  *s = (cudaStream_t)(dummy_handles + 1);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  (void)s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  (void)s;
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e,
                                unsigned flags) {
  (void)s;
  (void)e;
  (void)flags;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
  (void)flags;
  *e = (cudaEvent_t)(dummy_handles + 2);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  (void)e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  (void)e;
  (void)s;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  (void)e;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaEventCreate(cudaEvent_t *e) {
  *e = (cudaEvent_t)(dummy_handles + 5);
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
  (void)a;
  (void)b;
  *ms = 1.0f; /* no device clock here */
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void *d, const void *s, size_t n,
                       enum cudaMemcpyKind k) {
  (void)k;
  memmove(d, s, n);
  return cudaSuccess;
}
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char *cudaGetErrorName(cudaError_t e) {
  return e == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated";
}
const char *cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "emulated error";
}
cudaError_t cudaFuncSetAttribute(const void *f, enum cudaFuncAttribute a,
                                 int v) {
  (void)f;
  (void)a;
  (void)v;
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n,
                                                          const void *f,
                                                          int bs, size_t sm) {
  (void)f;
  (void)bs;
  (void)sm;
  *n = 2;
  return cudaSuccess;
}

/* ---------------------------------------------------------------------------
 * cuBLAS (column-major, the few calls the plugin makes)
 * ------------------------------------------------------------------------- */
cublasStatus_t cublasCreate_v2(cublasHandle_t *h) {
  *h = (cublasHandle_t)(dummy_handles + 3);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  /* also the bench's own handle */
  (void)h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
  (void)h;
  (void)s;
  return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "success" : "emulated failure";
}

static double load(const void *p, cudaDataType t, size_t i) {
  if (t == CUDA_R_16F)
    return __half2float(((const __half *)p)[i]);
  if (t == CUDA_R_64F)
    return ((const double *)p)[i];
  return ((const float *)p)[i];
}

/* C = alpha op(A) op(B) + beta C, accumulated in double. */
static void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                 int k, double alpha, const void *A, cudaDataType at, int lda,
                 const void *B, cudaDataType bt, int ldb, double beta, void *C,
                 cudaDataType ct, int ldc) {
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      double acc = 0.0;
      for (int l = 0; l < k; l++) {
        double a = ta == CUBLAS_OP_N ? load(A, at, (size_t)l * lda + i)
                                     : load(A, at, (size_t)i * lda + l);
        double b = tb == CUBLAS_OP_N ? load(B, bt, (size_t)j * ldb + l)
                                     : load(B, bt, (size_t)l * ldb + j);
        acc += a * b;
      }
      size_t o = (size_t)j * ldc + i;
      double c = beta != 0.0 ? beta * load(C, ct, o) : 0.0;
      if (ct == CUDA_R_64F)
        ((double *)C)[o] = alpha * acc + c;
      else if (ct == CUDA_R_16F)
        ((__half *)C)[o] = __float2half_rn((float)(alpha * acc + c));
      else
        ((float *)C)[o] = (float)(alpha * acc + c);
    }
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta,
                              cublasOperation_t tb, int m, int n, int k,
                              const float *alpha, const float *A, int lda,
                              const float *B, int ldb, const float *beta,
                              float *C, int ldc) {
  (void)h;
  gemm(ta, tb, m, n, k, *alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, *beta,
       C, CUDA_R_32F, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta,
                            cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb,
                            const void *beta, void *C, cudaDataType ct,
                            int ldc, cublasComputeType_t comp,
                            cublasGemmAlgo_t algo) {
  (void)h;
  (void)comp;
  (void)algo;
  gemm(ta, tb, m, n, k, *(const float *)alpha, A, at, lda, B, bt, ldb,
       *(const float *)beta, C, ct, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDsyrk_v2(cublasHandle_t h, cublasFillMode_t uplo,
                              cublasOperation_t t, int n, int k,
                              const double *alpha, const double *A, int lda,
                              const double *beta, double *C, int ldc) {
  (void)h;
  if (uplo != CUBLAS_FILL_MODE_LOWER || t != CUBLAS_OP_N)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  for (int j = 0; j < n; j++)
    for (int i = j; i < n; i++) {
      double acc = 0.0;
      for (int l = 0; l < k; l++)
        acc += A[(size_t)l * lda + i] * A[(size_t)l * lda + j];
      double *c = C + (size_t)j * ldc + i;
      *c = *alpha * acc + (*beta != 0.0 ? *beta * *c : 0.0);
    }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDsymm_v2(cublasHandle_t h, cublasSideMode_t side,
                              cublasFillMode_t uplo, int m, int n,
                              const double *alpha, const double *A, int lda,
                              const double *B, int ldb, const double *beta,
                              double *C, int ldc) {
  (void)h;
  if (side != CUBLAS_SIDE_LEFT || uplo != CUBLAS_FILL_MODE_LOWER)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      double acc = 0.0;
      for (int l = 0; l < m; l++) {
        double a = i >= l ? A[(size_t)l * lda + i] : A[(size_t)i * lda + l];
        acc += a * B[(size_t)j * ldb + l];
      }
      double *c = C + (size_t)j * ldc + i;
      *c = *alpha * acc + (*beta != 0.0 ? *beta * *c : 0.0);
    }
  return CUBLAS_STATUS_SUCCESS;
}

/* ---------------------------------------------------------------------------
 * cuSOLVER eigensolvers through LAPACKE (double), results in the caller's
 * precision, ascending, vectors in columns.
 * ------------------------------------------------------------------------- */
cusolverStatus_t cusolverDnCreate(cusolverDnHandle_t *h) {
  *h = (cusolverDnHandle_t)(dummy_handles + 4);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnDestroy(cusolverDnHandle_t h) {
  (void)h;
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnSetStream(cusolverDnHandle_t h, cudaStream_t s) {
  (void)h;
  (void)s;
  return CUSOLVER_STATUS_SUCCESS;
}

} /* extern "C" */

/* Lower triangle of a (n x n, lda) -> eigenpairs il..iu (1-based,
 * ascending) into w and the first columns of a. */
template <class T>
static int eig(int n, T *a, int lda, T *w, int il, int iu, int *meig,
               int *info) {
  std::vector<double> m((size_t)n * n), ev(n);
  for (int j = 0; j < n; j++)
    for (int i = 0; i < n; i++)
      m[(size_t)j * n + i] = i >= j ? (double)a[(size_t)j * lda + i]
                                    : (double)a[(size_t)i * lda + j];
  int r = LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'L', n, m.data(), n,
                         ev.data());
  int cnt = iu - il + 1;
  for (int t = 0; t < cnt; t++) {
    int src = il - 1 + t;
    w[t] = (T)ev[src];
    for (int i = 0; i < n; i++)
      a[(size_t)t * lda + i] = (T)m[(size_t)src * n + i];
  }
  if (meig)
    *meig = cnt;
  *info = r;
  return r;
}

extern "C" {

cusolverStatus_t cusolverDnSsyevd_bufferSize(cusolverDnHandle_t h,
                                             cusolverEigMode_t j,
                                             cublasFillMode_t u, int n,
                                             const float *A, int lda,
                                             const float *W, int *lwork) {
  (void)h, (void)j, (void)u, (void)n, (void)A, (void)lda, (void)W;
  *lwork = 1;
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnDsyevd_bufferSize(cusolverDnHandle_t h,
                                             cusolverEigMode_t j,
                                             cublasFillMode_t u, int n,
                                             const double *A, int lda,
                                             const double *W, int *lwork) {
  (void)h, (void)j, (void)u, (void)n, (void)A, (void)lda, (void)W;
  *lwork = 1;
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnSsyevd(cusolverDnHandle_t h, cusolverEigMode_t j,
                                  cublasFillMode_t u, int n, float *A, int lda,
                                  float *W, float *work, int lwork,
                                  int *info) {
  (void)h, (void)j, (void)u, (void)work, (void)lwork;
  eig(n, A, lda, W, 1, n, nullptr, info);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnDsyevd(cusolverDnHandle_t h, cusolverEigMode_t j,
                                  cublasFillMode_t u, int n, double *A,
                                  int lda, double *W, double *work, int lwork,
                                  int *info) {
  (void)h, (void)j, (void)u, (void)work, (void)lwork;
  eig(n, A, lda, W, 1, n, nullptr, info);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnSsyevdx_bufferSize(
    cusolverDnHandle_t h, cusolverEigMode_t j, cusolverEigRange_t r,
    cublasFillMode_t u, int n, const float *A, int lda, float vl, float vu,
    int il, int iu, int *meig, const float *W, int *lwork) {
  (void)h, (void)j, (void)r, (void)u, (void)n, (void)A, (void)lda, (void)vl,
      (void)vu, (void)il, (void)iu, (void)meig, (void)W;
  *lwork = 1;
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnDsyevdx_bufferSize(
    cusolverDnHandle_t h, cusolverEigMode_t j, cusolverEigRange_t r,
    cublasFillMode_t u, int n, const double *A, int lda, double vl,
    double vu, int il, int iu, int *meig, const double *W, int *lwork) {
  (void)h, (void)j, (void)r, (void)u, (void)n, (void)A, (void)lda, (void)vl,
      (void)vu, (void)il, (void)iu, (void)meig, (void)W;
  *lwork = 1;
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnSsyevdx(cusolverDnHandle_t h, cusolverEigMode_t j,
                                   cusolverEigRange_t r, cublasFillMode_t u,
                                   int n, float *A, int lda, float vl,
                                   float vu, int il, int iu, int *meig,
                                   float *W, float *work, int lwork,
                                   int *info) {
  (void)h, (void)j, (void)r, (void)u, (void)vl, (void)vu, (void)work,
      (void)lwork;
  eig(n, A, lda, W, il, iu, meig, info);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnDsyevdx(cusolverDnHandle_t h, cusolverEigMode_t j,
                                   cusolverEigRange_t r, cublasFillMode_t u,
                                   int n, double *A, int lda, double vl,
                                   double vu, int il, int iu, int *meig,
                                   double *W, double *work, int lwork,
                                   int *info) {
  (void)h, (void)j, (void)r, (void)u, (void)vl, (void)vu, (void)work,
      (void)lwork;
  eig(n, A, lda, W, il, iu, meig, info);
  return CUSOLVER_STATUS_SUCCESS;
}

} /* extern "C" */
