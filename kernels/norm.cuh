// norm.cuh: batch norm. Statistics per channel c over its M = N*S values x[:, c, :].
//
// Layouts: x, y, dy, dx                                  (N, C, S), S = prod(spatial)
//          gamma, beta, mean, invstd, running_mean,
//          running_var, dgamma, dbeta                    (C,)
//
// Entry points (kernels, extern "C"):
//   batchnorm_stats_partials(N, C, S, G, x, part)
//       cooperative, grid C*G, any block: one pass over slice g of channel c's M values
//       (G contiguous slices of the (n, s) order): part[(c*G + g)*2 + {0, 1}] = the slice's
//       mean and Σ(x - mean)². Each thread sums shifts from its own first value, and threads
//       and slices combine by deviations from their means (M2 = Σ M2_i + n_i (mean_i -
//       mean)²): no E[x²] - E[x]² cancellation for a large mean. G slices per channel keep
//       a GPU busy when C is small.
//   batchnorm_stats_finalize(N, C, S, G, part, mean, invstd, running_mean, running_var,
//                            momentum, eps)     loop over C: the G slices combined in order;
//       invstd = 1/sqrt(var + eps) with the biased var; running_* (null: skipped) move
//       towards mean and the unbiased var (PyTorch's rule).
//   batchnorm_eval_stats(C, running_mean, running_var, mean, invstd, eps)        loop over C
//   batchnorm_normalize(N, C, S, x, mean, invstd, gamma, beta, y)               loop over N*C*S
//   batchnorm_backward_partials(N, C, S, G, dy, x, mean, invstd, part)
//       cooperative, grid C*G, any block: part[(c*G + g)*2 + {0, 1}] = Σ dy, Σ dy·xhat over
//       slice g, xhat = (x - mean)·invstd
//   batchnorm_backward_finalize(C, G, part, dgamma, dbeta)   loop over C: dbeta = Σ dy,
//       dgamma = Σ dy·xhat (partials summed in order)
//   batchnorm_backward_data(N, C, S, dy, x, mean, invstd, gamma, dgamma, dbeta, dx, training)
//       loop over N*C*S. training: dx = gamma·invstd·(dy - (dbeta + xhat·dgamma)/M)
//       (through the batch statistics); eval: dx = gamma·invstd·dy.
//
// The cooperative kernels' threads stride over their slice of the channel in (n, s) order
// (coalesced within each row). Deterministic: fixed slices, fixed reduction trees, partials
// summed in order. G: cunet/_ops/norm.py's batchnorm_groups (any G >= 1 is valid).
// Host build: normalize and backward_data run row loops (no division per element) unless
// host_variants() is off; the partials kernels walk contiguous row segments with 1 thread.
#pragma once
#include "portable.cuh"

// ---- kernels

namespace cunet {
// Calls f(i) for the block thread's share of slice g (of G) of channel c's M = N*S values in
// (n, s) order, i the flat index into (N, C, S), stepping by blockDim.x; (n, s) advance
// without a division per element.
template <class F>
__device__ __forceinline__ void for_slice(int64_t N, int64_t C, int64_t S, int64_t G, int64_t c, int64_t g, F&& f) {
    const int64_t M = N * S, step = blockDim.x, end = (g + 1) * M / G;
    int64_t m = g * M / G + threadIdx.x, n = m / S, s = m % S;
    if (step == 1) {   // host loop mode: the slice's row segments, contiguous inner loops
        for (; m < end; s = 0, ++n) {
            const int64_t e = s + (end - m) < S ? s + (end - m) : S, row = (n * C + c) * S;
            for (int64_t j = s; j < e; ++j) f(row + j);
            m += e - s;
        }
        return;
    }
    const int64_t dn = step / S, ds = step % S;
    for (; m < end; m += step) {
        f((n * C + c) * S + s);
        n += dn, s += ds;
        if (s >= S) s -= S, ++n;
    }
}
}  // namespace cunet

