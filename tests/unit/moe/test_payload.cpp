// MoE dispatch payloads (moe/payload.h) against naive references: BF16
// rounding of every exponent class (zero, subnormals, normals, the largest
// finite values, infinities, NaNs) by picking the nearer of the two BF16
// neighbours exactly (ties to the even one); FP8 rows (1x128 scales) bit for
// bit against the quantizer the FP8 expert GEMM uses (the backend's
// fp8_quantize) and against a naive nearest-value search, and decoded bit
// for bit as kernels/cpu's dequantize_matrix; bytes per row.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "kernels/backend.h"
#include "kernels/cpu/fp8.h"
#include "kernels/cpu/fp8_gemm.h"
#include "testing.h"
#include "moe/payload.h"

namespace sy {
namespace {

// Naive BF16 rounding: the two BF16 values around x (truncation and the
// next one away from zero), the nearer in exact (double) arithmetic, the
// even one on a tie; beyond the largest finite BF16 the next one is 2^128
// (infinity). NaN stays NaN.
// The value of float bits, in double (float subnormals are normal doubles;
// no float arithmetic, which flush-to-zero modes would change).
double exact(uint32_t u) {
  const uint32_t e = (u >> 23) & 0xFF, m = u & 0x7FFFFF;
  const double v = e == 0 ? std::ldexp(static_cast<double>(m), -149) : std::ldexp(static_cast<double>(m | 0x800000), static_cast<int>(e) - 150);
  return (u >> 31) ? -v : v;
}

uint16_t bf16_naive(uint32_t u) {
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7FC0;  // any NaN (checked as a NaN)
  if (a == 0x7F800000u) return static_cast<uint16_t>(u >> 16);
  const uint16_t lo = static_cast<uint16_t>(u >> 16), hi = static_cast<uint16_t>(lo + 1);
  auto value = [](uint16_t h) {
    if ((h & 0x7FFF) == 0x7F80) return std::ldexp(h & 0x8000 ? -1.0 : 1.0, 128);  // rounding target "infinity"
    return exact(static_cast<uint32_t>(h) << 16);
  };
  const double x = exact(u), dlo = std::fabs(x - value(lo)), dhi = std::fabs(value(hi) - x);
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1) ? hi : lo;
}

std::vector<float> every_exponent_class() {
  std::vector<float> v = {0.f, -0.f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(), std::bit_cast<float>(0x7F800001u),   // signalling NaN
                          std::bit_cast<float>(0xFFC00001u), std::numeric_limits<float>::max(),
                          std::bit_cast<float>(0x7F7F7FFFu), std::bit_cast<float>(0x7F7F8000u),  // just below / at the tie to infinity
                          std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::min(),
                          std::bit_cast<float>(0x00008000u), std::bit_cast<float>(0x00018000u)};  // subnormal ties
  const uint64_t key = stream_key(5, "bf16");
  for (uint32_t e = 0; e < 255; ++e)  // every exponent (0: subnormals), mantissas random and at the ties
    for (uint32_t j = 0; j < 8; ++j) {
      uint32_t m = static_cast<uint32_t>(u64_at(key, e, j)) & 0x7FFFFFu;
      if (j == 1) m = (m & ~0xFFFFu) | 0x8000u;           // tie, odd or even upper part
      if (j == 2) m = (m & ~0x1FFFFu) | 0x8000u;          // tie, even upper part
      if (j == 3) m = (m & ~0x1FFFFu) | 0x18000u;         // tie, odd upper part
      if (j == 4) m = (m & ~0xFFFFu) | 0x7FFFu;           // just below a tie
      const uint32_t bits = (e << 23) | m | ((j & 1u) << 31);
      v.push_back(std::bit_cast<float>(bits));
    }
  return v;
}

TEST(Payload, Bf16RoundsEveryExponentClassToNearestEven) {
  std::vector<float> x = every_exponent_class();
  const int64_t C = 7;  // odd: a padded half word per row
  while (x.size() % C) x.push_back(1.f);
  const int64_t n = static_cast<int64_t>(x.size()) / C;
  std::vector<float> packed(static_cast<size_t>(n * payload_row_words(Payload::bf16, C)), -1.f), y(x.size());
  EXPECT_EQ(payload_encode(Payload::bf16, packed.data(), x.data(), n, C).amax, 0.f);
  payload_decode(Payload::bf16, y.data(), packed.data(), n, C);
  int64_t nan = 0, inf = 0, sub = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const uint32_t xb = std::bit_cast<uint32_t>(x[i]), yb = std::bit_cast<uint32_t>(y[i]);
    if ((xb & 0x7FFFFFFFu) > 0x7F800000u) {
      EXPECT_GT(yb & 0x7FFFFFFFu, 0x7F800000u) << "a NaN must stay a NaN, x = 0x" << std::hex << xb;
      ++nan;
      continue;
    }
    EXPECT_EQ(yb, static_cast<uint32_t>(bf16_naive(xb)) << 16) << "x = 0x" << std::hex << xb;
    inf += (yb & 0x7FFFFFFFu) == 0x7F800000u && (xb & 0x7FFFFFFFu) != 0x7F800000u;
    sub += (yb & 0x7F800000u) == 0 && (yb & 0x7FFFFFu) != 0;
  }
  EXPECT_EQ(nan, 3);
  EXPECT_GE(inf, 1);  // the tie at the top rounds to infinity
  EXPECT_GE(sub, 8);  // exponent 0 with random mantissas and the subnormal ties
}

