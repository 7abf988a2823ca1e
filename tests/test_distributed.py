"""Data-parallel training and cohort prediction under a real MPI launcher.

Each test starts `mpiexec -n 2` (the one in this Python's bin/, from the mpi extra) on a
small worker script, with one OpenMP thread per rank, and compares with one process:
- equivalence: 2 ranks x half of global batch B take the same steps as 1 process with
  batch B (no batch norm, no dropout, a per-sample-mean loss): float32 summation order;
- faults: a rank raising mid-run ends both within a bounded time, names the rank, and
  leaves the last checkpoint loadable;
- cohort prediction: `cunet predict MODEL IN_DIR OUT_DIR` over ranks / --num-parts, with
  one corrupt file among good ones.
The NCCL path needs a GPU: the `gpu` test runs it with one rank (N = 1 through NCCL).
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cunet import distributed, train

BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"
ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent('''
    """Trains a tiny UNet `steps` steps with global batch B; saves this rank's params."""
    import sys
    import numpy as np
    import cunet
    from cunet import distributed, losses, optim, train

    dims, steps, B, out, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    comm = distributed.world()
    r = distributed.rank(comm)
    rng = np.random.default_rng(0)
    S = (16, 16) if dims == 2 else (8, 8, 8)
    x = rng.standard_normal((16, 1) + S).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.standard_normal(S) > 0).astype(np.int64)
    # rank 1 starts from other weights: fit must broadcast rank 0's
    model = cunet.UNet(dims=dims, in_channels=1, out_channels=2, base=4, depth=2, norm=None, seed=7 + r)
    # SGD: Adam divides by sqrt(v), which turns float32 noise in a near-zero gradient into a step of ~lr
    opt = optim.SGD(model, lr=0.05, momentum=0.9)
    src = train.ArrayBatches(x, y, batch_size=B, seed=3)

    class Faulty:   # rank 1 raises in the middle of epoch 3
        batch_size = B
        def __len__(self):
            return len(src)
        def batches(self, epoch):
            for i, b in enumerate(src.batches(epoch)):
                if r == 1 and epoch == 2 and i == 1:
                    raise RuntimeError("injected fault")
                yield b

    if mode == "equal":
        train.fit(model, losses.CE(), opt, src, steps=steps, progress=False, log=None, comm=comm)
        np.save(f"{out}.{r}.npy", np.asarray(model.params))
    elif mode.startswith("epochs="):   # epochs=E[,resume]: a run in `out`, or resumed from its last checkpoint
        resume = f"{out}/last.safetensors" if mode.endswith(",resume") else None
        train.fit(model, losses.CE(), opt, src, epochs=int(mode[7:].split(",")[0]), out=out, resume=resume,
                  progress=False, log=None, comm=comm)
        np.save(f"{out}.{r}.npy", np.asarray(model.params))
    elif mode == "mismatch":   # rank 1 asks for one epoch more: it would wait in an all-reduce for ever
        train.fit(model, losses.CE(), opt, src, epochs=2 + r, progress=False, log=None, comm=comm)
        open(f"{out}.after.{r}", "w").close()
    else:
        train.fit(model, losses.CE(), opt, Faulty(), epochs=10, out=out, progress=False, log=None, comm=comm)
        open(f"{out}.after.{r}", "w").close()   # a failed fit must not return (MPICH's MPI_Abort does)
