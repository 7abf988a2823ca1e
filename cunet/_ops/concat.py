"""Channel concatenation and split: kernels/concat.cuh."""
import numpy as np

from cunet import _check
from cunet._ops.core import empty, f32, loop, register, run
from cunet.reference import _check_concat_inputs, _concat_backward_args

register("concat", "concat_copy")


def concat_forward(xs):
    _check_concat_inputs(xs)
    for i, a in enumerate(xs):
        f32(f"xs[{i}]", a)
        _check.same_device(f"xs[{i}]", a, "xs[0]", xs[0])
    n, spatial = xs[0].shape[0], xs[0].shape[2:]
    s = int(np.prod(spatial, dtype=np.int64))
    total = sum(a.shape[1] for a in xs)
    y = empty(xs[0], (n, total) + spatial)
    off = 0
    for a in xs:
        run("concat_copy", loop(a.size), n, a.shape[1], s, a, a.shape[1], 0, y, total, off)
        off += a.shape[1]
    return y


def concat_backward(dy, channels):
    channels = _concat_backward_args(dy, channels)
    f32("dy", dy)
    n, spatial = dy.shape[0], dy.shape[2:]
    s = int(np.prod(spatial, dtype=np.int64))
    out, off = [], 0
    for c in channels:
        dx = empty(dy, (n, c) + spatial)
        run("concat_copy", loop(dx.size), n, c, s, dy, dy.shape[1], off, dx, c, 0)
        out.append(dx)
        off += c
    return tuple(out)
