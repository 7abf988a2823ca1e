"""Every kernel family compiles for the GPU without a GPU: with NVRTC using exactly the
options of the CuPy path, and with nvcc for sm_80 and sm_90 (-Xptxas -v: no spills).
The tiled conv kernels' SASS (cuobjdump) shows tensor-core HMMA in tf32/bf16 and no local
memory. Also builds and runs the host self-tests of kernels/portable.cuh's block emulation
and tensor-core primitives (the latter on the GPU too, where there is one).

`python tests/test_compile.py` prints the ptxas resources of the tiled conv kernels
(the table of benchmarks/RESULTS.md, "GPU kernels: ptxas resources (issue 7)")."""
import atexit
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
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


@functools.lru_cache(maxsize=None)
def nvcc_cubin(family, arch):
    """nvcc -cubin -Xptxas -v of kernels/<family>.cuh for sm_<arch>, once per process:
    -> (cubin path, ptxas's stderr). The spill check and the SASS check read the same build."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.fail("nvcc not found: the compile checks need the CUDA toolkit on PATH")
    out_dir = Path(tempfile.mkdtemp(prefix="cunet-cubin-"))
    atexit.register(shutil.rmtree, out_dir, True)
    cubin = out_dir / f"{family}_{arch}.cubin"
    cmd = [nvcc, "-std=c++17", "-x", "cu", "-cubin", f"-arch=sm_{arch}", f"kernels/{family}.cuh", "-o", str(cubin),
           "-Xptxas", "-v"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return cubin, out.stderr


def ptxas_report(family):
    """nvcc -Xptxas -v for both archs -> {(arch, kernel): [registers, spill_stores, spill_loads, smem_bytes]}."""
    stderr = "".join(nvcc_cubin(family, a)[1] for a in ARCHS)
    report, current = {}, None
    for line in stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", line)
        if m:
            current = (m.group(2), m.group(1))
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            report[current] = [0, int(m.group(1)), int(m.group(2)), 0]
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            report[current][0] = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", line)
        if m and current:
            report[current][3] = int(m.group(1))
    return report


@pytest.mark.parametrize("family", FAMILIES)
def test_nvcc_compiles_family_without_spills(family):
    report = ptxas_report(family)
    assert {arch for arch, _ in report} == set(ARCHS)
    spills = {k: v for k, v in report.items() if v[1] or v[2]}
    assert not spills, f"spilling kernels (arch, name): (registers, stores, loads) {spills}"


TILED_CONV = [f"{p}_{q}" for p in ("conv_forward", "conv_backward_data", "conv_backward_weight")
              for q in ("fp32", "tf32", "bf16")]


def cuda_tool(name):
    """A CUDA binary utility: on PATH, or from the nvidia-cuda-<name> wheel of the test extra."""
    found = shutil.which(name)
    if found:
        return found
    for entry in sys.path:
        candidate = Path(entry) / "nvidia" / "cu13" / "bin" / name
        if candidate.exists():
            return str(candidate)
    pytest.fail(f"{name} not found on PATH nor as the nvidia-cuda-{name} wheel: install the test extra")


def sass(family, arch):
    """cuobjdump -sass of kernels/<family>.cuh compiled by nvcc for sm_<arch> -> {kernel: SASS text}."""
    cubin = nvcc_cubin(family, arch)[0]
    cuobjdump = cuda_tool("cuobjdump")   # -sass runs nvdisasm: the same wheel family, put beside it on PATH
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(cuda_tool("nvdisasm")).parent), os.environ["PATH"]]))
    out = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    kernels, name = {}, None
    for line in out.stdout.splitlines():
        m = re.match(r"\s*Function : (\w+)", line)
        if m:
            name = m.group(1)
            kernels[name] = ""
        elif name:
            kernels[name] += line + "\n"
    return kernels


@pytest.mark.parametrize("arch", ARCHS)
def test_tiled_conv_sass_uses_tensor_cores_and_no_local_memory(arch):
    kernels = sass("conv", arch)
    assert set(TILED_CONV) <= set(kernels), sorted(kernels)
    for name in TILED_CONV:
        code = kernels[name]
        hmma = len(re.findall(r"\bHMMA\.", code))
        if name.endswith("_fp32"):
            assert hmma == 0 and re.search(r"\bFFMA\b", code), f"{name} sm_{arch}: expected FFMA, no HMMA"
        else:
            assert hmma > 0, f"{name} sm_{arch}: no HMMA instruction"
        local = re.findall(r"\b(?:LDL|STL)\b", code)
        assert not local, f"{name} sm_{arch}: local memory ({len(local)} LDL/STL)"


def _selftest(compile_cmd, src, exe):
    """Build tests/cpp/<src> with compile_cmd (the compiler and its flags) and run it: it prints "ok"."""
    subprocess.run([*compile_cmd, f"tests/cpp/{src}", "-o", str(exe)], cwd=ROOT, check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


HOST_CXX = ["g++", "-O2", "-std=c++20", "-fopenmp"]


def test_mma_primitives_selftest(tmp_path):
    """Host emulation of mma_16x8 / conversions vs the PTX ISA's layout and a float64 product."""
    _selftest(HOST_CXX, "mma_selftest.cpp", tmp_path / "mma_selftest")


@pytest.mark.gpu
def test_mma_primitives_selftest_on_gpu(tmp_path):
    """The same program through nvcc: the real mma.sync must agree with the layout functions."""
    _selftest(["nvcc", "-std=c++17", "-x", "cu", "-arch=sm_80"], "mma_selftest.cpp", tmp_path / "mma_selftest_gpu")


def test_portable_block_emulation_selftest(tmp_path):
    _selftest(HOST_CXX, "portable_selftest.cpp", tmp_path / "selftest")


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


@pytest.mark.parametrize("family", FAMILIES)
def test_nvrtc_module_has_every_registered_kernel(family):
    """The names cunet.ops launches by (core.FAMILY) are entry points of the NVRTC module
    (a missing one would only fail on a GPU)."""
    import cunet.ops  # noqa: F401
    from cupy.cuda import nvrtc
    prog = nvrtc.createProgram(core.source(family), f"{family}.cu", [], [])
    nvrtc.compileProgram(prog, list(core.NVRTC_OPTIONS) + ["--gpu-architecture=compute_80"])
    entries = set(re.findall(r"\.entry\s+(\w+)", nvrtc.getPTX(prog).decode()))
    names = {name for name, fam in core.FAMILY.items() if fam == family}
    assert names and names <= entries, sorted(names - entries)


if __name__ == "__main__":   # the RESULTS.md table: ptxas resources of the tiled conv kernels
    report = ptxas_report("conv")
    print("| kernel | " + " | ".join(f"sm_{a} registers | sm_{a} smem (B) | sm_{a} spills (B)" for a in ARCHS) + " |")
    print("|---|" + "---|---|---|" * len(ARCHS))
    for name in TILED_CONV + ["conv_sum_slices"]:
        cells = []
        for a in ARCHS:
            regs, st, ld, smem = report[(a, name)]
            cells += [str(regs), str(smem), str(st + ld)]
        print(f"| {name} | " + " | ".join(cells) + " |")
