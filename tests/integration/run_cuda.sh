#!/bin/sh
# The integration suite once more, every test server on the CUDA backend
# (issue 4). Skips (CTest's code 77) where no NVIDIA GPU is visible, as on
# the CI machines; bench/gpu/run.sh runs it on the device machine.
# usage: run_cuda.sh PYTHON TESTS_DIR [pytest args...]
py=$1
dir=$2
shift 2
if ! { nvidia-smi -L 2>/dev/null | grep -q '^GPU'; } && [ ! -e /dev/nvidia0 ]
then
  echo "no NVIDIA GPU on this machine: the CUDA integration run is skipped"
  exit 77
fi
MNEMO_TEST_DEVICE=cuda exec "$py" -m pytest -q -p no:cacheprovider "$@" "$dir"
