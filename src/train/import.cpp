#include "train/import.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "ckpt/format.h"
#include "ckpt/repack.h"
#include "ckpt/safetensors.h"
#include "config/run.h"
#include "core/check.h"
#include "core/version.h"
#include "model/layout.h"
#include "train/export.h"
#include "train/metrics.h"
#include "train/weights_file.h"

namespace sy {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// config.json with typed, named access: every key read is marked used, so
// what is left over at the end is unknown.
class HfConfig {
 public:
  HfConfig(json j, std::string path) : j_(std::move(j)), path_(std::move(path)) {}
  const std::string& path() const { return path_; }
  bool has(const std::string& k) const { return j_.contains(k) && !j_[k].is_null(); }
  void use(const std::string& k) { used_.insert(k); }
  const json& raw(const std::string& k) {
    use(k);
    return j_[k];
  }
  int64_t integer(const std::string& k, int64_t lo, int64_t fallback, bool required) {
    use(k);
    if (!has(k)) {
      SY_CONFIG_CHECK(!required, "{}: no \"{}\" (the importer needs it)", path_, k);
      return fallback;
    }
    SY_CONFIG_CHECK(j_[k].is_number_integer(), "{}: \"{}\" = {} is not an integer", path_, k, j_[k].dump());
    const int64_t v = j_[k].get<int64_t>();
    SY_CONFIG_CHECK(v >= lo, "{}: \"{}\" = {} must be at least {}", path_, k, v, lo);
    return v;
  }
  double number(const std::string& k, double fallback, bool required) {
    use(k);
    if (!has(k)) {
      SY_CONFIG_CHECK(!required, "{}: no \"{}\" (the importer needs it)", path_, k);
      return fallback;
    }
    SY_CONFIG_CHECK(j_[k].is_number(), "{}: \"{}\" = {} is not a number", path_, k, j_[k].dump());
    return j_[k].get<double>();
  }
  bool boolean(const std::string& k, bool fallback) {
    use(k);
    if (!has(k)) return fallback;
    SY_CONFIG_CHECK(j_[k].is_boolean(), "{}: \"{}\" = {} is not true or false", path_, k, j_[k].dump());
    return j_[k].get<bool>();
  }
  std::string string(const std::string& k, const std::string& fallback) {
    use(k);
    if (!has(k)) return fallback;
    SY_CONFIG_CHECK(j_[k].is_string(), "{}: \"{}\" = {} is not a string", path_, k, j_[k].dump());
    return j_[k].get<std::string>();
  }
  // A key the model cannot represent unless it is absent, null or `ok`.
  void refuse_unless(const std::string& k, const json& ok, const std::string& why) {
    use(k);
    if (!has(k) || j_[k] == ok) return;
    SY_CONFIG_FAIL("{}: \"{}\" = {}: {}; Switchyard's model cannot represent it", path_, k, j_[k].dump(), why);
  }
  std::vector<std::string> unused() const {
    std::vector<std::string> out;
    for (const auto& [k, v] : j_.items())
      if (!used_.count(k)) out.push_back(k);
    return out;
  }

