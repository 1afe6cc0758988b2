// --device for the tools that run the model's ops: "cpu" or "cuda", as the
// backend that runs them (kernels/backend.h, open_backend). The tools do
// not load the CUDA backend yet (src/apps/CMakeLists.txt says why): "cuda"
// exits 2 saying so, unless SY_EMULATE_CUDA=guarded (tests) gives the
// emulated device (kernels/cpu/emulated_device.h). Loading the backend at
// run time goes here.
#pragma once

#include <string>

#include "core/check.h"
#include "kernels/backend.h"

namespace sy::cli {

inline const Backend& open_device(const std::string& name) {
  const auto d = parse_device(name);
  SY_CONFIG_CHECK(d.has_value(), "--device '{}': one of cpu, cuda", name);
  const std::string why =
      "the tools do not load the CUDA backend yet (it is built and tested as switchyard_kernels_cuda; linked into "
      "every tool it cost each CPU run 1.5 s and 230 MB at start, so it is to be loaded at run time)";
  return open_backend(*d, why);
}

}  // namespace sy::cli
