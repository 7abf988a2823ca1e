#include "bind.h"

void cunet::bind_upsample(py::module_& m) {
#define BIND(name)                                                                                      \
    CUNET_DEF(name, [](int64_t NC, int64_t D, int64_t H, int64_t W, int64_t SD, int64_t SH, int64_t SW, \
                       P in, P out) { cunet::name(NC, D, H, W, SD, SH, SW, cf(in), f(out)); })
    BIND(upsample_nearest_forward);
    BIND(upsample_nearest_backward);
    BIND(upsample_linear_forward);
    BIND(upsample_linear_backward);
#undef BIND
}
