#include "kernels/cpu/router.h"
#include "testing.h"

namespace sy {
namespace {

using test::cast;
using test::randn;
using test::Tol;

TEST(Router, ScoresAndTopkMatchReference) {
  for (ScoreFn fn : {ScoreFn::softmax, ScoreFn::sigmoid})
    for (bool renorm : {true, false}) {
      int64_t N = 37, E = 9, K = 3;
      auto logits = randn(N * E, 1, 2.f), bias = randn(E, 2, 0.3f);
      auto ld = cast<double>(logits), bd = cast<double>(bias);
      std::vector<float> s(N * E), p(N * E), g(N * K);
      std::vector<double> sd(N * E), pd(N * E), gd(N * K);
      std::vector<int32_t> idx(N * K), idxd(N * K);
      router_scores(s.data(), p.data(), logits.data(), N, E, fn);
      router_scores_ref(sd.data(), pd.data(), ld.data(), N, E, fn);
      SY_EXPECT_CLOSE(s.data(), sd.data(), N * E, Tol::f32);
      SY_EXPECT_CLOSE(p.data(), pd.data(), N * E, Tol::f32);
      router_topk(idx.data(), g.data(), s.data(), bias.data(), N, E, K, renorm);
      router_topk_ref(idxd.data(), gd.data(), sd.data(), bd.data(), N, E, K, renorm);
      EXPECT_EQ(idx, idxd);
      SY_EXPECT_CLOSE(g.data(), gd.data(), N * K, Tol::f32);
    }
}

TEST(Router, TiesGoToTheLowerExpertAndBiasShiftsChoiceNotGates) {
  int64_t E = 4, K = 2;
  std::vector<float> s = {0.25f, 0.25f, 0.25f, 0.25f};
  std::vector<int32_t> idx(K);
  std::vector<float> g(K);
  router_topk(idx.data(), g.data(), s.data(), nullptr, 1, E, K, false);
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 1}));
  std::vector<float> bias = {0.f, 0.f, 0.1f, 0.2f};
  router_topk(idx.data(), g.data(), s.data(), bias.data(), 1, E, K, false);
  EXPECT_EQ(idx, (std::vector<int32_t>{3, 2}));
  EXPECT_EQ(g, (std::vector<float>{0.25f, 0.25f}));  // gates are unbiased scores
}

TEST(Router, MarginIsTheGapBetweenTheLastChosenAndTheBestUnchosen) {
  // Token 0: biased values 0.5, 0.3, 0.2, 0.1 -> top-2 {0, 1}, margin 0.3 - 0.2.
  // Token 1: 0.25 + bias {0, 0, 0.1, 0.2} -> {3, 2}, margin 0.35 - 0.25.
  int64_t E = 4, K = 2;
  std::vector<float> s = {0.5f, 0.3f, 0.2f, 0.1f, 0.25f, 0.25f, 0.25f, 0.25f};
  std::vector<float> bias = {0.f, 0.f, 0.1f, 0.2f}, g(2 * K);
  std::vector<int32_t> idx(2 * K);
  router_topk(idx.data(), g.data(), s.data(), nullptr, 1, E, K, false);
  EXPECT_NEAR(router_margin(idx.data(), s.data(), nullptr, 1, E, K), 0.1, 1e-7);
  router_topk(idx.data() + K, g.data() + K, s.data() + E, bias.data(), 1, E, K, false);
  EXPECT_NEAR(router_margin(idx.data() + K, s.data() + E, bias.data(), 1, E, K), 0.1, 1e-7);
  // Both tokens with the bias: token 0's values 0.5, 0.3, 0.3, 0.3 tie at the cut -> margin 0.
  router_topk(idx.data(), g.data(), s.data(), bias.data(), 2, E, K, false);
  EXPECT_EQ(router_margin(idx.data(), s.data(), bias.data(), 2, E, K), 0.0);
  // Every expert chosen: no decision, no margin.
  std::vector<int32_t> all = {0, 1, 2, 3};
  EXPECT_TRUE(std::isinf(router_margin(all.data(), s.data(), nullptr, 1, E, E)));
  // Many tokens (several parallel chunks): the minimum over all of them.
  int64_t N = 1000, E2 = 8, K2 = 2;
  auto sc = randn(N * E2, 3, 1.f);
  std::vector<int32_t> id(N * K2);
  std::vector<float> gg(N * K2);
  router_topk(id.data(), gg.data(), sc.data(), nullptr, N, E2, K2, false);
  double want = 1e30;
  for (int64_t t = 0; t < N; ++t) {
    std::vector<float> v(sc.begin() + t * E2, sc.begin() + (t + 1) * E2);
    std::sort(v.begin(), v.end(), std::greater<float>());
    want = std::min(want, static_cast<double>(v[K2 - 1]) - static_cast<double>(v[K2]));
  }
  EXPECT_EQ(router_margin(id.data(), sc.data(), nullptr, N, E2, K2), want);
}

TEST(Router, BackwardIsGradientOfObjective) {
  // Analytic float backward vs central differences of the double reference
  // objective (gate chain + aux + z + entropy), for both score functions.
  for (ScoreFn fn : {ScoreFn::softmax, ScoreFn::sigmoid})
    for (bool renorm : {true, false}) {
      int64_t N = 11, E = 6, K = 2;
      auto logits = randn(N * E, 3, 1.5f), dgates = randn(N * K, 4);
      RouterCoefs coefs{0.7f, 0.3f, 0.2f};
      std::vector<float> s(N * E), p(N * E), g(N * K), dl(N * E);
      std::vector<int32_t> idx(N * K);
      router_scores(s.data(), p.data(), logits.data(), N, E, fn);
      router_topk(idx.data(), g.data(), s.data(), nullptr, N, E, K, renorm);
      RouterSums sums(E);
      router_sums(sums, idx.data(), logits.data(), p.data(), N, E, K);
      router_backward(dl.data(), dgates.data(), idx.data(), logits.data(), s.data(), p.data(), sums,
                      N, N, E, K, fn, renorm, coefs);
      auto ld = cast<double>(logits), dgd = cast<double>(dgates);
      auto obj = [&] {
        return router_objective_ref(ld.data(), dgd.data(), idx.data(), sums.counts, N, E, K, fn,
                                    renorm, coefs);
      };
      // The selection is held fixed (idx), as it is piecewise constant.
      auto dld = cast<double>(dl);
      test::expect_fd_gradient(obj, ld.data(), dld.data(), ld.size(), "router logits", 1e-6, 2e-6);
    }
}

TEST(Router, LossValuesMatchDefinitions) {
  // Perfectly balanced routing with uniform probabilities: aux = 1, entropy = log E.
  int64_t N = 8, E = 4, K = 2;
  std::vector<float> logits(N * E, 0.f), s(N * E), p(N * E), g(N * K);
  std::vector<int32_t> idx(N * K);
  router_scores(s.data(), p.data(), logits.data(), N, E, ScoreFn::softmax);
  for (int64_t t = 0; t < N; ++t) idx[t * K] = int32_t(t % E), idx[t * K + 1] = int32_t((t + 1) % E);
  RouterSums sums(E);
  router_sums(sums, idx.data(), logits.data(), p.data(), N, E, K);
  RouterLosses l = router_losses(sums, N, E, K);
  EXPECT_NEAR(l.aux, 1.0, 1e-12);
  EXPECT_NEAR(l.entropy, std::log(4.0), 1e-6);
  EXPECT_NEAR(l.z, std::log(4.0) * std::log(4.0), 1e-6);
}

}  // namespace
}  // namespace sy