 private:
  json j_;
  std::string path_;
  std::set<std::string> used_;
};

json read_json(const std::string& path) {
  std::error_code ec;
  SY_CONFIG_CHECK(fs::is_regular_file(path, ec), "'{}' does not exist or is not a file", path);
  std::ifstream f(path);
  std::stringstream text;
  text << f.rdbuf();
  SY_CONFIG_CHECK(!f.bad(), "cannot read '{}'", path);
  try {
    return json::parse(text.str());
  } catch (const json::exception& e) {
    SY_CONFIG_FAIL("'{}' is not valid JSON: {}", path, e.what());
  }
}

// Keys that do not change the forward or backward math (identifiers,
// token ids, the inference cache, the init range, the exporter's own).
const std::set<std::string> kIgnored = {"architectures", "model_type", "torch_dtype", "transformers_version",
                                        "bos_token_id", "eos_token_id", "pad_token_id", "use_cache",
                                        "initializer_range", "output_router_logits", "return_dict", "ep_size",
                                        "switchyard", "max_position_embeddings", "attention_type"};

// The model config.json describes, over `cfg` (the base).
ExportFormat read_model(HfConfig& hf, RunConfig& cfg, bool metadata) {
  std::vector<std::string> arch;
  if (hf.has("architectures")) {
    const json& a = hf.raw("architectures");
    SY_CONFIG_CHECK(a.is_array(), "{}: \"architectures\" is not a list", hf.path());
    for (const json& x : a) arch.push_back(x.is_string() ? x.get<std::string>() : x.dump());
  }
  auto named = [&](const char* n) { return std::find(arch.begin(), arch.end(), n) != arch.end(); };
  SY_CONFIG_CHECK(!named("DeepseekV3ForCausalLM") && !named("DeepseekV2ForCausalLM"),
                  "{}: \"architectures\" = [\"{}\"]: DeepSeek's multi-head latent attention (MLA) is not Switchyard's "
                  "attention (GQA with RoPE); only the DeepSeek-V3 MoE layout with Llama attention (what moe-ckpt "
                  "export --format deepseek-v3 writes) can be imported", hf.path(), fmt::join(arch, "\", \""));
  const bool ds = hf.has("n_routed_experts") || named("SwitchyardMoeForCausalLM");
  const bool mx = hf.has("num_local_experts") || named("MixtralForCausalLM");
  SY_CONFIG_CHECK(ds != mx, "{}: {}", hf.path(),
                  ds ? "both Mixtral (num_local_experts) and DeepSeek-V3 (n_routed_experts) keys"
                     : "neither a Mixtral-style (num_local_experts) nor a DeepSeek-V3-style (n_routed_experts) "
                       "config; moe-ckpt import reads the formats moe-ckpt export writes");
  ModelConfig& m = cfg.model;
  m.vocab_size = hf.integer("vocab_size", 1, 0, true);
  m.d_model = hf.integer("hidden_size", 1, 0, true);
  m.n_layers = hf.integer("num_hidden_layers", 1, 0, true);
  m.n_heads = hf.integer("num_attention_heads", 1, 0, true);
  m.n_kv_heads = hf.integer("num_key_value_heads", 1, m.n_heads, false);
  const int64_t head_dim = hf.integer("head_dim", 1, m.n_heads > 0 ? m.d_model / m.n_heads : 0, false);
  // Set head_dim only where the default (d_model / n_heads) differs: the config stays as the run wrote it.
  const bool derived = m.d_model % m.n_heads == 0 && m.d_model / m.n_heads == head_dim;
  m.head_dim = derived && m.head_dim == 0 ? 0 : head_dim;
  m.norm_eps = hf.number("rms_norm_eps", 0, true);
  m.rope_theta = hf.number("rope_theta", 0, true);
  m.tie_embeddings = hf.boolean("tie_word_embeddings", false);
  if (!metadata) m.seq_len = hf.integer("max_position_embeddings", 1, m.seq_len, false);
  const std::string act = hf.string("hidden_act", "silu");
  SY_CONFIG_CHECK(act == "silu" || act == "swish", "{}: \"hidden_act\" = \"{}\": Switchyard's FFNs are SwiGLU (silu); "
                  "the model cannot represent another activation", hf.path(), act);
  hf.refuse_unless("sliding_window", nullptr, "sliding-window attention (Switchyard attends to every earlier position)");
  hf.refuse_unless("use_sliding_window", false, "sliding-window attention");
  hf.refuse_unless("rope_scaling", nullptr, "scaled RoPE (Switchyard's RoPE is unscaled)");
  hf.refuse_unless("attention_bias", false, "biases in the attention projections (Switchyard's have none)");
  hf.refuse_unless("mlp_bias", false, "biases in the FFN (Switchyard's have none)");
  hf.refuse_unless("attention_dropout", 0.0, "attention dropout (Switchyard has none)");
  hf.refuse_unless("router_jitter_noise", 0.0, "router jitter noise (Switchyard's router has none)");
  for (const char* k : {"q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"})
    hf.refuse_unless(k, nullptr, "multi-head latent attention (MLA); Switchyard's attention is GQA with RoPE");
  hf.refuse_unless("num_nextn_predict_layers", 0, "multi-token-prediction layers");
  if (hf.has("attention_type")) {
    const std::string at = hf.string("attention_type", "");
    SY_CONFIG_CHECK(at.rfind("gqa_rope_rotate_half", 0) == 0, "{}: \"attention_type\" = \"{}\": only "
                    "gqa_rope_rotate_half (Switchyard's) can be imported", hf.path(), at);
  }
  MoeConfig& e = m.moe;
  if (mx) {
    m.dense_layers = 0;
    e.expert_hidden = hf.integer("intermediate_size", 1, 0, true);
    e.experts = hf.integer("num_local_experts", 1, 0, true);
    e.top_k = hf.integer("num_experts_per_tok", 1, 0, true);
    e.shared_experts = 0, e.score = ScoreFn::softmax, e.renormalize = true;
    e.aux_loss_coef = hf.number("router_aux_loss_coef", e.aux_loss_coef, false);
    // Mixtral routes over all experts; the run's groups (no limit) stay if they still divide.
    e.max_nodes_per_token = 0;
    if (e.experts % e.expert_groups != 0) e.expert_groups = 1;
  } else {
    const int64_t dense = hf.integer("intermediate_size", 1, m.dense_width(), false);
    if (dense != m.dense_width()) m.dense_hidden = dense;
    e.expert_hidden = hf.integer("moe_intermediate_size", 1, 0, true);
    m.dense_layers = hf.integer("first_k_dense_replace", 0, 0, false);
    e.experts = hf.integer("n_routed_experts", 1, 0, true);
    e.shared_experts = hf.integer("n_shared_experts", 0, 0, false);
    e.top_k = hf.integer("num_experts_per_tok", 1, 0, true);
    const std::string score = hf.string("scoring_func", "softmax");
    SY_CONFIG_CHECK(score == "softmax" || score == "sigmoid", "{}: \"scoring_func\" = \"{}\": Switchyard's router "
                    "scores are softmax or sigmoid", hf.path(), score);
    e.score = score == "softmax" ? ScoreFn::softmax : ScoreFn::sigmoid;
    e.renormalize = hf.boolean("norm_topk_prob", true);
    const std::string method = hf.string("topk_method", "noaux_tc");
    SY_CONFIG_CHECK(method == "noaux_tc" || method == "greedy", "{}: \"topk_method\" = \"{}\": Switchyard chooses the "
                    "top-k of score + bias over all experts (noaux_tc, or greedy without a bias)", hf.path(), method);
    hf.refuse_unless("moe_layer_freq", 1, "MoE only every few layers (Switchyard: every block after the dense ones)");
    hf.refuse_unless("routed_scaling_factor", 1.0, "scaled routed-expert outputs");
    // Group-limited routing: n_group contiguous groups, experts from at most
    // topk_group of them (== n_group: no limit), groups ranked by the sum of
    // their top-2 selection scores: Switchyard's moe.expert_groups and
    // moe.max_nodes_per_token (0 = no limit).
    const int64_t n_group = hf.integer("n_group", 1, 1, false);
    const int64_t topk_group = hf.integer("topk_group", 1, n_group, false);
    SY_CONFIG_CHECK(n_group <= 64 && e.experts % n_group == 0, "{}: \"n_group\" = {} must divide \"n_routed_experts\" "
                    "= {} (at most 64 groups)", hf.path(), n_group, e.experts);
    SY_CONFIG_CHECK(topk_group <= n_group, "{}: \"topk_group\" = {} exceeds \"n_group\" = {}", hf.path(), topk_group,
                    n_group);
    SY_CONFIG_CHECK(topk_group == n_group || method == "noaux_tc", "{}: \"topk_group\" = {} < \"n_group\" = {} with "
                    "\"topk_method\" = \"{}\": Switchyard limits groups as noaux_tc does (top-2 sums)", hf.path(),
                    topk_group, n_group, method);
    const bool was_full = e.expert_groups == n_group && e.max_nodes_per_token == n_group;  // the run's own spelling
    e.expert_groups = n_group;
    e.max_nodes_per_token = topk_group < n_group ? topk_group : (was_full ? n_group : 0);
    e.aux_loss_coef = hf.number("aux_loss_alpha", e.aux_loss_coef, false);
    if (method == "greedy") e.bias_update_rate = 0;
  }
  std::vector<std::string> unknown;
  for (const std::string& k : hf.unused())
    if (!kIgnored.count(k)) unknown.push_back(k);
  SY_CONFIG_CHECK(unknown.empty(), "{}: unknown key{} \"{}\": the importer cannot tell whether {} the model's "
                  "math; remove {} if {} not", hf.path(), unknown.size() == 1 ? "" : "s", fmt::join(unknown, "\", \""),
                  unknown.size() == 1 ? "it changes" : "they change", unknown.size() == 1 ? "it" : "them",
                  unknown.size() == 1 ? "it does" : "they do");
  if (m.vocab_size < 256 && !metadata) cfg.data.format = DataFormat::bin;  // not byte tokens
  return ds ? ExportFormat::deepseek_v3 : ExportFormat::mixtral;
}

struct Source {
  std::vector<std::unique_ptr<ckpt::SafetensorsFile>> files;
  std::map<std::string, std::pair<const ckpt::SafetensorsFile*, const ckpt::SafeTensorInfo*>> tensors;
};

Source open_tensors(const fs::path& dir) {
  Source s;
  auto add_file = [&](const std::string& name) -> const ckpt::SafetensorsFile& {
    for (const auto& f : s.files)
      if (f->path() == (dir / name).string()) return *f;
    s.files.push_back(std::make_unique<ckpt::SafetensorsFile>((dir / name).string()));
    return *s.files.back();
  };
  const fs::path index = dir / "model.safetensors.index.json";
  std::error_code ec;
  if (fs::exists(index, ec)) {
    const json j = read_json(index.string());
    SY_CONFIG_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
                    "'{}': no \"weight_map\" object", index.string());
    SY_CONFIG_CHECK(!fs::exists(dir / "model.safetensors", ec), "'{}' has both model.safetensors and {}: which one "
                    "holds the model is ambiguous; remove one", dir.string(), index.filename().string());
    for (const auto& [name, file] : j["weight_map"].items()) {
      SY_CONFIG_CHECK(file.is_string(), "'{}': weight_map[\"{}\"] is not a file name", index.string(), name);
      const std::string fn = file.get<std::string>();
      SY_CONFIG_CHECK(!fn.empty() && fn.find('/') == std::string::npos && fn != "." && fn != "..",
                      "'{}': weight_map[\"{}\"] = \"{}\" is not a file name in the same directory", index.string(),
                      name, fn);
      const ckpt::SafetensorsFile& f = add_file(fn);
      const ckpt::SafeTensorInfo* t = f.find(name);
      SY_CONFIG_CHECK(t != nullptr, "'{}': tensor '{}' is not in '{}', where {} says it is", dir.string(), name,
                      f.path(), index.filename().string());
      s.tensors[name] = {&f, t};
    }
    for (const auto& f : s.files)
      for (const ckpt::SafeTensorInfo& t : f->tensors()) {
        auto it = s.tensors.find(t.name);
        SY_CONFIG_CHECK(it != s.tensors.end() && it->second.first == f.get(), "'{}': tensor '{}' is in '{}' but {} "
                        "{}", dir.string(), t.name, f->path(), index.filename().string(),
                        it == s.tensors.end() ? "does not list it" : "names another file for it");
      }
  } else {
    const ckpt::SafetensorsFile& f = add_file("model.safetensors");
    for (const ckpt::SafeTensorInfo& t : f.tensors()) s.tensors[t.name] = {&f, &t};
  }
  return s;
}

}  // namespace

