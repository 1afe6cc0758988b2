// The command line every Switchyard tool shares.
//   setup(app):        --version (sy::version()), option defaults in --help
//   parse(app, ...):   --help / --version exit 0; any usage error (unknown
//                      flag, bad value, missing argument or subcommand) one
//                      message and exit 2, never CLI11's own exit codes
//   guarded(tool, f):  runs the tool; any exception becomes one message
//                      and exit 2 (bad input) or 1 (anything else)
// Exit codes: 0 success; 1 a failure; 2 bad input (running again will not help).
#pragma once

#include <CLI/CLI.hpp>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <new>
#include <optional>
#include <string>
#include <system_error>

#include "core/check.h"
#include "core/version.h"

namespace sy::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitBadInput = 2;

// Call before adding options: every option added afterwards (subcommands'
// too) shows its default in --help; --version prints "TOOL VERSION".
inline void setup(CLI::App& app, const std::string& tool) {
  app.name(tool);
  app.option_defaults()->always_capture_default();
  app.set_version_flag("--version", fmt::format("{} {}", tool, sy::version()), "print the version and exit");
}

// A finite number (CLI::Range lets NaN through: every comparison with it is false).
inline const CLI::Validator kFinite(
    [](std::string& s) -> std::string {
      char* end = nullptr;
      const double v = std::strtod(s.c_str(), &end);
      return !s.empty() && *end == '\0' && std::isfinite(v) ? "" : "'" + s + "' is not a finite number";
    },
    "");

// CLI::Range that also refuses NaN, shown in --help as the range alone.
inline CLI::Validator finite_range(double lo, double hi) {
  CLI::Range range(lo, hi);
  CLI::Validator v = kFinite & range;
  v.description(range.get_description());
  return v;
}

// A whole number in [0, 2^64): CLI11's own conversion accepts what wraps.
inline const CLI::Validator kUint64(
    [](std::string& s) -> std::string {
      uint64_t v = 0;
      const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      return !s.empty() && ec == std::errc() && p == s.data() + s.size()
                 ? ""
                 : "'" + s + "' is not a whole number from 0 to 18446744073709551615";
    },
    "");

inline void hide_empty_defaults(CLI::App& app) {
  for (CLI::Option* o : app.get_options())
    if (o->get_default_str() == "[]") o->default_str("");  // an empty list (--set): no default to show
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) hide_empty_defaults(*sub);
}

// Parses argv. Returns the exit code to return at once (0 after --help or
// --version, 2 after a usage error, whose message went to stderr) or
// nullopt when the tool should run.
inline std::optional<int> parse(CLI::App& app, int argc, char** argv) {
  hide_empty_defaults(app);
  try {
    app.parse(argc, argv);
    return std::nullopt;
  } catch (const CLI::Success& e) {  // --help, --help-all, --version: printed to stdout
    app.exit(e);
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    // A tool with subcommands whose first word is none of them: say so (CLI11 says only "A subcommand is required").
    const auto subs = app.get_subcommands([](const CLI::App*) { return true; });
    if (!subs.empty() && app.get_subcommands().empty()) {
      std::vector<std::string> names;
      for (const CLI::App* s : subs) names.push_back(s->get_name());
      for (int i = 1; i < argc; ++i)
        if (argv[i][0] != '-') {
          msg = fmt::format("'{}' is not a command; the commands are {}", argv[i], fmt::join(names, ", "));
          break;
        }
    }
    std::cerr << fmt::format("{}: bad usage: {}\nRun with --help for more information.\n", app.get_name(), msg);
    return kExitBadInput;
  }
}

// A filesystem error caused by the path a user gave (a parent that is a
// file, a missing directory, no permission) is bad input; others are not.
inline int filesystem_exit_code(const std::error_code& ec) {
  static const std::errc user[] = {std::errc::not_a_directory,         std::errc::is_a_directory,
                                   std::errc::file_exists,             std::errc::no_such_file_or_directory,
                                   std::errc::permission_denied,       std::errc::read_only_file_system,
                                   std::errc::filename_too_long,       std::errc::directory_not_empty,
                                   std::errc::operation_not_permitted, std::errc::too_many_symbolic_link_levels};
  for (std::errc e : user)
    if (ec == e) return kExitBadInput;
  return kExitError;
}

// Runs body() and returns its exit code; an exception becomes a message on
// stderr ("TOOL: bad input: ..." or "TOOL: error: ...") and exit 2 or 1.
template <class Body>
int guarded(const std::string& tool, Body&& body) {
  try {
    return body();
  } catch (const sy::ConfigError& e) {
    std::cerr << fmt::format("{}: bad input: {}\n", tool, e.what());
    return kExitBadInput;
  } catch (const sy::Error& e) {
    std::cerr << fmt::format("{}: error: {}\n  (raised at {})\n", tool, e.what(), e.where());
    return kExitError;
  } catch (const std::filesystem::filesystem_error& e) {
    // what() names the operation and the path(s): "cannot create directories: Not a directory [out/sub]".
    const int code = filesystem_exit_code(e.code());
    std::cerr << fmt::format("{}: {}: {}\n", tool, code == kExitBadInput ? "bad input" : "error", e.what());
    return code;
  } catch (const std::bad_alloc&) {
    std::cerr << fmt::format("{}: error: out of memory\n", tool);
    return kExitError;
  } catch (const std::exception& e) {
    std::cerr << fmt::format("{}: error: {}\n", tool, e.what());
    return kExitError;
  } catch (...) {
    std::cerr << fmt::format("{}: error: an unknown exception\n", tool);
    return kExitError;
  }
}

// `path` is an output the command is about to create (a file or a
// directory): it must not exist yet, and the nearest existing ancestor must
// be a directory. Throws ConfigError naming `what` (the argument) otherwise.
inline void check_new_output(const std::string& path, const std::string& what) {
  namespace fs = std::filesystem;
  std::error_code ec;
  SY_CONFIG_CHECK(!path.empty(), "{}: an empty path", what);
  SY_CONFIG_CHECK(!fs::exists(fs::symlink_status(path, ec)), "{} '{}' already exists; choose a new path (nothing "
                  "is overwritten)", what, path);
  fs::path p = fs::absolute(fs::path(path), ec).parent_path();
  while (!p.empty() && !fs::exists(fs::status(p, ec))) {
    if (p == p.parent_path()) break;
    p = p.parent_path();
  }
  SY_CONFIG_CHECK(p.empty() || fs::is_directory(fs::status(p, ec)), "{} '{}': cannot be created because '{}' is "
                  "not a directory", what, path, p.string());
}

}  // namespace sy::cli
