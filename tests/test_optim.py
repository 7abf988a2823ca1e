"""cunet.optim: optimizers against torch.optim on a tiny UNet (float32 kernels and the
float64 reference path), the l1/l2 penalties, clipping, schedules, state round trips."""
import json
import math

import numpy as np
import pytest
import torch

from cunet import optim
from cunet.nn import F, UNet

torch.set_default_dtype(torch.float32)


def tiny(device="cpu"):
    return UNet(dims=2, in_channels=1, out_channels=2, base=2, depth=1, seed=1).to(device)


def batch(model, seed=0):
    """A fixed input and a regression target for the logits (MSE loss)."""
    rng = np.random.default_rng(seed)
    dtype = np.float64 if model.device == "reference" else np.float32
    return rng.standard_normal((2, 1, 8, 8)).astype(dtype), rng.standard_normal((2, 2, 8, 8)).astype(dtype)


def grads(model, x, r):
    model.zero_grad()
    z = model.forward(x)
    model.backward(F(z).mse_loss(z, r)[1])


# cunet constructor kwargs, torch class and kwargs
CASES = [
    ("SGD", dict(lr=0.1), torch.optim.SGD, dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-2), torch.optim.SGD,
     dict(lr=0.05, momentum=0.9, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3), torch.optim.SGD,
     dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    ("Adam", dict(lr=1e-2), torch.optim.Adam, dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, betas=(0.5, 0.99), eps=1e-6, weight_decay=0.1), torch.optim.Adam,
     dict(lr=1e-2, betas=(0.5, 0.99), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2), torch.optim.AdamW, dict(lr=1e-2)),   # default weight_decay 1e-2 on both
    ("AdamW", dict(lr=3e-3, weight_decay=0.5), torch.optim.AdamW, dict(lr=3e-3, weight_decay=0.5)),
]
# float32: a few roundings per step of O(1) values, different operation order than torch
TOL = {"cpu": dict(rtol=1e-6, atol=2e-7), "reference": dict(rtol=1e-12, atol=1e-14)}


