#!/usr/bin/env bash
# One-shot GPU check, for a machine with a CUDA GPU and no network (CuPy, pybind11,
# pytest, setuptools and nvcc already installed; PyTorch optional):
#   1. builds cunet._native (host build, for the tests' reference side) in place,
#      and the nvcc build of the same sources (CUNET_CUDA=1) into build/cuda to show it links;
#   2. runs the GPU tests: pytest -m gpu (every op on CuPy arrays against the reference);
#   3. compute-sanitizer memcheck and racecheck on a slice of the kernel tests (small shapes);
#   4. runs the GPU op benchmarks (cunet on CuPy vs PyTorch fp32) and the UNet benchmark
#      (bench_unet.py --device cuda: fp32/tf32/bf16, graph-captured, vs PyTorch eager TF32 and
#      bf16 autocast when a CUDA PyTorch is installed) and prints their tables last.
# Budget: about 10 minutes on an H200. Usage: bash benchmarks/gpu_check.sh
# CUNET_GPU_CHECK_NVCC=0 skips the nvcc build (3 minutes on 2 cores; CuPy needs only NVRTC).
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

step "nvcc build of libcunet and cunet._native (CUNET_CUDA=1, sm_80 + sm_90)"
if [ "${CUNET_GPU_CHECK_NVCC:-1}" = 0 ]; then
  echo "skipped (CUNET_GPU_CHECK_NVCC=0)"
else
  CUNET_CUDA=1 $PY setup.py -q build_ext --build-lib build/cuda --build-temp build/cuda-tmp >build_cuda.log 2>&1 \
    && ls build/cuda/cunet/_native*.so build/cuda/cunet/lib/libcunet.so || { tail -30 build_cuda.log; fail=1; }
fi

step "pytest -m gpu"
# --continue-on-collection-errors: a test module whose optional import is missing there
# (nibabel is not in the GPU image; carry its wheel to run the data tests) must not stop the rest
timeout 300 $PY -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests 2>&1 | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || fail=1

step "compute-sanitizer memcheck + racecheck (conv, pool, norm, loss kernels; small shapes)"
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    timeout 120 compute-sanitizer --tool $tool --error-exitcode 99 $PY -m pytest -q -x -m gpu -p no:cacheprovider \
      tests/test_ops_conv.py tests/test_ops_resample.py tests/test_ops_norm.py tests/test_ops_loss.py \
      2>&1 | tail -5
    rc=${PIPESTATUS[0]}; echo "compute-sanitizer $tool: rc=$rc"; [ "$rc" = 0 ] || fail=1
  done
else
  echo "compute-sanitizer not on PATH: not run"; fail=1
fi

step "GPU benchmarks"
timeout 120 $PY benchmarks/bench_ops.py --device cuda --repeat 10 >bench_gpu.md 2>&1 || fail=1
timeout 240 $PY benchmarks/bench_unet.py --device cuda --steps 5 >bench_unet_gpu.md 2>&1 || fail=1
cat bench_gpu.md bench_unet_gpu.md
echo
[ "$fail" = 0 ] && echo "gpu_check: all steps passed" || echo "gpu_check: SOME STEPS FAILED"
exit "$fail"
