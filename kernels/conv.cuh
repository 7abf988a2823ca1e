// conv.cuh: direct convolution, 3D with 2D as D = 1 (KD = SD = DD = 1, PD = 0).
//
// Layouts (PyTorch):  x  (N, Ci, D, H, W)      w  (Co, Ci, KD, KH, KW)
//                     y  (N, Co, Do, Ho, Wo)   b  (Co,) or null
// Geometry: o = i*S - P + k*Dil along each axis; Do = (D + 2PD - DD(KD-1) - 1)/SD + 1.
// The transposed conv is the same three kernels with the roles swapped
// (cunet/_ops/conv.py): its forward is conv_backward_data, its input gradient
// conv_forward, its weight gradient conv_backward_weight with x and dy exchanged.
//
// Entry points (portable direct kernels):
//   conv_forward(DIMS, x, w, b, y, relu)       loop over y          y = conv(x, w) + b, max(., 0) if relu
//   conv_backward_data(DIMS, dy, w, b, dx)     loop over dx         gather, no atomics; + b[ci] if b
//   conv_backward_weight(DIMS, dy, x, dw)      coop, grid Co*Ci*KD*KH*KW, one weight per block
//   channel_sum(N, C, S, x, out)               coop, grid C          out[c] = sum over n, s of x
//   conv_relu_mask(n, mask, dx)                loop over dx         dx = 0 where mask <= 0
// Tiled implicit-GEMM kernels (what the GPU runs), <p> = fp32 | tf32 | bf16:
//   conv_forward_<p>, conv_backward_data_<p>, conv_backward_weight_<p>, conv_sum_slices
//   (see "tiled implicit-GEMM kernels" below for their arguments and grid).
//
// Launchers: the GPU build runs the tiled kernels. The host build runs the register-blocked
// CPU variants of the "host variants" section (Winograd F(2x2,3x3) / F(2x2x2,3x3x3) for
// 3x3 stride-1 padding-1 layers with enough channels, strip GEMMs for kernel = stride with
// no padding, the padded-copy direct conv for the rest), or the portable kernels when host_variants()
// is false (set_host_variants(False) in Python); with emulate_blocks() on it runs the tiled
// kernels through the block emulation (set_emulate_blocks(True): how tests execute them).
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
                                        float* __restrict__ y, int64_t relu) {
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
        y[i] = relu && acc < 0.0f ? 0.0f : acc;   // NaN passes, as np.maximum
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

// ---- tiled implicit-GEMM kernels
// Each pass is a GEMM C (M x Nn) = A (M x K) * B (K x Nn) whose operands are gathered from
// the tensors as they are loaded (implicit GEMM; T = KD*KH*KW taps, tap = (kz*KH + ky)*KW + kx):
//   pass             M            Nn      K            A(m, k)               B(k, n)              C(m, n)
//   forward          N*Do*Ho*Wo   Co      Ci*T         x at (voxel m, ci,tap) w[n, k]              y[nb, n, o] (+b, relu)
//   data gradient    N*D*H*W      Ci      Co*T         dy gathered at m       w[co, n, tap]        dx[nb, n, i] (+b)
//   weight gradient  Co           Ci*T    N*Do*Ho*Wo   dy[nb, m, o]           x at (voxel k, ci,tap) dw[m, n]
// Concat read in place: x may arrive as two tensors, x (N, C1, ...) and x2 (N, Ci - C1, ...),
// the channels of a UNet skip concatenation; the im2col loads pick the tensor by channel and
// the data gradient stores channels >= C1 to dx2. Without x2, C1 = Ci.
// Out-of-image taps, and rows / columns / k past the GEMM's edges, load as zeros, so any
// channel count, stride, padding and dilation works (the strided data gradient gathers
// dy only where (i + P - k*Dil) / S is exact: the other taps are zeros of A, computed).
//
// Tiling: a block of kThreads = 128 threads (4 warps as 2 x 2) computes a kTM x kTN =
// 64 x 64 tile of C; each warp a 32 x 32 tile = 2 x 4 mma tiles of 16 x 8, held as
// acc[2][4][4] in the C fragment layout of portable.cuh. K advances in steps of kTK = 16
// through fp32 shared-memory tiles As[k][m], Bs[k][n], two of each: the next step's global
// loads wait in registers while this step computes, so one __syncthreads per step.
// Precision: tf32 / bf16 round the operands as their fragments leave shared memory
// (2 x m16n8k8 or 1 x m16n8k16 per step and tile); fp32 computes the same fragment
// positions with FFMA. Loader, tiling and epilogue are shared by the three precisions.
// The weight gradient's K (N * output voxels) is long and its tile grid small: K is split
// into slices (blockIdx), each writing its partial tile to slice z of a workspace that
// conv_sum_slices adds in slice order (deterministic, no atomics).
// Block index: one dimension, n-tile fastest, then m-tile, then the K slice.
namespace cunet {

constexpr int kTM = 64, kTN = 64, kTK = 16, kThreads = 128;
// blocks per SM asked of ptxas: caps registers at 128/thread (without it ptxas picked 96
// and spilled a few bytes in two kernels)
constexpr int kMinBlocks = 4;
constexpr int kLd = kTM + 8;   // padded row: fragment loads (rows g, columns t) hit 32 banks

// The conv geometry in 32-bit ints (the launchers check that M, Nn and K fit), with the
// divisors of the index decompositions as FastDiv. One copy per block, in shared memory,
// filled by thread 0 (share_geom): the divisors' magic numbers are computed once.
struct ConvGeom {
    int N, Ci, Co, D, H, W, Do, Ho, Wo, KD, KH, KW, SD, SH, SW, PD, PH, PW, DD, DH, DW;
    int C1;   // channels [0, C1) in the first tensor, [C1, Ci) in the second (x2 / dx2)
    FastDiv dW, dH, dD, dWo, dHo, dDo, dKW, dKH, dKD, dSW, dSH, dSD, dT, dSi, dSo;
    __device__ int taps() const { return KD * KH * KW; }
    __device__ int out_voxels() const { return Do * Ho * Wo; }
    __device__ int in_voxels() const { return D * H * W; }
};

// n = ((rest*C + c)*B + b)*A + a, with 0 <= a < A etc. -> a, b, c; returns rest. Splits a
// voxel index into (x, y, z, batch) or a GEMM column into (kx, ky, kz, channel).
__device__ __forceinline__ int split3(int n, const FastDiv& A, const FastDiv& B, const FastDiv& C, int& a, int& b,
                                      int& c) {
    return fdivmod(fdivmod(fdivmod(n, A, a), B, b), C, c);
}

// Channel c of a voxel of the concat (x, x2): the offset of (nb, c) in x (N, C1, S) or x2
// (N, Ci - C1, S), and which of the two holds it.
__device__ __forceinline__ int64_t cat_offset(const ConvGeom& g, int nb, int c, int64_t S, bool& second) {
    second = c >= g.C1;
    return second ? ((int64_t)nb * (g.Ci - g.C1) + c - g.C1) * S : ((int64_t)nb * g.C1 + c) * S;
}

// x at row p (output voxel: nb, oz, oy, ox) and column r (ci, tap) of the im2col matrix:
// the forward's A and the weight gradient's B. Zero outside the image.
__device__ __forceinline__ float im2col(const ConvGeom& g, const float* __restrict__ x, const float* __restrict__ x2,
                                        int p, int r) {
    int ox, oy, oz, kx, ky, kz;
    const int nb = split3(p, g.dWo, g.dHo, g.dDo, ox, oy, oz), ci = split3(r, g.dKW, g.dKH, g.dKD, kx, ky, kz);
    const int iz = oz * g.SD - g.PD + kz * g.DD, iy = oy * g.SH - g.PH + ky * g.DH, ix = ox * g.SW - g.PW + kx * g.DW;
    if (iz < 0 || iz >= g.D || iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) return 0.0f;
    bool second;
    const int64_t at = cat_offset(g, nb, ci, g.in_voxels(), second) + ((int64_t)iz * g.H + iy) * g.W + ix;
    return second ? x2[at] : x[at];
}

// A pass: sizes, the element loaders and the store of C. a_along_k: the A loader's lanes
// run along k (consecutive addresses there) instead of along m. B's run along k in every pass.
struct ConvFwdPass {
    const ConvGeom& g;
    const float *x, *x2, *w, *b;
    float* y;
    int relu;
    static constexpr bool a_along_k = false;
    __device__ int M() const { return g.N * g.out_voxels(); }
    __device__ int Nn() const { return g.Co; }
    __device__ int K() const { return g.Ci * g.taps(); }
    __device__ float load_a(int m, int k) const { return im2col(g, x, x2, m, k); }
    __device__ float load_b(int k, int n) const { return w[(int64_t)n * K() + k]; }
    __device__ void store(int, int m, int n, float v) const {
        v += b ? b[n] : 0.0f;
        if (relu && v < 0.0f) v = 0.0f;   // NaN passes, as np.maximum
        int o;
        const int nb = fdivmod(m, g.dSo, o);
        y[((int64_t)nb * g.Co + n) * g.out_voxels() + o] = v;
    }
};

struct ConvDataPass {
    const ConvGeom& g;
    const float *dy, *w, *b;
    float *dx, *dx2;
    static constexpr bool a_along_k = false;
    __device__ int M() const { return g.N * g.in_voxels(); }
    __device__ int Nn() const { return g.Ci; }
    __device__ int K() const { return g.Co * g.taps(); }
    // dy at the output that tap k read input voxel m from: o = (i + P - k*Dil) / S, if exact
    __device__ float load_a(int m, int k) const {
        int ix, iy, iz, kx, ky, kz, rz, ry, rx;
        const int nb = split3(m, g.dW, g.dH, g.dD, ix, iy, iz), co = split3(k, g.dKW, g.dKH, g.dKD, kx, ky, kz);
        const int tz = iz + g.PD - kz * g.DD, ty = iy + g.PH - ky * g.DH, tx = ix + g.PW - kx * g.DW;
        if (tz < 0 || ty < 0 || tx < 0) return 0.0f;
        const int oz = fdivmod(tz, g.dSD, rz), oy = fdivmod(ty, g.dSH, ry), ox = fdivmod(tx, g.dSW, rx);
        if (rz || ry || rx || oz >= g.Do || oy >= g.Ho || ox >= g.Wo) return 0.0f;
        return dy[(((int64_t)nb * g.Co + co) * g.Do + oz) * g.Ho * g.Wo + (int64_t)oy * g.Wo + ox];
    }
    __device__ float load_b(int k, int n) const {
        int tap;
        const int co = fdivmod(k, g.dT, tap);
        return w[((int64_t)co * g.Ci + n) * g.taps() + tap];
    }
    __device__ void store(int, int m, int n, float v) const {
        int i;
        const int nb = fdivmod(m, g.dSi, i);
        bool second;
        const int64_t at = cat_offset(g, nb, n, g.in_voxels(), second) + i;
        (second ? dx2 : dx)[at] = v + (b ? b[n] : 0.0f);
    }
};

struct ConvWeightPass {
    const ConvGeom& g;
    const float *dy, *x, *x2;
    float* part;   // (slices, Co, Ci*T): dw itself when there is one slice
    static constexpr bool a_along_k = true;
    __device__ int M() const { return g.Co; }
    __device__ int Nn() const { return g.Ci * g.taps(); }
    __device__ int K() const { return g.N * g.out_voxels(); }
    __device__ float load_a(int m, int k) const {
        int o;
        const int nb = fdivmod(k, g.dSo, o);
        return dy[((int64_t)nb * g.Co + m) * g.out_voxels() + o];
    }
    __device__ float load_b(int k, int n) const { return im2col(g, x, x2, k, n); }
    __device__ void store(int z, int m, int n, float v) const { part[((int64_t)z * M() + m) * Nn() + n] = v; }
};

// Element i (< 8) of this thread's share of a kTK x 64 operand tile: (k, r), with lanes
// along r (128 threads = 2 k-rows of 64) or along k (8 r-rows of 16).
__device__ __forceinline__ void tile_slot(int tid, int i, bool along_k, int& k, int& r) {
    if (along_k) k = tid % kTK, r = tid / kTK + (kThreads / kTK) * i;
    else r = tid % kTM, k = tid / kTM + (kThreads / kTM) * i;
}

// Fragment registers of A (rows r0.., k from k0) or B (columns c0..) from a shared tile
// stored [k][row]: K = 8 tf32, K = 16 bf16 pairs, through portable.cuh's layout.
template <int K>
__device__ __forceinline__ void load_frag_a(const float (*t)[kLd], int k0, int r0, int lane, uint32_t a[4]) {
    CUNET_UNROLL
    for (int reg = 0; reg < 4; ++reg) {
        if (K == 8) {
            a[reg] = f32_to_tf32(t[k0 + mma_a_col<8>(lane, reg)][r0 + mma_a_row<8>(lane, reg)]);
        } else {
            const int e = 2 * reg;
            a[reg] = pack_bf16x2(t[k0 + mma_a_col<16>(lane, e)][r0 + mma_a_row<16>(lane, e)],
                                 t[k0 + mma_a_col<16>(lane, e + 1)][r0 + mma_a_row<16>(lane, e + 1)]);
        }
    }
}
template <int K>
__device__ __forceinline__ void load_frag_b(const float (*t)[kLd], int k0, int c0, int lane, uint32_t b[2]) {
    const int c = c0 + mma_b_col(lane);
    CUNET_UNROLL
    for (int reg = 0; reg < 2; ++reg) {
        if (K == 8) b[reg] = f32_to_tf32(t[k0 + mma_b_row<8>(lane, reg)][c]);
        else b[reg] = pack_bf16x2(t[k0 + mma_b_row<16>(lane, 2 * reg)][c], t[k0 + mma_b_row<16>(lane, 2 * reg + 1)][c]);
    }
}

// One K step of a warp's 32 x 32 tile at (wm, wn). PREC 0: fp32 FFMA, 1: tf32, 2: bf16.
template <int PREC>
__device__ __forceinline__ void warp_step(const float (*As)[kLd], const float (*Bs)[kLd], int wm, int wn, int lane,
                                          float acc[2][4][4]) {
    if (PREC == 0) {
        CUNET_UNROLL
        for (int k = 0; k < kTK; ++k)
            CUNET_UNROLL
            for (int i = 0; i < 2; ++i)
                CUNET_UNROLL
                for (int j = 0; j < 4; ++j)
                    CUNET_UNROLL
                    for (int e = 0; e < 4; ++e)
                        acc[i][j][e] += As[k][wm + 16 * i + mma_c_row(lane, e)] * Bs[k][wn + 8 * j + mma_c_col(lane, e)];
        return;
    }
    constexpr int K = PREC == 1 ? 8 : 16;
    CUNET_UNROLL
    for (int k0 = 0; k0 < kTK; k0 += K) {
        uint32_t a[2][4], b[4][2];
        CUNET_UNROLL
        for (int i = 0; i < 2; ++i) load_frag_a<K>(As, k0, wm + 16 * i, lane, a[i]);
        CUNET_UNROLL
        for (int j = 0; j < 4; ++j) load_frag_b<K>(Bs, k0, wn + 8 * j, lane, b[j]);
        CUNET_UNROLL
        for (int i = 0; i < 2; ++i)
            CUNET_UNROLL
            for (int j = 0; j < 4; ++j) mma_16x8<K>(acc[i][j], a[i], b[j]);
    }
}

// The block's C tile over K in [z*k_slice, (z+1)*k_slice). blockDim.x must be kThreads.
template <int PREC, class Pass>
__device__ __forceinline__ void conv_gemm(const Pass& p, int k_slice) {
    __shared__ float As[2][kTK][kLd], Bs[2][kTK][kLd];
    const int M = p.M(), Nn = p.Nn(), K = p.K();
    const int tiles_n = (Nn + kTN - 1) / kTN, tiles_m = (M + kTM - 1) / kTM;
    const int tn = blockIdx.x % tiles_n, tm = (blockIdx.x / tiles_n) % tiles_m, z = blockIdx.x / (tiles_n * tiles_m);
    const int m0 = tm * kTM, n0 = tn * kTN, kb = z * k_slice, ke = kb + k_slice < K ? kb + k_slice : K;
    const int tid = threadIdx.x, lane = tid & 31, wm = (tid >> 6) * 32, wn = ((tid >> 5) & 1) * 32;
    float acc[2][4][4];
    CUNET_UNROLL
    for (int i = 0; i < 2; ++i)
        CUNET_UNROLL
        for (int j = 0; j < 4; ++j)
            CUNET_UNROLL
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
    float ra[8], rb[8];   // this thread's share of the next step's A and B tiles
    auto fetch = [&](int k0) {
        CUNET_UNROLL
        for (int i = 0; i < 8; ++i) {
            int k, r;
            tile_slot(tid, i, Pass::a_along_k, k, r);
            ra[i] = m0 + r < M && k0 + k < ke ? p.load_a(m0 + r, k0 + k) : 0.0f;
            tile_slot(tid, i, true, k, r);
            rb[i] = n0 + r < Nn && k0 + k < ke ? p.load_b(k0 + k, n0 + r) : 0.0f;
        }
    };
    auto stage = [&](int buf) {
        CUNET_UNROLL
        for (int i = 0; i < 8; ++i) {
            int k, r;
            tile_slot(tid, i, Pass::a_along_k, k, r);
            As[buf][k][r] = ra[i];
            tile_slot(tid, i, true, k, r);
            Bs[buf][k][r] = rb[i];
        }
    };
    fetch(kb);
    stage(0);
    __syncthreads();
    for (int k0 = kb, buf = 0; k0 < ke; k0 += kTK, buf ^= 1) {
        const bool more = k0 + kTK < ke;
        if (more) fetch(k0 + kTK);
        warp_step<PREC>(As[buf], Bs[buf], wm, wn, lane, acc);
        if (more) stage(buf ^ 1);   // buf ^ 1 was last read before the previous step's barrier
        __syncthreads();
    }
    CUNET_UNROLL
    for (int i = 0; i < 2; ++i)
        CUNET_UNROLL
        for (int j = 0; j < 4; ++j)
            CUNET_UNROLL
            for (int e = 0; e < 4; ++e) {
                const int m = m0 + wm + 16 * i + mma_c_row(lane, e), n = n0 + wn + 8 * j + mma_c_col(lane, e);
                if (m < M && n < Nn) p.store(z, m, n, acc[i][j][e]);
            }
}

// Thread 0 fills the block's shared geometry; every thread waits for it.
__device__ __forceinline__ void share_geom(ConvGeom& g, CUNET_CONV_DIMS, int64_t C1) {
    if (threadIdx.x == 0) {
        g = ConvGeom{(int)N,  (int)Ci, (int)Co, (int)D,  (int)H,  (int)W,  (int)Do, (int)Ho, (int)Wo, (int)KD, (int)KH,
                     (int)KW, (int)SD, (int)SH, (int)SW, (int)PD, (int)PH, (int)PW, (int)DD, (int)DH, (int)DW, (int)C1};
        g.dW = make_fastdiv(g.W), g.dH = make_fastdiv(g.H), g.dD = make_fastdiv(g.D);
        g.dWo = make_fastdiv(g.Wo), g.dHo = make_fastdiv(g.Ho), g.dDo = make_fastdiv(g.Do);
        g.dKW = make_fastdiv(g.KW), g.dKH = make_fastdiv(g.KH), g.dKD = make_fastdiv(g.KD);
        g.dSW = make_fastdiv(g.SW), g.dSH = make_fastdiv(g.SH), g.dSD = make_fastdiv(g.SD);
        g.dT = make_fastdiv(g.taps()), g.dSi = make_fastdiv(g.in_voxels()), g.dSo = make_fastdiv(g.out_voxels());
    }
    __syncthreads();
}

}  // namespace cunet

// One kernel per (pass, precision), looked up by name by the CuPy path:
//   conv_forward_<p>(DIMS, C1, x, x2, w, b, y, relu)        grid tiles_m * tiles_n, K = Ci*T in one slice
//   conv_backward_data_<p>(DIMS, C1, dy, w, b, dx, dx2)     grid tiles_m * tiles_n
//   conv_backward_weight_<p>(DIMS, C1, dy, x, x2, part, k_slice)   grid tiles_m * tiles_n * slices
// <p> = fp32 | tf32 | bf16; blockDim.x = kThreads. x2 / dx2: channels [C1, Ci) (null if C1 = Ci).
#define CUNET_CONV_TILED(suffix, prec)                                                                            \
    extern "C" __global__ void __launch_bounds__(cunet::kThreads, cunet::kMinBlocks) conv_forward_##suffix(     \
        CUNET_CONV_DIMS, int64_t C1, const float* __restrict__ x, const float* __restrict__ x2,                    \
        const float* __restrict__ w, const float* __restrict__ b, float* __restrict__ y, int64_t relu) {           \
        __shared__ cunet::ConvGeom g;                                                                              \
        cunet::share_geom(g, CUNET_CONV_ARGS, C1);                                                                 \
        const cunet::ConvFwdPass p{g, x, x2, w, b, y, (int)relu};                                                  \
        cunet::conv_gemm<prec>(p, p.K());                                                                          \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(cunet::kThreads, cunet::kMinBlocks) conv_backward_data_##suffix( \
        CUNET_CONV_DIMS, int64_t C1, const float* __restrict__ dy, const float* __restrict__ w,                    \
        const float* __restrict__ b, float* __restrict__ dx, float* __restrict__ dx2) {                            \
        __shared__ cunet::ConvGeom g;                                                                              \
        cunet::share_geom(g, CUNET_CONV_ARGS, C1);                                                                 \
        const cunet::ConvDataPass p{g, dy, w, b, dx, dx2};                                                         \
        cunet::conv_gemm<prec>(p, p.K());                                                                          \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(cunet::kThreads, cunet::kMinBlocks) conv_backward_weight_##suffix( \
        CUNET_CONV_DIMS, int64_t C1, const float* __restrict__ dy, const float* __restrict__ x,                    \
        const float* __restrict__ x2, float* __restrict__ part, int64_t k_slice) {                                 \
        __shared__ cunet::ConvGeom g;                                                                              \
        cunet::share_geom(g, CUNET_CONV_ARGS, C1);                                                                 \
        const cunet::ConvWeightPass p{g, dy, x, x2, part};                                                         \
        cunet::conv_gemm<prec>(p, (int)k_slice);                                                                   \
    }