@pytest.mark.parametrize("device", ["cpu", "reference"])
@pytest.mark.parametrize("name,kw,tcls,tkw", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_torch(name, kw, tcls, tkw, device):
    model = tiny(device)
    x, r = batch(model)
    p0 = model.params.copy()
    p = torch.nn.Parameter(torch.tensor(p0))
    ours, theirs = getattr(optim, name)(model, **kw), tcls([p], **tkw, foreach=False)
    for step in range(6):
        if step == 3:   # a schedule's change of lr takes effect at the next step
            ours.lr = theirs.param_groups[0]["lr"] = kw["lr"] / 2
        grads(model, x, r)
        p.grad = torch.tensor(model.grads.copy())
        ours.step()
        theirs.step()
        np.testing.assert_allclose(model.params, p.detach().numpy(), **TOL[device])
    assert ours.step_count == 6 and np.abs(model.params - p0).max() > 1e-3


@pytest.mark.parametrize("device", ["cpu", "reference"])
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_l2_is_torch_weight_decay_on_the_conv_kernels_only(name, device):
    """Coupled l2 = torch weight decay in a param group holding params[:n_decay]."""
    model = tiny(device)
    x, r = batch(model, 1)
    k = model.n_decay
    assert 0 < k < model.params.size
    a, b = (torch.nn.Parameter(torch.tensor(model.params[s].copy())) for s in (slice(0, k), slice(k, None)))
    kw = dict(lr=0.05, momentum=0.9) if name == "SGD" else dict(lr=1e-2)
    ours = getattr(optim, name)(model, l2=0.3, **kw)
    theirs = getattr(torch.optim, name)([dict(params=[a], weight_decay=0.3), dict(params=[b])], **kw, foreach=False)
    for _ in range(4):
        grads(model, x, r)
        a.grad, b.grad = (torch.tensor(model.grads[s].copy()) for s in (slice(0, k), slice(k, None)))
        ours.step()
        theirs.step()
    got = np.concatenate([a.detach().numpy(), b.detach().numpy()])
    np.testing.assert_allclose(model.params, got, **TOL[device])


def _penalty_gradient_check(opt, model):
    """With zero gradients, one plain SGD step moves params by -lr * d penalty / d params:
    only the conv kernels move, along the penalty's finite-difference gradient."""
    rng = np.random.default_rng(2)
    k = model.n_decay
    model.params[:] = rng.standard_normal(model.params.size)   # no weight sits on |w|'s kink
    model.zero_grad()
    p0 = model.params.copy()
    opt.step()
    implied = (p0 - model.params) / opt.lr
    assert not implied[k:].any() and np.abs(implied[:k]).min() > 0
    model.params[:] = p0
    d, h = rng.standard_normal(p0.size), 1e-6
    pen = []
    for s in (1, -1):
        model.params[:] = p0 + s * h * d
        pen.append(opt.penalty())
    model.params[:] = p0
    fd = (pen[0] - pen[1]) / (2 * h)
    np.testing.assert_allclose(implied @ d, fd, rtol=1e-8)


@pytest.mark.parametrize("l1,l2", [(1e-2, 0.0), (0.0, 0.3), (1e-2, 0.3)], ids=["l1", "l2", "elastic"])
def test_penalties_match_finite_differences_on_decay_slice(l1, l2):
    model = tiny("reference")
    _penalty_gradient_check(optim.SGD(model, lr=0.1, l1=l1, l2=l2), model)


@pytest.mark.parametrize("device", ["cpu", "reference"])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_penalties_touch_only_the_conv_kernels(name, device):
    """Zero gradients and no weight decay: only the penalty's gradient moves anything, and
    the first Adam step moves each weight by lr * sign(penalty gradient)."""
    model = tiny(device)
    model.zero_grad()
    p0 = model.params.copy()
    opt = getattr(optim, name)(model, lr=1e-3, weight_decay=0.0, l1=1e-3, l2=0.5)
    opt.step()
    k = model.n_decay
    assert np.array_equal(model.params[k:], p0[k:])
    g = 1e-3 * np.sign(p0[:k]) + 0.5 * p0[:k]
    expected = p0[:k] - 1e-3 * g / (np.abs(g) + 1e-8)   # step 1: m_hat / sqrt(v_hat) = g / |g|
    np.testing.assert_allclose(model.params[:k], expected, **TOL[device])


def test_adamw_l2_adds_to_the_gradient_before_the_decoupled_decay():
    model = tiny("reference")
    x, r = batch(model, 3)
    grads(model, x, r)
    p, g, k = model.params.copy(), model.grads.copy(), model.n_decay
    optim.AdamW(model, lr=1e-2, weight_decay=0.1, l1=1e-3, l2=0.2).step()
    from cunet import reference
    m, v = np.zeros_like(p), np.zeros_like(p)
    g[:k] += 0.2 * p[:k]
    reference.adam_update(p[:k], g[:k], m[:k], v[:k], 1, 1e-2, weight_decay=0.1, l1=1e-3, decoupled=True)
    reference.adam_update(p[k:], g[k:], m[k:], v[k:], 1, 1e-2, weight_decay=0.1, decoupled=True)
    np.testing.assert_array_equal(model.params, p)


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_penalty_value(device):
    model = tiny(device)
    w = model.params[:model.n_decay].astype(np.float64)
    assert optim.SGD(model, lr=0.1).penalty() == 0.0
    for l1, l2 in [(1e-2, 0.0), (0.0, 0.3), (1e-2, 0.3)]:
        got = optim.Adam(model, l1=l1, l2=l2).penalty()
        assert isinstance(got, float)
        np.testing.assert_allclose(got, l1 * np.abs(w).sum() + 0.5 * l2 * (w * w).sum(), rtol=1e-6)


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_clip_grad_norm(device):
    model = tiny(device)
    x, r = batch(model)
    grads(model, x, r)
    g = model.grads.copy()
    norm = np.sqrt((g.astype(np.float64) ** 2).sum())
    got = optim.clip_grad_norm(model, 10 * norm)   # below max_norm: untouched
    assert isinstance(got, float) and np.isclose(got, norm, rtol=1e-6)
    assert np.array_equal(model.grads, g)
    got = optim.clip_grad_norm(model, norm / 4)   # above: scaled to max_norm, direction kept
    np.testing.assert_allclose(got, norm, rtol=1e-6)
    np.testing.assert_allclose(model.grads, g * (norm / 4) / (norm + 1e-6), rtol=1e-6)
    t = torch.tensor(g.astype(np.float64), requires_grad=True)
    t.grad = t.detach().clone()
    torch.nn.utils.clip_grad_norm_([t], norm / 4)
    np.testing.assert_allclose(model.grads, t.grad.numpy(), rtol=1e-6)


def _lrs(sched, opt, n):
    out = [opt.lr]
    for _ in range(n):
        sched.step()
        out.append(opt.lr)
    return np.array(out)


def _torch_lrs(make, n, lr=0.1):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make(opt)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(n):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return np.array(out)


def test_schedules_match_torch():
    opt = optim.SGD(tiny(), lr=0.1)
    np.testing.assert_allclose(_lrs(optim.StepLR(opt, 3, gamma=0.5), opt, 12),
                               _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.5), 12), rtol=1e-12)
    opt.lr = 0.1
    np.testing.assert_allclose(_lrs(optim.CosineLR(opt, 10, min_lr=1e-3), opt, 10),
                               _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10, 1e-3), 10),
                               rtol=1e-10)
    opt.lr = 0.1
    np.testing.assert_allclose(_lrs(optim.PolyLR(opt, 10, power=0.9), opt, 10),
                               _torch_lrs(lambda o: torch.optim.lr_scheduler.PolynomialLR(o, 10, 0.9), 10),
                               rtol=1e-10, atol=1e-15)


