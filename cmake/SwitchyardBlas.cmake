# OpenBLAS, the OpenMP build. Our own loops use OpenMP too, so both share one
# thread pool, and an sgemm called inside one of our parallel regions runs on
# its caller's thread instead of starting threads of its own. Debian ships
# the variants side by side; the loader's default libopenblas.so.0 is chosen
# by update-alternatives (usually the pthread one), so we link the OpenMP
# variant by path and put its directory on the binaries' RUNPATH.
set(_sy_blas_dirs
  /usr/lib/x86_64-linux-gnu/openblas-openmp
  /usr/lib/aarch64-linux-gnu/openblas-openmp)
find_library(SY_BLAS_LIBRARY NAMES openblas PATHS ${_sy_blas_dirs} NO_DEFAULT_PATH)
find_path(SY_BLAS_INCLUDE cblas.h PATHS
  /usr/include/x86_64-linux-gnu/openblas-openmp
  /usr/include/aarch64-linux-gnu/openblas-openmp NO_DEFAULT_PATH)
if(NOT SY_BLAS_LIBRARY OR NOT SY_BLAS_INCLUDE)
  message(FATAL_ERROR "OpenBLAS (OpenMP build) not found: install libopenblas-openmp-dev "
                      "(./dev.sh deps does it)")
endif()
get_filename_component(SY_BLAS_DIR ${SY_BLAS_LIBRARY} DIRECTORY)
add_library(switchyard_blas INTERFACE)
add_library(switchyard::blas ALIAS switchyard_blas)
target_include_directories(switchyard_blas SYSTEM INTERFACE ${SY_BLAS_INCLUDE})
target_link_libraries(switchyard_blas INTERFACE ${SY_BLAS_LIBRARY} OpenMP::OpenMP_CXX)
target_link_options(switchyard_blas INTERFACE "LINKER:-rpath,${SY_BLAS_DIR}" "LINKER:--disable-new-dtags")
