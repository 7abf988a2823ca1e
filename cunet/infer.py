"""Inference: whole-image and sliding-window prediction, flip test-time augmentation,
2D-model-on-a-volume prediction, and label-map post-processing.

    image   (C, *S)     one image, S = (H, W) or (D, H, W), float, NumPy or CuPy
    volume  (C, X, Y, Z) for predict_volume_2d
    logits  (K, *S)     float32, on the device of the caller's image
    labels  (*S)        integer label map (0 = background)

The model runs on its own device (`model.xp`): windows travel there in batches and their
logits come back to the caller's device, where they are blended. Both blending and TTA
average *logits* (as nnU-Net v2 and MONAI's sliding_window_inference do), weighted by the
importance map; probabilities are taken once, at the end, by predict_proba/predict_labels.
The model is put in eval mode for the call and its mode restored afterwards.

Not here: resampling to a target spacing, intensity normalisation (cunet.data does that).
"""
import itertools

import numpy as np
from tqdm import tqdm

from cunet import _check

PAD_MODES = ("constant", "edge")


def _to(a, xp):
    """`a` on the device of array module `xp` (NumPy <-> CuPy; no copy when already there)."""
    if xp is np and not isinstance(a, np.ndarray):
        return a.get()
    return xp.asarray(a)


def gaussian_importance(window):
    """Importance map for blending windows: a Gaussian with sigma = window/8 per axis
    (nnU-Net), scaled to 1 at the centre, floored at 1e-6 so every voxel keeps a weight.

    window: int (1-D map) or tuple of ints -> float32 NumPy array of that shape."""
    window = (window,) if isinstance(window, (int, np.integer)) else tuple(window)
    window = _check.tuple_arg("window", window, len(window), minimum=1)
    g = np.ones((), np.float64)
    for w in window:
        d = np.arange(w) - (w - 1) / 2   # distance to the centre; even sizes have two centre voxels
        g = np.multiply.outer(g, np.exp(-0.5 * (d / (w / 8)) ** 2))
    return np.maximum(g / g.max(), 1e-6).astype(np.float32)


def _args(model, window, overlap, batch_size, pad_mode):
    """Check the arguments shared by the predict functions; -> (dims, k = 2**depth, window)."""
    dims, depth = model.config["dims"], model.config["depth"]
    k = 2 ** depth
    if window is not None:
        window = _check.tuple_arg("window", window, dims, minimum=1)
        if any(w % k for w in window):
            raise ValueError(f"window: sizes must be multiples of 2**depth = {k} (depth={depth}), got {window}")
    _check.number("overlap", overlap, 0.0, 1.0, hi_open=True)
    _check.integer("batch_size", batch_size, lo=1)
    _check.choice("pad_mode", pad_mode, PAD_MODES)
    return dims, k, window


