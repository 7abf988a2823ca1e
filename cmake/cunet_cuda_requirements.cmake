# What the CUDA build (-DCUNET_CUDA=ON) needs beyond the host build's CMake 3.18: the
# kernels are C++20 (std::atomic_ref on the host, concepts), and CMake passes nvcc
# -std=c++20 for CUDA_STANDARD 20 only from 3.25.2 on (Kitware/CMake commit 0aeeb816,
# "CUDA: Add support for cuda_std_20 for nvcc 12.0+", first tagged v3.25.2). With 3.25.1
# (Debian 12) and older, generation fails with "CUDA20 dialect ... does not know the
# compile flags". nvcc itself accepts -std=c++20 from CUDA 12.0.
set(CUNET_CUDA_MIN_CMAKE 3.25.2)
set(CUNET_CUDA_MIN_NVCC 12.0)

# cmake_version: the running CMake's (CMAKE_VERSION); an argument so a test can ask about others.
function(cunet_require_cmake_for_cuda cmake_version)
  if(cmake_version VERSION_LESS CUNET_CUDA_MIN_CMAKE)
    message(FATAL_ERROR "cunet: the CUDA build (-DCUNET_CUDA=ON) needs CMake ${CUNET_CUDA_MIN_CMAKE} or later "
      "(CUDA C++20 with nvcc), this is CMake ${cmake_version}. Install a newer one (pip install cmake), or "
      "build without -DCUNET_CUDA=ON (the host build needs CMake 3.18).")
  endif()
endfunction()

# nvcc_version: CMAKE_CUDA_COMPILER_VERSION, known after enable_language(CUDA).
function(cunet_require_nvcc nvcc_version)
  if(nvcc_version VERSION_LESS CUNET_CUDA_MIN_NVCC)
    message(FATAL_ERROR "cunet: the CUDA build needs nvcc ${CUNET_CUDA_MIN_NVCC} or later (C++20), found "
      "${nvcc_version} (${CMAKE_CUDA_COMPILER}); point CMAKE_CUDA_COMPILER at a newer one.")
  endif()
endfunction()
