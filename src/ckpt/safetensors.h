// Writing the safetensors format (Hugging Face): an 8-byte little-endian
// header length, a JSON header {name: {dtype, shape, data_offsets}, ...,
// "__metadata__": {...}} padded to 8 bytes, then the tensors' raw bytes.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace sy::ckpt {

struct SafeTensor {
  std::string name;
  std::vector<int64_t> shape;
};

// Writes float32 tensors; fill(i, out) produces tensor i's data (numel
// floats). Returns the file's size in bytes; a failed write throws naming
// the file and the reason (e.g. no space left on device).
uint64_t write_safetensors(const std::string& path, const std::vector<SafeTensor>& tensors,
                           const std::function<void(size_t, float*)>& fill,
                           const std::map<std::string, std::string>& metadata);

}  // namespace sy::ckpt
