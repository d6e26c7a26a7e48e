/*
 * test_cuda_emu_async.cu - the host emulator's streams (tests/backends/
 * cuda/emu): that it runs stream work asynchronously, in CUDA's order, so
 * that a missing synchronisation in the plugin shows up as a wrong result.
 * Built only with MNEMO_CUDA_EMU=ON: cu2cpp.py rewrites this file like the
 * plugin's sources and it links the emulated runtime directly.
 *
 * Deterministic, not timing-dependent: a stream is held by a host function
 * (cudaLaunchHostFunc) that blocks until the test opens its gate, so work
 * queued behind it has certainly not run when the test looks. Where the
 * call under test must itself wait (a synchronous copy, cudaFree), a
 * helper thread opens the gate later; the result must then be complete
 * however late that is. Plain CUDA semantics throughout: on a GPU the
 * same sequences give the same answers.
 *
 * Skipped (77) with MNEMO_EMU_SYNC=1, where nothing runs behind the host.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
extern "C" {
#include <cmocka.h>
}

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#define CU(call)                                                               \
  do {                                                                         \
    cudaError_t e_ = (call);                                                   \
    if (e_ != cudaSuccess)                                                     \
      fail_msg("%s -> %s", #call, cudaGetErrorName(e_));                       \
  } while (0)

constexpr int N = 1000; /* ints per buffer: several blocks of 128 */

__global__ void fill_kernel(int *p, int n, int v) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += gridDim.x * blockDim.x)
    p[i] = v;
}

__global__ void copy_kernel(const int *src, int *dst, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += gridDim.x * blockDim.x)
    dst[i] = src[i];
}

/* Lanes 0-15 in a ballot, 16-31 in a syncwarp: a divergent collective. */
__global__ void divergent_kernel(int *p) {
  unsigned b = 0;
  if (threadIdx.x < 16)
    b = __ballot_sync(0xffffffffu, 1);
  else
    __syncwarp();
  p[threadIdx.x] = (int)b;
}

/* ---------------------------------------------------------------------------
 * A gate: a host function that holds its stream until opened.
 * ------------------------------------------------------------------------- */
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
};

static void gate_wait(void *p) {
  Gate *g = (Gate *)p;
  std::unique_lock<std::mutex> l(g->mu);
  g->cv.wait(l, [&] { return g->open; });
}

static void gate_open(Gate *g) {
  {
    std::lock_guard<std::mutex> l(g->mu);
    g->open = true;
  }
  g->cv.notify_all();
}

static void hold(cudaStream_t s, Gate *g) {
  CU(cudaLaunchHostFunc(s, gate_wait, g));
}

/* Opens the gate from another thread after a while. */
struct LateOpener {
  std::thread t;
  explicit LateOpener(Gate *g) {
    t = std::thread([g] {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      gate_open(g);
    });
  }
  ~LateOpener() {
    t.join();
  }
};

static void fill(cudaStream_t s, int *d, int v) {
  fill_kernel<<<4, 128, 0, s>>>(d, N, v);
  CU(cudaGetLastError());
}

/* Device buffer set to v, synchronously. */
static int *dev_ints(int v) {
  int *d = nullptr;
  CU(cudaMalloc((void **)&d, N * sizeof(int)));
  fill(nullptr, d, v);
  CU(cudaStreamSynchronize(nullptr));
  return d;
}

static void expect_all(const int *h, int v, const char *what) {
  for (int i = 0; i < N; i++)
    if (h[i] != v)
      fail_msg("%s: element %d is %d, expected %d", what, i, h[i], v);
}

static cudaStream_t nonblocking(void) {
  cudaStream_t s;
  CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}

/* ---------------------------------------------------------------------------
 * (a) a kernel's result read on the host without synchronising is stale
 * ------------------------------------------------------------------------- */
