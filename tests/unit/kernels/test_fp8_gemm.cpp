// Scaled FP8 matrices and GEMM: the fast path (decode 128-K blocks, OpenBLAS,
// per-block promotion) against a naive reference in double; quantization
// scales and transposes; the FP8 product against the FP32 one.
#include <array>

#include "kernels/cpu/fp8_gemm.h"
#include "kernels/cpu/fp8_linear.h"
#include "kernels/cpu/grouped_gemm.h"
#include <tuple>
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
    ASSERT_EQ(q.scale_inv.size(), static_cast<size_t>(R * 3));
    EXPECT_NEAR(q.sinv(0, 0), 1000.f / 448.f, pow2 ? 1000.f / 448.f : 1e-3);
    EXPECT_LT(q.sinv(0, 1), 1.f);  // the outlier's row, next block: a much smaller range
    if (pow2) {
      for (float s : q.scale_inv) EXPECT_EQ(std::exp2(std::round(std::log2(s))), s);
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
    EXPECT_EQ(a.q, b.q) << to_string(mode);
    EXPECT_EQ(a.scale_inv, b.scale_inv) << to_string(mode);
  }
  // A given tensor scale (delayed scaling) is used as is and saturation counted.
  Fp8Matrix d;
  QuantStats st = quantize_matrix(d, x.data(), R, C, {Fp8Format::e4m3, ScaleMode::tensor, false, true, 1.f});
  EXPECT_EQ(d.scale_inv[0], 1.f);
  EXPECT_EQ(st.saturated, 1);  // 1000 > 448
  EXPECT_EQ(st.amax, 1000.f);
}

}  // namespace
}  // namespace sy

