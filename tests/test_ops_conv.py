"""cunet.ops conv and transposed conv (kernels/conv.cuh) against cunet.reference.

Every case runs on the host through the CPU variants of kernels/conv.cuh (the default)
and through the portable kernels (`variant`) in the loop mode, and, with `block_mode`
"emulated", through the tiled GPU kernels (fp32) in the block emulation.
tests/test_ops_conv_tc.py covers the tiled kernels in every precision."""
import numpy as np
import pytest

from conftest import conv_case, DEVICES, to_device, to_numpy
from cunet import ops, reference as R
from cunet._ops import core

rng = np.random.default_rng(2)


def close(got, want, k):
    """float32 sums of k products of O(1) terms: error ~ sqrt(k) ulp; 1e-5*sqrt(k) leaves room."""
    tol = 1e-5 * max(1.0, np.sqrt(k))
    np.testing.assert_allclose(to_numpy(got), want, rtol=tol, atol=tol)


# (spatial, batch, ci, co, kernel, stride, padding, dilation)
CONV = [
    ((7, 9), 1, 3, 5, 3, 1, 1, 1),
    ((8, 7), 3, 5, 3, 3, 2, 1, 1),
    ((9, 6), 1, 17, 2, 2, 2, 0, 1),
    ((6, 7), 3, 3, 7, 1, 1, 0, 1),
    ((7, 7), 1, 2, 3, 3, 1, 2, 2),
    ((5, 7, 6), 1, 3, 5, 3, 1, 1, 1),
    ((7, 5, 6), 3, 5, 3, 3, 2, 1, 1),
    ((6, 6, 5), 1, 3, 2, 2, 2, 0, 1),
    ((5, 5, 5), 3, 2, 3, 1, 1, 0, 1),
    ((6, 5, 7), 1, 3, 2, (1, 3, 2), (1, 2, 1), (0, 1, 0), 1),
    # edges of the host variants: widths below / around the 16-float vector, channel counts
    # that split into uneven blocks of at most 6 (forward, data gradient) and 6x4 (weight
    # gradient), stride phases, dilation, padding past the kernel's reach, 1x1, 3D, and
    # grids long enough for several work chunks and weight-gradient slices
    ((7, 1), 3, 3, 5, 3, 1, 1, 1),
    ((7, 9), 3, 7, 13, 3, 1, 1, 1),
    ((1, 17), 1, 5, 3, 3, 1, 1, 1),
    ((5, 3), 3, 17, 1, 3, 1, 1, 1),
    ((9, 33), 3, 1, 17, 3, 1, 1, 1),
    ((17, 17), 3, 3, 5, 3, 2, 1, 1),
    ((16, 15), 1, 5, 3, 3, 2, 1, 1),
    ((9, 17), 1, 5, 3, 3, 1, 2, 2),
    ((11, 13), 3, 3, 5, 3, 3, 2, 2),
    ((17, 33), 3, 17, 2, 1, 1, 0, 1),
    ((6, 5), 1, 5, 3, 1, 1, 2, 1),
    ((16, 18), 1, 5, 17, 2, 2, 0, 1),
    ((40, 70), 3, 5, 3, 3, 1, 1, 1),
    ((16, 20), 3, 130, 2, 3, 1, 1, 1),
    ((3, 17, 5), 3, 17, 5, 3, 1, 1, 1),
    ((9, 1, 17), 1, 1, 3, 3, 2, 1, 1),
    ((4, 6, 8), 1, 5, 17, 2, 2, 0, 1),
    ((5, 4, 33), 1, 3, 1, 3, 1, 2, 2),
    # Winograd F(2x2, 3x3) (2D 3x3, stride 1, padding 1, >= 8 channels): widths a multiple
    # of 32 (row vectors of tiles) with odd and even heights, chunks that end in 1-3 vectors,
    # channel blocks of 4-6
    ((5, 64), 2, 8, 9, 3, 1, 1, 1),
    ((4, 32), 1, 20, 9, 3, 1, 1, 1),
    ((33, 64), 3, 8, 13, 3, 1, 1, 1),
    ((2, 2), 2, 8, 8, 3, 1, 1, 1),
    ((3, 64), 1, 8, 18, 3, 1, 1, 1),
    # ... W = 16 and 8 (2 and 4 tile rows per vector; the last vector partly past the tiles)
    ((5, 16), 3, 9, 8, 3, 1, 1, 1),
    ((6, 8), 1, 8, 10, 3, 1, 1, 1),
    ((16, 16), 5, 8, 9, 3, 1, 1, 1),
    ((33, 8), 9, 8, 8, 3, 1, 1, 1),
    # ... the weight gradient as a GEMM over transposed tiles (64 to 511 tiles, >= 64
    # channels; channel counts off the vector and block sizes), W = 8 and lanes gathered
    ((8, 8), 5, 65, 70, 3, 1, 1, 1),
    ((10, 10), 3, 64, 67, 3, 1, 1, 1),
    # 3D Winograd F(2x2x2, 3x3x3) (forward, data gradient; >= 16 channels): rows of tiles
    # (W = 32), 2 and 4 tile rows per vector (W = 16, 8), lanes gathered (W = 6), odd and
    # even depths; the same shapes below 16 channels take the direct kernels
    ((3, 4, 32), 2, 16, 17, 3, 1, 1, 1),
    ((4, 5, 16), 1, 17, 16, 3, 1, 1, 1),
    ((7, 6, 8), 1, 16, 16, 3, 1, 1, 1),
    ((5, 3, 6), 1, 16, 18, 3, 1, 1, 1),
    ((3, 4, 32), 2, 3, 5, 3, 1, 1, 1),
    # patch convs (kernel = stride, no padding): 1x1 read in place, 2x2 split by column
    # parity in vectors and a tail, 3D, several strips per image with a short last one
    ((8, 16), 2, 5, 3, 1, 1, 0, 1),
    ((4, 64), 2, 3, 5, 2, 2, 0, 1),
    ((4, 6, 40), 1, 3, 4, 2, 2, 0, 1),
    ((32, 64), 2, 200, 3, 2, 2, 0, 1),
    # ... short strips of >= 64 channels: the weight gradient as a GEMM over transposed strips
    ((8, 8), 2, 17, 65, 2, 2, 0, 1),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CONV, ids=str)
