"""A whole UNet, forward pass and training step (forward, loss, backward, Adam), cunet
against PyTorch (NCHW and channels_last) on the CPU, interleaved in one run.

    python benchmarks/bench_unet.py [--config 2d-128 2d-256 3d-64] [--steps 12] [--threads 1 2]
    python benchmarks/bench_unet.py --device cuda [--config gpu-2d-256 gpu-3d-128] [--steps 20]

UNet as in the CPU-speed issue: two conv3x3+ReLU per level, maxpool, convT 2x2 up,
concat [up, skip], 1x1 head, conv bias; binary configs: 1 logit + BCE, 3-class: CE; Adam.
Before timing, PyTorch gets cunet's weights (positional state_dict) and both must agree
on the logits and on the parameters after one training step. Times are medians of
--steps steps after 2 warm-up steps, the three contenders taking turns step by step.
Peak resident memory is measured in a fresh process per contender (same config, 3 steps).
Each --threads value runs in its own process with OMP_NUM_THREADS set.

--device cuda (the GPU-speed issue): cunet on CuPy arrays in each precision (fp32, tf32,
bf16 operands with fp32 master weights), eager and graph-captured (cunet.train.TrainStep with
graph=True), against PyTorch eager on cuDNN (its default TF32 convolutions, and bf16 autocast) when a
CUDA PyTorch is installed; times from CUDA events, medians. Then the 64-256-channel conv
layers alone (forward) against the measured tensor-core matmul rate of the same precision.
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
GPU_CONFIGS = {"gpu-2d-256": (2, 32, 256, 32, 4, 2), "gpu-3d-128": (3, 2, 128, 16, 4, 2)}
CEILING = 350.0   # GFLOP/s fp32 of the Intel development machines (2 cores, AVX-512): bench_ops' ceiling and
                  # the fallback when a run has no measured sgemm (bench_unet measures its own)


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


def cunet_contender(cfg, device="cpu", precision="fp32"):
    import cunet
    from cunet import losses, optim
    dims, n, size, base, depth, classes = cfg
    model = cunet.UNet(dims=dims, in_channels=1, out_channels=1 if classes == 2 else classes, base=base,
                       depth=depth, seed=0, **({} if precision == "fp32" else {"precision": precision}))
    loss = losses.BCE() if classes == 2 else losses.CE()
    x, labels = make_data(cfg)
    target = labels[:, None].astype(np.float32) if classes == 2 else labels
    if device == "cuda":
        import cupy
        model.to("cuda")
        x, target = cupy.asarray(x), cupy.asarray(target)
    opt = optim.Adam(model, lr=1e-3)

    def step():
        opt.zero_grad()
        _, d = loss(model.forward(x), target)
        model.backward(d, input_grad=False)   # as cunet.train does; PyTorch's input needs no grad either
        opt.step()

    if device == "cuda":   # the same step captured once into a CUDA graph and replayed (cunet.train.TrainStep)
        from cunet import train
        graph = train.TrainStep(model, loss, opt, x.shape, target.shape, target.dtype, graph=True)
        calls = iter(range(1 << 62))
        step.captured = lambda: graph(x, target, next(calls))
    return model, (lambda: model.forward(x)), step


def torch_contender(cfg, channels_last, weights=None, device="cpu", autocast=None):
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
    model = model.to(device=device, memory_format=fmt)
    x, labels = make_data(cfg)
    xt = torch.from_numpy(x).to(device).contiguous(memory_format=fmt)
    if classes == 2:
        target = torch.from_numpy(labels[:, None].astype(np.float32)).to(device)
        crit = nn.BCEWithLogitsLoss()
    else:
        target = torch.from_numpy(labels).to(device)
        crit = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    import contextlib
    cast = (lambda: torch.autocast(device, dtype=autocast)) if autocast is not None else contextlib.nullcontext

    def forward():
        with torch.no_grad(), cast():
            return model(xt)

    def step():
        opt.zero_grad(set_to_none=True)
        with cast():
            out = model(xt)
        crit(out.float(), target).backward()
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


def cpu_line():
    """The CPU model and the ISA that matters here, from /proc/cpuinfo."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return "CPU: unknown"
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "unknown")
    flags = set(next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), []))
    isa = "AVX-512" if "avx512f" in flags else "AVX2 + FMA (no AVX-512)" if "avx2" in flags else "SSE only"
    return f"CPU: {model}, {os.cpu_count()} cores visible, {isa}"


