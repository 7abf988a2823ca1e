// Pins kernels/portable.cuh's tensor-core primitives to the PTX ISA: the fragment layout
// functions against entries of the ISA's figures for mma.m16n8k8 (tf32) and m16n8k16
// (bf16), the conversions against hand-rounded values (ties included), and one warp's
// mma_16x8 against a double-precision product of the same rounded operands.
// Host build (g++): runs the fiber emulation. CUDA build (nvcc -x cu, sm_80+): the real
// mma.sync. Prints "ok" or the first mismatch. Run by tests/test_compile.py.
#include <cmath>
#include <cstdio>
#include <cstring>
#include "../../kernels/portable.cuh"

using namespace cunet;

// One warp: loads its A (16xK), B (Kx8) and C (16x8) fragments from row-major tiles through
// the layout functions, runs mma_16x8, stores D (16x8) the same way.
template <int K>
__global__ void mma_tile(const float* A, const float* B, const float* C, float* D) {
    const int lane = threadIdx.x;
    uint32_t a[4], b[2];
    float d[4];
    for (int r = 0; r < 4; ++r) {
        if (K == 8) a[r] = f32_to_tf32(A[mma_a_row<8>(lane, r) * K + mma_a_col<8>(lane, r)]);
        else a[r] = pack_bf16x2(A[mma_a_row<16>(lane, 2 * r) * K + mma_a_col<16>(lane, 2 * r)],
                                A[mma_a_row<16>(lane, 2 * r + 1) * K + mma_a_col<16>(lane, 2 * r + 1)]);
    }
    for (int r = 0; r < 2; ++r) {
        if (K == 8) b[r] = f32_to_tf32(B[mma_b_row<8>(lane, r) * 8 + mma_b_col(lane)]);
        else b[r] = pack_bf16x2(B[mma_b_row<16>(lane, 2 * r) * 8 + mma_b_col(lane)],
                                B[mma_b_row<16>(lane, 2 * r + 1) * 8 + mma_b_col(lane)]);
    }
    for (int e = 0; e < 4; ++e) d[e] = C[mma_c_row(lane, e) * 8 + mma_c_col(lane, e)];
    mma_16x8<K>(d, a, b);
    for (int e = 0; e < 4; ++e) D[mma_c_row(lane, e) * 8 + mma_c_col(lane, e)] = d[e];
}

__global__ void convert(int n, const float* x, uint32_t* tf32, uint32_t* bf16x2) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        tf32[i] = f32_to_tf32(x[i]);
        bf16x2[i] = pack_bf16x2(x[i], -x[i]);
    }
}

template <class T>
T* alloc(size_t n) {
#if defined(CUNET_GPU)
    T* p;
    cudaMallocManaged(&p, n * sizeof(T));
    return p;
#else
    return new T[n];
#endif
}
void sync() {
#if defined(CUNET_GPU)
    cudaDeviceSynchronize();
#endif
}
float from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
uint32_t to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

int fail(const char* what, int i, double got, double want) {
    std::printf("%s %d: got %.9g, want %.9g\n", what, i, got, want);
    return 1;
}

// layout entries read off the PTX ISA figures; lane = 4*groupID + threadID_in_group
struct Entry { int lane, e, row, col; };
int check_layout() {
    const Entry a8[] = {{0, 0, 0, 0}, {0, 1, 8, 0}, {0, 2, 0, 4}, {0, 3, 8, 4}, {5, 0, 1, 1}, {31, 3, 15, 7}};
    const Entry b8[] = {{0, 0, 0, 0}, {0, 1, 4, 0}, {6, 0, 2, 1}, {31, 1, 7, 7}};
    const Entry a16[] = {{0, 0, 0, 0}, {0, 1, 0, 1}, {0, 2, 8, 0}, {0, 4, 0, 8}, {0, 6, 8, 8}, {5, 5, 1, 11}, {31, 7, 15, 15}};
    const Entry b16[] = {{0, 0, 0, 0}, {0, 1, 1, 0}, {0, 2, 8, 0}, {6, 3, 13, 1}, {31, 3, 15, 7}};
    const Entry c[] = {{0, 0, 0, 0}, {0, 1, 0, 1}, {0, 2, 8, 0}, {5, 3, 9, 3}, {31, 3, 15, 7}};
    for (const Entry& t : a8) if (mma_a_row<8>(t.lane, t.e) != t.row || mma_a_col<8>(t.lane, t.e) != t.col) return fail("a tf32 lane", t.lane, t.e, 0);
    for (const Entry& t : b8) if (mma_b_row<8>(t.lane, t.e) != t.row || mma_b_col(t.lane) != t.col) return fail("b tf32 lane", t.lane, t.e, 0);
    for (const Entry& t : a16) if (mma_a_row<16>(t.lane, t.e) != t.row || mma_a_col<16>(t.lane, t.e) != t.col) return fail("a bf16 lane", t.lane, t.e, 0);
    for (const Entry& t : b16) if (mma_b_row<16>(t.lane, t.e) != t.row || mma_b_col(t.lane) != t.col) return fail("b bf16 lane", t.lane, t.e, 0);
    for (const Entry& t : c) if (mma_c_row(t.lane, t.e) != t.row || mma_c_col(t.lane, t.e) != t.col) return fail("c lane", t.lane, t.e, 0);
    return 0;
}