extern "C" __global__ void batchnorm_stats_partials(int64_t N, int64_t C, int64_t S, int64_t G,
                                                    const float* __restrict__ x, float* __restrict__ part) {
    __shared__ cunet::acc_t mean_sh;
    const int64_t c = blockIdx.x / G, g = blockIdx.x % G, M = N * S;
    // this thread: count, mean and M2 of its values, summed as shifts from its first value
    const int64_t first = g * M / G + threadIdx.x;   // (n, s) -> x index of the thread's first value
    const cunet::acc_t K = first < (g + 1) * M / G ? x[((first / S) * C + c) * S + first % S] : 0;
    cunet::acc_t a = 0, b = 0;
    int64_t cnt = 0;
    cunet::for_slice(N, C, S, G, c, g, [&](int64_t i) {
        ++cnt;
        const cunet::acc_t d = x[i] - K;
        a += d;
        b += d * d;
    });
    const cunet::acc_t n = (cunet::acc_t)cnt, mean_t = cnt ? K + a / n : 0, m2_t = cnt ? b - a * a / n : 0;
    // the block: mean, then M2 = sum of M2_t + n_t (mean_t - mean)^2 (parallel axis theorem)
    const cunet::acc_t sum = cunet::block_sum(n * mean_t), nb = (cunet::acc_t)((g + 1) * M / G - g * M / G);
    if (threadIdx.x == 0) mean_sh = nb > 0 ? sum / nb : 0;
    __syncthreads();
    const cunet::acc_t mu = mean_sh, dm = mean_t - mu;
    const cunet::acc_t m2 = cunet::block_sum(m2_t + n * dm * dm);
    if (threadIdx.x == 0) {
        part[(c * G + g) * 2] = (float)mu;
        part[(c * G + g) * 2 + 1] = (float)m2;
    }
}

