"""cunet.ops losses (kernels/loss.cuh) against cunet.reference in float64 on the same float32 inputs.

Tolerances: the kernels compute softmax/sigmoid/log per element in float32 (a few ulp, ~1e-6
relative) and the per-class sums in double on the host (float on the GPU: ~8 terms per thread,
then a 256-way and a <=1024-way tree, ~1e-6 relative); the Dice coefficients are ratios of those
sums. So the loss agrees to 1e-5 relative, and the gradient elementwise to 1e-4 relative plus
1e-5 x its largest entry: dz = p (dp - sum p dp) cancels, so small entries carry absolute error.
"""
import numpy as np
import pytest

from conftest import DEVICES, to_device, to_numpy
from cunet import reference as R
from cunet._ops import loss as O   # cunet.ops re-exports these

SHAPES = [(1, 5, 7), (3, 4, 9), (1, 3, 5, 7), (3, 3, 4, 5)]   # (N, *S): 2D and 3D, batch 1 and 3, odd sizes
F64 = np.float64


def make(ns, k, seed=0):
    """float32 logits (N, K, *S) and int64 labels (N, *S) using every class."""
    r = np.random.default_rng(seed)
    z = (r.standard_normal((ns[0], k) + ns[1:]) * 2).astype(np.float32)
    y = r.integers(0, k, size=ns)
    y.flat[:k] = np.arange(k)
    return z, y


def soft_target(z, seed=1):
    r = np.random.default_rng(seed)
    t = (r.random(z.shape) < 0.4).astype(np.float32)
    t.flat[::7] = 0.3   # soft labels
    return t


