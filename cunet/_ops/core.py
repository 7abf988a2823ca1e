"""Dispatch of a kernel call to the device the arrays live on.

    run(name, geometry, *args)

`args` are the kernel's own parameters in order: arrays (passed as pointers) and
Python ints (int64_t) / floats (float). NumPy arrays go to cunet._native, whose
launcher of the same name picks its own host geometry; CuPy arrays go to the kernel
of that name in the family's RawModule, compiled by NVRTC, launched with `geometry`:

    loop(n)    grid-stride loop kernel over n items
    coop(g)    cooperative kernel: g blocks of K_BLOCK threads (kernels/portable.cuh kBlock)
"""
import functools
import math
import os
import sys
import re
from pathlib import Path

import numpy as np

K_BLOCK = 256               # must equal cunet::kBlock in kernels/portable.cuh
NVRTC_OPTIONS = ("-std=c++17",)   # the CuPy path's options; the compile tests use exactly these

# kernel name -> family (file kernels/<family>.cuh); filled by the family modules
FAMILY = {}


def register(family, *names):
    for n in names:
        FAMILY[n] = family


def kernel_dir():
    """kernels/ of an installed package, or of the source tree for an editable install."""
    here = Path(__file__).resolve().parent.parent
    for d in (here / "kernels", here.parent / "kernels"):
        if (d / "portable.cuh").exists():
            return d
    raise FileNotFoundError(f"cunet kernels not found next to {here}")


def source(family):
    """kernels/<family>.cuh with every `#include "x.cuh"` pasted in once, so the text
    handed to NVRTC (and CuPy's cache key) changes whenever any included header does."""
    seen = set()

    def paste(name):
        if name in seen:
            return ""
        seen.add(name)
        text = (kernel_dir() / name).read_text()
        text = text.replace("#pragma once", "")
        return re.sub(r'#include\s+"([^"]+)"', lambda m: paste(m.group(1)), text)

    return paste(f"{family}.cuh")


@functools.lru_cache(maxsize=None)
def module(family):
    import cupy
    return cupy.RawModule(code=source(family), options=NVRTC_OPTIONS)


@functools.lru_cache(maxsize=None)
def function(name):
    """The compiled kernel `name` (looked up once, not on every launch)."""
    return module(FAMILY[name]).get_function(name)


