#include "core/module.h"

#include <dlfcn.h>

#include <cstdlib>
#include <system_error>

#include <fmt/format.h>

namespace sy {

std::filesystem::path module_path(const char* env, const char* file) {
  if (const char* e = std::getenv(env); e && *e) return e;
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return file;  // the dynamic loader's search path
  return exe.parent_path().parent_path() / "lib" / file;
}

void* module_entry(const std::filesystem::path& path, const char* symbol, const char* kind, const std::string& hint,
                   std::string* why) {
  std::error_code ec;
  if (path.has_parent_path() && !std::filesystem::exists(path, ec)) {  // a bare name: the loader's search path
    *why = fmt::format("no {} at {} ({})", kind, path.string(), hint);
    return nullptr;
  }
  void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* err = ::dlerror();
    *why = fmt::format("{} does not load: {}", path.string(), err ? err : "unknown dlopen error");
    return nullptr;
  }
  void* entry = ::dlsym(h, symbol);
  if (!entry)  // left loaded: unloading a library whose constructors ran is not safe in general
    *why = fmt::format("{} is not a Switchyard {} (no symbol {})", path.string(), kind, symbol);
  return entry;
}

}  // namespace sy
