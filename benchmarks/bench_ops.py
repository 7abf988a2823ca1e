"""Every conv / transposed conv / pool / upsample / loss shape of the benchmark UNets,
forward and backward, cunet against PyTorch (when installed) and the NumPy reference.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--config 2d-128|2d-256|3d-64|all]
                                   [--repeat 7] [--quick]

Each op is validated against cunet.reference on the same inputs before it is timed
(float32 tolerance scaled by the accumulation length). Times are medians of --repeat
runs, interleaved cunet / PyTorch so both see the same machine load. Prints GFLOP/s
(conv) or GB/s (memory-bound ops) and the ratio cunet / PyTorch (< 1: cunet faster).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from cunet import ops, reference as R  # noqa: E402
from bench_unet import CEILING as CPU_PEAK_GFLOPS, CONFIGS  # noqa: E402  (the UNets of bench_unet.py)


def unet_shapes(dims, n, size, base, depth):
    """Distinct op shapes of the UNet: conv3x3 (n, ci, co, s), convT2x2 (n, ci, co, s_in), pool/upsample (n, c, s)."""
    convs, convts, pools = [], [], []
    ci, c, s = 1, base, size
    for _ in range(depth):
        convs += [(n, ci, c, s), (n, c, c, s)]
        pools.append((n, c, s))
        ci, c, s = c, 2 * c, s // 2
    convs += [(n, ci, c, s), (n, c, c, s)]
    for _ in range(depth):
        convts.append((n, c, c // 2, s))
        c, s = c // 2, 2 * s
        convs += [(n, 2 * c, c, s), (n, c, c, s)]
    return sorted(set(convs)), convts, pools


class Timer:
    def __init__(self, device):
        self.sync = (lambda: __import__("cupy").cuda.Device().synchronize()) if device == "cuda" else (lambda: None)

    def __call__(self, fn):
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t


def torch_ops(device):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.backends.cudnn.allow_tf32 = False   # compare like with like: fp32
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch, F


def to_dev(a, device):
    if device == "cuda":
        import cupy
        return cupy.asarray(a)
    return a


def to_host(a):
    return a if isinstance(a, np.ndarray) else a.get()


def check(name, got, want, k):
    tol = 2e-5 * max(1.0, np.sqrt(k))
    err = np.max(np.abs(to_host(got) - want) / (np.abs(want) + 1.0))
    if not err <= tol:
        raise SystemExit(f"{name}: cunet differs from the reference by {err:.2e} (tolerance {tol:.1e})")


def bench_case(rows, label, work, unit, cunet_fn, torch_fn, timer, repeat):
    cunet_fn()
    if torch_fn:
        torch_fn()
    tc, tt = [], []
    for _ in range(repeat):
        tc.append(timer(cunet_fn))
        if torch_fn:
            tt.append(timer(torch_fn))
    mc = float(np.median(tc))
    mt = float(np.median(tt)) if tt else float("nan")
    rows.append((label, mc * 1e3, work / mc / 1e9, unit, mt * 1e3, mc / mt if tt else float("nan")))


def run(config, device, repeat, quick):
    dims, n, size, base, depth, classes = CONFIGS[config]
    if quick:
        n = max(1, n // 2)
    rng = np.random.default_rng(0)
    timer = Timer(device)
    tops = torch_ops(device)
    convs, convts, pools = unet_shapes(dims, n, size, base, depth)
    rows = []
    tdev = "cuda" if device == "cuda" else "cpu"

    def tt(a):
        return tops[0].from_numpy(a).to(tdev) if tops else None

    for (nn, ci, co, s) in convs:
        x = rng.standard_normal((nn, ci) + (s,) * dims).astype(np.float32)
        w = (rng.standard_normal((co, ci) + (3,) * dims) / np.sqrt(9 * ci)).astype(np.float32)
        b = rng.standard_normal(co).astype(np.float32)
        X, W, B = to_dev(x, device), to_dev(w, device), to_dev(b, device)
        flops = 2.0 * nn * co * ci * 3 ** dims * s ** dims
        y = ops.conv_forward(X, W, B, 1, 1)
        check("conv_forward", y, R.conv_forward(x, w, b, 1, 1), ci * 3 ** dims)
        dy = to_dev(rng.standard_normal(y.shape).astype(np.float32), device)
        label = f"conv{dims}d 3x3 {ci}->{co} @{s}"
        if tops:
            torch, F = tops
            conv = F.conv2d if dims == 2 else F.conv3d
            tx, tw, tb = tt(x).requires_grad_(), tt(w).requires_grad_(), tt(b)
            tdy = tt(to_host(dy))
            ty = conv(tx, tw, tb, padding=1)
        bench_case(rows, label + " fwd", flops, "GFLOP/s", lambda: ops.conv_forward(X, W, B, 1, 1),
                   (lambda: conv(tx, tw, tb, padding=1)) if tops else None, timer, repeat)
        bench_case(rows, label + " bwd", 2 * flops, "GFLOP/s", lambda: ops.conv_backward(dy, X, W, 1, 1),
                   (lambda: torch.autograd.grad(ty, (tx, tw), tdy, retain_graph=True)) if tops else None,
                   timer, repeat)
    for (nn, ci, co, s) in convts:
        x = rng.standard_normal((nn, ci) + (s,) * dims).astype(np.float32)
        w = (rng.standard_normal((ci, co) + (2,) * dims) / np.sqrt(ci)).astype(np.float32)
        X, W = to_dev(x, device), to_dev(w, device)
        flops = 2.0 * nn * co * ci * 2 ** dims * s ** dims
        y = ops.conv_transpose_forward(X, W, None, 2)
        check("conv_transpose_forward", y, R.conv_transpose_forward(x, w, None, 2), ci)
        label = f"convT{dims}d 2x2 {ci}->{co} @{s}"
        if tops:
            convt = F.conv_transpose2d if dims == 2 else F.conv_transpose3d
            tx, tw = tt(x), tt(w)
        bench_case(rows, label + " fwd", flops, "GFLOP/s", lambda: ops.conv_transpose_forward(X, W, None, 2),
                   (lambda: convt(tx, tw, stride=2)) if tops else None, timer, repeat)
    for (nn, c, s) in pools:
        x = rng.standard_normal((nn, c) + (s,) * dims).astype(np.float32)
        X = to_dev(x, device)
        y, arg = ops.maxpool_forward(X)
        check("maxpool_forward", y, R.maxpool_forward(x)[0], 1)
        nbytes = x.nbytes * (1 + 1.5 / 2 ** dims)   # read x, write y and int64 argmax
        if tops:
            pool = F.max_pool2d if dims == 2 else F.max_pool3d
            tx = tt(x)
        bench_case(rows, f"maxpool{dims}d {c} @{s}", nbytes, "GB/s", lambda: ops.maxpool_forward(X),
                   (lambda: pool(tx, 2, return_indices=True)) if tops else None, timer, repeat)
        xs = x[:, :, ::2, ::2] if dims == 2 else x[:, :, ::2, ::2, ::2]
        xs = np.ascontiguousarray(xs)
        XS = to_dev(xs, device)
        check("upsample linear", ops.upsample_forward(XS, 2, "linear"), R.upsample_forward(xs, 2, "linear"), 8)
        if tops:
            txs = tt(xs)
            mode = "bilinear" if dims == 2 else "trilinear"
        bench_case(rows, f"upsample{dims}d linear {c} @{s // 2}", xs.nbytes * (1 + 2 ** dims), "GB/s",
                   lambda: ops.upsample_forward(XS, 2, "linear"),
                   (lambda: F.interpolate(txs, scale_factor=2, mode=mode, align_corners=False)) if tops else None,
                   timer, repeat)
    # the loss on the head's logits
    z = rng.standard_normal((n, classes) + (size,) * dims).astype(np.float32)
    lab = rng.integers(0, classes, (n,) + (size,) * dims)
    Z, LAB = to_dev(z, device), to_dev(lab, device)
    loss, _ = ops.dice_ce_loss(Z, LAB)
    want, _ = R.dice_ce_loss(z, lab)
    if abs(float(loss) - want) > 1e-4 * max(1.0, abs(want)):
        raise SystemExit(f"dice_ce_loss: {float(loss)} != reference {want}")
    if tops:
        tz, tlab = tt(z).requires_grad_(), tops[0].from_numpy(lab).to(tdev)

        def torch_loss():
            p = F.softmax(tz, 1)
            g = F.one_hot(tlab, classes).movedim(-1, 1).float()
            ax = [0] + list(range(2, z.ndim))
            d = 1 - ((2 * (p * g).sum(ax) + 1e-5) / (p.sum(ax) + g.sum(ax) + 1e-5)).mean()
            (d + F.cross_entropy(tz, tlab)).backward()
    bench_case(rows, f"dice+CE loss K={classes} fwd+bwd", z.nbytes * 3, "GB/s", lambda: ops.dice_ce_loss(Z, LAB),
               torch_loss if tops else None, timer, repeat)
    return rows


def print_table(config, device, rows):
    print(f"\n## {config} on {device}" + (f" (CPU peak ~{CPU_PEAK_GFLOPS:.0f} GFLOP/s)" if device == "cpu" else ""))
    print("| op | cunet ms | cunet rate | PyTorch ms | cunet/PyTorch |")
    print("|---|---:|---:|---:|---:|")
    for label, ms, rate, unit, tms, ratio in rows:
        print(f"| {label} | {ms:.3f} | {rate:.1f} {unit} | {tms:.3f} | {ratio:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--config", choices=list(CONFIGS) + ["all"], default="all")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="half the batch: a fast sanity run")
    args = ap.parse_args()
    configs = list(CONFIGS) if args.config == "all" else [args.config]
    for c in configs:
        print_table(c, args.device, run(c, args.device, args.repeat, args.quick))


if __name__ == "__main__":
    main()
