// --device for the tools that run the model's ops: "cpu" or "cuda", as the
// backend that runs them (kernels/backend.h, open_backend). A tool linked
// with the CUDA backend (SY_HAVE_CUDA; none is today: see
// src/apps/CMakeLists.txt) registers it first; where no GPU is usable, or
// the tool has no CUDA backend, it exits 2 saying why. SY_EMULATE_CUDA=guarded (tests) gives the CUDA
// device emulated on the CPU instead (kernels/cpu/emulated_device.h).
#pragma once

#include <cstdlib>
#include <string>

#include "core/check.h"
#include "kernels/backend.h"
#include "kernels/cpu/emulated_device.h"
#ifdef SY_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace sy::cli {

inline const Backend& open_device(const std::string& name) {
  const auto d = parse_device(name);
  SY_CONFIG_CHECK(d.has_value(), "--device '{}': one of cpu, cuda", name);
  std::string why = "the tools do not load the CUDA backend yet (it is built and tested as switchyard_kernels_cuda; "
                    "linked into every tool it cost each CPU run 1.5 s and 230 MB at start, so it is to be loaded at "
                    "run time)";
#ifdef SY_HAVE_CUDA
  if (*d == Device::cuda && !std::getenv(kEmulateCudaEnv)) cuda::register_backend(&why);
#endif
  return open_backend(*d, why);
}

}  // namespace sy::cli
