// The CUDA backend is loaded at run time, not linked: the tools stay free of
// cuBLAS and cuBLASLt (linked, every CPU run started in 1.5 s at 235 MB
// resident; 0.10 s and 19 MB without) and load them only when a run asks for
// device cuda. The module is libswitchyard_cuda.so (src/kernels/cuda/module.cpp,
// built wherever nvcc is found), beside the tools in <prefix>/lib; its one
// exported symbol opens the backend. SY_CUDA_MODULE names another file.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>

#include "kernels/backend.h"

namespace sy {

inline constexpr const char* kCudaModuleEnv = "SY_CUDA_MODULE";
inline constexpr const char* kCudaModuleFile = "libswitchyard_cuda.so";
inline constexpr const char* kCudaModuleEntry = "sy_cuda_module_open";

// The entry: the CUDA backend, or null with the reason in why (at most
// why_size bytes, NUL-terminated). host_version is the loading program's
// sy::version(); a module of another build refuses to open.
using CudaModuleEntry = const Backend* (*)(const char* host_version, char* why, size_t why_size);

// Where the module is looked for: $SY_CUDA_MODULE, else ../lib/ beside this
// program's directory (build/bin -> build/lib; a bundle's bin -> lib).
std::filesystem::path cuda_module_path();

// Loads the module once and opens its backend; null and why (naming the file)
// when the file is missing, does not load (a CUDA library not found), is not
// a Switchyard module, is of another build, or finds no usable device.
const Backend* load_cuda_module(std::string* why);

// This process's rank among those on its node, as the launcher set it
// (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID, LOCAL_RANK, MPI_LOCALRANKID, the
// first that is a number); 0 without one. A device backend opens device
// node_local_rank() modulo the devices visible: one GPU per rank.
int node_local_rank();

}  // namespace sy