CUNET_CONV_TILED(fp32, 0)
CUNET_CONV_TILED(tf32, 1)
CUNET_CONV_TILED(bf16, 2)
#undef CUNET_CONV_TILED

// out[i] = sum over z < slices of part[z*n + i], in slice order: the split weight gradient.
extern "C" __global__ void conv_sum_slices(int64_t n, int64_t slices, const float* __restrict__ part,
                                           float* __restrict__ out) {
    CUNET_LOOP(i, n) {
        float s = 0.0f;
        for (int64_t z = 0; z < slices; ++z) s += part[z * n + i];
        out[i] = s;
    }
}

// dx[i] = mask[i] > 0 ? dx[i] : 0: the data gradient through the ReLU whose output (mask)
// was the conv's input (conv_backward_data_cat's mask, where no variant applies it in its store).
extern "C" __global__ void conv_relu_mask(int64_t n, const float* __restrict__ mask, float* __restrict__ dx) {
    CUNET_LOOP(i, n) dx[i] = mask[i] > 0.0f ? dx[i] : 0.0f;
}

// ---- host variants
// The CPU build's conv (NVRTC and nvcc never see this section). Winograd and patch layers
// have their own sections below; for every other geometry one idea serves all three
// passes: copy the array that is read (x, or dy for the data gradient) once into a
// zero-padded buffer, split by stride phase, laid out (C, phase, N, Z, Y, X), in which
// neighbouring rows, planes and images share their zero padding (a read left of a row
// lands in the zero tail of the row before). Every tap then reads that buffer at a fixed
// offset from one flat output index q, so
//   forward, data gradient:  out[c][q]   = sum over c', taps t of wt(c, c', t) * buf[c'][q + off[t]]
//   weight gradient:         dw(a, b, t) = sum over q of dyg[a][q] * buf[b][q + off[t]]
// where q runs over a grid of the buffer's padded extent: q = ((n*Z + z)*Y + y)*X + x,
// valid where z, y, x are below the output extent (the rest is computed and dropped,
// or multiplied by zeros of dyg, the dy copy on the grid). Inner loops are 16-float
// vectors along q with no bounds checks; register blocking: 24 zmm accumulators, as
// 6 output channels x 64 q (forward, data gradient) or 6 x 4 channel pairs (weight gradient).
//   stride S: the buffer holds the S phases of each axis, and tap k of an axis reads
//             phase (k*Dil - P) mod S at shift floor((k*Dil - P)/S): a stride-1 read.
//   data gradient with stride S: the S^d output phases are separate stride-1 convs over
//             the dy copy, each with the taps that reach it.
// Deterministic: every output is summed by one thread in a fixed order; the weight
// gradient's q-slices are fixed by the shape, not by the thread count, and reduced in order.
#if defined(CUNET_HOST)
#if defined(_OPENMP)
#include <omp.h>
#endif
namespace cunet::conv_host {

#if defined(_OPENMP)
inline int64_t host_threads() { return omp_get_max_threads(); }
#else
inline int64_t host_threads() { return 1; }
#endif

using simd::v16;
using simd::v16i;
using simd::load16;
using simd::splat;
using simd::hsum16;

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t ceil_div(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

// Scratch per calling thread, grown on demand and kept: fresh pages on every call would
// cost more than filling them. 64-byte aligned. Slots: 0 read buffer, 1 packed weights / dy
// grid, 2 partial dw, 3 transformed tiles (Winograd weight gradient); 4 and 5 are for use
// inside parallel regions (worker_scratch), whose team includes the calling thread.
inline float* scratch(int slot, int64_t n) {
    static thread_local std::vector<float> buf[7];
    std::vector<float>& v = buf[slot];
    if ((int64_t)v.size() < n + 16) v.resize(n + 16);
    return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t(63));
}
// A parallel region's per-thread buffer `which` (0, 1 or 2) of n floats: scratch slots 4-6.
inline float* worker_scratch(int which, int64_t n) { return scratch(4 + which, n); }

// The padded, phase-split copy of a (N, C, X0, X1, X2) array: element j of axis a in
// phase p_a holds source index j*S_a + p_a, zero from the end of the source to len_a (the
// tail, shared with the next row / plane / image as their leading padding).
struct Copy {
    int64_t X[3], len[3], S[3];
    int64_t pre;   // zeros before the first element: the reach of the most negative read
    int64_t L() const { return len[0] * len[1] * len[2]; }   // grid positions per image and phase
    int64_t phases() const { return S[0] * S[1] * S[2]; }
};

// Axis a of a copy read at copy index o + sh for outputs o < O and shifts sh in [mn, mx]:
// len holds the O outputs of the grid, and each read is a source element or a zero (of
// its row's tail, or, for o + sh < 0, of the tail of the row before).
inline void copy_axis(Copy& g, int a, int64_t X, int64_t S, int64_t O, int64_t mn, int64_t mx) {
    g.X[a] = X, g.S[a] = S;
    g.len[a] = std::max({O, O + mx, ceil_div(X, S) + std::max<int64_t>(0, -mn)});
}

// Plane (n, c) of an (N, C, plane) array given as two: channels [0, C1) in a, [C1, C) in b
// (the in-place concat; C1 = C and b null for one array).
template <class T>
inline T* plane_of(T* a, T* b, int64_t C1, int64_t C, int64_t n, int64_t c, int64_t plane) {
    return c < C1 ? a + (n * C1 + c) * plane : b + (n * (C - C1) + c - C1) * plane;
}

// dst: `pre` zeros, then (C, phases, N, len0, len1, len2) at channel stride Cs >= phases*N*L
// (the gap zeroed), then `slack` zeros: the dropped grid positions may read past the end.
// src: channels [0, C1) of (N, C, X0, X1, X2), src2 the rest (C1 = C: src2 unused).
inline void make_copy(const float* src, int64_t N, int64_t C, const Copy& g, float* dst, int64_t Cs,
                      int64_t slack, int64_t C1 = INT64_MAX, const float* src2 = nullptr) {
    C1 = std::min(C1, C);
    std::fill(dst, dst + g.pre, 0.0f);
    dst += g.pre;
    const int64_t P = g.phases(), used = P * N * g.L(), planes = C * P * N * g.len[0], S = g.S[2];
    // one (channel, phase, image, j0) plane of len1 rows per iteration (no divisions per row)
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < planes; ++r) {
        const int64_t j0 = r % g.len[0], n = (r / g.len[0]) % N, p = (r / (g.len[0] * N)) % P, c = r / (g.len[0] * N * P);
        const int64_t p2 = p % S, p1 = (p / S) % g.S[1], p0 = p / (S * g.S[1]), i0 = j0 * g.S[0] + p0;
        float* out = dst + c * Cs + ((p * N + n) * g.len[0] + j0) * g.len[1] * g.len[2];
        const float* in = plane_of(src, src2, C1, C, n, c, g.X[0] * g.X[1] * g.X[2]) + i0 * g.X[1] * g.X[2] + p2;
        const int64_t row = std::min(g.len[2], ceil_div(g.X[2] - p2, S));
        for (int64_t j1 = 0, i1 = p1; j1 < g.len[1]; ++j1, i1 += g.S[1], out += g.len[2]) {
            const int64_t je = i0 < g.X[0] && i1 < g.X[1] ? row : 0;
            const float* a = in + i1 * g.X[2];
            if (S == 1) std::copy(a, a + je, out);
            else for (int64_t j = 0; j < je; ++j) out[j] = a[j * S];
            std::fill(out + je, out + g.len[2], 0.0f);
        }
        if (r % (P * N * g.len[0]) == 0 && Cs > used) std::fill(dst + c * Cs + used, dst + (c + 1) * Cs, 0.0f);
    }
    std::fill(dst + C * Cs, dst + C * Cs + slack, 0.0f);
}

// Flat offset, from the start of the buffer, of a read at copy index shift (s0, s1, s2).
inline int64_t copy_offset(const Copy& g, int64_t s0, int64_t s1, int64_t s2) {
    return g.pre + (s0 * g.len[1] + s1) * g.len[2] + s2;
}

// Calls f(i, n, z, y, x, m) for each run of valid grid positions in [q0, q1): grid positions
// q0+i .. q0+i+m-1 are output (n, z, y, x .. x+m-1). Valid: z < O[0], y < O[1], x < O[2].
template <class F>
inline void for_runs(int64_t q0, int64_t q1, const int64_t len[3], const int64_t O[3], F&& f) {
    int64_t x = q0 % len[2], r = q0 / len[2], y = r % len[1], z = (r / len[1]) % len[0], n = r / (len[1] * len[0]);
    for (int64_t q = q0; q < q1;) {
        if (x < O[2] && y < O[1] && z < O[0]) {
            const int64_t m = std::min(O[2] - x, q1 - q);
            f(q - q0, n, z, y, x, m);
            q += m, x += m;
        } else {
            q += len[2] - x, x = 0;
            if (++y == len[1]) {
                y = 0;
                if (++z == len[0]) z = 0, ++n;
            }
        }
    }
}

// Block b of n channels cut into ceil(n/most) near-equal blocks (8 -> 4+4, not 6+2).
inline void channel_block(int64_t n, int64_t most, int64_t b, int64_t& begin, int& size) {
    const int64_t nblk = (n + most - 1) / most, base = n / nblk, extra = n % nblk;
    size = (int)(base + (b < extra)), begin = b * base + std::min(b, extra);
}

// ---- forward / data gradient: out[c][q] = sum over c' < Cin, t < nt of wp * buf[c'*Bs + q + off[t]]
// The unaligned loads of buf are the scarce resource (a zmm load that crosses a cache line
// costs about two), so a block of CB output channels x TV vectors of q spends TV loads and
// CB broadcasts on CB*TV FMAs: on L1-resident data 6 x 4 ran at ~95% of the FMA peak,
// 4 x 6 at ~75%, 1 x 12 at ~25% (load-bound: the 1- and 2-channel tails).
constexpr int kCB = 6;        // most output channels per register block
constexpr int kChunk = 384;   // q per unit of work splitting

// One block: CB output channels x 16*TV positions from q = 0 of B (already at the block):
// out[j*ostride + 16*v ..] = sum over k < K (rows of B, stride Bs) and, with Taps, taps t < nt
// (at offsets off[t]) of w[(k*nt + t)*kCB + j] * B[k*Bs + off[t] + 16*v ..]. Without Taps
// (one tap at offset 0) it is a plain GEMM panel: the Winograd and patch GEMMs.
// The tile is 16*TV/kLanes native vectors wide, accumulated G at a time: all of them with
// AVX-512 (CB*TV zmm accumulators), 2 elsewhere (CB*2: 12 of AVX2's 16 ymm registers), each
// group passing over K and the taps again (the B rows it reads are in L1). Every output is
// summed in the same order either way.
template <int CB, int TV, bool Taps = true>
inline void gemm_tile(const float* __restrict__ B, int64_t Bs, int64_t K, const float* __restrict__ w,
                      const int64_t* __restrict__ off, int nt, float* __restrict__ out, int64_t ostride,
                      int64_t ws = kCB) {
    constexpr int NV = 16 * TV / simd::kLanes, G = simd::kLanes == 16 ? TV : 2;   // NV % G == 0
    for (int g0 = 0; g0 < NV; g0 += G) {
        simd::vn acc[CB][G];
#pragma GCC unroll 16
        for (int j = 0; j < CB; ++j)
#pragma GCC unroll 16
            for (int v = 0; v < G; ++v) acc[j][v] = simd::vn{};
        const float* Bc = B + g0 * simd::kLanes;
        const float* wc = w;
        for (int64_t c = 0; c < K; ++c, Bc += Bs) {
            for (int t = 0; t < (Taps ? nt : 1); ++t, wc += ws) {
                const float* xb = Taps ? Bc + off[t] : Bc;
                simd::vn wv[CB];
#pragma GCC unroll 16
                for (int j = 0; j < CB; ++j) wv[j] = simd::splatn(wc[j]);
#pragma GCC unroll 16
                for (int v = 0; v < G; ++v) {
                    const simd::vn xv = simd::loadn(xb + simd::kLanes * v);
#pragma GCC unroll 16
                    for (int j = 0; j < CB; ++j) acc[j][v] += wv[j] * xv;
                }
            }
        }
#pragma GCC unroll 16
        for (int j = 0; j < CB; ++j)
#pragma GCC unroll 16
            for (int v = 0; v < G; ++v) simd::storen(out + j * ostride + (g0 + v) * simd::kLanes, acc[j][v]);
    }
}

