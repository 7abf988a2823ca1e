// libcunet: kernels/dropout.cuh's launchers behind the declarations of bindings/cunet.h.
#include "lib.h"
#include "../../kernels/dropout.cuh"

namespace cunet::ops {
void dropout_forward(int64_t n, const float* x, float* y, float p, int64_t seed_lo, int64_t seed_hi, void* s) {
    cunet::dropout_forward(n, x, y, p, seed_lo, seed_hi, stream_of(s));
}
void dropout_backward(int64_t n, const float* dy, float* dx, float p, int64_t seed_lo, int64_t seed_hi, void* s) {
    cunet::dropout_backward(n, dy, dx, p, seed_lo, seed_hi, stream_of(s));
}
void dropout_forward_seeded(int64_t n, const float* x, float* y, float p, const int64_t* seed, void* s) {
    cunet::dropout_forward_seeded(n, x, y, p, seed, stream_of(s));
}
void dropout_backward_seeded(int64_t n, const float* dy, float* dx, float p, const int64_t* seed, void* s) {
    cunet::dropout_backward_seeded(n, dy, dx, p, seed, stream_of(s));
}
}  // namespace cunet::ops
