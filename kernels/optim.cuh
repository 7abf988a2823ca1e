// optim.cuh: fused optimizer steps, in place, and the parameter norms of L1/L2 penalties
// and gradient clipping. Formulas: torch.optim.SGD (dampening 0), Adam, AdamW, plus an L1
// term l1·sign(p) in the gradient (see cunet.reference.sgd_update / adam_update).
//
// Layouts: param, grad, velocity, m, v, x   (n,) flat: a model's whole buffer or a slice
//          partials                         (2G,) per block b: [b] = Σ|x|, [G + b] = Σx²
//          out                              (1,)
//
// Entry points (kernels, extern "C"):
//   sgd_update(n, param, grad, velocity, lr, momentum, nesterov, weight_decay, l1)    loop
//   adam_update(n, param, grad, m, v, lr, one_minus_beta1, one_minus_beta2, eps,
//               weight_decay, l1, decoupled, bias_correction1, bias_correction2_sqrt)  loop
//       the caller passes 1 - beta (float(1 - 0.999) keeps 1-beta2 to 8 digits, where
//       1 - float(0.999) keeps 4), bias_correction1 = 1 - beta1^step and
//       bias_correction2_sqrt = sqrt(1 - beta2^step), computed in double.
//   sgd_update_scalars(n, param, grad, velocity, scalars, momentum, nesterov, weight_decay, l1)
//   adam_update_scalars(n, param, grad, m, v, scalars, one_minus_beta1, one_minus_beta2, eps,
//                       weight_decay, l1, decoupled)                                   loop
//       the same updates with the step-dependent scalars read from device memory, so a
//       captured CUDA graph (which replays frozen kernel arguments) follows the schedule
//       and the step count: scalars (1,) = [lr] for SGD, (3,) = [lr, bias_correction1,
//       bias_correction2_sqrt] for Adam, written by the host before each step. lr == 0
//       leaves param and state untouched (what the host-side skip of cunet.optim does).
//   norms_partials(n, x, partials)              cooperative, grid G = norms_grid(n), any block
//   norms_finalize(G, partials, out, w_abs, w_sq)   cooperative, grid 1, any block:
//       out = w_abs·Σ|x| + w_sq·Σx², partials summed in a fixed order (deterministic).
//       penalty(l1, l2): w_abs = l1, w_sq = l2/2; sum of squares: w_abs = 0, w_sq = 1.
#pragma once
#include "portable.cuh"

namespace cunet {
__device__ __forceinline__ float optim_sign(float v) { return (float)((v > 0.0f) - (v < 0.0f)); }

// The update bodies, shared by the by-value and the device-scalar kernels (same bits).
__device__ __forceinline__ void sgd_body(int64_t n, float* __restrict__ param, const float* __restrict__ grad,
                                         float* __restrict__ velocity, float lr, float momentum, int64_t nesterov,
                                         float weight_decay, float l1) {
    CUNET_LOOP(i, n) {
        const float p = param[i];
        float g = grad[i] + weight_decay * p + l1 * cunet::optim_sign(p);
        if (momentum != 0.0f) {   // velocity untouched without momentum, as in the reference
            const float buf = momentum * velocity[i] + g;
            velocity[i] = buf;
            g = nesterov ? g + momentum * buf : buf;
        }
        param[i] = p - lr * g;
    }
}

__device__ __forceinline__ void adam_body(int64_t n, float* __restrict__ param, const float* __restrict__ grad,
                                          float* __restrict__ m, float* __restrict__ v, float lr,
                                          float one_minus_beta1, float one_minus_beta2, float eps, float weight_decay,
                                          float l1, int64_t decoupled, float bias_correction1,
                                          float bias_correction2_sqrt) {
    const float p_scale = decoupled ? 1.0f - lr * weight_decay : 1.0f;   // AdamW decays the parameter,
    const float wd_grad = decoupled ? 0.0f : weight_decay;               // Adam the gradient
    const float step_size = lr / bias_correction1;
    CUNET_LOOP(i, n) {
        const float p = param[i] * p_scale;
        const float g = grad[i] + wd_grad * p + l1 * cunet::optim_sign(p);
        const float mi = m[i] + one_minus_beta1 * (g - m[i]);         // = beta1·m + (1 - beta1)·g
        const float vi = v[i] + one_minus_beta2 * (g * g - v[i]);
        m[i] = mi;
        v[i] = vi;
        param[i] = p - step_size * mi / (sqrtf(vi) / bias_correction2_sqrt + eps);
    }
}
}  // namespace cunet

// ---- kernels

extern "C" __global__ void sgd_update(int64_t n, float* __restrict__ param, const float* __restrict__ grad,
                                      float* __restrict__ velocity, float lr, float momentum, int64_t nesterov,
                                      float weight_decay, float l1) {
    cunet::sgd_body(n, param, grad, velocity, lr, momentum, nesterov, weight_decay, l1);
}

