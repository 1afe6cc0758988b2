// Modules the tools load at run time, only when a run asks for what they
// hold (the CUDA backend, kernels/cpu/cuda_module.h; the NCCL communicator,
// comm/nccl_module.h): linked, their libraries (cuBLAS, NCCL) would load with
// every CPU run. Each module is a shared object with one exported entry,
// built with the tools, and found beside them.
#pragma once

#include <filesystem>
#include <string>

namespace sy {

// $env when set, else lib/<file> beside the program's bin/ (build/bin ->
// build/lib; a bundle's bin -> lib); a bare file name (the dynamic loader's
// search path) when the program's path is unknown.
std::filesystem::path module_path(const char* env, const char* file);

// Loads the module at path (RTLD_LOCAL: its static copies of our libraries
// stay its own; never unloaded) and returns its entry `symbol`; null, with
// *why naming the file and the reason, when the file is missing ("no
// <kind> at PATH (<hint>)"), does not load (a library it needs is missing),
// or has no such entry ("not a Switchyard <kind>").
void* module_entry(const std::filesystem::path& path, const char* symbol, const char* kind, const std::string& hint,
                   std::string* why);

}  // namespace sy
