"""The tiled implicit-GEMM conv kernels of kernels/conv.cuh in every precision.

On the host they run through the fiber block emulation with their GPU block size
(set_emulate_blocks(True)), tf32 / bf16 through the emulated mma.sync of
kernels/portable.cuh; with a GPU, the same cases run on CuPy arrays (marked gpu).
Expected values: cunet.reference with the same precision (operands rounded as
cvt.rna.tf32 / cvt.rn.bf16 do), in float64.

Tolerance: a product of two tf32 (11-bit) or bf16 (8-bit) significands is exact in fp32,
so kernel and reference differ only by the fp32 rounding of the sums, in a different
order: ~sqrt(k) ulp for k products of O(1) terms; 1e-5*sqrt(k) (relative and absolute)
as in test_ops_conv.py. On the GPU, tensor cores accumulate with their own rounding: 4x that.
"""
import numpy as np
import pytest

from conftest import conv_case, DEVICES, to_device, to_numpy
from cunet import ops, reference as R
from cunet._ops import core

rng = np.random.default_rng(7)
PRECISIONS = ["fp32", "tf32", "bf16"]


@pytest.fixture
def tiled():
    """Host: the conv launchers run the tiled GPU kernels through the block emulation."""
    core.set_emulate_blocks(True)
    yield
    core.set_emulate_blocks(False)


def close(got, want, k, device):
    tol = (4 if device == "cuda" else 1) * 1e-5 * max(1.0, np.sqrt(k))
    np.testing.assert_allclose(to_numpy(got), want, rtol=tol, atol=tol)


def f64(*arrays):
    return [None if a is None else a.astype(np.float64) for a in arrays]


