// portable.cuh: one CUDA C++ source, three compilers.
//
// Kernels in kernels/*.cuh are written in plain CUDA C++. This header lets the same
// text compile
//   - with NVRTC (CuPy RawModule) and nvcc: the CUDA built-ins are the real ones;
//   - with g++ as host C++ (the pybind11 host build): the built-ins below stand in.
//
// Host execution has two modes, chosen per launch by the block size:
//   parallel loops   block = 1 thread. Blocks run as an OpenMP loop; CUNET_LOOP
//                    (grid-stride loop on the GPU) becomes `omp parallel for simd`.
//                    The fast CPU path; a cooperative kernel written for any blockDim
//                    (threads stride by blockDim.x, reduce with block_sum) runs here
//                    with one thread per block and trivial reductions.
//   block emulation  block > 1 thread. Every thread of a block is a fiber (ucontext)
//                    with its own stack; __syncthreads and warp shuffles are real
//                    barriers over the block's / warp's fibers; __shared__ is per OS
//                    thread, which runs one block at a time. Slow: it exists so the
//                    cooperative GPU code paths are executed by the CPU tests.
//
// Entry points used by kernels:
//   CUNET_LOOP(i, n)           grid-stride loop over [0, n)  (host: omp parallel for simd)
//   block_sum(v)               sum over the block, valid in thread 0 (blockDim.x % 32 == 0 or 1)
//   atomicAdd, __syncthreads, __shfl_down_sync, __shfl_xor_sync, rsqrtf
//   mma_16x8<K>(d, a, b)       warp-wide tensor-core mma (K = 8: tf32, 16: bf16), fragment
//                              layout mma_{a,b,c}_{row,col}; f32_to_tf32, pack_bf16x2 (host:
//                              emulated through the warp's fibers, same layout, same rounding)
//   make_fastdiv, fdiv, fdivmod  division by a per-kernel constant without integer division
//   CUNET_LAUNCH(kernel, grid, block, stream, args...)   launcher side, not under NVRTC
#pragma once

#if defined(__CUDACC_RTC__)
// NVRTC: no standard headers.
typedef long long int64_t;
typedef unsigned long long uint64_t;
typedef unsigned int uint32_t;
#elif defined(__CUDACC__)
#include <algorithm>
#include <cstdint>
#include <vector>
#include <stdexcept>
#include <string>
#include <cuda_runtime.h>
#else
#include <algorithm>
#include <atomic>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>
#include <ucontext.h>
#endif

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// ---------------------------------------------------------------- GPU
#define CUNET_GPU 1
#define CUNET_LOOP(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (int64_t)(n); \
         i += (int64_t)blockDim.x * gridDim.x)
#define CUNET_FULL_MASK 0xffffffffu
#define CUNET_UNROLL _Pragma("unroll")   // loops over register arrays: unrolled, or they go to local memory

#else
// ---------------------------------------------------------------- host
#define CUNET_HOST 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static thread_local
#define CUNET_FULL_MASK 0xffffffffu
#define CUNET_UNROLL _Pragma("GCC unroll 16")

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cunet::host {

inline thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;

// A block of fibers: one per emulated thread, scheduled round robin; a fiber runs
// until it waits at a barrier or finishes.
struct Fibers {
    enum State { READY, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };
    int n = 0, current = 0;
    ucontext_t scheduler;
    std::vector<ucontext_t> ctx;
    std::vector<State> state;
    std::vector<std::unique_ptr<char[]>> stacks;
    std::vector<uint64_t> exchange;   // one slot per thread for warp shuffles
    std::vector<uint32_t> words;      // kWords per thread for warp_gather (mma fragments)
    static constexpr int kWords = 8;
    void (*body)(void*) = nullptr;
    void* arg = nullptr;
    static constexpr size_t stack_bytes = 64 * 1024;
};
inline thread_local Fibers* fibers = nullptr;

inline void set_thread_index(int t) {
    thread_idx = dim3(t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y));
}

inline void fiber_entry() {
    Fibers& f = *fibers;
    f.body(f.arg);
    f.state[f.current] = Fibers::DONE;
    swapcontext(&f.ctx[f.current], &f.scheduler);
}

