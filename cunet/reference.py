"""cunet.reference: the NumPy oracle every kernel is checked against.

One function per kernel entry point, with the same names, argument order and
results as `cunet.ops`. Readable NumPy, float32 or float64 in (the result keeps the
input's dtype; sums run in the input's dtype unless said otherwise), PyTorch
semantics and weight layouts:

    x     (N, C, H, W) or (N, C, D, H, W)       2D or 3D is read from x.ndim
    conv weight            (Co, Ci, *k)          as torch.nn.ConvNd
    transposed conv weight (Ci, Co, *k)          as torch.nn.ConvTransposeNd
    labels (N, *S) integers in [0, K)

Backward functions return the gradient of every input; `db` is always returned
(dy summed over all but the channel axis). Ops with running state (batch norm
running statistics, optimizer moments) update those arrays in place, as the kernels do.

Argument checks live in the `_*_args` helpers below; `cunet.ops` calls the same
helpers, so both raise the same errors.
"""
import math

import numpy as np

from cunet import _check

# ---- argument checks shared with cunet.ops


def _conv_geometry(x_shape, k, stride, padding, dilation, x_name="x"):
    """Output spatial size of a convolution; errors name the offending argument."""
    out = []
    for i, (n, kk, s, p, d) in enumerate(zip(x_shape, k, stride, padding, dilation)):
        span = d * (kk - 1) + 1
        if span > n + 2 * p:
            raise ValueError(f"w: kernel extent {span} (kernel {kk}, dilation {d}) is larger than the padded "
                             f"input ({n} + 2*{p}) along spatial axis {i} of {x_name}")
        out.append((n + 2 * p - span) // s + 1)
    return tuple(out)


def _weight_args(x, w, b, transposed):
    """x, a weight of layout (Co, Ci, *k) (or (Ci, Co, *k) when transposed) and a bias (Co,)."""
    _check.image("x", x)
    _check.array("w", w, ndim=x.ndim)
    _check.same_dtype("w", w, "x", x)
    _check.same_device("w", w, "x", x)
    ci, co = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
    if ci != x.shape[1]:
        where = " first (layout (Ci, Co, *k))" if transposed else f" (x has shape {tuple(x.shape)})"
        raise ValueError(f"w: expected {x.shape[1]} input channels{where}, got w of shape {tuple(w.shape)}")
    if b is not None:
        _check.array("b", b, ndim=1)
        _check.same_dtype("b", b, "x", x)
        if b.shape[0] != co:
            raise ValueError(f"b: expected shape ({co},), got {tuple(b.shape)}")


def _conv_args(x, w, b, stride, padding, dilation):
    """-> (stride, padding, dilation, out_spatial) as tuples; checks shapes and dtypes."""
    _weight_args(x, w, b, transposed=False)
    nd = x.ndim - 2
    stride = _check.tuple_arg("stride", stride, nd, minimum=1)
    padding = _check.tuple_arg("padding", padding, nd, minimum=0)
    dilation = _check.tuple_arg("dilation", dilation, nd, minimum=1)
    out = _conv_geometry(x.shape[2:], w.shape[2:], stride, padding, dilation)
    return stride, padding, dilation, out


def _dy_args(dy, want, x=None):
    """dy must have the forward output's shape `want` (and x's dtype when x is given)."""
    _check.array("dy", dy, ndim=len(want))
    if x is not None:
        _check.same_dtype("dy", dy, "x", x)
    if tuple(dy.shape) != tuple(want):
        raise ValueError(f"dy: expected shape {tuple(want)} (the forward output), got {tuple(dy.shape)}")


PRECISIONS = ("fp32", "tf32", "bf16")


def _precision_arg(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return precision


def round_operand(a, precision):
    """The value a tensor-core GEMM multiplies for a float32 operand: "fp32" unchanged,
    "tf32" rounded to 10 mantissa bits (nearest, ties away from zero: cvt.rna.tf32.f32),
    "bf16" to 7 mantissa bits (nearest even: cvt.rn.bf16.f32). Products and sums stay
    float32 (float64 here). Works on float32 and float64 arrays of float32 values."""
    _precision_arg(precision)
    if precision == "fp32":
        return a
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    finite = (u & 0x7F800000) != 0x7F800000
    if precision == "tf32":
        r = (u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    else:
        r = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return np.where(finite, r, u).view(np.float32).astype(a.dtype).reshape(a.shape)


def _x2_args(x, x2):
    """x2 (N, C2, *S): channels that follow x's (N, C1, *S), a UNet skip concatenation the
    kernels read in place. -> a zero-copy stand-in of the concatenated (N, C1 + C2, *S) array
    for the shape and dtype checks."""
    _check.image("x", x)
    _check.image("x2", x2)
    _check.same_dtype("x2", x2, "x", x)
    _check.same_device("x2", x2, "x", x)
    if x2.shape[0] != x.shape[0] or tuple(x2.shape[2:]) != tuple(x.shape[2:]):
        want = ", ".join(map(str, (x.shape[0], "C2") + tuple(x.shape[2:])))
        raise ValueError(f"x2: expected shape ({want}) (the batch and spatial size of x), got {tuple(x2.shape)}")
    xp = _check.xp_of(x)
    return xp.broadcast_to(xp.zeros((), x.dtype), (x.shape[0], x.shape[1] + x2.shape[1]) + tuple(x.shape[2:]))


def _conv_backward_args(dy, x, w, stride, padding, dilation):
    stride, padding, dilation, out = _conv_args(x, w, None, stride, padding, dilation)
    _dy_args(dy, (x.shape[0], w.shape[0]) + out, x)
    return stride, padding, dilation, out


def _conv_transpose_args(x, w, b, stride, padding, output_padding):
    """-> (stride, padding, output_padding, out_spatial)."""
    _weight_args(x, w, b, transposed=True)
    nd = x.ndim - 2
    stride = _check.tuple_arg("stride", stride, nd, minimum=1)
    padding = _check.tuple_arg("padding", padding, nd, minimum=0)
    output_padding = _check.tuple_arg("output_padding", output_padding, nd, minimum=0)
    for s, op in zip(stride, output_padding):
        if op >= s:
            raise ValueError(f"output_padding: expected values smaller than stride {stride}, got {output_padding}")
    out = tuple((n - 1) * s - 2 * p + k + op
                for n, s, p, k, op in zip(x.shape[2:], stride, padding, w.shape[2:], output_padding))
    if min(out) < 1:
        raise ValueError(f"padding: {padding} leaves an empty output {out} for input {tuple(x.shape)}")
    return stride, padding, output_padding, out


def _conv_transpose_backward_args(dy, x, w, stride, padding, output_padding):
    stride, padding, output_padding, out = _conv_transpose_args(x, w, None, stride, padding, output_padding)
    _dy_args(dy, (x.shape[0], w.shape[1]) + out, x)
    return stride, padding, output_padding, out


def _maxpool_args(x, kernel, stride, padding):
    _check.image("x", x)
    nd = x.ndim - 2
    kernel = _check.tuple_arg("kernel", kernel, nd, minimum=1)
    stride = kernel if stride is None else _check.tuple_arg("stride", stride, nd, minimum=1)
    padding = _check.tuple_arg("padding", padding, nd, minimum=0)
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise ValueError(f"padding: expected at most half the kernel {kernel}, got {padding}")
    for i, (n, k, p) in enumerate(zip(x.shape[2:], kernel, padding)):
        if k > n + 2 * p:
            raise ValueError(f"kernel: {kernel} is larger than the padded input along spatial axis {i} "
                             f"(x has shape {tuple(x.shape)}, padding {padding})")
    out = tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(x.shape[2:], kernel, stride, padding))
    return kernel, stride, padding, out


def _maxpool_backward_args(dy, argmax, x_shape, out=None):
    """-> (x_shape, plane): argmax indexes x's flattened spatial plane; out: None or x_shape."""
    x_shape = _shape_arg("x_shape", x_shape)
    if out is not None:
        _check.same_device("out", out, "dy", dy)
        if tuple(out.shape) != x_shape:
            raise ValueError(f"out: expected shape {x_shape} (x_shape), got {tuple(out.shape)}")
    _check.array("dy", dy, ndim=len(x_shape))
    _check.array("argmax", argmax, dtype="int")
    _check.same_shape("argmax", argmax, "dy", dy)
    _check.same_device("argmax", argmax, "dy", dy)
    if tuple(dy.shape[:2]) != x_shape[:2]:
        raise ValueError(f"dy: expected batch and channels {x_shape[:2]} (from x_shape), got {tuple(dy.shape[:2])}")
    plane = int(math.prod(x_shape[2:]))
    if argmax.size and _check.values_checked() and (int(argmax.min()) < 0 or int(argmax.max()) >= plane):
        raise ValueError(f"argmax: values must lie in [0, {plane}), found {int(argmax.min())}..{int(argmax.max())}")
    return x_shape, plane


def _shape_arg(name, shape, ndim=(4, 5)):
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"{name}: expected a tuple of ints, got {shape!r}") from None
    if len(shape) not in ndim or min(shape) < 1:
        raise ValueError(f"{name}: expected {' or '.join(map(str, ndim))} positive sizes, got {shape}")
    return shape


def _upsample_args(x_shape, scale, mode):
    nd = len(x_shape) - 2
    scale = _check.tuple_arg("scale", scale, nd, minimum=1)
    _check.choice("mode", mode, ("nearest", "linear"))
    return scale, tuple(n * s for n, s in zip(x_shape[2:], scale))


def _upsample_backward_args(dy, x_shape, scale, mode):
    """-> (x_shape, scale) as tuples."""
    x_shape = _shape_arg("x_shape", x_shape)
    scale, out = _upsample_args(x_shape, scale, mode)
    _dy_args(dy, x_shape[:2] + out)
    return x_shape, scale


def _batchnorm_args(x, gamma, beta, running_mean, running_var, momentum, eps,
                    names=("gamma", "beta", "running_mean", "running_var")):
    _check.image("x", x)
    if x.size == 0:
        raise ValueError(f"x: expected a non-empty array, got shape {tuple(x.shape)}")
    c = x.shape[1]
    for name, a in zip(names, (gamma, beta, running_mean, running_var)):
        if a is None and name in ("running_mean", "running_var"):
            continue
        _check.array(name, a, ndim=1)
        _check.same_dtype(name, a, "x", x)
        _check.same_device(name, a, "x", x)
        if a.shape[0] != c:
            raise ValueError(f"{name}: expected shape ({c},) (the channels of x), got {tuple(a.shape)}")
    _check.number("momentum", momentum, 0.0, 1.0)
    _check.number("eps", eps, 0.0, lo_open=True)


def _batchnorm_backward_args(dy, x, gamma, mean, invstd):
    _check.image("dy", dy)
    _check.same_shape("x", x, "dy", dy)
    _batchnorm_args(x, gamma, mean, invstd, None, 0.0, 1.0, names=("gamma", "mean", "invstd", "running_var"))


def _dropout_args(p, seed):
    _check.number("p", p, 0.0, 1.0, hi_open=True)
    _check.integer("seed", seed, lo=0)
    if seed >= 2 ** 64:
        raise ValueError(f"seed: expected an int below 2**64, got {seed}")


# ---- convolution


def _taps(k):
    """All kernel offsets, in row-major order."""
    return list(np.ndindex(*k))


def _window(offset, start, count, step):
    """Slice picking `count` positions start+offset, step apart, in every spatial axis."""
    return tuple(slice(o + st, o + st + (c - 1) * s + 1, s) for o, st, c, s in zip(offset, start, count, step))


def _pad(x, padding):
    return np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])


