// NCCL for a device run's groups, loaded at run time like the CUDA backend
// (core/module.h): lib/libswitchyard_nccl.so (comm/nccl/module.cpp) holds
// the NCCL communicator (comm/nccl/nccl_comm.h), so the tools link neither
// NCCL nor CUDA. Built wherever CMake finds CUDA and NCCL.
#pragma once

#include <memory>
#include <string>

#include "comm/backend.h"
#include "comm/comm.h"

namespace sy::nccl_module {

inline constexpr const char* kEnv = "SY_NCCL_MODULE";
inline constexpr const char* kFile = "libswitchyard_nccl.so";
inline constexpr const char* kEntry = "sy_nccl_module_create";

// The entry. host_version is the loading program's sy::version(); a module of
// another build refuses. With mpi null: whether NCCL can run in this process
// (the library loads, a CUDA device), true, or false with why. Else *out = a
// NCCL communicator over mpi's members (collective over them) whose
// operations follow the work queued on the CUDA stream `after` (null: the
// legacy default stream); false with why when that fails. Nothing is thrown
// across it.
using Entry = bool (*)(const char* host_version, const std::shared_ptr<const CommBackend>* mpi, void* after,
                       std::shared_ptr<const CommBackend>* out, char* why, size_t why_size);

// The maker of NCCL twins of host groups (Comm::over), ordered after the
// CUDA stream `after`; null with *why (naming the file) when the module is
// missing, does not load, is of another build, or finds no GPU. The maker
// throws, naming NCCL's reason, if creating a communicator fails.
Comm::Remake load(void* after, std::string* why);

}  // namespace sy::nccl_module
