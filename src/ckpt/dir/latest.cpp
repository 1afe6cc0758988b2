#include "ckpt/dir/latest.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>

#include "core/check.h"

namespace sy::ckpt {

namespace fs = std::filesystem;

std::string step_dir_name(int64_t step) { return fmt::format("step_{:08d}", step); }

int64_t parse_step_dir(const std::string& name) {
  if (name.size() != 13 || name.rfind("step_", 0) != 0) return -1;
  for (size_t i = 5; i < name.size(); ++i)
    if (name[i] < '0' || name[i] > '9') return -1;
  return std::stoll(name.substr(5));
}

LatestFile inspect_latest(const std::string& dir) {
  LatestFile out;
  const fs::path path = fs::path(dir) / kLatest;
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(path, ec);
  if (ec || !fs::exists(st)) return out;
  out.exists = true;
  if (!fs::is_regular_file(st)) {
    out.problem = fmt::format("'{}' is not a regular file", path.string());
    return out;
  }
  std::ifstream in(path, std::ios::binary);
  std::string text;
  char buf[64];
  // A valid `latest` is 14 bytes; read a little more to tell garbage apart.
  in.read(buf, sizeof(buf));
  text.assign(buf, static_cast<size_t>(in.gcount()));
  if (!in.eof() && in.gcount() == static_cast<std::streamsize>(sizeof(buf))) {
    out.problem = fmt::format("'{}' is not a step directory name (it is longer than 64 bytes)", path.string());
    return out;
  }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  if (text.empty()) {
    out.problem = fmt::format("'{}' is empty", path.string());
    return out;
  }
  if (text.find('/') != std::string::npos || text == ".." || text == ".") {
    out.problem = fmt::format("'{}' names '{}', outside the checkpoint directory: refused", path.string(), text);
    return out;
  }
  if (parse_step_dir(text) < 0) {
    std::string shown;
    for (unsigned char c : text) shown += (c >= 0x20 && c < 0x7f) ? std::string(1, static_cast<char>(c)) : fmt::format("\\x{:02x}", c);
    out.problem = fmt::format("'{}' holds '{}', not a step directory name (step_NNNNNNNN)", path.string(), shown);
    return out;
  }
  if (!fs::is_directory(fs::path(dir) / text, ec)) {
    out.problem = fmt::format("'{}' names '{}', which does not exist (deleted?)", path.string(), text);
    return out;
  }
  out.name = text;
  return out;
}

std::string read_latest(const std::string& dir) {
  LatestFile l = inspect_latest(dir);
  return l.valid() ? l.name : "";
}

std::vector<int64_t> list_steps(const std::string& dir) {
  std::vector<int64_t> steps;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return steps;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (int64_t s = parse_step_dir(e.path().filename().string()); s >= 0 && e.is_directory(ec)) steps.push_back(s);
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

}  // namespace sy::ckpt