def _contract(a, b):
    """(N, A, *S) x (N, B, *S) -> (A, B): sum over batch and space."""
    axes = (0,) + tuple(range(2, a.ndim))
    return np.tensordot(a, b, axes=(axes, axes))


def conv_forward(x, w, b=None, stride=1, padding=0, dilation=1, relu=False, precision="fp32", x2=None):
    """y[n, co, o] = b[co] + sum_{ci, k} w[co, ci, k] * x[n, ci, o*stride - padding + k*dilation];
    relu=True: max(y, 0) (the fused epilogue). x and w enter as round_operand(., precision).
    x2: more input channels, after x's (the conv of the concatenation [x, x2])."""
    if x2 is not None:
        _x2_args(x, x2)
        x = np.concatenate([x, x2], axis=1)
    stride, padding, dilation, out = _conv_args(x, w, b, stride, padding, dilation)
    x, w = round_operand(x, precision), round_operand(w, precision)
    xp = _pad(x, padding)
    y = np.zeros((x.shape[0], w.shape[0]) + out, dtype=x.dtype)
    for k in _taps(w.shape[2:]):
        offset = tuple(kk * d for kk, d in zip(k, dilation))
        patch = xp[(slice(None), slice(None)) + _window(offset, (0,) * len(k), out, stride)]
        y += np.einsum("ni...,oi->no...", patch, w[(slice(None), slice(None)) + k])
    if b is not None:
        y += b.reshape((1, -1) + (1,) * len(out))
    return np.maximum(y, 0) if relu else y


