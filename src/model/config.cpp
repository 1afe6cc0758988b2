#include "model/config.h"

#include "core/check.h"

namespace sy {

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
