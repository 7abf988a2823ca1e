"""Training: batch sources, the fit loop, checkpoints.

    ArrayBatches(images, targets, batch_size=8, shuffle=True, seed=0, drop_last=False)
    fit(model, loss, optimizer, train, val=None, *, epochs=None, steps=None, ...) -> History
    save_checkpoint(path, model, ...)   load_checkpoint(path) -> dict   load(path, device) -> UNet

    TrainStep(model, loss, optimizer, x_shape, y_shape, y_dtype, clip=None, graph=False, reduce=None)

One step (TrainStep): copy the batch into static buffers; model.reseed(step);
optimizer.advance() (host: step count, lr and bias corrections written to device memory);
then the device part: zero_grad; forward; loss; backward; [reduce: the all-reduce of the
flat gradient buffer of a data-parallel run]; [clip]; optimizer.apply(); the loss copied
into a static 0-d buffer. After it, [schedule.step()]. Everything random is a
function of explicit seeds and counters (batch order of (seed, epoch), dropout masks of
the global step), and a checkpoint holds the weights, BN statistics, optimizer and
schedule state and those counters: a resumed run repeats the uninterrupted one bit for
bit on the CPU.

On CuPy a step issues no device->host synchronisation: the value checks of the losses
(finite logits, label range, targets in [0, 1]) are replaced by checks of the batch on
the host before it is copied (debug=True keeps the device checks), and losses stay on
the device until the epoch ends, when they are read in one transfer (a non-finite loss
is then reported with its step). With graph=True the device part is captured once into
a CUDA graph and replayed (TrainStep).

A checkpoint is one safetensors file:
    tensors   model.state_dict() names -> arrays, "optim/<name>" -> optimizer state (P,)
    metadata  "cunet.model": JSON of model.config; "cunet.train": JSON of the optimizer's
              hyper-parameters and config, schedule config/state, loss config, epoch, batch
              (batches done in that epoch), step and history; "cunet.extra": JSON of
              user extras (e.g. intensity normalization); "cunet.version"
Every file is written to a temporary file in its folder and renamed over the target
(os.replace), so a crash never leaves a half-written file under the final name.

Data-parallel runs (fit(comm=...), under mpiexec; cunet.distributed): every rank runs this
loop on its shard of each global batch, with one gradient all-reduce per step. Rank 0
alone validates, writes the run directory and logs; the others wait for it at the end of
each epoch. A stop on the time budget is rank 0's decision, broadcast each step; step
losses are averaged over the ranks (every rank sees the same value, so a non-finite loss
stops all of them at the same step).

Not here: data loading and augmentation (cunet.data), sliding-window inference (cunet.infer).
"""
import contextlib
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np

from cunet import __version__, _check
from cunet._files import atomic_write
from cunet.nn.model import _host, upload
from cunet.reference import PRECISIONS

__all__ = ["ArrayBatches", "History", "TrainStep", "fit", "save_checkpoint", "load_checkpoint", "load"]


# ---- batch sources

class ArrayBatches:
    """Mini-batches over in-memory NumPy arrays: images (M, C, *S) float, targets (M, *S)
    integer labels or (M, C', *S) float. The order of epoch e is a permutation seeded by
    (seed, e), so a resumed run sees the same batches."""

    def __init__(self, images, targets, batch_size=8, shuffle=True, seed=0, drop_last=False):
        for name, a in (("images", images), ("targets", targets)):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{name}: expected a numpy array, got {type(a).__name__}")
        _check.array("images", images, ndim=(4, 5))
        m, s = images.shape[0], tuple(images.shape[2:])
        if m == 0:
            raise ValueError(f"images: expected at least one sample, got shape {images.shape}")
        if targets.dtype.kind in "iub":
            want = (m,) + s
        elif targets.dtype.kind == "f":
            want = (m, targets.shape[1] if targets.ndim > 1 else 1) + s
        else:
            raise TypeError(f"targets: expected integer labels or float maps, got {targets.dtype}")
        if tuple(targets.shape) != want:
            kind = "integer labels (M, *S)" if targets.dtype.kind in "iub" else "float maps (M, C, *S)"
            raise ValueError(f"targets: expected {kind} = {want} to match images {images.shape}, "
                             f"got {targets.shape}")
        self.images, self.targets = images, targets
        self.batch_size = _check.integer("batch_size", batch_size, lo=1)
        self.shuffle = _check.choice("shuffle", shuffle, (True, False))
        self.seed = _check.integer("seed", seed, lo=0)
        self.drop_last = _check.choice("drop_last", drop_last, (True, False))
        if drop_last and batch_size > m:
            raise ValueError(f"batch_size: expected at most {m} samples with drop_last=True, got {batch_size}")

    def __len__(self):
        m = self.images.shape[0]
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def batches(self, epoch):
        """Yields (x, y) NumPy batches of epoch `epoch` (an int >= 0)."""
        epoch = _check.integer("epoch", epoch, lo=0)
        m = self.images.shape[0]
        order = np.random.default_rng((self.seed, epoch)).permutation(m) if self.shuffle else np.arange(m)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.images[idx], self.targets[idx]