def conv_backward(dy, x, w, stride=1, padding=0, dilation=1, precision="fp32", x2=None, input_grad=True,
                  relu_input=False):
    """-> (dx, dw, db): every tap scatters dy back through the window it read.
    dy, x and w enter the products as round_operand(., precision); db sums dy unrounded.
    With x2 (see conv_forward): -> (dx, dx2, dw, db), the input gradient split as the inputs.
    input_grad=False: dx (and dx2) None. relu_input=True (x a ReLU's output, no x2):
    dx · [x > 0], the gradient of the ReLU's input."""
    if relu_input:
        if x2 is not None:
            raise ValueError("relu_input: only for a single input (x2 must be None)")
        dx, dw, db = conv_backward(dy, x, w, stride, padding, dilation, precision, input_grad=input_grad)
        return (None if dx is None else np.where(x > 0, dx, 0.0)), dw, db
    if x2 is not None:
        _x2_args(x, x2)
        dx, dw, db = conv_backward(dy, np.concatenate([x, x2], axis=1), w, stride, padding, dilation, precision)
        if not input_grad:
            return None, None, dw, db
        return dx[:, :x.shape[1]], dx[:, x.shape[1]:], dw, db
    if not input_grad:
        return (None,) + conv_backward(dy, x, w, stride, padding, dilation, precision)[1:]
    stride, padding, dilation, out = _conv_backward_args(dy, x, w, stride, padding, dilation)
    db = dy.sum(axis=(0,) + tuple(range(2, dy.ndim)))
    dy, x, w = (round_operand(a, precision) for a in (dy, x, w))
    xp = _pad(x, padding)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for k in _taps(w.shape[2:]):
        offset = tuple(kk * d for kk, d in zip(k, dilation))
        win = (slice(None), slice(None)) + _window(offset, (0,) * len(k), out, stride)
        dxp[win] += np.einsum("no...,oi->ni...", dy, w[(slice(None), slice(None)) + k])
        dw[(slice(None), slice(None)) + k] = _contract(dy, xp[win])
    crop = (slice(None), slice(None)) + tuple(slice(p, p + n) for p, n in zip(padding, x.shape[2:]))
    return dxp[crop], dw, db


def conv_transpose_forward(x, w, b=None, stride=1, padding=0, output_padding=0, precision="fp32"):
    """The gradient of a conv with weight w (Ci, Co, *k) with respect to its input:
    every input voxel scatters w[ci, :, k] to output o = i*stride - padding + k."""
    stride, padding, output_padding, out = _conv_transpose_args(x, w, b, stride, padding, output_padding)
    x, w = round_operand(x, precision), round_operand(w, precision)
    full = tuple(max((n - 1) * s + k, p + o) for n, s, k, p, o in zip(x.shape[2:], stride, w.shape[2:], padding, out))
    yfull = np.zeros((x.shape[0], w.shape[1]) + full, dtype=x.dtype)
    for k in _taps(w.shape[2:]):
        win = (slice(None), slice(None)) + _window(k, (0,) * len(k), x.shape[2:], stride)
        yfull[win] += np.einsum("ni...,io->no...", x, w[(slice(None), slice(None)) + k])
    y = yfull[(slice(None), slice(None)) + tuple(slice(p, p + o) for p, o in zip(padding, out))].copy()
    if b is not None:
        y += b.reshape((1, -1) + (1,) * len(out))
    return y


def conv_transpose_backward(dy, x, w, stride=1, padding=0, output_padding=0, precision="fp32"):
    """-> (dx, dw, db): each tap gathers dy at the positions its input voxels wrote."""
    stride, padding, output_padding, out = _conv_transpose_backward_args(dy, x, w, stride, padding, output_padding)
    db = dy.sum(axis=(0,) + tuple(range(2, dy.ndim)))
    dy, x, w = (round_operand(a, precision) for a in (dy, x, w))
    full = tuple(max((n - 1) * s + k, p + o) for n, s, k, p, o in zip(x.shape[2:], stride, w.shape[2:], padding, out))
    dyfull = np.zeros((dy.shape[0], dy.shape[1]) + full, dtype=dy.dtype)
    dyfull[(slice(None), slice(None)) + tuple(slice(p, p + o) for p, o in zip(padding, out))] = dy
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for k in _taps(w.shape[2:]):
        g = dyfull[(slice(None), slice(None)) + _window(k, (0,) * len(k), x.shape[2:], stride)]
        dx += np.einsum("no...,io->ni...", g, w[(slice(None), slice(None)) + k])
        dw[(slice(None), slice(None)) + k] = _contract(x, g)
    return dx, dw, db


