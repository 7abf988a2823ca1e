"""Convolution and transposed convolution: kernels/conv.cuh."""

from cunet import _check
from cunet._ops.core import coop, empty, f32_all, lift, loop, ncs, register, run, set_host_variants  # noqa: F401
from cunet.reference import _precision_arg, _conv_args, _conv_backward_args, _conv_transpose_args, _conv_transpose_backward_args

register("conv", "conv_forward", "conv_backward_data", "conv_backward_weight", "channel_sum")


def _dims(x_shape, w_shape, co, out, stride, padding, dilation):
    """The 21 CUNET_CONV_DIMS of kernels/conv.cuh for a conv x -> out with co output channels."""
    n, ci = x_shape[:2]
    return (n, ci, co, *lift(x_shape[2:], 1), *lift(out, 1), *lift(w_shape[2:], 1),
            *lift(stride, 1), *lift(padding, 0), *lift(dilation, 1))


def channel_sum(x):
    """(N, C, *S) -> (C,): the bias gradient of dy."""
    n, c, s = ncs(x)
    out = empty(x, (c,))
    run("channel_sum", coop(c), n, c, s, x, out)
    return out


def _relu_inplace(y):
    # TODO(issue 7): the fused epilogue replaces this second pass
    run("relu_forward", loop(y.size), y.size, y, y)
    return y


def conv_forward(x, w, b=None, stride=1, padding=0, dilation=1, relu=False, precision="fp32"):
    """precision: "fp32" | "tf32" | "bf16" operands of the GEMM (CuPy arrays); the host build
    computes in fp32 whatever is asked (more accurate than tf32/bf16)."""
    stride, padding, dilation, out = _conv_args(x, w, b, stride, padding, dilation)
    _precision_arg(precision)
    f32_all(x=x, w=w, b=b)
    y = empty(x, (x.shape[0], w.shape[0]) + out)
    run("conv_forward", loop(y.size), *_dims(x.shape, w.shape, w.shape[0], out, stride, padding, dilation), x, w, b, y)
    return _relu_inplace(y) if relu else y


def conv_backward(dy, x, w, stride=1, padding=0, dilation=1, precision="fp32"):
    stride, padding, dilation, out = _conv_backward_args(dy, x, w, stride, padding, dilation)
    _precision_arg(precision)
    f32_all(dy=dy, x=x, w=w)
    _check.same_device("dy", dy, "x", x)
    dims = _dims(x.shape, w.shape, w.shape[0], out, stride, padding, dilation)
    dx, dw = empty(x, x.shape), empty(x, w.shape)
    run("conv_backward_data", loop(x.size), *dims, dy, w, None, dx)
    run("conv_backward_weight", coop(w.size), *dims, dy, x, dw)
    return dx, dw, channel_sum(dy)


def conv_transpose_forward(x, w, b=None, stride=1, padding=0, output_padding=0, precision="fp32"):
    """The input gradient of the conv out -> x whose weight is w (Ci, Co, *k) read as (Co', Ci')."""
    stride, padding, output_padding, out = _conv_transpose_args(x, w, b, stride, padding, output_padding)
    _precision_arg(precision)
    f32_all(x=x, w=w, b=b)
    y = empty(x, (x.shape[0], w.shape[1]) + out)
    dims = _dims(y.shape, w.shape, w.shape[0], x.shape[2:], stride, padding, (1,) * len(out))
    run("conv_backward_data", loop(y.size), *dims, x, w, b, y)
    return y


def conv_transpose_backward(dy, x, w, stride=1, padding=0, output_padding=0, precision="fp32"):
    stride, padding, output_padding, out = _conv_transpose_backward_args(dy, x, w, stride, padding, output_padding)
    _precision_arg(precision)
    f32_all(dy=dy, x=x, w=w)
    _check.same_device("dy", dy, "x", x)
    dims = _dims(dy.shape, w.shape, w.shape[0], x.shape[2:], stride, padding, (1,) * len(out))
    dx, dw = empty(x, x.shape), empty(x, w.shape)
    run("conv_forward", loop(x.size), *dims, dy, w, None, dx)
    run("conv_backward_weight", coop(w.size), *dims, x, dy, dw)
    return dx, dw, channel_sum(dy)
