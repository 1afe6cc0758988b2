#include "core/check.h"

#include <cstring>

namespace sy {

namespace {
std::string where(const char* file, int line) {
  // Keep the path from "src/" or "comm/" on: short and still findable.
  std::string f(file);
  for (const char* root : {"/src/", "/comm/", "/launch/", "/tests/", "/bench/"}) {
    if (auto pos = f.rfind(root); pos != std::string::npos) {
      f = f.substr(pos + 1);
      break;
    }
  }
  return fmt::format("{}:{}", f, line);
}
}  // namespace

void throw_error(const char* file, int line, std::string msg) {
  throw Error(std::move(msg), where(file, line));
}

void throw_config_error(const char* file, int line, std::string msg) {
  throw ConfigError(std::move(msg), where(file, line));
}

}  // namespace sy
