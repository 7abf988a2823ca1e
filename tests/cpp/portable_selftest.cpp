// Exercises kernels/portable.cuh's host modes directly: block_sum, shuffles, shared
// memory and __syncthreads through the fiber block emulation, CUNET_LOOP, and FastDiv.
// Built and run by tests/test_portable.py; prints "ok" or the first mismatch.
#include <cstdio>
#include <vector>
#include "../../kernels/portable.cuh"

// every block sums its slice of x; one thread per block or kBlock threads, same result
extern "C" __global__ void block_sums(int64_t n, const float* x, double* out) {
    int64_t b, e;
    cunet::block_range(n, b, e);
    cunet::acc_t s = 0;
    for (int64_t i = b + threadIdx.x; i < e; i += blockDim.x) s += x[i];
    s = cunet::block_sum(s);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// reverse each block's 256 values through shared memory: needs a real barrier
extern "C" __global__ void block_reverse(const int* x, int* y) {
    __shared__ int tile[256];
    tile[threadIdx.x] = x[blockIdx.x * 256 + threadIdx.x];
    __syncthreads();
    y[blockIdx.x * 256 + threadIdx.x] = tile[255 - threadIdx.x];
}

// butterfly: after xor-shuffles every lane holds the warp's sum
extern "C" __global__ void warp_allreduce(const int* x, int* y) {
    int v = x[blockIdx.x * blockDim.x + threadIdx.x];
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(CUNET_FULL_MASK, v, m);
    y[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

extern "C" __global__ void scale(int64_t n, float* x) {
    CUNET_LOOP(i, n) { x[i] *= 2.0f; }
}

int main() {
    const int64_t n = 100003;
    std::vector<float> x(n);
    double total = 0;
    for (int64_t i = 0; i < n; ++i) { x[i] = (float)((i * 7919) % 1000) / 1000.0f; total += x[i]; }
    for (unsigned threads : {1u, 256u, 64u}) {
        std::vector<double> part(37);
        CUNET_LAUNCH(block_sums, dim3(37), dim3(threads), nullptr, n, x.data(), part.data());
        double s = 0;
        for (double p : part) s += p;
        if (std::abs(s - total) > 1e-6 * total) { std::printf("block_sum %u threads: %f != %f\n", threads, s, total); return 1; }
    }
    std::vector<int> a(3 * 256), r(3 * 256);
    for (int i = 0; i < 3 * 256; ++i) a[i] = i;
    CUNET_LAUNCH(block_reverse, dim3(3), dim3(256), nullptr, a.data(), r.data());
    for (int blk = 0; blk < 3; ++blk)
        for (int t = 0; t < 256; ++t)
            if (r[blk * 256 + t] != blk * 256 + 255 - t) { std::printf("reverse at %d %d\n", blk, t); return 1; }
    CUNET_LAUNCH(warp_allreduce, dim3(2), dim3(64), nullptr, a.data(), r.data());
    for (int w = 0; w < 4; ++w) {
        int want = 0;
        for (int l = 0; l < 32; ++l) want += w * 32 + l;
        for (int l = 0; l < 32; ++l)
            if (r[w * 32 + l] != want) { std::printf("warp %d lane %d: %d != %d\n", w, l, r[w * 32 + l], want); return 1; }
    }
    // FastDiv: n / d for divisors small, prime, powers of two and near 2^31, n up to 2^31 - 1
    uint64_t rs = 88172645463325252ull;
    for (int64_t d : {1ll, 2ll, 3ll, 5ll, 7ll, 9ll, 27ll, 64ll, 97ll, 343ll, 641ll, 1000003ll, 65536ll, 2147483647ll, 1073741825ll}) {
        const cunet::FastDiv f = cunet::make_fastdiv((int)d);
        for (int i = 0; i < 20000; ++i) {
            rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
            const int64_t v = i < 5000 ? i : i < 6000 ? 2147483647ll - (i - 5000) : (int64_t)(rs % 2147483648ull);
            int rem;
            const int q = cunet::fdivmod((int)v, f, rem);
            if (q != v / d || rem != v % d) { std::printf("fastdiv %lld / %lld: %d rem %d\n", (long long)v, (long long)d, q, rem); return 1; }
        }
    }
    // host vector exp / log against libm: ~1e-7 relative, and the edges
    for (int i = 0; i < 4000; ++i) {
        const float a = -87.0f + 175.5f * (float)i / 3999.0f, b = std::ldexp(1.0f + (float)(i % 97) / 97.0f, i / 40 - 50);
        const float e = cunet::simd::exp16(cunet::simd::splat(a))[i % 16], l = cunet::simd::log16(cunet::simd::splat(b))[i % 16];
        if (std::fabs(e - std::exp((double)a)) > 3e-7 * std::exp((double)a)) { std::printf("exp16(%g) = %g\n", a, e); return 1; }
        if (std::fabs(l - std::log((double)b)) > 3e-7 * std::fabs(std::log((double)b)) + 1e-7) { std::printf("log16(%g) = %g\n", b, l); return 1; }
    }
    const cunet::simd::v16 edge = cunet::simd::exp16(cunet::simd::v16{-100.0f, 100.0f, NAN, 0.0f});
    if (edge[0] != 0.0f || !std::isinf(edge[1]) || !std::isnan(edge[2]) || edge[3] != 1.0f) { std::printf("exp16 edges\n"); return 1; }
    CUNET_LAUNCH_LOOP(scale, n, nullptr, n, x.data());
    if (x[1] != 2.0f * (float)((7919) % 1000) / 1000.0f) { std::printf("loop\n"); return 1; }
    std::printf("ok\n");
    return 0;
}
