"""The `cunet` command.

    cunet train IMG [IMG ...] --labels LBL [LBL ...] --out MODEL.safetensors
                [--dims 2|3] [--classes K] [--epochs N] [--time-budget SECONDS]
                [--val-images ... --val-labels ...] [--device cpu|cuda]
    cunet predict MODEL INPUT OUTPUT [--postprocess] [--tta]
    cunet predict MODEL IN_DIR OUT_DIR [--num-parts K --part-id I] [--overwrite] [...]
    cunet demo [--task tissue|nuclei|denoise] [--out DIR]
    cunet export MODEL.safetensors MODEL.onnx [--opset N]
    cunet evaluate PRED_DIR REF_DIR [--json FILE] [--labels L ...] [--plot FILE.png]
    cunet info

Bad input ends the command with a one-line reason and exit status 2.

Under `mpiexec -n N` (cunet.distributed.world() finds the launcher), train runs data-
parallel with --batch-size as the global batch and only rank 0 prints and writes; predict
on a folder splits the sorted cases across the ranks (case i to rank i % N). A rank that
fails prints its error naming the rank and aborts the job, so no rank waits for ever.
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np

from cunet.reference import PRECISIONS


def _device_arrays(device):
    if device == "cuda":
        try:
            import cupy
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError
        except Exception:
            raise ValueError("--device cuda: no CUDA device found (CuPy cannot see a GPU); use --device cpu") from None


# ---- train


def _read_pairs(images, labels, num_classes=None):
    """Load and check image/label files -> lists of (C, *S) float32 images, (*S) labels, metas."""
    from cunet import data
    if len(images) != len(labels):
        raise ValueError(f"--labels: expected one label file per image ({len(images)}), got {len(labels)}")
    xs, ys, metas = [], [], []
    for ip, lp in zip(images, labels):
        img, im = data.load_image(ip)
        lab, lm = data.load_label(lp, num_classes)
        if lab.ndim not in (2, 3):
            raise ValueError(f"{lp}: expected a 2D or 3D label map (no channel or time axis), got shape "
                             f"{tuple(lab.shape)} ({lab.ndim}D)")
        img = data.channels_first(img, lab.ndim)   # (*S) or (*S, C) as stored -> (C, *S)
        data.check_pair(ip, lp, img[0], lab, im, lm)
        xs.append(img.astype(np.float32))
        ys.append(lab)
        metas.append(im)
    return xs, ys, metas


def _samples(xs, ys, dims, axis, norm_cfg, names):
    """Normalised training samples: whole images for 3D, slices of volumes for a 2D model.
    names: the label files (errors name them)."""
    from cunet import data
    out_x, out_y = [], []
    for x, y, name in zip(xs, ys, names):
        x = np.stack([data.normalize(c, norm_cfg) for c in x])
        if dims == 2 and y.ndim == 3:
            sx, sy = data.to_slices(x, y, axis=axis)
            out_x += list(sx)
            out_y += list(sy)
        elif y.ndim == dims:
            out_x.append(x)
            out_y.append(y)
        else:
            raise ValueError(f"{name}: a {dims}D model (--dims {dims}) trains on {dims}D"
                             f"{' or 3D' if dims == 2 else ''} label maps, this one is {y.ndim}D "
                             f"(shape {tuple(y.shape)})")
    return out_x, out_y


def _classes(ys, names, classes):
    """The number of classes: --classes, or max label + 1 when the labels present are the
    consecutive indices 0..K-1 (a 0/255 mask would otherwise make a 256-class model)."""
    if classes is not None:
        return classes
    present = sorted(set().union(*(np.unique(y).tolist() for y in ys)))
    k = max(2, present[-1] + 1)
    absent = len(set(range(1, present[-1])) - set(present))   # foreground classes below the largest
    if absent:
        shown = ", ".join(map(str, present[:8])) + (", ..." if len(present) > 8 else "")
        raise ValueError(f"--labels: the label maps hold the values {{{shown}}}, not the consecutive class indices "
                         f"0..{k - 1} ({absent} of those classes never occur), so the model would get {k} outputs. "
                         f"A binary mask stored as 0/{present[-1]}? Store it as 0/1 (e.g. mask > 0). Class indices "
                         f"with some classes absent from these files? Pass --classes {k}. (first file: {names[0]})")
    return k


def _positive(kind):
    """argparse type: an int (or float) > 0; the error names the option (argparse adds it)."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} > 0, "
                                             f"got {text!r}") from None
        if not v > 0 or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a finite number'} > 0, "
                                             f"got {text!r}")
        return v
    return parse


