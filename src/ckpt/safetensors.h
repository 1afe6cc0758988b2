// The safetensors format (Hugging Face): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets}, ...,
// "__metadata__": {...}} padded to 8 bytes, then the tensors' raw bytes.
// Writing (float32) and reading (F32, BF16, F16 converted to float32).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
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

// One tensor of a file being read: its dtype as written, shape, and byte
// range [begin, end) within the data section.
struct SafeTensorInfo {
  std::string name, dtype;  // "F32", "BF16" or "F16" (others are refused when read)
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

class MappedSafetensors;

// A safetensors file opened for reading (memory-mapped). The constructor
// checks the whole header and throws ConfigError naming the file (and the
// tensor) for: a file shorter than its header, a header that is not a JSON
// object of well-formed entries, a dtype other than F32 / BF16 / F16, a
// negative or overflowing shape, data_offsets that do not match the shape's
// byte size, lie outside the file (truncated) or overlap another tensor's.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&&) noexcept;
  const std::string& path() const { return path_; }
  const std::vector<SafeTensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafeTensorInfo* find(const std::string& name) const;
  // Elements [first, first + count) of the tensor (row-major) as float32; BF16 and F16 are widened exactly.
  void read(const SafeTensorInfo& t, float* out, int64_t first, int64_t count) const;

 private:
  std::string path_;
  std::unique_ptr<MappedSafetensors> map_;
  uint64_t data_start_ = 0;
  std::vector<SafeTensorInfo> tensors_;
  std::map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

// IEEE half and bfloat16 bit patterns widened to float32 (exact).
float half_to_float(uint16_t h);
float bf16_to_float(uint16_t b);

}  // namespace sy::ckpt
