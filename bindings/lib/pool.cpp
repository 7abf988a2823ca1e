// libcunet: kernels/pool.cuh's launchers behind the declarations of bindings/cunet.h.
#include "lib.h"
#include "../../kernels/pool.cuh"

namespace cunet::ops {
void maxpool_forward(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t Do, int64_t Ho, int64_t Wo, int64_t KD,
                     int64_t KH, int64_t KW, int64_t SD, int64_t SH, int64_t SW, int64_t PD, int64_t PH, int64_t PW,
                     const float* x, float* y, int64_t* argmax, void* s) {
    cunet::maxpool_forward(NC, D, H, W, Do, Ho, Wo, KD, KH, KW, SD, SH, SW, PD, PH, PW, x, y, argmax, stream_of(s));
}
void maxpool_backward(int64_t NC, int64_t plane, int64_t out_plane, const float* dy, const int64_t* argmax, float* dx,
                      void* s) {
    cunet::maxpool_backward(NC, plane, out_plane, dy, argmax, dx, stream_of(s));
}
}  // namespace cunet::ops
