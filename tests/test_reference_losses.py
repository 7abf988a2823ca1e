"""Tests of the NumPy oracle for losses, metrics and optimizer updates
(cunet.reference.py): finite-difference gradients, hand-computed values,
independent re-implementations of the optimizers, and argument checks."""
import math

import numpy as np
import pytest

from cunet import reference as R

SHAPES = [(1, 5, 7), (3, 5, 7), (1, 3, 5, 4), (3, 3, 5, 4)]  # (N, *S): 2D and 3D, odd sizes


def rng(seed=0):
    return np.random.default_rng(seed)


def check_backward(f, z, h=1e-6, rtol=1e-6, atol=1e-10, seed=1):
    """Chainer-style check: sum(dz * u) against a central difference of f along u."""
    loss, dz = f(z)
    assert isinstance(loss, float) and dz.shape == z.shape and dz.dtype == z.dtype
    u = rng(seed).standard_normal(z.shape)
    fd = (f(z + h * u)[0] - f(z - h * u)[0]) / (2 * h)
    assert float((dz * u).sum()) == pytest.approx(fd, rel=rtol, abs=atol)


def make(ns, k, seed=0):
    """Random float64 logits (N, K, *S) and labels (N, *S) that use every class."""
    r = rng(seed)
    z = r.standard_normal((ns[0], k) + ns[1:]) * 2
    y = r.integers(0, k, size=ns)
    y.flat[:k] = np.arange(k)
    return z, y


# ---- gradients by finite differences

@pytest.mark.parametrize("ns", SHAPES)
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_grad(ns, k, weighted):
    z, y = make(ns, k)
    w = rng(2).uniform(0.2, 3.0, k) if weighted else None
    check_backward(lambda a: R.cross_entropy(a, y, w), z)


@pytest.mark.parametrize("ns", SHAPES)
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("bg", [True, False])
@pytest.mark.parametrize("variant", ["class", "voxel"])
def test_dice_loss_grad(ns, k, bg, variant):
    z, y = make(ns, k)
    check_backward(lambda a: R.dice_loss(a, y, bg, smooth=1e-5, variant=variant), z)


@pytest.mark.parametrize("ns", SHAPES)
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("variant", ["class", "voxel"])
@pytest.mark.parametrize("weighted", [False, True])
def test_dice_ce_loss_grad(ns, k, variant, weighted):
    z, y = make(ns, k)
    w = rng(2).uniform(0.2, 3.0, k) if weighted else None
    check_backward(lambda a: R.dice_ce_loss(a, y, w, False, 1.0, variant, 0.7, 1.3), z)


@pytest.mark.parametrize("ns", SHAPES)
@pytest.mark.parametrize("c", [1, 2])
@pytest.mark.parametrize("variant", ["class", "voxel"])
def test_binary_losses_grad(ns, c, variant):
    r = rng(3)
    z = r.standard_normal((ns[0], c) + ns[1:]) * 2
    t = (r.random(z.shape) < 0.4).astype(float)
    t.flat[0] = 0.3  # soft labels are allowed
    check_backward(lambda a: R.bce_with_logits(a, t), z)
    check_backward(lambda a: R.binary_dice_loss(a, t, 1e-5, variant), z)
    check_backward(lambda a: R.dice_bce_loss(a, t, 0.5, variant, 0.6, 1.4), z)


@pytest.mark.parametrize("ns", SHAPES)
def test_regression_losses_grad(ns):
    r = rng(4)
    z = r.standard_normal((ns[0], 2) + ns[1:])
    t = z + r.choice([-1, 1], z.shape) * r.uniform(0.1, 1.0, z.shape)  # |z - t| >= 0.1: no kink
    check_backward(lambda a: R.mse_loss(a, t), z)
    check_backward(lambda a: R.l1_loss(a, t), z)


