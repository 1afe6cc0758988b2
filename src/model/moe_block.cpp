#include "model/moe_block.h"

#include <cstring>
#include <vector>

#include "kernels/cpu/grouped_gemm.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/permute.h"
#include "kernels/cpu/swiglu.h"

namespace sy {

namespace {
template <class P>
std::vector<P> expert_ptrs(P base, const std::vector<int64_t>& offsets) {
  std::vector<P> out;
  out.reserve(offsets.size());
  for (int64_t off : offsets) out.push_back(base + off);
  return out;
}
}  // namespace

void moe_block_forward(MoeActs& a, float* out, const float* h, const float* params,
                       const float* bias, const BlockOffsets& o, const Dims& d, const MoeConfig& cfg) {
  // Router.
  linear_forward(a.logits, h, params + o.router, d.N, d.C, d.E);
  router_scores(a.scores, a.probs, a.logits, d.N, d.E, cfg.score);
  router_topk(a.idx, a.gates, a.scores, bias, d.N, d.E, d.K, cfg.renormalize);
  a.sums = RouterSums(d.E);
  router_sums(a.sums, a.idx, a.logits, a.probs, d.N, d.E, d.K);
  build_dispatch_plan(a.plan, a.idx, a.scores, d.N, d.E, d.K,
                      expert_capacity(cfg.capacity_factor, d.N, d.E, d.K));

  // Shared experts write `out`; routed experts add to it.
  if (d.S > 0) {
    linear_forward(a.s_up, h, params + o.shared_w13, d.N, d.C, 2 * d.S);
    swiglu_forward(a.s_act, a.s_up, d.N, d.S);
    linear_forward(out, a.s_act, params + o.shared_w2, d.N, d.S, d.C);
  } else {
    std::memset(out, 0, static_cast<size_t>(d.N * d.C) * sizeof(float));
  }

  const int64_t M = a.plan.rows();
  auto w13 = expert_ptrs(params, o.expert_w13);
  auto w2 = expert_ptrs(params, o.expert_w2);
  moe_gather(a.xp, h, a.plan.row_token.data(), M, d.C);
  grouped_linear_forward(a.up, a.xp, w13.data(), a.plan.offsets.data(), d.E, d.C, 2 * d.F);
  swiglu_forward(a.act, a.up, M, d.F);
  grouped_linear_forward(a.y, a.act, w2.data(), a.plan.offsets.data(), d.E, d.F, d.C);
  moe_combine(out, a.y, a.gates, a.plan.pos.data(), d.N, d.K, d.C);
}

void moe_block_backward(float* dh, float* grads, const MoeActs& a, const float* dout,
                        const float* h, const float* params, const BlockOffsets& o, const Dims& d,
                        const MoeConfig& cfg, double loss_scale, Scratch& s) {
  const int64_t M = a.plan.rows();
  // Shared experts: dh = their input gradient (or 0).
  if (d.S > 0) {
    linear_backward(s.dact, grads + o.shared_w2, dout, a.s_act, params + o.shared_w2, d.N, d.S, d.C);
    swiglu_backward(s.dup, s.dact, a.s_up, d.N, d.S);
    linear_backward(dh, grads + o.shared_w13, s.dup, h, params + o.shared_w13, d.N, d.C, 2 * d.S);
  } else {
    std::memset(dh, 0, static_cast<size_t>(d.N * d.C) * sizeof(float));
  }

  // Routed experts.
  auto w13 = expert_ptrs(params, o.expert_w13);
  auto w2 = expert_ptrs(params, o.expert_w2);
  auto dw13 = expert_ptrs(grads, o.expert_w13);
  auto dw2 = expert_ptrs(grads, o.expert_w2);
  moe_combine_backward(s.dy, s.dgates, dout, a.y, a.gates, a.plan.pos.data(), d.N, d.K, d.C);
  grouped_linear_backward(s.dact, dw2.data(), s.dy, a.act, w2.data(), a.plan.offsets.data(), d.E, d.F, d.C);
  swiglu_backward(s.dup, s.dact, a.up, M, d.F);
  grouped_linear_backward(s.dxp, dw13.data(), s.dup, a.xp, w13.data(), a.plan.offsets.data(), d.E, d.C, 2 * d.F);
  moe_gather_backward(dh, s.dxp, a.plan.pos.data(), d.N, d.K, d.C);

  // Router: gate gradients plus the balance terms.
  RouterCoefs coefs{static_cast<float>(cfg.aux_loss_coef * loss_scale),
                    static_cast<float>(cfg.z_loss_coef * loss_scale),
                    static_cast<float>(cfg.entropy_coef * loss_scale)};
  router_backward(s.drl, s.dgates, a.idx, a.logits, a.scores, a.probs, a.sums, d.N, d.N, d.E, d.K,
                  cfg.score, cfg.renormalize, coefs);
  linear_backward(dh, grads + o.router, s.drl, h, params + o.router, d.N, d.C, d.E, true);
}

double moe_block_flops(const MoeActs& a, const Dims& d) {
  double M = static_cast<double>(a.plan.rows()), N = static_cast<double>(d.N);
  return 2.0 * N * d.C * d.E                      // router
         + 2.0 * M * d.C * 3.0 * d.F             // routed experts: w13 and w2
         + 2.0 * N * d.C * 3.0 * d.S;            // shared experts
}

}  // namespace sy