inline void wait(Fibers::State why) {
    Fibers& f = *fibers;
    f.state[f.current] = why;
    swapcontext(&f.ctx[f.current], &f.scheduler);
}

// Release the fibers waiting at a barrier once every live fiber of the group waits.
inline bool release(Fibers& f) {
    bool any = false;
    int live = 0, at_block = 0;
    for (int t = 0; t < f.n; ++t) {
        live += f.state[t] != Fibers::DONE;
        at_block += f.state[t] == Fibers::AT_BLOCK_BARRIER;
    }
    if (live > 0 && at_block == live) {
        for (int t = 0; t < f.n; ++t) f.state[t] = Fibers::READY;
        return true;
    }
    for (int w = 0; w < f.n; w += 32) {
        int end = std::min(f.n, w + 32), wlive = 0, at_warp = 0;
        for (int t = w; t < end; ++t) {
            wlive += f.state[t] != Fibers::DONE;
            at_warp += f.state[t] == Fibers::AT_WARP_BARRIER;
        }
        if (wlive > 0 && at_warp == wlive) {
            for (int t = w; t < end; ++t) f.state[t] = Fibers::READY;
            any = true;
        }
    }
    return any;
}

inline void run_block(int nthreads, void (*body)(void*), void* arg) {
    static thread_local Fibers f;
    f.n = nthreads;
    f.body = body;
    f.arg = arg;
    f.ctx.resize(nthreads);
    f.state.assign(nthreads, Fibers::READY);
    f.exchange.assign(nthreads, 0);
    f.words.assign((size_t)nthreads * Fibers::kWords, 0);
    while ((int)f.stacks.size() < nthreads) f.stacks.emplace_back(new char[Fibers::stack_bytes]);
    fibers = &f;
    for (int t = 0; t < nthreads; ++t) {
        getcontext(&f.ctx[t]);
        f.ctx[t].uc_stack.ss_sp = f.stacks[t].get();
        f.ctx[t].uc_stack.ss_size = Fibers::stack_bytes;
        f.ctx[t].uc_link = nullptr;
        makecontext(&f.ctx[t], fiber_entry, 0);
    }
    for (;;) {
        bool ran = false;
        for (int t = 0; t < nthreads; ++t) {
            if (f.state[t] != Fibers::READY) continue;
            f.current = t;
            set_thread_index(t);
            swapcontext(&f.scheduler, &f.ctx[t]);
            ran = true;
        }
        bool all_done = true;
        for (int t = 0; t < nthreads; ++t) all_done &= f.state[t] == Fibers::DONE;
        if (all_done) break;
        if (!release(f) && !ran)
            throw std::runtime_error("cunet block emulation: deadlock (a barrier not reached by every thread)");
    }
    fibers = nullptr;
}

// Launch: grid of blocks, each block of `block` threads running body().
template <class Body>
void launch(dim3 grid, dim3 block, Body&& body) {
    const int64_t nblocks = (int64_t)grid.x * grid.y * grid.z;
    const int nthreads = block.x * block.y * block.z;
    auto set_block = [&](int64_t b) {
        grid_dim = grid;
        block_dim = block;
        block_idx = dim3(b % grid.x, (b / grid.x) % grid.y, b / ((int64_t)grid.x * grid.y));
        thread_idx = dim3(0, 0, 0);
    };
    if (nthreads == 1 && nblocks == 1) {   // a single loop kernel: its CUNET_LOOP is the parallel region
        set_block(0);
        body();
        return;
    }
    using B = std::remove_reference_t<Body>;
#pragma omp parallel for schedule(dynamic)
    for (int64_t b = 0; b < nblocks; ++b) {
        set_block(b);
        if (nthreads == 1) {
            body();
        } else {
            run_block(nthreads, [](void* p) { (*static_cast<B*>(p))(); }, (void*)&body);
        }
    }
}

inline void syncthreads() {
    if (fibers) wait(Fibers::AT_BLOCK_BARRIER);
}

