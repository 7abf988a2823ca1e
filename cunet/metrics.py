"""cunet.metrics: label maps from logits, and per-class Dice / IoU for validation.

    predict(logits)                 (N, K, *S) logits -> (N, *S) int64 label map, same device
    dice(pred, target, K), iou(...) (K,) float64 NumPy, NaN for a class absent from both maps
    summary(pred, target, K)        {"dice", "iou": per-class lists, "mean_dice", "mean_iou"}

num_classes counts the background: a binary problem has num_classes = 2. The counts come
from the confusion_counts kernel on the maps' device; only the (K,) scores come back.
"""
import numpy as np

from cunet import _check, ops, reference
from cunet._ops.metrics import MAX_CLASSES
from cunet.nn.model import _host

__all__ = ["predict", "dice", "iou", "summary"]


def predict(logits, activation="auto"):
    """Label map of logits (N, K, *S), NumPy or CuPy like the input:
    K == 1: (logits > 0), i.e. sigmoid > 0.5, whatever the activation (a one-channel
            softmax loss in cunet.losses is its sigmoid twin);
    K >= 2: argmax over channels ("auto", "softmax"), or with "sigmoid" (independent
            channels, multi-label) the masks (logits > 0) as (N, K, *S)."""
    _check.image("logits", logits)
    _check.choice("activation", activation, ("auto", "softmax", "sigmoid"))
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).astype(np.int64)
    if activation == "sigmoid":
        return (logits > 0).astype(np.int64)
    return logits.argmax(axis=1).astype(np.int64)


def _counts(pred, target, num_classes):
    """(tp, fp, fn) as (K,) int64 NumPy arrays."""
    _check.integer("num_classes", num_classes, lo=1)
    f = ops if num_classes <= MAX_CLASSES else reference   # the kernel's histogram is capped
    return tuple(_host(c) for c in f.confusion_counts(pred, target, num_classes))


def _scores(tp, fp, fn):
    return reference._ratio(2 * tp, 2 * tp + fp + fn), reference._ratio(tp, tp + fp + fn)


def dice(pred, target, num_classes):
    """(K,) float64 Dice 2tp / (2tp + fp + fn) per class; NaN where a class is in neither map."""
    return _scores(*_counts(pred, target, num_classes))[0]


def iou(pred, target, num_classes):
    """(K,) float64 IoU tp / (tp + fp + fn) per class; NaN where a class is in neither map."""
    return _scores(*_counts(pred, target, num_classes))[1]


def _nanmean(x):
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def summary(pred, target, num_classes):
    """Per-class Dice and IoU (lists of floats) and their NaN-means over the foreground
    classes 1..K-1 (over all classes when K == 1); NaN when no class counts."""
    d, j = _scores(*_counts(pred, target, num_classes))
    fg = slice(1, None) if num_classes > 1 else slice(None)
    return {"dice": d.tolist(), "iou": j.tolist(), "mean_dice": _nanmean(d[fg]), "mean_iou": _nanmean(j[fg])}
