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
