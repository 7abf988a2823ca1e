"""The CMake package: build + install libcunet (cunet::cunet), consume it from a separate
project with find_package(cunet) (from the install prefix, and from a pip-installed package),
and run examples/cpp/segment on NIfTI files (nibabel-written) against the Python pipeline:
cunet.data.normalize + predict_volume_2d along the checkpoint's axis. The CUDA build
(-DCUNET_CUDA=ON, nvcc) is compiled here; running it needs a GPU."""

import json
import os
import subprocess
import sys
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
find_package(ZLIB REQUIRED)   # the example's .nii.gz support
add_executable(segment {src})
target_link_libraries(segment PRIVATE cunet::cunet ZLIB::ZLIB)
target_compile_definitions(segment PRIVATE CUNET_WITH_ZLIB)
"""


def consumer_segment(tmp, *cmake_args):
    """examples/cpp/segment.cpp built by a project of its own that finds cunet with find_package."""
    consumer, build = tmp / "consumer", tmp / "consumer-build"
    consumer.mkdir()
    (consumer / "CMakeLists.txt").write_text(CONSUMER.format(src=(ROOT / "examples/cpp/segment.cpp").as_posix()))
    sh("cmake", "-S", consumer, "-B", build, "-DCMAKE_BUILD_TYPE=Release", *cmake_args)
    sh("cmake", "--build", build, "-j2")
    assert (build / "segment").is_file()
    return build / "segment"


def sh(*cmd, cwd=None):
    # generous: compiling the kernels takes minutes on a loaded 2-core machine
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=1200)
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
    for f in ("lib/libcunet.so", "include/cunet/bindings/cunet.h", "include/cunet/bindings/cunet_runner.h",
              "include/cunet/kernels/cunet.cuh", "bin/segment", "lib/cmake/cunet/cunetConfig.cmake"):
        assert (prefix / f).is_file(), f
    return prefix, consumer_segment(tmp, f"-DCMAKE_PREFIX_PATH={prefix}")


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


def test_gz_without_zlib_is_a_clear_error(tmp_path, installed):
    prefix, _ = installed
    exe = tmp_path / "segment_nozlib"
    sh("g++", "-O0", "-std=c++20", f"-I{prefix / 'include/cunet'}", ROOT / "examples/cpp/segment.cpp",
       prefix / "lib/libcunet.so", f"-Wl,-rpath,{prefix / 'lib'}", "-o", exe)
    _, ckpt, vol = model_and_volume(tmp_path)
    nib.save(nib.Nifti1Image(vol, affine()), tmp_path / "in.nii.gz")
    out = subprocess.run([str(exe), str(ckpt), str(tmp_path / "in.nii.gz"), str(tmp_path / "o.nii")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "in.nii.gz" in out.stderr and "CUNET_WITH_ZLIB" in out.stderr, out.stderr
    nib.save(nib.Nifti1Image(vol, affine()), tmp_path / "in.nii")   # plain .nii works without zlib
    out = subprocess.run([str(exe), str(ckpt), str(tmp_path / "in.nii"), str(tmp_path / "o.nii")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("axis", [0, 1])
def test_2d_model_slices_along_the_checkpoint_axis(installed, tmp_path, axis):
    """extra["axis"] (cunet train --axis): slices along X or Y, as cunet predict does; padded
    in-plane sizes (30, 27, 12 are not multiples of 4) and a non-cubic grid."""
    _, exe = installed
    model = UNet(dims=2, in_channels=1, out_channels=3, base=4, depth=2, up="linear", norm="batch", seed=4)
    save_checkpoint(tmp_path / "m.safetensors", model, extra={"normalization": NORM, "axis": axis})
    vol = (np.random.default_rng(5).normal(size=(30, 27, 12)) * 40 + 100).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, affine()), tmp_path / "in.nii")
    out = subprocess.run([str(exe), str(tmp_path / "m.safetensors"), str(tmp_path / "in.nii"), str(tmp_path / "o.nii")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = np.asarray(nib.load(tmp_path / "o.nii").dataobj)
    model.train(False)
    logits = np.asarray(predict_volume_2d(model, normalize(vol, NORM)[None], axis=axis))
    top = np.sort(logits, axis=0)
    want, gap = logits.argmax(axis=0), top[-1] - top[-2]
    differ = got != want
    assert not (differ & (gap > 1e-3)).any(), f"{differ.sum()} labels differ"
    assert len(np.unique(want)) > 1
    # ... and the axis matters: slicing along Z labels this volume differently
    z = np.asarray(predict_volume_2d(model, normalize(vol, NORM)[None], axis=2)).argmax(axis=0)
    assert (z != want).mean() > 0.05


@pytest.mark.parametrize("bad", [3, -1, 1.5, "z", None])
def test_bad_axis_is_a_clear_error(installed, tmp_path, bad):
    _, exe = installed
    model, _, vol = model_and_volume(tmp_path)
    save_checkpoint(tmp_path / "m.safetensors", model, extra={"axis": bad})
    nib.save(nib.Nifti1Image(vol, affine()), tmp_path / "in.nii")
    out = subprocess.run([str(exe), str(tmp_path / "m.safetensors"), str(tmp_path / "in.nii"), str(tmp_path / "o.nii")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "'axis': expected 0, 1 or 2" in out.stderr and "m.safetensors" in out.stderr, out.stderr


def test_pip_installed_package_is_found_by_cmake(tmp_path):
    """`pip install .` ships libcunet, the headers and cunetConfig.cmake inside the package:
    cunet._native loads the packaged library, `python -m cunet.cmake` names the config
    directory, and a C++ project built against it labels a volume as Python does."""
    site = tmp_path / "site"
    sh(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", site, ROOT)
    env = {**os.environ, "PYTHONPATH": str(site)}
    pkg = site / "cunet"
    probe = ("import cunet, cunet._native as n; print(json.dumps([cunet.__file__, n.build, "
             "[l.split()[-1] for l in open('/proc/self/maps') if 'libcunet' in l][0]]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + probe], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    mod, build, lib = json.loads(out.stdout)
    assert Path(mod).parent == pkg and build == "host" and Path(lib) == pkg / "lib/libcunet.so"
    out = subprocess.run([sys.executable, "-m", "cunet.cmake"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and Path(out.stdout.strip()) == pkg / "lib/cmake/cunet", out.stderr
    assert (pkg / "include/cunet/bindings/cunet_runner.h").is_file()
    exe = consumer_segment(tmp_path, f"-Dcunet_DIR={out.stdout.strip()}")
    model, ckpt, vol = model_and_volume(tmp_path)
    nib.save(nib.Nifti1Image(vol, affine()), tmp_path / "in.nii.gz")
    run = subprocess.run([str(exe), str(ckpt), str(tmp_path / "in.nii.gz"), str(tmp_path / "o.nii.gz")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    want, gap = python_labels(model, vol)
    got = np.asarray(nib.load(tmp_path / "o.nii.gz").dataobj)
    assert not ((got != want) & (gap > 1e-3)).any()


def test_cmake_module_reports_an_unbuilt_package(tmp_path, monkeypatch, capsys):
    from cunet import cmake
    monkeypatch.setattr(cmake, "PACKAGE", tmp_path / "cunet")
    assert cmake.main([]) == 1
    err = capsys.readouterr().err
    assert "cunetConfig.cmake is missing" in err and "was not built" in err
    assert cmake.main(["--bogus"]) == 2 and "usage" in capsys.readouterr().err


# ---- the CUDA build: compiled here (nvcc, no GPU needed); run only where there is a GPU

@pytest.fixture(scope="module")
def cuda_build(tmp_path_factory):
    """cmake -DCUNET_CUDA=ON with the default architectures: libcunet by nvcc, segment by the
    C++ compiler against it."""
    build = tmp_path_factory.mktemp("cuda") / "build"
    sh("cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DCUNET_CUDA=ON",
       "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON")
    sh("cmake", "--build", build, "-j2")
    return build


def test_cuda_build_compiles(cuda_build):
    lib = cuda_build / "libcunet.so"
    commands = json.loads((cuda_build / "compile_commands.json").read_text())
    nvcc = [c for c in commands if "nvcc" in c["command"]]
    assert {Path(c["file"]).name for c in nvcc} == {p.name for p in ROOT.glob("bindings/lib/*.cpp")}
    for arch in ("80", "90"):   # the default architecture list
        assert all(f"arch=compute_{arch},code=[compute_{arch},sm_{arch}]" in c["command"] for c in nvcc)
    assert ".nv_fatbin" in sh("readelf", "-S", lib).stdout   # device code is in the library
    exported = sh("nm", "-DC", "--defined-only", lib).stdout
    for op in ("conv_forward", "upsample_linear_forward", "concat_copy", "copy_to_device", "synchronize"):
        assert f"cunet::ops::{op}(" in exported
    # the program is plain C++: it links libcunet, not the CUDA runtime (cudart is inside the library)
    needed = sh("readelf", "-d", cuda_build / "segment").stdout
    assert "[libcunet.so]" in needed and "cudart" not in needed


def test_cuda_segment_runs_or_says_why(cuda_build, tmp_path):
    """On any machine: labels (a GPU is present) or, without a usable GPU, the CUDA error as
    one line naming the failed call; never a crash."""
    model, ckpt, vol = model_and_volume(tmp_path)
    vol[:, :, :2].transpose(2, 0, 1).copy().tofile(tmp_path / "in.raw")   # (D, H, W) = (2, 32, 32)
    out = subprocess.run([str(cuda_build / "segment"), str(ckpt), str(tmp_path / "in.raw"), "2", "32", "32",
                          str(tmp_path / "o.raw")], capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 1), (out.returncode, out.stderr)
    if out.returncode == 1:
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("segment: error: cunet: cudaMalloc of "), out.stderr
    else:
        assert (tmp_path / "o.raw").stat().st_size == 2 * 32 * 32


@pytest.mark.gpu
def test_cuda_segment_matches_python(cuda_build, tmp_path):
    """The runner on the GPU (weights uploaded once, activations in device memory): labels as
    Python's, up to float32 differences between the GPU and CPU sums (top-two gap > 1e-3)."""
    model, ckpt, vol = model_and_volume(tmp_path)
    nib.save(nib.Nifti1Image(vol, affine()), tmp_path / "in.nii.gz")
    out = subprocess.run([str(cuda_build / "segment"), str(ckpt), str(tmp_path / "in.nii.gz"),
                          str(tmp_path / "o.nii.gz")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    want, gap = python_labels(model, vol)
    got = np.asarray(nib.load(tmp_path / "o.nii.gz").dataobj)
    assert not ((got != want) & (gap > 1e-3)).any()
    assert len(np.unique(want)) > 1
