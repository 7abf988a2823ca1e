"""Data-parallel training and cohort splits across processes: MPI (mpi4py) to launch and
coordinate them, NCCL (CuPy's cupy.cuda.nccl) for the gradients of models on GPUs.

    comm = world()                  # mpi4py COMM_WORLD under mpiexec with > 1 process, else None
    rank(comm), size(comm)          # 0, 1 for comm=None
    local_rank(comm)                # rank among the processes on this node (GPU = local rank)
    use_local_gpu(comm)             # cupy.cuda.Device(local rank % GPUs).use(); before model.to("cuda")
    dp = DataParallel(comm, model)  # what train.fit(comm=...) uses:
        dp.broadcast_parameters()   #   rank 0's params and buffers (BN statistics) to every rank
        dp.reduce_gradients()       #   model.grads <- mean over ranks, in place: one all-reduce
        dp.mean(values)             #   host float values averaged over ranks (step losses)
        dp.decide(value)            #   rank 0's value on every rank (the time-budget stop)
        dp.wait_for_root()          #   a barrier that sleeps instead of spinning (rank 0 validates)
    same(comm, **fields)            # every rank's fields equal, else AllRanks naming the fields and ranks
    with together(comm): ...        # checks before any collective: an error on any rank -> AllRanks on all
    allsum(comm, values), sleep_barrier(comm)
    Shard(source, rank, size)       # rank r's contiguous slice of every global batch of a source
    guard(comm, what)               # with-block: an exception on one rank -> its message naming the
                                    # rank on stderr, then comm.Abort, so no other rank hangs;
                                    # AllRanks (raised on every rank at once): rank 0 prints, all exit 2
    part(items, part_id, num_parts) # items[i] for i % num_parts == part_id (cohort prediction)

Data parallelism here is DDP's: every rank holds the whole model; rank r trains on
rows [r*b, (r+1)*b) of each global batch (b = B / N); after the backward pass one
all-reduce of the flat gradient buffer (P,) sums the ranks' gradients, and the buffer is
scaled by 1/N. A loss that averages over its batch gives per-shard means, so the mean of
the N shard gradients is the gradient of the global batch (shards of equal size): N
ranks with global batch B take the same steps as one process with batch B, up to float32
summation order. Exceptions: losses that pool over the batch before a nonlinearity (the
Dice terms of Dice/DiceCE pool counts over the batch; their N-rank gradient is the mean of
per-shard Dice gradients, as under DDP), batch norm (statistics per rank and per shard;
the running statistics of rank 0 are the ones checkpointed) and dropout (masks drawn per
rank, seed (step * N + rank)).

Transports: a model on the CPU ("cpu", "reference") reduces with MPI Allreduce on its
NumPy buffer in place; a model on "cuda" with NCCL (ncclAllReduce, SUM, then one scale
kernel) on the current CuPy stream, so it runs inside a captured CUDA graph too. The NCCL
unique id is made on rank 0 and sent to the others over MPI.

mpi4py is imported only when the process was started by an MPI launcher (its
environment variables, below) or a communicator is passed; a process that is not under
mpiexec never needs it. Missing mpi4py -> ImportError saying pip install 'cunet[mpi]'.

Not here: the training loop (cunet.train.fit takes comm=) and the command (cunet.cli).
"""
import contextlib
import os
import sys
import time
import traceback

import numpy as np

__all__ = ["world", "rank", "size", "local_rank", "use_local_gpu", "DataParallel", "Shard", "guard", "part", "allsum",
           "sleep_barrier", "same", "together", "AllRanks"]

INSTALL = "pip install 'cunet[mpi]'"
# process-count variables set by launchers: MPICH/Intel MPI (hydra), Open MPI, MVAPICH, Slurm's srun --mpi=pmi2
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")


