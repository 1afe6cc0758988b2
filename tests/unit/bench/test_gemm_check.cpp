// The GPU GEMM benchmark's check (bench/gpu/gemm_check.h), on the CPU: its
// decoders against Switchyard's, its sampled reference against a naive full
// GEMM over dequantized matrices, and its verdict: FP32-accumulated results
// (sequential order, and FP8's reduced-precision chunk accumulation) pass,
// wrong ones (a scale block off by one, a transposed C, a dropped K block, a
// NaN, the wrong expert's weights) fail.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <vector>

#include "core/dtype.h"
#include "gemm_check.h"
#include "kernels/cpu/fp8.h"

namespace sy {
namespace {

using sybench::Kind;
using sybench::Problem;

TEST(GemmCheck, DecodersMatchSwitchyards) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float want = bf16_to_f32(static_cast<uint16_t>(b));
    // NaNs, and subnormals (the test main flushes them: DAZ; the generator never makes them).
    if (std::isnan(want) || ((b >> 7) & 0xFF) == 0) continue;
    ASSERT_EQ(sybench::bf16_value(static_cast<uint16_t>(b)), static_cast<double>(want)) << b;
  }
  for (uint32_t q = 0; q < 256; ++q) {
    const float want = fp8_decode(static_cast<uint8_t>(q), Fp8Format::e4m3);
    const double got = sybench::e4m3_value(static_cast<uint8_t>(q));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << q;
    } else {
      EXPECT_EQ(got, static_cast<double>(want)) << q;
    }
  }
}

TEST(GemmCheck, GeneratorsCoverTheirRangeAndAvoidNaN) {
  std::set<uint8_t> codes;
  for (uint64_t r = 0; r < 64; ++r)
    for (uint64_t c = 0; c < 64; ++c) {
      const uint8_t q = sybench::e4m3_code(7, r, c);
      ASSERT_NE(q & 0x7F, 0x7F);
      codes.insert(q);
      const double v = std::fabs(sybench::bf16_value(sybench::bf16_bits(7, r, c)));
      ASSERT_GE(v, 0.125);
      ASSERT_LT(v, 2.0);
    }
  EXPECT_EQ(codes.size(), 254u);  // every code but the two NaNs
  EXPECT_NE(sybench::bf16_bits(7, 1, 2), sybench::bf16_bits(7, 2, 1));  // rows and columns differ
  EXPECT_NE(sybench::bf16_bits(7, 1, 2), sybench::bf16_bits(8, 1, 2));  // so do seeds
}

// Dequantized A (M x K) and B (N x K) in double, the naive way.
void dequantize(const Problem& p, std::vector<double>& A, std::vector<double>& B) {
  A.assign(static_cast<size_t>(p.M * p.K), 0), B.assign(static_cast<size_t>(p.N * p.K), 0);
  for (int64_t i = 0; i < p.M; ++i)
    for (int64_t k = 0; k < p.K; ++k)
      A[i * p.K + k] = p.kind == Kind::bf16
                           ? sybench::bf16_value(sybench::bf16_bits(p.seed_a, p.a_row0 + i, k))
                           : sybench::e4m3_value(sybench::e4m3_code(p.seed_a, p.a_row0 + i, k)) *
                                 sybench::a_scale_inv(p, i, k / 128);
  for (int64_t j = 0; j < p.N; ++j)
    for (int64_t k = 0; k < p.K; ++k)
      B[j * p.K + k] = p.kind == Kind::bf16 ? sybench::bf16_value(sybench::bf16_bits(p.seed_b, j, k))
                                            : sybench::e4m3_value(sybench::e4m3_code(p.seed_b, j, k)) *
                                                  sybench::b_scale_inv(p, j, k / 128);
}

