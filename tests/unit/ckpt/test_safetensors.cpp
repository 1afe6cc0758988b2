// The safetensors reader: F16 and BF16 widened exactly (every bit pattern
// against a formula), a written file read back, and malformed headers
// refused naming the file and tensor.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "ckpt/safetensors.h"
#include "core/check.h"

namespace fs = std::filesystem;

namespace {

std::string scratch(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("sy_test_safetensors_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

// IEEE binary16 / bfloat16 by the textbook formula (independent of the bit tricks).
double half_formula(uint16_t h) {
  const int sign = h >> 15 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e == 0) return sign * std::ldexp(m, -24);
  if (e == 31) return m ? NAN : sign * INFINITY;
  return sign * std::ldexp(1024 + m, e - 25);
}
double bf16_formula(uint16_t b) {
  const int sign = b >> 15 ? -1 : 1, e = (b >> 7) & 0xff, m = b & 0x7f;
  if (e == 0) return sign * std::ldexp(m, -133);
  if (e == 255) return m ? NAN : sign * INFINITY;
  return sign * std::ldexp(128 + m, e - 134);
}

void write_raw(const std::string& path, const std::string& header, size_t data_bytes) {
  std::ofstream f(path, std::ios::binary);
  uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  std::vector<char> zeros(data_bytes);
  f.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
}

std::string error_of(const std::string& path) {
  try {
    sy::ckpt::SafetensorsFile f(path);
  } catch (const sy::ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Safetensors, EveryHalfAndBf16PatternWidensExactly) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const auto h = static_cast<uint16_t>(i);
    const float a = sy::ckpt::half_to_float(h), b = sy::ckpt::bf16_to_float(h);
    const double ra = half_formula(h), rb = bf16_formula(h);
    if (std::isnan(ra)) EXPECT_TRUE(std::isnan(a)) << i;
    else EXPECT_EQ(static_cast<double>(a), ra) << "half " << i;
    // BF16 subnormals are float subnormals, which the test runner flushes
    // when used as numbers (flush_denormals): compare their bits' value.
    uint32_t bits;
    std::memcpy(&bits, &b, 4);
    const double b_value = std::fabs(rb) < 0x1p-126 ? (bits >> 31 ? -1 : 1) * std::ldexp(bits & 0x7fffffffu, -149)
                                                    : static_cast<double>(b);
    if (std::isnan(rb)) EXPECT_TRUE(std::isnan(b)) << i;
    else EXPECT_EQ(b_value, rb) << "bf16 " << i;
    EXPECT_EQ(std::signbit(a), (h >> 15) != 0) << i;  // -0 stays -0
  }
}

TEST(Safetensors, WrittenFileReadsBack) {
  const std::string path = scratch("rt.safetensors");
  std::vector<sy::ckpt::SafeTensor> list = {{"a", {2, 3}}, {"b", {5}}};
  sy::ckpt::write_safetensors(path, list, [](size_t i, float* out) {
    for (int k = 0; k < (i == 0 ? 6 : 5); ++k) out[k] = static_cast<float>(i) * 100 + static_cast<float>(k) + 0.25f;
  }, {{"format", "pt"}});
  sy::ckpt::SafetensorsFile f(path);
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const sy::ckpt::SafeTensorInfo* b = f.find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->shape, std::vector<int64_t>({5}));
  std::vector<float> v(3);
  f.read(*b, v.data(), 2, 3);
  EXPECT_EQ(v, std::vector<float>({102.25f, 103.25f, 104.25f}));
}

TEST(Safetensors, MalformedHeadersAreRefusedNamingTheTensor) {
  struct Case {
    std::string header;
    size_t data;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
       16, "'w' appears twice"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       16, "overlap"},
      {R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 16, "tensor 'w': data_offsets [0, 8] hold 8 bytes"},
      {R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8, "truncated"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8, "end before they begin"},
      {R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, "not a non-negative integer"},
      {R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8, "dtype F64 is not supported"},
      {R"({"w":{"dtype":"F32","shape":[1]}})", 8, "no \"data_offsets\""},
      {R"({"w":[1,2]})", 8, "not an object"},
      {R"({"w":)", 8, "not valid JSON"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string path = scratch("bad" + std::to_string(i) + ".safetensors");
    write_raw(path, cases[i].header, cases[i].data);
    const std::string err = error_of(path);
    EXPECT_NE(err.find(cases[i].needle), std::string::npos) << i << ": " << err;
    EXPECT_NE(err.find(path), std::string::npos) << i << ": " << err;
  }
}
