"""Every kernel family compiles for the GPU without a GPU: with NVRTC using exactly the
options of the CuPy path, and with nvcc for sm_80 and sm_90 (-Xptxas -v: no spills).
Also builds and runs the host self-test of kernels/portable.cuh's block emulation."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cunet._ops import core

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = sorted(p.stem for p in (ROOT / "kernels").glob("*.cuh") if p.stem not in ("portable", "cunet"))
ARCHS = ["80", "90"]


def test_every_family_is_registered_with_ops():
    import cunet.ops  # noqa: F401  registers the kernel names of every family
    assert set(core.FAMILY.values()) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_nvrtc_compiles_family(family):
    from cupy.cuda import nvrtc   # the test extra installs cupy-cuda13x and nvidia-cuda-nvrtc 13.0
    assert nvrtc.getVersion() >= (13, 0)
    for arch in ARCHS:
        prog = nvrtc.createProgram(core.source(family), f"{family}.cu", [], [])
        try:
            nvrtc.compileProgram(prog, list(core.NVRTC_OPTIONS) + [f"--gpu-architecture=sm_{arch}"])
        except nvrtc.NVRTCError as e:
            pytest.fail(f"NVRTC sm_{arch} {family}: {e}\n{nvrtc.getProgramLog(prog)}")
        assert len(nvrtc.getCUBIN(prog)) > 0


def ptxas_report(family):
    """nvcc -Xptxas -v for both archs -> {(arch, kernel): (registers, spill_stores, spill_loads)}."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.fail("nvcc not found: the compile checks need the CUDA toolkit on PATH")
    cmd = [nvcc, "-std=c++17", "-x", "cu", "-c", f"kernels/{family}.cuh", "-o", "/dev/null", "-Xptxas", "-v",
           *[f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report, current = {}, None
    for line in out.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", line)
        if m:
            current = (m.group(2), m.group(1))
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            report[current] = [0, int(m.group(1)), int(m.group(2))]
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            report[current][0] = int(m.group(1))
    return report


@pytest.mark.parametrize("family", FAMILIES)
def test_nvcc_compiles_family_without_spills(family):
    report = ptxas_report(family)
    assert {arch for arch, _ in report} == set(ARCHS)
    spills = {k: v for k, v in report.items() if v[1] or v[2]}
    assert not spills, f"spilling kernels (arch, name): (registers, stores, loads) {spills}"


def test_portable_block_emulation_selftest(tmp_path):
    exe = tmp_path / "selftest"
    subprocess.run(["g++", "-O2", "-std=c++20", "-fopenmp", "tests/cpp/portable_selftest.cpp", "-o", str(exe)],
                   cwd=ROOT, check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_single_header_cpp_program(tmp_path):
    """kernels/cunet.cuh compiles as one C++ translation unit (host build) and runs."""
    exe = tmp_path / "single_header"
    subprocess.run(["g++", "-O1", "-std=c++20", "-fopenmp", "tests/cpp/single_header.cpp", "-o", str(exe)],
                   cwd=ROOT, check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_single_header_compiles_with_nvcc():
    """The same header as one CUDA translation unit: every family together, both archs."""
    cmd = ["nvcc", "-std=c++17", "-x", "cu", "-c", "kernels/cunet.cuh", "-o", "/dev/null",
           *[f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_cuda_build_without_nvcc_says_so(tmp_path):
    """CUNET_CUDA=1 with no nvcc anywhere: a one-line reason, not a compiler traceback."""
    import os
    import sys
    env = dict(os.environ, CUNET_CUDA="1", CUDA_HOME=str(tmp_path / "no-cuda"),
               PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                    if not (Path(p) / "nvcc").exists()))
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
                          "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "CUNET_CUDA=1 asks for the CUDA build, but nvcc was not found" in out.stderr


@pytest.mark.parametrize("family", ["optim", "dropout"])
def test_nvrtc_module_has_every_registered_kernel(family):
    """The names cunet.ops launches by (core.FAMILY) are entry points of the NVRTC module,
    the device-scalar variants included (a missing one would only fail on a GPU)."""
    import cunet.ops  # noqa: F401
    from cupy.cuda import nvrtc
    prog = nvrtc.createProgram(core.source(family), f"{family}.cu", [], [])
    nvrtc.compileProgram(prog, list(core.NVRTC_OPTIONS) + ["--gpu-architecture=compute_80"])
    entries = set(re.findall(r"\.entry\s+(\w+)", nvrtc.getPTX(prog).decode()))
    names = {name for name, fam in core.FAMILY.items() if fam == family}
    assert names <= entries and {"adam_update_scalars", "dropout_forward_seeded"} & names
