"""cunet.data: file I/O and its errors, normalisation, slices, padding, the patch sampler
and augmentation (the numba resampler included). Small arrays: numba compiles once and
caches (cache=True), so repeated runs start fast."""
import itertools
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from cunet import data
from cunet.data import Augment, PatchSampler

AFFINE = np.array([[-1.5, 0, 0, 90.0], [0, 2.0, 0, -126.0], [0, 0, 2.5, -72.0], [0, 0, 0, 1]])
IDENTITY = dict(flip=False, rot90=False, rotate=0.0, scale=(1, 1), elastic=None, intensity_scale=(1, 1),
                intensity_shift=0.0, gamma=(1, 1), noise=0.0)


def write_nifti(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


# ---- I/O

@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_nifti_round_trip_keeps_grid_and_data(tmp_path, ext):
    rng = np.random.default_rng(0)
    img = rng.integers(-100, 1000, (5, 6, 7)).astype(np.int16)
    lab = rng.integers(0, 4, (5, 6, 7)).astype(np.uint8)
    x, meta = data.load_image(write_nifti(tmp_path / f"img{ext}", img))
    assert x.dtype == np.float32 and x.shape == (5, 6, 7) and np.array_equal(x, img)
    assert np.allclose(meta["affine"], AFFINE) and meta["format"] == "nifti" and meta["dtype"] == "int16"
    y, lmeta = data.load_label(write_nifti(tmp_path / f"lab{ext}", lab), num_classes=4)
    assert y.dtype == np.int64 and np.array_equal(y, lab)
    data.check_pair("img", "lab", x, y, meta, lmeta)

    data.save_image(tmp_path / f"out{ext}", x * 0.5, like=meta)
    back = nib.load(str(tmp_path / f"out{ext}"))
    assert np.allclose(back.affine, AFFINE) and back.get_data_dtype() == np.float32
    assert np.array_equal(back.get_fdata(dtype=np.float32), x * 0.5)
    assert back.header.get_zooms() == meta["header"].get_zooms()
    data.save_label(tmp_path / f"pred{ext}", y, like=meta)
    back = nib.load(str(tmp_path / f"pred{ext}"))
    assert np.allclose(back.affine, AFFINE) and back.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(back.dataobj), lab)
    data.save_label(tmp_path / f"big{ext}", y * 100, like=dict(affine=AFFINE, header=meta["header"]))
    back = nib.load(str(tmp_path / f"big{ext}"))   # above 255: int16; a hand-made like is enough
    assert back.get_data_dtype() == np.int16 and np.allclose(back.affine, AFFINE)
    with pytest.raises(ValueError, match="does not match the grid"):
        data.save_label(tmp_path / f"bad{ext}", y[:4], like=meta)