// flat_conv's block: wp (Cin, nt, kCB) weights of this channel block, tile (CB, 16*TV).
template <int CB, int TV>
inline void flat_tile(const float* B, int64_t Bs, int64_t Cin, const float* wp, const int64_t* off, int nt, float* tile) {
    gemm_tile<CB, TV>(B, Bs, Cin, wp, off, nt, tile, 16 * TV);
}

// q per block of nc output channels (the TV of flat_tile<nc, TV> times 16)
inline int tile_q(int nc) { return 16 * (nc == 6 ? 4 : nc == 5 ? 5 : nc == 4 ? 6 : nc == 3 ? 8 : 12); }

// B: Cin channels of stride Bs, readable to 192 past Q plus the largest offset (the slack).
// wp: (blocks of Cout, Cin, nt, kCB). store(c0, nc, q0, keep, T, tile): tile (nc, T) holds
// out[c0 .. c0+nc)[q0 .. q0+T), of which the first `keep` positions are to be stored.
template <class Store>
inline void flat_conv(const float* B, int64_t Bs, int64_t Cin, const float* wp, const int64_t* off, int nt,
                      int64_t Cout, int64_t Q, Store&& store) {
    const int64_t nblk = (Cout + kCB - 1) / kCB, nunit = (Q + kChunk - 1) / kChunk;
    int64_t halo = 0;
    for (int t = 0; t < nt; ++t) halo = std::max(halo, off[t] % Q);   // about the in-plane part
    // units per chunk: the chunk's rows of every input channel (~1 MiB) stay in L2 while
    // every channel block passes over them
    const int64_t per = std::max<int64_t>(2, ((1 << 18) / std::max<int64_t>(Cin, 1) - halo) / kChunk);
    const int64_t nchunk = (nunit + per - 1) / per;
#pragma omp parallel for schedule(dynamic)
    for (int64_t it = 0; it < nchunk * nblk; ++it) {
        const int64_t ch = it / nblk, blk = it % nblk;
        int64_t c0;
        int nc;
        channel_block(Cout, kCB, blk, c0, nc);
        const int64_t T = tile_q(nc), qe = std::min(Q, (ch + 1) * per * kChunk);
        const float* w = wp + blk * Cin * nt * kCB;
        alignas(64) float tile[400];
        for (int64_t q0 = ch * per * kChunk; q0 < qe; q0 += T) {
            const float* b = B + q0;
            switch (nc) {
                case 1: flat_tile<1, 12>(b, Bs, Cin, w, off, nt, tile); break;
                case 2: flat_tile<2, 12>(b, Bs, Cin, w, off, nt, tile); break;
                case 3: flat_tile<3, 8>(b, Bs, Cin, w, off, nt, tile); break;
                case 4: flat_tile<4, 6>(b, Bs, Cin, w, off, nt, tile); break;
                case 5: flat_tile<5, 5>(b, Bs, Cin, w, off, nt, tile); break;
                default: flat_tile<6, 4>(b, Bs, Cin, w, off, nt, tile); break;
            }
            store(c0, nc, q0, std::min(T, qe - q0), T, tile);
        }
    }
}

// Weights packed for flat_conv: wp[((blk*Cin + ci)*nt + t)*kCB + j] = weight(c0(blk) + j, ci, t).
template <class Weight>
inline void pack_weights(int64_t Cout, int64_t Cin, int nt, float* wp, Weight&& weight) {
    const int64_t nblk = (Cout + kCB - 1) / kCB;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nblk * Cin; ++i) {
        int64_t c0;
        int nc;
        channel_block(Cout, kCB, i / Cin, c0, nc);
        for (int t = 0; t < nt; ++t)
            for (int j = 0; j < kCB; ++j) wp[(i * nt + t) * kCB + j] = j < nc ? weight(c0 + j, i % Cin, t) : 0.0f;
    }
}

// ---- weight gradient: dw[(a*Cb + b)*nt + t] = sum over q < Qr of A[a*As + q] * B[b*Bs + q + off[t]]
// A's rows are 64-byte aligned, B's (at tap offsets) are not: more A rows than B rows per block.
constexpr int kCA = 6;    // most rows of A per register block
constexpr int kCBW = 4;   // most rows of B per register block

// vp (kCA, kCBW) vector partial sums, continued (or started, if first) over q in [q0, q1).
// Accumulated in native vectors: with AVX-512 the whole CA x CB block at once; elsewhere one
// native piece of the 16 lanes and two rows of B at a time (CA*2 accumulators), each pass
// over q reading A again (from L1). Each lane sums over q in order either way.
template <int CA, int CB>
inline void dot_block(const float* __restrict__ A, int64_t As, const float* __restrict__ B, int64_t Bs,
                      int64_t q0, int64_t q1, bool first, v16* __restrict__ vp) {
    constexpr int L = simd::kLanes, G = L == 16 ? CB : 2;
    float* part = reinterpret_cast<float*>(vp);
    for (int p = 0; p < 16; p += L)
        for (int i0 = 0; i0 < CB; i0 += G) {
            simd::vn acc[CA][G];
            const int ni = std::min(G, CB - i0);
#pragma GCC unroll 8
            for (int j = 0; j < CA; ++j)
#pragma GCC unroll 8
                for (int i = 0; i < G; ++i)
                    acc[j][i] = first || i >= ni ? simd::vn{} : simd::loadn(part + (j * kCBW + i0 + i) * 16 + p);
            for (int64_t q = q0; q < q1; q += 16) {
                simd::vn a[CA];
#pragma GCC unroll 8
                for (int j = 0; j < CA; ++j) a[j] = simd::loadn(A + j * As + q + p);
#pragma GCC unroll 8
                for (int i = 0; i < G; ++i) {
                    if (i >= ni) break;
                    const simd::vn bv = simd::loadn(B + (i0 + i) * Bs + q + p);
#pragma GCC unroll 8
                    for (int j = 0; j < CA; ++j) acc[j][i] += a[j] * bv;
                }
            }
#pragma GCC unroll 8
            for (int j = 0; j < CA; ++j)
#pragma GCC unroll 8
                for (int i = 0; i < G; ++i)
                    if (i < ni) simd::storen(part + (j * kCBW + i0 + i) * 16 + p, acc[j][i]);
        }
}

template <int CA>
inline void dot_block_a(int nb, const float* A, int64_t As, const float* B, int64_t Bs, int64_t q0, int64_t q1,
                        bool first, v16* vp) {
    switch (nb) {
        case 1: return dot_block<CA, 1>(A, As, B, Bs, q0, q1, first, vp);
        case 2: return dot_block<CA, 2>(A, As, B, Bs, q0, q1, first, vp);
        case 3: return dot_block<CA, 3>(A, As, B, Bs, q0, q1, first, vp);
        default: return dot_block<CA, 4>(A, As, B, Bs, q0, q1, first, vp);
    }
}

// dot_block for a block of na (<= kCA) rows of A by nb (<= kCBW) rows of B.
inline void dot_blocks(int na, int nb, const float* A, int64_t As, const float* B, int64_t Bs, int64_t q0, int64_t q1,
                       bool first, v16* vp) {
    switch (na) {
        case 1: return dot_block_a<1>(nb, A, As, B, Bs, q0, q1, first, vp);
        case 2: return dot_block_a<2>(nb, A, As, B, Bs, q0, q1, first, vp);
        case 3: return dot_block_a<3>(nb, A, As, B, Bs, q0, q1, first, vp);
        case 4: return dot_block_a<4>(nb, A, As, B, Bs, q0, q1, first, vp);
        case 5: return dot_block_a<5>(nb, A, As, B, Bs, q0, q1, first, vp);
        default: return dot_block_a<6>(nb, A, As, B, Bs, q0, q1, first, vp);
    }
}

// A stride of at least n floats for rows stored 16 floats at a time across many rows at once
// (the Winograd components): n, or n + 16 where n is an even number of 64-byte lines, so the
// rows do not all map to one L1 set (a multiple of 4 KiB apart).
inline int64_t spaced(int64_t n) { return n + (n / 16 % 2 == 0 ? 16 : 0); }

// The sum of n floats (a multiple of 16) from p: 16-lane partials, then their lane sum.
inline float sum16s(const float* p, int64_t n) {
    v16 acc = v16{};
    for (int64_t q = 0; q < n; q += 16) acc += load16(p + q);
    return hsum16(acc);
}

// out[i] = part[i] + part[size + i] + ... (nsl slices, added in slice order), 16 i at a time.
inline void sum_slices(const float* part, int64_t nsl, int64_t size, float* out) {
#pragma omp parallel for schedule(static) if (nsl * size > 32768)
    for (int64_t i = 0; i < size; i += 16) {
        const int64_t m = std::min<int64_t>(16, size - i);
        v16 acc = simd::load_part(part + i, m);
        for (int64_t s = 1; s < nsl; ++s) acc += simd::load_part(part + s * size + i, m);
        simd::store_part(out + i, acc, m);
    }
}

// A: Ca rows of stride As (a multiple of 16, 64-byte aligned), zero past the valid grid;
// Qr a multiple of 16. Work items: (q-slice, block of rows of A), each summing its blocks
// as 16-lane partials over the slice, chunk by chunk, and reducing them once at the end;
// the slices' sums are then added in slice order.
inline void dot_conv(const float* A, int64_t As, int64_t Ca, const float* B, int64_t Bs, int64_t Cb,
                     const int64_t* off, int nt, int64_t Qr, float* dw) {
    constexpr int64_t kStep = 512;   // q per pass over the (B block, tap) pairs: the rows stay in L1
    const int64_t nca = (Ca + kCA - 1) / kCA, ncb = (Cb + kCBW - 1) / kCBW, nvec = Qr / 16, size = Ca * Cb * nt;
    // slices: enough (slice, row block) items for the threads; each slice at least 1024 q, so not empty
    const int64_t nsl = std::max<int64_t>(1, std::min<int64_t>((8 + nca - 1) / nca, nvec / 64));
    float* part = nsl == 1 ? dw : scratch(2, nsl * size);
#pragma omp parallel for schedule(dynamic)
    for (int64_t it = 0; it < nsl * nca; ++it) {
        const int64_t s = it / nca, qs = nvec * s / nsl * 16, qe = nvec * (s + 1) / nsl * 16;
        int64_t a0;
        int na;
        channel_block(Ca, kCA, it % nca, a0, na);
        v16* vp = reinterpret_cast<v16*>(worker_scratch(0, ncb * nt * kCA * kCBW * 16));   // (ncb, nt, kCA, kCBW)
        const float* Ab = A + a0 * As;
        for (int64_t q0 = qs; q0 < qe; q0 += kStep) {
            const int64_t q1 = std::min(qe, q0 + kStep);
            for (int64_t b = 0; b < ncb; ++b) {
                int64_t b0;
                int nb;
                channel_block(Cb, kCBW, b, b0, nb);
                for (int t = 0; t < nt; ++t) {
                    const float* Bb = B + b0 * Bs + off[t];
                    v16* v = vp + (b * nt + t) * kCA * kCBW;
                    dot_blocks(na, nb, Ab, As, Bb, Bs, q0, q1, q0 == qs, v);
                }
            }
        }
        float* P = part + s * size;
        for (int64_t b = 0; b < ncb; ++b) {
            int64_t b0;
            int nb;
            channel_block(Cb, kCBW, b, b0, nb);
            for (int t = 0; t < nt; ++t)
                for (int j = 0; j < na; ++j)
                    for (int i = 0; i < nb; ++i)
                        P[((a0 + j) * Cb + b0 + i) * nt + t] = hsum16(vp[((b * nt + t) * kCA + j) * kCBW + i]);
        }
    }
    if (nsl > 1) sum_slices(part, nsl, size, dw);
}

// r[k][l] <- r[l][k]: a 16 x 16 block of floats transposed in registers (4 rounds of shuffles).
inline void transpose16(v16* r) {
    for (int w = 1; w < 16; w *= 2) {   // swap the off-diagonal w x w blocks of each 2w x 2w block
        v16i lo, hi;
        for (int l = 0; l < 16; ++l) lo[l] = l & w ? l - w + 16 : l, hi[l] = l & w ? l + 16 : l + w;
        for (int k = 0; k < 16; ++k)
            if (!(k & w)) {
                const v16 a = r[k], b = r[k + w];
                r[k] = __builtin_shuffle(a, b, lo), r[k + w] = __builtin_shuffle(a, b, hi);
            }
    }
}

// dst[t*ds + r] = src[r*ss + t] for rows r < R (zero for R <= r < ceil16(R)), t < T (a
// multiple of 16): 16 x 16 blocks transposed in registers.
inline void transpose_rows(const float* src, int64_t R, int64_t ss, int64_t T, float* dst, int64_t ds) {
    for (int64_t r0 = 0; r0 < R; r0 += 16)
        for (int64_t t0 = 0; t0 < T; t0 += 16) {
            v16 r[16];
            for (int k = 0; k < 16; ++k) r[k] = r0 + k < R ? load16(src + (r0 + k) * ss + t0) : v16{};
            transpose16(r);
            for (int k = 0; k < 16; ++k) simd::store16(dst + (t0 + k) * ds + r0, r[k]);
        }
}

// out[i*os + j] = sum over q < nq (a multiple of 16) of A[i*As + q] * B[j*Bs + q] for i < Ra,
// j < Rb, as 16-lane dot products (dot_block over blocks of kCA x kCBW rows), one lane sum
// per pair (dots_as_gemm below: the same products as a GEMM).
inline void dots_lanes(const float* A, int64_t Ra, int64_t As, const float* B, int64_t Rb, int64_t Bs, int64_t nq,
                       float* out, int64_t os) {
    const int64_t nca = (Ra + kCA - 1) / kCA, ncb = (Rb + kCBW - 1) / kCBW;
    v16 vp[kCA * kCBW];
    for (int64_t a = 0; a < nca; ++a) {
        int64_t a0;
        int na;
        channel_block(Ra, kCA, a, a0, na);
        for (int64_t b = 0; b < ncb; ++b) {
            int64_t b0;
            int nb;
            channel_block(Rb, kCBW, b, b0, nb);
            dot_blocks(na, nb, A + a0 * As, As, B + b0 * Bs, Bs, 0, nq, true, vp);
            for (int j = 0; j < na; ++j)
                for (int i = 0; i < nb; ++i) out[(a0 + j) * os + b0 + i] = hsum16(vp[j * kCBW + i]);
        }
    }
}

// ---- Winograd F(2x2, 3x3): the 2D 3x3 layers at stride 1, padding 1, dilation 1
// (forward and data gradient). Output tile (2x2 at (2i, 2j)) = A^T [U ⊙ (B^T d B)] A with
// d the 4x4 input tile at (2i-1, 2j-1) and U = G g G^T the transformed 3x3 filter: 16
// multiplies per input channel where the direct conv spends 36, so the work becomes 16
// GEMMs (one per tile component xi) of U[xi] (Co x Ci) by V[xi] (Ci x tiles).
// Per chunk of tiles (one thread): the input tiles of every channel are transformed into
// V (in L2), then per block of <= 6 output channels and 64 tiles the 16 GEMMs (gemm_tile
// panels) leave M in L1, and the output transform writes
// y with bias and ReLU. Tiles are numbered (n, i, j) over N x ceil(H/2) x ceil(W/2);
// where W is a multiple of 32 a vector of 16 tiles is 32 columns of one row pair, where W
// is 16 or 8 it is 2 or 4 whole tile rows (contiguous loads and stores, winograd_groups);
// otherwise its lanes are gathered and scattered.
// Accuracy: exact transforms up to rounding (B, A have entries 0, +-1; G's 1/2 is exact).
constexpr int64_t kWinogradWgradTiles = 64;   // fewer tiles: the direct weight gradient
// G, the filter transform (U = G g G^T), has rows (1, 0, 0), (1, 1, 1)/2, (1, -1, 1)/2, (0, 0, 1):
// winograd_weights applies it, winograd_conv_wgrad its transpose.