def _default_patch(samples, dims, depth):
    k = 2 ** depth
    cap = 128 if dims == 2 else 64
    sizes = np.min([s.shape[1:] for s in samples], axis=0)
    return tuple(int(max(k, min(cap, -(-int(s) // k) * k))) for s in sizes)


def cmd_train(a):
    from cunet import distributed
    comm = distributed.world()   # None unless under mpiexec with > 1 process
    with distributed.guard(comm, "cunet train: error"):
        _train(a, comm)


def _train(a, comm):
    import cunet
    from cunet import data, distributed, losses, optim, train
    root = distributed.rank(comm) == 0
    say = print if root else (lambda *args: None)
    # the arguments and files, checked on every rank: an error in them is every rank's (or names the
    # ranks that had it) and is said once; no collective in this block
    with distributed.together(comm):
        _device_arrays(a.device)
        if comm is not None and a.batch_size % comm.Get_size():
            raise ValueError(f"--batch-size: expected a multiple of the number of ranks ({comm.Get_size()}): it is "
                             f"the global batch, split across ranks; got {a.batch_size}")
        xs, ys, metas = _read_pairs(a.images, a.labels, a.classes)
        classes = _classes(ys, a.labels, a.classes)
        norm_cfg = data.default_normalization()
        tx, ty = _samples(xs, ys, a.dims, a.axis, norm_cfg, a.labels)
        patch = tuple(a.patch) if a.patch else _default_patch(tx, a.dims, a.depth)
        if len(patch) != a.dims or any(p % 2 ** a.depth for p in patch):
            raise ValueError(f"--patch: expected {a.dims} sizes, multiples of 2**depth = {2 ** a.depth}, got {patch}")
        augment = data.Augment(seed=a.seed) if a.augment else None
        src = data.PatchSampler(tx, ty, patch, a.batch_size, a.steps_per_epoch, augment=augment, seed=a.seed)
        val = None
        if a.val_images:
            vx, vy, _ = _read_pairs(a.val_images, a.val_labels or [], classes)
            vx, vy = _samples(vx, vy, a.dims, a.axis, norm_cfg, a.val_labels)
            val = data.PatchSampler(vx, vy, patch, a.batch_size, max(1, a.steps_per_epoch // 4), fg_fraction=0.5,
                                    seed=a.seed + 1, prefetch=False)
        out_ch = 1 if classes == 2 else classes
        model = cunet.UNet(dims=a.dims, in_channels=tx[0].shape[0], out_channels=out_ch, base=a.base, depth=a.depth,
                           norm="batch" if a.batchnorm else None, seed=a.seed, precision=a.precision)
        out = Path(a.out)
        run_dir = out.with_name(out.stem + "_run")
        resume = None
        if a.resume:
            resume = run_dir / "last.safetensors"
            if not resume.is_file():
                raise ValueError(f"--resume: {run_dir} holds no run to resume (no last.safetensors)")
        elif comm is not None and not a.overwrite and any((run_dir / n).exists() for n in train.RUN_FILES):
            raise ValueError(_held(run_dir))   # (one process: fit's own check, reworded below)
    if a.device == "cuda":
        if comm is not None:
            distributed.use_local_gpu(comm)   # one process per GPU: device = local rank
        model.to("cuda")
    loss = losses.DiceCE()
    opt = optim.Adam(model, lr=a.lr)
    sched = optim.PolyLR(opt, total_steps=a.epochs * len(src)) if not a.time_budget else None
    ranks = "" if comm is None else f", {comm.Get_size()} ranks x {a.batch_size // comm.Get_size()} samples"
    say(f"cunet train: {len(tx)} samples, patch {patch}, {classes} classes, {model.num_parameters():,} parameters,"
          f" device {a.device}{ranks}")
    try:
        hist = train.fit(model, loss, opt, src, val, epochs=a.epochs, schedule=sched, out=run_dir,
                         num_classes=classes, time_budget=a.time_budget, graph=a.graph, resume=resume,
                         overwrite=a.overwrite, comm=comm)
    except ValueError as e:
        if str(e).startswith("out: "):   # fit's wording names its own arguments; say it in options
            raise ValueError(_held(run_dir)) from None
        raise
    if not root:
        return
    # the best checkpoint only when this run chose one on validation data (fit cleared the
    # directory of earlier runs' files, so a best.safetensors there is this run's)
    best = run_dir / ("best.safetensors" if hist.best_epoch is not None else "last.safetensors")
    model.load_state_dict(train.load_checkpoint(best)["state"])
    extra = dict(normalization=norm_cfg, classes=classes, axis=a.axis, patch=list(patch),
                 task="segmentation", trained_on=[str(p) for p in a.images])
    train.save_checkpoint(out, model, loss=loss, extra=extra)
    say(f"cunet train: wrote {out} (weights of {best.name}; history in {run_dir})")


def _held(run_dir):
    return (f"--out: {run_dir} already holds a training run; pass --resume to continue it, "
            f"--overwrite to start over, or choose another --out")


# ---- predict


def _check_output(output, inputs):
    """OUTPUT must be a writable image path that is none of the input files: refused
    before any work (a typo would otherwise overwrite the image with its segmentation)."""
    from cunet.data import io
    io._format(output)   # a known extension, or ValueError naming the path
    parent = Path(output).resolve().parent
    if not parent.is_dir():
        raise ValueError(f"OUTPUT: {output}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"OUTPUT: {output}: the folder {parent} is not writable")
    if Path(output).is_dir():
        raise ValueError(f"OUTPUT: {output} is a folder; expected a file name")
    for name, path in inputs:
        if Path(output).exists() and Path(path).exists() and os.path.samefile(output, path) or \
                Path(output).resolve() == Path(path).resolve():
            raise ValueError(f"OUTPUT: {output} is the {name} file; refusing to overwrite it (choose another name)")


def _plan(model, path):
    """The preprocessing a model file stores (cunet train's extras), checked before use:
    errors name the file and the entry (a damaged or hand-edited file)."""
    from cunet import data
    extra = model.extra if isinstance(model.extra, dict) else {}
    try:
        norm_cfg = data.check_normalization(extra.get("normalization", data.default_normalization()))
        axis = extra.get("axis", 2)
        if axis not in (0, 1, 2) or isinstance(axis, bool):
            raise ValueError(f"axis: expected 0, 1 or 2, got {axis!r}")
        task = extra.get("task", "segmentation")
        if task not in ("segmentation", "restoration"):
            raise ValueError(f"task: expected 'segmentation' or 'restoration', got {task!r}")
        patch = extra.get("patch")
        k = 2 ** model.depth
        if model.dims == 3 and patch is not None and not (
                isinstance(patch, list) and len(patch) == 3 and
                all(isinstance(p, int) and not isinstance(p, bool) and 0 < p <= 4096 and p % k == 0 for p in patch)):
            raise ValueError(f"patch: expected 3 sizes in (0, 4096], multiples of 2**depth = {k}, got {patch!r}")
    except (TypeError, ValueError) as e:
        raise ValueError(f"MODEL: {path}: its stored preprocessing is invalid ({e})") from None
    return norm_cfg, axis, task, (tuple(patch) if model.dims == 3 and patch else None)


def cmd_predict(a):
    if Path(a.input).is_dir():
        return _predict_folder(a)
    if a.num_parts is not None or a.part_id is not None:
        raise ValueError(f"--num-parts, --part-id: split a folder of cases; INPUT {a.input} is a file")
    _check_output(a.output, [("INPUT", a.input), ("MODEL", a.model)])
    model, plan = _load_model(a)
    _predict_file(model, plan, a.input, a.output, a, progress=True)
    print(f"cunet predict: wrote {a.output}")


def _load_model(a):
    """(model on a.device, its checked preprocessing plan)."""
    import cunet
    _device_arrays(a.device)
    model = cunet.load(a.model, device=a.device)
    return model, _plan(model, a.model)


def _predict_file(model, plan, input, output, a, progress):
    """One image file -> its label map (or restored image) at `output`, written atomically."""
    from cunet import data, infer, metrics
    norm_cfg, axis, task, window = plan
    img, meta = data.load_image(input)
    img = data.channels_first(img, 2 if meta["kind"] == "image" else 3)   # PNG/TIFF 2D, NIfTI 3D (+ channels)
    x = np.stack([data.normalize(c, norm_cfg) for c in img]).astype(np.float32)
    if x.shape[0] != model.in_channels:
        raise ValueError(f"INPUT: {input} has {x.shape[0]} channels, the model expects {model.in_channels}")
    if task == "restoration":
        logits = infer.predict_logits(model, x, window=window, tta=a.tta, progress=progress)
        data.save_image(output, np.asarray(logits[0]), like=meta)
    else:
        if model.dims == 2 and x.ndim == 4:
            logits = infer.predict_volume_2d(model, x, axis=axis, tta=a.tta, progress=progress)
            labels = metrics.predict(logits[None])[0]
        else:
            labels = infer.predict_labels(model, x, window=window, tta=a.tta, progress=progress)
        if a.postprocess:
            labels = infer.postprocess(labels)
        data.save_label(output, labels, like=meta)


def _predict_folder(a):
    """Every case of IN_DIR -> OUT_DIR/<same name>. This process's cases: the sorted list,
    split by --num-parts/--part-id (case i to part i % K), then across MPI ranks (i % N).
    Existing outputs are skipped unless --overwrite; a case that fails is reported (name
    and reason on stderr) and the others still run; exit status 2 at the end if any failed."""
    from cunet import distributed
    k, i = a.num_parts, a.part_id
    if (k is None) != (i is None):
        raise ValueError(f"--num-parts, --part-id: expected both or neither, got --num-parts {k}, --part-id {i}")
    if k is not None and not 0 <= i < k:
        raise ValueError(f"--part-id: expected 0..{k - 1} (--num-parts {k}), got {i}")
    out_dir = Path(a.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"OUTPUT: {out_dir} is a file; with a folder INPUT expected a folder")
    if out_dir.exists() and out_dir.resolve() == Path(a.input).resolve():
        raise ValueError(f"OUTPUT: {out_dir} is the INPUT folder; refusing to write over the images "
                         f"(choose another folder)")
    from cunet.data import io
    names = io.image_files(a.input)
    if not names:
        raise ValueError(f"INPUT: {a.input} holds no NIfTI, PNG or TIFF files")
    comm = distributed.world()
    with distributed.guard(comm, "cunet predict: error"):
        out_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise ValueError(f"OUTPUT: the folder {out_dir} is not writable")
        mine = names if k is None else distributed.part(names, i, k)
        mine = distributed.part(mine, distributed.rank(comm), distributed.size(comm))
        model, plan = _load_model(a)
        done = skipped = 0
        failed = []
        for name in mine:
            src, dst = Path(a.input) / name, out_dir / name
            if dst.exists() and not a.overwrite:
                skipped += 1
                continue
            try:
                _check_output(str(dst), [("INPUT", src), ("MODEL", a.model)])
                _predict_file(model, plan, str(src), str(dst), a, progress=False)
            except (ValueError, TypeError, OSError, FloatingPointError) as e:   # this case only
                failed.append(name)
                why = str(e) if name in str(e) else f"{src}: {e}"   # (the readers' errors name the file)
                print(f"cunet predict: {why}", file=sys.stderr, flush=True)
                continue
            done += 1
            print(f"cunet predict: wrote {dst}", flush=True)
        counts = [done, skipped, len(failed), len(mine)]
        if comm is not None:   # totals on every rank (so every rank exits with the same status)
            distributed.sleep_barrier(comm)
            counts = [int(v) for v in distributed.allsum(comm, counts)]
    done, skipped, bad, n = counts
    part_txt = "" if k is None else f" (part {i} of {k})"
    if distributed.rank(comm) == 0:
        print(f"cunet predict: {done} written, {skipped} skipped (existing; --overwrite redoes them), {bad} failed, "
              f"of {n} cases{part_txt} in {a.input}")
    if bad:
        raise _CasesFailed(f"{bad} of {n} cases failed (named above)" if distributed.rank(comm) == 0 else None)


class _CasesFailed(ValueError):
    """Some cases of a folder failed; each was reported already (message None: say nothing more)."""


# ---- info


def cmd_info(a):
    import cunet
    from cunet._ops import core
    lines = [f"cunet {cunet.__version__}"]
    try:
        nat = core.native()
        lines.append(f"native extension: {nat.build} build ({Path(nat.__file__).name})")
    except ImportError as e:
        lines.append(f"native extension: not built ({e})")
    fams = sorted(p.stem for p in core.kernel_dir().glob("*.cuh") if p.stem not in ("portable", "cunet"))
    lines.append(f"kernel families ({len(fams)}): {', '.join(fams)} in {core.kernel_dir()}")
    lines.append(f"OpenMP threads: {os.environ.get('OMP_NUM_THREADS', os.cpu_count())}")
    try:
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
        names = [cupy.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(n)]
        lines.append(f"GPU: {', '.join(names)} (CuPy {cupy.__version__}; kernels compile with NVRTC on first use)")
    except ImportError:
        lines.append("GPU: CuPy not installed (pip install 'cunet[gpu]')")
    except Exception:
        lines.append("GPU: none found")
    print("\n".join(lines))


def cmd_export(a):
    try:
        from cunet import export
    except ImportError as e:   # onnx is an optional extra
        raise SystemExit(f"cunet export: error: {e}") from None
    export.export_file(a.model, a.output, opset=a.opset)
    print(f"cunet export: wrote {a.output} (ONNX opset {a.opset}: image -> logits)")


def cmd_evaluate(a):
    """Score PRED_DIR against REF_DIR (cunet.evaluate): the table on stdout, --json, --plot.
    Output paths are checked before the cases are read."""
    from cunet import evaluate
    for opt, path, ext in (("--json", a.json, ".json"), ("--plot", a.plot, ".png")):
        if path is None:
            continue
        if not path.lower().endswith(ext):
            raise ValueError(f"{opt}: expected a {ext} file name, got {path}")
        folder = Path(path).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ValueError(f"{opt}: cannot write {path} (the folder {folder} does not exist or is not writable)")
    summary = evaluate.evaluate_folder(a.pred_dir, a.ref_dir, labels=a.labels)
    print(evaluate.table(summary))
    if a.json:
        evaluate.write_json(summary, a.json)
        print(f"cunet evaluate: wrote {a.json}")
    if a.plot:
        evaluate.plot_dice(summary, a.plot)
        print(f"cunet evaluate: wrote {a.plot}")


def cmd_demo(a):
    from cunet import demo
    _device_arrays(a.device)
    demo.run(a.task, a.out, device=a.device, time_budget=a.time_budget, epochs=a.epochs)


def parser():
    p = argparse.ArgumentParser(prog="cunet", description="UNet segmentation with hand-written CUDA kernels")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a UNet on image/label files (NIfTI, PNG, TIFF)")
    t.add_argument("images", nargs="+", metavar="IMG")
    t.add_argument("--labels", nargs="+", required=True, metavar="LBL")
    t.add_argument("--out", required=True, metavar="MODEL.safetensors")
    t.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2: train on slices of volumes (default)")
    t.add_argument("--classes", type=_positive(int),
                   help="number of classes, background included (default: from labels)")
    t.add_argument("--epochs", type=_positive(int), default=20)
    t.add_argument("--time-budget", type=_positive(float), metavar="SECONDS",
                   help="stop after this many seconds, or after --epochs, whichever comes first")
    t.add_argument("--val-images", nargs="+", metavar="IMG")
    t.add_argument("--val-labels", nargs="+", metavar="LBL")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    t.add_argument("--axis", type=int, default=2, help="slicing axis of volumes for a 2D model")
    t.add_argument("--base", type=_positive(int), default=16)
    t.add_argument("--depth", type=_positive(int), default=4)
    t.add_argument("--patch", type=int, nargs="+", help="patch size per spatial axis")
    t.add_argument("--batch-size", type=_positive(int), default=8)
    t.add_argument("--steps-per-epoch", type=_positive(int), default=50)
    t.add_argument("--lr", type=_positive(float), default=2e-3)
    t.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=True)
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="conv GEMM operands on the GPU (float32 master weights; the CPU computes fp32)")
    t.add_argument("--graph", action="store_true", help="replay each training step as a CUDA graph (--device cuda)")
    t.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in OUT's run directory (same arguments)")
    t.add_argument("--overwrite", action="store_true",
                   help="start over when OUT's run directory holds an earlier run (its checkpoints are deleted)")
    t.set_defaults(run=cmd_train)
    q = sub.add_parser("predict", help="segment an image, or every image of a folder, with a trained model")
    q.add_argument("model", metavar="MODEL")
    q.add_argument("input", metavar="INPUT", help="an image file, or a folder of them (NIfTI, PNG, TIFF)")
    q.add_argument("output", metavar="OUTPUT", help="the output file, or for a folder INPUT the output folder")
    q.add_argument("--postprocess", action="store_true", help="keep the largest component per class, fill holes")
    q.add_argument("--tta", action="store_true", help="average over flips (test-time augmentation)")
    q.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    q.add_argument("--num-parts", type=_positive(int), metavar="K",
                   help="with a folder INPUT: split its sorted cases into K parts (job arrays, no MPI needed)")
    q.add_argument("--part-id", type=int, metavar="I", help="the part this job predicts: case i if i %% K == I")
    q.add_argument("--overwrite", action="store_true",
                   help="with a folder INPUT: predict cases whose output exists (default: skip them)")
    q.set_defaults(run=cmd_predict)
    d = sub.add_parser("demo", help="train and evaluate on real data shipped in packages")
    d.add_argument("--task", choices=("tissue", "nuclei", "denoise"), default="tissue")
    d.add_argument("--out", default="cunet-demo")
    d.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    d.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="training time (default: the task's own, a few minutes on 2 CPU cores)")
    d.add_argument("--epochs", type=int, default=None)
    d.set_defaults(run=cmd_demo)
    i = sub.add_parser("info", help="version, build, kernels, GPU")
    i.set_defaults(run=cmd_info)
    e = sub.add_parser("export", help="write a trained model as ONNX (for ONNX Runtime, TensorRT, ...)")
    e.add_argument("model", metavar="MODEL.safetensors")
    e.add_argument("output", metavar="MODEL.onnx")
    e.add_argument("--opset", type=int, default=17, help="ONNX opset, 13 or later (default 17)")
    e.set_defaults(run=cmd_export)
    v = sub.add_parser("evaluate", help="score predicted label maps against references (Dice, IoU, HD95, ASSD)")
    v.add_argument("pred_dir", metavar="PRED_DIR", help="predicted label maps, same file names as in REF_DIR")
    v.add_argument("ref_dir", metavar="REF_DIR", help="reference label maps (NIfTI, PNG, TIFF)")
    v.add_argument("--json", metavar="FILE", help="write the scores as nnU-Net v2's summary.json layout")
    v.add_argument("--labels", type=int, nargs="+", metavar="L",
                   help="classes to score (default: every foreground label in some reference or prediction)")
    v.add_argument("--plot", metavar="FILE.png", help="write a box plot of the per-case Dice of each class")
    v.set_defaults(run=cmd_evaluate)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, OSError, FloatingPointError) as e:   # OSError: missing, unwritable files
        if not (isinstance(e, _CasesFailed) and e.args[0] is None):
            print(f"cunet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cunet {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
