// The MoE FFN: router -> top-k (+ balancing bias) -> capacity plan ->
// gather rows in expert order -> grouped expert GEMMs (SwiGLU) -> gate-weighted
// combine, plus always-active shared experts.
#pragma once

#include "core/arena.h"
#include "kernels/cpu/router.h"
#include "model/blocks.h"
#include "moe/dispatch_plan.h"

namespace sy {

struct MoeActs {
  float* logits;   // (N, E) router logits
  float* scores;   // (N, E) softmax / sigmoid scores
  float* probs;    // (N, E) scores normalised per token
  int32_t* idx;    // (N, K) chosen experts
  float* gates;    // (N, K) gate weights
  float* xp;       // (N*K, C) inputs in expert order (plan.rows() used)
  float* up;       // (N*K, 2F)
  float* act;      // (N*K, F)
  float* y;        // (N*K, C) expert outputs
  float* s_up;     // (N, 2S) shared experts
  float* s_act;    // (N, S)
  DispatchPlan plan;
  RouterSums sums;

  template <class A>
  void bind(A& a, const Dims& d) {
    logits = a.template alloc<float>(d.N * d.E);
    scores = a.template alloc<float>(d.N * d.E);
    probs = a.template alloc<float>(d.N * d.E);
    idx = a.template alloc<int32_t>(d.N * d.K);
    gates = a.template alloc<float>(d.N * d.K);
    xp = a.template alloc<float>(d.N * d.K * d.C);
    up = a.template alloc<float>(d.N * d.K * 2 * d.F);
    act = a.template alloc<float>(d.N * d.K * d.F);
    y = a.template alloc<float>(d.N * d.K * d.C);
    s_up = a.template alloc<float>(d.N * 2 * d.S);
    s_act = a.template alloc<float>(d.N * d.S);
  }
};

// out (N, C) = shared(h) + sum_k gate_k * expert_k(h)   (overwritten).
// bias (E) shifts expert choice only; may be null.
void moe_block_forward(MoeActs& a, float* out, const float* h, const float* params,
                       const float* bias, const BlockOffsets& o, const Dims& d, const MoeConfig& cfg);

// dh (N, C) overwritten with dL/dh. The balance terms enter with their
// coefficients times loss_scale.
void moe_block_backward(float* dh, float* grads, const MoeActs& a, const float* dout,
                        const float* h, const float* params, const BlockOffsets& o, const Dims& d,
                        const MoeConfig& cfg, double loss_scale, Scratch& s);

// Forward FLOPs of the block for its current plan.
double moe_block_flops(const MoeActs& a, const Dims& d);

}  // namespace sy
