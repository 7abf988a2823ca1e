#include "bind.h"
#include "../kernels/conv.cuh"

// precision: 0 fp32, 1 tf32, 2 bf16 (cunet/_ops/conv.py maps the names)
void cunet::bind_conv(py::module_& m) {
    CUNET_DEF(conv_forward, [](CUNET_CONV_DIMS, P x, P w, P b, P y, int precision, bool relu) {
        cunet::conv_forward(CUNET_CONV_ARGS, cf(x), cf(w), cf(b), f(y), precision, relu); });
    CUNET_DEF(conv_backward_data, [](CUNET_CONV_DIMS, P dy, P w, P b, P dx, int precision) {
        cunet::conv_backward_data(CUNET_CONV_ARGS, cf(dy), cf(w), cf(b), f(dx), precision); });
    CUNET_DEF(conv_backward_weight, [](CUNET_CONV_DIMS, P dy, P x, P dw, int precision) {
        cunet::conv_backward_weight(CUNET_CONV_ARGS, cf(dy), cf(x), f(dw), precision); });
    CUNET_DEF(channel_sum, [](int64_t N, int64_t C, int64_t S, P x, P out) {
        cunet::channel_sum(N, C, S, cf(x), f(out)); });
    m.def("conv_wgrad_slice", &cunet::conv_wgrad_slice,
          "K per slice of the tiled weight gradient for GEMM sizes (M, Nn, K): the CuPy path's split.");
}
