#include "kernels/cpu/grouped_gemm.h"
#include "kernels/cpu/linear.h"
#include "testing.h"

namespace sy {
namespace {

using test::cast;
using test::randn;
using test::Tol;

struct LinearShape {
  int64_t N, I, O;
};
class LinearTest : public ::testing::TestWithParam<LinearShape> {};

TEST_P(LinearTest, FastMatchesReference) {
  auto [N, I, O] = GetParam();
  auto inp = randn(N * I, 1), w = randn(O * I, 2, 0.1f), dout = randn(N * O, 3);
  auto di = cast<double>(inp), dw_ = cast<double>(w), ddout = cast<double>(dout);

  std::vector<float> out(N * O);
  std::vector<double> want(N * O);
  linear_forward(out.data(), inp.data(), w.data(), N, I, O);
  linear_forward_ref(want.data(), di.data(), dw_.data(), N, I, O);
  SY_EXPECT_CLOSE(out.data(), want.data(), N * O, Tol::f32);

  // dinp overwritten, then accumulated onto; dw accumulates onto what is there.
  auto dinp = randn(N * I, 4), dw = randn(O * I, 5);
  auto want_dinp = cast<double>(dinp), want_dw = cast<double>(dw);
  linear_backward(dinp.data(), dw.data(), dout.data(), inp.data(), w.data(), N, I, O, true);
  linear_backward_ref(want_dinp.data(), want_dw.data(), ddout.data(), di.data(), dw_.data(), N, I, O, true);
  SY_EXPECT_CLOSE(dinp.data(), want_dinp.data(), N * I, Tol::f32);
  SY_EXPECT_CLOSE(dw.data(), want_dw.data(), O * I, Tol::f32);

  linear_backward(dinp.data(), dw.data(), dout.data(), inp.data(), w.data(), N, I, O, false);
  linear_backward_ref(want_dinp.data(), want_dw.data(), ddout.data(), di.data(), dw_.data(), N, I, O, false);
  SY_EXPECT_CLOSE(dinp.data(), want_dinp.data(), N * I, Tol::f32);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearTest,
                         ::testing::Values(LinearShape{1, 1, 1}, LinearShape{7, 13, 5},
                                           LinearShape{64, 128, 96}, LinearShape{33, 257, 65},
                                           LinearShape{300, 64, 512}));

TEST(Linear, ReferenceGradientIsFiniteDifference) {
  int64_t N = 4, I = 6, O = 5;
  auto inp = cast<double>(randn(N * I, 7)), w = cast<double>(randn(O * I, 8));
  auto r = cast<double>(randn(N * O, 9));  // loss = <r, out>
  auto loss = [&] {
    std::vector<double> out(N * O);
    linear_forward_ref(out.data(), inp.data(), w.data(), N, I, O);
    double s = 0;
    for (int64_t i = 0; i < N * O; ++i) s += r[i] * out[i];
    return s;
  };
  std::vector<double> dinp(N * I), dw(O * I, 0.0);
  linear_backward_ref(dinp.data(), dw.data(), r.data(), inp.data(), w.data(), N, I, O);
  test::expect_fd_gradient(loss, inp.data(), dinp.data(), inp.size(), "linear input");
  test::expect_fd_gradient(loss, w.data(), dw.data(), w.size(), "linear weight");
}

TEST(GroupedLinear, FastMatchesReferenceWithEmptyGroups) {
  int64_t I = 24, O = 40;
  std::vector<int64_t> offsets = {0, 5, 5, 37, 38, 38, 70};  // groups 1 and 4 are empty
  int64_t G = static_cast<int64_t>(offsets.size()) - 1, M = offsets.back();
  auto inp = randn(M * I, 1), dout = randn(M * O, 2);
  std::vector<std::vector<float>> w, dw;
  std::vector<std::vector<double>> wd, dwd;
  for (int64_t g = 0; g < G; ++g) {
    w.push_back(randn(O * I, 10 + g, 0.2f));
    dw.push_back(randn(O * I, 20 + g));
    wd.push_back(cast<double>(w.back()));
    dwd.push_back(cast<double>(dw.back()));
  }
  std::vector<const float*> wp;
  std::vector<float*> dwp;
  std::vector<const double*> wdp;
  std::vector<double*> dwdp;
  for (int64_t g = 0; g < G; ++g) {
    wp.push_back(w[g].data()), dwp.push_back(dw[g].data());
    wdp.push_back(wd[g].data()), dwdp.push_back(dwd[g].data());
  }
  auto di = cast<double>(inp), ddo = cast<double>(dout);
  std::vector<float> out(M * O), dinp(M * I);
  std::vector<double> want(M * O), want_dinp(M * I);
  grouped_linear_forward(out.data(), inp.data(), wp.data(), offsets.data(), G, I, O);
  grouped_linear_forward_ref(want.data(), di.data(), wdp.data(), offsets.data(), G, I, O);
  SY_EXPECT_CLOSE(out.data(), want.data(), M * O, Tol::f32);
  grouped_linear_backward(dinp.data(), dwp.data(), dout.data(), inp.data(), wp.data(), offsets.data(), G, I, O);
  grouped_linear_backward_ref(want_dinp.data(), dwdp.data(), ddo.data(), di.data(), wdp.data(), offsets.data(), G, I, O);
  SY_EXPECT_CLOSE(dinp.data(), want_dinp.data(), M * I, Tol::f32);
  for (int64_t g = 0; g < G; ++g) SY_EXPECT_CLOSE(dw[g].data(), dwd[g].data(), O * I, Tol::f32);
}

}  // namespace
}  // namespace sy
