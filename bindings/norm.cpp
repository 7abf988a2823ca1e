#include "bind.h"

void cunet::bind_norm(py::module_& m) {
    m.def("batchnorm_groups", &cunet::batchnorm_groups, "Slices per channel of the batch-norm partials kernels.");
    CUNET_DEF(batchnorm_stats_partials, [](int64_t N, int64_t C, int64_t S, int64_t G, P x, P part) {
        cunet::batchnorm_stats_partials(N, C, S, G, cf(x), f(part)); });
    CUNET_DEF(batchnorm_stats_finalize, [](int64_t N, int64_t C, int64_t S, int64_t G, P part, P mean, P invstd,
                                           P running_mean, P running_var, float momentum, float eps) {
        cunet::batchnorm_stats_finalize(N, C, S, G, cf(part), f(mean), f(invstd), f(running_mean),
                                        f(running_var), momentum, eps); });
    CUNET_DEF(batchnorm_eval_stats, [](int64_t C, P running_mean, P running_var, P mean, P invstd, float eps) {
        cunet::batchnorm_eval_stats(C, cf(running_mean), cf(running_var), f(mean), f(invstd), eps); });
    CUNET_DEF(batchnorm_normalize, [](int64_t N, int64_t C, int64_t S, P x, P mean, P invstd, P gamma, P beta, P y) {
        cunet::batchnorm_normalize(N, C, S, cf(x), cf(mean), cf(invstd), cf(gamma), cf(beta), f(y)); });
    CUNET_DEF(batchnorm_backward_partials, [](int64_t N, int64_t C, int64_t S, int64_t G, P dy, P x, P mean,
                                              P invstd, P part) {
        cunet::batchnorm_backward_partials(N, C, S, G, cf(dy), cf(x), cf(mean), cf(invstd), f(part)); });
    CUNET_DEF(batchnorm_backward_finalize, [](int64_t C, int64_t G, P part, P dgamma, P dbeta) {
        cunet::batchnorm_backward_finalize(C, G, cf(part), f(dgamma), f(dbeta)); });
    CUNET_DEF(batchnorm_backward_data, [](int64_t N, int64_t C, int64_t S, P dy, P x, P mean, P invstd, P gamma,
                                          P dgamma, P dbeta, P dx, int64_t training) {
        cunet::batchnorm_backward_data(N, C, S, cf(dy), cf(x), cf(mean), cf(invstd), cf(gamma), cf(dgamma), cf(dbeta),
                                       f(dx), training); });
}
