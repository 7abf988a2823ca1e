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
// A raw pointer from Python: None (null), an int (an address), or an object with the buffer
// protocol, a contiguous NumPy array, whose data pointer is read without the ctypes objects
// `a.ctypes.data` builds (about 20 us per kernel call in cunet._ops.core.run).
struct P {
    uintptr_t v = 0;
};
namespace pybind11::detail {
template <>
struct type_caster<P> {
    PYBIND11_TYPE_CASTER(P, const_name("pointer"));
    bool load(handle src, bool) {
        if (src.is_none()) return value.v = 0, true;
        if (PyLong_Check(src.ptr())) {
            value.v = (uintptr_t)PyLong_AsUnsignedLongLong(src.ptr());
            if (!PyErr_Occurred()) return true;
            PyErr_Clear();
            return false;
        }
        Py_buffer view;
        if (PyObject_GetBuffer(src.ptr(), &view, PyBUF_ANY_CONTIGUOUS) != 0) {
            PyErr_Clear();
            return false;
        }
        value.v = reinterpret_cast<uintptr_t>(view.buf);
        PyBuffer_Release(&view);
        return true;
    }
    static handle cast(P, return_value_policy, handle) { return none().release(); }
};
}  // namespace pybind11::detail
inline const float* cf(P p) { return reinterpret_cast<const float*>(p.v); }
inline float* f(P p) { return reinterpret_cast<float*>(p.v); }
template <class T> inline T* ptr(P p) { return reinterpret_cast<T*>(p.v); }

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