def test_conv_matches_reference(case, device, block_mode, variant):
    sz, n, ci, co, k, s, p, d = case
    x, w, b = conv_case(rng, sz, n, ci, co, k)
    kk = w.shape[2:]
    X, W, B = (to_device(a, device) for a in (x, w, b))
    y = R.conv_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), s, p, d)
    taps = ci * int(np.prod(kk))
    close(ops.conv_forward(X, W, B, s, p, d), y, taps)
    close(ops.conv_forward(X, W, None, s, p, d), y - b.reshape((1, -1) + (1,) * len(sz)), taps)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    want = R.conv_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), s, p, d)
    got = ops.conv_backward(to_device(dy, device), X, W, s, p, d)
    close(got[0], want[0], co * int(np.prod(kk)))
    close(got[1], want[1], dy[:, 0].size)
    close(got[2], want[2], dy[:, 0].size)
    # x a ReLU's output: relu_input=True returns dx through that ReLU (masked as it is written)
    xr = np.maximum(x, 0.0).astype(np.float32)
    dxr = R.conv_backward(dy.astype(np.float64), xr.astype(np.float64), w.astype(np.float64), s, p, d)[0]
    gr = ops.conv_backward(to_device(dy, device), to_device(xr, device), W, s, p, d, relu_input=True)[0]
    close(gr, np.where(xr > 0, dxr, 0.0), co * int(np.prod(kk)))
    assert not to_numpy(gr)[xr <= 0].any()
    if device == "cpu" and variant == "host":   # without the data gradient: the same dw, db
        dx, dw, db = ops.conv_backward(dy, x, w, s, p, d, input_grad=False)
        assert dx is None
        np.testing.assert_array_equal(dw, got[1])
        np.testing.assert_array_equal(db, got[2])


CONVT = [
    ((4, 5), 1, 3, 5, 2, 2, 0, 0),
    ((5, 3), 3, 5, 3, 3, 2, 1, 1),
    ((3, 4), 1, 17, 3, 3, 1, 1, 0),
    ((3, 3), 3, 2, 2, 3, 3, 0, 2),
    ((3, 4, 5), 1, 3, 5, 2, 2, 0, 0),
    ((3, 3, 2), 3, 3, 2, 3, 2, 1, 1),
    ((1, 17), 3, 5, 1, 2, 2, 0, 0),
    ((8, 8), 1, 17, 3, 2, 2, 0, 0),
    ((7, 9), 1, 3, 5, 3, 2, 1, 1),
    ((5, 6), 3, 2, 3, 1, 2, 0, 1),
    ((3, 5, 4), 3, 5, 17, 2, 2, 0, 0),
    # the UNet's up-sampling (2x2 stride 2): column pairs written interleaved, 16+ wide rows
    ((4, 32), 2, 6, 4, 2, 2, 0, 0),
    ((2, 2, 20), 1, 5, 3, 2, 2, 0, 0),
    ((4, 4), 2, 70, 33, 2, 2, 0, 0),   # the weight gradient's GEMM form (16 voxels, 70 x 132 products)
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CONVT, ids=str)
def test_conv_transpose_matches_reference(case, device, block_mode, variant):
    sz, n, ci, co, k, s, p, op = case
    x = rng.standard_normal((n, ci) + sz).astype(np.float32)
    w = rng.standard_normal((ci, co) + (k,) * len(sz)).astype(np.float32)
    b = rng.standard_normal(co).astype(np.float32)
    X, W, B = (to_device(a, device) for a in (x, w, b))
    y = R.conv_transpose_forward(*(a.astype(np.float64) for a in (x, w, b)), s, p, op)
    close(ops.conv_transpose_forward(X, W, B, s, p, op), y, ci * k ** len(sz))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    want = R.conv_transpose_backward(*(a.astype(np.float64) for a in (dy, x, w)), s, p, op)
    got = ops.conv_transpose_backward(to_device(dy, device), X, W, s, p, op)
    close(got[0], want[0], co * k ** len(sz))
    close(got[1], want[1], x[:, 0].size)
    close(got[2], want[2], dy[:, 0].size)