# ---- max pooling


def maxpool_forward(x, kernel=2, stride=None, padding=0):
    """-> (y, argmax). argmax (int64, shape of y) is the flat index of the maximum in
    x's spatial plane (PyTorch's convention). Ties keep the first maximum in window
    order (row-major over the kernel); a NaN wins (the last one), as in PyTorch. Padding is -inf."""
    kernel, stride, padding, out = _maxpool_args(x, kernel, stride, padding)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding], constant_values=-np.inf)
    y = np.full(x.shape[:2] + out, -np.inf, dtype=x.dtype)
    arg = np.zeros(x.shape[:2] + out, dtype=np.int64)
    grids = np.meshgrid(*[np.arange(o) * s for o, s in zip(out, stride)], indexing="ij")
    # before any tap wins (a window of -inf), argmax names the window's first real voxel
    arg[...] = np.ravel_multi_index(tuple(np.maximum(g - p, 0) for g, p in zip(grids, padding)), x.shape[2:])
    for k in _taps(kernel):
        v = xp[(slice(None), slice(None)) + _window(k, (0,) * len(k), out, stride)]
        take = (v > y) | np.isnan(v)
        idx = np.ravel_multi_index(tuple(np.clip(g + kk - p, 0, n - 1) for g, kk, p, n in
                                         zip(grids, k, padding, x.shape[2:])), x.shape[2:])
        y = np.where(take, v, y)
        arg = np.where(take, idx, arg)
    return y, arg