def mpi():
    """The mpi4py.MPI module, or ImportError naming the extra to install."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"distributed runs need mpi4py and an MPI library ({e}); install them with {INSTALL}, "
                          f"or see the README's 'More than one machine' for a cluster's own MPI") from None
    return MPI


def launched(environ=None):
    """The number of processes an MPI launcher says it started (1 when none did).
    PMIx alone (no size variable) counts as 'unknown': -1."""
    env = os.environ if environ is None else environ
    for var in SIZE_VARS:
        if env.get(var, "").strip().isdigit():
            return int(env[var])
    return -1 if any(var in env for var in RANK_VARS) else 1


def world():
    """mpi4py's COMM_WORLD when this process is one of several started by an MPI launcher,
    else None (mpi4py not imported). Under a launcher that started > 1 process mpi4py is
    required; with PMIx alone it is used when installed."""
    n = launched()
    if n == 1:
        return None
    try:
        MPI = mpi()
    except ImportError:
        if n == -1:
            return None
        raise
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def rank(comm):
    return 0 if comm is None else comm.Get_rank()


def size(comm):
    return 1 if comm is None else comm.Get_size()


def check_comm(name, comm):
    """None or an mpi4py communicator (duck-typed: Get_rank, Get_size, Allreduce, Abort)."""
    if comm is None:
        return None
    if not all(callable(getattr(comm, m, None)) for m in ("Get_rank", "Get_size", "Allreduce", "Bcast", "Abort")):
        raise TypeError(f"{name}: expected None or an mpi4py communicator (e.g. MPI.COMM_WORLD, or "
                        f"cunet.distributed.world()), got {type(comm).__name__}")
    return comm


def local_rank(comm):
    """This process's rank among the processes of comm on the same node (shared memory)."""
    if comm is None:
        return 0
    MPI = mpi()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        return node.Get_rank()
    finally:
        node.Free()


def use_local_gpu(comm):
    """Makes GPU (local rank mod GPU count) current for this process: one process per GPU.
    Call before moving a model to "cuda". -> the device id."""
    import cupy
    n = cupy.cuda.runtime.getDeviceCount()
    if n < 1:
        raise ValueError("device: expected a CUDA device for a distributed run on 'cuda', CuPy found none")
    dev = local_rank(comm) % n
    cupy.cuda.Device(dev).use()
    return dev


# ---- data parallelism

class DataParallel:
    """The collectives of one data-parallel fit over communicator `comm` (any size >= 1)
    for `model` (whose flat buffers must not be replaced afterwards: model.to() makes
    new ones)."""

    def __init__(self, comm, model):
        self.comm = check_comm("comm", comm)
        if comm is None:
            raise TypeError("comm: expected an mpi4py communicator, got None")
        self.MPI = mpi()
        self.rank, self.size, self.model = comm.Get_rank(), comm.Get_size(), model
        self.nccl = None
        if model.device == "cuda":
            self.nccl = _nccl_communicator(comm)

    def _stream(self):
        import cupy
        return cupy.cuda.get_current_stream().ptr

    def broadcast_parameters(self):
        """params (P,) and buffers (BN running statistics) of rank 0 on every rank."""
        for a in (self.model.params, self.model.buffers):
            if a.size == 0:
                continue
            if self.nccl is None:
                self.comm.Bcast(a, root=0)
            else:
                from cupy.cuda import nccl
                self.nccl.bcast(a.data.ptr, a.size, _nccl_dtype(nccl, a.dtype), 0, self._stream())

    def reduce_gradients(self):
        """model.grads (P,) <- the mean of the ranks' grads, in place. On CuPy no host sync:
        NCCL and the scale are enqueued on the current stream."""
        g = self.model.grads
        if self.nccl is None:
            self.comm.Allreduce(self.MPI.IN_PLACE, g, op=self.MPI.SUM)
        else:
            from cupy.cuda import nccl
            self.nccl.allReduce(g.data.ptr, g.data.ptr, g.size, _nccl_dtype(nccl, g.dtype), nccl.NCCL_SUM,
                                self._stream())
        if self.size > 1:
            g *= g.dtype.type(1.0 / self.size)

    def mean(self, values):
        """A list of host floats -> their element-wise mean over ranks (one Allreduce)."""
        return (np.asarray(allsum(self.comm, values)) / self.size).tolist()

    def decide(self, value):
        """rank 0's (picklable) value, on every rank."""
        return self.comm.bcast(value, root=0)

    def wait_for_root(self):
        """The ranks that do not validate or write checkpoints wait for rank 0 here,
        asleep (sleep_barrier)."""
        sleep_barrier(self.comm)


