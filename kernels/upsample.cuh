// upsample.cuh: nearest and linear (bilinear/trilinear, align_corners=False) upsampling by
// integer factors, 3D with 2D as D = 1 (SD = 1). PyTorch semantics.
//
// Layouts: x (N*C, D, H, W), y (N*C, D*SD, H*SH, W*SW).
// Linear: output o along an axis samples src = max((o + 0.5)/s - 0.5, 0); i0 = floor(src),
// i1 = min(i0 + 1, n - 1), weights 1 - l and l with l = src - i0.
//
// Entry points (loop kernels; backward passes gather, no atomics):
//   upsample_nearest_forward(NC, D, H, W, SD, SH, SW, x, y)
//   upsample_nearest_backward(NC, D, H, W, SD, SH, SW, dy, dx)
//   upsample_linear_forward(NC, D, H, W, SD, SH, SW, x, y)
//   upsample_linear_backward(NC, D, H, W, SD, SH, SW, dy, dx)
// Host build: the launchers run row-by-row CPU variants (linear: separable) unless
// host_variants() is off.
#pragma once
#include "portable.cuh"

// ---- kernels

__device__ __forceinline__ void linear_taps(int64_t o, int64_t s, int64_t n, int64_t& i0, int64_t& i1, float& l) {
    float src = ((float)o + 0.5f) / (float)s - 0.5f;
    src = src > 0.0f ? src : 0.0f;
    i0 = (int64_t)src;
    if (i0 > n - 1) i0 = n - 1;
    i1 = i0 + 1 < n ? i0 + 1 : n - 1;
    l = src - (float)i0;
}

// Weight of input i in output o along one axis (0 when o does not read i).
__device__ __forceinline__ float linear_weight(int64_t o, int64_t i, int64_t s, int64_t n) {
    int64_t i0, i1;
    float l;
    linear_taps(o, s, n, i0, i1, l);
    return (i0 == i ? 1.0f - l : 0.0f) + (i1 == i ? l : 0.0f);
}

extern "C" __global__ void upsample_nearest_forward(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD,
                                                    int64_t SH, int64_t SW, const float* __restrict__ x,
                                                    float* __restrict__ y) {
    const int64_t Do = D * SD, Ho = H * SH, Wo = W * SW;
    CUNET_LOOP(i, NC * Do * Ho * Wo) {
        const int64_t ox = i % Wo, oy = (i / Wo) % Ho, oz = (i / (Wo * Ho)) % Do, nc = i / (Wo * Ho * Do);
        y[i] = x[((nc * D + oz / SD) * H + oy / SH) * W + ox / SW];
    }
}

extern "C" __global__ void upsample_nearest_backward(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD,
                                                     int64_t SH, int64_t SW, const float* __restrict__ dy,
                                                     float* __restrict__ dx) {
    const int64_t Ho = H * SH, Wo = W * SW;
    CUNET_LOOP(i, NC * D * H * W) {
        const int64_t ix = i % W, iy = (i / W) % H, iz = (i / (W * H)) % D, nc = i / (W * H * D);
        float acc = 0.0f;
        for (int64_t a = 0; a < SD; ++a)
            for (int64_t b = 0; b < SH; ++b)
                for (int64_t c = 0; c < SW; ++c)
                    acc += dy[((nc * D * SD + iz * SD + a) * Ho + iy * SH + b) * Wo + ix * SW + c];
        dx[i] = acc;
    }
}

extern "C" __global__ void upsample_linear_forward(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD,
                                                   int64_t SH, int64_t SW, const float* __restrict__ x,
                                                   float* __restrict__ y) {
    const int64_t Do = D * SD, Ho = H * SH, Wo = W * SW;
    CUNET_LOOP(i, NC * Do * Ho * Wo) {
        const int64_t ox = i % Wo, oy = (i / Wo) % Ho, oz = (i / (Wo * Ho)) % Do, nc = i / (Wo * Ho * Do);
        int64_t z[2], r[2], c[2];
        float lz, ly, lx;
        linear_taps(oz, SD, D, z[0], z[1], lz);
        linear_taps(oy, SH, H, r[0], r[1], ly);
        linear_taps(ox, SW, W, c[0], c[1], lx);
        const float wz[2] = {1.0f - lz, lz}, wy[2] = {1.0f - ly, ly}, wx[2] = {1.0f - lx, lx};
        const float* xc = x + nc * D * H * W;
        float acc = 0.0f;
        for (int a = 0; a < 2; ++a)
            for (int b = 0; b < 2; ++b)
                for (int d = 0; d < 2; ++d) acc += wz[a] * wy[b] * wx[d] * xc[(z[a] * H + r[b]) * W + c[d]];
        y[i] = acc;
    }
}

