// The decoder-only MoE transformer, forward and backward over one
// micro-batch of B sequences of T tokens, on flat parameter / gradient
// buffers laid out by ParamLayout.
//
//   x0 = embed[inputs]
//   per block l: x_mid = x + attn(norm(x)); x = x_mid + ffn_l(norm(x_mid))
//                (ffn = dense SwiGLU for l < dense_layers, else MoE)
//   logits = lm_head(norm(x_L)); loss = mean cross-entropy
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/arena.h"
#include "kernels/types.h"
#include "model/blocks.h"
#include "config/model.h"
#include "model/dims.h"
#include "model/layout.h"
#include "model/moe_block.h"
#include "model/ops.h"

namespace sy {

struct MicroBatchStats {
  double loss_sum = 0;                      // sum of per-token cross-entropy
  int64_t tokens = 0;
  std::vector<RouterLosses> router;         // per MoE layer (unweighted values)
  std::vector<std::vector<int64_t>> load;   // per MoE layer: (E) picks before dropping
  std::vector<double> margin;               // per MoE layer: router_margin of this rank's tokens
  int64_t dropped = 0, picks = 0;           // routed picks dropped / made
  int64_t group_pairs = 0, group_max = 0;   // moe.expert_groups > 1: MoeActs::group_pairs summed, group_max max over layers
  double flops = 0;                         // forward FLOPs (GEMMs and attention)
  std::vector<int64_t> moe_index;           // per entry of router / load: its MoE layer (0-based among MoE layers)
  std::vector<int64_t> layer_dropped;       // per entry of router / load: routed picks dropped by capacity
};

// The part of the model one Transformer runs (a pipeline stage's chunk):
// blocks [begin, end), the embedding in front if `embed`, final norm, head
// and loss behind if `head`. `slots`: micro-batches whose activations it
// can hold at once. `layout`: the rank's parameter layout when several
// chunks share one buffer (null: the Transformer builds its own).
struct StageRun {
  int64_t begin = 0, end = -1;  // end -1: all layers
  bool embed = true, head = true;
  int64_t slots = 1;
  std::shared_ptr<const ParamLayout> layout;
};

class Transformer {
 public:
  // micro_batch: sequences on this rank. With a multi-rank context the
  // rank holds the routed experts of its expert-parallel rank, and losses
  // and balance terms are normalised over the whole data-parallel micro-batch.
  // fp8_activations: the inputs of FP8 linear layers that only their weight
  // gradient reads are kept in FP8, not FP32 (needs an active FP8 recipe
  // around forward and backward).
  // ops: the backend the model runs on and the FP8 recipe state (Ops::defer
  // is given per backward call).
  Transformer(const ModelConfig& cfg, int64_t micro_batch, MoeContext ctx = {}, bool fp8_activations = false,
              StageRun run = {}, Ops ops = {});
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return *layout_; }
  const StageRun& run() const { return run_; }
  const Dims& dims() const { return d_; }
  // Activation memory held: the fixed arena (sized from the shape), the
  // data-dependent buffers of the MoE layers (rows an expert receives) and
  // the FP8 storage of saved inputs. The last two grow with the first steps.
  struct ActivationMemory {
    size_t arena = 0, expert_rows = 0, fp8 = 0;
    size_t total() const { return arena + expert_rows + fp8; }
  };
  ActivationMemory activation_memory() const;
  size_t activation_bytes() const { return activation_memory().total(); }
  // Row buffers all MoE layers share (transfer both ways, expert backward),
  // which activation_memory() leaves out.
  size_t moe_scratch_bytes() const;

  // The arena a Transformer(cfg, micro_batch, {}, fp8_activations, run)
  // reserves, counted without allocating it: bind() runs on a counter for
  // one and two slots (every slot binds the same sizes), and, when a size
  // would overflow 64 bits, for one and two sequences (sizes are affine in
  // micro_batch). Exact whenever the arena is below 2^53 bytes.
  static double arena_bytes(const ModelConfig& cfg, int64_t micro_batch, bool fp8_activations, StageRun run = {});

