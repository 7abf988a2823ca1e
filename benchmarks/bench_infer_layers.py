"""Where cunet's eval forward is slower than ONNX Runtime, layer by layer (issue 18).

    python benchmarks/bench_infer_layers.py [--repeat 5] [--threads 2] [--spin]

The model and input are bench_infer's 2d config (the README's 2D UNet: base 16, depth 4,
batch norm, 4 classes; a volume of 16 slices 192 x 224 as 4 forward passes of 4 slices,
cunet.infer.predict_volume_2d's batches), the ONNX model is `cunet export`'s, the session
bench_infer's (intra_op_num_threads=--threads, inter_op 1, spinning off unless --spin).

ONNX Runtime: profiling on (SessionOptions.enable_profiling); each node's kernel time
("Node" events named <node>_kernel_time, microseconds) summed over the volume's 4 runs.
cunet: every layer instance's forward wrapped with a timer here (the library untouched),
summed the same way. Rounds alternate cunet, ONNX Runtime; medians over --repeat rounds
after one warm-up round (dropped, as is its profile).

Granularity, the same on both sides: one row per conv layer (cunet: Conv + BatchNorm +
ReLU, three calls with batch norm; ONNX Runtime: the Conv with the BN folded in, and its
Relu, or the FusedConv it makes of them), per maxpool, per transpose conv, the head; "cat"
is ONNX Runtime's Concat (cunet has none: the decoder's first conv reads [up, skip] in
place, so that work is inside cunet's dec*.conv1); "other" is the rest of each side's
forward time (cunet: the whole forward less its layers' calls; ONNX Runtime: model_run
less its mapped nodes, e.g. layout reorders). GFLOP/s counts a conv's multiply-adds x 2.
Run time on 2 cores: ~2.5 s per round plus ~5 s setup (--repeat 7: about 25 s).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_infer import BATCH, CONFIGS, build_model, rel_err  # noqa: E402


def layer_groups(model):
    """[(row name, [(layer, kind)])] in forward order; kind: conv, bn, relu, pool, up, head."""
    from cunet.nn.layers import BatchNorm, Conv, ConvTranspose, Dropout, MaxPool, ReLU, Sequential
    rows = []

    def block(prefix, seq):
        assert isinstance(seq, Sequential), prefix
        cur = None
        for name, layer in seq.layers:
            if isinstance(layer, Conv):
                cur = (f"{prefix}.{name}", [])
                rows.append(cur)
            assert isinstance(layer, (Conv, BatchNorm, ReLU, Dropout)), (prefix, name, layer)
            cur[1].append(layer)

    for i, (enc, down) in enumerate(zip(model.enc, model.down)):
        block(f"enc{i}", enc)
        assert isinstance(down, MaxPool), "maxpool configs only"
        rows.append((f"down{i}", [down]))
    block("bottom", model.bottom)
    for i, (up, dec) in enumerate(zip(model.up, model.dec)):
        assert isinstance(up, ConvTranspose), "transpose-conv configs only"
        rows.append((f"up{i}", [up]))
        rows.append((f"cat{i}", []))
        block(f"dec{i}", dec)
    rows.append(("head", [model.head]))
    return rows


class Timers:
    """Wraps each grouped layer instance's forward: seconds summed per row, and the row's
    first call's shape (Ci, Co, out spatial, N, GFLOP)."""

    def __init__(self, model):
        from cunet.nn.layers import Conv, ConvTranspose
        self.rows = layer_groups(model)
        self.acc, self.by_type = defaultdict(float), defaultdict(float)   # by_type: all rounds
        self.info = {}
        for row, layers in self.rows:
            for layer in layers:
                layer.forward = self._wrap(row, layer, layer.forward, isinstance(layer, (Conv, ConvTranspose)))

    def _wrap(self, row, layer, fn, flops):
        def timed(x, *a, **kw):
            t = time.perf_counter()
            y = fn(x, *a, **kw)
            dt = time.perf_counter() - t
            self.acc[row] += dt
            self.by_type[type(layer).__name__] += dt
            if row not in self.info or flops and "gflop" not in self.info[row]:
                ci = x.shape[1] + (kw["x2"].shape[1] if kw.get("x2") is not None else 0)
                d = dict(ci=ci, co=y.shape[1], hw=y.shape[2:], n=x.shape[0])
                if flops:   # conv: taps x out voxels; convT k=stride: taps x in voxels
                    vox = np.prod(y.shape[2:] if type(layer).__name__ == "Conv" else x.shape[2:])
                    d["gflop"] = 2.0 * ci * y.shape[1] * layer.k ** len(x.shape[2:]) * x.shape[0] * vox / 1e9
                self.info[row] = d
            return y
        return timed

    def take(self):
        out, self.acc = dict(self.acc), defaultdict(float)
        return out


