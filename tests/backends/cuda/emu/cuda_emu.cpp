/*
 * cuda_emu.cpp - the emulator's scheduler and the host versions of the
 * CUDA runtime, cuBLAS and cuSOLVER calls the plugin makes (see
 * cuda_emu.h for what it is and is not).
 *
 * DESIGN: a launch queues the grid on its stream; the stream's thread runs
 * the blocks one after another; a block's threads are fibers with their
 * own stacks, switched by a six-register context switch (x86-64). The
 * scheduler runs every runnable fiber until it blocks in a collective or
 * ends, then completes the collectives whose whole warp (or block) has
 * arrived. All scheduler state is thread_local, so several stream threads
 * run kernels at once (and `__shared__` is static thread_local). Stream
 * work is numbered per stream; events and cross-stream waits are (stream,
 * number) pairs (see "Streams and events" below).
 */
#include "cuda_emu.h"

#include <lapacke.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
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
    fprintf(stderr, "cuda_emu: %s of %zu bytes at misaligned %p\n", what, a, p);
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
  const char *name = "";
  std::vector<unsigned char> smem;
  dim3 bidx, bdim, gdim;
  const void *sched_bottom = nullptr;
  size_t sched_size = 0;
  void *sched_fake = nullptr;
};

thread_local Sched *S = nullptr;
/* the emulated stream whose thread this is, for messages (-1: none) */
thread_local int cur_stream = -1;

void to_scheduler(bool exiting) {
  Fiber *f = S->cur;
#if MNC_EMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f->fake, S->sched_bottom,
                                 S->sched_size);
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
  fprintf(stderr,
          "cuda_emu: %s in kernel %s, block (%u,%u,%u) of grid (%u,%u,%u), "
          "%u threads, on emulated stream %d\n",
          why, S->name, S->bidx.x, S->bidx.y, S->bidx.z, S->gdim.x, S->gdim.y,
          S->gdim.z, (unsigned)S->f.size(), cur_stream);
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

unsigned char *dyn_smem() {
  return S->smem.data();
}

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