template <class T>
T shfl(T v, int src_lane_of(int lane, int arg), int arg) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 8 bytes");
    if (!fibers) return v;   // one thread per block: every lane is this lane
    Fibers& f = *fibers;
    const int t = f.current, warp0 = t - t % 32, lane = t % 32;
    const int width = std::min(32, f.n - warp0);
    std::memcpy(&f.exchange[t], &v, sizeof(T));
    wait(Fibers::AT_WARP_BARRIER);
    int src = src_lane_of(lane, arg);
    T out = v;
    if (src >= 0 && src < width) std::memcpy(&out, &f.exchange[warp0 + src], sizeof(T));
    wait(Fibers::AT_WARP_BARRIER);   // nobody overwrites a slot before all have read
    return out;
}

// Every lane of a full warp publishes n <= kWords words; all[l*n + i] = word i of lane l.
// The emulated tensor-core mma reads the warp's fragments this way.
inline void warp_gather(const uint32_t* mine, int n, uint32_t* all) {
    if (!fibers) throw std::logic_error("cunet: a warp-wide mma needs the block emulation (blockDim >= 32)");
    Fibers& f = *fibers;
    const int t = f.current, warp0 = t - t % 32;
    if (f.n - warp0 < 32 || n > Fibers::kWords) throw std::logic_error("cunet: warp_gather needs a full warp");
    std::memcpy(&f.words[(size_t)t * Fibers::kWords], mine, n * sizeof(uint32_t));
    wait(Fibers::AT_WARP_BARRIER);
    for (int l = 0; l < 32; ++l) std::memcpy(all + l * n, &f.words[(size_t)(warp0 + l) * Fibers::kWords], n * sizeof(uint32_t));
    wait(Fibers::AT_WARP_BARRIER);   // nobody overwrites its words before all have read
}

inline int lane_down(int lane, int d) { return lane + d < 32 ? lane + d : -1; }
inline int lane_xor(int lane, int m) { return lane ^ m; }

}  // namespace cunet::host

#define threadIdx (::cunet::host::thread_idx)
#define blockIdx (::cunet::host::block_idx)
#define blockDim (::cunet::host::block_dim)
#define gridDim (::cunet::host::grid_dim)

inline void __syncthreads() { ::cunet::host::syncthreads(); }
template <class T> inline T __shfl_down_sync(unsigned, T v, int d) { return ::cunet::host::shfl(v, ::cunet::host::lane_down, d); }
template <class T> inline T __shfl_xor_sync(unsigned, T v, int m) { return ::cunet::host::shfl(v, ::cunet::host::lane_xor, m); }

template <class T>
inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// OpenMP needs a canonical loop; simd where the body allows it.
#define CUNET_PRAGMA(x) _Pragma(#x)
// Small loops stay on the calling thread: waking the team costs more than the work.
#define CUNET_LOOP(i, n) CUNET_PRAGMA(omp parallel for simd schedule(static) if(parallel: (int64_t)(n) > 32768)) \
    for (int64_t i = 0; i < (int64_t)(n); ++i)
#endif

// ---------------------------------------------------------------- shared helpers

