// What moe-ckpt reports about tensors and checkpoints.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ckpt/reader.h"

namespace sy::ckpt {

struct TensorStats {
  int64_t count = 0, nan = 0, inf = 0;
  double min = 0, max = 0, mean = 0, std = 0, norm = 0;  // over finite values
  std::vector<int64_t> histogram;  // bins over [min, max]
};
TensorStats tensor_stats(const std::vector<float>& v, int bins = 20);

// Everything wrong with a checkpoint: unreadable manifest, missing shards or
// datasets, wrong shapes, checksum mismatches. Empty if intact.
std::vector<std::string> verify(const std::string& path);

struct DiffRow {
  std::string name, group;
  double max_abs = 0, max_rel = 0;  // max |a-b|, and that over max |b|
  bool shape_differs = false;
};
struct Diff {
  std::vector<DiffRow> rows;
  std::vector<std::string> only_a, only_b;
};
Diff diff(Reader& a, Reader& b, bool moments);

}  // namespace sy::ckpt