# (spatial, batch, ci, co, kernel, stride, padding, dilation): odd sizes and channel counts,
# more than one 64-wide tile along M, N and K, strided data gradients (gathered dy),
# dilation, 1x1, uneven kernels, and a weight gradient long enough to be split over K
CONV = [
    ((7, 9), 1, 3, 5, 3, 1, 1, 1),
    ((8, 7), 2, 5, 3, 3, 2, 1, 1),
    ((9, 6), 1, 17, 2, 2, 2, 0, 1),
    ((7, 7), 1, 2, 3, 3, 1, 2, 2),
    ((9, 11), 2, 67, 70, 1, 1, 0, 1),
    ((12, 13), 1, 5, 9, 3, 1, 1, 1),
    ((17, 17), 1, 3, 5, 3, 3, 2, 2),
    ((11, 13), 1, 3, 5, (1, 3), (1, 2), (0, 1), 1),
    ((20, 22), 2, 3, 5, 3, 1, 1, 1),
    ((5, 7, 6), 1, 3, 5, 3, 1, 1, 1),
    ((7, 5, 6), 2, 5, 3, 3, 2, 1, 1),
    ((6, 5, 7), 1, 3, 2, (1, 3, 2), (1, 2, 1), (0, 1, 0), 1),
    ((4, 6, 8), 1, 5, 17, 2, 2, 0, 1),
    ((5, 4, 9), 1, 3, 1, 3, 1, 2, 2),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", CONV, ids=str)
def test_tiled_conv_matches_reference(case, precision, device, tiled):
    sz, n, ci, co, k, s, p, d = case
    x, w, b = conv_case(rng, sz, n, ci, co, k)
    kk = w.shape[2:]
    X, W, B = (to_device(a, device) for a in (x, w, b))
    taps = int(np.prod(kk))
    for bias in (b, None):
        for relu in (False, True):
            want = R.conv_forward(*f64(x, w, bias), s, p, d, relu=relu, precision=precision)
            got = ops.conv_forward(X, W, None if bias is None else B, s, p, d, relu=relu, precision=precision)
            close(got, want, ci * taps, device)
    assert (to_numpy(got) == 0).any() and (to_numpy(got) > 0).any()   # the relu case clamps some, not all
    dy = rng.standard_normal(want.shape).astype(np.float32)
    want = R.conv_backward(*f64(dy, x, w), s, p, d, precision=precision)
    got = ops.conv_backward(to_device(dy, device), X, W, s, p, d, precision=precision)
    close(got[0], want[0], co * taps, device)
    close(got[1], want[1], dy[:, 0].size, device)
    close(got[2], want[2], dy[:, 0].size, device)


def test_weight_gradient_split_over_k_is_covered_and_deterministic(tiled):
    """The (20, 22) case's weight gradient runs in K slices summed in order: same bits twice."""
    n, ci, co, sz = 2, 3, 5, (20, 22)
    k_slice = core.native().conv_wgrad_slice(co, ci * 9, n * sz[0] * sz[1])
    assert -(-n * sz[0] * sz[1] // k_slice) > 1
    x = rng.standard_normal((n, ci) + sz).astype(np.float32)
    w = rng.standard_normal((co, ci, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((n, co) + sz).astype(np.float32)
    for precision in PRECISIONS:
        first = ops.conv_backward(dy, x, w, 1, 1, precision=precision)
        again = ops.conv_backward(dy, x, w, 1, 1, precision=precision)
        for a, b in zip(first, again):
            assert np.array_equal(a, b)


CONVT = [
    ((4, 5), 1, 3, 5, 2, 2, 0, 0),
    ((5, 3), 2, 5, 3, 3, 2, 1, 1),
    ((8, 8), 1, 17, 66, 2, 2, 0, 0),
    ((3, 4, 5), 1, 3, 5, 2, 2, 0, 0),
    ((3, 3, 2), 2, 3, 2, 3, 2, 1, 1),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", CONVT, ids=str)
def test_tiled_conv_transpose_matches_reference(case, precision, device, tiled):
    """convT forward = the data-gradient kernel, its input gradient = the forward kernel."""
    sz, n, ci, co, k, s, p, op = case
    x = rng.standard_normal((n, ci) + sz).astype(np.float32)
    w = rng.standard_normal((ci, co) + (k,) * len(sz)).astype(np.float32)
    b = rng.standard_normal(co).astype(np.float32)
    X, W, B = (to_device(a, device) for a in (x, w, b))
    taps = k ** len(sz)
    want = R.conv_transpose_forward(*f64(x, w, b), s, p, op, precision=precision)
    close(ops.conv_transpose_forward(X, W, B, s, p, op, precision=precision), want, ci * taps, device)
    dy = rng.standard_normal(want.shape).astype(np.float32)
    want = R.conv_transpose_backward(*f64(dy, x, w), s, p, op, precision=precision)
    got = ops.conv_transpose_backward(to_device(dy, device), X, W, s, p, op, precision=precision)
    close(got[0], want[0], co * taps, device)
    close(got[1], want[1], x[:, 0].size, device)
    close(got[2], want[2], dy[:, 0].size, device)


def test_tf32_and_bf16_differ_from_fp32_where_rounding_shows(tiled):
    """The precision argument reaches the kernels: each result is nearest its own reference."""
    x = rng.standard_normal((1, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    for precision in PRECISIONS:
        got = ops.conv_forward(x, w, None, 1, 1, precision=precision)
        err = {q: np.abs(got - R.conv_forward(*f64(x, w), None, 1, 1, precision=q)).max() for q in PRECISIONS}
        assert min(err, key=err.get) == precision, err
        assert all(err[q] > 100 * err[precision] for q in PRECISIONS if q != precision), err


def test_host_fast_path_computes_fp32_for_any_precision():
    """Without the block emulation, NumPy arrays take the CPU variants, in fp32 (documented)."""
    x = rng.standard_normal((1, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    want = R.conv_forward(*f64(x, w, b), 1, 1, relu=True)
    for precision in PRECISIONS:
        close(ops.conv_forward(x, w, b, 1, 1, relu=True, precision=precision), want, 72, "cpu")


def test_precision_argument_is_checked():
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="precision: expected one of 'fp32', 'tf32', 'bf16', got 'fp16'"):
        ops.conv_forward(x, w, precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        ops.conv_backward(np.zeros((1, 3, 3, 3), np.float32), x, w, precision="tf16")


# (spatial, batch, c1, c2, co, kernel, stride, padding): the conv of [x, x2] along channels
CONCAT = [
    ((7, 9), 2, 3, 5, 4, 3, 1, 1),
    ((8, 7), 1, 5, 2, 3, 3, 2, 1),
    ((9, 10), 1, 40, 30, 6, 3, 1, 1),    # the channel split falls inside a 64-wide K tile
    ((5, 6, 7), 2, 2, 3, 5, 3, 1, 1),
]


def _concat_case(case, device):
    sz, n, c1, c2, co, k, s, p = case
    x = rng.standard_normal((n, c1) + sz).astype(np.float32)
    x2 = rng.standard_normal((n, c2) + sz).astype(np.float32)
    w = rng.standard_normal((co, c1 + c2) + (k,) * len(sz)).astype(np.float32)
    b = rng.standard_normal(co).astype(np.float32)
    return (x, x2, w, b), [to_device(a, device) for a in (x, x2, w, b)], (c1 + c2) * k ** len(sz)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", CONCAT, ids=str)
def test_tiled_conv_reads_concat_in_place(case, precision, device, tiled):
    (x, x2, w, b), (X, X2, W, B), k = _concat_case(case, device)
    s, p = case[-2:]
    cat = np.concatenate([x, x2], axis=1)
    want = R.conv_forward(*f64(cat, w, b), s, p, relu=True, precision=precision)
    close(ops.conv_forward(X, W, B, s, p, relu=True, precision=precision, x2=X2), want, k, device)
    dy = rng.standard_normal(want.shape).astype(np.float32)
    dx, dw, db = R.conv_backward(*f64(dy, cat, w), s, p, precision=precision)
    got = ops.conv_backward(to_device(dy, device), X, W, s, p, precision=precision, x2=X2)
    assert len(got) == 4 and got[0].shape == x.shape and got[1].shape == x2.shape
    co_taps = case[4] * case[5] ** len(case[0])
    close(got[0], dx[:, :x.shape[1]], co_taps, device)
    close(got[1], dx[:, x.shape[1]:], co_taps, device)
    close(got[2], dw, dy[:, 0].size, device)
    close(got[3], db, dy[:, 0].size, device)


def test_host_paths_take_concat_too(variant):
    """The CPU variants (read [x, x2] in place) and portable kernels (loop mode, copy them
    together): same results."""
    for case in CONCAT:
        (x, x2, w, b), _, k = _concat_case(case, "cpu")
        s, p = case[-2:]
        cat = np.concatenate([x, x2], axis=1)
        close(ops.conv_forward(x, w, b, s, p, x2=x2), R.conv_forward(*f64(cat, w, b), s, p), k, "cpu")
        dy = rng.standard_normal(R.conv_forward(cat, w, b, s, p).shape).astype(np.float32)
        want = R.conv_backward(*f64(dy, x, w), s, p, x2=x2.astype(np.float64))
        got = ops.conv_backward(dy, x, w, s, p, x2=x2)
        for g, r in zip(got, want):
            close(g, r, max(k, dy[:, 0].size), "cpu")


def test_reference_x2_is_the_concatenation():
    x = rng.standard_normal((2, 3, 6, 7))
    x2 = rng.standard_normal((2, 4, 6, 7))
    w = rng.standard_normal((5, 7, 3, 3))
    dy = rng.standard_normal((2, 5, 6, 7))
    cat = np.concatenate([x, x2], axis=1)
    np.testing.assert_array_equal(R.conv_forward(x, w, None, 1, 1, x2=x2), R.conv_forward(cat, w, None, 1, 1))
    dx, dx2, dw, db = R.conv_backward(dy, x, w, 1, 1, x2=x2)
    want = R.conv_backward(dy, cat, w, 1, 1)
    np.testing.assert_array_equal(np.concatenate([dx, dx2], axis=1), want[0])
    np.testing.assert_array_equal(dw, want[1])


def test_x2_argument_is_checked():
    x = np.zeros((2, 3, 6, 7), np.float32)
    w = np.zeros((5, 7, 3, 3), np.float32)
    for fn in (R.conv_forward, ops.conv_forward):
        with pytest.raises(ValueError, match=r"x2: expected shape \(2, C2, 6, 7\)"):
            fn(x, w, x2=np.zeros((2, 4, 6, 8), np.float32))
        with pytest.raises(TypeError, match="x2: expected dtype float32"):
            fn(x, w, x2=np.zeros((2, 4, 6, 7), np.float64))
        with pytest.raises(ValueError, match="w: expected 8 input channels"):
            fn(x, w, x2=np.zeros((2, 5, 6, 7), np.float32))
