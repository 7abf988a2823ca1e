"""cunet.ops max pooling, upsampling and concatenation (kernels/pool.cuh, upsample.cuh,
concat.cuh) against cunet.reference. These kernels copy or select values (pooling,
nearest, concat: exact) or sum at most 27*s^3 weighted terms (linear: 1e-6)."""
import numpy as np
import pytest

from conftest import DEVICES, to_device, to_numpy
from cunet import ops, reference as R

rng = np.random.default_rng(3)


def tie_free(shape):
    return rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float32) / 7.0


POOL = [((7, 6), 1, 3, 2, None, 0), ((9, 7), 3, 5, 3, 2, 1), ((5, 5), 1, 17, 3, 1, 1),
        ((6, 5, 7), 1, 3, 2, None, 0), ((5, 7, 4), 3, 2, 3, 2, 1), ((4, 4, 4), 1, 5, 2, 1, 0),
        ((7, 9), 2, 4, 2, 2, 0), ((3, 5, 9), 2, 3, (1, 2, 2), None, 0)]   # the UNet's 2x2 row path, odd W


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", POOL, ids=str)
def test_maxpool_matches_reference(case, device, variant):
    sz, n, c, k, s, p = case
    x = tie_free((n, c) + sz)
    y, arg = R.maxpool_forward(x, k, s, p)
    Y, ARG = ops.maxpool_forward(to_device(x, device), k, s, p)
    np.testing.assert_array_equal(to_numpy(Y), y)
    np.testing.assert_array_equal(to_numpy(ARG), arg)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    want = R.maxpool_backward(dy, arg, x.shape)
    np.testing.assert_allclose(to_numpy(ops.maxpool_backward(to_device(dy, device), ARG, x.shape)), want,
                               rtol=1e-6, atol=1e-6)
    # out: added into a gradient already there (in place, the array itself returned)
    prior = rng.standard_normal(x.shape).astype(np.float32)
    out = to_device(prior.copy(), device)
    got = ops.maxpool_backward(to_device(dy, device), ARG, x.shape, out=out)
    assert got is out
    np.testing.assert_allclose(to_numpy(out), prior + want, rtol=1e-6, atol=1e-6)
    ref_out = prior.astype(np.float64)
    assert R.maxpool_backward(dy, arg, x.shape, out=ref_out) is ref_out
    np.testing.assert_allclose(ref_out, prior + want, rtol=1e-6, atol=1e-6)


def test_maxpool_ties_nan_and_negative_infinity_follow_the_reference(variant):
    x = np.array([[[[1, 5, 2, 2], [3, 4, 2, 2], [np.nan, 0, 9, 1], [7, np.nan, 1, 1]]]], np.float32)
    x = np.concatenate([x, np.full_like(x, -np.inf)], axis=1)
    for args in [(2, None, 0), (3, 1, 1), (2, 1, 1)]:
        y, arg = R.maxpool_forward(x, *args)
        Y, ARG = ops.maxpool_forward(x, *args)
        np.testing.assert_array_equal(Y, y)
        np.testing.assert_array_equal(ARG, arg)


UPS = [((1, 2, 3, 5), 2), ((3, 5, 4, 3), 3), ((2, 3, 3, 4), (2, 3)), ((1, 17, 5, 6), 2), ((2, 3, 1, 1), 3),
       ((1, 2, 3, 2, 5), 2), ((3, 3, 2, 3, 3), (3, 2, 1)), ((1, 5, 3, 3, 2), 2),
       ((2, 3, 4, 37), 2), ((1, 2, 3, 2, 20), 2), ((1, 2, 3, 32), (3, 2))]   # rows of 16-column vectors and a tail


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("shape,scale", UPS, ids=str)
def test_upsample_matches_reference(shape, scale, mode, device, variant):
    x = rng.standard_normal(shape).astype(np.float32)
    y = R.upsample_forward(x.astype(np.float64), scale, mode)
    np.testing.assert_allclose(to_numpy(ops.upsample_forward(to_device(x, device), scale, mode)), y,
                               rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(to_numpy(ops.upsample_backward(to_device(dy, device), shape, scale, mode)),
                               R.upsample_backward(dy.astype(np.float64), shape, scale, mode), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shapes", [[(2, 3, 5, 7), (2, 5, 5, 7)], [(1, 1, 3, 4, 5), (1, 17, 3, 4, 5), (1, 2, 3, 4, 5)],
                                    [(3, 40, 17, 60), (3, 24, 17, 60)]], ids=str)
def test_concat_matches_reference(shapes, device, variant):
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    y = ops.concat_forward([to_device(a, device) for a in xs])
    np.testing.assert_array_equal(to_numpy(y), R.concat_forward(xs))
    parts = ops.concat_backward(y, [s[1] for s in shapes])
    for got, want in zip(parts, xs):
        np.testing.assert_array_equal(to_numpy(got), want)


def test_resample_errors():
    x = np.zeros((1, 2, 5, 5), np.float32)
    with pytest.raises(ValueError, match="kernel: .* larger than the padded input"):
        ops.maxpool_forward(x, 7)
    with pytest.raises(TypeError, match="argmax: expected int64"):
        ops.maxpool_backward(np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 2), np.int32), x.shape)
    with pytest.raises(ValueError, match="argmax: values must lie in"):
        ops.maxpool_backward(np.zeros((1, 2, 2, 2), np.float32), np.full((1, 2, 2, 2), 99), x.shape)
    with pytest.raises(ValueError, match=r"out: expected shape \(1, 2, 5, 5\) \(x_shape\), got \(1, 2, 4, 4\)"):
        ops.maxpool_backward(np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 2), np.int64), x.shape,
                             out=np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(TypeError, match="out: cunet.ops kernels take float32"):
        ops.maxpool_backward(np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 2), np.int64), x.shape,
                             out=np.zeros((1, 2, 5, 5)))
    with pytest.raises(ValueError, match="mode: expected one of"):
        ops.upsample_forward(x, 2, "cubic")
    with pytest.raises(ValueError, match=r"dy: expected shape \(1, 2, 10, 10\)"):
        ops.upsample_backward(np.zeros((1, 2, 9, 10), np.float32), x.shape)
    with pytest.raises(ValueError, match=r"xs\[1\]: expected shape"):
        ops.concat_forward([x, np.zeros((1, 2, 4, 5), np.float32)])
    with pytest.raises(ValueError, match="channels: expected sizes summing to 2"):
        ops.concat_backward(x, (1, 2))