def test_png_and_tiff_load_and_save(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    deep = rng.integers(0, 60000, (6, 9)).astype(np.uint16)
    flt = rng.standard_normal((6, 9)).astype(np.float32)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(deep).save(tmp_path / "d.png")
    Image.fromarray(flt, mode="F").save(tmp_path / "f.tif")
    for name, want in (("g.png", grey), ("c.png", rgb), ("d.png", deep), ("f.tif", flt)):
        x, meta = data.load_image(tmp_path / name)
        assert x.dtype == np.float32 and x.shape == want.shape and np.array_equal(x, want), name
        assert meta["affine"] is None and meta["kind"] == "image"
    lab = rng.integers(0, 3, (6, 9))
    data.save_label(tmp_path / "l.png", lab)
    y, _ = data.load_label(tmp_path / "l.png", num_classes=3)
    assert y.dtype == np.int64 and np.array_equal(y, lab)
    data.save_image(tmp_path / "o.tif", flt)
    assert np.array_equal(data.load_image(tmp_path / "o.tif")[0], flt)
    with pytest.raises(ValueError, match=r"o\.png.*\.tif"):
        data.save_image(tmp_path / "o.png", flt)   # negative floats do not fit a PNG


def test_bad_files_are_named(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a nifti file at all" * 20)
    junk_png = tmp_path / "junk.png"
    junk_png.write_bytes(b"\x89PNG garbage" * 10)
    nan = np.ones((3, 4, 5), np.float32)
    nan[1, 2, 3] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", nan)
    for path, message in ((empty, "empty"), (junk, "cannot read"), (junk_png, "cannot read"),
                          (tmp_path / "nan.nii.gz", "NaN"), (tmp_path / "x.jpg", "unsupported")):
        with pytest.raises(ValueError, match=message) as e:
            data.load_image(path)
        assert str(path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.nii"):
        data.load_image(tmp_path / "missing.nii")

    frac = np.zeros((3, 4, 5), np.float32)
    frac[0, 0, :2] = [1.5, 2.25]
    neg = np.zeros((3, 4, 5), np.int16)
    neg[0, 0, 0] = -3
    big = np.zeros((3, 4, 5), np.int16)
    big[0, 0, :2] = [4, 7]
    cases = [(write_nifti(tmp_path / "frac.nii.gz", frac), None, r"integers, found \[1.5, 2.25\]"),
             (write_nifti(tmp_path / "lnan.nii.gz", nan), None, "1 NaN"),
             (write_nifti(tmp_path / "neg.nii.gz", neg), None, r"non-negative, found \[-3\]"),
             (write_nifti(tmp_path / "big.nii.gz", big), 4, r"in \[0, 4\), found \[4, 7\]")]
    for path, k, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            data.load_label(path, num_classes=k)
        assert path in str(e.value)


def test_check_pair_names_both_files(tmp_path):
    x, meta = data.load_image(write_nifti(tmp_path / "a.nii.gz", np.zeros((4, 5, 6), np.float32)))
    y, lmeta = data.load_label(write_nifti(tmp_path / "b.nii.gz", np.zeros((4, 5, 6), np.uint8)))
    with pytest.raises(ValueError, match=r"a\.nii\.gz and .*b\.nii\.gz: image shape \(4, 5, 6\) does not match"):
        data.check_pair(meta["path"], lmeta["path"], x, y[:, :4], meta, lmeta)
    shifted = dict(lmeta, affine=AFFINE.copy())
    shifted["affine"][0, 3] += 1.0   # the label grid moved by 1 mm
    with pytest.raises(ValueError, match=r"a\.nii\.gz and .*b\.nii\.gz: affines differ"):
        data.check_pair(meta["path"], lmeta["path"], x, y, meta, shifted)
    data.check_pair("a.png", "b.png", np.zeros((4, 5, 3)), np.zeros((4, 5)))   # (H, W, C) image, (H, W) label


# ---- normalisation, slices, padding

def test_normalize_values():
    rng = np.random.default_rng(2)
    img = rng.normal(5.0, 3.0, (2, 30, 40)).astype(np.float32)
    img[1] *= 10
    z = data.normalize(img, {"method": "zscore", "clip": None, "mask": "all"}, channel_axis=0)
    assert np.allclose(z.mean(axis=(1, 2)), 0, atol=1e-5) and np.allclose(z.std(axis=(1, 2)), 1, atol=1e-4)
    cfg = data.default_normalization()
    json.dumps(cfg)
    z = data.normalize(img, cfg, channel_axis=0)
    assert np.allclose(data.normalize(np.moveaxis(img, 0, -1), cfg, channel_axis=-1), np.moveaxis(z, 0, -1))
    whole = data.normalize(img, cfg)   # one set of statistics over both channels
    assert abs(whole.mean()) < 1e-4 and abs(whole.std() - 1) < 1e-3 and abs(whole[0].std() - 1) > 0.5
    lo, hi = np.percentile(img[0], [0.5, 99.5])
    c = np.clip(img[0].astype(np.float64), lo, hi)
    assert np.allclose(z[0], (c - c.mean()) / c.std(), atol=1e-5)
    p = data.normalize(img, {"method": "percentile", "clip": [1, 99], "mask": "all"}, channel_axis=0)
    lo, hi = np.percentile(img[1], [1, 99])
    assert np.allclose(p[1], (np.clip(img[1], lo, hi) - lo) / (hi - lo), atol=1e-6) and p.min() == 0 and p.max() == 1
    brain = np.zeros((10, 10, 6), np.float32)   # a volume without channel axis
    brain[2:8, 2:8, 1:5] = rng.uniform(100, 200, (6, 6, 4))
    n = data.normalize(brain, {"method": "zscore", "clip": None, "mask": "nonzero"})
    inside = n[2:8, 2:8, 1:5]
    assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-4 and (n[brain == 0] == 0).all()
    assert np.array_equal(data.normalize(img, {"method": "none"}), img)
    for cfg, message in (({"method": "minmax"}, "method"), ({"clip": [99, 1]}, "clip"), ({"mask": "x"}, "mask"),
                         ({"clipp": [1, 2]}, "unknown")):
        with pytest.raises(ValueError, match=message):
            data.normalize(img, cfg)
    with pytest.raises(ValueError, match="NaN"):
        data.normalize(np.full((1, 3, 3), np.nan, np.float32), cfg=None)
    with pytest.raises(ValueError, match="channel_axis"):
        data.normalize(img, channel_axis=3)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_round_trip(axis):
    rng = np.random.default_rng(3)
    vol = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    lab = rng.integers(0, 3, (4, 5, 6))
    x, y = data.to_slices(vol, lab, axis=axis)
    other = [s for a, s in enumerate((4, 5, 6)) if a != axis]
    assert x.shape == ((4, 5, 6)[axis], 2, *other) and y.shape == ((4, 5, 6)[axis], *other)
    assert np.array_equal(x[1, 0], np.take(vol[0], 1, axis=axis)) and np.array_equal(y[1], np.take(lab, 1, axis=axis))
    assert np.array_equal(data.from_slices(x, axis), vol) and np.array_equal(data.from_slices(y, axis), lab)
    assert data.to_slices(vol[0], axis=axis).shape == x[:, :1].shape
    with pytest.raises(ValueError, match="label: expected shape"):
        data.to_slices(vol, lab[:3], axis=axis)


def test_pad_to_multiple_and_crop():
    x = np.random.default_rng(4).standard_normal((2, 3, 13, 16, 7)).astype(np.float32)
    p, pads = data.pad_to_multiple(x, 8)
    assert p.shape == (2, 3, 16, 16, 8) and pads == ((1, 2), (0, 0), (0, 1))
    assert np.array_equal(data.crop(p, pads), x) and p[:, :, 0].sum() == 0
    lab = np.ones((2, 13, 16, 7), np.int64)
    lp, lpads = data.pad_to_multiple(lab, (4, 16, 2), dims=3)
    assert lp.shape == (2, 16, 16, 8) and np.array_equal(data.crop(lp, lpads), lab)
    same, none = data.pad_to_multiple(x[:, :, :8, :8, :4], 4)
    assert none == ((0, 0),) * 3 and same.shape == (2, 3, 8, 8, 4)
    with pytest.raises(ValueError, match="pads"):
        data.crop(x, ((20, 0),))


# ---- patch sampler

def _blobs(n=3, shape=(48, 48)):
    """Images with a 3x3 class-1 blob near one corner and a single class-2 voxel near the other."""
    images, labels = [], []
    for i in range(n):
        lab = np.zeros(shape, np.int64)
        lab[1:4, 1:4] = 1
        lab[-2, -2] = 2
        images.append(np.stack([lab.astype(np.float32) + i, -lab.astype(np.float32)]))
        labels.append(lab)
    return images, labels


def test_sampler_shapes_and_small_images():
    images, labels = _blobs()
    images.append(np.ones((2, 5, 6), np.float32))   # smaller than the patch: padded
    labels.append(np.ones((5, 6), np.int64))
    s = PatchSampler(images, labels, (16, 12), batch_size=4, steps_per_epoch=3, prefetch=False)
    batches = list(s.batches(0))
    assert len(s) == 3 and len(batches) == 3
    for x, y in batches:
        assert x.shape == (4, 2, 16, 12) and x.dtype == np.float32 and y.shape == (4, 16, 12) and y.dtype == np.int64
    targets = [im[:1] * 2 for im in images]
    x, y = PatchSampler(images, targets, 8, 2, 1, fg_fraction=0).batch(0, 0)
    assert y.shape == (2, 1, 8, 8) and y.dtype == np.float32
    for kwargs, message in ((dict(labels=labels[:2]), "one per image"), (dict(patch_size=(8, 8, 8)), "patch_size"),
                            (dict(labels=targets), "fg_fraction"), (dict(fg_fraction=1.5), "fg_fraction")):
        with pytest.raises(ValueError, match=message):
            PatchSampler(**{**dict(images=images, labels=labels, patch_size=8, batch_size=2, steps_per_epoch=1),
                            **kwargs})


def test_sampler_foreground_fraction_and_classes():
    images, labels = _blobs()
    # a uniformly placed 12x12 patch in 48x48 touches a corner blob with probability < 1 %
    for fg, n_steps in ((0.0, 25), (0.5, 50)):
        s = PatchSampler(images, labels, 12, 8, n_steps, fg_fraction=fg, prefetch=False)
        hits = np.array([(y > 0).any(axis=(1, 2)) for _, y in s.batches(1)]).ravel()
        assert abs(hits.mean() - fg) < 0.1, (fg, hits.mean())
    # every patch foreground: class 1 or 2 with equal odds, although class 2 is one voxel
    s = PatchSampler(images, labels, 12, 8, 25, fg_fraction=1.0, prefetch=False)
    ys = np.concatenate([y for _, y in s.batches(0)])
    two = (ys == 2).any(axis=(1, 2))
    assert (ys > 0).any(axis=(1, 2)).all() and 0.4 < two.mean() < 0.6


def test_sampler_deterministic_with_and_without_prefetch():
    images, labels = _blobs()
    aug = Augment(rotate=30.0, p_spatial=0.5)
    runs = []
    for prefetch in (True, False, True):
        s = PatchSampler(images, labels, 16, 3, 4, augment=aug, seed=7, prefetch=prefetch)
        runs.append([b for epoch in (0, 1) for b in s.batches(epoch)])
    for run in runs[1:]:
        for (x0, y0), (x1, y1) in zip(runs[0], run):
            assert np.array_equal(x0, x1) and np.array_equal(y0, y1)
    assert not np.array_equal(runs[0][0][0], runs[0][4][0])   # epochs differ
    other = PatchSampler(images, labels, 16, 3, 4, augment=aug, seed=8).batch(0, 0)
    assert not np.array_equal(other[0], runs[0][0][0])


def test_sampler_3d():
    lab = np.zeros((20, 18, 16), np.int64)
    lab[2:4, 2:4, 2:4] = 3
    img = lab[None].astype(np.float32)
    s = PatchSampler([img], [lab], (8, 8, 6), 4, 5, fg_fraction=1.0, augment=Augment(p_spatial=1.0))
    for x, y in s.batches(0):
        assert x.shape == (4, 1, 8, 8, 6) and y.shape == (4, 8, 8, 6)
        assert set(np.unique(y)) <= {0, 3} and (y == 3).any(axis=(1, 2, 3)).all()


# ---- augmentation

def _batch(shape=(3, 2, 12, 12), classes=(0, 2, 5), seed=5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.choice(np.array(classes), (shape[0], *shape[2:]))
    return x, y


def test_identity_parameters_give_identity():
    for shape in ((3, 2, 12, 12), (2, 1, 6, 8, 10)):
        x, y = _batch(shape)
        ax, ay = Augment(**IDENTITY)(x, y, np.random.default_rng(0))
        assert np.array_equal(ax, x) and np.array_equal(ay, y) and ay.dtype == y.dtype


def test_flip_is_exact():
    x, y = _batch((8, 2, 10, 12))
    ax, ay = Augment(**{**IDENTITY, "flip": True})(x, y, np.random.default_rng(1))
    seen = set()
    for i in range(8):
        match = [axes for r in range(3) for axes in itertools.combinations((1, 2), r)
                 if np.array_equal(ax[i], np.flip(x[i], axes))
                 and np.array_equal(ay[i], np.flip(y[i], tuple(a - 1 for a in axes)))]
        assert match, i
        seen.add(match[0])
    assert len(seen) > 1


def test_spatial_transforms_keep_label_set():
    for shape in ((4, 1, 16, 16), (2, 1, 10, 12, 12)):
        x, y = _batch(shape)
        aug = Augment(rotate=40.0, scale=(0.7, 1.4), elastic=(3.0, 2.0), p_spatial=1.0)
        ax, ay = aug(x, y, np.random.default_rng(2))
        assert ax.shape == x.shape and ay.shape == y.shape and ay.dtype == y.dtype
        assert set(np.unique(ay)) <= {0, 2, 5} and not np.array_equal(ay, y)


def test_resampler_rotation_matches_rot90():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((2, 11, 11)).astype(np.float32)
    quarter = np.array([[0.0, 1.0], [-1.0, 0.0]])   # output offset -> input offset of a 90 degree turn
    r = data.warp(a, quarter)
    assert np.allclose(r[:, 1:-1, 1:-1], np.rot90(a, 1, (1, 2))[:, 1:-1, 1:-1], atol=1e-5)
    lab = rng.integers(0, 4, (1, 11, 11))
    assert np.array_equal(data.warp(lab, quarter)[:, 1:-1, 1:-1], np.rot90(lab, 1, (1, 2))[:, 1:-1, 1:-1])
    v = rng.standard_normal((1, 5, 9, 9)).astype(np.float32)
    m = np.eye(3)
    m[1:, 1:] = quarter
    assert np.allclose(data.warp(v, m)[..., 1:-1, 1:-1], np.rot90(v, 1, (2, 3))[..., 1:-1, 1:-1], atol=1e-5)
    shifted = data.warp(a, np.eye(2), np.stack([np.full((11, 11), 1.0), np.zeros((11, 11))]))
    assert np.allclose(shifted[:, :-1], a[:, 1:]) and (shifted[:, -1] == 0).all()


def test_same_seed_same_result_and_3d():
    aug = dict(elastic=(2.0, 2.0), p_spatial=0.8)
    for shape in ((4, 2, 12, 12), (2, 1, 8, 8, 8)):
        x, y = _batch(shape)
        a = Augment(**aug)(x, y, np.random.default_rng(3))
        b = Augment(**aug)(x, y, np.random.default_rng(3))
        c = Augment(**aug)(x, y, np.random.default_rng(4))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and not np.array_equal(a[0], c[0])
        assert a[0].shape == x.shape and a[0].dtype == np.float32 and np.isfinite(a[0]).all()
    s1, s2 = Augment(seed=9), Augment(seed=9)
    assert np.array_equal(s1(x, y)[0], s2(x, y)[0])
    t = np.random.default_rng(0).standard_normal((2, 1, 8, 8, 8)).astype(np.float32)   # float targets
    ax, at = Augment(**{**IDENTITY, "rotate": 30.0, "p_spatial": 1.0, "axes": (1, 2)})(x, t, np.random.default_rng(1))
    assert at.shape == t.shape and at.dtype == np.float32 and not np.array_equal(at, t)
    with pytest.raises(ValueError, match="axes"):
        Augment(axes=(1, 1))
    with pytest.raises(TypeError, match="elastic"):
        Augment(elastic=3.0)


@pytest.mark.gpu
def test_transforms_on_cupy():
    import cupy as cp
    img = np.random.default_rng(7).normal(3, 2, (1, 4, 6, 5)).astype(np.float32)
    g = cp.asarray(img)
    assert isinstance(data.normalize(g), cp.ndarray)
    assert np.allclose(cp.asnumpy(data.normalize(g)), data.normalize(img), atol=1e-5)
    mask = {"method": "zscore", "clip": [1, 99], "mask": "nonzero"}
    assert np.allclose(cp.asnumpy(data.normalize(g, mask, 1)), data.normalize(img, mask, 1), atol=1e-5)
    p, pads = data.pad_to_multiple(g[None], 4)
    assert isinstance(p, cp.ndarray) and np.array_equal(cp.asnumpy(data.crop(p, pads))[0], img)
    x = data.to_slices(g, axis=1)
    assert isinstance(x, cp.ndarray) and np.array_equal(cp.asnumpy(data.from_slices(x, 1)), img)
