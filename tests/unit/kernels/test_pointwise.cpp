// Embedding, RMSNorm, RoPE, SwiGLU, cross-entropy: fast path vs double
// reference on odd shapes, and the reference backward vs finite differences.
#include <cmath>
#include <limits>

#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "kernels/cpu/vmath.h"
#include "testing.h"

namespace sy {
namespace {

using test::cast;
using test::randn;
using test::Tol;

template <class T>
double dot(const std::vector<T>& a, const std::vector<T>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * double(b[i]);
  return s;
}

TEST(Vmath, FastExpWithinTwoUlp) {
  double worst = 0;
  for (float x = -87.f; x <= 88.5f; x += 0.00137f) {
    double want = std::exp(double(x));
    worst = std::max(worst, std::abs(double(fast_exp(x)) - want) / want);
  }
  EXPECT_LE(worst, 2.5e-7);  // 2 ulp of float is 2.4e-7 relative
  EXPECT_EQ(fast_exp(0.f), 1.f);
  EXPECT_GT(fast_exp(-1000.f), 0.f);  // clamped, documented
  EXPECT_LT(fast_exp(-1000.f), 1.2e-38f);
}

TEST(Embedding, FastMatchesReferenceWithRepeatedTokens) {
  int64_t V = 11, C = 37, N = 50;
  auto wte = randn(V * C, 1);
  auto tok = test::rand_ints(N, 2, 4);  // only 4 distinct ids: heavy repetition
  auto dout = randn(N * C, 3);
  std::vector<float> out(N * C), dwte(V * C, 0.f);
  std::vector<double> want(N * C), want_dwte(V * C, 0.0);
  auto dw = cast<double>(wte), dd = cast<double>(dout);
  embedding_forward(out.data(), tok.data(), wte.data(), N, C);
  embedding_forward_ref(want.data(), tok.data(), dw.data(), N, C);
  SY_EXPECT_CLOSE(out.data(), want.data(), N * C, 0.0);
  embedding_backward(dwte.data(), dout.data(), tok.data(), N, C);
  embedding_backward_ref(want_dwte.data(), dd.data(), tok.data(), N, C);
  SY_EXPECT_CLOSE(dwte.data(), want_dwte.data(), V * C, Tol::f32);
}

class RmsNormTest : public ::testing::TestWithParam<std::pair<int64_t, int64_t>> {};
TEST_P(RmsNormTest, FastMatchesReference) {
  auto [N, C] = GetParam();
  auto x = randn(N * C, 1, 3.f), w = randn(C, 2), dout = randn(N * C, 3);
  std::vector<float> out(N * C), rstd(N), dx = randn(N * C, 4), dw = randn(C, 5);
  auto xd = cast<double>(x), wd = cast<double>(w), dd = cast<double>(dout);
  std::vector<double> want(N * C), want_rstd(N);
  auto want_dx = cast<double>(dx), want_dw = cast<double>(dw);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
  rmsnorm_forward_ref(want.data(), want_rstd.data(), xd.data(), wd.data(), N, C, 1e-5);
  SY_EXPECT_CLOSE(out.data(), want.data(), N * C, Tol::f32);
  SY_EXPECT_CLOSE(rstd.data(), want_rstd.data(), N, Tol::f32);
  rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, C);
  rmsnorm_backward_ref(want_dx.data(), want_dw.data(), dd.data(), xd.data(), wd.data(), want_rstd.data(), N, C);
  SY_EXPECT_CLOSE(dx.data(), want_dx.data(), N * C, Tol::f32);
  SY_EXPECT_CLOSE(dw.data(), want_dw.data(), C, Tol::f32);
}
INSTANTIATE_TEST_SUITE_P(Shapes, RmsNormTest,
                         ::testing::Values(std::pair<int64_t, int64_t>{1, 1}, std::pair<int64_t, int64_t>{3, 7},
                                           std::pair<int64_t, int64_t>{129, 64},
                                           std::pair<int64_t, int64_t>{1000, 33}));

TEST(RmsNorm, ReferenceGradientIsFiniteDifference) {
  int64_t N = 3, C = 8;
  auto x = cast<double>(randn(N * C, 1)), w = cast<double>(randn(C, 2)), r = cast<double>(randn(N * C, 3));
  auto loss = [&] {
    std::vector<double> out(N * C), rstd(N);
    rmsnorm_forward_ref(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5);
    return dot(out, r);
  };
  std::vector<double> out(N * C), rstd(N), dx(N * C, 0.0), dw(C, 0.0);
  rmsnorm_forward_ref(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5);
  rmsnorm_backward_ref(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), N, C);
  test::expect_fd_gradient(loss, x.data(), dx.data(), dx.size(), "rmsnorm input");
  test::expect_fd_gradient(loss, w.data(), dw.data(), dw.size(), "rmsnorm weight");
}

