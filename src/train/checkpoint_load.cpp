// Loading a checkpoint into this rank's buffers (any layout loads any
// checkpoint): the state, checked against this model, then the tensors and
// moment ranges this rank's layout needs, verified.
#include "train/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <unordered_set>

#include "ckpt/format.h"
#include "ckpt/reader.h"
#include "core/check.h"
#include "train/checkpoint_detail.h"

namespace sy {

namespace fs = std::filesystem;

TrainState Checkpointer::load(const std::string& dir, float* params, AdamW& opt) {
  TrainState st;
  std::string err;
  try {
    ckpt::Reader r(dir);
    const ckpt::Manifest& m = r.manifest();
    RunConfig theirs = parse_config(m.config_toml, dir + " (its config)");
    std::vector<std::string> diffs = differing_keys(theirs, cfg_, {"model", "moe"});
    // The evaluation capacity changes how validation runs, not the model.
    std::erase_if(diffs, [](const std::string& k) { return k.starts_with("moe.eval_capacity_factor "); });
    SY_CHECK(diffs.empty(), "checkpoint '{}' holds a different model ({}): it cannot be loaded into this config", dir,
             fmt::join(diffs, "; "));
    // Everything besides the tensors first, against what this model needs.
    const std::string name = fs::path(dir).lexically_normal().filename().string();
    if (const int64_t s = ckpt::parse_step_dir(name); s >= 0)
      SY_CHECK(s == m.step, "checkpoint '{}': its manifest says step {}, its directory name step {}: the manifest is "
               "not from this checkpoint", dir, m.step, s);
    if (!m.tokenizer_model.empty())
      SY_CHECK(m.tokenizer_model == tokenizer_, "checkpoint '{}' was trained with a tokenizer ({} bytes) {}: resuming "
               "would mix vocabularies; set data.tokenizer to the model its run used", dir, m.tokenizer_model.size(),
               tokenizer_.empty() ? std::string("and data.tokenizer is not set")
                                  : fmt::format("that differs from data.tokenizer '{}'", cfg_.data.tokenizer));
    st = m;  // the state, checked below against what this model needs
    const int64_t L = cfg_.model.moe_layers(), E = cfg_.model.moe.experts;
    if (L > 0) {
      if (m.bias_shape.empty() && !m.sealed) {
        st.bias_shape = {L, E};  // format 1 without the datasets: start at zero
        st.expert_bias.assign(static_cast<size_t>(L * E), 0.f);
        st.expert_load.assign(static_cast<size_t>(L * E), 0);
      } else {
        SY_CHECK(m.bias_shape == std::vector<int64_t>({L, E}), "checkpoint '{}': datasets 'expert_bias' and "
                 "'expert_load' have shape ({}), the model needs ({}, {}) (MoE layers, experts)", dir,
                 fmt::join(m.bias_shape, ", "), L, E);
      }
    } else {
      SY_CHECK(m.bias_shape.empty(), "checkpoint '{}' holds expert_bias ({}) but the model has no MoE layers", dir,
               fmt::join(m.bias_shape, "x"));
    }
    if (!m.fp8_shape.empty()) {
      SY_CHECK(m.fp8_shape[0] == static_cast<int64_t>(full_.params().size()),
               "checkpoint '{}': fp8_amax_history covers {} tensors, the model has {}", dir, m.fp8_shape[0],
               full_.params().size());
      SY_CHECK(m.fp8_shape[2] <= std::min(m.step, theirs.precision.amax_history),
               "checkpoint '{}': fp8_amax_history holds {} steps, more than the {} it can have after {} steps with "
               "precision.amax_history = {}", dir, m.fp8_shape[2], std::min(m.step, theirs.precision.amax_history),
               m.step, theirs.precision.amax_history);
    } else {
      SY_CHECK(!m.sealed || theirs.precision.recipe != Recipe::fp8_tensor_delayed || m.step == 0,
               "checkpoint '{}' was saved with precision.recipe = \"fp8-tensor-delayed\" after {} steps but holds "
               "no fp8_amax_history", dir, m.step);
    }
    auto entry = [&](const ParamInfo& p) -> const ckpt::TensorEntry& {
      const ckpt::TensorEntry& t = r.tensor(p.name);
      SY_CHECK(t.shape == p.shape.dims, "checkpoint '{}': tensor '{}' has shape {} there, {} here", dir, p.name,
               Shape(t.shape).str(), p.shape.str());
      return t;
    };
    // Tensor by tensor, its weights then its moment ranges: the order the
    // shard files were written in, so reads stay sequential.
    std::vector<std::vector<const OptRange*>> ranges_of(local_.params().size());
    for (const OptRange& range : opt.ranges()) ranges_of[range.param].push_back(&range);
    for (size_t i = 0; i < local_.params().size(); ++i) {
      const ParamInfo& p = local_.params()[i];
      const ckpt::TensorEntry& t = entry(p);
      r.read("params", t, params + p.offset, 0, p.numel());
      for (const char* g : {"adam_m", "adam_v"})
        for (const OptRange* range : ranges_of[i]) {
          std::vector<float> part(static_cast<size_t>(range->end - range->begin));
          r.read(g, t, part.data(), range->begin - p.offset, range->end - p.offset);
          opt.set_moments(g[5], range->state, static_cast<int64_t>(part.size()), part.data());
        }
    }
  } catch (const Error& e) {
    err = e.what();
  } catch (const std::exception& e) {
    err = fmt::format("checkpoint '{}': {}", dir, e.what());
  }
  int who = 0;
  std::string msg = ckpt_detail::agree_on_error(grid_.world(), err, &who);
  SY_CONFIG_CHECK(msg.empty(), "{}{}", msg, grid_.world().size() > 1 ? fmt::format(" (seen on rank {})", who) : "");
  return st;
}

}  // namespace sy

