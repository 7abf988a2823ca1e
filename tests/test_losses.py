"""cunet.losses: each callable against the cunet.ops / cunet.reference function it wraps,
the one-channel (sigmoid) switch and label-map conversion, configs, bad input."""
import json

import numpy as np
import pytest

from cunet import losses, ops, reference

rng = np.random.default_rng(7)


def logits(k, dims=2, n=2, dtype=np.float32):
    return rng.standard_normal((n, k) + (6,) * dims).astype(dtype)


def labels(k, dims=2, n=2):
    return rng.integers(0, k, (n,) + (6,) * dims)


def unit(z):
    return rng.uniform(0, 1, z.shape).astype(z.dtype)


# (loss, K, target maker, wrapped function name, its extra arguments after (logits, target))
CW = [0.2, 1.0, 3.0]
CASES = [
    (losses.BCE(), 3, unit, "bce_with_logits", ()),
    (losses.CE(), 3, "labels", "cross_entropy", ()),
    (losses.CE(class_weights=CW), 3, "labels", "cross_entropy", (np.array(CW),)),
    (losses.Dice(), 3, "labels", "dice_loss", ()),
    (losses.Dice(include_background=False, smooth=1.0, variant="voxel"), 3, "labels", "dice_loss",
     (False, 1.0, "voxel")),
    (losses.Dice(smooth=0.5), 1, unit, "binary_dice_loss", (0.5,)),
    (losses.DiceCE(class_weights=(1.0, 2.0, 0.5), include_background=False, dice_weight=0.3, ce_weight=2.0), 3,
     "labels", "dice_ce_loss", (np.array([1.0, 2.0, 0.5]), False, 1e-5, "class", 0.3, 2.0)),
    (losses.DiceCE(variant="voxel", dice_weight=0.5, ce_weight=1.5), 1, unit, "dice_bce_loss",
     (1e-5, "voxel", 0.5, 1.5)),
    (losses.DiceBCE(smooth=1e-3, dice_weight=2.0, bce_weight=0.25), 2, unit, "dice_bce_loss",
     (1e-3, "class", 2.0, 0.25)),
    (losses.MSE(), 2, lambda z: rng.standard_normal(z.shape).astype(z.dtype), "mse_loss", ()),
    (losses.L1(), 2, lambda z: rng.standard_normal(z.shape).astype(z.dtype), "l1_loss", ()),
]
IDS = [f"{c[0].name}-K{c[1]}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss,k,make,fn,extra", CASES, ids=IDS)
def test_matches_the_wrapped_function(loss, k, make, fn, extra, dtype, dims):
    z = logits(k, dims, dtype=dtype)
    t = labels(k, dims) if make == "labels" else make(z)
    got, grad = loss(z, t)
    want, want_grad = getattr(reference if dtype == np.float64 else ops, fn)(z, t, *extra)
    assert isinstance(got, float) and got == want and got > 0
    assert grad.dtype == dtype and grad.shape == z.shape
    np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("loss", [losses.BCE(), losses.Dice(), losses.DiceCE(ce_weight=0.5), losses.DiceBCE()],
                         ids=lambda x: x.name)
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, bool])
def test_binary_label_map_equals_float_target(loss, dtype):
    z = logits(1)
    lab = labels(2)
    want = loss(z, lab[:, None].astype(np.float32))
    got = loss(z, lab.astype(dtype))
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    got64 = loss(z.astype(np.float64), lab)   # converted to the logits' dtype for the reference
    assert got64[0] == pytest.approx(want[0], rel=1e-5)


def test_activation():
    assert [losses.from_config({"name": n}).activation for n in losses.LOSSES] == \
        ["sigmoid", "softmax", "softmax", "softmax", "sigmoid", None, None]