// 2 or 3: a 2D or 3D 3x3(x3) layer at stride 1, padding 1, dilation 1 where Winograd pays,
// else 0. The transforms cost per channel, the GEMMs per channel pair: with few channels
// the direct conv wins (2D, 8 x 1x128^2, 2 threads: 1 -> 16 forward 1.6x the direct time,
// 4 -> 16 1.24x, 16 -> 8 0.88x; 3D, 64 tile components per 8 outputs: 8 -> 8 @64^3 1.6x,
// 16 -> 16 @32^3 0.86x, 32 -> 64 @16^3 0.63x).
inline int winograd_dims(CUNET_CONV_DIMS) {
    (void)N;
    const bool plane = KH == 3 && KW == 3 && SH == 1 && SW == 1 && PH == 1 && PW == 1 && DH == 1 && DW == 1 &&
                       Ho == H && Wo == W && SD == 1;
    if (plane && D == 1 && Do == 1 && KD == 1 && PD == 0 && std::min(Ci, Co) >= 8) return 2;
    if (plane && D > 1 && Do == D && KD == 3 && PD == 1 && DD == 1 && std::min(Ci, Co) >= 16) return 3;
    return 0;
}

// U[((blk*NC + xi)*Ci + ci)*kCB + j] = (G g G^T)[xi] (NC = 16) or G applied along z, y, x of a
// 3x3x3 g (NC = 64) of filter g = weight(c0(blk) + j, ci, kz, ky, kx) (kz = 0 in 2D).
template <class Weight>
inline void winograd_weights(int64_t Co, int64_t Ci, int NC, float* U, Weight&& weight) {
    const int64_t nblk = (Co + kCB - 1) / kCB, ngrp = (Ci + 15) / 16;
    const int KZ = NC == 64 ? 3 : 1, AZ = NC == 64 ? 4 : 1;
    const v16 h = splat(0.5f);
    auto gt = [&](v16 a, v16 b, v16 c, v16* o) {   // G (a, b, c): a, (a+b+c)/2, (a-b+c)/2, c
        const v16 e = h * (a + c), f = h * b;
        o[0] = a, o[1] = e + f, o[2] = e - f, o[3] = c;
    };
    // 16 input channels per vector: per output channel j of the block, its 16 filters are
    // transformed at once into loc[xi][ci][j], stored as NC runs of 16 x kCB floats
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nblk * ngrp; ++i) {
        const int64_t blk = i / ngrp, ci0 = i % ngrp * 16, m = std::min<int64_t>(16, Ci - ci0);
        int64_t c0;
        int nc;
        channel_block(Co, kCB, blk, c0, nc);
        alignas(64) float loc[64 * 16 * kCB];
        for (int j = 0; j < kCB; ++j) {
            v16 g[3][3][3] = {}, t[4][3][3], u[4][3], r[4];
            if (j < nc)
                for (int kz = 0; kz < KZ; ++kz)
                    for (int ky = 0; ky < 3; ++ky)
                        for (int kx = 0; kx < 3; ++kx)
                            for (int e = 0; e < m; ++e) g[kz][ky][kx][e] = weight(c0 + j, ci0 + e, kz, ky, kx);
            for (int ky = 0; ky < 3; ++ky)   // along z (3D), then y, then x
                for (int kx = 0; kx < 3; ++kx) {
                    v16 o[4];
                    if (AZ == 1) o[0] = g[0][ky][kx];
                    else gt(g[0][ky][kx], g[1][ky][kx], g[2][ky][kx], o);
                    for (int a = 0; a < AZ; ++a) t[a][ky][kx] = o[a];
                }
            for (int a = 0; a < AZ; ++a) {
                for (int kx = 0; kx < 3; ++kx) {
                    v16 o[4];
                    gt(t[a][0][kx], t[a][1][kx], t[a][2][kx], o);
                    for (int b = 0; b < 4; ++b) u[b][kx] = o[b];
                }
                for (int b = 0; b < 4; ++b) {
                    gt(u[b][0], u[b][1], u[b][2], r);
                    for (int c = 0; c < 4; ++c)
                        for (int e = 0; e < 16; ++e) loc[(((a * 4 + b) * 4 + c) * 16 + e) * kCB + j] = r[c][e];
                }
            }
        }
        for (int xi = 0; xi < NC; ++xi)
            std::memcpy(U + ((blk * NC + xi) * Ci + ci0) * kCB, loc + xi * 16 * kCB, 4 * m * kCB);
    }
}

// out[j*64 + 16*v ..] = sum over k < K of u[k*us + j] * V[k*Vs + 16*v ..] for tv <= 4 vectors.
template <int CB>
inline void winograd_gemm_tv(int tv, const float* V, int64_t Vs, int64_t K, const float* u, float* out, int64_t us) {
    switch (tv) {
        case 1: return gemm_tile<CB, 1, false>(V, Vs, K, u, nullptr, 1, out, 64, us);
        case 2: return gemm_tile<CB, 2, false>(V, Vs, K, u, nullptr, 1, out, 64, us);
        case 3: return gemm_tile<CB, 3, false>(V, Vs, K, u, nullptr, 1, out, 64, us);
        default: return gemm_tile<CB, 4, false>(V, Vs, K, u, nullptr, 1, out, 64, us);
    }
}

// out[j*64 + 16v ..] (j < nc) of a GEMM with packed A (rows of kCB per k), B rows of stride
// Bs, over K = the k count: gemm_tile without taps, dispatched on the block's rows and vectors.
inline void panel_gemm(int nc, int tv, const float* B, int64_t Bs, int64_t K, const float* a, float* out,
                       int64_t as = kCB) {
    switch (nc) {
        case 1: return winograd_gemm_tv<1>(tv, B, Bs, K, a, out, as);
        case 2: return winograd_gemm_tv<2>(tv, B, Bs, K, a, out, as);
        case 3: return winograd_gemm_tv<3>(tv, B, Bs, K, a, out, as);
        case 4: return winograd_gemm_tv<4>(tv, B, Bs, K, a, out, as);
        case 5: return winograd_gemm_tv<5>(tv, B, Bs, K, a, out, as);
        default: return winograd_gemm_tv<6>(tv, B, Bs, K, a, out, as);
    }
}

// out[i*os + j] = sum over q < nq (a multiple of 16) of A[i*As + q] * B[j*Bs + q] for i < Ra,
// j < Rb, as a GEMM: A and B transposed into At (nq x ceil16(Ra)) and Bt (nq x ceil16(Rb))
// in tmp (dots_gemm_floats), then gemm_tile with kCB rows of A broadcast per q and Bt's
// columns along the vector. For short q (< 512) and many rows the 16-lane dot products'
// per-pair lane sums cost more than the FMAs.
inline int64_t dots_gemm_floats(int64_t Ra, int64_t Rb, int64_t nq) { return nq * ((Ra + 15) / 16 + (Rb + 15) / 16) * 16; }
inline void dots_as_gemm(const float* A, int64_t Ra, int64_t As, const float* B, int64_t Rb, int64_t Bs, int64_t nq,
                         float* out, int64_t os, float* tmp) {
    const int64_t Rap = (Ra + 15) / 16 * 16, Rbp = (Rb + 15) / 16 * 16, nblk = (Ra + kCB - 1) / kCB;
    float *Bt = tmp, *At = tmp + nq * Rbp;
    transpose_rows(B, Rb, Bs, nq, Bt, Rbp);
    transpose_rows(A, Ra, As, nq, At, Rap);
    alignas(64) float tile[kCB * 64];
    for (int64_t blk = 0; blk < nblk; ++blk) {
        int64_t a0;
        int na;
        channel_block(Ra, kCB, blk, a0, na);
        for (int64_t v0 = 0; v0 < Rbp; v0 += 64) {
            const int tv = (int)std::min<int64_t>(4, (Rbp - v0) / 16);
            panel_gemm(na, tv, Bt + v0, Rbp, nq, At + a0, tile, Rap);
            for (int j = 0; j < na; ++j)
                std::memcpy(out + (a0 + j) * os + v0, tile + j * 64, 4 * std::min<int64_t>(64, Rb - v0));
        }
    }
}

// B^T d B along one axis: (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
template <class V>
inline void winograd_in4(V& d0, V& d1, V& d2, V& d3) {
    const V a = d0 - d2, b = d1 + d2, c = d2 - d1, e = d1 - d3;
    d0 = a, d1 = b, d2 = c, d3 = e;
}

// winograd_input's tiles (n, i, j0 .. j0+15) of one tile row, below AVX-512: in 16/kLanes
// parts of kLanes tiles, in native vectors (a v16 d[4][4] would live in memory there; see
// simd::vn). Part h: columns s-1 .. s+2*kLanes (s = 2*(j0+h)) of rows 2i-1 .. 2i+2.
inline void winograd_input_parts(const float* src, int64_t H, int64_t W, int64_t i, int64_t j0, float* V,
                                 int64_t Vxi) {
    using simd::vn;
    constexpr int L = simd::kLanes;
    for (int h = 0; h < 16; h += L) {
        const int64_t s = 2 * (j0 + h);
        vn d[4][4];
        for (int a = 0; a < 4; ++a) {
            const int64_t y = 2 * i - 1 + a;
            if (y < 0 || y >= H) {
                for (int k = 0; k < 4; ++k) d[a][k] = vn{};
                continue;
            }
            const float* row = src + y * W + s;
            // q0: columns s-1 .. s+L-2, q1: s+L-1 .. s+2L-2, q2: s+1 .. s+L, q3: s+L+1 .. s+2L
            const vn q0 = s == 0 ? simd::shift_right_in0(simd::loadn(row)) : simd::loadn(row - 1);
            const vn q1 = simd::loadn(row + L - 1), q2 = simd::loadn(row + 1);
            const vn q3 = s + 2 * L == W ? simd::shift_left_in0(simd::loadn(row + L)) : simd::loadn(row + L + 1);
            d[a][0] = simd::even_lanes(q0, q1), d[a][1] = simd::odd_lanes(q0, q1);
            d[a][2] = simd::even_lanes(q2, q3), d[a][3] = simd::odd_lanes(q2, q3);
        }
        for (int k = 0; k < 4; ++k) winograd_in4(d[0][k], d[1][k], d[2][k], d[3][k]);
        for (int a = 0; a < 4; ++a) winograd_in4(d[a][0], d[a][1], d[a][2], d[a][3]);
        for (int a = 0; a < 4; ++a)
            for (int k = 0; k < 4; ++k) simd::storen(V + (a * 4 + k) * Vxi + h, d[a][k]);
    }
}

// Coordinates (image n, tile row i, tile column j) of tiles t0 .. t0+count-1 of the
// N x Th x Tw tiles, n = -1 past the last: computed once per chunk, read per channel.
struct Tiles {
    std::vector<int32_t> n, i, j;
    void fill(int64_t t0, int64_t count, int64_t T, int64_t Th, int64_t Tw) {
        n.resize(count), i.resize(count), j.resize(count);
        int64_t jj = t0 % Tw, ni = t0 / Tw, ii = ni % Th, nn = ni / Th;
        for (int64_t k = 0; k < count; ++k) {
            n[k] = t0 + k < T ? (int32_t)nn : -1, i[k] = (int32_t)ii, j[k] = (int32_t)jj;
            if (++jj == Tw) jj = 0, ii = ii + 1 == Th ? 0 : ii + 1, nn += ii == 0;
        }
    }
    // 3D: n of the source table is a slab (image n, tile depth l) of Td per image; this table
    // is its z-slice 2l + dz as a 2D image n*D + z, or -1 outside [0, D).
    void slice(const Tiles& src, int64_t Td, int64_t D, int64_t dz) {
        n.resize(src.n.size()), i = src.i, j = src.j;
        for (size_t k = 0; k < n.size(); ++k) {
            const int64_t s = src.n[k], z = 2 * (s % Td) + dz;
            n[k] = s >= 0 && z >= 0 && z < D ? (int32_t)(s / Td * D + z) : -1;
        }
    }
};

// How a vector's 16 tiles lie: 1, one tile row (W a multiple of 32: columns read in place);
// 2 or 4, that many whole tile rows (W = 16 or 8: rows of the padded copy, dy in place);
// 0, anywhere (lanes gathered one by one).
inline int winograd_groups(int64_t W) { return W % 32 == 0 ? 1 : W == 16 ? 2 : W == 8 ? 4 : 0; }

// Lanes of G = 2 or 4 groups of 16/G tiles from the group's row loads L[g]: lane k of group
// g is element 2k (ev) or 2k + 1 (od) of L[g]. (G = 1 is G = 2 with the row in L[0], L[1].)
inline void group_lanes(int G, const v16* L, v16& ev, v16& od) {
    const v16i e2 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    if (G <= 2) {
        ev = __builtin_shuffle(L[0], L[1], e2), od = __builtin_shuffle(L[0], L[1], e2 + 1);
        return;
    }
    const v16i e4 = {0, 2, 4, 6, 16, 18, 20, 22, 1, 3, 5, 7, 17, 19, 21, 23};
    const v16i lo = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const v16 a = __builtin_shuffle(L[0], L[1], e4), b = __builtin_shuffle(L[2], L[3], e4);
    ev = __builtin_shuffle(a, b, lo), od = __builtin_shuffle(a, b, lo + 8);
}

// 16 floats from p, or 8 and 8 zeros (constant sizes: one vector load each).
inline v16 load16_or_8(const float* p, bool eight) {
    if (!eight) return load16(p);
    v16 v = v16{};
    std::memcpy(&v, p, 32);
    return v;
}

// The 16 tiles k0 .. k0+15 of table tl, one channel: V[xi*Vxi] (16 floats) = (B^T d B)[xi].
// G = 1 (one tile row): read in place from plane(n) of the input (H x W), rows outside the
// image zero, the columns left and right of it shifted in as zeros. Otherwise read from B, a
// zero-padded copy of the channel (rows of Wp, (n, row) at n*Hp + row, image element (y, x)
// at row y + 1, column x + 1): G tile rows per vector, or lane by lane (G = 0).
template <class Plane>
inline void winograd_input(const float* B, int64_t Hp, int64_t Wp, int64_t H, int64_t W, int G, const Tiles& tl,
                           int64_t k0, Plane&& plane, float* V, int64_t Vxi) {
    v16 d[4][4];
    if (G > 1) {   // group g: tile row (n, i) at lanes g*Tw ..: columns 0 .. 2Tw+1 of its rows 2i .. 2i+3 in B
        const int Tw = 16 / G;
        static const float zeros[4 * 18 + 16] = {};   // the rows of a tile row that is not there
        const float* base[4];
        for (int g = 0; g < G; ++g) {
            const int64_t k = k0 + g * Tw;
            base[g] = tl.n[k] < 0 ? zeros : B + (tl.n[k] * Hp + 2 * tl.i[k]) * Wp;
        }
        for (int a = 0; a < 4; ++a)
            for (int c = 0; c < 4; c += 2) {
                v16 L[4];
                for (int g = 0; g < G; ++g) L[g] = load16(base[g] + a * Wp + c);
                group_lanes(G, L, d[a][c], d[a][c + 1]);
            }
    } else if (G == 1 && tl.n[k0] < 0) {   // a z-slice outside the volume (3D)
        for (int a = 0; a < 4; ++a)
            for (int c = 0; c < 4; ++c) d[a][c] = v16{};
    } else if (G == 1) {   // tiles (n, i, j0 .. j0+15): columns 2*j0-1 .. 2*j0+32 of rows 2i-1 .. 2i+2
        const int64_t j0 = tl.j[k0], i = tl.i[k0];
        const float* src = plane(tl.n[k0]);
        if (simd::kLanes < 16) return winograd_input_parts(src, H, W, i, j0, V, Vxi);
        const v16i ev = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}, od = ev + 1;
        const v16i right = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, left = right + 14;
        const v16 zero = v16{};
        for (int a = 0; a < 4; ++a) {
            const int64_t y = 2 * i - 1 + a;
            if (y < 0 || y >= H) {
                for (int k = 0; k < 4; ++k) d[a][k] = zero;
                continue;
            }
            const float* row = src + y * W + 2 * j0;
            // p0: columns 2j0-1 .. 2j0+14, p1: +15 .. +30, p2: +1 .. +16, p3: +17 .. +32
            const v16 p0 = j0 == 0 ? __builtin_shuffle(zero, load16(row), left) : load16(row - 1);
            const v16 p1 = load16(row + 15), p2 = load16(row + 1);
            const v16 p3 = 2 * j0 + 32 == W ? __builtin_shuffle(load16(row + 16), zero, right) : load16(row + 17);
            d[a][0] = __builtin_shuffle(p0, p1, ev), d[a][1] = __builtin_shuffle(p0, p1, od);
            d[a][2] = __builtin_shuffle(p2, p3, ev), d[a][3] = __builtin_shuffle(p2, p3, od);
        }
    } else {
        for (int lane = 0; lane < 16; ++lane) {
            const int64_t k = k0 + lane;
            if (tl.n[k] < 0) {
                for (int a = 0; a < 4; ++a)
                    for (int c = 0; c < 4; ++c) d[a][c][lane] = 0.0f;
                continue;
            }
            const float* p = B + (tl.n[k] * Hp + 2 * tl.i[k]) * Wp + 2 * tl.j[k];
            for (int a = 0; a < 4; ++a)
                for (int c = 0; c < 4; ++c) d[a][c][lane] = p[a * Wp + c];
        }
    }
    for (int k = 0; k < 4; ++k) winograd_in4(d[0][k], d[1][k], d[2][k], d[3][k]);
    for (int a = 0; a < 4; ++a) winograd_in4(d[a][0], d[a][1], d[a][2], d[a][3]);
    for (int a = 0; a < 4; ++a)
        for (int k = 0; k < 4; ++k) *reinterpret_cast<v16*>(V + (a * 4 + k) * Vxi) = d[a][k];
}