def test_schedules_closed_forms():
    opt = optim.Adam(tiny(), lr=0.01)
    t = np.arange(16)
    got = _lrs(optim.CosineLR(opt, 12, min_lr=1e-4, warmup=3), opt, 15)
    s = np.clip((t - 3) / 9, 0, 1)
    want = np.where(t < 3, 0.01 * (t + 1) / 4, 1e-4 + (0.01 - 1e-4) * (1 + np.cos(np.pi * s)) / 2)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[2] < got[3] == 0.01 and got[-1] == pytest.approx(1e-4)   # ramp, peak, then held at min_lr
    opt.lr = 0.01
    got = _lrs(optim.PolyLR(opt, 8, power=2.0), opt, 10)
    np.testing.assert_allclose(got, 0.01 * (1 - np.minimum(np.arange(11), 8) / 8) ** 2, rtol=1e-12)
    opt.lr = 0.01
    np.testing.assert_allclose(_lrs(optim.StepLR(opt, 4), opt, 9), 0.01 * 0.1 ** (np.arange(10) // 4), rtol=1e-12)


@pytest.mark.parametrize("cfg", [dict(name="StepLR", step_size=3, gamma=0.5),
                                 dict(name="CosineLR", total_steps=20, min_lr=1e-4, warmup=2),
                                 dict(name="PolyLR", total_steps=20, power=0.9)], ids=lambda c: c["name"])
def test_schedule_config_and_state_round_trip(cfg):
    opt = optim.SGD(tiny(), lr=0.1)
    sched = optim.schedule_from_config(opt, cfg)
    assert json.loads(json.dumps(sched.config)) == sched.config == {**cfg, **sched.config}
    _lrs(sched, opt, 5)
    state, rest = sched.state_dict(), _lrs(sched, opt, 8)
    opt2 = optim.SGD(tiny(), lr=0.1)
    sched2 = optim.schedule_from_config(opt2, json.loads(json.dumps(sched.config)))
    sched2.load_state_dict(json.loads(json.dumps(state)))
    assert opt2.lr == rest[0]
    np.testing.assert_array_equal(_lrs(sched2, opt2, 8), rest)


@pytest.mark.parametrize("device", ["cpu", "reference"])
@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, l1=1e-3)),
                                     ("Adam", dict(lr=1e-2, weight_decay=1e-2, l2=0.1)),
                                     ("AdamW", dict(lr=1e-2, l1=1e-3, l2=0.1))])
