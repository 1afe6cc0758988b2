// libswitchyard_nccl.so: the NCCL communicator as a module the tools load at
// run time (comm/nccl_module.h). Hidden visibility and local copies of its
// static libraries, as the CUDA module (src/kernels/cuda/module.cpp).
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "comm/nccl/nccl_comm.h"
#include "comm/nccl_module.h"
#include "core/version.h"

namespace {

void put(char* why, size_t n, const std::string& s) {
  if (why && n > 0) std::snprintf(why, n, "%s", s.c_str());
}

}  // namespace

extern "C" __attribute__((visibility("default"))) bool sy_nccl_module_create(
    const char* host_version, const std::shared_ptr<const sy::CommBackend>* mpi, void* after,
    std::shared_ptr<const sy::CommBackend>* out, char* why, size_t why_size) {
  [[maybe_unused]] constexpr sy::nccl_module::Entry entry = &sy_nccl_module_create;
  try {
    if (!host_version || std::strcmp(host_version, sy::version()) != 0) {
      put(why, why_size, std::string("this module is Switchyard ") + sy::version() + ", the program is " +
                             (host_version ? host_version : "(unknown)") + ": build both from one tree");
      return false;
    }
    std::string reason;
    if (!sy::nccl::available(&reason)) {
      put(why, why_size, reason);
      return false;
    }
    if (!mpi) return true;  // the probe
    *out = sy::nccl::create(*mpi, after);
    return true;
  } catch (const std::exception& e) {  // nothing crosses the C boundary
    put(why, why_size, e.what());
    return false;
  }
}
