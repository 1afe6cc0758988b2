# The CUDA seam: find the toolkit and NCCL (at /usr/local/cuda on our
# machines) and report them. The CUDA backend itself is built only when
# SY_CUDA=ON; until the CUDA backend lands that is an error, not a silent no-op.
find_program(SY_NVCC nvcc PATHS /usr/local/cuda/bin NO_DEFAULT_PATH)
find_path(SY_NCCL_INCLUDE nccl.h PATHS /usr/local/cuda/include /usr/include)
find_library(SY_NCCL_LIBRARY nccl PATHS /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu)
if(SY_NVCC)
  set(SY_CUDA_STATUS "toolkit found (${SY_NVCC})")
else()
  set(SY_CUDA_STATUS "toolkit not found")
endif()
if(SY_NCCL_LIBRARY)
  string(APPEND SY_CUDA_STATUS ", NCCL found")
endif()
if(SY_CUDA)
  message(FATAL_ERROR "SY_CUDA=ON: the CUDA backend is not part of this build yet "
                      "(CUDA issue); configure with -DSY_CUDA=OFF")
endif()
string(APPEND SY_CUDA_STATUS ", backend off")

# FP8 on NVIDIA GPUs (quantize kernels + the cuBLASLt FP8 GEMM, issue 6):
# built wherever nvcc and cuBLASLt are found, so CI compiles and links it;
# its tests (label gpu) skip with a message where no GPU is present.
set(SY_FP8_CUDA AUTO CACHE STRING "Build the CUDA FP8 kernels: AUTO (if nvcc and cuBLASLt are found), ON, OFF")
find_library(SY_CUBLASLT_LIBRARY cublasLt PATHS /usr/local/cuda/lib64 NO_DEFAULT_PATH)
set(SY_FP8_CUDA_ON OFF)
if(SY_FP8_CUDA STREQUAL "ON" OR (SY_FP8_CUDA STREQUAL "AUTO" AND SY_NVCC AND SY_CUBLASLT_LIBRARY))
  if(NOT SY_NVCC OR NOT SY_CUBLASLT_LIBRARY)
    message(FATAL_ERROR "SY_FP8_CUDA=ON needs nvcc and cuBLASLt (looked in /usr/local/cuda)")
  endif()
  set(CMAKE_CUDA_COMPILER ${SY_NVCC})
  if(NOT CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 90)  # Hopper: block-scaled FP8 GEMMs
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  set(SY_FP8_CUDA_ON ON)
  string(APPEND SY_CUDA_STATUS ", FP8 kernels on (sm_${CMAKE_CUDA_ARCHITECTURES})")
endif()
