#include "model/moe_block.h"

#include <cstring>
#include <optional>
#include <vector>

#include "core/timer.h"
#include "moe/capacity.h"

namespace sy {

namespace {

// Adds the lifetime of the scope to *slot (if the context times at all).
class Timed {
 public:
  Timed(const MoeContext& ctx, double MoeTimers::*field) : slot_(ctx.timers ? &(ctx.timers->*field) : nullptr) {
    if (slot_) t0_ = now_seconds();
  }
  ~Timed() {
    if (slot_) *slot_ += now_seconds() - t0_;
  }
  Timed(const Timed&) = delete;
  Timed& operator=(const Timed&) = delete;

 private:
  double* slot_;
  double t0_ = 0;
};

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

// Where the experts' SwiGLU output goes: kept per layer in FP32, or (FP8
// storage) in a buffer shared by the layers, act_q keeping it for backward.
float* expert_act(MoeActs& a, MoeScratch& scratch, int64_t n) {
  if (!a.fp8) return a.act.ensure(static_cast<size_t>(n));
  a.act_q.reset();
  return scratch.act.ensure(static_cast<size_t>(n));
}

void shared_forward(const Ops& ops, MoeActs& a, float* out, const float* h, const float* params, const BlockOffsets& o,
                    const Dims& d, const MoeContext& ctx) {
  Timed t(ctx, &MoeTimers::shared);
  if (d.S > 0) {
    mm_forward(ops, Fp8Group::shared, a.s_up, h, params + o.shared_w13, d.N, d.C, 2 * d.S);
    ops.b().swiglu_forward(a.s_act, a.s_up, d.N, d.S, ops.stream);
    mm_forward(ops, Fp8Group::shared, out, a.s_act, params + o.shared_w2, d.N, d.S, d.C, a.fp8 ? &a.s_act_q : nullptr);
  } else {
    std::memset(out, 0, static_cast<size_t>(d.N * d.C) * sizeof(float));
  }
}

void shared_backward(const Ops& ops, float* dh, float* grads, MoeActs& a, const float* dout, const float* h, const float* params,
                     const BlockOffsets& o, const Dims& d, const MoeContext& ctx, Scratch& s) {
  Timed t(ctx, &MoeTimers::shared);
  if (d.S > 0) {
    mm_backward(ops, Fp8Group::shared, s.dact, grads + o.shared_w2, dout, a.s_act, params + o.shared_w2, d.N, d.S, d.C,
                false, a.fp8 ? &a.s_act_q : nullptr);
    ops.b().swiglu_backward(s.dup, s.dact, a.s_up, d.N, d.S, ops.stream);
    mm_backward(ops, Fp8Group::shared, dh, grads + o.shared_w13, s.dup, h, params + o.shared_w13, d.N, d.C, 2 * d.S);
  } else {
    std::memset(dh, 0, static_cast<size_t>(d.N * d.C) * sizeof(float));
  }
}

// Shared-memory transport (the ep group on one node). Rows are written
// straight into the expert rank's receive segment and expert outputs read
// straight from its segment: one copy each way, no staging. Fences order
// the phases; the comments say why each buffer is free to reuse when it is.
void moe_forward_shm(const Ops& ops, MoeActs& a, float* out, const float* h, const float* params, const BlockOffsets& o,
                     const Dims& d, const MoeContext& ctx, MoeScratch& scratch) {
  const EpDispatch& plan = a.plan;
  const int64_t C = d.C, F = d.F, Ms = plan.send_rows(), Mr = plan.recv_rows();
  // This layer's expert inputs and outputs stay in their windows until
  // backward has used them: every sender reads its outputs there when
  // combining and again for the gate gradients. The next write to them (the
  // next micro-batch's forward of this layer) comes after every rank has
  // passed this layer's backward fences.
  // With FP8 storage the inputs are saved in FP8 (x_q) and the window is
  // shared by the layers: the next layer's rows arrive only after every
  // rank has passed this layer's combine fence, after its expert GEMMs.
  SharedWindow& x_win = a.fp8 ? scratch.x_win : a.x_win;
  if (a.fp8) a.x_q.reset();
  x_win.ensure(ctx.ep, Mr * C);
  a.y_win.ensure(ctx.ep, Mr * C);
  a.up.ensure(static_cast<size_t>(Mr * 2 * F));
  float* act = expert_act(a, scratch, Mr * F);
  RowMap to_x = RowMap::scattered(x_win.peers(), plan.dest_rank(), plan.dest_row());
  RowMap from_y = RowMap::scattered(a.y_win.peers(), plan.dest_rank(), plan.dest_row());
  {
    Timed t(ctx, &MoeTimers::permute);
    ops.b().moe_gather(to_x, h, plan.send_token().data(), Ms, d.C, ops.stream);
  }
  shared_forward(ops, a, out, h, params, o, d, ctx);  // while the others are still writing
  {
    Timed t(ctx, &MoeTimers::wait);
    x_win.fence(ctx.ep, "moe dispatch (shared memory)");
  }
  {
    Timed t(ctx, &MoeTimers::experts);
    ChunkGemm g(plan, 0, params, nullptr, o);
    grouped_forward(ops, a.up.data(), x_win.local(), g.w13.data(), g.offsets.data(), g.groups(), C, 2 * F,
                           a.fp8 ? &a.x_q : nullptr);
    ops.b().swiglu_forward(act, a.up.data(), Mr, F, ops.stream);
    grouped_forward(ops, a.y_win.local(), act, g.w2.data(), g.offsets.data(), g.groups(), F, C,
                           a.fp8 ? &a.act_q : nullptr);
  }
  {
    Timed t(ctx, &MoeTimers::wait);
    a.y_win.fence(ctx.ep, "moe combine (shared memory)");
  }
  Timed t(ctx, &MoeTimers::permute);
  ops.b().moe_combine(out, from_y, nullptr, a.gates, plan.send_pos().data(), d.N, d.K, C, ops.stream);
}

void moe_backward_shm(const Ops& ops, float* dh, float* grads, MoeActs& a, const float* dout, const float* h, const float* params,
                      const BlockOffsets& o, const Dims& d, const MoeContext& ctx, MoeScratch& scratch, Scratch& s) {
  const EpDispatch& plan = a.plan;
  const int64_t C = d.C, F = d.F, Mr = plan.recv_rows();
  scratch.dy_win.ensure(ctx.ep, Mr * C);
  scratch.dx_win.ensure(ctx.ep, Mr * C);
  float* dact = scratch.dact.ensure(static_cast<size_t>(Mr * F));
  float* dup = scratch.dup.ensure(static_cast<size_t>(Mr * 2 * F));
  {
    Timed t(ctx, &MoeTimers::permute);
    ops.b().moe_combine_backward(RowMap::scattered(scratch.dy_win.peers(), plan.dest_rank(), plan.dest_row()), s.dgates, dout,
                         RowMap::scattered(a.y_win.peers(), plan.dest_rank(), plan.dest_row()), a.gates,
                         plan.send_pos().data(), d.N, d.K, C, ops.stream);
  }
  shared_backward(ops, dh, grads, a, dout, h, params, o, d, ctx, s);
  {
    Timed t(ctx, &MoeTimers::wait);
    scratch.dy_win.fence(ctx.ep, "moe dispatch (backward, shared memory)");
  }
  {
    Timed t(ctx, &MoeTimers::experts);
    ChunkGemm g(plan, 0, params, grads, o);
    grouped_backward(ops, dact, g.dw2.data(), scratch.dy_win.local(), a.fp8 ? nullptr : a.act.data(), g.w2.data(),
                            g.offsets.data(), g.groups(), F, C, a.fp8 ? &a.act_q : nullptr);
    ops.b().swiglu_backward(dup, dact, a.up.data(), Mr, F, ops.stream);
    grouped_backward(ops, scratch.dx_win.local(), g.dw13.data(), dup, a.fp8 ? nullptr : a.x_win.local(),
                            g.w13.data(), g.offsets.data(), g.groups(), C, 2 * F, a.fp8 ? &a.x_q : nullptr);
  }
  {
    Timed t(ctx, &MoeTimers::wait);
    scratch.dx_win.fence(ctx.ep, "moe combine (backward, shared memory)");
  }
  Timed t(ctx, &MoeTimers::permute);
  ops.b().moe_gather_backward(dh, RowMap::scattered(scratch.dx_win.peers(), plan.dest_rank(), plan.dest_row()),
                      plan.send_pos().data(), d.N, d.K, C, ops.stream);
}

}  // namespace

void moe_block_forward(const Ops& ops, MoeActs& a, float* out, const float* h, const float* params, const float* bias,
                       const BlockOffsets& o, const Dims& d, const MoeConfig& cfg, const MoeContext& ctx,
                       MoeScratch& scratch) {
  const int64_t N = d.N, C = d.C, E = d.E, K = d.K, F = d.F;
  std::optional<Timed> timed(std::in_place, ctx, &MoeTimers::router);
  // Router on the local tokens.
  ops.b().linear_forward(a.logits, h, params + o.router, N, C, E, ops.stream);
  ops.b().router_scores(a.scores, a.probs, a.logits, N, E, cfg.score, ops.stream);
  ops.b().router_topk(a.idx, a.gates, a.scores, bias, N, E, K, cfg.renormalize, ops.stream);
  a.margin = ops.b().router_margin(a.idx, a.scores, bias, N, E, K, ops.stream);
  RouterSums local(E);
  ops.b().router_sums(local, a.idx, a.logits, a.probs, N, E, K, ops.stream);
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
  timed.emplace(ctx, &MoeTimers::plan);
  a.plan.plan(ctx.ep, a.idx, a.keep, N, K, E, ctx.overlap && !ctx.shm ? ctx.chunks : 1, ctx.shm);
  timed.reset();
  if (ctx.shm) return moe_forward_shm(ops, a, out, h, params, o, d, ctx, scratch);

  const EpDispatch& plan = a.plan;
  const int64_t Ms = plan.send_rows(), Mr = plan.recv_rows();
  const bool solo = ctx.ep.solo();  // then send and receive layouts coincide
  // With FP8 storage the inputs are saved in FP8 (x_q): one receive buffer for all layers.
  float* x_recv = (a.fp8 ? scratch.x_recv : a.x_recv).ensure(static_cast<size_t>(Mr * C));
  if (a.fp8) a.x_q.reset();
  a.up.ensure(static_cast<size_t>(Mr * 2 * F));
  float* act = expert_act(a, scratch, Mr * F);
  a.y_send.ensure(static_cast<size_t>(Ms * C));
  float* x_send = solo ? x_recv : scratch.send.ensure(static_cast<size_t>(Ms * C));
  float* y_recv = solo ? a.y_send.data() : scratch.recv.ensure(static_cast<size_t>(Mr * C));
  {
    Timed t(ctx, &MoeTimers::permute);
    ops.b().moe_gather(RowMap::contiguous(x_send), h, plan.send_token().data(), Ms, C, ops.stream);
  }

  auto shared = [&] { shared_forward(ops, a, out, h, params, o, d, ctx); };
  const int nc = plan.chunks();
  std::vector<Request> to(nc), back(nc);
  if (ctx.overlap)
    for (int c = 0; c < nc; ++c) to[c] = plan.to_experts(ctx.ep, c, x_send, x_recv, C, "moe dispatch");
  shared();  // while the rows travel, when overlapping
  for (int c = 0; c < nc; ++c) {
    {
      Timed t(ctx, &MoeTimers::wait);
      if (ctx.overlap)
        to[c].wait();
      else
        plan.to_experts(ctx.ep, c, x_send, x_recv, C, "moe dispatch").wait();
    }
    {
      Timed t(ctx, &MoeTimers::experts);
      ChunkGemm g(plan, c, params, nullptr, o);
      const int64_t b = plan.recv_begin(c), rows = plan.recv_end(c) - b;
      grouped_forward(ops, a.up.data(), x_recv, g.w13.data(), g.offsets.data(), g.groups(), C, 2 * F,
                             a.fp8 ? &a.x_q : nullptr);
      ops.b().swiglu_forward(act + b * F, a.up.data() + b * 2 * F, rows, F, ops.stream);
      grouped_forward(ops, y_recv, act, g.w2.data(), g.offsets.data(), g.groups(), F, C, a.fp8 ? &a.act_q : nullptr);
    }
    back[c] = plan.from_experts(ctx.ep, c, y_recv, a.y_send.data(), C, "moe combine");
    Timed t(ctx, &MoeTimers::wait);
    if (!ctx.overlap) back[c].wait();
    for (int q = c + 1; q < nc; ++q) to[q].test();  // progress the chunks still in flight
  }
  {
    Timed t(ctx, &MoeTimers::wait);
    wait_all(back);
  }
  Timed t(ctx, &MoeTimers::permute);
  ops.b().moe_combine(out, RowMap::contiguous(a.y_send.data()), nullptr, a.gates, plan.send_pos().data(), N, K, C, ops.stream);
}

void moe_block_backward(const Ops& ops, float* dh, float* grads, MoeActs& a, const float* dout, const float* h,
                        const float* params, const BlockOffsets& o, const Dims& d, const MoeConfig& cfg,
                        double loss_scale, const MoeContext& ctx, MoeScratch& scratch, Scratch& s) {
  const int64_t N = d.N, C = d.C, E = d.E, K = d.K, F = d.F;
  const EpDispatch& plan = a.plan;
  const int64_t Ms = plan.send_rows(), Mr = plan.recv_rows();
  if (ctx.shm) {
    moe_backward_shm(ops, dh, grads, a, dout, h, params, o, d, ctx, scratch, s);
  } else {
  const bool solo = ctx.ep.solo();
  float* dy_send = scratch.send.ensure(static_cast<size_t>(Ms * C));
  float* dy_recv = solo ? dy_send : scratch.recv.ensure(static_cast<size_t>(Mr * C));
  float* dx_recv = scratch.recv2.ensure(static_cast<size_t>(Mr * C));
  float* dx_send = solo ? dx_recv : scratch.send2.ensure(static_cast<size_t>(Ms * C));
  float* dact = scratch.dact.ensure(static_cast<size_t>(Mr * F));
  float* dup = scratch.dup.ensure(static_cast<size_t>(Mr * 2 * F));

  {
    Timed t(ctx, &MoeTimers::permute);
    ops.b().moe_combine_backward(RowMap::contiguous(dy_send), s.dgates, dout, RowMap::contiguous(a.y_send.data()), a.gates,
                         plan.send_pos().data(), N, K, C, ops.stream);
  }
  auto shared = [&] { shared_backward(ops, dh, grads, a, dout, h, params, o, d, ctx, s); };
  const int nc = plan.chunks();
  std::vector<Request> to(nc), back(nc);
  if (ctx.overlap)
    for (int c = 0; c < nc; ++c) to[c] = plan.to_experts(ctx.ep, c, dy_send, dy_recv, C, "moe dispatch (backward)");
  shared();
  for (int c = 0; c < nc; ++c) {
    {
      Timed t(ctx, &MoeTimers::wait);
      if (ctx.overlap)
        to[c].wait();
      else
        plan.to_experts(ctx.ep, c, dy_send, dy_recv, C, "moe dispatch (backward)").wait();
    }
    {
      Timed t(ctx, &MoeTimers::experts);
      ChunkGemm g(plan, c, params, grads, o);
      const int64_t b = plan.recv_begin(c), rows = plan.recv_end(c) - b;
      grouped_backward(ops, dact, g.dw2.data(), dy_recv, a.fp8 ? nullptr : a.act.data(), g.w2.data(),
                              g.offsets.data(), g.groups(), F, C, a.fp8 ? &a.act_q : nullptr);
      ops.b().swiglu_backward(dup + b * 2 * F, dact + b * F, a.up.data() + b * 2 * F, rows, F, ops.stream);
      grouped_backward(ops, dx_recv, g.dw13.data(), dup, a.fp8 ? nullptr : a.x_recv.data(), g.w13.data(),
                              g.offsets.data(), g.groups(), C, 2 * F, a.fp8 ? &a.x_q : nullptr);
    }
    back[c] = plan.from_experts(ctx.ep, c, dx_recv, dx_send, C, "moe combine (backward)");
    Timed t(ctx, &MoeTimers::wait);
    if (!ctx.overlap) back[c].wait();
    for (int q = c + 1; q < nc; ++q) to[q].test();
  }
  {
    Timed t(ctx, &MoeTimers::wait);
    wait_all(back);
  }
  {
    Timed t(ctx, &MoeTimers::permute);
    ops.b().moe_gather_backward(dh, RowMap::contiguous(dx_send), plan.send_pos().data(), N, K, C, ops.stream);
  }
  }

  // Router: gate gradients plus the balance terms over the whole micro-batch.
  Timed t(ctx, &MoeTimers::router);
  RouterCoefs coefs{static_cast<float>(cfg.aux_loss_coef * loss_scale), static_cast<float>(cfg.z_loss_coef * loss_scale),
                    static_cast<float>(cfg.entropy_coef * loss_scale)};
  ops.b().router_backward(s.drl, s.dgates, a.idx, a.logits, a.scores, a.probs, a.sums, N, a.Ntot, E, K, cfg.score,
                  cfg.renormalize, coefs, ops.stream);
  linear_backward(ops, dh, grads + o.router, s.drl, h, params + o.router, N, C, E, true);
}

size_t MoeActs::row_bytes() const {
  return (x_recv.capacity() + up.capacity() + act.capacity() + y_send.capacity()) * sizeof(float) + x_win.bytes() +
         y_win.bytes();
}

double moe_block_flops(const MoeActs& a, const Dims& d) {
  double M = static_cast<double>(a.plan.recv_rows()), N = static_cast<double>(d.N);
  return 2.0 * N * d.C * d.E + 2.0 * M * d.C * 3.0 * d.F + 2.0 * N * d.C * 3.0 * d.S;
}

}  // namespace sy
