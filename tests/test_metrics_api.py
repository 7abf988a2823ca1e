"""cunet.metrics: predict for one and several channels, Dice/IoU/summary on hand-made maps."""
import math

import numpy as np
import pytest

from cunet import metrics

# 2 x 3 x 3 maps, classes 0..3; class 3 is in neither map
PRED = np.array([[[0, 1, 1], [0, 2, 2], [0, 0, 1]],
                 [[1, 1, 0], [2, 0, 0], [0, 0, 0]]])
TARGET = np.array([[[0, 1, 0], [0, 2, 2], [1, 0, 1]],
                   [[1, 1, 0], [0, 0, 0], [0, 0, 2]]])
# per class: tp, fp, fn (counted by hand)
#   0: tp 8, fp 2 (pred 0 at target 1, 2), fn 2 (target 0 predicted 1, 2)
#   1: tp 4, fp 1, fn 1;   2: tp 2, fp 1, fn 1;   3: nothing
DICE = [16 / 20, 8 / 10, 4 / 6, math.nan]
IOU = [8 / 12, 4 / 6, 2 / 4, math.nan]


def test_predict_multiclass_is_argmax():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    for act in ("auto", "softmax"):
        p = metrics.predict(z, act)
        assert p.shape == (2, 5, 6) and p.dtype == np.int64
        assert np.array_equal(p, z.argmax(axis=1))
    z3 = rng.standard_normal((1, 3, 4, 4, 4))   # 3D, float64
    assert np.array_equal(metrics.predict(z3), z3.argmax(axis=1))
    # one-hot of the prediction picks the maximum everywhere
    assert (np.take_along_axis(z, metrics.predict(z)[:, None], 1) == z.max(axis=1, keepdims=True)).all()


def test_predict_one_channel_thresholds_at_zero():
    z = np.array([-2.0, -1e-6, 0.0, 1e-6, 3.0], np.float32).reshape(1, 1, 1, 5)
    for act in ("auto", "sigmoid", "softmax"):   # one channel: always the sigmoid rule
        p = metrics.predict(z, act)
        assert p.shape == (1, 1, 5) and p.dtype == np.int64
        assert p.ravel().tolist() == [0, 0, 0, 1, 1]


def test_predict_sigmoid_several_channels_gives_masks():
    z = np.array([[[[1.0, -1.0]], [[-1.0, 2.0]]]], np.float32)   # (1, 2, 1, 2)
    assert metrics.predict(z, "sigmoid").tolist() == [[[[1, 0]], [[0, 1]]]]


def test_dice_iou_on_hand_made_maps():
    d, j = metrics.dice(PRED, TARGET, 4), metrics.iou(PRED, TARGET, 4)
    for got, want in ((d, DICE), (j, IOU)):
        assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == (4,)
        np.testing.assert_allclose(got, want, rtol=1e-15)   # NaN where absent (assert_allclose equates NaNs)
    # perfect prediction, and a class present only in the target
    assert metrics.dice(TARGET, TARGET, 3).tolist() == [1.0, 1.0, 1.0]
    assert metrics.iou(np.zeros((4, 4), int), np.eye(4, dtype=int), 2).tolist() == [12 / 16, 0.0]


def test_summary():
    s = metrics.summary(PRED, TARGET, 4)
    assert set(s) == {"dice", "iou", "mean_dice", "mean_iou"}
    np.testing.assert_allclose(s["dice"], DICE)
    np.testing.assert_allclose(s["iou"], IOU)
    assert s["mean_dice"] == pytest.approx((8 / 10 + 4 / 6) / 2)   # foreground 1..K-1, NaN skipped
    assert s["mean_iou"] == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert all(isinstance(v, float) for v in s["dice"] + [s["mean_dice"]])
    empty = metrics.summary(np.zeros((3, 3), int), np.zeros((3, 3), int), 2)   # no foreground anywhere
    assert empty["dice"][0] == 1.0 and math.isnan(empty["mean_dice"]) and math.isnan(empty["mean_iou"])
    one = metrics.summary(np.zeros((3, 3), int), np.zeros((3, 3), int), 1)   # K == 1: mean over all
    assert one["mean_dice"] == one["mean_iou"] == 1.0


def test_binary_pipeline_from_logits():
    z = np.array([[[[2.0, -1.0], [0.5, -3.0]]]], np.float32)   # (1, 1, 2, 2)
    target = np.array([[[1, 1], [0, 0]]])
    s = metrics.summary(metrics.predict(z), target, 2)
    assert s["dice"] == [0.5, 0.5] and s["mean_dice"] == 0.5   # one voxel each of tp, fp, fn per class


def test_many_classes_fall_back_to_the_reference_counts():
    rng = np.random.default_rng(1)
    p, t = rng.integers(0, 300, (2, 40, 40)), rng.integers(0, 300, (2, 40, 40))
    d = metrics.dice(p, t, 300)
    k = 7
    tp, fp, fn = ((p == k) & (t == k)).sum(), ((p == k) & (t != k)).sum(), ((p != k) & (t == k)).sum()
    assert d.shape == (300,) and d[k] == pytest.approx(2 * tp / (2 * tp + fp + fn))


@pytest.mark.parametrize("call,exc,arg", [
    (lambda: metrics.predict(np.zeros((2, 3, 4)), "auto"), ValueError, "logits"),
    (lambda: metrics.predict(np.zeros((1, 2, 4, 4)), None), ValueError, "activation"),
    (lambda: metrics.predict(np.zeros((1, 2, 4, 4), int)), TypeError, "logits"),
    (lambda: metrics.dice(PRED, TARGET, 2), ValueError, "pred"),
    (lambda: metrics.iou(PRED, TARGET[:1], 4), ValueError, "target"),
    (lambda: metrics.summary(PRED, TARGET.astype(float), 4), TypeError, "target"),
    (lambda: metrics.dice(PRED, TARGET, 0), ValueError, "num_classes"),
])
def test_bad_input_names_the_argument(call, exc, arg):
    with pytest.raises(exc, match=arg):
        call()


@pytest.mark.gpu
def test_cuda_matches_cpu():
    import cupy
    z = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    p = metrics.predict(cupy.asarray(z))
    assert isinstance(p, cupy.ndarray) and np.array_equal(cupy.asnumpy(p), z.argmax(axis=1))
    d = metrics.dice(cupy.asarray(PRED), cupy.asarray(TARGET), 4)
    assert isinstance(d, np.ndarray)
    np.testing.assert_allclose(d, DICE)
    np.testing.assert_equal(metrics.summary(cupy.asarray(PRED), cupy.asarray(TARGET), 4),
                            metrics.summary(PRED, TARGET, 4))
