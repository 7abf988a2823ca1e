// libcunet: kernels/optim.cuh's launchers behind the declarations of bindings/cunet.h.
#include "lib.h"
#include "../../kernels/optim.cuh"

namespace cunet::ops {
void sgd_update(int64_t n, float* param, const float* grad, float* velocity, float lr, float momentum,
                int64_t nesterov, float weight_decay, float l1, void* s) {
    cunet::sgd_update(n, param, grad, velocity, lr, momentum, nesterov, weight_decay, l1, stream_of(s));
}
void adam_update(int64_t n, float* param, const float* grad, float* m, float* v, float lr, float one_minus_beta1,
                 float one_minus_beta2, float eps, float weight_decay, float l1, int64_t decoupled,
                 float bias_correction1, float bias_correction2_sqrt, void* s) {
    cunet::adam_update(n, param, grad, m, v, lr, one_minus_beta1, one_minus_beta2, eps, weight_decay, l1, decoupled,
                       bias_correction1, bias_correction2_sqrt, stream_of(s));
}
void sgd_update_scalars(int64_t n, float* param, const float* grad, float* velocity, const float* scalars,
                        float momentum, int64_t nesterov, float weight_decay, float l1, void* s) {
    cunet::sgd_update_scalars(n, param, grad, velocity, scalars, momentum, nesterov, weight_decay, l1, stream_of(s));
}
void adam_update_scalars(int64_t n, float* param, const float* grad, float* m, float* v, const float* scalars,
                         float one_minus_beta1, float one_minus_beta2, float eps, float weight_decay, float l1,
                         int64_t decoupled, void* s) {
    cunet::adam_update_scalars(n, param, grad, m, v, scalars, one_minus_beta1, one_minus_beta2, eps, weight_decay, l1,
                               decoupled, stream_of(s));
}
void norms_partials(int64_t n, const float* x, float* partials, void* s) {
    cunet::norms_partials(n, x, partials, stream_of(s));
}
void norms_finalize(int64_t G, const float* partials, float* out, float w_abs, float w_sq, void* s) {
    cunet::norms_finalize(G, partials, out, w_abs, w_sq, stream_of(s));
}
}  // namespace cunet::ops