// Input i along an axis is read only by outputs in [(i-1)s, (i+2)s): gather over those.
extern "C" __global__ void upsample_linear_backward(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD,
                                                    int64_t SH, int64_t SW, const float* __restrict__ dy,
                                                    float* __restrict__ dx) {
    const int64_t Do = D * SD, Ho = H * SH, Wo = W * SW;
    CUNET_LOOP(i, NC * D * H * W) {
        const int64_t ix = i % W, iy = (i / W) % H, iz = (i / (W * H)) % D, nc = i / (W * H * D);
        const float* dyc = dy + nc * Do * Ho * Wo;
        float acc = 0.0f;
        for (int64_t oz = (iz - 1) * SD > 0 ? (iz - 1) * SD : 0; oz < Do && oz < (iz + 2) * SD; ++oz) {
            const float wz = linear_weight(oz, iz, SD, D);
            if (wz == 0.0f) continue;
            for (int64_t oy = (iy - 1) * SH > 0 ? (iy - 1) * SH : 0; oy < Ho && oy < (iy + 2) * SH; ++oy) {
                const float wy = linear_weight(oy, iy, SH, H);
                if (wy == 0.0f) continue;
                for (int64_t ox = (ix - 1) * SW > 0 ? (ix - 1) * SW : 0; ox < Wo && ox < (ix + 2) * SW; ++ox)
                    acc += wz * wy * linear_weight(ox, ix, SW, W) * dyc[(oz * Ho + oy) * Wo + ox];
            }
        }
        dx[i] = acc;
    }
}

// ---- launchers
#if !defined(__CUDACC_RTC__)
namespace cunet {

#if defined(CUNET_HOST)
// Host variants of the linear pair, separable and row by row (one thread per plane nc, so
// the backward's scatter needs no atomics): the taps of every output column computed once
// per call, the D/H taps once per output row. Same weights as linear_taps; the sums are
// grouped differently (x first), so results differ from the portable kernels by rounding.
struct LinearAxis {
    std::vector<int64_t> i0, i1;
    std::vector<float> l;
    LinearAxis(int64_t n, int64_t s) : i0(n * s), i1(n * s), l(n * s) {
        for (int64_t o = 0; o < n * s; ++o) linear_taps(o, s, n, i0[o], i1[o], l[o]);
    }
};

// The 4 input rows (z, y) of output row (oz, oy) and their weights, k = 2a + b.
struct RowTaps {
    int64_t row[4];
    float w[4];
    RowTaps(const LinearAxis& az, const LinearAxis& ay, int64_t oz, int64_t oy, int64_t H, int64_t W) {
        const int64_t zs[2] = {az.i0[oz], az.i1[oz]}, ys[2] = {ay.i0[oy], ay.i1[oy]};
        const float wz[2] = {1.0f - az.l[oz], az.l[oz]}, wy[2] = {1.0f - ay.l[oy], ay.l[oy]};
        for (int k = 0; k < 4; ++k) row[k] = (zs[k / 2] * H + ys[k % 2]) * W, w[k] = wz[k / 2] * wy[k % 2];
    }
};

// Output columns 2i, 2i+1 of a row for SW = 2 (i < m, m a multiple of 16): 0.25 row[i-1] +
// 0.75 row[i] and 0.75 row[i] + 0.25 row[i+1], 16 inputs per step, interleaved by shuffles;
// rp[-1] = rp[0] and rp[m] = rp[m-1] at the row's ends (the clamped taps, the same values).
inline void linear_row_x2(const float* rp, int64_t m, float* yr) {
    using namespace simd;
    const v16 a = splat(0.25f), b = splat(0.75f);
    const v16i lo = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23}, hi = lo + 8;
    for (int64_t i = 0; i < m; i += 16) {
        const v16 c = load16(rp + i), ev = a * load16(rp + i - 1) + b * c, od = b * c + a * load16(rp + i + 1);
        store16(yr + 2 * i, __builtin_shuffle(ev, od, lo)), store16(yr + 2 * i + 16, __builtin_shuffle(ev, od, hi));
    }
}

