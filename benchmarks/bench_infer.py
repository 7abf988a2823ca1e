"""Inference on the CPU: cunet's eval forward (Python, and the C++ runner) against ONNX
Runtime on the model exported by cunet.export and PyTorch channels-last, taking turns.

    python benchmarks/bench_infer.py [--config 2d 3d] [--repeat 7] [--threads 2] [--spin]

    2d  the README's 2D model (cunet train's defaults: base 16, depth 4, batch norm, 1 input
        channel, 4 classes) on a volume of 16 axial slices 192 x 224, slice by slice
        (cunet.infer.predict_volume_2d), 4 slices per forward pass
    3d  a 3D UNet (bench_unet's 3d-64: base 8, depth 3, 3 classes; batch norm as cunet
        train gives it) on a 160^3 volume in 64^3 sliding windows at 50% overlap (4 per
        axis, 64 windows; cunet.infer.predict_logits, Gaussian blending), 4 per pass

Every Python path runs through cunet.infer, so the windows, batches and blending are the
same code and only the network differs: ONNX Runtime and PyTorch are handed to it as
duck-typed models (`Net`). The C++ runner (bindings/cunet_runner.h, compiled here against
libcunet) runs the network alone on the same batches, so its row leaves out the work
that the "infer overhead" row measures (window copies and blending, with a network that costs
nothing). Batch norm: ONNX Runtime runs the export, where it is folded into the convs;
cunet and PyTorch (eager, eval) apply it as its own pass.

Before timing, each path's logits are checked against cunet's on every batch and
on the blended volume (relative max error <= 1e-4). Times are medians of --repeat rounds
after one warm-up round, the paths taking turns within each round. Threads: --threads for
all (OMP_NUM_THREADS for cunet, torch.set_num_threads, ORT intra_op_num_threads). Idle
threads sleep (OMP_WAIT_POLICY=passive, ORT's spinning off) unless --spin, as on a shared
machine spinning workers starve the others. GFLOP/s counts the convs' multiply-adds x 2
(as bench_unet.forward_gflop), next to a 2048^2 sgemm measured with the same threads.
Run time on 2 cores: --config 2d --repeat 3 about a minute, the 3d config ~10 minutes.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# shape: the volume (C, *S) (2D: slices along the last axis); window: sliding windows (None: whole slices)
CONFIGS = {"2d": dict(dims=2, shape=(1, 192, 224, 16), base=16, depth=4, classes=4, window=None),
           "3d": dict(dims=3, shape=(1, 160, 160, 160), base=8, depth=3, classes=3, window=64)}
BATCH = 4

RUNNER_CPP = r"""
// bench_infer's C++ path: UNet2D3D::forward over the M inputs of a raw file, B per pass,
// one pass per line read on stdin (its milliseconds printed); the first pass's logits go
// to OUT.raw.   runner MODEL.safetensors IN.raw OUT.raw M B C S1 S2 [S3]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include "bindings/cunet_runner.h"