def _source(name, src, shuffle):
    if isinstance(src, tuple) and len(src) == 2:
        return ArrayBatches(*src, batch_size=8, shuffle=shuffle)
    if not (callable(getattr(src, "batches", None)) and hasattr(src, "__len__")):
        raise TypeError(f"{name}: expected a batch source (an object with .batches(epoch) and __len__, e.g. "
                        f"ArrayBatches) or an (images, targets) tuple, got {type(src).__name__}")
    if len(src) < 1:
        raise ValueError(f"{name}: expected a batch source with at least one batch, got len {len(src)}")
    return src


# ---- history

class History:
    """Per-epoch records of a run (what history.json holds). A record: epoch (1-based),
    step (steps done), batches, partial (a stop inside the epoch), lr, train_loss, time,
    and with validation val_loss plus dice/iou (per class, None where a class is absent
    from both maps), mean_dice/mean_iou (foreground classes), or psnr (MSE/L1 runs).
    history["key"] -> the list of that key over the records."""

    def __init__(self, records=(), best=None, best_epoch=None, stopped=None):
        self.records, self.best, self.best_epoch, self.stopped = list(records), best, best_epoch, stopped

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key):
        return [r.get(key) for r in self.records]

    def append(self, record):
        """Adds a record; True when its validation score beats the best so far."""
        self.records.append(record)
        score = _score(record)
        if score is None or (self.best is not None and score <= self.best):
            return False
        self.best, self.best_epoch = score, record["epoch"]
        return True

    def to_dict(self):
        return {"records": self.records, "best": self.best, "best_epoch": self.best_epoch, "stopped": self.stopped}

    @classmethod
    def from_dict(cls, d):
        return cls(d.get("records", ()), d.get("best"), d.get("best_epoch"), d.get("stopped"))

    def __repr__(self):
        return f"History({len(self)} epochs, best {self.best} at epoch {self.best_epoch}, stopped: {self.stopped})"


def _score(record):
    """Validation score (higher is better): mean foreground Dice, else -val_loss."""
    if record.get("mean_dice") is not None:
        return record["mean_dice"]
    return None if record.get("val_loss") is None else -record["val_loss"]


def _num(v):
    """float, or None for NaN/inf (history.json is strict JSON)."""
    v = float(v)
    return v if math.isfinite(v) else None


# ---- one step over static buffers (and its CUDA graph)

