// cunet._native: the kernels' launchers on raw pointers, for cunet.ops.
//
// A thin layer over libcunet (bindings/cunet.h; cunet/lib/libcunet.so, found through the
// rpath $ORIGIN/lib), the same compiled kernels C++ programs link; the library's sources
// are bindings/lib/<family>.cpp. Pointers arrive as integers (numpy: arr.ctypes.data;
// cupy with the CUDA build: arr.data.ptr), shapes as ints, in the order of the kernel's
// own parameters; cunet.ops has validated them. No logic here: one m.def per launcher,
// the GIL released while the kernel runs, one file per kernel family (bindings/<family>.cpp).
#include "bind.h"

PYBIND11_MODULE(_native, m) {
    m.doc() = "cunet kernels (host build unless CUNET_CUDA=1), launched on raw pointers";
    m.attr("build") = cunet::ops::build();   // "host" or "cuda": the library's build
    m.def("set_emulate_blocks", &cunet::ops::set_emulate_blocks,
          "Run cooperative kernels through the host block emulation (GPU block size) instead of one thread per block.");
    m.def("emulate_blocks", &cunet::ops::emulate_blocks);
    m.def("set_host_variants", &cunet::ops::set_host_variants,
          "Host build: run the launchers' CPU variants (default; each kernel file's header names them) "
          "instead of the portable kernels.");
    m.def("host_variants", &cunet::ops::host_variants);
    for (auto bind : cunet::bind_families) bind(m);
}