static void test_host_read_needs_sync(void **state) {
  (void)state;
  cudaStream_t s = nonblocking();
  int *d = dev_ints(1), *h = nullptr;
  CU(cudaMallocHost((void **)&h, N * sizeof(int)));
  for (int i = 0; i < N; i++)
    h[i] = -5;
  Gate g;
  hold(s, &g);
  fill(s, d, 7);
  CU(cudaMemcpyAsync(h, d, N * sizeof(int), cudaMemcpyDeviceToHost, s));
  /* the host looks before synchronising: nothing has arrived */
  assert_int_equal(cudaStreamQuery(s), cudaErrorNotReady);
  expect_all(h, -5, "pinned copy read before the stream sync");
  gate_open(&g);
  CU(cudaStreamSynchronize(s));
  expect_all(h, 7, "pinned copy after the stream sync");

  /* a copy into pageable memory waits for the stream by itself */
  int *pageable = (int *)malloc(N * sizeof(int));
  assert_non_null(pageable);
  Gate g2;
  hold(s, &g2);
  fill(s, d, 8);
  {
    LateOpener opener(&g2);
    CU(cudaMemcpyAsync(pageable, d, N * sizeof(int), cudaMemcpyDeviceToHost,
                       s));
    expect_all(pageable, 8, "pageable copy, on return");
  }
  free(pageable);
  CU(cudaFreeHost(h));
  CU(cudaFree(d));
  CU(cudaStreamDestroy(s));
}

/* ---------------------------------------------------------------------------
 * (b) a consumer on a second stream without cudaStreamWaitEvent reads
 * stale data; (c) with the wait it reads the producer's
 * ------------------------------------------------------------------------- */
