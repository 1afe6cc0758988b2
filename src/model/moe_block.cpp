#include "model/moe_block.h"

#include <cstring>
#include <vector>

#include "kernels/cpu/grouped_gemm.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/permute.h"
#include "kernels/cpu/swiglu.h"
#include "moe/capacity.h"

namespace sy {

namespace {

// Grouped-GEMM arguments for the segments of one chunk: contiguous row
// offsets and, per segment, its local expert's weights (or gradients).
struct ChunkGemm {
  std::vector<int64_t> offsets;
  std::vector<const float*> w13, w2;
  std::vector<float*> dw13, dw2;
  int64_t groups() const { return static_cast<int64_t>(offsets.size()) - 1; }

  ChunkGemm(const EpDispatch& plan, int c, const float* params, float* grads, const BlockOffsets& o) {
    offsets.push_back(plan.recv_begin(c));
    for (const ExpertSegment& s : plan.segments(c)) {
      offsets.push_back(s.offset + s.rows);
      w13.push_back(params + o.expert_w13[s.expert]);
      w2.push_back(params + o.expert_w2[s.expert]);
      if (grads) {
        dw13.push_back(grads + o.expert_w13[s.expert]);
        dw2.push_back(grads + o.expert_w2[s.expert]);
      }
    }
  }
};

}  // namespace

void moe_block_forward(MoeActs& a, float* out, const float* h, const float* params, const float* bias,
                       const BlockOffsets& o, const Dims& d, const MoeConfig& cfg, const MoeContext& ctx,
                       MoeScratch& scratch) {
  const int64_t N = d.N, C = d.C, E = d.E, K = d.K, F = d.F;
  // Router on the local tokens.
  linear_forward(a.logits, h, params + o.router, N, C, E);
  router_scores(a.scores, a.probs, a.logits, N, E, cfg.score);
  router_topk(a.idx, a.gates, a.scores, bias, N, E, K, cfg.renormalize);
  RouterSums local(E);
  router_sums(local, a.idx, a.logits, a.probs, N, E, K);
  // ... and its statistics over the whole data-parallel micro-batch.
  std::vector<double> buf(2 * E + 2);
  std::copy(local.counts.begin(), local.counts.end(), buf.begin());
  std::copy(local.prob_sum.begin(), local.prob_sum.end(), buf.begin() + E);
  buf[2 * E] = local.z_sum;
  buf[2 * E + 1] = local.entropy_sum;
  ctx.dp.allreduce_sum(buf.data(), buf.size());
  a.sums.counts.assign(buf.begin(), buf.begin() + E);
  a.sums.prob_sum.assign(buf.begin() + E, buf.begin() + 2 * E);
  a.sums.z_sum = buf[2 * E];
  a.sums.entropy_sum = buf[2 * E + 1];
  a.Ntot = N * ctx.dp.size();

  decide_keep(a.keep, a.idx, a.scores, N, E, K, expert_capacity(cfg.capacity_factor, a.Ntot, E, K), a.sums.counts,
              ctx.dp, ctx.token_offset);
  a.dropped = 0;
  for (int64_t i = 0; i < N * K; ++i) a.dropped += a.keep[i] ? 0 : 1;
  a.plan.plan(ctx.ep, a.idx, a.keep, N, K, E, ctx.overlap ? ctx.chunks : 1);

  const EpDispatch& plan = a.plan;
  const int64_t Ms = plan.send_rows(), Mr = plan.recv_rows();
  const bool solo = ctx.ep.solo();  // then send and receive layouts coincide
  a.x_recv.ensure(static_cast<size_t>(Mr * C));
  a.up.ensure(static_cast<size_t>(Mr * 2 * F));
  a.act.ensure(static_cast<size_t>(Mr * F));
  a.y_send.ensure(static_cast<size_t>(Ms * C));
  float* x_send = solo ? a.x_recv.data() : scratch.send.ensure(static_cast<size_t>(Ms * C));
  float* y_recv = solo ? a.y_send.data() : scratch.recv.ensure(static_cast<size_t>(Mr * C));
  moe_gather(x_send, h, plan.send_token().data(), Ms, C);

  auto shared = [&] {
    if (d.S > 0) {
      linear_forward(a.s_up, h, params + o.shared_w13, N, C, 2 * d.S);
      swiglu_forward(a.s_act, a.s_up, N, d.S);
      linear_forward(out, a.s_act, params + o.shared_w2, N, d.S, C);
    } else {
      std::memset(out, 0, static_cast<size_t>(N * C) * sizeof(float));
    }
  };
  const int nc = plan.chunks();
  std::vector<Request> to(nc), back(nc);
  if (ctx.overlap)
    for (int c = 0; c < nc; ++c) to[c] = plan.to_experts(ctx.ep, c, x_send, a.x_recv.data(), C, "moe dispatch");
  shared();  // while the rows travel, when overlapping
  for (int c = 0; c < nc; ++c) {
    if (ctx.overlap)
      to[c].wait();
    else
      plan.to_experts(ctx.ep, c, x_send, a.x_recv.data(), C, "moe dispatch").wait();
    ChunkGemm g(plan, c, params, nullptr, o);
    const int64_t b = plan.recv_begin(c), rows = plan.recv_end(c) - b;
    grouped_linear_forward(a.up.data(), a.x_recv.data(), g.w13.data(), g.offsets.data(), g.groups(), C, 2 * F);
    swiglu_forward(a.act.data() + b * F, a.up.data() + b * 2 * F, rows, F);
    grouped_linear_forward(y_recv, a.act.data(), g.w2.data(), g.offsets.data(), g.groups(), F, C);
    back[c] = plan.from_experts(ctx.ep, c, y_recv, a.y_send.data(), C, "moe combine");
    if (!ctx.overlap) back[c].wait();
    for (int q = c + 1; q < nc; ++q) to[q].test();  // progress the chunks still in flight
  }
  wait_all(back);
  moe_combine(out, a.y_send.data(), a.gates, plan.send_pos().data(), N, K, C);
}

void moe_block_backward(float* dh, float* grads, MoeActs& a, const float* dout, const float* h,
                        const float* params, const BlockOffsets& o, const Dims& d, const MoeConfig& cfg,
                        double loss_scale, const MoeContext& ctx, MoeScratch& scratch, Scratch& s) {
  const int64_t N = d.N, C = d.C, E = d.E, K = d.K, F = d.F;
  const EpDispatch& plan = a.plan;
  const int64_t Ms = plan.send_rows(), Mr = plan.recv_rows();
  const bool solo = ctx.ep.solo();
  float* dy_send = scratch.send.ensure(static_cast<size_t>(Ms * C));
  float* dy_recv = solo ? dy_send : scratch.recv.ensure(static_cast<size_t>(Mr * C));
  float* dx_recv = scratch.recv2.ensure(static_cast<size_t>(Mr * C));
  float* dx_send = solo ? dx_recv : scratch.send2.ensure(static_cast<size_t>(Ms * C));
  float* dact = scratch.dact.ensure(static_cast<size_t>(Mr * F));
  float* dup = scratch.dup.ensure(static_cast<size_t>(Mr * 2 * F));

  moe_combine_backward(dy_send, s.dgates, dout, a.y_send.data(), a.gates, plan.send_pos().data(), N, K, C);
  auto shared = [&] {
    if (d.S > 0) {
      linear_backward(s.dact, grads + o.shared_w2, dout, a.s_act, params + o.shared_w2, N, d.S, C);
      swiglu_backward(s.dup, s.dact, a.s_up, N, d.S);
      linear_backward(dh, grads + o.shared_w13, s.dup, h, params + o.shared_w13, N, C, 2 * d.S);
    } else {
      std::memset(dh, 0, static_cast<size_t>(N * C) * sizeof(float));
    }
  };
  const int nc = plan.chunks();
  std::vector<Request> to(nc), back(nc);
  if (ctx.overlap)
    for (int c = 0; c < nc; ++c) to[c] = plan.to_experts(ctx.ep, c, dy_send, dy_recv, C, "moe dispatch (backward)");
  shared();
  for (int c = 0; c < nc; ++c) {
    if (ctx.overlap)
      to[c].wait();
    else
      plan.to_experts(ctx.ep, c, dy_send, dy_recv, C, "moe dispatch (backward)").wait();
    ChunkGemm g(plan, c, params, grads, o);
    const int64_t b = plan.recv_begin(c), rows = plan.recv_end(c) - b;
    grouped_linear_backward(dact, g.dw2.data(), dy_recv, a.act.data(), g.w2.data(), g.offsets.data(), g.groups(), F, C);
    swiglu_backward(dup + b * 2 * F, dact + b * F, a.up.data() + b * 2 * F, rows, F);
    grouped_linear_backward(dx_recv, g.dw13.data(), dup, a.x_recv.data(), g.w13.data(), g.offsets.data(), g.groups(),
                            C, 2 * F);
    back[c] = plan.from_experts(ctx.ep, c, dx_recv, dx_send, C, "moe combine (backward)");
    if (!ctx.overlap) back[c].wait();
    for (int q = c + 1; q < nc; ++q) to[q].test();
  }
  wait_all(back);
  moe_gather_backward(dh, dx_send, plan.send_pos().data(), N, K, C);

  // Router: gate gradients plus the balance terms over the whole micro-batch.
  RouterCoefs coefs{static_cast<float>(cfg.aux_loss_coef * loss_scale), static_cast<float>(cfg.z_loss_coef * loss_scale),
                    static_cast<float>(cfg.entropy_coef * loss_scale)};
  router_backward(s.drl, s.dgates, a.idx, a.logits, a.scores, a.probs, a.sums, N, a.Ntot, E, K, cfg.score,
                  cfg.renormalize, coefs);
  linear_backward(dh, grads + o.router, s.drl, h, params + o.router, N, C, E, true);
}

double moe_block_flops(const MoeActs& a, const Dims& d) {
  double M = static_cast<double>(a.plan.recv_rows()), N = static_cast<double>(d.N);
  return 2.0 * N * d.C * d.E + 2.0 * M * d.C * 3.0 * d.F + 2.0 * N * d.C * 3.0 * d.S;
}

}  // namespace sy
