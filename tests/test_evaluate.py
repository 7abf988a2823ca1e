"""cunet.evaluate and `cunet evaluate`: the surface metrics (HD95, ASSD in mm) against a slow,
independent reference (surface voxels found by explicit neighbour checks, every pairwise
distance between the two point lists in mm), Dice/IoU against counts, the empty-map
conventions, the summary.json layout, and the command end to end on NIfTI files with an
anisotropic, rotated affine, on a crop of real labels (the MNI template's tissue classes)."""
import json
import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from cunet import cli, evaluate


# ---- the slow reference


def surface_points(mask, spacing):
    """(n, ndim) mm coordinates of the mask's voxels that have a face neighbour outside the
    mask or outside the array, by looking at each of the 2 * ndim neighbours explicitly."""
    padded = np.pad(mask, 1, constant_values=False)
    core = tuple(slice(1, -1) for _ in range(mask.ndim))
    edge = np.zeros_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            edge |= mask & ~np.roll(padded, step, axis=axis)[core]
    return np.argwhere(edge) * np.asarray(spacing, dtype=np.float64)


def reference_surface_metrics(pred, ref, spacing):
    """(HD95, ASSD) as MONAI defines them, by brute force over all surface point pairs."""
    p, r = surface_points(pred, spacing), surface_points(ref, spacing)
    d = cdist(p, r)                          # (n_p, n_r) mm
    d_pr, d_rp = d.min(axis=1), d.min(axis=0)
    return max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)), np.concatenate([d_pr, d_rp]).mean()


def blob(rng, shape):
    """A random irregular blob: a few overlapping ellipsoids, some voxels knocked out."""
    grid = np.indices(shape).astype(np.float64)
    mask = np.zeros(shape, bool)
    for _ in range(3):
        c = rng.uniform(0.25, 0.75, len(shape)) * np.array(shape)
        radii = rng.uniform(0.12, 0.3, len(shape)) * np.array(shape)
        mask |= sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, radii)) <= 1
    return mask & (rng.random(shape) > 0.05)


# ---- metrics


@pytest.mark.parametrize("shape, spacing", [((41, 37), (0.7, 1.9)), ((23, 19, 11), (0.8, 1.1, 3.0))])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_metrics_match_brute_force(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    pred, ref = blob(rng, shape), blob(rng, shape)
    m = evaluate.binary_metrics(pred, ref, spacing)
    hd95, assd = reference_surface_metrics(pred, ref, spacing)
    np.testing.assert_allclose([m["HD95"], m["ASSD"]], [hd95, assd], rtol=1e-10)
    assert m["HD95"] > 0 and m["ASSD"] > 0


def test_surface_distances_are_in_mm_along_each_axis():
    # two slabs 4 voxels apart along axis 2 at 3 mm per voxel: every surface distance is 4 * 3 mm
    # from the facing sides, 5 slices' worth from the far ones; HD95 picks the far side
    ref = np.zeros((9, 9, 12), bool)
    pred = np.zeros_like(ref)
    ref[2:7, 2:7, 2] = True
    pred[2:7, 2:7, 6] = True
    m = evaluate.binary_metrics(pred, ref, (0.5, 0.5, 3.0))
    np.testing.assert_allclose([m["HD95"], m["ASSD"]], [12.0, 12.0])
    assert (m["TP"], m["Dice"], m["IoU"]) == (0, 0.0, 0.0)


def test_dice_iou_and_counts():
    rng = np.random.default_rng(3)
    pred, ref = rng.integers(0, 4, (17, 13, 5)), rng.integers(0, 4, (17, 13, 5))
    got = evaluate.case_metrics(pred, ref, (1.0, 1.0, 1.0), [1, 2, 3])
    assert list(got) == ["1", "2", "3"]
    for c in (1, 2, 3):
        a, b = pred == c, ref == c
        m = got[str(c)]
        inter, union = np.logical_and(a, b).sum(), np.logical_or(a, b).sum()
        assert (m["TP"], m["FP"], m["FN"], m["n_pred"], m["n_ref"]) == (inter, (a & ~b).sum(), (~a & b).sum(),
                                                                        a.sum(), b.sum())
        assert m["TP"] + m["FP"] + m["FN"] + m["TN"] == pred.size
        assert m["Dice"] == pytest.approx(2 * inter / (a.sum() + b.sum()))
        assert m["IoU"] == pytest.approx(inter / union)
    assert set(got["1"]) == set(evaluate.METRICS)


def test_empty_maps():
    empty, some = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    some[2:5, 3:6] = True
    both = evaluate.binary_metrics(empty, empty, (1.0, 1.0))   # nnU-Net: Dice 0/0 = NaN; MONAI: NaN distances
    assert all(math.isnan(both[k]) for k in ("Dice", "IoU", "HD95", "ASSD"))
    assert (both["n_pred"], both["n_ref"], both["TN"]) == (0, 0, 64)
    for pred, ref in ((empty, some), (some, empty)):   # one map empty: Dice 0, distances inf (MONAI)
        m = evaluate.binary_metrics(pred, ref, (1.0, 1.0))
        assert (m["Dice"], m["IoU"], m["HD95"], m["ASSD"]) == (0.0, 0.0, math.inf, math.inf)


# ---- folders, the summary layout, the command


def _save(path, labels, affine):
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), path)


