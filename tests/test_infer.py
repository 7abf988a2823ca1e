"""cunet.infer: sliding windows against whole-image prediction, the Gaussian map, flip
TTA, slice-by-slice prediction, padding, post-processing and argument errors.

Fake models (same interface as cunet.nn.Model) make exact checks possible: a pointwise
(1x1 conv) model is tile-consistent, a symmetric box blur is flip-equivariant, a shift
by one voxel is not. Real UNets are tiny (base 2-4, depth 1-2) to keep the file fast.
"""
import numpy as np
import pytest
import scipy.ndimage as ndi
from scipy.special import expit

from cunet import _check, infer
from cunet.nn import UNet
from conftest import to_device, to_numpy

RNG = np.random.default_rng(0)


class Fake:
    """What predict_* needs of a model: config, params (device, dtype), train/eval, forward."""

    def __init__(self, fn, dims=2, cin=1, cout=2, depth=2):
        self.fn, self.params, self.training = fn, np.zeros(1, np.float32), True
        self.config = dict(dims=dims, in_channels=cin, out_channels=cout, depth=depth)
        self.batches = []   # shape of every batch forward saw

    xp = property(lambda self: _check.xp_of(self.params))

    def train(self, mode=True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def forward(self, x):
        assert not self.training and x.dtype == np.float32 and x.flags.c_contiguous
        self.batches.append(x.shape)
        return self.fn(x).astype(np.float32)


def pointwise(cin=2, cout=3, dims=2, depth=2):
    """A 1x1 conv: x (N, C, *S) -> (N, K, *S); any tiling reproduces the whole image."""
    w, b = RNG.standard_normal((cout, cin)), RNG.standard_normal(cout)
    model = Fake(lambda x: np.einsum("kc,nc...->nk...", w, x) + b.reshape((cout,) + (1,) * dims),
                 dims, cin, cout, depth)
    return model, lambda img: model.fn(img[None])[0]   # the exact answer


def image(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ---- Gaussian importance map

@pytest.mark.parametrize("window", [(8,), (16, 12), (9, 8, 8)])
def test_gaussian_importance(window):
    g = infer.gaussian_importance(window)
    assert g.shape == window and g.dtype == np.float32
    assert g.max() == 1 and g.min() > 0
    centre = tuple(slice((w - 1) // 2, w // 2 + 1) for w in window)   # 1 or 2 voxels per axis
    assert np.all(g[centre] == 1)
    assert np.array_equal(g, g[tuple(slice(None, None, -1) for _ in window)])   # symmetric
    # separable Gaussian with sigma = w/8 per axis
    profiles = [np.exp(-0.5 * ((np.arange(w) - (w - 1) / 2) / (w / 8)) ** 2) for w in window]
    want = np.ones(())
    for p in profiles:
        want = np.multiply.outer(want, p / p.max())
    np.testing.assert_allclose(g, np.maximum(want, 1e-6), rtol=1e-6)


# ---- sliding window vs whole image

@pytest.mark.parametrize("gaussian", [True, False])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_tiles_consistent_for_pointwise_model(gaussian, overlap):
    model, exact = pointwise()
    x = image(2, 37, 50)
    out = infer.predict_logits(model, x, window=(16, 24), overlap=overlap, gaussian=gaussian, batch_size=3)
    assert out.shape == (3, 37, 50) and out.dtype == np.float32
    np.testing.assert_allclose(out, exact(x), rtol=1e-5, atol=1e-5)
    assert all(b[1:] == (2, 16, 24) and b[0] <= 3 for b in model.batches)
    if overlap == 0.5:   # starts 0, 8, 16 + flush 21 along H; 0, 12, 24 + flush 26 along W
        assert sum(b[0] for b in model.batches) == 16 and len(model.batches) == 6


def test_tiles_3d_and_image_smaller_than_window():
    model, exact = pointwise(cin=1, cout=2, dims=3, depth=1)
    x = image(1, 5, 14, 9)
    out = infer.predict_logits(model, x, window=(8, 8, 8), overlap=0.5)
    np.testing.assert_allclose(out, exact(x), rtol=1e-5, atol=1e-5)
    assert {b[2:] for b in model.batches} == {(8, 8, 8)}


def test_window_covering_image_equals_whole_image():
    model = UNet(2, 1, 3, base=4, depth=2, seed=1)
    x = image(1, 30, 30)   # both pad to 32x32
    whole = infer.predict_logits(model, x)
    np.testing.assert_allclose(infer.predict_logits(model, x, window=32), whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(infer.predict_logits(model, x, window=(32, 32), gaussian=False), whole, atol=0)


def test_sliding_window_unet_exact_where_receptive_field_fits():
    """Windows 32, stride 16 on 64x64: each corner 16x16 block is seen by one window only,
    whose inner borders are >= 16 voxels away (more than the depth-1 UNet's receptive
    radius), and whose outer borders are the image's: there it must equal the whole image."""
    model = UNet(2, 1, 2, base=2, depth=1, seed=3)
    x = image(1, 64, 64)
    whole = infer.predict_logits(model, x)
    for gaussian in (False, True):
        tiled = infer.predict_logits(model, x, window=32, overlap=0.5, gaussian=gaussian)
        for corner in [np.s_[:, :16, :16], np.s_[:, :16, 48:], np.s_[:, 48:, :16], np.s_[:, 48:, 48:]]:
            np.testing.assert_allclose(tiled[corner], whole[corner], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pad_mode", ["constant", "edge"])
def test_whole_image_pads_to_multiple_and_crops(pad_mode):
    model = UNet(2, 2, 2, base=4, depth=2, seed=2)
    x = image(2, 30, 25)   # -> 32x28: pad (1, 1) and (1, 2)
    out = infer.predict_logits(model, x, pad_mode=pad_mode)
    want = model.eval().forward(np.pad(x, [(0, 0), (1, 1), (1, 2)], mode=pad_mode)[None])[0, :, 1:31, 1:26]
    assert out.shape == (2, 30, 25)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_reference_device_model():
    model = UNet(2, 1, 2, base=2, depth=1, seed=4)
    x = image(1, 16, 16)
    cpu = infer.predict_logits(model, x, window=8)
    ref = infer.predict_logits(model.to("reference"), x, window=8)
    assert ref.dtype == np.float32
    np.testing.assert_allclose(ref, cpu, rtol=1e-4, atol=1e-5)


def test_mode_restored_and_progress(capsys):
    model, _ = pointwise()
    model.train()   # Fake.forward asserts eval mode during prediction
    out = infer.predict_logits(model, image(2, 16, 16), window=8, progress=True)
    assert model.training and out.shape == (3, 16, 16)
    assert "windows" in capsys.readouterr().err


# ---- test-time augmentation

def test_tta_of_flip_equivariant_model_equals_no_tta():
    blur = Fake(lambda x: ndi.uniform_filter(x, size=(1, 1, 3, 3), mode="constant"), cout=1)
    x = image(1, 20, 28)
    plain = infer.predict_logits(blur, x, window=16)
    n = len(blur.batches)
    tta = infer.predict_logits(blur, x, window=16, tta=True)
    assert len(blur.batches) - n == 4 * n   # 2**2 flips per batch
    np.testing.assert_allclose(tta, plain, rtol=1e-5, atol=1e-6)


def test_tta_averages_flipped_predictions():
    shift = Fake(lambda x: np.roll(x, 1, axis=-1), cout=1)   # not flip-equivariant
    x = image(1, 16, 16)
    want = (np.roll(x, 1, axis=-1) + np.roll(x, -1, axis=-1)) / 2   # H flips commute with the shift
    np.testing.assert_allclose(infer.predict_logits(shift, x, tta=True), want, rtol=1e-6, atol=1e-6)


def test_tta_3d_shape():
    model, exact = pointwise(cin=1, cout=2, dims=3, depth=1)
    x = image(1, 6, 8, 10)
    out = infer.predict_logits(model, x, tta=True)
    assert out.shape == (2, 6, 8, 10) and len(model.batches) == 8
    np.testing.assert_allclose(out, exact(x), rtol=1e-5, atol=1e-5)


# ---- probabilities and labels

def test_proba_and_labels():
    model, exact = pointwise(cin=1, cout=3)
    x = image(1, 12, 12)
    logits = exact(x)
    p = infer.predict_proba(model, x, window=8)
    np.testing.assert_allclose(p, np.exp(logits) / np.exp(logits).sum(0), rtol=1e-5)
    labels = infer.predict_labels(model, x, window=8)
    assert labels.dtype == np.int64 and np.array_equal(labels, logits.argmax(0))
    binary = Fake(lambda x: 30 * x, cout=1)   # large logits: the sigmoid must not overflow
    with np.errstate(over="raise", invalid="raise"):
        p = infer.predict_proba(binary, x)
    np.testing.assert_allclose(p, expit(30.0 * x.astype(np.float64)), rtol=1e-5, atol=1e-30)
    assert np.array_equal(infer.predict_labels(binary, x), (x[0] > 0).astype(np.int64))


# ---- 2D model on a volume

def test_volume_2d_matches_per_slice():
    model = UNet(2, 1, 2, base=4, depth=2, seed=5).eval()
    v = image(1, 12, 16, 5)
    out = infer.predict_volume_2d(model, v, batch_size=2)   # slices along Z, no padding needed
    assert out.shape == (2, 12, 16, 5)
    want = np.stack([model.forward(np.ascontiguousarray(v[None, ..., z]))[0] for z in range(5)], axis=-1)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    out = infer.predict_volume_2d(model, v, axis=0, window=8, tta=True)   # (1, 16, 5) slices, padded
    want = np.stack([infer.predict_logits(model, v[:, i], window=8, tta=True) for i in range(12)], axis=1)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


# ---- errors

@pytest.mark.parametrize("kw, err, words", [
    (dict(image=image(1, 1, 16, 16)), ValueError, ["image", "(C, H, W)", "(1, 1, 16, 16)"]),
    (dict(image=image(3, 16, 16)), ValueError, ["image", "C = 1", "(3, 16, 16)"]),
    (dict(image=np.zeros((1, 16, 16), np.int64)), TypeError, ["image", "float"]),
    (dict(image=[[[0.0]]]), TypeError, ["image", "list"]),
    (dict(window=12), ValueError, ["window", "multiples of 2**depth = 8", "(12, 12)"]),
    (dict(window=(16, 16, 16)), ValueError, ["window", "2 ints"]),
    (dict(overlap=1.0), ValueError, ["overlap", "[0.0, 1.0)"]),
    (dict(batch_size=0), ValueError, ["batch_size", ">= 1"]),
    (dict(pad_mode="reflect"), ValueError, ["pad_mode", "'edge'"]),
])
def test_bad_arguments(kw, err, words):
    model = UNet(2, 1, 2, base=2, depth=3)
    kw = dict(dict(image=image(1, 16, 16)), **kw)
    with pytest.raises(err) as e:
        infer.predict_logits(model, kw.pop("image"), **kw)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_bad_volume_arguments():
    model3d = UNet(3, 1, 2, base=2, depth=1)
    with pytest.raises(ValueError, match="model: expected a 2D model"):
        infer.predict_volume_2d(model3d, image(1, 8, 8, 8))
    model = UNet(2, 1, 2, base=2, depth=1)
    with pytest.raises(ValueError, match=r"volume: expected shape \(C, X, Y, Z\)"):
        infer.predict_volume_2d(model, image(8, 8, 8))
    with pytest.raises(ValueError, match="axis"):
        infer.predict_volume_2d(model, image(1, 8, 8, 8), axis=3)


# ---- post-processing

def test_keep_largest_component_per_class():
    lab = np.zeros((10, 12), np.int64)
    lab[1:4, 1:4] = 1        # class 1: 9 voxels, kept
    lab[7:9, 8:10] = 1       # class 1: 4 voxels, removed
    lab[6, 1] = 2            # class 2: 1 voxel, removed
    lab[5:9, 3:6] = 2        # class 2: 12 voxels, kept
    out = infer.keep_largest_component(lab)
    want = lab.copy()
    want[7:9, 8:10] = 0
    want[6, 1] = 0
    assert np.array_equal(out, want) and lab[7, 8] == 1   # input untouched
    only2 = infer.keep_largest_component(lab, classes=[2])
    assert only2[7, 8] == 1 and only2[6, 1] == 0


def test_keep_largest_component_face_connectivity_3d():
    lab = np.zeros((4, 4, 4), np.int32)
    lab[0, 0, 0] = lab[0, 0, 1] = 3   # 2 voxels
    lab[1, 1, 2] = 3                  # touches them only along an edge: its own component
    out = infer.keep_largest_component(lab)
    assert out.dtype == np.int32 and out[1, 1, 2] == 0 and out[0, 0, 1] == 3


def test_fill_holes():
    lab = np.zeros((9, 9), np.int64)
    lab[1:6, 1:6] = 1
    lab[2:5, 2:5] = 0        # a background hole inside class 1
    lab[7, 1:4] = 2          # class 2 elsewhere, with no hole
    out = infer.fill_holes(lab)
    want = lab.copy()
    want[2:5, 2:5] = 1
    assert np.array_equal(out, want)
    ring = np.zeros((9, 9), np.int64)
    ring[1:8, 1:8] = 2       # a class-2 ring around a class-3 core around a background hole
    ring[2:7, 2:7] = 3
    ring[4, 4] = 0
    out = infer.fill_holes(ring)
    assert np.all(out[2:7, 2:7] == 3) and np.all(out[1, :] == [0] + [2] * 7 + [0])   # the core keeps its class
    assert infer.fill_holes(ring, classes=2)[4, 4] == 0   # a hole of the core, not of the ring
    pocket = ring.copy()
    pocket[4, 4], pocket[4, 5] = 0, 1                     # a hole holding a speck of another class
    assert np.array_equal(infer.fill_holes(pocket), pocket)


def test_postprocess():
    lab = np.zeros((12, 12), np.int64)
    lab[1:8, 1:8] = 1
    lab[3:6, 3:6] = 0
    lab[4, 4] = 2            # a stray class-2 voxel inside class 1's hole
    lab[9:11, 9:11] = 2      # the larger class-2 component
    lab[10, 1] = 1           # a stray class-1 voxel
    out = infer.postprocess(lab)
    want = np.zeros_like(lab)
    want[1:8, 1:8] = 1       # the stray class-2 voxel is removed, then the hole filled
    want[9:11, 9:11] = 2
    assert np.array_equal(out, want)
    assert np.array_equal(infer.postprocess(np.zeros((5, 5), np.int64)), np.zeros((5, 5)))


def test_postprocess_errors():
    with pytest.raises(TypeError, match="labels: expected an integer array"):
        infer.keep_largest_component(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="classes"):
        infer.fill_holes(np.zeros((4, 4), np.int64), classes=[0])


# ---- CuPy

@pytest.mark.gpu
@pytest.mark.parametrize("image_device", ["cpu", "cuda"])
def test_gpu_matches_cpu(image_device):
    model = UNet(2, 1, 3, base=4, depth=2, seed=6)
    x = image(1, 40, 36)
    want = infer.predict_logits(model, x, window=16, tta=True)
    model.to("cuda")
    out = infer.predict_logits(model, to_device(x, image_device), window=16, tta=True)
    assert type(out) is type(to_device(x, image_device))   # the caller's device
    np.testing.assert_allclose(to_numpy(out), want, rtol=1e-4, atol=1e-4)
    v = image(1, 16, 16, 3)
    out = infer.predict_volume_2d(model, to_device(v, image_device))
    np.testing.assert_allclose(to_numpy(out), infer.predict_volume_2d(model.to("cpu"), v), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_gpu_cpu_image_with_cpu_model():
    model, exact = pointwise()
    x = image(2, 20, 20)
    out = infer.predict_labels(model, to_device(x, "cuda"), window=8)
    assert np.array_equal(to_numpy(out), exact(x).argmax(0))


@pytest.mark.gpu
def test_gpu_postprocess():
    lab = RNG.integers(0, 3, (20, 20, 20))
    out = infer.postprocess(to_device(lab, "cuda"))
    assert np.array_equal(to_numpy(out), infer.postprocess(lab))
