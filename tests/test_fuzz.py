"""Fuzzing what users hand cunet: mutated model files (bytes, header, config, extras,
tensors) and mutated NIfTI files (header fields, truncation, flipped bytes), fed to
`cunet.load`, `cunet predict` and `cunet train`. Seeded and bounded (a few hundred cases,
well under a minute).

Every case must end in a result or a refusal: `load` returns a model or raises
ValueError/TypeError with a one-line message; the commands exit 0 with their output
written, or exit 2 with one `cunet <command>: error: ...` line on stderr and no output
file (nor temporary) left behind. The cases run in a worker process under an address-space
limit of 2 GiB (RLIMIT_AS): an allocation past it is a MemoryError, reported as a failure,
and a signal (a crash in native code) is caught by the parent, which names the case and
restarts the worker after it.

Run by hand: `python tests/test_fuzz.py worker CASES.json RESULTS.jsonl START` executes
cases from a manifest the test writes (see _manifest); the test prints each failure.
"""
import contextlib
import gzip
import io as stdio
import json
import os
import resource
import struct
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np

AS_LIMIT = 2 << 30
SEED = 19


# ---- the worker: runs the cases of a manifest, one JSON line of outcome each

def _leftovers(folder, keep):
    """Files in folder that a refused case must not leave: anything not in keep, but for a
    training run's directory (a run stopped by bad data keeps its last good checkpoint, by
    design), where only temporaries count."""
    left = []
    for p in Path(folder).iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and p.name.endswith("_run"):
            left += [f"{p.name}/{q.name}" for q in p.iterdir() if q.name.endswith(".tmp")]
        else:
            left.append(p.name)
    return sorted(left)


def _run_cli(argv):
    from cunet import cli
    err, out = stdio.StringIO(), stdio.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = cli.main(argv)
        except SystemExit as e:   # argparse's own refusals
            rc = e.code
    return rc, err.getvalue()


def _case(c):
    """-> (ok, detail)."""
    kind = c["kind"]
    if kind == "load":
        import cunet
        try:
            cunet.load(c["model"])
            return True, "loaded"
        except (ValueError, TypeError) as e:
            msg = str(e)
            return bool(msg) and "\n" not in msg.strip() and "Traceback" not in msg, f"refused: {msg[:200]}"
    out = Path(c["out"])
    folder = out.parent
    before = set(os.listdir(folder))
    if kind == "predict":
        argv = ["predict", c["model"], c["image"], str(out)]
    else:
        argv = ["train", c["image"], "--labels", c["label"], "--out", str(out), "--epochs", "1", "--base", "2",
                "--depth", "1", "--batch-size", "1", "--steps-per-epoch", "1", "--patch", "16", "16",
                "--no-augment", "--overwrite"]
    rc, err = _run_cli(argv)
    reasons = [line for line in err.splitlines() if line.startswith(f"cunet {kind}: error: ")]
    if rc == 0:
        return out.exists(), "wrote output" if out.exists() else "exit 0 without output"
    if rc != 2:
        return False, f"exit {rc}: {err[-600:]}"
    if len(reasons) != 1 or "Traceback" in err:
        return False, f"exit 2 without one reason line: {err[-600:]}"
    left = _leftovers(folder, before)
    if left:
        return False, f"left {left} after: {reasons[0]}"
    return True, reasons[0][:200]


def worker(manifest, results, start):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cases = json.loads(Path(manifest).read_text())
    with open(results, "a") as f:
        for i in range(start, len(cases)):
            try:
                ok, detail = _case(cases[i])
            except MemoryError:
                ok, detail = False, "MemoryError (over the 2 GiB address-space limit): " + traceback.format_exc()[-400:]
            except BaseException:
                ok, detail = False, "traceback: " + traceback.format_exc()[-800:]
            f.write(json.dumps(dict(index=i, ok=ok, detail=detail)) + "\n")
            f.flush()


# ---- the mutations

