// loss.cuh: fused losses with their gradients; the loss value stays on the device.
//
// Layouts: logits, target, dlogits   (N, K, S) float32, S = prod(spatial); V = N*S positions
//          labels                    (V,) int64 in [0, K);  class_weights (K,) float32 or null
//          partials                  (4K+2, blocks) float32, one column per block of pass 1:
//              rows [0,K) Σ p·g, [K,2K) Σ p, [2K,3K) Σ g, [3K,4K) Σ 2pg/(p+g+smooth)  (per class,
//              over the block's positions), 4K the CE numerator (Σ w[y]·nll, or Σ bce), 4K+1 its
//              denominator (Σ w[y], or the element count)
//          coef                      (2K+1,) per class c: dL/dp = coef[c]·g + coef[K+c] (class variant)
//                                    or coef[c]·g(g+smooth)/(p+g+smooth)² (voxel); coef[2K] CE scale
//          loss                      (1,)
// Entry points (kernels, extern "C"). A softmax loss (cross_entropy, dice_loss, dice_ce_loss) or a
// sigmoid one (each channel a class: bce_with_logits, binary_dice_loss, dice_bce_loss) is 3 launches:
//   softmax_loss_partials(N, K, S, logits, labels, class_weights, smooth, blocks, partials)
//   sigmoid_loss_partials(N, K, S, logits, target, smooth, blocks, partials)
//       cooperative: `blocks` blocks (1 or 32k threads), each a contiguous chunk of the V positions
//   dice_loss_finalize(K, V, blocks, partials, smooth, voxel, first, dice_weight, ce_weight, coef, loss)
//       cooperative, one block; first = 1 leaves class 0 out of the Dice mean
//   softmax_loss_backward(N, K, S, logits, labels, class_weights, coef, smooth, voxel, dlogits)   loop over V
//   sigmoid_loss_backward(N, K, S, logits, target, coef, smooth, voxel, dlogits)            loop over N*K*S
// mse_loss / l1_loss (l1 = 1) are 2:
//   regression_loss_partials(n, output, target, l1, blocks, grad, partials)   cooperative; partials (blocks,)
//   regression_loss_finalize(n, blocks, partials, loss)                       cooperative, one block
// Reductions are deterministic: per-block partials, then one block summing them in a fixed order.
// dlogits below FLT_MIN in magnitude (denormals) are written as 0 (loss_flush).
#pragma once
#include "portable.cuh"

namespace cunet {

constexpr int kLossClassTile = 8;   // classes whose 4 sums a thread of pass 1 keeps in registers at once

// sum over the block of row[0..n), valid in thread 0; every thread must call it
__device__ __forceinline__ acc_t loss_row_sum(const float* __restrict__ row, int64_t n) {
    acc_t s = 0;
    for (int64_t b = threadIdx.x; b < n; b += blockDim.x) s += row[b];
    return block_sum(s);
}

// dL_dice/dp at one element of class c (layout of coef above)
__device__ __forceinline__ float loss_dice_dp(const float* __restrict__ coef, int64_t K, int64_t c, float p,
                                              float g, float smooth, int64_t voxel) {
    if (voxel) {
        const float d = p + g + smooth;
        return coef[c] * g * (g + smooth) / (d * d);
    }
    return coef[c] * g + coef[K + c];
}

// A gradient below FLT_MIN in magnitude (a denormal: the BCE term of a confidently right
// logit, (p - g)/count) is written as 0. On x86 CPUs each later multiply that reads a
// denormal takes a microcode assist (~100 cycles): a trained 2d-128 UNet's step ran 4%
// slower than a fresh one's on this alone (benchmarks/bench_denormals.py).
constexpr float kLossTiny = 1.17549435e-38f;   // FLT_MIN
__device__ __forceinline__ float loss_flush(float d) { return fabsf(d) < kLossTiny ? 0.0f : d; }

// thread's 4 per-class sums of one class tile: accumulate p, g; write the block totals to partials
struct LossTile {
    acc_t pg[kLossClassTile] = {}, p[kLossClassTile] = {}, g[kLossClassTile] = {}, vox[kLossClassTile] = {};
    __device__ __forceinline__ void add(int j, float pj, float gj, float smooth) {
        const float d = pj + gj + smooth;
        pg[j] += pj * gj;
        p[j] += pj;
        g[j] += gj;
        vox[j] += d > 0.0f ? 2.0f * pj * gj / d : 0.0f;   // d = 0 only with smooth = 0 (class variant: unused)
    }
    __device__ __forceinline__ void store(int64_t K, int64_t c0, int64_t blocks, float* __restrict__ partials) {
        for (int j = 0; j < kLossClassTile; ++j) {
            if (c0 + j >= K) break;   // uniform over the block: the block_sums below stay collective
            float* col = partials + (c0 + j) * blocks + blockIdx.x;
            const acc_t a = block_sum(pg[j]), b = block_sum(p[j]), c = block_sum(g[j]), d = block_sum(vox[j]);
            if (threadIdx.x == 0) {
                col[0] = (float)a;
                col[K * blocks] = (float)b;
                col[2 * K * blocks] = (float)c;
                col[3 * K * blocks] = (float)d;
            }
        }
    }
};

}  // namespace cunet

