// A C++ user's program: includes kernels/cunet.cuh alone, runs a 3x3 box-filter conv and
// a ReLU on the host and checks them. Built and run by tests/test_compile.py.
#include <cstdio>
#include <vector>
#include "../../kernels/cunet.cuh"

int main() {
    // x (1, 1, 3, 3) of ones, w (1, 1, 3, 3) of ones, padding 1: counts of in-image taps
    std::vector<float> x(9, 1.0f), w(9, 1.0f), y(9), r(9);
    cunet::conv_forward(1, 1, 1, 1, 3, 3, 1, 3, 3, 1, 3, 3, 1, 1, 1, 0, 1, 1, 1, 1, 1, x.data(), w.data(), nullptr,
                        y.data());
    const float want[9] = {4, 6, 4, 6, 9, 6, 4, 6, 4};
    for (int i = 0; i < 9; ++i)
        if (y[i] != want[i]) { std::printf("conv at %d: %g != %g\n", i, y[i], want[i]); return 1; }
    for (float& v : y) v -= 5.0f;
    cunet::relu_forward(9, y.data(), r.data());
    for (int i = 0; i < 9; ++i)
        if (r[i] != (want[i] > 5 ? want[i] - 5 : 0)) { std::printf("relu at %d\n", i); return 1; }
    std::printf("ok\n");
    return 0;
}
