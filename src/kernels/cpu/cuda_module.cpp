#include "kernels/cpu/cuda_module.h"

#include <array>
#include <cstdlib>
#include <mutex>
#include <system_error>

#include <fmt/format.h>

#include "core/module.h"
#include "core/version.h"

namespace sy {

std::filesystem::path cuda_module_path() { return module_path(kCudaModuleEnv, kCudaModuleFile); }

namespace {

// One attempt per path and process: a second open_backend(cuda) gets the
// same backend or the same reason without loading anything again.
const Backend* load_once(const std::filesystem::path& path, std::string* why) {
  auto* entry = reinterpret_cast<CudaModuleEntry>(module_entry(
      path, kCudaModuleEntry, "CUDA module",
      fmt::format("it is built wherever CMake finds nvcc, e.g. /usr/local/cuda/bin/nvcc; {} names another file",
                  kCudaModuleEnv),
      why));
  if (!entry) return nullptr;
  std::array<char, 1024> buf{};
  const Backend* b = entry(version(), buf.data(), buf.size());
  if (!b) *why = fmt::format("{}: {}", path.string(), buf.data());
  return b;
}

}  // namespace

const Backend* load_cuda_module(std::string* why) {
  static std::mutex mu;
  static std::string loaded_path, reason;
  static const Backend* loaded = nullptr;
  std::lock_guard lock(mu);
  const auto path = cuda_module_path().string();
  if (path != loaded_path) {  // a test may point SY_CUDA_MODULE elsewhere
    if (loaded) {             // the first module that opened stays the backend
      return loaded;
    }
    loaded_path = path;
    reason.clear();
    loaded = load_once(path, &reason);
  }
  if (!loaded && why) *why = reason;
  return loaded;
}

int node_local_rank() {
  for (const char* k : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK", "MPI_LOCALRANKID"})
    if (const char* v = std::getenv(k); v && *v) {
      char* end = nullptr;
      const long r = std::strtol(v, &end, 10);
      if (*end == '\0' && r >= 0) return static_cast<int>(r);
    }
  return 0;
}

}  // namespace sy
