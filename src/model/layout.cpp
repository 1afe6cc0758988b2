#include "model/layout.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/parallel.h"
#include "core/rng.h"

namespace sy {

int64_t ParamLayout::add(std::string name, Shape shape, ParamKind kind, int64_t layer,
                         int64_t expert, bool ones, double std, bool local) {
  int64_t index = index_++;
  if (!local) return -1;
  ParamInfo p;
  p.index = index;
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.kind = kind;
  p.layer = layer;
  p.expert = expert;
  p.ones = ones;
  p.decay = p.shape.rank() >= 2;
  p.init_std = std;
  p.offset = total_;
  total_ += p.numel();
  params_.push_back(std::move(p));
  return params_.back().offset;
}

ParamLayout::ParamLayout(const ModelConfig& m, ExpertSlice experts, StageSpec stage)
    : experts_(experts), stage_(std::move(stage)) {
  SY_CHECK(stage_.layers.empty() || static_cast<int64_t>(stage_.layers.size()) == m.n_layers,
           "stage spec names {} layers, the model has {}", stage_.layers.size(), m.n_layers);
  if (experts_.count < 0 && experts_.parts == 0 && m.uniform_experts()) experts_ = {0, m.moe.experts};  // as before
  for (int64_t l = m.dense_layers; l < m.n_layers; ++l) {
    const ExpertSlice::Range r = experts_.in(m.experts_at(l));
    SY_CHECK(r.first >= 0 && r.first + r.n <= m.experts_at(l) && (experts_.parts == 0 || m.experts_at(l) % experts_.parts == 0),
             "expert slice [{}, {}) is outside layer {}'s {} experts", r.first, r.first + r.n, l, m.experts_at(l));
  }
  const int64_t C = m.d_model, V = m.vocab_size, D = m.head_size();
  const double std = m.init_std;
  // Residual-branch output projections are scaled down by depth (GPT-2).
  const double out_std = m.init_std / std::sqrt(2.0 * static_cast<double>(m.n_layers));
  const bool tied_head = stage_.head && m.tie_embeddings;
  embed_ = add("embed.weight", {V, C}, ParamKind::embed, -1, -1, false, std, stage_.embed || tied_head);
  if (embed_ >= 0 && !stage_.embed) params_.back().replica = true;
  blocks_.resize(static_cast<size_t>(m.n_layers));
  for (int64_t l = 0; l < m.n_layers; ++l) {
    BlockOffsets& b = blocks_[static_cast<size_t>(l)];
    const bool here = stage_.holds(l);
    std::string pre = fmt::format("layers.{}.", l);
    b.attn_norm = add(pre + "attn_norm.weight", {C}, ParamKind::attn_norm, l, -1, true, 0, here);
    b.wqkv = add(pre + "attn.wqkv", {m.qkv_width(), C}, ParamKind::wqkv, l, -1, false, std, here);
    b.wo = add(pre + "attn.wo", {C, m.n_heads * D}, ParamKind::wo, l, -1, false, out_std, here);
    b.ffn_norm = add(pre + "ffn_norm.weight", {C}, ParamKind::ffn_norm, l, -1, true, 0, here);
    if (!m.is_moe_layer(l)) {
      int64_t F = m.dense_width();
      b.mlp_w13 = add(pre + "mlp.w13", {2 * F, C}, ParamKind::mlp_w13, l, -1, false, std, here);
      b.mlp_w2 = add(pre + "mlp.w2", {C, F}, ParamKind::mlp_w2, l, -1, false, out_std, here);
      continue;
    }
    const MoeConfig& e = m.moe;
    const int64_t E = m.experts_at(l);
    const ExpertSlice::Range mine = experts_.in(E);
    b.router = add(pre + "moe.router", {E, C}, ParamKind::router, l, -1, false, std, here);
    if (e.shared_experts > 0) {
      int64_t S = e.shared_experts * e.expert_hidden;
      b.shared_w13 = add(pre + "moe.shared.w13", {2 * S, C}, ParamKind::shared_w13, l, -1, false, std, here);
      b.shared_w2 = add(pre + "moe.shared.w2", {C, S}, ParamKind::shared_w2, l, -1, false, out_std, here);
    }
    for (int64_t x = 0; x < E; ++x) {
      bool local = here && x >= mine.first && x < mine.first + mine.n;
      std::string ep = fmt::format("{}moe.experts.{}.", pre, x);
      int64_t w13 = add(ep + "w13", {2 * e.expert_hidden, C}, ParamKind::expert_w13, l, x, false, std, local);
      int64_t w2 = add(ep + "w2", {C, e.expert_hidden}, ParamKind::expert_w2, l, x, false, out_std, local);
      if (local) b.expert_w13.push_back(w13), b.expert_w2.push_back(w2);
    }
  }
  final_norm_ = add("final_norm.weight", {C}, ParamKind::final_norm, -1, -1, true, 0, stage_.head);
  lm_head_ = m.tie_embeddings ? embed_
                              : add("lm_head.weight", {V, C}, ParamKind::lm_head, -1, -1, false, std, stage_.head);

  // Buckets, in backward order: head, then per held layer from the last its
  // dense tensors and its routed experts, then the embedding.
  std::vector<int64_t> layer_end(static_cast<size_t>(m.n_layers), -1);
  for (const ParamInfo& p : params_)
    if (p.layer >= 0) layer_end[static_cast<size_t>(p.layer)] = std::max(layer_end[static_cast<size_t>(p.layer)], p.offset + p.numel());
  if (final_norm_ >= 0) buckets_.push_back({"head", final_norm_, total_, false, m.n_layers});
  for (int64_t l = m.n_layers - 1; l >= 0; --l) {
    if (!stage_.holds(l)) continue;
    const BlockOffsets& b = blocks_[static_cast<size_t>(l)];
    const int64_t end = layer_end[static_cast<size_t>(l)];
    buckets_.push_back({fmt::format("layers.{}", l), b.attn_norm, b.expert_w13.empty() ? end : b.expert_w13.front(), false, l});
    if (!b.expert_w13.empty()) buckets_.push_back({fmt::format("layers.{}.experts", l), b.expert_w13.front(), end, true, l});
  }
  if (embed_ >= 0) buckets_.push_back({"embed", embed_, embed_ + V * C, false, -1});
}

const ParamInfo& ParamLayout::find(std::string_view name) const {
  for (const ParamInfo& p : params_)
    if (p.name == name) return p;
  SY_FAIL("no parameter named '{}' in this model", name);
}

void init_param_slice(float* dst, const ParamInfo& p, uint64_t seed, int64_t begin, int64_t end) {
  if (p.ones) {
    for (int64_t i = begin; i < end; ++i) dst[i - begin] = 1.f;
    return;
  }
  uint64_t key = stream_key(seed, p.name);
  float std = static_cast<float>(p.init_std);
  parallel_for(end - begin, [&](int64_t i) {
    dst[i] = std * normal_at(key, static_cast<uint64_t>(begin + i));
  });
}

void init_params(float* params, const ParamLayout& layout, uint64_t seed) {
  for (const ParamInfo& p : layout.params())
    init_param_slice(params + p.offset, p, seed, 0, p.numel());
}

}  // namespace sy
