"""Scoring label maps against reference label maps (`cunet evaluate`): per case and per
class Dice, IoU, HD95 and ASSD in millimetres, summarised in the layout of nnU-Net v2's
summary.json. Pure NumPy/SciPy on the host; no kernels (files are scored once, not trained on).

    surface(mask)                          voxels of the mask with a face neighbour outside it
    surface_distances(pred, ref, spacing)  (d_pred->ref, d_ref->pred), mm, per surface voxel
    case_metrics(pred, ref, spacing, labels) -> {"1": {"Dice": .., "HD95": .., ...}, ...}
    evaluate_folder(pred_dir, ref_dir, labels=None) -> summary dict (floats may be nan/inf)
    write_json(summary, path)              strict JSON: nan/inf written as null
    table(summary) / plot_dice(summary, path)

Definitions (and whose they are):
- Counts, Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN) and the keys Dice, IoU,
  FP, TP, FN, TN, n_pred, n_ref: nnU-Net v2 (nnunetv2/evaluation/evaluate_predictions.py,
  compute_metrics). Both maps empty for a class: Dice = IoU = NaN (0/0, as nnU-Net);
  one empty: 0.
- Surface: mask minus its binary erosion with scipy's default structuring element (face
  connectivity: 4-neighbours in 2D, 6 in 3D), voxels outside the array counting as
  background, as MONAI's get_mask_edges does. Distances: Euclidean, in mm (voxel sizes
  from the affine's column norms; PNG/TIFF 1 per pixel), from each surface voxel of one
  map to the nearest surface voxel of the other (distance_transform_edt of the other's
  surface complement, sampling = voxel sizes).
- HD95 = max(95th percentile of d_pred->ref, 95th percentile of d_ref->pred), linear
  interpolation: MONAI's compute_hausdorff_distance(percentile=95), which takes the max
  of the two directed percentiles (not the percentile of their union).
- ASSD = mean of the two distance sets concatenated: MONAI's
  compute_average_surface_distance(symmetric=True).
- Empty maps (MONAI's convention): both empty -> HD95 = ASSD = NaN; exactly one empty
  -> inf (a structure missed or hallucinated has no finite distance).
- Means (`mean`, per class): over cases, NaN excluded (nnU-Net's np.nanmean); inf is kept,
  so a class mean is inf as soon as one case missed it. `foreground_mean`: the plain mean
  of the class means of every label but 0 (nnU-Net). Classes: the labels given, or every
  foreground label present in some reference or prediction (a case where a class is
  absent from both maps gets its both-empty record).
- In the JSON every non-finite value is null (strict JSON); n_pred / n_ref beside it say
  which case it was (both 0: NaN; one 0: inf).
- A reference without a prediction of the same file name is an error naming it (nnU-Net
  asserts too; counting it as empty would be a choice the user did not make). Predictions
  without a reference are not scored.
"""
import json
import math
from pathlib import Path

import numpy as np

from cunet._files import atomic_write

METRICS = ("Dice", "IoU", "HD95", "ASSD", "FP", "TP", "FN", "TN", "n_pred", "n_ref")
AFFINE_TOL_MM = 1e-3


def voxel_sizes(meta, ndim):
    """Voxel sizes in mm along the array's axes: the norms of the affine's first `ndim`
    columns (nibabel's voxel_sizes), or 1 per pixel without an affine (PNG/TIFF)."""
    affine = meta.get("affine")
    if affine is None:
        return (1.0,) * ndim
    return tuple(float(s) for s in np.sqrt((np.asarray(affine)[:3, :ndim] ** 2).sum(axis=0)))