def ort_node_row(name, rows):
    """ONNX Runtime node name -> row name, or None (other). Names are the exporter's
    (enc0.conv1, enc0.relu1, down0, up0, cat0, head) possibly with a suffix ORT's
    fusions add (its NCHWc Conv+Relu is named after the Relu, enc0.relu1_nchwc, the head
    after its output, logits_nchwc); a Relu joins its conv's row."""
    base = "head" if name.startswith("logits") else name   # the head's node is renamed after its output
    for row in sorted(rows, key=len, reverse=True):   # longest first: enc0.conv1 before enc0
        if base == row or base.startswith(row + "_") or base.startswith(row + "/"):
            return row
    for rel, conv in ((".relu1", ".conv1"), (".relu2", ".conv2")):
        if rel in base:
            head = base.split(rel)[0]
            if head + conv in rows:
                return head + conv
    return None


def parse_profile(path, rows, per_round):
    """-> [per round: {row: seconds}], [per round: model_run seconds], {unmapped op: count}."""
    events = json.loads(Path(path).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    runs.sort(key=lambda e: e["ts"])
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    rounds = len(runs) // per_round
    by_round = [defaultdict(float) for _ in range(rounds)]
    run_time = [0.0] * rounds
    starts = [e["ts"] for e in runs]
    unmapped = defaultdict(float)
    for k, e in enumerate(runs):
        run_time[min(k // per_round, rounds - 1)] += e["dur"] / 1e6
    for e in nodes:
        k = int(np.searchsorted(starts, e["ts"], side="right")) - 1   # the run it lies in
        r = min(max(k, 0) // per_round, rounds - 1)
        name = e["name"][:-len("_kernel_time")]
        row = ort_node_row(name, rows)
        if row is None:
            op = e.get("args", {}).get("op_name", "?")
            unmapped[op] += e["dur"] / 1e6 / rounds
            row = "other"
        by_round[r][row] += e["dur"] / 1e6
    return by_round, run_time, dict(unmapped), sorted({e["name"][:-len("_kernel_time")] for e in nodes})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spin", action="store_true", help="let idle threads spin (OMP_WAIT_POLICY=active, ORT spinning)")
    ap.add_argument("--nodes", action="store_true", help="also list ONNX Runtime's node names")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)   # before cunet's OpenMP runtime loads
    os.environ["OMP_WAIT_POLICY"] = "active" if args.spin else "passive"
    import onnxruntime as ort
    from cunet import export
    from cunet.infer import predict_volume_2d
    from bench_infer import Net

    cfg = CONFIGS["2d"]
    cpu = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if l.startswith("Model name")), "unknown CPU")
    avx512 = "avx512f" in Path("/proc/cpuinfo").read_text().split()
    print(f"CPU: {cpu} ({'with' if avx512 else 'no'} AVX-512), {os.cpu_count()} cores visible; onnxruntime "
          f"{ort.__version__}; {args.threads} threads; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")

    model = build_model(cfg)
    volume = np.random.default_rng(0).standard_normal(cfg["shape"]).astype(np.float32)
    xs = []   # the batches cunet.infer hands the network (bench_infer's)

    def record(x):
        xs.append(x.copy())
        return model.forward(x)
    predict_volume_2d(Net(model.config, record), volume, axis=2, batch_size=BATCH)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        onnx_path = tmp / "2d.onnx"
        export.to_onnx(model, onnx_path)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if args.spin else "0")
        so.enable_profiling = True
        so.profile_file_prefix = str(tmp / "ort_profile")
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        err = max(rel_err(sess.run(None, {"image": x})[0], model.forward(x)) for x in xs)
        if not err <= 1e-4:
            raise SystemExit(f"ONNX Runtime and cunet logits differ (relative {err:.1e})")
        timers = Timers(model)   # wrapped from here on
        rows = [r for r, _ in timers.rows]
        cu_rounds, cu_total, ort_wall = [], [], []
        timers.take()
        for r in range(args.repeat + 1):   # round 0 warms up (its numbers dropped below)
            t = time.perf_counter()
            for x in xs:
                model.forward(x)
            cu_total.append(time.perf_counter() - t)
            cu_rounds.append(timers.take())
            t = time.perf_counter()
            for x in xs:
                sess.run(None, {"image": x})
            ort_wall.append(time.perf_counter() - t)
        prof = sess.end_profiling()
        # the check's runs above came first: len(xs) runs before round 0
        ort_rounds, ort_run, unmapped, names = parse_profile(prof, rows, len(xs))
    n_check = 1   # the profile's first "round" is the check's len(xs) runs
    ort_rounds, ort_run = ort_rounds[n_check + 1:], ort_run[n_check + 1:]
    cu_rounds, cu_total, ort_wall = cu_rounds[1:], cu_total[1:], ort_wall[1:]
    assert len(ort_rounds) == len(cu_rounds) == args.repeat, (len(ort_rounds), len(cu_rounds))
    if args.nodes:
        print("ONNX Runtime nodes:", ", ".join(names))

    med = lambda vals: 1e3 * float(np.median(vals))   # noqa: E731  seconds -> ms
    cu = {row: med([c.get(row, 0.0) for c in cu_rounds]) for row in rows}
    ox = {row: med([o.get(row, 0.0) for o in ort_rounds]) for row in rows}
    cu_other = med([t - sum(c.values()) for t, c in zip(cu_total, cu_rounds)])
    ox_other = med([t - sum(v for k, v in o.items() if k != "other") for t, o in zip(ort_run, ort_rounds)])
    info = timers.info
    n = len(xs) * xs[0].shape[0]
    print(f"\n{n} slices {' x '.join(map(str, xs[0].shape[2:]))} as {len(xs)} passes of {xs[0].shape[0]}; "
          f"medians of {args.repeat} rounds, ms per volume; shape: Ci->Co @ output HxW")
    print("| layer | shape | cunet ms | ORT ms | cunet / ORT | cunet GFLOP/s | ORT GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    gflop_total = 0.0
    for row in rows:
        i = info.get(row)
        shape = f"{i['ci']}->{i['co']} @{'x'.join(map(str, i['hw']))}" if i else "(in dec conv1)"
        if row.startswith("cat"):
            up = info[row.replace("cat", "up")]
            dec = info[row.replace("cat", "dec") + ".conv1"]
            shape = f"{up['co']}+{dec['ci'] - up['co']} @{'x'.join(map(str, up['hw']))}"
        g = i["gflop"] * len(xs) if i and "gflop" in i else None   # per pass -> per volume
        gflop_total += g or 0.0
        c, o = cu[row], ox[row]
        rate = lambda ms: f"{g / (ms / 1e3):.0f}" if g and ms > 0 else "-"   # noqa: E731
        cs = "-" if row.startswith("cat") else f"{c:.1f}"
        ratio = f"{c / o:.2f}" if o > 0 and not row.startswith("cat") else "-"
        print(f"| {row} | {shape} | {cs} | {o:.1f} | {ratio} | {rate(c)} | {rate(o)} |")
    print(f"| other | cunet: forward less layers; ORT: reorders | {cu_other:.1f} | "
          f"{ox_other:.1f} | - | - | - |")
    ct, ot = med(cu_total), med(ort_run)
    print(f"| **total** (forward / model_run) | {gflop_total:.0f} GFLOP | {ct:.1f} | {ot:.1f} | {ct / ot:.2f} | "
          f"{gflop_total / (ct / 1e3):.0f} | {gflop_total / (ot / 1e3):.0f} |")
    print(f"\nORT wall (sess.run, profiling on): {med(ort_wall):.1f} ms; cunet wall: {ct:.1f} ms")
    if unmapped:
        print("ORT nodes in 'other' (ms per volume, mean): "
              + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in sorted(unmapped.items(), key=lambda kv: -kv[1])))
    groups = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        kind = ("conv3x3" if ".conv" in row else "maxpool" if row.startswith("down") else
                "convT" if row.startswith("up") else "concat" if row.startswith("cat") else "head")
        groups[kind][0] += 0.0 if kind == "concat" else cu[row]
        groups[kind][1] += ox[row]
    groups["other"] = [cu_other, ox_other]
    print("by kind (cunet ms, ORT ms, difference): " + "; ".join(
        f"{k} {c:.1f} / {o:.1f} ({c - o:+.1f})" for k, (c, o) in groups.items()))
    calls = timers.by_type   # warm-up round included: shares only
    print("cunet's 3x3 conv rows by call: " + ", ".join(
        f"{k} {100 * calls[k] / sum(calls[j] for j in ('Conv', 'BatchNorm', 'ReLU')):.0f}%"
        for k in ("Conv", "BatchNorm", "ReLU")) + " (the head's Conv included; BatchNorm and ReLU are separate "
          "passes in cunet, folded/fused in ORT's Conv)")


if __name__ == "__main__":
    main()
