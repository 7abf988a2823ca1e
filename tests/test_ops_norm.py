"""cunet ops batch norm (kernels/norm.cuh) against cunet.reference."""
import numpy as np
import pytest

from conftest import DEVICES, to_device, to_numpy
from cunet import reference as R
from cunet._ops import norm as ops

rng = np.random.default_rng(2)
EPS32 = np.finfo(np.float32).eps
# 2D and 3D, batch 1 and 3, C = 3, 5, 17; S from 21 to 323 (S > 256: threads stride twice)
SHAPES = [(1, 3, 5, 7), (3, 5, 4, 3, 5), (3, 17, 9, 11), (1, 5, 3, 1, 7), (2, 3, 17, 19)]
# M = N*S > 8192: G > 1 slices per channel, slice ends inside rows; S = 5 < blockDim and
# S = 300 > blockDim (a thread's step crosses 51 rows / wraps within a row)
SLICED = [(4000, 2, 1, 5), (3, 2, 60, 50), (37, 3, 20, 15)]


def _params(c):
    return (rng.uniform(0.5, 1.5, c).astype(np.float32), rng.standard_normal(c).astype(np.float32),
            rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2.0, c).astype(np.float32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES + SLICED)
def test_batchnorm_forward_matches_reference(shape, training, device, block_mode, variant):
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    gamma, beta, rm, rv = _params(shape[1])
    rm_ref, rv_ref = rm.copy(), rv.copy()
    yr, mr, sr = R.batchnorm_forward(x, gamma, beta, rm_ref, rv_ref, training, momentum=0.1)
    RM, RV = to_device(rm, device), to_device(rv, device)
    y, mean, invstd = ops.batchnorm_forward(*(to_device(a, device) for a in (x, gamma, beta)), RM, RV, training, 0.1)
    # mean/invstd: one rounding of a float64 (host) sum, like the reference's; float32 on the GPU
    # sums M/(256 G) + 8 terms per thread/tree level, G partials rounded to float32 (shifted by
    # the channel's first value, so |terms| ~ the spread): rtol 1e-5 covers both.
    # y: one float32 expression per element on values within 1 ulp.
    np.testing.assert_allclose(to_numpy(mean), mr, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(invstd), sr, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(y), yr, rtol=1e-5, atol=1e-5)
    # running stats, updated in place: the reference's float32 arithmetic on the same statistics
    np.testing.assert_allclose(to_numpy(RM), rm_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(RV), rv_ref, rtol=1e-5)
    if not training:
        np.testing.assert_array_equal(to_numpy(RM), rm)


@pytest.mark.parametrize("device", DEVICES)
def test_batchnorm_forward_without_running_stats(device, block_mode):
    x = rng.standard_normal((3, 5, 6, 7)).astype(np.float32)
    gamma, beta, rm, _ = _params(5)
    yr, mr, sr = R.batchnorm_forward(x, gamma, beta, rm.copy(), None)
    RM = to_device(rm.copy(), device)
    y, mean, invstd = ops.batchnorm_forward(*(to_device(a, device) for a in (x, gamma, beta)), RM, None)
    np.testing.assert_allclose(to_numpy(y), yr, rtol=1e-5, atol=1e-5)
    R.batchnorm_forward(x, gamma, beta, rm, None)
    np.testing.assert_allclose(to_numpy(RM), rm, rtol=1e-5, atol=1e-6)
    y, _, _ = ops.batchnorm_forward(*(to_device(a, device) for a in (x, gamma, beta)))
    np.testing.assert_allclose(to_numpy(y), yr, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_batchnorm_statistics_are_safe_for_a_large_mean(device, block_mode):
    # x = 1000 + N(0, 1): E[x^2] - E[x]^2 in float32 loses all digits of var (1e6 vs 1, ulp 0.06);
    # sums of shifts combined by deviations from partial means keep var to float32 precision,
    # also when the value a thread shifts by is an outlier (x[n, c, 0, 0] = -4000)
    x = (1000 + rng.standard_normal((40, 5, 16, 17))).astype(np.float32)
    x[::7, :, 0, 0] = -4000
    gamma, beta, rm, rv = _params(5)
    x64 = x.astype(np.float64)
    var = x64.var(axis=(0, 2, 3))
    y, mean, invstd = ops.batchnorm_forward(*(to_device(a, device) for a in (x, gamma, beta)))
    np.testing.assert_allclose(to_numpy(mean), x64.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(invstd), 1 / np.sqrt(var + 1e-5), rtol=1e-5)
    yr = R.batchnorm_forward(x, gamma, beta)[0]
    np.testing.assert_allclose(to_numpy(y), yr, atol=4e-4)   # x - mean: ulp(1000) = 6e-5, times invstd*gamma


def _sum_tol(terms, axes):
    # float32 terms (<= 2 roundings each) summed: error <= ~100 eps * sum|terms|, which also
    # covers the GPU's float32 sequential sums of M/256 terms per thread (M <= 646 here)
    return 100 * EPS32 * np.abs(terms).sum(axis=axes)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES + SLICED)