// A^T m A of 16 tiles (m[xi] at M + xi*Ms) plus bias, ReLU, into rows 2i, 2i+1, columns
// 2j, 2j+1 of plane(n) (H x W), the positions inside the image.
// mask (null or a plane like plane's): outputs where mask <= 0 are 0 (the ReLU before the conv).
// winograd_output's tiles (i, j0 .. j0+15) of one tile row, below AVX-512 (as
// winograd_input_parts): out and mk (null, or the ReLU mask) at row 2i, column 2*j0.
inline void winograd_output_parts(const float* M, int64_t Ms, int64_t H, int64_t W, int64_t i, float bias, bool relu,
                                  float* out, const float* mk) {
    using simd::vn;
    constexpr int L = simd::kLanes;
    const vn bv = simd::splatn(bias), zero = vn{};
    for (int h = 0; h < 16; h += L) {
        vn s[2][4];
        for (int k = 0; k < 4; ++k) {
            const vn m0 = simd::loadn(M + k * Ms + h), m1 = simd::loadn(M + (4 + k) * Ms + h),
                     m2 = simd::loadn(M + (8 + k) * Ms + h), m3 = simd::loadn(M + (12 + k) * Ms + h);
            s[0][k] = m0 + m1 + m2, s[1][k] = m1 - m2 - m3;
        }
        for (int r = 0; r < 2 && 2 * i + r < H; ++r) {
            vn y0 = s[r][0] + s[r][1] + s[r][2] + bv, y1 = s[r][1] - s[r][2] - s[r][3] + bv;
            if (relu) y0 = y0 < zero ? zero : y0, y1 = y1 < zero ? zero : y1;
            vn o[2] = {simd::zip_lo(y0, y1), simd::zip_hi(y0, y1)};   // columns 2h .. 2h + 2L
            const int64_t at = r * W + 2 * h;
            for (int e = 0; e < 2; ++e) {
                if (mk) o[e] = simd::loadn(mk + at + e * L) > zero ? o[e] : zero;
                simd::storen(out + at + e * L, o[e]);
            }
        }
    }
}

template <class Plane, class Mask>
inline void winograd_output(const float* M, int64_t Ms, int64_t H, int64_t W, int G, const Tiles& tl, int64_t k0,
                            float bias, bool relu, Plane&& plane, Mask&& mask) {
    if (simd::kLanes < 16 && G == 1) {
        if (tl.n[k0] < 0) return;
        const int64_t at = 2 * tl.i[k0] * W + 2 * tl.j[k0];
        const float* mk = mask(tl.n[k0]);
        return winograd_output_parts(M, Ms, H, W, tl.i[k0], bias, relu, plane(tl.n[k0]) + at, mk ? mk + at : nullptr);
    }
    v16 s[2][4];
    for (int k = 0; k < 4; ++k) {
        const v16 m0 = load16(M + k * Ms), m1 = load16(M + (4 + k) * Ms), m2 = load16(M + (8 + k) * Ms),
                  m3 = load16(M + (12 + k) * Ms);
        s[0][k] = m0 + m1 + m2, s[1][k] = m1 - m2 - m3;
    }
    v16 y[2][2];
    const v16 bv = splat(bias), zero = v16{};
    for (int r = 0; r < 2; ++r) {
        y[r][0] = s[r][0] + s[r][1] + s[r][2] + bv, y[r][1] = s[r][1] - s[r][2] - s[r][3] + bv;
        if (relu)
            for (int c = 0; c < 2; ++c) y[r][c] = y[r][c] < zero ? zero : y[r][c];
    }
    if (G >= 1) {   // the pairs (y0, y1) of each tile in lane order: G runs of 32/G columns of row 2i + r
        const int Tw = 16 / G;   // tiles per group (G = 1: the 16 tiles from column 2*j0)
        const v16i lo = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23}, hi = lo + 8;
        for (int r = 0; r < 2; ++r) {
            alignas(64) float row[32];
            *reinterpret_cast<v16*>(row) = __builtin_shuffle(y[r][0], y[r][1], lo);
            *reinterpret_cast<v16*>(row + 16) = __builtin_shuffle(y[r][0], y[r][1], hi);
            for (int g = 0; g < G; ++g) {
                const int64_t k = k0 + g * Tw, i = tl.i[k];
                if (tl.n[k] < 0 || 2 * i + r >= H) continue;
                const int64_t at = (2 * i + r) * W + 2 * tl.j[k];
                float* dst = plane(tl.n[k]) + at;
                if (const float* mk = mask(tl.n[k])) {   // 32/G floats, 16 at a time (8 for G = 4)
                    const float* src = row + 32 / G * g;
                    for (int e = 0; e < 32 / G; e += 16) {
                        const v16 m = load16_or_8(mk + at + e, G == 4), v = load16_or_8(src + e, G == 4);
                        const v16 o = m > zero ? v : zero;
                        if (G == 4) std::memcpy(dst + e, &o, 32);
                        else simd::store16(dst + e, o);
                    }
                } else if (G == 1) {
                    std::memcpy(dst, row, 128);   // constant sizes: vector stores, no call
                } else if (G == 2) {
                    std::memcpy(dst, row + 16 * g, 64);
                } else {
                    std::memcpy(dst, row + 8 * g, 32);
                }
            }
        }
        return;
    }
    for (int lane = 0; lane < 16; ++lane) {
        const int64_t k = k0 + lane, j = tl.j[k], i = tl.i[k];
        if (tl.n[k] < 0) continue;
        float* dst = plane(tl.n[k]);
        const float* mk = mask(tl.n[k]);
        for (int r = 0; r < 2 && 2 * i + r < H; ++r)
            for (int c = 0; c < 2 && 2 * j + c < W; ++c) {
                const int64_t at = (2 * i + r) * W + 2 * j + c;
                dst[at] = mk && !(mk[at] > 0.0f) ? 0.0f : y[r][c][lane];
            }
    }
}

// The tiles of a Winograd layer: N x Td x Th x Tw (Td = 1 in 2D) over (N, C, D, H, W)
// arrays; a tile table's n is the slab n*Td + l; 2D tables, images and planes are indexed
// n*D + z (the z-slices). NC: the tile components (16 in 2D, 64 in 3D).
struct WinoGeom {
    int64_t N, D, H, W, Td, Th, Tw, T, nv, Hp, Wp, Bs;
    int NC, G;
    Copy g;   // unless G = 1: the zero-padded copy of every z-slice, the tiles' reads in bounds
    WinoGeom(int64_t N_, int64_t D_, int64_t H_, int64_t W_) : N(N_), D(D_), H(H_), W(W_) {
        Td = D > 1 ? (D + 1) / 2 : 1, Th = (H + 1) / 2, Tw = (W + 1) / 2, T = N * Td * Th * Tw, nv = (T + 15) / 16;
        NC = D > 1 ? 64 : 16, G = winograd_groups(W);
        g.X[0] = D, g.X[1] = H, g.X[2] = W, g.S[0] = g.S[1] = g.S[2] = 1;
        g.len[0] = D, g.len[1] = 2 * Th + 2, g.len[2] = 2 * Tw + 2, g.pre = g.len[2] + 1;
        Hp = g.len[1], Wp = g.len[2], Bs = N * g.L();
    }
    // the padded copy of x (channels [C1, C) in x2), or null where G = 1 reads in place
    float* copy(const float* x, int64_t C, int64_t C1, const float* x2) const {
        if (G == 1) return nullptr;
        float* B = scratch(0, g.pre + C * Bs + 64);
        make_copy(x, N, C, g, B, Bs, 64, C1, x2);
        return B;
    }
    // the z-slice tables of a chunk's table: sl[a] is slice 2l + a + dz0
    void slices(const Tiles& tl, int64_t dz0, int count, Tiles* sl) const {
        for (int a = 0; a < count; ++a) sl[a].slice(tl, Td, D, a + dz0);
    }
};

// V[xi*Vxi] (16 floats) for the 16 tiles k0 .. of table tl, one channel: (B^T d B)[xi] in 2D;
// in 3D the 2D transforms of the 4 z-slices (tables sl[0..3]) into components a*16 + .., then
// B^T along z. plane(n'): the (H, W) slice n' (= n*D + z) of the channel; B: its padded copy.
template <class Plane>
inline void winograd_input_nd(const WinoGeom& q, const float* B, const Tiles& tl, const Tiles* sl, int64_t k0,
                              Plane&& plane, float* V, int64_t Vxi) {
    if (q.NC == 16) return winograd_input(B, q.Hp, q.Wp, q.H, q.W, q.G, tl, k0, plane, V, Vxi);
    for (int a = 0; a < 4; ++a) winograd_input(B, q.Hp, q.Wp, q.H, q.W, q.G, sl[a], k0, plane, V + a * 16 * Vxi, Vxi);
    for (int bc = 0; bc < 16; ++bc)
        for (int h = 0; h < 16; h += simd::kLanes) {   // native vectors (see simd::vn)
            simd::vn d[4];
            for (int a = 0; a < 4; ++a) d[a] = simd::loadn(V + (a * 16 + bc) * Vxi + h);
            winograd_in4(d[0], d[1], d[2], d[3]);
            for (int a = 0; a < 4; ++a) simd::storen(V + (a * 16 + bc) * Vxi + h, d[a]);
        }
}

// A^T along z of the 64 components of M (stride Ms): output slice 0 and 1 as 16 components
// each at O + (oz*16 + bc)*16, for winograd_output (Ms = 16).
inline void winograd_out_z(const float* M, int64_t Ms, float* O) {
    using simd::loadn;
    for (int bc = 0; bc < 16; ++bc)
        for (int h = 0; h < 16; h += simd::kLanes) {   // native vectors (see simd::vn)
            const simd::vn m0 = loadn(M + bc * Ms + h), m1 = loadn(M + (16 + bc) * Ms + h),
                           m2 = loadn(M + (32 + bc) * Ms + h), m3 = loadn(M + (48 + bc) * Ms + h);
            simd::storen(O + bc * 16 + h, m0 + m1 + m2), simd::storen(O + (16 + bc) * 16 + h, m1 - m2 - m3);
        }
}

// out(n, c) = bias[c] + sum over ci, 3x3(x3) taps of weight(c, ci, kz, ky, kx) * x[n][ci][z+kz-1][y+ky-1][x+kx-1]
// (zero outside), ReLU if relu. x: channels [0, C1) of (N, Ci, D, H, W), x2 the rest (D = 1: 2D);
// plane(n', c): the (H, W) slice n' = n*D + z of output channel c; mask(n', c) likewise or null.
template <class Weight, class Plane, class Mask>
inline void winograd_conv(int64_t N, int64_t Ci, int64_t Co, int64_t D, int64_t H, int64_t W, const float* x,
                          int64_t C1, const float* x2, Weight&& weight, const float* bias, bool relu, Plane&& plane,
                          Mask&& mask) {
    const WinoGeom q(N, D, H, W);
    const int NC = q.NC;
    const float* B = q.copy(x, Ci, C1, x2);
    C1 = std::min(C1, Ci);
    const int64_t nblk = (Co + kCB - 1) / kCB, S = H * W;
    float* U = scratch(1, nblk * NC * Ci * kCB);
    winograd_weights(Co, Ci, NC, U, weight);
    // vectors of 16 tiles per chunk: V (NC x Ci x 16*CT floats) about 384 KiB, in L2
    const int64_t CT = std::max<int64_t>(NC == 16 ? 4 : 2, 384 * 16 / NC / std::max<int64_t>(Ci, 1));
    const int64_t nchunk = (q.nv + CT - 1) / CT, Vc = 16 * CT, Vxi = spaced(Ci * Vc);   // V[xi][ci][tile of the chunk]
    const int TV = NC == 16 ? 4 : 2;   // vectors per GEMM block: M (NC x kCB x 16*TV) about 24-48 KiB
    auto in_plane = [&](int64_t c) {
        return [&, c](int64_t n) { return plane_of(x, x2, C1, Ci, n / D, c, D * S) + n % D * S; };
    };
#pragma omp parallel for schedule(dynamic)
    for (int64_t ch = 0; ch < nchunk; ++ch) {
        const int64_t v0 = ch * CT, nvc = std::min(CT, q.nv - v0);
        float* V = worker_scratch(0, NC * Vxi);
        float* M = worker_scratch(1, NC * kCB * 64 + 512);   // M[xi][j][64 tiles], then the z-reduced outputs
        static thread_local Tiles tl, sl[4];
        tl.fill(v0 * 16, nvc * 16, q.T, q.Th, q.Tw);
        if (NC == 64) q.slices(tl, -1, 4, sl);
        for (int64_t c = 0; c < Ci; ++c)
            for (int64_t v = 0; v < nvc; ++v)
                winograd_input_nd(q, B ? B + c * q.Bs : nullptr, tl, sl, 16 * v, in_plane(c), V + c * Vc + 16 * v, Vxi);
        if (NC == 64) q.slices(tl, 0, 2, sl);   // the two output slices
        for (int64_t blk = 0; blk < nblk; ++blk) {
            int64_t c0;
            int nc;
            channel_block(Co, kCB, blk, c0, nc);
            const float* u = U + blk * NC * Ci * kCB;
            for (int64_t vg = 0; vg < nvc; vg += TV) {
                const int tv = (int)std::min<int64_t>(TV, nvc - vg);
                for (int xi = 0; xi < NC; ++xi)
                    panel_gemm(nc, tv, V + xi * Vxi + 16 * vg, Vc, Ci, u + xi * Ci * kCB, M + xi * kCB * 64);
                for (int j = 0; j < nc; ++j) {
                    const float b = bias ? bias[c0 + j] : 0.0f;
                    auto out = [&](int64_t n) { return plane(n, c0 + j); };
                    auto msk = [&](int64_t n) { return mask(n, c0 + j); };
                    for (int v = 0; v < tv; ++v) {
                        const int64_t k0 = 16 * (vg + v);
                        if (NC == 16) {
                            winograd_output(M + j * 64 + 16 * v, kCB * 64, H, W, q.G, tl, k0, b, relu, out, msk);
                            continue;
                        }
                        float* O = M + NC * kCB * 64;   // 2 x 16 components of 16 tiles
                        winograd_out_z(M + j * 64 + 16 * v, kCB * 64, O);
                        for (int oz = 0; oz < 2; ++oz)
                            winograd_output(O + oz * 256, 16, H, W, q.G, sl[oz], k0, b, relu, out, msk);
                    }
                }
            }
        }
    }
}

// A dY A^T (4x4) of the 2x2 gradient tiles (rows 2i, 2i+1, columns 2j, 2j+1 of plane(n),
// zero outside the image) of the 16 tiles k0 .. k0+15 of table tl: Z[xi*Zxi] (16 floats).
template <class Plane>
inline void winograd_grad_tile(int64_t H, int64_t W, int G, const Tiles& tl, int64_t k0, Plane&& plane, float* Z,
                               int64_t Zxi) {
    if (simd::kLanes < 16 && G == 1) {   // in native-vector parts, as winograd_input_parts
        using simd::vn;
        constexpr int L = simd::kLanes;
        const int64_t i = tl.i[k0];
        const float* src = tl.n[k0] >= 0 ? plane(tl.n[k0]) + 2 * i * W + 2 * tl.j[k0] : nullptr;
        for (int h = 0; h < 16; h += L) {
            vn e[2][2];
            for (int r = 0; r < 2; ++r) {
                const bool in = src && 2 * i + r < H;
                const vn q0 = in ? simd::loadn(src + r * W + 2 * h) : vn{};
                const vn q1 = in ? simd::loadn(src + r * W + 2 * h + L) : vn{};
                e[r][0] = simd::even_lanes(q0, q1), e[r][1] = simd::odd_lanes(q0, q1);
            }
            vn z[4][2];   // as below: A e along rows, then along columns
            for (int c = 0; c < 2; ++c)
                z[0][c] = e[0][c], z[1][c] = e[0][c] + e[1][c], z[2][c] = e[0][c] - e[1][c], z[3][c] = -e[1][c];
            for (int a = 0; a < 4; ++a) {
                simd::storen(Z + (a * 4) * Zxi + h, z[a][0]);
                simd::storen(Z + (a * 4 + 1) * Zxi + h, z[a][0] + z[a][1]);
                simd::storen(Z + (a * 4 + 2) * Zxi + h, z[a][0] - z[a][1]);
                simd::storen(Z + (a * 4 + 3) * Zxi + h, -z[a][1]);
            }
        }
        return;
    }
    v16 e[2][2];
    if (G >= 1) {   // group g (tile row (n, i), G = 1: from column 2*j0): row 2i + r, 32/G columns
        const int Tw = 16 / G;
        for (int r = 0; r < 2; ++r) {
            v16 L[4];
            for (int g = 0; g < std::max(G, 2); ++g) {
                const int64_t k = k0 + (G == 1 ? 0 : g * Tw), i = tl.i[k];
                L[g] = tl.n[k] >= 0 && 2 * i + r < H
                           ? load16_or_8(plane(tl.n[k]) + (2 * i + r) * W + 2 * tl.j[k] + (G == 1 ? 16 * g : 0), G == 4)
                           : v16{};
            }
            group_lanes(G, L, e[r][0], e[r][1]);
        }
    } else {
        for (int lane = 0; lane < 16; ++lane) {
            const int64_t k = k0 + lane, j = tl.j[k], i = tl.i[k];
            const float* src = tl.n[k] >= 0 ? plane(tl.n[k]) : nullptr;
            for (int r = 0; r < 2; ++r)
                for (int c = 0; c < 2; ++c)
                    e[r][c][lane] = src && 2 * i + r < H && 2 * j + c < W ? src[(2 * i + r) * W + 2 * j + c] : 0.0f;
        }
    }
    v16 z[4][2];   // A e along rows: (e0, e0 + e1, e0 - e1, -e1)
    for (int c = 0; c < 2; ++c)
        z[0][c] = e[0][c], z[1][c] = e[0][c] + e[1][c], z[2][c] = e[0][c] - e[1][c], z[3][c] = -e[1][c];
    for (int a = 0; a < 4; ++a) {
        *reinterpret_cast<v16*>(Z + (a * 4) * Zxi) = z[a][0];
        *reinterpret_cast<v16*>(Z + (a * 4 + 1) * Zxi) = z[a][0] + z[a][1];
        *reinterpret_cast<v16*>(Z + (a * 4 + 2) * Zxi) = z[a][0] - z[a][1];
        *reinterpret_cast<v16*>(Z + (a * 4 + 3) * Zxi) = -z[a][1];
    }
}

