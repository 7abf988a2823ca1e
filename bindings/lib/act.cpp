// libcunet: kernels/act.cuh's launchers behind the declarations of bindings/cunet.h.
#include "lib.h"
#include "../../kernels/act.cuh"

namespace cunet::ops {
void relu_forward(int64_t n, const float* x, float* y, void* s) { cunet::relu_forward(n, x, y, stream_of(s)); }
void relu_backward(int64_t n, const float* dy, const float* y, float* dx, void* s) {
    cunet::relu_backward(n, dy, y, dx, stream_of(s));
}
void leaky_relu_forward(int64_t n, const float* x, float* y, float slope, void* s) {
    cunet::leaky_relu_forward(n, x, y, slope, stream_of(s));
}
void leaky_relu_backward(int64_t n, const float* dy, const float* x, float* dx, float slope, void* s) {
    cunet::leaky_relu_backward(n, dy, x, dx, slope, stream_of(s));
}
void sigmoid_forward(int64_t n, const float* x, float* y, void* s) { cunet::sigmoid_forward(n, x, y, stream_of(s)); }
void sigmoid_backward(int64_t n, const float* dy, const float* y, float* dx, void* s) {
    cunet::sigmoid_backward(n, dy, y, dx, stream_of(s));
}
void softmax_forward(int64_t N, int64_t C, int64_t S, const float* x, float* y, void* s) {
    cunet::softmax_forward(N, C, S, x, y, stream_of(s));
}
void softmax_backward(int64_t N, int64_t C, int64_t S, const float* dy, const float* y, float* dx, void* s) {
    cunet::softmax_backward(N, C, S, dy, y, dx, stream_of(s));
}
void bias_add(int64_t N, int64_t C, int64_t S, const float* b, float* y, void* s) {
    cunet::bias_add(N, C, S, b, y, stream_of(s));
}
}  // namespace cunet::ops
