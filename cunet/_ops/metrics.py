"""Segmentation metrics: kernels/metrics.cuh. Same names, signatures and errors as
cunet.reference; the scores are the reference's formulas on the kernel's counts."""
import numpy as np

from cunet import _check, reference as R
from cunet._ops.core import coop, register, run, zeros

register("metrics", "confusion_histogram")

__all__ = ["confusion_counts", "dice_score", "iou_score"]

MAX_CLASSES = 256   # kernels/metrics.cuh kMetricsMaxClasses: the per-block shared histogram


def _grid(n):
    return max(1, min(1024, -(-n // 4096)))   # kernels/metrics.cuh metrics_grid


def confusion_counts(pred, target, num_classes):
    k = R._label_pair(pred, target, num_classes)
    _check.same_device("target", target, "pred", pred)
    if k > MAX_CLASSES:
        raise ValueError(f"num_classes: cunet.ops counts at most {MAX_CLASSES} classes (a shared-memory "
                         f"histogram per block), got {k}; use cunet.reference.confusion_counts")
    xp = _check.xp_of(pred)
    p = xp.ascontiguousarray(pred, dtype=np.int64)
    t = xp.ascontiguousarray(target, dtype=np.int64)
    tp, fp, fn = (zeros(pred, (k,), np.int64) for _ in range(3))
    run("confusion_histogram", coop(_grid(p.size)), p.size, k, p, t, tp, fp, fn)
    return tp, fp, fn


def dice_score(pred, target, num_classes):
    tp, fp, fn = confusion_counts(pred, target, num_classes)
    return R._ratio(2 * tp, 2 * tp + fp + fn)


def iou_score(pred, target, num_classes):
    tp, fp, fn = confusion_counts(pred, target, num_classes)
    return R._ratio(tp, tp + fp + fn)