def test_dice_grad_every_coordinate():
    """Full per-coordinate difference on a tiny case, smooth = 0 and a large smooth."""
    z, y = make((2, 3, 3), 3, seed=5)
    h = 1e-6
    for smooth, variant in [(0.0, "class"), (1.0, "class"), (1.0, "voxel")]:
        f = lambda a: R.dice_loss(a, y, True, smooth, variant)[0]  # noqa: E731
        fd = np.zeros_like(z)
        for i in range(z.size):
            e = np.zeros_like(z)
            e.flat[i] = h
            fd.flat[i] = (f(z + e) - f(z - e)) / (2 * h)
        np.testing.assert_allclose(R.dice_loss(z, y, True, smooth, variant)[1], fd, rtol=1e-5, atol=1e-9)


def test_float32_matches_float64():
    z, y = make((2, 5, 7), 3)
    for f in [lambda a: R.cross_entropy(a, y), lambda a: R.dice_ce_loss(a, y)]:
        l64, g64 = f(z)
        l32, g32 = f(z.astype(np.float32))
        assert g32.dtype == np.float32 and isinstance(l32, float)
        assert l32 == pytest.approx(l64, rel=1e-6)
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-7)


# ---- hand-computed forward values

def test_cross_entropy_values():
    z = np.zeros((2, 4, 3, 5))
    y = np.zeros((2, 3, 5), dtype=np.int64)
    loss, dz = R.cross_entropy(z, y)
    assert loss == pytest.approx(math.log(4))
    # d/dz = (softmax - onehot) / V with V = 30 voxels
    np.testing.assert_allclose(dz[:, 0], (0.25 - 1) / 30)
    np.testing.assert_allclose(dz[:, 1:], 0.25 / 30)
    # two voxels, K = 2: logits (0, log 3) -> p = (1/4, 3/4); labels 0 and 1, weights (2, 1)
    z = np.array([0.0, math.log(3)]).reshape(1, 2, 1, 1) * np.ones((1, 2, 1, 2))
    y = np.array([[[0, 1]]])
    nll0, nll1 = -math.log(0.25), -math.log(0.75)
    assert R.cross_entropy(z, y)[0] == pytest.approx((nll0 + nll1) / 2)
    assert R.cross_entropy(z, y, np.array([2.0, 1.0]))[0] == pytest.approx((2 * nll0 + nll1) / 3)


def test_cross_entropy_extreme_logits_are_stable():
    z = np.array([1000.0, -1000.0]).reshape(1, 2, 1, 1)
    loss, dz = R.cross_entropy(z, np.array([[[1]]]))
    assert loss == pytest.approx(2000.0) and np.isfinite(dz).all()


def test_dice_values():
    y = np.array([[[0, 1, 2], [2, 1, 0]]])  # (1, 2, 3)
    z = 50.0 * np.moveaxis(np.eye(3)[y], -1, 1)  # softmax ~ one-hot(y)
    assert R.dice_loss(z, y)[0] == pytest.approx(0.0, abs=1e-6)
    assert R.dice_loss(-z, y)[0] == pytest.approx(1.0, abs=1e-5)  # smooth / sum p is left
    # voxel variant: a term with g = 0 is 0, so each voxel counts for 1 of its K terms and a
    # perfect prediction scores 1 - 1/K, not 0; a completely wrong one scores 1
    assert R.dice_loss(z, y, variant="voxel")[0] == pytest.approx(1 - 1 / 3, abs=1e-5)
    assert R.dice_loss(-z, y, variant="voxel")[0] == pytest.approx(1.0, abs=1e-6)
    # uniform p = 1/2, K = 2, 4 voxels with labels 0,0,0,1:
    # class: D_0 = 2*1.5/(2+3) = 0.6, D_1 = 2*0.5/(2+1) = 1/3
    # voxel: 2pg/(p+g) = 2/3 where g = 1, 0 elsewhere; mean over 2*4 terms = (4 * 2/3) / 8
    z = np.zeros((1, 2, 2, 2))
    y = np.array([[[0, 0], [0, 1]]])
    s = 0.0
    assert R.dice_loss(z, y, smooth=s)[0] == pytest.approx(1 - (0.6 + 1 / 3) / 2)
    assert R.dice_loss(z, y, include_background=False, smooth=s)[0] == pytest.approx(2 / 3)
    assert R.dice_loss(z, y, smooth=1e-12, variant="voxel")[0] == pytest.approx(1 - 1 / 3)
    assert R.dice_loss(z, y, False, 1e-12, "voxel")[0] == pytest.approx(1 - (2 / 3) / 4)


