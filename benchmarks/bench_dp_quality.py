"""Does `mpiexec -n N cunet train` train as well as one process on the same budget? On
real MRI, through the command a user runs, measured on a slab no run trains on.

    python benchmarks/bench_dp_quality.py [--epochs 6] [--steps-per-epoch 25] [--ranks 2]
                                          [--threads 2] [--batchnorm both|on|off] [--out DIR]

Data: cunet.data.datasets.tissue() (MNI ICBM152 2009a T1, background/CSF/GM/WM), split
into axial slabs as the tissue demo does: the inferior and superior training slabs are
written as two NIfTI pairs, the held-out slab (the demo's validation slab, with a gap of 3
slices either side that belongs to nobody) as a third. No validation files are passed, so
each run's model is its last checkpoint and nothing is chosen on the held-out slab.

Runs, the same `cunet train` arguments each time (2D, base 16, depth 4, --batch-size 8,
--epochs E, --steps-per-epoch S, the command's default Adam lr, PolyLR and augmentation,
seed 0): once as one process with OMP_NUM_THREADS=--threads and once under the
environment's `mpiexec -n N` with --threads/N threads per rank, with batch norm on (the
README's recipe; statistics per rank, so each rank normalises over its 8/N samples) and
off. Each model then runs `cunet predict` on the held-out slab (one process), and
cunet.metrics.summary gives per-class Dice against its labels.

Checked for every run: exactly one MODEL file and one MODEL_run directory in the run's
folder, the run directory holding only last.safetensors, history.json and history.png (no
best: no validation; no leftover temporaries), its checkpoint saying it was trained on N
ranks, and one 'wrote' line on stdout (rank 0 alone prints and writes).

Wall time is the whole `cunet train` command (start-up, reading and slicing the files,
training); 'train s' is the sum of the epochs' times from history.json.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
CLASSES = ("background", "CSF", "GM", "WM")


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    names = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")]
    return names[0] if names else "unknown CPU"


def write_data(folder):
    """Training slabs (inferior, superior) and the held-out slab as NIfTI pairs on the
    template's grid (each slab's affine shifted to its first slice). -> (train images,
    train labels, held-out image, held-out label map (X, Y, n) int64, z range)."""
    from cunet import data
    from cunet.data import datasets
    d = datasets.tissue()
    tr, va = d["train_slices"], d["val_slices"]
    breaks = np.where(np.diff(tr) > 1)[0]
    assert len(breaks) == 1, "expected two training slabs around the held-out one"
    slabs = {"train_inferior": tr[:breaks[0] + 1], "train_superior": tr[breaks[0] + 1:], "heldout": va}
    assert not set(va) & set(tr)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, zs in slabs.items():
        z0, z1 = int(zs[0]), int(zs[-1]) + 1
        assert np.array_equal(zs, np.arange(z0, z1))
        affine = d["affine"].copy()
        affine[:3, 3] = d["affine"][:3, :3] @ np.array([0.0, 0.0, z0]) + d["affine"][:3, 3]
        like = dict(kind="nifti", affine=affine, header=d["header"])
        img, lab = folder / f"{name}_t1.nii.gz", folder / f"{name}_seg.nii.gz"
        data.save_image(img, d["image"][0, :, :, z0:z1], like=like)
        data.save_label(lab, d["label"][:, :, z0:z1], like=like)
        paths[name] = (img, lab, (z0, z1))
    train_imgs = [paths[k][0] for k in ("train_inferior", "train_superior")]
    train_labs = [paths[k][1] for k in ("train_inferior", "train_superior")]
    img, lab, zr = paths["heldout"]
    return train_imgs, train_labs, img, d["label"][:, :, zr[0]:zr[1]], zr, {k: len(v) for k, v in slabs.items()}


def run_one(folder, ranks, threads, batchnorm, a, train_imgs, train_labs, held_img, held_lab):
    """One `cunet train` (under mpiexec when ranks > 1), then `cunet predict` on the held-out slab."""
    from cunet import data, metrics, train
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model = folder / "model.safetensors"
    cmd = [str(BIN / "cunet"), "train", *map(str, train_imgs), "--labels", *map(str, train_labs),
           "--out", str(model), "--dims", "2", "--base", "16", "--depth", "4", "--batch-size", "8",
           "--epochs", str(a.epochs), "--steps-per-epoch", str(a.steps_per_epoch), "--seed", "0",
           "--batchnorm" if batchnorm else "--no-batchnorm"]
    if ranks > 1:
        cmd = [str(BIN / "mpiexec"), "-n", str(ranks)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="passive", PYTHONUNBUFFERED="1")
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"bench_dp_quality: {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    # one set of checkpoints, written by rank 0
    run_dir = folder / "model_run"
    top = sorted(q.name for q in folder.iterdir())
    inside = sorted(q.name for q in run_dir.iterdir()) if run_dir.is_dir() else None
    state = train.load_checkpoint(run_dir / "last.safetensors")["train"]
    wrote = sum(ln.startswith("cunet train: wrote") for ln in p.stdout.splitlines())
    ok = (top == ["model.safetensors", "model_run"] and inside == ["history.json", "history.png", "last.safetensors"]
          and int(state.get("ranks", 1)) == ranks and wrote == 1)
    hist = json.loads((run_dir / "history.json").read_text())
    records = hist["records"] if isinstance(hist, dict) and "records" in hist else hist
    last = records[-1]
    pred_path = folder / "heldout_pred.nii.gz"
    q = subprocess.run([str(BIN / "cunet"), "predict", str(model), str(held_img), str(pred_path)],
                       capture_output=True, text=True, env=dict(env, OMP_NUM_THREADS=str(a.threads)))
    if q.returncode:
        sys.exit(f"bench_dp_quality: cunet predict failed ({q.returncode}):\n{q.stderr[-4000:]}")
    pred, _ = data.load_label(pred_path, len(CLASSES))
    scores = metrics.summary(np.asarray(pred), held_lab, len(CLASSES))
    return dict(ranks=ranks, threads=threads, batchnorm=batchnorm, wall=wall, train_s=sum(r["time"] for r in records),
                steps=last["step"], loss=last["train_loss"], dice=scores["dice"], mean=scores["mean_dice"],
                files=dict(ok=ok, top=top, run_dir=inside, ranks_in_checkpoint=state.get("ranks"), wrote_lines=wrote))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps-per-epoch", type=int, default=25)
    p.add_argument("--ranks", type=int, default=2, help="processes of the mpiexec run (divides 8, the batch)")
    p.add_argument("--threads", type=int, default=2, help="cores: the 1-process run's threads, split over the ranks")
    p.add_argument("--batchnorm", choices=("both", "on", "off"), default="both")
    p.add_argument("--out", default="/tmp/bench_dp_quality")
    a = p.parse_args()
    if 8 % a.ranks or a.ranks < 2:
        p.error("--ranks: expected a divisor of the batch size 8, at least 2")
    out = Path(a.out)
    train_imgs, train_labs, held_img, held_lab, zr, counts = write_data(out / "data")
    print(f"bench_dp_quality: {cpu_name()}, {os.cpu_count()} cores; MNI ICBM152 tissue, {counts['train_inferior']} + "
          f"{counts['train_superior']} training slices, held-out slab z {zr[0]}..{zr[1] - 1} ({counts['heldout']} "
          f"slices, 3-slice gaps); cunet train --dims 2 --base 16 --depth 4 --batch-size 8 --epochs {a.epochs} "
          f"--steps-per-epoch {a.steps_per_epoch} (no validation: last checkpoint); Dice of cunet predict on the "
          f"held-out slab", flush=True)
    rows = []
    for bn in {"both": (True, False), "on": (True,), "off": (False,)}[a.batchnorm]:
        for ranks in (1, a.ranks):
            threads = a.threads if ranks == 1 else max(1, a.threads // ranks)
            tag = f"{'bn' if bn else 'nobn'}_{ranks}r"
            rows.append(run_one(out / tag, ranks, threads, bn, a, train_imgs, train_labs, held_img, held_lab))
            r = rows[-1]
            print(f"  done {tag}: {r['wall']:.0f} s, mean foreground Dice {r['mean']:.3f}", flush=True)
    head = (f"{'run':<24}{'batch norm':>11}{'wall s':>8}{'train s':>9}{'steps':>7}{'loss':>8}"
            + "".join(f"{c:>8}" for c in CLASSES[1:]) + f"{'mean fg':>9}  checkpoints")
    print(head)
    for r in rows:
        name = "1 process" if r["ranks"] == 1 else f"mpiexec -n {r['ranks']}"
        name += f" x {r['threads']} thr"
        f = r["files"]
        files = "one set, rank 0" if f["ok"] else f"UNEXPECTED {f}"
        print(f"{name:<24}{'on' if r['batchnorm'] else 'off':>11}{r['wall']:>8.0f}{r['train_s']:>9.0f}{r['steps']:>7}"
              f"{r['loss']:>8.4f}" + "".join(f"{v:>8.3f}" for v in r["dice"][1:]) + f"{r['mean']:>9.3f}  {files}")
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=float))
    if not all(r["files"]["ok"] for r in rows):
        sys.exit("bench_dp_quality: a run did not write exactly one set of checkpoints (above)")


if __name__ == "__main__":
    main()
