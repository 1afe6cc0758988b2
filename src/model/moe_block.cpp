#include "model/moe_block.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "moe/capacity.h"
#include "moe/payload.h"
#include "moe/timers.h"

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

// FP8 block recipe (1x128 tiles for activations and gradients): the rows
// the experts receive (forward: inputs; backward: output gradients) are
// quantized once per row, by the sender when they travelled as FP8
// (parallel.dispatch_dtype = "fp8": Rows::recv_fp8) or else here, and the
// expert GEMM takes those codes and scales. The rows themselves become the
// values that GEMM computed with (decode(q) * scale_inv), which the
// weight-gradient GEMM then reads, quantized along the tokens (as
// DeepSeek-V3 re-quantizes its FP8 activations). So the run is the same,
// bit for bit, whatever the dispatch payload.
bool exact_rows(const Ops& ops) {
  return ops.fp8 && !ops.bf16 && ops.fp8->recipe().scaling == Fp8Scaling::block;
}

thread_local Fp8Matrix t_rows;  // one segment's rows as the GEMM operand (reused)

// Rows [b, b + n) of the received rows (K wide) as operand `role` of weight w's GEMM, into t_rows.
void segment_operand(const Ops& ops, Fp8Role role, const Rows& r, int64_t b, int64_t n, int64_t K, const float* w) {
  if (r.recv_fp8) {
    const Fp8Format want = role == Fp8Role::act ? Fp8Format::e4m3 : ops.fp8->recipe().grad_format;
    SY_CHECK(r.fp8_format == want, "MoE FP8 payload rows are {}, the FP8 recipe's expert GEMM quantizes them as {}",
             to_string(r.fp8_format), to_string(want));
    const auto* packed = static_cast<const unsigned char*>(r.recv_fp8);
    const int64_t W = payload_row_words(Payload::fp8, K);
    ops.b().fp8_unpack_rows(t_rows, packed + b * W * 4, W, n, K, want, ops.stream);
    return;  // r.recv holds their values already (decoded as they landed)
  }
  ops.fp8->quantize_operand(Fp8Group::experts, role, t_rows, r.recv + b * K, n, K, w);
  ops.b().fp8_dequantize(r.recv + b * K, t_rows, ops.stream);
}

// Where the experts' SwiGLU output goes: kept per layer in FP32, or (FP8
// storage) in a buffer shared by the layers, act_q keeping it for backward.
float* expert_act(const Ops& ops, MoeActs& a, MoeScratch& scratch, int64_t n) {
  if (!a.fp8) return a.act.ensure(static_cast<size_t>(n), ops.b().allocator());
  a.act_q.reset();
  return scratch.act.ensure(static_cast<size_t>(n), ops.b().allocator());
}

// The plan's row indices where the permutation kernels read them: the
// plan's own vectors on the CPU, their device copies (upload_plan) otherwise.
void upload_plan(const Ops& ops, MoeActs& a) {
  const auto& tok = a.plan.send_token();
  const auto& pos = a.plan.send_pos();
  Allocator& mem = ops.b().allocator();
  ops.b().copy(a.send_token_dev.ensure(std::max<size_t>(tok.size(), 1), mem), tok.data(), tok.size() * sizeof(int32_t),
               ops.stream);
  ops.b().copy(a.send_pos_dev.ensure(std::max<size_t>(pos.size(), 1), mem), pos.data(), pos.size() * sizeof(int32_t),
               ops.stream);
  ops.b().synchronize(ops.stream);  // the plan's vectors may change before an asynchronous copy ran
}
const int32_t* send_token(const Ops& ops, const MoeActs& a) {
  return ops.b().device() == Device::cpu ? a.plan.send_token().data() : a.send_token_dev.data();
}
const int32_t* send_pos(const Ops& ops, const MoeActs& a) {
  return ops.b().device() == Device::cpu ? a.plan.send_pos().data() : a.send_pos_dev.data();
}

