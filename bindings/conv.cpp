#include "bind.h"

// precision: 0 fp32, 1 tf32, 2 bf16 (cunet/_ops/conv.py maps the names). C1: channels of x
// (dx); x2 (dx2) holds channels [C1, Ci), the concat read in place (0 and C1 = Ci without).
// conv_backward_weight's db (null or Co floats): the bias gradient with it (fused on the CPU).
void cunet::bind_conv(py::module_& m) {
    CUNET_DEF(conv_forward, [](CUNET_CONV_DIMS, int64_t C1, P x, P x2, P w, P b, P y, int precision, bool relu) {
        cunet::conv_forward_cat(CUNET_CONV_ARGS, C1, cf(x), cf(x2), cf(w), cf(b), f(y), precision, relu); });
    CUNET_DEF(conv_backward_data, [](CUNET_CONV_DIMS, int64_t C1, P dy, P w, P b, P dx, P dx2, P mask, int precision) {
        cunet::conv_backward_data_cat(CUNET_CONV_ARGS, C1, cf(dy), cf(w), cf(b), f(dx), f(dx2), cf(mask), precision); });
    CUNET_DEF(conv_backward_weight, [](CUNET_CONV_DIMS, int64_t C1, P dy, P x, P x2, P dw, P db, int precision) {
        cunet::conv_backward_weight_cat(CUNET_CONV_ARGS, C1, cf(dy), cf(x), cf(x2), f(dw), precision, nullptr, f(db)); });
    CUNET_DEF(channel_sum, [](int64_t N, int64_t C, int64_t S, P x, P out) {
        cunet::channel_sum(N, C, S, cf(x), f(out)); });
    m.def("conv_wgrad_slice", &cunet::conv_wgrad_slice,
          "K per slice of the tiled weight gradient for GEMM sizes (M, Nn, K): the CuPy path's split.");
    m.def("conv_tiled_grid", [](CUNET_CONV_DIMS, int pass) { return cunet::conv_tiled_grid(CUNET_CONV_ARGS, pass); },
          "Blocks of a tiled launch (pass 0 forward, 1 data, 2 weight per slice) for the 21 conv dims; "
          "ValueError where a size reaches the kernels' 32-bit indices: the CuPy path's grid.");
}