''')


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive", PYTHONPATH=str(ROOT))
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _mpiexec(n, *args, timeout=60):
    assert MPIEXEC.is_file(), f"{MPIEXEC} missing: install the mpi extra (pip install -e '.[mpi]')"
    return subprocess.run([str(MPIEXEC), "-n", str(n), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=ROOT)


def _python(*args, timeout=60):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=_env(), cwd=ROOT)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "worker.py"
    path.write_text(WORKER)
    return path


@pytest.mark.parametrize("dims", [2, 3])
def test_two_ranks_equal_one_process(worker, tmp_path, dims):
    steps, B = 6, 8
    one = _python(worker, dims, steps, B, tmp_path / "one", "equal")
    assert one.returncode == 0, one.stderr
    two = _mpiexec(2, sys.executable, worker, dims, steps, B, tmp_path / "two", "equal")
    assert two.returncode == 0, two.stderr
    ref = np.load(tmp_path / "one.0.npy")
    r0, r1 = np.load(tmp_path / "two.0.npy"), np.load(tmp_path / "two.1.npy")
    np.testing.assert_array_equal(r0, r1)   # every rank applied the same averaged gradient
    np.testing.assert_allclose(r0, ref, rtol=1e-5, atol=1e-6)
    # the steps moved the weights: the comparison is not of two untrained models
    moved = _python("-c", f"import cunet, numpy as np; p = cunet.UNet(dims={dims}, out_channels=2, base=4, depth=2, "
                          f"seed=7).params; print(np.abs(p - np.load({str(tmp_path / 'one.0.npy')!r})).max())")
    assert float(moved.stdout) > 1e-3


def test_rank_failure_aborts_all_and_keeps_checkpoint(worker, tmp_path):
    out = tmp_path / "run"
    res = _mpiexec(2, sys.executable, worker, 2, 0, 4, out, "fault", timeout=60)   # TimeoutExpired = a hang
    assert res.returncode != 0
    assert "rank 1 of 2 failed: RuntimeError: injected fault" in res.stderr, res.stderr
    ckpt = train.load_checkpoint(out / "last.safetensors")   # written by rank 0 after epochs 1 and 2
    assert ckpt["train"]["step"] == 8 and ckpt["train"]["ranks"] == 2
    assert not list(out.glob(".*.tmp"))
    assert not list(tmp_path.glob("run.after.*"))   # no rank ran the caller's code after its fit failed
    train.load(out / "last.safetensors")


def test_ranks_that_disagree_stop_before_the_first_step(worker, tmp_path):
    res = _mpiexec(2, sys.executable, worker, 2, 0, 4, tmp_path / "m", "mismatch")   # TimeoutExpired = a hang
    assert res.returncode == 2, res.stderr
    # said once (rank 0), every rank leaving by itself: no abort
    assert res.stderr.count("cunet.train.fit: the ranks disagree (epochs: rank 0 2, rank 1 3)") == 1, res.stderr
    assert "MPI_Abort" not in res.stderr and not list(tmp_path.glob("m.after.*"))


def test_shard_splits_each_batch_once():
    x = np.arange(24, dtype=np.float32).reshape(12, 1, 1, 2)
    y = np.arange(24).reshape(12, 1, 2) % 2
    src = train.ArrayBatches(x, y, batch_size=6, seed=1)
    shards = [list(distributed.Shard(src, r, 3).batches(4)) for r in range(3)]
    for i, (gx, gy) in enumerate(src.batches(4)):
        np.testing.assert_array_equal(np.concatenate([s[i][0] for s in shards]), gx)
        np.testing.assert_array_equal(np.concatenate([s[i][1] for s in shards]), gy)
    with pytest.raises(ValueError, match="batch_size: expected a multiple of the number of ranks \\(4\\)"):
        distributed.Shard(src, 0, 4)
    short = train.ArrayBatches(x[:10], y[:10], batch_size=6)   # last batch: 4 samples
    with pytest.raises(ValueError, match="last batch of each epoch holds 4 samples"):
        distributed.Shard(short, 0, 3)


def test_launcher_detection():
    assert distributed.launched({}) == 1
    assert distributed.launched({"PMI_SIZE": "4", "PMI_RANK": "1"}) == 4
    assert distributed.launched({"OMPI_COMM_WORLD_SIZE": "2"}) == 2
    assert distributed.launched({"PMIX_RANK": "0"}) == -1
    # not under a launcher: world() is None and mpi4py is never imported
    res = _python("-c", "import sys; from cunet import distributed; print(distributed.world(), "
                        "'mpi4py' in sys.modules)")
    assert res.stdout.split() == ["None", "False"], res.stderr
    with pytest.raises(TypeError, match="comm: expected None or an mpi4py communicator"):
        distributed.check_comm("comm", object())


def test_missing_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # import mpi4py -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'cunet\[mpi\]'"):
        distributed.mpi()
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(ImportError, match=r"pip install 'cunet\[mpi\]'"):
        distributed.world()


@pytest.mark.gpu
def test_nccl_one_rank_matches_plain_step():
    """N = 1 through NCCL (mpi4py's COMM_SELF): the reduced gradient is the rank's own."""
    import cunet
    from mpi4py import MPI
    from cunet import losses, optim
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 16, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    runs = []
    for comm in (None, MPI.COMM_SELF):
        model = cunet.UNet(dims=2, out_channels=2, base=4, depth=2, seed=1).to("cuda")
        opt = optim.Adam(model, lr=1e-2)
        train.fit(model, losses.CE(), opt, (x, y), steps=3, progress=False, log=None, comm=comm)
        runs.append(model.params.get())
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-6, atol=1e-7)


def test_resume_repeats_the_data_parallel_run(worker, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for out, mode in ((whole, "epochs=4"), (cut, "epochs=2"), (cut, "epochs=4,resume")):
        res = _mpiexec(2, sys.executable, worker, 2, 0, 4, out, mode)
        assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(np.load(f"{cut}.0.npy"), np.load(f"{whole}.0.npy"))
    np.testing.assert_array_equal(np.load(f"{cut}.1.npy"), np.load(f"{whole}.0.npy"))
    assert train.load_checkpoint(cut / "last.safetensors")["train"]["step"] == 16


# ---- the command under mpiexec


def _volume(root, name, seed):
    import nibabel as nib
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 20, (32, 32, 4)).astype(np.float32)
    lab = (img > 105).astype(np.uint8)
    nib.save(nib.Nifti1Image(img, np.eye(4)), root / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), root / f"{name}_seg.nii.gz")
    return root / f"{name}.nii.gz", root / f"{name}_seg.nii.gz"


def test_cli_train_under_mpiexec_writes_once(tmp_path):
    img, lab = _volume(tmp_path, "a", 0)
    model = tmp_path / "m.safetensors"
    args = [sys.executable, "-m", "cunet.cli", "train", img, "--labels", lab, "--out", model, "--epochs", "2",
            "--base", "4", "--depth", "2", "--patch", "32", "32", "--batch-size", "4", "--steps-per-epoch", "2",
            "--no-batchnorm"]
    res = _mpiexec(2, *args)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("cunet train: wrote") == 1 and "2 ranks x 2 samples" in res.stdout, res.stdout
    assert res.stdout.count("epoch 2/2") == 1
    assert train.load_checkpoint(tmp_path / "m_run" / "last.safetensors")["train"]["ranks"] == 2
    train.load(model)
    # errors in the arguments are every rank's: said once, as by one process, and every rank exits 2 (no abort)
    again = _mpiexec(2, *args)   # the run directory holds a run
    assert again.returncode == 2 and again.stderr.count("cunet train: error: --out:") == 1, again.stderr
    assert "already holds a training run" in again.stderr and "MPI_Abort" not in again.stderr
    odd = _mpiexec(2, *[("3" if prev == "--batch-size" else v) for prev, v in zip([None] + args, args)], "--overwrite")
    assert odd.returncode == 2 and "MPI_Abort" not in odd.stderr, odd.stderr
    assert odd.stderr.count("cunet train: error: --batch-size: expected a multiple of the number of ranks (2)") == 1


@pytest.fixture
def cohort(tmp_path):
    """A folder of 5 PNG and 1 NIfTI cases plus one corrupt PNG, and an (untrained) 2D model file."""
    import cunet
    from PIL import Image
    cases = tmp_path / "cases"
    cases.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (32, 48), dtype=np.uint8)).save(cases / f"case{i}.png")
    _volume(cases, "vol", 2)
    (cases / "vol_seg.nii.gz").unlink()
    (cases / "case2b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (cases / "notes.txt").write_text("not an image: ignored")
    model = tmp_path / "model.safetensors"
    train.save_checkpoint(model, cunet.UNet(dims=2, out_channels=1, base=4, depth=2, seed=3),
                          extra={"task": "segmentation", "axis": 2})
    return model, cases


GOOD = ["case0.png", "case1.png", "case2.png", "case3.png", "case4.png", "vol.nii.gz"]


def _outputs(folder):
    from cunet import data
    return {p.name: data.load_label(p)[0] for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_predict_folder_reports_the_bad_case_and_finishes_the_others(cohort, tmp_path, capsys):
    from cunet import cli
    model, cases = cohort
    out = tmp_path / "out"
    assert cli.main(["predict", str(model), str(cases), str(out)]) == 2
    cap = capsys.readouterr()
    bad = [line for line in cap.err.splitlines() if "case2b.png" in line]
    assert len(bad) == 1 and bad[0].startswith(f"cunet predict: {cases / 'case2b.png'}: "), cap.err
    assert "1 of 7 cases failed" in cap.err
    assert "6 written, 0 skipped" in cap.out and "1 failed, of 7 cases" in cap.out
    ref = _outputs(out)
    assert sorted(ref) == GOOD and ref["vol.nii.gz"].shape == (32, 32, 4) and ref["case0.png"].shape == (32, 48)
    # a restarted job skips what exists; --overwrite redoes it
    assert cli.main(["predict", str(model), str(cases), str(out)]) == 2
    assert "0 written, 6 skipped" in capsys.readouterr().out
    assert cli.main(["predict", str(model), str(cases), str(out), "--overwrite"]) == 2
    assert "6 written, 0 skipped" in capsys.readouterr().out
    # job arrays: two parts, each case once, the same outputs
    parts = tmp_path / "parts"
    rcs = [cli.main(["predict", str(model), str(cases), str(parts), "--num-parts", "2", "--part-id", str(i)])
           for i in range(2)]
    cap = capsys.readouterr()
    assert sorted(rcs) == [0, 2] and cap.err.count("case2b.png: ") == 1   # the bad case is in one part only
    got = _outputs(parts)
    assert sorted(got) == GOOD and all(np.array_equal(got[n], ref[n]) for n in GOOD)
    assert cli.main(["predict", str(model), str(cases), str(parts), "--num-parts", "2", "--part-id", "2"]) == 2
    assert "--part-id: expected 0..1 (--num-parts 2), got 2" in capsys.readouterr().err
    assert cli.main(["predict", str(model), str(cases), str(cases)]) == 2
    assert "is the INPUT folder" in capsys.readouterr().err


def test_predict_folder_under_mpiexec_matches_one_process(cohort, tmp_path):
    from cunet import cli
    model, cases = cohort
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(["predict", str(model), str(cases), str(one)]) == 2
    res = _mpiexec(2, sys.executable, "-m", "cunet.cli", "predict", model, cases, two)
    assert res.returncode != 0
    assert res.stderr.count(f"cunet predict: {cases / 'case2b.png'}: ") == 1, res.stderr
    assert res.stdout.count("cunet predict: wrote") == 6 and res.stdout.count("6 written") == 1, res.stdout
    ref, got = _outputs(one), _outputs(two)
    assert sorted(got) == GOOD and all(np.array_equal(got[n], ref[n]) for n in GOOD)
