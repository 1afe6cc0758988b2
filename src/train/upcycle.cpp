#include "train/upcycle.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "ckpt/format.h"
#include "ckpt/repack.h"
#include "config/run.h"
#include "core/check.h"
#include "core/rng.h"
#include "core/version.h"
#include "model/layout.h"
#include "train/metrics.h"
#include "train/weights_file.h"

namespace sy {

namespace {

// "A-B", "A,B,C" or a mix; ConfigError naming the option.
std::set<int64_t> parse_layers(const std::string& list, int64_t L) {
  std::set<int64_t> out;
  std::stringstream in(list);
  auto number = [&](const std::string& s) -> int64_t {
    size_t used = 0;
    int64_t v = -1;
    try {
      v = std::stoll(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    SY_CONFIG_CHECK(used == s.size() && !s.empty(), "--layers {}: '{}' is not a layer number", list, s);
    SY_CONFIG_CHECK(v >= 0 && v < L, "--layers {}: layer {} is outside the model's layers 0..{}", list, v, L - 1);
    return v;
  };
  for (std::string item; std::getline(in, item, ',');) {
    const size_t dash = item.find('-', 1);
    if (dash == std::string::npos) {
      out.insert(number(item));
      continue;
    }
    const int64_t a = number(item.substr(0, dash)), b = number(item.substr(dash + 1));
    SY_CONFIG_CHECK(a <= b, "--layers {}: the range {} runs backwards", list, item);
    for (int64_t l = a; l <= b; ++l) out.insert(l);
  }
  SY_CONFIG_CHECK(!out.empty(), "--layers '{}' names no layer", list);
  return out;
}

}  // namespace

UpcycleResult upcycle(ckpt::Reader& r, const std::string& out, const UpcycleOptions& o) {
  const RunConfig src = parse_config(r.manifest().config_toml, r.path() + " (its config)");
  const ModelConfig& sm = src.model;
  const int64_t L = sm.n_layers, E = o.experts, K = o.top_k, G = o.granularity, Fd = sm.dense_width();
  SY_CONFIG_CHECK(E >= 1, "--experts {} must be at least 1", E);
  SY_CONFIG_CHECK(K >= 1 && K <= E, "--top-k {} must be between 1 and --experts {}", K, E);
  SY_CONFIG_CHECK(G >= 1, "--granularity {} must be at least 1", G);
  SY_CONFIG_CHECK(E % G == 0, "--experts {} is not a multiple of --granularity {} (each group of G experts holds "
                  "the G segments of the dense FFN once)", E, G);
  SY_CONFIG_CHECK(Fd % G == 0, "--granularity {} does not divide the dense FFN width {} (model.dense_hidden) of '{}'",
                  G, Fd, r.path());
  SY_CONFIG_CHECK(std::isfinite(o.noise) && o.noise >= 0, "--noise {} must be a finite number >= 0", o.noise);
  const std::set<int64_t> chosen = o.layers.empty() ? parse_layers("0-" + std::to_string(L - 1), L)
                                                    : parse_layers(o.layers, L);
  const int64_t first = *chosen.begin();
  SY_CONFIG_CHECK(*chosen.rbegin() == L - 1 && static_cast<int64_t>(chosen.size()) == L - first,
                  "--layers {}: Switchyard's MoE blocks are the last ones (model.dense_layers dense blocks first, "
                  "then MoE), so the layers to upcycle must run from one layer to the last ({}), e.g. {}-{}",
                  o.layers, L - 1, first, L - 1);
  SY_CONFIG_CHECK(sm.dense_layers == L, "'{}' is not a dense model: layers {}..{} are already MoE (model.dense_layers "
                  "= {}, model.n_layers = {}); upcycle turns a dense model's SwiGLU FFNs into experts", r.path(),
                  sm.dense_layers, L - 1, sm.dense_layers, L);

  RunConfig cfg = src;
  ModelConfig& m = cfg.model;
  m.dense_layers = first;
  m.moe.experts = E, m.moe.top_k = K, m.moe.expert_hidden = Fd / G;
  m.moe.shared_experts = 0, m.moe.score = ScoreFn::softmax, m.moe.renormalize = true;
  cfg = parse_config(to_toml(cfg), out + " (the upcycled config)");
  const uint64_t seed = static_cast<uint64_t>(o.seed >= 0 ? o.seed : src.train.seed);

  ckpt::Manifest man = new_weights_manifest(cfg);
  man.tokenizer_model = r.manifest().tokenizer_model;  // the ids keep their meaning
  const ParamLayout layout(cfg.model);
  if (cfg.model.moe_layers() > 0) {
    man.bias_shape = {cfg.model.moe_layers(), E};
    man.expert_bias.assign(static_cast<size_t>(cfg.model.moe_layers() * E), 0.f);
    man.expert_load.assign(static_cast<size_t>(cfg.model.moe_layers() * E), 0);
  }
  const int64_t C = m.d_model, F = Fd / G;
  std::string cached_name;
  std::vector<float> cached;
  auto source = [&](const std::string& name) -> const std::vector<float>& {
    if (name != cached_name) cached = r.read_all("params", r.tensor(name)), cached_name = name;
    return cached;
  };
  ckpt::write_weights_only(out, man, [&](size_t i, std::vector<float>& data) {
    const ParamInfo& p = layout.params()[i];
    const std::string pre = fmt::format("layers.{}.", p.layer);
    if (p.kind == ParamKind::router) {
      // Group c's G experts share the row drawn for expert c * G.
      std::vector<float> fresh(data.size());
      init_param_slice(fresh.data(), p, seed, 0, p.numel());
      for (int64_t e = 0; e < E; ++e)
        std::copy_n(fresh.data() + (e / G) * G * C, C, data.data() + e * C);
      return;
    }
    if (p.kind != ParamKind::expert_w13 && p.kind != ParamKind::expert_w2) {
      data = r.read_all("params", r.tensor(p.name));  // unchanged (attention, norms, embeddings, dense blocks)
      return;
    }
    const int64_t s = p.expert % G;
    if (p.kind == ParamKind::expert_w13) {
      const std::vector<float>& w13 = source(pre + "mlp.w13");  // (2 Fd, C): W1 rows, then W3 rows
      std::copy_n(w13.data() + s * F * C, F * C, data.data());
      std::copy_n(w13.data() + (Fd + s * F) * C, F * C, data.data() + F * C);
    } else {
      const std::vector<float>& w2 = source(pre + "mlp.w2");  // (C, Fd)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t f = 0; f < F; ++f) data[c * F + f] = static_cast<float>(G) * w2[c * Fd + s * F + f];
    }
    if (o.noise > 0) {
      const uint64_t key = stream_key(seed, p.name + "#upcycle-noise");
      for (size_t x = 0; x < data.size(); ++x)
        data[x] *= 1.f + static_cast<float>(o.noise) * normal_at(key, x);
    }
  });
  UpcycleResult res;
  res.out = out;
  res.first_moe_layer = first, res.moe_layers = L - first, res.experts = E, res.top_k = K, res.granularity = G;
  res.dense_hidden = Fd, res.expert_hidden = F;
  res.exact = o.noise == 0 && K % G == 0;
  return res;
}

}  // namespace sy