extern "C" __global__ void batchnorm_stats_finalize(int64_t N, int64_t C, int64_t S, int64_t G,
                                                    const float* __restrict__ part, float* __restrict__ mean,
                                                    float* __restrict__ invstd, float* __restrict__ running_mean,
                                                    float* __restrict__ running_var, float momentum, float eps) {
    CUNET_LOOP(c, C) {
        const int64_t M = N * S;   // the slices combined like the threads of a block; double: once per channel
        double mu = 0, m2 = 0;
        for (int64_t g = 0; g < G; ++g) mu += (double)((g + 1) * M / G - g * M / G) * part[(c * G + g) * 2];
        mu /= (double)M;
        for (int64_t g = 0; g < G; ++g) {
            const double d = part[(c * G + g) * 2] - mu;
            m2 += part[(c * G + g) * 2 + 1] + (double)((g + 1) * M / G - g * M / G) * d * d;
        }
        const double var = m2 / (double)M;
        mean[c] = (float)mu;
        invstd[c] = (float)(1.0 / sqrt(var + eps));
        if (running_mean) running_mean[c] = running_mean[c] * (1.0f - momentum) + momentum * (float)mu;
        if (running_var)
            running_var[c] = running_var[c] * (1.0f - momentum) + momentum * (float)(m2 / (double)(M > 1 ? M - 1 : 1));
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

extern "C" __global__ void batchnorm_backward_partials(int64_t N, int64_t C, int64_t S, int64_t G,
                                                       const float* __restrict__ dy, const float* __restrict__ x,
                                                       const float* __restrict__ mean,
                                                       const float* __restrict__ invstd, float* __restrict__ part) {
    const int64_t c = blockIdx.x / G, g = blockIdx.x % G;
    const float mu = mean[c], is = invstd[c];
    cunet::acc_t sdy = 0, sdyx = 0;
    cunet::for_slice(N, C, S, G, c, g, [&](int64_t i) {
        sdy += dy[i];
        sdyx += (cunet::acc_t)dy[i] * ((x[i] - mu) * is);
    });
    sdy = cunet::block_sum(sdy);
    sdyx = cunet::block_sum(sdyx);
    if (threadIdx.x == 0) {
        part[(c * G + g) * 2] = (float)sdy;
        part[(c * G + g) * 2 + 1] = (float)sdyx;
    }
}

extern "C" __global__ void batchnorm_backward_finalize(int64_t C, int64_t G, const float* __restrict__ part,
                                                       float* __restrict__ dgamma, float* __restrict__ dbeta) {
    CUNET_LOOP(c, C) {
        cunet::acc_t sdy = 0, sdyx = 0;
        for (int64_t g = 0; g < G; ++g) sdy += part[(c * G + g) * 2], sdyx += part[(c * G + g) * 2 + 1];
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

// Slices per channel of the partials kernels: ~8192 values each, at most ~1024 blocks in
// all (cunet/_ops/norm.py mirrors this). part: C*G*2 floats.
inline int64_t batchnorm_groups(int64_t N, int64_t C, int64_t S) {
    const int64_t by_size = (N * S + 8191) / 8192, by_blocks = 1024 / (C > 0 ? C : 1);
    const int64_t g = by_size < by_blocks ? by_size : by_blocks;
    return g > 1 ? g : 1;
}
inline void batchnorm_stats_partials(int64_t N, int64_t C, int64_t S, int64_t G, const float* x, float* part,
                                     Stream s = 0) {
    CUNET_LAUNCH(::batchnorm_stats_partials, dim3(C * G), dim3(coop_block()), s, N, C, S, G, x, part);
}
inline void batchnorm_stats_finalize(int64_t N, int64_t C, int64_t S, int64_t G, const float* part, float* mean,
                                     float* invstd, float* running_mean, float* running_var, float momentum, float eps,
                                     Stream s = 0) {
    CUNET_LAUNCH_LOOP(::batchnorm_stats_finalize, C, s, N, C, S, G, part, mean, invstd, running_mean, running_var,
                      momentum, eps);
}
inline void batchnorm_eval_stats(int64_t C, const float* running_mean, const float* running_var, float* mean,
                                 float* invstd, float eps, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::batchnorm_eval_stats, C, s, C, running_mean, running_var, mean, invstd, eps);
}
inline void batchnorm_normalize(int64_t N, int64_t C, int64_t S, const float* x, const float* mean,
                                const float* invstd, const float* gamma, const float* beta, float* y, Stream s = 0) {
#if defined(CUNET_HOST)
    if (host_variants()) {   // rows of one channel: no index division per element
#pragma omp parallel for schedule(static) if (N * C * S > 32768)
        for (int64_t r = 0; r < N * C; ++r) {
            const int64_t c = r % C;
            const float w = invstd[c] * gamma[c], m = mean[c], b = beta[c];
            const float* xr = x + r * S;
            float* yr = y + r * S;
#pragma omp simd
            for (int64_t j = 0; j < S; ++j) yr[j] = (xr[j] - m) * w + b;
        }
        return;
    }
#endif
    CUNET_LAUNCH_LOOP(::batchnorm_normalize, N * C * S, s, N, C, S, x, mean, invstd, gamma, beta, y);
}
inline void batchnorm_backward_partials(int64_t N, int64_t C, int64_t S, int64_t G, const float* dy, const float* x,
                                       const float* mean, const float* invstd, float* part, Stream s = 0) {
    CUNET_LAUNCH(::batchnorm_backward_partials, dim3(C * G), dim3(coop_block()), s, N, C, S, G, dy, x, mean, invstd,
                 part);
}
inline void batchnorm_backward_finalize(int64_t C, int64_t G, const float* part, float* dgamma, float* dbeta,
                                        Stream s = 0) {
    CUNET_LAUNCH_LOOP(::batchnorm_backward_finalize, C, s, C, G, part, dgamma, dbeta);
}
inline void batchnorm_backward_data(int64_t N, int64_t C, int64_t S, const float* dy, const float* x,
                                    const float* mean, const float* invstd, const float* gamma, const float* dgamma,
                                    const float* dbeta, float* dx, int64_t training, Stream s = 0) {
#if defined(CUNET_HOST)
    if (host_variants()) {   // rows of one channel, the kernel's expression
        const float inv_m = 1.0f / (float)(N * S);
#pragma omp parallel for schedule(static) if (N * C * S > 32768)
        for (int64_t r = 0; r < N * C; ++r) {
            const int64_t c = r % C;
            const float w = gamma[c] * invstd[c], m = mean[c], is = invstd[c], dg = dgamma[c], db = dbeta[c];
            const float* dyr = dy + r * S;
            const float* xr = x + r * S;
            float* dxr = dx + r * S;
            if (training) {
#pragma omp simd
                for (int64_t j = 0; j < S; ++j) dxr[j] = w * (dyr[j] - (db + (xr[j] - m) * is * dg) * inv_m);
            } else {
#pragma omp simd
                for (int64_t j = 0; j < S; ++j) dxr[j] = dyr[j] * w;
            }
        }
        return;
    }
#endif
    CUNET_LAUNCH_LOOP(::batchnorm_backward_data, N * C * S, s, N, C, S, dy, x, mean, invstd, gamma, dgamma, dbeta, dx,
                      training);
}

}  // namespace cunet
#endif