def maxpool_backward(dy, argmax, x_shape, out=None):
    """dx: every output's gradient added at the input position its argmax names; with out
    (x_shape) added into out, which is returned."""
    x_shape, plane = _maxpool_backward_args(dy, argmax, x_shape, out)
    nc = x_shape[0] * x_shape[1]
    dx = np.zeros((nc, plane), dtype=dy.dtype)
    rows = np.repeat(np.arange(nc), dy.size // max(nc, 1))
    np.add.at(dx, (rows, argmax.reshape(-1)), dy.reshape(-1))
    if out is None:
        return dx.reshape(x_shape)
    out += dx.reshape(x_shape)
    return out


# ---- upsampling


def _linear_matrix(n, s, dtype):
    """(n*s, n) interpolation matrix of 1D linear upsampling, align_corners=False:
    output o samples input coordinate (o + 0.5)/s - 0.5, clamped at 0."""
    a = np.zeros((n * s, n), dtype=dtype)
    for o in range(n * s):
        src = max((o + 0.5) / s - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n - 1)
        i1 = min(i0 + 1, n - 1)
        lam = src - i0
        a[o, i0] += 1.0 - lam
        a[o, i1] += lam
    return a


def _along(x, axis, m):
    """Apply matrix m (out, in) along `axis` of x."""
    return np.moveaxis(np.tensordot(m, np.moveaxis(x, axis, 0), axes=(1, 0)), 0, axis)


def upsample_forward(x, scale=2, mode="nearest"):
    """Upsample spatial axes by integer factors; "nearest" repeats, "linear" is
    bilinear/trilinear with align_corners=False (PyTorch's default)."""
    _check.image("x", x)
    scale, _ = _upsample_args(x.shape, scale, mode)
    y = x
    for axis, s in enumerate(scale, start=2):
        if mode == "nearest":
            y = np.repeat(y, s, axis=axis)
        else:
            y = _along(y, axis, _linear_matrix(x.shape[axis], s, x.dtype))
    return y


def upsample_backward(dy, x_shape, scale=2, mode="nearest"):
    """dx: each input gathers the gradients of the outputs it contributed to."""
    x_shape, scale = _upsample_backward_args(dy, x_shape, scale, mode)
    dx = dy
    for axis, s in enumerate(scale, start=2):
        if mode == "nearest":
            shp = dx.shape[:axis] + (x_shape[axis], s) + dx.shape[axis + 1:]
            dx = dx.reshape(shp).sum(axis=axis + 1)
        else:
            dx = _along(dx, axis, _linear_matrix(x_shape[axis], s, dy.dtype).T)
    return dx


# ---- concatenation


def _check_concat_inputs(xs):
    if not isinstance(xs, (list, tuple)) or len(xs) < 1:
        raise TypeError(f"xs: expected a non-empty list of arrays, got {type(xs).__name__}")
    for i, a in enumerate(xs):
        _check.image(f"xs[{i}]", a)
        _check.same_dtype(f"xs[{i}]", a, "xs[0]", xs[0])
        if a.ndim != xs[0].ndim or a.shape[0] != xs[0].shape[0] or a.shape[2:] != xs[0].shape[2:]:
            raise ValueError(f"xs[{i}]: expected shape (N, C, *S) = ({xs[0].shape[0]}, C, "
                             f"{', '.join(map(str, xs[0].shape[2:]))}) like xs[0], got {tuple(a.shape)}")


def _concat_backward_args(dy, channels):
    _check.image("dy", dy)
    channels = tuple(_check.integer("channels", c, lo=1) for c in channels)
    if sum(channels) != dy.shape[1]:
        raise ValueError(f"channels: expected sizes summing to {dy.shape[1]} (the channels of dy), got {channels}")
    return channels


def concat_forward(xs):
    """Concatenate along channels: (N, C1, *S), (N, C2, *S), ... -> (N, C1+C2+..., *S)."""
    _check_concat_inputs(xs)
    return np.concatenate(xs, axis=1)


def concat_backward(dy, channels):
    """Split dy along channels into pieces of `channels` = (C1, C2, ...) channels."""
    channels = _concat_backward_args(dy, channels)
    return tuple(np.split(dy, np.cumsum(channels)[:-1], axis=1))


# ---- activations


def relu_forward(x):
    _check.array("x", x)
    return np.maximum(x, 0).astype(x.dtype)


def relu_backward(dy, y):
    """y is the forward output (y > 0 exactly where x > 0)."""
    _check.array("dy", dy)
    _check.same_shape("y", y, "dy", dy)
    return np.where(y > 0, dy, 0).astype(dy.dtype)


def leaky_relu_forward(x, slope=0.01):
    _check.array("x", x)
    _check.number("slope", slope, 0.0)
    return np.where(x > 0, x, x * x.dtype.type(slope))


def leaky_relu_backward(dy, x, slope=0.01):
    _check.array("dy", dy)
    _check.same_shape("x", x, "dy", dy)
    _check.number("slope", slope, 0.0)
    return np.where(x > 0, dy, dy * dy.dtype.type(slope))


def sigmoid_forward(x):
    _check.array("x", x)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(x.dtype)   # overflow-free form


def sigmoid_backward(dy, y):
    _check.array("dy", dy)
    _check.same_shape("y", y, "dy", dy)
    return dy * y * (1 - y)


def softmax_forward(x):
    """Softmax over the channel axis (axis 1)."""
    _check.array("x", x, ndim=(2, 3, 4, 5))
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_backward(dy, y):
    _check.array("dy", dy, ndim=(2, 3, 4, 5))
    _check.same_shape("y", y, "dy", dy)
    return y * (dy - (dy * y).sum(axis=1, keepdims=True))


# ---- batch norm


def batchnorm_forward(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
    """-> (y, mean, invstd), per channel. Training: batch statistics (biased variance
    to normalise, unbiased to update running_var: PyTorch's rule), running stats
    updated in place when given. Eval: running stats, mean/invstd derived from them."""
    _batchnorm_args(x, gamma, beta, running_mean, running_var, momentum, eps)
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    if training:
        m = x.size // x.shape[1]
        mean = x.mean(axis=axes, dtype=np.float64)
        var = ((x - mean.reshape(bshape)) ** 2).mean(axis=axes, dtype=np.float64)   # two passes: no cancellation
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean.astype(x.dtype)
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += momentum * (var * m / max(m - 1, 1)).astype(x.dtype)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean: eval mode (training=False) needs running_mean and running_var")
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    mean = mean.astype(x.dtype)
    invstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    y = (x - mean.reshape(bshape)) * (invstd * gamma).reshape(bshape) + beta.reshape(bshape)
    return y, mean, invstd


def batchnorm_backward(dy, x, gamma, mean, invstd, training=True):
    """-> (dx, dgamma, dbeta). Training mode differentiates through the batch statistics."""
    _batchnorm_backward_args(dy, x, gamma, mean, invstd)
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    xhat = (x - mean.reshape(bshape)) * invstd.reshape(bshape)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    if not training:
        return dy * (gamma * invstd).reshape(bshape), dgamma, dbeta
    m = x.size // x.shape[1]
    dx = (gamma * invstd).reshape(bshape) / m * (m * dy - dbeta.reshape(bshape) - xhat * dgamma.reshape(bshape))
    return dx.astype(x.dtype), dgamma, dbeta


# ---- dropout: Philox4x32-10 keyed by the seed, counter = element index

_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def _philox4x32_10(c, k):
    """Philox4x32-10 (Random123) on uint64 arrays holding 32-bit words: counter c
    (4 words), key k (2 words) -> 4 words."""
    mask = np.uint64(0xFFFFFFFF)
    c = [np.asarray(w, dtype=np.uint64) for w in c]
    k0, k1 = np.uint64(k[0]), np.uint64(k[1])
    for r in range(10):
        if r:
            k0, k1 = (k0 + np.uint64(_PHILOX_W[0])) & mask, (k1 + np.uint64(_PHILOX_W[1])) & mask
        p0 = np.uint64(_PHILOX_M[0]) * c[0]
        p1 = np.uint64(_PHILOX_M[1]) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & mask]
    return c


def philox_uniform(n, seed):
    """(n,) float32 uniforms in [0, 1): word 0 of Philox4x32-10 with key (seed lo, seed hi)
    and counter (i lo, i hi, 0, 0) for element i, top 24 bits times 2**-24.
    The dropout kernel computes the same bits."""
    i = np.arange(n, dtype=np.uint64)
    zero = np.zeros(n, np.uint64)
    w = _philox4x32_10([i & np.uint64(0xFFFFFFFF), i >> np.uint64(32), zero, zero],
                       [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])
    return (w[0] >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24)


def dropout_mask(shape, p, seed, dtype=np.float32):
    """Scaled keep mask: 1/(1-p) where element i's uniform is >= p, else 0."""
    _dropout_args(p, seed)
    scale = dtype(1.0) / (dtype(1.0) - dtype(p))
    keep = philox_uniform(int(np.prod(shape)), seed) >= np.float32(p)
    return np.where(keep, scale, dtype(0.0)).astype(dtype).reshape(shape)


def dropout_forward(x, p, seed):
    _check.array("x", x)
    return x * dropout_mask(x.shape, p, seed, x.dtype.type)


def dropout_backward(dy, p, seed):
    _check.array("dy", dy)
    return dy * dropout_mask(dy.shape, p, seed, dy.dtype.type)



# ---- losses, metrics, optimizer updates
#
# Legend
#   N batch, K classes (channels of the logits), S spatial shape (H, W) or (D, H, W),
#   M number of elements of the logits (N*K*prod(S)), V number of voxels (N*prod(S)).
#   logits  (N, K, *S) float32/float64    labels (N, *S) integer in [0, K)
#   target  (N, K, *S) float in [0, 1] for the binary losses, any finite float for mse/l1
#
# Losses return `(loss, dlogits)`: the loss as a Python float and its gradient with respect
# to the logits (or output), same shape and dtype as the logits.
# Optimizer updates work in place on the arrays passed and return None; their formulas are
# those of torch.optim.SGD, Adam and AdamW (dampening 0, amsgrad off).

F64 = np.float64


# ---- argument checks shared by the losses

def _logits(name, z, softmax=False):
    _check.image(name, z)
    if z.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {tuple(z.shape)}")
    _check.finite(name, z)
    if softmax and z.shape[1] < 2:
        raise ValueError(f"{name}: softmax losses need K >= 2 channels, got {z.shape[1]}; "
                         f"for one channel use bce_with_logits / binary_dice_loss / dice_bce_loss")
    return z


def _target(name, t, z, zname, unit=True):
    """A float array shaped like z; with unit=True its values must lie in [0, 1]."""
    _check.array(name, t)
    _check.same_shape(name, t, zname, z)
    _check.finite(name, t)
    if unit and _check.values_checked() and bool(((t < 0) | (t > 1)).any()):
        raise ValueError(f"{name}: values must lie in [0, 1], found min {float(t.min())}, max {float(t.max())}")
    return t


def _labels(labels, z):
    return _check.labels("labels", labels, z.shape[1], shape=(z.shape[0],) + tuple(z.shape[2:]))


def _class_weights(w, z):
    """(K,) weights as a float64 array on z's device, or None."""
    if w is None:
        return None
    _check.array("class_weights", w, ndim=1)
    k = z.shape[1]
    if w.shape[0] != k:
        raise ValueError(f"class_weights: expected shape ({k},) (one per channel of logits), got {tuple(w.shape)}")
    _check.finite("class_weights", w)
    w = _check.xp_of(z).asarray(w, dtype=F64)
    if _check.values_checked() and (bool((w < 0).any()) or not float(w.sum()) > 0):
        raise ValueError(f"class_weights: expected values >= 0 with a positive sum, got {w.tolist()}")
    return w


def _smooth(smooth, variant):
    _check.choice("variant", variant, ("class", "voxel"))
    # The voxel variant divides by p + g + smooth per voxel: smooth = 0 allows 0/0 where p, g -> 0.
    return _check.number("smooth", smooth, lo=0, lo_open=(variant == "voxel"))


# ---- helpers (all float64)

def _softmax(z):
    """Softmax over axis 1 of (N, K, *S)."""
    xp = _check.xp_of(z)
    e = xp.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z):
    # exp(-|z|) never overflows; the two branches are the same function rearranged.
    xp = _check.xp_of(z)
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _one_hot(labels, k):
    """(N, *S) ints -> (N, K, *S) float64."""
    xp = _check.xp_of(labels)
    classes = xp.arange(k).reshape((1, k) + (1,) * (labels.ndim - 1))
    return (labels[:, None] == classes).astype(F64)


