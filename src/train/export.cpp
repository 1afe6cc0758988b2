#include "train/export.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "ckpt/safetensors.h"
#include "core/check.h"
#include "config/run.h"

namespace sy {

namespace fs = std::filesystem;

ExportFormat parse_export_format(const std::string& name) {
  if (name == "mixtral" || name == "safetensors") return ExportFormat::mixtral;
  if (name == "deepseek-v3") return ExportFormat::deepseek_v3;
  SY_CONFIG_FAIL("--format {}: not a known export format (mixtral, deepseek-v3; safetensors means mixtral)", name);
}

const char* export_format_name(ExportFormat f) { return f == ExportFormat::mixtral ? "mixtral" : "deepseek-v3"; }

std::vector<std::string> mixtral_incompatibilities(const ModelConfig& m, const std::vector<float>& bias) {
  std::vector<std::string> out;
  if (m.dense_layers > 0)
    out.push_back(fmt::format("model.dense_layers = {}: dense SwiGLU blocks (Mixtral: every block is MoE)",
                              m.dense_layers));
  if (m.moe_layers() == 0) return out;
  if (m.moe.shared_experts > 0)
    out.push_back(fmt::format("moe.shared_experts = {}: always-active shared experts (Mixtral has none)",
                              m.moe.shared_experts));
  if (m.moe.score != ScoreFn::softmax)
    out.push_back("moe.score = \"sigmoid\": sigmoid router scores (Mixtral: softmax)");
  if (!m.moe.renormalize)
    out.push_back("moe.renormalize = false: gate weights not divided by their sum (Mixtral renormalises)");
  if (m.moe.router_groups().on())
    out.push_back(fmt::format("moe.max_nodes_per_token = {} of moe.expert_groups = {}: group-limited routing "
                              "(Mixtral routes over all experts; deepseek-v3: n_group, topk_group)",
                              m.moe.max_nodes_per_token, m.moe.expert_groups));
  float largest = 0;
  for (float b : bias) largest = std::max(largest, std::fabs(b));
  if (m.moe.bias_update_rate > 0 || largest > 0)
    out.push_back(fmt::format("moe.bias_update_rate = {:g}: a balancing bias in expert selection (largest |bias| "
                              "in the checkpoint {:.3g}; Mixtral has none)", m.moe.bias_update_rate, largest));
  return out;
}

std::vector<HfPiece> hf_pieces(const ckpt::Manifest& man, const ModelConfig& m, ExportFormat format) {
  const bool ds = format == ExportFormat::deepseek_v3;
  const int64_t D = m.head_size(), F = m.moe.expert_hidden, Fd = m.dense_width(), E = m.moe.experts;
  std::vector<HfPiece> pieces;
  auto whole = [&](const std::string& name, const ckpt::TensorEntry& t) { pieces.push_back({name, t.shape, &t, 0}); };
  auto split = [&](const ckpt::TensorEntry& t, const std::vector<std::pair<std::string, int64_t>>& parts) {
    int64_t row = 0;
    for (const auto& [name, rows] : parts) {
      pieces.push_back({name, {rows, t.shape.back()}, &t, row});
      row += rows;
    }
    SY_CONFIG_CHECK(row == t.shape[0], "export: tensor '{}' has {} rows, the config implies {}", t.name, t.shape[0], row);
  };
  static const std::regex layer_re(R"(layers\.(\d+)\.(.*))"), expert_re(R"(moe\.experts\.(\d+)\.(w13|w2))");
  for (const ckpt::TensorEntry& t : man.tensors) {
    std::smatch lm, em;
    SY_CONFIG_CHECK(!t.shape.empty() && t.shape.size() <= 2, "export: tensor '{}' has {} dimensions", t.name,
                    t.shape.size());
    if (t.name == "embed.weight") {
      whole("model.embed_tokens.weight", t);
    } else if (t.name == "final_norm.weight") {
      whole("model.norm.weight", t);
    } else if (t.name == "lm_head.weight") {
      whole("lm_head.weight", t);
    } else if (std::regex_match(t.name, lm, layer_re)) {
      const int64_t layer = std::stoll(lm[1].str());
      const std::string pre = "model.layers." + lm[1].str() + ".", rest = lm[2].str();
      const std::string moe = pre + (ds ? "mlp." : "block_sparse_moe.");
      if (rest == "attn_norm.weight") {
        whole(pre + "input_layernorm.weight", t);
      } else if (rest == "ffn_norm.weight") {
        whole(pre + "post_attention_layernorm.weight", t);
      } else if (rest == "attn.wqkv") {
        split(t, {{pre + "self_attn.q_proj.weight", m.n_heads * D},
                  {pre + "self_attn.k_proj.weight", m.n_kv_heads * D},
                  {pre + "self_attn.v_proj.weight", m.n_kv_heads * D}});
      } else if (rest == "attn.wo") {
        whole(pre + "self_attn.o_proj.weight", t);
      } else if (rest == "mlp.w13") {
        split(t, {{pre + "mlp.gate_proj.weight", Fd}, {pre + "mlp.up_proj.weight", Fd}});
      } else if (rest == "mlp.w2") {
        whole(pre + "mlp.down_proj.weight", t);
      } else if (rest == "moe.router") {
        whole(moe + "gate.weight", t);
        if (ds) {
          const int64_t row = layer - m.dense_layers;
          SY_CONFIG_CHECK(man.bias_shape == std::vector<int64_t>({m.moe_layers(), E}) && row >= 0 &&
                              row < m.moe_layers(),
                          "export: the manifest's expert_bias has shape ({}), the model needs ({}, {})",
                          fmt::join(man.bias_shape, ", "), m.moe_layers(), E);
          pieces.push_back({moe + "gate.e_score_correction_bias", {E}, nullptr, 0, man.expert_bias.data() + row * E});
        }
      } else if (rest == "moe.shared.w13") {
        const int64_t S = t.shape[0] / 2;
        split(t, {{moe + "shared_experts.gate_proj.weight", S}, {moe + "shared_experts.up_proj.weight", S}});
      } else if (rest == "moe.shared.w2") {
        whole(moe + "shared_experts.down_proj.weight", t);
      } else if (std::regex_match(rest, em, expert_re)) {
        const std::string ex = moe + "experts." + em[1].str() + ".";
        if (em[2] == "w13")
          split(t, {{ex + (ds ? "gate_proj.weight" : "w1.weight"), F}, {ex + (ds ? "up_proj.weight" : "w3.weight"), F}});
        else
          whole(ex + (ds ? "down_proj.weight" : "w2.weight"), t);
      } else {
        SY_CONFIG_FAIL("export: no {} name for tensor '{}'", export_format_name(format), t.name);
      }
    } else {
      SY_CONFIG_FAIL("export: no {} name for tensor '{}'", export_format_name(format), t.name);
    }
  }
  return pieces;
}

namespace {

nlohmann::ordered_json config_json(const ModelConfig& m, const ckpt::Manifest& man, ExportFormat format,
                                   const std::string& architecture) {
  nlohmann::ordered_json j;
  j["architectures"] = {architecture};
  j["model_type"] = format == ExportFormat::mixtral ? "mixtral" : "switchyard_moe";
  j["vocab_size"] = m.vocab_size;
  j["hidden_size"] = m.d_model;
  j["num_hidden_layers"] = m.n_layers;
  j["num_attention_heads"] = m.n_heads;
  j["num_key_value_heads"] = m.n_kv_heads;
  j["head_dim"] = m.head_size();
  j["max_position_embeddings"] = m.seq_len;
  j["rms_norm_eps"] = m.norm_eps;
  j["rope_theta"] = m.rope_theta;
  j["attention_bias"] = false;
  j["tie_word_embeddings"] = m.tie_embeddings;
  j["hidden_act"] = "silu";
  j["torch_dtype"] = "float32";
  if (format == ExportFormat::mixtral) {
    j["intermediate_size"] = m.moe.expert_hidden;
    j["num_local_experts"] = m.moe.experts;
    j["num_experts_per_tok"] = m.moe.top_k;
    j["router_aux_loss_coef"] = m.moe.aux_loss_coef;
  } else {
    j["attention_type"] = "gqa_rope_rotate_half (llama names; not MLA)";
    j["intermediate_size"] = m.dense_width();
    j["moe_intermediate_size"] = m.moe.expert_hidden;
    j["first_k_dense_replace"] = m.dense_layers;
    j["moe_layer_freq"] = 1;
    j["n_routed_experts"] = m.moe.experts;
    j["n_shared_experts"] = m.moe.shared_experts;
    j["num_experts_per_tok"] = m.moe.top_k;
    j["scoring_func"] = std::string(score_name(m.moe.score));
    j["norm_topk_prob"] = m.moe.renormalize;
    j["topk_method"] = "noaux_tc";
    // Group-limited routing: topk_group == n_group is no limit (DeepSeek-V3's convention).
    j["n_group"] = m.moe.expert_groups;
    j["topk_group"] = m.moe.router_groups().on() ? m.moe.max_nodes_per_token : m.moe.expert_groups;
    j["routed_scaling_factor"] = 1.0;
    j["aux_loss_alpha"] = m.moe.aux_loss_coef;
  }
  j["switchyard"] = {{"export_format", export_format_name(format)},
                     {"step", man.step},
                     {"software_version", man.software_version},
                     {"bias_update_rate", m.moe.bias_update_rate},
                     {"config", man.config_toml}};  // the run's whole TOML: moe-ckpt import restores it
  return j;
}

// Refuses an existing output or one that cannot be created; returns the
// directories to create (outermost first), so a failure can remove them.
std::vector<fs::path> plan_output(const std::string& out_dir) {
  std::error_code ec;
  SY_CONFIG_CHECK(!out_dir.empty(), "export: an empty output directory");
  SY_CONFIG_CHECK(!fs::exists(fs::symlink_status(out_dir, ec)), "export: '{}' already exists; export writes a new "
                  "directory (nothing is overwritten): remove it or choose another", out_dir);
  std::vector<fs::path> create;
  fs::path p = fs::absolute(out_dir, ec).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "out/"
  for (; !fs::exists(fs::status(p, ec)); p = p.parent_path()) {
    create.insert(create.begin(), p);
    if (p == p.parent_path()) break;
  }
  SY_CONFIG_CHECK(fs::is_directory(fs::status(p, ec)), "export: cannot create '{}': '{}' is not a directory", out_dir,
                  p.string());
  return create;
}

}  // namespace

ExportResult export_safetensors(ckpt::Reader& r, const std::string& out_dir, ExportFormat format) {
  const ckpt::Manifest& man = r.manifest();
  RunConfig cfg = parse_config(man.config_toml, r.path() + " (its config)");
  const ModelConfig& m = cfg.model;
  SY_CONFIG_CHECK(m.uniform_experts(), "{}: {} gives the MoE layers different expert counts; the {} format has one "
                  "count for every layer (config.json's {}), so it cannot represent this model", r.path(),
                  m.experts_text(), export_format_name(format),
                  format == ExportFormat::mixtral ? "num_local_experts" : "n_routed_experts");
  if (format == ExportFormat::mixtral) {
    const std::vector<std::string> bad = mixtral_incompatibilities(m, man.expert_bias);
    SY_CONFIG_CHECK(bad.empty(), "{}: the Mixtral format cannot represent this model; a Mixtral loader would read it "
                    "without error and compute something else:\n  {}\nexport it with --format deepseek-v3 instead",
                    r.path(), fmt::join(bad, "\n  "));
  }
  const std::vector<HfPiece> pieces = hf_pieces(man, m, format);
  const std::vector<fs::path> created = plan_output(out_dir);

  ExportResult res;
  res.dir = out_dir;
  res.format = export_format_name(format);
  res.architecture = format == ExportFormat::mixtral ? "MixtralForCausalLM" : "SwitchyardMoeForCausalLM";
  res.tensors = static_cast<int64_t>(pieces.size());
  try {
    for (const fs::path& d : created) fs::create_directory(d);
    std::vector<ckpt::SafeTensor> list;
    for (const HfPiece& p : pieces) list.push_back({p.hf, p.shape});
    const ckpt::TensorEntry* cached = nullptr;
    std::vector<float> data;
    res.bytes = static_cast<int64_t>(ckpt::write_safetensors(
        (fs::path(out_dir) / "model.safetensors").string(), list,
        [&](size_t i, float* out) {
          const HfPiece& p = pieces[i];
          int64_t n = 1;
          for (int64_t d : p.shape) n *= d;
          if (p.values) {
            std::copy_n(p.values, n, out);
            return;
          }
          if (p.src != cached) data = r.read_all("params", *p.src), cached = p.src;
          const int64_t cols = p.src->shape.size() == 2 ? p.src->shape[1] : 1;
          std::copy_n(data.begin() + p.row0 * cols, n, out);
        },
        {{"format", "pt"}, {"source", "switchyard"}, {"export_format", res.format},
         {"step", std::to_string(man.step)}}));
    const std::string cfg_path = (fs::path(out_dir) / "config.json").string();
    std::ofstream f(cfg_path, std::ios::trunc);
    f << config_json(m, man, format, res.architecture).dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
      << "\n";
    f.close();
    SY_CHECK(!f.fail(), "export: writing '{}' failed: {}", cfg_path, std::strerror(errno));
  } catch (...) {
    std::error_code ec;
    if (!created.empty()) fs::remove_all(created.front(), ec);  // only what this export created
    throw;
  }
  return res;
}

}  // namespace sy
