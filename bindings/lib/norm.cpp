// libcunet: kernels/norm.cuh's launchers behind the declarations of bindings/cunet.h.
#include "lib.h"
#include "../../kernels/norm.cuh"

namespace cunet::ops {
void batchnorm_stats(int64_t N, int64_t C, int64_t S, const float* x, float* mean, float* invstd, float* running_mean,
                     float* running_var, float momentum, float eps, void* s) {
    cunet::batchnorm_stats(N, C, S, x, mean, invstd, running_mean, running_var, momentum, eps, stream_of(s));
}
void batchnorm_eval_stats(int64_t C, const float* running_mean, const float* running_var, float* mean, float* invstd,
                          float eps, void* s) {
    cunet::batchnorm_eval_stats(C, running_mean, running_var, mean, invstd, eps, stream_of(s));
}
void batchnorm_normalize(int64_t N, int64_t C, int64_t S, const float* x, const float* mean, const float* invstd,
                         const float* gamma, const float* beta, float* y, void* s) {
    cunet::batchnorm_normalize(N, C, S, x, mean, invstd, gamma, beta, y, stream_of(s));
}
void batchnorm_backward_reduce(int64_t N, int64_t C, int64_t S, const float* dy, const float* x, const float* mean,
                               const float* invstd, float* dgamma, float* dbeta, void* s) {
    cunet::batchnorm_backward_reduce(N, C, S, dy, x, mean, invstd, dgamma, dbeta, stream_of(s));
}
void batchnorm_backward_data(int64_t N, int64_t C, int64_t S, const float* dy, const float* x, const float* mean,
                             const float* invstd, const float* gamma, const float* dgamma, const float* dbeta,
                             float* dx, int64_t training, void* s) {
    cunet::batchnorm_backward_data(N, C, S, dy, x, mean, invstd, gamma, dgamma, dbeta, dx, training, stream_of(s));
}
}  // namespace cunet::ops