class AllRanks(ValueError):
    """An error that every rank raises at the same point, after a collective that told each
    of them (same): guard prints it once, from rank 0, and every rank exits with status 2."""


def same(comm, **fields):
    """Checks that every rank passes equal (picklable) fields, e.g. the parameter count and
    the number of steps a fit will take: ranks that disagree would wait for each other in
    mismatched collectives for ever. -> None; AllRanks on every rank naming the fields and
    each rank's value."""
    if comm is None or comm.Get_size() == 1:
        return
    flat = {}
    for k, v in fields.items():   # a dict field compared (and named) entry by entry: config.base
        flat.update({f"{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
    fields = flat
    every = comm.allgather(fields)
    bad = [k for k in dict.fromkeys(k for f in every for k in f) if any(f.get(k) != every[0].get(k) for f in every)]
    if bad:
        shown = "; ".join(f"{k}: " + ", ".join(f"rank {r} {f.get(k)!r}" for r, f in enumerate(every)) for k in bad)
        raise AllRanks(f"the ranks disagree ({shown}); every rank must make the same call (same arguments, data "
                       f"of the same length, the same checkpoint)")


@contextlib.contextmanager
def together(comm):
    """A block of checks every rank runs before the job's collectives (arguments, input
    files): a ValueError, TypeError or OSError in it on any rank becomes AllRanks on every
    rank, with the message (each distinct one naming its ranks when not all had it), so
    guard says it once instead of once per rank. The block must hold no collective: a
    rank that failed skipped the rest of it. Without a communicator errors propagate as is."""
    if comm is None or comm.Get_size() == 1:
        yield
        return
    err = None
    try:
        yield
    except (ValueError, TypeError, OSError) as e:
        err = str(e)
    errs = comm.allgather(err)
    if any(e is not None for e in errs):
        ranks = {}
        for r, e in enumerate(errs):
            if e is not None:
                ranks.setdefault(e, []).append(r)
        if len(ranks) == 1 and None not in errs:   # the usual case: the same bad argument everywhere
            raise AllRanks(errs[0]) from None
        raise AllRanks("; ".join(f"rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))}: {e}"
                                 for e, rs in ranks.items())) from None


def allsum(comm, values):
    """A list of host numbers -> their element-wise sum over the ranks (float64, one Allreduce)."""
    a = np.asarray(values, np.float64)
    comm.Allreduce(mpi().IN_PLACE, a, op=mpi().SUM)
    return a.tolist()


def sleep_barrier(comm, poll=0.002):
    """A barrier that polls and sleeps: MPI's blocking calls busy-wait, and a rank spinning
    while another works takes a core from it (the 2-core machines this is tested on)."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(poll)


def _nccl_communicator(comm):
    """An NCCL communicator over the ranks of `comm`, one GPU per rank (the current CuPy
    device): the unique id made on rank 0 and broadcast over MPI."""
    try:
        from cupy.cuda import nccl
        ok = getattr(nccl, "available", False)
    except ImportError:
        ok = False
    if not ok:
        raise ImportError("a distributed run on 'cuda' all-reduces through NCCL, which CuPy cannot load here; "
                          "install it with the gpu extra (pip install 'cunet[gpu,mpi]'; the library alone: pip install "
                          "'nvidia-nccl-cu13>=2.27.7,<3') or build CuPy against your NCCL")
    uid = nccl.get_unique_id() if comm.Get_rank() == 0 else None
    uid = comm.bcast(uid, root=0)
    return nccl.NcclCommunicator(comm.Get_size(), uid, comm.Get_rank())


def _nccl_dtype(nccl, dtype):
    if dtype == np.float32:
        return nccl.NCCL_FLOAT32
    if dtype == np.float64:
        return nccl.NCCL_FLOAT64
    raise TypeError(f"grads: expected float32 or float64 buffers for NCCL, got {dtype}")


class Shard:
    """Batch source of rank `rank` of `size`: rows [rank*b, (rank+1)*b) of every batch of
    `source` (b = batch rows / size), so the ranks together train on each global batch
    exactly once and a rank's shard is as reproducible as the source's batches (each rank
    draws the whole global batch and keeps its slice: patch cutting is repeated N times,
    the UNet step is not). A batch whose rows are not a multiple of size raises ValueError."""

    def __init__(self, source, rank, size):
        self.source, self.rank, self.size = source, int(rank), int(size)
        b = getattr(source, "batch_size", None)
        if isinstance(b, int) and b % self.size:
            raise ValueError(f"batch_size: expected a multiple of the number of ranks ({self.size}): the batch "
                             f"size is the global batch, split evenly across ranks; got {b}")
        m = getattr(getattr(source, "images", None), "shape", (None,))[0]
        if isinstance(b, int) and isinstance(m, int) and not getattr(source, "drop_last", True) and m % b % self.size:
            raise ValueError(f"batch_size: the last batch of each epoch holds {m % b} samples ({m} samples, batch "
                             f"size {b}), not a multiple of the number of ranks ({self.size}); pass drop_last=True "
                             f"or another batch size")

    @property
    def batch_size(self):
        b = getattr(self.source, "batch_size", None)
        return None if b is None else b // self.size

    def __len__(self):
        return len(self.source)

    def batches(self, epoch):
        for i, (x, y) in enumerate(self.source.batches(epoch)):
            n = x.shape[0]
            if n % self.size or y.shape[0] != n:
                raise ValueError(f"train: batch {i} of epoch {epoch} holds {n} samples, not a multiple of the "
                                 f"number of ranks ({self.size}); the global batch must split evenly")
            b = n // self.size
            yield x[self.rank * b:(self.rank + 1) * b], y[self.rank * b:(self.rank + 1) * b]


# ---- faults

@contextlib.contextmanager
def guard(comm, what="cunet"):
    """Runs a block in which every rank takes part in collectives. When one rank raises,
    the others would wait for it forever: print `what: rank r of N failed: <error>` (and
    the traceback for errors that are not cunet's own ValueError/TypeError/OSError) to
    stderr, then comm.Abort, which ends every process of the job (mpiexec exits
    non-zero), and end this process (MPICH's MPI_Abort returns, and the code after the
    block must not run: it would see the block's work as done). AllRanks, raised on
    every rank together: `what: <error>` once, from rank 0, then every rank exits with
    status 2 (no abort). Without a communicator, or with one process, the exception
    propagates."""
    try:
        yield
    except BaseException as e:
        if comm is None or comm.Get_size() == 1 or isinstance(e, SystemExit) and not e.code:
            raise
        r, n = comm.Get_rank(), comm.Get_size()
        if isinstance(e, AllRanks):
            if r == 0:
                print(f"{what}: {e}", file=sys.stderr, flush=True)
            sleep_barrier(comm)   # rank 0 has printed before any rank leaves (mpiexec ends the job at the first exit)
            _exit(2)
        kind = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        if not isinstance(e, (ValueError, TypeError, OSError, FloatingPointError, KeyboardInterrupt, SystemExit)):
            traceback.print_exc(file=sys.stderr)
        print(f"{what}: rank {r} of {n} failed: {kind}; aborting all {n} ranks", file=sys.stderr, flush=True)
        code = 2 if isinstance(e, (ValueError, TypeError, OSError, FloatingPointError)) else 1
        sys.stdout.flush()
        time.sleep(0.5)   # the launcher forwards our output asynchronously; an abort drops what it has not sent
        comm.Abort(code)
        _exit(code)   # MPICH's MPI_Abort returns; the code after the block must not run


def _exit(code):
    """Ends this process now (no atexit handlers: mpi4py's would MPI_Finalize, which waits for
    ranks that will never get there)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def part(items, part_id, num_parts):
    """items[i] for every i with i % num_parts == part_id: num_parts disjoint parts that
    together hold every item once (the sorted cohort of cunet predict)."""
    return [it for i, it in enumerate(items) if i % num_parts == part_id]
