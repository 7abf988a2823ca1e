"""Careless and hostile input to the training loop, model files, images and the `cunet`
command: each defect found by probing (issue 19) reproduced and refused with a one-line
reason, never a stale model, a crash, a silent wrong answer or an unbounded allocation.
The hostile sizes given to the ops are in test_hostile_ops.py; the fuzzing in test_fuzz.py."""
import json
import os
import resource
import time

import nibabel as nib
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from safetensors import safe_open

import cunet
from cunet import cli, losses, optim
from cunet.data import io
from cunet.train import ArrayBatches, fit, load_checkpoint, save_checkpoint

from test_train import QUIET, discs, tiny


def _train(root, out, *extra):
    """One tiny `cunet train` on the real crop -> exit status."""
    return cli.main(["train", str(root / "t1.nii.gz"), "--labels", str(root / "seg.nii.gz"), "--out", str(out),
                     "--epochs", "2", "--base", "4", "--depth", "2", "--patch", "32", "32", "--batch-size", "2",
                     "--steps-per-epoch", "2", *extra])


def _weights(path):
    return {k: v for k, v in load_file(str(path)).items() if not k.startswith("optim/")}


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ---- 1. one run per run directory

def test_second_train_does_not_ship_the_first_runs_best(crop, tmp_path, capsys):
    root = crop[0]
    out, run = tmp_path / "m.safetensors", tmp_path / "m_run"
    val = ["--val-images", str(root / "t1.nii.gz"), "--val-labels", str(root / "seg.nii.gz")]
    assert _train(root, out, *val) == 0
    first_best = _weights(run / "best.safetensors")
    capsys.readouterr()
    # again without validation: refused, nothing touched
    assert _train(root, out, "--seed", "3") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a training run" in err and "--overwrite" in err
    assert _same(_weights(run / "best.safetensors"), first_best)
    # on purpose: the old run's files go, and the model is this run's last weights
    assert _train(root, out, "--seed", "3", "--overwrite") == 0
    assert not (run / "best.safetensors").exists()
    final = _weights(out)
    assert _same(final, _weights(run / "last.safetensors")) and not _same(final, first_best)


def test_train_resume_continues_the_run(crop, tmp_path, capsys):
    root = crop[0]
    out, run = tmp_path / "m.safetensors", tmp_path / "m_run"
    assert _train(root, out, "--resume") == 2
    assert "holds no run to resume" in capsys.readouterr().err
    assert _train(root, out) == 0
    steps = json.loads((run / "history.json").read_text())["records"][-1]["step"]
    assert _train(root, out, "--resume", "--epochs", "3") == 0   # one more epoch of the same run
    assert json.loads((run / "history.json").read_text())["records"][-1]["step"] == steps + 2


def test_fit_refuses_a_directory_of_another_run(tmp_path):
    x, y = discs(8, 2)
    model = tiny()
    fit(model, losses.BCE(), optim.SGD(model, 0.1), ArrayBatches(x, y, 4), (x, y), epochs=1, out=tmp_path, **QUIET)
    assert (tmp_path / "best.safetensors").exists()
    model = tiny(seed=1)
    with pytest.raises(ValueError, match=r"^out: .*already holds a training run .*best\.safetensors.*overwrite=True"):
        fit(model, losses.BCE(), optim.SGD(model, 0.1), ArrayBatches(x, y, 4), epochs=1, out=tmp_path, **QUIET)
    # a kill leaves temporaries of the atomic writes: resuming (or starting over) removes them
    (tmp_path / ".history.png.abc123.tmp").write_bytes(b"")
    (tmp_path / ".last.safetensors.xyz.tmp").write_bytes(b"")
    h = fit(model, losses.BCE(), optim.SGD(model, 0.1), ArrayBatches(x, y, 4), epochs=2, out=tmp_path,
            resume=tmp_path / "last.safetensors", **QUIET)
    assert h.records[-1]["step"] == 4 and not list(tmp_path.glob(".*.tmp"))
    lines = []
    fit(model, losses.BCE(), optim.SGD(model, 0.1), ArrayBatches(x, y, 4), epochs=1, out=tmp_path, overwrite=True,
        progress=False, log=lines.append)
    assert not (tmp_path / "best.safetensors").exists() and "removed the previous run's" in lines[0]


