// dropout.cuh: inverted dropout on a counter-based RNG. The mask is a pure function of
// (seed, flat index), so backward regenerates it and nothing is stored between passes.
//
// Layouts: x, y, dy, dx   (n,) flat, any shape
// Mask:    Philox4x32-10 (Random123), key (seed_lo, seed_hi) = the 64-bit seed's 32-bit
//          halves, counter (i lo, i hi, 0, 0) for element i; u = (word 0 >> 8) * 2^-24;
//          kept iff u >= p, kept elements scaled by 1.0f / (1.0f - p). Bit-identical to
//          cunet.reference.philox_uniform / dropout_mask.
//
// Entry points (kernels, extern "C"; loop kernels: any grid, any block):
//   dropout_forward(n, x, y, p, seed_lo, seed_hi)      y = x * mask; the backward pass is the
//                                                      same kernel on (dy, dx)
//   dropout_forward_seeded(n, x, y, p, seed)           the same with seed (2,) int64 =
//       [seed_lo, seed_hi] read from device memory: a captured CUDA graph replays frozen
//       arguments, so the per-step seed lives in a buffer the host rewrites before each replay.
// Launchers: dropout_forward/_backward(_seeded), the backward ones launching the forward kernels.
#pragma once
#include "portable.cuh"

namespace cunet {

// lo 32 bits of a*b, hi 32 bits into `hi`.
__device__ __forceinline__ uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi) {
#if defined(CUNET_GPU)
    hi = __umulhi(a, b);
    return a * b;
#else
    const uint64_t p = (uint64_t)a * b;
    hi = (uint32_t)(p >> 32);
    return (uint32_t)p;
#endif
}

// Word 0 of Philox4x32-10 at counter (c0, c1, 0, 0), key (k0, k1).
__device__ __forceinline__ uint32_t philox_word0(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1) {
    uint32_t c2 = 0, c3 = 0;
    for (int r = 0; r < 10; ++r) {
        if (r) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        uint32_t hi0, hi1;
        const uint32_t lo0 = philox_mulhilo(0xD2511F53u, c0, hi0), lo1 = philox_mulhilo(0xCD9E8D57u, c2, hi1);
        c0 = hi1 ^ c1 ^ k0;
        c2 = hi0 ^ c3 ^ k1;
        c1 = lo1;
        c3 = lo0;
    }
    return c0;
}

// Element i's mask value: 1/(1-p) or 0.
__device__ __forceinline__ float dropout_scale(int64_t i, float p, int64_t seed_lo, int64_t seed_hi) {
    const uint32_t w = philox_word0((uint32_t)i, (uint32_t)((uint64_t)i >> 32), (uint32_t)seed_lo, (uint32_t)seed_hi);
    const float u = (float)(w >> 8) * 5.9604644775390625e-8f;   // exact: 24 bits times 2^-24
    return u >= p ? 1.0f / (1.0f - p) : 0.0f;
}

}  // namespace cunet

// ---- kernels

extern "C" __global__ void dropout_forward(int64_t n, const float* __restrict__ x, float* __restrict__ y, float p,
                                           int64_t seed_lo, int64_t seed_hi) {
    CUNET_LOOP(i, n) { y[i] = x[i] * cunet::dropout_scale(i, p, seed_lo, seed_hi); }
}

extern "C" __global__ void dropout_forward_seeded(int64_t n, const float* __restrict__ x, float* __restrict__ y,
                                                  float p, const int64_t* __restrict__ seed) {
    const int64_t lo = seed[0], hi = seed[1];
    CUNET_LOOP(i, n) { y[i] = x[i] * cunet::dropout_scale(i, p, lo, hi); }
}

// ---- launchers
#if !defined(__CUDACC_RTC__)
namespace cunet {

inline void dropout_forward(int64_t n, const float* x, float* y, float p, int64_t seed_lo, int64_t seed_hi,
                            Stream s = 0) {
    CUNET_LAUNCH_LOOP(::dropout_forward, n, s, n, x, y, p, seed_lo, seed_hi);
}
inline void dropout_backward(int64_t n, const float* dy, float* dx, float p, int64_t seed_lo, int64_t seed_hi,
                             Stream s = 0) {
    CUNET_LAUNCH_LOOP(::dropout_forward, n, s, n, dy, dx, p, seed_lo, seed_hi);
}

inline void dropout_forward_seeded(int64_t n, const float* x, float* y, float p, const int64_t* seed, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::dropout_forward_seeded, n, s, n, x, y, p, seed);
}
inline void dropout_backward_seeded(int64_t n, const float* dy, float* dx, float p, const int64_t* seed,
                                    Stream s = 0) {
    CUNET_LAUNCH_LOOP(::dropout_forward_seeded, n, s, n, dy, dx, p, seed);
}

}  // namespace cunet
#endif
