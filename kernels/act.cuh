// act.cuh: activations, elementwise over flat float32 buffers, and softmax over channels.
//
// Layouts: x, y, dy, dx   (n,) flat, any shape
//          softmax        (N, C, S) with S = prod(spatial); reduces over C at each (N, S)
//
// Entry points (kernels, extern "C"; all loop kernels: any grid, any block):
//   relu_forward(n, x, y)                  relu_backward(n, dy, y, dx)       y = output
//   leaky_relu_forward(n, x, y, slope)     leaky_relu_backward(n, dy, x, dx, slope)
//   sigmoid_forward(n, x, y)               sigmoid_backward(n, dy, y, dx)
//   softmax_forward(N, C, S, x, y)         softmax_backward(N, C, S, dy, y, dx)
//   bias_add(N, C, S, b, y)                y[n, c, s] += b[c]
#pragma once
#include "portable.cuh"

// ---- kernels

extern "C" __global__ void relu_forward(int64_t n, const float* __restrict__ x, float* __restrict__ y) {
    CUNET_LOOP(i, n) { y[i] = x[i] > 0.0f ? x[i] : 0.0f; }
}

extern "C" __global__ void relu_backward(int64_t n, const float* __restrict__ dy, const float* __restrict__ y,
                                         float* __restrict__ dx) {
    CUNET_LOOP(i, n) { dx[i] = y[i] > 0.0f ? dy[i] : 0.0f; }
}

extern "C" __global__ void leaky_relu_forward(int64_t n, const float* __restrict__ x, float* __restrict__ y,
                                              float slope) {
    CUNET_LOOP(i, n) { y[i] = x[i] > 0.0f ? x[i] : x[i] * slope; }
}

extern "C" __global__ void leaky_relu_backward(int64_t n, const float* __restrict__ dy,
                                               const float* __restrict__ x, float* __restrict__ dx, float slope) {
    CUNET_LOOP(i, n) { dx[i] = x[i] > 0.0f ? dy[i] : dy[i] * slope; }
}

extern "C" __global__ void sigmoid_forward(int64_t n, const float* __restrict__ x, float* __restrict__ y) {
    CUNET_LOOP(i, n) { y[i] = 1.0f / (1.0f + expf(-x[i])); }
}

extern "C" __global__ void sigmoid_backward(int64_t n, const float* __restrict__ dy, const float* __restrict__ y,
                                            float* __restrict__ dx) {
    CUNET_LOOP(i, n) { dx[i] = dy[i] * y[i] * (1.0f - y[i]); }
}

// One (n, s) position per iteration; channels are S apart.
extern "C" __global__ void softmax_forward(int64_t N, int64_t C, int64_t S, const float* __restrict__ x,
                                           float* __restrict__ y) {
    CUNET_LOOP(i, N * S) {
        const int64_t base = (i / S) * C * S + i % S;
        float m = x[base];
        for (int64_t c = 1; c < C; ++c) m = fmaxf(m, x[base + c * S]);
        float sum = 0.0f;
        for (int64_t c = 0; c < C; ++c) sum += expf(x[base + c * S] - m);
        const float inv = 1.0f / sum;
        for (int64_t c = 0; c < C; ++c) y[base + c * S] = expf(x[base + c * S] - m) * inv;
    }
}

extern "C" __global__ void softmax_backward(int64_t N, int64_t C, int64_t S, const float* __restrict__ dy,
                                            const float* __restrict__ y, float* __restrict__ dx) {
    CUNET_LOOP(i, N * S) {
        const int64_t base = (i / S) * C * S + i % S;
        float dot = 0.0f;
        for (int64_t c = 0; c < C; ++c) dot += dy[base + c * S] * y[base + c * S];
        for (int64_t c = 0; c < C; ++c) dx[base + c * S] = y[base + c * S] * (dy[base + c * S] - dot);
    }
}

extern "C" __global__ void bias_add(int64_t N, int64_t C, int64_t S, const float* __restrict__ b,
                                    float* __restrict__ y) {
    CUNET_LOOP(i, N * C * S) { y[i] += b[(i / S) % C]; }
}

// ---- launchers
#if !defined(__CUDACC_RTC__)
namespace cunet {

inline void relu_forward(int64_t n, const float* x, float* y, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::relu_forward, n, s, n, x, y);
}
inline void relu_backward(int64_t n, const float* dy, const float* y, float* dx, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::relu_backward, n, s, n, dy, y, dx);
}
inline void leaky_relu_forward(int64_t n, const float* x, float* y, float slope, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::leaky_relu_forward, n, s, n, x, y, slope);
}
inline void leaky_relu_backward(int64_t n, const float* dy, const float* x, float* dx, float slope, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::leaky_relu_backward, n, s, n, dy, x, dx, slope);
}
inline void sigmoid_forward(int64_t n, const float* x, float* y, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::sigmoid_forward, n, s, n, x, y);
}
inline void sigmoid_backward(int64_t n, const float* dy, const float* y, float* dx, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::sigmoid_backward, n, s, n, dy, y, dx);
}
inline void softmax_forward(int64_t N, int64_t C, int64_t S, const float* x, float* y, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::softmax_forward, N * S, s, N, C, S, x, y);
}
inline void softmax_backward(int64_t N, int64_t C, int64_t S, const float* dy, const float* y, float* dx,
                             Stream s = 0) {
    CUNET_LAUNCH_LOOP(::softmax_backward, N * S, s, N, C, S, dy, y, dx);
}
inline void bias_add(int64_t N, int64_t C, int64_t S, const float* b, float* y, Stream s = 0) {
    CUNET_LAUNCH_LOOP(::bias_add, N * C * S, s, N, C, S, b, y);
}

}  // namespace cunet
#endif
