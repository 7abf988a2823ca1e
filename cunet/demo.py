"""`cunet demo`: train on real data shipped in packages, on the CPU in a few minutes, and
show the result.

    tissue   2D UNet on axial slices of the MNI ICBM152 template: background/CSF/GM/WM;
             validation on a held-out superior/inferior slab
    nuclei   2D binary UNet on Data Science Bowl 2018 nuclei, validation on held-out tiles
    denoise  Noise2Noise: a 2D UNet trained from two independent noisy copies of T1 slices,
             PSNR against the clean slices, the noisy input and a Gaussian-filter baseline

Every task trains on its training part and reports on the held-out part with the last
step's weights: the held-out part draws the learning curve but chooses nothing (no best
epoch is picked on it), so the printed scores are not selected ones.

Every task writes to --out: model.safetensors, the prediction (NIfTI on the template grid,
or PNG), overlay.png (image / ground truth / prediction), learning_curve.png,
metrics.json; and prints the held-out scores.
"""
import json
import shutil
import time
from pathlib import Path

import numpy as np

DEFAULT_BUDGET = {"tissue": 240.0, "nuclei": 150.0, "denoise": 150.0}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _seconds_per_step(model, loss, src):
    """One untimed and one timed forward/backward on a training batch (weights unchanged)."""
    x, y = next(iter(src.batches(0)))
    x = model.xp.asarray(x)
    y = model.xp.asarray(y)
    for _ in range(2):
        t = time.perf_counter()
        model.backward(loss(model.forward(x), y)[1], input_grad=False)
        model.zero_grad()
    return time.perf_counter() - t


def _train(model, loss, src, val, out, device, time_budget, epochs, num_classes, lr):
    """Adam with nnU-Net's polynomial decay over the run: `epochs` epochs, or as many steps
    as fit in `time_budget` seconds (estimated from a timed step). The model keeps the last
    step's weights: `val` is the data the demo reports on, so it draws the learning curve
    but chooses nothing (picking the best epoch on it would make the reported score a
    selected one)."""
    from cunet import optim, train
    if device == "cuda":
        model.to("cuda")
    opt = optim.Adam(model, lr=lr)
    total = epochs * len(src) if epochs else max(1, int(time_budget / _seconds_per_step(model, loss, src)))
    sched = optim.PolyLR(opt, total_steps=total)
    t0 = time.perf_counter()
    hist = train.fit(model, loss, opt, src, val, epochs=epochs, schedule=sched, out=out / "run",
                     num_classes=num_classes, time_budget=None if epochs else time_budget, overwrite=True)
    if (out / "run" / "history.png").exists():
        shutil.copy(out / "run" / "history.png", out / "learning_curve.png")
    return hist, time.perf_counter() - t0


def _report(out, scores, classes):
    lines = []
    for k, name in enumerate(classes):
        lines.append(f"  {name:<12} Dice {scores['dice'][k]:.3f}   IoU {scores['iou'][k]:.3f}")
    print("held-out per-class scores:\n" + "\n".join(lines))
    print(f"  mean foreground Dice {scores['mean_dice']:.3f}, IoU {scores['mean_iou']:.3f}")


