// libcunet: kernels/conv.cuh's launchers behind the declarations of bindings/cunet.h.
// A new launcher argument (an option after the pointers) is added here, in cunet.h and in
// bindings/conv.cpp's lambdas.
#include "lib.h"
#include "../../kernels/conv.cuh"

namespace cunet::ops {
void conv_forward(CUNET_CONV_DIMS, const float* x, const float* w, const float* b, float* y, void* s) {
    cunet::conv_forward(CUNET_CONV_ARGS, x, w, b, y, stream_of(s));
}
void conv_backward_data(CUNET_CONV_DIMS, const float* dy, const float* w, const float* b, float* dx, void* s) {
    cunet::conv_backward_data(CUNET_CONV_ARGS, dy, w, b, dx, stream_of(s));
}
void conv_backward_weight(CUNET_CONV_DIMS, const float* dy, const float* x, float* dw, void* s) {
    cunet::conv_backward_weight(CUNET_CONV_ARGS, dy, x, dw, stream_of(s));
}
void channel_sum(int64_t N, int64_t C, int64_t S, const float* x, float* out, void* s) {
    cunet::channel_sum(N, C, S, x, out, stream_of(s));
}
}  // namespace cunet::ops