namespace sy {

TrainState Checkpointer::load_weights(const std::string& path, float* params, std::string* resolved) {
  TrainState st;
  std::string err, dir;
  const std::string key = fmt::format("{}: checkpoint.init_from = '{}'", cfg_.source, path);
  try {
    dir = ckpt::resolve_checkpoint(path);
    ckpt::Reader r(dir);
    const ckpt::Manifest& m = r.manifest();
    // Names and shapes, the whole model against the whole checkpoint, before
    // anything is read: the same verdict on every rank whatever it holds.
    for (const ParamInfo& p : full_.params()) {
      const ckpt::TensorEntry* t = m.find(p.name);
      SY_CHECK(t, "{}: the model's tensor '{}' {} is missing from checkpoint '{}' (the checkpoint is of another "
               "model; `moe-ckpt ls {}` lists what it holds)", key, p.name, p.shape.str(), dir, dir);
      SY_CHECK(t->shape == p.shape.dims, "{}: tensor '{}' has shape {} in checkpoint '{}' ({}), the model needs {}",
               key, p.name, Shape(t->shape).str(), dir, r.file_path(*t), p.shape.str());
    }
    std::unordered_set<std::string> names;
    for (const ParamInfo& p : full_.params()) names.insert(p.name);
    for (const ckpt::TensorEntry& t : m.tensors) {
      SY_CHECK(names.count(t.name), "{}: checkpoint '{}' holds tensor '{}' {} that this model does not have (the checkpoint is of "
               "another model)", key, dir, t.name, Shape(t.shape).str());
    }
    // The token ids mean what the source's tokenizer says: another tokenizer
    // (or none, bytes) would train the weights on a different vocabulary.
    SY_CHECK(m.tokenizer_model.empty() || m.tokenizer_model == tokenizer_, "{}: checkpoint '{}' was trained with a "
             "tokenizer ({} bytes) {}; set data.tokenizer to the model its run used", key, dir,
             m.tokenizer_model.size(), tokenizer_.empty() ? std::string("and data.tokenizer is not set")
                                                          : fmt::format("that differs from data.tokenizer '{}'",
                                                                        cfg_.data.tokenizer));
    st = m;
    // Settings that keep every shape but change what the weights compute
    // (top_k, score function, rope_theta, ...): said, not refused, since a
    // fine-tune may change them on purpose.
    if (grid_.world().rank() == 0) {
      std::vector<std::string> diffs;
      try {
        diffs = differing_keys(parse_config(m.config_toml, dir + " (its config)"), cfg_, {"model", "moe"});
      } catch (const Error&) {
        diffs = {"(its config does not parse here)"};
      }
      if (!diffs.empty())
        std::cout << fmt::format("note: checkpoint.init_from: the model settings of '{}' differ from this run's: {}; "
                                 "every tensor fits, and this run computes as its own config says\n", dir,
                                 fmt::join(diffs, "; ")) << std::flush;
    }
    const int64_t L = cfg_.model.moe_layers(), E = cfg_.model.moe.experts;
    if (L == 0 || m.bias_shape != std::vector<int64_t>({L, E})) st.expert_bias.clear();  // none, or format 1
    for (const ParamInfo& p : local_.params())
      r.read("params", r.tensor(p.name), params + p.offset, 0, p.numel());
  } catch (const Error& e) {
    err = e.what();
  } catch (const std::exception& e) {
    err = fmt::format("{}: {}", key, e.what());
  }
  if (!err.empty() && err.find("checkpoint.init_from") == std::string::npos) err = key + ": " + err;
  int who = 0;
  std::string msg = ckpt_detail::agree_on_error(grid_.world(), err, &who);
  SY_CONFIG_CHECK(msg.empty(), "{}{}", msg, grid_.world().size() > 1 ? fmt::format(" (seen on rank {})", who) : "");
  *resolved = dir;
  return st;
}

}  // namespace sy
