// conv.cuh: direct convolution, 3D with 2D as D = 1 (KD = SD = DD = 1, PD = 0).
//
// Layouts (PyTorch):  x  (N, Ci, D, H, W)      w  (Co, Ci, KD, KH, KW)
//                     y  (N, Co, Do, Ho, Wo)   b  (Co,) or null
// Geometry: o = i*S - P + k*Dil along each axis; Do = (D + 2PD - DD(KD-1) - 1)/SD + 1.
// The transposed conv is the same three kernels with the roles swapped
// (cunet/_ops/conv.py): its forward is conv_backward_data, its input gradient
// conv_forward, its weight gradient conv_backward_weight with x and dy exchanged.
//
// Entry points:
//   conv_forward(DIMS, x, w, b, y)             loop over y          y = conv(x, w) + b
//   conv_backward_data(DIMS, dy, w, b, dx)     loop over dx         gather, no atomics; + b[ci] if b
//   conv_backward_weight(DIMS, dy, x, dw)      coop, grid Co*Ci*KD*KH*KW, one weight per block
//   channel_sum(N, C, S, x, out)               coop, grid C          out[c] = sum over n, s of x
#pragma once
#include "portable.cuh"

#define CUNET_CONV_DIMS                                                                             \
    int64_t N, int64_t Ci, int64_t Co, int64_t D, int64_t H, int64_t W, int64_t Do, int64_t Ho,   \
    int64_t Wo, int64_t KD, int64_t KH, int64_t KW, int64_t SD, int64_t SH, int64_t SW,           \
    int64_t PD, int64_t PH, int64_t PW, int64_t DD, int64_t DH, int64_t DW
#define CUNET_CONV_ARGS N, Ci, Co, D, H, W, Do, Ho, Wo, KD, KH, KW, SD, SH, SW, PD, PH, PW, DD, DH, DW

// ---- kernels

// One output voxel per iteration: sum over input channels and taps inside the image.
extern "C" __global__ void conv_forward(CUNET_CONV_DIMS, const float* __restrict__ x,
                                        const float* __restrict__ w, const float* __restrict__ b,
                                        float* __restrict__ y) {
    CUNET_LOOP(i, N * Co * Do * Ho * Wo) {
        const int64_t ox = i % Wo, oy = (i / Wo) % Ho, oz = (i / (Wo * Ho)) % Do;
        const int64_t co = (i / (Wo * Ho * Do)) % Co, n = i / (Wo * Ho * Do * Co);
        float acc = b ? b[co] : 0.0f;
        for (int64_t ci = 0; ci < Ci; ++ci) {
            const float* xc = x + (n * Ci + ci) * D * H * W;
            const float* wc = w + (co * Ci + ci) * KD * KH * KW;
            for (int64_t kz = 0; kz < KD; ++kz) {
                const int64_t iz = oz * SD - PD + kz * DD;
                if (iz < 0 || iz >= D) continue;
                for (int64_t ky = 0; ky < KH; ++ky) {
                    const int64_t iy = oy * SH - PH + ky * DH;
                    if (iy < 0 || iy >= H) continue;
                    for (int64_t kx = 0; kx < KW; ++kx) {
                        const int64_t ix = ox * SW - PW + kx * DW;
                        if (ix < 0 || ix >= W) continue;
                        acc += wc[(kz * KH + ky) * KW + kx] * xc[(iz * H + iy) * W + ix];
                    }
                }
            }
        }
        y[i] = acc;
    }
}

