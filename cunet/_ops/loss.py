"""Losses: kernels/loss.cuh. Same names, signatures and errors as cunet.reference; each
returns (loss, dlogits) with the loss read from the device: a Python float for NumPy
inputs, a 0-d CuPy array for CuPy inputs (no sync)."""
import numpy as np

from cunet import _check, reference as R
from cunet._ops.core import coop, empty, f32, is_cupy, loop, ncs, register, run

register("loss", "softmax_loss_partials", "sigmoid_loss_partials", "dice_loss_finalize", "softmax_loss_backward",
         "sigmoid_loss_backward", "regression_loss_partials", "regression_loss_finalize")

__all__ = ["bce_with_logits", "cross_entropy", "dice_loss", "binary_dice_loss", "dice_ce_loss", "dice_bce_loss",
           "mse_loss", "l1_loss"]

_CHUNK, _MAX_BLOCKS = 2048, 1024   # pass 1: items per block (8 per GPU thread) up to a cap on partials


def _blocks(n):
    return max(1, min(_MAX_BLOCKS, -(-n // _CHUNK)))


def _value(loss):
    return loss[0] if is_cupy(loss) else float(loss[0])


def _dice_ce(z, labels, w, first, smooth, variant, dice_weight, ce_weight):
    """The fused softmax path; arguments already checked the reference's way."""
    f32("logits", z)
    _check.same_device("labels", labels, "logits", z)
    xp = _check.xp_of(z)
    labels = xp.ascontiguousarray(labels, dtype=np.int64)
    w = None if w is None else xp.ascontiguousarray(w, dtype=np.float32)
    n, k, s = ncs(z)
    blocks, voxel = _blocks(n * s), int(variant == "voxel")
    partials, coef, loss = empty(z, (4 * k + 2, blocks)), empty(z, (2 * k + 1,)), empty(z, (1,))
    dz = empty(z, z.shape)
    run("softmax_loss_partials", coop(blocks), n, k, s, z, labels, w, smooth, blocks, partials)
    run("dice_loss_finalize", coop(1), k, n * s, blocks, partials, smooth, voxel, first, dice_weight, ce_weight,
        coef, loss)
    run("softmax_loss_backward", loop(n * s), n, k, s, z, labels, w, coef, smooth, voxel, dz)
    return _value(loss), dz


def _dice_bce(z, t, smooth, variant, dice_weight, bce_weight):
    f32("logits", z)
    f32("target", t)
    _check.same_device("target", t, "logits", z)
    n, k, s = ncs(z)
    blocks, voxel = _blocks(n * s), int(variant == "voxel")
    partials, coef, loss = empty(z, (4 * k + 2, blocks)), empty(z, (2 * k + 1,)), empty(z, (1,))
    dz = empty(z, z.shape)
    run("sigmoid_loss_partials", coop(blocks), n, k, s, z, t, smooth, blocks, partials)
    run("dice_loss_finalize", coop(1), k, n * s, blocks, partials, smooth, voxel, 0, dice_weight, bce_weight,
        coef, loss)
    run("sigmoid_loss_backward", loop(z.size), n, k, s, z, t, coef, smooth, voxel, dz)
    return _value(loss), dz


def _ce_weights(class_weights, logits, labels):
    """The reference's class_weights checks, its 0/0 check included (a sync only when some weight is 0)."""
    w = R._class_weights(class_weights, logits)
    if w is not None and _check.values_checked() and not bool((w > 0).all()) and not float(w[labels].sum()) > 0:
        raise ValueError("class_weights: the classes present in labels all have weight 0, "
                         "so the weighted mean is 0/0")
    return w


def cross_entropy(logits, labels, class_weights=None):
    R._logits("logits", logits, softmax=True)
    R._labels(labels, logits)
    w = _ce_weights(class_weights, logits, labels)
    return _dice_ce(logits, labels, w, 0, 1.0, "class", 0.0, 1.0)


def dice_loss(logits, labels, include_background=True, smooth=1e-5, variant="class"):
    R._logits("logits", logits, softmax=True)
    R._labels(labels, logits)
    _check.choice("include_background", include_background, (True, False))
    smooth = R._smooth(smooth, variant)
    return _dice_ce(logits, labels, None, 0 if include_background else 1, smooth, variant, 1.0, 0.0)


def dice_ce_loss(logits, labels, class_weights=None, include_background=True, smooth=1e-5,
                 variant="class", dice_weight=1.0, ce_weight=1.0):
    a = _check.number("dice_weight", dice_weight, lo=0)
    b = _check.number("ce_weight", ce_weight, lo=0)
    R._logits("logits", logits, softmax=True)
    R._labels(labels, logits)
    _check.choice("include_background", include_background, (True, False))
    smooth = R._smooth(smooth, variant)
    w = _ce_weights(class_weights, logits, labels)
    return _dice_ce(logits, labels, w, 0 if include_background else 1, smooth, variant, a, b)


def bce_with_logits(logits, target):
    R._logits("logits", logits)
    R._target("target", target, logits, "logits")
    return _dice_bce(logits, target, 1.0, "class", 0.0, 1.0)


def binary_dice_loss(logits, target, smooth=1e-5, variant="class"):
    R._logits("logits", logits)
    R._target("target", target, logits, "logits")
    smooth = R._smooth(smooth, variant)
    return _dice_bce(logits, target, smooth, variant, 1.0, 0.0)


def dice_bce_loss(logits, target, smooth=1e-5, variant="class", dice_weight=1.0, bce_weight=1.0):
    a = _check.number("dice_weight", dice_weight, lo=0)
    b = _check.number("bce_weight", bce_weight, lo=0)
    R._logits("logits", logits)
    R._target("target", target, logits, "logits")
    smooth = R._smooth(smooth, variant)
    return _dice_bce(logits, target, smooth, variant, a, b)


def _regression(output, target, l1):
    R._logits("output", output)
    R._target("target", target, output, "output", unit=False)
    f32("output", output)
    f32("target", target)
    _check.same_device("target", target, "output", output)
    n = output.size
    blocks = _blocks(n)
    grad, partials, loss = empty(output, output.shape), empty(output, (blocks,)), empty(output, (1,))
    run("regression_loss_partials", coop(blocks), n, output, target, l1, blocks, grad, partials)
    run("regression_loss_finalize", coop(1), n, blocks, partials, loss)
    return _value(loss), grad


def mse_loss(output, target):
    return _regression(output, target, 0)


def l1_loss(output, target):
    return _regression(output, target, 1)
