#include "bind.h"

void cunet::bind_loss(py::module_& m) {
    CUNET_DEF(softmax_loss_partials, [](int64_t N, int64_t K, int64_t S, P z, P y, P w, float smooth, int64_t blocks,
                                        P part) {
        cunet::softmax_loss_partials(N, K, S, cf(z), ptr<const int64_t>(y), cf(w), smooth, blocks, f(part)); });
    CUNET_DEF(sigmoid_loss_partials, [](int64_t N, int64_t K, int64_t S, P z, P t, float smooth, int64_t blocks,
                                        P part) {
        cunet::sigmoid_loss_partials(N, K, S, cf(z), cf(t), smooth, blocks, f(part)); });
    CUNET_DEF(dice_loss_finalize, [](int64_t K, int64_t V, int64_t blocks, P part, float smooth, int64_t voxel,
                                     int64_t first, float dice_weight, float ce_weight, P coef, P loss) {
        cunet::dice_loss_finalize(K, V, blocks, cf(part), smooth, voxel, first, dice_weight, ce_weight, f(coef),
                                  f(loss)); });
    CUNET_DEF(softmax_loss_backward, [](int64_t N, int64_t K, int64_t S, P z, P y, P w, P coef, float smooth,
                                        int64_t voxel, P dz) {
        cunet::softmax_loss_backward(N, K, S, cf(z), ptr<const int64_t>(y), cf(w), cf(coef), smooth, voxel, f(dz)); });
    CUNET_DEF(sigmoid_loss_backward, [](int64_t N, int64_t K, int64_t S, P z, P t, P coef, float smooth,
                                        int64_t voxel, P dz) {
        cunet::sigmoid_loss_backward(N, K, S, cf(z), cf(t), cf(coef), smooth, voxel, f(dz)); });
    CUNET_DEF(regression_loss_partials, [](int64_t n, P out, P t, int64_t l1, int64_t blocks, P grad, P part) {
        cunet::regression_loss_partials(n, cf(out), cf(t), l1, blocks, f(grad), f(part)); });
    CUNET_DEF(regression_loss_finalize, [](int64_t n, int64_t blocks, P part, P loss) {
        cunet::regression_loss_finalize(n, blocks, cf(part), f(loss)); });
}
