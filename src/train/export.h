// Exporting a checkpoint's weights for other frameworks: out_dir/
// model.safetensors (float32, the FP32 master weights) and out_dir/config.json.
//
// Two formats. Attention is the same in both and uses Llama's names:
// Switchyard's attention is multi-head / grouped-query attention with RoPE
// in the rotate-half convention (pairs (i, i + head_dim/2)), so q/k rows
// need no permutation. It is not DeepSeek's multi-head latent attention.
//   embed.weight                  -> model.embed_tokens.weight
//   layers.L.attn_norm.weight     -> model.layers.L.input_layernorm.weight
//   layers.L.attn.wqkv            -> model.layers.L.self_attn.{q,k,v}_proj.weight (rows split)
//   layers.L.attn.wo              -> model.layers.L.self_attn.o_proj.weight
//   layers.L.ffn_norm.weight      -> model.layers.L.post_attention_layernorm.weight
//   final_norm.weight             -> model.norm.weight
//   lm_head.weight                -> lm_head.weight (absent when tied)
//
// mixtral (alias: safetensors): Hugging Face Mixtral, `MixtralForCausalLM`.
//   layers.L.moe.router           -> model.layers.L.block_sparse_moe.gate.weight
//   layers.L.moe.experts.E.w13    -> model.layers.L.block_sparse_moe.experts.E.{w1,w3}.weight (gate, up)
//   layers.L.moe.experts.E.w2     -> model.layers.L.block_sparse_moe.experts.E.w2.weight
//   Mixtral routes by top-k of a softmax, renormalised, without a bias, and
//   every block is MoE. A model that differs (dense layers, shared experts,
//   sigmoid scores, moe.renormalize = false, a balancing bias) would be
//   misread silently by a Mixtral loader, so it is refused (ConfigError
//   naming every such feature and its key).
//
// deepseek-v3: DeepSeek-V3's MoE tensor names and config.json keys
// (first_k_dense_replace, n_routed_experts, n_shared_experts,
// num_experts_per_tok, scoring_func, norm_topk_prob, moe_intermediate_size,
// intermediate_size, routed_scaling_factor = 1, n_group = moe.expert_groups,
// topk_group = moe.max_nodes_per_token (n_group when 0: no limit),
// topk_method = "noaux_tc") for every Switchyard model:
//   layers.L.mlp.w13 / w2 (dense) -> model.layers.L.mlp.{gate,up,down}_proj.weight
//   layers.L.moe.router           -> model.layers.L.mlp.gate.weight
//   balancing bias (manifest)     -> model.layers.L.mlp.gate.e_score_correction_bias
//   layers.L.moe.experts.E.w13/w2 -> model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight
//   layers.L.moe.shared.w13 / w2  -> model.layers.L.mlp.shared_experts.{gate,up,down}_proj.weight
// The router is DeepSeek-V3's: scores = scoring_func(logits) (softmax over
// the experts or an element-wise sigmoid); the K experts with the largest
// score + e_score_correction_bias are chosen (the bias only chooses); their
// weights are the scores themselves, divided by their sum when
// norm_topk_prob. Shared experts (width n_shared_experts x
// moe_intermediate_size) add to every token. Because the attention is not
// MLA, config.json does not claim DeepseekV3ForCausalLM (a stock loader
// would misread it): `architectures` is ["SwitchyardMoeForCausalLM"],
// `model_type` "switchyard_moe", and `attention_type` says
// "gqa_rope_rotate_half (llama names; not MLA)". A loader that combines
// Llama's attention with DeepSeek-V3's MoE block reads it exactly; the
// test (tests/ckpt, test_export_deepseek_v3) does that in plain Python.
//
// Both formats' config.json carry "switchyard": {export_format, step,
// software_version, bias_update_rate, config (the run's whole TOML)}, which
// moe-ckpt import (train/import.h) uses for what HF keys do not say.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ckpt/reader.h"
#include "config/model.h"

namespace sy {

enum class ExportFormat { mixtral, deepseek_v3 };

// "mixtral" or "safetensors" (the former name), "deepseek-v3"; ConfigError otherwise.
ExportFormat parse_export_format(const std::string& name);
const char* export_format_name(ExportFormat f);

// What a Mixtral loader would misread in this model, one entry per feature
// naming its key ("model.dense_layers = 1: dense SwiGLU blocks"); empty if
// the Mixtral format represents it exactly. `bias`: the manifest's balancing bias.
std::vector<std::string> mixtral_incompatibilities(const ModelConfig& m, const std::vector<float>& bias);

// One tensor of an export: its name and shape in the format, and where its
// values come from. The one mapping export and import (train/import.h) share.
struct HfPiece {
  std::string hf;                          // the exported name
  std::vector<int64_t> shape;              // its shape
  const ckpt::TensorEntry* src = nullptr;  // rows of a checkpoint tensor ...
  int64_t row0 = 0;                        // ... from this row on
  const float* values = nullptr;           // or these values: the balancing bias, man.expert_bias + moe_layer * E
};

// The checkpoint's tensors (man.tensors; man.expert_bias for DeepSeek-V3's
// e_score_correction_bias) under the format's names. ConfigError for a
// tensor the format has no name for.
std::vector<HfPiece> hf_pieces(const ckpt::Manifest& man, const ModelConfig& m, ExportFormat format);

struct ExportResult {
  std::string dir, format, architecture;
  int64_t tensors = 0;  // in model.safetensors
  int64_t bytes = 0;    // of model.safetensors
};

// Writes the export into out_dir, which must not exist yet (ConfigError).
// On failure nothing is left behind.
ExportResult export_safetensors(ckpt::Reader& r, const std::string& out_dir, ExportFormat format);

}  // namespace sy
