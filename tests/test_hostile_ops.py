"""Hostile sizes and strides given to the ops: each case either matches the reference or
raises ValueError/TypeError naming the argument, on the CPU variants and the portable
kernels alike (`variant`), and never takes more memory than the arrays involved need.

The first table is geometry the CPU variants' phase-split copy once took badly (stride
2**30 crashed, stride 4096 took 1.6 GB): they must now fall back to the portable kernels.
"""
import resource

import numpy as np
import pytest

from cunet import ops, reference
from cunet._ops import core, conv as conv_ops

RNG = np.random.default_rng(19)


def _case(x_shape, w_shape):
    x = RNG.standard_normal(x_shape).astype(np.float32)
    w = RNG.standard_normal(w_shape).astype(np.float32)
    return x, w, RNG.standard_normal(w_shape[0]).astype(np.float32)


# (x shape, w shape, stride, padding, dilation): valid convs with extreme geometry
EXTREME = [
    ((2, 3, 9, 9), (4, 3, 3, 3), 2 ** 30, 1, 1),          # segfaulted in the phase copy
    ((2, 3, 9, 9), (4, 3, 3, 3), 4096, 1, 1),             # took 1.6 GB (phases = stride product)
    ((2, 3, 9, 9), (4, 3, 3, 3), 2 ** 31 - 1, 1, 1),      # the largest stride accepted
    ((1, 2, 40, 40), (3, 2, 3, 3), 33, 1, 1),             # just past the phase-copy limit
    ((1, 2, 40, 40), (3, 2, 3, 3), (1, 32), 1, 1),        # at it on one axis
    ((1, 2, 9, 9), (3, 2, 3, 3), 1, 1000, 1000),          # huge dilation: reads mostly padding
    ((1, 2, 9, 9), (3, 2, 3, 3), 1000, 1000, 1),          # huge padding and stride
    ((1, 2, 5, 5), (3, 2, 3, 3), 1, 30, 1),               # padding far beyond the input
    ((1, 1, 3, 4, 5), (2, 1, 3, 3, 3), (1000, 1, 7), 1, 1),   # 3D, mixed strides
    ((1, 2, 1, 1), (3, 2, 1, 1), 2 ** 20, 0, 1),          # 1x1 image, 1x1 kernel
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation", EXTREME)
def test_extreme_geometry_matches_reference(variant, x_shape, w_shape, stride, padding, dilation):
    x, w, b = _case(x_shape, w_shape)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    y = ops.conv_forward(x, w, b, stride, padding, dilation)
    want = reference.conv_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), stride,
                                  padding, dilation)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    dy = RNG.standard_normal(y.shape).astype(np.float32)
    got = ops.conv_backward(dy, x, w, stride, padding, dilation)
    ref = reference.conv_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), stride,
                                  padding, dilation)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-3)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before   # KiB
    assert grown < 200 * 1024, f"peak memory grew by {grown / 1024:.0f} MiB for arrays of a few KiB"


def test_huge_stride_transposed_conv_refused_before_allocating():
    # output (1, 2, (9-1)*2**30 + 3, ...): far more than any machine's memory
    x, w, _ = _case((1, 3, 9, 9), (3, 2, 3, 3))
    with pytest.raises(ValueError, match=r"output of shape .* GiB, more than this machine"):
        ops.conv_transpose_forward(x, w, None, stride=2 ** 30)


BAD = [   # (kwargs, the argument the error names, exception type)
    (dict(stride=0), "stride", ValueError),
    (dict(stride=-3), "stride", ValueError),
    (dict(stride=2 ** 31), "stride", ValueError),
    (dict(stride=2 ** 63), "stride", ValueError),
    (dict(stride=1.5), "stride", TypeError),
    (dict(stride="2"), "stride", ValueError),
    (dict(stride=(1, 2, 3)), "stride", ValueError),
    (dict(stride=None), "stride", TypeError),
    (dict(padding=-1), "padding", ValueError),
    (dict(padding=2 ** 40), "padding", ValueError),
    (dict(dilation=0), "dilation", ValueError),
    (dict(dilation=2 ** 31), "dilation", ValueError),
    (dict(dilation=5), "w", ValueError),     # kernel extent 11 > padded input 9
    (dict(padding=True), "padding", TypeError),
]


@pytest.mark.parametrize("kwargs, name, exc", BAD)
def test_bad_geometry_names_the_argument(variant, kwargs, name, exc):
    x, w, b = _case((2, 3, 7, 7), (4, 3, 3, 3))
    args = dict(stride=1, padding=1, dilation=1) | kwargs
    for f in (ops.conv_forward, reference.conv_forward):
        with pytest.raises(exc, match=rf"^{name}: "):
            f(x, w, b, **args)


