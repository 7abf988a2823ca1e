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
//   CUNET_LAUNCH(kernel, grid, block, stream, args...)   launcher side, not under NVRTC
#pragma once

#if defined(__CUDACC_RTC__)
// NVRTC: no standard headers.
typedef long long int64_t;
typedef unsigned long long uint64_t;
typedef unsigned int uint32_t;
#elif defined(__CUDACC__)
#include <cstdint>
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

// [begin, end) of this block's share of n items split into gridDim.x contiguous chunks.
__device__ __forceinline__ void block_range(int64_t n, int64_t& begin, int64_t& end) {
    const int64_t chunk = (n + gridDim.x - 1) / gridDim.x;
    begin = (int64_t)blockIdx.x * chunk;
    end = begin + chunk < n ? begin + chunk : n;
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
// (conv, concat, channel sums) run it (default, fast) or the portable kernel as on the GPU
// (tests run both). Ignored on the GPU.
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