def surface(mask):
    """(*S) bool -> (*S) bool: the mask's voxels with a face neighbour outside it (or outside the array)."""
    from scipy import ndimage
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(pred, ref, spacing):
    """Directed surface distances in mm of two non-empty (*S) bool masks on one grid:
    -> (d_pred_to_ref (n_pred_surface,), d_ref_to_pred (n_ref_surface,)) float64.
    Both are computed in the bounding box of pred | ref: outside it both masks are empty,
    so the surfaces and the (straight-line) distances between them are unchanged."""
    from scipy import ndimage
    box = ndimage.find_objects((pred | ref).astype(np.uint8))[0]
    p, r = pred[box], ref[box]
    sp, sr = surface(p), surface(r)
    d_to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)   # (*box) mm to ref's surface
    d_to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return d_to_ref[sp], d_to_pred[sr]


def _ratio(num, den):
    return num / den if den else math.nan


def binary_metrics(pred, ref, spacing):
    """The METRICS of one class: (*S) bool masks pred and ref, spacing (mm per axis)."""
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred & ~ref))
    fn = int(np.count_nonzero(~pred & ref))
    tn = int(pred.size) - tp - fp - fn
    n_pred, n_ref = tp + fp, tp + fn
    if n_pred == 0 and n_ref == 0:
        hd95 = assd = math.nan
    elif n_pred == 0 or n_ref == 0:
        hd95 = assd = math.inf
    else:
        d1, d2 = surface_distances(pred, ref, spacing)
        hd95 = float(max(np.percentile(d1, 95), np.percentile(d2, 95)))
        assd = float(np.concatenate([d1, d2]).mean())
    return {"Dice": _ratio(2 * tp, 2 * tp + fp + fn), "IoU": _ratio(tp, tp + fp + fn), "HD95": hd95,
            "ASSD": assd, "FP": fp, "TP": tp, "FN": fn, "TN": tn, "n_pred": n_pred, "n_ref": n_ref}


def case_metrics(pred, ref, spacing, labels):
    """{str(label): METRICS} for two (*S) integer label maps on one grid."""
    return {str(int(c)): binary_metrics(pred == c, ref == c, spacing) for c in labels}


def _check_grid(pred_path, ref_path, pred, ref, pmeta, rmeta):
    if pred.shape != ref.shape:
        raise ValueError(f"{pred_path}: prediction shape {pred.shape} does not match the reference "
                         f"{ref_path} (shape {ref.shape})")
    if ref.ndim not in (2, 3):
        raise ValueError(f"{ref_path}: expected a 2D or 3D label map, got {ref.ndim} dimensions (shape {ref.shape})")
    a, b = pmeta.get("affine"), rmeta.get("affine")
    if (a is None) != (b is None) or (a is not None and np.abs(a - b).max() > AFFINE_TOL_MM):
        raise ValueError(f"{pred_path}: prediction affine differs from the reference {ref_path}'s by more than "
                         f"{AFFINE_TOL_MM} mm (not on the reference's grid): "
                         f"{np.array2string(np.asarray(a), precision=4)} vs "
                         f"{np.array2string(np.asarray(b), precision=4)}".replace("\n", ""))


def _check_labels(labels):
    if labels is None:
        return None
    labels = list(labels)
    if not labels:
        raise ValueError("labels: expected at least one label value, got none")
    for v in labels:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"labels: expected non-negative integers, got {v!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels: expected distinct values, got {labels}")
    return [int(v) for v in labels]


