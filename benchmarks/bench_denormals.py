"""Does a long CPU training run keep its speed? (Denormal floats make x86 arithmetic
slow; a PyTorch UNet without batch norm slowed ~2.5x after ~40 steps on this machine.)

    python benchmarks/bench_denormals.py [--steps 300]

Trains the 2d-128 benchmark UNet (no batch norm, Adam, BCE) on real data (the nuclei
tiles shipped in stardist, 128x128, batch 8) and prints the median step time of the
first and last 20 steps, how many denormal values the parameters, Adam moments and
activations hold at the end, and the trained model's step time against a fresh model's,
the two taking turns (the machine's drift cancels there).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import cunet  # noqa: E402
from cunet import losses, optim, train  # noqa: E402
from cunet.data import datasets  # noqa: E402

TINY = np.finfo(np.float32).tiny


def denormals(a):
    a = np.abs(np.asarray(a))
    return int(((a > 0) & (a < TINY)).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    d = datasets.nuclei()
    # full batches only (12 tiles: one batch of 8 per epoch), so every step does the same work
    src = train.ArrayBatches(d["train_images"], d["train_labels"][:, None].astype(np.float32), batch_size=8, seed=0,
                             drop_last=True)
    model = cunet.UNet(dims=2, in_channels=1, out_channels=1, base=16, depth=4, seed=0)
    loss, opt = losses.BCE(), optim.Adam(model, lr=1e-3)
    times, step, epoch = [], 0, 0
    while step < args.steps:
        for x, y in src.batches(epoch):
            t = time.perf_counter()
            opt.zero_grad()
            value, dl = loss(model.forward(x), y)
            model.backward(dl, input_grad=False)   # as cunet.train does
            opt.step()
            times.append(time.perf_counter() - t)
            step += 1
            if step >= args.steps:
                break
        epoch += 1
    logits = model.forward(x)
    first, last = np.median(times[2:22]), np.median(times[-20:])
    print(f"steps {args.steps}: first 20 {first * 1e3:.0f} ms/step, last 20 {last * 1e3:.0f} ms/step "
          f"(ratio {last / first:.2f}); final loss {value:.4f}")
    print(f"denormals: params {denormals(model.params)}, Adam m {denormals(opt.state['m'])}, "
          f"v {denormals(opt.state['v'])}, grads {denormals(model.grads)}, logits {denormals(logits)}")
    # the trained model against a fresh one, steps taking turns on one full batch: the
    # machine's speed drifts between the first and the last steps above, here it cancels
    x, y = next(src.batches(0))
    fresh = cunet.UNet(dims=2, in_channels=1, out_channels=1, base=16, depth=4, seed=0)
    fresh_opt = optim.Adam(fresh, lr=1e-3)

    def one(m, o):
        t = time.perf_counter()
        o.zero_grad()
        _, d = loss(m.forward(x), y)
        m.backward(d, input_grad=False)
        o.step()
        return time.perf_counter() - t

    trained, new = [], []
    for i in range(20):   # which goes first alternates
        if i % 2:
            trained.append(one(model, opt))
        new.append(one(fresh, fresh_opt))
        if i % 2 == 0:
            trained.append(one(model, opt))
    a, b = np.median(trained), np.median(new)
    print(f"interleaved, 20 steps each: trained {a * 1e3:.0f} ms/step, fresh {b * 1e3:.0f} ms/step "
          f"(ratio {a / b:.2f})")


if __name__ == "__main__":
    main()
