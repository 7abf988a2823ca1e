"""The `cunet` command end to end on a small crop of real data (the MNI template shipped
in nilearn), and its bad-input behaviour: exit status 2 with a one-line reason."""
import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import GPU
import cunet
from cunet import cli


def test_train_then_predict_on_real_crop(crop, capsys):
    root, img, lab, affine = crop
    model = root / "model.safetensors"
    rc = cli.main(["train", str(root / "t1.nii.gz"), "--labels", str(root / "seg.nii.gz"), "--out", str(model),
                   "--dims", "2", "--epochs", "3", "--base", "4", "--depth", "2", "--patch", "32", "32",
                   "--batch-size", "4", "--steps-per-epoch", "3", "--val-images", str(root / "t1.nii.gz"),
                   "--val-labels", str(root / "seg.nii.gz")])
    assert rc == 0, capsys.readouterr().err
    assert model.exists() and (root / "model_run" / "history.json").exists()
    hist = json.loads((root / "model_run" / "history.json").read_text())
    assert len(hist["records"]) == 3
    out = root / "pred.nii.gz"
    assert cli.main(["predict", str(model), str(root / "t1.nii.gz"), str(out), "--postprocess"]) == 0
    pred = nib.load(out)
    np.testing.assert_allclose(pred.affine, affine)     # the label map lands on the input's grid
    labels = np.asarray(pred.dataobj)
    assert labels.shape == lab.shape
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert cli.main(["predict", str(model), str(root / "t1.nii.gz"), str(root / "tta.nii.gz"), "--tta"]) == 0


def test_bad_input_exits_2_with_a_one_line_reason(crop, capsys, tmp_path):
    root, img, lab, affine = crop
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image((lab + 5).astype(np.uint8), affine), bad)
    rc = cli.main(["train", str(root / "t1.nii.gz"), "--labels", str(bad), "--out", str(tmp_path / "m.safetensors"),
                   "--classes", "4"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "bad.nii.gz" in err and "[0, 4)" in err
    rc = cli.main(["train", str(root / "t1.nii.gz"), "--labels", str(root / "seg.nii.gz"), str(bad),
                   "--out", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--labels: expected one label file per image (1), got 2" in err
    shifted = tmp_path / "shifted.nii.gz"
    a2 = affine.copy()
    a2[0, 3] += 5
    nib.save(nib.Nifti1Image(lab.astype(np.uint8), a2), shifted)
    rc = cli.main(["train", str(root / "t1.nii.gz"), "--labels", str(shifted), "--out", str(tmp_path / "m.st")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "shifted.nii.gz" in err and "t1.nii.gz" in err
    rc = cli.main(["train", str(root / "t1.nii.gz"), "--labels", str(root / "seg.nii.gz"), "--out",
                   str(tmp_path / "m.st"), "--graph"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "graph: CUDA graphs need a model on 'cuda'" in err
    rc = cli.main(["predict", str(tmp_path / "missing.safetensors"), str(root / "t1.nii.gz"), str(tmp_path / "o.nii")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "missing.safetensors" in err


def test_info_runs_as_an_installed_command():
    exe = shutil.which("cunet")
    cmd = [exe, "info"] if exe else [sys.executable, "-m", "cunet.cli", "info"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cunet 0.1.0" in out.stdout and "host build" in out.stdout and "conv" in out.stdout
    assert "GPU:" in out.stdout


def test_train_and_predict_a_3d_model_with_sliding_windows(crop, tmp_path, capsys):
    root, img, lab, affine = crop
    model = tmp_path / "m3.safetensors"
    rc = cli.main(["train", str(root / "t1.nii.gz"), "--labels", str(root / "seg.nii.gz"), "--out", str(model),
                   "--dims", "3", "--epochs", "2", "--base", "2", "--depth", "1", "--patch", "16", "16", "8",
                   "--batch-size", "2", "--steps-per-epoch", "2", "--no-augment", "--precision", "bf16"])
    assert rc == 0, capsys.readouterr().err
    assert cunet.load(model).precision == "bf16"   # kept in the checkpoint's model config
    out = tmp_path / "p3.nii.gz"
    assert cli.main(["predict", str(model), str(root / "t1.nii.gz"), str(out)]) == 0   # windows of 16x16x8
    pred = nib.load(out)
    assert pred.shape == lab.shape
    np.testing.assert_allclose(pred.affine, affine)


@pytest.mark.skipif(GPU, reason="a GPU is present: --device cuda is valid there, so this error cannot occur")
def test_cuda_without_a_gpu_is_a_clear_error(crop, capsys):
    root = crop[0]
    rc = cli.main(["predict", "m.safetensors", str(root / "t1.nii.gz"), "o.nii.gz", "--device", "cuda"])
    assert rc == 2 and "--device cuda: no CUDA device found" in capsys.readouterr().err