@pytest.mark.parametrize("x_shape, w_shape", [
    ((0, 3, 7, 7), (4, 3, 3, 3)),     # empty batch
    ((2, 0, 7, 7), (4, 0, 3, 3)),     # no input channels
    ((2, 3, 7, 7), (0, 3, 3, 3)),     # no output channels
])
def test_empty_sizes_match_reference(variant, x_shape, w_shape):
    x, w, b = _case(x_shape, w_shape)
    y = ops.conv_forward(x, w, b, 1, 1)
    want = reference.conv_forward(x, w, b, 1, 1)
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, atol=1e-5)


@pytest.mark.parametrize("kernel, stride, padding, name", [
    (2 ** 31, None, 0, "kernel"), (0, None, 0, "kernel"), (2, 2 ** 31, 0, "stride"), (2, 2, -1, "padding"),
])
def test_maxpool_bad_geometry(kernel, stride, padding, name):
    x = RNG.standard_normal((1, 2, 8, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=rf"^{name}: "):
        ops.maxpool_forward(x, kernel, stride, padding)


def test_maxpool_huge_stride_matches_reference(variant):
    x = RNG.standard_normal((1, 2, 9, 9)).astype(np.float32)
    y, idx = ops.maxpool_forward(x, 2, 2 ** 30, 0)
    want, _ = reference.maxpool_forward(x, 2, 2 ** 30, 0)
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("scale, name", [(0, "scale"), (2 ** 31, "scale"), (-2, "scale")])
def test_upsample_bad_scale(scale, name):
    x = RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=rf"^{name}: "):
        ops.upsample_forward(x, scale)


def test_upsample_huge_scale_refused_before_allocating():
    x = RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"output of shape .* more than this machine"):
        ops.upsample_forward(x, 2 ** 20)


# The CuPy path plans its tiled launches with the C++ launchers' conv_tiled_grid, which
# refuses sizes the kernels' 32-bit indices cannot hold (a 3D batch of 2 at 1024^3 would
# have overflowed silently on a GPU). Its grids are checked here without a GPU.
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation", [
    ((2, 1, 1024, 1024, 1024), (1, 1, 3, 3, 3), 1, 1, 1),        # M = N * out voxels = 2**31
    ((1, 1, 2 ** 31 - 1, 1), (1, 1, 1, 1), 1, 0, 1),             # one axis at the limit: fine
    ((1, 1, 3, 3), (1, 1, 3, 3), 1, 2 ** 31 - 2, 1),             # padding: x - 1 + P reaches 2**31
    ((1, 1, 4, 4), (1, 1, 3, 3), 1, 2 ** 30, 2 ** 30),           # tap coordinate (K-1)*Dil = 2**31
    ((1, 2 ** 28, 4, 4), (1, 2 ** 28, 3, 3), 1, 1, 1),           # Ci * taps = 9 * 2**28 (shapes only)
])
def test_tiled_grid_guards_32bit_indices(x_shape, w_shape, stride, padding, dilation):
    nd = len(x_shape) - 2
    st, pd, dl = ((v,) * nd if isinstance(v, int) else v for v in (stride, padding, dilation))
    out = reference._conv_geometry(x_shape[2:], w_shape[2:], st, pd, dl)
    dims = conv_ops._dims(x_shape, w_shape, w_shape[0], out, st, pd, dl)
    n, ci, co = x_shape[0], x_shape[1], w_shape[0]
    taps, si, so = np.prod(w_shape[2:]), np.prod(x_shape[2:]), np.prod(out)
    coords = [(o - 1) * s + (k - 1) * d for o, s, k, d in zip(out, st, w_shape[2:], dl)] + \
             [x - 1 + p for x, p in zip(x_shape[2:], pd)]
    fits = max(n * si, n * so, ci * taps, co * taps, *coords) < 2 ** 31
    for pass_ in (0, 1, 2):
        if fits:
            assert conv_ops._grid(dims, pass_) >= 1
        else:
            with pytest.raises(ValueError, match=r"32-bit indices"):
                conv_ops._grid(dims, pass_)


def test_tiled_grid_matches_tile_count():
    dims = conv_ops._dims((3, 5, 17, 19), (7, 5, 3, 3), 7, (17, 19), (1, 1), (1, 1), (1, 1))
    tiles = lambda m, nn: -(-m // 64) * -(-nn // 64)   # noqa: E731  64 x 64 tiles of C
    assert conv_ops._grid(dims, 0) == tiles(3 * 17 * 19, 7)
    assert conv_ops._grid(dims, 1) == tiles(3 * 17 * 19, 5)
    assert conv_ops._grid(dims, 2) == tiles(7, 5 * 9)
    with pytest.raises(ValueError, match="pass must be 0, 1 or 2"):
        core.native().conv_tiled_grid(*dims, 3)
