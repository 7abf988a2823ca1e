"""The CMake package: build + install the cunet::cunet INTERFACE target, consume it from a
separate project with find_package(cunet), and run examples/cpp/segment on NIfTI files
(nibabel-written) against the Python pipeline: cunet.data.normalize + predict_volume_2d."""

import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cunet.data import normalize
from cunet.infer import predict_volume_2d
from cunet.nn.unet import UNet
from cunet.train import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent

NORM = {"method": "zscore", "clip": [0.5, 99.5], "mask": "all"}

CONSUMER = """cmake_minimum_required(VERSION 3.18)
project(cunet_consumer LANGUAGES CXX)
find_package(cunet REQUIRED)
add_executable(segment {src})
target_link_libraries(segment PRIVATE cunet::cunet)
"""


def sh(*cmd, cwd=None):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(prefix, consumer's segment): cunet built, installed, and found by a separate project."""
    tmp = tmp_path_factory.mktemp("cmake")
    build, prefix = tmp / "build", tmp / "prefix"
    sh("cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release")   # CUNET_BUILD_EXAMPLES defaults ON
    sh("cmake", "--build", build, "-j2")
    sh("cmake", "--install", build, "--prefix", prefix)
    assert (prefix / "include/cunet/bindings/cunet_runner.h").is_file()
    assert (prefix / "include/cunet/kernels/cunet.cuh").is_file() and (prefix / "bin/segment").is_file()
    assert list(prefix.glob("lib*/cmake/cunet/cunetConfig.cmake"))
    consumer = tmp / "consumer"
    consumer.mkdir()
    (consumer / "CMakeLists.txt").write_text(CONSUMER.format(src=(ROOT / "examples/cpp/segment.cpp").as_posix()))
    cbuild = tmp / "consumer-build"
    sh("cmake", "-S", consumer, "-B", cbuild, "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_PREFIX_PATH={prefix}")
    sh("cmake", "--build", cbuild, "-j2")
    exe = cbuild / "segment"
    assert exe.is_file()
    return prefix, exe


def affine():
    a = np.array([[0.0, -1.2, 0.1, 30.0], [0.9, 0.0, 0.0, -12.5], [0.05, 0.0, 2.5, 7.0], [0, 0, 0, 1]])
    return a


def model_and_volume(tmp_path, seed=3):
    model = UNet(dims=2, in_channels=1, out_channels=3, base=4, depth=2, up="linear", norm="batch", seed=seed)
    ckpt = tmp_path / "model.safetensors"
    save_checkpoint(ckpt, model, extra={"normalization": NORM})
    rng = np.random.default_rng(11)
    vol = (rng.normal(size=(32, 32, 8)) * 40 + 100).astype(np.float32)
    vol[0, 0, 0] = 5000.0   # an outlier the percentile clip removes
    return model, ckpt, vol


def python_labels(model, vol, norm=NORM):
    model.train(False)
    x = normalize(vol, norm)[None]
    logits = np.asarray(predict_volume_2d(model, x, axis=2))
    top = np.sort(logits, axis=0)
    return logits.argmax(axis=0), top[-1] - top[-2]


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti_labels_match_python(installed, tmp_path, ext):
    _, exe = installed
    model, ckpt, vol = model_and_volume(tmp_path)
    img = nib.Nifti1Image(vol, affine())
    img.set_qform(affine(), code=1)
    img.set_sform(affine(), code=2)
    src, dst = tmp_path / f"in{ext}", tmp_path / f"out{ext}"
    nib.save(img, src)
    out = subprocess.run([str(exe), str(ckpt), str(src), str(dst)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = nib.load(dst)
    assert res.shape == vol.shape
    assert res.get_data_dtype() == np.uint8
    np.testing.assert_allclose(res.affine, nib.load(src).affine, atol=1e-6)
    np.testing.assert_allclose(res.header.get_sform(), affine(), atol=1e-6)
    assert int(res.header["sform_code"]) == 2 and int(res.header["qform_code"]) == 1
    got = np.asarray(res.dataobj)
    want, gap = python_labels(model, vol)
    differ = got != want
    assert not (differ & (gap > 1e-3)).any(), f"{differ.sum()} labels differ, gaps {gap[differ]}"
    assert len(np.unique(want)) > 1   # the comparison is not trivial
    # ... and the normalisation matters: the unnormalised volume labels differently
    raw, _ = python_labels(model, vol, norm={"method": "none"})
    assert (raw != want).mean() > 0.05


def test_nifti_int16_with_scaling(installed, tmp_path):
    """Integer storage with scl_slope/inter: the C++ reader applies them as nibabel does."""
    _, exe = installed
    model, ckpt, vol = model_and_volume(tmp_path)
    raw = np.round(vol).astype(np.int16)
    img = nib.Nifti1Image(raw, affine())
    img.header.set_slope_inter(0.5, -3.0)
    nib.save(img, tmp_path / "in.nii")
    scaled = np.asarray(nib.load(tmp_path / "in.nii").get_fdata(), np.float32)
    out = subprocess.run([str(exe), str(ckpt), str(tmp_path / "in.nii"), str(tmp_path / "o.nii")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = np.asarray(nib.load(tmp_path / "o.nii").dataobj)
    want, gap = python_labels(model, scaled)
    assert not ((got != want) & (gap > 1e-3)).any()


def test_nifti_errors(installed, tmp_path):
    _, exe = installed
    _, ckpt, vol = model_and_volume(tmp_path)
    nib.save(nib.Nifti1Image(vol, affine()), tmp_path / "ok.nii")
    data = (tmp_path / "ok.nii").read_bytes()

    def err(name, blob, *words):
        p = tmp_path / name
        p.write_bytes(blob)
        out = subprocess.run([str(exe), str(ckpt), str(p), str(tmp_path / "o.nii")], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 1, (out.returncode, out.stderr)
        line = out.stderr.strip()
        assert line.startswith("segment: error: nifti") and name in line, line
        for w in words:
            assert w in line, line

    err("short.nii", data[:100], "truncated")
    err("body.nii", data[:-50], "truncated")
    err("hdr.nii", b"\x01\x02\x03\x04" + data[4:], "bad sizeof_hdr")
    bad = bytearray(data)
    bad[70:72] = np.int16(32).tobytes()   # complex64
    err("dtype.nii", bytes(bad), "unsupported datatype 32")
    err("empty.nii", b"", "truncated")


OTHER = {   # dims, in_channels, NIfTI shape (X, Y, Z[, C]), normalisation
    "2d-percentile-nonzero-padded": (2, 1, (30, 27, 5), {"method": "percentile", "clip": [2, 98], "mask": "nonzero"}),
    "3d-zscore-noclip-nonzero": (3, 1, (10, 12, 9), {"method": "zscore", "clip": None, "mask": "nonzero"}),
    "2d-none": (2, 1, (16, 16, 3), {"method": "none"}),
    "2d-two-channels-4d": (2, 2, (16, 12, 4, 2), {"method": "zscore", "clip": [1, 99], "mask": "all"}),
}


@pytest.mark.parametrize("case", sorted(OTHER))
def test_nifti_other_models_and_normalisations(installed, tmp_path, case):
    """3D models, 4D (channel) inputs, sizes padded to 2**depth, the other normalisations."""
    from cunet.infer import predict_logits
    _, exe = installed
    dims, cin, shape, norm = OTHER[case]
    model = UNet(dims=dims, in_channels=cin, out_channels=3, base=4, depth=2, up="linear", norm="batch", seed=2)
    save_checkpoint(tmp_path / "m.safetensors", model, extra={"normalization": norm, "note": "x"})
    vol = (np.random.default_rng(1).normal(size=shape) * 40 + 100).astype(np.float32)
    vol[vol < 90] = 0
    nib.save(nib.Nifti1Image(vol, affine()), tmp_path / "in.nii.gz")
    out = subprocess.run([str(exe), str(tmp_path / "m.safetensors"), str(tmp_path / "in.nii.gz"),
                          str(tmp_path / "out.nii.gz")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    model.train(False)
    chans = vol[None] if vol.ndim == 3 else np.moveaxis(vol, -1, 0)
    x = np.stack([normalize(c, norm) for c in chans])
    logits = np.asarray(predict_volume_2d(model, x, axis=2) if dims == 2 else predict_logits(model, x))
    top = np.sort(logits, axis=0)
    want, gap = logits.argmax(axis=0), top[-1] - top[-2]
    got = np.asarray(nib.load(tmp_path / "out.nii.gz").dataobj)
    assert got.shape == shape[:3]
    differ = got != want
    assert not (differ & (gap > 1e-3)).any(), f"{differ.sum()} labels differ"
    assert len(np.unique(want)) > 1


def test_gz_without_zlib_is_a_clear_error(tmp_path):
    exe = tmp_path / "segment_nozlib"
    sh("g++", "-O0", "-std=c++20", "-fopenmp", "-Wno-psabi", f"-I{ROOT}", ROOT / "examples/cpp/segment.cpp", "-o", exe)
    _, ckpt, vol = model_and_volume(tmp_path)
    nib.save(nib.Nifti1Image(vol, affine()), tmp_path / "in.nii.gz")
    out = subprocess.run([str(exe), str(ckpt), str(tmp_path / "in.nii.gz"), str(tmp_path / "o.nii")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "in.nii.gz" in out.stderr and "CUNET_WITH_ZLIB" in out.stderr, out.stderr
    nib.save(nib.Nifti1Image(vol, affine()), tmp_path / "in.nii")   # plain .nii works without zlib
    out = subprocess.run([str(exe), str(ckpt), str(tmp_path / "in.nii"), str(tmp_path / "o.nii")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