namespace cunet {

[[maybe_unused]] constexpr int kBlock = 256;   // threads per block of the cooperative kernels on the GPU

// Per-thread accumulator of the reductions: float on the GPU (many threads, short
// sums each), double on the host, where one thread may sum a whole channel.
#if defined(CUNET_GPU)
typedef float acc_t;
#else
typedef double acc_t;
#endif

// Sum of v over the block; the result is valid in thread 0. Deterministic (fixed tree).
// blockDim.x must be 1 or a multiple of 32 (at most 1024). Contains __syncthreads:
// every thread of the block must call it.
template <class T>
__device__ __forceinline__ T block_sum(T v) {
    __shared__ T warp_sums[32];
    if (blockDim.x == 1) return v;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(CUNET_FULL_MASK, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    v = (int)threadIdx.x < (int)(blockDim.x >> 5) ? warp_sums[threadIdx.x] : T(0);
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(CUNET_FULL_MASK, v, o);
    __syncthreads();   // warp_sums may be reused by the next call
    return v;
}

// -inf without <cmath> (NVRTC has none).
__device__ __forceinline__ float neg_inf() {
#if defined(CUNET_GPU)
    return __int_as_float(0xff800000);
#else
    return -__builtin_inff();
#endif
}

// n / d and n % d for 0 <= n < 2^31 by a divisor d >= 1 fixed for a kernel: a multiply-high,
// an add and a shift (Granlund & Montgomery: l = ceil(log2 d), mul = 2^32 (2^l - d) / d + 1)
// instead of a ~20-instruction integer division. A plain struct: it may live in __shared__.
struct FastDiv {
    uint32_t d, mul, shift;
};
__host__ __device__ inline FastDiv make_fastdiv(int d) {
    uint32_t l = 0;
    while ((uint64_t(1) << l) < (uint64_t)d) ++l;
    return FastDiv{(uint32_t)d, (uint32_t)(((uint64_t(1) << 32) * ((uint64_t(1) << l) - d)) / d + 1), l};
}
__device__ __forceinline__ int fdiv(int n, const FastDiv& f) {
#if defined(CUNET_GPU)
    const uint32_t hi = __umulhi((uint32_t)n, f.mul);
#else
    const uint32_t hi = (uint32_t)(((uint64_t)(uint32_t)n * f.mul) >> 32);
#endif
    return (int)((hi + (uint32_t)n) >> f.shift);
}
// n = q*d + rem: returns q
__device__ __forceinline__ int fdivmod(int n, const FastDiv& f, int& rem) {
    const int q = fdiv(n, f);
    rem = n - q * (int)f.d;
    return q;
}

// [begin, end) of this block's share of n items split into gridDim.x contiguous chunks.
__device__ __forceinline__ void block_range(int64_t n, int64_t& begin, int64_t& end) {
    const int64_t chunk = (n + gridDim.x - 1) / gridDim.x;
    begin = (int64_t)blockIdx.x * chunk;
    end = begin + chunk < n ? begin + chunk : n;
}

// ---------------------------------------------------------------- tensor-core primitives
// Warp-wide D (16x8, fp32) += A (16xK) * B (Kx8): mma.sync m16n8k8 with tf32 operands
// (K = 8) and m16n8k16 with bf16 operands (K = 16), fp32 accumulation. Each lane holds A in
// 4 and B in 2 32-bit registers (tf32: one value per register; bf16: two, the lower
// index in the lower half) and C/D in 4 floats. The mma_*_row/col functions below are
// the ONE statement of the fragment layout (PTX ISA, "matrix fragments for mma.m16n8k8 /
// mma.m16n8k16"; lane = 4*g + t): kernels load their fragments through them, and the
// host emulation reassembles the warp's tiles through them, so the CPU tests check the
// layout the GPU uses.
//   A element e (< K/2) of a lane at (row, col) = (a_row, a_col); register e*8/K
//   B element e (< K/4) at (k, n) = (b_row, b_col);               register e*8/K
//   C/D element e (< 4) at (c_row, c_col)
// GPU: sm_80 or newer (inline PTX, no mma.h / cuda_bf16.h: NVRTC may lack toolkit headers).
template <int K> __host__ __device__ __forceinline__ int mma_a_row(int lane, int e) {
    return (lane >> 2) + 8 * ((K == 8 ? e : e >> 1) & 1);
}
template <int K> __host__ __device__ __forceinline__ int mma_a_col(int lane, int e) {
    return K == 8 ? (lane & 3) + 4 * (e >> 1) : 2 * (lane & 3) + (e & 1) + 8 * (e >> 2);
}
template <int K> __host__ __device__ __forceinline__ int mma_b_row(int lane, int e) {
    return K == 8 ? (lane & 3) + 4 * e : 2 * (lane & 3) + (e & 1) + 8 * (e >> 1);
}
__host__ __device__ __forceinline__ int mma_b_col(int lane) { return lane >> 2; }
__host__ __device__ __forceinline__ int mma_c_row(int lane, int e) { return (lane >> 2) + 8 * (e >> 1); }
__host__ __device__ __forceinline__ int mma_c_col(int lane, int e) { return 2 * (lane & 3) + (e & 1); }

#if defined(CUNET_HOST)
__device__ __forceinline__ uint32_t f32_bits(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
__device__ __forceinline__ float bits_f32(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }
// float -> bf16 bits, nearest even (NaN -> the canonical 0x7fff), as cvt.rn.bf16.f32
__device__ __forceinline__ uint32_t bf16_bits(float x) {
    const uint32_t u = f32_bits(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x007fffffu) ? 0x7fffu : u >> 16;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
#endif

// float -> tf32 (10 mantissa bits, nearest, ties away from zero), in a 32-bit register
__device__ __forceinline__ uint32_t f32_to_tf32(float x) {
#if defined(CUNET_GPU)
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#else
    const uint32_t u = f32_bits(x);
    return (u & 0x7f800000u) == 0x7f800000u ? u : (u + 0x1000u) & 0xffffe000u;
#endif
}

// two floats -> bf16x2 (nearest even): lo in bits 0-15, hi in bits 16-31
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
#if defined(CUNET_GPU)
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));   // d = {a: upper, b: lower}
    return r;
#else
    return bf16_bits(lo) | bf16_bits(hi) << 16;
#endif
}

#if defined(CUNET_HOST)
namespace host {
// Value of fragment element e held in register word w.
template <int K> inline float mma_value(uint32_t w, int e) {
    return K == 8 ? bits_f32(w) : bits_f32((e & 1 ? w >> 16 : w & 0xffffu) << 16);
}
// Each lane gathers the warp's A and B registers, rebuilds the tiles through the layout
// functions and computes its own four D elements: fp32 sums in k order (the products
// of tf32 or bf16 values are exact in fp32).
template <int K> inline void mma_emulate(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    uint32_t all[32 * 6];
    warp_gather(mine, 6, all);
    float At[16][K], Bt[K][8];
    for (int l = 0; l < 32; ++l) {
        for (int e = 0; e < K / 2; ++e) At[mma_a_row<K>(l, e)][mma_a_col<K>(l, e)] = mma_value<K>(all[l * 6 + e * 8 / K], e);
        for (int e = 0; e < K / 4; ++e) Bt[mma_b_row<K>(l, e)][mma_b_col(l)] = mma_value<K>(all[l * 6 + 4 + e * 8 / K], e);
    }
    const int lane = fibers->current % 32;
    for (int e = 0; e < 4; ++e) {
        float s = d[e];
        for (int k = 0; k < K; ++k) s += At[mma_c_row(lane, e)][k] * Bt[k][mma_c_col(lane, e)];
        d[e] = s;
    }
}
}  // namespace host
#endif

// d += A * B for one warp; K = 8: tf32 operands (f32_to_tf32), K = 16: bf16 (pack_bf16x2).
// Every lane of the warp calls it (it is a warp-wide instruction).
template <int K>
__device__ __forceinline__ void mma_16x8(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    static_assert(K == 8 || K == 16, "mma_16x8: K = 8 (tf32) or 16 (bf16)");
#if defined(CUNET_GPU)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (K == 8)
        asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();   // tensor-core kernels need sm_80+; the fp32 kernels run anywhere
#endif
#else
    host::mma_emulate<K>(d, a, b);
#endif
}

}  // namespace cunet

