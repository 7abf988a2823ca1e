#include "bind.h"

void cunet::bind_optim(py::module_& m) {
    CUNET_DEF(sgd_update, [](int64_t n, P param, P grad, P velocity, float lr, float momentum, int64_t nesterov,
                             float weight_decay, float l1) {
        cunet::sgd_update(n, f(param), cf(grad), f(velocity), lr, momentum, nesterov, weight_decay, l1); });
    CUNET_DEF(adam_update, [](int64_t n, P param, P grad, P m, P v, float lr, float one_minus_beta1,
                              float one_minus_beta2, float eps, float weight_decay, float l1, int64_t decoupled,
                              float bias_correction1, float bias_correction2_sqrt) {
        cunet::adam_update(n, f(param), cf(grad), f(m), f(v), lr, one_minus_beta1, one_minus_beta2, eps, weight_decay,
                           l1, decoupled, bias_correction1, bias_correction2_sqrt); });
    CUNET_DEF(sgd_update_scalars, [](int64_t n, P param, P grad, P velocity, P scalars, float momentum,
                                     int64_t nesterov, float weight_decay, float l1) {
        cunet::sgd_update_scalars(n, f(param), cf(grad), f(velocity), cf(scalars), momentum, nesterov, weight_decay,
                                  l1); });
    CUNET_DEF(adam_update_scalars, [](int64_t n, P param, P grad, P m, P v, P scalars, float one_minus_beta1,
                                      float one_minus_beta2, float eps, float weight_decay, float l1,
                                      int64_t decoupled) {
        cunet::adam_update_scalars(n, f(param), cf(grad), f(m), f(v), cf(scalars), one_minus_beta1, one_minus_beta2,
                                   eps, weight_decay, l1, decoupled); });
    CUNET_DEF(norms_partials, [](int64_t n, P x, P partials) { cunet::norms_partials(n, cf(x), f(partials)); });
    CUNET_DEF(norms_finalize, [](int64_t G, P partials, P out, float w_abs, float w_sq) {
        cunet::norms_finalize(G, cf(partials), f(out), w_abs, w_sq); });
}
