// cunet._native: the kernels' launchers on raw pointers, for cunet.ops.
//
// Pointers arrive as integers (numpy: arr.ctypes.data; cupy with the CUDA build:
// arr.data.ptr), shapes as ints, in the order of the kernel's own parameters;
// cunet.ops has validated them. No logic here: one m.def per launcher, the GIL
// released while the kernel runs. One file per kernel family (bindings/<family>.cpp),
// each the only includer of its kernels/<family>.cuh.
#include "bind.h"

PYBIND11_MODULE(_native, m) {
    m.doc() = "cunet kernels (host build unless CUNET_CUDA=1), launched on raw pointers";
#if defined(CUNET_GPU)
    m.attr("build") = "cuda";
#else
    m.attr("build") = "host";
#endif
    m.def("set_emulate_blocks", [](bool on) { cunet::emulate_blocks() = on; },
          "Run cooperative kernels through the host block emulation (GPU block size) instead of one thread per block.");
    m.def("emulate_blocks", []() { return cunet::emulate_blocks(); });
    m.def("set_host_variants", [](bool on) { cunet::host_variants() = on; },
          "Host build: run the launchers' CPU variants (conv, concat, channel sums; default) instead of the "
          "portable kernels.");
    m.def("host_variants", []() { return cunet::host_variants(); });
    for (auto bind : cunet::bind_families) bind(m);
}
