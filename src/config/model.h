// Model hyper-parameters: plain data, filled from TOML by config/run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/types.h"

namespace sy {

struct MoeConfig {
  // E routed experts per MoE layer. With per-layer counts (layer_experts
  // non-empty) it is their maximum: (moe_layers, E) tables (balancing bias,
  // loads) are padded to it; a layer's own count is ModelConfig::experts_at.
  int64_t experts = 8;
  // One count per MoE layer (moe.experts = [..]), empty when all are equal:
  // a list of equal counts, or a formula giving them, is stored as the integer.
  std::vector<int64_t> layer_experts;
  // Layer-wise allocation formula (resolve_experts turns it into
  // layer_experts and clears these): N_m = experts_min + (experts_max -
  // experts_min) * (m / (M - 1))^experts_gamma over MoE layers m = 0..M-1,
  // rounded to the nearest multiple of experts_round (halves up).
  int64_t experts_min = 0, experts_max = 0, experts_round = 1;  // experts_max = 0: off
  double experts_gamma = 1.0;
  int64_t top_k = 2;             // K experts per token
  // Group-limited routing (DeepSeek-V3 n_group / topk_group): a layer's E
  // experts form expert_groups contiguous groups of E / expert_groups, and a
  // token's K experts come from at most max_nodes_per_token groups (0 = no
  // limit). Part of the model, not of the layout: a group is meant to live on
  // one node (ep rank blocks), but the math is the same on any layout.
  int64_t expert_groups = 1;
  int64_t max_nodes_per_token = 0;
  RouterGroups router_groups() const { return {expert_groups, max_nodes_per_token}; }
  int64_t expert_hidden = 256;   // F, hidden width of each routed expert
  int64_t shared_experts = 0;    // always-active experts of width F (DeepSeek-V3)
  ScoreFn score = ScoreFn::softmax;
  bool renormalize = true;       // divide the chosen scores by their sum
  double aux_loss_coef = 0.01;   // Switch load-balancing loss, 0 = off
  double z_loss_coef = 0.0;      // router z-loss, 0 = off
  double entropy_coef = 0.0;     // mean routing entropy; > 0 sharpens, < 0 spreads
  double bias_update_rate = 0.0; // aux-loss-free balancing bias step, 0 = off
  double capacity_factor = 0.0;  // 0 = dropless
  // Validation (moe-train) and moe-eval: the capacity factor forward passes
  // without training use; 0 = dropless, so a loss does not depend on which
  // sequences share a batch and inference (dropless) reproduces it.
  double eval_capacity_factor = 0.0;
};

struct ModelConfig {
  int64_t vocab_size = 256;   // V
  int64_t seq_len = 128;      // T
  int64_t d_model = 128;      // C
  int64_t n_layers = 4;       // L
  int64_t n_heads = 4;        // H
  int64_t n_kv_heads = 4;     // Hkv, divides H
  int64_t head_dim = 0;       // D; 0 = d_model / n_heads
  int64_t dense_layers = 1;   // the first blocks use a dense SwiGLU FFN
  int64_t dense_hidden = 0;   // 0 = 8/3 * d_model rounded up to a multiple of 64
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  bool tie_embeddings = false;
  double init_std = 0.02;
  MoeConfig moe;

  int64_t head_size() const { return head_dim > 0 ? head_dim : d_model / n_heads; }
  int64_t dense_width() const {
    return dense_hidden > 0 ? dense_hidden : (8 * d_model / 3 + 63) / 64 * 64;
  }
  int64_t qkv_width() const { return (n_heads + 2 * n_kv_heads) * head_size(); }
  bool is_moe_layer(int64_t layer) const { return layer >= dense_layers; }
  int64_t moe_layers() const { return n_layers - dense_layers; }
  // Routed experts of block `layer` (0 for a dense block).
  int64_t experts_at(int64_t layer) const {
    if (!is_moe_layer(layer)) return 0;
    return moe.layer_experts.empty() ? moe.experts : moe.layer_experts[static_cast<size_t>(layer - dense_layers)];
  }
  bool uniform_experts() const { return moe.layer_experts.empty(); }
  int64_t experts_gcd() const;    // gcd of the MoE layers' counts (0 without MoE layers): what ep must divide
  int64_t min_experts() const;    // smallest count of a MoE layer (0 without MoE layers)
  int64_t total_experts() const;  // routed experts of all MoE layers
  // "moe.experts = 8" or "moe.experts = [4, 8, 8]", for messages.
  std::string experts_text() const;
};

// The layer-wise allocation formula (MoeConfig): the counts of `moe_layers`
// MoE layers; the first gets experts_min, the last experts_max (one layer:
// experts_max). Each rounded to the nearest multiple of `round`, halves up.
std::vector<int64_t> allocate_experts(int64_t experts_min, int64_t experts_max, double gamma, int64_t round,
                                      int64_t moe_layers);

// Resolves moe.experts lists and the allocation formula against n_layers /
// dense_layers (a list must have one entry per MoE layer; equal counts
// become the integer). Throws ConfigError naming the key.
void resolve_experts(ModelConfig& m, const std::string& where);

// The FLOP model (one home: the pipeline split, the trainer and moe-launch's
// plan all use it). Forward FLOPs per token, multiply-adds counted as 2:
// block l's projections, attention over (T + 1) / 2 keys on average, and its
// FFN (dense SwiGLU, or router + top-k routed + shared experts); the head.
double layer_flops(const ModelConfig& m, int64_t layer);
double head_flops(const ModelConfig& m);
double forward_flops_per_token(const ModelConfig& m);  // every block and the head

// Per-expert capacity for Ntot tokens; -1 = unlimited (dropless). The MoE
// block drops picks beyond it (moe/capacity.h); the memory estimate sizes
// expert rows with it.
int64_t expert_capacity(double capacity_factor, int64_t Ntot, int64_t E, int64_t K);

// Cross-key checks; throws ConfigError naming the key. `where` names the
// config file for the message.
void validate(const ModelConfig& m, const std::string& where);

}  // namespace sy
