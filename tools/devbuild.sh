#!/usr/bin/env bash
# Incremental developer build of cunet/_native*.so (host build), safe to run from
# several shells at once: one build at a time (flock), each binding file recompiled
# only when it, bindings/bind.h, kernels/portable.cuh or its own family header changed,
# and the new module moved into place atomically (running tests keep the old one).
# `pip install -e .` does the same build from scratch; this is for the edit-test loop.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>/tmp/cunet-devbuild.lock
flock 9
PY=${PYTHON:-python}
INC=$($PY -m pybind11 --includes)
EXT=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
OBJ=build/dev
mkdir -p "$OBJ"
FLAGS="-O3 -march=native -fopenmp -std=c++20 -fno-math-errno -fPIC -fvisibility=hidden"
objs=()
for src in bindings/*.cpp; do
  stem=$(basename "$src" .cpp)
  obj="$OBJ/$stem.o"
  deps=("$src" bindings/bind.h kernels/portable.cuh)
  [ -f "kernels/$stem.cuh" ] && deps+=("kernels/$stem.cuh")
  stale=0
  [ -f "$obj" ] || stale=1
  for d in "${deps[@]}"; do [ "$d" -nt "$obj" ] && stale=1; done
  if [ $stale = 1 ]; then
    echo "g++ $src"
    g++ $FLAGS $INC -c "$src" -o "$obj.tmp" && mv "$obj.tmp" "$obj" &
  fi
  objs+=("$obj")
done
wait
for o in "${objs[@]}"; do [ -f "$o" ] || { echo "build failed: $o" >&2; exit 1; }; done
g++ -shared -fopenmp "${objs[@]}" -o "cunet/.native_new$EXT"
mv "cunet/.native_new$EXT" "cunet/_native$EXT"
echo "built cunet/_native$EXT"
