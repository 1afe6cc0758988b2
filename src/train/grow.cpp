#include "train/grow.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "ckpt/format.h"
#include "config/run.h"
#include "core/check.h"
#include "core/rng.h"
#include "model/layout.h"

#include <fmt/ranges.h>

namespace sy {

namespace fs = std::filesystem;

namespace {

// The checkpoint's tensor `name` in all three groups (weights, moments).
struct Tensor3 {
  std::vector<float> g[3];
};

Tensor3 read3(ckpt::Reader& r, const std::string& name) {
  Tensor3 t;
  const ckpt::TensorEntry& e = r.tensor(name);
  for (int i = 0; i < 3; ++i) t.g[i] = r.read_all(ckpt::kGroups[i], e);
  return t;
}

double stddev(const std::vector<float>& x) {
  double s = 0, s2 = 0;
  for (float v : x) s += v, s2 += static_cast<double>(v) * v;
  const double n = static_cast<double>(x.size()), mean = s / n;
  return std::sqrt(std::max(0.0, s2 / n - mean * mean));
}

}  // namespace

GrowResult grow_experts(ckpt::Reader& r, const std::string& out, const GrowOptions& o) {
  const ckpt::Manifest& man = r.manifest();
  RunConfig cfg = parse_config(man.config_toml, r.path() + " (its config)");
  const ModelConfig old = cfg.model;
  SY_CONFIG_CHECK(old.moe_layers() > 0, "grow: '{}' has no MoE layers (model.dense_layers = model.n_layers = {})",
                  r.path(), old.n_layers);
  SY_CONFIG_CHECK(o.add >= 1, "grow: --add {} must be at least 1", o.add);
  std::vector<bool> chosen(static_cast<size_t>(old.n_layers), o.layers.empty());
  for (int64_t l = 0; l < old.dense_layers; ++l) chosen[static_cast<size_t>(l)] = false;
  for (int64_t l : o.layers) {
    SY_CONFIG_CHECK(l >= 0 && l < old.n_layers, "grow: --layer {} is not a block of this model (model.n_layers = {})",
                    l, old.n_layers);
    SY_CONFIG_CHECK(old.is_moe_layer(l), "grow: --layer {} is a dense block (model.dense_layers = {}); the MoE "
                    "layers are {}..{}", l, old.dense_layers, old.dense_layers, old.n_layers - 1);
    chosen[static_cast<size_t>(l)] = true;
  }
  GrowResult res;
  std::vector<int64_t> counts;
  for (int64_t l = old.dense_layers; l < old.n_layers; ++l) {
    const int64_t E = old.experts_at(l), En = E + (chosen[static_cast<size_t>(l)] ? o.add : 0);
    SY_CONFIG_CHECK(En <= 4096, "grow: layer {} would have {} experts, more than moe.experts allows (4096)", l, En);
    SY_CONFIG_CHECK(o.ep <= 0 || En % o.ep == 0, "grow: layer {} would have {} experts ({} + --add {}), not a "
                    "multiple of --ep {}: every MoE layer's count must split evenly over the expert-parallel ranks",
                    l, En, E, chosen[static_cast<size_t>(l)] ? o.add : 0, o.ep);
    res.before.push_back(E), res.after.push_back(En), counts.push_back(En);
  }
  cfg.model.moe.layer_experts = counts;
  resolve_experts(cfg.model, "grow");
  validate(cfg.model, "grow");
  const ModelConfig& m = cfg.model;
  res.config_experts = m.experts_text();

  SY_CONFIG_CHECK(!out.empty(), "grow: an empty output path");
  SY_CONFIG_CHECK(!fs::exists(fs::symlink_status(out)), "grow: '{}' already exists; grow writes a new checkpoint "
                  "(nothing is overwritten): remove it or choose another path", out);
  const std::string tmp = out + ".tmp";
  SY_CONFIG_CHECK(!fs::exists(fs::symlink_status(tmp)), "grow: '{}' already exists (an interrupted grow?); remove it "
                  "first", tmp);
  const fs::path parent = fs::absolute(out).parent_path();
  SY_CONFIG_CHECK(fs::is_directory(parent), "grow: cannot create '{}': '{}' is not a directory", out, parent.string());

  const ParamLayout layout(m);
  const int64_t C = m.d_model;
  ckpt::Manifest nm = man;
  nm.tensors.clear();
  bool created = false;
  try {
    h5::File f = h5::File::create(tmp);
    created = true;
    for (const ParamInfo& p : layout.params()) {
      Tensor3 t;
      const ckpt::TensorEntry* have = man.find(p.name);
      const int64_t Eold = p.layer >= 0 ? old.experts_at(p.layer) : 0;
      if (have && have->shape == p.shape.dims) {
        t = read3(r, p.name);  // unchanged: weights and moments bit for bit
      } else if (p.kind == ParamKind::router) {
        // Old rows and their moments; new rows: the source's row or a fresh draw, zero moments.
        Tensor3 src = read3(r, p.name);
        for (int i = 0; i < 3; ++i) {
          t.g[i].assign(static_cast<size_t>(p.numel()), 0.f);
          std::copy(src.g[i].begin(), src.g[i].end(), t.g[i].begin());
        }
        const int64_t En = p.shape.dims[0];
        for (int64_t x = Eold; x < En; ++x) {
          float* row = t.g[0].data() + x * C;
          if (o.init == GrowInit::fresh)
            init_param_slice(row, p, o.seed, x * C, (x + 1) * C);
          else
            std::copy(src.g[0].begin() + ((x - Eold) % Eold) * C, src.g[0].begin() + ((x - Eold) % Eold + 1) * C, row);
        }
      } else if ((p.kind == ParamKind::expert_w13 || p.kind == ParamKind::expert_w2) && p.expert >= Eold) {
        const int64_t s = (p.expert - Eold) % Eold;  // round-robin source
        const std::string src = fmt::format("layers.{}.moe.experts.{}.{}", p.layer, s,
                                            p.kind == ParamKind::expert_w13 ? "w13" : "w2");
        t.g[1].assign(static_cast<size_t>(p.numel()), 0.f);
        t.g[2] = t.g[1];
        if (o.init == GrowInit::fresh) {
          t.g[0].assign(static_cast<size_t>(p.numel()), 0.f);
          init_param_slice(t.g[0].data(), p, o.seed, 0, p.numel());
        } else {
          t.g[0] = r.read_all("params", r.tensor(src));
          if (o.init == GrowInit::noise && o.noise > 0) {
            const float sd = static_cast<float>(o.noise * stddev(t.g[0]));
            const uint64_t key = stream_key(o.seed, "grow." + p.name);
            for (size_t i = 0; i < t.g[0].size(); ++i) t.g[0][i] += sd * normal_at(key, i);
          }
        }
      } else {
        SY_CONFIG_FAIL("grow: '{}' has tensor '{}' of shape ({}), the grown model needs ({})", r.path(), p.name,
                       have ? fmt::format("{}", fmt::join(have->shape, ", ")) : std::string("absent"),
                       fmt::join(p.shape.dims, ", "));
      }
      for (int i = 0; i < 3; ++i) ckpt::write_tensor(f, ckpt::kGroups[i], p.name, t.g[i].data(), p.shape.dims);
      nm.tensors.push_back({p.name, p.shape.dims, ".", p.index});
    }
    // Balancing bias and loads: (moe_layers, E max) rows, padded.
    const int64_t L = m.moe_layers(), Eo = old.moe.experts, En = m.moe.experts;
    nm.bias_shape = {L, En};
    nm.expert_bias.assign(static_cast<size_t>(L * En), 0.f);
    nm.expert_load.assign(static_cast<size_t>(L * En), 0);
    const bool have_bias = man.bias_shape == std::vector<int64_t>({L, Eo});
    for (int64_t l = 0; l < L; ++l) {
      const int64_t E = old.experts_at(old.dense_layers + l), Enl = m.experts_at(m.dense_layers + l);
      for (int64_t x = 0; x < Enl; ++x) {
        const int64_t s = x < E ? x : (x - E) % E;
        float b = have_bias ? man.expert_bias[static_cast<size_t>(l * Eo + s)] : 0.f;
        if (x >= E) b = o.new_bias ? *o.new_bias : (o.init == GrowInit::fresh ? 0.f : b);
        nm.expert_bias[static_cast<size_t>(l * En + x)] = b;
        if (x < E && have_bias) nm.expert_load[static_cast<size_t>(l * En + x)] = man.expert_load[static_cast<size_t>(l * Eo + x)];
      }
    }
    // fp8-tensor-delayed histories are by tensor index: old tensors keep theirs, a new expert takes its source's.
    if (man.fp8_len() > 0) {
      const ParamLayout before(old);
      std::map<std::string, int64_t> index;
      for (const ParamInfo& p : before.params()) index[p.name] = p.index;
      const int64_t per = 3 * man.fp8_len();
      nm.fp8_shape = {static_cast<int64_t>(layout.params().size()), 3, man.fp8_len()};
      nm.fp8_amax_history.assign(static_cast<size_t>(nm.fp8_shape[0] * per), 0.f);
      for (const ParamInfo& p : layout.params()) {
        std::string name = p.name;
        const int64_t Eold = p.layer >= 0 ? old.experts_at(p.layer) : 0;
        if (p.expert >= Eold && p.expert >= 0)
          name = fmt::format("layers.{}.moe.experts.{}.{}", p.layer, (p.expert - Eold) % Eold,
                             p.kind == ParamKind::expert_w13 ? "w13" : "w2");
        const int64_t i = index.at(name);
        std::copy(man.fp8_amax_history.begin() + i * per, man.fp8_amax_history.begin() + (i + 1) * per,
                  nm.fp8_amax_history.begin() + p.index * per);
      }
    }
    nm.config_toml = to_toml(cfg);
    nm.run_id = ckpt::new_run_id();
    nm.format_version = ckpt::kFormatVersion;
    nm.world = nm.pp = nm.dp = nm.ep = 1;
    nm.shards = 1;
    nm.shard_digests.clear();
    ckpt::write_manifest_into(f, nm);
    f.close();
    h5::sync_path(tmp);
    std::error_code ec;
    fs::rename(tmp, out, ec);
    SY_CHECK(!ec, "grow: cannot rename '{}' to '{}': {}", tmp, out, ec.message());
  } catch (...) {
    std::error_code ec;
    if (created) fs::remove(tmp, ec);  // only what this call created
    throw;
  }
  return res;
}

}  // namespace sy
