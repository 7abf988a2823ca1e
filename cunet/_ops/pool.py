"""Max pooling: kernels/pool.cuh."""
import numpy as np

from cunet import _check
from cunet._ops.core import empty, f32, lift, loop, register, run, zeros
from cunet.reference import _maxpool_args, _maxpool_backward_args

register("pool", "maxpool_forward", "maxpool_backward")


def maxpool_forward(x, kernel=2, stride=None, padding=0):
    kernel, stride, padding, out = _maxpool_args(x, kernel, stride, padding)
    f32("x", x)
    y = empty(x, x.shape[:2] + out)
    argmax = empty(x, y.shape, np.int64)
    run("maxpool_forward", loop(y.size), x.shape[0] * x.shape[1], *lift(x.shape[2:], 1), *lift(out, 1),
        *lift(kernel, 1), *lift(stride, 1), *lift(padding, 0), x, y, argmax)
    return y, argmax


def maxpool_backward(dy, argmax, x_shape, out=None):
    """dx of x_shape; out (an array of x_shape, dy's dtype and device): the gradient is added
    into it in place and out returned, e.g. the gradient another path already brought to
    the pool's input (a UNet's skip), without a zeroed dx and a separate add."""
    _check.array("argmax", argmax, dtype=np.int64)   # the kernel reads int64 indices
    x_shape, plane = _maxpool_backward_args(dy, argmax, x_shape, out)
    f32("dy", dy)
    dx = zeros(dy, x_shape) if out is None else f32("out", out)
    nc = x_shape[0] * x_shape[1]
    run("maxpool_backward", loop(dy.size), nc, plane, dy.size // max(nc, 1), dy, argmax, dx)
    return dx