def _mean(values):
    """Mean without the NaNs (nnU-Net's np.nanmean); NaN when nothing is left; inf kept."""
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def evaluate_folder(pred_dir, ref_dir, labels=None):
    """Every reference file of ref_dir scored against pred_dir/<same name> -> summary dict:
    {"metric_per_case": [{"prediction_file", "reference_file", "metrics": {"1": {...}}}],
     "mean": {"1": {...}}, "foreground_mean": {...}} (floats may be nan/inf; see write_json)."""
    from cunet.data import io
    labels = _check_labels(labels)
    for name, d in (("PRED_DIR", pred_dir), ("REF_DIR", ref_dir)):
        if not Path(d).is_dir():
            raise ValueError(f"{name}: expected a folder, got {d}" + ("" if Path(d).exists() else " (no such folder)"))
    names = io.image_files(ref_dir)
    if not names:
        raise ValueError(f"REF_DIR: {ref_dir} holds no NIfTI, PNG or TIFF files")
    missing = [n for n in names if not (Path(pred_dir) / n).is_file()]
    if missing:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise ValueError(f"PRED_DIR: no prediction for {len(missing)} of {len(names)} reference cases "
                         f"(expected files of the same name in {pred_dir}): {shown}")
    cases, found = [], set()
    for n in names:
        ref_path, pred_path = str(Path(ref_dir) / n), str(Path(pred_dir) / n)
        ref, rmeta = io.load_label(ref_path)
        pred, pmeta = io.load_label(pred_path)
        _check_grid(pred_path, ref_path, pred, ref, pmeta, rmeta)
        present = labels
        if present is None:
            present = sorted((set(np.unique(ref).tolist()) | set(np.unique(pred).tolist())) - {0})
            found.update(present)
        cases.append({"prediction_file": pred_path, "reference_file": ref_path,
                      "metrics": case_metrics(pred, ref, voxel_sizes(rmeta, ref.ndim), present), "_size": ref.size})
    keys = [str(c) for c in (labels if labels is not None else sorted(found))]
    for case in cases:   # classes absent from both maps of a case: the both-empty record
        size = case.pop("_size")
        empty = binary_metrics(np.zeros(1, bool), np.zeros(1, bool), (1.0,))
        empty["TN"] = size
        case["metrics"] = {k: case["metrics"].get(k, dict(empty)) for k in keys}
    mean = {k: {m: _mean([c["metrics"][k][m] for c in cases]) for m in METRICS} for k in keys}
    fg = [k for k in keys if k != "0"]
    foreground_mean = {m: (float(np.mean([mean[k][m] for k in fg])) if fg else math.nan) for m in METRICS}
    return {"metric_per_case": cases, "mean": mean, "foreground_mean": foreground_mean}


def _strict(v):
    """nan/inf -> None, recursively (JSON has no NaN or Infinity)."""
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_strict(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json(summary, path):
    text = json.dumps(_strict(summary), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _num(v, unit=""):
    return f"{v:.3f}{unit}" if math.isfinite(v) else f"{v}"


def table(summary):
    """One line per case (file name, then per class Dice / IoU / HD95 / ASSD), then the means."""
    def row(name, metrics):
        cols = [f"{k}: Dice {_num(m['Dice'])} IoU {_num(m['IoU'])} HD95 {_num(m['HD95'])} ASSD {_num(m['ASSD'])}"
                for k, m in metrics.items()]
        return f"{name}  " + (" | ".join(cols) if cols else "(no foreground class)")
    lines = [row(Path(c["reference_file"]).name, c["metrics"]) for c in summary["metric_per_case"]]
    lines.append(row("mean", summary["mean"]) + "   (HD95/ASSD in mm; nan: both maps empty, inf: one empty)")
    return "\n".join(lines)


def plot_dice(summary, path):
    """Box plot of the per-case Dice of each class (NaN cases left out) -> PNG at path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    keys = list(summary["mean"])
    fig = Figure(figsize=(max(4.0, 1.2 * len(keys) + 2), 3.6), tight_layout=True)
    FigureCanvasAgg(fig)   # no pyplot: the caller's matplotlib backend is left alone
    ax = fig.subplots()
    data = [[c["metrics"][k]["Dice"] for c in summary["metric_per_case"]] for k in keys]
    data = [[v for v in d if math.isfinite(v)] for d in data]
    ax.boxplot(data)
    ax.set_xticks(range(1, len(keys) + 1), [f"{k}\n(n={len(d)})" for k, d in zip(keys, data)])
    ax.set(xlabel="class", ylabel="Dice", ylim=(-0.02, 1.02),
           title=f"per-case Dice ({len(summary['metric_per_case'])} cases)")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