// Every entry of the sampled reference against C = A_deq * B_deq^T.
TEST(GemmCheck, ReferenceMatchesNaiveGemmOverDequantizedInputs) {
  for (Kind kind : {Kind::bf16, Kind::fp8_tensor, Kind::fp8_block}) {
    // 300 rows of B: three 128-row scale blocks, the last one partial; a_row0 as a grouped expert's.
    const Problem p{kind, 19, 300, 384, 5, 6, 40};
    std::vector<double> A, B;
    dequantize(p, A, B);
    for (int64_t i = 0; i < p.M; ++i)
      for (int64_t j = 0; j < p.N; ++j) {
        double c = 0, a = 0;
        for (int64_t k = 0; k < p.K; ++k) c += A[i * p.K + k] * B[j * p.K + k], a += std::fabs(A[i * p.K + k] * B[j * p.K + k]);
        const sybench::Ref r = sybench::reference(p, i, j);
        // Both sum the same exact products in double in another grouping: a few ulps of abs_sum.
        ASSERT_NEAR(r.value, c, 1e-14 * a) << sybench::kind_name(kind) << " " << i << "," << j;
        ASSERT_NEAR(r.abs_sum, a, 1e-14 * a);
      }
  }
}

TEST(GemmCheck, BlockScaleLayoutsHoldTheSameScales) {
  const Problem p{Kind::fp8_block, 10, 300, 640, 3, 4, 0};
  const int64_t kb_n = 5;
  for (bool for_a : {true, false}) {
    const int64_t rows = for_a ? 10 : 3, ld = for_a ? 12 : 4;  // outer-major pads the rows to a multiple of 4
    const auto outer = sybench::block_scales(p, for_a, sybench::ScaleLayout::outer_major);
    const auto kmaj = sybench::block_scales(p, for_a, sybench::ScaleLayout::k_major);
    ASSERT_EQ(outer.size(), static_cast<size_t>(ld * kb_n));
    ASSERT_EQ(kmaj.size(), static_cast<size_t>(rows * kb_n));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t kb = 0; kb < kb_n; ++kb) {
        const float want = for_a ? sybench::a_scale_inv(p, r, kb) : sybench::b_scale_inv(p, r * 128, kb);
        EXPECT_EQ(outer[kb * ld + r], want);
        EXPECT_EQ(kmaj[r * kb_n + kb], want);
      }
  }
}

// What a device computes, emulated: FP32 sums over K in order; with
// `chunk_bits` < 24, an FP8 tensor core's accumulation: each 32-deep group
// of products added to the running 128-K chunk sum kept to `chunk_bits`
// significant bits (truncated), the chunk then promoted to FP32. `fault`
// injects one kind of error.
enum class Fault { none, scale_block_off_by_one, transposed, dropped_k_block, nan };
float round_to_bits(float x, int bits) {
  if (x == 0 || bits >= 24) return x;
  int e = 0;
  std::frexp(x, &e);
  const float q = std::ldexp(1.f, e - bits);
  return std::trunc(x / q) * q;  // truncation: the worse of the two roundings
}
double device_like(const Problem& p, int64_t i, int64_t j, Fault fault, int chunk_bits = 24) {
  if (fault == Fault::nan && i == 0 && j == 0) return NAN;
  if (fault == Fault::transposed) std::swap(i, j);
  float c = 0;
  for (int64_t k0 = 0; k0 < p.K; k0 += 128) {
    if (fault == Fault::dropped_k_block && k0 == 128) continue;
    float s = 0, group = 0;
    for (int64_t k = k0; k < std::min(p.K, k0 + 128); ++k) {
      const float a = p.kind == Kind::bf16 ? static_cast<float>(sybench::bf16_value(sybench::bf16_bits(p.seed_a, p.a_row0 + i, k)))
                                           : static_cast<float>(sybench::e4m3_value(sybench::e4m3_code(p.seed_a, p.a_row0 + i, k)));
      const float b = p.kind == Kind::bf16 ? static_cast<float>(sybench::bf16_value(sybench::bf16_bits(p.seed_b, j, k)))
                                           : static_cast<float>(sybench::e4m3_value(sybench::e4m3_code(p.seed_b, j, k)));
      if (chunk_bits >= 24) {
        s += a * b;
        continue;
      }
      group += a * b;
      if ((k + 1) % 32 == 0) s = round_to_bits(s + group, chunk_bits), group = 0;
    }
    s += group;
    if (p.kind == Kind::bf16) {
      c += s;
      continue;
    }
    const int64_t kb = k0 / 128 + (fault == Fault::scale_block_off_by_one && k0 == 0 ? 1 : 0);
    c += s * sybench::a_scale_inv(p, i, kb) * sybench::b_scale_inv(p, j, kb);
  }
  return c;
}

