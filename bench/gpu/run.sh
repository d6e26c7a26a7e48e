#!/usr/bin/env bash
# bench/gpu/run.sh - issue 4's device script: ONE command for the device tool
# on an H100 / H200 machine (CUDA 13, cmake, PyTorch, 16 cores, no network).
#
#   here:   bash bench/gpu/make_kit.sh        (builds gpu-kit/, git-ignored)
#   device: bash bench/gpu/run.sh             (carry: ["gpu-kit"])
#
# Steps, each under `timeout`, each reported, none stopping the next, the
# most important first:
#   1. what the machine has (GPU, driver, nvcc, PyTorch)
#   2. the binaries: gpu-kit/kit.tar.xz (built here for sm_90 with the
#      core's shared libraries beside them) when they run there; otherwise the plugin and
#      bench_gpu straight from nvcc (the tests then need libmnemo and are
#      reported as not built)
#   3. test_cuda_backend (the plugin against the CPU backend),
#      test_backend_ops (every op on every backend, double references) and
#      test_store_device (the store's L1 on the device against a CPU store,
#      grouped chunk search included)
#   4. bench_gpu (the plugin) and peer_torch.py (PyTorch), same run
#   5. mnemod over loopback: CUDA against CPU backend (server_load.py)
#   6. the store's search with GPU-resident chunks (bench_store --gpu)
#   7. the mnemod integration suite with --device cuda
#   8. compute-sanitizer memcheck on test_cuda_backend, with the time left
#   9. one table of ratios, printed last
# A deadline (DEADLINE seconds, default 330) caps every step: the whole
# script ends inside 6 minutes. Logs go to $LOGS; $OUT gets logs.tgz (all of
# them, refreshed after every step), the JSON results and the table.
# QUICK=1 selects smaller benchmark sizes. SKIP="name name" skips steps.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/build-gpu/out}
LOGS=${LOGS:-/tmp/mnemo-gpu-logs}
mkdir -p "$OUT" "$LOGS"
JOBS=$(nproc 2>/dev/null || echo 8)
QFLAG=""
[ "${QUICK:-0}" = 1 ] && QFLAG="--quick"
START=$(date +%s)
DEADLINE=${DEADLINE:-330}
SKIP=" ${SKIP:-} "
SUMMARY=()
export PATH=$PATH:/usr/local/cuda/bin
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 OMP_WAIT_POLICY=passive

note() { echo "== $*"; }
elapsed() { echo $(( $(date +%s) - START )); }
pack() { tar czf "$OUT/logs.tgz" -C "$LOGS" . 2>/dev/null; }
# step NAME SECONDS COMMAND... : run with a time limit (capped by what is
# left before the deadline), log to $LOGS/NAME.log
step() {
  local name=$1 limit=$2
  shift 2
  if [[ $SKIP == *" $name "* ]]; then
    SUMMARY+=("$(printf '%-16s %s' "$name" 'skipped (SKIP)')")
    return 125
  fi
  local left=$(( DEADLINE - $(elapsed) ))
  if [ $left -lt 10 ]; then
    SUMMARY+=("$(printf '%-16s %s' "$name" 'SKIPPED (out of time)')")
    return 125
  fi
  [ $limit -gt $left ] && limit=$left
  note "$name (limit ${limit}s, at $(elapsed)s)"
  local t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  tail -n 12 "$LOGS/$name.log"
  local what="ok"
  [ $rc -eq 124 ] && what="TIMED OUT"
  [ $rc -eq 77 ] && what="skipped (rc 77)"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -ne 77 ] && what="FAILED (rc $rc)"
  SUMMARY+=("$(printf '%-16s %-14s %4ss' "$name" "$what" $(( $(date +%s) - t0 )))")
  pack
  return $rc
}

# --- 1. the machine ----------------------------------------------------------
note "machine"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm \
    --format=csv 2>&1 | head -3
  nvcc --version | tail -2
  python3 -c 'import torch; print("torch", torch.__version__)'
  nproc
  grep -m1 'model name' /proc/cpuinfo
  ldd --version | head -1
} 2>&1 | tee "$LOGS/machine.log"

# --- 2. the binaries -----------------------------------------------------------
KIT=/tmp/mnemo-kit/kit
PLUGIN="" BENCH="" MNEMOD="" LOAD="" BSTORE="" TCUDA="" TOPS="" TSTORE=""
if [ -f gpu-kit/kit.tar.xz ]; then
  rm -rf /tmp/mnemo-kit && mkdir -p /tmp/mnemo-kit &&
    tar xJf gpu-kit/kit.tar.xz -C /tmp/mnemo-kit
