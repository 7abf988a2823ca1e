// cunet.h: the public C++ API of libcunet, the compiled kernels shared by the pybind11
// module cunet._native and by C++ programs. Needs no kernel source and no CUDA header.
//
//   #include "bindings/cunet.h"            link: -lcunet (CMake: cunet::cunet)
//   float* y = (float*)cunet::ops::device_alloc(n * sizeof(float));
//   cunet::ops::relu_forward(n, x, y, stream);
//
// Every launcher of kernels/<family>.cuh, same name, same arguments (sizes, then pointers,
// then options, as the kernels take them), on raw pointers, the stream last:
//   - host build (g++ -fopenmp): pointers are host memory, `stream` is ignored, calls return
//     when the work is done;
//   - CUDA build (nvcc, CUNET_CUDA): pointers are device memory, `stream` is a cudaStream_t
//     (null: the default stream), launches are asynchronous; `synchronize` waits.
// build() says which one this library is. The memory helpers below work with both, so a
// program written against them (bindings/cunet_runner.h) runs unchanged on either build.
// Shapes and layouts: the kernel files' headers (NC(D)HW float32, PyTorch weight layouts).
// Errors (a failed launch, an allocation or copy that fails) throw std::runtime_error.
#pragma once
#include <cstddef>
#include <cstdint>

#define CUNET_API __attribute__((visibility("default")))

// The conv geometry, as in kernels/conv.cuh (token for token: the library's conv source
// sees both definitions). x (N, Ci, D, H, W), w (Co, Ci, KD, KH, KW), y (N, Co, Do, Ho, Wo);
// strides S*, paddings P*, dilations D*; 2D is D = KD = SD = DD = 1, PD = 0.
#define CUNET_CONV_DIMS                                                                             \
    int64_t N, int64_t Ci, int64_t Co, int64_t D, int64_t H, int64_t W, int64_t Do, int64_t Ho,   \
    int64_t Wo, int64_t KD, int64_t KH, int64_t KW, int64_t SD, int64_t SH, int64_t SW,           \
    int64_t PD, int64_t PH, int64_t PW, int64_t DD, int64_t DH, int64_t DW
#define CUNET_CONV_ARGS N, Ci, Co, D, H, W, Do, Ho, Wo, KD, KH, KW, SD, SH, SW, PD, PH, PW, DD, DH, DW

