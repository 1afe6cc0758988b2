#include "config/run.h"

#include <toml++/toml.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>

#include "config/name_glob.h"
#include "core/check.h"
#include "core/device.h"
#include "pipeline/schedule.h"
#include "core/mapped_file.h"

namespace sy::embedded {
extern const char* const tiny_toml;
}

namespace sy {

namespace {

// ---------------------------------------------------------------- schema

struct Where {
  std::string source;
  int64_t line = 0;  // 0 = no line (command line)
  std::string str() const { return line > 0 ? fmt::format("{}:{}", source, line) : source; }
};

struct Key {
  std::string section, name, type, doc;
  bool textual = false;  // takes strings: a bare --set value is a string
  std::function<void(RunConfig&, const toml::node&, const Where&)> set;
  std::function<std::string(const RunConfig&)> show;  // TOML literal
  std::string full() const { return section + "." + name; }
};

const char* type_name(const toml::node& v) {
  switch (v.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    default: return "a date/time";
  }
}

[[noreturn]] void bad_type(const Key& k, const toml::node& v, const Where& w) {
  std::ostringstream os;
  v.visit([&](auto&& x) { os << x; });
  SY_CONFIG_FAIL("{}: {} must be {}, got {} ({})", w.str(), k.full(), k.type, os.str(), type_name(v));
}

Key integer(std::string sec, std::string name, int64_t& (*ref)(RunConfig&), int64_t lo, int64_t hi,
            std::string doc) {
  Key k{std::move(sec), std::move(name), "an integer", std::move(doc), false, nullptr, nullptr};
  k.set = [k, ref, lo, hi](RunConfig& c, const toml::node& v, const Where& w) {
    if (!v.is_integer()) bad_type(k, v, w);
    int64_t x = v.as_integer()->get();
    SY_CONFIG_CHECK(x >= lo && x <= hi, "{}: {} = {} is out of range [{}, {}]", w.str(), k.full(), x, lo, hi);
    ref(c) = x;
  };
  k.show = [ref](const RunConfig& c) { return fmt::format("{}", ref(const_cast<RunConfig&>(c))); };
  return k;
}

// lo_open: the lower bound is excluded (lo < x), for values a division
// would turn into Inf / NaN at lo (an epsilon of 0). Such a value is used as
// a float, so it must also stay a normal float: 1e-300 would become 0 (and a
// denormal is 0 with flush-to-zero on).
Key real(std::string sec, std::string name, double& (*ref)(RunConfig&), double lo, double hi,
         std::string doc, bool lo_open = false) {
  Key k{std::move(sec), std::move(name), "a number", std::move(doc), false, nullptr, nullptr};
  k.set = [k, ref, lo, hi, lo_open](RunConfig& c, const toml::node& v, const Where& w) {
    double x;
    if (v.is_floating_point())
      x = v.as_floating_point()->get();
    else if (v.is_integer())
      x = static_cast<double>(v.as_integer()->get());
    else
      bad_type(k, v, w);
    const bool above = lo_open ? x > lo && std::abs(x) >= std::numeric_limits<float>::min() : x >= lo;
    SY_CONFIG_CHECK(std::isfinite(x) && above && x <= hi, "{}: {} = {} is out of range {}{}, {}]{}", w.str(), k.full(),
                    x, lo_open ? "(" : "[", lo, hi,
                    lo_open && x > lo ? fmt::format(" (as a float it must be at least {})",
                                                    std::numeric_limits<float>::min())
                                      : "");
    ref(c) = x;
  };
  k.show = [ref](const RunConfig& c) {
    double x = ref(const_cast<RunConfig&>(c));
    std::string s = fmt::format("{}", x);
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // stay a TOML float
    return s;
  };
  return k;
}

Key boolean(std::string sec, std::string name, bool& (*ref)(RunConfig&), std::string doc) {
  Key k{std::move(sec), std::move(name), "true or false", std::move(doc), false, nullptr, nullptr};
  k.set = [k, ref](RunConfig& c, const toml::node& v, const Where& w) {
    if (!v.is_boolean()) bad_type(k, v, w);
    ref(c) = v.as_boolean()->get();
  };
  k.show = [ref](const RunConfig& c) { return ref(const_cast<RunConfig&>(c)) ? "true" : "false"; };
  return k;
}

std::string quote(const std::string& s) {
  std::ostringstream os;
  os << toml::value<std::string>(s);
  return os.str();
}

// run.name becomes runs/<name>: one path component, so a name can neither
// leave runs/ ("../x", "/etc") nor name runs/ itself ("", ".", "..").
void check_run_name(const std::string& name, const Where& w) {
  const bool control = std::any_of(name.begin(), name.end(), [](char ch) {
    return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f;
  });
  const char* why = name.empty()                          ? "it is empty"
                    : name == "." || name == ".."         ? "it names a directory"
                    : name.find('/') != std::string::npos ? "it contains '/'"
                    : control                             ? "it contains a control character"
                                                          : nullptr;
  SY_CONFIG_CHECK(!why, "{}: run.name = {} is not a single path component ({}); the run directory is "
                  "runs/<run.name>: pick a plain name, or set run.dir for a directory elsewhere", w.str(), quote(name),
                  why);
}

Key string(std::string sec, std::string name, std::string& (*ref)(RunConfig&),
           std::vector<std::string> allowed, std::string doc) {
  std::string type = allowed.empty() ? "a string" : fmt::format("one of \"{}\"", fmt::join(allowed, "\", \""));
  Key k{std::move(sec), std::move(name), type, std::move(doc), true, nullptr, nullptr};
  k.set = [k, ref, allowed](RunConfig& c, const toml::node& v, const Where& w) {
    if (!v.is_string()) bad_type(k, v, w);
    std::string x = v.as_string()->get();
    SY_CONFIG_CHECK(allowed.empty() || std::find(allowed.begin(), allowed.end(), x) != allowed.end(),
                    "{}: {} = \"{}\" is not {}", w.str(), k.full(), x, k.type);
    ref(c) = x;
  };
  k.show = [ref](const RunConfig& c) { return quote(ref(const_cast<RunConfig&>(c))); };
  return k;
}

// A choice-valued key, read once into its enum (config/options.h holds the
// names; the pipeline schedules' come from pipeline/schedule.h).
template <Option E>
Key option(std::string sec, std::string name, E& (*ref)(RunConfig&), std::string doc) {
  std::string type = fmt::format("one of \"{}\"", fmt::join(option_names<E>(), "\", \""));
  Key k{std::move(sec), std::move(name), type, std::move(doc), true, nullptr, nullptr};
  k.set = [k, ref](RunConfig& c, const toml::node& v, const Where& w) {
    if (!v.is_string()) bad_type(k, v, w);
    std::string x = v.as_string()->get();
    std::optional<E> e = parse_option<E>(x);
    SY_CONFIG_CHECK(e.has_value(), "{}: {} = \"{}\" is not {}", w.str(), k.full(), x, k.type);
    ref(c) = *e;
  };
  k.show = [ref](const RunConfig& c) { return quote(option_name(ref(const_cast<RunConfig&>(c)))); };
  return k;
}

// checkpoint.resume: "auto", "none", or any other string, a checkpoint directory.
Key resume_key(std::string doc) {
  Key k{"checkpoint", "resume", "a string", std::move(doc), true, nullptr, nullptr};
  k.set = [k](RunConfig& c, const toml::node& v, const Where& w) {
    if (!v.is_string()) bad_type(k, v, w);
    std::string x = v.as_string()->get();
    std::optional<ResumeMode> mode = parse_option<ResumeMode>(x);
    c.checkpoint.resume = mode.value_or(ResumeMode::dir);
    c.checkpoint.resume_dir = mode ? std::string() : x;
  };
  k.show = [](const RunConfig& c) {
    return quote(c.checkpoint.resume == ResumeMode::dir ? c.checkpoint.resume_dir : option_name(c.checkpoint.resume));
  };
  return k;
}

Key strings(std::string sec, std::string name, std::vector<std::string>& (*ref)(RunConfig&), std::string doc) {
  Key k{std::move(sec), std::move(name), "a string or an array of strings", std::move(doc), true, nullptr, nullptr};
  k.set = [k, ref](RunConfig& c, const toml::node& v, const Where& w) {
    std::vector<std::string> out;
    if (v.is_string()) {
      out.push_back(v.as_string()->get());
    } else if (v.is_array()) {
      for (const toml::node& e : *v.as_array()) {
        if (!e.is_string()) bad_type(k, v, w);
        out.push_back(e.as_string()->get());
      }
    } else {
      bad_type(k, v, w);
    }
    ref(c) = std::move(out);
  };
  k.show = [ref](const RunConfig& c) {
    std::vector<std::string> q;
    for (const std::string& s : ref(const_cast<RunConfig&>(c))) q.push_back(quote(s));
    return fmt::format("[{}]", fmt::join(q, ", "));
  };
  return k;
}

Key integers(std::string sec, std::string name, std::vector<int64_t>& (*ref)(RunConfig&), std::string doc) {
  Key k{std::move(sec), std::move(name), "an array of integers", std::move(doc), true, nullptr, nullptr};
  k.set = [k, ref](RunConfig& c, const toml::node& v, const Where& w) {
    std::vector<int64_t> out;
    if (!v.is_array()) bad_type(k, v, w);
    for (const toml::node& e : *v.as_array()) {
      if (!e.is_integer()) bad_type(k, v, w);
      out.push_back(e.as_integer()->get());
    }
    ref(c) = std::move(out);
  };
  k.show = [ref](const RunConfig& c) { return fmt::format("[{}]", fmt::join(ref(const_cast<RunConfig&>(c)), ", ")); };
  return k;
}

Key score_fn() {
  Key k{"moe", "score", fmt::format("one of \"{}\"", fmt::join(kScoreFnNames, "\", \"")),
        "router score function (DeepSeek-V3 uses sigmoid)", true, nullptr, nullptr};
  k.set = [k](RunConfig& c, const toml::node& v, const Where& w) {
    if (!v.is_string()) bad_type(k, v, w);
    std::string x = v.as_string()->get();
    const std::optional<ScoreFn> f = parse_score(x);
    SY_CONFIG_CHECK(f.has_value(), "{}: moe.score = \"{}\" is not {}", w.str(), x, k.type);
    c.model.moe.score = *f;
  };
  k.show = [](const RunConfig& c) {
    return fmt::format("\"{}\"", score_name(c.model.moe.score));
  };
  return k;
}

// train.lr_groups: an array of inline tables { match = "pattern", scale = x }.
// The patterns' syntax is checked here; that each matches a parameter, where
// the model is known (train/lr_groups.h).
Key lr_groups_key() {
  Key k{"train", "lr_groups", "an array of tables { match = \"pattern\", scale = number }",
        "per-parameter learning-rate multipliers: parameters whose name matches (* within one dot-separated "
        "component, ** across dots, [a-b] an integer component) get lr x scale (weight decay too); first match wins",
        false, nullptr, nullptr};
  k.set = [k](RunConfig& c, const toml::node& v, const Where& w) {
    if (!v.is_array()) bad_type(k, v, w);
    std::vector<LrGroup> out;
    size_t i = 0;
    for (const toml::node& e : *v.as_array()) {
      const std::string at = fmt::format("{}: train.lr_groups[{}]", w.str(), i++);
      SY_CONFIG_CHECK(e.is_table(), "{} must be a table {{ match = \"pattern\", scale = number }}, got {}", at,
                      type_name(e));
      LrGroup g;
      bool has_match = false, has_scale = false;
      for (auto&& [gk, gv] : *e.as_table()) {
        const std::string name(gk.str());
        if (name == "match") {
          SY_CONFIG_CHECK(gv.is_string(), "{}.match must be a string, got {}", at, type_name(gv));
          g.match = gv.as_string()->get();
          const std::string problem = name_glob_problem(g.match);
          SY_CONFIG_CHECK(problem.empty(), "{}.match = {} {}", at, quote(g.match), problem);
          has_match = true;
        } else if (name == "scale") {
          SY_CONFIG_CHECK(gv.is_number(), "{}.scale must be a number, got {}", at, type_name(gv));
          g.scale = gv.is_integer() ? static_cast<double>(gv.as_integer()->get()) : gv.as_floating_point()->get();
          SY_CONFIG_CHECK(std::isfinite(g.scale) && g.scale >= 0 && g.scale <= 1e6,
                          "{}.scale = {} is out of range [0, 1e6]", at, g.scale);
          has_scale = true;
        } else {
          SY_CONFIG_FAIL("{}: unknown key '{}' (a group has `match` and `scale`)", at, name);
        }
      }
      SY_CONFIG_CHECK(has_match && has_scale, "{} needs both `match` (a name pattern) and `scale` (a number)", at);
      out.push_back(std::move(g));
    }
    c.train.lr_groups = std::move(out);
  };
  k.show = [](const RunConfig& c) {
    std::vector<std::string> parts;
    for (const LrGroup& g : c.train.lr_groups) {
      std::string s = fmt::format("{}", g.scale);
      if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
      parts.push_back(fmt::format("{{ match = {}, scale = {} }}", quote(g.match), s));
    }
    return fmt::format("[{}]", fmt::join(parts, ", "));
  };
  return k;
}

// moe.experts: an integer (every MoE layer) or one count per MoE layer.
Key experts_key() {
  Key k{"moe", "experts", "an integer or an array of integers (one per MoE layer)",
        "routed experts E per MoE layer: one count, or a list with one entry per MoE layer", false, nullptr, nullptr};
  k.set = [k](RunConfig& c, const toml::node& v, const Where& w) {
    MoeConfig& e = c.model.moe;
    auto one = [&](const toml::node& x, const std::string& key) {
      if (!x.is_integer()) bad_type(k, v, w);
      const int64_t n = x.as_integer()->get();
      SY_CONFIG_CHECK(n >= 1 && n <= 4096, "{}: {} = {} is out of range [1, 4096]", w.str(), key, n);
      return n;
    };
    if (v.is_array()) {
      std::vector<int64_t> out;
      for (const toml::node& x : *v.as_array()) out.push_back(one(x, fmt::format("moe.experts[{}]", out.size())));
      SY_CONFIG_CHECK(!out.empty(), "{}: moe.experts = [] names no counts", w.str());
      e.layer_experts = std::move(out);
      e.experts = *std::max_element(e.layer_experts.begin(), e.layer_experts.end());
    } else {
      e.experts = one(v, "moe.experts");
      e.layer_experts.clear();
    }
  };
  k.show = [](const RunConfig& c) {
    const MoeConfig& e = c.model.moe;
    return e.layer_experts.empty() ? fmt::format("{}", e.experts) : fmt::format("[{}]", fmt::join(e.layer_experts, ", "));
  };
  return k;
}

#define SY_REF(T, field) [](RunConfig& c) -> T& { return c.field; }
constexpr int64_t kBig = int64_t{1} << 40;

const std::vector<Key>& schema() {
  static const std::vector<Key> keys = [] {
    std::vector<Key> k;
    // run
    k.push_back(string("run", "name", SY_REF(std::string, run.name), {}, "run name, one path component: the run directory is runs/<name> unless run.dir says otherwise"));
    k.back().set = [base = k.back().set](RunConfig& c, const toml::node& v, const Where& w) {
      base(c, v, w);
      check_run_name(c.run.name, w);
    };
    k.push_back(string("run", "dir", SY_REF(std::string, run.dir), {}, "run directory; \"\" = runs/<name>"));
    k.push_back(string("run", "device", SY_REF(std::string, run.device), {}, "what trains: \"cpu\" (the reference) or \"cuda\" (one GPU per rank, the CUDA module loaded at run time: parameters, gradients, optimizer state and activations in device memory; every recipe and layout, with gradients, MoE rows, pipeline messages, ZeRO-1 gathers and FP8 operands staged through host memory for now)"));
    k.back().set = [base = k.back().set](RunConfig& c, const toml::node& v, const Where& w) {
      base(c, v, w);
      SY_CONFIG_CHECK(parse_device(c.run.device).has_value(), "{}: run.device = {}: one of \"cpu\", \"cuda\"", w.str(),
                      quote(c.run.device));
    };
    // model
    k.push_back(integer("model", "vocab_size", SY_REF(int64_t, model.vocab_size), 2, 1 << 24, "vocabulary size V"));
    k.push_back(integer("model", "seq_len", SY_REF(int64_t, model.seq_len), 1, 1 << 20, "sequence length T"));
    k.push_back(integer("model", "d_model", SY_REF(int64_t, model.d_model), 1, 1 << 16, "model width C"));
    k.push_back(integer("model", "n_layers", SY_REF(int64_t, model.n_layers), 1, 1024, "transformer blocks L"));
    k.push_back(integer("model", "n_heads", SY_REF(int64_t, model.n_heads), 1, 1024, "attention heads H"));
    k.push_back(integer("model", "n_kv_heads", SY_REF(int64_t, model.n_kv_heads), 1, 1024, "key/value heads (GQA), divides n_heads"));
    k.push_back(integer("model", "head_dim", SY_REF(int64_t, model.head_dim), 0, 4096, "head size D; 0 = d_model / n_heads"));
    k.push_back(integer("model", "dense_layers", SY_REF(int64_t, model.dense_layers), 0, 1024, "leading blocks with a dense SwiGLU FFN"));
    k.push_back(integer("model", "dense_hidden", SY_REF(int64_t, model.dense_hidden), 0, 1 << 20, "dense FFN width; 0 = 8/3 d_model rounded to 64"));
    k.push_back(real("model", "rope_theta", SY_REF(double, model.rope_theta), 1.0, 1e12, "RoPE base"));
    k.push_back(real("model", "norm_eps", SY_REF(double, model.norm_eps), 0.0, 1.0, "RMSNorm epsilon, > 0 (0 divides by zero on an all-zero row)", true));
    k.push_back(boolean("model", "tie_embeddings", SY_REF(bool, model.tie_embeddings), "share the embedding with the LM head"));
    k.push_back(real("model", "init_std", SY_REF(double, model.init_std), 0.0, 10.0, "init standard deviation of matrices"));
    // moe
    k.push_back(experts_key());
    k.push_back(integer("moe", "experts_min", SY_REF(int64_t, model.moe.experts_min), 0, 4096, "allocation formula: experts of the first MoE layer (with moe.experts_max)"));
    k.push_back(integer("moe", "experts_max", SY_REF(int64_t, model.moe.experts_max), 0, 4096, "allocation formula N_m = min + (max - min) (m / (M - 1))^gamma over MoE layers m = 0..M-1; 0 = off (moe.experts)"));
    k.push_back(real("moe", "experts_gamma", SY_REF(double, model.moe.experts_gamma), 0.0, 100.0, "allocation formula exponent gamma"));
    k.push_back(integer("moe", "experts_round", SY_REF(int64_t, model.moe.experts_round), 1, 4096, "allocation formula: counts rounded to the nearest multiple of this (set it to parallel.ep)"));
    k.push_back(integer("moe", "top_k", SY_REF(int64_t, model.moe.top_k), 1, 64, "experts per token K"));
    k.push_back(integer("moe", "expert_groups", SY_REF(int64_t, model.moe.expert_groups), 1, 64, "contiguous expert groups G of every MoE layer (DeepSeek-V3 n_group; a group is meant to live on one node); divides each layer's experts"));
    k.push_back(integer("moe", "max_nodes_per_token", SY_REF(int64_t, model.moe.max_nodes_per_token), 0, 64, "node-limited routing: a token's top_k experts come from at most this many of the moe.expert_groups groups, chosen by the sum of each group's top-2 selection scores (DeepSeek-V3 topk_group); 0 = no limit"));
    k.push_back(integer("moe", "expert_hidden", SY_REF(int64_t, model.moe.expert_hidden), 1, 1 << 20, "expert hidden width F"));
    k.push_back(integer("moe", "shared_experts", SY_REF(int64_t, model.moe.shared_experts), 0, 64, "always-active experts of width F"));
    k.push_back(score_fn());
    k.push_back(boolean("moe", "renormalize", SY_REF(bool, model.moe.renormalize), "divide the top-k gate weights by their sum"));
    k.push_back(real("moe", "aux_loss_coef", SY_REF(double, model.moe.aux_loss_coef), 0.0, 100.0, "Switch load-balancing loss weight, 0 = off"));
    k.push_back(real("moe", "z_loss_coef", SY_REF(double, model.moe.z_loss_coef), 0.0, 100.0, "router z-loss weight, 0 = off"));
    k.push_back(real("moe", "entropy_coef", SY_REF(double, model.moe.entropy_coef), -100.0, 100.0, "routing entropy weight (> 0 sharpens, < 0 spreads), 0 = off"));
    k.push_back(real("moe", "bias_update_rate", SY_REF(double, model.moe.bias_update_rate), 0.0, 1.0, "aux-loss-free balancing bias step per update, 0 = off"));
    k.push_back(real("moe", "capacity_factor", SY_REF(double, model.moe.capacity_factor), 0.0, 1e6, "expert capacity factor; 0 = dropless"));
    k.push_back(real("moe", "eval_capacity_factor", SY_REF(double, model.moe.eval_capacity_factor), 0.0, 1e6, "expert capacity factor of validation and moe-eval (no training); 0 = dropless, so val_loss does not depend on batch composition"));
    // data
    k.push_back(option<DataFormat>("data", "format", SY_REF(DataFormat, data.format), "text = bytes of text files (vocab 256); bin = llm.c uint16 shards"));
    k.push_back(strings("data", "train", SY_REF(std::vector<std::string>, data.train), "training files or glob patterns"));
    k.push_back(strings("data", "val", SY_REF(std::vector<std::string>, data.val), "validation files; empty = the last val_fraction of each train file"));
    k.push_back(real("data", "val_fraction", SY_REF(double, data.val_fraction), 0.0, 0.9, "share of each train file held out when data.val is empty"));
    k.push_back(string("data", "tokenizer", SY_REF(std::string, data.tokenizer), {}, "SentencePiece .model the bin shards were encoded with (moe-data); stored in every checkpoint for moe-generate --prompt; \"\" = none"));
    // train
    k.push_back(integer("train", "steps", SY_REF(int64_t, train.steps), 0, kBig, "optimizer steps"));
    k.push_back(integer("train", "stop_after", SY_REF(int64_t, train.stop_after), 0, kBig, "end this run with a checkpoint once this many steps are done (the schedule still spans train.steps); 0 = off"));
    k.push_back(integer("train", "seed", SY_REF(int64_t, train.seed), 0, kBig, "seed of init and data order"));
    k.push_back(integer("train", "global_batch", SY_REF(int64_t, train.global_batch), 0, 1 << 30, "sequences per step over all ranks; 0 = micro_batch x grad_accum x dp"));
    k.push_back(integer("train", "micro_batch", SY_REF(int64_t, train.micro_batch), 0, 1 << 20, "sequences per rank per micro-batch; 0 = global_batch / (dp x grad_accum)"));
    k.push_back(integer("train", "grad_accum", SY_REF(int64_t, train.grad_accum), 1, 1 << 20, "micro-batches per step"));
    k.push_back(real("train", "lr", SY_REF(double, train.lr), 0.0, 10.0, "peak learning rate"));
    k.push_back(real("train", "min_lr_ratio", SY_REF(double, train.min_lr_ratio), 0.0, 1.0, "final lr as a fraction of lr (cosine decay)"));
    k.push_back(integer("train", "warmup_steps", SY_REF(int64_t, train.warmup_steps), 0, kBig, "linear warm-up steps"));
    k.push_back(real("train", "beta1", SY_REF(double, train.beta1), 0.0, 0.999999, "AdamW beta1"));
    k.push_back(real("train", "beta2", SY_REF(double, train.beta2), 0.0, 0.999999, "AdamW beta2"));
    k.push_back(real("train", "eps", SY_REF(double, train.eps), 0.0, 1.0, "AdamW epsilon, > 0 (0 gives 0/0 = NaN where a gradient is zero)", true));
    k.push_back(real("train", "weight_decay", SY_REF(double, train.weight_decay), 0.0, 10.0, "decoupled weight decay (matrices only)"));
    k.push_back(real("train", "grad_clip", SY_REF(double, train.grad_clip), 0.0, 1e9, "global gradient-norm clip, 0 = off"));
    k.push_back(integer("train", "log_every", SY_REF(int64_t, train.log_every), 1, kBig, "steps between log lines"));
    k.push_back(integer("train", "val_every", SY_REF(int64_t, train.val_every), 0, kBig, "steps between validations, 0 = never"));
    k.push_back(integer("train", "val_batches", SY_REF(int64_t, train.val_batches), 1, 1 << 20, "micro-batches per validation"));
    k.push_back(integer("train", "threads", SY_REF(int64_t, train.threads), 0, 4096, "CPU threads per rank (at most the machine's CPUs and OpenBLAS's thread limit); 0 = OMP_NUM_THREADS if set, else the CPUs this rank may use shared among the job's ranks on its node"));
    k.push_back(integer("train", "sample_every", SY_REF(int64_t, train.sample_every), 0, kBig, "steps between text samples printed by rank 0 and appended to <run dir>/samples.txt, 0 = never"));
    k.push_back(string("train", "sample_prompt", SY_REF(std::string, train.sample_prompt), {}, "prompt of the samples (byte-level models; token models start from the first validation tokens)"));
    k.push_back(integer("train", "sample_tokens", SY_REF(int64_t, train.sample_tokens), 1, 1 << 20, "tokens generated per sample"));
    k.push_back(real("train", "sample_temperature", SY_REF(double, train.sample_temperature), 0.0, 100.0, "sampling temperature of the samples, 0 = greedy"));
    k.push_back(lr_groups_key());
    // parallel
    k.push_back(integer("parallel", "dp", SY_REF(int64_t, parallel.dp), 0, 1 << 20, "data-parallel ranks; 0 = job ranks / pp"));
    k.push_back(integer("parallel", "ep", SY_REF(int64_t, parallel.ep), 0, 1 << 20, "expert-parallel ranks, divides dp; 0 = gcd(dp, experts)"));
    k.push_back(integer("parallel", "pp", SY_REF(int64_t, parallel.pp), 1, 1 << 20, "pipeline stages"));
    k.push_back(option<pipe::ScheduleKind>("parallel", "schedule", SY_REF(pipe::ScheduleKind, parallel.schedule), "pipeline schedule (pp > 1): GPipe, 1F1B, interleaved 1F1B over parallel.virtual chunks, or zero-bubble (split backward)"));
    k.push_back(integer("parallel", "microbatches", SY_REF(int64_t, parallel.microbatches), 0, 1 << 14, "micro-batches per step through the pipeline; 0 = train.grad_accum (with pp > 1 it sets train.grad_accum)"));
    k.push_back(integer("parallel", "virtual", SY_REF(int64_t, parallel.virtual_stages), 1, 64, "model chunks per pipeline rank (interleaved schedule)"));
    k.push_back(integers("parallel", "split", SY_REF(std::vector<int64_t>, parallel.split), "layers per pipeline stage (pp x virtual entries, stage order); empty = balanced by estimated cost"));
    k.push_back(option<Recompute>("parallel", "recompute", SY_REF(Recompute, parallel.recompute), "activation recomputation per pipeline stage: keep every activation, or keep only each stage's input and recompute its forward before backward"));
    k.push_back(boolean("parallel", "zero1", SY_REF(bool, parallel.zero1), "shard AdamW state over data-parallel ranks (ZeRO-1)"));
    k.push_back(option<Transport>("parallel", "transport", SY_REF(Transport, parallel.transport), "MoE row transport: shared memory (ep group on one node), flat MPI all-to-all-v, hierarchical (shared memory within a node, the network once per node pair), or auto (shm on one node, hierarchical across nodes with several ranks on a node, else mpi)"));
    k.push_back(integer("parallel", "node_size", SY_REF(int64_t, parallel.node_size), 0, 1 << 20, "ranks per node as the MoE dispatch sees it; 0 = the machine's; n = every n consecutive world ranks form a node (each within a real node; for tests and benchmarks)"));
    k.push_back(boolean("parallel", "overlap", SY_REF(bool, parallel.overlap), "chunked MoE dispatch overlapping all-to-all and experts (mpi transport)"));
    k.push_back(integer("parallel", "dispatch_chunks", SY_REF(int64_t, parallel.dispatch_chunks), 1, 64, "chunks per MoE dispatch when overlapping"));
    k.push_back(option<DispatchDtype>("parallel", "dispatch_dtype", SY_REF(DispatchDtype, parallel.dispatch_dtype), "MoE rows between ranks: fp32; bf16 both ways; fp8 (E4M3, 1x128 scales) to the experts and bf16 back (mpi transports; shm keeps fp32)"));
    k.push_back(option<CombineDtype>("parallel", "combine_dtype", SY_REF(CombineDtype, parallel.combine_dtype), "MoE rows back from the experts: auto (bf16 with a bf16 or fp8 dispatch, else fp32), fp32, bf16 (mpi transports)"));
    k.push_back(real("parallel", "timeout", SY_REF(double, parallel.timeout), 0.0, 1e6, "seconds a collective may wait before the watchdog aborts; 0 = off"));
    // precision
    k.push_back(option<Recipe>("precision", "recipe", SY_REF(Recipe, precision.recipe), "numeric recipe of the linear layers (attention projections, dense FFN, routed and shared experts): FP32, or FP8 GEMMs with per-tensor current / delayed scales or DeepSeek-V3 block scales (1x128 activations and gradients, 128x128 weights), or BF16 GEMM operands with FP32 accumulation (bf16)"));
    k.push_back(option<GradFormat>("precision", "grad_format", SY_REF(GradFormat, precision.grad_format), "FP8 format of gradients in the backward GEMMs"));
    k.push_back(integer("precision", "amax_history", SY_REF(int64_t, precision.amax_history), 1, 1 << 20, "fp8-tensor-delayed: steps of amax history a scale is computed from"));
    k.push_back(boolean("precision", "pow2_scales", SY_REF(bool, precision.pow2_scales), "round FP8 scales down to powers of two"));
    k.push_back(boolean("precision", "saturate", SY_REF(bool, precision.saturate), "FP8 overflow clamps to the largest finite value (else NaN / Inf)"));
    k.push_back(option<Moments>("precision", "moments", SY_REF(Moments, precision.moments), "storage of the AdamW moments: FP32, or BF16 (half the optimizer memory; the update computes in FP32; checkpoints hold FP32)"));
    k.push_back(boolean("precision", "fp8_activations", SY_REF(bool, precision.fp8_activations), "FP8 recipes: activations saved for the weight gradient of FP8 linear layers (norm outputs feeding wqkv / dense w13, SwiGLU outputs feeding w2) are kept in FP8, not FP32"));
    // checkpoint
    k.push_back(integer("checkpoint", "interval", SY_REF(int64_t, checkpoint.interval), 0, kBig, "save every N steps (and on SIGUSR1/SIGTERM); 0 = no periodic saves"));
    k.push_back(boolean("checkpoint", "at_end", SY_REF(bool, checkpoint.at_end), "save a checkpoint when the run reaches train.steps"));
    k.push_back(integer("checkpoint", "keep", SY_REF(int64_t, checkpoint.keep), 1, 1 << 20, "newest checkpoints to keep"));
    k.push_back(integer("checkpoint", "keep_every", SY_REF(int64_t, checkpoint.keep_every), 0, kBig, "also keep every step that is a multiple of this; 0 = none"));
    k.push_back(resume_key("\"auto\" (from latest), \"none\", or a checkpoint directory"));
    k.push_back(boolean("checkpoint", "fallback", SY_REF(bool, checkpoint.fallback), "on an unusable checkpoint or a damaged `latest`, resume from this run's newest intact checkpoint"));
    k.push_back(boolean("checkpoint", "overwrite", SY_REF(bool, checkpoint.overwrite), "let a run start in a checkpoint directory that holds another run's checkpoints; they are deleted once this run's first checkpoint is saved"));
    k.push_back(boolean("checkpoint", "async", SY_REF(bool, checkpoint.async), "write checkpoints in the background"));
    k.push_back(integer("checkpoint", "staging_mb", SY_REF(int64_t, checkpoint.staging_mb), 0, 1 << 30, "staging memory per rank for async saves (MiB); larger shards save synchronously"));
    k.push_back(string("checkpoint", "dir", SY_REF(std::string, checkpoint.dir), {}, "checkpoint directory; \"\" = <run dir>/checkpoints"));
    k.push_back(string("checkpoint", "init_from", SY_REF(std::string, checkpoint.init_from), {}, "start from the weights (only) of this checkpoint, consolidated file or run directory, at step 0 with fresh optimizer state; a checkpoint of this run to resume wins; \"\" = initialise from train.seed"));
    // launch
    k.push_back(integer("launch", "np", SY_REF(int64_t, launch.np), 0, 1 << 24, "ranks moe-launch starts; 0 = --np, SLURM_NTASKS, the hostfile's slots, or pp x dp"));
    k.push_back(string("launch", "hostfile", SY_REF(std::string, launch.hostfile), {}, "OpenMPI hostfile (\"host slots=N\" lines); \"\" = this machine"));
    k.push_back(string("launch", "map_by", SY_REF(std::string, launch.map_by), {}, "mpirun --map-by (slot, node, ppr:N:node, ...)"));
    k.push_back(string("launch", "bind_to", SY_REF(std::string, launch.bind_to), {}, "mpirun --bind-to (none, core, socket, ...)"));
    k.push_back(strings("launch", "env", SY_REF(std::vector<std::string>, launch.env), "environment variables forwarded to every rank, besides OMP_*, OPENBLAS_*, SY_*"));
    k.push_back(real("launch", "hang_timeout", SY_REF(double, launch.hang_timeout), 1.0, 1e6, "seconds without a heartbeat before a rank counts as hung"));
    k.push_back(real("launch", "start_timeout", SY_REF(double, launch.start_timeout), 1.0, 1e6, "seconds a rank may take to write its first heartbeat"));
    k.push_back(integer("launch", "max_restarts", SY_REF(int64_t, launch.max_restarts), 0, 1 << 20, "restarts from the latest checkpoint after failures"));
    k.push_back(real("launch", "restart_backoff", SY_REF(double, launch.restart_backoff), 0.0, 1e5, "seconds before the first restart, doubled for each further one"));
    k.push_back(real("launch", "grace", SY_REF(double, launch.grace), 1.0, 1e5, "seconds ranks get to checkpoint and exit after a stop signal"));
    k.push_back(boolean("launch", "requeue", SY_REF(bool, launch.requeue), "inside Slurm, requeue the job after SIGUSR1 (the pre-timeout signal) stopped it with a checkpoint"));
    k.push_back(boolean("launch", "report", SY_REF(bool, launch.report), "write <run dir>/report/ (PNG curves, expert-load heatmaps, summary) after each run"));
    return k;
  }();
  return keys;
}
#undef SY_REF

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1] ? 1 : 0)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// The closest known key ("section.key") or, for a bare name, section.
std::string suggest(const std::string& wanted) {
  bool section = wanted.find('.') == std::string::npos;
  std::string best;
  size_t best_d = 4;
  for (const Key& k : schema()) {
    std::string cand = section ? k.section : k.full();
    size_t d = edit_distance(wanted, cand);
    if (d < best_d) best_d = d, best = cand;
  }
  return best.empty() ? "" : fmt::format(" (did you mean '{}'?)", section ? "[" + best + "]" : best);
}