void shared_forward(const Ops& ops, MoeActs& a, float* out, const float* h, const float* params, const BlockOffsets& o,
                    const Dims& d, const MoeContext& ctx) {
  Timed t(ctx.timers, &MoeTimers::shared);
  if (d.S > 0) {
    mm_forward(ops, Fp8Group::shared, a.s_up, h, params + o.shared_w13, d.N, d.C, 2 * d.S);
    ops.b().swiglu_forward(a.s_act, a.s_up, d.N, d.S, ops.stream);
    mm_forward(ops, Fp8Group::shared, out, a.s_act, params + o.shared_w2, d.N, d.S, d.C, a.fp8 ? &a.s_act_q : nullptr);
  } else {
    ops.b().zero(out, static_cast<size_t>(d.N * d.C) * sizeof(float), ops.stream);
  }
}

void shared_backward(const Ops& ops, float* dh, float* grads, MoeActs& a, const float* dout, const float* h, const float* params,
                     const BlockOffsets& o, const Dims& d, const MoeContext& ctx, Scratch& s) {
  Timed t(ctx.timers, &MoeTimers::shared);
  if (d.S > 0) {
    mm_backward(ops, Fp8Group::shared, s.dact, grads + o.shared_w2, dout, a.s_act, params + o.shared_w2, d.N, d.S, d.C,
                false, a.fp8 ? &a.s_act_q : nullptr);
    ops.b().swiglu_backward(s.dup, s.dact, a.s_up, d.N, d.S, ops.stream);
    mm_backward(ops, Fp8Group::shared, dh, grads + o.shared_w13, s.dup, h, params + o.shared_w13, d.N, d.C, 2 * d.S);
  } else {
    ops.b().zero(dh, static_cast<size_t>(d.N * d.C) * sizeof(float), ops.stream);
  }
}

}  // namespace

