"""Nearest and linear upsampling: kernels/upsample.cuh."""
from cunet import _check
from cunet._ops.core import empty, f32, lift, loop, register, run
from cunet.reference import _upsample_args, _upsample_backward_args

register("upsample", "upsample_nearest_forward", "upsample_nearest_backward",
         "upsample_linear_forward", "upsample_linear_backward")


def upsample_forward(x, scale=2, mode="nearest"):
    _check.image("x", x)
    f32("x", x)
    scale, out = _upsample_args(x.shape, scale, mode)
    y = empty(x, x.shape[:2] + out)
    run(f"upsample_{mode}_forward", loop(y.size), x.shape[0] * x.shape[1], *lift(x.shape[2:], 1),
        *lift(scale, 1), x, y)
    return y


def upsample_backward(dy, x_shape, scale=2, mode="nearest"):
    x_shape, scale = _upsample_backward_args(dy, x_shape, scale, mode)
    f32("dy", dy)
    dx = empty(dy, x_shape)
    run(f"upsample_{mode}_backward", loop(dx.size), x_shape[0] * x_shape[1], *lift(x_shape[2:], 1),
        *lift(scale, 1), dy, dx)
    return dx