int main(int argc, char** argv) try {
    if (argc < 9) { std::fprintf(stderr, "usage: runner MODEL IN OUT M B C S1 S2 [S3]\n"); return 2; }
    cunet::UNet2D3D net(cunet::load_safetensors(argv[1]));
    const int64_t M = std::atoll(argv[4]), B = std::atoll(argv[5]), C = std::atoll(argv[6]);
    std::vector<int64_t> S;
    for (int i = 7; i < argc; ++i) S.push_back(std::atoll(argv[i]));
    int64_t vox = 1;
    for (int64_t s : S) vox *= s;
    std::vector<float> x(M * C * vox), out;   // (M, C, *S); out (M, K, *S)
    std::ifstream(argv[2], std::ios::binary).read(reinterpret_cast<char*>(x.data()), x.size() * sizeof(float));
    for (std::string line; std::getline(std::cin, line);) {
        const bool first = out.empty();
        const auto t0 = std::chrono::steady_clock::now();
        for (int64_t i = 0; i < M; i += B) {
            const int64_t n = std::min(B, M - i);
            const float* p = x.data() + i * C * vox;
            std::vector<float> y = S.size() == 2 ? net.forward(p, n, S[0], S[1]) : net.forward(p, n, S[0], S[1], S[2]);
            if (first) out.insert(out.end(), y.begin(), y.end());
        }
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (first) std::ofstream(argv[3], std::ios::binary).write(reinterpret_cast<const char*>(out.data()),
                                                                  out.size() * sizeof(float));
        std::printf("%.3f\n", ms);
        std::fflush(stdout);
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "runner: %s\n", e.what());
    return 1;
}
"""


class Net:
    """What cunet.infer reads of a model (config, xp, params.dtype, training, eval/train,
    forward), around another network's forward: fn((B, C, *S) float32) -> (B, K, *S)."""
    training = False
    xp = np
    params = np.zeros(0, np.float32)

    def __init__(self, config, fn):
        self.config, self.forward = config, fn

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def build_model(cfg, seed=0):
    """The cunet UNet of a config, eval mode, BN statistics and biases off their initial values."""
    import cunet
    model = cunet.UNet(dims=cfg["dims"], in_channels=1, out_channels=1 if cfg["classes"] == 2 else cfg["classes"],
                       base=cfg["base"], depth=cfg["depth"], norm="batch", seed=seed)
    rng = np.random.default_rng(seed + 1)
    state = {k: (rng.uniform(0.5, 2.0, v.shape) if k.endswith("running_var") else
                 v + rng.normal(0, 0.1, v.shape) if v.ndim == 1 else v) for k, v in model.state_dict().items()}
    return model.load_state_dict(state).eval()


def predict(cfg, net, volume):
    """The config's cunet.infer call: (1, *S) volume -> logits (K, *S)."""
    from cunet import infer
    if cfg["dims"] == 2:
        return infer.predict_volume_2d(net, volume, axis=2, batch_size=BATCH)
    return infer.predict_logits(net, volume, window=cfg["window"], overlap=0.5, batch_size=BATCH)


def ort_session(path, threads, spin):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def torch_twin(model):
    """PyTorch (eval, channels-last) with the cunet UNet's layers and weights, given position
    by position in state_dict order (conv weight, bias; BN weight, bias, running mean, var):
    convT up, maxpool down, optional BN, as the configs here."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    cfg = model.config
    dims, bn = cfg["dims"], cfg["norm"] == "batch"
    assert cfg["up"] == "transpose" and cfg["down"] == "maxpool", cfg
    Conv, ConvT, BN, pool = ((nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, F.max_pool2d) if dims == 2 else
                             (nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d, F.max_pool3d))

    def block(ci, co):
        return nn.Sequential(*[m for c in (ci, co) for m in (Conv(c, co, 3, padding=1),) + ((BN(co),) if bn else ())
                               + (nn.ReLU(),)])

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.up, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            ci, c = cfg["in_channels"], cfg["base"]
            for _ in range(cfg["depth"]):
                self.enc.append(block(ci, c))
                ci, c = c, 2 * c
            self.bottom = block(ci, c)
            for _ in range(cfg["depth"]):
                self.up.append(ConvT(c, c // 2, 2, stride=2))
                c //= 2
                self.dec.append(block(2 * c, c))
            self.head = Conv(cfg["base"], cfg["out_channels"], 1)

        def forward(self, x):
            skips = []
            for b in self.enc:
                x = b(x)
                skips.append(x)
                x = pool(x, 2)
            x = self.bottom(x)
            for up, b, s in zip(self.up, self.dec, reversed(skips)):
                x = b(torch.cat([up(x), s], 1))
            return self.head(x)

        def ordered(self):
            mods = [m for b in list(self.enc) + [self.bottom] for m in b]
            for up, b in zip(self.up, self.dec):
                mods += [up] + list(b)
            mods.append(self.head)
            return [t for m in mods if not isinstance(m, nn.ReLU) for t in (
                (m.weight, m.bias, m.running_mean, m.running_var) if isinstance(m, nn.modules.batchnorm._BatchNorm)
                else (m.weight, m.bias))]

    net = UNet().eval()
    with torch.no_grad():
        for t, (name, a) in zip(net.ordered(), model.state_dict().items(), strict=True):
            assert tuple(t.shape) == a.shape, (name, t.shape, a.shape)
            t.copy_(torch.from_numpy(np.ascontiguousarray(a)))
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    net = net.to(memory_format=fmt)

    def fn(x):
        with torch.inference_mode():
            return net(torch.from_numpy(x).contiguous(memory_format=fmt)).numpy()
    return fn


def compile_runner(tmp):
    """The C++ runner built against the package's libcunet, or None (with the reason) if g++ fails."""
    from cunet import cmake as package
    src, exe, lib = tmp / "runner.cpp", tmp / "runner", package.library()
    src.write_text(RUNNER_CPP)
    r = subprocess.run(["g++", "-O2", "-std=c++20", f"-I{package.include_dir()}", str(src), str(lib),
                        f"-Wl,-rpath,{lib.parent}", "-o", str(exe)], capture_output=True, text=True)
    if r.returncode:
        print(f"(C++ runner not built: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode})")
        return None
    return exe


