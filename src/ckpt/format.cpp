#include "ckpt/format.h"

#include <cctype>

#include <fstream>

#include <filesystem>

#include <algorithm>

#include "ckpt/crc32c.h"
#include "core/check.h"

namespace sy::ckpt {

namespace fs = std::filesystem;

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

std::string resolve_checkpoint(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  SY_CONFIG_CHECK(fs::exists(st), "no checkpoint at '{}': it does not exist", path);
  if (fs::is_regular_file(st)) return path;  // a consolidated checkpoint
  SY_CONFIG_CHECK(fs::is_directory(st), "'{}' is neither a checkpoint directory nor a checkpoint file", path);
  if (fs::exists(fs::path(path) / kManifest, ec)) return path;
  for (const fs::path& dir : {fs::path(path), fs::path(path) / "checkpoints"}) {
    const LatestFile l = inspect_latest(dir.string());
    const std::vector<int64_t> steps = list_steps(dir.string());
    if (!l.exists && steps.empty()) continue;
    if (l.valid()) return (dir / l.name).string();
    const std::string hint =
        steps.empty() ? std::string("it holds no step directories")
                      : fmt::format("name a checkpoint directly, e.g. '{}'", (dir / step_dir_name(steps[0])).string());
    SY_CONFIG_CHECK(!l.exists, "{}: {}", l.problem, hint);
    SY_CONFIG_FAIL("'{}' holds step directories but no `latest` file: {}", dir.string(), hint);
  }
  const std::string name = fs::path(path).lexically_normal().filename().string();
  SY_CONFIG_CHECK(parse_step_dir(name) < 0 && !name.ends_with(".tmp"),
                  "'{}' is not a complete checkpoint: '{}' is missing (an interrupted save?)", path,
                  (fs::path(path) / kManifest).string());
  SY_CONFIG_FAIL("'{}' holds no checkpoint: no manifest.h5, no `latest`, no step directories (a run saves one at its "
                 "end, every checkpoint.interval steps and on SIGUSR1 / SIGTERM)", path);
}

std::string step_dir_name(int64_t step) { return fmt::format("step_{:08d}", step); }
std::string shard_file_name(int64_t rank) { return fmt::format("shard_{:05d}.h5", rank); }

int64_t parse_step_dir(const std::string& name) {
  if (name.size() != 13 || name.rfind("step_", 0) != 0) return -1;
  for (size_t i = 5; i < name.size(); ++i)
    if (name[i] < '0' || name[i] > '9') return -1;
  return std::stoll(name.substr(5));
}

std::vector<int64_t> block_crcs(const float* data, int64_t n) {
  // Blocks are independent: all threads, one block each.
  std::vector<int64_t> out((n + kCrcBlock - 1) / kCrcBlock);
#pragma omp parallel for schedule(dynamic, 1) if (out.size() > 1)
  for (int64_t i = 0; i < static_cast<int64_t>(out.size()); ++i) {
    int64_t b = i * kCrcBlock;
    out[i] = crc32c(data + b, static_cast<size_t>(std::min(kCrcBlock, n - b)) * sizeof(float));
  }
  return out;
}

void write_tensor(h5::File& f, const std::string& group, const std::string& name, const float* data,
                  const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::string path = group + "/" + name;
  f.write(path, data, shape);
  f.set_attr(path, "crc32c", block_crcs(data, n));
  f.set_attr(path, "crc_block", kCrcBlock);
}

namespace {
void check_blocks(const h5::File& f, const std::string& path, const float* data, int64_t first_block, int64_t nblocks,
                  int64_t n, const std::vector<int64_t>& crcs, int64_t block) {
  std::vector<uint32_t> got(static_cast<size_t>(nblocks));
#pragma omp parallel for schedule(dynamic, 1) if (nblocks > 1)
  for (int64_t b = 0; b < nblocks; ++b) {
    int64_t begin = (first_block + b) * block;
    got[b] = crc32c(data + b * block, static_cast<size_t>(std::min(block, n - begin)) * sizeof(float));
  }
  for (int64_t b = 0; b < nblocks; ++b) {
    int64_t idx = first_block + b, begin = idx * block, len = std::min(block, n - begin);
    SY_CHECK(idx < static_cast<int64_t>(crcs.size()) && got[b] == static_cast<uint32_t>(crcs[idx]),
             "{}: dataset '{}' fails its checksum in elements [{}, {}) (stored {:08x}, computed {:08x}): the file "
             "is corrupt", f.path(), path, begin, begin + len,
             idx < static_cast<int64_t>(crcs.size()) ? static_cast<uint32_t>(crcs[idx]) : 0u, got[b]);
  }
}
}  // namespace

void read_verified(const h5::File& f, const std::string& group, const std::string& name, float* out, int64_t begin,
                   int64_t end) {
  std::string path = group + "/" + name;
  SY_CHECK(f.exists(path), "{}: dataset '{}' is missing", f.path(), path);
  const int64_t n = f.numel(path);
  const std::vector<int64_t> crcs = f.attr_ints(path, "crc32c");
  const int64_t block = f.attr_int(path, "crc_block");
  SY_CHECK(block > 0 && static_cast<int64_t>(crcs.size()) == (n + block - 1) / block,
           "{}: dataset '{}' has a malformed checksum attribute", f.path(), path);
  const int64_t b0 = begin / block, b1 = (end + block - 1) / block;  // blocks touched
  const int64_t ab = b0 * block, ae = std::min(n, b1 * block);
  if (ab == begin && ae == end) {
    f.read(path, out, begin, end);
    check_blocks(f, path, out, b0, b1 - b0, n, crcs, block);
    return;
  }
  std::vector<float> tmp(static_cast<size_t>(ae - ab));
  f.read(path, tmp.data(), ab, ae);
  check_blocks(f, path, tmp.data(), b0, b1 - b0, n, crcs, block);
  std::copy(tmp.begin() + (begin - ab), tmp.begin() + (end - ab), out);
}

std::string verify_tensor(const h5::File& f, const std::string& group, const std::string& name) {
  try {
    std::string path = group + "/" + name;
    int64_t n = f.numel(path);
    std::vector<float> buf(static_cast<size_t>(std::min(n, int64_t{64} * kCrcBlock)));
    for (int64_t b = 0; b < n; b += static_cast<int64_t>(buf.size())) {
      int64_t e = std::min(n, b + static_cast<int64_t>(buf.size()));
      read_verified(f, group, name, buf.data(), b, e);
    }
    return "";
  } catch (const Error& e) {
    return e.what();
  }
}

const TensorEntry* Manifest::find(const std::string& name) const {
  for (const TensorEntry& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

void write_manifest(const std::string& path, const Manifest& m) {
  h5::File f = h5::File::create(path);
  write_manifest_into(f, m);
  f.close();
}

void write_manifest_into(h5::File& f, const Manifest& m) {
  f.set_attr("", "format", std::string("switchyard-checkpoint"));
  f.set_attr("", "format_version", m.format_version);
  f.set_attr("", "software_version", m.software_version);
  f.set_attr("", "saved_at", m.saved_at);
  f.set_attr("", "step", m.step);
  f.set_attr("", "tokens_seen", m.tokens_seen);
  f.set_attr("", "seed", m.seed);
  f.set_attr("", "layout_world", m.world);
  f.set_attr("", "layout_pp", m.pp);
  f.set_attr("", "layout_dp", m.dp);
  f.set_attr("", "layout_ep", m.ep);
  f.set_attr("", "zero1", m.zero1);
  f.set_attr("", "shards", m.shards);
  f.set_attr("", "config", m.config_toml);
  for (const auto& [k, v] : m.metrics) f.set_attr("", "metrics_" + k, v);
  if (!m.bias_shape.empty()) {
    f.write("expert_bias", m.expert_bias.data(), m.bias_shape);
    f.write("expert_load", m.expert_load.data(), m.bias_shape);
  }
  if (!m.fp8_amax_history.empty()) f.write("fp8_amax_history", m.fp8_amax_history.data(), m.fp8_shape);
  f.make_group("tensors");
  for (const TensorEntry& t : m.tensors) {
    std::string g = "tensors/" + t.name;
    f.make_group(g);
    f.set_attr(g, "shape", t.shape);
    f.set_attr(g, "file", t.file);
    f.set_attr(g, "index", t.index);
  }
}

Manifest read_manifest(const std::string& path) {
  h5::File f = h5::File::open(path);
  Manifest m;
  SY_CHECK(f.has_attr("", "format") && f.attr_string("", "format") == "switchyard-checkpoint",
           "{}: not a Switchyard checkpoint manifest", path);
  m.format_version = f.attr_int("", "format_version");
  SY_CHECK(m.format_version == kFormatVersion, "{}: checkpoint format version {} is not supported (this build reads "
           "{})", path, m.format_version, kFormatVersion);
  m.software_version = f.attr_string("", "software_version");
  m.saved_at = f.attr_string("", "saved_at");
  m.step = f.attr_int("", "step");
  m.tokens_seen = f.attr_int("", "tokens_seen");
  m.seed = f.attr_int("", "seed");
  m.world = f.attr_int("", "layout_world");
  m.pp = f.attr_int("", "layout_pp");
  m.dp = f.attr_int("", "layout_dp");
  m.ep = f.attr_int("", "layout_ep");
  m.zero1 = f.attr_int("", "zero1");
  m.shards = f.attr_int("", "shards");
  m.config_toml = f.attr_string("", "config");
  for (const char* k : {"loss", "lr", "grad_norm", "val_loss"})
    if (f.has_attr("", std::string("metrics_") + k)) m.metrics[k] = f.attr_double("", std::string("metrics_") + k);
  if (f.exists("expert_bias")) {
    m.bias_shape = f.shape("expert_bias");
    m.expert_bias.resize(static_cast<size_t>(f.numel("expert_bias")));
    m.expert_load.resize(m.expert_bias.size());
    f.read("expert_bias", m.expert_bias.data(), 0, static_cast<int64_t>(m.expert_bias.size()));
    f.read("expert_load", m.expert_load.data(), 0, static_cast<int64_t>(m.expert_load.size()));
  }
  if (f.exists("fp8_amax_history")) {
    m.fp8_shape = f.shape("fp8_amax_history");
    SY_CHECK(m.fp8_shape.size() == 3 && m.fp8_shape[1] == 3,
             "fp8_amax_history has shape {}, expected (tensors, 3, steps)", fmt::join(m.fp8_shape, "x"));
    m.fp8_amax_history.resize(static_cast<size_t>(f.numel("fp8_amax_history")));
    f.read("fp8_amax_history", m.fp8_amax_history.data(), 0, static_cast<int64_t>(m.fp8_amax_history.size()));
  }
  for (const std::string& name : f.list("tensors")) {
    std::string g = "tensors/" + name;
    m.tensors.push_back({name, f.attr_ints(g, "shape"), f.attr_string(g, "file"), f.attr_int(g, "index")});
  }
  std::sort(m.tensors.begin(), m.tensors.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
  return m;
}

}  // namespace sy::ckpt
