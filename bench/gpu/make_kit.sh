#!/usr/bin/env bash
# bench/gpu/make_kit.sh - build here what bench/gpu/run.sh runs on the device
# machine, and pack it as gpu-kit/kit.tar.xz (git-ignored; name gpu-kit in
# the device tool's `carry`; 12 MB packed, 65 MB unpacked, over the tool's
# 64 MiB limit for what travels). The device machine has CUDA, cmake and PyTorch but none of the
# core's Debian libraries (libwebsockets, LMDB, OpenBLAS, cmocka) and no
# network, so mnemod, the tests and the benchmarks are built here for sm_90
# and travel with the shared libraries they need (glibc stays the device's:
# a binary built on Debian 12's older glibc runs on a newer one).
#
#   bash bench/gpu/make_kit.sh [BUILD_DIR]      (default build-dev)
set -eu
cd "$(dirname "$0")/../.."
B=${1:-build-dev}
KIT=$B/kit
cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DMNEMO_CUDA=ON \
  -DMNEMO_CUDA_ARCHS=90-real -DMNEMO_WERROR=ON >/dev/null
cmake --build "$B" -j"$(nproc)" --target mnemod mnemo-cuda bench_gpu \
  bench_store load test_cuda_backend test_backend_ops test_store_device \
  >/dev/null
rm -rf "$KIT"
mkdir -p "$KIT/bin" "$KIT/bench" "$KIT/tests" "$KIT/lib" "$KIT/py"
cp -P "$B"/bin/libmnemo.so* "$B/bin/libmnemo-cuda.so" "$B/bin/mnemod" \
  "$KIT/bin/"
cp "$B/bench/bench_gpu" "$B/bench/bench_store" "$B/bench/load" "$KIT/bench/"
cp "$B/tests/test_cuda_backend" "$B/tests/test_backend_ops" \
  "$B/tests/test_store_device" "$KIT/tests/"
# Every shared library they use except glibc's own and CUDA's (the device
# has its own CUDA 13 libraries, matched to its driver).
for f in "$KIT"/bin/mnemod "$KIT"/bin/libmnemo.so "$KIT"/tests/* \
  "$KIT"/bench/*; do
  ldd "$f" | awk '/=> \//{print $3}'
done | sort -u | grep -Ev \
  '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so|/libcu|/libnv|libmnemo' |
  while read -r lib; do cp -L "$lib" "$KIT/lib/"; done
# python3-websockets for the integration suite under the device's Python
# (its C speed-up is optional and left behind: it is built for this
# machine's Python).
cp -r /usr/lib/python3/dist-packages/websockets "$KIT/py/"
find "$KIT/py" -name '*.so' -delete
find "$KIT/py" -name __pycache__ -prune -exec rm -rf {} +
du -sh "$KIT"
mkdir -p gpu-kit
XZ_OPT=-T0 tar cJf gpu-kit/kit.tar.xz -C "$B" kit
ls -la gpu-kit/kit.tar.xz
