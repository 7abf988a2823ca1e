#!/usr/bin/env bash
# Incremental developer build (host build) of cunet/lib/libcunet.so, the kernels
# (bindings/lib/*.cpp), and cunet/_native*.so, the pybind11 layer (bindings/*.cpp) linked to
# it through the rpath $ORIGIN/lib. Safe to run from several shells at once: one build at
# a time (flock); each source recompiled only when it or a header it includes changed; the
# new files moved into place atomically (running tests keep the old ones), library first.
# `pip install -e .` does the same build from scratch; this is for the edit-test loop.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>/tmp/cunet-devbuild.lock
flock 9
PY=${PYTHON:-python}
INC=$($PY -m pybind11 --includes)
EXT=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
OBJ=build/dev
mkdir -p "$OBJ/lib" cunet/lib/cmake/cunet
FLAGS="-O3 -march=native -fopenmp -std=c++20 -fno-math-errno -fPIC -fvisibility=hidden -Wno-psabi"

# compile SRC OBJ INCLUDES DEPS...: in the background when OBJ is missing or older than a dep
compile() {
  local src=$1 obj=$2 inc=$3 stale=0
  shift 3
  [ -f "$obj" ] || stale=1
  for d in "$src" "$@"; do [ "$d" -nt "$obj" ] && stale=1; done
  if [ $stale = 1 ]; then
    echo "g++ $src"
    rm -f "$obj"   # a failed compile must not leave the old object to be linked
    g++ $FLAGS $inc -c "$src" -o "$obj.tmp" && mv "$obj.tmp" "$obj" &
  fi
}

lib_objs=()
for src in bindings/lib/*.cpp; do
  stem=$(basename "$src" .cpp)
  deps=(bindings/lib/lib.h bindings/cunet.h kernels/portable.cuh)
  [ -f "kernels/$stem.cuh" ] && deps+=("kernels/$stem.cuh")
  compile "$src" "$OBJ/lib/$stem.o" "" "${deps[@]}"
  lib_objs+=("$OBJ/lib/$stem.o")
done
mod_objs=()
for src in bindings/*.cpp; do
  obj="$OBJ/$(basename "$src" .cpp).o"
  compile "$src" "$obj" "$INC" bindings/bind.h bindings/cunet.h
  mod_objs+=("$obj")
done
wait
for o in "${lib_objs[@]}" "${mod_objs[@]}"; do [ -f "$o" ] || { echo "build failed: $o" >&2; exit 1; }; done
g++ -shared -fopenmp -Wl,-soname,libcunet.so "${lib_objs[@]}" -o cunet/lib/.libcunet_new.so
mv cunet/lib/.libcunet_new.so cunet/lib/libcunet.so
g++ -shared "${mod_objs[@]}" -Lcunet/lib -lcunet -Wl,-rpath,'$ORIGIN/lib' -o "cunet/.native_new$EXT"
mv "cunet/.native_new$EXT" "cunet/_native$EXT"
cp -p cmake/cunetConfig.cmake cunet/lib/cmake/cunet/
echo "built cunet/lib/libcunet.so and cunet/_native$EXT"