// ---------------------------------------------------------------- launch (not NVRTC)
#if !defined(__CUDACC_RTC__)
namespace cunet {
#if defined(CUNET_GPU)
using Stream = cudaStream_t;
inline void check_launch(const char* what) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
#define CUNET_LAUNCH(kernel, grid, block, stream, ...) \
    do { kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__); ::cunet::check_launch(#kernel); } while (0)
#else
using Stream = void*;
#define CUNET_LAUNCH(kernel, grid, block, stream, ...) \
    do { (void)(stream); ::cunet::host::launch((grid), (block), [&]() { kernel(__VA_ARGS__); }); } while (0)
#endif

// Host-side switch: run the cooperative kernels with their GPU block size through the
// block emulation (tests) instead of one thread per block (speed). Ignored on the GPU.
inline bool& emulate_blocks() { static bool on = false; return on; }

// Host-side switch: launchers that have a CPU-specific variant beside the portable kernel
// (each kernel file's header names them) run it (default, fast) or the portable kernel as on
// the GPU (tests run both). Ignored on the GPU.
inline bool& host_variants() { static bool on = true; return on; }

// Threads per block for a cooperative kernel: kBlock on the GPU and under emulation, else 1.
inline unsigned coop_block() {
#if defined(CUNET_GPU)
    return kBlock;
#else
    return emulate_blocks() ? kBlock : 1;
#endif
}

// Blocks for a loop kernel over n items: enough to fill the GPU, one on the host.
inline unsigned loop_grid(int64_t n) {
#if defined(CUNET_GPU)
    int64_t g = (n + kBlock - 1) / kBlock;
    return (unsigned)(g < 1 ? 1 : (g > 65535 * 8 ? 65535 * 8 : g));
#else
    (void)n;
    return 1;
#endif
}
inline unsigned loop_block() {
#if defined(CUNET_GPU)
    return kBlock;
#else
    return 1;
#endif
}

}  // namespace cunet
#define CUNET_LAUNCH_LOOP(kernel, n, stream, ...) \
    CUNET_LAUNCH(kernel, dim3(::cunet::loop_grid(n)), dim3(::cunet::loop_block()), stream, __VA_ARGS__)
#endif

// ---------------------------------------------------------------- host vectors
// The CPU variants' 16-float vectors (GCC vector extensions: one zmm register with AVX-512;
// elsewhere each operation is split into ymm or xmm pieces, but a v16 variable, having no
// machine mode there, lives in memory: register-blocked loops use the native vn below) and
// the float functions they need. Host build only.
#if defined(CUNET_HOST)
namespace cunet::simd {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));   // unaligned access
typedef int v16i __attribute__((vector_size(64)));