// ---- kernels

// Pass 1 of the softmax losses. Positions of the block's chunk stride by blockDim.x; classes go
// kLossClassTile at a time (softmax max/sum recomputed per tile), the CE sums with the first tile.
extern "C" __global__ void softmax_loss_partials(int64_t N, int64_t K, int64_t S, const float* __restrict__ logits,
                                                 const int64_t* __restrict__ labels,
                                                 const float* __restrict__ class_weights, float smooth,
                                                 int64_t blocks, float* __restrict__ partials) {
    int64_t begin, end;
    cunet::block_range(N * S, begin, end);
    cunet::acc_t wnll = 0, wsum = 0;
    for (int64_t c0 = 0; c0 < K; c0 += cunet::kLossClassTile) {
        cunet::LossTile t;
        for (int64_t v = begin + threadIdx.x; v < end; v += blockDim.x) {
            const float* z = logits + (v / S) * K * S + v % S;
            const int64_t y = labels[v];
            float m = z[0], sum = 0.0f;
            for (int64_t c = 1; c < K; ++c) m = fmaxf(m, z[c * S]);
            for (int64_t c = 0; c < K; ++c) sum += expf(z[c * S] - m);
            const float inv = 1.0f / sum;
            for (int j = 0; j < cunet::kLossClassTile; ++j)
                if (c0 + j < K) t.add(j, expf(z[(c0 + j) * S] - m) * inv, c0 + j == y ? 1.0f : 0.0f, smooth);
            if (c0 == 0) {
                const float w = class_weights ? class_weights[y] : 1.0f;
                wnll += w * (logf(sum) - (z[y * S] - m));
                wsum += w;
            }
        }
        t.store(K, c0, blocks, partials);
    }
    wnll = cunet::block_sum(wnll);
    wsum = cunet::block_sum(wsum);
    if (threadIdx.x == 0) {
        partials[4 * K * blocks + blockIdx.x] = (float)wnll;
        partials[(4 * K + 1) * blocks + blockIdx.x] = (float)wsum;
    }
}

