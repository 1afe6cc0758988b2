// Sizes of one micro-batch through the model, named once (house letters).
#pragma once

#include <cstdint>

#include "config/model.h"

namespace sy {

struct Dims {
  int64_t B, T, N;   // sequences, sequence length, tokens = B * T
  int64_t C, V;      // model width, vocabulary
  int64_t H, Hkv, D, R;  // heads, kv heads, head size, qkv row width
  int64_t Fd;        // dense FFN hidden width
  int64_t E, K, F, S;  // experts, top-k, expert hidden, shared hidden (shared_experts * F)

  Dims(const ModelConfig& m, int64_t batch)
      : B(batch), T(m.seq_len), N(batch * m.seq_len), C(m.d_model), V(m.vocab_size),
        H(m.n_heads), Hkv(m.n_kv_heads), D(m.head_size()), R(m.qkv_width()),
        Fd(m.dense_width()), E(m.moe.experts), K(m.moe.top_k), F(m.moe.expert_hidden),
        S(m.moe.shared_experts * m.moe.expert_hidden) {}
};

}  // namespace sy
