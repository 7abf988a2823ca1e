"""cunet.train: a tiny UNet learns synthetic discs (binary and 3-class) on the CPU;
checkpoints round-trip, are written atomically and resume bit for bit; divergence and
time budgets stop cleanly; N host-kernel steps match N float64 reference steps."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import cunet
from cunet import losses, metrics, optim
from cunet.train import ArrayBatches, TrainStep, fit, load_checkpoint, save_checkpoint

QUIET = dict(progress=False, log=None)
FILES = ["best.safetensors", "history.json", "history.png", "last.safetensors"]


def discs(m, classes, size=16, seed=0):
    """(m, 1, size, size) noise with one disc per foreground class (1 bright, 2 dark)
    -> images float32, labels (m, size, size) int64."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    x = rng.normal(0, 0.3, (m, 1, size, size)).astype(np.float32)
    y = np.zeros((m, size, size), np.int64)
    for i in range(m):
        for c in range(1, classes):
            cy, cx = rng.uniform(4, size - 4, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(2.5, 4.5) ** 2
            x[i, 0][disc] = rng.normal(1.0 if c == 1 else -1.0, 0.3, disc.sum())
            y[i][disc] = c
    return x, y


def tiny(k=1, **kw):
    return cunet.UNet(2, 1, k, **{"base": 4, "depth": 1, "norm": "batch", "seed": 0, **kw})


@pytest.mark.parametrize("k, threshold", [(1, 0.85), (3, 0.65)])
def test_learns_discs(k, threshold):
    x, y = discs(32, max(k, 2))
    xv, yv = discs(16, max(k, 2), seed=1)
    if k == 1:   # the binary run takes float masks (N, 1, H, W); the 3-class run label maps
        y = y[:, None].astype(np.float32)
    model = tiny(k)
    h = fit(model, losses.DiceCE(), optim.Adam(model, 3e-2), ArrayBatches(x, y, 8), (xv, yv), epochs=10, **QUIET)
    assert len(h) == 10 and h.stopped == "epochs" and h["step"] == list(range(4, 44, 4))
    assert h["train_loss"][-1] < 0.3 * h["train_loss"][0]
    assert h["val_loss"][-1] < 0.5 * h["val_loss"][0]
    last = h.records[-1]
    assert last["mean_dice"] > threshold and len(last["dice"]) == max(k, 2)
    assert h.best == max(h["mean_dice"]) and h.best_epoch == 1 + h["mean_dice"].index(h.best)
    # pooled validation counts over two batches = the metric on the whole set at once
    model.eval()
    np.testing.assert_allclose(last["dice"], metrics.dice(metrics.predict(model.forward(xv)), yv, max(k, 2)))
    assert model.training is False


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short 3-class run with out=DIR: (model, history, DIR, validation images)."""
    out = tmp_path_factory.mktemp("run")
    x, y = discs(16, 3)
    xv, yv = discs(8, 3, seed=1)
    model = tiny(3)
    opt = optim.Adam(model, 1e-2)
    h = fit(model, losses.DiceCE(), opt, ArrayBatches(x, y, 8), (xv, yv), epochs=3, out=out,
            schedule=optim.PolyLR(opt, 6), extra={"norm": {"mean": 0.5, "std": 2.0}}, **QUIET)
    return model, h, out, xv


def test_checkpoint_round_trip(run):
    model, h, out, xv = run
    model.eval()
    loaded = cunet.load(out / "last.safetensors")
    assert isinstance(loaded, cunet.UNet) and loaded.training is False and loaded.device == "cpu"
    assert loaded.config == model.config and loaded.extra == {"norm": {"mean": 0.5, "std": 2.0}}
    np.testing.assert_array_equal(loaded.forward(xv), model.forward(xv))
    ref = cunet.load(out / "last.safetensors", device="reference")
    np.testing.assert_allclose(ref.forward(xv.astype(np.float64)), model.forward(xv), rtol=1e-4, atol=1e-4)
    ck = load_checkpoint(out / "last.safetensors")
    t = ck["train"]
    assert (t["epoch"], t["batch"], t["step"]) == (3, 0, 6) and ck["version"] == cunet.__version__
    assert t["optimizer"]["name"] == "Adam" and t["optimizer"]["step_count"] == 6 and sorted(ck["optim"]) == ["m", "v"]
    assert t["schedule"] == {"config": {"name": "PolyLR", "total_steps": 6, "power": 0.9},
                             "state": {"t": 6, "base_lr": 1e-2}}
    assert losses.from_config(t["loss"]).config == losses.DiceCE().config
    assert t["history"]["records"] == h.records
    best = load_checkpoint(out / "best.safetensors")["train"]
    assert best["step"] == 2 * h.best_epoch


def test_history_files_and_no_temp_files(run):
    _, h, out, _ = run
    assert sorted(os.listdir(out)) == FILES   # atomic writes leave no temporaries behind

    def strict(c):
        raise ValueError(f"non-strict JSON constant {c}")

    d = json.loads((out / "history.json").read_text(), parse_constant=strict)
    assert d == json.loads(json.dumps(h.to_dict())) and d["stopped"] == "epochs"
    recs = d["records"]
    assert [r["epoch"] for r in recs] == [1, 2, 3] and [r["step"] for r in recs] == [2, 4, 6]
    for r in recs:
        assert r["train_loss"] > 0 and r["val_loss"] > 0 and not r["partial"] and r["batches"] == 2
        assert len(r["dice"]) == len(r["iou"]) == 3
        assert all(0 <= v <= 1 for v in r["dice"] + r["iou"]) and r["mean_iou"] <= r["mean_dice"]
    assert recs[-1]["lr"] == 0.0   # PolyLR reaches 0 at total_steps
    import matplotlib.image
    png = out / "history.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 100 and img.shape[1] > 300 and img.std() > 0.05   # drawn, not blank


def _resume_run(out, epochs=None, steps=None, resume=None):
    """The same 3-class run with dropout and BN, Adam and a cosine schedule."""
    x, y = discs(20, 3, seed=4)
    model = tiny(3, dropout=0.2, seed=1)
    if resume:
        model.params[...] = 0   # everything must come from the checkpoint
    opt = optim.Adam(model, 1e-2)
    sched = optim.CosineLR(opt, 12, warmup=2)
    h = fit(model, losses.DiceCE(), opt, ArrayBatches(x, y, 8, seed=3), (x[:8], y[:8]), epochs=epochs, steps=steps,
            schedule=sched, out=out, resume=resume, **QUIET)
    return model, opt, h


def test_resume_is_bit_identical(tmp_path):
    ma, oa, ha = _resume_run(tmp_path / "a", epochs=4)   # 3 batches (8, 8, 4) an epoch: 12 steps
    _resume_run(tmp_path / "b", epochs=2)
    mb, ob, hb = _resume_run(tmp_path / "b", epochs=4, resume=tmp_path / "b" / "last.safetensors")
    _resume_run(tmp_path / "c", steps=5)   # stops inside epoch 2, after its second batch
    c = load_checkpoint(tmp_path / "c" / "last.safetensors")["train"]
    assert (c["epoch"], c["batch"], c["step"]) == (1, 2, 5)
    mc, oc, hc = _resume_run(tmp_path / "c", epochs=4, resume=tmp_path / "c" / "last.safetensors")
    for m, o in ((mb, ob), (mc, oc)):
        np.testing.assert_array_equal(m.params, ma.params)
        np.testing.assert_array_equal(m.buffers, ma.buffers)   # BN running statistics
        for name in ("m", "v"):
            np.testing.assert_array_equal(o.state[name], oa.state[name])
        assert (o.step_count, o.lr) == (oa.step_count, oa.lr) == (12, oa.lr)
    assert hb["val_loss"] == ha["val_loss"] and hb["train_loss"] == ha["train_loss"]
    assert hc["step"] == [3, 5, 6, 9, 12] and hc["partial"] == [False, True, False, False, False]
    assert hc["val_loss"][2:] == ha["val_loss"][1:]


def test_resume_needs_a_fit_checkpoint(tmp_path):
    model = tiny(3)
    save_checkpoint(tmp_path / "bare.safetensors", model)   # weights only: no optimizer, no counters
    with pytest.raises(ValueError, match=r"resume: checkpoint .*bare\.safetensors"):
        fit(model, losses.CE(), optim.SGD(model, 0.1), discs(8, 3), epochs=1, resume=tmp_path / "bare.safetensors",
            **QUIET)


class Explode:
    """A schedule that sets lr to 1e30 after `at` steps (duck-typed: fit only calls these)."""
    config = {"name": "Explode"}

    def __init__(self, opt, at):
        self.opt, self.at, self.t = opt, at, 0

    def step(self):
        self.t += 1
        if self.t >= self.at:
            self.opt.lr = 1e30

    def state_dict(self):
        return {"t": self.t}

    def load_state_dict(self, d):
        self.t = d["t"]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    x, y = discs(16, 2)
    model = tiny(1, norm=None)
    opt = optim.SGD(model, 0.1)
    kept = r"last good checkpoint is kept: .*last\.safetensors \(after step 2\)"
    with pytest.raises(FloatingPointError, match=kept) as e:
        fit(model, losses.BCE(), opt, (x, y), epochs=5, schedule=Explode(opt, 2), out=tmp_path, **QUIET)
    step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
    assert step >= 3   # the first step at lr 1e30 is step 3
    assert not np.isfinite(model.params).all() or not np.isfinite(model.forward(x)).all()
    back = cunet.load(tmp_path / "last.safetensors")
    assert np.isfinite(back.params).all() and np.isfinite(back.forward(x)).all()
    assert load_checkpoint(tmp_path / "last.safetensors")["train"]["step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["history.json", "history.png", "last.safetensors"]


def test_time_budget_stops_early_then_resumes(tmp_path):
    x, y = discs(16, 2)
    model = tiny(1)
    opt = optim.Adam(model, 1e-2)
    h = fit(model, losses.Dice(), opt, (x, y), (x, y), epochs=1000, time_budget=1e-6, out=tmp_path, **QUIET)
    assert h.stopped == "time_budget" and h["step"] == [1] and h["partial"] == [True]
    assert h.records[0]["val_loss"] > 0 and h.records[0]["mean_dice"] is not None   # validated before stopping
    t = load_checkpoint(tmp_path / "last.safetensors")["train"]
    assert (t["epoch"], t["batch"], t["step"]) == (0, 1, 1)
    h = fit(model, losses.Dice(), opt, (x, y), steps=3, resume=tmp_path / "last.safetensors", **QUIET)
    assert h["step"] == [1, 2, 3] and h.stopped == "steps" and opt.step_count == 3


def test_regression_reports_psnr(capsys):
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 1, (8, 1, 8, 8)).astype(np.float32)
    noisy = clean + rng.normal(0, 0.1, clean.shape).astype(np.float32)
    model = tiny(1)
    h = fit(model, losses.MSE(), optim.Adam(model, 1e-2), (noisy, clean), (noisy, clean), epochs=2)   # bar and log on
    r = h.records[-1]
    assert 0 < r["psnr"] < 60 and "dice" not in r and h.best == -min(h["val_loss"])
    out = capsys.readouterr()
    assert "epoch 2/2 step 2" in out.out and f"psnr {r['psnr']:.4g}" in out.out and "step" in out.err   # log, tqdm


def test_host_kernel_steps_match_reference_steps():
    """3 SGD steps with the float32 kernels = 3 steps on the float64 NumPy oracle."""
    x, y = discs(8, 3, seed=2)
    models = [tiny(3, dropout=0.2, seed=2), tiny(3, dropout=0.2, seed=2).to("reference")]
    start = models[0].params.copy()
    for m in models:
        fit(m, losses.DiceCE(), optim.SGD(m, 0.1, momentum=0.9), ArrayBatches(x, y, 4), steps=3, **QUIET)
    host, ref = models
    assert host.params.dtype == np.float32 and ref.params.dtype == np.float64
    moved = np.abs(ref.params - start).max()
    assert moved > 1e-2
    np.testing.assert_allclose(host.params, ref.params, rtol=0, atol=1e-5)
    np.testing.assert_allclose(host.buffers, ref.buffers, rtol=1e-4, atol=1e-5)


def test_checkpoint_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.safetensors"
    for f in (load_checkpoint, cunet.load):
        with pytest.raises(ValueError, match="missing.safetensors.*no such file"):
            f(missing)
    model = tiny(1)
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, model)
    data = good.read_bytes()
    garbage, truncated = tmp_path / "garbage.safetensors", tmp_path / "truncated.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    truncated.write_bytes(data[:-100])
    for p in (garbage, truncated):
        with pytest.raises(ValueError, match=f"{p.name}.*not a readable safetensors file"):
            cunet.load(p)
    from safetensors.numpy import save_file
    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, plain)
    with pytest.raises(ValueError, match="plain.safetensors.*no 'cunet.model' metadata"):
        load_checkpoint(plain)
    bad_json = tmp_path / "bad_json.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, bad_json, metadata={"cunet.model": "{oops"})
    with pytest.raises(ValueError, match="bad_json.safetensors.*'cunet.model' is not valid JSON"):
        load_checkpoint(bad_json)
    save_file({"w": np.zeros(3, np.float32)}, plain, metadata={"cunet.model": json.dumps(model.config)})
    with pytest.raises(ValueError, match="plain.safetensors.*does not hold a cunet.nn.UNet"):
        cunet.load(plain)


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    import safetensors.numpy
    path = tmp_path / "last.safetensors"
    model = tiny(1)
    save_checkpoint(path, model)
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    model.params += 1
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.safetensors"]


def test_array_batches():
    x = np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((10, 1, 16, 16), np.float32)   # x[i] = i
    y = np.zeros((10, 16, 16), np.int64)
    src = ArrayBatches(x, y, batch_size=4, seed=7)
    assert len(src) == 3 and len(ArrayBatches(x, y, 4, drop_last=True)) == 2

    def order(epoch):
        return [int(v) for xb, _ in src.batches(epoch) for v in xb[:, 0, 0, 0]]

    assert sorted(order(0)) == list(range(10))   # every sample once, the last batch short
    assert order(0) == order(0) and order(0) != order(1)   # (seed, epoch) fixes the order
    xb, yb = next(iter(ArrayBatches(x, y, 4, shuffle=False).batches(5)))
    assert xb[:, 0, 0, 0].tolist() == [0, 1, 2, 3] and yb.shape == (4, 16, 16)
    with pytest.raises(ValueError, match=r"targets: expected integer labels .*\(10, 16, 16\)"):
        ArrayBatches(x, y[:9])
    with pytest.raises(TypeError, match="images: expected float32 or float64"):
        ArrayBatches(x.astype(np.int64), y)
    with pytest.raises(ValueError, match="batch_size: expected at most 10"):
        ArrayBatches(x, y, 16, drop_last=True)


def test_fit_argument_errors():
    model = tiny(1)
    opt = optim.SGD(model, 0.1)
    data = discs(8, 2)
    with pytest.raises(ValueError, match="epochs, steps, time_budget: expected at least one"):
        fit(model, losses.BCE(), opt, data, **QUIET)
    with pytest.raises(TypeError, match="train: expected a batch source"):
        fit(model, losses.BCE(), opt, [data], epochs=1, **QUIET)
    with pytest.raises(ValueError, match="time_budget: expected a value in"):
        fit(model, losses.BCE(), opt, data, epochs=1, time_budget=0, **QUIET)
    with pytest.raises(ValueError, match="steps: expected an int >= 1"):
        fit(model, losses.BCE(), opt, data, steps=0, **QUIET)


def test_import_cunet_stays_cheap():
    code = ("import sys, cunet; cunet.UNet; cunet.load; "
            "print(sorted(m for m in ('cupy', 'matplotlib', 'tqdm', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.gpu
def test_fit_on_cuda_matches_cpu(tmp_path):
    x, y = discs(16, 3)
    models = [tiny(3), tiny(3).to("cuda")]
    for m in models:
        fit(m, losses.DiceCE(), optim.SGD(m, 0.05, momentum=0.9), (x, y), (x, y), epochs=2, out=tmp_path / m.device,
            **QUIET)
    np.testing.assert_allclose(models[1].params.get(), models[0].params, rtol=1e-3, atol=1e-4)
    back = cunet.load(tmp_path / "cuda" / "last.safetensors")
    np.testing.assert_array_equal(back.params, models[1].params.get())


# ---- the static-buffer step, precision, sync-free checks, CUDA graphs

def _ordinary_steps(model, loss, opt, sched, batches, clip):
    """The step as written before TrainStep: arrays passed straight through."""
    for t, (x, y) in enumerate(batches):
        model.reseed(t)
        opt.zero_grad()
        value, dz = loss(model.forward(x), y)
        model.backward(dz)
        if clip:
            optim.clip_grad_norm(model, clip)
        opt.step()
        sched.step()
    return value


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_train_step_matches_the_ordinary_step(device):
    """TrainStep (what a CUDA graph captures: static buffers, device scalars and seeds) run
    uncaptured gives the ordinary step's parameters, state and loss, bit for bit."""
    x, y = discs(8, 3, seed=4)
    dtype = np.float64 if device == "reference" else np.float32
    batches = [(x[i:i + 4].astype(dtype), y[i:i + 4]) for i in (0, 4, 0, 4, 0)]
    runs = []
    for use_step in (False, True):
        model = tiny(3, norm=None, dropout=0.3).to(device)
        opt = optim.AdamW(model, 1e-2, l1=1e-4, l2=1e-3)
        sched = optim.CosineLR(opt, 5, warmup=1)
        loss = losses.DiceCE()
        if use_step:
            step = TrainStep(model, loss, opt, batches[0][0].shape, batches[0][1].shape, np.int64, clip=0.5)
            for t, (xb, yb) in enumerate(batches):
                value = step(xb, yb, t)
                sched.step()
            value = float(value)
            assert step.x.shape == (4, 1, 16, 16) and step.loss.dtype == dtype
        else:
            value = _ordinary_steps(model, loss, opt, sched, batches, 0.5)
        runs.append((model.params.copy(), model.buffers.copy(), opt.state["m"].copy(), opt.state["v"].copy(), value))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(runs[0][0], tiny(3, norm=None, dropout=0.3).to(device).params)


def test_train_step_and_graph_errors():
    model = tiny(1)
    opt = optim.SGD(model, 0.1)
    with pytest.raises(ValueError, match="graph: CUDA graphs need a model on 'cuda'.*got a model on 'cpu'"):
        TrainStep(model, losses.BCE(), opt, (2, 1, 16, 16), (2, 16, 16), np.int64, graph=True)
    with pytest.raises(ValueError, match="graph: CUDA graphs need a model on 'cuda'.*got a model on 'cpu'"):
        fit(model, losses.BCE(), opt, discs(8, 2), epochs=1, graph=True, **QUIET)
    step = TrainStep(model, losses.BCE(), opt, (2, 1, 16, 16), (2, 16, 16), np.int64)
    x, y = discs(3, 2)
    with pytest.raises(ValueError, match=r"x: expected shape \(2, 1, 16, 16\) \(the static buffer\), got \(3, 1, 16"):
        step(x, y, 0)
    with pytest.raises(ValueError, match="precision: expected one of 'fp32', 'tf32', 'bf16', got 'fp8'"):
        fit(model, losses.BCE(), opt, discs(8, 2), epochs=1, precision="fp8", **QUIET)
    assert opt.step_count == 0


def test_value_checks_off_skip_device_reads():
    """Inside value_checks(False) (what a CuPy step uses) the losses skip the checks that
    read values: NaN logits give a NaN loss instead of an error; fit checks the batch on the
    host instead (_check_batch), with the same messages."""
    from cunet import _check, ops
    from cunet.train import _check_batch
    z = np.zeros((1, 2, 4, 4), np.float32)
    z[0, 0, 1, 1] = np.nan
    labels = np.zeros((1, 4, 4), np.int64)
    with pytest.raises(ValueError, match="logits: contains 1 NaN or infinite"):
        ops.cross_entropy(z, labels)
    with _check.value_checks(False):
        value, _ = ops.cross_entropy(z, labels)
        assert np.isnan(value)
        ops.bce_with_logits(np.zeros((1, 1, 4, 4), np.float32), np.full((1, 1, 4, 4), 2.0, np.float32))
    assert _check.values_checked()
    img = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"targets: values must lie in \[0, 3\), found \[3\]"):
        _check_batch(img, labels + 3, losses.DiceCE(), 3)
    with pytest.raises(ValueError, match=r"targets: values must lie in \[0, 1\]"):
        _check_batch(img, img + 2, losses.BCE(), 2)
    with pytest.raises(ValueError, match="images: contains 1 NaN"):
        _check_batch(z[:, :1], labels, losses.DiceCE(), 2)
    _check_batch(img, img + 2, losses.MSE(), 2)   # regression targets: any finite value