// Pass 1 of the sigmoid losses: channel c of logits is class c; target is the soft g.
extern "C" __global__ void sigmoid_loss_partials(int64_t N, int64_t K, int64_t S, const float* __restrict__ logits,
                                                 const float* __restrict__ target, float smooth, int64_t blocks,
                                                 float* __restrict__ partials) {
    int64_t begin, end;
    cunet::block_range(N * S, begin, end);
    cunet::acc_t bce = 0;
    for (int64_t c0 = 0; c0 < K; c0 += cunet::kLossClassTile) {
        cunet::LossTile t;
        for (int64_t v = begin + threadIdx.x; v < end; v += blockDim.x) {
            const int64_t base = (v / S) * K * S + v % S;
            for (int j = 0; j < cunet::kLossClassTile; ++j) {
                if (c0 + j >= K) break;
                const float z = logits[base + (c0 + j) * S], g = target[base + (c0 + j) * S];
                const float e = expf(-fabsf(z)), p = z >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
                t.add(j, p, g, smooth);
                bce += fmaxf(z, 0.0f) - z * g + log1pf(e);   // -g log p - (1-g) log(1-p) without overflow
            }
        }
        t.store(K, c0, blocks, partials);
    }
    bce = cunet::block_sum(bce);
    if (threadIdx.x == 0) {
        partials[4 * K * blocks + blockIdx.x] = (float)bce;
        partials[(4 * K + 1) * blocks + blockIdx.x] = (float)(end > begin ? (end - begin) * K : 0);
    }
}

// One block. Thread 0 turns the sums into coef and the loss:
//   class: D_c = (2Σpg + smooth) / den_c, den_c = Σp + Σg + smooth, dL/dp = -w_c (2g - D_c) / den_c
//   voxel: L = 1 - Σ_c w_c Σvox_c / V,   dL/dp = -w_c 2g(g + smooth) / (p + g + smooth)² / V
// w_c = dice_weight / (K - first) for c >= first, else 0; the CE term adds ce_weight · num / den.
extern "C" __global__ void dice_loss_finalize(int64_t K, int64_t V, int64_t blocks, const float* __restrict__ partials,
                                              float smooth, int64_t voxel, int64_t first, float dice_weight,
                                              float ce_weight, float* __restrict__ coef, float* __restrict__ loss) {
    using cunet::acc_t;
    const acc_t wc = (acc_t)dice_weight / (acc_t)(K - first);
    acc_t dice = 0;
    for (int64_t c = 0; c < K; ++c) {
        const acc_t pg = cunet::loss_row_sum(partials + c * blocks, blocks);
        const acc_t ps = cunet::loss_row_sum(partials + (K + c) * blocks, blocks);
        const acc_t gs = cunet::loss_row_sum(partials + (2 * K + c) * blocks, blocks);
        const acc_t vx = cunet::loss_row_sum(partials + (3 * K + c) * blocks, blocks);
        if (threadIdx.x != 0) continue;
        const acc_t w = c >= first ? wc : acc_t(0);
        acc_t a = 0, b = 0;
        if (w != 0 && voxel) {
            dice += w * vx;
            a = -2 * w / (acc_t)V;
        } else if (w != 0) {
            const acc_t den = ps + gs + smooth, d = (2 * pg + smooth) / den;
            dice += w * (1 - d);
            a = -2 * w / den;
            b = w * d / den;
        }
        coef[c] = (float)a;
        coef[K + c] = (float)b;
    }
    const acc_t num = cunet::loss_row_sum(partials + 4 * K * blocks, blocks);
    const acc_t den = cunet::loss_row_sum(partials + (4 * K + 1) * blocks, blocks);
    if (threadIdx.x == 0) {
        acc_t value = voxel ? (acc_t)dice_weight - dice / (acc_t)V : dice;
        if (ce_weight != 0.0f) value += ce_weight * num / den;
        coef[2 * K] = ce_weight != 0.0f ? (float)(ce_weight / den) : 0.0f;
        loss[0] = (float)value;
    }
}