@pytest.mark.parametrize("loss,k", [(c[0], c[1]) for c in CASES], ids=IDS)
def test_config_round_trip(loss, k):
    cfg = json.loads(json.dumps(loss.config))
    assert cfg["name"] == loss.name
    again = losses.from_config(cfg)
    assert type(again) is type(loss) and again.config == loss.config
    z = logits(k)
    t = labels(k) if loss.activation == "softmax" and k > 1 else unit(z)
    assert again(z, t)[0] == loss(z, t)[0]


def test_class_weights_stored_in_the_logits_dtype_and_checked():
    loss = losses.CE(class_weights=np.array([1, 2, 3]))
    assert loss.config["class_weights"] == [1.0, 2.0, 3.0]
    z = logits(3)
    loss(z, labels(3))
    assert loss._w.dtype == np.float32 and isinstance(loss._w, np.ndarray)
    loss(z.astype(np.float64), labels(3))
    assert loss._w.dtype == np.float64
    with pytest.raises(ValueError, match="class_weights"):
        loss(logits(2), labels(2))   # 3 weights for 2 channels: the op names it


@pytest.mark.parametrize("call,exc,arg", [
    (lambda: losses.CE(class_weights=[1.0, -1.0]), ValueError, "class_weights"),
    (lambda: losses.CE(class_weights=[[1.0, 2.0]]), ValueError, "class_weights"),
    (lambda: losses.CE(class_weights="ab"), TypeError, "class_weights"),
    (lambda: losses.Dice(variant="mean"), ValueError, "variant"),
    (lambda: losses.Dice(smooth=0.0, variant="voxel"), ValueError, "smooth"),
    (lambda: losses.Dice(include_background=2), ValueError, "include_background"),
    (lambda: losses.DiceCE(dice_weight=-1), ValueError, "dice_weight"),
    (lambda: losses.DiceBCE(bce_weight="1"), TypeError, "bce_weight"),
    (lambda: losses.from_config({"name": "Focal"}), ValueError, "name"),
    (lambda: losses.from_config({"name": "CE", "smooth": 1.0}), ValueError, "smooth"),
    (lambda: losses.from_config(["CE"]), TypeError, "cfg"),
    (lambda: losses.CE()(labels(3)[:, None], labels(3)), TypeError, "logits"),
    (lambda: losses.CE()(logits(3), labels(3).astype(np.float32)), TypeError, "target"),
    (lambda: losses.CE()(logits(3), labels(4)), ValueError, "labels"),
    (lambda: losses.CE()(logits(1), labels(2)), ValueError, "logits"),
    (lambda: losses.Dice()(logits(1), labels(3)), ValueError, "target"),       # label 2 in a binary map
    (lambda: losses.BCE()(logits(1), labels(2)[:, :3]), ValueError, "target"),  # wrong shape
    (lambda: losses.BCE()(logits(2), labels(2)), ValueError, "target"),        # label map, two channels
    (lambda: losses.DiceBCE()(logits(1), 2 * unit(logits(1))), ValueError, "target"),
    (lambda: losses.DiceCE(class_weights=[1, 1])(logits(1), labels(2)), ValueError, "class_weights"),
    (lambda: losses.MSE()(logits(2), logits(3)), ValueError, "target"),
])
def test_bad_input_names_the_argument(call, exc, arg):
    with pytest.raises(exc, match=arg):
        call()


@pytest.mark.gpu
@pytest.mark.parametrize("loss,k,make,fn,extra", CASES, ids=IDS)
def test_cuda_matches_cpu(loss, k, make, fn, extra):
    import cupy
    z = logits(k)
    t = labels(k) if make == "labels" else make(z)
    want, want_grad = loss(z, t)
    got, grad = loss(cupy.asarray(z), cupy.asarray(t))
    assert isinstance(got, cupy.ndarray) and got.ndim == 0 and isinstance(grad, cupy.ndarray)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(grad), want_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.gpu
def test_cuda_binary_label_map_moves_to_the_logits_device():
    import cupy
    z, lab = logits(1), labels(2)
    want = losses.DiceBCE()(z, lab)[0]
    got = losses.DiceBCE()(cupy.asarray(z), lab)[0]   # NumPy labels, CuPy logits
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
