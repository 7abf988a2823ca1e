"""Convolution and transposed convolution: kernels/conv.cuh.

NumPy arrays: the _native launchers (host build: CPU variants in fp32, or, under
set_emulate_blocks(True), the tiled GPU kernels in the requested precision). CuPy arrays:
the tiled implicit-GEMM kernels <pass>_<precision> (64 x 64 tiles of 128 threads).
x2 (conv_forward, conv_backward): channels concatenated after x's, read in place by the
tiled kernels (the host CPU variants copy them together first)."""

from math import prod

from cunet import _check
from cunet._ops.core import coop, empty, f32_all, is_cupy, loop, lift, native, ncs, register, run
from cunet.reference import (_precision_arg, _conv_args, _conv_backward_args, _conv_transpose_args,
                             _conv_transpose_backward_args, _x2_args)

PRECISION_CODE = {"fp32": 0, "tf32": 1, "bf16": 2}   # the launchers' `precision` argument
TILE_THREADS = 128   # kernels/conv.cuh kThreads

register("conv", "conv_forward", "conv_backward_data", "conv_backward_weight", "channel_sum", "conv_sum_slices",
         "conv_relu_mask",
         *[f"{p}_{q}" for p in ("conv_forward", "conv_backward_data", "conv_backward_weight") for q in PRECISION_CODE])


def _dims(x_shape, w_shape, co, out, stride, padding, dilation):
    """The 21 CUNET_CONV_DIMS of kernels/conv.cuh for a conv x -> out with co output channels."""
    n, ci = x_shape[:2]
    return (n, ci, co, *lift(x_shape[2:], 1), *lift(out, 1), *lift(w_shape[2:], 1),
            *lift(stride, 1), *lift(padding, 0), *lift(dilation, 1))


def _grid(dims, pass_):
    """Blocks of a tiled launch (pass 0 forward, 1 data, 2 weight per K slice), from the C++
    launchers' own planning (conv_tiled_grid): a ValueError where a size or coordinate
    reaches the kernels' 32-bit indices, before anything is launched."""
    return native().conv_tiled_grid(*dims, pass_)


# The three passes as GEMMs M x Nn x K over the dims (kernels/conv.cuh, tiled section):
# forward (N*So, Co, Ci*T), data gradient (N*Si, Ci, Co*T), weight gradient (Co, Ci*T, N*So).
# c1: the channels of x (dx); x2 (dx2) holds the rest, or is None with c1 = Ci.
def _forward(dims, c1, x, x2, w, b, y, relu, precision):
    if not is_cupy(x):
        return run("conv_forward", None, *dims, c1, x, x2, w, b, y, PRECISION_CODE[precision], relu)
    if y.size:
        run(f"conv_forward_{precision}", (_grid(dims, 0), TILE_THREADS), *dims, c1, x, x2, w, b, y, relu)


def _data(dims, c1, dy, w, b, dx, dx2, precision, mask=None):
    """mask: None, or x (no x2) when x is a ReLU's output: dx then through that ReLU."""
    if not is_cupy(dy):
        return run("conv_backward_data", None, *dims, c1, dy, w, b, dx, dx2, mask, PRECISION_CODE[precision])
    if dx.size:
        run(f"conv_backward_data_{precision}", (_grid(dims, 1), TILE_THREADS), *dims, c1, dy, w, b, dx, dx2)
        if mask is not None:
            run("conv_relu_mask", loop(dx.size), dx.size, mask, dx)


