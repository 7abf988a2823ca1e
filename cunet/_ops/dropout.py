"""Dropout: kernels/dropout.cuh."""
from cunet import _check
from cunet._ops.core import empty, f32, loop, register, run
from cunet.reference import _dropout_args

register("dropout", "dropout_forward", "dropout_backward")

__all__ = ["dropout_forward", "dropout_backward"]


def _dropout(kernel, name, a, p, seed):
    _check.array(name, a)
    _dropout_args(p, seed)
    f32(name, a)
    seed = int(seed)
    out = empty(a, a.shape)
    # the seed as two int64 halves: a Python int up to 2**64-1 fits no int64_t
    run(kernel, loop(a.size), a.size, a, out, float(p), seed & 0xFFFFFFFF, seed >> 32)
    return out


def dropout_forward(x, p, seed):
    return _dropout("dropout_forward", "x", x, p, seed)


def dropout_backward(dy, p, seed):
    return _dropout("dropout_backward", "dy", dy, p, seed)