// One input voxel per iteration: gathers dy at every output whose window read it,
// i.e. o = (i + P - k*Dil) / S where that division is exact and o is in range.
extern "C" __global__ void conv_backward_data(CUNET_CONV_DIMS, const float* __restrict__ dy,
                                              const float* __restrict__ w, const float* __restrict__ b,
                                              float* __restrict__ dx) {
    CUNET_LOOP(i, N * Ci * D * H * W) {
        const int64_t ix = i % W, iy = (i / W) % H, iz = (i / (W * H)) % D;
        const int64_t ci = (i / (W * H * D)) % Ci, n = i / (W * H * D * Ci);
        float acc = b ? b[ci] : 0.0f;
        for (int64_t co = 0; co < Co; ++co) {
            const float* dyc = dy + (n * Co + co) * Do * Ho * Wo;
            const float* wc = w + (co * Ci + ci) * KD * KH * KW;
            for (int64_t kz = 0; kz < KD; ++kz) {
                const int64_t tz = iz + PD - kz * DD;
                if (tz < 0 || tz % SD || tz / SD >= Do) continue;
                for (int64_t ky = 0; ky < KH; ++ky) {
                    const int64_t ty = iy + PH - ky * DH;
                    if (ty < 0 || ty % SH || ty / SH >= Ho) continue;
                    for (int64_t kx = 0; kx < KW; ++kx) {
                        const int64_t tx = ix + PW - kx * DW;
                        if (tx < 0 || tx % SW || tx / SW >= Wo) continue;
                        acc += wc[(kz * KH + ky) * KW + kx] * dyc[((tz / SD) * Ho + ty / SH) * Wo + tx / SW];
                    }
                }
            }
        }
        dx[i] = acc;
    }
}

// Block (co, ci, kz, ky, kx): dw = sum over n and output voxels of dy * x at the tap.
extern "C" __global__ void conv_backward_weight(CUNET_CONV_DIMS, const float* __restrict__ dy,
                                                const float* __restrict__ x, float* __restrict__ dw) {
    const int64_t wi = blockIdx.x;
    const int64_t kx = wi % KW, ky = (wi / KW) % KH, kz = (wi / (KW * KH)) % KD;
    const int64_t ci = (wi / (KW * KH * KD)) % Ci, co = wi / (KW * KH * KD * Ci);
    const int64_t M = N * Do * Ho * Wo;
    cunet::acc_t acc = 0;
    for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
        const int64_t ox = j % Wo, oy = (j / Wo) % Ho, oz = (j / (Wo * Ho)) % Do, n = j / (Wo * Ho * Do);
        const int64_t iz = oz * SD - PD + kz * DD, iy = oy * SH - PH + ky * DH, ix = ox * SW - PW + kx * DW;
        if (iz < 0 || iz >= D || iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
        acc += dy[((n * Co + co) * Do + oz) * Ho * Wo + oy * Wo + ox] *
               x[((n * Ci + ci) * D + iz) * H * W + iy * W + ix];
    }
    acc = cunet::block_sum(acc);
    if (threadIdx.x == 0) dw[wi] = (float)acc;
}

// Block c: out[c] = sum over n and s of x[n, c, s] (the bias gradient).
extern "C" __global__ void channel_sum(int64_t N, int64_t C, int64_t S, const float* __restrict__ x,
                                       float* __restrict__ out) {
    const int64_t c = blockIdx.x;
    cunet::acc_t acc = 0;
    for (int64_t n = 0; n < N; ++n) {
        const float* xc = x + (n * C + c) * S;
        for (int64_t s = threadIdx.x; s < S; s += blockDim.x) acc += xc[s];
    }
    acc = cunet::block_sum(acc);
    if (threadIdx.x == 0) out[c] = (float)acc;
}

// ---- launchers
#if !defined(__CUDACC_RTC__)
namespace cunet {

inline void conv_forward(CUNET_CONV_DIMS, const float* x, const float* w, const float* b, float* y, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::conv_forward, N * Co * Do * Ho * Wo, s, CUNET_CONV_ARGS, x, w, b, y);
}
inline void conv_backward_data(CUNET_CONV_DIMS, const float* dy, const float* w, const float* b, float* dx,
                               Stream s = 0) {
    CUNET_LAUNCH_LOOP(::conv_backward_data, N * Ci * D * H * W, s, CUNET_CONV_ARGS, dy, w, b, dx);
}
inline void conv_backward_weight(CUNET_CONV_DIMS, const float* dy, const float* x, float* dw, Stream s = 0) {
    CUNET_LAUNCH(::conv_backward_weight, dim3(Co * Ci * KD * KH * KW), dim3(coop_block()), s, CUNET_CONV_ARGS,
                 dy, x, dw);
}
inline void channel_sum(int64_t N, int64_t C, int64_t S, const float* x, float* out, Stream s = 0) {
    CUNET_LAUNCH(::channel_sum, dim3(C), dim3(coop_block()), s, N, C, S, x, out);
}

}  // namespace cunet
#endif