class TrainStep:
    """A training step whose inputs and outputs live in fixed (static) buffers:

        step = TrainStep(model, loss, optimizer, x_shape, y_shape, y_dtype, clip=None, graph=False)
        value = step(x, y, index)   # -> step.loss, a 0-d array on the model's device

    x (N, C, *S) and y (y_shape, y_dtype: int64 labels or float maps) are copied into
    step.x / step.y (NumPy or CuPy sources; a NumPy batch goes to the GPU as one
    asynchronous copy); index is the global step (dropout masks). The device part
    (zero_grad, forward, loss, backward, [clip_grad_norm], optimizer.apply, loss copied to
    step.loss; see the module doc) reads only those buffers, the model's flat arrays, the
    optimizer's state and `scalars`, and the model's `seeds`, so it can be replayed.

    graph=True (a model on "cuda" only): every call runs on step.stream (a non-blocking
    CuPy stream). Call 1 runs the device part eagerly (kernels compiled and loaded, lazy
    state allocated); call 2 eagerly again while counting the bytes it allocates; call 3
    reserves step.arena, one buffer of that many bytes, and captures the device part
    (stream.begin_capture / end_capture) with every allocation served from it by a bump
    allocator; from call 3 on each call launches the graph. So capture calls no cudaMalloc,
    the step allocates nothing after the warm-up, the addresses baked into the graph belong
    to it alone (nothing else allocates from the arena, which lives as long as the step),
    and the same sequence lands on the same addresses (CuPy's own pool picks blocks from
    sets). The price: temporaries are not reused within the step, so step.arena_bytes (the
    sum of the step's allocations) exceeds an eager step's peak. Replays use the arrays as
    they were at capture: do not move the model or load optimizer state afterwards (make a
    new TrainStep). The losses' value checks never run in a captured step (they read the
    device): check batches on the host (fit does). Read step.loss on step.stream (or after
    step.stream.synchronize()): the stream does not synchronize with the legacy default one.

    checks: the losses' value checks (None: on for NumPy, off for CuPy). stream: the CuPy
    stream the calls run on (default: the current one; a new non-blocking one with graph).
    reduce: None or a callable run between backward and clip/apply (a data-parallel run's
    gradient all-reduce, cunet.distributed.DataParallel.reduce_gradients; with graph=True
    it is captured, so it must only enqueue work on the current stream, as NCCL does)."""

    def __init__(self, model, loss, optimizer, x_shape, y_shape, y_dtype, clip=None, graph=False, checks=None,
                 stream=None, reduce=None):
        _check.choice("graph", graph, (True, False))
        if graph and model.device != "cuda":
            raise ValueError(f"graph: CUDA graphs need a model on 'cuda' (CuPy arrays), got a model on "
                             f"{model.device!r}; use graph=False")
        self.model, self.loss_fn, self.optimizer, self.clip, self.reduce = model, loss, optimizer, clip, reduce
        self.checks = (model.xp is np) if checks is None else bool(checks)
        xp, fdt = model.xp, model.params.dtype
        self.graph = self.stream = self.arena = None
        self.capture, self.calls, self.arena_bytes = graph, 0, None
        if model.device == "cuda":
            import cupy
            self.stream = stream if stream is not None or not graph else cupy.cuda.Stream(non_blocking=True)
        with self._on_stream():
            self.x = xp.zeros(tuple(x_shape), fdt)
            self.y = xp.zeros(tuple(y_shape), y_dtype)
            self.loss = xp.zeros((), fdt)
        self.logits = None

    def _on_stream(self):
        return self.stream if self.stream is not None else contextlib.nullcontext()

    def load(self, x, y):
        """Copy a batch (NumPy or array of the model's device) into step.x, step.y."""
        for name, dst, src in (("x", self.x, x), ("y", self.y, y)):
            if tuple(src.shape) != dst.shape:
                raise ValueError(f"{name}: expected shape {dst.shape} (the static buffer), got {tuple(src.shape)}")
            if isinstance(dst, np.ndarray) or not isinstance(src, np.ndarray):
                dst[...] = src
            else:   # NumPy -> CuPy: one host->device copy on the current stream, no sync
                upload(dst, src)

    def _device_part(self):
        """Everything a graph replays: kernels over static buffers, no host reads."""
        from cunet.optim import clip_grad_norm
        self.logits = None   # released before the new ones are allocated (the eager steps' peak)
        self.optimizer.zero_grad()
        self.logits = self.model.forward(self.x)
        value, dlogits = self.loss_fn(self.logits, self.y)
        self.model.backward(dlogits, input_grad=False)
        if self.reduce is not None:   # data-parallel: grads (P,) <- mean over ranks, before clip sees them
            self.reduce()
        if self.clip is not None:
            clip_grad_norm(self.model, self.clip)
        self.optimizer.apply()
        self.loss[...] = value

    def __call__(self, x, y, index):
        with self._on_stream():
            self.load(x, y)
            self.model.reseed(index)
            self.optimizer.advance()
            if not self.capture:
                with _check.value_checks(self.checks):
                    self._device_part()
            else:
                self._graph_step()
        self.calls += 1
        return self.loss

    def _graph_step(self):
        import cupy
        if self.graph is None and self.calls == 0:   # warm-up
            with _check.value_checks(self.checks):
                self._device_part()
            return
        if self.graph is None and self.calls == 1:   # warm-up that measures the arena: exactly what capture runs
            counter = _Arena(None)
            with cupy.cuda.using_allocator(counter.malloc), _check.value_checks(False):
                self._device_part()
            self.arena_bytes = counter.offset
            return
        if self.graph is None:
            self.arena = _Arena(self.arena_bytes)   # reserved before capture: no cudaMalloc inside it
            with cupy.cuda.using_allocator(self.arena.malloc), _check.value_checks(False):
                self.stream.begin_capture()
                try:
                    self._device_part()
                finally:
                    graph = self.stream.end_capture()   # also ends a capture an error broke off
            self.graph = graph
        self.graph.launch(self.stream)


