// Errors. Library code throws sy::Error (or sy::ConfigError for bad user
// input); only the mains turn an exception into an exit code.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace sy {

// Something went wrong at run time: a bad file, a non-finite loss, a failed
// MPI call. what() is the message a user reads; where() is file:line.
class Error : public std::runtime_error {
 public:
  Error(std::string msg, std::string where)
      : std::runtime_error(std::move(msg)), where_(std::move(where)) {}
  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

// The user's input (config file, flag, layout) is wrong; nothing ran yet.
class ConfigError : public Error {
 public:
  using Error::Error;
};

[[noreturn]] void throw_error(const char* file, int line, std::string msg);
[[noreturn]] void throw_config_error(const char* file, int line, std::string msg);

}  // namespace sy

#define SY_CHECK(cond, ...)                                             \
  do {                                                                  \
    if (!(cond)) [[unlikely]]                                           \
      ::sy::throw_error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
  } while (0)

#define SY_FAIL(...) ::sy::throw_error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))

#define SY_CONFIG_CHECK(cond, ...)                                             \
  do {                                                                         \
    if (!(cond)) [[unlikely]]                                                  \
      ::sy::throw_config_error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
  } while (0)

#define SY_CONFIG_FAIL(...) \
  ::sy::throw_config_error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))