def test_conv_host_variants_are_deterministic():
    """Same inputs, same bits: no thread-order dependence (weight-gradient slices included)."""
    x = rng.standard_normal((3, 5, 40, 70)).astype(np.float32)
    w = rng.standard_normal((7, 5, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((3, 7, 40, 70)).astype(np.float32)
    first = (ops.conv_forward(x, w, None, 1, 1),) + ops.conv_backward(dy, x, w, 1, 1)
    for _ in range(3):
        again = (ops.conv_forward(x, w, None, 1, 1),) + ops.conv_backward(dy, x, w, 1, 1)
        for a, b in zip(first, again):
            assert np.array_equal(a, b)


def test_set_host_variants_switches_and_restores():
    assert core.native().host_variants()
    ops.set_host_variants(False)
    assert not core.native().host_variants()
    ops.set_host_variants(True)
    assert core.native().host_variants()


def test_conv_ops_errors_match_reference():
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    for fn in (R.conv_forward, ops.conv_forward):
        with pytest.raises(ValueError, match="w: expected 2 input channels"):
            fn(x, np.zeros((3, 4, 3, 3), np.float32))
        with pytest.raises(ValueError, match="w: kernel extent 7"):
            fn(x, np.zeros((3, 2, 7, 7), np.float32))
    with pytest.raises(TypeError, match="x: cunet.ops kernels take float32, got float64"):
        ops.conv_forward(x.astype(np.float64), w.astype(np.float64))
    with pytest.raises(ValueError, match=r"dy: expected shape \(1, 5, 6, 6\)"):
        ops.conv_transpose_backward(np.zeros((1, 5, 5, 5), np.float32), np.zeros((1, 2, 3, 3), np.float32),
                                    np.zeros((2, 5, 2, 2), np.float32), stride=2)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.conv_forward(np.zeros((1, 2, 5, 10), np.float32)[..., ::2], w)


@pytest.mark.parametrize("case", [((100, 16), 1, 300, 2, 1), ((20, 32), 2, 40, 3, 2), ((16, 16), 1, 8, 9, 3)], ids=str)
def test_conv_reads_nothing_past_its_arrays(case):
    """x, w and dy as views of buffers whose next elements are NaN: a kernel reading past an
    array's end (a strip's last vector, a 1x1 conv read in place) would turn results NaN."""
    sz, n, ci, co, k = case
    x, w, b = conv_case(rng, sz, n, ci, co, k)
    s, p = (k, 0) if k < 3 else (1, 1)
    y = R.conv_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), s, p, 1)
    dy = rng.standard_normal(y.shape).astype(np.float32)

    def fenced(a):
        buf = np.full(a.size + 64, np.nan, np.float32)
        buf[:a.size] = a.ravel()
        return buf[:a.size].reshape(a.shape)

    X, W, DY = fenced(x), fenced(w), fenced(dy)
    close(ops.conv_forward(X, W, b, s, p, 1), y, ci * k * k)
    want = R.conv_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), s, p, 1)
    got = ops.conv_backward(DY, X, W, s, p, 1)
    for g, wv, kk in zip(got, want, (co * k * k, dy[:, 0].size, dy[:, 0].size)):
        close(g, wv, kk)


def test_host_pool_reuses_only_unreferenced_arrays():
    """core.empty's pool: a large buffer comes back only once no name, view or container
    refers to it, for any shape of its size; past the byte cap the free ones are dropped."""
    pool = core._HostPool()
    a = pool.get((512, 1024), np.float32)
    buf = id(a.base)   # (a name for the buffer itself would keep it in use)
    view = a[3:]
    del a
    b = pool.get((512, 1024), np.float32)
    assert id(b.base) != buf   # the view still holds it
    del view
    c = pool.get((1024, 512), np.float32)   # same size, other shape
    assert id(c.base) == buf and c.shape == (1024, 512) and c.dtype == np.float32 and c.flags.c_contiguous
    small = pool.get((4, 4), np.float32)   # below MIN: never pooled
    assert small.base is None and pool.bytes == 2 * 512 * 1024 * 4
    pool.CAP = pool.bytes + 1
    del b
    pool.get((1024, 1024), np.float32)   # over the cap: the free buffer is dropped first
    assert pool.bytes == (512 + 1024) * 1024 * 4