def check(got, want, device):
    (loss, dz), (rloss, rdz) = got, want
    if device == "cpu":
        assert isinstance(loss, float)
    else:
        assert loss.shape == () and type(loss).__module__.startswith("cupy")
    dz = to_numpy(dz)
    assert dz.dtype == np.float32 and dz.shape == rdz.shape
    assert float(to_numpy(loss)) == pytest.approx(rloss, rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(dz, rdz, rtol=1e-4, atol=1e-5 * np.abs(rdz).max())


def dev(device, *arrays):
    return [None if a is None else to_device(a, device) for a in arrays]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("ns", SHAPES)
def test_cross_entropy(ns, k, weighted, device):
    z, y = make(ns, k)
    w = np.random.default_rng(2).uniform(0.2, 3.0, k).astype(np.float32) if weighted else None
    check(O.cross_entropy(*dev(device, z, y, w)), R.cross_entropy(z.astype(F64), y, w), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["class", "voxel"])
@pytest.mark.parametrize("bg", [True, False])
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("ns", SHAPES)
def test_dice_loss(ns, k, bg, variant, device):
    z, y = make(ns, k)
    for smooth in ((0.0,) if variant == "class" else ()) + (1e-5, 1.0):
        check(O.dice_loss(*dev(device, z, y), bg, smooth, variant),
              R.dice_loss(z.astype(F64), y, bg, smooth, variant), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("variant", ["class", "voxel"])
@pytest.mark.parametrize("bg", [True, False])
@pytest.mark.parametrize("k", [2, 3, 5, 17])   # 17: three class tiles of pass 1, the last partial
@pytest.mark.parametrize("ns", [SHAPES[1], SHAPES[2]])
def test_dice_ce_loss(ns, k, bg, variant, weighted, device):
    z, y = make(ns, k)
    w = np.random.default_rng(2).uniform(0.2, 3.0, k).astype(np.float32) if weighted else None
    args = (bg, 1e-5, variant, 0.7, 1.3)
    check(O.dice_ce_loss(*dev(device, z, y, w), *args), R.dice_ce_loss(z.astype(F64), y, w, *args), device)
    check(O.dice_ce_loss(*dev(device, z, y)), R.dice_ce_loss(z.astype(F64), y), device)   # defaults


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["class", "voxel"])
@pytest.mark.parametrize("c", [1, 2, 3, 5, 17])
@pytest.mark.parametrize("ns", SHAPES)
def test_binary_losses(ns, c, variant, device):
    z, _ = make(ns, c)
    t = soft_target(z)
    Z, T, z64, t64 = *dev(device, z, t), z.astype(F64), t.astype(F64)
    check(O.bce_with_logits(Z, T), R.bce_with_logits(z64, t64), device)
    check(O.binary_dice_loss(Z, T, 1e-5, variant), R.binary_dice_loss(z64, t64, 1e-5, variant), device)
    check(O.dice_bce_loss(Z, T, 0.5, variant, 0.6, 1.4), R.dice_bce_loss(z64, t64, 0.5, variant, 0.6, 1.4), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ns", SHAPES)
def test_regression_losses(ns, device):
    r = np.random.default_rng(4)
    o = r.standard_normal((ns[0], 3) + ns[1:]).astype(np.float32)
    t = (o + r.standard_normal(o.shape)).astype(np.float32)
    t.flat[::5] = o.flat[::5]   # r = 0: l1's subgradient sign(0) = 0
    O_, T = dev(device, o, t)
    check(O.mse_loss(O_, T), R.mse_loss(o.astype(F64), t.astype(F64)), device)
    check(O.l1_loss(O_, T), R.l1_loss(o.astype(F64), t.astype(F64)), device)


def test_extreme_logits_and_label_dtypes():
    z = np.array([80.0, -80.0], np.float32).reshape(1, 2, 1, 1) * np.ones((1, 2, 3, 3), np.float32)
    y = np.ones((1, 3, 3), np.uint8)
    loss, dz = O.cross_entropy(z, y)
    assert loss == pytest.approx(160.0) and np.isfinite(dz).all()
    loss, dz = O.bce_with_logits(z, np.zeros_like(z))
    assert loss == pytest.approx(40.0) and np.isfinite(dz).all()
    z, y = make((3, 5, 7), 3)
    for dt in (np.int32, np.uint8, np.int16):
        check(O.dice_ce_loss(z, y.astype(dt)), R.dice_ce_loss(z.astype(F64), y), "cpu")


def test_denormal_gradients_are_zero(variant):
    # confidently right logits: BCE's (p - g)/count and CE's p/count fall below FLT_MIN; the
    # kernels write 0 there (a denormal slows every later multiply on x86), normal ones stay
    tiny = np.finfo(np.float32).tiny
    z = np.full((2, 1, 32, 32), -85.0, np.float32)   # p = exp(-85) ~ 1.2e-37, / 2048 elements
    z[0, 0, 0, 0] = -5.0   # a normal gradient, ~3e-6
    _, dz = O.bce_with_logits(z, np.zeros_like(z))
    assert dz[0, 0, 0, 0] > 1e-6 and (dz.flat[1:] == 0).all()
    _, rdz = R.bce_with_logits(z.astype(F64), np.zeros(z.shape))
    assert 0 < np.abs(rdz.flat[1:]).max() < tiny   # the reference keeps the denormals
    z = np.zeros((2, 2, 32, 32), np.float32)
    z[:, 1] = -90.0   # class 1 far below class 0, the label: p1 ~ exp(-90)
    z[0, 1, 0, 0] = -5.0
    _, dz = O.cross_entropy(z, np.zeros((2, 32, 32), np.int64))
    assert np.abs(dz[0, :, 0, 0]).min() > 1e-6
    assert not ((np.abs(dz) < tiny) & (dz != 0)).any()


# every cooperative kernel (pass 1, finalize) both ways the host runs it; sizes span several blocks
# of pass 1 (2048 items each) and, with K = 9, two class tiles, within 20k elements
@pytest.mark.parametrize("variant", ["class", "voxel"])
def test_block_modes_and_determinism(block_mode, variant):
    z, y = make((2, 27, 41), 9)   # V = 2214: 2 blocks
    w = np.random.default_rng(2).uniform(0.2, 3.0, 9).astype(np.float32)
    t = soft_target(z)
    o = z + 0.5
    cases = [(O.dice_ce_loss, R.dice_ce_loss, (z, y, w, False, 1e-5, variant, 0.7, 1.3)),
             (O.dice_bce_loss, R.dice_bce_loss, (z, t, 0.5, variant, 0.6, 1.4)),
             (O.mse_loss, R.mse_loss, (o, t)),   # 19926 elements: 10 blocks
             (O.l1_loss, R.l1_loss, (o, t))]
    for f, ref, args in cases:
        a, b = f(*args), f(*args)
        assert a[0] == b[0] and np.array_equal(a[1], b[1])   # bit for bit
        check(a, ref(*[x.astype(F64) if isinstance(x, np.ndarray) and x.dtype == np.float32 else x
                       for x in args]), "cpu")


def both_raise(exc, match, name, *args, **kw):
    """ops raises what the reference raises."""
    for f in (getattr(R, name), getattr(O, name)):
        with pytest.raises(exc, match=match):
            f(*args, **kw)


def test_bad_input():
    z, y = make((2, 5, 7), 3)
    t = np.zeros_like(z)
    zn = z.copy()
    zn[0, 0, 0, :2] = [np.nan, np.inf]
    both_raise(ValueError, "logits: contains 2 NaN or infinite", "cross_entropy", zn, y)
    both_raise(ValueError, "logits: contains 2 NaN", "dice_bce_loss", zn, t)
    both_raise(ValueError, "logits: expected 4 or 5 dimensions", "dice_loss", z[0], y)
    both_raise(ValueError, r"labels: expected shape \(2, 5, 7\)", "dice_ce_loss", z, y[:, :4])
    both_raise(TypeError, "labels: expected an integer array", "cross_entropy", z, y.astype(np.float32))
    bad = y.copy()
    bad[0, 0, :3] = [3, 7, -1]
    both_raise(ValueError, r"labels: values must lie in \[0, 3\), found \[-1, 3, 7\]", "dice_ce_loss", z, bad)
    both_raise(ValueError, "logits: softmax losses need K >= 2", "dice_loss", z[:, :1].copy(), y * 0)
    both_raise(ValueError, r"target: expected shape", "bce_with_logits", z, t[:, :1])
    both_raise(ValueError, r"target: values must lie in \[0, 1\]", "binary_dice_loss", z, t - 0.5)
    both_raise(ValueError, "target: contains 1 NaN", "mse_loss", z, np.where(z == z.flat[0], np.nan, t))
    both_raise(ValueError, "variant: expected one of", "dice_loss", z, y, variant="pixel")
    both_raise(ValueError, r"smooth: expected a value in \(0", "binary_dice_loss", z, t, 0.0, "voxel")
    both_raise(ValueError, "dice_weight", "dice_ce_loss", z, y, dice_weight=-1.0)
    both_raise(ValueError, "include_background", "dice_loss", z, y, include_background=2)
    both_raise(ValueError, r"class_weights: expected shape \(3,\)", "cross_entropy", z, y, np.ones(2, np.float32))
    both_raise(ValueError, "class_weights: expected values >= 0", "dice_ce_loss", z, y, np.zeros(3, np.float32))
    both_raise(ValueError, "class_weights: the classes present in labels all have weight 0", "cross_entropy",
               z, np.zeros_like(y), np.array([0.0, 1.0, 1.0], np.float32))
    with pytest.raises(TypeError, match="logits: cunet.ops kernels take float32, got float64"):
        O.dice_loss(z.astype(F64), y)
    with pytest.raises(TypeError, match="target: cunet.ops kernels take float32, got float64"):
        O.l1_loss(z, t.astype(F64))
    with pytest.raises(ValueError, match="logits: expected a C-contiguous array"):
        O.bce_with_logits(np.asfortranarray(z), t)


@pytest.mark.parametrize("kind", ["ce", "dice_ce_class", "dice_ce_voxel"])
def test_softmax_losses_host_variant_and_portable(kind, variant):
    """The CPU variant (vector exp/log, 16 positions at a time) and the portable kernels on a
    batch long enough for several pass-1 blocks, with runs that cross images and tails."""
    z, y = make((2, 33, 70), 4)   # 4620 positions: 3 blocks of 2048
    w = np.random.default_rng(3).uniform(0.2, 3.0, 4).astype(np.float32)
    if kind == "ce":
        got, want = O.cross_entropy(z, y, w), R.cross_entropy(z.astype(F64), y, w)
    else:
        v = kind.split("_")[-1]
        got = O.dice_ce_loss(z, y, w, False, 1e-5, v, 0.7, 1.3)
        want = R.dice_ce_loss(z.astype(F64), y, w, False, 1e-5, v, 0.7, 1.3)
    check(got, want, "cpu")


@pytest.mark.parametrize("variant_", ["class", "voxel"])
def test_sigmoid_losses_host_variant_and_portable(variant_, variant):
    """As above for the sigmoid losses (2 channels, soft targets, several blocks)."""
    z, _ = make((2, 33, 70), 2)
    t = soft_target(z)
    got = O.dice_bce_loss(z, t, 0.5, variant_, 0.6, 1.4)
    check(got, R.dice_bce_loss(z.astype(F64), t.astype(F64), 0.5, variant_, 0.6, 1.4), "cpu")
    check(O.bce_with_logits(z, t), R.bce_with_logits(z.astype(F64), t.astype(F64)), "cpu")