// Pass 2 of the softmax losses, one position per iteration: dz_k = p_k (dp_k - Σ_j p_j dp_j)
// + coef[2K] w[y] (p_k - g_k). dlogits holds p between the two class loops.
extern "C" __global__ void softmax_loss_backward(int64_t N, int64_t K, int64_t S, const float* __restrict__ logits,
                                                 const int64_t* __restrict__ labels,
                                                 const float* __restrict__ class_weights,
                                                 const float* __restrict__ coef, float smooth, int64_t voxel,
                                                 float* __restrict__ dlogits) {
    CUNET_LOOP(v, N * S) {
        const int64_t base = (v / S) * K * S + v % S, y = labels[v];
        const float* z = logits + base;
        float* dz = dlogits + base;
        float m = z[0], sum = 0.0f, dot = 0.0f;
        for (int64_t c = 1; c < K; ++c) m = fmaxf(m, z[c * S]);
        for (int64_t c = 0; c < K; ++c) sum += expf(z[c * S] - m);
        const float inv = 1.0f / sum, ce = coef[2 * K] * (class_weights ? class_weights[y] : 1.0f);
        for (int64_t c = 0; c < K; ++c) {
            const float p = expf(z[c * S] - m) * inv;
            dz[c * S] = p;
            dot += p * cunet::loss_dice_dp(coef, K, c, p, c == y ? 1.0f : 0.0f, smooth, voxel);
        }
        for (int64_t c = 0; c < K; ++c) {
            const float p = dz[c * S], g = c == y ? 1.0f : 0.0f;
            dz[c * S] = cunet::loss_flush(p * (cunet::loss_dice_dp(coef, K, c, p, g, smooth, voxel) - dot) + ce * (p - g));
        }
    }
}

// Pass 2 of the sigmoid losses, one element per iteration: dz = dp · p(1-p) + coef[2K] (p - g).
extern "C" __global__ void sigmoid_loss_backward(int64_t N, int64_t K, int64_t S, const float* __restrict__ logits,
                                                 const float* __restrict__ target, const float* __restrict__ coef,
                                                 float smooth, int64_t voxel, float* __restrict__ dlogits) {
    CUNET_LOOP(i, N * K * S) {
        const float z = logits[i], g = target[i], e = expf(-fabsf(z));
        const float p = z >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
        // p(1-p) = e / (1+e)², exact where 1 - p would cancel
        dlogits[i] = cunet::loss_flush(cunet::loss_dice_dp(coef, K, (i / S) % K, p, g, smooth, voxel) *
                                       (e / ((1.0f + e) * (1.0f + e))) + coef[2 * K] * (p - g));
    }
}

// grad = 2r/n (mse) or sign(r)/n (l1), r = output - target; partials[b] = Σ r² or Σ |r| over block b's chunk.
extern "C" __global__ void regression_loss_partials(int64_t n, const float* __restrict__ output,
                                                    const float* __restrict__ target, int64_t l1, int64_t blocks,
                                                    float* __restrict__ grad, float* __restrict__ partials) {
    int64_t begin, end;
    cunet::block_range(n, begin, end);
    const float scale = (l1 ? 1.0f : 2.0f) / (float)n;
    cunet::acc_t s = 0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const float r = output[i] - target[i];
        grad[i] = scale * (l1 ? (float)((r > 0.0f) - (r < 0.0f)) : r);
        s += l1 ? fabsf(r) : r * r;
    }
    s = cunet::block_sum(s);
    if (threadIdx.x == 0 && blockIdx.x < blocks) partials[blockIdx.x] = (float)s;
}

// One block: loss = Σ partials / n.
extern "C" __global__ void regression_loss_finalize(int64_t n, int64_t blocks, const float* __restrict__ partials,
                                                    float* __restrict__ loss) {
    const cunet::acc_t s = cunet::loss_row_sum(partials, blocks);
    if (threadIdx.x == 0) loss[0] = (float)(s / (cunet::acc_t)n);
}

