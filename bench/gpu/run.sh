#!/usr/bin/env bash
# bench/gpu/run.sh - issue 4's device script: ONE command for the device tool
# on an H100 / H200 machine (CUDA 13, cmake, PyTorch, 16 cores, no network).
#
#   run: bash bench/gpu/run.sh            (from the repository root)
#
# Steps, each under `timeout`, each reported, none stopping the next:
#   1. what the machine has (GPU, nvcc, cmake, the core's -dev packages)
#   2. build: the full CMake build (sm_90) when the core's dependencies are
#      there; otherwise the plugin and bench_gpu straight from nvcc, and the
#      CUDA test is reported as not built (it needs libmnemo)
#   3. the CUDA tests (test_cuda_backend, test_backend_ops if present)
#   4. bench_gpu (the plugin) and peer_torch.py (PyTorch) in the same run
#   5. compute-sanitizer memcheck on test_cuda_backend (exact-size buffers:
#      MNEMO_CUDA_POOL_EXACT=1), or on bench_gpu --tiny without the test,
#      with whatever time is left
#   6. one table of ratios, printed last
# A deadline (DEADLINE seconds, default 330) caps every step: the whole
# script ends inside 6 minutes. Logs and JSON land in $OUT (build-gpu/out when
# OUT is unset). QUICK=1 selects smaller benchmark sizes.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/build-gpu/out}
mkdir -p "$OUT"
JOBS=$(nproc 2>/dev/null || echo 8)
QFLAG=""
[ "${QUICK:-0}" = 1 ] && QFLAG="--quick"
START=$(date +%s)
DEADLINE=${DEADLINE:-330}
SUMMARY=()

note() { echo "== $*"; }
elapsed() { echo $(( $(date +%s) - START )); }
# step NAME SECONDS COMMAND... : run with a time limit (capped by what is
# left before the deadline), log to $OUT/NAME.log
step() {
  local name=$1 limit=$2
  shift 2
  local left=$(( DEADLINE - $(elapsed) ))
  if [ $left -lt 15 ]; then
    SUMMARY+=("$(printf '%-22s %s' "$name" 'SKIPPED (out of time)')")
    return 125
  fi
  [ $limit -gt $left ] && limit=$left
  note "$name (limit ${limit}s, at $(elapsed)s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  local what="ok"
  [ $rc -eq 124 ] && what="TIMED OUT"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && what="FAILED (rc $rc)"
  SUMMARY+=("$(printf '%-22s %s' "$name" "$what")")
  return $rc
}

# --- 1. the machine ----------------------------------------------------------
note "machine"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    2>&1 | head -3
  command -v nvcc || ls /usr/local/cuda/bin/nvcc
  export PATH=$PATH:/usr/local/cuda/bin
  nvcc --version | tail -2
  cmake --version | head -1
  command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer
  python3 -c 'import torch; print("torch", torch.__version__)'
  for p in jansson libwebsockets openblas cmocka; do
    pkg-config --exists $p 2>/dev/null && echo "dep $p: yes" || echo "dep $p: no"
  done
  for h in lmdb.h lapacke.h; do
    [ -e /usr/include/$h ] && echo "dep $h: yes" || echo "dep $h: no"
  done
} 2>&1 | tee "$OUT/machine.log"
export PATH=$PATH:/usr/local/cuda/bin

# --- 2. build ----------------------------------------------------------------
BUILD=$ROOT/build-gpu
PLUGIN="" BENCH="" TEST=""
GEN=""
command -v ninja >/dev/null && GEN="-G Ninja"
if step configure 60 cmake -S . -B "$BUILD" $GEN -DCMAKE_BUILD_TYPE=Release \
     -DMNEMO_CUDA=ON -DMNEMO_CUDA_ARCHS=90-real -DMNEMO_WERROR=OFF; then
  step build 140 cmake --build "$BUILD" -j "$JOBS"
  [ -f "$BUILD/bin/libmnemo-cuda.so" ] && PLUGIN=$BUILD/bin/libmnemo-cuda.so
  [ -x "$BUILD/bench/bench_gpu" ] && BENCH=$BUILD/bench/bench_gpu
  [ -x "$BUILD/tests/test_cuda_backend" ] && TEST=$BUILD/tests/test_cuda_backend
fi
if [ -z "$PLUGIN" ] || [ -z "$BENCH" ]; then
  note "full build unavailable: building the plugin and bench_gpu with nvcc" \
       "(the CUDA test needs libmnemo and is not built)"
  SA=$ROOT/build-gpu-nvcc
  mkdir -p "$SA/bin"
  NV="nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -Iinclude -Isrc"
  # one nvcc per source, in parallel, then one link
  step nvcc-plugin 150 bash -c "set -e; p=; for f in src/backends/cuda/*.cu; do \
      $NV -Xcompiler -fPIC,-fvisibility=hidden -c \$f \
        -o $SA/\$(basename \$f .cu).o & p=\"\$p \$!\"; done; \
      for i in \$p; do wait \$i; done; \
      $NV -shared -o $SA/bin/libmnemo-cuda.so $SA/*.o \
        -Xlinker --version-script=src/backends/cuda/exports.map \
        -lcublas -lcusolver -lpthread" \
    && PLUGIN=$SA/bin/libmnemo-cuda.so
  step nvcc-bench 90 $NV -o "$SA/bench_gpu" bench/gpu/bench_gpu.cu \
      -lcublas -ldl && BENCH=$SA/bench_gpu
fi

# --- 3. tests ----------------------------------------------------------------
if [ -n "$TEST" ]; then
  step test 90 bash -c "cd '$BUILD' && MNEMO_BACKEND_PATH='$BUILD/bin' ctest --output-on-failure \
      -R 'test_cuda_backend|test_backend_ops' --timeout 85"
else
  SUMMARY+=("$(printf '%-22s %s' test 'NOT BUILT (no libmnemo dependencies)')")
fi

# --- 4. benchmarks: ours, then PyTorch, same machine, same run ---------------
if [ -n "$BENCH" ]; then
  step bench_gpu 120 "$BENCH" $QFLAG --plugin "$PLUGIN" \
      --out "$OUT/bench_gpu.json"
fi
step peer_torch 110 env PYTHONUNBUFFERED=1 python3 bench/gpu/peer_torch.py \
    $QFLAG --out "$OUT/peer_torch.json"

# --- 5. compute-sanitizer memcheck, with the time left ----------------------
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -n "$TEST" ]; then
  step memcheck 150 env MNEMO_CUDA_POOL_EXACT=1 "$CS" --tool memcheck \
      --leak-check no --error-exitcode 3 "$TEST"
elif [ -n "$BENCH" ]; then
  step memcheck 150 env MNEMO_CUDA_POOL_EXACT=1 "$CS" --tool memcheck \
      --error-exitcode 3 "$BENCH" --tiny --plugin "$PLUGIN"
fi

# --- 6. the table --------------------------------------------------------------
note "summary (at $(elapsed)s)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.log"
python3 bench/gpu/table.py "$OUT/bench_gpu.json" "$OUT/peer_torch.json" \
  2>&1 | tee "$OUT/table.txt"
