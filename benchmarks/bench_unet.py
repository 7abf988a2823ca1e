"""A whole UNet, forward pass and training step (forward, loss, backward, Adam), cunet
against PyTorch (NCHW and channels_last) on the CPU, interleaved in one run.

    python benchmarks/bench_unet.py [--config 2d-128 2d-256 3d-64] [--steps 12] [--threads 1 2]

UNet as in the CPU-speed issue: two conv3x3+ReLU per level, maxpool, convT 2x2 up,
concat [up, skip], 1x1 head, conv bias; binary configs: 1 logit + BCE, 3-class: CE; Adam.
Before timing, PyTorch gets cunet's weights (positional state_dict) and both must agree
on the logits and on the parameters after one training step. Times are medians of
--steps steps after 2 warm-up steps, the three contenders taking turns step by step.
Peak resident memory is measured in a fresh process per contender (same config, 3 steps).
Each --threads value runs in its own process with OMP_NUM_THREADS set.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

# name: (dims, batch, size, base, depth, classes)
CONFIGS = {"2d-128": (2, 8, 128, 16, 4, 2), "2d-256": (2, 4, 256, 32, 4, 2), "3d-64": (3, 2, 64, 8, 3, 3)}
CEILING = 350.0   # GFLOP/s fp32, 2 cores x AVX-512 FMA (measured on the development machines)


def forward_gflop(dims, n, size, base, depth, classes):
    """Multiply-adds x 2 of every conv/convT of the UNet (pooling, concat, ReLU excluded)."""
    out = 1 if classes == 2 else classes
    conv = lambda ci, co, s, k: 2.0 * n * ci * co * k ** dims * s ** dims
    total, ci, c, s = 0.0, 1, base, size
    for _ in range(depth):
        total += conv(ci, c, s, 3) + conv(c, c, s, 3)
        ci, c, s = c, 2 * c, s // 2
    total += conv(ci, c, s, 3) + conv(c, c, s, 3)
    for _ in range(depth):
        total += conv(c, c // 2, s, 2)   # convT 2x2 stride 2: each input voxel meets 2^d taps
        c, s = c // 2, 2 * s
        total += conv(2 * c, c, s, 3) + conv(c, c, s, 3)
    return (total + conv(base, out, size, 1)) / 1e9


def make_data(cfg, seed=0):
    dims, n, size, base, depth, classes = cfg
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1) + (size,) * dims).astype(np.float32)
    labels = rng.integers(0, classes, (n,) + (size,) * dims)
    return x, labels


def cunet_contender(cfg):
    import cunet
    from cunet import losses, optim
    dims, n, size, base, depth, classes = cfg
    model = cunet.UNet(dims=dims, in_channels=1, out_channels=1 if classes == 2 else classes, base=base,
                       depth=depth, seed=0)
    loss = losses.BCE() if classes == 2 else losses.CE()
    opt = optim.Adam(model, lr=1e-3)
    x, labels = make_data(cfg)
    target = labels[:, None].astype(np.float32) if classes == 2 else labels

    def step():
        opt.zero_grad()
        _, d = loss(model.forward(x), target)
        model.backward(d)
        opt.step()

    return model, (lambda: model.forward(x)), step


def torch_contender(cfg, channels_last, weights=None):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    dims, n, size, base, depth, classes = cfg
    Conv, ConvT, pool = ((nn.Conv2d, nn.ConvTranspose2d, F.max_pool2d) if dims == 2 else
                         (nn.Conv3d, nn.ConvTranspose3d, F.max_pool3d))
    out = 1 if classes == 2 else classes

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.up, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            ci, c = 1, base
            for _ in range(depth):
                self.enc.append(nn.ModuleList([Conv(ci, c, 3, padding=1), Conv(c, c, 3, padding=1)]))
                ci, c = c, 2 * c
            self.bottom = nn.ModuleList([Conv(ci, c, 3, padding=1), Conv(c, c, 3, padding=1)])
            for _ in range(depth):
                self.up.append(ConvT(c, c // 2, 2, stride=2))
                c //= 2
                self.dec.append(nn.ModuleList([Conv(2 * c, c, 3, padding=1), Conv(c, c, 3, padding=1)]))
            self.head = Conv(base, out, 1)

        def forward(self, x):
            block = lambda b, h: F.relu(b[1](F.relu(b[0](h))))
            skips = []
            for b in self.enc:
                x = block(b, x)
                skips.append(x)
                x = pool(x, 2)
            x = block(self.bottom, x)
            for up, b, s in zip(self.up, self.dec, reversed(skips)):
                x = block(b, torch.cat([up(x), s], 1))
            return self.head(x)

        def ordered(self):
            """Parameters in forward order (cunet's state_dict order)."""
            mods = [m for b in self.enc for m in b] + list(self.bottom)
            for up, b in zip(self.up, self.dec):
                mods += [up] + list(b)
            return [p for m in mods + [self.head] for p in (m.weight, m.bias)]

    model = UNet()
    if weights is not None:
        with torch.no_grad():
            for p, w in zip(model.ordered(), weights):
                p.copy_(torch.from_numpy(np.ascontiguousarray(w)))
    fmt = (torch.channels_last if dims == 2 else torch.channels_last_3d) if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x, labels = make_data(cfg)
    xt = torch.from_numpy(x).contiguous(memory_format=fmt)
    if classes == 2:
        target = torch.from_numpy(labels[:, None].astype(np.float32))
        crit = nn.BCEWithLogitsLoss()
    else:
        target = torch.from_numpy(labels)
        crit = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def forward():
        with torch.no_grad():
            return model(xt)

    def step():
        opt.zero_grad(set_to_none=True)
        crit(model(xt), target).backward()
        opt.step()

    return model, forward, step


def validate(cfg):
    """PyTorch with cunet's weights: same logits, same loss, same parameter gradients."""
    import torch
    from cunet import losses
    model, fwd, _ = cunet_contender(cfg)
    tm, tfwd, _ = torch_contender(cfg, False, list(model.state_dict().values()))
    x, labels = make_data(cfg)
    a = model.forward(x)
    xt = torch.from_numpy(x)
    b = tm(xt)
    err = np.abs(a - b.detach().numpy()).max() / (np.abs(a).max() + 1e-6)
    if not err < 1e-4:
        raise SystemExit(f"{cfg}: cunet and PyTorch logits differ (relative {err:.1e})")
    if cfg[-1] == 2:
        value, d = losses.BCE()(a, labels[:, None].astype(np.float32))
        tl = torch.nn.functional.binary_cross_entropy_with_logits(b, torch.from_numpy(labels[:, None]).float())
    else:
        value, d = losses.CE()(a, labels)
        tl = torch.nn.functional.cross_entropy(b, torch.from_numpy(labels))
    model.zero_grad()
    model.backward(d)
    tl.backward()
    if abs(value - tl.item()) > 1e-5 * abs(tl.item()):
        raise SystemExit(f"{cfg}: loss {value} != PyTorch {tl.item()}")
    for (name, g), p in zip(_grads(model).items(), tm.ordered()):
        want = p.grad.numpy()
        # both sides sum ~10^5-10^6 float32 terms of both signs (random labels): compare in norm
        err = np.linalg.norm(g - want) / (np.linalg.norm(want) + 1e-12)
        if not err <= 2e-3:
            raise SystemExit(f"{cfg}: gradient of {name} differs by {err:.1e} (relative, L2)")


def _grads(model):
    """name -> gradient view, in state_dict order (parameters only)."""
    out = {}
    for prefix, layer in model.leaves:
        for spec in layer.specs():
            if not spec.buffer:
                out[f"{prefix}.{spec.name}"] = layer.g[spec.name]
    return out


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_timing(names, steps):
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    rows = []
    for name in names:
        cfg = CONFIGS[name]
        validate(cfg)
        contenders = {"cunet": cunet_contender(cfg), "torch": torch_contender(cfg, False),
                      "torch-cl": torch_contender(cfg, True)}
        times = {k: {"fwd": [], "train": []} for k in contenders}
        for i in range(steps + 2):
            for k, (_, fwd, step) in contenders.items():
                tf, ts = timed(fwd), timed(step)
                if i >= 2:
                    times[k]["fwd"].append(tf)
                    times[k]["train"].append(ts)
        med = {k: {p: float(np.median(v)) for p, v in t.items()} for k, t in times.items()}
        rows.append(dict(config=name, gflop=forward_gflop(*cfg), ms=med))
    return rows


def peak_rss(name, who, steps=3):
    """Peak resident set (MiB) of a fresh process that builds one contender and trains `steps` steps."""
    code = (f"import sys, resource; sys.path.insert(0, {HERE!r}); import bench_unet as b; cfg = b.CONFIGS[{name!r}]\n"
            f"m, f, s = b.cunet_contender(cfg) if {who!r} == 'cunet' else b.torch_contender(cfg, {who!r} == 'torch-cl')\n"
            f"[s() for _ in range({steps})]\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def table(rows, threads, mem):
    print(f"\n### {threads} thread(s)  (ceiling ~{CEILING:.0f} GFLOP/s on 2 cores; 1 thread ~{CEILING / 2:.0f})")
    print("| config | pass | cunet ms | GFLOP/s | % ceiling | PyTorch ms | PyTorch-CL ms | cunet / best PyTorch |"
          + (" peak MiB cunet / torch / torch-CL |" if mem else ""))
    print("|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if mem else ""))
    ceiling = CEILING * min(threads, 2) / 2
    for r in rows:
        for p, factor in (("fwd", 1), ("train", 3)):
            c, t, cl = (r["ms"][k][p] * 1e3 for k in ("cunet", "torch", "torch-cl"))
            rate = factor * r["gflop"] / (c / 1e3)
            m = mem.get(r["config"]) if mem else None
            extra = f" {m['cunet']:.0f} / {m['torch']:.0f} / {m['torch-cl']:.0f} |" if m and p == "train" else (
                " |" if mem else "")
            print(f"| {r['config']} | {p} | {c:.1f} | {rate:.0f} | {100 * rate / ceiling:.0f}% | {t:.1f} | {cl:.1f} | "
                  f"{c / min(t, cl):.2f} |{extra}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--json", help=argparse.SUPPRESS)   # child mode: write rows here
    args = ap.parse_args()
    if args.json:
        json.dump(run_timing(args.config, args.steps), open(args.json, "w"))
        return
    mem = {} if args.no_memory else {
        name: {who: peak_rss(name, who) for who in ("cunet", "torch", "torch-cl")} for name in args.config}
    for threads in args.threads:
        path = f"/tmp/bench_unet_{os.getpid()}_{threads}.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, __file__, "--config", *args.config, "--steps", str(args.steps), "--json", path],
                       env=env, check=True)
        table(json.load(open(path)), threads, mem)
        os.unlink(path)


if __name__ == "__main__":
    main()
