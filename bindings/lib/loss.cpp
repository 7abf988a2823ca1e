// libcunet: kernels/loss.cuh's launchers behind the declarations of bindings/cunet.h.
#include "lib.h"
#include "../../kernels/loss.cuh"

namespace cunet::ops {
void softmax_loss_partials(int64_t N, int64_t K, int64_t S, const float* logits, const int64_t* labels,
                           const float* class_weights, float smooth, int64_t blocks, float* partials, void* s) {
    cunet::softmax_loss_partials(N, K, S, logits, labels, class_weights, smooth, blocks, partials, stream_of(s));
}
void sigmoid_loss_partials(int64_t N, int64_t K, int64_t S, const float* logits, const float* target, float smooth,
                           int64_t blocks, float* partials, void* s) {
    cunet::sigmoid_loss_partials(N, K, S, logits, target, smooth, blocks, partials, stream_of(s));
}
void dice_loss_finalize(int64_t K, int64_t V, int64_t blocks, const float* partials, float smooth, int64_t voxel,
                        int64_t first, float dice_weight, float ce_weight, float* coef, float* loss, void* s) {
    cunet::dice_loss_finalize(K, V, blocks, partials, smooth, voxel, first, dice_weight, ce_weight, coef, loss,
                              stream_of(s));
}
void softmax_loss_backward(int64_t N, int64_t K, int64_t S, const float* logits, const int64_t* labels,
                           const float* class_weights, const float* coef, float smooth, int64_t voxel,
                           float* dlogits, void* s) {
    cunet::softmax_loss_backward(N, K, S, logits, labels, class_weights, coef, smooth, voxel, dlogits, stream_of(s));
}
void sigmoid_loss_backward(int64_t N, int64_t K, int64_t S, const float* logits, const float* target,
                           const float* coef, float smooth, int64_t voxel, float* dlogits, void* s) {
    cunet::sigmoid_loss_backward(N, K, S, logits, target, coef, smooth, voxel, dlogits, stream_of(s));
}
void regression_loss_partials(int64_t n, const float* output, const float* target, int64_t l1, int64_t blocks,
                              float* grad, float* partials, void* s) {
    cunet::regression_loss_partials(n, output, target, l1, blocks, grad, partials, stream_of(s));
}
void regression_loss_finalize(int64_t n, int64_t blocks, const float* partials, float* loss, void* s) {
    cunet::regression_loss_finalize(n, blocks, partials, loss, stream_of(s));
}
}  // namespace cunet::ops