def _overlay(path, image, truth, pred, title, classes):
    plt = _plt()
    from matplotlib.colors import ListedColormap
    cmap = ListedColormap(["none", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"][:len(classes)])
    fig, ax = plt.subplots(1, 3, figsize=(12, 4.4))
    for a, lab, name in zip(ax, (None, truth, pred), ("image", "ground truth", "prediction")):
        a.imshow(image.T if image.ndim == 2 else image, cmap="gray", origin="lower")
        if lab is not None:
            a.imshow(np.ma.masked_equal(lab.T, 0), cmap=cmap, vmin=0, vmax=len(classes) - 1, alpha=0.55,
                     origin="lower", interpolation="nearest")
        a.set_title(name)
        a.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tissue(out, device, time_budget, epochs):
    import cunet
    from cunet import data, infer, losses, metrics, train
    from cunet.data import datasets
    d = datasets.tissue()
    norm = data.default_normalization()
    x = data.normalize(d["image"][0], norm)[None].astype(np.float32)     # (1, X, Y, Z)
    sx, sy = data.to_slices(x, d["label"], axis=2)                       # (Z, 1, X, Y), (Z, X, Y)
    tr, va = d["train_slices"], d["val_slices"]
    patch = (192, 224)
    src = data.PatchSampler(list(sx[tr]), list(sy[tr]), patch, 8, 25, fg_fraction=0.0,
                            augment=data.Augment(rotate=10.0, elastic=None, seed=0), seed=0)
    val = data.PatchSampler(list(sx[va]), list(sy[va]), patch, 8, 4, fg_fraction=0.0, seed=1, prefetch=False)
    model = cunet.UNet(dims=2, in_channels=1, out_channels=4, base=16, depth=4, norm="batch", seed=0)
    print(f"tissue: {len(tr)} training slices, {len(va)} held-out slices (z {va[0]}..{va[-1]}), "
          f"{model.num_parameters():,} parameters")
    loss = losses.DiceCE()
    hist, secs = _train(model, loss, src, val, out, device, time_budget, epochs, 4, 3e-3)
    model.eval()
    logits = infer.predict_volume_2d(model, x, axis=2, progress=True)     # (4, X, Y, Z)
    labels = metrics.predict(logits[None])[0]   # NumPy in, NumPy out: the image never left the host
    data.save_label(out / "prediction.nii.gz", labels, like=dict(kind="nifti", affine=d["affine"], header=d["header"]))
    train.save_checkpoint(out / "model.safetensors", model, loss=loss,
                          extra=dict(normalization=norm, classes=4, axis=2, patch=list(patch), task="segmentation",
                                     class_names=list(d["classes"])))
    scores = metrics.summary(labels[:, :, va], d["label"][:, :, va], 4)
    z = int(va[len(va) // 2])
    _overlay(out / "overlay.png", x[0, :, :, z], d["label"][:, :, z], labels[:, :, z],
             f"MNI ICBM152 axial slice z={z} (held out): Dice {scores['mean_dice']:.3f}", d["classes"])
    return scores, d["classes"], secs


def nuclei(out, device, time_budget, epochs):
    import cunet
    from cunet import data, infer, losses, metrics, train
    from cunet.data import datasets
    d = datasets.nuclei()
    src = data.PatchSampler(list(d["train_images"]), list(d["train_labels"]), (128, 128), 8, 20, fg_fraction=0.0,
                            augment=data.Augment(seed=0), seed=0)
    val = data.PatchSampler(list(d["val_images"]), list(d["val_labels"]), (128, 128), 4, 1, fg_fraction=0.0, seed=1,
                            prefetch=False)
    model = cunet.UNet(dims=2, in_channels=1, out_channels=1, base=16, depth=3, norm="batch", seed=0)
    print(f"nuclei: {len(d['train_images'])} training tiles, {len(d['val_images'])} held-out tiles")
    loss = losses.DiceCE()
    hist, secs = _train(model, loss, src, val, out, device, time_budget, epochs, 2, 3e-3)
    model.eval()
    labels = infer.predict_labels(model, d["image"][None].astype(np.float32))
    w = d["image"].shape[1] - d["val_images"].shape[-1]   # held-out columns
    scores = metrics.summary(labels[:, w:], d["label"][:, w:], 2)
    from PIL import Image
    Image.fromarray((labels * 255).astype(np.uint8)).save(out / "prediction.png")
    train.save_checkpoint(out / "model.safetensors", model, loss=loss,
                          extra=dict(normalization={"method": "none"}, classes=2, task="segmentation"))
    _overlay(out / "overlay.png", d["image"].T, d["label"].T, labels.T,
             f"DSB 2018 nuclei (columns >= {w} held out): Dice {scores['dice'][1]:.3f}", ("background", "nucleus"))
    return scores, ("background", "nucleus"), secs


def denoise(out, device, time_budget, epochs):
    import cunet
    from scipy.ndimage import gaussian_filter
    from cunet import infer, losses, train
    from cunet.data import datasets
    d = datasets.denoise()
    src = train.ArrayBatches(d["train_noisy"], d["train_noisy2"], batch_size=8, seed=0)   # Noise2Noise pairs
    val = train.ArrayBatches(d["val_noisy"], d["val_noisy2"], batch_size=8, shuffle=False)
    model = cunet.UNet(dims=2, in_channels=1, out_channels=1, base=8, depth=3, norm="batch", seed=0)
    print(f"denoise: Noise2Noise on {len(d['train_noisy'])} slice pairs, noise sigma {d['noise']}")
    loss = losses.MSE()
    hist, secs = _train(model, loss, src, val, out, device, time_budget, epochs, None, 3e-3)
    model.eval()
    pred = np.stack([np.asarray(infer.predict_logits(model, x)) for x in d["val_noisy"]])
    # the baseline's sigma is chosen on the training slices, against the clean images
    sigmas = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
    best = max(sigmas, key=lambda s: datasets.psnr(gaussian_filter(d["train_noisy"][:16], (0, 0, s, s)),
                                                  d["train_clean"][:16]))
    base = gaussian_filter(d["val_noisy"], (0, 0, best, best))
    scores = dict(psnr_noisy=datasets.psnr(d["val_noisy"], d["val_clean"]),
                  psnr_gaussian=datasets.psnr(base, d["val_clean"]), gaussian_sigma=best,
                  psnr_unet=datasets.psnr(pred, d["val_clean"]))
    train.save_checkpoint(out / "model.safetensors", model, loss=loss,
                          extra=dict(normalization={"method": "none"}, task="restoration"))
    plt = _plt()
    k = len(pred) // 2
    fig, ax = plt.subplots(1, 4, figsize=(14, 4.4))
    for a, im, name in zip(ax, (d["val_clean"][k, 0], d["val_noisy"][k, 0], base[k, 0], pred[k, 0]),
                           ("clean", f"noisy {scores['psnr_noisy']:.1f} dB",
                            f"Gaussian s={best} {scores['psnr_gaussian']:.1f} dB",
                            f"UNet (N2N) {scores['psnr_unet']:.1f} dB")):
        a.imshow(im.T, cmap="gray", origin="lower", vmin=0, vmax=1)
        a.set_title(name)
        a.axis("off")
    fig.tight_layout()
    fig.savefig(out / "overlay.png", dpi=110)
    plt.close(fig)
    np.save(out / "prediction.npy", pred)
    return scores, None, secs


def run(task, out, device="cpu", time_budget=None, epochs=None):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    budget = DEFAULT_BUDGET[task] if time_budget is None and epochs is None else time_budget
    scores, classes, secs = {"tissue": tissue, "nuclei": nuclei, "denoise": denoise}[task](out, device, budget, epochs)
    if classes is not None:
        _report(out, scores, classes)
    else:
        print(f"held-out PSNR: noisy input {scores['psnr_noisy']:.2f} dB, Gaussian filter (sigma "
              f"{scores['gaussian_sigma']}) {scores['psnr_gaussian']:.2f} dB, UNet {scores['psnr_unet']:.2f} dB")
    (out / "metrics.json").write_text(json.dumps(dict(task=task, train_seconds=secs, **scores), indent=1,
                                                 default=float))
    print(f"trained {secs:.0f} s; wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")
