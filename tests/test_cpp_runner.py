"""The C++ runner (bindings/cunet_runner.h) through examples/cpp/segment.cpp, linked to the
package's libcunet (the library cunet._native runs): it loads checkpoints written by
cunet.train.save_checkpoint and labels raw volumes exactly as the Python model does; bad or
corrupted checkpoint files give a one-line error and a non-zero exit status, never a crash."""
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cunet import cmake as package
from cunet.metrics import predict
from cunet.nn.unet import UNet
from cunet.train import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def segment(tmp_path_factory):
    """segment built as a C++ user builds it by hand: the package's headers and libcunet."""
    exe = tmp_path_factory.mktemp("build") / "segment"
    lib = package.library()
    out = subprocess.run(["g++", "-O2", "-std=c++20", f"-I{package.include_dir()}", str(ROOT / "examples/cpp/segment.cpp"),
                          str(lib), f"-Wl,-rpath,{lib.parent}", "-o", str(exe)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return exe


def test_native_and_segment_share_libcunet(segment):
    """One compiled copy of the kernels: cunet._native and segment both load libcunet.so,
    which exports the launchers, and neither contains a kernel itself."""
    from cunet import _native
    probe = "import cunet._native; print(''.join(l for l in open('/proc/self/maps') if 'libcunet' in l))"
    maps = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT).stdout
    assert str(package.library().resolve()) in maps
    needed = subprocess.run(["readelf", "-d", _native.__file__], capture_output=True, text=True).stdout
    assert "[libcunet.so]" in needed and "$ORIGIN/lib" in needed
    assert "[libcunet.so]" in subprocess.run(["readelf", "-d", str(segment)], capture_output=True, text=True).stdout
    exported = subprocess.run(["nm", "-DC", "--defined-only", str(package.library())], capture_output=True,
                              text=True).stdout
    for op in ("conv_forward", "maxpool_forward", "batchnorm_normalize", "adam_update", "device_alloc"):
        assert f"cunet::ops::{op}(" in exported
    for exe in (_native.__file__, segment):   # the kernels (extern "C" conv_forward, ...) are not linked in again
        syms = subprocess.run(["nm", "-C", str(exe)], capture_output=True, text=True).stdout.split()
        assert "conv_forward" not in syms and "conv_host" not in " ".join(syms)


def run(exe, model, volume_path, shape, out_path):
    return subprocess.run([str(exe), str(model), str(volume_path), *map(str, shape), str(out_path)],
                          capture_output=True, text=True, timeout=120)


def python_labels(model, vol):
    """Labels and top-two logit gaps of the Python model in eval mode (2D: slice by slice)."""
    model.train(False)
    if model.dims == 2:
        logits = np.concatenate([model.forward(vol[d][None, None]) for d in range(vol.shape[0])])
        lab = predict(logits)
    else:
        logits = model.forward(vol[None, None])
        lab = predict(logits)[0]
        logits = logits[0][None]
    if logits.shape[1] == 1:
        gap = np.abs(logits[:, 0])
    else:
        top = np.sort(logits, axis=1)
        gap = top[:, -1] - top[:, -2]
    return lab.reshape(vol.shape), gap.reshape(vol.shape)


def nontrivial_bn(model, seed):
    rng = np.random.default_rng(seed)
    state = {}
    for name, a in model.state_dict().items():
        a = np.array(a)
        if name.endswith("running_mean"):
            a = rng.normal(0, 0.3, a.shape).astype(a.dtype)
        elif name.endswith("running_var"):
            a = rng.uniform(0.5, 2.0, a.shape).astype(a.dtype)
        elif ".bn" in name and name.endswith(".weight"):
            a = rng.uniform(0.5, 1.5, a.shape).astype(a.dtype)
        elif ".bn" in name and name.endswith(".bias"):
            a = rng.normal(0, 0.2, a.shape).astype(a.dtype)
        elif name.endswith("bias"):
            a = rng.normal(0, 0.1, a.shape).astype(a.dtype)
        state[name] = a
    model.load_state_dict(state)


CASES = {
    "2d-binary-transpose": (dict(dims=2, in_channels=1, out_channels=1, base=4, depth=2, up="transpose"), (5, 16, 24)),
    "2d-3class-batch-linear": (dict(dims=2, in_channels=1, out_channels=3, base=4, depth=2, up="linear",
                                    norm="batch"), (3, 16, 16)),
    "3d-depth1": (dict(dims=3, in_channels=1, out_channels=2, base=4, depth=1, up="transpose"), (4, 6, 8)),
    "2d-strided-nearest": (dict(dims=2, in_channels=1, out_channels=2, base=4, depth=1, up="nearest", down="strided",
                                norm="batch"), (2, 8, 12)),
    # "precision" in the config (GEMM operands on a GPU): the host runner computes fp32, as Python's host build
    "2d-bf16-config": (dict(dims=2, in_channels=1, out_channels=2, base=4, depth=2, precision="bf16"), (3, 16, 16)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_labels_match_python(segment, tmp_path, case):
    config, shape = CASES[case]
    model = UNet(seed=3, **config)
    nontrivial_bn(model, 5)
    ckpt = tmp_path / "model.safetensors"
    save_checkpoint(ckpt, model, extra={"note": "test"})
    vol = np.random.default_rng(7).normal(size=shape).astype(np.float32)
    vol.tofile(tmp_path / "in.raw")
    out = run(segment, ckpt, tmp_path / "in.raw", shape, tmp_path / "out.raw")
    assert out.returncode == 0, out.stderr
    got = np.fromfile(tmp_path / "out.raw", dtype=np.uint8).reshape(shape)
    want, gap = python_labels(model, vol)
    differ = got != want
    assert not (differ & (gap > 1e-4)).any(), f"{differ.sum()} labels differ, gaps {gap[differ]}"
    assert len(np.unique(want)) > 1   # the comparison is not trivial


def test_spatial_size_must_be_multiple(segment, tmp_path):
    config, _ = CASES["2d-binary-transpose"]
    save_checkpoint(tmp_path / "m.safetensors", UNet(**config))
    np.zeros((2, 10, 16), np.float32).tofile(tmp_path / "in.raw")
    out = run(segment, tmp_path / "m.safetensors", tmp_path / "in.raw", (2, 10, 16), tmp_path / "o.raw")
    assert out.returncode == 1 and "multiples of 2**depth = 4" in out.stderr


# ---- robustness: bad checkpoints
def split(path):
    data = Path(path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header, body, raw=None):
    h = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


@pytest.fixture
def valid(tmp_path):
    config, shape = CASES["2d-binary-transpose"]
    path = tmp_path / "valid.safetensors"
    save_checkpoint(path, UNet(**config))
    np.random.default_rng(0).normal(size=(1, 16, 16)).astype(np.float32).tofile(tmp_path / "in.raw")
    return path


def expect_error(segment, tmp_path, data, *words):
    bad = tmp_path / "bad.safetensors"
    if data is not None:
        bad.write_bytes(data)
    out = run(segment, bad, tmp_path / "in.raw", (1, 16, 16), tmp_path / "o.raw")
    assert out.returncode == 1, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segment: error: checkpoint"), out.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_valid_file_runs(segment, tmp_path, valid):
    out = run(segment, valid, tmp_path / "in.raw", (1, 16, 16), tmp_path / "o.raw")
    assert out.returncode == 0, out.stderr


def test_missing_file(segment, tmp_path):
    expect_error(segment, tmp_path, None, "file not found", "bad.safetensors")


def test_truncated(segment, tmp_path, valid):
    data = valid.read_bytes()
    expect_error(segment, tmp_path, data[:5], "truncated header")
    expect_error(segment, tmp_path, data[:200], "header length")
    expect_error(segment, tmp_path, data[:-100], "out of range")


def test_header_length_too_large(segment, tmp_path, valid):
    data = valid.read_bytes()
    expect_error(segment, tmp_path, struct.pack("<Q", 2 ** 63 + 5) + data[8:], "header length", "absurd")
    expect_error(segment, tmp_path, struct.pack("<Q", len(data)) + data[8:], "absurd")


def test_invalid_json(segment, tmp_path, valid):
    header, body = split(valid)
    raw = json.dumps(header).encode()
    expect_error(segment, tmp_path, join(None, body, raw[:-1] + b"]"), "invalid JSON")
    expect_error(segment, tmp_path, join(None, body, b"[" * 10000 + b"]" * 10000), "invalid JSON")
    expect_error(segment, tmp_path, join(None, body, raw.replace(b'"F32"', b'"F\\q32"', 1)), "invalid JSON")


def test_wrong_dtype(segment, tmp_path, valid):
    header, body = split(valid)
    header["head.bias"]["dtype"] = "F16"
    expect_error(segment, tmp_path, join(header, body), "unknown dtype", "F16", "head.bias")


def test_absurd_shape(segment, tmp_path, valid):
    header, body = split(valid)
    header["head.weight"]["shape"] = [2 ** 40, 2 ** 40, 1, 1]
    expect_error(segment, tmp_path, join(header, body), "absurd shape", "head.weight")
    header["head.weight"]["shape"] = [-1, 4]
    expect_error(segment, tmp_path, join(header, body), "head.weight")
    header["head.weight"]["shape"] = [1, 4, 1, 2]
    expect_error(segment, tmp_path, join(header, body), "shape/size mismatch", "head.weight")


def test_offsets_out_of_range(segment, tmp_path, valid):
    header, body = split(valid)
    header["head.bias"]["data_offsets"] = [len(body) - 2, len(body) + 2]
    expect_error(segment, tmp_path, join(header, body), "out of range", "head.bias")
    header, body = split(valid)
    b = header["head.bias"]["data_offsets"]
    header["enc0.conv1.bias"]["data_offsets"] = [b[0], b[0] + 16]
    expect_error(segment, tmp_path, join(header, body), "overlap")


def test_missing_metadata(segment, tmp_path, valid):
    header, body = split(valid)
    del header["__metadata__"]["cunet.model"]
    expect_error(segment, tmp_path, join(header, body), "cunet.model")


def test_unknown_config_field(segment, tmp_path, valid):
    header, body = split(valid)
    cfg = json.loads(header["__metadata__"]["cunet.model"])
    cfg["wings"] = 2
    header["__metadata__"]["cunet.model"] = json.dumps(cfg)
    expect_error(segment, tmp_path, join(header, body), "unknown model config field", "wings")


def test_missing_or_misshapen_tensor(segment, tmp_path, valid):
    header, body = split(valid)
    del header["dec1.conv2.weight"]
    expect_error(segment, tmp_path, join(header, body), "missing tensor 'dec1.conv2.weight'", "[4, 4, 3, 3]")
    header, body = split(valid)
    header["head.weight"]["shape"] = [1, 2, 2, 1]
    expect_error(segment, tmp_path, join(header, body), "tensor 'head.weight' has shape [1, 2, 2, 1]",
                 "expected shape [1, 4, 1, 1]")


def test_random_corruptions_never_crash(segment, tmp_path, valid):
    fuzz(segment, tmp_path, valid, trials=50)


@pytest.fixture(scope="module")
def segment_sanitized(tmp_path_factory):
    """The example built with AddressSanitizer + UndefinedBehaviorSanitizer, aborting on any report;
    libcunet's sources are compiled into it with the same instrumentation, so the kernels of
    the forward pass are checked too."""
    exe = tmp_path_factory.mktemp("asan") / "segment"
    out = subprocess.run(["g++", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                          "-fno-omit-frame-pointer", "-std=c++20", "-fopenmp", "-Wno-psabi", f"-I{ROOT}",
                          str(ROOT / "examples/cpp/segment.cpp"), *map(str, sorted(ROOT.glob("bindings/lib/*.cpp"))),
                          "-o", str(exe)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return exe


def test_sanitizer_build_runs_clean(segment_sanitized, tmp_path, valid, monkeypatch):
    # leak checking off: libgomp's thread pool is deliberately never torn down
    monkeypatch.setenv("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0:exitcode=66")
    monkeypatch.setenv("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1:exitcode=67")
    out = run(segment_sanitized, valid, tmp_path / "in.raw", (1, 16, 16), tmp_path / "o.raw")   # a real forward pass
    assert out.returncode == 0, out.stderr
    fuzz(segment_sanitized, tmp_path, valid, trials=30)


def fuzz(segment, tmp_path, valid, trials):
    """Seeded random corruptions of a valid checkpoint: exit 0 or 1 with one line, never a
    signal (and, for the sanitizer build, never a sanitizer exit code 66/67)."""
    data = bytearray(valid.read_bytes())
    n = struct.unpack("<Q", bytes(data[:8]))[0]
    rng = np.random.default_rng(1234)
    bad = tmp_path / "bad.safetensors"
    for trial in range(trials):
        d = bytearray(data)
        kind = trial % 5
        if kind == 0:     # flip bytes in the header
            for _ in range(rng.integers(1, 6)):
                d[int(rng.integers(8, 8 + n))] ^= int(rng.integers(1, 256))
        elif kind == 1:   # truncate anywhere
            d = d[:int(rng.integers(0, len(d)))]
        elif kind == 2:   # random header length
            d[:8] = struct.pack("<Q", int(rng.integers(0, 2 ** 63)) >> int(rng.integers(0, 63)))
        elif kind == 3:   # overwrite a run of bytes with random ones, header or length field
            i = int(rng.integers(0, 8 + n))
            d[i:i + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        else:             # swap digits in the header (shapes, offsets)
            for _ in range(rng.integers(1, 4)):
                i = int(rng.integers(8, 8 + n))
                if chr(d[i]).isdigit():
                    d[i] = ord(str(rng.integers(0, 10)))
        bad.write_bytes(bytes(d))
        out = run(segment, bad, tmp_path / "in.raw", (1, 16, 16), tmp_path / "o.raw")
        assert out.returncode >= 0, f"trial {trial}: killed by signal {-out.returncode}"
        assert out.returncode in (0, 1), (trial, out.returncode, out.stderr)
        if out.returncode == 1:
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("segment: error: "), (trial, out.stderr)
