#include "kernels/cpu/cuda_module.h"

#include <dlfcn.h>

#include <array>
#include <cstdlib>
#include <mutex>
#include <system_error>

#include <fmt/format.h>

#include "core/version.h"

namespace sy {

std::filesystem::path cuda_module_path() {
  if (const char* e = std::getenv(kCudaModuleEnv); e && *e) return e;
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return kCudaModuleFile;  // the dynamic loader's search path
  return exe.parent_path().parent_path() / "lib" / kCudaModuleFile;
}

namespace {

// One attempt per path and process: a second open_backend(cuda) gets the
// same backend or the same reason without loading anything again.
const Backend* load_once(const std::filesystem::path& path, std::string* why) {
  std::error_code ec;
  if (path.has_parent_path() && !std::filesystem::exists(path, ec)) {  // a bare name: the loader's search path
    *why = fmt::format("no CUDA module at {} (it is built wherever CMake finds nvcc, e.g. /usr/local/cuda/bin/nvcc; "
                       "{} names another file)", path.string(), kCudaModuleEnv);
    return nullptr;
  }
  // RTLD_LOCAL: the module's own copies of core and kernels_cpu stay its own.
  void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* err = ::dlerror();
    *why = fmt::format("{} does not load: {}", path.string(), err ? err : "unknown dlopen error");
    return nullptr;
  }
  auto* entry = reinterpret_cast<CudaModuleEntry>(::dlsym(h, kCudaModuleEntry));
  if (!entry) {
    *why = fmt::format("{} is not a Switchyard CUDA module (no symbol {})", path.string(), kCudaModuleEntry);
    return nullptr;  // left loaded: unloading a library whose constructors ran is not safe in general
  }
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