// ---- host variants (CPU build; the launchers run them unless host_variants() is off or
// blocks are emulated): the same partials and gradients, 16 positions per vector along S
// (runs of one image), exp and log as vector polynomials (simd::exp16, log16: ~1e-7
// relative), per-block sums in float vectors reduced to double at the block's end.
#if defined(CUNET_HOST)
namespace cunet::loss_host {
using simd::v16;

// loss_flush of 16 elements
inline v16 flush16(v16 d) {
    const v16 tiny = simd::splat(kLossTiny);
    return (d < tiny) & (d > -tiny) ? v16{} : d;
}

// Runs of block b's chunk of the N*S positions (block_range's split) within one image:
// f(n, s, m) for positions s .. s+m-1 of image n, m <= 16.
template <class F>
inline void for_vectors(int64_t N, int64_t S, int64_t blocks, int64_t b, F&& f) {
    const int64_t chunk = (N * S + blocks - 1) / blocks, begin = b * chunk, end = std::min(N * S, begin + chunk);
    for (int64_t v = begin; v < end;) {
        const int64_t n = v / S, s = v % S, m = std::min<int64_t>({16, end - v, S - s});
        f(n, s, m);
        v += m;
    }
}

typedef int64_t v16l __attribute__((vector_size(128)));

// Labels of 16 positions (m valid) as floats (-1 past m), and the class weight of each
// (1 without weights, 0 past m): both by vector selects over the K classes.
inline v16 labels16(const int64_t* y, int64_t m, int64_t K, const float* class_weights, v16& w) {
    v16l l;
    if (m >= 16) {
        std::memcpy(&l, y, 128);
    } else {
        for (int i = 0; i < 16; ++i) l[i] = i < m ? y[i] : -1;
    }
    const v16 yf = __builtin_convertvector(l, v16);
    if (!class_weights) {
        w = yf >= 0.0f ? simd::splat(1.0f) : v16{};
    } else {
        w = v16{};
        for (int64_t c = 0; c < K; ++c) w = yf == (float)c ? simd::splat(class_weights[c]) : w;
    }
    return yf;
}

// Softmax of 16 positions: z[c] (K vectors) in, p[c] out; returns the max (m) and sum.
inline void softmax16(int64_t K, const v16* z, v16* p, v16& m, v16& sum) {
    m = z[0];
    for (int64_t c = 1; c < K; ++c) m = simd::vmax(m, z[c]);
    sum = v16{};
    for (int64_t c = 0; c < K; ++c) p[c] = simd::exp16(z[c] - m), sum += p[c];
    const v16 inv = simd::splat(1.0f) / sum;
    for (int64_t c = 0; c < K; ++c) p[c] *= inv;
}

inline void softmax_partials(int64_t N, int64_t K, int64_t S, const float* logits, const int64_t* labels,
                             const float* class_weights, float smooth, int64_t blocks, float* partials) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        std::vector<v16> buf(6 * K);   // z, p, then the 4 sums per class
        v16 *z = buf.data(), *p = z + K, *acc = p + K, wnll = v16{}, wsum = v16{};
        for (int64_t c = 0; c < 4 * K; ++c) acc[c] = v16{};
        for_vectors(N, S, blocks, b, [&](int64_t n, int64_t s, int64_t m) {
            const float* zb = logits + n * K * S + s;
            for (int64_t c = 0; c < K; ++c) z[c] = simd::load_part(zb + c * S, m);
            v16 mx, sum, zy = v16{}, w;
            softmax16(K, z, p, mx, sum);
            const v16 yf = labels16(labels + n * S + s, m, K, class_weights, w);
            const v16 live = yf >= 0.0f ? simd::splat(1.0f) : v16{};
            for (int64_t c = 0; c < K; ++c) {
                const v16 g = yf == (float)c ? simd::splat(1.0f) : v16{};
                const v16 pc = p[c] * live, d = pc + g + smooth;
                acc[c] += pc * g, acc[K + c] += pc, acc[2 * K + c] += g;
                acc[3 * K + c] += d > 0.0f ? 2.0f * pc * g / d : v16{};
                zy += g * z[c];
            }
            wnll += w * (simd::log16(sum) - (zy - mx)), wsum += w;
        });
        for (int64_t r = 0; r < 4 * K; ++r) partials[r * blocks + b] = simd::hsum16(acc[r]);
        partials[4 * K * blocks + b] = simd::hsum16(wnll);
        partials[(4 * K + 1) * blocks + b] = simd::hsum16(wsum);
    }
}

