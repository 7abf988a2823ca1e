#include "bind.h"

void cunet::bind_dropout(py::module_& m) {
    CUNET_DEF(dropout_forward, [](int64_t n, P x, P y, float p, int64_t seed_lo, int64_t seed_hi) {
        cunet::dropout_forward(n, cf(x), f(y), p, seed_lo, seed_hi); });
    CUNET_DEF(dropout_forward_seeded, [](int64_t n, P x, P y, float p, P seed) {
        cunet::dropout_forward_seeded(n, cf(x), f(y), p, ptr<const int64_t>(seed)); });
}
