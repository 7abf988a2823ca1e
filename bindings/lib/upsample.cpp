// libcunet: kernels/upsample.cuh's launchers behind the declarations of bindings/cunet.h.
#include "lib.h"
#include "../../kernels/upsample.cuh"

namespace cunet::ops {
#define CUNET_FORWARD(name)                                                                                    \
    void name(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD, int64_t SH, int64_t SW, const float* in, \
              float* out, void* s) {                                                                           \
        cunet::name(NC, D, H, W, SD, SH, SW, in, out, stream_of(s));                                           \
    }
CUNET_FORWARD(upsample_nearest_forward)
CUNET_FORWARD(upsample_nearest_backward)
CUNET_FORWARD(upsample_linear_forward)
CUNET_FORWARD(upsample_linear_backward)
#undef CUNET_FORWARD
}  // namespace cunet::ops