const Key* find_key(const std::string& section, const std::string& name) {
  for (const Key& k : schema())
    if (k.section == section && k.name == name) return &k;
  return nullptr;
}

bool known_section(const std::string& s) {
  return std::any_of(schema().begin(), schema().end(), [&](const Key& k) { return k.section == s; });
}

void apply_table(RunConfig& cfg, const toml::table& root, const std::string& source) {
  for (auto&& [sk, sv] : root) {
    std::string section(sk.str());
    Where w{source, static_cast<int64_t>(sv.source().begin.line)};
    SY_CONFIG_CHECK(known_section(section), "{}: unknown section [{}]{}", w.str(), section, suggest(section));
    SY_CONFIG_CHECK(sv.is_table(), "{}: '{}' must be a section [{}], not a value", w.str(), section, section);
    for (auto&& [kk, kv] : *sv.as_table()) {
      std::string name(kk.str());
      Where kw{source, static_cast<int64_t>(kv.source().begin.line)};
      const Key* key = find_key(section, name);
      SY_CONFIG_CHECK(key, "{}: unknown key '{}.{}'{}", kw.str(), section, name, suggest(section + "." + name));
      key->set(cfg, kv, kw);
    }
  }
}

void apply_override(RunConfig& cfg, const std::string& ov) {
  Where w{fmt::format("--set {}", ov), 0};
  auto eq = ov.find('=');
  SY_CONFIG_CHECK(eq != std::string::npos && eq > 0, "{}: expected section.key=value", w.str());
  std::string path = ov.substr(0, eq), value = ov.substr(eq + 1);
  auto dot = path.find('.');
  SY_CONFIG_CHECK(dot != std::string::npos, "{}: expected section.key=value", w.str());
  const Key* key = find_key(path.substr(0, dot), path.substr(dot + 1));
  SY_CONFIG_CHECK(key, "{}: unknown key '{}'{}", w.str(), path, suggest(path));
  // The value is TOML ("4", "1e-3", "true", "[\"a\", \"b\"]"); for keys
  // that take strings, anything that is not a TOML string or array is
  // taken as the bare string itself (--set run.name=foo).
  toml::table t;
  bool parsed = true;
  try {
    t = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    parsed = false;
  }
  if (!parsed || (key->textual && !t.get("v")->is_string() && !t.get("v")->is_array())) {
    t = toml::table{};
    t.insert("v", value);
  }
  key->set(cfg, *t.get("v"), w);
}

}  // namespace

