"""cunet.ops metrics (kernels/metrics.cuh) against cunet.reference: integer counts, so exact."""
import numpy as np
import pytest

from conftest import DEVICES, to_device, to_numpy
from cunet import reference as R
from cunet._ops import metrics as O   # cunet.ops re-exports these

SHAPES = [(1, 5, 7), (3, 4, 9), (1, 3, 5, 7), (3, 3, 4, 5), (1001,)]


def maps(shape, k, seed=0):
    """pred, target with ~70% agreement and class k-1 left out of both (a NaN score)."""
    r = np.random.default_rng(seed)
    used = max(1, k - 1)
    target = r.integers(0, used, size=shape)
    pred = np.where(r.random(shape) < 0.7, target, r.integers(0, used, size=shape))
    return pred, target


def check(got, want):
    for a, b in zip(got, want):
        a = to_numpy(a)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)   # NaN where the reference has NaN


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [2, 3, 5, 17])
@pytest.mark.parametrize("shape", SHAPES)
def test_metrics_match_reference(shape, k, device):
    p, t = maps(shape, k)
    P, T = to_device(p, device), to_device(t, device)
    check(O.confusion_counts(P, T, k), R.confusion_counts(p, t, k))
    check([O.dice_score(P, T, k)], [R.dice_score(p, t, k)])
    check([O.iou_score(P, T, k)], [R.iou_score(p, t, k)])


def test_label_dtypes_and_empty():
    p, t = maps((3, 20, 30), 4)
    for dt in (np.int32, np.uint8, np.int16):
        check(O.confusion_counts(p.astype(dt), t.astype(np.int8), 4), R.confusion_counts(p, t, 4))
    empty = np.zeros((0,), np.int64)
    check(O.confusion_counts(empty, empty, 3), R.confusion_counts(empty, empty, 3))
    check(O.confusion_counts(p, t, 256), R.confusion_counts(p, t, 256))   # the largest K


# several blocks of 4096 items; 256 emulated threads share each block's histogram
@pytest.mark.parametrize("k", [3, 17])
def test_block_modes(block_mode, k):
    p, t = maps((2, 71, 97), k)   # 13774 items: 4 blocks
    check(O.confusion_counts(p, t, k), R.confusion_counts(p, t, k))


def test_bad_input():
    a = np.array([[0, 1], [2, 1]])
    for f in ("confusion_counts", "dice_score", "iou_score"):
        for mod in (R, O):
            with pytest.raises(ValueError, match=r"pred: values must lie in \[0, 2\), found \[2\]"):
                getattr(mod, f)(a, a, 2)
            with pytest.raises(ValueError, match=r"target: expected shape \(2, 2\)"):
                getattr(mod, f)(a, a[0], 3)
            with pytest.raises(TypeError, match="target: expected an integer array"):
                getattr(mod, f)(a, a.astype(np.float32), 3)
            with pytest.raises(ValueError, match="num_classes: expected an int >= 1"):
                getattr(mod, f)(a, a, 0)
    with pytest.raises(ValueError, match="num_classes: cunet.ops counts at most 256 classes"):
        O.confusion_counts(a, a, 257)
