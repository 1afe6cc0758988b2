#include "ckpt/reader.h"

#include <filesystem>

#include "core/check.h"

namespace sy::ckpt {

namespace fs = std::filesystem;

Reader::Reader(const std::string& path) : path_(path) {
  SY_CHECK(fs::exists(path), "no checkpoint at '{}'", path);
  consolidated_ = !fs::is_directory(path);
  manifest_path_ = consolidated_ ? path : (fs::path(path) / kManifest).string();
  SY_CHECK(fs::exists(manifest_path_), "'{}' is not a complete checkpoint: '{}' is missing (an interrupted save?)",
           path, manifest_path_);
  h5::File f = h5::File::open(manifest_path_);
  manifest_ = read_manifest(f);
  if (consolidated_) files_.emplace(".", std::move(f));
}

std::string Reader::file_path(const TensorEntry& t) const {
  return t.file == "." ? manifest_path_ : (fs::path(path_) / t.file).string();
}

const h5::File& Reader::file_of(const TensorEntry& t) {
  auto it = files_.find(t.file);
  if (it == files_.end()) {
    std::string p = file_path(t);
    SY_CHECK(fs::exists(p), "checkpoint shard '{}' is missing (it holds '{}')", p, t.name);
    h5::File f = h5::File::open(p);
    check_shard(f, t.file, manifest_);
    it = files_.emplace(t.file, std::move(f)).first;
  }
  return it->second;
}

void Reader::read(const std::string& group, const TensorEntry& t, float* out, int64_t begin, int64_t end) {
  const h5::File& f = file_of(t);
  std::string ds = group + "/" + t.name;
  SY_CHECK(f.exists(ds), "{}: dataset '{}' is missing", f.path(), ds);
  SY_CHECK(f.shape(ds) == t.shape, "{}: dataset '{}' has shape {}, the manifest says {}", f.path(), ds,
           fmt::format("({})", fmt::join(f.shape(ds), ", ")), fmt::format("({})", fmt::join(t.shape, ", ")));
  read_verified(f, group, t.name, out, begin, end);
}

std::vector<float> Reader::read_all(const std::string& group, const TensorEntry& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  read(group, t, v.data(), 0, t.numel());
  return v;
}

const TensorEntry& Reader::tensor(const std::string& name) const {
  const TensorEntry* t = manifest_.find(name);
  SY_CHECK(t, "checkpoint '{}' has no tensor '{}'", path_, name);
  return *t;
}

}  // namespace sy::ckpt
