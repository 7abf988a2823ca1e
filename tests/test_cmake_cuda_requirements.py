"""The CUDA build's CMake requirement (cmake/cunet_cuda_requirements.cmake, included by
CMakeLists.txt when -DCUNET_CUDA=ON): CMake before 3.25.2 cannot pass nvcc -std=c++20 and
used to fail with "CUDA20 dialect ... does not know the compile flags"; now the configure
stops with a message that says what to install. Checked with `cmake -P` on the module, asking
about CMake/nvcc versions other than the one installed here (no CUDA configure needed)."""
import subprocess
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parent.parent / "cmake" / "cunet_cuda_requirements.cmake"


def _script(tmp_path, call):
    script = tmp_path / "check.cmake"
    script.write_text(f'include("{MODULE.as_posix()}")\n{call}\nmessage(STATUS "requirement met")\n')
    return subprocess.run(["cmake", "-P", str(script)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("version", ["3.18.0", "3.25.1"])
def test_old_cmake_is_refused_with_the_reason(tmp_path, version):
    out = _script(tmp_path, f"cunet_require_cmake_for_cuda({version})")
    assert out.returncode != 0
    err = " ".join(out.stderr.split())   # (CMake wraps long messages)
    assert f"needs CMake 3.25.2 or later (CUDA C++20 with nvcc), this is CMake {version}" in err
    assert "pip install cmake" in err and "requirement met" not in out.stdout


@pytest.mark.parametrize("version", ["3.25.2", "3.26.0", "4.4.5"])
def test_new_enough_cmake_passes(tmp_path, version):
    out = _script(tmp_path, f"cunet_require_cmake_for_cuda({version})")
    assert out.returncode == 0 and "requirement met" in out.stdout, out.stderr


def test_old_nvcc_is_refused(tmp_path):
    out = _script(tmp_path, "cunet_require_nvcc(11.8.89)")
    assert out.returncode != 0 and "needs nvcc 12.0 or later (C++20), found 11.8.89" in " ".join(out.stderr.split())
    assert _script(tmp_path, "cunet_require_nvcc(12.0.76)").returncode == 0
