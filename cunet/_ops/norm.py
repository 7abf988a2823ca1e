"""Batch norm: kernels/norm.cuh."""

from cunet import _check
from cunet._ops.core import coop, empty, f32_all, loop, native, ncs, register, run
from cunet.reference import _batchnorm_args, _batchnorm_backward_args

register("norm", "batchnorm_stats_partials", "batchnorm_stats_finalize", "batchnorm_eval_stats",
         "batchnorm_normalize", "batchnorm_backward_partials", "batchnorm_backward_finalize", "batchnorm_backward_data")

__all__ = ["batchnorm_forward", "batchnorm_backward"]


def batchnorm_groups(n, c, s):
    """Slices per channel of the partials kernels (cunet::batchnorm_groups in kernels/norm.cuh)."""
    return native().batchnorm_groups(n, c, s)


def batchnorm_forward(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
    _batchnorm_args(x, gamma, beta, running_mean, running_var, momentum, eps)
    if not training and (running_mean is None or running_var is None):
        raise ValueError("running_mean: eval mode (training=False) needs running_mean and running_var")
    f32_all(x=x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    n, c, s = ncs(x)
    mean, invstd = empty(x, (c,)), empty(x, (c,))
    if training:
        g = batchnorm_groups(n, c, s)
        part = empty(x, (c * g * 2,))
        run("batchnorm_stats_partials", coop(c * g), n, c, s, g, x, part)
        run("batchnorm_stats_finalize", loop(c), n, c, s, g, part, mean, invstd,
            running_mean, running_var, float(momentum), float(eps))
    else:
        run("batchnorm_eval_stats", loop(c), c, running_mean, running_var, mean, invstd, float(eps))
    y = empty(x, x.shape)
    run("batchnorm_normalize", loop(x.size), n, c, s, x, mean, invstd, gamma, beta, y)
    return y, mean, invstd


def batchnorm_backward(dy, x, gamma, mean, invstd, training=True):
    _batchnorm_backward_args(dy, x, gamma, mean, invstd)
    f32_all(x=x, dy=dy, gamma=gamma, mean=mean, invstd=invstd)
    _check.same_device("dy", dy, "x", x)
    n, c, s = ncs(x)
    dgamma, dbeta, dx = empty(x, (c,)), empty(x, (c,)), empty(x, x.shape)
    g = batchnorm_groups(n, c, s)
    part = empty(x, (c * g * 2,))
    run("batchnorm_backward_partials", coop(c * g), n, c, s, g, dy, x, mean, invstd, part)
    run("batchnorm_backward_finalize", loop(c), c, g, part, dgamma, dbeta)
    run("batchnorm_backward_data", loop(x.size), n, c, s, dy, x, mean, invstd, gamma, dgamma, dbeta, dx,
        int(bool(training)))
    return dx, dgamma, dbeta
