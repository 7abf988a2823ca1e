// libcunet: kernels/concat.cuh's launcher behind the declaration of bindings/cunet.h.
#include "lib.h"
#include "../../kernels/concat.cuh"

namespace cunet::ops {
void concat_copy(int64_t N, int64_t C, int64_t S, const float* src, int64_t src_C, int64_t src_off, float* dst,
                 int64_t dst_C, int64_t dst_off, void* s) {
    cunet::concat_copy(N, C, S, src, src_C, src_off, dst, dst_C, dst_off, stream_of(s));
}
}  // namespace cunet::ops
