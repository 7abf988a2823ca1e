// Shared by libcunet's sources (bindings/lib/<family>.cpp, one per kernel family, each the
// library's only includer of its kernels/<family>.cuh): the public declarations, the
// portable layer, and the stream of the public API (void*) as the kernels' Stream.
#pragma once
#include "../cunet.h"
#include "../../kernels/portable.cuh"

namespace cunet::ops {
inline Stream stream_of(void* s) { return static_cast<Stream>(s); }
}  // namespace cunet::ops
