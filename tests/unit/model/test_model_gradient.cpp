// Whole-model gradient checks by finite differences (FP32 model, so
// directional derivatives per tensor rather than single coordinates), with
// every balance term switched on, plus determinism and layout checks.
#include <algorithm>
#include <cmath>
#include <map>

#include "core/rng.h"
#include "model/transformer.h"
#include "testing.h"

namespace sy {
namespace {

ModelConfig tiny_config(ScoreFn score, double capacity_factor, bool tied) {
  ModelConfig m;
  m.vocab_size = 37;
  m.seq_len = 9;
  m.d_model = 16;
  m.n_layers = 3;
  m.n_heads = 4;
  m.n_kv_heads = 2;
  m.dense_layers = 1;
  m.dense_hidden = 24;
  m.tie_embeddings = tied;
  m.init_std = 0.2;  // larger than usual so every path carries signal
  m.moe.experts = 4;
  m.moe.top_k = 2;
  m.moe.expert_hidden = 12;
  m.moe.shared_experts = 1;
  m.moe.score = score;
  m.moe.aux_loss_coef = 0.5;
  m.moe.z_loss_coef = 0.2;
  m.moe.entropy_coef = 0.3;
  m.moe.capacity_factor = capacity_factor;
  return m;
}

struct Objective {
  Transformer model;
  std::vector<int32_t> inputs, targets;
  std::vector<float> bias;
  Objective(const ModelConfig& m, int64_t B) : model(m, B) {
    int64_t N = B * m.seq_len;
    inputs = test::rand_ints(N, 5, static_cast<int32_t>(m.vocab_size));
    targets = test::rand_ints(N, 6, static_cast<int32_t>(m.vocab_size));
    bias = test::randn(m.moe_layers() * m.moe.experts, 7, 0.05f);
  }
  // Total objective: mean CE + weighted balance terms, in double.
  double value(const float* params, MicroBatchStats* out = nullptr) {
    MicroBatchStats st = model.forward(params, bias.data(), inputs.data(), targets.data(), false);
    const MoeConfig& c = model.config().moe;
    double v = st.loss_sum / static_cast<double>(st.tokens);
    for (const RouterLosses& r : st.router)
      v += c.aux_loss_coef * r.aux + c.z_loss_coef * r.z + c.entropy_coef * r.entropy;
    if (out) *out = st;
    return v;
  }
};

class ModelGradient : public ::testing::TestWithParam<std::tuple<ScoreFn, double, bool>> {};

TEST_P(ModelGradient, DirectionalDerivativesMatchFiniteDifferences) {
  auto [score, cf, tied] = GetParam();
  ModelConfig m = tiny_config(score, cf, tied);
  Objective obj(m, 2);
  const ParamLayout& layout = obj.model.layout();
  std::vector<float> params(layout.total()), grads(layout.total(), 0.f);
  init_params(params.data(), layout, 42);
  MicroBatchStats base;
  obj.model.forward(params.data(), obj.bias.data(), obj.inputs.data(), obj.targets.data(), true, 1.0);
  obj.model.backward(params.data(), grads.data());
  obj.value(params.data(), &base);
  if (cf > 0) {
    EXPECT_GT(base.dropped, 0) << "the capacity test case should drop something";
  }

  // Per tensor: along the normalised gradient (catches spurious gradient)
  // and along a random +-1 direction (catches missing gradient). The step
  // moves the objective by ~1e-3; FP32 forward noise is ~1e-7..1e-6 of
  // the objective, which puts ~1e-4 of error into the FD (measured: worst
  // 1.5e-4 over these four variants); we require 1e-3.
  double worst = 0;
  int checked = 0, skipped = 0;
  std::string worst_name;
  for (const ParamInfo& p : layout.params()) {
    if (tied && p.kind == ParamKind::lm_head) continue;
    const int64_t n = p.numel();
    float* w = params.data() + p.offset;
    const float* g = grads.data() + p.offset;
    double gnorm = 0;
    for (int64_t i = 0; i < n; ++i) gnorm += double(g[i]) * g[i];
    gnorm = std::sqrt(gnorm);
    ASSERT_GT(gnorm, 0.0) << p.name << " has an all-zero gradient";
    for (int dir = 0; dir < 2; ++dir) {
      std::vector<double> v(n);
      double vn = 0;
      uint64_t key = stream_key(dir, p.name);
      for (int64_t i = 0; i < n; ++i) {
        v[i] = dir == 0 ? g[i] : ((u64_at(key, i, 0) & 1) ? 1.0 : -1.0);
        vn += v[i] * v[i];
      }
      vn = std::sqrt(vn);
      double gv = 0;
      for (int64_t i = 0; i < n; ++i) gv += (v[i] /= vn) * g[i];
      double h = 1e-3 / gnorm;
      std::vector<float> keep(w, w + n);
      for (int64_t i = 0; i < n; ++i) w[i] = keep[i] + static_cast<float>(h * v[i]);
      MicroBatchStats up_st;
      double up = obj.value(params.data(), &up_st);
      for (int64_t i = 0; i < n; ++i) w[i] = keep[i] - static_cast<float>(h * v[i]);
      MicroBatchStats down_st;
      double down = obj.value(params.data(), &down_st);
      std::copy(keep.begin(), keep.end(), w);
      // A perturbation that changes routing has no derivative to compare.
      if (up_st.load != base.load || down_st.load != base.load || up_st.dropped != base.dropped ||
          down_st.dropped != base.dropped) {
        ++skipped;
        continue;
      }
      ++checked;
      // (Float rounding of h * v is part of the step; measure the real step.)
      double fd = (up - down) / (2 * h);
      double err = std::abs(fd - gv) / gnorm;
      if (err > worst) worst = err, worst_name = p.name + (dir == 0 ? " (along gradient)" : " (random)");
    }
  }
  RecordProperty("worst_relative_error", std::to_string(worst));
  EXPECT_LE(worst, 1e-3) << "worst: " << worst_name;
  EXPECT_LE(skipped, checked / 10) << "too many directions changed the routing";
  std::cout << "  worst FD relative error " << worst << " at " << worst_name << "\n";
}

INSTANTIATE_TEST_SUITE_P(Variants, ModelGradient,
                         ::testing::Values(std::make_tuple(ScoreFn::softmax, 0.0, false),
                                           std::make_tuple(ScoreFn::sigmoid, 0.0, true),
                                           std::make_tuple(ScoreFn::softmax, 0.75, false),
                                           std::make_tuple(ScoreFn::sigmoid, 0.75, false)));

TEST(Model, SameInputsGiveBitwiseSameLossAndGradients) {
  ModelConfig m = tiny_config(ScoreFn::softmax, 0.0, false);
  Objective obj(m, 3);
  const ParamLayout& layout = obj.model.layout();
  std::vector<float> params(layout.total()), g1(layout.total(), 0.f), g2(layout.total(), 0.f);
  init_params(params.data(), layout, 1);
  auto a = obj.model.forward(params.data(), nullptr, obj.inputs.data(), obj.targets.data(), true);
  obj.model.backward(params.data(), g1.data());
  auto b = obj.model.forward(params.data(), nullptr, obj.inputs.data(), obj.targets.data(), true);
  obj.model.backward(params.data(), g2.data());
  EXPECT_EQ(a.loss_sum, b.loss_sum);
  EXPECT_EQ(g1, g2);
}

TEST(Model, BatchRowsAreIndependent) {
  // Sequence b's loss must not depend on the other sequences in the batch.
  ModelConfig m = tiny_config(ScoreFn::softmax, 0.0, false);
  Transformer two(m, 2), one(m, 1);
  std::vector<float> params(two.layout().total());
  init_params(params.data(), two.layout(), 3);
  auto in = test::rand_ints(2 * m.seq_len, 1, 37), tg = test::rand_ints(2 * m.seq_len, 2, 37);
  two.forward(params.data(), nullptr, in.data(), tg.data(), false);
  one.forward(params.data(), nullptr, in.data() + m.seq_len, tg.data() + m.seq_len, false);
  for (int64_t t = 0; t < m.seq_len; ++t)
    EXPECT_NEAR(two.losses()[m.seq_len + t], one.losses()[t], 1e-5);
}

TEST(Model, EvaluateUsesTheEvalCapacity) {
  // Training capacity 1.0 drops picks, and then a sequence's loss depends on the sequences beside it;
  // evaluate() applies moe.eval_capacity_factor (0: dropless), so it does not. 1e-5: the bound
  // BatchRowsAreIndependent uses for the same comparison (other GEMM shapes round differently).
  ModelConfig m = tiny_config(ScoreFn::softmax, 1.0, false);
  ASSERT_EQ(m.moe.eval_capacity_factor, 0.0);  // the default
  Transformer four(m, 4), one(m, 1);
  std::vector<float> params(four.layout().total());
  init_params(params.data(), four.layout(), 3);
  auto in = test::rand_ints(4 * m.seq_len, 1, 37), tg = test::rand_ints(4 * m.seq_len, 2, 37);
  MicroBatchStats trained = four.forward(params.data(), nullptr, in.data(), tg.data(), false);
  EXPECT_GT(trained.dropped, 0);  // capacity 1.0 binds on this batch: the comparison below can fail
  std::vector<float> with_capacity(four.losses(), four.losses() + 4 * m.seq_len);
  MicroBatchStats evaluated = four.evaluate(0, params.data(), nullptr, in.data(), tg.data());
  EXPECT_EQ(evaluated.dropped, 0);
  std::vector<float> dropless(four.losses(), four.losses() + 4 * m.seq_len);
  double moved = 0, apart = 0;
  for (int64_t b = 0; b < 4; ++b) {
    one.evaluate(0, params.data(), nullptr, in.data() + b * m.seq_len, tg.data() + b * m.seq_len);
    for (int64_t t = 0; t < m.seq_len; ++t) {
      const size_t i = static_cast<size_t>(b * m.seq_len + t);
      apart = std::max(apart, static_cast<double>(std::abs(dropless[i] - one.losses()[t])));
      moved = std::max(moved, static_cast<double>(std::abs(with_capacity[i] - dropless[i])));
    }
  }
  EXPECT_LE(apart, 1e-5);
  EXPECT_GT(moved, 1e-3);  // the dropped picks changed some token's loss by far more than round-off
  // With eval_capacity_factor = capacity_factor, evaluate() is the training forward (the old validation).
  m.moe.eval_capacity_factor = 1.0;
  Transformer old(m, 4);
  MicroBatchStats st = old.evaluate(0, params.data(), nullptr, in.data(), tg.data());
  EXPECT_EQ(st.dropped, trained.dropped);
  EXPECT_EQ(st.loss_sum, trained.loss_sum);
}

TEST(Layout, OrderIsLayerMajorWithExpertsContiguous) {
  ModelConfig m = tiny_config(ScoreFn::softmax, 0.0, false);
  ParamLayout layout(m);
  int64_t expect = 0, last_layer = -1;
  for (const ParamInfo& p : layout.params()) {
    EXPECT_EQ(p.offset, expect) << p.name;
    expect += p.numel();
    if (p.layer >= 0) {
      EXPECT_GE(p.layer, last_layer) << p.name;
      last_layer = p.layer;
    }
  }
  EXPECT_EQ(expect, layout.total());
  const BlockOffsets& b = layout.block(2);
  for (int64_t e = 0; e + 1 < m.moe.experts; ++e)  // expert e+1 starts where e ends
    EXPECT_EQ(b.expert_w13[e + 1], b.expert_w2[e] + m.d_model * m.moe.expert_hidden);
  EXPECT_EQ(layout.find("layers.2.moe.experts.3.w2").shape, (Shape{16, 12}));
  EXPECT_THROW(layout.find("layers.9.attn.wqkv"), Error);
}

TEST(Layout, SliceInitEqualsFullInit) {
  ModelConfig m = tiny_config(ScoreFn::softmax, 0.0, false);
  ParamLayout layout(m);
  std::vector<float> full(layout.total());
  init_params(full.data(), layout, 9);
  const ParamInfo& p = layout.find("layers.1.moe.experts.2.w13");
  std::vector<float> slice(50);
  init_param_slice(slice.data(), p, 9, 100, 150);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(slice[i], full[p.offset + 100 + i]);
}

}  // namespace
}  // namespace sy
