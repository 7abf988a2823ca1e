// Shared by the binding files: pointer helpers and the list of families.
//
// The binding files call the compiled library (libcunet, bindings/cunet.h), not the kernels:
// they include no kernel header, and `cunet::<op>` in them names cunet::ops::<op> through
// the using-directive below (qualified lookup reaches a nominated namespace only when the
// name is not declared in `cunet` itself, hence the guard).
#pragma once
#include <pybind11/pybind11.h>
#include "cunet.h"

#if defined(CUNET_HOST) || defined(CUNET_GPU)
#error "bindings/*.cpp call libcunet (bindings/cunet.h); a kernel header included here would compile the kernels twice"
#endif

namespace py = pybind11;
using P = uintptr_t;   // a raw pointer passed from Python as an integer
inline const float* cf(P p) { return reinterpret_cast<const float*>(p); }
inline float* f(P p) { return reinterpret_cast<float*>(p); }
template <class T> inline T* ptr(P p) { return reinterpret_cast<T*>(p); }

#define CUNET_DEF(name, ...) m.def(#name, __VA_ARGS__, py::call_guard<py::gil_scoped_release>())

namespace cunet {
using namespace ops;

void bind_act(py::module_& m);
void bind_conv(py::module_& m);
void bind_pool(py::module_& m);
void bind_upsample(py::module_& m);
void bind_concat(py::module_& m);
void bind_norm(py::module_& m);
void bind_dropout(py::module_& m);
void bind_loss(py::module_& m);
void bind_optim(py::module_& m);
void bind_metrics(py::module_& m);
inline void (*const bind_families[])(py::module_&) = {
    bind_act, bind_conv, bind_pool, bind_upsample, bind_concat,
    bind_norm, bind_dropout, bind_loss, bind_optim, bind_metrics,
};
}  // namespace cunet