def _affine():
    """Anisotropic voxels (0.9, 1.2, 2.5 mm) on rotated axes, so sizes come from column norms."""
    t = np.deg2rad(30)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([0.9, 1.2, 2.5])
    a[:3, 3] = [-20.0, 11.0, 4.0]
    return a


@pytest.fixture(scope="module")
def tissue_case(tmp_path_factory):
    """Two cases cut from the MNI template's 4-class labels; predictions: the labels shifted by
    one voxel (case a) and with white matter eroded and CSF dropped (case b). -> (pred, ref, refs, preds)."""
    from cunet.data import datasets
    lab = datasets.tissue()["label"]
    root = tmp_path_factory.mktemp("evaluate")
    pred_dir, ref_dir = root / "pred", root / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    refs = {"a.nii.gz": lab[80:112, 100:132, 90:100], "b.nii.gz": lab[60:92, 120:152, 100:110]}
    preds = {"a.nii.gz": np.roll(refs["a.nii.gz"], 1, axis=0)}
    b = refs["b.nii.gz"].copy()
    wm = b == 3
    b[wm & ~ndimage.binary_erosion(wm)] = 2
    b[b == 1] = 0
    preds["b.nii.gz"] = b
    for n in refs:
        _save(ref_dir / n, refs[n], _affine())
        _save(pred_dir / n, preds[n], _affine())
    (pred_dir / "extra.nii.gz").write_bytes((pred_dir / "a.nii.gz").read_bytes())   # no reference: not scored
    return pred_dir, ref_dir, refs, preds


def test_folder_matches_reference_on_real_labels(tissue_case):
    pred_dir, ref_dir, refs, preds = tissue_case
    s = evaluate.evaluate_folder(pred_dir, ref_dir)
    assert [c["reference_file"] for c in s["metric_per_case"]] == [str(ref_dir / n) for n in sorted(refs)]
    spacing = (0.9, 1.2, 2.5)
    for case in s["metric_per_case"]:
        n = case["reference_file"].split("/")[-1]
        assert case["prediction_file"] == str(pred_dir / n)
        assert list(case["metrics"]) == ["1", "2", "3"]
        for c in (1, 2, 3):
            m, p, r = case["metrics"][str(c)], preds[n] == c, refs[n] == c
            assert m["Dice"] == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
            if p.any():
                np.testing.assert_allclose([m["HD95"], m["ASSD"]], reference_surface_metrics(p, r, spacing),
                                           rtol=1e-5)   # (the affine is stored as float32)
            else:
                assert m["HD95"] == m["ASSD"] == math.inf
    b = s["metric_per_case"][1]["metrics"]
    assert b["1"]["n_pred"] == 0 and b["1"]["Dice"] == 0.0 and 0.5 < b["3"]["Dice"] < 1
    for k in ("1", "2", "3"):
        for metric in ("Dice", "TP"):
            assert s["mean"][k][metric] == pytest.approx(np.mean([c["metrics"][k][metric]
                                                                  for c in s["metric_per_case"]]))
    assert s["mean"]["1"]["HD95"] == math.inf   # one case missed CSF: the mean says so
    assert s["foreground_mean"]["Dice"] == pytest.approx(np.mean([s["mean"][k]["Dice"] for k in "123"]))


