// Scaled FP8 matrices and GEMM: the fast path (decode 128-K blocks, OpenBLAS,
// per-block promotion) against a naive reference in double; quantization
// scales and transposes; the FP8 product against the FP32 one.
#include <array>

#include "kernels/cpu/fp8_gemm.h"
#include "kernels/cpu/linear.h"
#include "testing.h"

namespace sy {
namespace {

using test::randn;

struct Case {
  int64_t M, N, K;
  ScaleMode a, b;
  Fp8Format fa, fb;
};

TEST(Fp8Gemm, MatchesNaiveReferenceForEveryScalingMode) {
  const std::vector<Case> cases = {
      {5, 7, 9, ScaleMode::tensor, ScaleMode::tensor, Fp8Format::e4m3, Fp8Format::e4m3},
      {33, 130, 300, ScaleMode::tensor, ScaleMode::tensor, Fp8Format::e5m2, Fp8Format::e4m3},
      {33, 130, 300, ScaleMode::rows_1x128, ScaleMode::blocks_128x128, Fp8Format::e4m3, Fp8Format::e4m3},
      {64, 257, 129, ScaleMode::rows_1x128, ScaleMode::blocks_128x128, Fp8Format::e5m2, Fp8Format::e4m3},
      {17, 40, 256, ScaleMode::rows_1x128, ScaleMode::rows_1x128, Fp8Format::e5m2, Fp8Format::e4m3},
      {1, 1, 1, ScaleMode::rows_1x128, ScaleMode::tensor, Fp8Format::e4m3, Fp8Format::e5m2}};
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.M << "x" << c.N << "x" << c.K << " " << to_string(c.a) << "/"
                                      << to_string(c.b) << " " << to_string(c.fa) << "/" << to_string(c.fb));
    // Rows of very different magnitudes, so block scales differ.
    auto x = randn(c.M * c.K, 1), w = randn(c.N * c.K, 2);
    for (int64_t i = 0; i < c.M * c.K; ++i) x[i] *= std::exp2(static_cast<float>((i / c.K) % 7) - 3);
    Fp8Matrix A, B;
    quantize_matrix(A, x.data(), c.M, c.K, {c.fa, c.a, false});
    quantize_matrix(B, w.data(), c.N, c.K, {c.fb, c.b, true});
    std::vector<float> C(c.M * c.N, 3.f);
    std::vector<double> want(C.size());
    fp8_gemm(C.data(), A, B);
    fp8_gemm_ref(want.data(), A, B);
    SY_EXPECT_CLOSE(C.data(), want.data(), C.size(), test::Tol::f32);
    // accumulate adds to what C holds.
    std::vector<float> C2(C.size(), 1.f);
    fp8_gemm(C2.data(), A, B, true);
    for (size_t i = 0; i < C.size(); ++i) EXPECT_NEAR(C2[i], C[i] + 1.f, 1e-4 * (std::fabs(C[i]) + 1)) << i;
  }
}

TEST(Fp8Gemm, CloseToTheFp32Product) {
  // Quantization error of E4M3 (3 mantissa bits: relative 2^-4 per value)
  // averages out over K: the product is within a few percent.
  const int64_t M = 48, N = 96, K = 512;
  auto x = randn(M * K, 3), w = randn(N * K, 4, 0.05f);
  std::vector<float> want(M * N), got(M * N);
  linear_forward(want.data(), x.data(), w.data(), M, K, N);
  for (ScaleMode mode : {ScaleMode::tensor, ScaleMode::rows_1x128}) {
    Fp8Matrix A, B;
    quantize_matrix(A, x.data(), M, K, {Fp8Format::e4m3, mode});
    quantize_matrix(B, w.data(), N, K, {Fp8Format::e4m3, mode == ScaleMode::tensor ? mode : ScaleMode::blocks_128x128});
    fp8_gemm(got.data(), A, B);
    double err = test::max_rel_err(got.data(), want.data(), got.size());
    EXPECT_LT(err, 0.05) << to_string(mode);
    EXPECT_GT(err, 1e-4) << "suspiciously exact: is it quantizing at all?";
  }
}