// Weight gradient of the layers winograd_conv computes: dw = G^T [sum over tiles of
// (A dY A^T) ⊙ (B^T d B)] G per (co, ci). The tiles are cut into slices fixed by the shape
// (deterministic): per slice one thread (or both, for few slices) transforms x and dy (V, Z:
// in L2) and takes the 16 products over the slice's tiles per (co, ci) (dots_lanes, or
// dots_as_gemm for short slices); the slices' sums are added in slice order. db (null or
// Co floats): the bias gradient too, from component 5 of the dy tiles (the 2x2 tile sum).
inline void winograd_conv_wgrad(int64_t N, int64_t Ci, int64_t Co, int64_t H, int64_t W, const float* dy,
                                const float* x, int64_t C1, const float* x2, float* dw, float* db) {
    const WinoGeom q(N, 1, H, W);
    constexpr int NC = 16;
    const int64_t nv = q.nv, S = H * W;
    const float* B = q.copy(x, Ci, C1, x2);
    C1 = std::min(C1, Ci);
    // vectors per slice: V and Z (16 x (Ci + Co) x 16*SV floats) about 1 MiB, at least 32
    const int64_t SV = std::min(nv, std::max<int64_t>(32, 1024 / (Ci + Co)));
    const int64_t nsl = (nv + SV - 1) / SV, size = NC * Co * Ci, Vc = 16 * SV;
    // component strides of V (x: Ci rows of Vc) and Z (dy: Co rows): the 16 components of a
    // tile are stored at once
    const int64_t XS = spaced(Ci * Vc), ZS = spaced(Co * Vc);
    float* part = scratch(2, nsl * size + (db ? nsl * Co : 0));
    float* dbpart = part + nsl * size;   // (nsl, Co) with db
    // slice s: transform channel c (x's for c < Ci, then dy's) into V[xi][ci][16*SV] / Z[xi][co][16*SV]
    auto transform = [&](int64_t s, int64_t c, const Tiles& tl, float* V) {
        const int64_t nvs = std::min(SV, nv - s * SV);
        if (c < Ci)
            for (int64_t v = 0; v < nvs; ++v)
                winograd_input(B ? B + c * q.Bs : nullptr, q.Hp, q.Wp, H, W, q.G, tl, 16 * v,
                               [&](int64_t n) { return plane_of(x, x2, C1, Ci, n, c, S); }, V + c * Vc + 16 * v, XS);
        else {
            float* Z = V + NC * XS + (c - Ci) * Vc;
            for (int64_t v = 0; v < nvs; ++v)
                winograd_grad_tile(H, W, q.G, tl, 16 * v, [&](int64_t n) { return dy + (n * Co + c - Ci) * S; },
                                   Z + 16 * v, ZS);
            if (db)   // the bias gradient's slice sum: component 5 (1, 1) of A dY A^T is the tile's sum
                dbpart[s * Co + c - Ci] = sum16s(Z + 5 * ZS, 16 * nvs);
        }
    };
    // slice s, component xi: part[s][xi] (Co x Ci), the products of Z[xi] (Co x q) and V[xi]
    // (Ci x q) over the slice's tiles: dots_lanes, or for short slices (< 512 tiles: the 8 x 8
    // layers) of >= 64 channels dots_as_gemm, without the per-pair lane sums (256 -> 256 @8,
    // 8 images: 2.7 -> 2.3 ms; at 512-tile slices the lane sums are faster). Vt: its scratch.
    const bool as_gemm = SV < 32 && std::min(Ci, Co) >= 64;
    auto products = [&](int64_t s, int xi, const float* V, float* Vt) {
        const int64_t nq = std::min(SV, nv - s * SV) * 16;
        const float* X = V + xi * XS;
        const float* Zx = V + NC * XS + xi * ZS;
        float* P = part + s * size + xi * Co * Ci;
        if (!as_gemm) return dots_lanes(Zx, Co, Vc, X, Ci, Vc, nq, P, Ci);
        dots_as_gemm(Zx, Co, Vc, X, Ci, Vc, nq, P, Ci, Vt);
    };
    const int64_t gemm_floats = as_gemm ? dots_gemm_floats(Co, Ci, SV * 16) : 16;
    if (nsl >= 2 * host_threads()) {   // a slice per thread
#pragma omp parallel for schedule(dynamic)
        for (int64_t s = 0; s < nsl; ++s) {
            float* V = worker_scratch(0, NC * (XS + ZS));
            float* Vt = worker_scratch(1, gemm_floats);
            static thread_local Tiles tl;
            tl.fill(s * Vc, std::min(SV, nv - s * SV) * 16, q.T, q.Th, q.Tw);
            for (int64_t c = 0; c < Ci + Co; ++c) transform(s, c, tl, V);
            for (int xi = 0; xi < NC; ++xi) products(s, xi, V, Vt);
        }
    } else {   // few slices: the threads share each one
        float* V = scratch(3, NC * (XS + ZS));
        Tiles tl;
        for (int64_t s = 0; s < nsl; ++s) {
            tl.fill(s * Vc, std::min(SV, nv - s * SV) * 16, q.T, q.Th, q.Tw);
#pragma omp parallel for schedule(dynamic)
            for (int64_t c = 0; c < Ci + Co; ++c) transform(s, c, tl, V);
#pragma omp parallel for schedule(dynamic)
            for (int xi = 0; xi < NC; ++xi) {
                float* Vt = worker_scratch(1, gemm_floats);
                products(s, xi, V, Vt);
            }
        }
    }
    if (db) sum_slices(dbpart, nsl, Co, db);
    // sum the slices in order, then G^T along y and x: 4 x 4 -> 3 x 3, 16 (co, ci) pairs per
    // vector (the pairs' 9 taps are contiguous in dw: written through a 16 x 9 block)
    const int64_t pairs = Co * Ci;
#pragma omp parallel for schedule(static)
    for (int64_t i0 = 0; i0 < pairs; i0 += 16) {
        const int64_t n = std::min<int64_t>(16, pairs - i0);
        v16 m[4][4];
        for (int xi = 0; xi < NC; ++xi) {
            v16 acc = simd::load_part(part + xi * pairs + i0, n);
            for (int64_t s = 1; s < nsl; ++s) acc += simd::load_part(part + s * size + xi * pairs + i0, n);
            m[xi / 4][xi % 4] = acc;
        }
        // G^T m G with G's rows (1, 0, 0), (1/2)(1, 1, 1), (1/2)(1, -1, 1), (0, 0, 1)
        v16 t[4][3];
        const v16 h = splat(0.5f);
        for (int b = 0; b < 4; ++b)
            t[b][0] = m[b][0] + h * (m[b][1] + m[b][2]), t[b][1] = h * (m[b][1] - m[b][2]),
            t[b][2] = m[b][3] + h * (m[b][1] + m[b][2]);
        v16 o[3][3];
        for (int l = 0; l < 3; ++l)
            o[0][l] = t[0][l] + h * (t[1][l] + t[2][l]), o[1][l] = h * (t[1][l] - t[2][l]),
            o[2][l] = t[3][l] + h * (t[1][l] + t[2][l]);
        alignas(64) float blk[16 * 9];
        for (int k = 0; k < 3; ++k)
            for (int l = 0; l < 3; ++l)
                for (int e = 0; e < 16; ++e) blk[e * 9 + k * 3 + l] = o[k][l][e];
        std::memcpy(dw + i0 * 9, blk, 4 * 9 * n);
    }
}

// ---- patch convolutions: kernel = stride, no padding (1x1 heads, 2x2 stride-2 up/down
// sampling, as conv or as the data gradient that is a transposed conv). Every input voxel
// meets one tap, so each pass is a plain GEMM over K = Ci*T (T taps) without duplication.
// Work unit: a strip of R output rows (z, y) of one image, q = its R*Wo voxels. Per strip
// the input is split by tap into X'[k = ci*T + t][q] (columns deinterleaved by the stride
// in x), dy copied to DY'[co][q] (both zero to a multiple of 16, in L2); then
//   forward          y[co][q]       = sum over k of w[co][k] X'[k][q]   (6 x 64 register blocks)
//   data gradient    dx at tap t of q = sum over co of w[co][k] DY'[co][q], rows k = (ci, t)
//   weight gradient  dw[co][k]      = sum over q of DY'[co][q] X'[k][q] (dot_block, per strip)
// The weight gradient's strips are fixed by the shape and summed in strip order.
inline bool patch_fits(CUNET_CONV_DIMS) {
    (void)N, (void)Ci, (void)Co;
    const int64_t X[3] = {D, H, W}, O[3] = {Do, Ho, Wo}, K[3] = {KD, KH, KW}, S[3] = {SD, SH, SW};
    const int64_t P[3] = {PD, PH, PW}, Dl[3] = {DD, DH, DW};
    for (int a = 0; a < 3; ++a)
        if (K[a] != S[a] || P[a] != 0 || (K[a] > 1 && Dl[a] != 1) || X[a] != O[a] * S[a]) return false;
    return KW <= 2;
}

struct Patch {
    int64_t T, K, rows, R, nstrip, nq16;   // taps, Ci*T, output rows per image, rows per strip
    Patch(CUNET_CONV_DIMS, int64_t per_q) {
        (void)Co, (void)D, (void)H, (void)W, (void)SD, (void)SH, (void)SW, (void)PD, (void)PH, (void)PW, (void)DD,
            (void)DH, (void)DW;
        T = KD * KH * KW, K = Ci * T, rows = Do * Ho;
        // strip: about 1 MiB of X' and DY' (per_q floats per voxel), at least 64 voxels
        const int64_t want = std::max<int64_t>(64, (1 << 18) / std::max<int64_t>(per_q, 1));
        R = std::min(rows, std::max<int64_t>(1, want / Wo));
        nstrip = N * ((rows + R - 1) / R), nq16 = (R * Wo + 15) / 16 * 16;
    }
    // 1x1: x's rows read in place when every strip is whole vectors (no read past an array)
    bool in_place(int64_t Ci, int64_t C1, int64_t Wo) const {
        return T == 1 && C1 >= Ci && R * Wo % 16 == 0 && rows * Wo % 16 == 0;
    }
    // strip s: image n, first output row r0, voxels nq
    void strip(int64_t s, int64_t& n, int64_t& r0, int64_t& nq, int64_t Wo) const {
        const int64_t per = (rows + R - 1) / R;
        n = s / per, r0 = s % per * R, nq = std::min(R, rows - r0) * Wo;
    }
};

// X'[(ci*T + t)*nq16 + q] for the strip (n, output rows r0 .., nq voxels); x2: channels [C1, Ci).
inline void patch_split(CUNET_CONV_DIMS, const Patch& pt, const float* x, const float* x2, int64_t C1, int64_t n,
                        int64_t r0, int64_t nq, float* Xs) {
    (void)N, (void)Co, (void)SD, (void)SH, (void)SW, (void)PD, (void)PH, (void)PW, (void)DD, (void)DH, (void)DW, (void)Do;
    const v16i ev = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    for (int64_t ci = 0; ci < Ci; ++ci) {
        const float* plane = plane_of(x, x2, C1, Ci, n, ci, D * H * W);
        for (int64_t lr = 0; lr * Wo < nq; ++lr) {
            const int64_t oz = (r0 + lr) / Ho, oy = (r0 + lr) % Ho;
            for (int64_t az = 0; az < KD; ++az)
                for (int64_t ay = 0; ay < KH; ++ay) {
                    const float* src = plane + ((oz * KD + az) * H + oy * KH + ay) * W;
                    float* dst = Xs + (ci * pt.T + (az * KH + ay) * KW) * pt.nq16 + lr * Wo;
                    if (KW == 1) {
                        std::memcpy(dst, src, 4 * Wo);
                        continue;
                    }
                    int64_t o = 0;
                    for (; o + 16 <= Wo; o += 16) {
                        const v16 lo = load16(src + 2 * o), hi = load16(src + 2 * o + 16);
                        const v16 e = __builtin_shuffle(lo, hi, ev), d = __builtin_shuffle(lo, hi, ev + 1);
                        std::memcpy(dst + o, &e, 64), std::memcpy(dst + pt.nq16 + o, &d, 64);
                    }
                    for (; o < Wo; ++o) dst[o] = src[2 * o], dst[pt.nq16 + o] = src[2 * o + 1];
                }
        }
        for (int64_t t = 0; t < pt.T; ++t) std::fill(Xs + (ci * pt.T + t) * pt.nq16 + nq, Xs + (ci * pt.T + t + 1) * pt.nq16, 0.0f);
    }
}

// The strip's X' (Xs, row stride Xst): x's rows in place for a 1x1 layer where the strips are
// whole vectors, else patch_split into the worker buffer 0.
inline void patch_input(CUNET_CONV_DIMS, const Patch& pt, const float* x, const float* x2, int64_t C1, int64_t n,
                        int64_t r0, int64_t nq, const float*& Xs, int64_t& Xst) {
    if (pt.in_place(Ci, C1, Wo)) {
        Xs = x + n * Ci * Do * Ho * Wo + r0 * Wo, Xst = Do * Ho * Wo;
        return;
    }
    float* buf = worker_scratch(0, pt.K * pt.nq16);
    patch_split(CUNET_CONV_ARGS, pt, x, x2, C1, n, r0, nq, buf);
    Xs = buf, Xst = pt.nq16;
}

// DY'[co*nq16 + q]: the strip's voxels of dy (N, Co, Do*Ho*Wo), zero past nq.
inline void patch_dy(int64_t Co, int64_t So, const Patch& pt, const float* dy, int64_t n, int64_t r0, int64_t Wo,
                     int64_t nq, float* Ds) {
    for (int64_t co = 0; co < Co; ++co) {
        std::memcpy(Ds + co * pt.nq16, dy + (n * Co + co) * So + r0 * Wo, 4 * nq);
        std::fill(Ds + co * pt.nq16 + nq, Ds + (co + 1) * pt.nq16, 0.0f);
    }
}

inline void patch_forward(CUNET_CONV_DIMS, const float* x, const float* x2, int64_t C1, const float* w, const float* b,
                          float* y, bool relu) {
    const Patch pt(CUNET_CONV_ARGS, Ci * KD * KH * KW);
    const int64_t So = Do * Ho * Wo, nblk = (Co + kCB - 1) / kCB;
    float* wp = scratch(1, nblk * pt.K * kCB);
    pack_weights(Co, pt.K, 1, wp, [&](int64_t co, int64_t k, int) { return w[co * pt.K + k]; });
#pragma omp parallel for schedule(dynamic)
    for (int64_t s = 0; s < pt.nstrip; ++s) {
        int64_t n, r0, nq;
        pt.strip(s, n, r0, nq, Wo);
        const float* Xs;
        int64_t Xst;   // X' row stride
        patch_input(CUNET_CONV_ARGS, pt, x, x2, C1, n, r0, nq, Xs, Xst);
        alignas(64) float tile[kCB * 64];
        for (int64_t blk = 0; blk < nblk; ++blk) {
            int64_t c0;
            int nc;
            channel_block(Co, kCB, blk, c0, nc);
            for (int64_t q0 = 0; q0 < nq; q0 += 64) {
                const int tv = (int)std::min<int64_t>(4, (nq - q0 + 15) / 16);
                panel_gemm(nc, tv, Xs + q0, Xst, pt.K, wp + blk * pt.K * kCB, tile);
                const int64_t m = std::min<int64_t>(64, nq - q0);
                for (int j = 0; j < nc; ++j) {
                    float* dst = y + (n * Co + c0 + j) * So + r0 * Wo + q0;
                    const float bias = b ? b[c0 + j] : 0.0f;
                    for (int64_t u = 0; u < m; ++u) {
                        const float v = tile[j * 64 + u] + bias;
                        dst[u] = relu && v < 0.0f ? 0.0f : v;
                    }
                }
            }
        }
    }
}

