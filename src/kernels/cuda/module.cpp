// libswitchyard_cuda.so: the CUDA backend as a module the tools load at run
// time (kernels/cpu/cuda_module.h says why and how). Built with hidden
// visibility and its static libraries' symbols kept local, so the one
// exported symbol is the entry below, and the module's copies of core and
// kernels_cpu never interpose on the program's.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "core/version.h"
#include "kernels/cpu/cuda_module.h"
#include "kernels/cuda/cuda_backend.h"

namespace {

void put(char* why, size_t n, const std::string& s) {
  if (n == 0) return;
  std::snprintf(why, n, "%s", s.c_str());
}

}  // namespace

extern "C" __attribute__((visibility("default"))) const sy::Backend* sy_cuda_module_open(const char* host_version,
                                                                                         char* why, size_t why_size) {
  // Compile-time check that this is the entry's declared type.
  [[maybe_unused]] constexpr sy::CudaModuleEntry entry = &sy_cuda_module_open;
  try {
    if (!host_version || std::strcmp(host_version, sy::version()) != 0) {
      put(why, why_size, std::string("this module is Switchyard ") + sy::version() + ", the program is " +
                             (host_version ? host_version : "(unknown)") +
                             ": the op interface may differ; build both from one tree");
      return nullptr;
    }
    std::string reason;
    const sy::Backend* b = sy::cuda::backend_or_null(&reason);
    if (!b) put(why, why_size, reason);
    return b;
  } catch (const std::exception& e) {  // nothing crosses the C boundary
    put(why, why_size, std::string("opening the CUDA backend failed: ") + e.what());
    return nullptr;
  }
}