def test_binary_values():
    z = np.zeros((2, 1, 3, 3))
    t = np.ones_like(z)
    assert R.bce_with_logits(z, t)[0] == pytest.approx(math.log(2))
    assert R.bce_with_logits(z, 0 * t)[0] == pytest.approx(math.log(2))
    big = np.full((1, 1, 1, 2), 800.0)
    loss, dz = R.bce_with_logits(np.concatenate([big, -big], 3), np.array([[[[0.0, 0, 1, 1]]]]))
    assert loss == pytest.approx(800.0) and np.isfinite(dz).all()  # every element wrong by 800
    # p = 1/2 everywhere, 18 voxels all foreground: D = 2*9/(9+18) = 2/3
    assert R.binary_dice_loss(z, t, smooth=0.0)[0] == pytest.approx(1 / 3)
    assert R.binary_dice_loss(z, t, smooth=1e-12, variant="voxel")[0] == pytest.approx(1 / 3)
    loss, _ = R.dice_bce_loss(z, t, smooth=0.0, dice_weight=2.0, bce_weight=0.5)
    assert loss == pytest.approx(2 / 3 + 0.5 * math.log(2))


def test_regression_values():
    o = np.array([1.0, -2.0, 3.0, 0.5]).reshape(1, 1, 2, 2)
    t = np.array([0.0, 0.0, 3.0, 1.0]).reshape(1, 1, 2, 2)
    loss, d = R.mse_loss(o, t)
    assert loss == pytest.approx((1 + 4 + 0 + 0.25) / 4)
    np.testing.assert_allclose(d.ravel(), [0.5, -1.0, 0.0, -0.25])
    loss, d = R.l1_loss(o, t)
    assert loss == pytest.approx((1 + 2 + 0 + 0.5) / 4)
    np.testing.assert_allclose(d.ravel(), [0.25, -0.25, 0.0, -0.25])  # sign(0) = 0


def test_confusion_and_scores():
    pred = np.array([[0, 1, 1],
                     [2, 2, 0]])
    target = np.array([[0, 1, 2],
                       [2, 0, 0]])
    # class 0: pred at (0,0),(1,2); target at (0,0),(1,1),(1,2) -> tp 2, fp 0, fn 1
    # class 1: pred at (0,1),(0,2); target at (0,1)             -> tp 1, fp 1, fn 0
    # class 2: pred at (1,0),(1,1); target at (0,2),(1,0)       -> tp 1, fp 1, fn 1
    # class 3: nowhere                                          -> 0, 0, 0
    tp, fp, fn = R.confusion_counts(pred, target, 4)
    assert tp.dtype == fp.dtype == fn.dtype == np.int64
    assert tp.tolist() == [2, 1, 1, 0] and fp.tolist() == [0, 1, 1, 0] and fn.tolist() == [1, 0, 1, 0]
    d = R.dice_score(pred, target, 4)
    np.testing.assert_allclose(d[:3], [4 / 5, 2 / 3, 2 / 4])
    assert np.isnan(d[3]) and d.dtype == np.float64
    j = R.iou_score(pred, target, 4)
    np.testing.assert_allclose(j[:3], [2 / 3, 1 / 2, 1 / 3])
    assert np.isnan(j[3])
    # a class predicted but absent from the target scores 0, not NaN
    assert R.dice_score(np.array([1, 1]), np.array([0, 0]), 2).tolist() == [0.0, 0.0]


# ---- optimizer updates

