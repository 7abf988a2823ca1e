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
import numpy as np

from cunet import _check
from cunet import _reference_losses as _losses   # losses, metrics, optimizer updates

_loss_names = [n for n, f in vars(_losses).items()
               if callable(f) and not n.startswith("_") and getattr(f, "__module__", "") == _losses.__name__]
globals().update({n: getattr(_losses, n) for n in _loss_names})

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


def _conv_args(x, w, b, stride, padding, dilation):
    """-> (stride, padding, dilation, out_spatial) as tuples; checks shapes and dtypes."""
    _check.image("x", x)
    _check.array("w", w, ndim=x.ndim)
    _check.same_dtype("w", w, "x", x)
    _check.same_device("w", w, "x", x)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"w: expected {x.shape[1]} input channels (x has shape {tuple(x.shape)}), "
                         f"got w of shape {tuple(w.shape)}")
    if b is not None:
        _check.array("b", b, ndim=1)
        _check.same_dtype("b", b, "x", x)
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"b: expected shape ({w.shape[0]},), got {tuple(b.shape)}")
    nd = x.ndim - 2
    stride = _check.tuple_arg("stride", stride, nd, minimum=1)
    padding = _check.tuple_arg("padding", padding, nd, minimum=0)
    dilation = _check.tuple_arg("dilation", dilation, nd, minimum=1)
    out = _conv_geometry(x.shape[2:], w.shape[2:], stride, padding, dilation)
    return stride, padding, dilation, out


def _conv_backward_args(dy, x, w, stride, padding, dilation):
    stride, padding, dilation, out = _conv_args(x, w, None, stride, padding, dilation)
    _check.array("dy", dy, ndim=x.ndim)
    _check.same_dtype("dy", dy, "x", x)
    want = (x.shape[0], w.shape[0]) + out
    if tuple(dy.shape) != want:
        raise ValueError(f"dy: expected shape {want} (the forward output), got {tuple(dy.shape)}")
    return stride, padding, dilation, out


def _conv_transpose_args(x, w, b, stride, padding, output_padding):
    """-> (stride, padding, output_padding, out_spatial)."""
    _check.image("x", x)
    _check.array("w", w, ndim=x.ndim)
    _check.same_dtype("w", w, "x", x)
    _check.same_device("w", w, "x", x)
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"w: expected {x.shape[1]} input channels first (layout (Ci, Co, *k)), "
                         f"got w of shape {tuple(w.shape)}")
    if b is not None:
        _check.array("b", b, ndim=1)
        _check.same_dtype("b", b, "x", x)
        if b.shape[0] != w.shape[1]:
            raise ValueError(f"b: expected shape ({w.shape[1]},), got {tuple(b.shape)}")
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


def _batchnorm_args(x, gamma, beta, running_mean, running_var, momentum, eps):
    _check.image("x", x)
    c = x.shape[1]
    for name, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if a is None and name.startswith("running"):
            continue
        _check.array(name, a, ndim=1)
        _check.same_dtype(name, a, "x", x)
        if a.shape[0] != c:
            raise ValueError(f"{name}: expected shape ({c},) (the channels of x), got {tuple(a.shape)}")
    _check.number("momentum", momentum, 0.0, 1.0)
    _check.number("eps", eps, 0.0, lo_open=True)


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


def conv_forward(x, w, b=None, stride=1, padding=0, dilation=1):
    """y[n, co, o] = b[co] + sum_{ci, k} w[co, ci, k] * x[n, ci, o*stride - padding + k*dilation]."""
    stride, padding, dilation, out = _conv_args(x, w, b, stride, padding, dilation)
    xp = _pad(x, padding)
    y = np.zeros((x.shape[0], w.shape[0]) + out, dtype=x.dtype)
    for k in _taps(w.shape[2:]):
        offset = tuple(kk * d for kk, d in zip(k, dilation))
        patch = xp[(slice(None), slice(None)) + _window(offset, (0,) * len(k), out, stride)]
        y += np.einsum("ni...,oi->no...", patch, w[(slice(None), slice(None)) + k])
    if b is not None:
        y += b.reshape((1, -1) + (1,) * len(out))
    return y


