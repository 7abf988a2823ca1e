"""cunet.losses: the fused losses of cunet.ops as configurable callables for training.

    loss, dlogits = criterion(logits, target)   # logits (N, K, *S); loss a float (NumPy)
                                                # or a 0-d CuPy array (CuPy), no sync

Each class wraps one function of cunet.ops (cunet.reference for float64 logits) and
checks nothing the function checks itself. `.config` is a JSON-able dict ("name" and the
arguments), `from_config(cfg)` rebuilds the loss, and `.activation` says what turns logits
into probabilities ("sigmoid", "softmax" or None for regression) for cunet.metrics.predict;
for Dice and DiceCE it is "softmax" for K >= 2 channels, and one-channel logits take the
sigmoid (the table below), as cunet.metrics.predict does for K == 1.

    class                                          K >= 2 (softmax)  K == 1 (sigmoid)
    BCE()                                          bce_with_logits (any K, elementwise)
    CE(class_weights=None)                         cross_entropy     -
    Dice(include_background, smooth, variant)      dice_loss         binary_dice_loss
    DiceCE(class_weights, include_background,      dice_ce_loss      dice_bce_loss (ce_weight
           smooth, variant, dice_weight, ce_weight)                  weighs the BCE term)
    DiceBCE(smooth, variant, dice_weight, bce_weight)  dice_bce_loss (any K, elementwise)
    MSE(), L1()                                    mse_loss, l1_loss on any output/target

Value checks (finite logits, label range, targets in [0, 1]) read the arrays, which on a
GPU is a device->host sync per call: inside cunet._check.value_checks(False) they are
skipped (cunet.train does so on CuPy and checks the batch on the host instead).

Targets: softmax losses take integer label maps (N, *S) in [0, K). Sigmoid losses take a
float target shaped like the logits, values in [0, 1], or, for one-channel logits, an
integer {0, 1} label map (N, *S), converted to a float (N, 1, *S) on the logits' device.
"""

import numpy as np

from cunet import _check
from cunet.nn.layers import F
from cunet.nn.model import _host

__all__ = ["BCE", "CE", "Dice", "DiceCE", "DiceBCE", "MSE", "L1", "from_config"]


class Loss:
    name, activation = None, None

    def __init__(self):
        self._cfg = {}   # the constructor's arguments, validated

    @property
    def config(self):
        return {"name": self.name, **self._cfg}

    def __repr__(self):
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self._cfg.items())})"

    def __call__(self, logits, target):
        _check.image("logits", logits)
        return self._loss(F(logits), logits, target)


# ---- argument checks and target conversion

def _dice_args(include_background, smooth, variant):
    _check.choice("include_background", include_background, (True, False))
    _check.choice("variant", variant, ("class", "voxel"))
    # the voxel variant divides by p + g + smooth per voxel: smooth = 0 allows 0/0
    return dict(include_background=include_background, variant=variant,
                smooth=_check.number("smooth", smooth, lo=0, lo_open=(variant == "voxel")))


def _class_weights(w):
    """list/tuple/array -> tuple of floats (JSON-able), or None."""
    if w is None:
        return None
    try:
        a = np.asarray(_host(w) if hasattr(w, "shape") else w, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"class_weights: expected a list, tuple or array of numbers, got {w!r}") from None
    if a.ndim != 1 or a.size < 2:
        raise ValueError(f"class_weights: expected one weight per class (K >= 2), got shape {a.shape}")
    if not np.isfinite(a).all() or (a < 0).any() or not a.sum() > 0:
        raise ValueError(f"class_weights: expected finite values >= 0 with a positive sum, got {a.tolist()}")
    return tuple(float(v) for v in a)


def _labels(target, logits):
    """Softmax losses: an integer label map; the op checks its shape and range."""
    _check.array("target", target, dtype=None)
    if target.dtype.kind not in "iu":
        raise TypeError(f"target: expected an integer label map (N, *S) for {logits.shape[1]}-channel logits, "
                        f"got {target.dtype} (shape {tuple(target.shape)})")
    return target


def _binary_target(target, logits):
    """Sigmoid losses: a float target passes through (the op checks shape and [0, 1]); an
    integer/bool {0, 1} label map (N, *S) of one-channel logits becomes float (N, 1, *S)."""
    _check.array("target", target, dtype=None)
    if target.dtype.kind not in "iub":
        return target
    n, k, s = logits.shape[0], logits.shape[1], tuple(logits.shape[2:])
    if k != 1:
        raise ValueError(f"target: an integer label map needs one-channel logits, got {k} channels; "
                         f"pass a float target of shape {tuple(logits.shape)}")
    if target.dtype.kind in "iu":
        _check.labels("target", target, 2, shape=(n,) + s)
    elif tuple(target.shape) != (n,) + s:
        raise ValueError(f"target: expected shape {(n,) + s}, got {tuple(target.shape)}")
    xp = _check.xp_of(logits)
    if _check.xp_of(target) is not xp:
        target = _host(target) if xp is np else xp.asarray(target)
    return target.astype(logits.dtype).reshape((n, 1) + s)