def test_fit_precision_override_and_checkpoint(tmp_path):
    """fit(precision=...) trains with it and restores the model's own; the model's precision
    (not fit's) is what its config, and so a checkpoint, keeps."""
    x, y = discs(8, 2)
    model = tiny(1, precision="bf16")
    fit(model, losses.BCE(), optim.SGD(model, 0.1), (x, y), steps=1, out=tmp_path, precision="tf32", **QUIET)
    assert model.precision == "bf16"
    ckpt = load_checkpoint(tmp_path / "last.safetensors")
    assert ckpt["config"]["precision"] == "bf16" and ckpt["train"]["precision"] == "tf32"
    back = cunet.load(tmp_path / "last.safetensors")
    assert back.precision == "bf16" and back.config == model.config
    np.testing.assert_array_equal(back.params, model.params)


def _graph_run(graph, n, clip=None, sched=True):
    """n steps of a tiny UNet on CUDA (dropout, BN, Adam, a schedule) through TrainStep."""
    import cupy
    x, y = discs(8, 3, seed=5)
    model = tiny(3, dropout=0.2).to("cuda")
    opt = optim.Adam(model, 1e-2)
    schedule = optim.StepLR(opt, 2, gamma=0.5) if sched else None
    step = TrainStep(model, losses.DiceCE(), opt, (4, 1, 16, 16), (4, 16, 16), np.int64, clip=clip, graph=graph)
    values = []
    with step.stream or cupy.cuda.get_current_stream():   # read the loss on the stream that wrote it
        for t in range(n):
            i = 4 * (t % 2)
            values.append(float(step(x[i:i + 4], y[i:i + 4], t)))
            if schedule:
                schedule.step()
        cupy.cuda.get_current_stream().synchronize()
    return model, opt, step, values