inline void softmax_backward(int64_t N, int64_t K, int64_t S, const float* logits, const int64_t* labels,
                             const float* class_weights, const float* coef, float smooth, int64_t voxel,
                             float* dlogits) {
    const int64_t blocks = (N * S + 2047) / 2048;   // work items of ~2048 positions
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        std::vector<v16> buf(3 * K);
        v16 *z = buf.data(), *p = z + K, *dp = p + K;
        for_vectors(N, S, blocks, b, [&](int64_t n, int64_t s, int64_t m) {
            const float* zb = logits + n * K * S + s;
            for (int64_t c = 0; c < K; ++c) z[c] = simd::load_part(zb + c * S, m);
            v16 mx, sum, w, dot = v16{};
            softmax16(K, z, p, mx, sum);
            const v16 yf = labels16(labels + n * S + s, m, K, class_weights, w), ce = coef[2 * K] * w;
            for (int64_t c = 0; c < K; ++c) {
                const v16 g = yf == (float)c ? simd::splat(1.0f) : v16{};
                if (voxel) {
                    const v16 d = p[c] + g + smooth;
                    dp[c] = coef[c] * g * (g + smooth) / (d * d);
                } else {
                    dp[c] = coef[c] * g + coef[K + c];
                }
                dot += p[c] * dp[c];
                z[c] = g;   // z is done with: keep g
            }
            for (int64_t c = 0; c < K; ++c)
                simd::store_part(dlogits + n * K * S + s + c * S, flush16(p[c] * (dp[c] - dot) + ce * (p[c] - z[c])), m);
        });
    }
}

// Sigmoid of 16 elements: p, and e = exp(-|z|).
inline v16 sigmoid16(v16 z, v16& e) {
    e = simd::exp16(z < 0.0f ? z : -z);
    const v16 inv = simd::splat(1.0f) / (1.0f + e);
    return z >= 0.0f ? inv : e * inv;
}

inline void sigmoid_partials(int64_t N, int64_t K, int64_t S, const float* logits, const float* target, float smooth,
                             int64_t blocks, float* partials) {
    const v16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        std::vector<v16> acc(4 * K);
        v16 bce = v16{};
        int64_t count = 0;
        for_vectors(N, S, blocks, b, [&](int64_t n, int64_t s, int64_t m) {
            const v16 live = lane < (float)m ? simd::splat(1.0f) : v16{};
            count += m * K;
            for (int64_t c = 0; c < K; ++c) {
                const int64_t at = (n * K + c) * S + s;
                const v16 z = simd::load_part(logits + at, m), g = simd::load_part(target + at, m);
                v16 e;
                const v16 p = sigmoid16(z, e) * live, d = p + g + smooth;
                acc[c] += p * g, acc[K + c] += p, acc[2 * K + c] += g;
                acc[3 * K + c] += d > 0.0f ? 2.0f * p * g / d : v16{};
                bce += live * (simd::vmax(z, v16{}) - z * g + simd::log16(1.0f + e));
            }
        });
        for (int64_t r = 0; r < 4 * K; ++r) partials[r * blocks + b] = simd::hsum16(acc[r]);
        partials[4 * K * blocks + b] = simd::hsum16(bce);
        partials[(4 * K + 1) * blocks + b] = (float)count;
    }
}

inline void sigmoid_backward(int64_t N, int64_t K, int64_t S, const float* logits, const float* target,
                             const float* coef, float smooth, int64_t voxel, float* dlogits) {
#pragma omp parallel for schedule(static) if (N * K * S > 32768)
    for (int64_t row = 0; row < N * K; ++row) {
        const int64_t c = row % K;
        const float a = coef[c], bb = coef[K + c], ce = coef[2 * K];
        for (int64_t s = 0; s < S; s += 16) {
            const int64_t m = std::min<int64_t>(16, S - s), at = row * S + s;
            const v16 z = simd::load_part(logits + at, m), g = simd::load_part(target + at, m);
            v16 e;
            const v16 p = sigmoid16(z, e), d = p + g + smooth, q = 1.0f + e;
            const v16 dp = voxel ? a * g * (g + smooth) / (d * d) : a * g + bb;
            simd::store_part(dlogits + at, flush16(dp * (e / (q * q)) + ce * (p - g)), m);
        }
    }
}

}  // namespace cunet::loss_host
#endif

