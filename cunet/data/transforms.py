"""Layout and intensity transforms between files and the model: channel axis,
normalisation, 2D slices of volumes, padding to a multiple of 2**depth.

    channels_first(image, dims)            (*S) or (*S, C) as stored -> (C, *S)
    normalize(image, cfg, channel_axis)    float32 copy; statistics of the whole array or per channel
    to_slices(volume, label, axis)         (C, *S3) [+ (*S3)] -> (n, C, H, W) [+ (n, H, W)]
    from_slices(slices, axis)              (n, C, H, W) -> (C, *S3); (n, H, W) -> (*S3)
    pad_to_multiple(x, k, dims) / crop(x, pads)

The normalisation is a JSON-able dict, saved with a model so prediction repeats it.
Everything here takes NumPy or CuPy arrays and returns the same kind.
"""
import numbers

from cunet import _check

METHODS = ("zscore", "percentile", "none")
MASKS = ("all", "nonzero")


def default_normalization():
    """Clip each channel to its 0.5-99.5th percentiles, then z-score over all voxels."""
    return {"method": "zscore", "clip": [0.5, 99.5], "mask": "all"}


def check_normalization(cfg):
    """cfg -> a complete, validated copy (missing keys take the defaults)."""
    if not isinstance(cfg, dict):
        raise TypeError(f"cfg: expected a dict like {default_normalization()}, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - {"method", "clip", "mask"})
    if unknown:
        raise ValueError(f"cfg: unknown key(s) {unknown}; expected 'method', 'clip', 'mask'")
    out = {**default_normalization(), **cfg}
    _check.choice("cfg['method']", out["method"], METHODS)
    _check.choice("cfg['mask']", out["mask"], MASKS)
    clip = out["clip"]
    if clip is not None:
        ok = (isinstance(clip, (list, tuple)) and len(clip) == 2
              and all(isinstance(c, numbers.Real) and not isinstance(c, bool) for c in clip)
              and 0 <= clip[0] < clip[1] <= 100)
        if not ok:
            raise ValueError(f"cfg['clip']: expected None or [lo, hi] percentiles with 0 <= lo < hi <= 100, "
                             f"got {clip!r}")
        out["clip"] = [float(clip[0]), float(clip[1])]
    elif out["method"] == "percentile":
        raise ValueError("cfg['clip']: method 'percentile' needs [lo, hi] percentiles, got None")
    return out


def normalize(image, cfg=None, channel_axis=None):
    """image (any shape) -> float32 copy, normalised by its own (masked) statistics: one set
    over the whole array, or one per channel along `channel_axis` (e.g. 0 for (C, *S)).

    zscore:     clip to the cfg['clip'] percentiles (if any), then (x - mean) / std
    percentile: clip to the percentiles, then map [lo, hi] -> [0, 1]
    none:       unchanged (as float32)
    mask 'nonzero': statistics over nonzero voxels only, and voxels outside that mask are 0
    in the output (a skull-stripped MRI keeps a clean background)."""
    cfg = check_normalization(default_normalization() if cfg is None else cfg)
    _check.array("image", image, dtype=None)
    xp = _check.xp_of(image)
    if image.dtype.kind not in "biuf":
        raise TypeError(f"image: expected a numeric array, got {image.dtype}")
    if channel_axis is not None:
        _check.integer("channel_axis", channel_axis)
        if not -image.ndim <= channel_axis < image.ndim:
            raise ValueError(f"channel_axis: expected an axis of image (shape {tuple(image.shape)}), "
                             f"got {channel_axis}")
    x = image.astype(xp.float32)   # a copy: the caller's array is never modified
    _check.finite("image", x)
    if cfg["method"] == "none":
        return x
    if channel_axis is None:
        x[...] = _normalize_one(x, cfg, xp)
    else:
        channels = xp.moveaxis(x, channel_axis, 0)   # a view: writes land in x
        for c in range(channels.shape[0]):
            channels[c] = _normalize_one(channels[c], cfg, xp)
    return x


def _normalize_one(ch, cfg, xp):
    """One channel (any shape) by its own statistics."""
    inside = ch != 0 if cfg["mask"] == "nonzero" else None
    vals = ch[inside] if inside is not None else ch.ravel()
    if vals.size == 0:   # all zero under a nonzero mask: nothing to normalise
        return ch
    if cfg["clip"] is not None:
        lo, hi = (float(v) for v in xp.percentile(vals.astype(xp.float64), cfg["clip"]))
        ch, vals = xp.clip(ch, lo, hi), xp.clip(vals, lo, hi)
    if cfg["method"] == "zscore":
        v64 = vals.astype(xp.float64)
        mean, std = float(v64.mean()), float(v64.std())
        ch = (ch - mean) / max(std, 1e-8)
    else:
        ch = (ch - lo) / max(hi - lo, 1e-8)
    return ch if inside is None else xp.where(inside, ch, 0)


def channels_first(image, dims):
    """A loaded image with `dims` spatial axes, (*S) or (*S, C) as stored -> (C, *S)."""
    _check.choice("dims", dims, (2, 3))
    _check.array("image", image, ndim=(dims, dims + 1), dtype=None)
    xp = _check.xp_of(image)
    return image[None] if image.ndim == dims else xp.ascontiguousarray(xp.moveaxis(image, -1, 0))


def to_slices(volume, label=None, axis=2):
    """2D training samples along spatial `axis` of a 3D volume.

    volume (C, D0, D1, D2) or (D0, D1, D2) -> x (n, C, H, W), n = D_axis, (H, W) the other two
    spatial axes in order; label (D0, D1, D2) -> y (n, H, W). Returns x, or (x, y)."""
    _check.array("volume", volume, ndim=(3, 4), dtype=None)
    _check.choice("axis", axis, (0, 1, 2))
    xp = _check.xp_of(volume)
    v = volume if volume.ndim == 4 else volume[None]
    x = xp.ascontiguousarray(xp.moveaxis(v, axis + 1, 0))
    if label is None:
        return x
    _check.array("label", label, ndim=3, dtype=None)
    if tuple(label.shape) != tuple(v.shape[1:]):
        raise ValueError(f"label: expected shape {tuple(v.shape[1:])} (the volume's spatial shape), "
                         f"got {tuple(label.shape)}")
    return x, xp.ascontiguousarray(xp.moveaxis(label, axis, 0))


def from_slices(slices, axis=2):
    """Undo to_slices for predictions: (n, C, H, W) -> (C, D0, D1, D2) and (n, H, W) ->
    (D0, D1, D2), with the n slices back on spatial `axis`."""
    _check.array("slices", slices, ndim=(3, 4), dtype=None)
    _check.choice("axis", axis, (0, 1, 2))
    xp = _check.xp_of(slices)
    return xp.ascontiguousarray(xp.moveaxis(slices, 0, axis + (slices.ndim == 4)))


def pad_to_multiple(x, k, dims=None, mode="constant"):
    """Pad the last `dims` axes (default x.ndim - 2: the spatial axes of (N, C, *S)) up to
    multiples of k (an int or one per axis), split evenly before/after.

    -> (padded, pads) with pads a tuple of (before, after) per padded axis; crop(y, pads)
    undoes it on any array whose last axes are those (logits, labels). mode: 'constant'
    (zeros), 'edge' or 'reflect', as numpy.pad."""
    _check.array("x", x, dtype=None)
    dims = x.ndim - 2 if dims is None else _check.integer("dims", dims, lo=1)
    if not 1 <= dims <= x.ndim:
        raise ValueError(f"dims: expected 1..{x.ndim} (x has shape {tuple(x.shape)}), got {dims}")
    ks = _check.tuple_arg("k", k, dims, minimum=1)
    _check.choice("mode", mode, ("constant", "edge", "reflect"))
    pads = tuple(((-s % m) // 2, (-s % m) - (-s % m) // 2) for s, m in zip(x.shape[-dims:], ks))
    if not any(b or a for b, a in pads):
        return x, pads
    xp = _check.xp_of(x)
    return xp.pad(x, ((0, 0),) * (x.ndim - dims) + pads, mode=mode), pads


def crop(x, pads):
    """Remove `pads` ((before, after) per axis, as pad_to_multiple returns) from the last axes."""
    _check.array("x", x, dtype=None)
    pads = tuple(tuple(p) for p in pads)
    if len(pads) > x.ndim or any(len(p) != 2 or min(p) < 0 for p in pads):
        raise ValueError(f"pads: expected up to {x.ndim} (before, after) pairs of ints >= 0, got {pads!r}")
    if any(b + a > s for (b, a), s in zip(pads, x.shape[x.ndim - len(pads):])):
        raise ValueError(f"pads: {pads!r} removes more than the last axes of x hold (shape {tuple(x.shape)})")
    index = tuple(slice(b, s - a) for (b, a), s in zip(pads, x.shape[x.ndim - len(pads):]))
    return x[(Ellipsis,) + index]
