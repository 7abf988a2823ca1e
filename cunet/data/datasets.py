"""Real data shipped inside packages, found on disk without importing them, so nothing
is downloaded at run time. Install them with (pinned, without their heavy dependencies):

    pip install --no-deps nilearn==0.14.1 stardist==0.9.2

tissue()   brain tissue classes (background, CSF, GM, WM) of the MNI ICBM152 2009a
           symmetric template (nilearn): T1 image + GM/WM probability maps, 1 mm.
nuclei()   one Data Science Bowl 2018 fluorescence image with its nucleus masks (stardist).
denoise()  clean T1 slices of the same template, with synthetic Gaussian noise: a noisy
           input, a second independent noisy copy (Noise2Noise target) and the clean image.

The template is left-right symmetric, so train and validation are split by
superior/inferior slabs along z, never by hemisphere.
"""
import importlib.util
from pathlib import Path

import numpy as np

TISSUE_CLASSES = ("background", "CSF", "GM", "WM")
_NILEARN = "nilearn==0.14.1"
_STARDIST = "stardist==0.9.2"


def data_file(package, relpath, pin):
    """Path of a data file inside an installed package, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is not installed; it ships the data: pip install --no-deps {pin}")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: cunet expects {pin} (pip install --no-deps {pin})")
    return path


def _template(kind):
    """(image as stored, affine) of one MNI ICBM152 2009a volume: kind t1, gm or wm."""
    import nibabel as nib
    img = nib.load(data_file("nilearn", f"datasets/data/mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz",
                             _NILEARN))
    return np.asarray(img.dataobj).astype(np.float32), img.affine, img.header


def _slab_split(label, axis=2, val_fraction=0.2, centre=0.65, gap=3):
    """Slice indices along `axis` for training and validation: validation is one slab of
    val_fraction of the brain's extent centred at `centre` of it (inferior 0 -> superior 1);
    `gap` slices either side of it belong to neither, so no slice trains next to its twin."""
    other = tuple(a for a in range(label.ndim) if a != axis)
    brain = np.where((label > 0).any(axis=other))[0]
    lo, hi = int(brain.min()), int(brain.max()) + 1
    n = hi - lo
    v0 = lo + int(round(centre * n - val_fraction * n / 2))
    v1 = v0 + max(1, int(round(val_fraction * n)))
    val = np.arange(v0, v1)
    train = np.array([z for z in range(lo, hi) if z < v0 - gap or z >= v1 + gap])
    return train, val


def tissue():
    """MNI ICBM152 2009a brain tissue segmentation, 197 x 233 x 189 at 1 mm.

    -> dict: image (1, X, Y, Z) float32 T1 (0 outside the brain), label (X, Y, Z) int64 with
    classes 0 background (T1 == 0), else the most likely of 1 CSF (= 1 - GM - WM), 2 GM, 3 WM;
    affine and header of the template grid; classes; train_slices and val_slices (axial z
    indices: superior/inferior slabs); axis 2."""
    t1, affine, header = _template("t1")
    gm, _, _ = _template("gm")
    wm, _, _ = _template("wm")
    gm, wm = gm / 255.0, wm / 255.0   # probability maps stored as 0..255
    label = np.where(t1 > 0, np.argmax(np.stack([1.0 - gm - wm, gm, wm]), axis=0) + 1, 0).astype(np.int64)
    train, val = _slab_split(label)
    return dict(image=t1[None], label=label, affine=affine, header=header, classes=TISSUE_CLASSES,
                train_slices=train, val_slices=val, axis=2, name="tissue")


def _tif(relpath):
    from PIL import Image
    return np.array(Image.open(data_file("stardist", relpath, _STARDIST)))


def nuclei(tile=128, val_columns=1):
    """Data Science Bowl 2018 nuclei (one 512 x 512 fluorescence image), binary.

    -> dict: train_images (n, 1, tile, tile) float32 in [0, 1], train_labels (n, tile, tile)
    int64 (1 = nucleus), val_images/val_labels from the last `val_columns` columns of
    tiles (spatially disjoint from training), and the whole image/label."""
    img = _tif("data/images/img2d.tif").astype(np.float32)
    mask = (_tif("data/images/mask2d.tif") > 0).astype(np.int64)   # instance ids -> foreground
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    h, w = (s // tile * tile for s in img.shape)
    tiles = [(r, c) for r in range(0, h, tile) for c in range(0, w, tile)]
    is_val = [c >= w - val_columns * tile for _, c in tiles]

    def take(flag):
        sel = [t for t, v in zip(tiles, is_val) if v == flag]
        return (np.stack([img[r:r + tile, c:c + tile] for r, c in sel])[:, None],
                np.stack([mask[r:r + tile, c:c + tile] for r, c in sel]))

    (ti, tl), (vi, vl) = take(False), take(True)
    return dict(train_images=ti, train_labels=tl, val_images=vi, val_labels=vl, image=img, label=mask,
                classes=("background", "nucleus"), name="nuclei")


def denoise(noise=0.1, seed=0, crop=(192, 224)):
    """Axial T1 slices of the template, intensities in [0, 1], cropped to `crop` around the
    brain, with Gaussian noise of standard deviation `noise`.

    -> dict with train_* and val_* (slab split as tissue()): *_clean (n, 1, H, W), *_noisy
    (the network input) and *_noisy2 (an independent noisy copy: the Noise2Noise target)."""
    t1, _, _ = _template("t1")
    t1 = t1 / max(float(t1.max()), 1e-6)
    train, val = _slab_split((t1 > 0).astype(np.int64))
    cx, cy = (s // 2 for s in t1.shape[:2])
    x0, y0 = max(0, cx - crop[0] // 2), max(0, cy - crop[1] // 2)
    vol = np.zeros(crop + t1.shape[2:], np.float32)
    part = t1[x0:x0 + crop[0], y0:y0 + crop[1]]
    vol[:part.shape[0], :part.shape[1]] = part
    rng = np.random.default_rng(seed)
    out = dict(noise=noise, name="denoise")
    for split, zs in (("train", train), ("val", val)):
        clean = np.moveaxis(vol[:, :, zs], 2, 0)[:, None].astype(np.float32)   # (n, 1, H, W)
        out[f"{split}_clean"] = clean
        out[f"{split}_noisy"] = (clean + rng.normal(0, noise, clean.shape)).astype(np.float32)
        out[f"{split}_noisy2"] = (clean + rng.normal(0, noise, clean.shape)).astype(np.float32)
    return out


def psnr(x, clean, data_range=1.0):
    """Peak signal-to-noise ratio in dB of x against clean."""
    mse = float(np.mean((np.asarray(x, np.float64) - clean) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range ** 2 / mse)


__all__ = ["tissue", "nuclei", "denoise", "psnr", "data_file", "TISSUE_CLASSES"]