# ---- the losses

class BCE(Loss):
    """Binary cross-entropy on logits, mean over all elements."""
    name, activation = "BCE", "sigmoid"

    def _loss(self, ops, logits, target):
        return ops.bce_with_logits(logits, _binary_target(target, logits))


class _Weighted(Loss):
    """Holds class weights: a tuple for .config, and a copy in the logits' dtype (float32 for
    the kernels, float64 for the reference) on their device, made once per device."""

    def __init__(self, class_weights=None, **cfg):
        self.class_weights = _class_weights(class_weights)
        self._cfg = dict(class_weights=None if self.class_weights is None else list(self.class_weights), **cfg)
        self._w = None

    def _weights(self, logits):
        if self.class_weights is None:
            return None
        xp = _check.xp_of(logits)
        if self._w is None or _check.xp_of(self._w) is not xp or self._w.dtype != logits.dtype:
            self._w = xp.asarray(np.asarray(self.class_weights, dtype=logits.dtype))
        return self._w


class CE(_Weighted):
    """Softmax cross-entropy (PyTorch's weighted mean with class_weights)."""
    name, activation = "CE", "softmax"

    def __init__(self, class_weights=None):
        super().__init__(class_weights)

    def _loss(self, ops, logits, target):
        return ops.cross_entropy(logits, _labels(target, logits), self._weights(logits))


class Dice(Loss):
    """Soft Dice: softmax against one-hot labels, or sigmoid for one-channel logits (where
    the one channel is the foreground and include_background does not apply)."""
    name, activation = "Dice", "softmax"

    def __init__(self, include_background=True, smooth=1e-5, variant="class"):
        self._cfg = _dice_args(include_background, smooth, variant)

    def _loss(self, ops, logits, target):
        c = self._cfg
        if logits.shape[1] == 1:
            return ops.binary_dice_loss(logits, _binary_target(target, logits), c["smooth"], c["variant"])
        return ops.dice_loss(logits, _labels(target, logits), c["include_background"], c["smooth"], c["variant"])


class DiceCE(_Weighted):
    """dice_weight·Dice + ce_weight·CE; for one-channel logits dice_weight·binary Dice +
    ce_weight·BCE (no class weights there)."""
    name, activation = "DiceCE", "softmax"

    def __init__(self, class_weights=None, include_background=True, smooth=1e-5, variant="class",
                 dice_weight=1.0, ce_weight=1.0):
        super().__init__(class_weights, **_dice_args(include_background, smooth, variant),
                         dice_weight=_check.number("dice_weight", dice_weight, lo=0),
                         ce_weight=_check.number("ce_weight", ce_weight, lo=0))

    def _loss(self, ops, logits, target):
        c = self._cfg
        if logits.shape[1] == 1:
            if self.class_weights is not None:
                raise ValueError(f"class_weights: one-channel logits use dice_bce_loss, which takes no class "
                                 f"weights; got {list(self.class_weights)}")
            return ops.dice_bce_loss(logits, _binary_target(target, logits), c["smooth"], c["variant"],
                                     c["dice_weight"], c["ce_weight"])
        return ops.dice_ce_loss(logits, _labels(target, logits), self._weights(logits), c["include_background"],
                                c["smooth"], c["variant"], c["dice_weight"], c["ce_weight"])


class DiceBCE(Loss):
    """dice_weight·binary Dice + bce_weight·BCE, each channel a class."""
    name, activation = "DiceBCE", "sigmoid"

    def __init__(self, smooth=1e-5, variant="class", dice_weight=1.0, bce_weight=1.0):
        self._cfg = dict(smooth=_dice_args(True, smooth, variant)["smooth"], variant=variant,
                         dice_weight=_check.number("dice_weight", dice_weight, lo=0),
                         bce_weight=_check.number("bce_weight", bce_weight, lo=0))

    def _loss(self, ops, logits, target):
        c = self._cfg
        return ops.dice_bce_loss(logits, _binary_target(target, logits), c["smooth"], c["variant"],
                                 c["dice_weight"], c["bce_weight"])


class MSE(Loss):
    """Mean squared error over all elements (restoration, denoising)."""
    name = "MSE"

    def _loss(self, ops, output, target):
        return ops.mse_loss(output, target)


class L1(Loss):
    """Mean absolute error over all elements."""
    name = "L1"

    def _loss(self, ops, output, target):
        return ops.l1_loss(output, target)


LOSSES = {c.name: c for c in (BCE, CE, Dice, DiceCE, DiceBCE, MSE, L1)}


def from_config(cfg):
    """The loss described by a .config dict."""
    cls, kwargs = _check.config_lookup("cfg", cfg, LOSSES)
    return cls(**kwargs)