/* Run a whole grid on the calling thread, block after block. */
static void run_grid(const char *name, dim3 grid, dim3 block, size_t smem,
                     const std::function<void()> &fn) {
  Sched sched;
  Sched *saved = S;
  S = &sched;
  unsigned nt = block.x * block.y * block.z;
  sched.f.resize(nt);
  for (unsigned i = 0; i < nt; i++) {
    Fiber &f = sched.f[i];
    f.stack = (char *)malloc(STACK);
    if (!f.stack) {
      fprintf(stderr, "cuda_emu: out of memory for the fibers of %s\n", name);
      abort();
    }
    f.tid = i;
    f.tidx =
        dim3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
  }
  sched.smem.resize(smem ? smem : 1);
  sched.fn = &fn;
  sched.name = name;
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
 * Streams and events
 *
 * Each stream is an in-order queue of closures run by its own thread.
 * Work is numbered per stream (tickets 1, 2, ...): `enq` is the last ticket
 * handed out, `done` the last one finished, so "everything enqueued so far"
 * is the ticket `enq` and an event is a (stream, ticket) pair. An op may
 * carry dependencies (other streams' tickets) that its stream's thread
 * waits for before running it: cudaStreamWaitEvent, and the legacy default
 * stream's implicit synchronisation with blocking streams. A dependency
 * always names work enqueued earlier, so waits cannot form a cycle.
 * ------------------------------------------------------------------------- */
namespace mnc_emu {
namespace {

struct Config {
  bool sync = false;       /* MNEMO_EMU_SYNC=1: run everything at the call */
  unsigned delay_us = 200; /* MNEMO_EMU_ASYNC_DELAY_US: max delay per op */
  uint64_t seed = 1;       /* MNEMO_EMU_SEED */
  int poison = 0x7F;       /* MNEMO_EMU_POISON: byte, or "none" (-1) */
  bool trace = false;      /* MNEMO_EMU_TRACE=1: each op to stderr */
  unsigned yield_pct = 50; /* MNEMO_EMU_YIELD: % of ops that let sibling
                              streams run first */
  unsigned yield_ms = 200; /* the longest such a wait lasts */
  unsigned lazy_pct = 50;  /* MNEMO_EMU_LAZY: % of ops that wait for the
                              host thread to wait */
  unsigned lazy_ms = 100;  /* the longest such a wait lasts */
};

const Config &config() {
  static const Config c = [] {
    Config k;
    const char *e = getenv("MNEMO_EMU_SYNC");
    k.sync = e && e[0] == '1';
    e = getenv("MNEMO_EMU_ASYNC_DELAY_US");
    if (e && *e)
      k.delay_us = (unsigned)strtoul(e, nullptr, 10);
    e = getenv("MNEMO_EMU_SEED");
    if (e && *e)
      k.seed = strtoull(e, nullptr, 0);
    e = getenv("MNEMO_EMU_POISON");
    if (e && *e)
      k.poison = !strcmp(e, "none") ? -1 : (int)(strtol(e, nullptr, 0) & 0xFF);
    e = getenv("MNEMO_EMU_TRACE");
    k.trace = e && e[0] == '1';
    e = getenv("MNEMO_EMU_YIELD");
    if (e && *e)
      k.yield_pct = (unsigned)strtoul(e, nullptr, 10);
    e = getenv("MNEMO_EMU_LAZY");
    if (e && *e)
      k.lazy_pct = (unsigned)strtoul(e, nullptr, 10);
    return k;
  }();
  return c;
}

[[noreturn]] void die(const char *fmt, const void *p, const char *what) {
  fprintf(stderr, "cuda_emu: ");
  fprintf(stderr, fmt, what, p);
  fprintf(stderr, "\n");
  abort();
}

struct Stream;
using StreamP = std::shared_ptr<Stream>;

struct Dep {
  StreamP s;
  uint64_t t = 0;
};

struct Op {
  std::function<void()> fn; /* empty: only waits for deps */
  std::vector<Dep> deps;
  uint64_t ticket = 0;
  const char *what = "";
};

struct Stream {
  int id = 0;
  bool blocking = false; /* synchronises with the legacy stream */
  bool legacy = false;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Op> q;
  uint64_t enq = 0, done = 0;
  bool stop = false;
  uint64_t rng = 0;
  std::thread th;
  /* activity, under act_mu (see yield_to_siblings) */
  int state = 0;       /* S_IDLE ... */
  size_t queued = 0;   /* ops enqueued, not yet taken by the thread */
  std::thread::id fed; /* the host thread that enqueued last */
};

enum { S_IDLE = 0, S_DEPS = 1, S_YIELD = 2, S_RUN = 3 };
std::mutex act_mu; /* innermost lock: nothing is taken while it is held */
std::condition_variable act_cv;
std::vector<Stream *> act_streams;

/* What each host thread is doing, for lag_behind_host (under act_mu). */
struct HostState {
  int waiting = 0;  /* in a CUDA call that waits for stream work */
  uint64_t gen = 0; /* bumped at each such call and each poll */
};
std::map<std::thread::id, HostState> hosts;

void set_state(Stream *s, int state, int dq) {
  {
    std::lock_guard<std::mutex> a(act_mu);
    s->state = state;
    s->queued -= (size_t)dq;
  }
  act_cv.notify_all();
}

uint64_t next_rand(Stream *s) { /* xorshift64: the same draws per seed */
  s->rng ^= s->rng << 13;
  s->rng ^= s->rng >> 7;
  s->rng ^= s->rng << 17;
  return s->rng;
}

/*
 * The host thread that queued work is the likeliest to read it too early
 * (or to reuse a buffer a queued copy has not read yet), and only a stream
 * that lags behind that thread shows it. So some ops (MNEMO_EMU_LAZY
 * percent, drawn from the seed) do not start until the host thread that
 * fed the stream waits for stream work or polls it, or lazy_ms have
 * passed.
 */
void lag_behind_host(Stream *s) {
  const Config &c = config();
  if (c.lazy_pct == 0 || next_rand(s) % 100 >= c.lazy_pct)
    return;
  std::unique_lock<std::mutex> a(act_mu);
  HostState &h = hosts[s->fed];
  const uint64_t g0 = h.gen;
  if (h.waiting > 0)
    return;
  s->state = S_YIELD; /* siblings yielding to it need not wait */
  a.unlock();
  act_cv.notify_all();
  a.lock();
  act_cv.wait_for(a, std::chrono::milliseconds(c.lazy_ms),
                  [&] { return h.waiting > 0 || h.gen != g0; });
}

/*
 * Delays alone show work that is read too early, but rarely a buffer that
 * a stream overwrites while a sibling stream still reads it: the reader
 * must lag by whole kernels. So before some ops (MNEMO_EMU_YIELD percent,
 * drawn from the seed) a stream lets its siblings, the streams the same
 * host thread feeds, run all their ready work first (waiting at most
 * yield_ms). A stream is busy while it runs an op or has ops queued and is
 * not itself waiting for an event or yielding.
 */
void yield_to_siblings(Stream *s) {
  const Config &c = config();
  if (c.yield_pct == 0 || next_rand(s) % 100 >= c.yield_pct)
    return;
  std::unique_lock<std::mutex> a(act_mu);
  auto siblings_busy = [&] {
    for (Stream *o : act_streams)
      if (o != s && o->fed == s->fed &&
          (o->state == S_RUN || (o->state == S_IDLE && o->queued > 0)))
        return true;
    return false;
  };
  if (!siblings_busy())
    return;
  s->state = S_YIELD;
  a.unlock();
  act_cv.notify_all();
  a.lock();
  act_cv.wait_for(a, std::chrono::milliseconds(c.yield_ms),
                  [&] { return !siblings_busy(); });
}

/* The calling thread starts (dw 1) or ends (-1) a wait, or polls (0). */
void host_mark(int dw) {
  if (cur_stream >= 0 || config().sync)
    return; /* a stream's own wait for an event */
  {
    std::lock_guard<std::mutex> a(act_mu);
    HostState &h = hosts[std::this_thread::get_id()];
    h.waiting += dw;
    h.gen++;
  }
  act_cv.notify_all();
}

bool dep_done(const Dep &d) {
  if (!d.s)
    return true;
  std::lock_guard<std::mutex> l(d.s->mu);
  return d.s->done >= d.t;
}

void wait_dep(const Dep &d) {
  if (dep_done(d))
    return;
  host_mark(1);
  {
    std::unique_lock<std::mutex> l(d.s->mu);
    d.s->cv.wait(l, [&] { return d.s->done >= d.t; });
  }
  host_mark(-1);
}

/* A poll (cudaStreamQuery, cudaEventQuery) from the host. */
bool poll_dep(const Dep &d) {
  host_mark(0);
  return dep_done(d);
}

void trace(const Stream *s, const Op &op, const char *what) {
  static const auto t0 = std::chrono::steady_clock::now();
  double ms = std::chrono::duration<double, std::milli>(
                  std::chrono::steady_clock::now() - t0)
                  .count();
  fprintf(stderr, "cuda_emu: %10.3f ms stream %d #%llu %s %s\n", ms, s->id,
          (unsigned long long)op.ticket, op.what, what);
}

void stream_main(Stream *s) {
  char name[16];
  snprintf(name, sizeof name, "emu-stream-%d", s->id);
  pthread_setname_np(pthread_self(), name);
  cur_stream = s->id;
  const unsigned delay = config().delay_us;
  for (;;) {
    Op op;
    {
      std::unique_lock<std::mutex> l(s->mu);
      s->cv.wait(l, [&] { return !s->q.empty() || s->stop; });
      if (s->q.empty()) {
        l.unlock();
        std::lock_guard<std::mutex> a(act_mu);
        act_streams.erase(std::find(act_streams.begin(), act_streams.end(), s));
        return;
      }
      op = std::move(s->q.front());
      s->q.pop_front();
    }
    if (!op.deps.empty()) {
      set_state(s, S_DEPS, 1);
      for (const Dep &d : op.deps)
        wait_dep(d);
      set_state(s, S_IDLE, 0);
    } else {
      set_state(s, S_IDLE, 1);
    }
    if (op.fn) { /* not for bare waits and event records */
      lag_behind_host(s);
      yield_to_siblings(s);
    }
    if (delay)
      std::this_thread::sleep_for(
          std::chrono::microseconds(next_rand(s) % (delay + 1)));
    set_state(s, S_RUN, 0);
    if (config().trace)
      trace(s, op, "start");
    if (op.fn)
      op.fn();
    if (config().trace)
      trace(s, op, "done");
    {
      std::lock_guard<std::mutex> l(s->mu);
      s->done = op.ticket;
    }
    s->cv.notify_all();
    set_state(s, S_IDLE, 0);
  }
}

struct Event {
  Dep at; /* the work it marks; s null: never recorded */
};

/* Every stream and event. One mutex guards it and orders submissions, so
 * that the implicit legacy-stream dependencies see a consistent picture. */
struct Registry {
  std::mutex mu;
  std::map<Stream *, StreamP> live;
  std::vector<StreamP> retired; /* destroyed, maybe still draining */
  StreamP legacy;
  std::map<Event *, std::unique_ptr<Event>> events;
  int next_id = 1;
  ~Registry() {
    std::vector<StreamP> all;
    {
      std::lock_guard<std::mutex> g(mu);
      for (auto &kv : live)
        all.push_back(kv.second);
      for (auto &s : retired)
        all.push_back(s);
      if (legacy)
        all.push_back(legacy);
      live.clear();
      retired.clear();
      legacy.reset();
    }
    for (auto &s : all)
      stop_join(s);
  }
  static void stop_join(const StreamP &s) {
    {
      std::lock_guard<std::mutex> l(s->mu);
      s->stop = true;
    }
    s->cv.notify_all();
    if (s->th.joinable())
      s->th.join();
  }
};

Registry &reg() {
  static Registry r;
  return r;
}

StreamP new_stream(Registry &r, bool blocking, bool legacy) {
  StreamP s = std::make_shared<Stream>();
  s->id = legacy ? 0 : r.next_id++;
  s->blocking = blocking;
  s->legacy = legacy;
  s->rng = (config().seed + 1) * 0x9E3779B97F4A7C15ull ^
           ((uint64_t)s->id * 0xBF58476D1CE4E5B9ull);
  if (!s->rng)
    s->rng = 1;
  if (!config().sync) {
    {
      std::lock_guard<std::mutex> a(act_mu);
      act_streams.push_back(s.get());
    }
    s->th = std::thread(stream_main, s.get());
  }
  return s;
}

/* The stream behind a handle; registry mutex held. */
StreamP find_stream(Registry &r, cudaStream_t h, const char *what) {
  if (h == nullptr || h == cudaStreamLegacy) {
    if (!r.legacy)
      r.legacy = new_stream(r, true, true);
    return r.legacy;
  }
  if (h == cudaStreamPerThread)
    die("%s: the per-thread default stream is not emulated (%p)", h, what);
  auto it = r.live.find((Stream *)h);
  if (it == r.live.end())
    die("%s on stream %p, which is not a live stream", h, what);
  return it->second;
}

/* Queue fn (may be empty) on stream h behind `extra`; registry mutex held.
 * Returns the op's ticket as a dependency to wait for. In synchronous mode
 * the op runs now, on the calling thread. */
Dep submit_locked(Registry &r, std::unique_lock<std::mutex> &g, cudaStream_t h,
                  std::function<void()> fn, std::vector<Dep> extra,
                  const char *what) {
  StreamP s = find_stream(r, h, what);
  std::vector<Dep> deps = std::move(extra);
  /* the legacy stream waits for every blocking stream's earlier work, and
   * a blocking stream for the legacy stream's */
  if (s->legacy) {
    for (auto &kv : r.live)
      if (kv.second->blocking) {
        std::lock_guard<std::mutex> l(kv.second->mu);
        if (kv.second->enq > kv.second->done)
          deps.push_back({kv.second, kv.second->enq});
      }
  } else if (s->blocking && r.legacy) {
    std::lock_guard<std::mutex> l(r.legacy->mu);
    if (r.legacy->enq > r.legacy->done)
      deps.push_back({r.legacy, r.legacy->enq});
  }
  if (config().sync) {
    uint64_t t;
    {
      std::lock_guard<std::mutex> l(s->mu);
      t = ++s->enq;
    }
    g.unlock();
    for (const Dep &d : deps)
      wait_dep(d);
    if (fn)
      fn();
    {
      std::lock_guard<std::mutex> l(s->mu);
      if (s->done < t)
        s->done = t;
    }
    s->cv.notify_all();
    g.lock();
    return {s, t};
  }
  Dep me;
  {
    std::lock_guard<std::mutex> l(s->mu);
    Op op;
    op.fn = std::move(fn);
    op.deps = std::move(deps);
    op.ticket = ++s->enq;
    op.what = what;
    me = {s, op.ticket};
    s->q.push_back(std::move(op));
    std::lock_guard<std::mutex> a(mnc_emu::act_mu);
    s->queued++;
    s->fed = std::this_thread::get_id();
  }
  s->cv.notify_all();
  return me;
}

Dep submit(cudaStream_t h, std::function<void()> fn, const char *what,
           std::vector<Dep> extra = {}) {
  Registry &r = reg();
  std::unique_lock<std::mutex> g(r.mu);
  return submit_locked(r, g, h, std::move(fn), std::move(extra), what);
}

/* Everything enqueued on h so far. */
Dep tail_of(cudaStream_t h, const char *what) {
  Registry &r = reg();
  std::lock_guard<std::mutex> g(r.mu);
  StreamP s = find_stream(r, h, what);
  std::lock_guard<std::mutex> l(s->mu);
  return {s, s->enq};
}

Event *find_event(Registry &r, cudaEvent_t e, const char *what) {
  auto it = r.events.find((Event *)e);
  if (it == r.events.end())
    die("%s of event %p, which is not a live event", e, what);
  return it->second.get();
}

void device_synchronize() {
  std::vector<Dep> all;
  {
    Registry &r = reg();
    std::lock_guard<std::mutex> g(r.mu);
    std::vector<StreamP> ss;
    for (auto &kv : r.live)
      ss.push_back(kv.second);
    for (auto &s : r.retired)
      ss.push_back(s);
    if (r.legacy)
      ss.push_back(r.legacy);
    for (auto &s : ss) {
      std::lock_guard<std::mutex> l(s->mu);
      all.push_back({s, s->enq});
    }
  }
  for (const Dep &d : all)
    wait_dep(d);
}

} // namespace

void launch(const char *name, dim3 grid, dim3 block, size_t smem,
            cudaStream_t s, std::function<void()> fn) {
  unsigned nt = block.x * block.y * block.z;
  if (nt == 0 || nt > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    fprintf(stderr,
            "cuda_emu: bad launch of %s: grid (%u,%u,%u) block (%u,%u,%u)\n",
            name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
    abort();
  }
  if (smem > (227u << 10)) {
    fprintf(stderr,
            "cuda_emu: launch of %s with %zu bytes of dynamic shared "
            "memory\n",
            name, smem);
    abort();
  }
  submit(
      s,
      [name, grid, block, smem, fn = std::move(fn)]() {
        run_grid(name, grid, block, smem, fn);
      },
      name);
}

} // namespace mnc_emu

using mnc_emu::Dep;
using mnc_emu::submit;
using mnc_emu::wait_dep;

/* ---------------------------------------------------------------------------
 * Memory
 * ------------------------------------------------------------------------- */
namespace {
enum { MEM_PAGEABLE = 0, MEM_DEVICE = 1, MEM_PINNED = 2 };
std::mutex mem_mu;
std::map<uintptr_t, std::pair<size_t, int>> blocks; /* MEM_DEVICE, _PINNED */

int kind_of(const void *p) {
  std::lock_guard<std::mutex> g(mem_mu);
  auto it = blocks.upper_bound((uintptr_t)p);
  if (it == blocks.begin())
    return MEM_PAGEABLE;
  --it;
  if ((uintptr_t)p < it->first + it->second.first)
    return it->second.second;
  return MEM_PAGEABLE;
}

/* Device and pinned memory start out poisoned (MNEMO_EMU_POISON, 0x7F by
 * default: float 3.4e38, half NaN, int 2139062143), as the device gives
 * no zeros: a read of memory that nothing wrote shows up in a result. */
void *reg(size_t n, int kind) {
  void *p = nullptr;
  if (posix_memalign(&p, 256, n ? n : 1) != 0) /* exact: ASan sees past it */
    return nullptr;
  int poison = mnc_emu::config().poison;
  if (poison >= 0)
    memset(p, poison, n ? n : 1);
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

/* Enqueue a copy on stream h with CUDA's host synchronisation rules for
 * cudaMemcpyAsync (legacy_api: those of cudaMemcpy on the legacy stream). */
cudaError_t copy(void *d, const void *s, size_t n, cudaStream_t h,
                 bool legacy_api, const char *what) {
  if (n == 0)
    return cudaSuccess;
  const int kd = kind_of(d), ks = kind_of(s);
  if (kd != MEM_DEVICE && ks != MEM_DEVICE) {
    /* host to host: fully synchronous */
    wait_dep(submit(
        h, [d, s, n]() { memmove(d, s, n); }, what));
    return cudaSuccess;
  }
  if (kd == MEM_DEVICE && ks == MEM_PAGEABLE) {
    /* the source is staged before the call returns (the caller may reuse
     * it at once); the device side lands in stream order */
    auto buf = std::make_shared<std::vector<char>>((const char *)s,
                                                   (const char *)s + n);
    submit(
        h, [d, buf, n]() { memcpy(d, buf->data(), n); }, what);
    return cudaSuccess;
  }
  Dep dp = submit(
      h, [d, s, n]() { memmove(d, s, n); }, what);
  if (ks == MEM_DEVICE && kd == MEM_PAGEABLE)
    wait_dep(dp); /* device to pageable host: returns when done */
  else if (legacy_api && kd != MEM_DEVICE)
    wait_dep(dp); /* cudaMemcpy to pinned host memory */
  else if (legacy_api && ks == MEM_PINNED)
    wait_dep(dp); /* cudaMemcpy from pinned host memory */
  /* device to device: asynchronous even for cudaMemcpy */
  return cudaSuccess;
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
  *p = reg(n, MEM_DEVICE);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

/* cudaFree and cudaFreeHost synchronise the device first, as CUDA does. */
cudaError_t cudaFree(void *p) {
  mnc_emu::device_synchronize();
  unreg(p);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t n) {
  *p = reg(n, MEM_PINNED);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFreeHost(void *p) {
  mnc_emu::device_synchronize();
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
  a->type = k == MEM_DEVICE   ? cudaMemoryTypeDevice
            : k == MEM_PINNED ? cudaMemoryTypeHost
                              : cudaMemoryTypeUnregistered;
  if (mnc_emu::config().trace) /* a driver query, which a GPU pays for */
    fprintf(stderr, "cuda_emu: cudaPointerGetAttributes %p: %s\n", p,
            k == MEM_DEVICE   ? "device"
            : k == MEM_PINNED ? "pinned"
                              : "pageable");
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n,
                            enum cudaMemcpyKind k, cudaStream_t st) {
  (void)k; /* the pointers say it (unified addressing) */
  return copy(d, s, n, st, false, "cudaMemcpyAsync");
}

/* On the legacy stream: waits for blocking streams, not for streams
 * created with cudaStreamNonBlocking. */
cudaError_t cudaMemcpy(void *d, const void *s, size_t n,
                       enum cudaMemcpyKind k) {
  (void)k;
  return copy(d, s, n, nullptr, true, "cudaMemcpy");
}

cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t st) {
  if (n)
    submit(
        st, [d, v, n]() { memset(d, v, n); }, "cudaMemsetAsync");
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
  mnc_emu::Registry &r = mnc_emu::reg();
  std::lock_guard<std::mutex> g(r.mu);
  mnc_emu::StreamP p =
      mnc_emu::new_stream(r, !(flags & cudaStreamNonBlocking), false);
  r.live[p.get()] = p;
  *s = (cudaStream_t)p.get();
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *s) {
  return cudaStreamCreateWithFlags(s, cudaStreamDefault);
}

/* Returns at once; the stream's work still completes (its thread drains
 * the queue and is joined later). */
cudaError_t cudaStreamDestroy(cudaStream_t h) {
  mnc_emu::Registry &r = mnc_emu::reg();
  std::vector<mnc_emu::StreamP> finished;
  {
    std::lock_guard<std::mutex> g(r.mu);
    mnc_emu::StreamP s = mnc_emu::find_stream(r, h, "cudaStreamDestroy");
    if (s->legacy)
      return cudaErrorInvalidResourceHandle;
    r.live.erase(s.get());
    {
      std::lock_guard<std::mutex> l(s->mu);
      s->stop = true;
    }
    s->cv.notify_all();
    r.retired.push_back(s);
    for (size_t i = 0; i < r.retired.size();) {
      if (mnc_emu::dep_done({r.retired[i], r.retired[i]->enq})) {
        finished.push_back(r.retired[i]);
        r.retired.erase(r.retired.begin() + (long)i);
      } else {
        i++;
      }
    }
  }
  for (auto &s : finished)
    mnc_emu::Registry::stop_join(s);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  wait_dep(mnc_emu::tail_of(s, "cudaStreamSynchronize"));
  return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t s) {
  return mnc_emu::poll_dep(mnc_emu::tail_of(s, "cudaStreamQuery"))
             ? cudaSuccess
             : cudaErrorNotReady;
}

cudaError_t cudaLaunchHostFunc(cudaStream_t s, cudaHostFn_t fn, void *data) {
  submit(
      s, [fn, data]() { fn(data); }, "cudaLaunchHostFunc");
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t h, cudaEvent_t e, unsigned flags) {
  (void)flags;
  mnc_emu::Registry &r = mnc_emu::reg();
  std::unique_lock<std::mutex> g(r.mu);
  mnc_emu::Event *ev = mnc_emu::find_event(r, e, "cudaStreamWaitEvent");
  mnc_emu::find_stream(r, h, "cudaStreamWaitEvent");
  if (ev->at.s) /* an event never recorded: nothing to wait for */
    mnc_emu::submit_locked(r, g, h, nullptr, {ev->at}, "cudaStreamWaitEvent");
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
  (void)flags;
  mnc_emu::Registry &r = mnc_emu::reg();
  std::lock_guard<std::mutex> g(r.mu);
  std::unique_ptr<mnc_emu::Event> ev(new mnc_emu::Event);
  *e = (cudaEvent_t)ev.get();
  r.events[ev.get()] = std::move(ev);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) {
  return cudaEventCreateWithFlags(e, cudaEventDefault);
}

cudaError_t cudaEventDestroy(cudaEvent_t e) {
  mnc_emu::Registry &r = mnc_emu::reg();
  std::lock_guard<std::mutex> g(r.mu);
  mnc_emu::find_event(r, e, "cudaEventDestroy");
  r.events.erase((mnc_emu::Event *)e);
  return cudaSuccess;
}

/* The event marks the stream's work so far (an op of its own, so that on
 * the legacy stream it also waits for the blocking streams). */
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  mnc_emu::Registry &r = mnc_emu::reg();
  std::unique_lock<std::mutex> g(r.mu);
  mnc_emu::Event *ev = mnc_emu::find_event(r, e, "cudaEventRecord");
  ev->at = mnc_emu::submit_locked(r, g, s, nullptr, {}, "cudaEventRecord");
  return cudaSuccess;
}

static Dep event_at(cudaEvent_t e, const char *what) {
  mnc_emu::Registry &r = mnc_emu::reg();
  std::lock_guard<std::mutex> g(r.mu);
  return mnc_emu::find_event(r, e, what)->at;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  wait_dep(event_at(e, "cudaEventSynchronize"));
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t e) {
  return mnc_emu::poll_dep(event_at(e, "cudaEventQuery")) ? cudaSuccess
                                                          : cudaErrorNotReady;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
  event_at(a, "cudaEventElapsedTime");
  event_at(b, "cudaEventElapsedTime");
  *ms = 1.0f; /* no device clock here */
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  mnc_emu::device_synchronize();
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  return cudaSuccess;
}
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
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, const void *f,
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
/* A cuBLAS or cuSOLVER handle: the stream its calls are queued on. Scalars
 * (alpha, beta) are read at the call, as with CUBLAS_POINTER_MODE_HOST. */
struct EmuHandle {
  cudaStream_t stream = nullptr;
};

cublasStatus_t cublasCreate_v2(cublasHandle_t *h) {
  *h = (cublasHandle_t) new EmuHandle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  delete (EmuHandle *)h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
  ((EmuHandle *)h)->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}
static cudaStream_t stream_of(cublasHandle_t h) {
  return ((EmuHandle *)h)->stream;
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
  const double al = *alpha, be = *beta;
  submit(
      stream_of(h),
      [=]() {
        gemm(ta, tb, m, n, k, al, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, be, C,
             CUDA_R_32F, ldc);
      },
      "cublasSgemm");
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta,
                            cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb,
                            const void *beta, void *C, cudaDataType ct, int ldc,
                            cublasComputeType_t comp, cublasGemmAlgo_t algo) {
  (void)comp;
  (void)algo;
  const double al = *(const float *)alpha, be = *(const float *)beta;
  submit(
      stream_of(h),
      [=]() {
        gemm(ta, tb, m, n, k, al, A, at, lda, B, bt, ldb, be, C, ct, ldc);
      },
      "cublasGemmEx");
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDsyrk_v2(cublasHandle_t h, cublasFillMode_t uplo,
                              cublasOperation_t t, int n, int k,
                              const double *alpha, const double *A, int lda,
                              const double *beta, double *C, int ldc) {
  if (uplo != CUBLAS_FILL_MODE_LOWER || t != CUBLAS_OP_N)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const double al = *alpha, be = *beta;
  submit(
      stream_of(h),
      [=]() {
        for (int j = 0; j < n; j++)
          for (int i = j; i < n; i++) {
            double acc = 0.0;
            for (int l = 0; l < k; l++)
              acc += A[(size_t)l * lda + i] * A[(size_t)l * lda + j];
            double *c = C + (size_t)j * ldc + i;
            *c = al * acc + (be != 0.0 ? be * *c : 0.0);
          }
      },
      "cublasDsyrk");
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDsymm_v2(cublasHandle_t h, cublasSideMode_t side,
                              cublasFillMode_t uplo, int m, int n,
                              const double *alpha, const double *A, int lda,
                              const double *B, int ldb, const double *beta,
                              double *C, int ldc) {
  if (side != CUBLAS_SIDE_LEFT || uplo != CUBLAS_FILL_MODE_LOWER)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const double al = *alpha, be = *beta;
  submit(
      stream_of(h),
      [=]() {
        for (int j = 0; j < n; j++)
          for (int i = 0; i < m; i++) {
            double acc = 0.0;
            for (int l = 0; l < m; l++) {
              double a =
                  i >= l ? A[(size_t)l * lda + i] : A[(size_t)i * lda + l];
              acc += a * B[(size_t)j * ldb + l];
            }
            double *c = C + (size_t)j * ldc + i;
            *c = al * acc + (be != 0.0 ? be * *c : 0.0);
          }
      },
      "cublasDsymm");
  return CUBLAS_STATUS_SUCCESS;
}

/* ---------------------------------------------------------------------------
 * cuSOLVER eigensolvers through LAPACKE (double), results in the caller's
 * precision, ascending, vectors in columns.
 * ------------------------------------------------------------------------- */
cusolverStatus_t cusolverDnCreate(cusolverDnHandle_t *h) {
  *h = (cusolverDnHandle_t) new EmuHandle;
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnDestroy(cusolverDnHandle_t h) {
  delete (EmuHandle *)h;
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnSetStream(cusolverDnHandle_t h, cudaStream_t s) {
  ((EmuHandle *)h)->stream = s;
  return CUSOLVER_STATUS_SUCCESS;
}

} /* extern "C" */

/* Lower triangle of a (n x n, lda) -> eigenpairs il..iu (1-based,
 * ascending) into w and the first columns of a; *info (device memory) the
 * LAPACK status. */
template <class T>
static void eig_now(int n, T *a, int lda, T *w, int il, int iu, int *info) {
  std::vector<double> m((size_t)n * n), ev(n);
  for (int j = 0; j < n; j++)
    for (int i = 0; i < n; i++)
      m[(size_t)j * n + i] = i >= j ? (double)a[(size_t)j * lda + i]
                                    : (double)a[(size_t)i * lda + j];
  int r = LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'L', n, m.data(), n, ev.data());
  int cnt = iu - il + 1;
  for (int t = 0; t < cnt; t++) {
    int src = il - 1 + t;
    w[t] = (T)ev[src];
    for (int i = 0; i < n; i++)
      a[(size_t)t * lda + i] = (T)m[(size_t)src * n + i];
  }
  *info = r;
}

/* Queued on the handle's stream; the count of eigenpairs (host memory) is
 * known at the call. */
template <class T>
static void eig(cusolverDnHandle_t h, int n, T *a, int lda, T *w, int il,
                int iu, int *meig, int *info) {
  if (meig)
    *meig = iu - il + 1;
  submit(((EmuHandle *)h)->stream,
         [=]() { eig_now(n, a, lda, w, il, iu, info); }, "cusolverDn*syevd*");
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
                                  float *W, float *work, int lwork, int *info) {
  (void)j, (void)u, (void)work, (void)lwork;
  eig(h, n, A, lda, W, 1, n, nullptr, info);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnDsyevd(cusolverDnHandle_t h, cusolverEigMode_t j,
                                  cublasFillMode_t u, int n, double *A, int lda,
                                  double *W, double *work, int lwork,
                                  int *info) {
  (void)j, (void)u, (void)work, (void)lwork;
  eig(h, n, A, lda, W, 1, n, nullptr, info);
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
    cublasFillMode_t u, int n, const double *A, int lda, double vl, double vu,
    int il, int iu, int *meig, const double *W, int *lwork) {
  (void)h, (void)j, (void)r, (void)u, (void)n, (void)A, (void)lda, (void)vl,
      (void)vu, (void)il, (void)iu, (void)meig, (void)W;
  *lwork = 1;
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnSsyevdx(cusolverDnHandle_t h, cusolverEigMode_t j,
                                   cusolverEigRange_t r, cublasFillMode_t u,
                                   int n, float *A, int lda, float vl, float vu,
                                   int il, int iu, int *meig, float *W,
                                   float *work, int lwork, int *info) {
  (void)j, (void)r, (void)u, (void)vl, (void)vu, (void)work, (void)lwork;
  eig(h, n, A, lda, W, il, iu, meig, info);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnDsyevdx(cusolverDnHandle_t h, cusolverEigMode_t j,
                                   cusolverEigRange_t r, cublasFillMode_t u,
                                   int n, double *A, int lda, double vl,
                                   double vu, int il, int iu, int *meig,
                                   double *W, double *work, int lwork,
                                   int *info) {
  (void)j, (void)r, (void)u, (void)vl, (void)vu, (void)work, (void)lwork;
  eig(h, n, A, lda, W, il, iu, meig, info);
  return CUSOLVER_STATUS_SUCCESS;
}

} /* extern "C" */
