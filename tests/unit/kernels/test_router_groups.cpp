// Group-limited routing (DeepSeek-V3's node-limited routing): router_topk
// with RouterGroups against the naive reference (router_topk_ref), and
// against the rule's definition checked by brute force on each token.
#include "kernels/cpu/router.h"
#include "testing.h"

namespace sy {
namespace {

using test::randn;

// Distinct groups among a token's K picks.
int64_t groups_spanned(const int32_t* id, int64_t K, int64_t Eg) {
  std::vector<int32_t> g;
  for (int64_t k = 0; k < K; ++k) g.push_back(id[k] / static_cast<int32_t>(Eg));
  std::sort(g.begin(), g.end());
  return std::unique(g.begin(), g.end()) - g.begin();
}

// The rule's definition on one token, by brute force over all groups and
// experts: (a) the picks come from groups whose score (sum of the two largest
// values, or the one value) is beaten by at most M - 1 other groups counted with
// the tie rule (an equal score with a lower index beats), (b) within those
// groups no unpicked expert beats a picked one (same tie rule), (c) gates are
// the unbiased scores of the picks.
void check_definition(const int32_t* id, const float* gate, const float* s, const float* bias, int64_t E, int64_t K,
                      RouterGroups grp, bool renorm) {
  const int64_t G = grp.groups, Eg = E / G;
  auto val = [&](int64_t e) { return s[e] + (bias ? bias[e] : 0.f); };
  std::vector<float> gs(static_cast<size_t>(G));
  for (int64_t g = 0; g < G; ++g) {
    std::vector<float> v;
    for (int64_t e = g * Eg; e < (g + 1) * Eg; ++e) v.push_back(val(e));
    std::sort(v.rbegin(), v.rend());
    gs[static_cast<size_t>(g)] = Eg == 1 ? v[0] : v[0] + v[1];
  }
  auto beats = [](float va, int64_t a, float vb, int64_t b) { return va > vb || (va == vb && a < b); };
  std::vector<bool> kept(static_cast<size_t>(G));
  for (int64_t g = 0; g < G; ++g) {
    int64_t better = 0;
    for (int64_t h = 0; h < G; ++h) better += h != g && beats(gs[size_t(h)], h, gs[size_t(g)], g);
    kept[static_cast<size_t>(g)] = better < grp.limit;
  }
  std::vector<bool> picked(static_cast<size_t>(E));
  double sum = 0;
  for (int64_t k = 0; k < K; ++k) {
    ASSERT_TRUE(kept[static_cast<size_t>(id[k] / Eg)]) << "expert " << id[k] << " of a dropped group";
    picked[static_cast<size_t>(id[k])] = true;
    sum += s[id[k]];
  }
  for (int64_t e = 0; e < E; ++e) {
    if (!kept[static_cast<size_t>(e / Eg)] || picked[static_cast<size_t>(e)]) continue;
    for (int64_t k = 0; k < K; ++k)
      ASSERT_FALSE(beats(val(e), e, val(id[k]), id[k])) << "expert " << e << " beats pick " << id[k];
  }
  for (int64_t k = 0; k < K; ++k)
    EXPECT_NEAR(gate[k], renorm ? s[id[k]] / sum : s[id[k]], 1e-6 * std::abs(gate[k]));  // one float division
  EXPECT_LE(groups_spanned(id, K, Eg), grp.limit);
}

TEST(RouterGroups, MatchReferenceAndDefinitionOverShapes) {
  // (E, G, K): groups of 1, 2, 4, 8 experts; every limit M with K <= M E/G;
  // scores continuous (no ties) and on a grid of 8 levels (many ties, in
  // expert values and in group sums, which are exact on that grid).
  struct Shape { int64_t E, G, K; };
  uint64_t seed = 100;
  int64_t bound = 0, spans = 0;
  for (Shape sh : {Shape{8, 8, 2}, Shape{8, 4, 2}, Shape{16, 4, 2}, Shape{16, 2, 2}, Shape{16, 8, 3},
                   Shape{64, 8, 8}, Shape{64, 4, 8}, Shape{12, 3, 5}})
    for (int64_t M = 1; M <= sh.G; ++M) {
      if (sh.K > M * (sh.E / sh.G)) continue;
      for (bool grid : {false, true})
        for (bool with_bias : {false, true}) {
          const int64_t N = 97, E = sh.E, K = sh.K;
          auto s = randn(N * E, ++seed), bias = randn(E, ++seed, 0.3f);
          for (float& x : s) x = grid ? (std::floor(std::abs(x) * 4.f) + 1.f) / 8.f : std::abs(x) + 1e-3f;  // > 0, as router scores
          for (float& x : bias) x = grid ? std::round(x * 8.f) / 8.f : x;
          const float* b = with_bias ? bias.data() : nullptr;
          const RouterGroups grp{sh.G, M};
          for (bool renorm : {true, false}) {
            std::vector<int32_t> idx(N * K), ref(N * K), plain(N * K);
            std::vector<float> g(N * K), gr(N * K), gp(N * K);
            router_topk(idx.data(), g.data(), s.data(), b, N, E, K, renorm, grp);
            router_topk_ref(ref.data(), gr.data(), s.data(), b, N, E, K, renorm, grp);
            router_topk(plain.data(), gp.data(), s.data(), b, N, E, K, renorm);
            const std::string what = fmt::format("E {} G {} M {} K {} grid {} bias {}", E, sh.G, M, K, grid, with_bias);
            ASSERT_EQ(idx, ref) << what;
            if (!renorm) {
              ASSERT_EQ(g, gr) << what;  // the chosen scores themselves: bit-equal
            }
            // Renormalised: x * (1 / sum) against x / sum, two roundings against one: < 3 ulp.
            for (int64_t i = 0; i < N * K; ++i) ASSERT_NEAR(g[size_t(i)], gr[size_t(i)], 4e-7 * gr[size_t(i)]) << what;
            for (int64_t t = 0; t < N; ++t) {
              check_definition(idx.data() + t * K, g.data() + t * K, s.data() + t * E, b, E, K, grp, renorm);
              if (::testing::Test::HasFatalFailure()) FAIL() << what << " token " << t;
              spans += groups_spanned(plain.data() + t * K, K, E / sh.G) > M;
            }
            if (M == sh.G) {
              EXPECT_EQ(idx, plain) << what << ": a limit of every group is no limit";
            }
            bound += idx != plain;
          }
        }
    }
  // The cases must exercise the limit: unlimited picks that span too many
  // groups, and limited choices that differ from the unlimited ones.
  EXPECT_GT(spans, 1000);
  EXPECT_GT(bound, 50);
}

TEST(RouterGroups, GroupScoreIsTheSumOfTheTopTwoAndTiesGoToTheLowerIndex) {
  // 4 groups of 2, one group per token, K = 1. Group 0 holds the single best
  // expert (0.9 + 0.0 = 0.9) but group 1 scores 0.5 + 0.5 = 1.0: expert 2.
  const int64_t E = 8, K = 1;
  std::vector<float> s = {0.9f, 0.0f, 0.5f, 0.5f, 0.1f, 0.1f, 0.2f, 0.2f};
  std::vector<int32_t> idx(K);
  std::vector<float> g(K);
  router_topk(idx.data(), g.data(), s.data(), nullptr, 1, E, K, false, {4, 1});
  EXPECT_EQ(idx[0], 2);  // the lower of the two equal experts 2, 3
  router_topk(idx.data(), g.data(), s.data(), nullptr, 1, E, K, false);
  EXPECT_EQ(idx[0], 0);  // unlimited: the best expert
  // The bias enters the group scores; gates stay unbiased: group 0 now
  // scores 0.9 + 0.2 = 1.1.
  std::vector<float> bias = {0.f, 0.2f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  router_topk(idx.data(), g.data(), s.data(), bias.data(), 1, E, K, false, {4, 1});
  EXPECT_EQ(idx[0], 0);
  EXPECT_EQ(g[0], 0.9f);
  // Equal group scores (groups 1 and 3 both 1.0 here): the lower group.
  std::vector<float> t = {0.f, 0.f, 0.5f, 0.5f, 0.1f, 0.1f, 0.25f, 0.75f};
  router_topk(idx.data(), g.data(), t.data(), nullptr, 1, E, K, false, {4, 1});
  EXPECT_EQ(idx[0], 2);
  // Two groups allowed, K = 2: groups 1 and 3 kept; the best two of {2, 3, 6, 7}.
  std::vector<int32_t> two(2);
  std::vector<float> g2(2);
  router_topk(two.data(), g2.data(), t.data(), nullptr, 1, E, 2, false, {4, 2});
  EXPECT_EQ(two, (std::vector<int32_t>{7, 2}));
}

TEST(RouterGroups, MarginCoversTheGroupChoice) {
  // 2 groups of 2, one kept, K = 1: group 0 = {0.6, 0.3} (0.9), group 1 =
  // {0.45, 0.44} (0.89). Expert gap in the kept group 0.3, group gap 0.01.
  const int64_t E = 4, K = 1;
  std::vector<float> s = {0.6f, 0.3f, 0.45f, 0.44f};
  std::vector<int32_t> idx(K);
  std::vector<float> g(K);
  router_topk(idx.data(), g.data(), s.data(), nullptr, 1, E, K, false, {2, 1});
  EXPECT_EQ(idx[0], 0);
  EXPECT_NEAR(router_margin(idx.data(), s.data(), nullptr, 1, E, K, {2, 1}), 0.01, 1e-6);  // float sums: ~1e-7 off
  // Unlimited: the gap between 0.6 and 0.45.
  EXPECT_NEAR(router_margin(idx.data(), s.data(), nullptr, 1, E, K), 0.15, 1e-6);
  // The expert gap when it is the smaller: {0.6, 0.59} vs {0.1, 0.1}.
  std::vector<float> u = {0.6f, 0.59f, 0.1f, 0.1f};
  router_topk(idx.data(), g.data(), u.data(), nullptr, 1, E, K, false, {2, 1});
  EXPECT_NEAR(router_margin(idx.data(), u.data(), nullptr, 1, E, K, {2, 1}), 0.01, 1e-6);
}

}  // namespace
}  // namespace sy