def test_state_dict_round_trip_continues_identically(name, kw, device):
    model = tiny(device)
    x, r = batch(model)
    opt = getattr(optim, name)(model, **kw)
    sched = optim.CosineLR(opt, 10)

    def run(model, opt, sched, n):
        for _ in range(n):
            grads(model, x, r)
            opt.step()
            sched.step()
        return model.params.copy()

    run(model, opt, sched, 3)
    saved = model.state_dict(), opt.state_dict(), sched.state_dict()
    assert json.loads(json.dumps(saved[1]["hyper"])) == saved[1]["hyper"]
    assert saved[1]["hyper"]["step_count"] == 3 and saved[1]["hyper"]["name"] == name
    want = run(model, opt, sched, 3)
    # rebuild from JSON config and NumPy copies, as a checkpoint would
    model2 = UNet(**model.config).to(device).load_state_dict(saved[0])
    opt2 = optim.from_config(model2, json.loads(json.dumps(opt.config)))
    sched2 = optim.schedule_from_config(opt2, sched.config)
    opt2.load_state_dict({"hyper": json.loads(json.dumps(saved[1]["hyper"])),
                          "state": {k: np.array(v) for k, v in saved[1]["state"].items()}})
    sched2.load_state_dict(saved[2])
    assert opt2.step_count == 3 and opt2.lr == saved[1]["hyper"]["lr"]
    np.testing.assert_array_equal(run(model2, opt2, sched2, 3), want)


def test_state_is_lazy_and_follows_the_model():
    model = tiny()
    opt = optim.Adam(model, lr=1e-2)
    assert opt.state == {} and opt.state_dict()["state"] == {}
    x, r = batch(model)
    grads(model, x, r)
    opt.step()
    assert set(opt.state) == {"m", "v"} and opt.state["m"].dtype == np.float32
    model.to("reference")
    grads(model, x.astype(np.float64), r.astype(np.float64))
    opt.step()
    assert opt.state["m"].dtype == np.float64 and opt.step_count == 2
    assert optim.SGD(model, lr=0.1).state_dict()["state"] == {}   # no velocity without momentum


def test_lr_zero_step_changes_nothing():
    model = tiny()
    x, r = batch(model)
    grads(model, x, r)
    opt = optim.SGD(model, lr=0.1, momentum=0.9)
    opt.lr = 0.0
    p = model.params.copy()
    opt.step()
    assert np.array_equal(model.params, p) and opt.step_count == 1


@pytest.mark.parametrize("make,arg", [
    (lambda m: optim.SGD(m, lr=-0.1), "lr"),
    (lambda m: optim.SGD(m, lr=0.1, momentum=1.0), "momentum"),
    (lambda m: optim.SGD(m, lr=0.1, nesterov=True), "nesterov"),
    (lambda m: optim.SGD(m, lr=0.1, weight_decay=-1), "weight_decay"),
    (lambda m: optim.Adam(m, betas=(0.9,)), "betas"),
    (lambda m: optim.Adam(m, betas=(0.9, 1.0)), r"betas\[1\]"),
    (lambda m: optim.AdamW(m, eps=0.0), "eps"),
    (lambda m: optim.AdamW(m, l1=-1e-3), "l1"),
    (lambda m: optim.Adam(m, l2=float("nan")), "l2"),
    (lambda m: optim.StepLR(optim.SGD(m, lr=0.1), 0), "step_size"),
    (lambda m: optim.CosineLR(optim.SGD(m, lr=0.1), 10, warmup=10), "warmup"),
    (lambda m: optim.PolyLR(optim.SGD(m, lr=0.1), 10, power=-1), "power"),
    (lambda m: optim.clip_grad_norm(m, 0.0), "max_norm"),
    (lambda m: optim.from_config(m, dict(name="RMSprop", lr=0.1)), "name"),
    (lambda m: optim.from_config(m, dict(name="SGD", lr=0.1, betas=[0.9, 0.99])), "betas"),
    (lambda m: optim.schedule_from_config(optim.SGD(m, lr=0.1), dict(name="StepLR")), "missing keys.*step_size"),
    (lambda m: optim.schedule_from_config(optim.SGD(m, lr=0.1), dict(name="PolyLR", total_steps=5, lr=1)), "lr"),
    (lambda m: optim.Adam(m).load_state_dict(optim.SGD(m, lr=0.1).state_dict()), "SGD"),
    (lambda m: optim.Adam(m).load_state_dict({"hyper": optim.Adam(m).state_dict()["hyper"],
                                              "state": {"m": np.zeros(3, np.float32)}}), "shape"),
])
def test_bad_values_name_the_argument(make, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        make(tiny())


@pytest.mark.gpu
@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.05, momentum=0.9, l1=1e-3, l2=0.1)),
                                     ("AdamW", dict(lr=1e-2, l1=1e-3, l2=0.1))])
