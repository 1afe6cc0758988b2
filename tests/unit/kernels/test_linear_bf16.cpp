// The CPU backend's BF16 linears (the bf16 recipe's reference for every
// backend): bit for bit round_bf16 of both operands + the FP32 linear, the
// grouped ones bit for bit the per-group calls (empty groups skipped, rows
// from a nonzero first offset); and the FP32 grouped linears equal their
// per-group calls too.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "testing.h"

namespace sy {
namespace {

using test::randn;

std::vector<float> rounded(const Backend& be, const std::vector<float>& v) {
  std::vector<float> r(v.size());
  be.round_bf16(r.data(), v.data(), static_cast<int64_t>(v.size()), {});
  return r;
}

TEST(LinearBf16, CpuOpsAreRoundedOperandsThroughTheFp32Gemm) {
  const Backend& be = cpu_backend();
  const int64_t N = 37, I = 53, O = 29;  // odd shapes
  auto x = randn(N * I, 41), w = randn(O * I, 42, 0.2f), dy = randn(N * O, 43);
  const auto xr = rounded(be, x), wr = rounded(be, w), dyr = rounded(be, dy);
  ASSERT_NE(xr, x);  // the rounding is visible, so the bits below test it

  std::vector<float> y(N * O), want_y(N * O);
  be.linear_forward_bf16(y.data(), x.data(), w.data(), N, I, O, {});
  be.linear_forward(want_y.data(), xr.data(), wr.data(), N, I, O, {});
  EXPECT_EQ(y, want_y);
  std::vector<float> y32(N * O);
  be.linear_forward(y32.data(), x.data(), w.data(), N, I, O, {});
  EXPECT_NE(y, y32);

  for (bool acc : {false, true}) {  // dinp overwritten, or added to what is there
    auto dx = randn(N * I, 44), want_dx = dx;
    be.linear_dgrad_bf16(dx.data(), dy.data(), w.data(), N, I, O, acc, {});
    be.linear_dgrad(want_dx.data(), dyr.data(), wr.data(), N, I, O, acc, {});
    EXPECT_EQ(dx, want_dx) << "accumulate " << acc;
  }
  auto dw = randn(O * I, 45), want_dw = dw;  // dW accumulates
  be.linear_wgrad_bf16(dw.data(), dy.data(), x.data(), N, I, O, {});
  be.linear_wgrad(want_dw.data(), dyr.data(), xr.data(), N, I, O, {});
  EXPECT_EQ(dw, want_dw);
}

// Grouped = one call per non-empty group, in both precisions.
TEST(LinearBf16, GroupedIsPerGroupCallsWithEmptyGroups) {
  const Backend& be = cpu_backend();
  const int64_t N = 61, I = 22, O = 31, G = 5;
  const std::vector<int64_t> offsets = {3, 17, 17, 40, 40, N};  // groups 1 and 3 empty; rows before 3 unread
  std::vector<std::vector<float>> ws;
  std::vector<const float*> wp;
  for (int64_t g = 0; g < G; ++g) ws.push_back(randn(O * I, 50 + static_cast<uint64_t>(g), 0.3f));
  for (auto& v : ws) wp.push_back(v.data());
  auto x = randn(N * I, 46), dy = randn(N * O, 47);
  for (bool bf16 : {false, true}) {
    std::vector<float> y(N * O, 7.f), want_y = y, dx(N * I, 7.f), want_dx = dx;
    std::vector<std::vector<float>> dw(G, randn(O * I, 48)), want_dw = dw;
    std::vector<float*> dwp, want_dwp;
    for (int64_t g = 0; g < G; ++g) dwp.push_back(dw[g].data()), want_dwp.push_back(want_dw[g].data());
    if (bf16) {
      be.grouped_linear_forward_bf16(y.data(), x.data(), wp.data(), offsets.data(), G, I, O, {});
      be.grouped_linear_dgrad_bf16(dx.data(), dy.data(), wp.data(), offsets.data(), G, I, O, {});
      be.grouped_linear_wgrad_bf16(dwp.data(), dy.data(), x.data(), offsets.data(), G, I, O, {});
    } else {
      be.grouped_linear_forward(y.data(), x.data(), wp.data(), offsets.data(), G, I, O, {});
      be.grouped_linear_dgrad(dx.data(), dy.data(), wp.data(), offsets.data(), G, I, O, {});
      be.grouped_linear_wgrad(dwp.data(), dy.data(), x.data(), offsets.data(), G, I, O, {});
    }
    for (int64_t g = 0; g < G; ++g) {
      const int64_t r = offsets[g], n = offsets[g + 1] - r;
      if (n == 0) continue;
      if (bf16) {
        be.linear_forward_bf16(want_y.data() + r * O, x.data() + r * I, wp[g], n, I, O, {});
        be.linear_dgrad_bf16(want_dx.data() + r * I, dy.data() + r * O, wp[g], n, I, O, false, {});
        be.linear_wgrad_bf16(want_dwp[g], dy.data() + r * O, x.data() + r * I, n, I, O, {});
      } else {
        be.linear_forward(want_y.data() + r * O, x.data() + r * I, wp[g], n, I, O, {});
        be.linear_dgrad(want_dx.data() + r * I, dy.data() + r * O, wp[g], n, I, O, false, {});
        be.linear_wgrad(want_dwp[g], dy.data() + r * O, x.data() + r * I, n, I, O, {});
      }
    }
    EXPECT_EQ(y, want_y) << "bf16 " << bf16;
    EXPECT_EQ(dx, want_dx) << "bf16 " << bf16;
    for (int64_t g = 0; g < G; ++g) EXPECT_EQ(dw[g], want_dw[g]) << "bf16 " << bf16 << " group " << g;
    EXPECT_EQ(y[0], 7.f) << "a row before offsets[0] was written";
  }
}

}  // namespace
}  // namespace sy