def sgemm_rate():
    """GFLOP/s of a 2048^2 float32 matmul (PyTorch, this process's threads): the measured ceiling."""
    import torch
    a = torch.randn(2048, 2048)
    a @ a
    return 2 * 2048 ** 3 / min(timed(lambda: a @ a) for _ in range(5)) / 1e9


def run_timing(names, steps):
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    sgemm = sgemm_rate()
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
        rows.append(dict(config=name, gflop=forward_gflop(*cfg), ms=med, sgemm=sgemm))
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
    ceiling = rows[0].get("sgemm") or CEILING * min(threads, 2) / 2
    print(f"\n### {threads} thread(s); {cpu_line()}; ceiling: sgemm 2048^2 measured here {ceiling:.0f} GFLOP/s")
    print("| config | pass | cunet ms | GFLOP/s | % ceiling | PyTorch ms | PyTorch-CL ms | cunet / best PyTorch |"
          + (" peak MiB cunet / torch / torch-CL |" if mem else ""))
    print("|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if mem else ""))
    for r in rows:
        for p, factor in (("fwd", 1), ("train", 3)):
            c, t, cl = (r["ms"][k][p] * 1e3 for k in ("cunet", "torch", "torch-cl"))
            rate = factor * r["gflop"] / (c / 1e3)
            m = mem.get(r["config"]) if mem else None
            extra = f" {m['cunet']:.0f} / {m['torch']:.0f} / {m['torch-cl']:.0f} |" if m and p == "train" else (
                " |" if mem else "")
            print(f"| {r['config']} | {p} | {c:.1f} | {rate:.0f} | {100 * rate / ceiling:.0f}% | {t:.1f} | {cl:.1f} | "
                  f"{c / min(t, cl):.2f} |{extra}")


# ---------------------------------------------------------------- GPU (--device cuda)


def gpu_torch():
    """A CUDA PyTorch, or None (the GPU image may carry a CPU-only wheel or none)."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def gpu_time(fn, steps, sync):
    """Median milliseconds of fn over `steps` calls after 3 warm-ups, each fenced by sync()."""
    for _ in range(3):
        fn()
    sync()
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return 1e3 * float(np.median(out))


def gpu_validate(cfg):
    """cunet fp32 on the GPU against the host build (same weights, same input): logits."""
    import cupy
    model, fwd, _ = cunet_contender(cfg, "cuda")
    host, hfwd, _ = cunet_contender(cfg, "cpu")
    a, b = cupy.asnumpy(fwd()), hfwd()
    err = np.abs(a - b).max() / (np.abs(b).max() + 1e-6)
    if not err < 1e-4:
        raise SystemExit(f"{cfg}: cunet GPU and host logits differ (relative {err:.1e})")


def run_gpu(names, steps):
    import cupy
    torch = gpu_torch()
    sync = cupy.cuda.Device().synchronize
    rows = []
    for name in names:
        cfg = GPU_CONFIGS[name]
        gpu_validate(cfg)
        ms = {}
        for prec in ("fp32", "tf32", "bf16"):
            _, fwd, step = cunet_contender(cfg, "cuda", prec)
            ms[f"cunet-{prec}"] = (gpu_time(fwd, steps, sync), gpu_time(step, steps, sync))
            ms[f"cunet-{prec}-graph"] = (None, gpu_time(step.captured, steps, sync))
            cupy.get_default_memory_pool().free_all_blocks()
        if torch is not None:
            for label, autocast in (("torch-tf32", None), ("torch-bf16", torch.bfloat16)):
                _, fwd, step = torch_contender(cfg, False, device="cuda", autocast=autocast)
                tsync = torch.cuda.synchronize
                ms[label] = (gpu_time(fwd, steps, tsync), gpu_time(step, steps, tsync))
                torch.cuda.empty_cache()
        rows.append(dict(config=name, gflop=forward_gflop(*cfg), ms=ms))
    return rows, gpu_layers(names, steps, sync, torch)


def gpu_layers(names, steps, sync, torch):
    """Forward time of each distinct 64-256-channel conv3x3 of the configs, per precision,
    against the matmul rate of that precision (torch, when present) as the tensor-core ceiling."""
    import cupy
    from cunet import ops
    ceiling = {}
    if torch is not None:
        for prec, dtype in (("tf32", torch.float32), ("bf16", torch.bfloat16)):
            torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
            a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
            t = gpu_time(lambda: a @ a, 10, torch.cuda.synchronize)
            ceiling[prec] = 2 * 8192 ** 3 / t / 1e9   # TFLOP/s (ms -> /1e9)
            del a
    rows = []
    for name in names:
        dims, n, size, base, depth, _ = GPU_CONFIGS[name]
        c, s = base, size
        for _ in range(depth + 1):
            if 64 <= c <= 256:
                x = cupy.random.standard_normal((n, c) + (s,) * dims, dtype=cupy.float32)
                w = cupy.random.standard_normal((c, c) + (3,) * dims, dtype=cupy.float32)
                b = cupy.zeros(c, cupy.float32)
                flop = 2.0 * n * c * c * 3 ** dims * s ** dims
                for prec in ("fp32", "tf32", "bf16"):
                    t = gpu_time(lambda: ops.conv_forward(x, w, b, 1, 1, relu=True, precision=prec), steps, sync)
                    rate = flop / t / 1e9
                    rows.append((name, f"{c}x{c} at {s}^{dims}", prec, t, rate, ceiling.get(prec)))
            c, s = 2 * c, s // 2
    return rows, ceiling


def gpu_table(rows, layers):
    print("\n### GPU: training step (forward, loss, backward, Adam) and forward, median ms")
    print("| config | contender | fwd ms | train ms | train TFLOP/s | vs PyTorch same precision |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        for who, (f, t) in r["ms"].items():
            prec = "bf16" if "bf16" in who else "tf32" if "tf32" in who else None
            ref = r["ms"].get(f"torch-{prec}") if prec and who.startswith("cunet") else None
            ratio = f"{t / ref[1]:.2f}" if ref else ""
            fs = f"{f:.2f}" if f is not None else "-"
            print(f"| {r['config']} | {who} | {fs} | {t:.2f} | {3 * r['gflop'] / t:.1f} | {ratio} |")
    layer_rows, ceiling = layers
    print("\n### GPU: conv3x3 forward (+bias+ReLU) on the 64-256-channel layers")
    print("tensor-core ceiling (8192^3 matmul): " + (", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in ceiling.items())
                                                   or "not measured (no CUDA PyTorch)"))
    print("| config | layer | precision | ms | TFLOP/s | % of ceiling |")
    print("|---|---|---|---:|---:|---:|")
    for name, layer, prec, t, rate, ceil in layer_rows:
        pct = f"{100 * rate / ceil:.0f}%" if ceil else ""
        print(f"| {name} | {layer} | {prec} | {t:.3f} | {rate:.1f} | {pct} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--config", nargs="+", choices=list(CONFIGS) + list(GPU_CONFIGS))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--json", help=argparse.SUPPRESS)   # child mode: write rows here
    args = ap.parse_args()
    if args.device == "cuda":
        names = args.config or list(GPU_CONFIGS)
        bad = [c for c in names if c not in GPU_CONFIGS]
        if bad:
            ap.error(f"--config: with --device cuda expected {' '.join(GPU_CONFIGS)}, got {' '.join(bad)}")
        gpu_table(*run_gpu(names, args.steps))
        return
    args.config = args.config or list(CONFIGS)
    bad = [c for c in args.config if c not in CONFIGS]
    if bad:
        ap.error(f"--config: on the CPU expected {' '.join(CONFIGS)}, got {' '.join(bad)}")
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
