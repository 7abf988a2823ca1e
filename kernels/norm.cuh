// norm.cuh: batch norm. Statistics per channel c over its M = N*S values x[:, c, :].
//
// Layouts: x, y, dy, dx                                  (N, C, S), S = prod(spatial)
//          gamma, beta, mean, invstd, running_mean,
//          running_var, dgamma, dbeta                    (C,)
//
// Entry points (kernels, extern "C"):
//   batchnorm_stats(N, C, S, x, mean, invstd, running_mean, running_var, momentum, eps)
//       cooperative, grid C, any block. Two passes over the channel (mean, then Σ(x - mean)²:
//       no cancellation for a large mean). invstd = 1/sqrt(var + eps) with the biased var;
//       running_* (null: skipped) move towards mean and the unbiased var (PyTorch's rule).
//   batchnorm_eval_stats(C, running_mean, running_var, mean, invstd, eps)        loop over C
//   batchnorm_normalize(N, C, S, x, mean, invstd, gamma, beta, y)               loop over N*C*S
//   batchnorm_backward_reduce(N, C, S, dy, x, mean, invstd, dgamma, dbeta)
//       cooperative, grid C, any block: dbeta = Σ dy, dgamma = Σ dy·xhat, xhat = (x - mean)·invstd
//   batchnorm_backward_data(N, C, S, dy, x, mean, invstd, gamma, dgamma, dbeta, dx, training)
//       loop over N*C*S. training: dx = gamma·invstd·(dy - (dbeta + xhat·dgamma)/M)
//       (through the batch statistics); eval: dx = gamma·invstd·dy.
//
// The cooperative kernels' threads stride over S inside each of the N rows of a channel
// (coalesced; where S < blockDim the rest of the block idles: only tiny deep layers).
#pragma once
#include "portable.cuh"

// ---- kernels

extern "C" __global__ void batchnorm_stats(int64_t N, int64_t C, int64_t S, const float* __restrict__ x,
                                           float* __restrict__ mean, float* __restrict__ invstd,
                                           float* __restrict__ running_mean, float* __restrict__ running_var,
                                           float momentum, float eps) {
    __shared__ cunet::acc_t mean_sh;
    const int64_t c = blockIdx.x;
    const cunet::acc_t M = (cunet::acc_t)(N * S);
    cunet::acc_t sum = 0;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t s = threadIdx.x; s < S; s += blockDim.x) sum += x[(n * C + c) * S + s];
    sum = cunet::block_sum(sum);
    if (threadIdx.x == 0) mean_sh = sum / M;
    __syncthreads();
    const cunet::acc_t mu = mean_sh;
    cunet::acc_t sq = 0;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t s = threadIdx.x; s < S; s += blockDim.x) {
            const cunet::acc_t d = x[(n * C + c) * S + s] - mu;
            sq += d * d;
        }
    sq = cunet::block_sum(sq);
    if (threadIdx.x == 0) {
        const cunet::acc_t var = sq / M;
        mean[c] = (float)mu;
        invstd[c] = (float)(1.0 / sqrt((double)var + eps));   // once per channel: double is free
        if (running_mean) running_mean[c] = running_mean[c] * (1.0f - momentum) + momentum * (float)mu;
        if (running_var)
            running_var[c] = running_var[c] * (1.0f - momentum) + momentum * (float)(var * M / (M > 1 ? M - 1 : 1));
    }
}

extern "C" __global__ void batchnorm_eval_stats(int64_t C, const float* __restrict__ running_mean,
                                                const float* __restrict__ running_var, float* __restrict__ mean,
                                                float* __restrict__ invstd, float eps) {
    CUNET_LOOP(c, C) {
        mean[c] = running_mean[c];
        invstd[c] = (float)(1.0 / sqrt((double)running_var[c] + eps));
    }
}

