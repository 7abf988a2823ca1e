#include "bind.h"

void cunet::bind_concat(py::module_& m) {
    CUNET_DEF(concat_copy, [](int64_t N, int64_t C, int64_t S, P src, int64_t src_C, int64_t src_off, P dst,
                              int64_t dst_C, int64_t dst_off) {
        cunet::concat_copy(N, C, S, cf(src), src_C, src_off, f(dst), dst_C, dst_off); });
}
