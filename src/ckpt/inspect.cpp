#include "ckpt/inspect.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "core/check.h"

namespace sy::ckpt {

TensorStats tensor_stats(const std::vector<float>& v, int bins) {
  TensorStats s;
  s.count = static_cast<int64_t>(v.size());
  double sum = 0, sq = 0;
  int64_t finite = 0;
  s.min = INFINITY, s.max = -INFINITY;
  for (float x : v) {
    if (std::isnan(x)) {
      ++s.nan;
    } else if (std::isinf(x)) {
      ++s.inf;
    } else {
      ++finite;
      sum += x, sq += static_cast<double>(x) * x;
      s.min = std::min<double>(s.min, x), s.max = std::max<double>(s.max, x);
    }
  }
  if (finite == 0) {
    s.min = s.max = 0;
    return s;
  }
  s.mean = sum / static_cast<double>(finite);
  s.std = std::sqrt(std::max(0.0, sq / static_cast<double>(finite) - s.mean * s.mean));
  s.norm = std::sqrt(sq);
  s.histogram.assign(static_cast<size_t>(bins), 0);
  double w = (s.max - s.min) / bins;
  for (float x : v)
    if (std::isfinite(x)) {
      int b = w > 0 ? static_cast<int>((x - s.min) / w) : 0;
      ++s.histogram[static_cast<size_t>(std::clamp(b, 0, bins - 1))];
    }
  return s;
}

std::vector<std::string> verify(const std::string& path) {
  namespace fs = std::filesystem;
  std::vector<std::string> problems;
  const bool dir = fs::is_directory(path);
  const std::string manifest_path = dir ? (fs::path(path) / kManifest).string() : path;
  Manifest m;
  std::map<std::string, h5::File> files;
  try {
    SY_CHECK(fs::exists(path), "no checkpoint at '{}'", path);
    SY_CHECK(fs::exists(manifest_path), "'{}' is not a complete checkpoint: '{}' is missing (an interrupted save?)",
             path, manifest_path);
    h5::File f = h5::File::open_audit(manifest_path, problems);
    if (!problems.empty()) return problems;  // a broken manifest: nothing it says can be trusted
    m = read_manifest(f);
    if (!dir) files.emplace(".", std::move(f));
  } catch (const Error& e) {
    problems.push_back(e.what());
    return problems;
  }
  // Every shard the manifest lists, whole: its seal, its identity, then
  // every tensor dataset it should hold, block by block.
  std::vector<std::string> shard_names;
  for (const TensorEntry& t : m.tensors)
    if (std::find(shard_names.begin(), shard_names.end(), t.file) == shard_names.end()) shard_names.push_back(t.file);
  for (const auto& [file, digest] : m.shard_digests)
    if (std::find(shard_names.begin(), shard_names.end(), file) == shard_names.end()) shard_names.push_back(file);
  for (const std::string& file : shard_names) {
    if (file == ".") continue;
    const std::string p = (fs::path(path) / file).string();
    try {
      SY_CHECK(dir, "{}: a consolidated checkpoint names shard file '{}'", path, file);
      SY_CHECK(fs::exists(p), "shard '{}' is missing", p);
      const size_t before = problems.size();
      h5::File f = h5::File::open_audit(p, problems);
      if (problems.size() != before) continue;
      check_shard(f, file, m);
      files.emplace(file, std::move(f));
    } catch (const Error& e) {
      problems.push_back(e.what());
    }
  }
  for (const TensorEntry& t : m.tensors) {
    auto it = files.find(t.file);
    if (it == files.end()) continue;  // its shard is already reported
    const h5::File& f = it->second;
    for (const char* g : kGroups) {
      try {
        std::string ds = std::string(g) + "/" + t.name;
        if (!f.exists(ds)) {
          problems.push_back(fmt::format("{}: dataset '{}' is missing", f.path(), ds));
          continue;
        }
        if (f.shape(ds) != t.shape) {
          problems.push_back(fmt::format("{}: dataset '{}' has shape ({}), the manifest says ({})", f.path(), ds,
                                         fmt::join(f.shape(ds), ", "), fmt::join(t.shape, ", ")));
          continue;
        }
        std::string bad = verify_tensor(f, g, t.name);
        if (!bad.empty()) problems.push_back(bad);
      } catch (const Error& e) {
        problems.push_back(e.what());
      }
    }
  }
  return problems;
}

Diff diff(Reader& a, Reader& b, bool moments) {
  Diff d;
  for (const TensorEntry& t : a.manifest().tensors)
    if (!b.manifest().find(t.name)) d.only_a.push_back(t.name);
  for (const TensorEntry& t : b.manifest().tensors)
    if (!a.manifest().find(t.name)) d.only_b.push_back(t.name);
  for (const TensorEntry& ta : a.manifest().tensors) {
    const TensorEntry* tb = b.manifest().find(ta.name);
    if (!tb) continue;
    for (const char* g : kGroups) {
      if (!moments && std::string(g) != "params") continue;
      DiffRow row{ta.name, g};
      if (ta.shape != tb->shape) {
        row.shape_differs = true;
      } else {
        std::vector<float> x = a.read_all(g, ta), y = b.read_all(g, *tb);
        double mag = 0;
        for (size_t i = 0; i < x.size(); ++i) {
          row.max_abs = std::max(row.max_abs, std::abs(static_cast<double>(x[i]) - y[i]));
          mag = std::max(mag, std::abs(static_cast<double>(y[i])));
        }
        row.max_rel = mag > 0 ? row.max_abs / mag : row.max_abs;
      }
      d.rows.push_back(row);
    }
  }
  return d;
}

}  // namespace sy::ckpt