HOSTILE = [0, -1, 1, 3, 10 ** 7, 2 ** 31, 2 ** 63, 1e308, 1.5, "16", "", None, True, [], {}, [2, 2], "batch"]


def _safetensors_parts(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw, n, json.loads(raw[8:8 + n])


def _safetensors_bytes(header, body):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _model_mutations(base_model, folder, rng):
    """-> list of paths of mutated model files (and what each is)."""
    raw, n, header = _safetensors_parts(base_model)
    body = raw[8 + n:]
    meta = header["__metadata__"]
    config, extra = json.loads(meta["cunet.model"]), json.loads(meta["cunet.extra"])
    tensors = [k for k in header if k != "__metadata__"]
    made = []

    def write(name, data):
        p = folder / f"{len(made):03d}_{name}.safetensors"
        p.write_bytes(data)
        made.append(str(p))

    def with_header(name, h, b=body):
        write(name, _safetensors_bytes(h, b))

    write("original", raw)
    for cut in sorted(set([0, 4, 8, 9, 8 + n // 2, 8 + n, 8 + n + 1, len(raw) - 1] +
                          rng.integers(1, len(raw), 8).tolist())):
        write(f"truncated{cut}", raw[:cut])
    for k in range(24):   # flipped bytes: in the header text, then in the weights
        b = bytearray(raw)
        lo, hi = (8, 8 + n) if k < 16 else (8 + n, len(raw))
        for at in rng.integers(lo, hi, rng.integers(1, 5)):
            b[at] = int(rng.integers(0, 256))
        write(f"flip{k}", bytes(b))
    for v in (0, 7, n - 1, n + 8, len(raw), 2 ** 40, 2 ** 64 - 1):
        write(f"headerlen{v}", struct.pack("<Q", v) + raw[8:])
    for key in sorted(config) + ["bogus"]:   # every config entry set to every hostile value
        for value in HOSTILE:
            h = json.loads(json.dumps(header))
            h["__metadata__"]["cunet.model"] = json.dumps(config | {key: value})
            with_header(f"config_{key}", h)
    for k, (key, value) in enumerate([("patch", [0, 0]), ("patch", [10 ** 9, 10 ** 9]), ("patch", "x"),
                                      ("patch", [16]), ("axis", 7), ("axis", "z"), ("task", "restoration"),
                                      ("task", 3), ("normalization", {"scheme": "bogus"}),
                                      ("normalization", "zscore"), ("normalization", None), ("classes", -3),
                                      ("normalization", {"scheme": "percentile", "lo": 99, "hi": 1})]):
        h = json.loads(json.dumps(header))
        h["__metadata__"]["cunet.extra"] = json.dumps(extra | {key: value})
        with_header(f"extra_{key}{k}", h)
    for k, text in enumerate(["{", "[]", "null", '"x"', "1e999", '{"dims": NaN}']):
        h = json.loads(json.dumps(header))
        h["__metadata__"]["cunet.model"] = text
        with_header(f"configjson{k}", h)
    h = json.loads(json.dumps(header))
    del h["__metadata__"]["cunet.model"]
    with_header("no_config", h)
    for k in range(24):   # tensor entries: dtype, shape, offsets; removed or renamed
        h = json.loads(json.dumps(header))
        name = tensors[rng.integers(len(tensors))]
        t = h[name]
        what = k % 6
        if what == 0:
            t["dtype"] = ["F16", "F64", "I32", "U8", "BOOL", "I64", "XX"][k % 7]
        elif what == 1:
            t["shape"] = t["shape"][::-1] + [1]
        elif what == 2:
            t["shape"] = [2 ** 31, 2 ** 31]
        elif what == 3:
            t["data_offsets"] = [t["data_offsets"][0], t["data_offsets"][1] + 10 ** 9]
        elif what == 4:
            del h[name]
        else:
            h[name + "_renamed"] = h.pop(name)
        with_header(f"tensor{what}_{k}", h)
    for k, value in enumerate([np.nan, np.inf, -np.inf, 1e30, 0.0]):   # values in one weight tensor
        name = [t for t in tensors if t.endswith("weight")][k % 3]
        a, b2 = header[name]["data_offsets"]
        arr = np.frombuffer(body[a:b2], np.float32).copy()
        arr[:: max(1, arr.size // 3)] = value
        with_header(f"values{k}", header, body[:a] + arr.tobytes() + body[b2:])
    return made


def _nifti_mutations(image, folder, rng, prefix):
    """-> list of paths of mutated copies of a .nii.gz: header fields set to hostile values,
    truncated and flipped, compressed and not."""
    raw = gzip.decompress(Path(image).read_bytes())
    made = []

    def write(name, data, gz=True):
        p = folder / f"{prefix}{len(made):03d}_{name}.nii{'.gz' if gz else ''}"
        p.write_bytes(gzip.compress(data, 1) if gz else data)
        made.append(str(p))

    # (field, struct format, offset, values) of the NIfTI-1 header
    fields = [("sizeof_hdr", "<i", 0, [0, 540, -1]), ("dim0", "<h", 40, [0, -1, 4, 8, 9]),
              ("dim1", "<h", 42, [0, -5, 1, 32767]), ("dim3", "<h", 46, [0, 32767, -1]),
              ("dim4", "<h", 48, [0, 2, 32767]), ("datatype", "<h", 70, [0, 1, 2, 4, 16, 32, 64, 128, 256, 768,
                                                                          1024, 1536, 1792, 2048, 2304, 99, -1]),
              ("bitpix", "<h", 72, [0, 7, 64]), ("pixdim1", "<f", 80, [np.nan, 0.0, -1.0, np.inf]),
              ("vox_offset", "<f", 108, [0.0, 10.0, 1e9, -5.0, np.nan]),
              ("scl_slope", "<f", 112, [np.nan, np.inf, 0.0, 1e38]), ("scl_inter", "<f", 116, [np.inf, np.nan]),
              ("qform_code", "<h", 252, [1, 99, -3]), ("sform_code", "<h", 254, [0, 99]),
              ("quatern_b", "<f", 256, [np.nan, 5.0]), ("srow_x0", "<f", 280, [np.nan, np.inf, 0.0]),
              ("magic", "4s", 344, [b"xx1\0", b"n+2\0"])]
    for field, fmt, at, values in fields:
        for v in values:
            b = bytearray(raw)
            struct.pack_into(fmt, b, at, v)
            write(f"{field}", bytes(b), gz=len(made) % 3 != 0)
    for dims in [(3, 2000, 2000, 2000), (3, 32767, 32767, 32767), (7, 32767, 32767, 32767), (4, 32, 32, 12),
                 (3, 1, 1, 2 ** 15 - 1)]:   # sizes far beyond what the file holds
        for dtype in (16, 64):   # float32, float64
            b = bytearray(raw)
            struct.pack_into("<8h", b, 40, *(dims + (32767,) * (8 - len(dims))))
            struct.pack_into("<hh", b, 70, dtype, 32 if dtype == 16 else 64)
            write(f"claims{'x'.join(map(str, dims[1:]))}", bytes(b), gz=dtype == 16)
    for cut in sorted(set([0, 100, 347, 348, 352, 400] + rng.integers(353, len(raw), 4).tolist())):
        write(f"cut{cut}", raw[:cut], gz=cut % 2 == 0)
    gz = Path(image).read_bytes()
    for cut in (10, len(gz) // 2, len(gz) - 4):   # truncated gzip streams
        p = folder / f"{prefix}{len(made):03d}_gzcut{cut}.nii.gz"
        p.write_bytes(gz[:cut])
        made.append(str(p))
    for k in range(10):
        b = bytearray(raw)
        for at in rng.integers(0, 348, rng.integers(1, 6)):
            b[at] = int(rng.integers(0, 256))
        write(f"flip{k}", bytes(b))
    return made


def _manifest(tmp, crop):
    """Writes the mutated files and -> the list of cases."""
    from cunet import cli
    root = crop[0]
    rng = np.random.default_rng(SEED)
    model = tmp / "model.safetensors"
    argv = ["train", str(root / "t1.nii.gz"), "--labels", str(root / "seg.nii.gz"), "--out", str(model), "--epochs",
            "1", "--base", "4", "--depth", "2", "--patch", "32", "32", "--batch-size", "2", "--steps-per-epoch", "2"]
    with contextlib.redirect_stdout(stdio.StringIO()), contextlib.redirect_stderr(stdio.StringIO()):
        assert cli.main(argv) == 0
    folders = {name: tmp / name for name in ("models", "images", "labels", "out")}
    for f in folders.values():
        f.mkdir()
    models = _model_mutations(model, folders["models"], rng)
    images = _nifti_mutations(root / "t1.nii.gz", folders["images"], rng, "img")
    labels = _nifti_mutations(root / "seg.nii.gz", folders["labels"], rng, "lbl")
    cases = [dict(kind="load", model=m) for m in models]
    out = lambda k, ext=".nii.gz": str(folders["out"] / f"case{k:04d}{ext}")  # noqa: E731
    pick = lambda paths, n: [paths[i] for i in sorted(rng.choice(len(paths), n, replace=False))]  # noqa: E731
    configs = [m for m in models if "_config_" in m]
    for m in [m for m in models if "_config_" not in m] + pick(configs, 40):
        cases.append(dict(kind="predict", model=m, image=str(root / "t1.nii.gz"), out=out(len(cases))))
    for im in images:
        cases.append(dict(kind="predict", model=str(model), image=im, out=out(len(cases))))
    for im in pick(images, 12):
        cases.append(dict(kind="train", image=im, label=str(root / "seg.nii.gz"), out=out(len(cases), ".safetensors")))
    for lb in pick(labels, 16):
        cases.append(dict(kind="train", image=str(root / "t1.nii.gz"), label=lb, out=out(len(cases), ".safetensors")))
    return cases


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def test_fuzz_model_files_images_and_commands(crop, tmp_path):
    cases = _manifest(tmp_path, crop)
    manifest, results = tmp_path / "cases.json", tmp_path / "results.jsonl"
    manifest.write_text(json.dumps(cases))
    path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    done, crashes, start = {}, [], 0
    while start < len(cases):
        p = subprocess.run([sys.executable, __file__, "worker", str(manifest), str(results), str(start)],
                           env=env, preexec_fn=_limit, capture_output=True, text=True, timeout=600)
        for line in results.read_text().splitlines():
            r = json.loads(line)
            done[r["index"]] = r
        nxt = max(done, default=-1) + 1
        if p.returncode != 0 and nxt < len(cases):   # died inside case nxt
            crashes.append(dict(index=nxt, ok=False, detail=f"worker died (status {p.returncode}): "
                                                            f"{p.stderr[-600:]}"))
            done[nxt] = crashes[-1]
            nxt += 1
        elif p.returncode != 0:
            raise AssertionError(f"fuzz worker failed after its cases: {p.stderr[-2000:]}")
        start = nxt
    assert len(done) == len(cases)
    bad = [(cases[i], done[i]["detail"]) for i in sorted(done) if not done[i]["ok"]]
    kinds = {k: sum(c["kind"] == k for c in cases) for k in ("load", "predict", "train")}
    ok = {k: sum(1 for i, c in enumerate(cases) if c["kind"] == k and done[i]["detail"] in
                 ("loaded", "wrote output")) for k in kinds}
    print(f"fuzz: {len(cases)} cases {kinds}; results (not refusals) {ok}; {len(bad)} failures")
    assert not bad, "\n\n".join(f"{c}\n  -> {d}" for c, d in bad[:20]) + f"\n({len(bad)} failures in all)"


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "worker":
    worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
