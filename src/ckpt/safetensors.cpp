#include "ckpt/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "ckpt/h5.h"
#include "core/check.h"
#include "core/mapped_file.h"

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

// ---------------------------------------------------------------- reading

namespace sy::ckpt {

class MappedSafetensors : public MappedFile {
  using MappedFile::MappedFile;
};

float bf16_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // Inf, NaN (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);  // normal: rebias 15 -> 127
  } else if (man == 0) {
    bits = sign;  // signed zero
  } else {  // subnormal half: normalise
    int e = -1;
    do {
      man <<= 1;
      ++e;
    } while (!(man & 0x400u));
    bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

namespace {

int dtype_bytes(const std::string& d) { return d == "F32" ? 4 : (d == "BF16" || d == "F16") ? 2 : 0; }

}  // namespace

SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  map_ = std::make_unique<MappedSafetensors>(path, "safetensors file");
  const uint64_t size = map_->size();
  SY_CONFIG_CHECK(size >= 8, "'{}': {} bytes, shorter than the 8-byte header length of a safetensors file", path,
                  size);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(map_->data()[i]) << (8 * i);
  SY_CONFIG_CHECK(n <= size - 8, "'{}': the header claims {} bytes, the file has only {} after the length: a "
                  "truncated or not a safetensors file", path, n, size - 8);
  SY_CONFIG_CHECK(n <= (uint64_t{100} << 20), "'{}': a header of {} bytes (safetensors allows 100 MB)", path, n);
  data_start_ = 8 + n;
  const uint64_t data_size = size - data_start_;
  nlohmann::json header;
  try {
    // A name given twice would silently keep one entry: refused.
    std::set<std::string> seen;
    std::string twice;
    header = nlohmann::json::parse(map_->text().substr(8, n),
                                   [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& v) {
                                     if (depth == 1 && ev == nlohmann::json::parse_event_t::key && v.is_string() &&
                                         !seen.insert(v.get<std::string>()).second && twice.empty())
                                       twice = v.get<std::string>();
                                     return true;
                                   });
    SY_CONFIG_CHECK(twice.empty(), "'{}': tensor '{}' appears twice in the header", path, twice);
  } catch (const nlohmann::json::exception& e) {
    SY_CONFIG_FAIL("'{}': the header is not valid JSON: {}", path, e.what());
  }
  SY_CONFIG_CHECK(header.is_object(), "'{}': the header is a JSON {}, not an object of tensors", path,
                  header.type_name());
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      SY_CONFIG_CHECK(v.is_object(), "'{}': __metadata__ is not an object", path);
      for (const auto& [k, x] : v.items()) {
        SY_CONFIG_CHECK(x.is_string(), "'{}': __metadata__.{} is not a string", path, k);
        metadata_[k] = x.get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& why) { SY_CONFIG_FAIL("'{}': tensor '{}': {}", path, name, why); };
    if (!v.is_object()) bad("its entry is not an object");
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!v.contains(key)) bad(fmt::format("no \"{}\"", key));
    SafeTensorInfo t;
    t.name = name;
    if (!v["dtype"].is_string()) bad("\"dtype\" is not a string");
    t.dtype = v["dtype"].get<std::string>();
    if (dtype_bytes(t.dtype) == 0)
      bad(fmt::format("dtype {} is not supported (F32, BF16 and F16 are read, as float32)", t.dtype));
    if (!v["shape"].is_array()) bad("\"shape\" is not an array");
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) bad(fmt::format("shape {} holds a value that is not a non-negative integer",
                                                   v["shape"].dump()));
      const uint64_t x = d.get<uint64_t>();
      if (x > (uint64_t{1} << 40) || (x > 0 && numel > (uint64_t{1} << 50) / x))
        bad(fmt::format("shape {} is too large", v["shape"].dump()));
      numel *= x;
      t.shape.push_back(static_cast<int64_t>(x));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      bad(fmt::format("data_offsets {} is not two non-negative integers [begin, end]", off.dump()));
    t.begin = off[0].get<uint64_t>(), t.end = off[1].get<uint64_t>();
    if (t.begin > t.end) bad(fmt::format("data_offsets [{}, {}] end before they begin", t.begin, t.end));
    if (t.end > data_size)
      bad(fmt::format("data_offsets [{}, {}] reach past the end of the data ({} bytes): the file is truncated",
                      t.begin, t.end, data_size));
    if (t.end - t.begin != numel * static_cast<uint64_t>(dtype_bytes(t.dtype)))
      bad(fmt::format("data_offsets [{}, {}] hold {} bytes; shape {} of {} needs {}", t.begin, t.end, t.end - t.begin,
                      v["shape"].dump(), t.dtype, numel * static_cast<uint64_t>(dtype_bytes(t.dtype))));
    by_name_[name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  std::vector<const SafeTensorInfo*> order;
  for (const SafeTensorInfo& t : tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < order.size(); ++i)
    SY_CONFIG_CHECK(order[i]->begin >= order[i - 1]->end || order[i - 1]->begin == order[i - 1]->end ||
                        order[i]->begin == order[i]->end,
                    "'{}': tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", path, order[i - 1]->name,
                    order[i - 1]->begin, order[i - 1]->end, order[i]->name, order[i]->begin, order[i]->end);
}

const SafeTensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsFile::read(const SafeTensorInfo& t, float* out, int64_t first, int64_t count) const {
  SY_CHECK(first >= 0 && count >= 0 && first + count <= t.numel(), "'{}': tensor '{}': elements [{}, {}) of {}", path_,
           t.name, first, first + count, t.numel());
  const uint8_t* p = map_->data() + data_start_ + t.begin;
  if (t.dtype == "F32") {
    std::memcpy(out, p + 4 * first, static_cast<size_t>(count) * 4);
    return;
  }
  const bool bf = t.dtype == "BF16";
  for (int64_t i = 0; i < count; ++i) {
    uint16_t h;
    std::memcpy(&h, p + 2 * (first + i), 2);
    out[i] = bf ? bf16_to_float(h) : half_to_float(h);
  }
}

}  // namespace sy::ckpt
