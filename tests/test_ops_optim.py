"""cunet ops optimizer updates and norms (kernels/optim.cuh) against cunet.reference."""
import numpy as np
import pytest

from conftest import DEVICES, to_device, to_numpy
from cunet import reference as R
from cunet._ops import optim as ops

rng = np.random.default_rng(4)
STEPS = 5


def _param(shape):
    p = rng.standard_normal(shape).astype(np.float32)
    p.reshape(-1)[::11] = 0.0   # sign(0) = 0 in the L1 term
    return p


def _run(update, device, shape, nstate, **kw):
    """STEPS updates by ops (float32) and by the reference (float64) from the same start."""
    p = _param(shape)
    state = [np.zeros(shape, np.float32) for _ in range(nstate)]
    ref = [a.astype(np.float64) for a in [p] + state]
    dev = [to_device(a.copy(), device) for a in [p] + state]
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(shape).astype(np.float32)
        extra = (t,) if update == "adam_update" else ()
        getattr(R, update)(ref[0], g.astype(np.float64), *ref[1:], *extra, **kw)
        assert getattr(ops, update)(dev[0], to_device(g, device), *dev[1:], *extra, **kw) is None
    return [to_numpy(a) for a in dev], ref


SHAPES = [(1009,), (3, 5, 7, 9)]
# Per step every value takes a few float32 roundings (eps 6e-8) of O(1) terms: 5 steps stay
# within 1e-6 absolute for O(1) parameters, moments and velocities.
TOL = dict(rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True),
                                dict(lr=0.1, weight_decay=0.01, l1=0.001),
                                dict(lr=0.03, momentum=0.5, nesterov=True, weight_decay=0.1, l1=0.01)])
def test_sgd_matches_reference(kw, shape, device):
    (p, vel), (pr, velr) = _run("sgd_update", device, shape, 1, **kw)
    np.testing.assert_allclose(p, pr, **TOL)
    np.testing.assert_allclose(vel, velr, **TOL)
    if not kw.get("momentum"):
        assert not vel.any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kw", [dict(lr=1e-3), dict(lr=0.01, beta1=0.5, beta2=0.99, eps=1e-6),
                                dict(lr=1e-3, weight_decay=0.1), dict(lr=1e-3, weight_decay=0.1, decoupled=True),
                                dict(lr=1e-2, l1=0.01), dict(lr=1e-2, weight_decay=0.05, l1=0.01, decoupled=True)])
def test_adam_matches_reference(kw, shape, device):
    (p, m, v), (pr, mr, vr) = _run("adam_update", device, shape, 2, **kw)
    np.testing.assert_allclose(p, pr, **TOL)
    np.testing.assert_allclose(m, mr, **TOL)
    np.testing.assert_allclose(v, vr, **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [0, 37, 10007])   # 1 and 3 blocks of norms_partials
def test_penalty_and_sum_squares_match_reference(n, device, block_mode):
    x = rng.standard_normal(n).astype(np.float32)
    X = to_device(x, device)
    # float32 per-block partials (one rounding) of double (host) / float32 (GPU: 16 terms per
    # thread plus an 8-level tree) sums: rtol 1e-5
    for l1, l2 in [(0.0, 0.0), (0.1, 0.0), (0.0, 0.2), (0.1, 0.2)]:
        np.testing.assert_allclose(float(to_numpy(ops.penalty(X, l1, l2))), R.penalty(x, l1, l2), rtol=1e-5)
    np.testing.assert_allclose(float(to_numpy(ops.sum_squares(X.reshape(-1, 1)))), R.sum_squares(x), rtol=1e-5)
    assert ops.sum_squares(X) == ops.sum_squares(X)   # deterministic: no float atomics


@pytest.mark.parametrize("device", DEVICES)
def test_norms_of_a_large_buffer(device):
    x = rng.standard_normal(5_000_003).astype(np.float32)   # more than 1024 * 4096: grid capped
    X = to_device(x, device)
    np.testing.assert_allclose(float(to_numpy(ops.sum_squares(X))), R.sum_squares(x), rtol=1e-5)
    np.testing.assert_allclose(float(to_numpy(ops.penalty(X, 0.3, 0.7))), R.penalty(x, 0.3, 0.7), rtol=1e-5)