class _Arena:
    """The allocator of a captured step (cupy.cuda.using_allocator): allocation k gets the
    next slice of one reserved buffer (256-byte aligned, never reused). _Arena(None) only
    counts: it allocates with the allocator current at its creation and adds up the bytes
    (the warm-up)."""
    ALIGN = 256

    def __init__(self, nbytes):
        import cupy
        self.nbytes, self.offset = nbytes, 0
        self.inner = cupy.cuda.get_allocator()   # the allocator in use outside the step
        self.buffer = None if nbytes is None else cupy.cuda.alloc(max(nbytes, 1))

    def malloc(self, size):
        import cupy
        n = -(-size // self.ALIGN) * self.ALIGN
        if self.buffer is None:
            self.offset += n
            return self.inner(size)
        if self.offset + n > self.nbytes:
            raise RuntimeError(f"graph capture: the step asked for more than the {self.nbytes} bytes its warm-up "
                               f"used (at {self.offset} bytes, {size} more); did a shape or setting change "
                               f"between steps?")
        mem = cupy.cuda.memory.UnownedMemory(self.buffer.ptr + self.offset, size, self, self.buffer.device_id)
        self.offset += n
        return cupy.cuda.memory.MemoryPointer(mem, 0)


# ---- the loop

def fit(model, loss, optimizer, train, val=None, *, epochs=None, steps=None, schedule=None, clip=None, out=None,
        num_classes=None, resume=None, time_budget=None, progress=True, log=print, extra=None, precision=None,
        graph=False, debug=False, overwrite=False, comm=None):
    """Train `model` on batch source `train`; returns the History.

    Stops after `epochs` epochs or `steps` steps (counted from the start of the run, so a
    resumed call with the same arguments finishes the original plan), or once
    `time_budget` seconds of this call have passed (after the current step); at least one
    of the three must be given. Each epoch
    (and at a stop) it validates on `val` in eval mode and, with out=DIR, writes
    DIR/last.safetensors, DIR/best.safetensors (when the score improves), DIR/history.json
    and DIR/history.png. A DIR holding another run's files is refused unless `resume` is
    one of its checkpoints or overwrite=True (which deletes them first): the files of a run
    directory always come from one run. `extra` (JSON-able) goes into the checkpoints ("cunet.extra").
    A non-finite loss raises FloatingPointError; the last checkpoint is left as it was.

    precision ("fp32", "tf32", "bf16"): the conv GEMM operands for this call (training and
    validation), overriding the model's own, which is restored afterwards; None keeps the
    model's. Parameters, gradients and optimizer state stay float32 either way.
    On a "cuda" model a step never waits for the device: batches are checked on the host
    (a source yielding CuPy batches is not checked), losses are read at the end of each
    epoch (the progress bar's loss too), and the time
    budget counts host time (the device may be some steps behind). debug=True keeps the
    losses' device-side value checks (one sync each per step). graph=True captures the
    step into a CUDA graph and replays it (TrainStep; batches of another shape, e.g. a
    short last batch, run uncaptured); it needs a model on "cuda" and debug=False.

    comm (an mpi4py communicator, e.g. cunet.distributed.world(); the same call on every
    rank): data-parallel training (cunet.distributed). `train` yields the global batches;
    each rank trains on its contiguous 1/N of every batch (the batch size must be a
    multiple of N), rank 0's initial (or resumed) weights are broadcast first, and the
    gradients are averaged by one all-reduce per step, so N ranks take the steps one
    process would with the same batches (up to float32 summation order; not for batch
    norm, whose statistics are per rank, dropout, whose masks are per rank, or the pooled
    Dice terms). Rank 0 alone validates, writes `out` and logs (the History of the other
    ranks lacks the validation entries); the time budget is rank 0's clock; every rank
    reads `resume` (a shared file system). Before the first step the ranks check that they
    agree on the model's size and config, the device, the number of batches per epoch,
    epochs, steps, whether there is a time budget, the starting step and the optimizer
    and its lr (else cunet.distributed.AllRanks, naming them, on every rank). An exception
    on any rank prints its message naming the rank and aborts the whole job (comm.Abort):
    no rank waits forever for a dead one. A model on "cuda" all-reduces through NCCL, one GPU per rank (see
    cunet.distributed.use_local_gpu)."""
    if epochs is None and steps is None and time_budget is None:
        raise ValueError("epochs, steps, time_budget: expected at least one of them, got none")
    epochs = None if epochs is None else _check.integer("epochs", epochs, lo=1)
    steps = None if steps is None else _check.integer("steps", steps, lo=1)
    clip = None if clip is None else _check.number("clip", clip, lo=0, lo_open=True)
    time_budget = None if time_budget is None else _check.number("time_budget", time_budget, lo=0, lo_open=True)
    num_classes = max(2, model.config["out_channels"]) if num_classes is None else \
        _check.integer("num_classes", num_classes, lo=1)
    if not callable(loss):
        raise TypeError(f"loss: expected a callable loss(logits, target) -> (loss, dlogits), got {type(loss).__name__}")
    precision = None if precision is None else _check.choice("precision", precision, PRECISIONS)
    _check.choice("graph", graph, (True, False))
    _check.choice("debug", debug, (True, False))
    if graph and model.device != "cuda":
        raise ValueError(f"graph: CUDA graphs need a model on 'cuda' (CuPy arrays), got a model on {model.device!r}; "
                         f"use graph=False or model.to('cuda')")
    if graph and debug:
        raise ValueError("debug: expected False with graph=True (the value checks read the device in every step, "
                         "which a captured graph cannot), got True")
    train, val = _source("train", train, True), None if val is None else _source("val", val, False)
    _check.flag("overwrite", overwrite)
    from cunet import distributed
    comm = distributed.check_comm("comm", comm)
    root = distributed.rank(comm) == 0
    if comm is not None:
        train = distributed.Shard(train, comm.Get_rank(), comm.Get_size())   # (same error on every rank)
        if not root:
            progress, log, val = False, None, None
    with distributed.guard(comm, "cunet.train.fit"):
        log = log or (lambda line: None)
        out = None if out is None else Path(out)
        if out is not None and root:
            _run_dir(out, resume, overwrite, log)
        dp = None if comm is None else distributed.DataParallel(comm, model)

        epoch = batch = step = 0   # epoch index, batches done in it, steps done
        history = History()
        if resume is not None:
            epoch, batch, step, history, saved_extra = _resume(resume, model, optimizer, schedule,
                                                               distributed.size(comm))
            extra = saved_extra if extra is None else extra
        n_batches = len(train)
        if dp is not None:
            # ranks that disagree on these would meet in mismatched collectives and wait for ever
            distributed.same(comm, params=int(model.params.size), buffers=int(model.buffers.size),
                             config={k: v for k, v in model.config.items() if k not in ("seed", "init")},
                             device=model.device, batches=n_batches, epochs=epochs, steps=steps,
                             time_budget=time_budget is not None, start=(epoch, batch, step),
                             optimizer=(type(optimizer).__name__, float(optimizer.lr)))
            dp.broadcast_parameters()   # the same start on every rank (fresh init or checkpoint)
        total = min(steps or math.inf, epochs * n_batches if epochs else math.inf)
        from tqdm.auto import tqdm
        bar = tqdm(total=None if total == math.inf else total, initial=min(step, total), disable=not progress,
                   unit="step", dynamic_ncols=True)
        say = bar.write if progress and log is print else log
        gpu = model.device == "cuda"
        checks = debug or not gpu   # the losses' value checks inside a step (device reads)
        last_good = None if resume is None else (Path(resume), step)   # the last checkpoint written or read
        stream = None
        if graph:
            import cupy
            stream = cupy.cuda.Stream(non_blocking=True)   # every call of this fit runs on it (graph, copies, val)
        step_fns = {}   # (x shape, y shape, y dtype) -> TrainStep; the first one is captured with graph=True

        def step_fn(x, y):
            key = (x.shape, y.shape, y.dtype)
            if key not in step_fns:
                step_fns[key] = TrainStep(model, loss, optimizer, x.shape, y.shape, y.dtype, clip,
                                          graph=graph and not step_fns, checks=checks, stream=stream,
                                          reduce=None if dp is None else dp.reduce_gradients)
            return step_fns[key]

        def nonfinite(at, value):
            where = (f"the last good checkpoint is kept: {last_good[0]} (after step {last_good[1]})" if last_good
                     else "no checkpoint had been written" + (" yet" if out else " (out=None)"))
            return FloatingPointError(f"non-finite loss ({value}) at step {at} (epoch {epoch + 1}); training stopped, "
                                      f"{where}")

        stop = None
        own_precision = model.precision
        if precision is not None:
            model._apply_precision(precision)
        model.train()
        t0 = time.monotonic()
        try:
            with stream if stream is not None else contextlib.nullcontext():
                while stop is None and not (epochs is not None and epoch >= epochs or steps is not None and step >= steps):
                    t_epoch, loss_sum, n_done, complete = time.monotonic(), 0.0, 0, True
                    epoch_losses, k = None, 0   # this epoch's step losses, on the model's device

                    def read_losses():   # to the host: every step on the CPU, once an epoch on a GPU
                        nonlocal loss_sum, n_done
                        if n_done < k:
                            values = _host(epoch_losses[n_done:k]).astype(float).tolist()
                            if dp is not None:   # every rank sees the mean: all stop together on a NaN
                                values = dp.mean(values)
                            loss_sum, n_done = _take_losses(values, step, loss_sum, n_done, nonfinite, bar)

                    for i, (x, y) in enumerate(train.batches(epoch)):
                        if i < batch:
                            continue   # resuming inside an epoch: these batches were trained on
                        x, y = _host_batch(model, x, y)
                        if not checks and isinstance(x, np.ndarray):   # (CuPy batches: only with debug=True)
                            _check_batch(x, y, loss, max(2, model.config["out_channels"]))
                        fn = step_fn(x, y)
                        try:
                            # dropout masks of (step, rank): distinct shards get distinct masks
                            value = fn(x, y, step if dp is None else step * dp.size + dp.rank)
                        except ValueError:
                            # the losses reject NaN/inf logits; a diverged model produces them
                            if fn.logits is not None and not bool(model.xp.isfinite(fn.logits).all()):
                                raise nonfinite(step + 1, "NaN/inf logits") from None
                            raise
                        if schedule is not None:
                            schedule.step()
                        step, batch = step + 1, batch + 1
                        if epoch_losses is None:
                            epoch_losses = model.xp.empty(n_batches, value.dtype)
                        epoch_losses[k] = value   # on a GPU a device copy: no sync
                        k += 1
                        if not gpu:
                            read_losses()
                        bar.update(1)
                        if steps is not None and step >= steps:
                            stop = "steps"
                        elif time_budget is not None and time.monotonic() - t0 >= time_budget:
                            stop = "time_budget"
                        if dp is not None and time_budget is not None:
                            stop = dp.decide(stop)   # rank 0's clock: every rank stops after the same step
                        if stop:
                            complete = batch >= n_batches
                            break
                    read_losses()
                    record = dict(epoch=epoch + 1, step=step, batches=batch, partial=not complete,
                                  lr=float(optimizer.lr), train_loss=_num(loss_sum / n_done) if n_done else None,
                                  time=round(time.monotonic() - t_epoch, 3))
                    if val is not None:
                        record.update(_validate(model, loss, val, num_classes))
                        model.train()
                    if complete:
                        epoch, batch = epoch + 1, 0
                    improved = history.append(record)
                    history.stopped = stop or ("epochs" if epochs is not None and epoch >= epochs else
                                               "steps" if steps is not None and step >= steps else None)
                    if out is not None and root:
                        state = dict(epoch=epoch, batch=batch, step=step, history=history.to_dict(),
                                     precision=precision or own_precision, ranks=distributed.size(comm))
                        save_checkpoint(out / "last.safetensors", model, optimizer, schedule, loss, state, extra)
                        last_good = (out / "last.safetensors", step)
                        if improved:
                            save_checkpoint(out / "best.safetensors", model, optimizer, schedule, loss, state, extra)
                        atomic_write(out / "history.json",
                                lambda p: Path(p).write_text(json.dumps(history.to_dict(), indent=1)))
                        atomic_write(out / "history.png", lambda p: _plot(history, p))
                    say(_line(record, epochs, improved and val is not None))
                    if dp is not None:
                        dp.wait_for_root()   # rank 0 validated and wrote; the others sleep meanwhile
        finally:
            bar.close()
            if stream is not None:
                stream.synchronize()   # the caller's streams see the trained parameters
            model._apply_precision(own_precision)
        return history


def _take_losses(values, step, loss_sum, n_done, nonfinite, bar):
    """Host values of the losses of steps n_done+1 .. n_done+len(values) of the epoch, the
    last being `step`: raise on the first non-finite one, show the last on the bar, add
    them to the running sum."""
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise nonfinite(step - len(values) + i + 1, v)
    bar.set_postfix(loss=f"{values[-1]:.4g}", refresh=False)
    return loss_sum + sum(values), n_done + len(values)


def _host_batch(model, x, y):
    """A batch as contiguous NumPy arrays of the dtypes the model's step takes: float32
    (float64 for "reference") images and float targets, integer labels as they are
    (bool -> int64). The step copies them to the device. A batch already on the GPU (a
    source that yields CuPy arrays) stays there (_to_device)."""
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)) and model.device == "cuda":
        return _to_device(model, x, y)
    fdt, ydt = _batch_dtypes(model, y)
    return np.ascontiguousarray(_host(x), dtype=fdt), np.ascontiguousarray(_host(y), dtype=ydt)


