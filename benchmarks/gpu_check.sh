#!/usr/bin/env bash
# One-shot GPU check, for a machine with a CUDA GPU and no network (CuPy, pybind11,
# pytest, setuptools and nvcc already installed; PyTorch optional):
#   1. builds cunet._native (host build, for the tests' reference side) in place,
#      and the nvcc build of the same sources (CUNET_CUDA=1) into build/cuda to show it links;
#   2. runs the GPU tests: pytest -m gpu (every op on CuPy arrays against the reference);
#   3. runs the GPU op benchmarks (cunet on CuPy vs PyTorch fp32) and prints their table last.
# Budget: about 8 minutes on an H200. Usage: bash benchmarks/gpu_check.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() { echo; echo "=== $* ($(date +%T))"; }
fail=0

step "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || fail=1
$PY -c "import cupy; print('cupy', cupy.__version__, 'devices', cupy.cuda.runtime.getDeviceCount())" || fail=1

step "host build of cunet._native"
$PY setup.py -q build_ext --inplace >build_host.log 2>&1 || { tail -30 build_host.log; fail=1; }

step "nvcc build of cunet._native (CUNET_CUDA=1, sm_80 + sm_90)"
CUNET_CUDA=1 $PY setup.py -q build_ext --build-lib build/cuda --build-temp build/cuda-tmp >build_cuda.log 2>&1 \
  && ls build/cuda/cunet/_native*.so || { tail -30 build_cuda.log; fail=1; }

step "pytest -m gpu"
# --continue-on-collection-errors: a test module whose optional import is missing there
# (nibabel is not in the GPU image; carry its wheel to run the data tests) must not stop the rest
timeout 300 $PY -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests 2>&1 | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || fail=1

step "GPU op benchmarks (cunet vs PyTorch fp32)"
timeout 240 $PY benchmarks/bench_ops.py --device cuda --repeat 10 "$@" >bench_gpu.md 2>&1 || fail=1
cat bench_gpu.md
echo
[ "$fail" = 0 ] && echo "gpu_check: all steps passed" || echo "gpu_check: SOME STEPS FAILED"
exit "$fail"