void moe_block_forward(const Ops& ops, MoeActs& a, float* out, const float* h, const float* params, const float* bias,
                       const BlockOffsets& o, const Dims& d, const MoeConfig& cfg, const MoeContext& ctx,
                       MoeScratch& scratch) {
  const int64_t N = d.N, C = d.C, E = d.E, K = d.K, F = d.F;
  std::optional<Timed> timed(std::in_place, ctx.timers, &MoeTimers::router);
  // Router on the local tokens.
  ops.b().linear_forward(a.logits, h, params + o.router, N, C, E, ops.stream);
  ops.b().router_scores(a.scores, a.probs, a.logits, N, E, cfg.score, ops.stream);
  ops.b().router_topk(a.idx, a.gates, a.scores, bias, N, E, K, cfg.renormalize, cfg.router_groups(), ops.stream);
  a.margin = ops.b().router_margin(a.idx, a.scores, bias, N, E, K, cfg.router_groups(), ops.stream);
  // The capacity decision and the plan run on the host: on a device, on copies.
  const bool on_device = ops.b().device() != Device::cpu;
  const int32_t* idx = a.idx;
  const float* scores = a.scores;
  uint8_t* keep = a.keep;
  if (on_device) {
    a.idx_host.resize(static_cast<size_t>(N * K));
    a.scores_host.resize(static_cast<size_t>(N * E));
    a.keep_host.resize(static_cast<size_t>(N * K));
    ops.b().copy(a.idx_host.data(), a.idx, a.idx_host.size() * sizeof(int32_t), ops.stream);
    ops.b().copy(a.scores_host.data(), a.scores, a.scores_host.size() * sizeof(float), ops.stream);
    ops.b().synchronize(ops.stream);
    idx = a.idx_host.data(), scores = a.scores_host.data(), keep = a.keep_host.data();
  }
  a.group_pairs = a.group_max = 0;
  if (cfg.expert_groups > 1) {
    const int64_t Eg = E / cfg.expert_groups;
    for (int64_t t = 0; t < N; ++t) {
      int64_t distinct = 0;
      for (int64_t k = 0; k < K; ++k) {
        bool seen = false;
        for (int64_t q = 0; q < k; ++q) seen |= idx[t * K + q] / Eg == idx[t * K + k] / Eg;
        distinct += seen ? 0 : 1;
      }
      a.group_pairs += distinct;
      a.group_max = std::max(a.group_max, distinct);
    }
  }
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

  decide_keep(keep, idx, scores, N, E, K, expert_capacity(cfg.capacity_factor, a.Ntot, E, K), a.sums.counts,
              ctx.dp.comm(), ctx.token_offset);
  a.dropped = 0;
  for (int64_t i = 0; i < N * K; ++i) a.dropped += keep[i] ? 0 : 1;
  const Dispatcher& D = *ctx.dispatch;
  timed.emplace(ctx.timers, &MoeTimers::plan);
  D.plan(a.plan, idx, keep, N, K, E);
  timed.reset();
  if (on_device) upload_plan(ops, a);

  const EpDispatch& plan = a.plan;
  const int64_t Ms = plan.send_rows(), Mr = plan.recv_rows();
  if (!a.rows) a.rows = D.make_layer();
  if (!scratch.rows) scratch.rows = D.make_scratch();
  // With FP8 storage the inputs are saved in FP8 (x_q): one input buffer for all layers.
  const Rows r = D.forward_rows(plan, *a.rows, *scratch.rows, C, a.fp8);
  if (a.fp8) a.x_q.reset();
  a.up.ensure(static_cast<size_t>(Mr * 2 * F), ops.b().allocator());
  float* act = expert_act(ops, a, scratch, Mr * F);
  {
    Timed t(ctx.timers, &MoeTimers::permute);
    ops.b().moe_gather(r.send, h, send_token(ops, a), Ms, C, ops.stream);
  }
  ExpertSteps steps;
  steps.meanwhile = [&] { shared_forward(ops, a, out, h, params, o, d, ctx); };
  steps.experts = [&](int c) {
    Timed t(ctx.timers, &MoeTimers::experts);
    ChunkGemm g(plan, c, params, nullptr, o);
    const int64_t b = plan.recv_begin(c), rows = plan.recv_end(c) - b;
    if (exact_rows(ops)) {
      for (int64_t e = 0; e < g.groups(); ++e) {
        const int64_t b0 = g.offsets[e], n = g.offsets[e + 1] - b0;
        if (n == 0) continue;
        segment_operand(ops, Fp8Role::act, r, b0, n, C, g.w13[e]);
        ops.fp8->forward_quantized(Fp8Group::experts, a.up.data() + b0 * 2 * F, t_rows, r.recv + b0 * C, g.w13[e], n,
                                   C, 2 * F, a.fp8 ? &a.x_q : nullptr, b0);
      }
    } else {
      grouped_forward(ops, a.up.data(), r.recv, g.w13.data(), g.offsets.data(), g.groups(), C, 2 * F,
                      a.fp8 ? &a.x_q : nullptr);
    }
    ops.b().swiglu_forward(act + b * F, a.up.data() + b * 2 * F, rows, F, ops.stream);
    grouped_forward(ops, r.reply, act, g.w2.data(), g.offsets.data(), g.groups(), F, C, a.fp8 ? &a.act_q : nullptr);
  };
  if (exact_rows(ops))  // FP8 payload: the sender quantized the rows; its statistics are the recipe's
    steps.encoded = [&](const QuantStats& st) { ops.fp8->scaler().note(Fp8Group::experts, Fp8Role::act, st, nullptr); };
  D.exchange(Pass::forward, plan, r, *a.rows, *scratch.rows, C, steps, ctx.timers);
  Timed t(ctx.timers, &MoeTimers::permute);
  ops.b().moe_combine(out, r.back, nullptr, a.gates, send_pos(ops, a), N, K, C, ops.stream);
}

