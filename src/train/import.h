// Importing Hugging Face safetensors (moe-ckpt import): the two formats
// moe-ckpt export writes (train/export.h), read back into a Switchyard
// checkpoint. The tensor names come from the exporter's own mapping
// (hf_pieces), so export then import is the identity.
//
// DIR holds config.json and model.safetensors, or shards named by
// model.safetensors.index.json ({"weight_map": {tensor: file}}). Tensors may
// be F32, BF16 or F16 (widened exactly to the FP32 master weights).
//
// The model comes from config.json:
//   Mixtral-style (num_local_experts, or architectures MixtralForCausalLM):
//     every block MoE, softmax top-k renormalised, no shared experts;
//   DeepSeek-V3-style (n_routed_experts; what the exporter writes as
//     SwitchyardMoeForCausalLM): first_k_dense_replace dense blocks,
//     n_shared_experts, scoring_func, norm_topk_prob and the selection bias
//     e_score_correction_bias (topk_method noaux_tc; "greedy" has none).
// The switchyard metadata the exporter adds ("switchyard": {"config": the
// run's TOML, ...}) supplies what HF keys do not (seq_len when it differs,
// training settings); without it the built-in default config is the base
// and max_position_embeddings becomes model.seq_len. The HF keys always win
// for the model's shape and math.
//
// Refused, naming the key or tensor (ConfigError): an unknown config.json
// key (it might change the math), a key whose value the model cannot
// represent (sliding_window, rope_scaling, MLA ranks, hidden_act other than
// silu, attention_bias / mlp_bias true, routed_scaling_factor != 1, grouped
// routing), a missing, extra, misshapen or bias tensor, a malformed or
// truncated safetensors file.
#pragma once

#include <cstdint>
#include <string>

namespace sy {

struct ImportResult {
  std::string out, format;   // "mixtral" or "deepseek-v3"
  int64_t tensors = 0;       // HF tensors read
  int64_t files = 0;         // safetensors files read
  bool metadata = false;     // the switchyard config came from config.json
};

// Writes a consolidated checkpoint file `out` (must not exist): weights,
// zero AdamW moments, step 0, a new run identity.
ImportResult import_safetensors(const std::string& dir, const std::string& out);

}  // namespace sy