def sgd_loop(p, g, buf, lr, mu, nesterov, wd, l1):
    """One SGD step element by element; returns new (p, buf) as lists."""
    out_p, out_b = [], []
    for pi, gi, bi in zip(p, g, buf):
        d = gi + wd * pi + l1 * (pi > 0) - l1 * (pi < 0)
        if mu != 0:
            bi = mu * bi + d
            d = d + mu * bi if nesterov else bi
        out_p.append(pi - lr * d)
        out_b.append(bi)
    return out_p, out_b


def adam_loop(p, g, m, v, t, lr, b1, b2, eps, wd, l1, decoupled):
    out = ([], [], [])
    for pi, gi, mi, vi in zip(p, g, m, v):
        if decoupled:
            pi = pi * (1 - lr * wd)
            d = gi
        else:
            d = gi + wd * pi
        d += l1 * ((pi > 0) - (pi < 0))
        mi = b1 * mi + (1 - b1) * d
        vi = b2 * vi + (1 - b2) * d * d
        mhat = mi / (1 - b1**t)
        vhat = vi / (1 - b2**t)
        out[0].append(pi - lr * mhat / (math.sqrt(vhat) + eps))
        out[1].append(mi)
        out[2].append(vi)
    return out


SGD_CASES = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
             dict(momentum=0.5, weight_decay=0.1), dict(momentum=0.9, nesterov=True, weight_decay=0.05, l1=0.01)]
ADAM_CASES = [dict(), dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled=True),
              dict(beta1=0.5, beta2=0.9, eps=1e-3, l1=0.01, weight_decay=0.02),
              dict(decoupled=True, weight_decay=0.05, l1=0.02)]


@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_matches_loop(kw):
    r = rng(6)
    p = r.standard_normal((2, 3, 3, 3))
    buf = np.zeros_like(p)
    lp, lb = p.ravel().tolist(), buf.ravel().tolist()
    for _ in range(4):
        g = r.standard_normal(p.shape)
        lp, lb = sgd_loop(lp, g.ravel().tolist(), lb, 0.1, kw.get("momentum", 0.0), kw.get("nesterov", False),
                          kw.get("weight_decay", 0.0), kw.get("l1", 0.0))
        assert R.sgd_update(p, g, buf, 0.1, **kw) is None
    np.testing.assert_allclose(p.ravel(), lp, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(buf.ravel(), lb, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kw", ADAM_CASES)
def test_adam_matches_loop(kw):
    r = rng(7)
    p = r.standard_normal((2, 3, 3, 3))
    m, v = np.zeros_like(p), np.zeros_like(p)
    lp, lm, lv = p.ravel().tolist(), m.ravel().tolist(), v.ravel().tolist()
    full = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, l1=0.0, decoupled=False) | kw
    for t in range(1, 5):
        g = r.standard_normal(p.shape)
        lp, lm, lv = adam_loop(lp, g.ravel().tolist(), lm, lv, t, 1e-2, *full.values())
        assert R.adam_update(p, g, m, v, t, 1e-2, **kw) is None
    for a, b in [(p, lp), (m, lm), (v, lv)]:
        np.testing.assert_allclose(a.ravel(), b, rtol=1e-12, atol=1e-15)


def test_float32_optimizer_keeps_dtype():
    p = np.ones((3, 4), np.float32)
    g, m, v = np.full_like(p, 0.5), np.zeros_like(p), np.zeros_like(p)
    R.adam_update(p, g, m, v, 1, 0.1)
    assert p.dtype == m.dtype == v.dtype == np.float32
    np.testing.assert_allclose(p, 0.9, rtol=1e-6)  # first Adam step moves by lr * sign(g)


def test_against_torch():
    import torch   # a test dependency (the test extra), used only for cross-checks
    r = rng(8)
    p0 = r.standard_normal((4, 5))
    grads = [r.standard_normal(p0.shape) for _ in range(5)]
    for kw in SGD_CASES:
        kw = {k: x for k, x in kw.items() if k != "l1"}
        tp = torch.tensor(p0, requires_grad=True)
        opt = torch.optim.SGD([tp], lr=0.1, **kw)
        p, buf = p0.copy(), np.zeros_like(p0)
        for g in grads:
            tp.grad = torch.tensor(g)
            opt.step()
            R.sgd_update(p, g, buf, 0.1, **kw)
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)
    for kw in ADAM_CASES:
        kw = {k: x for k, x in kw.items() if k != "l1"}
        decoupled = kw.pop("decoupled", False)
        betas = (kw.pop("beta1", 0.9), kw.pop("beta2", 0.999))
        tp = torch.tensor(p0, requires_grad=True)
        opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)(
            [tp], lr=1e-2, betas=betas, weight_decay=kw.get("weight_decay", 0.0), eps=kw.get("eps", 1e-8))
        p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        for t, g in enumerate(grads, 1):
            tp.grad = torch.tensor(g)
            opt.step()
            R.adam_update(p, g, m, v, t, 1e-2, betas[0], betas[1], decoupled=decoupled, **kw)
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_penalty_gradient():
    p = rng(9).standard_normal((3, 4, 5))
    p[np.abs(p) < 0.05] = 0.5  # keep away from the kink of |p|
    l1, l2 = 0.3, 0.7
    assert R.penalty(p, l1, l2) == pytest.approx(l1 * np.abs(p).sum() + 0.5 * l2 * (p * p).sum())
    check_backward(lambda a: (R.penalty(a, l1, l2), l1 * np.sign(a) + l2 * a), p)
    # one SGD step with lr, weight_decay=l2, l1=l1 on grad 0 is a step down the penalty's gradient
    q, buf = p.copy(), np.zeros_like(p)
    R.sgd_update(q, np.zeros_like(p), buf, 0.01, weight_decay=l2, l1=l1)
    np.testing.assert_allclose(q, p - 0.01 * (l1 * np.sign(p) + l2 * p))


