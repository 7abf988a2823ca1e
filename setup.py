"""Builds libcunet and cunet._native from bindings/ and kernels/.

libcunet (cunet/lib/libcunet.so): the kernels compiled once, bindings/lib/*.cpp behind the
public header bindings/cunet.h. Host build (default): g++ -O3 -march=native -fopenmp
-std=c++20 -fvisibility=hidden; kernels/portable.cuh stands in for the CUDA built-ins.
CUDA build (CUNET_CUDA=1): the same sources compiled by nvcc for sm_80 and sm_90
(CUNET_CUDA_ARCHS to change), launchers on device pointers.
cunet._native: the pybind11 layer bindings/*.cpp, plain C++ in both builds, linked to
libcunet through the rpath $ORIGIN/lib: Python and C++ programs run the same library.
For C++ projects the package also carries cunet/lib/cmake/cunet/cunetConfig.cmake
(`python -m cunet.cmake` prints its directory) and, in a wheel, the headers under
cunet/include/cunet (an in-place build points the config at the source tree instead).
The .cuh sources are package data: CuPy compiles them at run time.
"""
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup
from setuptools.modified import newer_group

ROOT = Path(__file__).parent.resolve()


def rel(paths):   # setuptools wants source paths relative to setup.py
    return sorted(str(p.relative_to(ROOT)) for p in paths)


KERNELS = rel((ROOT / "kernels").glob("*.cuh"))
LIB_SOURCES = rel((ROOT / "bindings/lib").glob("*.cpp"))
LIB_HEADERS = KERNELS + ["bindings/cunet.h", "bindings/lib/lib.h"]
SOURCES = rel((ROOT / "bindings").glob("*.cpp"))
# what a C++ user includes, at the same paths as in the repository
PUBLIC_HEADERS = KERNELS + ["bindings/cunet.h", "bindings/cunet_runner.h", "examples/cpp/nifti.h"]
CUDA = os.environ.get("CUNET_CUDA", "0") not in ("", "0")
HOST_FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++20", "-fno-math-errno", "-fPIC", "-fvisibility=hidden",
              "-g0", "-Wno-psabi"]

ParallelCompile("CUNET_BUILD_JOBS").install()   # compile on every core (default: all of them)


class BuildExt(build_ext):
    """libcunet first (into <package>/lib), then the extension linked to it, then the CMake config
    and the headers beside it. setuptools builds out of place and copies to the source for -e."""

    def build_extension(self, ext):
        pkg = Path(self.get_ext_fullpath(ext.name)).parent
        lib = pkg / "lib" / "libcunet.so"
        lib.parent.mkdir(parents=True, exist_ok=True)
        if self.force or newer_group([str(ROOT / p) for p in LIB_SOURCES + LIB_HEADERS], str(lib)):
            (self.build_cuda_library if CUDA else self.build_host_library)(lib)
        ext.extra_link_args += [f"-L{lib.parent}", "-lcunet", "-Wl,-rpath,$ORIGIN/lib"]
        super().build_extension(ext)
        cmake = pkg / "lib" / "cmake" / "cunet"
        cmake.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "cmake" / "cunetConfig.cmake", cmake)
        if not self.inplace:   # in place, the source tree's headers are the ones (no stale snapshot)
            for h in PUBLIC_HEADERS:
                (pkg / "include" / "cunet" / h).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / h, pkg / "include" / "cunet" / h)

    def copy_extensions_to_source(self):
        """pip install -e: the library and the CMake config go to the source tree's cunet/lib
        too (the headers stay where they are: the config finds them in the repository).
        Each file is replaced atomically: running processes keep the library they mapped."""
        super().copy_extensions_to_source()
        built = Path(self.build_lib) / "cunet" / "lib"
        for src in built.rglob("*"):
            if src.is_file():
                dst = ROOT / "cunet" / "lib" / src.relative_to(built)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst.with_name(dst.name + ".tmp"))
                os.replace(dst.with_name(dst.name + ".tmp"), dst)

    def build_host_library(self, out):
        objs = self.compiler.compile(LIB_SOURCES, output_dir=self.build_temp, extra_postargs=HOST_FLAGS,
                                     depends=LIB_HEADERS)
        self.compiler.link_shared_object(objs, str(out), extra_postargs=["-fopenmp", "-Wl,-soname,libcunet.so"],
                                         target_lang="c++")

    def build_cuda_library(self, out):
        nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
        if not os.path.exists(nvcc):
            sys.exit("cunet: CUNET_CUDA=1 asks for the CUDA build, but nvcc was not found on PATH or in $CUDA_HOME/bin. "
                     "Install the CUDA toolkit or build without CUNET_CUDA.")
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in os.environ.get("CUNET_CUDA_ARCHS", "80,90").split(",")]
        tmp = Path(self.build_temp) / "cuda"
        tmp.mkdir(parents=True, exist_ok=True)

        def compile_one(src):
            obj = tmp / (Path(src).stem + ".o")
            cmd = [nvcc, "-O3", "-std=c++20", "-Xcompiler", "-fPIC,-fvisibility=hidden,-fno-math-errno", *gencode,
                   "-x", "cu", "-c", src, "-o", str(obj)]
            print(" ".join(cmd))
            subprocess.check_call(cmd, cwd=ROOT)
            return str(obj)

        with ThreadPoolExecutor(os.cpu_count()) as pool:
            objs = list(pool.map(compile_one, LIB_SOURCES))
        cmd = [nvcc, "-shared", *gencode, *objs, "-o", str(out), "-Xlinker", "-soname,libcunet.so"]
        print(" ".join(cmd))
        subprocess.check_call(cmd, cwd=ROOT)


setup(
    ext_modules=[Pybind11Extension("cunet._native", SOURCES, depends=["bindings/bind.h", "bindings/cunet.h"],
                                   extra_compile_args=["-O2"], cxx_std=20)],
    cmdclass={"build_ext": BuildExt},
)
