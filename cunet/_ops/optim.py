"""Optimizer updates and parameter norms: kernels/optim.cuh."""
import math

import numpy as np

from cunet import _check
from cunet._ops.core import coop, empty, f32, f32_all, is_cupy, loop, register, run
from cunet.reference import _adam_args, _sgd_args

register("optim", "sgd_update", "adam_update", "sgd_update_scalars", "adam_update_scalars", "norms_partials",
         "norms_finalize")

__all__ = ["sgd_update", "adam_update", "sgd_update_scalars", "adam_update_scalars", "adam_scalars", "penalty",
           "sum_squares"]


def sgd_update(param, grad, velocity, lr, momentum=0.0, nesterov=False, weight_decay=0.0, l1=0.0):
    lr, mu, wd, l1 = _sgd_args(param, grad, velocity, lr, momentum, nesterov, weight_decay, l1)
    f32_all(param=param, grad=grad, velocity=velocity)
    run("sgd_update", loop(param.size), param.size, param, grad, velocity, lr, mu, int(nesterov), wd, l1)


def adam_update(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0, l1=0.0, decoupled=False):
    step, lr, b1, b2, eps, wd, l1 = _adam_args(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, l1,
                                               decoupled)
    f32_all(param=param, grad=grad, m=m, v=v)
    lr, c1, c2 = adam_scalars(step, lr, b1, b2)
    run("adam_update", loop(param.size), param.size, param, grad, m, v, lr, 1 - b1, 1 - b2, eps, wd, l1,
        int(decoupled), c1, c2)


def adam_scalars(step, lr, beta1=0.9, beta2=0.999):
    """[lr, bias_correction1, bias_correction2_sqrt]: what adam_update passes by value,
    computed the same way (double, then float32), for adam_update_scalars."""
    return [float(lr), 1 - beta1 ** step, math.sqrt(1 - beta2 ** step)]


def _scalars(name, a, n, param):
    _check.array(name, a, ndim=1, dtype=np.float32)
    _check.same_device(name, a, "param", param)
    if a.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {a.shape}")


def sgd_update_scalars(param, grad, velocity, scalars, momentum=0.0, nesterov=False, weight_decay=0.0, l1=0.0):
    """sgd_update with lr read from device memory: scalars (1,) float32 = [lr] on param's
    device; lr == 0 leaves everything untouched. Same bits as sgd_update(..., lr)."""
    _sgd_args(param, grad, velocity, 1.0, momentum, nesterov, weight_decay, l1)
    _scalars("scalars", scalars, 1, param)
    f32_all(param=param, grad=grad, velocity=velocity)
    run("sgd_update_scalars", loop(param.size), param.size, param, grad, velocity, scalars, float(momentum),
        int(nesterov), float(weight_decay), float(l1))


def adam_update_scalars(param, grad, m, v, scalars, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, l1=0.0,
                        decoupled=False):
    """adam_update with the step-dependent values read from device memory: scalars (3,)
    float32 = adam_scalars(step, lr, beta1, beta2) on param's device; lr == 0 leaves
    everything untouched. Same bits as adam_update(..., step, lr, ...)."""
    _, _, b1, b2, eps, wd, l1 = _adam_args(param, grad, m, v, 1, 1.0, beta1, beta2, eps, weight_decay, l1, decoupled)
    _scalars("scalars", scalars, 3, param)
    f32_all(param=param, grad=grad, m=m, v=v)
    run("adam_update_scalars", loop(param.size), param.size, param, grad, m, v, scalars, 1 - b1, 1 - b2, eps, wd, l1,
        int(decoupled))


def _norms_grid(n):
    """Blocks of norms_partials: cunet::norms_grid in kernels/optim.cuh."""
    return max(1, min((n + 4095) // 4096, 1024))


def _norms(x, w_abs, w_sq):
    """w_abs * sum|x| + w_sq * sum x^2: a float, or a 0-d float32 array on the GPU (no sync)."""
    g = _norms_grid(x.size)
    partials, out = empty(x, (2 * g,)), empty(x, (1,))
    run("norms_partials", coop(g), x.size, x, partials)
    run("norms_finalize", coop(1), g, partials, out, w_abs, w_sq)
    return out[0] if is_cupy(out) else float(out[0])


def penalty(param, l1=0.0, l2=0.0):
    _check.array("param", param)
    l1 = _check.number("l1", l1, lo=0)
    l2 = _check.number("l2", l2, lo=0)
    f32("param", param)
    return _norms(param, l1, 0.5 * l2)


def sum_squares(x):
    """sum x^2 (gradient clipping: the global norm is its square root)."""
    _check.array("x", x)
    f32("x", x)
    return _norms(x, 0.0, 1.0)
