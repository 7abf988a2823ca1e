"""Where a C++ project finds libcunet after `pip install`: the directory of cunetConfig.cmake.

    cmake -S app -B build -Dcunet_DIR=$(python -m cunet.cmake)
    # app/CMakeLists.txt: find_package(cunet REQUIRED)
    #                     target_link_libraries(app PRIVATE cunet::cunet)

`python -m cunet.cmake --include` / `--lib` print the include directory (the one holding
bindings/cunet.h) and the library's path instead, for builds without CMake:
    g++ -std=c++20 -I$(python -m cunet.cmake --include) app.cpp $(python -m cunet.cmake --lib)
"""
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def cmake_dir():
    """cunet/lib/cmake/cunet inside the installed package (or the source tree for pip -e)."""
    return PACKAGE / "lib" / "cmake" / "cunet"


def library():
    return PACKAGE / "lib" / "libcunet.so"


def include_dir():
    """cunet/include/cunet in a wheel; the repository itself in a source tree (as cunetConfig.cmake)."""
    installed = PACKAGE / "include" / "cunet"
    return installed if (installed / "bindings" / "cunet.h").is_file() else PACKAGE.parent


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--include"], ["--lib"]):
        print("usage: python -m cunet.cmake [--include | --lib]", file=sys.stderr)
        return 2
    for need in (cmake_dir() / "cunetConfig.cmake", library(), include_dir() / "bindings" / "cunet.h"):
        if not need.is_file():
            print(f"cunet.cmake: {need} is missing: the package was not built (pip install, or tools/devbuild.sh "
                  "in a source tree)", file=sys.stderr)
            return 1
    print({"--include": include_dir(), "--lib": library()}.get(args[0]) if args else cmake_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