@pytest.mark.gpu
def test_graph_steps_match_eager_steps():
    """6 steps with the last 4 replayed from a CUDA graph give the parameters, BN statistics,
    optimizer state and losses of 6 eager steps (same seed); the capture drew exactly the
    bytes the second warm-up step allocated from the arena reserved for it."""
    import cupy
    eager, graphed = _graph_run(False, 6, clip=1.0), _graph_run(True, 6, clip=1.0)
    step = graphed[2]
    assert step.graph is not None and step.calls == 6
    assert 0 < step.arena_bytes == step.arena.offset   # capture asked for exactly what warm-up 2 used
    for a, b in ((eager[0].params, graphed[0].params), (eager[0].buffers, graphed[0].buffers),
                 (eager[1].state["m"], graphed[1].state["m"]), (eager[1].state["v"], graphed[1].state["v"])):
        np.testing.assert_allclose(cupy.asnumpy(b), cupy.asnumpy(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(graphed[3], eager[3], rtol=1e-5)
    assert len(set(graphed[3])) > 1   # replays saw new batches, seeds and learning rates


@pytest.mark.gpu
def test_fit_with_graph_matches_fit_without(tmp_path):
    import cupy
    x, y = discs(10, 2, seed=6)   # 10 samples, batch 4: the short last batch runs uncaptured
    runs = []
    for graph in (False, True):
        model = tiny(1, dropout=0.1).to("cuda")
        opt = optim.SGD(model, 0.05, momentum=0.9)
        h = fit(model, losses.DiceBCE(), opt, ArrayBatches(x, y, 4, seed=1), (x, y), epochs=3,
                schedule=optim.PolyLR(opt, 9), graph=graph, out=tmp_path / str(graph), **QUIET)
        runs.append((cupy.asnumpy(model.params), h))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs[1][1]["train_loss"], runs[0][1]["train_loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="debug: expected False with graph=True"):
        fit(model, losses.DiceBCE(), opt, (x, y), epochs=1, graph=True, debug=True, **QUIET)