def conv_backward(dy, x, w, stride=1, padding=0, dilation=1):
    """-> (dx, dw, db): every tap scatters dy back through the window it read."""
    stride, padding, dilation, out = _conv_backward_args(dy, x, w, stride, padding, dilation)
    xp = _pad(x, padding)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for k in _taps(w.shape[2:]):
        offset = tuple(kk * d for kk, d in zip(k, dilation))
        win = (slice(None), slice(None)) + _window(offset, (0,) * len(k), out, stride)
        dxp[win] += np.einsum("no...,oi->ni...", dy, w[(slice(None), slice(None)) + k])
        dw[(slice(None), slice(None)) + k] = _contract(dy, xp[win])
    crop = (slice(None), slice(None)) + tuple(slice(p, p + n) for p, n in zip(padding, x.shape[2:]))
    return dxp[crop], dw, dy.sum(axis=(0,) + tuple(range(2, dy.ndim)))


def conv_transpose_forward(x, w, b=None, stride=1, padding=0, output_padding=0):
    """The gradient of a conv with weight w (Ci, Co, *k) with respect to its input:
    every input voxel scatters w[ci, :, k] to output o = i*stride - padding + k."""
    stride, padding, output_padding, out = _conv_transpose_args(x, w, b, stride, padding, output_padding)
    full = tuple(max((n - 1) * s + k, p + o) for n, s, k, p, o in zip(x.shape[2:], stride, w.shape[2:], padding, out))
    yfull = np.zeros((x.shape[0], w.shape[1]) + full, dtype=x.dtype)
    for k in _taps(w.shape[2:]):
        win = (slice(None), slice(None)) + _window(k, (0,) * len(k), x.shape[2:], stride)
        yfull[win] += np.einsum("ni...,io->no...", x, w[(slice(None), slice(None)) + k])
    y = yfull[(slice(None), slice(None)) + tuple(slice(p, p + o) for p, o in zip(padding, out))].copy()
    if b is not None:
        y += b.reshape((1, -1) + (1,) * len(out))
    return y


def conv_transpose_backward(dy, x, w, stride=1, padding=0, output_padding=0):
    """-> (dx, dw, db): each tap gathers dy at the positions its input voxels wrote."""
    stride, padding, output_padding, out = _conv_transpose_args(x, w, None, stride, padding, output_padding)
    _check.array("dy", dy, ndim=x.ndim)
    _check.same_dtype("dy", dy, "x", x)
    want = (x.shape[0], w.shape[1]) + out
    if tuple(dy.shape) != want:
        raise ValueError(f"dy: expected shape {want} (the forward output), got {tuple(dy.shape)}")
    full = tuple(max((n - 1) * s + k, p + o) for n, s, k, p, o in zip(x.shape[2:], stride, w.shape[2:], padding, out))
    dyfull = np.zeros((dy.shape[0], dy.shape[1]) + full, dtype=dy.dtype)
    dyfull[(slice(None), slice(None)) + tuple(slice(p, p + o) for p, o in zip(padding, out))] = dy
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for k in _taps(w.shape[2:]):
        g = dyfull[(slice(None), slice(None)) + _window(k, (0,) * len(k), x.shape[2:], stride)]
        dx += np.einsum("no...,io->ni...", g, w[(slice(None), slice(None)) + k])
        dw[(slice(None), slice(None)) + k] = _contract(x, g)
    return dx, dw, dy.sum(axis=(0,) + tuple(range(2, dy.ndim)))


# ---- max pooling


def maxpool_forward(x, kernel=2, stride=None, padding=0):
    """-> (y, argmax). argmax (int64, shape of y) is the flat index of the maximum in
    x's spatial plane (PyTorch's convention). Ties keep the first maximum in window
    order (row-major over the kernel); a NaN wins, as in PyTorch. Padding is -inf."""
    kernel, stride, padding, out = _maxpool_args(x, kernel, stride, padding)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding], constant_values=-np.inf)
    y = np.full(x.shape[:2] + out, -np.inf, dtype=x.dtype)
    arg = np.zeros(x.shape[:2] + out, dtype=np.int64)
    grids = np.meshgrid(*[np.arange(o) * s for o, s in zip(out, stride)], indexing="ij")
    for k in _taps(kernel):
        v = xp[(slice(None), slice(None)) + _window(k, (0,) * len(k), out, stride)]
        take = (v > y) | (np.isnan(v) & ~np.isnan(y))
        idx = np.ravel_multi_index(tuple(np.clip(g + kk - p, 0, n - 1) for g, kk, p, n in
                                         zip(grids, k, padding, x.shape[2:])), x.shape[2:])
        y = np.where(take, v, y)
        arg = np.where(take, idx, arg)
    return y, arg