namespace sy {
namespace {

TEST(Fp8Linear, ThreeGemmsCloseToFp32AndRoutedOnlyInScope) {
  const int64_t N = 200, I = 160, O = 96;
  auto x = test::randn(N * I, 11), w = test::randn(O * I, 12, 0.1f), dy = test::randn(N * O, 13, 1e-3f);
  std::vector<float> y32(N * O), dx32(N * I), dw32(O * I, 0.f);
  linear_forward(y32.data(), x.data(), w.data(), N, I, O);
  linear_backward(dx32.data(), dw32.data(), dy.data(), x.data(), w.data(), N, I, O);
  for (Fp8Scaling sc : {Fp8Scaling::tensor_current, Fp8Scaling::tensor_delayed, Fp8Scaling::block}) {
    SCOPED_TRACE(static_cast<int>(sc));
    Fp8Recipe r;
    r.scaling = sc;
    Fp8Linear fp8(r);
    std::vector<float> y(N * O), dx(N * I), dw(O * I, 0.f), y_plain(N * O);
    {
      Fp8Scope scope(&fp8);
      mm_forward(Fp8Group::mlp, y.data(), x.data(), w.data(), N, I, O);
      mm_backward(Fp8Group::mlp, dx.data(), dw.data(), dy.data(), x.data(), w.data(), N, I, O);
    }
    mm_forward(Fp8Group::mlp, y_plain.data(), x.data(), w.data(), N, I, O);  // out of scope: FP32
    EXPECT_EQ(y_plain, y32);
    // E4M3 forward, E5M2 gradients (2 mantissa bits): a few percent.
    for (auto [got, want, n, tol] : {std::tuple{y.data(), y32.data(), N * O, 0.05},
                                     std::tuple{dx.data(), dx32.data(), N * I, 0.1},
                                     std::tuple{dw.data(), dw32.data(), O * I, 0.1}}) {
      double err = test::max_rel_err(got, want, static_cast<size_t>(n));
      EXPECT_LT(err, tol);
      EXPECT_GT(err, 1e-4);
    }
    std::vector<Fp8GroupStats> st = fp8.take_stats();
    const Fp8GroupStats& g = st[static_cast<size_t>(Fp8Group::mlp)];
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    EXPECT_EQ(g.amax_act, amax);
    EXPECT_EQ(g.saturated, 0);
    EXPECT_EQ(st[static_cast<size_t>(Fp8Group::experts)].amax_act, 0.f);
  }
}

// Keeping a layer's input in FP8 for backward gives the same gradients, bit
// for bit, as quantizing the FP32 input in backward: it is the operand the
// weight-gradient GEMM reads. The FP32 input is overwritten in between, as
// the shared staging buffer is in training.
TEST(Fp8Linear, InputsSavedInFp8GiveTheSameGradientsAndTakeAQuarter) {
  const int64_t N = 300, I = 256, O = 96;
  auto x = test::randn(N * I, 21), w = test::randn(O * I, 22, 0.1f), dy = test::randn(N * O, 23, 1e-3f);
  for (Fp8Scaling sc : {Fp8Scaling::tensor_current, Fp8Scaling::tensor_delayed, Fp8Scaling::block}) {
    SCOPED_TRACE(static_cast<int>(sc));
    Fp8Recipe r;
    r.scaling = sc;
    Fp8Linear fp8(r);
    Fp8Scope scope(&fp8);
    std::vector<float> y1(N * O), dx1(N * I), dw1(O * I, 0.f), y2(N * O), dx2(N * I), dw2(O * I, 0.f);
    for (int step = 0; step < 2; ++step) {  // the second step has a delayed-scaling history
      mm_forward(Fp8Group::mlp, y1.data(), x.data(), w.data(), N, I, O);
      mm_backward(Fp8Group::mlp, dx1.data(), dw1.data(), dy.data(), x.data(), w.data(), N, I, O);
      Fp8Saved saved;
      std::vector<float> staging = x;
      mm_forward(Fp8Group::mlp, y2.data(), staging.data(), w.data(), N, I, O, &saved);
      std::fill(staging.begin(), staging.end(), 1e30f);  // the next layer's input lands here
      mm_backward(Fp8Group::mlp, dx2.data(), dw2.data(), dy.data(), nullptr, w.data(), N, I, O, false, &saved);
      EXPECT_EQ(y1, y2);
      EXPECT_EQ(dx1, dx2);
      EXPECT_EQ(dw1, dw2);
      // N x I codes plus scales (1 x 128 tiles along N: 3 per column).
      const size_t codes = static_cast<size_t>(N * I);
      EXPECT_GE(saved.bytes(), codes);
      EXPECT_LE(saved.bytes(), codes + static_cast<size_t>(I * 3) * sizeof(float) + 64);
      fp8.take_stats();
    }
  }
}

TEST(Fp8Linear, GroupedInputsSavedInFp8PerSegment) {
  const int64_t I = 128, O = 64;
  const std::vector<int64_t> offsets = {0, 70, 70, 201, 260};  // an empty group
  const int64_t N = offsets.back(), G = 4;
  auto x = test::randn(N * I, 31), dy = test::randn(N * O, 32, 1e-2f);
  std::vector<std::vector<float>> ws;
  std::vector<const float*> w;
  for (int64_t g = 0; g < G; ++g) ws.push_back(test::randn(O * I, 40 + static_cast<uint64_t>(g), 0.1f));
  for (auto& v : ws) w.push_back(v.data());
  Fp8Recipe r;
  Fp8Linear fp8(r);
  Fp8Scope scope(&fp8);
  std::vector<std::vector<float>> dw1(G, std::vector<float>(O * I, 0.f)), dw2 = dw1;
  std::vector<float*> p1, p2;
  for (int64_t g = 0; g < G; ++g) p1.push_back(dw1[g].data()), p2.push_back(dw2[g].data());
  std::vector<float> y(N * O), dx1(N * I), dx2(N * I);
  grouped_linear_forward(y.data(), x.data(), w.data(), offsets.data(), G, I, O);
  grouped_linear_backward(dx1.data(), p1.data(), dy.data(), x.data(), w.data(), offsets.data(), G, I, O);
  Fp8Saved saved;
  // Two calls (as two dispatch chunks do), groups {0, 1} then {2, 3}.
  grouped_linear_forward(y.data(), x.data(), w.data(), offsets.data(), 2, I, O, &saved);
  grouped_linear_forward(y.data(), x.data(), w.data(), offsets.data() + 2, 2, I, O, &saved);
  grouped_linear_backward(dx2.data(), p2.data(), dy.data(), nullptr, w.data(), offsets.data(), G, I, O, &saved);
  EXPECT_EQ(dx1, dx2);
  for (int64_t g = 0; g < G; ++g) EXPECT_EQ(dw1[g], dw2[g]) << "group " << g;
  EXPECT_LE(saved.bytes(), static_cast<size_t>(N * I) * 5 / 4 + 4096);
  // A row forward did not save is an error, not garbage.
  Fp8Saved other;
  EXPECT_THROW(grouped_linear_backward(dx2.data(), p2.data(), dy.data(), nullptr, w.data(), offsets.data(), G, I, O,
                                       &other),
               std::exception);
}

TEST(Fp8Linear, DelayedScalingUsesTheHistoryAndCountsSaturation) {
  const int64_t N = 8, I = 16, O = 4;
  auto w = test::randn(O * I, 1);
  Fp8Recipe r;
  r.scaling = Fp8Scaling::tensor_delayed;
  r.amax_history = 2;
  Fp8Linear fp8(r);
  std::vector<float> y(N * O);
  auto step = [&](float magnitude) {
    std::vector<float> x(N * I, magnitude);
    Fp8Scope scope(&fp8);
    mm_forward(Fp8Group::attn_qkv, y.data(), x.data(), w.data(), N, I, O);
    return fp8.take_stats()[static_cast<size_t>(Fp8Group::attn_qkv)];
  };
  EXPECT_EQ(step(1.f).saturated, 0);    // no history: its own amax
  EXPECT_EQ(step(1.f).saturated, 0);    // history amax 1: fits
  EXPECT_EQ(step(4.f).saturated, N * I);  // scale from amax 1: 4 x 448 overflows, every value clamps
  EXPECT_EQ(step(4.f).saturated, 0);    // the history has seen 4 now
  EXPECT_EQ(step(0.5f).saturated, 0);
  EXPECT_EQ(step(0.5f).saturated, 0);   // history {4, 0.5}: still the larger scale-down
  EXPECT_EQ(step(1.f).saturated, N * I);  // history {0.5, 0.5} after two small steps: 1 overflows
}

}  // namespace
}  // namespace sy
