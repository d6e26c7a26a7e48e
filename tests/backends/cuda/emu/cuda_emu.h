/*
 * cuda_emu.h - runs the CUDA plugin's kernels on the CPU, for checking the
 * plugin on machines without a GPU. Included (g++ -include) in front of
 * each plugin source after cu2cpp.py has rewritten its kernel launches.
 *
 * Every GPU thread is a fiber; a block's fibers run on one OS thread,
 * switched at each warp collective (shuffle, ballot, syncwarp) and block
 * barrier, which complete only when every live thread of the warp / block
 * has arrived, in the same kind of collective: a missing or divergent
 * collective is reported as a deadlock instead of hanging. Device memory is
 * host memory (so ASan sees out-of-bounds kernel accesses), cuBLAS and
 * cuSOLVER are plain loops and LAPACKE. Shared memory is filled with 0xFF
 * bytes (NaN, -1) at each block start.
 *
 * Streams are asynchronous, as on a GPU: each stream is an in-order queue
 * run by a thread of its own, and everything enqueued on it (kernels,
 * cudaMemcpyAsync, cudaMemsetAsync, event records, cudaStreamWaitEvent,
 * host functions, cuBLAS / cuSOLVER calls on the handle's stream) runs
 * there, later. The host waits only where CUDA does: stream, event and
 * device synchronisation; cudaMemcpyAsync to pageable memory (a pageable
 * source is copied at the call, pinned memory is read when the copy runs);
 * cudaMemcpy, on the legacy stream, which waits for blocking streams but
 * not for cudaStreamNonBlocking ones; cudaFree / cudaFreeHost (the whole
 * device). So a missing synchronisation in the plugin shows as a wrong
 * result: the host or a second stream reads work that has not run yet, or
 * a stream overwrites a buffer a sibling stream still reads. Knobs:
 *   MNEMO_EMU_SYNC=1            the old mode: every op runs at the call,
 *                               on the calling thread (for debugging)
 *   MNEMO_EMU_ASYNC_DELAY_US=D  each op waits 0..D us first (default 200)
 *   MNEMO_EMU_LAZY=P            P% of ops (default 50) wait until the host
 *                               thread that queued them waits for (or
 *                               polls) stream work, at most 100 ms: the
 *                               host has done all it would do too early
 *   MNEMO_EMU_YIELD=P           before P% of ops (default 50) a stream
 *                               lets the other streams fed by the same
 *                               host thread run their ready work first (at
 *                               most 200 ms): a reader lags its writer
 *   MNEMO_EMU_SEED=S            what is drawn for the above (default 1)
 *   MNEMO_EMU_POISON=B|none     fill of new device and pinned memory
 *                               (default 0x7F: float 3.4e38, half NaN)
 *   MNEMO_EMU_TRACE=1           each op's start and end to stderr, and
 *                               each cudaPointerGetAttributes
 * Misuse aborts with a message: a destroyed or unknown stream or event,
 * a bad launch configuration, the per-thread default stream.
 *
 * What it cannot show: timing; races between blocks of one kernel (blocks
 * run one after another); memory-model effects inside a kernel (fences,
 * the order in which other blocks see writes); a hazard that needs an
 * interleaving the draws of a run do not produce (run several seeds;
 * streams fed by different host threads are only shifted by the delays);
 * memory the plugin's own pool hands out again (only cudaMalloc'd memory
 * is poisoned); whether cuBLAS / cuSOLVER synchronise internally (here they
 * never do; syevdx's eigenpair count, host memory, is set at the call); the
 * device's exact rounding (the host does not contract a*b+c into an FMA
 * where nvcc would).
 */
#ifndef MNEMO_CUDA_EMU_H
#define MNEMO_CUDA_EMU_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>

#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __shared__
#define __shared__ static thread_local

namespace mnc_emu {

struct ThreadPos {
  dim3 tidx, bidx, bdim, gdim;
};
extern thread_local ThreadPos pos;

unsigned char *dyn_smem();
uint64_t warp_op(int op, uint64_t val, int arg);
void block_barrier();
/* Queue a kernel on stream s (see cuda_emu.cpp); name is for messages. */
void launch(const char *name, dim3 grid, dim3 block, size_t smem,
            cudaStream_t s, std::function<void()> fn);

/* A kernel call with its arguments evaluated and copied now, as a launch
 * does: the closure runs later, on the stream's thread. */
template <class F, class... A> std::function<void()> bind_args(F f, A... a) {
  return [=]() { f(a...); };
}

enum { OP_SHFL_XOR = 1, OP_BALLOT = 2, OP_SYNCWARP = 3 };

template <class T> inline uint64_t bits_of(T v) {
  uint64_t u = 0;
  memcpy(&u, &v, sizeof v);
  return u;
}
template <class T> inline T from_bits(uint64_t u) {
  T v;
  memcpy(&v, &u, sizeof v);
  return v;
}

} // namespace mnc_emu

#define threadIdx (mnc_emu::pos.tidx)
#define blockIdx (mnc_emu::pos.bidx)
#define blockDim (mnc_emu::pos.bdim)
#define gridDim (mnc_emu::pos.gdim)

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  (void)mask;
  (void)width;
  return mnc_emu::from_bits<T>(
      mnc_emu::warp_op(mnc_emu::OP_SHFL_XOR, mnc_emu::bits_of(v), lane_mask));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  (void)mask;
  return (unsigned)mnc_emu::warp_op(mnc_emu::OP_BALLOT, pred ? 1u : 0u, 0);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  (void)mask;
  mnc_emu::warp_op(mnc_emu::OP_SYNCWARP, 0, 0);
}
inline void __syncthreads() {
  mnc_emu::block_barrier();
}

inline int __popc(unsigned v) {
  return __builtin_popcount(v);
}
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; i++)
    c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
  return c;
}
inline float __fdiv_rn(float a, float b) {
  return a / b;
}
inline float __fmul_rn(float a, float b) {
  return a * b;
}
inline float __fadd_rn(float a, float b) {
  return a + b;
}
inline float __uint_as_float(unsigned u) {
  return mnc_emu::from_bits<float>(u);
}
inline double cospi(double x) {
  return cos(3.141592653589793 * x);
}

/* Vector loads must be aligned on the device: check it here. */
void mnc_emu_check_align(const void *p, size_t a, const char *what);
template <class T> inline T __ldg(const T *p) {
  mnc_emu_check_align(p, sizeof(T) >= 16 ? 16 : sizeof(T), "__ldg");
  return *p;
}
template <class T> inline T __ldcs(const T *p) {
  mnc_emu_check_align(p, sizeof(T) >= 16 ? 16 : sizeof(T), "__ldcs");
  return *p;
}
template <class T> inline void __stcs(T *p, T v) {
  mnc_emu_check_align(p, sizeof(T) >= 16 ? 16 : sizeof(T), "__stcs");
  *p = v;
}
/* Cooperative scheduling: a plain add is atomic here. */
inline unsigned long long atomicAdd(unsigned long long *p,
                                    unsigned long long v) {
  unsigned long long o = *p;
  *p = o + v;
  return o;
}

#endif /* MNEMO_CUDA_EMU_H */