def _predict(model, images, window=None, overlap=0.5, batch_size=4, gaussian=True, tta=False, progress=False,
             pad_mode="constant"):
    """images (N, C, *S) -> logits (N, K, *S) float32 on the images' device. Windows of
    all N images share the batches."""
    dims, k, window = _args(model, window, overlap, batch_size, pad_mode)
    xi, xm = _check.xp_of(images), model.xp
    size = tuple(images.shape[2:])
    if window is None:   # one window: the image padded to a multiple of 2**depth
        padded = tuple(-(-s // k) * k for s in size)
        window, weight = padded, np.ones(padded, np.float32)
    else:
        padded = tuple(max(s, w) for s, w in zip(size, window))
        weight = gaussian_importance(window) if gaussian else np.ones(window, np.float32)
    # pad split before/after, so the image sits in the middle of what the model sees
    lo = [(p - s) // 2 for p, s in zip(padded, size)]
    pad = [(0, 0), (0, 0)] + [(a, p - s - a) for a, p, s in zip(lo, padded, size)]
    x = xi.pad(images, pad, mode=pad_mode) if any(p != s for p, s in zip(padded, size)) else images

    # window starts per axis: every `stride`, the last one flush with the far border
    starts = []
    for p, w in zip(padded, window):
        stride = max(1, int(w * (1 - overlap) + 1e-9))   # floor, so neighbours share at least `overlap`
        starts.append(sorted(set(range(0, p - w, stride)) | {p - w}))
    corners = list(itertools.product(*starts))
    boxes = [tuple(slice(c, c + w) for c, w in zip(corner, window)) for corner in corners]
    jobs = [(n, box) for n in range(images.shape[0]) for box in boxes]

    dtype = model.params.dtype   # float32, or float64 for a model on "reference"
    w_model, w_host = xm.asarray(weight, dtype=dtype), xi.asarray(weight)
    norm = xi.zeros(padded, np.float32)   # (*P) summed weights; the same for every image
    for box in boxes:
        norm[box] += w_host
    out = xi.zeros((images.shape[0], model.config["out_channels"]) + padded, np.float32)   # weighted logit sums
    flips = [a for r in range(dims + 1) for a in itertools.combinations(range(2, dims + 2), r)] if tta else [()]
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=len(jobs), desc="windows", unit="win", disable=not progress) as bar:
            for i in range(0, len(jobs), batch_size):
                batch = jobs[i:i + batch_size]
                xb = xm.ascontiguousarray(_to(xi.stack([x[(n, slice(None)) + box] for n, box in batch])
                                              .astype(dtype, copy=False), xm))
                yb = 0
                for axes in flips:   # () = no flip; flip, predict, flip back
                    xf = xm.ascontiguousarray(xm.flip(xb, axes)) if axes else xb
                    yf = model.forward(xf)
                    yb = yb + (xm.flip(yf, axes) if axes else yf)
                yb = _to(yb * (w_model / len(flips)), xi).astype(np.float32, copy=False)   # (B, K, *window)
                for (n, box), y in zip(batch, yb):
                    out[(n, slice(None)) + box] += y
                bar.update(len(batch))
    finally:
        model.train(was_training)
    out /= norm
    out = out[(slice(None), slice(None)) + tuple(slice(a, a + s) for a, s in zip(lo, size))]
    bad = int(out.size - xi.count_nonzero(xi.isfinite(out)))   # a label map from NaN logits is silent nonsense
    if bad:
        raise FloatingPointError(f"model: produced {bad} NaN or infinite logit(s) (weights or input overflow "
                                 f"float32); no prediction is made from them")
    return out


def _channels(name, a, model, layout):
    """Check that `a` is a float array laid out as `layout` with the model's input channels."""
    cin, dims = model.config["in_channels"], model.config["dims"]
    _check.array(name, a)
    if a.ndim != len(layout) or a.shape[0] != cin:
        raise ValueError(f"{name}: expected shape ({', '.join(layout)}) with C = {cin} for a {dims}D model with "
                         f"in_channels={cin}, got shape {tuple(a.shape)}")
    return a


def predict_logits(model, image, window=None, overlap=0.5, batch_size=4, gaussian=True, tta=False, progress=False,
                   pad_mode="constant"):
    """Logits (K, *S) float32 for one image (C, *S), on the image's device.

    window=None: the whole image at once, padded (pad_mode: "constant" zeros or "edge")
    to a multiple of 2**depth and cropped back. window=(w, ...) or an int (each a multiple
    of 2**depth): sliding windows, `overlap` in [0, 1) of a window shared by neighbours
    (stride = window*(1 - overlap)), the last window flush with the border, images
    smaller than a window padded; batch_size windows per forward pass; blended with a
    Gaussian importance map (gaussian=True, sigma = window/8) or uniform weights.
    tta=True: mean of the logits over all 2**dims flips of the spatial axes (2**dims
    times the work). progress=True: a tqdm bar over windows."""
    image = _channels("image", image, model, ("C", "D", "H", "W") if model.config["dims"] == 3 else ("C", "H", "W"))
    return _predict(model, image[None], window, overlap, batch_size, gaussian, tta, progress, pad_mode)[0]


def _proba(logits):
    """(K, ...) logits -> probabilities: sigmoid for K == 1, softmax over axis 0 otherwise."""
    xp = _check.xp_of(logits)
    if logits.shape[0] == 1:
        e = xp.exp(-abs(logits))   # the sigmoid without overflow, and exact for tiny probabilities
        return xp.where(logits >= 0, 1 / (1 + e), e / (1 + e))
    e = xp.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def predict_proba(model, image, **kw):
    """Probabilities (K, *S) float32: sigmoid of predict_logits for K == 1, softmax over
    the channels otherwise. Takes predict_logits' arguments."""
    return _proba(predict_logits(model, image, **kw))


def predict_labels(model, image, **kw):
    """Label map (*S) int64: argmax over the channels, or probability > 0.5 (logit > 0)
    for K == 1. Takes predict_logits' arguments."""
    from cunet.metrics import predict
    return predict(predict_logits(model, image, **kw)[None])[0]


def predict_volume_2d(model, volume, axis=2, **kw):
    """A 2D model applied slice by slice to volume (C, X, Y, Z) along spatial `axis`
    (0 = X, 1 = Y, 2 = Z) -> logits (K, X, Y, Z) float32. Slices share the batches;
    other arguments as predict_logits (window, overlap, batch_size, gaussian, tta, ...)."""
    if model.config["dims"] != 2:
        raise ValueError(f"model: expected a 2D model (config dims=2), got dims={model.config['dims']}")
    _channels("volume", volume, model, ("C", "X", "Y", "Z"))
    _check.choice("axis", axis, (0, 1, 2))
    xp = _check.xp_of(volume)
    slices = xp.moveaxis(volume, axis + 1, 0)   # (n, C, A, B): slice index first
    logits = _predict(model, slices, **kw)    # (n, K, A, B)
    return xp.moveaxis(logits, 0, axis + 1)


# ---- post-processing of label maps (scipy.ndimage on NumPy, cupyx.scipy.ndimage on CuPy)

def _ndimage(labels):
    if _check.xp_of(labels) is np:
        import scipy.ndimage as ndi
    else:
        import cupyx.scipy.ndimage as ndi
    return ndi


def _classes(labels, classes):
    """The classes to process: the given ones, or every non-zero value present."""
    _check.array("labels", labels, dtype="int")
    if classes is None:
        return [int(c) for c in _check.xp_of(labels).unique(labels).tolist() if c != 0]
    classes = [classes] if isinstance(classes, (int, np.integer)) else list(classes)
    for c in classes:
        _check.integer("classes", c, lo=1)   # 0 is background and stays untouched
    return [int(c) for c in classes]


def keep_largest_component(labels, classes=None):
    """For each class (default: every non-zero class present), keep its largest
    face-connected component and set the others to background 0. Returns a new array;
    ties keep the component found first (in C order)."""
    classes, ndi, xp = _classes(labels, classes), _ndimage(labels), _check.xp_of(labels)
    out = labels.copy()
    for c in classes:
        comp, n = ndi.label(labels == c)   # face connectivity: ndimage's default structure
        if int(n) > 1:
            sizes = xp.bincount(comp.ravel())
            sizes[0] = 0
            out[(comp != 0) & (comp != int(sizes.argmax()))] = 0
    return out


def fill_holes(labels, classes=None):
    """For each class (default: every non-zero class present), fill its holes with it: a
    hole is a face-connected region of background voxels that the class alone encloses
    (not reachable from the border without crossing the class). Other classes are never
    overwritten, and a region holding any of them is not a hole, so a ring of one class
    around another (myocardium around its cavity) keeps its inside. Returns a new array.
    Each filled region is bounded by its class only, so the class order does not matter."""
    classes, ndi, xp = _classes(labels, classes), _ndimage(labels), _check.xp_of(labels)
    out = labels.copy()
    for c in classes:
        mask = labels == c
        comp, n = ndi.label(ndi.binary_fill_holes(mask) & ~mask)   # enclosed regions of not-c
        if int(n):
            foreign = xp.bincount(comp[labels != 0], minlength=int(n) + 1)   # non-background voxels
            fill = foreign == 0   # regions of background only
            fill[0] = False
            out[fill[comp]] = c
    return out


def postprocess(labels, classes=None):
    """keep_largest_component, then fill_holes (so a speck removed from inside a ring of
    another class becomes part of that class rather than a hole)."""
    return fill_holes(keep_largest_component(labels, classes), classes)
