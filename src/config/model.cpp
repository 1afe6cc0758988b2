#include "config/model.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/ranges.h>

#include "core/check.h"

namespace sy {

double layer_flops(const ModelConfig& m, int64_t l) {
  const double C = static_cast<double>(m.d_model), T = static_cast<double>(m.seq_len);
  const double HD = static_cast<double>(m.n_heads * m.head_size());
  double f = 2 * C * static_cast<double>(m.qkv_width() + m.n_heads * m.head_size()) + 4 * HD * (T + 1) / 2;
  if (!m.is_moe_layer(l)) return f + 6 * C * static_cast<double>(m.dense_width());
  const MoeConfig& e = m.moe;
  const double F = static_cast<double>(e.expert_hidden);
  return f + 2 * C * static_cast<double>(m.experts_at(l)) + 6 * C * F * static_cast<double>(e.top_k + e.shared_experts);
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
    need(m.uniform_experts() || static_cast<int64_t>(m.moe.layer_experts.size()) == m.moe_layers(), "moe.experts",
         fmt::format("has {} entries, the model has {} MoE layers", m.moe.layer_experts.size(), m.moe_layers()));
    need(m.moe.top_k <= m.min_experts(), "moe.top_k",
         fmt::format("= {} exceeds {}{}", m.moe.top_k, m.experts_text(),
                     m.uniform_experts() ? "" : fmt::format(" (its smallest count is {})", m.min_experts())));
    const int64_t G = m.moe.expert_groups, M = m.moe.max_nodes_per_token;
    for (int64_t l = m.dense_layers; l < m.n_layers; ++l) {
      const int64_t E = m.experts_at(l);
      need(E % G == 0, "moe.expert_groups",
           fmt::format("= {} does not divide the {} experts of layer {} ({}): each group is E / G contiguous experts",
                       G, E, l, m.experts_text()));
      if (M > 0)
        need(m.moe.top_k <= M * (E / G), "moe.max_nodes_per_token",
             fmt::format("= {} leaves {} x {} experts of layer {} ({}, moe.expert_groups = {}) to choose from, fewer "
                         "than moe.top_k = {}", M, M, E / G, l, m.experts_text(), G, m.moe.top_k));
    }
  }
  need(m.moe.max_nodes_per_token <= m.moe.expert_groups, "moe.max_nodes_per_token",
       fmt::format("= {} exceeds moe.expert_groups = {} (a token's experts come from at most that many groups; 0 = "
                   "no limit)", m.moe.max_nodes_per_token, m.moe.expert_groups));
}

int64_t ModelConfig::experts_gcd() const {
  int64_t g = 0;
  for (int64_t l = dense_layers; l < n_layers; ++l) g = std::gcd(g, experts_at(l));
  return g;
}

int64_t ModelConfig::min_experts() const {
  int64_t x = 0;
  for (int64_t l = dense_layers; l < n_layers; ++l) x = x == 0 ? experts_at(l) : std::min(x, experts_at(l));
  return x;
}

int64_t ModelConfig::total_experts() const {
  int64_t x = 0;
  for (int64_t l = dense_layers; l < n_layers; ++l) x += experts_at(l);
  return x;
}

std::string ModelConfig::experts_text() const {
  return uniform_experts() ? fmt::format("moe.experts = {}", moe.experts)
                           : fmt::format("moe.experts = [{}]", fmt::join(moe.layer_experts, ", "));
}

std::vector<int64_t> allocate_experts(int64_t lo, int64_t hi, double gamma, int64_t round, int64_t M) {
  std::vector<int64_t> out;
  for (int64_t l = 0; l < M; ++l) {
    const double t = M == 1 ? 1.0 : static_cast<double>(l) / static_cast<double>(M - 1);
    const double n = static_cast<double>(lo) + static_cast<double>(hi - lo) * std::pow(t, gamma);
    out.push_back(static_cast<int64_t>(std::floor(n / static_cast<double>(round) + 0.5)) * round);
  }
  return out;
}

void resolve_experts(ModelConfig& m, const std::string& where) {
  MoeConfig& e = m.moe;
  const int64_t M = m.moe_layers();
  if (e.experts_max > 0) {
    SY_CONFIG_CHECK(e.layer_experts.empty(), "{}: moe.experts is a list and moe.experts_max = {} asks for the "
                    "allocation formula: set one of them", where, e.experts_max);
    SY_CONFIG_CHECK(e.experts_min >= 1 && e.experts_min <= e.experts_max, "{}: moe.experts_min = {} must be in [1, "
                    "moe.experts_max = {}] (the allocation formula)", where, e.experts_min, e.experts_max);
    if (M > 0) e.layer_experts = allocate_experts(e.experts_min, e.experts_max, e.experts_gamma, e.experts_round, M);
    for (size_t i = 0; i < e.layer_experts.size(); ++i)
      SY_CONFIG_CHECK(e.layer_experts[i] >= 1, "{}: the allocation formula (moe.experts_min = {}, moe.experts_max = "
                      "{}, moe.experts_gamma = {}, moe.experts_round = {}) gives MoE layer {} no experts", where,
                      e.experts_min, e.experts_max, e.experts_gamma, e.experts_round, i);
    e.experts_min = 0, e.experts_max = 0, e.experts_gamma = 1.0, e.experts_round = 1;  // the list says it now
  } else {
    SY_CONFIG_CHECK(e.experts_min == 0, "{}: moe.experts_min = {} without moe.experts_max: set both (the allocation "
                    "formula) or neither", where, e.experts_min);
  }
  if (e.layer_experts.empty()) return;
  SY_CONFIG_CHECK(static_cast<int64_t>(e.layer_experts.size()) == M, "{}: moe.experts = [{}] has {} entries, the "
                  "model has {} MoE layers (model.n_layers = {} - model.dense_layers = {}): give one count per MoE "
                  "layer", where, fmt::join(e.layer_experts, ", "), e.layer_experts.size(), M, m.n_layers,
                  m.dense_layers);
  for (size_t i = 0; i < e.layer_experts.size(); ++i)
    SY_CONFIG_CHECK(e.layer_experts[i] >= 1 && e.layer_experts[i] <= 4096, "{}: moe.experts[{}] = {} is out of "
                    "range [1, 4096]", where, i, e.layer_experts[i]);
  e.experts = *std::max_element(e.layer_experts.begin(), e.layer_experts.end());
  if (std::all_of(e.layer_experts.begin(), e.layer_experts.end(), [&](int64_t x) { return x == e.experts; }))
    e.layer_experts.clear();  // equal counts: the integer, as before
}

}  // namespace sy