sybench::Verdict run(const Problem& p, Fault fault, sybench::Out out = sybench::Out::f32, int chunk_bits = 24) {
  const auto s = sybench::samples(p.M, p.N, 48, 1);
  std::vector<double> got;
  for (const auto& t : s) {
    double v = device_like(p, t.i, t.j, fault, chunk_bits);
    if (out == sybench::Out::bf16) v = bf16_to_f32(f32_to_bf16(static_cast<float>(v)));
    got.push_back(v);
  }
  return sybench::verify(p, s, got, out);
}

TEST(GemmCheck, DeviceLikeResultsPassAndWrongOnesFail) {
  for (Kind kind : {Kind::bf16, Kind::fp8_tensor, Kind::fp8_block}) {
    const Problem p{kind, 64, 64, 1024, 9, 10, 0};
    const char* name = sybench::kind_name(kind);
    EXPECT_TRUE(run(p, Fault::none).ok()) << name;
    EXPECT_TRUE(run(p, Fault::none, sybench::Out::bf16).ok()) << name;
    if (kind != Kind::bf16) {
      EXPECT_TRUE(run(p, Fault::none, sybench::Out::f32, 14).ok()) << name << ": 14-bit chunk accumulation";
      EXPECT_LT(run(p, Fault::none, sybench::Out::f32, 14).worst, 0.5) << name;
    }
    if (kind == Kind::fp8_block) {
      EXPECT_FALSE(run(p, Fault::scale_block_off_by_one).ok()) << name;
    }
    EXPECT_FALSE(run(p, Fault::transposed).ok()) << name;
    EXPECT_FALSE(run(p, Fault::dropped_k_block).ok()) << name;
    const auto v = run(p, Fault::nan);
    EXPECT_FALSE(v.ok()) << name;
    EXPECT_EQ(v.worst_i, 0);
  }
  // A grouped expert's rows checked against another expert's weight fail.
  const Problem mine{Kind::bf16, 32, 64, 512, 9, 1003, 96}, other{Kind::bf16, 32, 64, 512, 9, 1004, 96};
  const auto s = sybench::samples(mine.M, mine.N, 32, 2);
  std::vector<double> got;
  for (const auto& t : s) got.push_back(device_like(other, t.i, t.j, Fault::none));
  EXPECT_FALSE(sybench::verify(mine, s, got, sybench::Out::f32).ok());
}

// The tolerance's FP32 term holds for the longest K the benchmark runs
// (8192), summed in the worst plain order (sequential): the measured error
// stays well inside it (rigorous bound: (K-1) * 2^-24 * abs_sum).
TEST(GemmCheck, SequentialFp32SumsOverLongKStayInsideTheTolerance) {
  const Problem p{Kind::bf16, 4, 4, 8192, 21, 22, 0};
  const auto v = run(p, Fault::none);
  EXPECT_TRUE(v.ok());
  EXPECT_LT(v.worst, 0.1);
}

TEST(GemmCheck, SamplesIncludeTheCornersAndStayInRange) {
  const auto s = sybench::samples(37, 5, 100, 3);
  ASSERT_EQ(s.size(), 100u);
  EXPECT_EQ(s[0].i, 0);
  EXPECT_EQ(s[3].i, 36);
  EXPECT_EQ(s[3].j, 4);
  for (const auto& t : s) {
    ASSERT_TRUE(t.i >= 0 && t.i < 37 && t.j >= 0 && t.j < 5);
  }
}

}  // namespace
}  // namespace sy