def _batch_dtypes(model, y):
    """(image dtype, target dtype) of a step's batch: float32 (float64 for "reference") and
    float targets alike; integer labels keep their dtype (bool -> int64)."""
    fdt = np.float64 if model.device == "reference" else np.float32
    return fdt, (np.int64 if y.dtype.kind == "b" else (fdt if y.dtype.kind == "f" else y.dtype))


def _check_batch(x, y, loss, k):
    """The losses' value checks, made on the host batch instead of on the device (no sync):
    finite images, labels in [0, k), finite float targets, in [0, 1] for sigmoid losses."""
    _check.finite("images", x)
    if y.dtype.kind in "iu":
        _check.labels("targets", y, k)
    else:
        _check.finite("targets", y)
        if getattr(loss, "activation", None) == "sigmoid" and (y.min() < 0 or y.max() > 1):
            raise ValueError(f"targets: values must lie in [0, 1], found min {float(y.min())}, max {float(y.max())}")


def _to_device(model, x, y):
    """A batch on the model's device: float32 (float64 for "reference") images and float
    targets; integer labels keep their dtype (bool -> int64)."""
    if model.device == "cuda":
        import cupy
        fdt, ydt = _batch_dtypes(model, y)
        return cupy.asarray(x, dtype=fdt), cupy.asarray(y, dtype=ydt)
    return _host_batch(model, x, y)