# ---- argument checks

def test_bad_loss_inputs():
    z, y = make((2, 5, 7), 3)
    t = np.zeros_like(z)
    with pytest.raises(ValueError, match="logits: expected 4 or 5 dimensions"):
        R.cross_entropy(z[0], y)
    with pytest.raises(TypeError, match="logits: expected float32 or float64"):
        R.dice_loss(z.astype(np.int32), y)
    with pytest.raises(ValueError, match=r"labels: expected shape \(2, 5, 7\)"):
        R.cross_entropy(z, y[:, :4])
    with pytest.raises(TypeError, match="labels: expected an integer array"):
        R.cross_entropy(z, y.astype(float))
    bad = y.copy()
    bad[0, 0, :3] = [3, 7, -1]
    with pytest.raises(ValueError, match=r"labels: values must lie in \[0, 3\), found \[-1, 3, 7\]"):
        R.dice_ce_loss(z, bad)
    zn = z.copy()
    zn[0, 0, 0, :2] = [np.nan, np.inf]
    with pytest.raises(ValueError, match="logits: contains 2 NaN or infinite"):
        R.cross_entropy(zn, y)
    with pytest.raises(ValueError, match="logits: contains 2 NaN"):
        R.bce_with_logits(zn, t)
    with pytest.raises(ValueError, match="target: expected shape"):
        R.bce_with_logits(z, t[:, :1])
    with pytest.raises(ValueError, match=r"target: values must lie in \[0, 1\]"):
        R.binary_dice_loss(z, t - 0.5)
    with pytest.raises(ValueError, match="target: contains 1 NaN"):
        R.mse_loss(z, np.where(z == z.flat[0], np.nan, t))
    with pytest.raises(ValueError, match="output: expected 4 or 5"):
        R.l1_loss(z.reshape(2, 3, 35, 1, 1, 1), t.reshape(2, 3, 35, 1, 1, 1))
    with pytest.raises(ValueError, match="logits: softmax losses need K >= 2.*binary_dice_loss"):
        R.dice_loss(z[:, :1], y * 0)
    with pytest.raises(ValueError, match="variant: expected one of 'class', 'voxel', got 'pixel'"):
        R.dice_loss(z, y, variant="pixel")
    with pytest.raises(ValueError, match="smooth: expected a value in"):
        R.dice_loss(z, y, smooth=-1.0)
    with pytest.raises(ValueError, match=r"smooth: expected a value in \(0"):
        R.binary_dice_loss(z, t, smooth=0.0, variant="voxel")
    with pytest.raises(ValueError, match="dice_weight"):
        R.dice_ce_loss(z, y, dice_weight=-1.0)


