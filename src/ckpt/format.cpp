#include "ckpt/format.h"

#include <cctype>

#include <fstream>

#include <filesystem>

#include <algorithm>

#include <cmath>
#include <random>
#include <set>

#include "ckpt/crc32c.h"
#include "core/check.h"

namespace sy::ckpt {

namespace fs = std::filesystem;

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

std::string shard_file_name(int64_t rank) { return fmt::format("shard_{:05d}.h5", rank); }

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

std::string new_run_id() {
  std::random_device rd;  // /dev/urandom on Linux
  std::string id;
  for (int i = 0; i < 4; ++i) id += fmt::format("{:08x}", static_cast<uint32_t>(rd()));
  return id;
}

namespace {
std::string run_id_of(const fs::path& file) {
  try {
    h5::File f = h5::File::open(file.string());
    if (f.has_attr("", "run_id")) return f.attr_string("", "run_id");
  } catch (const Error&) {
  }
  return "";
}

std::vector<fs::path> shard_files_in(const std::string& checkpoint_dir) {
  std::error_code ec;
  std::vector<fs::path> shards;
  for (const auto& e : fs::directory_iterator(checkpoint_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with("shard_") && name.ends_with(".h5")) shards.push_back(e.path());
  }
  std::sort(shards.begin(), shards.end());
  return shards;
}
}  // namespace

std::string read_run_id(const std::string& checkpoint_dir) {
  if (std::string id = run_id_of(fs::path(checkpoint_dir) / kManifest); !id.empty()) return id;
  for (const fs::path& p : shard_files_in(checkpoint_dir))
    if (std::string id = run_id_of(p); !id.empty()) return id;
  return "";
}

std::vector<std::string> read_run_ids(const std::string& checkpoint_dir) {
  std::vector<std::string> ids;
  auto add = [&](std::string id) {
    if (!id.empty() && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(std::move(id));
  };
  add(run_id_of(fs::path(checkpoint_dir) / kManifest));
  for (const fs::path& p : shard_files_in(checkpoint_dir)) add(run_id_of(p));
  return ids;
}

void write_tensor(h5::File& f, const std::string& group, const std::string& name, const float* data,
                  const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::string path = group + "/" + name;
  f.write_bulk(path, data, shape);
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
  f.set_attr("", "run_id", m.run_id);
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
  if (!m.tokenizer_model.empty())
    f.write("tokenizer_model", reinterpret_cast<const uint8_t*>(m.tokenizer_model.data()),
            {static_cast<int64_t>(m.tokenizer_model.size())});
  f.make_group("tensors");
  for (const TensorEntry& t : m.tensors) {
    std::string g = "tensors/" + t.name;
    f.make_group(g);
    f.set_attr(g, "shape", t.shape);
    f.set_attr(g, "file", t.file);
    f.set_attr(g, "index", t.index);
  }
  if (!m.shard_digests.empty()) {
    f.make_group("shard_files");
    for (const auto& [file, digest] : m.shard_digests) {
      f.make_group("shard_files/" + file);
      f.set_attr("shard_files/" + file, "seal_crc32c", static_cast<int64_t>(digest));
    }
  }
}

void write_shard_identity(h5::File& f, const std::string& run_id, int64_t step, int64_t rank) {
  f.set_attr("", "format", std::string("switchyard-checkpoint-shard"));
  f.set_attr("", "run_id", run_id);
  f.set_attr("", "step", step);
  f.set_attr("", "rank", rank);
}

void check_shard(const h5::File& f, const std::string& file, const Manifest& m) {
  if (!m.sealed) return;  // format 1: shards carry no identity
  SY_CHECK(f.sealed(), "{}: the shard has no checksum table, but its manifest (format {}) is sealed: the shard is not "
           "from this checkpoint, or corrupt", f.path(), m.format_version);
  auto it = m.shard_digests.find(file);
  SY_CHECK(it != m.shard_digests.end(), "{}: the manifest does not list shard '{}' among its shard files: the manifest "
           "is not from this checkpoint", f.path(), file);
  if (f.digest() == it->second) return;
  std::string whose = "of unknown origin";
  if (f.has_attr("", "run_id") && f.has_attr("", "step"))
    whose = fmt::format("written for step {} of run {}", f.attr_int("", "step"), f.attr_string("", "run_id"));
  SY_FAIL("{}: this shard does not belong to the checkpoint its manifest describes (step {} of run {}): it was {} "
          "(digest {:08x}, the manifest expects {:08x}); a shard or manifest copied in from another checkpoint?",
          f.path(), m.step, m.run_id, whose, f.digest(), it->second);
}

Manifest read_manifest(const std::string& path) { return read_manifest(h5::File::open(path)); }

Manifest read_manifest(const h5::File& f) {
  const std::string& path = f.path();
  Manifest m;
  SY_CHECK(f.has_attr("", "format") && f.attr_string("", "format") == "switchyard-checkpoint",
           "{}: not a Switchyard checkpoint manifest", path);
  m.format_version = f.attr_int("", "format_version");
  SY_CHECK(m.format_version >= kOldestFormatVersion && m.format_version <= kFormatVersion,
           "{}: checkpoint format version {} is not supported (this build reads {} to {})", path, m.format_version,
           kOldestFormatVersion, kFormatVersion);
  m.sealed = f.sealed();
  SY_CHECK(m.sealed || m.format_version < 2, "{}: format version {} must carry a checksum table and this file has "
           "none: the file is corrupt", path, m.format_version);
  SY_CHECK(!m.sealed || m.format_version >= 2, "{}: a sealed manifest that says format version {}: the file is "
           "corrupt", path, m.format_version);
  m.software_version = f.attr_string("", "software_version");
  m.saved_at = f.attr_string("", "saved_at");
  if (m.format_version >= 2) {
    m.run_id = f.attr_string("", "run_id");
    SY_CHECK(m.run_id.size() == 32 && m.run_id.find_first_not_of("0123456789abcdef") == std::string::npos,
             "{}: attribute 'run_id' is '{}', not a run identity (32 hex digits)", path, m.run_id);
  }
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
  constexpr int64_t kBig = int64_t{1} << 40;  // the config's bound on steps and seeds
  SY_CHECK(m.step >= 0 && m.step <= kBig, "{}: attribute 'step' = {} is out of range [0, 2^40]", path, m.step);
  SY_CHECK(m.tokens_seen >= 0, "{}: attribute 'tokens_seen' = {} is negative", path, m.tokens_seen);
  SY_CHECK(m.seed >= 0 && m.seed <= kBig, "{}: attribute 'seed' = {} is out of range [0, 2^40]", path, m.seed);
  SY_CHECK(m.world >= 1 && m.pp >= 1 && m.dp >= 1 && m.ep >= 1 && m.pp * m.dp == m.world && m.dp % m.ep == 0,
           "{}: the layout attributes are inconsistent (world {}, pp {}, dp {}, ep {})", path, m.world, m.pp, m.dp,
           m.ep);
  SY_CHECK(m.zero1 == 0 || m.zero1 == 1, "{}: attribute 'zero1' = {} is not 0 or 1", path, m.zero1);
  SY_CHECK(m.shards >= 1 && m.shards <= m.world, "{}: attribute 'shards' = {} is out of range [1, {}]", path, m.shards,
           m.world);
  for (const char* k : {"loss", "lr", "grad_norm", "val_loss"})
    if (f.has_attr("", std::string("metrics_") + k)) {
      const double v = f.attr_double("", std::string("metrics_") + k);
      SY_CHECK(std::isfinite(v), "{}: attribute 'metrics_{}' is {}", path, k, v);
      m.metrics[k] = v;
    }
  if (f.exists("expert_bias") || f.exists("expert_load")) {
    SY_CHECK(f.exists("expert_bias") && f.exists("expert_load"), "{}: dataset '{}' is missing (the other is there)",
             path, f.exists("expert_bias") ? "expert_load" : "expert_bias");
    m.bias_shape = f.shape("expert_bias");
    SY_CHECK(m.bias_shape.size() == 2 && f.shape("expert_load") == m.bias_shape,
             "{}: datasets 'expert_bias' ({}) and 'expert_load' ({}) must both be (moe_layers, experts)", path,
             fmt::join(m.bias_shape, "x"), fmt::join(f.shape("expert_load"), "x"));
    m.expert_bias.resize(static_cast<size_t>(f.numel("expert_bias")));
    m.expert_load.resize(m.expert_bias.size());
    f.read("expert_bias", m.expert_bias.data(), 0, static_cast<int64_t>(m.expert_bias.size()));
    f.read("expert_load", m.expert_load.data(), 0, static_cast<int64_t>(m.expert_load.size()));
    for (size_t i = 0; i < m.expert_bias.size(); ++i) {
      SY_CHECK(std::isfinite(m.expert_bias[i]), "{}: dataset 'expert_bias' holds {} at [{}, {}]", path,
               m.expert_bias[i], i / m.bias_shape[1], i % m.bias_shape[1]);
      SY_CHECK(m.expert_load[i] >= 0, "{}: dataset 'expert_load' holds {} at [{}, {}]", path, m.expert_load[i],
               i / m.bias_shape[1], i % m.bias_shape[1]);
    }
  }
  if (f.exists("fp8_amax_history")) {
    m.fp8_shape = f.shape("fp8_amax_history");
    SY_CHECK(m.fp8_shape.size() == 3 && m.fp8_shape[1] == 3 && m.fp8_shape[2] >= 1,
             "{}: dataset 'fp8_amax_history' has shape {}, expected (tensors, 3, steps)", path,
             fmt::join(m.fp8_shape, "x"));
    m.fp8_amax_history.resize(static_cast<size_t>(f.numel("fp8_amax_history")));
    f.read("fp8_amax_history", m.fp8_amax_history.data(), 0, static_cast<int64_t>(m.fp8_amax_history.size()));
    for (size_t i = 0; i < m.fp8_amax_history.size(); ++i)
      SY_CHECK(std::isfinite(m.fp8_amax_history[i]) && m.fp8_amax_history[i] >= 0,
               "{}: dataset 'fp8_amax_history' holds {} at flat index {} (an amax is finite and >= 0)", path,
               m.fp8_amax_history[i], i);
  }
  if (f.exists("tokenizer_model")) {
    SY_CHECK(f.shape("tokenizer_model").size() == 1, "{}: dataset 'tokenizer_model' has shape {}, expected (bytes)",
             path, fmt::join(f.shape("tokenizer_model"), "x"));
    m.tokenizer_model.resize(static_cast<size_t>(f.stored_numel("tokenizer_model")));
    f.read("tokenizer_model", reinterpret_cast<uint8_t*>(m.tokenizer_model.data()), 0,
           static_cast<int64_t>(m.tokenizer_model.size()));
  }
  std::set<int64_t> indices;
  for (const std::string& name : f.list("tensors")) {
    std::string g = "tensors/" + name;
    TensorEntry t{name, f.attr_ints(g, "shape"), f.attr_string(g, "file"), f.attr_int(g, "index")};
    SY_CHECK(!t.shape.empty() && std::all_of(t.shape.begin(), t.shape.end(), [](int64_t d) { return d >= 1; }),
             "{}: tensor '{}' has shape ({})", path, name, fmt::join(t.shape, ", "));
    SY_CHECK(t.file == "." || (t.file.size() == 14 && t.file.rfind("shard_", 0) == 0 && t.file.ends_with(".h5") &&
                               t.file.find_first_not_of("0123456789", 6) == 11),
             "{}: tensor '{}' names file '{}', not a shard file of this checkpoint", path, name, t.file);
    SY_CHECK(t.index >= 0 && indices.insert(t.index).second, "{}: tensor '{}' has index {}, out of range or taken",
             path, name, t.index);
    m.tensors.push_back(std::move(t));
  }
  SY_CHECK(!m.tensors.empty(), "{}: the manifest lists no tensors", path);
  SY_CHECK(*indices.rbegin() == static_cast<int64_t>(m.tensors.size()) - 1, "{}: tensor indices are not 0..{}", path,
           m.tensors.size() - 1);
  if (m.sealed && f.exists("shard_files"))
    for (const std::string& file : f.list("shard_files"))
      m.shard_digests[file] = static_cast<uint32_t>(f.attr_int("shard_files/" + file, "seal_crc32c"));
  if (m.sealed)
    for (const TensorEntry& t : m.tensors)
      SY_CHECK(t.file == "." || m.shard_digests.count(t.file), "{}: tensor '{}' lives in '{}', which the manifest's "
               "shard_files do not list", path, t.name, t.file);
  std::sort(m.tensors.begin(), m.tensors.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
  return m;
}

}  // namespace sy::ckpt