fi
if [ -x "$KIT/bin/mnemod" ]; then
  export LD_LIBRARY_PATH=$KIT/bin:$KIT/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  if step kit-check 20 bash -c "'$KIT/bin/mnemod' --version && \
       ! ldd '$KIT/bin/libmnemo-cuda.so' '$KIT/bin/mnemod' \
       '$KIT/tests/test_backend_ops' | grep 'not found'"; then
    PLUGIN=$KIT/bin/libmnemo-cuda.so BENCH=$KIT/bench/bench_gpu
    MNEMOD=$KIT/bin/mnemod LOAD=$KIT/bench/load BSTORE=$KIT/bench/bench_store
    TCUDA=$KIT/tests/test_cuda_backend TOPS=$KIT/tests/test_backend_ops
    TSTORE=$KIT/tests/test_store_device
  fi
fi
if [ -z "$PLUGIN" ]; then
  note "no usable gpu-kit: building the plugin and bench_gpu with nvcc" \
       "(the tests, mnemod and the store need libmnemo and are not run)"
  SA=/tmp/mnemo-nvcc
  mkdir -p "$SA/bin"
  NV="nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -Iinclude -Isrc"
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

# --- 3. tests ------------------------------------------------------------------
if [ -n "$TCUDA" ]; then
  step test_cuda 90 env MNEMO_TEST_CUDA_PLUGIN="$PLUGIN" \
      CMOCKA_MESSAGE_OUTPUT=stdout "$TCUDA"
  step test_ops 90 env MNEMO_BACKEND_PATH="$PLUGIN" \
      CMOCKA_MESSAGE_OUTPUT=stdout "$TOPS"
  [ -x "${TSTORE:-}" ] && step test_store 60 env \
      MNEMO_TEST_STORE_PLUGIN="$PLUGIN" CMOCKA_MESSAGE_OUTPUT=stdout "$TSTORE"
else
  SUMMARY+=("$(printf '%-16s %s' tests 'NOT BUILT (no gpu-kit)')")
fi

# --- 4. benchmarks: ours, then PyTorch, same machine, same run ---------------
[ -n "$BENCH" ] && step bench_gpu 100 "$BENCH" $QFLAG --plugin "$PLUGIN" \
    --out "$OUT/bench_gpu.json"
step peer_torch 100 python3 bench/gpu/peer_torch.py $QFLAG \
    --out "$OUT/peer_torch.json"

# --- 5. mnemod over loopback, CUDA against CPU -------------------------------
[ -n "$MNEMOD" ] && step server_load 80 python3 bench/gpu/server_load.py \
    --mnemod "$MNEMOD" --load "$LOAD" --out "$OUT/server_load.json"

# --- 6. the store with GPU-resident chunks ------------------------------------
[ -n "$BSTORE" ] && step store_gpu 90 env MNEMO_BACKEND_PATH="$PLUGIN" bash -c "'$BSTORE' --gpu \
    --n ${STORE_N:-1000000} --queries 20 | tee '$LOGS/store_gpu.out'; \
    exit \${PIPESTATUS[0]}" && grep '^{' "$LOGS/store_gpu.out" \
    >"$OUT/store_gpu.json"

# --- 7. the integration suite on the CUDA backend ------------------------------
[ -n "$MNEMOD" ] && step it_cuda 120 env MNEMOD="$MNEMOD" \
    PYTHONPATH="$KIT/py" sh tests/integration/run_cuda.sh python3 \
    tests/integration -o cache_dir=/tmp/pytest-cache

# --- 8. compute-sanitizer memcheck, with the time left ----------------------
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -n "$TCUDA" ]; then
  step memcheck 150 env MNEMO_CUDA_POOL_EXACT=1 MNEMO_TEST_CUDA_PLUGIN="$PLUGIN" \
      "$CS" --tool memcheck --leak-check no --error-exitcode 3 "$TCUDA"
elif [ -n "$BENCH" ]; then
  step memcheck 150 env MNEMO_CUDA_POOL_EXACT=1 "$CS" --tool memcheck \
      --error-exitcode 3 "$BENCH" --tiny --plugin "$PLUGIN"
fi

# --- 9. the table --------------------------------------------------------------
note "summary (at $(elapsed)s)"
printf '%s\n' "${SUMMARY[@]}" | tee "$LOGS/summary.log"
python3 bench/gpu/table.py "$OUT/bench_gpu.json" "$OUT/peer_torch.json" \
  "$OUT/server_load.json" "$OUT/store_gpu.json" 2>&1 | tee "$OUT/table.txt"
pack