TEST(Rope, FastMatchesReferenceAndBackwardIsAdjoint) {
  int64_t T = 13, heads = 3, D = 10, stride = heads * D + 6, N = 2 * T;
  std::vector<float> cs(T * D / 2), sn(T * D / 2);
  rope_table(cs.data(), sn.data(), T, D, 10000.0);
  auto x = randn(N * stride, 1), y = randn(N * stride, 2);
  auto xd = cast<double>(x), csd = cast<double>(cs), snd = cast<double>(sn);
  auto fx = x;
  rope_forward(fx.data(), cs.data(), sn.data(), N, T, heads, D, stride);
  rope_apply_ref(xd.data(), csd.data(), snd.data(), N, T, heads, D, stride, +1);
  SY_EXPECT_CLOSE(fx.data(), xd.data(), N * stride, Tol::f32);
  for (int64_t n = 0; n < N; ++n)  // the 6 padding floats of each row are untouched
    for (int64_t j = heads * D; j < stride; ++j) EXPECT_EQ(fx[n * stride + j], x[n * stride + j]);
  // <R x, y> == <x, R^T y>: the backward is the transpose of the forward.
  auto by = y;
  rope_backward(by.data(), cs.data(), sn.data(), N, T, heads, D, stride);
  EXPECT_NEAR(dot(fx, y), dot(x, by), 1e-4 * std::sqrt(double(N * stride)));
  // Position 0 is the identity.
  for (int64_t j = 0; j < heads * D; ++j) EXPECT_FLOAT_EQ(fx[j], x[j]);
}

TEST(SwiGlu, FastMatchesReferenceAndFiniteDifference) {
  int64_t N = 17, F = 23;
  auto inp = randn(N * 2 * F, 1, 2.f), dout = randn(N * F, 2);
  std::vector<float> out(N * F), dinp(N * 2 * F);
  auto id = cast<double>(inp), dd = cast<double>(dout);
  std::vector<double> want(N * F), want_dinp(N * 2 * F);
  swiglu_forward(out.data(), inp.data(), N, F);
  swiglu_forward_ref(want.data(), id.data(), N, F);
  SY_EXPECT_CLOSE(out.data(), want.data(), N * F, Tol::f32);
  swiglu_backward(dinp.data(), dout.data(), inp.data(), N, F);
  swiglu_backward_ref(want_dinp.data(), dd.data(), id.data(), N, F);
  SY_EXPECT_CLOSE(dinp.data(), want_dinp.data(), N * 2 * F, Tol::f32);
  auto loss = [&] {
    std::vector<double> o(N * F);
    swiglu_forward_ref(o.data(), id.data(), N, F);
    return dot(o, dd);
  };
  test::expect_fd_gradient(loss, id.data(), want_dinp.data(), id.size(), "swiglu");
}

TEST(CrossEntropy, FastMatchesReferenceInPlaceAndFiniteDifference) {
  int64_t N = 19, V = 259;
  auto logits = randn(N * V, 1, 3.f);
  auto tgt = test::rand_ints(N, 2, static_cast<int32_t>(V));
  auto ld = cast<double>(logits);
  std::vector<float> losses(N), grad = logits;  // gradient overwrites in place
  std::vector<double> want(N), want_grad(N * V);
  float scale = 1.f / static_cast<float>(N);
  cross_entropy(losses.data(), grad.data(), grad.data(), tgt.data(), N, V, scale);
  cross_entropy_ref(want.data(), want_grad.data(), ld.data(), tgt.data(), N, V, double(scale));
  SY_EXPECT_CLOSE(losses.data(), want.data(), N, Tol::f32);
  SY_EXPECT_CLOSE(grad.data(), want_grad.data(), N * V, Tol::f32);
  std::vector<float> losses_only(N);
  cross_entropy(losses_only.data(), nullptr, logits.data(), tgt.data(), N, V, 0.f);
  SY_EXPECT_CLOSE(losses_only.data(), want.data(), N, Tol::f32);
  auto loss = [&] {
    std::vector<double> l(N);
    cross_entropy_ref<double>(l.data(), nullptr, ld.data(), tgt.data(), N, V, 0.0);
    double s = 0;
    for (double v : l) s += v * double(scale);
    return s;
  };
  test::expect_fd_gradient(loss, ld.data(), want_grad.data(), ld.size(), "cross-entropy");
}

}  // namespace
}  // namespace sy