def _weight(dims, c1, dy, x, x2, dw, precision, db=None):
    """db: None, or an array (Co,) for the bias gradient of dy too (fused into the CPU
    variants' Winograd and patch weight gradients, which read dy anyway)."""
    if not is_cupy(dy):
        return run("conv_backward_weight", None, *dims, c1, dy, x, x2, dw, db, PRECISION_CODE[precision])
    if db is not None:
        channel_sum(dy, out=db)
    m, nn, k = dims[2], dims[1] * prod(dims[9:12]), dims[0] * prod(dims[6:9])
    if dw.size == 0:
        return
    tiles = _grid(dims, 2)
    k_slice = native().conv_wgrad_slice(m, nn, k)
    slices = max(1, -(-k // k_slice))
    part = dw if slices == 1 else empty(dw, (slices,) + dw.shape)
    run(f"conv_backward_weight_{precision}", (tiles * slices, TILE_THREADS), *dims, c1, dy, x, x2, part, k_slice)
    if slices > 1:
        run("conv_sum_slices", loop(dw.size), dw.size, slices, part, dw)


def channel_sum(x, out=None):
    """(N, C, *S) -> (C,): the bias gradient of dy (into out, a (C,) array, if given)."""
    n, c, s = ncs(x)
    out = empty(x, (c,)) if out is None else out
    run("channel_sum", coop(c), n, c, s, x, out)
    return out


def conv_forward(x, w, b=None, stride=1, padding=0, dilation=1, relu=False, precision="fp32", x2=None):
    """precision: "fp32" | "tf32" | "bf16" operands of the GEMM (tensor cores for tf32 / bf16
    on CuPy arrays); relu=True fuses max(y, 0) into the store. NumPy arrays compute in fp32
    whatever is asked (more accurate than tf32 / bf16), except under set_emulate_blocks(True).
    x2: input channels after x's (the conv of [x, x2] without building the concatenation)."""
    xc = x if x2 is None else _x2_args(x, x2)
    stride, padding, dilation, out = _conv_args(xc, w, b, stride, padding, dilation)
    _precision_arg(precision)
    f32_all(x=x, x2=x2, w=w, b=b)
    y = empty(x, (x.shape[0], w.shape[0]) + out)
    dims = _dims(xc.shape, w.shape, w.shape[0], out, stride, padding, dilation)
    _forward(dims, x.shape[1], x, x2, w, b, y, bool(relu), precision)
    return y


def conv_backward(dy, x, w, stride=1, padding=0, dilation=1, precision="fp32", x2=None, input_grad=True,
                  relu_input=False):
    """-> (dx, dw, db); with x2 (see conv_forward) -> (dx, dx2, dw, db). input_grad=False
    skips the data gradient (dx, dx2 None): a first layer, whose input needs none.
    relu_input=True (x is a ReLU's output, no x2): dx is the gradient of that ReLU's input,
    dx · [x > 0], applied as dx is written (no relu_backward pass)."""
    xc = x if x2 is None else _x2_args(x, x2)
    stride, padding, dilation, out = _conv_backward_args(dy, xc, w, stride, padding, dilation)
    _precision_arg(precision)
    f32_all(dy=dy, x=x, x2=x2, w=w)
    _check.same_device("dy", dy, "x", x)
    dims = _dims(xc.shape, w.shape, w.shape[0], out, stride, padding, dilation)
    _check.flag("input_grad", input_grad)
    _check.flag("relu_input", relu_input)
    if relu_input and x2 is not None:
        raise ValueError("relu_input: only for a single input (x2 must be None)")
    dw, dx, dx2 = empty(x, w.shape), None, None
    if input_grad:
        dx = empty(x, x.shape)
        dx2 = None if x2 is None else empty(x2, x2.shape)
        _data(dims, x.shape[1], dy, w, None, dx, dx2, precision, x if relu_input else None)
    db = empty(x, (w.shape[0],))
    _weight(dims, x.shape[1], dy, x, x2, dw, precision, db)
    return (dx, dw, db) if x2 is None else (dx, dx2, dw, db)


def conv_transpose_forward(x, w, b=None, stride=1, padding=0, output_padding=0, precision="fp32"):
    """The input gradient of the conv out -> x whose weight is w (Ci, Co, *k) read as (Co', Ci')."""
    stride, padding, output_padding, out = _conv_transpose_args(x, w, b, stride, padding, output_padding)
    _precision_arg(precision)
    f32_all(x=x, w=w, b=b)
    y = empty(x, (x.shape[0], w.shape[1]) + out)
    dims = _dims(y.shape, w.shape, w.shape[0], x.shape[2:], stride, padding, (1,) * len(out))
    _data(dims, dims[1], x, w, b, y, None, precision)
    return y


def conv_transpose_backward(dy, x, w, stride=1, padding=0, output_padding=0, precision="fp32"):
    stride, padding, output_padding, out = _conv_transpose_backward_args(dy, x, w, stride, padding, output_padding)
    _precision_arg(precision)
    f32_all(dy=dy, x=x, w=w)
    _check.same_device("dy", dy, "x", x)
    dims = _dims(dy.shape, w.shape, w.shape[0], x.shape[2:], stride, padding, (1,) * len(out))
    dx, dw = empty(x, x.shape), empty(x, w.shape)
    _forward(dims, dims[1], dy, None, w, None, dx, False, precision)
    _weight(dims, dims[1], x, dy, None, dw, precision)
    return dx, dw, channel_sum(dy)
