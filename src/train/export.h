// Exporting a checkpoint's weights for other frameworks.
#pragma once

#include <string>

#include "ckpt/reader.h"

namespace sy {

// Writes out_dir/model.safetensors (float32) and out_dir/config.json with
// Hugging Face Mixtral tensor names and configuration:
//   embed.weight                  -> model.embed_tokens.weight
//   layers.L.attn_norm.weight     -> model.layers.L.input_layernorm.weight
//   layers.L.attn.wqkv            -> model.layers.L.self_attn.{q,k,v}_proj.weight (rows split)
//   layers.L.attn.wo              -> model.layers.L.self_attn.o_proj.weight
//   layers.L.ffn_norm.weight      -> model.layers.L.post_attention_layernorm.weight
//   layers.L.moe.router           -> model.layers.L.block_sparse_moe.gate.weight
//   layers.L.moe.experts.E.w13    -> model.layers.L.block_sparse_moe.experts.E.{w1,w3}.weight (gate, up)
//   layers.L.moe.experts.E.w2     -> model.layers.L.block_sparse_moe.experts.E.w2.weight
//   layers.L.moe.shared.w13 / w2  -> model.layers.L.block_sparse_moe.shared_experts.{gate,up,down}_proj.weight
//   layers.L.mlp.w13 / w2 (dense) -> model.layers.L.mlp.{gate,up,down}_proj.weight (Llama names)
//   final_norm.weight             -> model.norm.weight
//   lm_head.weight                -> lm_head.weight (absent when tied)
// RoPE is the same rotate-half convention, so q/k rows need no permutation.
// Mixtral's router (top-k of softmax, renormalised) matches a softmax router
// with moe.renormalize = true and no balancing bias; config.json records
// Switchyard's extras (dense layers, shared experts, score, bias) under "switchyard".
void export_hf_safetensors(ckpt::Reader& r, const std::string& out_dir);

}  // namespace sy