namespace cunet::ops {

// ---- the library
CUNET_API const char* build();   // "host" or "cuda"

// Memory the launchers take: device memory in the CUDA build, host memory in the host build.
CUNET_API void* device_alloc(size_t bytes);   // throws on failure; 0 bytes: nullptr
CUNET_API void device_free(void* p);          // nullptr: no-op
CUNET_API void copy_to_device(void* dst, const void* src, size_t bytes, void* stream = nullptr);
CUNET_API void copy_to_host(void* dst, const void* src, size_t bytes, void* stream = nullptr);
CUNET_API void synchronize(void* stream = nullptr);   // wait for the stream's work (host: no-op)

// Host build switches (no effect in the CUDA build): cooperative kernels through the block
// emulation with the GPU block size; the launchers' CPU variants (kernels/<family>.cuh say which).
CUNET_API void set_emulate_blocks(bool on);
CUNET_API bool emulate_blocks();
CUNET_API void set_host_variants(bool on);
CUNET_API bool host_variants();

// ---- act: elementwise over n, softmax over C of (N, C, S), bias b (C,) added to y (N, C, S)
CUNET_API void relu_forward(int64_t n, const float* x, float* y, void* stream = nullptr);
CUNET_API void relu_backward(int64_t n, const float* dy, const float* y, float* dx, void* stream = nullptr);
CUNET_API void leaky_relu_forward(int64_t n, const float* x, float* y, float slope, void* stream = nullptr);
CUNET_API void leaky_relu_backward(int64_t n, const float* dy, const float* x, float* dx, float slope,
                                   void* stream = nullptr);
CUNET_API void sigmoid_forward(int64_t n, const float* x, float* y, void* stream = nullptr);
CUNET_API void sigmoid_backward(int64_t n, const float* dy, const float* y, float* dx, void* stream = nullptr);
CUNET_API void softmax_forward(int64_t N, int64_t C, int64_t S, const float* x, float* y, void* stream = nullptr);
CUNET_API void softmax_backward(int64_t N, int64_t C, int64_t S, const float* dy, const float* y, float* dx,
                                void* stream = nullptr);
CUNET_API void bias_add(int64_t N, int64_t C, int64_t S, const float* b, float* y, void* stream = nullptr);

// ---- conv (b may be null); channel_sum: out (C,) = sum of x (N, C, S) over N and S
// precision: 0 fp32, 1 tf32, 2 bf16 (the GEMM operands on the GPU; the host build's CPU
// variants compute fp32). relu: max(y, 0) fused into the forward's epilogue.
// *_cat: the input (x, or dx) given as two arrays, channels [0, C1) and [C1, Ci) (x2 / dx2):
// a concatenation read or written in place.
CUNET_API void conv_forward(CUNET_CONV_DIMS, const float* x, const float* w, const float* b, float* y,
                            int precision = 0, bool relu = false, void* stream = nullptr);
CUNET_API void conv_backward_data(CUNET_CONV_DIMS, const float* dy, const float* w, const float* b, float* dx,
                                  int precision = 0, void* stream = nullptr);
CUNET_API void conv_backward_weight(CUNET_CONV_DIMS, const float* dy, const float* x, float* dw,
                                    int precision = 0, void* stream = nullptr);
CUNET_API void conv_forward_cat(CUNET_CONV_DIMS, int64_t C1, const float* x, const float* x2, const float* w,
                                const float* b, float* y, int precision = 0, bool relu = false,
                                void* stream = nullptr);
// mask: null, or (C1 = Ci) the conv's input x when x is a ReLU's output: dx comes out as the
// gradient of that ReLU's input (0 where x <= 0), the separate relu_backward pass saved.
CUNET_API void conv_backward_data_cat(CUNET_CONV_DIMS, int64_t C1, const float* dy, const float* w, const float* b,
                                      float* dx, float* dx2, const float* mask = nullptr, int precision = 0,
                                      void* stream = nullptr);
// db: null, or (Co,) for the bias gradient (channel_sum of dy) as well, fused into the CPU
// variants' Winograd and patch weight gradients (which read dy anyway), else a channel_sum.
CUNET_API void conv_backward_weight_cat(CUNET_CONV_DIMS, int64_t C1, const float* dy, const float* x,
                                        const float* x2, float* dw, int precision = 0, void* stream = nullptr,
                                        float* db = nullptr);
CUNET_API int64_t conv_wgrad_slice(int64_t M, int64_t Nn, int64_t K);   // K per split-K slice (CuPy path)
// Blocks of the tiled kernels for pass 0 (forward), 1 (data), 2 (weight, one slice); throws
// std::invalid_argument where a size or coordinate reaches their 32-bit indices (CuPy path).
CUNET_API unsigned conv_tiled_grid(CUNET_CONV_DIMS, int pass);
CUNET_API void channel_sum(int64_t N, int64_t C, int64_t S, const float* x, float* out, void* stream = nullptr);

// ---- pool: x (NC, D, H, W) -> y, argmax (NC, Do, Ho, Wo) (flat index in the input plane)
CUNET_API void maxpool_forward(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t Do, int64_t Ho, int64_t Wo,
                               int64_t KD, int64_t KH, int64_t KW, int64_t SD, int64_t SH, int64_t SW, int64_t PD,
                               int64_t PH, int64_t PW, const float* x, float* y, int64_t* argmax,
                               void* stream = nullptr);
CUNET_API void maxpool_backward(int64_t NC, int64_t plane, int64_t out_plane, const float* dy,
                                const int64_t* argmax, float* dx, void* stream = nullptr);

// ---- upsample by integer factors (SD, SH, SW): in (NC, D, H, W) <-> out (NC, D*SD, H*SH, W*SW)
CUNET_API void upsample_nearest_forward(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD, int64_t SH,
                                        int64_t SW, const float* in, float* out, void* stream = nullptr);
CUNET_API void upsample_nearest_backward(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD, int64_t SH,
                                         int64_t SW, const float* in, float* out, void* stream = nullptr);
CUNET_API void upsample_linear_forward(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD, int64_t SH,
                                       int64_t SW, const float* in, float* out, void* stream = nullptr);
CUNET_API void upsample_linear_backward(int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD, int64_t SH,
                                        int64_t SW, const float* in, float* out, void* stream = nullptr);

// ---- concat: src (N, src_C, S) channels [src_off, src_off + C) -> dst (N, dst_C, S) from dst_off
CUNET_API void concat_copy(int64_t N, int64_t C, int64_t S, const float* src, int64_t src_C, int64_t src_off,
                           float* dst, int64_t dst_C, int64_t dst_off, void* stream = nullptr);

// ---- norm (batch norm over N and S of (N, C, S); per-channel vectors (C,))
// stats and backward reduce: partials over G slices per channel (workspace part, C*G*2
// floats; batchnorm_groups picks G), then a finalize over C
CUNET_API int64_t batchnorm_groups(int64_t N, int64_t C, int64_t S);
CUNET_API void batchnorm_stats_partials(int64_t N, int64_t C, int64_t S, int64_t G, const float* x, float* part,
                                        void* stream = nullptr);
CUNET_API void batchnorm_stats_finalize(int64_t N, int64_t C, int64_t S, int64_t G, const float* part, float* mean,
                                        float* invstd, float* running_mean, float* running_var, float momentum,
                                        float eps, void* stream = nullptr);
CUNET_API void batchnorm_eval_stats(int64_t C, const float* running_mean, const float* running_var, float* mean,
                                    float* invstd, float eps, void* stream = nullptr);
CUNET_API void batchnorm_normalize(int64_t N, int64_t C, int64_t S, const float* x, const float* mean,
                                   const float* invstd, const float* gamma, const float* beta, float* y,
                                   void* stream = nullptr);
CUNET_API void batchnorm_backward_partials(int64_t N, int64_t C, int64_t S, int64_t G, const float* dy,
                                           const float* x, const float* mean, const float* invstd, float* part,
                                           void* stream = nullptr);
CUNET_API void batchnorm_backward_finalize(int64_t C, int64_t G, const float* part, float* dgamma, float* dbeta,
                                           void* stream = nullptr);
CUNET_API void batchnorm_backward_data(int64_t N, int64_t C, int64_t S, const float* dy, const float* x,
                                       const float* mean, const float* invstd, const float* gamma,
                                       const float* dgamma, const float* dbeta, float* dx, int64_t training,
                                       void* stream = nullptr);

// ---- dropout: mask from (seed_lo, seed_hi) and the element index, kept values scaled 1/(1-p)
CUNET_API void dropout_forward(int64_t n, const float* x, float* y, float p, int64_t seed_lo, int64_t seed_hi,
                               void* stream = nullptr);
CUNET_API void dropout_backward(int64_t n, const float* dy, float* dx, float p, int64_t seed_lo, int64_t seed_hi,
                                void* stream = nullptr);
// *_seeded: the seed pair read from memory, seed[0..1] (a captured CUDA graph rereads it)
CUNET_API void dropout_forward_seeded(int64_t n, const float* x, float* y, float p, const int64_t* seed,
                                      void* stream = nullptr);
CUNET_API void dropout_backward_seeded(int64_t n, const float* dy, float* dx, float p, const int64_t* seed,
                                       void* stream = nullptr);

// ---- loss (partials: blocks x per-block sums; see kernels/loss.cuh)
CUNET_API void softmax_loss_partials(int64_t N, int64_t K, int64_t S, const float* logits, const int64_t* labels,
                                     const float* class_weights, float smooth, int64_t blocks, float* partials,
                                     void* stream = nullptr);
CUNET_API void sigmoid_loss_partials(int64_t N, int64_t K, int64_t S, const float* logits, const float* target,
                                     float smooth, int64_t blocks, float* partials, void* stream = nullptr);
CUNET_API void dice_loss_finalize(int64_t K, int64_t V, int64_t blocks, const float* partials, float smooth,
                                  int64_t voxel, int64_t first, float dice_weight, float ce_weight, float* coef,
                                  float* loss, void* stream = nullptr);
CUNET_API void softmax_loss_backward(int64_t N, int64_t K, int64_t S, const float* logits, const int64_t* labels,
                                     const float* class_weights, const float* coef, float smooth, int64_t voxel,
                                     float* dlogits, void* stream = nullptr);
CUNET_API void sigmoid_loss_backward(int64_t N, int64_t K, int64_t S, const float* logits, const float* target,
                                     const float* coef, float smooth, int64_t voxel, float* dlogits,
                                     void* stream = nullptr);
CUNET_API void regression_loss_partials(int64_t n, const float* output, const float* target, int64_t l1,
                                        int64_t blocks, float* grad, float* partials, void* stream = nullptr);
CUNET_API void regression_loss_finalize(int64_t n, int64_t blocks, const float* partials, float* loss,
                                        void* stream = nullptr);

// ---- optim (fused updates over a flat parameter buffer of n floats)
CUNET_API void sgd_update(int64_t n, float* param, const float* grad, float* velocity, float lr, float momentum,
                          int64_t nesterov, float weight_decay, float l1, void* stream = nullptr);
CUNET_API void adam_update(int64_t n, float* param, const float* grad, float* m, float* v, float lr,
                           float one_minus_beta1, float one_minus_beta2, float eps, float weight_decay, float l1,
                           int64_t decoupled, float bias_correction1, float bias_correction2_sqrt,
                           void* stream = nullptr);
// *_scalars: lr and the bias corrections read from memory (kernels/optim.cuh: scalars)
CUNET_API void sgd_update_scalars(int64_t n, float* param, const float* grad, float* velocity, const float* scalars,
                                  float momentum, int64_t nesterov, float weight_decay, float l1,
                                  void* stream = nullptr);
CUNET_API void adam_update_scalars(int64_t n, float* param, const float* grad, float* m, float* v,
                                   const float* scalars, float one_minus_beta1, float one_minus_beta2, float eps,
                                   float weight_decay, float l1, int64_t decoupled, void* stream = nullptr);
CUNET_API void norms_partials(int64_t n, const float* x, float* partials, void* stream = nullptr);
CUNET_API void norms_finalize(int64_t G, const float* partials, float* out, float w_abs, float w_sq,
                              void* stream = nullptr);

// ---- metrics: per-class true/false positive/negative counts (K,) of n labels
CUNET_API void confusion_histogram(int64_t n, int64_t K, const int64_t* pred, const int64_t* target, int64_t* tp,
                                   int64_t* fp, int64_t* fn, void* stream = nullptr);

}  // namespace cunet::ops
