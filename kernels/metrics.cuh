// metrics.cuh: confusion counts of two label maps, the input of Dice / IoU scores.
//
// Layouts: pred, target   (n,) int64 in [0, K), any shape flattened
//          tp, fp, fn     (K,) int64, zeroed by the caller; K <= kMetricsMaxClasses
//
// Entry points (kernels, extern "C"):
//   confusion_histogram(n, K, pred, target, tp, fp, fn)   cooperative, metrics_grid(n) blocks of any size:
//       per class c, tp += #(pred == target == c), fp += #(pred == c != target), fn += #(target == c != pred)
#pragma once
#include "portable.cuh"

namespace cunet {
constexpr int kMetricsMaxClasses = 256;   // shared histogram: 3 * 256 counters of 4 bytes per block
}

// ---- kernels

// A block counts its contiguous chunk into a shared histogram (32-bit: a chunk is far below 2^32
// items), then adds its nonzero counters to the global ones (integer atomics: order-free, exact).
extern "C" __global__ void confusion_histogram(int64_t n, int64_t K, const int64_t* __restrict__ pred,
                                               const int64_t* __restrict__ target, int64_t* __restrict__ tp,
                                               int64_t* __restrict__ fp, int64_t* __restrict__ fn) {
    __shared__ unsigned int hist[3 * cunet::kMetricsMaxClasses];   // [tp | fp | fn] x K
    for (int64_t c = threadIdx.x; c < 3 * K; c += blockDim.x) hist[c] = 0u;
    __syncthreads();
    int64_t begin, end;
    cunet::block_range(n, begin, end);
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const int64_t p = pred[i], t = target[i];
        if (p == t) {
            atomicAdd(&hist[p], 1u);
        } else {
            atomicAdd(&hist[K + p], 1u);
            atomicAdd(&hist[2 * K + t], 1u);
        }
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < 3 * K; c += blockDim.x) {
        int64_t* out = c < K ? tp + c : c < 2 * K ? fp + (c - K) : fn + (c - 2 * K);
        if (hist[c]) atomicAdd(reinterpret_cast<unsigned long long*>(out), (unsigned long long)hist[c]);
    }
}

// ---- launchers
#if !defined(__CUDACC_RTC__)
namespace cunet {

// blocks of confusion_histogram: 4096 items each, at most 1024 (cunet/_ops/metrics.py uses the same)
inline unsigned metrics_grid(int64_t n) {
    const int64_t g = (n + 4095) / 4096;
    return (unsigned)(g < 1 ? 1 : g > 1024 ? 1024 : g);
}

inline void confusion_histogram(int64_t n, int64_t K, const int64_t* pred, const int64_t* target, int64_t* tp,
                                int64_t* fp, int64_t* fn, Stream s = 0) {
    CUNET_LAUNCH(::confusion_histogram, dim3(metrics_grid(n)), dim3(coop_block()), s, n, K, pred, target, tp, fp, fn);
}

}  // namespace cunet
#endif