class Runner:
    """The C++ runner process on the recorded batches: one pass per call, its own clock."""

    def __init__(self, exe, ckpt, xs, tmp):
        x = np.concatenate(xs)   # (M, C, *S)
        (tmp / "in.raw").write_bytes(np.ascontiguousarray(x, np.float32).tobytes())
        self.out, self.shape = tmp / "out.raw", x.shape
        self.proc = subprocess.Popen([str(exe), str(ckpt), str(tmp / "in.raw"), str(self.out), str(x.shape[0]),
                                      str(BATCH), *map(str, x.shape[1:])], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def __call__(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"C++ runner died (exit status {self.proc.wait()})")
        return float(line) / 1e3

    def logits(self, k):
        return np.fromfile(self.out, np.float32).reshape((self.shape[0], k) + self.shape[2:])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def sgemm_rate(threads):
    """GFLOP/s of a 2048^2 float32 matmul (PyTorch, `threads` threads): the napkin ceiling."""
    import torch
    a = torch.randn(2048, 2048)
    a @ a
    t = min(timed(lambda: a @ a) for _ in range(5))
    return 2 * 2048 ** 3 / t / 1e9


def forward_gflop(cfg, n, spatial):
    """Multiply-adds x 2 of every conv/convT of the config's UNet on n inputs of shape
    `spatial` (bench_unet.forward_gflop for any shape; BN, pooling, concat, ReLU excluded)."""
    dims = cfg["dims"]
    conv = lambda ci, co, vox, k: 2.0 * ci * co * k ** dims * vox   # noqa: E731
    total, ci, c, vox = 0.0, 1, cfg["base"], n * float(np.prod(spatial))
    for _ in range(cfg["depth"]):
        total += conv(ci, c, vox, 3) + conv(c, c, vox, 3)
        ci, c, vox = c, 2 * c, vox / 2 ** dims
    total += conv(ci, c, vox, 3) + conv(c, c, vox, 3)
    for _ in range(cfg["depth"]):
        total += conv(c, c // 2, vox, 2)   # convT 2x2 stride 2: each input voxel meets 2^d taps
        c, vox = c // 2, vox * 2 ** dims
        total += conv(2 * c, c, vox, 3) + conv(c, c, vox, 3)
    return (total + conv(cfg["base"], 1 if cfg["classes"] == 2 else cfg["classes"], vox, 1)) / 1e9


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(name, cfg, args, tmp, exe):
    from cunet import export
    from cunet.train import save_checkpoint
    model = build_model(cfg)
    ckpt, onnx_path = tmp / f"{name}.safetensors", tmp / f"{name}.onnx"
    save_checkpoint(ckpt, model)
    export.to_onnx(model, onnx_path)
    volume = np.random.default_rng(0).standard_normal(cfg["shape"]).astype(np.float32)

    # cunet through cunet.infer, its batches and logits recorded: the reference for the others
    batches = []   # (x, logits) of each forward pass

    def record(x):
        batches.append((x.copy(), model.forward(x)))
        return batches[-1][1]
    want = predict(cfg, Net(model.config, record), volume)
    xs, ys = zip(*batches)
    sess = ort_session(onnx_path, args.threads, args.spin)
    nets = {"cunet": model, "ONNX Runtime": Net(model.config, lambda x: sess.run(None, {"image": x})[0]),
            "PyTorch CL": Net(model.config, torch_twin(model))}
    for who, net in list(nets.items())[1:]:
        errs = [rel_err(net.forward(x), y) for x, y in zip(xs, ys)] + [rel_err(predict(cfg, net, volume), want)]
        if not max(errs) <= 1e-4:
            raise SystemExit(f"{name}: {who} and cunet logits differ (relative {max(errs):.1e})")
    zeros = [np.zeros_like(y) for y in ys]   # infer's own work: the same calls with a free network
    it = iter(range(1 << 62))
    paths = {who: (lambda net=net: predict(cfg, net, volume)) for who, net in nets.items()}
    paths["infer overhead"] = lambda: predict(cfg, Net(model.config, lambda x: zeros[next(it) % len(zeros)]), volume)
    runner = Runner(exe, ckpt, xs, tmp) if exe else None
    if runner:
        runner()   # the first pass writes its logits
        err = rel_err(runner.logits(ys[0].shape[1]), np.concatenate(ys))
        if not err <= 1e-4:
            raise SystemExit(f"{name}: C++ runner and cunet logits differ (relative {err:.1e})")
        paths["cunet C++ (network only)"] = runner
    times = {who: [] for who in paths}
    try:
        for r in range(args.repeat + 1):   # round 0 warms up
            for who, fn in paths.items():
                t = fn() if who.startswith("cunet C++") else timed(fn)
                if r:
                    times[who].append(t)
    finally:
        if runner:
            runner.close()
    n_inputs = sum(len(x) for x in xs)
    spatial = xs[0].shape[2:]
    gflop = forward_gflop(cfg, n_inputs, spatial)
    return dict(name=name, inputs=f"{n_inputs} x {' x '.join(map(str, spatial))}", gflop=gflop,
                ms={who: 1e3 * float(np.median(t)) for who, t in times.items()})


def table(rows, ceiling, threads):
    print(f"\n### {threads} thread(s); sgemm 2048^2 here: {ceiling:.0f} GFLOP/s")
    print("| config | network inputs | path | ms / volume | GFLOP/s | % sgemm | / ONNX Runtime |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        ort_ms = r["ms"]["ONNX Runtime"]
        for who, ms in r["ms"].items():
            rate = r["gflop"] / (ms / 1e3) if who != "infer overhead" else None
            cols = (f"{rate:.0f} | {100 * rate / ceiling:.0f}%" if rate else "- | -")
            print(f"| {r['name']} ({r['gflop']:.0f} GFLOP) | {r['inputs']} | {who} | {ms:.1f} | {cols} | "
                  f"{ms / ort_ms:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spin", action="store_true", help="let idle threads spin (OMP_WAIT_POLICY=active, ORT spinning)")
    args = ap.parse_args()
    # before cunet's and torch's OpenMP runtimes load (both read these once)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["OMP_WAIT_POLICY"] = "active" if args.spin else "passive"
    import onnxruntime
    import torch
    torch.set_num_threads(args.threads)
    cpu = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if l.startswith("Model name")), "unknown CPU")
    avx512 = "avx512f" in Path("/proc/cpuinfo").read_text().split()   # the kernels were tuned on AVX-512 machines
    print(f"CPU: {cpu} ({'with' if avx512 else 'no'} AVX-512), {os.cpu_count()} cores visible; onnxruntime "
          f"{onnxruntime.__version__}, torch {torch.__version__}; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        exe = compile_runner(tmp)
        rows = [run(name, CONFIGS[name], args, tmp, exe) for name in args.config]
    table(rows, sgemm_rate(args.threads), args.threads)


if __name__ == "__main__":
    main()