def test_optim_bad_input():
    p, g = np.zeros(10, np.float32), np.zeros(10, np.float32)
    with pytest.raises(ValueError, match=r"grad: expected shape \(10,\) \(that of param\), got \(9,\)"):
        ops.sgd_update(p, g[:9], g, 0.1)
    with pytest.raises(TypeError, match="velocity: expected dtype float32"):
        ops.sgd_update(p, g, np.zeros(10), 0.1)
    with pytest.raises(TypeError, match="param: cunet.ops kernels take float32, got float64"):
        ops.adam_update(*(np.zeros(10) for _ in range(4)), 1, 0.1)
    with pytest.raises(ValueError, match=r"lr: expected a value in \(0, inf\]"):
        ops.sgd_update(p, g, g.copy(), 0.0)
    with pytest.raises(ValueError, match="nesterov: expected momentum > 0"):
        ops.sgd_update(p, g, g.copy(), 0.1, nesterov=True)
    with pytest.raises(ValueError, match="step: expected an int >= 1"):
        ops.adam_update(p, g, g.copy(), g.copy(), 0, 0.1)
    with pytest.raises(ValueError, match=r"beta2: expected a value in \[0, 1\)"):
        ops.adam_update(p, g, g.copy(), g.copy(), 1, 0.1, beta2=1.0)
    with pytest.raises(ValueError, match=r"l1: expected a value in \[0, inf\]"):
        ops.penalty(p, l1=-1.0)
    with pytest.raises(TypeError, match="x: cunet.ops kernels take float32, got float64"):
        ops.sum_squares(np.zeros(3))


# ---- device-scalar variants (what a captured CUDA graph replays): same bits as by value

SGD_KW = [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True), dict(weight_decay=0.01, l1=0.001)]
ADAM_KW = [dict(), dict(beta1=0.5, beta2=0.99, eps=1e-6), dict(weight_decay=0.1),
           dict(weight_decay=0.1, decoupled=True), dict(weight_decay=0.05, l1=0.01, decoupled=True)]
LRS = [0.1, 0.0, 0.03, 0.05, 0.0, 0.07]   # a schedule, zeros included (the update is skipped)


def _bits(a):
    return to_numpy(a).view(np.uint32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", SGD_KW)
def test_sgd_scalars_is_bit_identical_to_by_value(kw, device):
    p0 = _param((1009,))
    by_value = [to_device(a, device) for a in (p0.copy(), np.zeros_like(p0))]
    scalars_run = [to_device(a, device) for a in (p0.copy(), np.zeros_like(p0))]
    scalars = to_device(np.zeros(1, np.float32), device)
    for lr in LRS:
        g = to_device(rng.standard_normal(p0.shape).astype(np.float32), device)
        if lr:   # the optimizers skip lr == 0 on the host; the scalar kernel skips it itself
            ops.sgd_update(*by_value[:1], g, by_value[1], lr, **kw)
        scalars[...] = to_device(np.array([lr], np.float32), device)
        ops.sgd_update_scalars(scalars_run[0], g, scalars_run[1], scalars, **kw)
        for a, b in zip(by_value, scalars_run):
            np.testing.assert_array_equal(_bits(a), _bits(b))
    assert not np.array_equal(to_numpy(scalars_run[0]), p0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", ADAM_KW)
def test_adam_scalars_is_bit_identical_to_by_value(kw, device):
    p0 = _param((3, 5, 7, 9))
    by_value = [to_device(a, device) for a in (p0.copy(), np.zeros_like(p0), np.zeros_like(p0))]
    scalars_run = [to_device(a, device) for a in (p0.copy(), np.zeros_like(p0), np.zeros_like(p0))]
    scalars = to_device(np.zeros(3, np.float32), device)
    b1, b2 = kw.get("beta1", 0.9), kw.get("beta2", 0.999)
    for step, lr in enumerate(LRS, 1):
        g = to_device(rng.standard_normal(p0.shape).astype(np.float32), device)
        if lr:
            ops.adam_update(*by_value[:1], g, *by_value[1:], step, lr, **kw)
        scalars[...] = to_device(np.asarray(ops.adam_scalars(step, lr, b1, b2), np.float32), device)
        ops.adam_update_scalars(scalars_run[0], g, *scalars_run[1:], scalars, **kw)
        for a, b in zip(by_value, scalars_run):
            np.testing.assert_array_equal(_bits(a), _bits(b))
    assert not np.array_equal(to_numpy(scalars_run[0]), p0)


def test_scalars_variants_bad_input():
    p = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=r"scalars: expected shape \(3,\), got \(1,\)"):
        ops.adam_update_scalars(p, p.copy(), p.copy(), p.copy(), np.zeros(1, np.float32))
    with pytest.raises(TypeError, match="scalars: expected float32, got float64"):
        ops.sgd_update_scalars(p, p.copy(), p.copy(), np.zeros(1))
    with pytest.raises(ValueError, match="momentum: expected a value in"):
        ops.sgd_update_scalars(p, p.copy(), p.copy(), np.zeros(1, np.float32), momentum=1.5)