def _validate(model, loss, val, k):
    """Validation loss (sample-weighted mean over batches) and, for losses with an
    activation, Dice/IoU per class from confusion counts pooled over the whole set; for
    MSE/L1, PSNR with the data range of the validation targets."""
    from cunet import metrics, ops, reference
    from cunet._ops.metrics import MAX_CLASSES
    model.eval()
    xp, seg = model.xp, getattr(loss, "activation", None) is not None
    counts = (reference if model.device == "reference" or k > MAX_CLASSES else ops).confusion_counts
    total, n, tp_fp_fn, sse, size, lo, hi = 0.0, 0, None, 0.0, 0, None, None   # device scalars: no sync per batch
    for x, y in val.batches(0):
        x, y = _to_device(model, x, y)
        logits = model.forward(x)
        value, _ = loss(logits, y)
        total, n = total + value * x.shape[0], n + x.shape[0]
        if seg and (y.dtype.kind in "iu" or y.shape[1] == 1):   # a label map (multi-label float maps: loss only)
            labels = y if y.dtype.kind in "iu" else (y[:, 0] >= 0.5).astype(np.int64)
            c = xp.stack(counts(metrics.predict(logits), labels, k))   # (3, K) tp, fp, fn
            tp_fp_fn = c if tp_fp_fn is None else tp_fp_fn + c
        elif not seg:
            r = logits.astype(np.float64) - y
            sse, size = sse + (r * r).sum(), size + r.size
            lo = y.min() if lo is None else xp.minimum(lo, y.min())
            hi = y.max() if hi is None else xp.maximum(hi, y.max())
    out = {"val_loss": _num(total / n)}
    if tp_fp_fn is not None:
        dice, iou = metrics._scores(*_host(tp_fp_fn).astype(np.float64))   # NaN: class absent from both
        fg = slice(1, None) if k > 1 else slice(None)
        for name, s in (("dice", dice), ("iou", iou)):
            out[name] = [_num(v) for v in s]
            out[f"mean_{name}"] = _num(metrics._nanmean(s[fg]))
    elif not seg:
        mse, rng = float(sse) / size, float(hi - lo) or 1.0
        out["psnr"] = _num(10 * math.log10(rng * rng / mse)) if mse > 0 else None
    return out