TEST(Fp8Quant, ScalesBlocksAndTransposes) {
  const int64_t R = 130, C = 260;
  auto x = randn(R * C, 5);
  x[7] = 1000.f;  // one outlier: only its block's scale changes
  for (bool pow2 : {false, true}) {
    Fp8Matrix q;
    quantize_matrix(q, x.data(), R, C, {Fp8Format::e4m3, ScaleMode::rows_1x128, pow2});
    // cuBLASLt's VEC128 layout: a column of 132 (130 rounded up to 4) per K block, padded with zeros.
    ASSERT_EQ(q.scale_ld, 132);
    ASSERT_EQ(q.scale_count(), static_cast<size_t>(132 * 3));
    const std::vector<float> all = test::scales(q);
    for (int64_t b = 0; b < 3; ++b) {
      EXPECT_EQ(all[static_cast<size_t>(b * 132 + 130)], 0.f);
      EXPECT_EQ(all[static_cast<size_t>(b * 132 + 131)], 0.f);
    }
    EXPECT_NEAR(all[0], 1000.f / 448.f, pow2 ? 1000.f / 448.f : 1e-3);  // row 0, block 0
    EXPECT_LT(all[132], 1.f);  // the outlier's row, next block: a much smaller range
    EXPECT_EQ(q.sinv(0, 1), all[132]);
    if (pow2) {
      for (int64_t b = 0; b < 3; ++b)
        for (int64_t r = 0; r < R; ++r) {
          const float v = q.sinv(r, b);
          EXPECT_EQ(std::exp2(std::round(std::log2(v))), v);
        }
    }
    std::vector<float> back(R * C);
    dequantize_matrix(back.data(), q);
    // The amax maps to 448 exactly (back within float rounding); a power-of-two
    // scale maps it lower (250 here), where E4M3's step is 16: 1000 -> 1024.
    EXPECT_NEAR(back[7], pow2 ? 1024.f : 1000.f, pow2 ? 0.f : 1e-3f);
    // Relative error of every element at most half an E4M3 ulp (2^-4) of its block's range.
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) {
        float s = q.sinv(r, c / 128);
        EXPECT_LE(std::fabs(back[r * C + c] - x[r * C + c]), std::max(std::fabs(x[r * C + c]) * 0.0625f, s * 0x1p-9f))
            << r << "," << c;
      }
  }
  // Transposed quantization equals quantizing the transposed copy.
  std::vector<float> xt(R * C);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) xt[c * R + r] = x[r * C + c];
  for (ScaleMode mode : {ScaleMode::tensor, ScaleMode::rows_1x128, ScaleMode::blocks_128x128}) {
    Fp8Matrix a, b;
    quantize_matrix(a, x.data(), R, C, {Fp8Format::e5m2, mode}, true);
    quantize_matrix(b, xt.data(), C, R, {Fp8Format::e5m2, mode});
    EXPECT_EQ(a.rows, C);
    EXPECT_EQ(test::codes(a), test::codes(b)) << to_string(mode);
    EXPECT_EQ(test::scales(a), test::scales(b)) << to_string(mode);
  }
  // A given tensor scale (delayed scaling) is used as is and saturation counted.
  Fp8Matrix d;
  QuantStats st = quantize_matrix(d, x.data(), R, C, {Fp8Format::e4m3, ScaleMode::tensor, false, true, 1.f});
  EXPECT_EQ(d.sinv(0, 0), 1.f);
  EXPECT_EQ(st.saturated, 1);  // 1000 > 448
  EXPECT_EQ(st.amax, 1000.f);
}

}  // namespace
}  // namespace sy

namespace sy {
namespace {

}  // namespace
}  // namespace sy
