#include "train/export.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "ckpt/safetensors.h"
#include "core/check.h"
#include "train/config.h"

namespace sy {

namespace fs = std::filesystem;

namespace {
struct Piece {
  std::string hf;              // Hugging Face name
  std::vector<int64_t> shape;  // its shape
  const ckpt::TensorEntry* src;
  int64_t row0;                // first source row
};
}  // namespace

void export_hf_safetensors(ckpt::Reader& r, const std::string& out_dir) {
  RunConfig cfg = parse_config(r.manifest().config_toml, r.path() + " (its config)");
  const ModelConfig& m = cfg.model;
  const int64_t C = m.d_model, D = m.head_size(), F = m.moe.expert_hidden, Fd = m.dense_width();
  std::vector<Piece> pieces;
  auto split = [&](const ckpt::TensorEntry& t, const std::vector<std::pair<std::string, int64_t>>& parts) {
    int64_t row = 0;
    for (const auto& [name, rows] : parts) {
      pieces.push_back({name, {rows, t.shape.back()}, &t, row});
      row += rows;
    }
  };
  static const std::regex layer_re(R"(layers\.(\d+)\.(.*))"), expert_re(R"(moe\.experts\.(\d+)\.(w13|w2))");
  for (const ckpt::TensorEntry& t : r.manifest().tensors) {
    std::smatch lm, em;
    if (t.name == "embed.weight") {
      pieces.push_back({"model.embed_tokens.weight", t.shape, &t, 0});
    } else if (t.name == "final_norm.weight") {
      pieces.push_back({"model.norm.weight", t.shape, &t, 0});
    } else if (t.name == "lm_head.weight") {
      pieces.push_back({"lm_head.weight", t.shape, &t, 0});
    } else if (std::regex_match(t.name, lm, layer_re)) {
      const std::string pre = "model.layers." + lm[1].str() + ".", rest = lm[2].str();
      const std::string moe = pre + "block_sparse_moe.";
      if (rest == "attn_norm.weight") {
        pieces.push_back({pre + "input_layernorm.weight", t.shape, &t, 0});
      } else if (rest == "ffn_norm.weight") {
        pieces.push_back({pre + "post_attention_layernorm.weight", t.shape, &t, 0});
      } else if (rest == "attn.wqkv") {
        split(t, {{pre + "self_attn.q_proj.weight", m.n_heads * D},
                  {pre + "self_attn.k_proj.weight", m.n_kv_heads * D},
                  {pre + "self_attn.v_proj.weight", m.n_kv_heads * D}});
      } else if (rest == "attn.wo") {
        pieces.push_back({pre + "self_attn.o_proj.weight", t.shape, &t, 0});
      } else if (rest == "mlp.w13") {
        split(t, {{pre + "mlp.gate_proj.weight", Fd}, {pre + "mlp.up_proj.weight", Fd}});
      } else if (rest == "mlp.w2") {
        pieces.push_back({pre + "mlp.down_proj.weight", t.shape, &t, 0});
      } else if (rest == "moe.router") {
        pieces.push_back({moe + "gate.weight", t.shape, &t, 0});
      } else if (rest == "moe.shared.w13") {
        int64_t S = t.shape[0] / 2;
        split(t, {{moe + "shared_experts.gate_proj.weight", S}, {moe + "shared_experts.up_proj.weight", S}});
      } else if (rest == "moe.shared.w2") {
        pieces.push_back({moe + "shared_experts.down_proj.weight", t.shape, &t, 0});
      } else if (std::regex_match(rest, em, expert_re)) {
        const std::string ex = moe + "experts." + em[1].str() + ".";
        if (em[2] == "w13")
          split(t, {{ex + "w1.weight", F}, {ex + "w3.weight", F}});
        else
          pieces.push_back({ex + "w2.weight", t.shape, &t, 0});
      } else {
        SY_FAIL("export: no Hugging Face name for tensor '{}'", t.name);
      }
    } else {
      SY_FAIL("export: no Hugging Face name for tensor '{}'", t.name);
    }
  }
  fs::create_directories(out_dir);
  std::vector<ckpt::SafeTensor> list;
  for (const Piece& p : pieces) list.push_back({p.hf, p.shape});
  const ckpt::TensorEntry* cached = nullptr;
  std::vector<float> data;
  ckpt::write_safetensors(
      (fs::path(out_dir) / "model.safetensors").string(), list,
      [&](size_t i, float* out) {
        const Piece& p = pieces[i];
        if (p.src != cached) data = r.read_all("params", *p.src), cached = p.src;
        int64_t n = 1;
        for (int64_t d : p.shape) n *= d;
        int64_t cols = p.src->shape.size() == 2 ? p.src->shape[1] : 1;
        std::copy_n(data.begin() + p.row0 * cols, n, out);
      },
      {{"format", "pt"}, {"source", "switchyard"}, {"step", std::to_string(r.manifest().step)}});

  nlohmann::ordered_json j;
  j["architectures"] = {"MixtralForCausalLM"};
  j["model_type"] = "mixtral";
  j["vocab_size"] = m.vocab_size;
  j["hidden_size"] = C;
  j["intermediate_size"] = F;
  j["num_hidden_layers"] = m.n_layers;
  j["num_attention_heads"] = m.n_heads;
  j["num_key_value_heads"] = m.n_kv_heads;
  j["head_dim"] = D;
  j["max_position_embeddings"] = m.seq_len;
  j["rms_norm_eps"] = m.norm_eps;
  j["rope_theta"] = m.rope_theta;
  j["num_local_experts"] = m.moe.experts;
  j["num_experts_per_tok"] = m.moe.top_k;
  j["router_aux_loss_coef"] = m.moe.aux_loss_coef;
  j["tie_word_embeddings"] = m.tie_embeddings;
  j["hidden_act"] = "silu";
  j["torch_dtype"] = "float32";
  j["switchyard"] = {{"dense_layers", m.dense_layers},
                     {"dense_intermediate_size", Fd},
                     {"shared_experts", m.moe.shared_experts},
                     {"router_score", m.moe.score == ScoreFn::softmax ? "softmax" : "sigmoid"},
                     {"renormalize", m.moe.renormalize},
                     {"expert_bias", r.manifest().expert_bias},
                     {"step", r.manifest().step}};
  std::ofstream(fs::path(out_dir) / "config.json") << j.dump(2) << "\n";
}

}  // namespace sy
