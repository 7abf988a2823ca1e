"""Reading and writing images and label maps: NIfTI (nibabel) and 2D PNG/TIFF (PIL).

    load_image(path)               -> (array float32, meta)   NIfTI: stored voxel order
                                      (X, Y, Z) or (X, Y, Z, T), no reorientation;
                                      PNG/TIFF: (H, W) grey or (H, W, C)
    load_label(path, num_classes)  -> (array int64, meta)     same layouts, no channel axis
    save_image(path, array, like)  / save_label(path, labels, like): write onto the grid
                                      (affine + header) of `like`, the meta of the input
    check_pair(...)                   image and label on the same grid, or a ValueError

`meta` is a dict: path, format ("nifti" | "png" | "tiff"), kind ("nifti" | "image": a
volume, or a 2D picture whose last axis, if any, is colour), shape, dtype (as stored),
affine ((4, 4) float64; None for PNG/TIFF) and header (the nibabel header; None for
PNG/TIFF). `like` may also be a hand-made dict with just affine and header. Every error
names the file. Arrays to save may be NumPy or CuPy (copied to the host: writing a file
is the one place that copy belongs).
"""
import math
import os
from pathlib import Path

import numpy as np

from cunet import _check
from cunet._files import atomic_write

FORMATS = {".nii": "nifti", ".nii.gz": "nifti", ".png": "png", ".tif": "tiff", ".tiff": "tiff"}


def _extension(path):
    name = str(path).lower()
    for ext in sorted(FORMATS, key=len, reverse=True):   # ".nii.gz" before ".gz"-less ".nii"
        if name.endswith(ext):
            return ext
    raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(FORMATS)}")


def _format(path):
    return FORMATS[_extension(path)]


def image_files(folder):
    """Names of the NIfTI/PNG/TIFF files of a folder (hidden files and others ignored), sorted:
    the cases of cohort prediction and evaluation."""
    names = []
    for p in sorted(Path(folder).iterdir(), key=lambda p: p.name):
        if p.is_file() and not p.name.startswith(".") and any(p.name.lower().endswith(e) for e in FORMATS):
            names.append(p.name)
    return names


def _atomic_save(path, write):
    """write(tmp) to a temporary beside `path` ending in the same extension (nibabel and PIL
    pick the format by it), renamed over `path`: cunet._files.atomic_write."""
    atomic_write(path, write, suffix=".tmp" + _extension(path))


def _host(a, name):
    """NumPy view/copy of a NumPy or CuPy array."""
    try:
        xp = _check.xp_of(a)
    except TypeError:
        raise TypeError(f"{name}: expected a numpy or cupy array, got {type(a).__name__}") from None
    return a if xp is np else xp.asnumpy(a)


DEFLATE_MAX_RATIO = 1032   # no deflate stream expands by more (RFC 1951: 258 bytes per 2-bit code)


def _check_claimed_size(path, img):
    """The voxels a NIfTI header claims must fit in the file (uncompressed: after
    vox_offset; gzip: within deflate's largest expansion) and in memory, before nibabel
    allocates them (an 83-byte file claiming 2000^3 voxels took 7.9 GB before failing)."""
    from cunet._ops.core import PHYSICAL_BYTES
    shape, dtype = tuple(int(n) for n in img.shape), img.get_data_dtype()
    claimed = math.prod(shape) * dtype.itemsize
    size = os.path.getsize(path)
    gz = path.lower().endswith(".gz")
    room = DEFLATE_MAX_RATIO * size if gz else size - int(img.header.get("vox_offset", 0))
    if claimed > room:
        raise ValueError(f"{path}: the header claims {'x'.join(map(str, shape))} voxels of {dtype} "
                         f"({claimed:,} bytes), more than a {size:,}-byte{' gzip' if gz else ''} file can hold "
                         f"(the file is truncated or its header damaged)")
    if claimed > PHYSICAL_BYTES / 2:   # read as stored, then converted to float32 or int64
        raise ValueError(f"{path}: the header claims {'x'.join(map(str, shape))} voxels of {dtype} "
                         f"({claimed / 2**30:.3g} GiB), more than half of this machine's memory")


