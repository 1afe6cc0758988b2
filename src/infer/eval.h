// Measuring a model on token batches without training: mean cross-entropy
// (and perplexity), and per MoE layer the routed picks per expert and how
// many of them capacity dropped. The forward is the training model's
// (Transformer::evaluate), so a loss equals what validation computes for
// the same batches; capacity is the given factor (0 = dropless).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "config/model.h"
#include "core/arena.h"
#include "model/ops.h"
#include "model/transformer.h"

namespace sy {

struct EvalStats {
  double loss_sum = 0;   // sum of per-token cross-entropy (in double, batch by batch)
  int64_t tokens = 0, batches = 0;
  std::vector<int64_t> moe_layer;          // (moe layers) model layer index of each MoE layer
  std::vector<std::vector<int64_t>> load;  // (moe layers, E) routed picks per expert, before dropping
  std::vector<int64_t> dropped, picks;     // (moe layers) picks dropped by capacity / made
  double seconds = 0;                      // wall time inside the forward passes

  double loss() const { return tokens > 0 ? loss_sum / static_cast<double>(tokens) : 0.0; }
  double perplexity() const;
  // Share of layer m's picks that went to each expert (sums to 1).
  std::vector<double> load_fraction(size_t m) const;
  double drop_fraction(size_t m) const {
    return picks[m] > 0 ? static_cast<double>(dropped[m]) / static_cast<double>(picks[m]) : 0.0;
  }
};

class Evaluator {
 public:
  // params: the whole model in ParamLayout(cfg) order; bias: (moe_layers, E)
  // or empty. batch: sequences per forward (capacity is decided over one
  // batch, as over the data-parallel micro-batch in training).
  // capacity_factor: the MoE layers' capacity; 0 = dropless.
  Evaluator(ModelConfig cfg, std::vector<float> params, std::vector<float> bias, int64_t batch,
            double capacity_factor, Ops ops = {});
  // inputs, targets: (batch, seq_len) token ids.
  void add(const int32_t* inputs, const int32_t* targets);
  const EvalStats& stats() const { return stats_; }
  const ModelConfig& config() const { return cfg_; }

 private:
  ModelConfig cfg_;
  // Page-aligned like the trainer's parameter buffer: vectorised kernels
  // whose loops split at alignment boundaries then sum in the same order.
  FloatBuffer params_;
  std::vector<float> bias_;
  // A device backend: the weights and the bias in its memory (params_ is then empty).
  GrowBuffer<float> dparams_, dbias_;
  bool on_device_ = false;
  std::unique_ptr<Transformer> model_;
  EvalStats stats_;
};

}  // namespace sy