const char* default_config_text() { return embedded::tiny_toml; }

void RunConfig::resolve_batch(int64_t dp) {
  TrainSection& t = train;
  if (parallel.microbatches > 0) {
    SY_CONFIG_CHECK(t.grad_accum == 1 || t.grad_accum == parallel.microbatches,
                    "{}: parallel.microbatches = {} and train.grad_accum = {} disagree: both are the micro-batches "
                    "of a step; set one of them", source, parallel.microbatches, t.grad_accum);
    t.grad_accum = parallel.microbatches;
  }
  parallel.microbatches = t.grad_accum;
  SY_CONFIG_CHECK(t.micro_batch > 0 || t.global_batch > 0,
                  "{}: set train.global_batch or train.micro_batch (both are 0)", source);
  if (t.micro_batch == 0) {
    SY_CONFIG_CHECK(t.global_batch % (dp * t.grad_accum) == 0,
                    "{}: train.global_batch = {} does not split over {} data-parallel rank{} x train.grad_accum = {}; "
                    "use a multiple of {}", source, t.global_batch, dp, dp == 1 ? "" : "s", t.grad_accum,
                    dp * t.grad_accum);
    t.micro_batch = t.global_batch / (dp * t.grad_accum);
  } else if (t.global_batch == 0) {
    t.global_batch = t.micro_batch * t.grad_accum * dp;
  }
  SY_CONFIG_CHECK(t.global_batch == t.micro_batch * t.grad_accum * dp,
                  "{}: train.global_batch = {} but train.micro_batch x train.grad_accum x dp = {} x {} x {} = {}; "
                  "set train.micro_batch = 0 to derive it", source, t.global_batch, t.micro_batch, t.grad_accum, dp,
                  t.micro_batch * t.grad_accum * dp);
}