// The data gradient: rows k = ci*T + t of A = w^T, in blocks of exactly kCB rows (T even or
// 1: the x-pairs (ax = 0, 1) of a row never straddle blocks), each written interleaved.
inline void patch_data(CUNET_CONV_DIMS, const float* dy, const float* w, const float* b, float* dx, int64_t C1,
                       float* dx2, const float* mask) {
    const Patch pt(CUNET_CONV_ARGS, Co);
    const int64_t So = Do * Ho * Wo, nblk = (pt.K + kCB - 1) / kCB;
    float* wp = scratch(1, nblk * Co * kCB);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nblk * Co; ++i) {
        const int64_t blk = i / Co, co = i % Co;
        for (int j = 0; j < kCB; ++j) {
            const int64_t k = blk * kCB + j;
            wp[i * kCB + j] = k < pt.K ? w[co * pt.K + k] : 0.0f;
        }
    }
#pragma omp parallel for schedule(dynamic)
    for (int64_t s = 0; s < pt.nstrip; ++s) {
        int64_t n, r0, nq;
        pt.strip(s, n, r0, nq, Wo);
        float* Ds = worker_scratch(1, Co * pt.nq16);
        patch_dy(Co, So, pt, dy, n, r0, Wo, nq, Ds);
        alignas(64) float tile[kCB * 64];
        for (int64_t blk = 0; blk < nblk; ++blk) {
            const int nc = (int)std::min<int64_t>(kCB, pt.K - blk * kCB);
            for (int64_t q0 = 0; q0 < nq; q0 += 64) {
                const int tv = (int)std::min<int64_t>(4, (nq - q0 + 15) / 16);
                panel_gemm(nc, tv, Ds + q0, pt.nq16, Co, wp + blk * Co * kCB, tile);
                const int64_t m = std::min<int64_t>(64, nq - q0);
                for (int j = 0; j < nc; j += (int)KW) {
                    const int64_t k = blk * kCB + j, ci = k / pt.T, t = k % pt.T, az = t / (KH * KW), ay = t / KW % KH;
                    float* plane = plane_of(dx, dx2, C1, Ci, n, ci, D * H * W);
                    const float bias = b ? b[ci] : 0.0f;
                    for (int64_t u = 0; u < m;) {   // voxels q0+u .. of one output row
                        const int64_t q = q0 + u, lr = q / Wo, ox = q % Wo, len = std::min(m - u, Wo - ox);
                        const int64_t oz = (r0 + lr) / Ho, oy = (r0 + lr) % Ho;
                        float* dst = plane + ((oz * KD + az) * H + oy * KH + ay) * W + ox * KW;
                        const float* src = tile + j * 64 + u;
                        if (KW == 1)
                            for (int64_t e = 0; e < len; ++e) dst[e] = src[e] + bias;
                        else
                            for (int64_t e = 0; e < len; ++e) dst[2 * e] = src[e] + bias, dst[2 * e + 1] = src[64 + e] + bias;
                        if (mask)   // C1 = Ci: dst lies in dx
                            for (int64_t e = 0; e < len * KW; ++e) dst[e] = mask[dst - dx + e] > 0.0f ? dst[e] : 0.0f;
                        u += len;
                    }
                }
            }
        }
    }
}

inline void patch_weight(CUNET_CONV_DIMS, const float* dy, const float* x, const float* x2, int64_t C1, float* dw,
                         float* db) {
    const Patch pt(CUNET_CONV_ARGS, Ci * KD * KH * KW + Co);
    const int64_t So = Do * Ho * Wo, size = Co * pt.K;
    // short strips of many channels: the products as a GEMM (dots_as_gemm). 2x2 stride 2,
    // 8 images, 128 -> 256 channels to 8 x 8 (64 voxels per strip): 1.86 -> 0.89 ms; at 256
    // voxels (64 -> 128 to 16 x 16) the lane sums were still 5% faster
    const bool as_gemm = pt.nq16 < 256 && std::min(Co, pt.K) >= 64;
    const int64_t gemm_floats = as_gemm ? dots_gemm_floats(Co, pt.K, pt.nq16) : 16;
    float* part = scratch(2, pt.nstrip * size + (db ? pt.nstrip * Co : 0));
    float* dbpart = part + pt.nstrip * size;   // (nstrip, Co) with db
#pragma omp parallel for schedule(dynamic)
    for (int64_t s = 0; s < pt.nstrip; ++s) {
        int64_t n, r0, nq;
        pt.strip(s, n, r0, nq, Wo);
        float* Ds = worker_scratch(1, Co * pt.nq16);
        const float* Xs;
        int64_t Xst;   // X' row stride
        patch_input(CUNET_CONV_ARGS, pt, x, x2, C1, n, r0, nq, Xs, Xst);
        patch_dy(Co, So, pt, dy, n, r0, Wo, nq, Ds);
        const int64_t nq16 = (nq + 15) / 16 * 16;   // this strip's (the last may be shorter)
        if (db)   // the strip's dy sums (DY' is zero past nq)
            for (int64_t co = 0; co < Co; ++co) dbpart[s * Co + co] = sum16s(Ds + co * pt.nq16, nq16);
        float* P = part + s * size;
        if (as_gemm) dots_as_gemm(Ds, Co, pt.nq16, Xs, pt.K, Xst, nq16, P, pt.K, worker_scratch(2, gemm_floats));
        else dots_lanes(Ds, Co, pt.nq16, Xs, pt.K, Xst, nq16, P, pt.K);
    }
    sum_slices(part, pt.nstrip, size, dw);
    if (db) sum_slices(dbpart, pt.nstrip, Co, db);
}

// The buffer of x read by forward and weight gradient, and each tap's offset into it:
// along an axis, output o and tap k read input o*S - P + k*Dil = (o + sh)*S + ph, i.e.
// copy index o + sh in phase ph.
inline Copy read_copy(CUNET_CONV_DIMS, std::vector<int64_t>& off) {
    const int64_t X[3] = {D, H, W}, O[3] = {Do, Ho, Wo}, K[3] = {KD, KH, KW}, S[3] = {SD, SH, SW};
    const int64_t P[3] = {PD, PH, PW}, Dl[3] = {DD, DH, DW};
    (void)Ci, (void)Co;
    Copy g;
    int64_t lo[3];
    for (int a = 0; a < 3; ++a) {
        int64_t mn = floor_div(-P[a], S[a]), mx = mn;
        for (int64_t k = 1; k < K[a]; ++k)
            mn = std::min(mn, floor_div(k * Dl[a] - P[a], S[a])), mx = std::max(mx, floor_div(k * Dl[a] - P[a], S[a]));
        copy_axis(g, a, X[a], S[a], O[a], mn, mx);
        lo[a] = std::max<int64_t>(0, -mn);
    }
    g.pre = (lo[0] * g.len[1] + lo[1]) * g.len[2] + lo[2];
    off.clear();
    for (int64_t kz = 0; kz < KD; ++kz)
        for (int64_t ky = 0; ky < KH; ++ky)
            for (int64_t kx = 0; kx < KW; ++kx) {
                const int64_t k[3] = {kz, ky, kx};
                int64_t sh[3], ph[3];
                for (int a = 0; a < 3; ++a) {
                    const int64_t v = k[a] * Dl[a] - P[a];
                    sh[a] = floor_div(v, S[a]), ph[a] = v - sh[a] * S[a];
                }
                const int64_t phase = (ph[0] * S[1] + ph[1]) * S[2] + ph[2];
                off.push_back(phase * N * g.L() + copy_offset(g, sh[0], sh[1], sh[2]));
            }
    return g;
}

// The data gradient's copy of dy: one phase, read at copy index i' + e by every (output
// phase, tap) pair with r + P - k*Dil = e*S.
inline Copy data_copy(CUNET_CONV_DIMS) {
    const int64_t X[3] = {D, H, W}, O[3] = {Do, Ho, Wo}, K[3] = {KD, KH, KW}, S[3] = {SD, SH, SW};
    const int64_t P[3] = {PD, PH, PW}, Dl[3] = {DD, DH, DW};
    (void)N, (void)Ci, (void)Co;
    Copy g;
    int64_t lo[3];
    for (int a = 0; a < 3; ++a) {
        int64_t mn = INT64_MAX, mx = INT64_MIN;
        for (int64_t r = 0; r < S[a]; ++r)
            for (int64_t k = 0; k < K[a]; ++k) {
                const int64_t v = r + P[a] - k * Dl[a], e = floor_div(v, S[a]);
                if (e * S[a] == v) mn = std::min(mn, e), mx = std::max(mx, e);
            }
        copy_axis(g, a, O[a], 1, ceil_div(X[a], S[a]), mn, mx);
        lo[a] = std::max<int64_t>(0, -mn);
    }
    g.pre = (lo[0] * g.len[1] + lo[1]) * g.len[2] + lo[2];
    return g;
}

// Whether the CPU variants take this geometry. Winograd and patch layers always; the
// phase-split copy while its loops and buffers stay near the size of the arrays: the data
// gradient loops over the SD*SH*SW phases and the forward's copy holds them all, so a
// stride larger than kMaxPhaseStride, or a copy (or dy grid) over 4x the arrays it stands
// for plus 1 Mi floats (a huge stride, padding or dilation reads mostly zeros), goes to the
// portable kernels, which read x and dy directly at any geometry.
constexpr int64_t kMaxPhaseStride = 32;
inline bool variants_fit(CUNET_CONV_DIMS) {
    if (winograd_dims(CUNET_CONV_ARGS) || patch_fits(CUNET_CONV_ARGS)) return true;
    const int64_t S[3] = {SD, SH, SW};
    for (int a = 0; a < 3; ++a)
        if (S[a] > kMaxPhaseStride) return false;
    std::vector<int64_t> off;
    const Copy g = read_copy(CUNET_CONV_ARGS, off), gd = data_copy(CUNET_CONV_ARGS);
    const double in = (double)N * Ci * D * H * W, out = (double)N * Co * Do * Ho * Wo, lim = 1 << 20;
    return g.pre + (double)Ci * g.phases() * N * g.L() <= 4 * in + lim &&   // x copy (forward, weight gradient)
           (double)Co * N * g.L() <= 4 * out + lim &&                        // dy grid (weight gradient)
           gd.pre + (double)Co * N * gd.L() <= 4 * out + lim;                 // dy copy (data gradient)
}

// x2 / dx2 (conv_*_host): channels [C1, Ci) of the input in a second array (the in-place
// concat); C1 = Ci (x2 unused) without.
inline void conv_forward_host(CUNET_CONV_DIMS, const float* x, const float* w, const float* b, float* y, bool relu,
                              int64_t C1, const float* x2) {
    if (N * Co * Do * Ho * Wo == 0) return;
    const int64_t S = H * W;   // Winograd's planes: (H, W) slice n = image*D + z
    if (winograd_dims(CUNET_CONV_ARGS))
        return winograd_conv(
            N, Ci, Co, D, H, W, x, C1, x2,
            [&](int64_t co, int64_t ci, int kz, int ky, int kx) { return w[(((co * Ci + ci) * KD + kz) * 3 + ky) * 3 + kx]; },
            b, relu, [&](int64_t n, int64_t c) { return y + ((n / D) * Co + c) * D * S + n % D * S; },
            [](int64_t, int64_t) { return (const float*)nullptr; });
    if (patch_fits(CUNET_CONV_ARGS)) return patch_forward(CUNET_CONV_ARGS, x, x2, C1, w, b, y, relu);
    std::vector<int64_t> off;
    const Copy g = read_copy(CUNET_CONV_ARGS, off);
    const int nt = (int)off.size();
    const int64_t Bs = g.phases() * N * g.L(), slack = g.L() + kChunk + 16;
    float* B = scratch(0, g.pre + Ci * Bs + slack);
    make_copy(x, N, Ci, g, B, Bs, slack, C1, x2);
    float* wp = scratch(1, (Co + kCB - 1) / kCB * Ci * nt * kCB);
    pack_weights(Co, Ci, nt, wp, [&](int64_t co, int64_t ci, int t) { return w[(co * Ci + ci) * nt + t]; });
    const int64_t O[3] = {Do, Ho, Wo}, Q = N * g.L();
    flat_conv(B, Bs, Ci, wp, off.data(), nt, Co, Q, [&](int64_t c0, int nc, int64_t q0, int64_t keep, int64_t T, const float* tile) {
        for_runs(q0, q0 + keep, g.len, O, [&](int64_t i, int64_t n, int64_t z, int64_t yy, int64_t xx, int64_t m) {
            for (int j = 0; j < nc; ++j) {
                float* dst = y + (((n * Co + c0 + j) * Do + z) * Ho + yy) * Wo + xx;
                const float* src = tile + j * T + i;
                const float bias = b ? b[c0 + j] : 0.0f;
                if (relu)
                    for (int64_t u = 0; u < m; ++u) dst[u] = src[u] + bias < 0.0f ? 0.0f : src[u] + bias;
                else
                    for (int64_t u = 0; u < m; ++u) dst[u] = src[u] + bias;
            }
        });
    });
}

// dx[i] gathers dy[(i + P - k*Dil)/S] where the division is exact. Output phase r of an axis
// (i = i'*S + r) is reached by the taps with r + P - k*Dil = e*S, at dy index i' + e.
// mask (null, or x with C1 = Ci): dx is 0 where mask <= 0 (the ReLU whose output x was).
inline void conv_backward_data_host(CUNET_CONV_DIMS, const float* dy, const float* w, const float* b,
                                    float* dx, int64_t C1, float* dx2, const float* mask = nullptr) {
    if (N * Ci * D * H * W == 0) return;
    const int64_t Sp = H * W;   // Winograd's planes: (H, W) slice n = image*D + z
    if (winograd_dims(CUNET_CONV_ARGS))   // the 3x3(x3) conv of dy with the flipped, transposed filter
        return winograd_conv(
            N, Co, Ci, D, H, W, dy, Co, nullptr,
            [&](int64_t ci, int64_t co, int kz, int ky, int kx) {
                return w[(((co * Ci + ci) * KD + KD - 1 - kz) * 3 + 2 - ky) * 3 + 2 - kx];
            },
            b, false, [&](int64_t n, int64_t c) { return plane_of(dx, dx2, C1, Ci, n / D, c, D * Sp) + n % D * Sp; },
            [&](int64_t n, int64_t c) { return mask ? mask + ((n / D) * Ci + c) * D * Sp + n % D * Sp : nullptr; });
    if (patch_fits(CUNET_CONV_ARGS)) return patch_data(CUNET_CONV_ARGS, dy, w, b, dx, C1, dx2, mask);
    const int64_t X[3] = {D, H, W}, K[3] = {KD, KH, KW}, S[3] = {SD, SH, SW};
    const int64_t P[3] = {PD, PH, PW}, Dl[3] = {DD, DH, DW};
    const Copy g = data_copy(CUNET_CONV_ARGS);
    const int64_t Bs = N * g.L(), slack = g.L() + kChunk + 16, ncb = (Ci + kCB - 1) / kCB, nk = KD * KH * KW;
    float* B = scratch(0, g.pre + Co * Bs + slack);
    make_copy(dy, N, Co, g, B, Bs, slack);
    float* wp = scratch(1, ncb * Co * nk * kCB);
    std::vector<int64_t> off, tap;
    for (int64_t rz = 0; rz < SD; ++rz)
        for (int64_t ry = 0; ry < SH; ++ry)
            for (int64_t rx = 0; rx < SW; ++rx) {
                const int64_t r[3] = {rz, ry, rx};
                int64_t Or[3];   // outputs of this phase along each axis
                for (int a = 0; a < 3; ++a) Or[a] = ceil_div(X[a] - r[a], S[a]);
                if (Or[0] * Or[1] * Or[2] == 0) continue;
                off.clear(), tap.clear();
                for (int64_t kz = 0; kz < KD; ++kz)
                    for (int64_t ky = 0; ky < KH; ++ky)
                        for (int64_t kx = 0; kx < KW; ++kx) {
                            const int64_t k[3] = {kz, ky, kx};
                            int64_t e[3];
                            bool hit = true;
                            for (int a = 0; a < 3; ++a) {
                                const int64_t v = r[a] + P[a] - k[a] * Dl[a];
                                e[a] = floor_div(v, S[a]);
                                hit = hit && e[a] * S[a] == v;
                            }
                            if (!hit) continue;
                            tap.push_back((kz * KH + ky) * KW + kx);
                            off.push_back(copy_offset(g, e[0], e[1], e[2]));
                        }
                const int nt = (int)tap.size();
                pack_weights(Ci, Co, nt, wp, [&](int64_t ci, int64_t co, int t) { return w[(co * Ci + ci) * nk + tap[t]]; });
                const int64_t Q = N * g.L();
                flat_conv(B, Bs, Co, wp, off.data(), nt, Ci, Q, [&](int64_t c0, int nc, int64_t q0, int64_t keep, int64_t T, const float* tile) {
                    for_runs(q0, q0 + keep, g.len, Or,
                             [&](int64_t i, int64_t n, int64_t z, int64_t yy, int64_t xx, int64_t m) {
                        for (int j = 0; j < nc; ++j) {
                            float* dst = plane_of(dx, dx2, C1, Ci, n, c0 + j, D * H * W) +
                                         ((z * SD + rz) * H + yy * SH + ry) * W + xx * SW + rx;
                            const float* src = tile + j * T + i;
                            const float bias = b ? b[c0 + j] : 0.0f;
                            const float* mk = mask ? mask + (dst - dx) : nullptr;   // C1 = Ci: dst lies in dx
                            for (int64_t u = 0; u < m; ++u)
                                dst[u * SW] = mk && !(mk[u * SW] > 0.0f) ? 0.0f : src[u] + bias;
                        }
                    });
                });
            }
}