void moe_block_backward(const Ops& ops, float* dh, float* grads, MoeActs& a, const float* dout, const float* h,
                        const float* params, const BlockOffsets& o, const Dims& d, const MoeConfig& cfg,
                        double loss_scale, const MoeContext& ctx, MoeScratch& scratch, Scratch& s) {
  const int64_t N = d.N, C = d.C, E = d.E, K = d.K, F = d.F;
  const Dispatcher& D = *ctx.dispatch;
  const EpDispatch& plan = a.plan;
  const int64_t Mr = plan.recv_rows();
  const Rows r = D.backward_rows(plan, *a.rows, *scratch.rows, C);
  float* dact = scratch.dact.ensure(static_cast<size_t>(Mr * F), ops.b().allocator());
  float* dup = scratch.dup.ensure(static_cast<size_t>(Mr * 2 * F), ops.b().allocator());
  {
    Timed t(ctx.timers, &MoeTimers::permute);
    ops.b().moe_combine_backward(r.send, s.dgates, dout, D.forward_outputs(plan, *a.rows), a.gates,
                                 send_pos(ops, a), N, K, C, ops.stream);
  }
  const float* x_saved = a.fp8 ? nullptr : D.forward_inputs(*a.rows);
  ExpertSteps steps;
  steps.meanwhile = [&] { shared_backward(ops, dh, grads, a, dout, h, params, o, d, ctx, s); };
  steps.experts = [&](int c) {
    Timed t(ctx.timers, &MoeTimers::experts);
    ChunkGemm g(plan, c, params, grads, o);
    const int64_t b = plan.recv_begin(c), rows = plan.recv_end(c) - b;
    if (exact_rows(ops)) {
      for (int64_t e = 0; e < g.groups(); ++e) {
        const int64_t b0 = g.offsets[e], n = g.offsets[e + 1] - b0;
        if (n == 0) continue;
        segment_operand(ops, Fp8Role::grad, r, b0, n, C, g.w2[e]);
        ops.fp8->backward_quantized(Fp8Group::experts, dact + b0 * F, g.dw2[e], t_rows, r.recv + b0 * C,
                                    a.fp8 ? nullptr : a.act.data() + b0 * F, g.w2[e], n, F, C,
                                    a.fp8 ? &a.act_q : nullptr, b0);
      }
    } else {
      grouped_backward(ops, dact, g.dw2.data(), r.recv, a.fp8 ? nullptr : a.act.data(), g.w2.data(),
                       g.offsets.data(), g.groups(), F, C, a.fp8 ? &a.act_q : nullptr);
    }
    ops.b().swiglu_backward(dup + b * 2 * F, dact + b * F, a.up.data() + b * 2 * F, rows, F, ops.stream);
    grouped_backward(ops, r.reply, g.dw13.data(), dup, x_saved, g.w13.data(), g.offsets.data(), g.groups(), C,
                            2 * F, a.fp8 ? &a.x_q : nullptr);
  };
  if (exact_rows(ops))
    steps.encoded = [&](const QuantStats& st) { ops.fp8->scaler().note(Fp8Group::experts, Fp8Role::grad, st, nullptr); };
  D.exchange(Pass::backward, plan, r, *a.rows, *scratch.rows, C, steps, ctx.timers);
  {
    Timed t(ctx.timers, &MoeTimers::permute);
    ops.b().moe_gather_backward(dh, r.back, send_pos(ops, a), N, K, C, ops.stream);
  }

  // Router: gate gradients plus the balance terms over the whole micro-batch.
  Timed t(ctx.timers, &MoeTimers::router);
  RouterCoefs coefs{static_cast<float>(cfg.aux_loss_coef * loss_scale), static_cast<float>(cfg.z_loss_coef * loss_scale),
                    static_cast<float>(cfg.entropy_coef * loss_scale)};
  ops.b().router_backward(s.drl, s.dgates, a.idx, a.logits, a.scores, a.probs, a.sums, N, a.Ntot, E, K, cfg.score,
                  cfg.renormalize, coefs, ops.stream);
  linear_backward(ops, dh, grads + o.router, s.drl, h, params + o.router, N, C, E, true);
}

size_t MoeActs::row_bytes() const {
  return (up.capacity() + act.capacity()) * sizeof(float) + (rows ? rows->bytes() : 0);
}

size_t MoeScratch::transfer_bytes() const {
  return (dact.capacity() + dup.capacity()) * sizeof(float) + (rows ? rows->transfer_bytes() : 0);
}

size_t MoeScratch::input_bytes() const {
  return act.capacity() * sizeof(float) + (rows ? rows->input_bytes() : 0);
}

double moe_block_flops(const MoeActs& a, const Dims& d) {
  double M = static_cast<double>(a.plan.recv_rows()), N = static_cast<double>(d.N);
  return 2.0 * N * d.C * d.E + 2.0 * M * d.C * 3.0 * d.F + 2.0 * N * d.C * 3.0 * d.S;
}

}  // namespace sy
