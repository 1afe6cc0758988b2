#include "ckpt/safetensors.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ckpt/h5.h"
#include "core/check.h"

namespace sy::ckpt {

uint64_t write_safetensors(const std::string& path, const std::vector<SafeTensor>& tensors,
                           const std::function<void(size_t, float*)>& fill,
                           const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::vector<int64_t> numel;
  for (const SafeTensor& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    numel.push_back(n);
    SY_CHECK(!header.contains(t.name), "'{}': tensor name '{}' twice", path, t.name);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + 4 * static_cast<uint64_t>(n)}}};
    offset += 4 * static_cast<uint64_t>(n);
  }
  std::string text = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  SY_CHECK(out.good(), "cannot write '{}': {}", path, std::strerror(errno));
  uint64_t len = text.size();
  unsigned char le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(len >> (8 * i));
  out.write(reinterpret_cast<const char*>(le), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  std::vector<float> buf;
  for (size_t i = 0; i < tensors.size(); ++i) {
    buf.resize(static_cast<size_t>(numel[i]));
    fill(i, buf.data());
    out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size() * 4));
    SY_CHECK(out.good(), "writing '{}' failed at tensor '{}': {}", path, tensors[i].name, std::strerror(errno));
  }
  out.close();
  SY_CHECK(!out.fail(), "writing '{}' failed: {}", path, std::strerror(errno));
  h5::sync_path(path);
  return 8 + text.size() + offset;
}

}  // namespace sy::ckpt
