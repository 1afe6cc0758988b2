// --device for the tools that run the model's ops: "cpu" or "cuda", as the
// backend that runs them (kernels/backend.h, open_backend): "cuda" loads the
// CUDA module (kernels/cpu/cuda_module.h) or, in tests under
// SY_EMULATE_CUDA=guarded, the emulated device; without either it exits 2
// naming why (no module in this build, a CUDA library missing, no GPU).
#pragma once

#include <string>

#include "core/check.h"
#include "kernels/backend.h"

namespace sy::cli {

inline const Backend& open_device(const std::string& name) {
  const auto d = parse_device(name);
  SY_CONFIG_CHECK(d.has_value(), "--device '{}': one of cpu, cuda", name);
  return open_backend(*d);
}

}  // namespace sy::cli