def maxpool_backward(dy, argmax, x_shape):
    """dx: every output's gradient added at the input position its argmax names."""
    x_shape = _shape_arg("x_shape", x_shape)
    _check.array("dy", dy, ndim=len(x_shape))
    _check.array("argmax", argmax, dtype="int")
    _check.same_shape("argmax", argmax, "dy", dy)
    if tuple(dy.shape[:2]) != x_shape[:2]:
        raise ValueError(f"dy: expected batch and channels {x_shape[:2]} (from x_shape), got {tuple(dy.shape[:2])}")
    plane = int(np.prod(x_shape[2:]))
    if argmax.size and (argmax.min() < 0 or argmax.max() >= plane):
        raise ValueError(f"argmax: values must lie in [0, {plane}), found {int(argmax.min())}..{int(argmax.max())}")
    nc = x_shape[0] * x_shape[1]
    dx = np.zeros((nc, plane), dtype=dy.dtype)
    rows = np.repeat(np.arange(nc), dy.size // max(nc, 1))
    np.add.at(dx, (rows, argmax.reshape(-1)), dy.reshape(-1))
    return dx.reshape(x_shape)


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
    x_shape = _shape_arg("x_shape", x_shape)
    scale, out = _upsample_args(x_shape, scale, mode)
    _check.array("dy", dy, ndim=len(x_shape))
    want = x_shape[:2] + out
    if tuple(dy.shape) != want:
        raise ValueError(f"dy: expected shape {want} (the forward output), got {tuple(dy.shape)}")
    dx = dy
    for axis, s in enumerate(scale, start=2):
        if mode == "nearest":
            shp = dx.shape[:axis] + (x_shape[axis], s) + dx.shape[axis + 1:]
            dx = dx.reshape(shp).sum(axis=axis + 1)
        else:
            dx = _along(dx, axis, _linear_matrix(x_shape[axis], s, dy.dtype).T)
    return dx


# ---- concatenation


def concat_forward(xs):
    """Concatenate along channels: (N, C1, *S), (N, C2, *S), ... -> (N, C1+C2+..., *S)."""
    if not isinstance(xs, (list, tuple)) or len(xs) < 1:
        raise TypeError(f"xs: expected a non-empty list of arrays, got {type(xs).__name__}")
    for i, a in enumerate(xs):
        _check.image(f"xs[{i}]", a)
        _check.same_dtype(f"xs[{i}]", a, "xs[0]", xs[0])
        if a.ndim != xs[0].ndim or a.shape[0] != xs[0].shape[0] or a.shape[2:] != xs[0].shape[2:]:
            raise ValueError(f"xs[{i}]: expected shape (N, C, *S) = ({xs[0].shape[0]}, C, "
                             f"{', '.join(map(str, xs[0].shape[2:]))}) like xs[0], got {tuple(a.shape)}")
    return np.concatenate(xs, axis=1)


def concat_backward(dy, channels):
    """Split dy along channels into pieces of `channels` = (C1, C2, ...) channels."""
    _check.image("dy", dy)
    channels = tuple(_check.integer("channels", c, lo=1) for c in channels)
    if sum(channels) != dy.shape[1]:
        raise ValueError(f"channels: expected sizes summing to {dy.shape[1]} (the channels of dy), got {channels}")
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
    _check.image("dy", dy)
    _check.same_shape("x", x, "dy", dy)
    _batchnorm_args(x, gamma, mean, invstd, None, 0.0, 1.0)
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


__all__ = [
    "conv_forward", "conv_backward", "conv_transpose_forward", "conv_transpose_backward",
    "maxpool_forward", "maxpool_backward", "upsample_forward", "upsample_backward",
    "concat_forward", "concat_backward", "relu_forward", "relu_backward",
    "leaky_relu_forward", "leaky_relu_backward", "sigmoid_forward", "sigmoid_backward",
    "softmax_forward", "softmax_backward", "batchnorm_forward", "batchnorm_backward",
    "philox_uniform", "dropout_mask", "dropout_forward", "dropout_backward",
] + list(_loss_names)
