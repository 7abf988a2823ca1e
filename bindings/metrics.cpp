#include "bind.h"

void cunet::bind_metrics(py::module_& m) {
    CUNET_DEF(confusion_histogram, [](int64_t n, int64_t K, P pred, P target, P tp, P fp, P fn) {
        cunet::confusion_histogram(n, K, ptr<const int64_t>(pred), ptr<const int64_t>(target), ptr<int64_t>(tp),
                                   ptr<int64_t>(fp), ptr<int64_t>(fn)); });
}
