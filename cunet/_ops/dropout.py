"""Dropout: kernels/dropout.cuh."""
import numpy as np

from cunet import _check
from cunet._ops.core import empty, f32, loop, register, run
from cunet.reference import _dropout_args

register("dropout", "dropout_forward", "dropout_forward_seeded")   # backward = the same kernels on dy

__all__ = ["dropout_forward", "dropout_backward", "dropout_forward_seeded", "dropout_backward_seeded", "seed_halves"]


def _dropout(kernel, name, a, p, seed):
    _check.array(name, a)
    _dropout_args(p, seed)
    f32(name, a)
    seed = int(seed)
    out = empty(a, a.shape)
    # the seed as two int64 halves: a Python int up to 2**64-1 fits no int64_t
    run(kernel, loop(a.size), a.size, a, out, float(p), *seed_halves(seed))
    return out


def seed_halves(seed):
    """(lo, hi): a 64-bit seed as the two 32-bit halves the kernels take (as int64)."""
    return seed & 0xFFFFFFFF, seed >> 32


def dropout_forward(x, p, seed):
    return _dropout("dropout_forward", "x", x, p, seed)


def dropout_backward(dy, p, seed):
    return _dropout("dropout_forward", "dy", dy, p, seed)


def _seeded(kernel, name, a, p, seed):
    _check.array(name, a)
    _check.number("p", p, 0.0, 1.0, hi_open=True)
    f32(name, a)
    _check.array("seed", seed, ndim=1, dtype=np.int64)
    _check.same_device("seed", seed, name, a)
    if seed.shape != (2,):
        raise ValueError(f"seed: expected shape (2,) = [seed_lo, seed_hi] (see seed_halves), got {seed.shape}")
    out = empty(a, a.shape)
    run(kernel, loop(a.size), a.size, a, out, float(p), seed)
    return out


def dropout_forward_seeded(x, p, seed):
    """dropout_forward with the seed read from device memory: seed (2,) int64 =
    seed_halves(s) on x's device gives the mask of dropout_forward(x, p, s). A captured
    CUDA graph rereads the buffer at every replay, so the host can change the seed."""
    return _seeded("dropout_forward_seeded", "x", x, p, seed)


def dropout_backward_seeded(dy, p, seed):
    return _seeded("dropout_forward_seeded", "dy", dy, p, seed)