extern "C" __global__ void adam_update(int64_t n, float* __restrict__ param, const float* __restrict__ grad,
                                       float* __restrict__ m, float* __restrict__ v, float lr, float one_minus_beta1,
                                       float one_minus_beta2, float eps, float weight_decay, float l1,
                                       int64_t decoupled, float bias_correction1, float bias_correction2_sqrt) {
    cunet::adam_body(n, param, grad, m, v, lr, one_minus_beta1, one_minus_beta2, eps, weight_decay, l1, decoupled,
                     bias_correction1, bias_correction2_sqrt);
}

extern "C" __global__ void sgd_update_scalars(int64_t n, float* __restrict__ param, const float* __restrict__ grad,
                                              float* __restrict__ velocity, const float* __restrict__ scalars,
                                              float momentum, int64_t nesterov, float weight_decay, float l1) {
    const float lr = scalars[0];
    if (lr == 0.0f) return;   // uniform over the grid
    cunet::sgd_body(n, param, grad, velocity, lr, momentum, nesterov, weight_decay, l1);
}

extern "C" __global__ void adam_update_scalars(int64_t n, float* __restrict__ param, const float* __restrict__ grad,
                                               float* __restrict__ m, float* __restrict__ v,
                                               const float* __restrict__ scalars, float one_minus_beta1,
                                               float one_minus_beta2, float eps, float weight_decay, float l1,
                                               int64_t decoupled) {
    const float lr = scalars[0];
    if (lr == 0.0f) return;
    cunet::adam_body(n, param, grad, m, v, lr, one_minus_beta1, one_minus_beta2, eps, weight_decay, l1, decoupled,
                     scalars[1], scalars[2]);
}

extern "C" __global__ void norms_partials(int64_t n, const float* __restrict__ x, float* __restrict__ partials) {
    int64_t begin, end;
    cunet::block_range(n, begin, end);
    cunet::acc_t a = 0, q = 0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        a += fabsf(x[i]);
        q += (cunet::acc_t)x[i] * x[i];
    }
    a = cunet::block_sum(a);
    q = cunet::block_sum(q);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = (float)a;
        partials[gridDim.x + blockIdx.x] = (float)q;
    }
}

extern "C" __global__ void norms_finalize(int64_t G, const float* __restrict__ partials, float* __restrict__ out,
                                          float w_abs, float w_sq) {
    cunet::acc_t a = 0, q = 0;
    for (int64_t b = threadIdx.x; b < G; b += blockDim.x) {
        a += partials[b];
        q += partials[G + b];
    }
    a = cunet::block_sum(a);
    q = cunet::block_sum(q);
    if (threadIdx.x == 0) out[0] = (float)(w_abs * a + w_sq * q);
}

// ---- launchers
#if !defined(__CUDACC_RTC__)
namespace cunet {

// Blocks of norms_partials: about 4096 items each, at most 1024 (cunet/_ops/optim.py mirrors this).
inline unsigned norms_grid(int64_t n) {
    const int64_t g = (n + 4095) / 4096;
    return (unsigned)(g < 1 ? 1 : g > 1024 ? 1024 : g);
}

inline void sgd_update(int64_t n, float* param, const float* grad, float* velocity, float lr, float momentum,
                       int64_t nesterov, float weight_decay, float l1, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::sgd_update, n, s, n, param, grad, velocity, lr, momentum, nesterov, weight_decay, l1);
}
inline void adam_update(int64_t n, float* param, const float* grad, float* m, float* v, float lr,
                        float one_minus_beta1, float one_minus_beta2, float eps, float weight_decay, float l1,
                        int64_t decoupled, float bias_correction1, float bias_correction2_sqrt, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::adam_update, n, s, n, param, grad, m, v, lr, one_minus_beta1, one_minus_beta2, eps,
                      weight_decay, l1, decoupled, bias_correction1, bias_correction2_sqrt);
}
inline void sgd_update_scalars(int64_t n, float* param, const float* grad, float* velocity, const float* scalars,
                               float momentum, int64_t nesterov, float weight_decay, float l1, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::sgd_update_scalars, n, s, n, param, grad, velocity, scalars, momentum, nesterov, weight_decay,
                      l1);
}
inline void adam_update_scalars(int64_t n, float* param, const float* grad, float* m, float* v, const float* scalars,
                                float one_minus_beta1, float one_minus_beta2, float eps, float weight_decay, float l1,
                                int64_t decoupled, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::adam_update_scalars, n, s, n, param, grad, m, v, scalars, one_minus_beta1, one_minus_beta2,
                      eps, weight_decay, l1, decoupled);
}
inline void norms_partials(int64_t n, const float* x, float* partials, Stream s = 0) {
    CUNET_LAUNCH(::norms_partials, dim3(norms_grid(n)), dim3(coop_block()), s, n, x, partials);
}
inline void norms_finalize(int64_t G, const float* partials, float* out, float w_abs, float w_sq, Stream s = 0) {
    CUNET_LAUNCH(::norms_finalize, dim3(1), dim3(coop_block()), s, G, partials, out, w_abs, w_sq);
}

}  // namespace cunet
#endif
