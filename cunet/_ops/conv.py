"""Convolution and transposed convolution: kernels/conv.cuh.

NumPy arrays: the _native launchers (host build: CPU variants in fp32, or, under
set_emulate_blocks(True), the tiled GPU kernels in the requested precision). CuPy arrays:
the tiled implicit-GEMM kernels <pass>_<precision> (64 x 64 tiles of 128 threads)."""

from cunet import _check
from cunet._ops.core import coop, empty, f32_all, is_cupy, loop, lift, native, ncs, register, run, set_host_variants  # noqa: F401
from cunet.reference import _precision_arg, _conv_args, _conv_backward_args, _conv_transpose_args, _conv_transpose_backward_args

PRECISION_CODE = {"fp32": 0, "tf32": 1, "bf16": 2}   # the launchers' `precision` argument
TILE, TILE_THREADS = 64, 128                          # kernels/conv.cuh kTM = kTN, kThreads

register("conv", "conv_forward", "conv_backward_data", "conv_backward_weight", "channel_sum", "conv_sum_slices",
         *[f"{p}_{q}" for p in ("conv_forward", "conv_backward_data", "conv_backward_weight") for q in PRECISION_CODE])


def _dims(x_shape, w_shape, co, out, stride, padding, dilation):
    """The 21 CUNET_CONV_DIMS of kernels/conv.cuh for a conv x -> out with co output channels."""
    n, ci = x_shape[:2]
    return (n, ci, co, *lift(x_shape[2:], 1), *lift(out, 1), *lift(w_shape[2:], 1),
            *lift(stride, 1), *lift(padding, 0), *lift(dilation, 1))


def _prod(v):
    p = 1
    for a in v:
        p *= int(a)
    return p


def _tiles(m, nn):
    return -(-m // TILE) * -(-nn // TILE)


# The three passes as GEMMs M x Nn x K over the dims (kernels/conv.cuh, tiled section):
# forward (N*So, Co, Ci*T), data gradient (N*Si, Ci, Co*T), weight gradient (Co, Ci*T, N*So).
def _forward(dims, x, w, b, y, relu, precision):
    if not is_cupy(x):
        return run("conv_forward", None, *dims, x, w, b, y, PRECISION_CODE[precision], relu)
    n, co, so = dims[0], dims[2], _prod(dims[6:9])
    if y.size:
        run(f"conv_forward_{precision}", (_tiles(n * so, co), TILE_THREADS), *dims, x, w, b, y, relu)


def _data(dims, dy, w, b, dx, precision):
    if not is_cupy(dy):
        return run("conv_backward_data", None, *dims, dy, w, b, dx, PRECISION_CODE[precision])
    n, ci, si = dims[0], dims[1], _prod(dims[3:6])
    if dx.size:
        run(f"conv_backward_data_{precision}", (_tiles(n * si, ci), TILE_THREADS), *dims, dy, w, b, dx)


def _weight(dims, dy, x, dw, precision):
    if not is_cupy(dy):
        return run("conv_backward_weight", None, *dims, dy, x, dw, PRECISION_CODE[precision])
    m, nn, k = dims[2], dims[1] * _prod(dims[9:12]), dims[0] * _prod(dims[6:9])
    if dw.size == 0:
        return
    k_slice = native().conv_wgrad_slice(m, nn, k)
    slices = max(1, -(-k // k_slice))
    part = dw if slices == 1 else empty(dw, (slices,) + dw.shape)
    run(f"conv_backward_weight_{precision}", (_tiles(m, nn) * slices, TILE_THREADS), *dims, dy, x, part, k_slice)
    if slices > 1:
        run("conv_sum_slices", loop(dw.size), dw.size, slices, part, dw)


def channel_sum(x):
    """(N, C, *S) -> (C,): the bias gradient of dy."""
    n, c, s = ncs(x)
    out = empty(x, (c,))
    run("channel_sum", coop(c), n, c, s, x, out)
    return out


def conv_forward(x, w, b=None, stride=1, padding=0, dilation=1, relu=False, precision="fp32"):
    """precision: "fp32" | "tf32" | "bf16" operands of the GEMM (tensor cores for tf32 / bf16
    on CuPy arrays); relu=True fuses max(y, 0) into the store. NumPy arrays compute in fp32
    whatever is asked (more accurate than tf32 / bf16), except under set_emulate_blocks(True)."""
    stride, padding, dilation, out = _conv_args(x, w, b, stride, padding, dilation)
    _precision_arg(precision)
    f32_all(x=x, w=w, b=b)
    y = empty(x, (x.shape[0], w.shape[0]) + out)
    _forward(_dims(x.shape, w.shape, w.shape[0], out, stride, padding, dilation), x, w, b, y, bool(relu), precision)
    return y


def conv_backward(dy, x, w, stride=1, padding=0, dilation=1, precision="fp32"):
    stride, padding, dilation, out = _conv_backward_args(dy, x, w, stride, padding, dilation)
    _precision_arg(precision)
    f32_all(dy=dy, x=x, w=w)
    _check.same_device("dy", dy, "x", x)
    dims = _dims(x.shape, w.shape, w.shape[0], out, stride, padding, dilation)
    dx, dw = empty(x, x.shape), empty(x, w.shape)
    _data(dims, dy, w, None, dx, precision)
    _weight(dims, dy, x, dw, precision)
    return dx, dw, channel_sum(dy)


def conv_transpose_forward(x, w, b=None, stride=1, padding=0, output_padding=0, precision="fp32"):
    """The input gradient of the conv out -> x whose weight is w (Ci, Co, *k) read as (Co', Ci')."""
    stride, padding, output_padding, out = _conv_transpose_args(x, w, b, stride, padding, output_padding)
    _precision_arg(precision)
    f32_all(x=x, w=w, b=b)
    y = empty(x, (x.shape[0], w.shape[1]) + out)
    dims = _dims(y.shape, w.shape, w.shape[0], x.shape[2:], stride, padding, (1,) * len(out))
    _data(dims, x, w, b, y, precision)
    return y


def conv_transpose_backward(dy, x, w, stride=1, padding=0, output_padding=0, precision="fp32"):
    stride, padding, output_padding, out = _conv_transpose_backward_args(dy, x, w, stride, padding, output_padding)
    _precision_arg(precision)
    f32_all(dy=dy, x=x, w=w)
    _check.same_device("dy", dy, "x", x)
    dims = _dims(dy.shape, w.shape, w.shape[0], x.shape[2:], stride, padding, (1,) * len(out))
    dx, dw = empty(x, x.shape), empty(x, w.shape)
    _forward(dims, dy, w, None, dx, False, precision)
    _weight(dims, x, dy, dw, precision)
    return dx, dw, channel_sum(dy)