def test_batchnorm_backward_matches_reference(shape, training, device, block_mode, variant):
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma, beta, rm, rv = _params(shape[1])
    _, mean, invstd = R.batchnorm_forward(x, gamma, beta, rm, rv, training)
    # float64 reference on the same float32 inputs: the truth the float32 kernel approximates
    dxr, dgr, dbr = R.batchnorm_backward(*(a.astype(np.float64) for a in (dy, x, gamma, mean, invstd)), training)
    dx, dg, db = ops.batchnorm_backward(*(to_device(a, device) for a in (dy, x, gamma, mean, invstd)), training)
    axes = (0,) + tuple(range(2, x.ndim))
    xhat = (x.astype(np.float64) - mean.reshape((1, -1) + (1,) * (x.ndim - 2))) * invstd.reshape(
        (1, -1) + (1,) * (x.ndim - 2))
    np.testing.assert_allclose(to_numpy(db), dbr, rtol=0, atol=_sum_tol(dy, axes).max())
    np.testing.assert_allclose(to_numpy(dg), dgr, rtol=0, atol=_sum_tol(dy * xhat, axes).max())
    # dx = gamma*invstd*(dy - (dbeta + xhat*dgamma)/M): a few roundings of O(|dy|) terms
    np.testing.assert_allclose(to_numpy(dx), dxr, rtol=1e-5, atol=1e-5 * np.abs(dxr).max())


def test_batchnorm_bad_input():
    x = np.zeros((2, 5, 3, 3), np.float32)
    g, b = np.ones(5, np.float32), np.zeros(5, np.float32)
    with pytest.raises(ValueError, match=r"gamma: expected shape \(5,\) \(the channels of x\), got \(4,\)"):
        ops.batchnorm_forward(x, np.ones(4, np.float32), b)
    with pytest.raises(TypeError, match="x: cunet.ops kernels take float32, got float64"):
        ops.batchnorm_forward(x.astype(np.float64), g.astype(np.float64), b.astype(np.float64))
    with pytest.raises(TypeError, match="running_var: expected dtype float32"):
        ops.batchnorm_forward(x, g, b, np.zeros(5, np.float32), np.ones(5))
    with pytest.raises(ValueError, match="running_mean: eval mode"):
        ops.batchnorm_forward(x, g, b, training=False)
    with pytest.raises(ValueError, match=r"momentum: expected a value in \[0.0, 1.0\]"):
        ops.batchnorm_forward(x, g, b, momentum=1.5)
    with pytest.raises(ValueError, match="x: expected 4 or 5 dimensions"):
        ops.batchnorm_forward(x[0], g, b)
    with pytest.raises(ValueError, match="x: expected a non-empty array"):
        ops.batchnorm_forward(x[:0], g, b)
    with pytest.raises(ValueError, match=r"x: expected shape \(2, 5, 3, 4\) \(that of dy\)"):
        ops.batchnorm_backward(np.zeros((2, 5, 3, 4), np.float32), x, g, g, g)
    with pytest.raises(ValueError, match="x: expected a C-contiguous array"):
        ops.batchnorm_backward(x, x.transpose(0, 1, 3, 2), g, g, g)