def _line(r, epochs, best):
    s = f"epoch {r['epoch']}/{epochs or '-'} step {r['step']}{' (stopped)' if r['partial'] else ''}"
    for key in ("train_loss", "val_loss", "mean_dice", "mean_iou", "psnr"):
        if r.get(key) is not None:
            s += f"  {key} {r[key]:.4g}"
    return s + f"  lr {r['lr']:.3g}  {r['time']:.1f}s" + ("  *best" if best else "")


def _plot(history, path):
    """Loss curves (log scale when positive) and the validation score against steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 3.6), tight_layout=True)
    FigureCanvasAgg(fig)   # no pyplot: the caller's matplotlib backend is left alone
    a, b = fig.subplots(1, 2)
    x = history["step"]
    curves = [(k, [np.nan if v is None else v for v in history[k]]) for k in ("train_loss", "val_loss")]
    for k, ys in curves:
        if not all(np.isnan(ys)):
            a.plot(x, ys, marker=".", label=k)
    if all(v > 0 for _, ys in curves for v in ys if not np.isnan(v)):
        a.set_yscale("log")
    a.set(xlabel="step", title="loss")
    a.legend()
    if all(v is None for v in history["val_loss"]):
        b.text(0.5, 0.5, "no validation set", ha="center", va="center")
        b.set_axis_off()
    elif any(v is not None for v in history["mean_dice"]):
        for k in ("mean_dice", "mean_iou"):
            b.plot(x, [np.nan if v is None else v for v in history[k]], marker=".", label=k)
        b.set(ylim=(0, 1), title="validation (foreground classes)")
        b.legend()
    else:
        b.plot(x, [np.nan if v is None else v for v in history["psnr"]], marker=".")
        b.set(title="validation PSNR (dB)")
    b.set(xlabel="step")
    fig.savefig(path, format="png", dpi=80)


# ---- checkpoints

RUN_FILES = ("last.safetensors", "best.safetensors", "history.json", "history.png")


def _run_dir(out, resume, overwrite, log):
    """The checkpoints of a run directory belong to one run. A directory holding another
    run's files is refused, unless the call resumes from it or overwrite=True clears them
    (a later run without validation would otherwise leave the earlier run's best model
    beside its own last one). Temporaries of killed writes are removed either way."""
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    held = [name for name in RUN_FILES if (out / name).exists()]
    if not held:
        return
    if resume is not None and Path(resume).resolve().parent == out.resolve():
        return
    if not overwrite:
        raise ValueError(f"out: {out} already holds a training run ({', '.join(held)}); resume it "
                         f"(resume={str(out / 'last.safetensors')!r}), start over (overwrite=True) or choose "
                         f"another directory")
    for name in held:
        (out / name).unlink()
    log(f"out: removed the previous run's {', '.join(held)} from {out}")


def _json(name, value):
    try:
        return json.dumps(value, allow_nan=False, default=_jsonable)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a JSON-able value (finite numbers), got one that is not ({e})") from None


def _jsonable(o):
    if isinstance(o, np.generic):   # NumPy scalars from configs
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON-able")


def save_checkpoint(path, model, optimizer=None, schedule=None, loss=None, train_state=None, extra=None):
    """Write model (+ optimizer, schedule, loss config, train_state dict, extra) to one
    safetensors file, atomically."""
    from safetensors.numpy import save_file

    host = lambda a: np.ascontiguousarray(_host(a))   # noqa: E731
    tensors = {name: host(a) for name, a in model.state_dict().items()}
    train = dict(train_state or {})
    if optimizer is not None:
        sd = optimizer.state_dict()
        train.update(optimizer=sd["hyper"], optimizer_config=getattr(optimizer, "config", None))
        tensors.update({f"optim/{name}": host(a) for name, a in sd["state"].items()})
    if schedule is not None:
        train["schedule"] = {"config": getattr(schedule, "config", None), "state": schedule.state_dict()}
    if loss is not None:
        train["loss"] = getattr(loss, "config", None)
    meta = {"cunet.model": _json("model.config", model.config), "cunet.train": _json("train_state", train),
            "cunet.extra": _json("extra", {} if extra is None else extra), "cunet.version": __version__}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_checkpoint(path):
    """-> {"config": model config, "state": name -> NumPy array, "optim": name -> array,
    "train": dict, "extra": dict, "version": str}. ValueError naming the file if it is
    missing, unreadable or lacks cunet metadata."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r}: no such file")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:   # safetensors raises its own SafetensorError (and OSError) for bad files
        raise ValueError(f"checkpoint {str(path)!r}: not a readable safetensors file ({e})") from None
    if "cunet.model" not in meta:
        raise ValueError(f"checkpoint {str(path)!r}: no 'cunet.model' metadata (not written by "
                         f"cunet.train.save_checkpoint); found keys {sorted(meta)}")
    parsed = {}
    for key in ("model", "train", "extra"):
        try:
            parsed[key] = json.loads(meta.get(f"cunet.{key}", "{}"))
        except json.JSONDecodeError as e:
            raise ValueError(f"checkpoint {str(path)!r}: metadata 'cunet.{key}' is not valid JSON ({e})") from None
    for name, v in tensors.items():   # NaN weights would give a confident wrong answer, not an error
        if v.dtype.kind != "f":
            raise ValueError(f"checkpoint {str(path)!r}: tensor {name!r} has dtype {v.dtype}; expected float32")
        bad = int(v.size - np.count_nonzero(np.isfinite(v)))
        if bad:
            raise ValueError(f"checkpoint {str(path)!r}: tensor {name!r} holds {bad} NaN or infinite value(s) "
                             f"(the file is damaged, or the run that wrote it diverged)")
    return {"config": parsed["model"], "state": {k: v for k, v in tensors.items() if not k.startswith("optim/")},
            "optim": {k[6:]: v for k, v in tensors.items() if k.startswith("optim/")},
            "train": parsed["train"], "extra": parsed["extra"], "version": meta.get("cunet.version")}


