#include "config/model.h"

#include <cmath>

#include "core/check.h"

namespace sy {

double layer_flops(const ModelConfig& m, int64_t l) {
  const double C = static_cast<double>(m.d_model), T = static_cast<double>(m.seq_len);
  const double HD = static_cast<double>(m.n_heads * m.head_size());
  double f = 2 * C * static_cast<double>(m.qkv_width() + m.n_heads * m.head_size()) + 4 * HD * (T + 1) / 2;
  if (!m.is_moe_layer(l)) return f + 6 * C * static_cast<double>(m.dense_width());
  const MoeConfig& e = m.moe;
  const double F = static_cast<double>(e.expert_hidden);
  return f + 2 * C * static_cast<double>(e.experts) + 6 * C * F * static_cast<double>(e.top_k + e.shared_experts);
}

double head_flops(const ModelConfig& m) { return 2.0 * static_cast<double>(m.d_model * m.vocab_size); }

double forward_flops_per_token(const ModelConfig& m) {
  double f = head_flops(m);
  for (int64_t l = 0; l < m.n_layers; ++l) f += layer_flops(m, l);
  return f;
}

int64_t expert_capacity(double capacity_factor, int64_t Ntot, int64_t E, int64_t K) {
  if (capacity_factor <= 0) return -1;
  return static_cast<int64_t>(std::ceil(capacity_factor * static_cast<double>(Ntot * K) / static_cast<double>(E)));
}

void validate(const ModelConfig& m, const std::string& where) {
  auto need = [&](bool ok, const char* key, const std::string& why) {
    SY_CONFIG_CHECK(ok, "{}: {} {}", where, key, why);
  };
  need(m.n_heads % m.n_kv_heads == 0, "model.n_kv_heads",
       fmt::format("= {} must divide model.n_heads = {} (grouped-query attention)", m.n_kv_heads, m.n_heads));
  if (m.head_dim == 0)
    need(m.d_model % m.n_heads == 0, "model.d_model",
         fmt::format("= {} is not divisible by model.n_heads = {}; set model.head_dim", m.d_model, m.n_heads));
  need(m.head_size() % 2 == 0, "model.head_dim",
       fmt::format("= {} must be even (RoPE rotates pairs)", m.head_size()));
  need(m.dense_layers <= m.n_layers, "model.dense_layers",
       fmt::format("= {} exceeds model.n_layers = {}", m.dense_layers, m.n_layers));
  if (m.moe_layers() > 0) {
    need(m.moe.top_k <= m.moe.experts, "moe.top_k",
         fmt::format("= {} exceeds moe.experts = {}", m.moe.top_k, m.moe.experts));
  }
}

}  // namespace sy