int check_conversions() {
    // 1 + 2^-11 is a tf32 tie (rounds away: 1 + 2^-10), 1 + 2^-8 a bf16 tie (to even: 1),
    // 1 + 3*2^-8 a bf16 tie (to even: 1 + 2^-6), -(1 + 2^-11) rounds away from zero too.
    const float x[] = {1.0f + 0x1p-11f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, -(1.0f + 0x1p-11f), 3.14159265f, 0.0f};
    const float tf32[] = {1.0f + 0x1p-10f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, -(1.0f + 0x1p-10f), 3.140625f, 0.0f};
    const float bf16[] = {1.0f, 1.0f, 1.0f + 0x1p-6f, -1.0f, 3.140625f, 0.0f};
    const int n = 6;
    float* xs = alloc<float>(n);
    uint32_t *t = alloc<uint32_t>(n), *b = alloc<uint32_t>(n);
    std::memcpy(xs, x, sizeof(x));
    CUNET_LAUNCH(convert, dim3(1), dim3(32), 0, n, xs, t, b);
    sync();
    for (int i = 0; i < n; ++i) {
        if (from_bits(t[i]) != tf32[i]) return fail("tf32 of value", i, from_bits(t[i]), tf32[i]);
        if (from_bits(b[i] << 16) != bf16[i]) return fail("bf16 (low half) of value", i, from_bits(b[i] << 16), bf16[i]);
        if (from_bits(b[i] & 0xffff0000u) != -bf16[i]) return fail("bf16 (high half) of value", i, from_bits(b[i] & 0xffff0000u), -bf16[i]);
    }
    return 0;
}

// D = C + A*B for one random tile, operands already representable in the precision:
// every product is exact in fp32, so D differs from the double sum only by fp32 rounding.
template <int K>
int check_mma() {
    float *A = alloc<float>(16 * K), *B = alloc<float>(K * 8), *C = alloc<float>(128), *D = alloc<float>(128);
    uint32_t s = 12345u + K;
    auto rnd = [&]() {   // an 8-bit-mantissa value in [-2, 2): exact in tf32 and bf16
        s = s * 1664525u + 1013904223u;
        return (float)((int)(s >> 24) - 128) / 64.0f;
    };
    for (int i = 0; i < 16 * K; ++i) A[i] = rnd();
    for (int i = 0; i < K * 8; ++i) B[i] = rnd();
    for (int i = 0; i < 128; ++i) C[i] = rnd();
    CUNET_LAUNCH(mma_tile<K>, dim3(1), dim3(32), 0, A, B, C, D);
    sync();
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 8; ++c) {
            double want = C[r * 8 + c];
            for (int k = 0; k < K; ++k) want += (double)A[r * K + k] * B[k * 8 + c];
            if (std::fabs(D[r * 8 + c] - want) > 1e-5 * (1 + std::fabs(want)))
                return fail(K == 8 ? "mma tf32 D element" : "mma bf16 D element", r * 8 + c, D[r * 8 + c], want);
        }
    return 0;
}

int main() {
    if (check_layout() || check_conversions() || check_mma<8>() || check_mma<16>()) return 1;
    std::printf("ok\n");
    return 0;
}
