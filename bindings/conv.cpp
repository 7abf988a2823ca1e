#include "bind.h"

void cunet::bind_conv(py::module_& m) {
    CUNET_DEF(conv_forward, [](CUNET_CONV_DIMS, P x, P w, P b, P y) {
        cunet::conv_forward(CUNET_CONV_ARGS, cf(x), cf(w), cf(b), f(y)); });
    CUNET_DEF(conv_backward_data, [](CUNET_CONV_DIMS, P dy, P w, P b, P dx) {
        cunet::conv_backward_data(CUNET_CONV_ARGS, cf(dy), cf(w), cf(b), f(dx)); });
    CUNET_DEF(conv_backward_weight, [](CUNET_CONV_DIMS, P dy, P x, P dw) {
        cunet::conv_backward_weight(CUNET_CONV_ARGS, cf(dy), cf(x), f(dw)); });
    CUNET_DEF(channel_sum, [](int64_t N, int64_t C, int64_t S, P x, P out) {
        cunet::channel_sum(N, C, S, cf(x), f(out)); });
}
