// libcunet: kernels/norm.cuh's launchers behind the declarations of bindings/cunet.h.
#include "lib.h"
#include "../../kernels/norm.cuh"

namespace cunet::ops {
int64_t batchnorm_groups(int64_t N, int64_t C, int64_t S) { return cunet::batchnorm_groups(N, C, S); }
void batchnorm_stats_partials(int64_t N, int64_t C, int64_t S, int64_t G, const float* x, float* part, void* s) {
    cunet::batchnorm_stats_partials(N, C, S, G, x, part, stream_of(s));
}
void batchnorm_stats_finalize(int64_t N, int64_t C, int64_t S, int64_t G, const float* part, float* mean,
                              float* invstd, float* running_mean, float* running_var, float momentum, float eps,
                              void* s) {
    cunet::batchnorm_stats_finalize(N, C, S, G, part, mean, invstd, running_mean, running_var, momentum, eps,
                                    stream_of(s));
}
void batchnorm_eval_stats(int64_t C, const float* running_mean, const float* running_var, float* mean, float* invstd,
                          float eps, void* s) {
    cunet::batchnorm_eval_stats(C, running_mean, running_var, mean, invstd, eps, stream_of(s));
}
void batchnorm_normalize(int64_t N, int64_t C, int64_t S, const float* x, const float* mean, const float* invstd,
                         const float* gamma, const float* beta, float* y, void* s) {
    cunet::batchnorm_normalize(N, C, S, x, mean, invstd, gamma, beta, y, stream_of(s));
}
void batchnorm_backward_partials(int64_t N, int64_t C, int64_t S, int64_t G, const float* dy, const float* x,
                                 const float* mean, const float* invstd, float* part, void* s) {
    cunet::batchnorm_backward_partials(N, C, S, G, dy, x, mean, invstd, part, stream_of(s));
}
void batchnorm_backward_finalize(int64_t C, int64_t G, const float* part, float* dgamma, float* dbeta, void* s) {
    cunet::batchnorm_backward_finalize(C, G, part, dgamma, dbeta, stream_of(s));
}
void batchnorm_backward_data(int64_t N, int64_t C, int64_t S, const float* dy, const float* x, const float* mean,
                             const float* invstd, const float* gamma, const float* dgamma, const float* dbeta,
                             float* dx, int64_t training, void* s) {
    cunet::batchnorm_backward_data(N, C, S, dy, x, mean, invstd, gamma, dgamma, dbeta, dx, training, stream_of(s));
}
}  // namespace cunet::ops
