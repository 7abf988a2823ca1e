"""The bundled real data: found inside installed packages without importing them."""
import numpy as np
import pytest

from cunet.data import datasets


def test_tissue_labels_and_slab_split():
    d = datasets.tissue()
    img, lab = d["image"], d["label"]
    assert img.shape == (1, 197, 233, 189) and lab.shape == (197, 233, 189)
    assert np.allclose(np.diag(d["affine"])[:3], 1.0)       # 1 mm template grid
    counts = np.bincount(lab.ravel(), minlength=4)
    assert counts.size == 4 and (counts > 10000).all()      # background, CSF, GM, WM all present
    assert ((img[0] == 0) == (lab == 0)).all()
    tr, va = d["train_slices"], d["val_slices"]
    assert np.all(np.diff(va) == 1)                          # one contiguous axial slab
    assert not set(tr) & set(range(va[0] - 3, va[-1] + 4))   # no training slice within 3 of it
    assert len(va) > 20 and len(tr) > 3 * len(va)   # 20% of the brain held out, 3-slice gaps


def test_nuclei_tiles_are_spatially_disjoint():
    d = datasets.nuclei(tile=128)
    assert d["train_images"].shape == (12, 1, 128, 128) and d["val_images"].shape == (4, 1, 128, 128)
    assert 0.0 <= d["train_images"].min() and d["train_images"].max() <= 1.0
    assert set(np.unique(d["train_labels"])) == {0, 1}
    np.testing.assert_array_equal(d["val_images"][0, 0], d["image"][:128, 384:])
    assert 0.1 < d["label"].mean() < 0.4


def test_denoise_noise_level_and_noise2noise_pairs():
    d = datasets.denoise(noise=0.1, seed=3)
    assert d["train_clean"].shape[1:] == (1, 192, 224)
    # Gaussian noise of sigma 0.1 on a [0, 1] image: PSNR = 20 log10(1 / 0.1) = 20 dB
    assert abs(datasets.psnr(d["val_noisy"], d["val_clean"]) - 20.0) < 0.1
    n1, n2 = d["train_noisy"] - d["train_clean"], d["train_noisy2"] - d["train_clean"]
    assert abs(np.corrcoef(n1.ravel(), n2.ravel())[0, 1]) < 0.01   # independent copies


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps nilearn==0.14.1"):
        datasets.tissue()