extern "C" __global__ void batchnorm_normalize(int64_t N, int64_t C, int64_t S, const float* __restrict__ x,
                                               const float* __restrict__ mean, const float* __restrict__ invstd,
                                               const float* __restrict__ gamma, const float* __restrict__ beta,
                                               float* __restrict__ y) {
    CUNET_LOOP(i, N * C * S) {
        const int64_t c = (i / S) % C;
        y[i] = (x[i] - mean[c]) * (invstd[c] * gamma[c]) + beta[c];
    }
}

extern "C" __global__ void batchnorm_backward_reduce(int64_t N, int64_t C, int64_t S, const float* __restrict__ dy,
                                                     const float* __restrict__ x, const float* __restrict__ mean,
                                                     const float* __restrict__ invstd, float* __restrict__ dgamma,
                                                     float* __restrict__ dbeta) {
    const int64_t c = blockIdx.x;
    const float mu = mean[c], is = invstd[c];
    cunet::acc_t sdy = 0, sdyx = 0;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t s = threadIdx.x; s < S; s += blockDim.x) {
            const int64_t i = (n * C + c) * S + s;
            sdy += dy[i];
            sdyx += (cunet::acc_t)dy[i] * ((x[i] - mu) * is);
        }
    sdy = cunet::block_sum(sdy);
    sdyx = cunet::block_sum(sdyx);
    if (threadIdx.x == 0) {
        dbeta[c] = (float)sdy;
        dgamma[c] = (float)sdyx;
    }
}

extern "C" __global__ void batchnorm_backward_data(int64_t N, int64_t C, int64_t S, const float* __restrict__ dy,
                                                   const float* __restrict__ x, const float* __restrict__ mean,
                                                   const float* __restrict__ invstd, const float* __restrict__ gamma,
                                                   const float* __restrict__ dgamma, const float* __restrict__ dbeta,
                                                   float* __restrict__ dx, int64_t training) {
    const float inv_m = 1.0f / (float)(N * S);
    CUNET_LOOP(i, N * C * S) {
        const int64_t c = (i / S) % C;
        const float w = gamma[c] * invstd[c];
        dx[i] = training ? w * (dy[i] - (dbeta[c] + (x[i] - mean[c]) * invstd[c] * dgamma[c]) * inv_m) : dy[i] * w;
    }
}

// ---- launchers
#if !defined(__CUDACC_RTC__)
namespace cunet {

inline void batchnorm_stats(int64_t N, int64_t C, int64_t S, const float* x, float* mean, float* invstd,
                            float* running_mean, float* running_var, float momentum, float eps, Stream s = 0) {
    CUNET_LAUNCH(::batchnorm_stats, dim3(C), dim3(coop_block()), s, N, C, S, x, mean, invstd, running_mean,
                 running_var, momentum, eps);
}
inline void batchnorm_eval_stats(int64_t C, const float* running_mean, const float* running_var, float* mean,
                                 float* invstd, float eps, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::batchnorm_eval_stats, C, s, C, running_mean, running_var, mean, invstd, eps);
}
inline void batchnorm_normalize(int64_t N, int64_t C, int64_t S, const float* x, const float* mean,
                                const float* invstd, const float* gamma, const float* beta, float* y, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::batchnorm_normalize, N * C * S, s, N, C, S, x, mean, invstd, gamma, beta, y);
}
inline void batchnorm_backward_reduce(int64_t N, int64_t C, int64_t S, const float* dy, const float* x,
                                      const float* mean, const float* invstd, float* dgamma, float* dbeta,
                                      Stream s = 0) {
    CUNET_LAUNCH(::batchnorm_backward_reduce, dim3(C), dim3(coop_block()), s, N, C, S, dy, x, mean, invstd, dgamma,
                 dbeta);
}
inline void batchnorm_backward_data(int64_t N, int64_t C, int64_t S, const float* dy, const float* x,
                                    const float* mean, const float* invstd, const float* gamma, const float* dgamma,
                                    const float* dbeta, float* dx, int64_t training, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::batchnorm_backward_data, N * C * S, s, N, C, S, dy, x, mean, invstd, gamma, dgamma, dbeta, dx,
                      training);
}

}  // namespace cunet
#endif