def test_written_files_respect_the_umask(tmp_path, crop):
    old = os.umask(0o022)
    try:
        model = tiny()
        save_checkpoint(tmp_path / "m.safetensors", model)
        io.save_label(tmp_path / "l.nii.gz", crop[2], like=io.load_label(crop[0] / "seg.nii.gz")[1])
    finally:
        os.umask(old)
    for name in ("m.safetensors", "l.nii.gz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert not list(tmp_path.glob(".*"))


# ---- 3. NaN weights; 6. absurd configs

def _model_file(path, config=None, mutate=None):
    """A tiny model file, its config replaced or its tensors changed by mutate(dict)."""
    save_checkpoint(path, cunet.UNet(2, 1, 1, base=4, depth=2))
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if config is not None:
        meta["cunet.model"] = json.dumps(json.loads(meta["cunet.model"]) | config)
    if mutate is not None:
        mutate(tensors)
    save_file(tensors, str(path), metadata=meta)
    return path


def test_nan_weights_are_refused(tmp_path, crop, capsys):
    path = _model_file(tmp_path / "nan.safetensors", mutate=lambda t: t["dec1.conv2.weight"].__setitem__(0, np.nan))
    with pytest.raises(ValueError, match=r"tensor 'dec1.conv2.weight' holds \d+ NaN or infinite"):
        cunet.load(path)
    out = tmp_path / "pred.nii.gz"
    assert cli.main(["predict", str(path), str(crop[0] / "t1.nii.gz"), str(out)]) == 2
    assert "NaN" in capsys.readouterr().err and not out.exists()


def test_overflowing_weights_give_no_label_map(tmp_path, crop, capsys):
    # finite weights whose logits overflow float32: an error, not an all-background map
    def huge(t):
        for k in t:
            if k.endswith("weight"):
                t[k] = np.full_like(t[k], 1e30)
    path = _model_file(tmp_path / "huge.safetensors", mutate=huge)
    out = tmp_path / "pred.nii.gz"
    assert cli.main(["predict", str(path), str(crop[0] / "t1.nii.gz"), str(out)]) == 2
    assert "NaN or infinite logit" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("config, names", [
    (dict(base=10 ** 7), "base, depth"), (dict(depth=12), "base, depth"),
    (dict(depth=60), "depth: expected at most 16"),
    (dict(base=1000), "enc0.conv1.weight"), (dict(depth=3), "tensors the file lacks"),
    (dict(dims=3), "enc0.conv1.weight"), (dict(in_channels=10 ** 12), "base, depth"),
    (dict(base="16"), "base"), (dict(dropout=2.0), "dropout"), (dict(bogus=1), "bogus"),
])
def test_absurd_config_is_refused_before_allocating(tmp_path, config, names):
    path = _model_file(tmp_path / "m.safetensors", config=config)
    before, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    with pytest.raises(ValueError, match=r"does not hold a cunet.nn.UNet") as e:
        cunet.load(path)
    assert names in str(e.value)
    assert time.monotonic() - t0 < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024   # KiB


def test_non_float_tensor_is_refused(tmp_path):
    path = _model_file(tmp_path / "m.safetensors",
                       mutate=lambda t: t.__setitem__("head.bias", t["head.bias"].astype(np.int64)))
    with pytest.raises(ValueError, match=r"tensor 'head.bias' has dtype int64"):
        load_checkpoint(path)


# ---- 4. predict must not overwrite its input

def test_predict_refuses_to_overwrite_its_input(crop, tmp_path, capsys):
    root = crop[0]
    model = _model_file(tmp_path / "m.safetensors")
    image = tmp_path / "a.nii.gz"
    image.write_bytes((root / "t1.nii.gz").read_bytes())
    before = image.read_bytes()
    for output, says in [(image, "is the INPUT file"), (tmp_path / "." / "a.nii.gz", "is the INPUT file"),
                         (tmp_path / "nowhere" / "p.nii.gz", "does not exist"),
                         (tmp_path / "m.safetensors", "unsupported file type"), (tmp_path, "unsupported file type")]:
        assert cli.main(["predict", str(model), str(image), str(output)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
    assert image.read_bytes() == before
    link = tmp_path / "link.nii.gz"
    link.symlink_to(image)
    assert cli.main(["predict", str(model), str(image), str(link)]) == 2
    assert image.read_bytes() == before


# ---- 5. label values that are not class indices

@pytest.mark.parametrize("values, hint", [((0, 255), "0/255"), ((0, 1000), "--classes 1001"),
                                          ((0, 1, 3), "--classes 4")])
def test_mask_values_are_not_class_indices(crop, tmp_path, capsys, values, hint):
    root, img, lab, affine = crop
    mask = np.zeros(lab.shape, np.int16)
    for i, v in enumerate(values):
        mask[lab == i] = v
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii.gz")
    rc = cli.main(["train", str(root / "t1.nii.gz"), "--labels", str(tmp_path / "mask.nii.gz"), "--out",
                   str(tmp_path / "m.safetensors"), "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "not the consecutive class indices" in err and hint in err
    assert not (tmp_path / "m_run").exists()


# ---- 7. a header that claims more than the file holds

def test_nifti_header_claiming_huge_size(tmp_path):
    import gzip
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((2000, 2000, 2000))
    raw = hdr.binaryblock + b"\0" * 4
    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "bomb.nii").write_bytes(raw + b"\0" * 100)
    assert (tmp_path / "bomb.nii.gz").stat().st_size < 100
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name in ("bomb.nii.gz", "bomb.nii"):
        with pytest.raises(ValueError, match=r"claims 2000x2000x2000 voxels of float32 .* more than a \d+-byte"):
            io.load_image(tmp_path / name)
        with pytest.raises(ValueError, match=r"claims 2000x2000x2000"):
            io.load_label(tmp_path / name)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024


# ---- 9. small things

@pytest.mark.parametrize("option, value", [("--epochs", "0"), ("--batch-size", "-1"), ("--time-budget", "nan"),
                                           ("--depth", "two"), ("--lr", "0")])
def test_bad_numbers_name_the_option(crop, tmp_path, capsys, option, value):
    root = crop[0]
    with pytest.raises(SystemExit) as e:
        cli.main(["train", str(root / "t1.nii.gz"), "--labels", str(root / "seg.nii.gz"), "--out",
                  str(tmp_path / "m.safetensors"), option, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {option}: expected" in err and "total_steps" not in err


def test_4d_label_error_names_the_file(crop, tmp_path, capsys):
    root, img, lab, affine = crop
    nib.save(nib.Nifti1Image(np.stack([img, img], -1).astype(np.float32), affine), tmp_path / "i4.nii.gz")
    nib.save(nib.Nifti1Image(np.stack([lab, lab], -1).astype(np.uint8), affine), tmp_path / "l4.nii.gz")
    rc = cli.main(["train", str(tmp_path / "i4.nii.gz"), "--labels", str(tmp_path / "l4.nii.gz"), "--out",
                   str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "l4.nii.gz" in err and "4D" in err and len(err.splitlines()) == 1


# ---- kill -9 at random moments: what is left is whole, and the run can be resumed

def test_killed_training_leaves_whole_files_and_resumes(crop, tmp_path):
    import signal
    import subprocess
    import sys
    root = crop[0]
    out, run = tmp_path / "m.safetensors", tmp_path / "m_run"
    argv = [sys.executable, "-m", "cunet.cli", "train", str(root / "t1.nii.gz"), "--labels", str(root / "seg.nii.gz"),
            "--out", str(out), "--epochs", "12", "--base", "4", "--depth", "2", "--patch", "32", "32",
            "--batch-size", "2", "--steps-per-epoch", "3", "--val-images", str(root / "t1.nii.gz"),
            "--val-labels", str(root / "seg.nii.gz")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed = 0
    for delay in np.random.default_rng(9).uniform(1.2, 2.6, 3):   # a whole run takes ~6 s
        resume = ["--resume"] if (run / "last.safetensors").exists() else []
        p = subprocess.Popen(argv + resume, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            killed += 1
        for name in ("last.safetensors", "best.safetensors"):   # under their final names: whole files
            if (run / name).exists():
                load_checkpoint(run / name)
        if (run / "history.json").exists():
            json.loads((run / "history.json").read_text())
        if (run / "history.png").exists():
            assert (run / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert killed >= 2   # the kills landed inside runs, not after them
    resume = ["--resume"] if (run / "last.safetensors").exists() else []
    done = subprocess.run(argv + resume, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "history.json").read_text())["records"][-1]["step"] == 12 * 3
    cunet.load(out)
    assert not list(run.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))