def loop(n):
    return (max(1, min((int(n) + K_BLOCK - 1) // K_BLOCK, 65535 * 8)), K_BLOCK)


def coop(g):
    return (max(1, int(g)), K_BLOCK)


@functools.lru_cache(maxsize=None)
def native():
    from cunet import _native
    return _native


def is_cupy(a):
    return type(a).__module__.startswith("cupy")


def run(name, geometry, *args):
    first = next(a for a in args if hasattr(a, "dtype") and hasattr(a, "shape"))
    if not is_cupy(first):   # the binding takes arrays (their data pointer) and None (null) as they are
        getattr(native(), name)(*args)
        return
    grid, block = geometry
    conv = []
    for a in args:
        if is_cupy(a):
            conv.append(a)
        elif isinstance(a, (bool, np.bool_)):
            conv.append(np.int64(a))
        elif isinstance(a, (int, np.integer)):
            conv.append(np.int64(a))
        elif isinstance(a, (float, np.floating)):
            conv.append(np.float32(a))
        elif a is None:
            conv.append(np.uint64(0))   # a null pointer
        else:
            raise TypeError(f"cannot pass {type(a).__name__} to kernel {name}")
    function(name)((grid,), (block,), tuple(conv))


class _HostPool:
    """Reuse of large host arrays. A fresh multi-MiB np.empty is a new mapping whose pages the
    OS zeroes on first write (about 5% of a 2d-128 training step went to that); the arrays
    empty() hands out are kept here and handed out again once nothing else refers to them
    (the pool's list is then their only owner). Buffers are flat and keyed by size, so one
    serves every shape of that many bytes (handed out as a reshaped view, which keeps the
    buffer referenced). At most CAP bytes are kept: past it, the free ones are dropped
    (environment CUNET_HOST_POOL_MB, default 4096; 0 turns the pool off). The price is
    memory: free buffers wait for their size (2d-128 UNet training: 244 -> 284 MiB peak, 6%
    faster). Not thread-safe across Python threads sharing arrays (none do)."""
    MIN, CAP = 1 << 20, int(os.environ.get("CUNET_HOST_POOL_MB", "4096")) << 20

    def __init__(self):
        self.arrays, self.bytes = {}, 0

    def get(self, shape, dtype):
        dtype = np.dtype(dtype)
        size = math.prod(shape) * dtype.itemsize
        if size < self.MIN or size > self.CAP:
            return np.empty(shape, dtype)
        same = self.arrays.setdefault((size, dtype.str), [])
        for a in same:
            if sys.getrefcount(a) == 3:   # the list, the loop variable, the call's argument
                return a.reshape(shape)
        if self.bytes + size > self.CAP:
            self.drop_free()
        a = np.empty(size // dtype.itemsize, dtype)
        same.append(a)
        self.bytes += size
        return a.reshape(shape)

    def drop_free(self):
        for key, same in self.arrays.items():
            keep = [a for a in same if sys.getrefcount(a) > 3]   # the list, the comprehension, the argument
            self.bytes -= sum(a.nbytes for a in same) - sum(a.nbytes for a in keep)
            self.arrays[key] = keep


_host_pool = _HostPool()


def _physical_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):   # no sysconf names: no limit known
        return math.inf


PHYSICAL_BYTES = _physical_bytes()


def empty(like, shape, dtype=np.float32):
    """A new array on the device of `like` (host: maybe a pooled one no longer referenced).
    A host result larger than the machine's memory is refused before anything is allocated
    (a huge stride or padding asked of a transposed conv, say), with its shape in the error."""
    if is_cupy(like):
        import cupy
        return cupy.empty(shape, dtype)
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if size > PHYSICAL_BYTES:
        raise ValueError(f"output of shape {tuple(shape)} would take {size / 2**30:.3g} GiB, more than this "
                         f"machine's {PHYSICAL_BYTES / 2**30:.3g} GiB of memory")
    return _host_pool.get(shape, dtype)


def zeros(like, shape, dtype=np.float32):
    if is_cupy(like):
        import cupy
        return cupy.zeros(shape, dtype)
    return np.zeros(shape, dtype)


def f32(name, a):
    """Kernels take contiguous float32: reject anything else with a clear error."""
    if a.dtype != np.float32:
        raise TypeError(f"{name}: cunet.ops kernels take float32, got {a.dtype} (cunet.reference takes float64)")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (use np.ascontiguousarray)")
    return a


def f32_all(**arrays):
    """f32 on every named array; None (an absent optional argument) passes."""
    for name, a in arrays.items():
        if a is not None:
            f32(name, a)


def ncs(a):
    """(N, C, S) of an (N, C, *spatial) array, S = prod(spatial): the kernels' flat layout."""
    return a.shape[0], a.shape[1], math.prod(a.shape[2:])


def set_host_variants(on):
    """Host build: launchers with a CPU-specific variant beside the portable kernel (conv
    forward/data/weight, concat, channel sums, maxpool forward, batch-norm normalize and data
    gradient) run it (default, fast) or the portable kernel that the GPU runs (tests compare
    both with the reference). No effect on CuPy arrays."""
    native().set_host_variants(bool(on))


def set_emulate_blocks(on):
    """Host build: run cooperative kernels through the fiber block emulation with their
    GPU block size (slow; tests) instead of one thread per block (fast)."""
    native().set_emulate_blocks(bool(on))


def lift(v, fill):
    """2D sizes -> 3D: the kernels treat 2D as a D axis of size (or step) `fill`."""
    return (fill,) + tuple(v) if len(v) == 2 else tuple(v)
