# find_package(cunet) -> the imported target cunet::cunet: libcunet (the compiled kernels,
# host or CUDA build) and the include directory of "bindings/cunet.h" (the launchers) and
# "bindings/cunet_runner.h" (the checkpoint runner). Consumers need no OpenMP, nvcc or
# CUDA headers: all of that is inside the library.
#
# One file for every place it is installed; it sits in <lib>/cmake/cunet, the library in <lib>:
#   cmake --install           <prefix>/lib/cmake/cunet          headers <prefix>/include/cunet
#   pip install (wheel)       <site>/cunet/lib/cmake/cunet      headers <site>/cunet/include/cunet
#   source tree (pip -e, tools/devbuild.sh)  <repo>/cunet/lib/cmake/cunet   headers: <repo> itself
# `python -m cunet.cmake` prints the directory to pass as -Dcunet_DIR=...
get_filename_component(_cunet_lib "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
get_filename_component(_cunet_prefix "${_cunet_lib}/.." ABSOLUTE)
if(EXISTS "${_cunet_prefix}/include/cunet/bindings/cunet.h")
  set(_cunet_include "${_cunet_prefix}/include/cunet")
elseif(EXISTS "${_cunet_prefix}/../bindings/cunet.h")
  get_filename_component(_cunet_include "${_cunet_prefix}/.." ABSOLUTE)
else()
  set(cunet_FOUND FALSE)
  set(cunet_NOT_FOUND_MESSAGE "no bindings/cunet.h in ${_cunet_prefix}/include/cunet or ${_cunet_prefix}/..")
  return()
endif()
if(NOT EXISTS "${_cunet_lib}/libcunet.so")
  set(cunet_FOUND FALSE)
  set(cunet_NOT_FOUND_MESSAGE "${_cunet_lib}/libcunet.so is missing (build it: pip install, tools/devbuild.sh or cmake)")
  return()
endif()
if(NOT TARGET cunet::cunet)
  add_library(cunet::cunet SHARED IMPORTED)
  set_target_properties(cunet::cunet PROPERTIES
    IMPORTED_LOCATION "${_cunet_lib}/libcunet.so"
    INTERFACE_INCLUDE_DIRECTORIES "${_cunet_include}"
    INTERFACE_COMPILE_FEATURES cxx_std_20)
endif()
set(cunet_INCLUDE_DIR "${_cunet_include}")
set(cunet_LIBRARY "${_cunet_lib}/libcunet.so")
unset(_cunet_lib)
unset(_cunet_prefix)
unset(_cunet_include)
