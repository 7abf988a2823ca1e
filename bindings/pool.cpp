#include "bind.h"

void cunet::bind_pool(py::module_& m) {
    CUNET_DEF(maxpool_forward, [](int64_t NC, int64_t D, int64_t H, int64_t W, int64_t Do, int64_t Ho, int64_t Wo,
                                  int64_t KD, int64_t KH, int64_t KW, int64_t SD, int64_t SH, int64_t SW, int64_t PD,
                                  int64_t PH, int64_t PW, P x, P y, P argmax) {
        cunet::maxpool_forward(NC, D, H, W, Do, Ho, Wo, KD, KH, KW, SD, SH, SW, PD, PH, PW, cf(x), f(y),
                               ptr<int64_t>(argmax)); });
    CUNET_DEF(maxpool_backward, [](int64_t NC, int64_t plane, int64_t out_plane, P dy, P argmax, P dx) {
        cunet::maxpool_backward(NC, plane, out_plane, cf(dy), ptr<const int64_t>(argmax), f(dx)); });
}
