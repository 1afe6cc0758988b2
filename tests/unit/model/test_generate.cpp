// Generation: logits with the KV cache equal a full recomputation of the
// whole sequence by the training forward (Transformer) at every position;
// the sampler's filters and its seed.
#include <array>
#include <set>

#include "infer/decoder.h"
#include "model/transformer.h"
#include "testing.h"

namespace sy {
namespace {

ModelConfig gen_config(int64_t heads, int64_t kv_heads, bool tied) {
  ModelConfig m;
  m.vocab_size = 41;
  m.seq_len = 70;  // crosses the 64-row attention tile of the full recomputation
  m.d_model = 32;
  m.n_layers = 3;
  m.n_heads = heads;
  m.n_kv_heads = kv_heads;
  m.dense_layers = 1;
  m.dense_hidden = 48;
  m.tie_embeddings = tied;
  m.init_std = 0.2;
  m.moe.experts = 4;
  m.moe.top_k = 2;
  m.moe.expert_hidden = 16;
  m.moe.shared_experts = 1;
  m.moe.capacity_factor = 1.0;  // training drops; generation must not (the reference runs dropless too)
  return m;
}

// Logits of the training forward over the whole sequence, dropless.
std::vector<float> full_logits(ModelConfig m, const std::vector<float>& params, const std::vector<float>& bias,
                               const std::vector<int32_t>& ids) {
  m.seq_len = static_cast<int64_t>(ids.size());
  m.moe.capacity_factor = 0;
  Transformer t(m, 1);
  t.forward(params.data(), bias.data(), ids.data(), ids.data(), false);
  return {t.logits(), t.logits() + ids.size() * static_cast<size_t>(m.vocab_size)};
}

TEST(Generate, CachedLogitsEqualFullRecomputation) {
  for (auto [H, Hkv, tied] : std::vector<std::array<int64_t, 3>>{{4, 4, 0}, {4, 2, 1}, {4, 1, 0}}) {
    SCOPED_TRACE(::testing::Message() << "H " << H << " Hkv " << Hkv << " tied " << tied);
    ModelConfig m = gen_config(H, Hkv, tied != 0);
    ParamLayout layout(m);
    std::vector<float> params(static_cast<size_t>(layout.total()));
    init_params(params.data(), layout, 11);
    std::vector<float> bias = test::randn(m.moe_layers() * m.moe.experts, 12, 0.1f);
    auto ids = test::rand_ints(static_cast<size_t>(m.seq_len), 13, static_cast<int32_t>(m.vocab_size));
    const std::vector<float> want = full_logits(m, params, bias, ids);
    const int64_t V = m.vocab_size;
    // Prefill 5 tokens, then chunks of 1, 3 and 1... up to the end.
    Decoder dec(m, params, bias, m.seq_len);
    std::vector<float> got;
    int64_t pos = 0;
    for (int64_t chunk : {5, 1, 1, 3, 1, 59}) {
      const float* lg = dec.extend(ids.data() + pos, chunk);
      got.insert(got.end(), lg, lg + chunk * V);
      pos += chunk;
    }
    ASSERT_EQ(pos, m.seq_len);
    ASSERT_EQ(dec.position(), m.seq_len);
    for (int64_t p = 0; p < m.seq_len; ++p) {
      SCOPED_TRACE(::testing::Message() << "position " << p);
      SY_EXPECT_CLOSE(got.data() + p * V, want.data() + p * V, static_cast<size_t>(V), test::Tol::f32_long);
    }
    // GQA: the cache holds Hkv heads per layer.
    EXPECT_EQ(dec.cache_bytes_per_token(), 2 * m.n_layers * Hkv * m.head_size() * 4);
    // The cache is full: one more token is an error naming the context.
    EXPECT_THROW(dec.extend(ids.data(), 1), Error);
    // Reset starts over and reproduces the first logits exactly.
    dec.reset();
    const float* again = dec.extend(ids.data(), 5);
    for (int64_t i = 0; i < 5 * V; ++i) ASSERT_EQ(again[i], got[static_cast<size_t>(i)]);
  }
}

TEST(Generate, OutOfRangeTokenIsAnError) {
  ModelConfig m = gen_config(4, 2, false);
  ParamLayout layout(m);
  std::vector<float> params(static_cast<size_t>(layout.total()));
  init_params(params.data(), layout, 1);
  Decoder dec(m, params, {}, 8);
  int32_t bad = static_cast<int32_t>(m.vocab_size);
  try {
    dec.extend(&bad, 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
  }
}

TEST(Sampling, GreedyIsArgmaxAndTemperatureZero) {
  std::vector<float> logits = {0.1f, 2.5f, -1.f, 2.5f, 0.f};
  SamplingOptions o;
  o.temperature = 0;
  EXPECT_EQ(sample_token(logits.data(), 5, o, 0), 1);  // ties go to the lower id
  for (int64_t pos = 0; pos < 50; ++pos) EXPECT_EQ(sample_token(logits.data(), 5, o, pos), 1);
}

TEST(Sampling, TopKAndTopPRestrictTheCandidates) {
  const int64_t V = 10;
  std::vector<float> logits(V);
  for (int64_t v = 0; v < V; ++v) logits[v] = static_cast<float>(v) * 0.3f;  // 9 most likely
  SamplingOptions o;
  o.temperature = 1.0;
  o.top_k = 3;
  std::set<int32_t> seen;
  for (int64_t pos = 0; pos < 2000; ++pos) seen.insert(sample_token(logits.data(), V, o, pos));
  EXPECT_EQ(seen, (std::set<int32_t>{7, 8, 9}));
  // top_p: probabilities of 9, 8, 7, ... are 0.273, 0.202, 0.150 (cumulative
  // 0.273, 0.475, 0.625): 0.4 needs {9, 8}; 0.48 needs 7 too.
  o.top_k = 0;
  o.top_p = 0.4;
  seen.clear();
  for (int64_t pos = 0; pos < 2000; ++pos) seen.insert(sample_token(logits.data(), V, o, pos));
  EXPECT_EQ(seen, (std::set<int32_t>{8, 9}));
  o.top_p = 0.48;
  seen.clear();
  for (int64_t pos = 0; pos < 2000; ++pos) seen.insert(sample_token(logits.data(), V, o, pos));
  EXPECT_EQ(seen, (std::set<int32_t>{7, 8, 9}));
}

TEST(Sampling, FrequenciesFollowTheTemperedSoftmax) {
  std::vector<float> logits = {1.f, 0.f, -1.f};
  SamplingOptions o;
  o.temperature = 2.0;
  o.seed = 99;
  std::array<int64_t, 3> count{};
  const int64_t n = 60000;
  for (int64_t pos = 0; pos < n; ++pos) ++count[static_cast<size_t>(sample_token(logits.data(), 3, o, pos))];
  double z = std::exp(0.5) + 1 + std::exp(-0.5);
  std::array<double, 3> want = {std::exp(0.5) / z, 1 / z, std::exp(-0.5) / z};
  for (size_t i = 0; i < 3; ++i)
    EXPECT_NEAR(static_cast<double>(count[i]) / n, want[i], 0.01) << "token " << i;  // ~5 sigma at n = 60000
}

TEST(Sampling, SeedMakesItReproducible) {
  auto logits = test::randn(64, 5);
  SamplingOptions a, b;
  a.seed = b.seed = 7;
  a.top_p = b.top_p = 0.9;
  std::vector<int32_t> x, y, z;
  for (int64_t pos = 0; pos < 200; ++pos) {
    x.push_back(sample_token(logits.data(), 64, a, pos));
    y.push_back(sample_token(logits.data(), 64, b, pos));
  }
  b.seed = 8;
  for (int64_t pos = 0; pos < 200; ++pos) z.push_back(sample_token(logits.data(), 64, b, pos));
  EXPECT_EQ(x, y);
  EXPECT_NE(x, z);
}

TEST(Sampling, NonFiniteLogitIsAnError) {
  std::vector<float> logits = {0.f, NAN, 1.f};
  SamplingOptions o;
  EXPECT_THROW(sample_token(logits.data(), 3, o, 4), Error);
}

}  // namespace
}  // namespace sy