def _read(path):
    """path -> (raw array as stored, after NIfTI scl_slope/inter; meta)."""
    path = os.fspath(path)
    fmt = _format(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: file is empty")
    try:
        if fmt == "nifti":
            import nibabel as nib
            img = nib.load(path)
            _check_claimed_size(path, img)
            data = np.asanyarray(img.dataobj)   # reads (and decompresses) here: errors surface inside the try
            meta = dict(affine=np.array(img.affine, dtype=np.float64), header=img.header.copy(),
                        dtype=str(img.get_data_dtype()))
            if not np.isfinite(meta["affine"]).all():   # nothing could be written back onto that grid
                raise ValueError(f"{path}: the header's affine (sform/qform) holds NaN or infinite values:\n"
                                 f"{np.array2string(meta['affine'], precision=4)}".replace("\n", " "))
        else:
            from PIL import Image
            with Image.open(path) as im:
                if getattr(im, "n_frames", 1) > 1:
                    raise ValueError(f"{path}: has {im.n_frames} frames; only single 2D images are read "
                                     f"(store volumes as NIfTI)")
                data = np.array(im.convert("L") if im.mode == "1" else im)
            meta = dict(affine=None, header=None, dtype=str(data.dtype))
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: cannot read as {fmt.upper()} ({e})") from None
    except Exception as e:   # nibabel ImageFileError, EOFError/zlib on truncation, PIL UnidentifiedImageError
        raise ValueError(f"{path}: cannot read as {fmt.upper()} ({type(e).__name__}: {e})") from None
    if data.size == 0:
        raise ValueError(f"{path}: holds no voxels (shape {data.shape})")
    meta.update(path=path, format=fmt, kind="nifti" if fmt == "nifti" else "image", shape=tuple(data.shape))
    return data, meta


def load_image(path):
    """An image as float32 in its stored layout, and its meta. NaN/inf -> ValueError."""
    data, meta = _read(path)
    if data.dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected numeric voxels, got dtype {data.dtype}")
    data = data.astype(np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        raise ValueError(f"{path}: contains {int(bad.sum())} NaN or infinite value(s)")
    return data, meta


def load_label(path, num_classes=None):
    """A label map as int64 (no channel axis), and its meta.

    Rejects NaN, non-integer, negative and (with num_classes) >= num_classes values, listing
    up to 10 of them. A PNG/TIFF with identical colour channels is read as one channel."""
    data, meta = _read(path)
    path = meta["path"]
    if data.ndim == 3 and meta["format"] != "nifti":
        if not (data == data[..., :1]).all():
            raise ValueError(f"{path}: expected a single-channel label image, got {data.shape[-1]} "
                             f"channels that differ (shape {data.shape})")
        data = data[..., 0]
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    if data.dtype.kind == "f":
        nan = np.isnan(data)
        if nan.any():
            raise ValueError(f"{path}: label map contains {int(nan.sum())} NaN value(s)")
        frac = data != np.round(data)
        if frac.any():
            vals = np.unique(data[frac])[:10].tolist()
            raise ValueError(f"{path}: label values must be integers, found {vals}")
    elif data.dtype.kind not in "iu":
        raise ValueError(f"{path}: expected integer labels, got dtype {data.dtype}")
    if num_classes is not None:
        _check.integer("num_classes", num_classes, lo=1)
    hi = np.inf if num_classes is None else num_classes
    bad = (data < 0) | (data >= hi)
    if bad.any():
        vals = np.unique(data[bad])[:10]
        vals = [int(v) if float(v).is_integer() else float(v) for v in vals.tolist()]
        want = "non-negative" if num_classes is None else f"in [0, {num_classes})"
        raise ValueError(f"{path}: label values must be {want}, found {vals}")
    return data.astype(np.int64), meta


def check_pair(image_path, label_path, image, label, image_meta=None, label_meta=None):
    """Image and label on the same grid: label.shape == the image's leading (spatial) axes,
    and (NIfTI) affines equal within 1e-3 mm. Mismatch -> ValueError naming both files."""
    spatial = tuple(image.shape[:label.ndim])
    if label.ndim > image.ndim or spatial != tuple(label.shape):
        raise ValueError(f"{image_path} and {label_path}: image shape {tuple(image.shape)} does not match "
                         f"label shape {tuple(label.shape)}")
    a = None if image_meta is None else image_meta.get("affine")
    b = None if label_meta is None else label_meta.get("affine")
    if a is not None and b is not None and not np.allclose(a, b, rtol=1e-5, atol=1e-3):
        raise ValueError(f"{image_path} and {label_path}: affines differ (the label is not on the image's "
                         f"grid):\n{np.array2string(np.asarray(a), precision=4)}\nvs\n"
                         f"{np.array2string(np.asarray(b), precision=4)}")


def _check_grid(path, array, like):
    """The array to save must cover the spatial grid `like` describes."""
    if like is None:
        return
    if not isinstance(like, dict):
        raise TypeError(f"like: expected the meta dict returned by load_image/load_label, got {type(like).__name__}")
    if "shape" not in like:   # a hand-made {affine, header}: nothing to compare
        return
    n = min(3 if like.get("format") == "nifti" else 2, len(like["shape"]), array.ndim)
    if tuple(array.shape[:n]) != tuple(like["shape"][:n]):
        raise ValueError(f"{path}: array shape {tuple(array.shape)} does not match the grid of "
                         f"{like.get('path')} (shape {tuple(like['shape'])})")


def _save_nifti(path, array, like, dtype):
    import nibabel as nib
    header = like.get("header") if like else None
    affine = like.get("affine") if like else None
    affine = np.eye(4) if affine is None else affine
    if header is None:
        img = nib.Nifti1Image(array, affine)
    else:
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        img = cls(array, affine, header=header.copy())
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)   # values stored as given, no rescaling
    nib.save(img, path)


def _save_2d(path, array, fmt, name, shown):
    """shown: the file name errors give (path may be a temporary beside it)."""
    from PIL import Image
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"{shown}: {fmt.upper()} holds (H, W) or (H, W, 1|3|4) arrays; {name} has shape "
                         f"{tuple(array.shape)}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if fmt == "tiff" and array.dtype.kind == "f" and array.ndim == 2:
        Image.fromarray(array.astype(np.float32), mode="F").save(path)
        return
    # PNG (and colour TIFF) store integers: 8 bit, or 16 bit for grey values above 255
    vals = np.round(array) if array.dtype.kind == "f" else array
    lo, hi = float(vals.min()), float(vals.max())
    top = 255 if array.ndim == 3 else 65535
    if lo < 0 or hi > top:
        raise ValueError(f"{shown}: {fmt.upper()} stores integers in [0, {top}] for this layout; {name} "
                         f"ranges over [{lo:g}, {hi:g}] (save float images as .tif or .nii.gz)")
    vals = vals.astype(np.uint8 if hi <= 255 else np.uint16)
    Image.fromarray(vals).save(path)


def save_image(path, array, like=None):
    """Write an image. NIfTI: float32 with the affine and header of `like` (the meta of the
    image it was computed from) so it lands on the same grid; PNG: rounded to 8/16 bit;
    TIFF: float32 for (H, W), else as PNG."""
    path = os.fspath(path)
    fmt = _format(path)
    array = _host(array, "array")
    _check_grid(path, array, like)
    if fmt == "nifti":
        _atomic_save(path, lambda tmp: _save_nifti(tmp, np.asarray(array, dtype=np.float32), like, np.float32))
    else:
        _atomic_save(path, lambda tmp: _save_2d(tmp, array, fmt, "array", path))


def save_label(path, labels, like=None):
    """Write a label map: NIfTI as uint8 (or int16 above 255) on the grid of `like`;
    PNG/TIFF as 8 or 16 bit grey."""
    path = os.fspath(path)
    fmt = _format(path)
    labels = _host(labels, "labels")
    labels = labels.astype(np.uint8) if labels.dtype == bool else labels   # a binary mask (logits > 0)
    _check.array("labels", labels, dtype="int")
    _check_grid(path, labels, like)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise ValueError(f"labels: expected non-negative values, found {lo} (saving {path})")
    if fmt == "nifti":
        if hi > np.iinfo(np.int16).max:
            raise ValueError(f"labels: expected values <= 32767 to store as int16, found {hi} (saving {path})")
        dtype = np.uint8 if hi <= 255 else np.int16
        _atomic_save(path, lambda tmp: _save_nifti(tmp, labels.astype(dtype), like, dtype))
    else:
        _atomic_save(path, lambda tmp: _save_2d(tmp, labels, fmt, "labels", path))