def _dice(p, g, smooth, variant, first):
    """Dice loss of probabilities p against g, both (N, C, *S) float64, averaged over
    channels first..C-1. Returns (loss, dloss/dp)."""
    xp = _check.xp_of(p)
    c = p.shape[1]
    w = xp.zeros((1, c) + (1,) * (p.ndim - 2), dtype=F64)  # weight of each channel in the mean
    w[:, first:] = 1.0 / (c - first)
    if variant == "class":
        axes = (0,) + tuple(range(2, p.ndim))  # batch and voxels pooled per class
        inter = (p * g).sum(axis=axes, keepdims=True)  # (1, C, 1, ...)
        denom = p.sum(axis=axes, keepdims=True) + g.sum(axis=axes, keepdims=True) + smooth
        d = (2 * inter + smooth) / denom
        # dD/dp = (2g (denom) - (2 inter + smooth)) / denom^2 = (2g - D) / denom
        return float((w * (1 - d)).sum()), -w * (2 * g - d) / denom
    v = p.size // c  # voxels N*prod(S)
    denom = p + g + smooth
    # d/dp [2pg / (p + g + s)] = 2g (g + s) / (p + g + s)^2
    return 1 - float((w * 2 * p * g / denom).sum()) / v, -w * 2 * g * (g + smooth) / denom**2 / v


# ---- losses

def bce_with_logits(logits, target):
    """Binary cross-entropy on logits, mean over all M elements (any channel count)."""
    _logits("logits", logits)
    _target("target", target, logits, "logits")
    xp = _check.xp_of(logits)
    z, t = logits.astype(F64), target.astype(F64)
    # -t log s(z) - (1-t) log(1 - s(z)), rearranged so no exp overflows.
    loss = xp.maximum(z, 0) - z * t + xp.log1p(xp.exp(-xp.abs(z)))
    return float(loss.mean()), ((_sigmoid(z) - t) / z.size).astype(logits.dtype)


