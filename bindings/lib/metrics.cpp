// libcunet: kernels/metrics.cuh's launcher behind the declaration of bindings/cunet.h.
#include "lib.h"
#include "../../kernels/metrics.cuh"

namespace cunet::ops {
void confusion_histogram(int64_t n, int64_t K, const int64_t* pred, const int64_t* target, int64_t* tp, int64_t* fp,
                         int64_t* fn, void* s) {
    cunet::confusion_histogram(n, K, pred, target, tp, fp, fn, stream_of(s));
}
}  // namespace cunet::ops
