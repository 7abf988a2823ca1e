// pool.cuh: max pooling, 3D with 2D as D = 1, PyTorch semantics.
//
// Layouts: x (N, C, D, H, W), y and argmax (N, C, Do, Ho, Wo); argmax is the flat index
// of the winner in x's (D, H, W) plane, int64 as in PyTorch. Padding is -inf; ties keep
// the first maximum in window order; a NaN wins (the last one), as in PyTorch.
//
// Entry points (loop kernels):
//   maxpool_forward(N*C, D, H, W, Do, Ho, Wo, KD, KH, KW, SD, SH, SW, PD, PH, PW, x, y, argmax)
//   maxpool_backward(N*C, D*H*W, Do*Ho*Wo, dy, argmax, dx)   adds into dx (zeroed, or a
//       gradient to add to); scatter by atomicAdd, so overlapping windows (stride < kernel)
//       sum in an unspecified order
// Host build: maxpool_forward's launcher runs a row-wise loop, maxpool_backward's a loop per
// plane (plain adds, window order), unless host_variants() is off.
#pragma once
#include "portable.cuh"

// ---- kernels

extern "C" __global__ void maxpool_forward(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t Do, int64_t Ho,
                                           int64_t Wo, int64_t KD, int64_t KH, int64_t KW, int64_t SD, int64_t SH,
                                           int64_t SW, int64_t PD, int64_t PH, int64_t PW,
                                           const float* __restrict__ x, float* __restrict__ y,
                                           int64_t* __restrict__ argmax) {
    CUNET_LOOP(i, NC * Do * Ho * Wo) {
        const int64_t ox = i % Wo, oy = (i / Wo) % Ho, oz = (i / (Wo * Ho)) % Do, nc = i / (Wo * Ho * Do);
        const int64_t z0 = oz * SD - PD, y0 = oy * SH - PH, x0 = ox * SW - PW;
        const float* xc = x + nc * D * H * W;
        float best = cunet::neg_inf();
        int64_t arg = ((z0 > 0 ? z0 : 0) * H + (y0 > 0 ? y0 : 0)) * W + (x0 > 0 ? x0 : 0);
        for (int64_t iz = z0; iz < z0 + KD; ++iz) {
            if (iz < 0 || iz >= D) continue;
            for (int64_t iy = y0; iy < y0 + KH; ++iy) {
                if (iy < 0 || iy >= H) continue;
                for (int64_t ix = x0; ix < x0 + KW; ++ix) {
                    if (ix < 0 || ix >= W) continue;
                    const int64_t at = (iz * H + iy) * W + ix;
                    const float v = xc[at];
                    if (v > best || v != v) { best = v; arg = at; }
                }
            }
        }
        y[i] = best;
        argmax[i] = arg;
    }
}

extern "C" __global__ void maxpool_backward(int64_t NC, int64_t plane, int64_t out_plane,
                                            const float* __restrict__ dy, const int64_t* __restrict__ argmax,
                                            float* __restrict__ dx) {
    CUNET_LOOP(i, NC * out_plane) { atomicAdd(dx + (i / out_plane) * plane + argmax[i], dy[i]); }
}

// ---- launchers
#if !defined(__CUDACC_RTC__)
namespace cunet {

inline void maxpool_forward(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t Do, int64_t Ho, int64_t Wo,
                            int64_t KD, int64_t KH, int64_t KW, int64_t SD, int64_t SH, int64_t SW, int64_t PD,
                            int64_t PH, int64_t PW, const float* x, float* y, int64_t* argmax, Stream s = 0) {
#if defined(CUNET_HOST)
    if (host_variants()) {   // one output row per iteration: no index division per element
#pragma omp parallel for schedule(static) if (NC * Do * Ho * Wo > 32768)
        for (int64_t row = 0; row < NC * Do * Ho; ++row) {
            const int64_t oy = row % Ho, oz = (row / Ho) % Do, nc = row / (Ho * Do);
            const int64_t z0 = oz * SD - PD, y0 = oy * SH - PH;
            const int64_t za = z0 > 0 ? z0 : 0, zb = z0 + KD < D ? z0 + KD : D;
            const int64_t ya = y0 > 0 ? y0 : 0, yb = y0 + KH < H ? y0 + KH : H;
            const float* xc = x + nc * D * H * W;
            float* yr = y + row * Wo;
            int64_t* ar = argmax + row * Wo;
            if (KW == 2 && SW == 2 && PW == 0 && za < zb && ya < yb) {
                // the UNet's 2x2(x2) pooling: window rows in order, each a pair of columns per
                // output; compares vectorised over the output row (ties: first wins, NaN: last)
                for (int64_t ox = 0; ox < Wo; ++ox) { yr[ox] = cunet::neg_inf(); ar[ox] = (za * H + ya) * W + 2 * ox; }
                for (int64_t iz = za; iz < zb; ++iz)
                    for (int64_t iy = ya; iy < yb; ++iy) {
                        const int64_t base = (iz * H + iy) * W;
                        const float* xr = xc + base;
#pragma omp simd
                        for (int64_t ox = 0; ox < Wo; ++ox) {
                            const float v0 = xr[2 * ox], v1 = xr[2 * ox + 1];
                            float best = yr[ox];
                            int64_t arg = ar[ox];
                            if (v0 > best || v0 != v0) { best = v0; arg = base + 2 * ox; }
                            if (v1 > best || v1 != v1) { best = v1; arg = base + 2 * ox + 1; }
                            yr[ox] = best;
                            ar[ox] = arg;
                        }
                    }
                continue;
            }
            for (int64_t ox = 0; ox < Wo; ++ox) {
                const int64_t x0 = ox * SW - PW, xa = x0 > 0 ? x0 : 0, xb = x0 + KW < W ? x0 + KW : W;
                float best = cunet::neg_inf();
                int64_t arg = (za * H + ya) * W + xa;   // the window's first real voxel (all -inf)
                for (int64_t iz = za; iz < zb; ++iz)
                    for (int64_t iy = ya; iy < yb; ++iy)
                        for (int64_t ix = xa; ix < xb; ++ix) {
                            const int64_t at = (iz * H + iy) * W + ix;
                            const float v = xc[at];
                            if (v > best || v != v) { best = v; arg = at; }
                        }
                yr[ox] = best;
                ar[ox] = arg;
            }
        }
        return;
    }
#endif
    CUNET_LAUNCH_LOOP(::maxpool_forward, NC * Do * Ho * Wo, s, NC, D, H, W, Do, Ho, Wo, KD, KH, KW, SD, SH, SW,
                      PD, PH, PW, x, y, argmax);
}
inline void maxpool_backward(int64_t NC, int64_t plane, int64_t out_plane, const float* dy, const int64_t* argmax,
                             float* dx, Stream s = 0) {
#if defined(CUNET_HOST)
    if (host_variants()) {   // one (n, c) plane per iteration: plain adds in window order, no atomics
#pragma omp parallel for schedule(static) if (NC * out_plane > 32768)
        for (int64_t nc = 0; nc < NC; ++nc) {
            float* d = dx + nc * plane;
            const float* g = dy + nc * out_plane;
            const int64_t* a = argmax + nc * out_plane;
            for (int64_t i = 0; i < out_plane; ++i) d[a[i]] += g[i];
        }
        return;
    }
#endif
    CUNET_LAUNCH_LOOP(::maxpool_backward, NC * out_plane, s, NC, plane, out_plane, dy, argmax, dx);
}

}  // namespace cunet
#endif