def cross_entropy(logits, labels, class_weights=None):
    """Softmax cross-entropy over axis 1. Unweighted: mean over the V voxels.
    Weighted: sum_v w[y_v] nll_v / sum_v w[y_v] (PyTorch's weighted mean)."""
    _logits("logits", logits, softmax=True)
    _labels(labels, logits)
    w = _class_weights(class_weights, logits)
    xp = _check.xp_of(logits)
    z = logits.astype(F64)
    zs = z - z.max(axis=1, keepdims=True)
    logp = zs - xp.log(xp.exp(zs).sum(axis=1, keepdims=True))  # (N, K, *S) log-softmax
    g = _one_hot(labels, z.shape[1])
    nll = -(logp * g).sum(axis=1, keepdims=True)  # (N, 1, *S)
    wv = xp.ones_like(nll) if w is None else w[labels][:, None]  # (N, 1, *S) weight of each voxel
    total = float(wv.sum())
    if not total > 0:
        raise ValueError("class_weights: the classes present in labels all have weight 0, "
                         "so the weighted mean is 0/0")
    # d nll / dz = softmax(z) - onehot(y)
    return float((wv * nll).sum()) / total, (wv * (xp.exp(logp) - g) / total).astype(logits.dtype)


def dice_loss(logits, labels, include_background=True, smooth=1e-5, variant="class"):
    """Soft Dice on softmax(logits) against one-hot(labels).

    variant="class" (MONAI / nnU-Net "batch dice"): per class c, sums over batch and voxels,
        D_c = (2 sum p g + smooth) / (sum p + sum g + smooth), loss = mean_c (1 - D_c).
    variant="voxel": loss = 1 - mean over classes and voxels of 2 p g / (p + g + smooth).
    include_background=False leaves class 0 out of the mean."""
    _logits("logits", logits, softmax=True)
    _labels(labels, logits)
    _check.choice("include_background", include_background, (True, False))
    smooth = _smooth(smooth, variant)
    p = _softmax(logits.astype(F64))
    loss, dp = _dice(p, _one_hot(labels, p.shape[1]), smooth, variant, 0 if include_background else 1)
    # softmax backward: dz_k = p_k (dp_k - sum_j p_j dp_j)
    return loss, (p * (dp - (p * dp).sum(axis=1, keepdims=True))).astype(logits.dtype)


def binary_dice_loss(logits, target, smooth=1e-5, variant="class"):
    """Soft Dice on sigmoid(logits) against a [0, 1] target; each channel is one class,
    with the formulas of dice_loss, averaged over channels."""
    _logits("logits", logits)
    _target("target", target, logits, "logits")
    smooth = _smooth(smooth, variant)
    p = _sigmoid(logits.astype(F64))
    loss, dp = _dice(p, target.astype(F64), smooth, variant, 0)
    return loss, (dp * p * (1 - p)).astype(logits.dtype)


def dice_ce_loss(logits, labels, class_weights=None, include_background=True, smooth=1e-5,
                 variant="class", dice_weight=1.0, ce_weight=1.0):
    """dice_weight * dice_loss + ce_weight * cross_entropy."""
    a = _check.number("dice_weight", dice_weight, lo=0)
    b = _check.number("ce_weight", ce_weight, lo=0)
    ld, gd = dice_loss(logits, labels, include_background, smooth, variant)
    lc, gc = cross_entropy(logits, labels, class_weights)
    return a * ld + b * lc, (a * gd.astype(F64) + b * gc.astype(F64)).astype(logits.dtype)


def dice_bce_loss(logits, target, smooth=1e-5, variant="class", dice_weight=1.0, bce_weight=1.0):
    """dice_weight * binary_dice_loss + bce_weight * bce_with_logits."""
    a = _check.number("dice_weight", dice_weight, lo=0)
    b = _check.number("bce_weight", bce_weight, lo=0)
    ld, gd = binary_dice_loss(logits, target, smooth, variant)
    lb, gb = bce_with_logits(logits, target)
    return a * ld + b * lb, (a * gd.astype(F64) + b * gb.astype(F64)).astype(logits.dtype)


def mse_loss(output, target):
    """Mean over all M elements of (output - target)^2."""
    _logits("output", output)
    _target("target", target, output, "output", unit=False)
    r = output.astype(F64) - target.astype(F64)
    return float((r * r).mean()), (2 * r / r.size).astype(output.dtype)


def l1_loss(output, target):
    """Mean over all M elements of |output - target|; subgradient sign(r) / M, sign(0) = 0."""
    _logits("output", output)
    _target("target", target, output, "output", unit=False)
    xp = _check.xp_of(output)
    r = output.astype(F64) - target.astype(F64)
    return float(xp.abs(r).mean()), (xp.sign(r) / r.size).astype(output.dtype)


# ---- metrics (label maps of any shape)

def _label_pair(pred, target, num_classes):
    k = _check.integer("num_classes", num_classes, lo=1)
    _check.labels("pred", pred, k)
    _check.labels("target", target, k, shape=pred.shape)
    return k


def confusion_counts(pred, target, num_classes):
    """(tp, fp, fn), each (K,) int64: per class c, voxels with pred == target == c,
    pred == c != target, target == c != pred."""
    k = _label_pair(pred, target, num_classes)
    xp = _check.xp_of(pred)
    p, t = pred.ravel().astype(np.int64), target.ravel().astype(np.int64)
    tp = xp.bincount(t[p == t], minlength=k)
    fp = xp.bincount(p, minlength=k) - tp
    fn = xp.bincount(t, minlength=k) - tp
    return tp.astype(np.int64), fp.astype(np.int64), fn.astype(np.int64)


def _ratio(num, den):
    """num / den as float64, NaN where den == 0 (a class absent from both maps)."""
    xp = _check.xp_of(num)
    return xp.where(den > 0, num / xp.maximum(den, 1), xp.nan).astype(F64)


def dice_score(pred, target, num_classes):
    """(K,) float64 Dice 2tp / (2tp + fp + fn) per class; NaN for a class absent from
    both pred and target (use np.nanmean to average over the classes present)."""
    tp, fp, fn = confusion_counts(pred, target, num_classes)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou_score(pred, target, num_classes):
    """(K,) float64 IoU (Jaccard) tp / (tp + fp + fn) per class; NaN for a class absent
    from both pred and target."""
    tp, fp, fn = confusion_counts(pred, target, num_classes)
    return _ratio(tp, tp + fp + fn)


