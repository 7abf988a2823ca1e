#include "bind.h"

void cunet::bind_act(py::module_& m) {
    CUNET_DEF(relu_forward, [](int64_t n, P x, P y) { cunet::relu_forward(n, cf(x), f(y)); });
    CUNET_DEF(relu_backward, [](int64_t n, P dy, P y, P dx) { cunet::relu_backward(n, cf(dy), cf(y), f(dx)); });
    CUNET_DEF(leaky_relu_forward, [](int64_t n, P x, P y, float s) { cunet::leaky_relu_forward(n, cf(x), f(y), s); });
    CUNET_DEF(leaky_relu_backward, [](int64_t n, P dy, P x, P dx, float s) {
        cunet::leaky_relu_backward(n, cf(dy), cf(x), f(dx), s); });
    CUNET_DEF(sigmoid_forward, [](int64_t n, P x, P y) { cunet::sigmoid_forward(n, cf(x), f(y)); });
    CUNET_DEF(sigmoid_backward, [](int64_t n, P dy, P y, P dx) { cunet::sigmoid_backward(n, cf(dy), cf(y), f(dx)); });
    CUNET_DEF(softmax_forward, [](int64_t N, int64_t C, int64_t S, P x, P y) {
        cunet::softmax_forward(N, C, S, cf(x), f(y)); });
    CUNET_DEF(softmax_backward, [](int64_t N, int64_t C, int64_t S, P dy, P y, P dx) {
        cunet::softmax_backward(N, C, S, cf(dy), cf(y), f(dx)); });
    CUNET_DEF(bias_add, [](int64_t N, int64_t C, int64_t S, P b, P y) { cunet::bias_add(N, C, S, cf(b), f(y)); });
}