// The native vector: 16 floats with AVX-512, 8 with AVX, 4 otherwise (SSE, NEON). A 64-byte
// GCC vector has no machine mode below AVX-512, so GCC keeps arrays of v16 in memory, not in
// registers: the FMA cores (conv.cuh's gemm_tile and dot_block) accumulate in native
// vectors, which it keeps in registers on every ISA (with AVX-512, vn is v16).
#if defined(__AVX512F__)
#define CUNET_LANES 16
#elif defined(__AVX__)
#define CUNET_LANES 8
#else
#define CUNET_LANES 4
#endif
constexpr int kLanes = CUNET_LANES;
typedef float vn __attribute__((vector_size(4 * kLanes)));
typedef float vnu __attribute__((vector_size(4 * kLanes), aligned(4), may_alias));
typedef int vni __attribute__((vector_size(4 * kLanes)));
inline vn loadn(const float* p) { return *reinterpret_cast<const vnu*>(p); }
inline void storen(float* p, vn v) { *reinterpret_cast<vnu*>(p) = v; }
inline vn splatn(float s) {   // (not vn{} + s: 0 + s is an add, since 0 + -0 = +0)
#if CUNET_LANES == 16
    return vn{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
#elif CUNET_LANES == 8
    return vn{s, s, s, s, s, s, s, s};
#else
    return vn{s, s, s, s};
#endif
}
// Lanes of the concatenation (a, b): the even ones, the odd ones; (0, a) one lane right (a
// zero enters at lane 0), (a, 0) one lane left (a zero enters at the top lane).
// The interleaving of (a, b): a0 b0 a1 b1 ..., its low and high halves.
#if CUNET_LANES == 16
#define CUNET_LANE_PATTERNS {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}, \
                            {15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30}, \
                            {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, \
                            {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23}
#elif CUNET_LANES == 8
#define CUNET_LANE_PATTERNS {0, 2, 4, 6, 8, 10, 12, 14}, {7, 8, 9, 10, 11, 12, 13, 14}, {1, 2, 3, 4, 5, 6, 7, 8}, \
                            {0, 8, 1, 9, 2, 10, 3, 11}
#else
#define CUNET_LANE_PATTERNS {0, 2, 4, 6}, {3, 4, 5, 6}, {1, 2, 3, 4}, {0, 4, 1, 5}
#endif
struct LanePatterns {
    vni even, right, left, zip;
};
inline constexpr LanePatterns kLanePatterns = {CUNET_LANE_PATTERNS};
#undef CUNET_LANE_PATTERNS
inline vn even_lanes(vn a, vn b) { return __builtin_shuffle(a, b, kLanePatterns.even); }
inline vn odd_lanes(vn a, vn b) { return __builtin_shuffle(a, b, kLanePatterns.even + 1); }
inline vn shift_right_in0(vn a) { return __builtin_shuffle(vn{}, a, kLanePatterns.right); }
inline vn shift_left_in0(vn a) { return __builtin_shuffle(a, vn{}, kLanePatterns.left); }
inline vn zip_lo(vn a, vn b) { return __builtin_shuffle(a, b, kLanePatterns.zip); }
inline vn zip_hi(vn a, vn b) { return __builtin_shuffle(a, b, kLanePatterns.zip + kLanes / 2); }

inline v16 load16(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void store16(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }
inline v16 splat(float s) { return v16{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }
inline v16 vmax(v16 a, v16 b) { return a > b ? a : b; }
// the sum of the 16 lanes, as a tree (halves added, then quarters)
inline float hsum16(v16 v) {
    typedef float v8 __attribute__((vector_size(32)));
    typedef float v4 __attribute__((vector_size(16)));
    v8 lo, hi;
    std::memcpy(&lo, &v, 32);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + 32, 32);
    lo += hi;
    v4 a, b;
    std::memcpy(&a, &lo, 16);
    std::memcpy(&b, reinterpret_cast<const char*>(&lo) + 16, 16);
    a += b;
    return (a[0] + a[2]) + (a[1] + a[3]);
}
// the first m lanes of p (m < 16: the rest zero), and their store
inline v16 load_part(const float* p, int64_t m) {
    if (m >= 16) return load16(p);
    v16 v = v16{};
    std::memcpy(&v, p, 4 * m);
    return v;
}
inline void store_part(float* p, v16 v, int64_t m) {
    if (m >= 16) return store16(p, v);
    std::memcpy(p, &v, 4 * m);
}

// e^x, relative error ~1e-7 (Cephes expf: x = k ln2 + r, |r| <= ln2/2, degree-6 polynomial);
// 0 below -87.3 (where float e^x is denormal), +inf above 88.7, NaN stays NaN.
inline v16 exp16(v16 x) {
    const v16 hi = splat(88.72283f), lo = splat(-87.33654f);
    const v16 xc = x > hi ? hi : x < lo ? lo : x;
    const v16 fk = xc * splat(1.44269504088896341f) + splat(0.5f);
    v16i k = __builtin_convertvector(fk, v16i);
    k += __builtin_convertvector(k, v16) > fk;   // floor: the conversion truncates; true is -1
    const v16 kf = __builtin_convertvector(k, v16);
    const v16 r = xc - kf * splat(0.693359375f) + kf * splat(2.12194440e-4f);
    v16 p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.0f);
    v16 s1, s2;   // 2^k as 2^(k/2) 2^(k - k/2): both normal for k in [-126, 128]
    const v16i h = k >> 1, b1 = (h + 127) << 23, b2 = (k - h + 127) << 23;
    std::memcpy(&s1, &b1, 64);
    std::memcpy(&s2, &b2, 64);
    v16 out = p * s1 * s2;
    out = x < lo ? v16{} : out;
    out = x > hi ? splat(__builtin_inff()) : out;
    return x != x ? x : out;
}

// log x for x > 0 normal (Cephes logf: x = m 2^e, m in [sqrt(1/2), sqrt(2)), degree-8 polynomial).
inline v16 log16(v16 x) {
    v16i bits;
    std::memcpy(&bits, &x, 64);
    v16i e = ((bits >> 23) & 0xff) - 126;
    const v16i mb = (bits & 0x007fffff) | 0x3f000000;   // mantissa in [0.5, 1)
    v16 m;
    std::memcpy(&m, &mb, 64);
    const v16i small = m < splat(0.707106781186547524f);
    e += small;   // -1 where small
    m = (small ? m + m : m) - splat(1.0f);
    const v16 z = m * m;
    v16 y = splat(7.0376836292e-2f);
    y = y * m + splat(-1.1514610310e-1f);
    y = y * m + splat(1.1676998740e-1f);
    y = y * m + splat(-1.2420140846e-1f);
    y = y * m + splat(1.4249322787e-1f);
    y = y * m + splat(-1.6668057665e-1f);
    y = y * m + splat(2.0000714765e-1f);
    y = y * m + splat(-2.4999993993e-1f);
    y = y * m + splat(3.3333331174e-1f);
    const v16 ef = __builtin_convertvector(e, v16);
    y = y * m * z + ef * splat(-2.12194440e-4f) - splat(0.5f) * z;
    return m + y + ef * splat(0.693359375f);
}

}  // namespace cunet::simd
#endif