def test_means_leave_out_both_empty_cases(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    ref = np.zeros((12, 12, 4), np.uint8)
    ref[2:8, 2:8, 1:3] = 1
    with_2 = ref.copy()
    with_2[9:11, 9:11, :] = 2
    pred_2 = with_2.copy()
    pred_2[9, 9, 0] = 0
    _save(tmp_path / "r" / "x.nii.gz", ref, _affine())        # class 2 in neither map: NaN, left out
    _save(tmp_path / "p" / "x.nii.gz", ref, _affine())
    _save(tmp_path / "r" / "y.nii.gz", with_2, _affine())
    _save(tmp_path / "p" / "y.nii.gz", pred_2, _affine())
    s = evaluate.evaluate_folder(tmp_path / "p", tmp_path / "r")
    x, y = (c["metrics"] for c in s["metric_per_case"])
    assert math.isnan(x["2"]["Dice"]) and math.isnan(x["2"]["HD95"]) and x["2"]["TN"] == ref.size
    assert s["mean"]["2"]["Dice"] == y["2"]["Dice"] == pytest.approx(2 * 15 / 31)
    assert s["mean"]["2"]["HD95"] == y["2"]["HD95"] > 0
    s = evaluate.evaluate_folder(tmp_path / "p", tmp_path / "r", labels=[1, 5])   # 5: in no map
    assert list(s["mean"]) == ["1", "5"] and math.isnan(s["mean"]["5"]["Dice"])
    assert math.isnan(s["foreground_mean"]["Dice"])   # nnU-Net: a plain mean of the class means


def _strict_json(path):
    def no_constants(name):
        raise AssertionError(f"non-strict JSON constant {name} in {path}")
    return json.loads(path.read_text(), parse_constant=no_constants)


def test_cli_end_to_end(tissue_case, tmp_path, capsys):
    pred_dir, ref_dir, refs, preds = tissue_case
    out, png = tmp_path / "summary.json", tmp_path / "dice.png"
    rc = cli.main(["evaluate", str(pred_dir), str(ref_dir), "--json", str(out), "--plot", str(png)])
    std = capsys.readouterr()
    assert rc == 0, std.err
    lines = std.out.splitlines()
    assert lines[0].startswith("a.nii.gz  1: Dice ") and lines[1].startswith("b.nii.gz  1: Dice 0.000")
    assert lines[2].startswith("mean  1: Dice") and "HD95 inf" in lines[1]
    s = _strict_json(out)
    assert set(s) == {"metric_per_case", "mean", "foreground_mean"}
    assert set(s["metric_per_case"][0]) == {"prediction_file", "reference_file", "metrics"}
    assert set(s["metric_per_case"][0]["metrics"]["2"]) == set(evaluate.METRICS)
    assert s["metric_per_case"][1]["metrics"]["1"]["HD95"] is None          # inf -> null
    assert s["mean"]["1"]["HD95"] is None and s["mean"]["3"]["HD95"] > 0
    want = evaluate.evaluate_folder(pred_dir, ref_dir)
    assert s["mean"]["2"]["Dice"] == pytest.approx(want["mean"]["2"]["Dice"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_png_labels(tmp_path, capsys):
    from PIL import Image
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    ref = np.zeros((20, 30), np.uint8)
    ref[4:12, 5:20] = 1
    pred = np.roll(ref, 2, axis=1)
    Image.fromarray(ref).save(tmp_path / "r" / "c.png")
    Image.fromarray(pred).save(tmp_path / "p" / "c.png")
    assert cli.main(["evaluate", str(tmp_path / "p"), str(tmp_path / "r"), "--json", str(tmp_path / "s.json")]) == 0
    m = _strict_json(tmp_path / "s.json")["metric_per_case"][0]["metrics"]["1"]
    np.testing.assert_allclose([m["HD95"], m["ASSD"]], reference_surface_metrics(pred == 1, ref == 1, (1, 1)))


def _one_line_error(capsys, argv):
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("cunet evaluate: error: "), err
    return err


def test_cli_missing_prediction_and_grid_mismatch(tissue_case, tmp_path, capsys):
    pred_dir, ref_dir, refs, preds = tissue_case
    p, r = tmp_path / "p", tmp_path / "r"
    p.mkdir()
    r.mkdir()
    for n in refs:
        _save(r / n, refs[n], _affine())
    _save(p / "a.nii.gz", preds["a.nii.gz"], _affine())
    err = _one_line_error(capsys, ["evaluate", str(p), str(r), "--json", str(tmp_path / "s.json")])
    assert "no prediction for 1 of 2 reference cases" in err and "b.nii.gz" in err
    assert not (tmp_path / "s.json").exists()
    shifted = _affine()
    shifted[0, 3] += 0.01   # 10 micrometres: more than the 1e-3 mm tolerance
    _save(p / "b.nii.gz", preds["b.nii.gz"], shifted)
    err = _one_line_error(capsys, ["evaluate", str(p), str(r)])
    assert "affine differs" in err and str(p / "b.nii.gz") in err and str(r / "b.nii.gz") in err
    _save(p / "b.nii.gz", preds["b.nii.gz"][:, :, :-1], _affine())
    err = _one_line_error(capsys, ["evaluate", str(p), str(r)])
    assert "shape (32, 32, 9) does not match" in err and str(p / "b.nii.gz") in err
    err = _one_line_error(capsys, ["evaluate", str(p), str(r), "--plot", str(tmp_path / "no" / "d.png")])
    assert "--plot: cannot write" in err
    err = _one_line_error(capsys, ["evaluate", str(p), str(r), "--labels", "1", "1"])
    assert "labels: expected distinct values, got [1, 1]" in err
    err = _one_line_error(capsys, ["evaluate", str(p), str(tmp_path / "none")])
    assert "REF_DIR: expected a folder" in err
