#include "comm/nccl_module.h"

#include <array>
#include <mutex>

#include <fmt/format.h>

#include "core/check.h"
#include "core/module.h"
#include "core/version.h"

namespace sy::nccl_module {

namespace {

// One attempt per path and process: the same entry or reason after that (a
// test may point SY_NCCL_MODULE elsewhere; the first module that opened stays).
Entry entry_once(std::string* why) {
  static std::mutex mu;
  static std::string tried, reason;
  static Entry entry = nullptr;
  std::lock_guard lock(mu);
  const auto path = module_path(kEnv, kFile);
  if (!entry && path.string() != tried) {
    tried = path.string();
    reason.clear();
    entry = reinterpret_cast<Entry>(module_entry(
        path, kEntry, "NCCL module",
        fmt::format("it is built wherever CMake finds CUDA and NCCL; {} names another file", kEnv), &reason));
    if (entry) {
      std::array<char, 1024> buf{};
      if (!entry(version(), nullptr, nullptr, nullptr, buf.data(), buf.size())) {
        reason = fmt::format("{}: {}", path.string(), buf.data());
        entry = nullptr;
      }
    }
  }
  if (!entry && why) *why = reason;
  return entry;
}

}  // namespace

Comm::Remake load(void* after, std::string* why) {
  const Entry entry = entry_once(why);
  if (!entry) return nullptr;
  return [entry, after](std::shared_ptr<const CommBackend> host) {
    std::shared_ptr<const CommBackend> out;
    std::array<char, 1024> buf{};
    SY_CHECK(entry(version(), &host, after, &out, buf.data(), buf.size()) && out, "NCCL: {}", buf.data());
    return out;
  };
}

}  // namespace sy::nccl_module