# ---- optimizer updates (in place; float64 inside a step, stored back in the arrays' dtype)

def _optim_arrays(**arrays):
    """The first keyword is the parameter; the others must match its shape and dtype."""
    (pname, p), *rest = arrays.items()
    _check.array(pname, p)
    for name, a in rest:
        _check.array(name, a)
        _check.same_device(name, a, pname, p)
        _check.same_shape(name, a, pname, p)
        _check.same_dtype(name, a, pname, p)


def _decay(weight_decay, l1):
    return _check.number("weight_decay", weight_decay, lo=0), _check.number("l1", l1, lo=0)


def _sgd_args(param, grad, velocity, lr, momentum, nesterov, weight_decay, l1):
    """Checks shared with cunet.ops -> (lr, momentum, weight_decay, l1) as floats."""
    _optim_arrays(param=param, grad=grad, velocity=velocity)
    lr = _check.number("lr", lr, lo=0, lo_open=True)
    mu = _check.number("momentum", momentum, lo=0, hi=1, hi_open=True)
    _check.choice("nesterov", nesterov, (False, True))
    if nesterov and mu == 0:
        raise ValueError("nesterov: expected momentum > 0 with nesterov=True, got momentum=0.0")
    return (lr, mu) + _decay(weight_decay, l1)


def _adam_args(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, l1, decoupled):
    """Checks shared with cunet.ops -> (step, lr, beta1, beta2, eps, weight_decay, l1)."""
    _optim_arrays(param=param, grad=grad, m=m, v=v)
    step = _check.integer("step", step, lo=1)
    lr = _check.number("lr", lr, lo=0, lo_open=True)
    b1 = _check.number("beta1", beta1, lo=0, hi=1, hi_open=True)
    b2 = _check.number("beta2", beta2, lo=0, hi=1, hi_open=True)
    eps = _check.number("eps", eps, lo=0, lo_open=True)
    _check.choice("decoupled", decoupled, (False, True))
    return (step, lr, b1, b2, eps) + tuple(_decay(weight_decay, l1))


def sgd_update(param, grad, velocity, lr, momentum=0.0, nesterov=False, weight_decay=0.0, l1=0.0):
    """torch.optim.SGD (dampening 0) plus an L1 term. velocity starts at zeros, which
    reproduces PyTorch's first step (buffer = g); it is untouched when momentum == 0."""
    lr, mu, wd, l1 = _sgd_args(param, grad, velocity, lr, momentum, nesterov, weight_decay, l1)
    xp = _check.xp_of(param)
    p = param.astype(F64)
    g = grad.astype(F64) + wd * p + l1 * xp.sign(p)
    if mu:
        buf = mu * velocity.astype(F64) + g
        velocity[...] = buf
        g = g + mu * buf if nesterov else buf
    param[...] = p - lr * g


def adam_update(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0, l1=0.0, decoupled=False):
    """torch.optim.Adam (decoupled=False: weight decay added to the gradient) or AdamW
    (decoupled=True: param *= 1 - lr*weight_decay before the step), plus an L1 term taken
    at the (decayed) parameter. step is the 1-based index of this update; m, v start at 0."""
    step, lr, b1, b2, eps, wd, l1 = _adam_args(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, l1,
                                               decoupled)
    xp = _check.xp_of(param)
    p = param.astype(F64)
    if decoupled:
        p = p * (1 - lr * wd)
        g = grad.astype(F64) + l1 * xp.sign(p)
    else:
        g = grad.astype(F64) + wd * p + l1 * xp.sign(p)
    m1 = b1 * m.astype(F64) + (1 - b1) * g
    m2 = b2 * v.astype(F64) + (1 - b2) * g * g
    # PyTorch's grouping: step_size = lr / bc1, denom = sqrt(v) / sqrt(bc2) + eps.
    denom = xp.sqrt(m2) / np.sqrt(1 - b2**step) + eps
    param[...] = p - (lr / (1 - b1**step)) * m1 / denom
    m[...] = m1
    v[...] = m2


def sum_squares(x):
    """sum of x**2 (the squared global norm used for gradient clipping), as a float."""
    _check.array("x", x)
    return float((x.astype(F64) ** 2).sum())


def penalty(param, l1=0.0, l2=0.0):
    """l1 * sum|p| + (l2 / 2) * sum p^2. Its gradient l1 sign(p) + l2 p is what
    sgd_update / adam_update add with l1=l1, weight_decay=l2 (both nonzero: elastic net)."""
    _check.array("param", param)
    l1 = _check.number("l1", l1, lo=0)
    l2 = _check.number("l2", l2, lo=0)
    xp = _check.xp_of(param)
    p = param.astype(F64)
    return l1 * float(xp.abs(p).sum()) + 0.5 * l2 * float((p * p).sum())


__all__ = [
    "conv_forward", "conv_backward", "conv_transpose_forward", "conv_transpose_backward",
    "maxpool_forward", "maxpool_backward", "upsample_forward", "upsample_backward",
    "concat_forward", "concat_backward", "relu_forward", "relu_backward",
    "leaky_relu_forward", "leaky_relu_backward", "sigmoid_forward", "sigmoid_backward",
    "softmax_forward", "softmax_backward", "batchnorm_forward", "batchnorm_backward",
    "philox_uniform", "dropout_mask", "dropout_forward", "dropout_backward",
    "bce_with_logits", "cross_entropy", "dice_loss", "binary_dice_loss", "dice_ce_loss", "dice_bce_loss",
    "mse_loss", "l1_loss", "confusion_counts", "dice_score", "iou_score",
    "sgd_update", "adam_update", "penalty", "sum_squares",
]
