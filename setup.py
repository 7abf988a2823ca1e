"""Builds cunet._native from bindings/ and kernels/.

Host build (default): g++ -O3 -march=native -fopenmp -std=c++20; kernels/portable.cuh
stands in for the CUDA built-ins. CUDA build (CUNET_CUDA=1): the same sources compiled
by nvcc for sm_80 and sm_90 (CUNET_CUDA_ARCHS to change), launchers on device pointers.
The .cuh sources are package data: CuPy compiles them at run time.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ROOT = Path(__file__).parent.resolve()
KERNELS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kernels").glob("*.cuh"))
SOURCES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "bindings").glob("*.cpp"))
HEADERS = KERNELS + ["bindings/bind.h"]
CUDA = os.environ.get("CUNET_CUDA", "0") not in ("", "0")
HOST_FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++20", "-fno-math-errno"]


class BuildExt(build_ext):
    """Host build: the usual compiler. CUDA build: nvcc compiles bindings/module.cpp as CUDA."""

    def build_extension(self, ext):
        if not CUDA:
            return super().build_extension(ext)
        nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
        if not os.path.exists(nvcc):
            sys.exit("cunet: CUNET_CUDA=1 asks for the CUDA build, but nvcc was not found on PATH or in $CUDA_HOME/bin. "
                     "Install the CUDA toolkit or build without CUNET_CUDA.")
        archs = os.environ.get("CUNET_CUDA_ARCHS", "80,90").split(",")
        out = Path(self.get_ext_fullpath(ext.name))
        out.parent.mkdir(parents=True, exist_ok=True)
        import pybind11
        import sysconfig
        tmp = Path(self.build_temp) / "cuda"
        tmp.mkdir(parents=True, exist_ok=True)
        flags = ["-O3", "-std=c++20", "-Xcompiler", "-fPIC,-fopenmp", "-I", pybind11.get_include(),
                 "-I", sysconfig.get_paths()["include"], *[f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]]
        objs = []
        for src in SOURCES:
            obj = tmp / (Path(src).stem + ".o")
            cmd = [nvcc, *flags, "-x", "cu", "-c", src, "-o", str(obj)]
            print(" ".join(cmd))
            subprocess.check_call(cmd, cwd=ROOT)
            objs.append(str(obj))
        cmd = [nvcc, "-shared", *[f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs], *objs,
               "-o", str(out), "-Xcompiler", "-fopenmp", "-lgomp"]
        print(" ".join(cmd))
        subprocess.check_call(cmd, cwd=ROOT)


setup(
    ext_modules=[Pybind11Extension("cunet._native", SOURCES, depends=HEADERS,
                                   extra_compile_args=HOST_FLAGS, extra_link_args=["-fopenmp"],
                                   cxx_std=20)],
    cmdclass={"build_ext": BuildExt},
)
