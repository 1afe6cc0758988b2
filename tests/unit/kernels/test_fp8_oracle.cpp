// FP8 encode/decode bit-exact against NVIDIA's own conversions, which
// cuda_fp8.h defines for the host too (__nv_cvt_float_to_fp8,
// __nv_cvt_fp8_to_halfraw): all 256 codes, every binade of float with the
// midpoints and edges around every FP8 value, and a million random floats.
#include <cuda_fp8.h>

#include <cmath>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "core/rng.h"
#include "kernels/cpu/fp8_gemm.h"
#include "testing.h"

namespace sy {
namespace {

__nv_fp8_interpretation_t kind(Fp8Format f) { return f == Fp8Format::e4m3 ? __NV_E4M3 : __NV_E5M2; }

uint8_t nvidia_encode(float x, Fp8Format f, bool saturate) {
  return __nv_cvt_float_to_fp8(x, saturate ? __NV_SATFINITE : __NV_NOSAT, kind(f));
}

float nvidia_decode(uint8_t c, Fp8Format f) {
  __half_raw h = __nv_cvt_fp8_to_halfraw(c, kind(f));
  // half -> float by hand (bits), so the oracle needs nothing but cuda_fp8.h.
  const uint16_t b = h.x;
  const int e = (b >> 10) & 31, m = b & 1023;
  float v = e == 0 ? std::ldexp(static_cast<float>(m), -24)
                   : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1.f + m / 1024.f, e - 15);
  return (b & 0x8000) ? -v : v;
}

std::string bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return fmt::format("{:08x} ({:g})", u, x);
}

class Fp8Oracle : public ::testing::TestWithParam<Fp8Format> {};

TEST_P(Fp8Oracle, DecodeAll256Codes) {
  const Fp8Format f = GetParam();
  for (int c = 0; c < 256; ++c) {
    float want = nvidia_decode(static_cast<uint8_t>(c), f), got = fp8_decode(static_cast<uint8_t>(c), f);
    if (std::isnan(want))
      EXPECT_TRUE(std::isnan(got)) << "code " << c;
    else
      EXPECT_EQ(got, want) << "code " << c;
  }
}

TEST_P(Fp8Oracle, EncodeEdgesOfEveryValue) {
  // Every code's value, its neighbours one float ulp away, the midpoints to
  // the next code and one ulp either side of them (where ties are decided).
  const Fp8Format f = GetParam();
  std::vector<float> xs = {0.f, -0.f, INFINITY, -INFINITY, NAN, -NAN, 1e-45f, -1e-45f, 1e-30f,
                           3.4e38f, -3.4e38f, fp8_max(f), 464.f, 465.f, 61440.f, 61439.f, 57344.f};
  std::vector<float> vals;
  for (int c = 0; c < 256; ++c) {
    float v = fp8_decode(static_cast<uint8_t>(c), f);
    if (std::isfinite(v)) vals.push_back(v);
  }
  std::sort(vals.begin(), vals.end());
  for (size_t i = 0; i < vals.size(); ++i) {
    float v = vals[i];
    for (float y : {v, std::nextafter(v, INFINITY), std::nextafter(v, -INFINITY)}) xs.push_back(y);
    if (i + 1 < vals.size()) {
      float mid = 0.5f * (v + vals[i + 1]);
      for (float y : {mid, std::nextafter(mid, INFINITY), std::nextafter(mid, -INFINITY)}) xs.push_back(y);
    }
  }
  const float big = fp8_max(f) * 1.25f;  // beyond max: saturation / overflow
  for (float y : {big, -big, std::nextafter(big, 0.f)}) xs.push_back(y);
  int64_t checked = 0;
  for (bool sat : {true, false})
    for (float x : xs) {
      ASSERT_EQ(fp8_encode(x, f, sat), nvidia_encode(x, f, sat))
          << to_string(f) << (sat ? " satfinite " : " nosat ") << bits(x);
      ++checked;
    }
  EXPECT_GT(checked, 1000);
}

TEST_P(Fp8Oracle, EncodeEveryBinadeAndAMillionRandomFloats) {
  const Fp8Format f = GetParam();
  const uint64_t key = stream_key(17, "fp8");
  int64_t n = 0;
  // Every float exponent (binades from subnormals to the largest), 2000
  // random mantissas each, both signs.
  for (uint32_t e = 0; e < 255; ++e)
    for (uint32_t k = 0; k < 2000; ++k, ++n) {
      const uint32_t u = (static_cast<uint32_t>(u64_at(key, e, k)) & 0x807FFFFFu) | (e << 23);
      float x;
      std::memcpy(&x, &u, 4);
      ASSERT_EQ(fp8_encode(x, f, true), nvidia_encode(x, f, true)) << bits(x);
      ASSERT_EQ(fp8_encode(x, f, false), nvidia_encode(x, f, false)) << bits(x);
    }
  // A million uniformly random bit patterns (NaNs and infinities included),
  // and a million values in the format's own range.
  for (uint32_t k = 0; k < 1000000; ++k, n += 2) {
    const uint64_t r = u64_at(key, 1000 + k, 1);
    uint32_t u = static_cast<uint32_t>(r);
    float x;
    std::memcpy(&x, &u, 4);
    ASSERT_EQ(fp8_encode(x, f, true), nvidia_encode(x, f, true)) << bits(x);
    float y = std::ldexp(static_cast<float>(static_cast<int32_t>(r >> 32)) / 2147483648.f,
                         static_cast<int>((r >> 20) % 40) - 24);
    ASSERT_EQ(fp8_encode(y, f, true), nvidia_encode(y, f, true)) << bits(y);
  }
  EXPECT_GT(n, 2'500'000);
}

TEST_P(Fp8Oracle, QuantizeCountsSaturationAndAmax) {
  const Fp8Format f = GetParam();
  std::vector<float> x = {1.f, -2.f, 3.f, -500.f, 0.25f};
  std::vector<uint8_t> q(x.size());
  // scale 200: 600 and 100000 (E5M2: 400 fits) ...
  const float scale = f == Fp8Format::e4m3 ? 200.f : 30000.f;
  Fp8Matrix m;
  QuantStats st = quantize_matrix(m, x.data(), 1, static_cast<int64_t>(x.size()), {f, ScaleMode::tensor, false, true, scale});
  q = test::codes(m);
  EXPECT_EQ(st.amax, 500.f);
  int64_t want = 0;
  for (float v : x) want += fp8_overflows(std::fabs(v * scale), f) ? 1 : 0;
  EXPECT_EQ(st.saturated, want);
  EXPECT_GT(want, 0);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(q[i], nvidia_encode(x[i] * scale, f, true));
  std::vector<float> back(x.size());
  dequantize_matrix(back.data(), m);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(back[i], fp8_decode(q[i], f) / scale);
}

INSTANTIATE_TEST_SUITE_P(Formats, Fp8Oracle, ::testing::Values(Fp8Format::e4m3, Fp8Format::e5m2),
                         [](const auto& p) { return to_string(p.param); });

}  // namespace
}  // namespace sy
