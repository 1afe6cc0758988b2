#include <array>
#include "kernels/cpu/attention.h"
#include "testing.h"

namespace sy {
namespace {

using test::cast;
using test::randn;
using test::Tol;

struct AttnShape {
  int64_t B, T, H, Hkv, D;
};
std::ostream& operator<<(std::ostream& os, const AttnShape& s) {
  return os << "B" << s.B << "_T" << s.T << "_H" << s.H << "_Hkv" << s.Hkv << "_D" << s.D;
}

class AttentionTest : public ::testing::TestWithParam<AttnShape> {};

TEST_P(AttentionTest, TiledMatchesNaiveReference) {
  auto [B, T, H, Hkv, D] = GetParam();
  int64_t R = (H + 2 * Hkv) * D;
  auto qkv = randn(B * T * R, 1, 1.5f), dout = randn(B * T * H * D, 2);
  auto qd = cast<double>(qkv), dd = cast<double>(dout);
  std::vector<float> out(B * T * H * D), lse(B * H * T), dqkv(B * T * R, 7.f);
  std::vector<double> want(out.size()), want_lse(lse.size()), want_d(dqkv.size());
  attention_forward(out.data(), lse.data(), qkv.data(), B, T, H, Hkv, D);
  attention_forward_ref(want.data(), want_lse.data(), qd.data(), B, T, H, Hkv, D);
  SY_EXPECT_CLOSE(out.data(), want.data(), out.size(), Tol::f32_long);
  SY_EXPECT_CLOSE(lse.data(), want_lse.data(), lse.size(), Tol::f32);
  attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, H, Hkv, D);
  attention_backward_ref(want_d.data(), dd.data(), qd.data(), want.data(), want_lse.data(), B, T, H, Hkv, D);
  SY_EXPECT_CLOSE(dqkv.data(), want_d.data(), dqkv.size(), Tol::f32_long);
}

// Odd T around the 64-row tile, GQA group sizes 1, 2, 4 and MQA.
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(AttnShape{1, 1, 1, 1, 2}, AttnShape{2, 7, 4, 2, 8},
                                           AttnShape{1, 64, 2, 2, 16}, AttnShape{2, 65, 4, 1, 6},
                                           AttnShape{1, 130, 8, 2, 32}, AttnShape{3, 200, 4, 4, 10}),
                         [](const auto& param_info) {
                           std::ostringstream os;
                           os << param_info.param;
                           return os.str();
                         });

// Generation: the rows of a causal attention over the whole sequence equal
// attention of those tokens against a KV cache of everything before them,
// whatever the split into a prefill chunk and later chunks.
TEST(Attention, CachedMatchesFullSequence) {
  for (auto [T, H, Hkv, D, pos0] : std::vector<std::array<int64_t, 5>>{
           {1, 1, 1, 2, 0}, {9, 4, 2, 8, 5}, {70, 4, 1, 6, 69}, {130, 8, 2, 32, 0}, {130, 8, 8, 16, 64}}) {
    int64_t R = (H + 2 * Hkv) * D, n = T - pos0;
    auto qkv = randn(T * R, 3, 1.5f);
    auto qd = cast<double>(qkv);
    std::vector<double> want(T * H * D), lse(H * T);
    attention_forward_ref(want.data(), lse.data(), qd.data(), 1, T, H, Hkv, D);
    std::vector<float> kc(T * Hkv * D), vc(T * Hkv * D), out(n * H * D, 9.f);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < Hkv * D; ++c) {
        kc[t * Hkv * D + c] = qkv[t * R + H * D + c];
        vc[t * Hkv * D + c] = qkv[t * R + (H + Hkv) * D + c];
      }
    attention_cached(out.data(), qkv.data() + pos0 * R, R, kc.data(), vc.data(), pos0, n, H, Hkv, D);
    SCOPED_TRACE(::testing::Message() << "T " << T << " H " << H << " Hkv " << Hkv << " D " << D << " pos0 " << pos0);
    SY_EXPECT_CLOSE(out.data(), want.data() + pos0 * H * D, out.size(), Tol::f32_long);
  }
}

TEST(Attention, ReferenceGradientIsFiniteDifference) {
  int64_t B = 2, T = 5, H = 4, Hkv = 2, D = 4, R = (H + 2 * Hkv) * D;
  auto qkv = cast<double>(randn(B * T * R, 1)), r = cast<double>(randn(B * T * H * D, 2));
  auto loss = [&] {
    std::vector<double> out(B * T * H * D), lse(B * H * T);
    attention_forward_ref(out.data(), lse.data(), qkv.data(), B, T, H, Hkv, D);
    double s = 0;
    for (size_t i = 0; i < out.size(); ++i) s += out[i] * r[i];
    return s;
  };
  std::vector<double> out(B * T * H * D), lse(B * H * T), d(B * T * R);
  attention_forward_ref(out.data(), lse.data(), qkv.data(), B, T, H, Hkv, D);
  attention_backward_ref(d.data(), r.data(), qkv.data(), out.data(), lse.data(), B, T, H, Hkv, D);
  test::expect_fd_gradient(loss, qkv.data(), d.data(), qkv.size(), "attention q, k, v");
}

TEST(Attention, IsCausal) {
  // Changing the last position's k and v must not change any earlier output.
  int64_t B = 1, T = 70, H = 2, Hkv = 1, D = 8, R = (H + 2 * Hkv) * D;
  auto qkv = randn(B * T * R, 3);
  std::vector<float> a(T * H * D), b(T * H * D), lse(H * T);
  attention_forward(a.data(), lse.data(), qkv.data(), B, T, H, Hkv, D);
  for (int64_t j = H * D; j < R; ++j) qkv[(T - 1) * R + j] += 5.f;
  attention_forward(b.data(), lse.data(), qkv.data(), B, T, H, Hkv, D);
  for (int64_t i = 0; i < (T - 1) * H * D; ++i) ASSERT_EQ(a[i], b[i]) << "at " << i;
  double changed = 0;
  for (int64_t i = (T - 1) * H * D; i < T * H * D; ++i) changed += std::abs(a[i] - b[i]);
  EXPECT_GT(changed, 0.0);
}

}  // namespace
}  // namespace sy