// db (null, or Co floats): the bias gradient (dy summed over N and space) where the path
// reads dy in tiles or strips anyway (Winograd, patch): true then, else false (db untouched).
inline bool conv_backward_weight_host(CUNET_CONV_DIMS, const float* dy, const float* x, float* dw,
                                      int64_t C1, const float* x2, float* db = nullptr) {
    const int64_t nk = KD * KH * KW;
    if (Co * Ci * nk == 0) return false;
    if (N * Do * Ho * Wo == 0) return std::fill(dw, dw + Co * Ci * nk, 0.0f), false;
    // 2D only: in 3D the 64 components' transforms and short dot products cost more than
    // the direct weight gradient (1.2-1.6x its time at 8-64 channels)
    if (winograd_dims(CUNET_CONV_ARGS) == 2 && N * ((H + 1) / 2) * ((W + 1) / 2) >= kWinogradWgradTiles)
        return winograd_conv_wgrad(N, Ci, Co, H, W, dy, x, C1, x2, dw, db), db != nullptr;
    if (patch_fits(CUNET_CONV_ARGS)) return patch_weight(CUNET_CONV_ARGS, dy, x, x2, C1, dw, db), db != nullptr;
    std::vector<int64_t> off;
    const Copy g = read_copy(CUNET_CONV_ARGS, off);
    const int64_t Bs = g.phases() * N * g.L(), Q = N * g.L(), Qr = (Q + 15) / 16 * 16, slack = g.L() + kChunk + 16;
    float* B = scratch(0, g.pre + Ci * Bs + slack);
    make_copy(x, N, Ci, g, B, Bs, slack, C1, x2);
    Copy ga = g;   // dy on the grid: zero at the dropped positions, rows padded to Qr with zeros
    for (int a = 0; a < 3; ++a) ga.S[a] = 1;
    ga.X[0] = Do, ga.X[1] = Ho, ga.X[2] = Wo, ga.pre = 0;
    float* A = scratch(1, Co * Qr);
    make_copy(dy, N, Co, ga, A, Qr, 0);
    dot_conv(A, Qr, Co, B, Bs, Ci, off.data(), (int)nk, Qr, dw);
    return false;
}

}  // namespace cunet::conv_host
#endif

// ---- launchers
// precision: 0 fp32, 1 tf32, 2 bf16 (the GEMM operands). GPU build: the tiled kernels.
// Host build: the CPU variants (or, with host_variants() off, the portable kernels), in
// fp32 whatever the precision; with emulate_blocks() on, the tiled kernels with their GPU
// block size through the block emulation, in the requested precision (how tests run them).
#if !defined(__CUDACC_RTC__)
namespace cunet {

// Blocks of a tiled launch: tiles of C; the GEMM sizes must fit the kernels' 32-bit indices.
inline unsigned conv_tiles(int64_t M, int64_t Nn, int64_t K) {
    const int64_t lim = int64_t(1) << 31;
    if (M >= lim || Nn >= lim || K >= lim)
        throw std::invalid_argument("cunet conv: GEMM sizes " + std::to_string(M) + " x " + std::to_string(Nn) + " x " +
                                    std::to_string(K) + " exceed the tiled kernels' 32-bit indices");
    return (unsigned)(((M + kTM - 1) / kTM) * ((Nn + kTN - 1) / kTN));
}

// The tiled kernels index in 32 bits (ConvGeom: sizes, GEMM rows and columns, input
// coordinates): every size and voxel count, the GEMM sizes of the three passes and the
// farthest coordinate a tap computes ((O-1)*S + (K-1)*Dil, X-1 + P) must stay below 2^31.
// pass: 0 forward, 1 data gradient, 2 weight gradient (one K slice; times the slices).
inline unsigned conv_tiled_grid(CUNET_CONV_DIMS, int pass) {
    const int64_t lim = int64_t(1) << 31, T = KD * KH * KW;
    const int64_t X[3] = {D, H, W}, O[3] = {Do, Ho, Wo}, K[3] = {KD, KH, KW}, S[3] = {SD, SH, SW};
    const int64_t P[3] = {PD, PH, PW}, Dl[3] = {DD, DH, DW};
    const int64_t sizes[] = {N, Ci, Co, D * H * W, Do * Ho * Wo, N * D * H * W, N * Do * Ho * Wo, Ci * T, Co * T};
    bool ok = std::all_of(std::begin(sizes), std::end(sizes), [&](int64_t v) { return v < lim; });
    for (int a = 0; a < 3; ++a)
        ok = ok && (O[a] - 1) * S[a] + (K[a] - 1) * Dl[a] < lim && X[a] - 1 + P[a] < lim;
    if (!ok)
        throw std::invalid_argument(
            "cunet conv: a size, GEMM size or input coordinate of this conv (N=" + std::to_string(N) + ", Ci=" +
            std::to_string(Ci) + ", Co=" + std::to_string(Co) + ", input " + std::to_string(D) + "x" +
            std::to_string(H) + "x" + std::to_string(W) + ", output " + std::to_string(Do) + "x" + std::to_string(Ho) +
            "x" + std::to_string(Wo) + ") reaches 2^31, past the tiled kernels' 32-bit indices; split the batch");
    if (pass == 0) return conv_tiles(N * Do * Ho * Wo, Co, Ci * T);
    if (pass == 1) return conv_tiles(N * D * H * W, Ci, Co * T);
    if (pass == 2) return conv_tiles(Co, Ci * T, N * Do * Ho * Wo);
    throw std::invalid_argument("cunet conv_tiled_grid: pass must be 0, 1 or 2, got " + std::to_string(pass));
}

// Weight-gradient K per slice (a multiple of kTK): slices until about 256 blocks run, each
// slice at least 8 K steps. cunet/_ops/conv.py asks for it through the binding.
inline int64_t conv_wgrad_slice(int64_t M, int64_t Nn, int64_t K) {
    const int64_t tiles = ((M + kTM - 1) / kTM) * ((Nn + kTN - 1) / kTN), steps = (K + kTK - 1) / kTK;
    const int64_t slices = std::max<int64_t>(1, std::min<int64_t>((256 + tiles - 1) / tiles, steps / 8));
    return std::max<int64_t>(1, (steps + slices - 1) / slices) * kTK;
}

inline void conv_check_precision(int precision) {
    if (precision < 0 || precision > 2)
        throw std::invalid_argument("cunet conv: precision code must be 0 (fp32), 1 (tf32) or 2 (bf16), got " +
                                    std::to_string(precision));
}

// Launch kernel_<precision> of a tiled family with kThreads per block.
#define CUNET_CONV_LAUNCH_TILED(family, precision, grid, s, ...)                                              \
    do {                                                                                                      \
        if ((precision) == 1) CUNET_LAUNCH(::family##_tf32, dim3(grid), dim3(kThreads), s, __VA_ARGS__);       \
        else if ((precision) == 2) CUNET_LAUNCH(::family##_bf16, dim3(grid), dim3(kThreads), s, __VA_ARGS__);  \
        else CUNET_LAUNCH(::family##_fp32, dim3(grid), dim3(kThreads), s, __VA_ARGS__);                        \
    } while (0)

#if defined(CUNET_HOST)
// The portable kernels' host path has no in-place concat read: (x, x2) copied into one
// (N, Ci, S) array, and a (N, Ci, S) result split into (dx, dx2). The tiled kernels and the
// CPU variants (their padded copy reads both) read and write in place.
inline std::vector<float> host_concat(int64_t N, int64_t C1, int64_t C2, int64_t S, const float* x, const float* x2) {
    std::vector<float> out((size_t)(N * (C1 + C2) * S));
    for (int64_t n = 0; n < N; ++n) {
        std::copy(x + n * C1 * S, x + (n + 1) * C1 * S, out.data() + n * (C1 + C2) * S);
        std::copy(x2 + n * C2 * S, x2 + (n + 1) * C2 * S, out.data() + (n * (C1 + C2) + C1) * S);
    }
    return out;
}
inline void host_split(int64_t N, int64_t C1, int64_t C2, int64_t S, const float* src, float* a, float* b) {
    for (int64_t n = 0; n < N; ++n) {
        std::copy(src + n * (C1 + C2) * S, src + (n * (C1 + C2) + C1) * S, a + n * C1 * S);
        std::copy(src + (n * (C1 + C2) + C1) * S, src + (n + 1) * (C1 + C2) * S, b + n * C2 * S);
    }
}
#endif

// *_cat: x (or dx) given as two tensors, channels [0, C1) and [C1, Ci) (x2 / dx2; C1 = Ci
// and null without). The plain launchers are the one-tensor case.
inline void conv_forward_cat(CUNET_CONV_DIMS, int64_t C1, const float* x, const float* x2, const float* w,
                             const float* b, float* y, int precision = 0, bool relu = false, Stream s = 0) {
    conv_check_precision(precision);
    if (N * Co * Do * Ho * Wo == 0) return;
#if defined(CUNET_HOST)
    if (!emulate_blocks()) {
        if (host_variants() && conv_host::variants_fit(CUNET_CONV_ARGS))
            return conv_host::conv_forward_host(CUNET_CONV_ARGS, x, w, b, y, relu, C1, x2);
        std::vector<float> cat;
        if (C1 < Ci) cat = host_concat(N, C1, Ci - C1, D * H * W, x, x2), x = cat.data();
        CUNET_LAUNCH_LOOP(::conv_forward, N * Co * Do * Ho * Wo, s, CUNET_CONV_ARGS, x, w, b, y, (int64_t)relu);
        return;
    }
#endif
    const unsigned grid = conv_tiled_grid(CUNET_CONV_ARGS, 0);
    CUNET_CONV_LAUNCH_TILED(conv_forward, precision, grid, s, CUNET_CONV_ARGS, C1, x, x2, w, b, y, (int64_t)relu);
}
// mask: null, or the conv's input x when x is a ReLU's output: dx is then the gradient of the
// ReLU's input, 0 where x <= 0 (applied in the CPU variants' store, else by conv_relu_mask);
// only without dx2 (C1 = Ci).
inline void conv_backward_data_cat(CUNET_CONV_DIMS, int64_t C1, const float* dy, const float* w, const float* b,
                                   float* dx, float* dx2, const float* mask = nullptr, int precision = 0,
                                   Stream s = 0) {
    conv_check_precision(precision);
    if (N * Ci * D * H * W == 0) return;
    if (mask && C1 < Ci) throw std::invalid_argument("cunet conv_backward_data: a ReLU mask needs a single input (C1 = Ci)");
#if defined(CUNET_HOST)
    if (!emulate_blocks() && host_variants() && conv_host::variants_fit(CUNET_CONV_ARGS))
        return conv_host::conv_backward_data_host(CUNET_CONV_ARGS, dy, w, b, dx, C1, dx2, mask);
    if (!emulate_blocks()) {
        std::vector<float> cat(C1 < Ci ? N * Ci * D * H * W : 0);
        float* out = C1 < Ci ? cat.data() : dx;
        CUNET_LAUNCH_LOOP(::conv_backward_data, N * Ci * D * H * W, s, CUNET_CONV_ARGS, dy, w, b, out);
        if (C1 < Ci) host_split(N, C1, Ci - C1, D * H * W, out, dx, dx2);
        if (mask) CUNET_LAUNCH_LOOP(::conv_relu_mask, N * Ci * D * H * W, s, N * Ci * D * H * W, mask, dx);
        return;
    }
#endif
    const unsigned grid = conv_tiled_grid(CUNET_CONV_ARGS, 1);
    CUNET_CONV_LAUNCH_TILED(conv_backward_data, precision, grid, s, CUNET_CONV_ARGS, C1, dy, w, b, dx, dx2);
    if (mask) CUNET_LAUNCH_LOOP(::conv_relu_mask, N * Ci * D * H * W, s, N * Ci * D * H * W, mask, dx);
}
inline void channel_sum(int64_t N, int64_t C, int64_t S, const float* x, float* out, Stream s = 0) {
#if defined(CUNET_HOST)
    if (host_variants()) {   // one thread per channel, rows summed with vector partial sums
#pragma omp parallel for schedule(static) if (N * C * S > 32768)
        for (int64_t c = 0; c < C; ++c) {
            double acc = 0.0;
            for (int64_t n = 0; n < N; ++n) {
                const float* row = x + (n * C + c) * S;
                float part = 0.0f;
#pragma omp simd reduction(+ : part)
                for (int64_t i = 0; i < S; ++i) part += row[i];
                acc += part;
            }
            out[c] = (float)acc;
        }
        return;
    }
#endif
    CUNET_LAUNCH(::channel_sum, dim3(C), dim3(coop_block()), s, N, C, S, x, out);
}

// db (null, or Co floats): also the bias gradient, channel_sum(dy), fused into the CPU
// variants' Winograd and patch weight gradients (which read dy anyway).
inline void conv_backward_weight_cat(CUNET_CONV_DIMS, int64_t C1, const float* dy, const float* x, const float* x2,
                                     float* dw, int precision = 0, Stream s = 0, float* db = nullptr) {
    conv_check_precision(precision);
    const int64_t M = Co, Nn = Ci * KD * KH * KW, K = N * Do * Ho * Wo;
    auto bias = [&] { if (db) channel_sum(N, Co, Do * Ho * Wo, dy, db, s); };
    if (M * Nn == 0) return bias();
#if defined(CUNET_HOST)
    if (!emulate_blocks()) {
        if (host_variants() && conv_host::variants_fit(CUNET_CONV_ARGS)) {
            if (!conv_host::conv_backward_weight_host(CUNET_CONV_ARGS, dy, x, dw, C1, x2, db)) bias();
            return;
        }
        std::vector<float> cat;
        if (C1 < Ci) cat = host_concat(N, C1, Ci - C1, D * H * W, x, x2), x = cat.data();
        CUNET_LAUNCH(::conv_backward_weight, dim3(M * Nn), dim3(coop_block()), s, CUNET_CONV_ARGS, dy, x, dw);
        return bias();
    }
#endif
    bias();
    const int64_t k_slice = conv_wgrad_slice(M, Nn, K), slices = std::max<int64_t>(1, (K + k_slice - 1) / k_slice);
    const unsigned grid = conv_tiled_grid(CUNET_CONV_ARGS, 2) * (unsigned)slices;
    float* part = dw;   // (slices, M, Nn) partial sums when K is split
#if defined(CUNET_GPU)
    if (slices > 1 && cudaMallocAsync(reinterpret_cast<void**>(&part), sizeof(float) * slices * M * Nn, s) != cudaSuccess)
        throw std::runtime_error("cunet conv_backward_weight: cannot allocate the split-K workspace");
#else
    std::vector<float> workspace(slices > 1 ? slices * M * Nn : 0);
    if (slices > 1) part = workspace.data();
#endif
    CUNET_CONV_LAUNCH_TILED(conv_backward_weight, precision, grid, s, CUNET_CONV_ARGS, C1, dy, x, x2, part, k_slice);
    if (slices > 1) CUNET_LAUNCH_LOOP(::conv_sum_slices, M * Nn, s, M * Nn, slices, part, dw);
#if defined(CUNET_GPU)
    if (slices > 1) cudaFreeAsync(part, s);
#endif
}

inline void conv_forward(CUNET_CONV_DIMS, const float* x, const float* w, const float* b, float* y, int precision = 0,
                         bool relu = false, Stream s = 0) {
    conv_forward_cat(CUNET_CONV_ARGS, Ci, x, nullptr, w, b, y, precision, relu, s);
}
inline void conv_backward_data(CUNET_CONV_DIMS, const float* dy, const float* w, const float* b, float* dx,
                               int precision = 0, Stream s = 0) {
    conv_backward_data_cat(CUNET_CONV_ARGS, Ci, dy, w, b, dx, nullptr, nullptr, precision, s);
}
inline void conv_backward_weight(CUNET_CONV_DIMS, const float* dy, const float* x, float* dw, int precision = 0,
                                 Stream s = 0) {
    conv_backward_weight_cat(CUNET_CONV_ARGS, Ci, dy, x, nullptr, dw, precision, s);
}
#undef CUNET_CONV_LAUNCH_TILED

}  // namespace cunet
#endif