RunConfig parse_config(const std::string& text, const std::string& source,
                       const std::vector<std::string>& overrides) {
  RunConfig cfg;
  cfg.source = source;
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    SY_CONFIG_FAIL("{}:{}:{}: TOML syntax error: {}", source, e.source().begin.line,
                   e.source().begin.column, e.description());
  }
  apply_table(cfg, root, source);
  for (const std::string& ov : overrides) apply_override(cfg, ov);
  resolve_experts(cfg.model, source);
  validate(cfg.model, source);
  SY_CONFIG_CHECK(cfg.parallel.dispatch_dtype != DispatchDtype::fp8 ||
                      (cfg.precision.recipe != Recipe::fp8_tensor_current &&
                       cfg.precision.recipe != Recipe::fp8_tensor_delayed),
                  "{}: parallel.dispatch_dtype = \"fp8\" cannot be used with precision.recipe = \"{}\": its FP8 "
                  "scale is one per whole tensor (the expert rows of every sender), which no sender knows, so the "
                  "rows sent would not be what the expert GEMM quantizes; use precision.recipe = \"fp8-block\" "
                  "(1x128 scales, exact) or parallel.dispatch_dtype = \"bf16\"",
                  source, cfg.precision.recipe == Recipe::fp8_tensor_current ? "fp8-tensor-current" : "fp8-tensor-delayed");
  SY_CONFIG_CHECK(!cfg.data.train.empty(), "{}: data.train is empty: name the training files", source);
  SY_CONFIG_CHECK(cfg.data.format != DataFormat::text || cfg.model.vocab_size >= 256,
                  "{}: data.format = \"text\" has byte tokens 0..255 but model.vocab_size = {}; "
                  "set model.vocab_size >= 256", source, cfg.model.vocab_size);
  SY_CONFIG_CHECK(cfg.data.tokenizer.empty() || cfg.data.format == DataFormat::bin,
                  "{}: data.tokenizer = \"{}\" needs data.format = \"bin\" (shards that moe-data encoded with it); "
                  "text data is byte-level", source, cfg.data.tokenizer);
  return cfg;
}

RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  // A regular file only (a FIFO would block, a directory or /dev/zero
  // never parses): the message names the path and what it is.
  return parse_config(read_text_file(path, "config file"), path, overrides);
}

std::string to_toml(const RunConfig& cfg) {
  std::string out, section;
  for (const Key& k : schema()) {
    if (k.section != section) {
      out += fmt::format("{}[{}]\n", section.empty() ? "" : "\n", k.section);
      section = k.section;
    }
    out += fmt::format("{} = {}\n", k.name, k.show(cfg));
  }
  return out;
}

std::vector<std::string> differing_keys(const RunConfig& a, const RunConfig& b,
                                        const std::vector<std::string>& sections) {
  std::vector<std::string> out;
  for (const Key& k : schema()) {
    if (std::find(sections.begin(), sections.end(), k.section) == sections.end()) continue;
    std::string va = k.show(a), vb = k.show(b);
    if (va != vb) out.push_back(fmt::format("{} = {} there, {} here", k.full(), va, vb));
  }
  return out;
}

std::string describe_keys() {
  std::string out;
  for (const Key& k : schema())
    out += fmt::format("  {:<24} {:<34} {}\n", k.full(), k.type, k.doc);
  return out;
}

}  // namespace sy