// Naive E4M3 / E5M2 encoding: the nearest of the format's finite values
// (exact in double), the even code on a tie; beyond the largest finite
// value it saturates (the payload quantizes with saturation).
uint8_t fp8_naive(float v, Fp8Format f) {
  const float* t = fp8_table(f);
  int best = -1;
  double bd = 0;
  for (int c = 0; c < 256; ++c) {
    if (!std::isfinite(t[c]) || (c == 0x80)) continue;  // -0 encodes as the sign of v below
    const double d = std::fabs(static_cast<double>(t[c]) - static_cast<double>(v));
    if (best < 0 || d < bd || (d == bd && (c & 1) == 0 && (best & 1))) best = c, bd = d;
  }
  if (best == 0 && std::signbit(v)) best = 0x80;
  return static_cast<uint8_t>(best);
}

struct Fp8Case {
  int64_t C;
  Fp8Format fmt;
  bool pow2;
};

class PayloadFp8 : public ::testing::TestWithParam<Fp8Case> {};

TEST_P(PayloadFp8, RowsAreWhatTheGemmQuantizerMakesBitForBit) {
  const auto [C, fmt, pow2] = GetParam();
  const int64_t n = 9, kb = (C + 127) / 128;
  const uint64_t key = stream_key(11, "fp8rows");
  std::vector<float> x(static_cast<size_t>(n * C));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t k = 0; k < C; ++k)  // magnitudes from 1e-30 to 1e30 over the rows and blocks; row 3 all zero
      x[r * C + k] = r == 3 ? 0.f : normal_at(key, static_cast<uint64_t>(r * C + k)) *
                                        std::pow(10.f, static_cast<float>((r * 7 + k / 128 * 13) % 61 - 30));
  const QuantOptions o{fmt, ScaleMode::rows_1x128, pow2, true, 0};
  const Backend& be = backend(Device::cpu);
  std::vector<float> packed(static_cast<size_t>(n * payload_row_words(Payload::fp8, C)));
  const QuantStats st = payload_encode(Payload::fp8, packed.data(), x.data(), n, C, o, &be);

  Fp8Matrix gemm;  // what the expert GEMM's quantizer makes of the same rows
  const QuantStats want_st = be.fp8_quantize(gemm, x.data(), n, C, o, false, Stream{});
  EXPECT_EQ(st.amax, want_st.amax);
  Fp8Matrix got;
  be.fp8_unpack_rows(got, packed.data(), payload_row_words(Payload::fp8, C), n, C, fmt, Stream{});
  EXPECT_EQ(got.rows, n);
  EXPECT_EQ(got.cols, C);
  EXPECT_EQ(got.mode, ScaleMode::rows_1x128);
  EXPECT_EQ(test::codes(got), test::codes(gemm));
  ASSERT_EQ(got.scale_count(), static_cast<size_t>(12 * kb));  // 9 rows, padded to 12 per block's column
  const std::vector<float> gs = test::scales(got), ws = test::scales(gemm);
  ASSERT_EQ(gs.size(), ws.size());
  EXPECT_EQ(0, std::memcmp(gs.data(), ws.data(), gs.size() * sizeof(float)));

  // Naive: per 1x128 block, scale = max / amax (pow2: rounded down), each value the nearest code.
  for (int64_t r = 0; r < n; ++r)
    for (int64_t b = 0; b < kb; ++b) {
      float amax = 0;
      for (int64_t k = b * 128; k < std::min(C, b * 128 + 128); ++k) amax = std::max(amax, std::fabs(x[r * C + k]));
      float s = amax > 0 ? fp8_max(fmt) / amax : 1.f;
      if (pow2 && amax > 0) s = std::exp2(std::floor(std::log2(static_cast<double>(s))));
      if (!std::isfinite(s)) s = 0x1p126f;
      EXPECT_EQ(got.sinv(r, b), 1.f / s) << r << " " << b;
      for (int64_t k = b * 128; k < std::min(C, b * 128 + 128); ++k)
        ASSERT_EQ(got.code(r, k), fp8_naive(x[r * C + k] * s, fmt)) << r << " " << k;
    }

  // Decoded: decode(q) * scale_inv, bit for bit as the GEMM side dequantizes.
  std::vector<float> y(x.size()), want(x.size()), z(x.size());
  payload_decode(Payload::fp8, y.data(), packed.data(), n, C, fmt);
  dequantize_matrix(want.data(), gemm);
  EXPECT_EQ(0, std::memcmp(y.data(), want.data(), y.size() * sizeof(float)));
  be.fp8_dequantize(z.data(), got, Stream{});
  EXPECT_EQ(0, std::memcmp(z.data(), want.data(), z.size() * sizeof(float)));
  // Packed again from the unpacked matrix: the same bytes (the padding words zero).
  std::vector<float> again(packed.size(), -1.f);
  be.fp8_pack_rows(again.data(), payload_row_words(Payload::fp8, C), got, Stream{});
  EXPECT_EQ(0, std::memcmp(again.data(), packed.data(), packed.size() * sizeof(float)));
}

