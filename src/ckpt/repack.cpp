#include "ckpt/repack.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <numeric>

#include "core/check.h"

namespace sy::ckpt {

namespace fs = std::filesystem;

std::vector<int64_t> assign_writers(const std::vector<TensorHome>& tensors, int64_t world, int64_t dp, int64_t ep,
                                    int64_t experts) {
  std::vector<int64_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return tensors[a].numel > tensors[b].numel; });
  std::vector<int64_t> load(world, 0), writer(tensors.size(), -1);
  for (int64_t i : order) {
    const int64_t E = tensors[i].layer_experts > 0 ? tensors[i].layer_experts : experts;
    const int64_t per_rank = ep > 0 && E > 0 ? E / ep : 1;
    int64_t best = -1;
    for (int64_t r = 0; r < world; ++r) {
      bool holds = (tensors[i].expert < 0 || (r % dp) % ep == tensors[i].expert / per_rank) &&
                   (tensors[i].pp < 0 || r / dp == tensors[i].pp);
      if (holds && (best < 0 || load[r] < load[best])) best = r;
    }
    SY_CHECK(best >= 0, "no rank of a {}-rank layout holds tensor {}", world, i);
    writer[i] = best;
    load[best] += tensors[i].numel;
  }
  return writer;
}

static void repack_into(Reader& src, const std::string& tmp, const std::string& out, Manifest m,
                        const std::vector<std::string>& files, bool single) {
  std::map<std::string, h5::File> open;
  auto file = [&](const std::string& name) -> h5::File& {
    auto it = open.find(name);
    if (it == open.end()) {
      it = open.emplace(name, h5::File::create(single ? tmp : (fs::path(tmp) / name).string())).first;
      if (!single) write_shard_identity(it->second, m.run_id, m.step, std::stoll(name.substr(6, 5)));
    }
    return it->second;
  };
  for (size_t i = 0; i < m.tensors.size(); ++i) {
    TensorEntry& t = m.tensors[i];
    const TensorEntry& from = src.tensor(t.name);
    for (const char* g : kGroups) {
      std::vector<float> data = src.read_all(g, from);
      write_tensor(file(files[i]), g, t.name, data.data(), t.shape);
    }
    t.file = files[i];
  }
  m.format_version = kFormatVersion;
  if (m.run_id.empty()) m.run_id = new_run_id();  // a format-1 source: the copy starts an identity
  m.shard_digests.clear();
  m.shards = single ? 1 : static_cast<int64_t>(open.size());
  if (single) {
    write_manifest_into(file("."), m);
    open.at(".").close();
    h5::sync_path(tmp);
  } else {
    for (auto& [name, f] : open) {
      f.close();
      m.shard_digests[name] = f.digest();
      h5::sync_path((fs::path(tmp) / name).string());
    }
    write_manifest((fs::path(tmp) / kManifest).string(), m);
    h5::sync_path((fs::path(tmp) / kManifest).string());
    h5::sync_path(tmp);
  }
  std::error_code ec;
  fs::rename(tmp, out, ec);
  SY_CHECK(!ec, "cannot rename '{}' to '{}': {}", tmp, out, ec.message());
}

void repack(Reader& src, const std::string& out, Manifest m, const std::vector<std::string>& files) {
  SY_CHECK(files.size() == m.tensors.size(), "repack: {} file names for {} tensors", files.size(), m.tensors.size());
  const bool single = std::all_of(files.begin(), files.end(), [](const std::string& f) { return f == "."; });
  SY_CONFIG_CHECK(!fs::exists(fs::symlink_status(out)), "'{}' already exists; choose a new output path", out);
  // A leftover OUT.tmp is not ours to delete (it may be another write's, or
  // the user's): refused, as every checkpoint writer does.
  const std::string tmp = out + ".tmp";
  SY_CONFIG_CHECK(!fs::exists(fs::symlink_status(tmp)), "'{}' exists (an interrupted write?); remove it first", tmp);
  try {
    if (!single) fs::create_directories(tmp);
  } catch (const fs::filesystem_error& e) {
    SY_FAIL("cannot create '{}': {}", tmp, e.code().message());
  }
  try {
    repack_into(src, tmp, out, std::move(m), files, single);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);  // what this call created, and only that
    throw;
  }
}


void write_weights_only(const std::string& out, Manifest m,
                        const std::function<void(size_t, std::vector<float>&)>& params) {
  SY_CONFIG_CHECK(!fs::exists(fs::symlink_status(out)), "'{}' already exists; choose a new output path", out);
  const std::string tmp = out + ".tmp";
  SY_CONFIG_CHECK(!fs::exists(fs::symlink_status(tmp)), "'{}' exists (an interrupted write?); remove it first", tmp);
  m.world = m.pp = m.dp = m.ep = 1, m.zero1 = 0, m.shards = 1;
  m.format_version = kFormatVersion;
  m.shard_digests.clear();
  try {
    h5::File f = h5::File::create(tmp);
    std::vector<float> data, zeros;
    for (size_t i = 0; i < m.tensors.size(); ++i) {
      TensorEntry& t = m.tensors[i];
      data.assign(static_cast<size_t>(t.numel()), 0.f);
      params(i, data);
      SY_CHECK(static_cast<int64_t>(data.size()) == t.numel(), "tensor '{}': {} values for {} elements", t.name,
               data.size(), t.numel());
      zeros.assign(data.size(), 0.f);
      write_tensor(f, "params", t.name, data.data(), t.shape);
      write_tensor(f, "adam_m", t.name, zeros.data(), t.shape);
      write_tensor(f, "adam_v", t.name, zeros.data(), t.shape);
      t.file = ".";
    }
    write_manifest_into(f, m);
    f.close();
    h5::sync_path(tmp);
    std::error_code ec;
    fs::rename(tmp, out, ec);
    SY_CHECK(!ec, "cannot rename '{}' to '{}': {}", tmp, out, ec.message());
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);  // only what this write created
    throw;
  }
}

}  // namespace sy::ckpt