def test_cuda_matches_cpu(name, kw):
    import cupy
    models = [tiny("cpu"), tiny("cuda")]
    x, r = batch(models[0])
    opts = [getattr(optim, name)(m, **kw) for m in models]
    for _ in range(3):
        for m, o, xp in zip(models, opts, (np, cupy)):
            grads(m, xp.asarray(x), xp.asarray(r))
            optim.clip_grad_norm(m, 1.0)
            o.step()
    assert isinstance(opts[1].state["m" if name == "AdamW" else "velocity"], cupy.ndarray)
    assert math.isclose(opts[0].penalty(), opts[1].penalty(), rel_tol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(models[1].params), models[0].params, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.05, momentum=0.9, l1=1e-3, l2=0.1)),
                                     ("Adam", dict(lr=1e-2, weight_decay=1e-3)),
                                     ("AdamW", dict(lr=1e-2, l1=1e-3, l2=0.1))])
def test_steps_match_the_by_value_kernels_bit_for_bit(name, kw):
    """Optimizer.step reads lr and the bias corrections from `scalars` (device memory);
    under a schedule that passes through lr 0 it gives the bits of the by-value kernels
    called with the host's lr and step count (what step did before)."""
    from cunet import ops
    model, twin = tiny(), tiny()
    opt = getattr(optim, name)(model, **kw)
    sched = optim.StepLR(opt, 2, gamma=0.5)
    lrs = []
    m = v = vel = None
    for t in range(1, 6):
        x, r = batch(model, seed=t)
        grads(model, x, r)
        twin.grads[...] = model.grads
        lr = 0.0 if t == 3 else opt.lr   # a step at lr 0 changes nothing, but counts
        opt.lr = lr
        lrs.append(lr)
        opt.step()
        sched.step()
        # the same step through the by-value kernels, slice by slice as Optimizer.apply splits
        k, n = twin.n_decay, twin.params.size
        m = np.zeros(n, np.float32) if m is None else m
        v = np.zeros(n, np.float32) if v is None else v
        vel = np.zeros(n, np.float32) if vel is None else vel
        for sl, l1, l2 in [(slice(0, k), kw.get("l1", 0.0), kw.get("l2", 0.0)), (slice(k, n), 0.0, 0.0)]:
            p, g = twin.params[sl], twin.grads[sl]
            if lr == 0:
                continue
            if name == "SGD":
                ops.sgd_update(p, g, vel[sl], lr, kw["momentum"], False, l2, l1)
            elif name == "Adam":
                ops.adam_update(p, g, m[sl], v[sl], t, lr, weight_decay=kw["weight_decay"])
            else:
                ops.adam_update(p, g + l2 * p, m[sl], v[sl], t, lr, weight_decay=1e-2, l1=l1, decoupled=True)
        assert np.array_equal(model.params.view(np.uint32), twin.params.view(np.uint32)), t
    assert opt.step_count == 5 and lrs[2] == 0 and len(set(lrs)) > 2   # the schedule moved lr


@pytest.mark.gpu
def test_clip_grad_norm_on_cuda_stays_on_the_device():
    import cupy
    models = [tiny("cpu"), tiny("cuda")]
    x, r = batch(models[0])
    for m, xp in zip(models, (np, cupy)):
        grads(m, xp.asarray(x), xp.asarray(r))
    norm = optim.clip_grad_norm(models[0], 0.1)
    got = optim.clip_grad_norm(models[1], 0.1)
    assert isinstance(got, cupy.ndarray) and got.shape == ()
    np.testing.assert_allclose(float(got), norm, rtol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(models[1].grads), models[0].grads, rtol=1e-4, atol=1e-7)