// ---- launchers
#if !defined(__CUDACC_RTC__)
namespace cunet {

inline void softmax_loss_partials(int64_t N, int64_t K, int64_t S, const float* logits, const int64_t* labels,
                                  const float* class_weights, float smooth, int64_t blocks, float* partials,
                                  Stream s = 0) {
#if defined(CUNET_HOST)
    if (host_variants() && !emulate_blocks())
        return loss_host::softmax_partials(N, K, S, logits, labels, class_weights, smooth, blocks, partials);
#endif
    CUNET_LAUNCH(::softmax_loss_partials, dim3(blocks), dim3(coop_block()), s, N, K, S, logits, labels,
                 class_weights, smooth, blocks, partials);
}
inline void sigmoid_loss_partials(int64_t N, int64_t K, int64_t S, const float* logits, const float* target,
                                  float smooth, int64_t blocks, float* partials, Stream s = 0) {
#if defined(CUNET_HOST)
    if (host_variants() && !emulate_blocks())
        return loss_host::sigmoid_partials(N, K, S, logits, target, smooth, blocks, partials);
#endif
    CUNET_LAUNCH(::sigmoid_loss_partials, dim3(blocks), dim3(coop_block()), s, N, K, S, logits, target, smooth,
                 blocks, partials);
}
inline void dice_loss_finalize(int64_t K, int64_t V, int64_t blocks, const float* partials, float smooth,
                               int64_t voxel, int64_t first, float dice_weight, float ce_weight, float* coef,
                               float* loss, Stream s = 0) {
    CUNET_LAUNCH(::dice_loss_finalize, dim3(1), dim3(coop_block()), s, K, V, blocks, partials, smooth, voxel, first,
                 dice_weight, ce_weight, coef, loss);
}
inline void softmax_loss_backward(int64_t N, int64_t K, int64_t S, const float* logits, const int64_t* labels,
                                  const float* class_weights, const float* coef, float smooth, int64_t voxel,
                                  float* dlogits, Stream s = 0) {
#if defined(CUNET_HOST)
    if (host_variants() && !emulate_blocks())
        return loss_host::softmax_backward(N, K, S, logits, labels, class_weights, coef, smooth, voxel, dlogits);
#endif
    CUNET_LAUNCH_LOOP(::softmax_loss_backward, N * S, s, N, K, S, logits, labels, class_weights, coef, smooth, voxel,
                      dlogits);
}
inline void sigmoid_loss_backward(int64_t N, int64_t K, int64_t S, const float* logits, const float* target,
                                  const float* coef, float smooth, int64_t voxel, float* dlogits, Stream s = 0) {
#if defined(CUNET_HOST)
    if (host_variants() && !emulate_blocks())
        return loss_host::sigmoid_backward(N, K, S, logits, target, coef, smooth, voxel, dlogits);
#endif
    CUNET_LAUNCH_LOOP(::sigmoid_loss_backward, N * K * S, s, N, K, S, logits, target, coef, smooth, voxel, dlogits);
}
inline void regression_loss_partials(int64_t n, const float* output, const float* target, int64_t l1,
                                     int64_t blocks, float* grad, float* partials, Stream s = 0) {
    CUNET_LAUNCH(::regression_loss_partials, dim3(blocks), dim3(coop_block()), s, n, output, target, l1, blocks,
                 grad, partials);
}
inline void regression_loss_finalize(int64_t n, int64_t blocks, const float* partials, float* loss, Stream s = 0) {
    CUNET_LAUNCH(::regression_loss_finalize, dim3(1), dim3(coop_block()), s, n, blocks, partials, loss);
}

}  // namespace cunet
#endif
