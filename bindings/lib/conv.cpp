// libcunet: kernels/conv.cuh's launchers behind the declarations of bindings/cunet.h.
// A new launcher argument (an option after the pointers) is added here, in cunet.h and in
// bindings/conv.cpp's lambdas.
#include "lib.h"
#include "../../kernels/conv.cuh"

namespace cunet::ops {
void conv_forward(CUNET_CONV_DIMS, const float* x, const float* w, const float* b, float* y, int precision, bool relu,
                  void* s) {
    cunet::conv_forward(CUNET_CONV_ARGS, x, w, b, y, precision, relu, stream_of(s));
}
void conv_backward_data(CUNET_CONV_DIMS, const float* dy, const float* w, const float* b, float* dx, int precision,
                        void* s) {
    cunet::conv_backward_data(CUNET_CONV_ARGS, dy, w, b, dx, precision, stream_of(s));
}
void conv_backward_weight(CUNET_CONV_DIMS, const float* dy, const float* x, float* dw, int precision, void* s) {
    cunet::conv_backward_weight(CUNET_CONV_ARGS, dy, x, dw, precision, stream_of(s));
}
void conv_forward_cat(CUNET_CONV_DIMS, int64_t C1, const float* x, const float* x2, const float* w, const float* b,
                      float* y, int precision, bool relu, void* s) {
    cunet::conv_forward_cat(CUNET_CONV_ARGS, C1, x, x2, w, b, y, precision, relu, stream_of(s));
}
void conv_backward_data_cat(CUNET_CONV_DIMS, int64_t C1, const float* dy, const float* w, const float* b, float* dx,
                            float* dx2, const float* mask, int precision, void* s) {
    cunet::conv_backward_data_cat(CUNET_CONV_ARGS, C1, dy, w, b, dx, dx2, mask, precision, stream_of(s));
}
void conv_backward_weight_cat(CUNET_CONV_DIMS, int64_t C1, const float* dy, const float* x, const float* x2,
                              float* dw, int precision, void* s, float* db) {
    cunet::conv_backward_weight_cat(CUNET_CONV_ARGS, C1, dy, x, x2, dw, precision, stream_of(s), db);
}
int64_t conv_wgrad_slice(int64_t M, int64_t Nn, int64_t K) { return cunet::conv_wgrad_slice(M, Nn, K); }
unsigned conv_tiled_grid(CUNET_CONV_DIMS, int pass) { return cunet::conv_tiled_grid(CUNET_CONV_ARGS, pass); }
void channel_sum(int64_t N, int64_t C, int64_t S, const float* x, float* out, void* s) {
    cunet::channel_sum(N, C, S, x, out, stream_of(s));
}
}  // namespace cunet::ops