INSTANTIATE_TEST_SUITE_P(Shapes, PayloadFp8,
                         ::testing::Values(Fp8Case{300, Fp8Format::e4m3, false}, Fp8Case{128, Fp8Format::e4m3, true},
                                           Fp8Case{5, Fp8Format::e4m3, false}, Fp8Case{257, Fp8Format::e5m2, false},
                                           Fp8Case{64, Fp8Format::e5m2, true}),
                         [](const auto& p) {
                           return "C" + std::to_string(p.param.C) + "_" + to_string(p.param.fmt) +
                                  (p.param.pow2 ? "_pow2" : "");
                         });

TEST(Payload, BytesPerRow) {
  // C = 256: FP32 1024 bytes, BF16 512, FP8 256 codes + 2 scales = 264 (3.9x smaller).
  EXPECT_EQ(payload_row_bytes(Payload::fp32, 256), 1024);
  EXPECT_EQ(payload_row_bytes(Payload::bf16, 256), 512);
  EXPECT_EQ(payload_row_bytes(Payload::fp8, 256), 264);
  EXPECT_EQ(payload_row_words(Payload::fp8, 256) * 4, 264);
  // Odd widths travel padded to whole words.
  EXPECT_EQ(payload_row_words(Payload::bf16, 7), 4);
  EXPECT_EQ(payload_row_words(Payload::fp8, 5), 2 + 1);
  EXPECT_EQ(payload_row_words(Payload::fp8, 300), 75 + 3);
}

}  // namespace
}  // namespace sy