inline void upsample_linear_forward_host(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD, int64_t SH,
                                         int64_t SW, const float* x, float* y) {
    const LinearAxis az(D, SD), ay(H, SH), ax(W, SW);
    const int64_t Do = D * SD, Ho = H * SH, Wo = W * SW, m = SW == 2 ? W / 16 * 16 : 0;   // vector columns
#pragma omp parallel
    {
        std::vector<float> buf(W + 2);   // the row with one clamped column either side
        float* row = buf.data() + 1;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < NC * Do * Ho; ++r) {   // output row (nc, oz, oy)
            const int64_t oy = r % Ho, oz = (r / Ho) % Do, nc = r / (Ho * Do);
            const RowTaps t(az, ay, oz, oy, H, W);
            std::fill(row, row + W, 0.0f);
            for (int k = 0; k < 4; ++k) {
                const float* xr = x + nc * D * H * W + t.row[k];
#pragma omp simd
                for (int64_t i = 0; i < W; ++i) row[i] += t.w[k] * xr[i];
            }
            row[-1] = row[0], row[W] = row[W - 1];
            float* yr = y + r * Wo;
            linear_row_x2(row, m, yr);
            for (int64_t o = m * SW; o < Wo; ++o) yr[o] = (1.0f - ax.l[o]) * row[ax.i0[o]] + ax.l[o] * row[ax.i1[o]];
        }
    }
}

// Host variants of the nearest pair, per input row (nc, iz, iy): the forward builds its
// output row once (SW = 2: lanes duplicated by shuffles) and copies it to the SD x SH rows
// that repeat it; the backward sums those rows, then each input's SW columns.
inline void upsample_nearest_forward_host(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD, int64_t SH,
                                          int64_t SW, const float* x, float* y) {
    using namespace simd;
    const int64_t Ho = H * SH, Wo = W * SW, m = SW == 2 ? W / 16 * 16 : 0;
    const v16i lo = {0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7}, hi = lo + 8;
#pragma omp parallel for schedule(static) if (NC * D * H * Wo * SD * SH > 32768)
    for (int64_t r = 0; r < NC * D * H; ++r) {   // input row (nc, iz, iy)
        const int64_t iy = r % H, iz = (r / H) % D, nc = r / (H * D);
        const float* xr = x + r * W;
        float* y0 = y + ((nc * D + iz) * SD * Ho + iy * SH) * Wo;   // output row (nc, iz*SD, iy*SH)
        for (int64_t i = 0; i < m; i += 16) {
            const v16 v = load16(xr + i);
            store16(y0 + 2 * i, __builtin_shuffle(v, lo)), store16(y0 + 2 * i + 16, __builtin_shuffle(v, hi));
        }
        for (int64_t i = m; i < W; ++i)
            for (int64_t c = 0; c < SW; ++c) y0[i * SW + c] = xr[i];
        for (int64_t a = 0; a < SD; ++a)
            for (int64_t b = 0; b < SH; ++b)
                if (a + b > 0) std::memcpy(y0 + (a * Ho + b) * Wo, y0, sizeof(float) * Wo);
    }
}

inline void upsample_nearest_backward_host(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD, int64_t SH,
                                           int64_t SW, const float* dy, float* dx) {
    using namespace simd;
    const int64_t Ho = H * SH, Wo = W * SW, m = SW == 2 ? W / 16 * 16 : 0;
    const v16i ev = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}, od = ev + 1;