ImportResult import_safetensors(const std::string& dir_arg, const std::string& out) {
  const fs::path dir(dir_arg);
  std::error_code ec;
  SY_CONFIG_CHECK(fs::is_directory(dir, ec), "import: '{}' is not a directory (want one holding config.json and "
                  "model.safetensors)", dir_arg);
  const std::string cfg_path = (dir / "config.json").string();
  json j = read_json(cfg_path);
  SY_CONFIG_CHECK(j.is_object(), "'{}' is not a JSON object", cfg_path);
  ImportResult res;
  res.out = out;
  RunConfig cfg;
  if (j.contains("switchyard") && j["switchyard"].is_object() && j["switchyard"].contains("config")) {
    const json& c = j["switchyard"]["config"];
    SY_CONFIG_CHECK(c.is_string(), "{}: switchyard.config is not a string (the run's TOML)", cfg_path);
    cfg = parse_config(c.get<std::string>(), cfg_path + " (switchyard.config)");
    res.metadata = true;
  } else {
    cfg = parse_config(default_config_text(), "the built-in default config");
    if (j.contains("switchyard") && j["switchyard"].is_object() && j["switchyard"].contains("bias_update_rate") &&
        j["switchyard"]["bias_update_rate"].is_number())
      cfg.model.moe.bias_update_rate = j["switchyard"]["bias_update_rate"].get<double>();
    else
      cfg.model.moe.bias_update_rate = 0;  // HF configs carry no balancing-bias rate
  }
  HfConfig hf(j, cfg_path);
  const ExportFormat format = read_model(hf, cfg, res.metadata);
  res.format = export_format_name(format);
  // Validate the whole config as moe-train would read it.
  cfg = parse_config(to_toml(cfg), cfg_path + " (as imported)");
  const ModelConfig& m = cfg.model;

  ckpt::Manifest man = new_weights_manifest(cfg);
  const int64_t E = m.moe.experts;
  if (m.moe_layers() > 0) {
    man.bias_shape = {m.moe_layers(), E};
    man.expert_bias.assign(static_cast<size_t>(m.moe_layers() * E), 0.f);
    man.expert_load.assign(static_cast<size_t>(m.moe_layers() * E), 0);
  }
  const std::vector<HfPiece> pieces = hf_pieces(man, m, format);
  Source src = open_tensors(dir);
  res.files = static_cast<int64_t>(src.files.size());
  const bool greedy = hf.string("topk_method", "noaux_tc") == "greedy";

  // Every expected tensor present with its shape; nothing else.
  std::vector<std::vector<size_t>> of_tensor(man.tensors.size());
  std::set<std::string> expected;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const HfPiece& p = pieces[i];
    expected.insert(p.hf);
    auto it = src.tensors.find(p.hf);
    if (p.values && greedy) {
      SY_CONFIG_CHECK(it == src.tensors.end(), "{}: tensor '{}' with topk_method = \"greedy\", which chooses without "
                      "a bias; use \"noaux_tc\"", dir_arg, p.hf);
      continue;
    }
    SY_CONFIG_CHECK(it != src.tensors.end(), "{}: missing tensor '{}' (shape ({})), which the config implies",
                    dir_arg, p.hf, fmt::join(p.shape, ", "));
    const ckpt::SafeTensorInfo& t = *it->second.second;
    SY_CONFIG_CHECK(t.shape == p.shape, "{}: tensor '{}' has shape ({}), the config implies ({})",
                    it->second.first->path(), p.hf, fmt::join(t.shape, ", "), fmt::join(p.shape, ", "));
    if (p.values) {
      float* dst = man.expert_bias.data() + (p.values - man.expert_bias.data());
      it->second.first->read(t, dst, 0, t.numel());
      for (int64_t x = 0; x < t.numel(); ++x)
        SY_CONFIG_CHECK(std::isfinite(dst[x]), "{}: tensor '{}' holds a non-finite value ({}) at {}",
                        it->second.first->path(), p.hf, dst[x], x);
    } else {
      of_tensor[static_cast<size_t>(p.src - man.tensors.data())].push_back(i);
    }
    ++res.tensors;
  }
  for (const auto& [name, where] : src.tensors) {
    if (expected.count(name)) continue;
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    SY_CONFIG_FAIL("{}: tensor '{}' {}", where.first->path(), name,
                   bias ? "is a bias; Switchyard's linear layers have none, so the model cannot represent it"
                        : "is not part of the model the config describes (an extra tensor)");
  }
  ckpt::write_weights_only(out, man, [&](size_t i, std::vector<float>& data) {
    const ckpt::TensorEntry& t = man.tensors[i];
    const int64_t cols = t.shape.size() == 2 ? t.shape[1] : 1;
    int64_t filled = 0;
    for (size_t k : of_tensor[i]) {
      const HfPiece& p = pieces[k];
      const auto& [file, info] = src.tensors.at(p.hf);
      file->read(*info, data.data() + p.row0 * cols, 0, info->numel());
      filled += info->numel();
    }
    SY_CHECK(filled == t.numel(), "import: tensor '{}': {} of {} values read", t.name, filled, t.numel());
  });
  return res;
}

}  // namespace sy