  // inputs, targets: (B, T) token ids. expert_bias: (moe_layers, E) or null.
  // With `train`, keeps the activations backward() needs and the gradient
  // of loss_scale * mean CE w.r.t. the logits (logits() then holds it).
  MicroBatchStats forward(const float* params, const float* expert_bias, const int32_t* inputs,
                          const int32_t* targets, bool train, double loss_scale = 1.0) {
    return forward(0, params, expert_bias, inputs, targets, train, loss_scale);
  }
  // The same on activation slot `slot`. Without the embedding the input is
  // what input(slot) holds (inputs may be null); without the head there is
  // no loss (targets may be null) and output(slot) holds the result.
  MicroBatchStats forward(int64_t slot, const float* params, const float* expert_bias, const int32_t* inputs,
                          const int32_t* targets, bool train, double loss_scale = 1.0) {
    return forward_with(slot, params, expert_bias, inputs, targets, train, loss_scale, cfg_.moe.capacity_factor);
  }
  // Evaluation (validation, moe-eval): a forward without training whose MoE
  // layers apply moe.eval_capacity_factor instead of the training capacity
  // (0 = dropless: a token's loss does not depend on the rest of its batch).
  MicroBatchStats evaluate(int64_t slot, const float* params, const float* expert_bias, const int32_t* inputs,
                           const int32_t* targets) {
    return forward_with(slot, params, expert_bias, inputs, targets, false, 1.0, cfg_.moe.eval_capacity_factor);
  }
  float* input(int64_t slot) { return slots_[static_cast<size_t>(slot)].x[static_cast<size_t>(run_.begin)]; }
  const float* output(int64_t slot) const { return slots_[static_cast<size_t>(slot)].x[static_cast<size_t>(run_.end)]; }
  // Without the head, backward reads dL/d output from here; without the
  // embedding it leaves dL/d input here.
  float* grad_output(int64_t slot) { return slots_[static_cast<size_t>(slot)].dres; }
  const float* grad_input(int64_t slot) const { return slots_[static_cast<size_t>(slot)].dres; }

  // Adds d(loss_scale * (mean CE + weighted balance terms)) / d params into
  // grads, for the micro-batch of the last training forward. `ready(key)` is
  // called as soon as the gradients of a bucket are complete (see
  // Bucket::ready: n_layers = head, l = block l, -1 = embedding).
  void backward(const float* params, float* grads, const std::function<void(int64_t)>& ready = {}) {
    backward(0, params, grads, ready);
  }
  // defer: queue the FP32 weight-gradient GEMMs there (zero-bubble schedules).
  void backward(int64_t slot, const float* params, float* grads, const std::function<void(int64_t)>& ready = {},
                WgradQueue* defer = nullptr);

  const float* logits() const { return slots_[0].logits; }  // (N, V) after forward
  const float* losses() const { return slots_[0].losses; }  // (N) per-token CE

 private:
  MicroBatchStats forward_with(int64_t slot, const float* params, const float* expert_bias, const int32_t* inputs,
                               const int32_t* targets, bool train, double loss_scale, double capacity_factor);
  template <class A>
  void bind(A& a);
  struct CountOnly {};
  // Members and slots, no layout and no arena: for arena_bytes().
  Transformer(CountOnly, const ModelConfig& cfg, int64_t micro_batch, bool fp8_activations, StageRun run);

  // What one micro-batch in flight holds.
  struct Slot {
    std::vector<BlockActs> layers;   // (L), bound for [begin, end)
    std::vector<float*> x;           // (L + 1) residual stream (N, C) entering each block / leaving the last
    float* hf = nullptr;             // (N, C) final_norm(x_L)                  (head)
    float* rstdf = nullptr;          // (N)
    float* logits = nullptr;         // (N, V); after a training forward, the loss gradient
    float* losses = nullptr;         // (N)
    float* dres = nullptr;           // (N, C) gradient of the residual stream
    int32_t* tokens = nullptr;       // (N) inputs of the last forward        (embedding)
    int32_t* targets = nullptr;      // (N) targets of the last forward, in the backend's memory (head)
    double loss_scale = 1.0;
    bool have_train_forward = false;
  };

  ModelConfig cfg_;
  Ops ops_;
  MoeContext ctx_;
  StageRun run_;
  std::shared_ptr<const ParamLayout> layout_;
  Dims d_;
  bool fp8_activations_ = false;
  MoeScratch moe_scratch_;
  Arena arena_;
  std::vector<Slot> slots_;
  Fp8Staging staging_;      // FP8 activation storage: FP32 values while forward needs them
  float* rope_cos_;         // (T, D/2)
  float* rope_sin_;
  std::vector<float> host_losses_;  // (N) the per-token losses copied to the host
  Scratch scratch_;
};

}  // namespace sy