#pragma omp parallel if (NC * D * H * Wo * SD * SH > 32768)
    {
        std::vector<float> acc(Wo);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < NC * D * H; ++r) {   // input row (nc, iz, iy)
            const int64_t iy = r % H, iz = (r / H) % D, nc = r / (H * D);
            const float* d0 = dy + ((nc * D + iz) * SD * Ho + iy * SH) * Wo;
            std::copy(d0, d0 + Wo, acc.begin());
            for (int64_t a = 0; a < SD; ++a)
                for (int64_t b = 0; b < SH; ++b) {
                    if (a + b == 0) continue;
                    const float* dr = d0 + (a * Ho + b) * Wo;
#pragma omp simd
                    for (int64_t o = 0; o < Wo; ++o) acc[o] += dr[o];
                }
            float* xr = dx + r * W;
            for (int64_t i = 0; i < m; i += 16) {
                const v16 p = load16(acc.data() + 2 * i), q = load16(acc.data() + 2 * i + 16);
                store16(xr + i, __builtin_shuffle(p, q, ev) + __builtin_shuffle(p, q, od));
            }
            for (int64_t i = m; i < W; ++i) {
                float s = 0.0f;
                for (int64_t c = 0; c < SW; ++c) s += acc[i * SW + c];
                xr[i] = s;
            }
        }
    }
}

inline void upsample_linear_backward_host(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD, int64_t SH,
                                          int64_t SW, const float* dy, float* dx) {
    const LinearAxis az(D, SD), ay(H, SH), ax(W, SW);
    const int64_t Do = D * SD, Ho = H * SH, Wo = W * SW;
#pragma omp parallel
    {
        std::vector<float> row(W);
#pragma omp for schedule(static)
        for (int64_t nc = 0; nc < NC; ++nc) {   // one plane per thread: its scatter is private
            float* dxc = dx + nc * D * H * W;
            std::fill(dxc, dxc + D * H * W, 0.0f);
            for (int64_t oz = 0; oz < Do; ++oz)
                for (int64_t oy = 0; oy < Ho; ++oy) {
                    const float* dyr = dy + ((nc * Do + oz) * Ho + oy) * Wo;
                    std::fill(row.begin(), row.end(), 0.0f);
                    for (int64_t o = 0; o < Wo; ++o) {
                        row[ax.i0[o]] += (1.0f - ax.l[o]) * dyr[o];
                        row[ax.i1[o]] += ax.l[o] * dyr[o];
                    }
                    const RowTaps t(az, ay, oz, oy, H, W);
                    for (int k = 0; k < 4; ++k) {
                        float* xr = dxc + t.row[k];
#pragma omp simd
                        for (int64_t i = 0; i < W; ++i) xr[i] += t.w[k] * row[i];
                    }
                }
        }
    }
}
#define CUNET_UPSAMPLE_HOST(name) \
    if (host_variants()) return name##_host(NC, D, H, W, SD, SH, SW, in, out);
#else
#define CUNET_UPSAMPLE_HOST(name)
#endif

#define CUNET_UPSAMPLE_LAUNCHER(name, count, host)                                                         \
    inline void name(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD, int64_t SH, int64_t SW,     \
                     const float* in, float* out, Stream s = 0) {                                         \
        host                                                                                               \
        CUNET_LAUNCH_LOOP(::name, count, s, NC, D, H, W, SD, SH, SW, in, out);                            \
    }
CUNET_UPSAMPLE_LAUNCHER(upsample_nearest_forward, NC * D * SD * H * SH * W * SW,
                        CUNET_UPSAMPLE_HOST(upsample_nearest_forward))
CUNET_UPSAMPLE_LAUNCHER(upsample_nearest_backward, NC * D * H * W, CUNET_UPSAMPLE_HOST(upsample_nearest_backward))
CUNET_UPSAMPLE_LAUNCHER(upsample_linear_forward, NC * D * SD * H * SH * W * SW,
                        CUNET_UPSAMPLE_HOST(upsample_linear_forward))
CUNET_UPSAMPLE_LAUNCHER(upsample_linear_backward, NC * D * H * W, CUNET_UPSAMPLE_HOST(upsample_linear_backward))
#undef CUNET_UPSAMPLE_LAUNCHER
#undef CUNET_UPSAMPLE_HOST

}  // namespace cunet
#endif