def load(path, device="cpu"):
    """A UNet rebuilt from a checkpoint's config with its weights, in eval mode, on
    `device`; `.extra` holds the checkpoint's extra dict."""
    from cunet.nn.model import DEVICES
    from cunet.nn.unet import UNet, state_shapes
    _check.choice("device", device, DEVICES)
    ckpt = load_checkpoint(path)
    try:   # the config's tensors against the file's before anything is allocated
        _check_state(state_shapes(ckpt["config"]), ckpt["state"])
        model = UNet(**ckpt["config"]).to(device)
        model.load_state_dict(ckpt["state"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {str(path)!r}: does not hold a cunet.nn.UNet ({e})") from None
    model.eval()
    model.extra = ckpt["extra"]
    return model


def _check_state(shapes, state):
    """The tensors a config asks for (name -> shape) against those a file holds."""
    missing = [n for n in shapes if n not in state]
    unexpected = [n for n in state if n not in shapes]
    if missing or unexpected:
        raise ValueError(f"its config asks for tensors the file lacks {missing[:3]}{'...' if len(missing) > 3 else ''}"
                         f" and the file holds others {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    for name, shape in shapes.items():
        if tuple(state[name].shape) != tuple(shape):
            raise ValueError(f"its config asks for {name!r} of shape {tuple(shape)}, the file holds "
                             f"{tuple(state[name].shape)}")


def _resume(path, model, optimizer, schedule, ranks=1):
    """Restore model, optimizer, schedule from a checkpoint written by fit ->
    (epoch, batch, step, history, extra). ranks: the data-parallel size of this run (a
    checkpoint of another size resumes, but does not repeat the original run exactly)."""
    ckpt = load_checkpoint(path)
    train = ckpt["train"]
    if "step" not in train or "optimizer" not in train:
        raise ValueError(f"resume: checkpoint {str(path)!r} was not written by fit (no optimizer/step state)")
    try:
        model.load_state_dict(ckpt["state"])
    except ValueError as e:
        raise ValueError(f"resume: checkpoint {str(path)!r} does not fit this model ({e})") from None
    optimizer.load_state_dict({"hyper": train["optimizer"], "state": ckpt["optim"]})
    if int(train.get("ranks", 1)) != ranks:
        warnings.warn(f"resume: checkpoint {str(path)!r} was written by a run on {train.get('ranks', 1)} rank(s), "
                      f"this one has {ranks}: it continues, but its batches split differently, so it will not "
                      f"repeat the original run", stacklevel=3)
    saved = train.get("schedule")
    if schedule is not None:
        if saved is None:
            raise ValueError(f"schedule: checkpoint {str(path)!r} has no schedule state to resume from")
        schedule.load_state_dict(saved["state"])
    elif saved is not None:
        warnings.warn(f"resume: checkpoint {str(path)!r} was trained with schedule {saved.get('config')}, "
                      f"but no schedule was passed; continuing at a fixed lr", stacklevel=3)
    return (int(train["epoch"]), int(train.get("batch", 0)), int(train["step"]),
            History.from_dict(train.get("history") or {}), ckpt["extra"])