def test_bad_class_weights():
    z, y = make((2, 5, 7), 3)
    with pytest.raises(ValueError, match=r"class_weights: expected shape \(3,\)"):
        R.cross_entropy(z, y, np.ones(2))
    with pytest.raises(TypeError, match="class_weights: expected float32 or float64"):
        R.cross_entropy(z, y, np.ones(3, dtype=int))
    with pytest.raises(TypeError, match="class_weights: expected a numpy or cupy array"):
        R.cross_entropy(z, y, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="class_weights: expected values >= 0"):
        R.cross_entropy(z, y, np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="class_weights: expected values >= 0 with a positive sum"):
        R.dice_ce_loss(z, y, np.zeros(3))
    with pytest.raises(ValueError, match="class_weights: contains 1 NaN"):
        R.cross_entropy(z, y, np.array([1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="class_weights: the classes present in labels all have weight 0"):
        R.cross_entropy(z, np.zeros_like(y), np.array([0.0, 1.0, 1.0]))


def test_bad_metric_inputs():
    a = np.array([[0, 1], [2, 1]])
    with pytest.raises(ValueError, match=r"pred: values must lie in \[0, 2\), found \[2\]"):
        R.confusion_counts(a, a, 2)
    with pytest.raises(ValueError, match=r"target: expected shape \(2, 2\)"):
        R.dice_score(a, a[0], 3)
    with pytest.raises(TypeError, match="target: expected an integer array"):
        R.iou_score(a, a.astype(np.float32), 3)
    with pytest.raises(ValueError, match="num_classes: expected an int >= 1"):
        R.iou_score(a, a, 0)


def test_bad_optimizer_inputs():
    p = np.zeros((3, 4))
    z = np.zeros_like(p)
    with pytest.raises(ValueError, match=r"grad: expected shape \(3, 4\) \(that of param\)"):
        R.sgd_update(p, z[:2], z, 0.1)
    with pytest.raises(TypeError, match="velocity: expected dtype float64"):
        R.sgd_update(p, z, z.astype(np.float32), 0.1)
    with pytest.raises(TypeError, match="param: expected float32 or float64"):
        R.sgd_update(p.astype(int), z, z, 0.1)
    with pytest.raises(ValueError, match=r"lr: expected a value in \(0"):
        R.sgd_update(p, z, z, 0.0)
    with pytest.raises(ValueError, match=r"momentum: expected a value in \[0, 1\)"):
        R.sgd_update(p, z, z, 0.1, momentum=1.0)
    with pytest.raises(ValueError, match="nesterov: expected momentum > 0"):
        R.sgd_update(p, z, z, 0.1, nesterov=True)
    with pytest.raises(ValueError, match="weight_decay"):
        R.sgd_update(p, z, z, 0.1, weight_decay=-0.1)
    with pytest.raises(ValueError, match=r"v: expected shape \(3, 4\)"):
        R.adam_update(p, z, z, z.T, 1, 0.1)
    with pytest.raises(ValueError, match=r"beta1: expected a value in \[0, 1\)"):
        R.adam_update(p, z, z, z, 1, 0.1, beta1=1.0)
    with pytest.raises(ValueError, match="beta2"):
        R.adam_update(p, z, z, z, 1, 0.1, beta2=-0.1)
    with pytest.raises(ValueError, match="eps"):
        R.adam_update(p, z, z, z, 1, 0.1, eps=0.0)
    with pytest.raises(ValueError, match="step: expected an int >= 1"):
        R.adam_update(p, z, z, z, 0, 0.1)
    with pytest.raises(TypeError, match="step: expected an int"):
        R.adam_update(p, z, z, z, 1.0, 0.1)
    with pytest.raises(ValueError, match="l1"):
        R.penalty(p, l1=-1.0)
