// Reading a checkpoint: a directory (manifest.h5 + shard files) or one
// consolidated file (manifest and tensors together, tensors listed in
// file "."). Shared by the trainer's loader and moe-ckpt.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ckpt/format.h"
#include "ckpt/h5.h"

namespace sy::ckpt {

class Reader {
 public:
  explicit Reader(const std::string& path);  // directory or consolidated file
  const Manifest& manifest() const { return manifest_; }
  const std::string& path() const { return path_; }
  bool consolidated() const { return consolidated_; }
  // The file holding a tensor (opened on first use).
  const h5::File& file_of(const TensorEntry& t);
  std::string file_path(const TensorEntry& t) const;
  // group ("params", "adam_m", "adam_v") of tensor `name`, elements [begin, end), checksums verified.
  void read(const std::string& group, const TensorEntry& t, float* out, int64_t begin, int64_t end);
  std::vector<float> read_all(const std::string& group, const TensorEntry& t);
  const TensorEntry& tensor(const std::string& name) const;  // throws naming the checkpoint

 private:
  std::string path_, manifest_path_;
  bool consolidated_ = false;
  Manifest manifest_;
  std::map<std::string, h5::File> files_;
};

}  // namespace sy::ckpt
