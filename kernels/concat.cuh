// concat.cuh: channel concatenation and its split, as one strided channel copy.
//
// Layouts: src (N, src_C, S), dst (N, dst_C, S), S = prod(spatial).
// concat_copy copies channels [src_off, src_off + C) of src to [dst_off, dst_off + C) of dst:
// forward, each input into its slice of y; backward, each slice of dy into its dx.
//
// Entry points (loop kernel): concat_copy(N, C, S, src, src_C, src_off, dst, dst_C, dst_off)
// Host build: the launcher copies whole rows (memcpy) unless host_variants() is off.
#pragma once
#include "portable.cuh"

// ---- kernels

extern "C" __global__ void concat_copy(int64_t N, int64_t C, int64_t S, const float* __restrict__ src,
                                       int64_t src_C, int64_t src_off, float* __restrict__ dst, int64_t dst_C,
                                       int64_t dst_off) {
    CUNET_LOOP(i, N * C * S) {
        const int64_t s = i % S, c = (i / S) % C, n = i / (S * C);
        dst[(n * dst_C + dst_off + c) * S + s] = src[(n * src_C + src_off + c) * S + s];
    }
}

// ---- launchers
#if !defined(__CUDACC_RTC__)
namespace cunet {

inline void concat_copy(int64_t N, int64_t C, int64_t S, const float* src, int64_t src_C, int64_t src_off,
                        float* dst, int64_t dst_C, int64_t dst_off, Stream s = 0) {
#if defined(CUNET_HOST)
    if (host_variants()) {   // one memcpy per (n, c) row instead of a division per element
#pragma omp parallel for schedule(static) if (N * C * S > 32768)
        for (int64_t r = 0; r < N * C; ++r)
            std::memcpy(dst + ((r / C) * dst_C + dst_off + r % C) * S, src + ((r / C) * src_C + src_off + r % C) * S,
                        S * sizeof(float));
        return;
    }
#endif
    CUNET_LAUNCH_LOOP(::concat_copy, N * C * S, s, N, C, S, src, src_C, src_off, dst, dst_C, dst_off);
}

}  // namespace cunet
#endif