static void test_second_stream_needs_wait(void **state) {
  (void)state;
  cudaStream_t prod = nonblocking(), cons = nonblocking();
  cudaEvent_t ev;
  CU(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  int *src = dev_ints(1), *dst = dev_ints(0);
  int h[N];

  /* (b) the event is recorded, but the consumer does not wait for it */
  Gate g;
  hold(prod, &g);
  fill(prod, src, 7);
  CU(cudaEventRecord(ev, prod));
  copy_kernel<<<4, 128, 0, cons>>>(src, dst, N);
  CU(cudaStreamSynchronize(cons));
  CU(cudaMemcpyAsync(h, dst, sizeof h, cudaMemcpyDeviceToHost, cons));
  expect_all(h, 1, "consumer without the wait");
  assert_int_equal(cudaEventQuery(ev), cudaErrorNotReady);
  gate_open(&g);
  CU(cudaStreamSynchronize(prod));
  assert_int_equal(cudaEventQuery(ev), cudaSuccess);

  /* (c) with the wait: the consumer is held until the producer is done */
  Gate g2;
  hold(prod, &g2);
  fill(prod, src, 9);
  CU(cudaEventRecord(ev, prod));
  CU(cudaStreamWaitEvent(cons, ev, 0));
  copy_kernel<<<4, 128, 0, cons>>>(src, dst, N);
  assert_int_equal(cudaStreamQuery(cons), cudaErrorNotReady);
  gate_open(&g2);
  CU(cudaStreamSynchronize(cons));
  CU(cudaMemcpyAsync(h, dst, sizeof h, cudaMemcpyDeviceToHost, cons));
  expect_all(h, 9, "consumer with the wait");

  /* the wait is for the record made before it, not a later one */
  Gate g3;
  CU(cudaEventRecord(ev, prod)); /* prod is idle: complete at once */
  CU(cudaStreamWaitEvent(cons, ev, 0));
  hold(prod, &g3);
  fill(prod, src, 11);
  CU(cudaEventRecord(ev, prod));
  copy_kernel<<<4, 128, 0, cons>>>(src, dst, N);
  CU(cudaStreamSynchronize(cons));
  CU(cudaMemcpyAsync(h, dst, sizeof h, cudaMemcpyDeviceToHost, cons));
  expect_all(h, 9, "wait for an earlier record");
  gate_open(&g3);
  CU(cudaDeviceSynchronize());
  assert_int_equal(cudaStreamQuery(prod), cudaSuccess);

  CU(cudaEventDestroy(ev));
  CU(cudaFree(src));
  CU(cudaFree(dst));
  CU(cudaStreamDestroy(prod));
  CU(cudaStreamDestroy(cons));
}

/* ---------------------------------------------------------------------------
 * cudaMemcpy runs on the legacy stream: it does not wait for non-blocking
 * streams, it does wait for blocking ones
 * ------------------------------------------------------------------------- */
static void test_memcpy_and_nonblocking_streams(void **state) {
  (void)state;
  int *d = dev_ints(1);
  int h[N];
  cudaStream_t nb = nonblocking();
  Gate g;
  hold(nb, &g);
  fill(nb, d, 7);
  CU(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
  expect_all(h, 1, "cudaMemcpy behind a non-blocking stream");
  gate_open(&g);
  CU(cudaStreamSynchronize(nb));
  CU(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
  expect_all(h, 7, "cudaMemcpy after the stream sync");

  cudaStream_t bl;
  CU(cudaStreamCreate(&bl));
  Gate g2;
  hold(bl, &g2);
  fill(bl, d, 9);
  {
    LateOpener opener(&g2);
    CU(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    expect_all(h, 9, "cudaMemcpy behind a blocking stream");
  }
  CU(cudaStreamDestroy(bl));
  CU(cudaStreamDestroy(nb));
  CU(cudaFree(d));
}

/* ---------------------------------------------------------------------------
 * Host-to-device copies: pageable sources are taken at the call, pinned
 * ones when the copy runs
 * ------------------------------------------------------------------------- */
static void test_h2d_source_timing(void **state) {
  (void)state;
  cudaStream_t s = nonblocking();
  int *d = dev_ints(0), *pinned = nullptr;
  CU(cudaMallocHost((void **)&pinned, N * sizeof(int)));
  int *pageable = (int *)malloc(N * sizeof(int));
  assert_non_null(pageable);
  int h[N];

  for (int i = 0; i < N; i++)
    pageable[i] = 5;
  Gate g;
  hold(s, &g);
  CU(cudaMemcpyAsync(d, pageable, N * sizeof(int), cudaMemcpyHostToDevice, s));
  for (int i = 0; i < N; i++) /* the host may reuse it at once */
    pageable[i] = 6;
  gate_open(&g);
  CU(cudaStreamSynchronize(s));
  CU(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
  expect_all(h, 5, "pageable source");

  for (int i = 0; i < N; i++)
    pinned[i] = 5;
  Gate g2;
  hold(s, &g2);
  CU(cudaMemcpyAsync(d, pinned, N * sizeof(int), cudaMemcpyHostToDevice, s));
  for (int i = 0; i < N; i++) /* too early: the copy has not read it */
    pinned[i] = 6;
  gate_open(&g2);
  CU(cudaStreamSynchronize(s));
  CU(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
  expect_all(h, 6, "pinned source rewritten before the copy ran");

  free(pageable);
  CU(cudaFreeHost(pinned));
  CU(cudaFree(d));
  CU(cudaStreamDestroy(s));
}

/* ---------------------------------------------------------------------------
 * cudaFree waits for the device; new device memory is poisoned; cuBLAS
 * runs on its handle's stream
 * ------------------------------------------------------------------------- */
static void test_free_poison_blas(void **state) {
  (void)state;
  cudaStream_t s = nonblocking();
  int *d = dev_ints(0), *other = nullptr;
  CU(cudaMalloc((void **)&other, 64));
  const char *pz = getenv("MNEMO_EMU_POISON");
  if (!pz || !*pz) { /* the default poison: 0x7F bytes */
    const unsigned char *b = (const unsigned char *)other;
    for (int i = 0; i < 64; i++)
      assert_int_equal(b[i], 0x7F);
  }
  Gate g;
  hold(s, &g);
  fill(s, d, 3);
  {
    LateOpener opener(&g);
    CU(cudaFree(other)); /* synchronises the device */
    assert_int_equal(cudaStreamQuery(s), cudaSuccess);
  }

  /* C (2x2) = A B, column-major, queued behind a gate */
  float *m = nullptr;
  CU(cudaMalloc((void **)&m, 12 * sizeof(float)));
  const float host_ab[8] = {1, 2, 3, 4, 5, 6, 7, 8}; /* A | B */
  CU(cudaMemcpy(m, host_ab, sizeof host_ab, cudaMemcpyHostToDevice));
  /* from pageable memory cudaMemcpy may return before the copy lands, and
   * s, non-blocking, would not wait for it */
  CU(cudaDeviceSynchronize());
  cublasHandle_t blas;
  assert_int_equal(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
  assert_int_equal(cublasSetStream(blas, s), CUBLAS_STATUS_SUCCESS);
  Gate g2;
  hold(s, &g2);
  float one = 1.f, zero = 0.f;
  assert_int_equal(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, m,
                               2, m + 4, 2, &zero, m + 8, 2),
                   CUBLAS_STATUS_SUCCESS);
  one = 100.f; /* scalars are read at the call */
  float c[4];
  CU(cudaMemcpy(c, m + 8, sizeof c, cudaMemcpyDeviceToHost));
  float poison;
  memset(&poison, 0x7F, sizeof poison);
  if (!pz || !*pz)
    for (int i = 0; i < 4; i++)
      assert_true(c[i] == poison);
  gate_open(&g2);
  CU(cudaStreamSynchronize(s));
  CU(cudaMemcpy(c, m + 8, sizeof c, cudaMemcpyDeviceToHost));
  /* A = [1 3; 2 4], B = [5 7; 6 8]: AB = [23 31; 34 46] */
  const float want[4] = {23, 34, 31, 46};
  for (int i = 0; i < 4; i++)
    assert_true(c[i] == want[i]);
  cublasDestroy(blas);
  CU(cudaFree(m));
  CU(cudaFree(d));
  CU(cudaStreamDestroy(s));
}

/* ---------------------------------------------------------------------------
 * A divergent warp collective in a queued kernel still aborts with a
 * message naming the kernel (in a child: this program run again)
 * ------------------------------------------------------------------------- */
static int divergent_child(void) {
  cudaStream_t s;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  int *d = nullptr;
  cudaMalloc((void **)&d, 32 * sizeof(int));
  divergent_kernel<<<1, 32, 0, s>>>(d);
  cudaStreamSynchronize(s);
  return 0; /* not reached: the emulator aborts */
}

static void test_deadlock_report(void **state) {
  (void)state;
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) { /* exec at once: the stream threads are not copied */
    dup2(fds[1], 2);
    close(fds[0]);
    execl("/proc/self/exe", "test_cuda_emu_async", "--divergent-child",
          (char *)nullptr);
    _exit(127);
  }
  close(fds[1]);
  char buf[4096];
  size_t len = 0;
  ssize_t r;
  while (len < sizeof buf - 1 &&
         (r = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0)
    len += (size_t)r;
  buf[len] = 0;
  close(fds[0]);
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
  if (!strstr(buf, "lanes of one warp in different collectives") ||
      !strstr(buf, "kernel divergent_kernel"))
    fail_msg("unexpected report: %s", buf);
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "--divergent-child"))
    return divergent_child();
  const char *sync = getenv("MNEMO_EMU_SYNC");
  if (sync && sync[0] == '1') {
    printf("MNEMO_EMU_SYNC=1: streams are synchronous, nothing to test\n");
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_host_read_needs_sync),
      cmocka_unit_test(test_second_stream_needs_wait),
      cmocka_unit_test(test_memcpy_and_nonblocking_streams),
      cmocka_unit_test(test_h2d_source_timing),
      cmocka_unit_test(test_free_poison_blas),
      cmocka_unit_test(test_deadlock_report),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
