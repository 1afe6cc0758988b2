#include "infer/eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/check.h"

namespace sy {

double EvalStats::perplexity() const { return std::exp(loss()); }

std::vector<double> EvalStats::load_fraction(size_t m) const {
  int64_t sum = 0;
  for (int64_t c : load[m]) sum += c;
  std::vector<double> f(load[m].size(), 0.0);
  for (size_t e = 0; e < f.size(); ++e) f[e] = sum > 0 ? static_cast<double>(load[m][e]) / static_cast<double>(sum) : 0.0;
  return f;
}

namespace {
ModelConfig with_eval_capacity(ModelConfig m, double capacity_factor) {
  SY_CONFIG_CHECK(std::isfinite(capacity_factor) && capacity_factor >= 0,
                  "the evaluation capacity factor must be finite and >= 0 (0 = dropless), got {}", capacity_factor);
  m.moe.eval_capacity_factor = capacity_factor;
  return m;
}
}  // namespace

Evaluator::Evaluator(ModelConfig cfg, std::vector<float> params, std::vector<float> bias, int64_t batch,
                     double capacity_factor, Ops ops)
    : cfg_(with_eval_capacity(std::move(cfg), capacity_factor)), params_(params.size()), bias_(std::move(bias)) {
  std::copy(params.begin(), params.end(), params_.data());
  params = {};
  SY_CONFIG_CHECK(batch >= 1, "the evaluation batch must hold at least 1 sequence, got {}", batch);
  on_device_ = ops.b().device() != Device::cpu;
  MoeContext ctx;
  if (on_device_) ctx.dispatch = make_local_dispatcher(ops.b().allocator());  // the rows in the device's memory
  model_ = std::make_unique<Transformer>(cfg_, batch, ctx, false, StageRun{}, ops);
  SY_CHECK(static_cast<int64_t>(params_.size()) == model_->layout().total(),
           "evaluation: {} weights given, the model needs {}", params_.size(), model_->layout().total());
  const int64_t L = cfg_.moe_layers(), E = cfg_.moe.experts;
  if (bias_.empty()) bias_.assign(static_cast<size_t>(L * E), 0.f);
  SY_CHECK(static_cast<int64_t>(bias_.size()) == L * E, "evaluation: expert bias has {} values, the model needs {} "
           "(moe layers x experts)", bias_.size(), L * E);
  if (on_device_) {
    const Backend& be = ops.b();
    be.copy(dparams_.ensure(params_.size(), be.allocator()), params_.data(), params_.size() * sizeof(float), ops.stream);
    be.copy(dbias_.ensure(bias_.size(), be.allocator()), bias_.data(), bias_.size() * sizeof(float), ops.stream);
    be.synchronize(ops.stream);
    params_ = FloatBuffer();  // the host copy goes
  }
  for (int64_t m = 0; m < L; ++m) {
    stats_.moe_layer.push_back(cfg_.dense_layers + m);
    // Each layer's own count (moe.experts may be per layer); the bias rows are padded to the largest.
    stats_.load.emplace_back(static_cast<size_t>(cfg_.experts_at(cfg_.dense_layers + m)), 0);
  }
  stats_.dropped.assign(static_cast<size_t>(L), 0);
  stats_.picks.assign(static_cast<size_t>(L), 0);
}

void Evaluator::add(const int32_t* inputs, const int32_t* targets) {
  const auto t0 = std::chrono::steady_clock::now();
  MicroBatchStats mb = on_device_ ? model_->evaluate(0, dparams_.data(), dbias_.data(), inputs, targets)
                                  : model_->evaluate(0, params_.data(), bias_.data(), inputs, targets);
  stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stats_.loss_sum += mb.loss_sum;
  stats_.tokens += mb.tokens;
  stats_.batches += 1;
  const int64_t picks_per_layer = model_->dims().N * cfg_.moe.top_k;
  for (size_t i = 0; i < mb.load.size(); ++i) {
    const size_t m = static_cast<size_t>(mb.moe_index[i]);
    SY_CHECK(mb.load[i].size() == stats_.load[m].size(), "evaluation: layer {} reported {} expert loads, it has {} "
             "experts", stats_.moe_layer[m], mb.load[i].size(), stats_.load[m].size());
    for (size_t e = 0; e < mb.load[i].size(); ++e) stats_.load[m][e] += mb.load[i][e];
    stats_.dropped[m] += mb.layer_dropped[i];
    stats_.picks[m] += picks_per_layer;
  }
}

}  // namespace sy
