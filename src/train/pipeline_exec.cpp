// The pipeline executor: runs this rank's op list of the schedule with
// non-blocking MPI point-to-point between stages (receives posted one
// compute op ahead, sends started right after the op that produced them and
// completed lazily), then reduces gradients: the tied embedding between the
// first and last stage, every bucket over its data-parallel group.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <limits>
#include <map>

#include "comm/watchdog.h"
#include "core/check.h"
#include "core/timer.h"
#include "pipeline/simulate.h"
#include "train/pipeline_state.h"
#include "train/trainer.h"

namespace sy {

using pipe::Op;
using pipe::OpKind;

Trainer::~Trainer() {
  if (on_device() && params_.data()) {  // page-locked in the constructor (a failed pin is undone as a no-op)
    ops_.b().unpin(params_.data());
    ops_.b().unpin(grads_.data());
  }
}

const PipelinePlan* Trainer::pipeline() const { return pipe_ ? &pipe_->plan : nullptr; }

void Trainer::setup_pipeline(const MoeContext& ctx, bool fp8_activations) {
  pipe_ = std::make_unique<PipeState>();
  PipeState& P = *pipe_;
  const ParallelSection& par = cfg_.parallel;
  SY_CONFIG_CHECK(cfg_.train.sample_every == 0, "{}: train.sample_every needs parallel.pp = 1 (samples are drawn "
                  "from one rank's full model); sample from a checkpoint with moe-generate", cfg_.source);
  P.recompute = par.recompute == Recompute::full;
  SY_CONFIG_CHECK(!P.recompute || !is_fp8(cfg_.precision.recipe), "{}: parallel.recompute = \"full\" with FP8 "
                  "recipes would count amax statistics twice; use precision.recipe = \"fp32\"", cfg_.source);
  SY_CONFIG_CHECK(!P.recompute || par.schedule != pipe::ScheduleKind::zb, "{}: parallel.recompute = \"full\" recomputes one micro-batch "
                  "at a time, and \"zb\" keeps weight-gradient inputs across micro-batches; pick another schedule",
                  cfg_.source);
  P.plan = plan_pipeline(cfg_, grid_.pp_size());
  const PipelinePlan& pl = P.plan;
  P.eval = pipe::make_forward_only(static_cast<int>(pl.pp), static_cast<int>(cfg_.train.val_batches),
                                   static_cast<int>(pl.v));
  const int64_t r = grid_.pp_rank();
  const int64_t per_rank = cfg_.model.moe.experts / grid_.ep_size();
  const ExpertSlice mine = cfg_.model.uniform_experts() ? ExpertSlice{grid_.ep_rank() * per_rank, per_rank}
                                                       : ExpertSlice::of_part(grid_.ep_rank(), grid_.ep_size());
  layout_ = std::make_shared<const ParamLayout>(cfg_.model, mine, pl.stage_spec(r));
  P.N = cfg_.train.micro_batch * cfg_.model.seq_len;
  P.C = cfg_.model.d_model;
  const int64_t v = pl.v;
  P.free_slots.resize(static_cast<size_t>(v));
  P.slot_of.resize(static_cast<size_t>(v));
  P.defer.resize(static_cast<size_t>(v));
  P.saved_in.resize(static_cast<size_t>(v));
  for (int64_t c = 0; c < v; ++c) {
    const int64_t st = c * pl.pp + r;
    int64_t slots = std::max<int64_t>(1, pl.validation.peak_in_flight_chunk[static_cast<size_t>(r)][static_cast<size_t>(c)]);
    if (P.recompute) slots = 1;  // one working set; the inputs wait in saved_in
    StageRun run{pl.bounds[static_cast<size_t>(st)], pl.bounds[static_cast<size_t>(st + 1)], st == 0,
                 st == pl.stages() - 1, slots, layout_};
    chunks_.push_back(std::make_unique<Transformer>(cfg_.model, cfg_.train.micro_batch, ctx, fp8_activations, run, ops_));
    for (int64_t k = slots - 1; k >= 0; --k) P.free_slots[static_cast<size_t>(c)].push_back(k);
    P.defer[static_cast<size_t>(c)].resize(static_cast<size_t>(slots));
  }
  P.be = ops_.be, P.stream = ops_.stream;
  P.tied = cfg_.model.tie_embeddings;
  const bool ends = r == 0 || r == pl.pp - 1;
  // The tied embedding's pair moves the gradients where they are (dgrid_'s world: device buffers on a device).
  P.emb = dgrid_.world().split(ends ? static_cast<int>(grid_.dp_rank()) : static_cast<int>(grid_.dp_size() + grid_.world().rank()),
                               static_cast<int>(r), fmt::format("emb[{}]", grid_.dp_rank()));
}

namespace {
int tag_of(int is_grad, int mb, int dst_stage, int stages) { return (mb * stages + dst_stage) * 2 + is_grad; }
}  // namespace

void Trainer::run_pipeline(int64_t step, StepStats& s, double* sums) {
  PipeState& P = *pipe_;
  const PipelinePlan& pl = P.plan;
  const pipe::Schedule& S = pl.schedule;
  const int r = static_cast<int>(grid_.pp_rank());
  const int stages = S.stages();
  const int64_t N = P.N, C = P.C, m = pl.m;
  const Comm& pp = dgrid_.pp();  // activations and their gradients, where the stages keep them
  const int64_t moe_layers = cfg_.model.moe_layers(), E = cfg_.model.moe.experts;
  // This step's batch: the first stage reads the inputs, the last the targets.
  P.inputs.resize(static_cast<size_t>(m * N));
  P.targets.resize(static_cast<size_t>(m * N));
  if (layout_->has_embed() || layout_->has_head())
    for (int64_t a = 0; a < m; ++a)
      batcher_->train_batch(step, a, grid_.dp_rank(), P.inputs.data() + a * N, P.targets.data() + a * N);
  std::vector<double> load(static_cast<size_t>(moe_layers * E), 0.0), router(static_cast<size_t>(moe_layers * 3), 0.0);
  std::vector<double> margin(static_cast<size_t>(moe_layers), std::numeric_limits<double>::infinity());
  const int v = S.v;
  P.sum_f.assign(static_cast<size_t>(v), 0), P.sum_b = P.sum_f, P.sum_w = P.sum_f;
  P.n_f.assign(static_cast<size_t>(v), 0), P.n_b = P.n_f, P.n_w = P.n_f;
  P.busy = 0, P.first_start = -1, P.held = 0, P.peak = 0;
  const double scale = 1.0 / static_cast<double>(m);

  auto wait_msg = [&](int is_grad, int mb, int chunk, float* dst) { P.receive(is_grad, mb, chunk, dst, r); };
  auto send = [&](const float* src, int peer, int tag) { P.send(pp, src, peer, tag); };
  auto free_slot = [&](int chunk, int mb) {
    auto& so = P.slot_of[static_cast<size_t>(chunk)];
    if (!P.recompute) P.free_slots[static_cast<size_t>(chunk)].push_back(so.at(mb));
    so.erase(mb);
    P.saved_in[static_cast<size_t>(chunk)].erase(mb);
    --P.held;
  };

  for (const Op& op : S.ranks[static_cast<size_t>(r)]) {
    const int st = S.stage(r, op.chunk);
    Transformer& T = *chunks_[static_cast<size_t>(op.chunk)];
    const size_t ch = static_cast<size_t>(op.chunk);
    const int32_t* in = P.inputs.data() + op.mb * N;
    const int32_t* tg = P.targets.data() + op.mb * N;
    double t0 = now_seconds(), t1 = t0;
    switch (op.kind) {
      case OpKind::recv_act:
      case OpKind::recv_grad: {
        const int g = op.kind == OpKind::recv_grad;
        P.post(pp, g, op.mb, op.chunk, op.peer, tag_of(g, op.mb, st, stages));
        break;
      }
      case OpKind::forward: {
        watchdog::set_phase("pipeline forward");
        SY_CHECK(P.recompute || !P.free_slots[ch].empty(), "pipeline rank {} chunk {}: no free activation slot for "
                 "micro-batch {} (the schedule holds more than the validator counted)", r, op.chunk, op.mb);
        const int64_t slot = P.recompute ? 0 : P.free_slots[ch].back();  // recompute: one working slot
        if (!P.recompute) P.free_slots[ch].pop_back();
        P.slot_of[ch][op.mb] = slot;
        P.peak = std::max(P.peak, ++P.held);
        if (st > 0) wait_msg(0, op.mb, op.chunk, T.input(slot));
        if (P.recompute && st > 0) {
          auto& saved = P.saved_in[ch][op.mb];
          saved.resize(static_cast<size_t>(N * C));
          P.copy(saved.data(), T.input(slot), N * C);
        }
        t1 = now_seconds();
        MicroBatchStats mb = T.forward(slot, live_params(), live_bias(), in, tg, true, scale);
        SY_CHECK(std::isfinite(mb.loss_sum), "the loss is {} at step {} (micro-batch {}, rank {}): training diverged; "
                 "lower train.lr or check the data", mb.loss_sum, step, op.mb, grid_.world().rank());
        sums[0] += mb.loss_sum;
        sums[1] += static_cast<double>(mb.tokens);
        sums[2] += static_cast<double>(mb.dropped);
        sums[3] += static_cast<double>(mb.picks);
        sums[4] += mb.flops;
        for (size_t i = 0; i < mb.moe_index.size(); ++i) {
          const size_t l = static_cast<size_t>(mb.moe_index[i]);
          for (size_t e = 0; e < mb.load[i].size(); ++e) load[l * static_cast<size_t>(E) + e] += static_cast<double>(mb.load[i][e]);
          router[3 * l] += mb.router[i].aux, router[3 * l + 1] += mb.router[i].z, router[3 * l + 2] += mb.router[i].entropy;
          margin[l] = std::min(margin[l], mb.margin[i]);
        }
        P.sum_f[ch] += now_seconds() - t1, ++P.n_f[ch];
        break;
      }
      case OpKind::send_act:
        send(T.output(P.slot_of[ch].at(op.mb)), op.peer, tag_of(0, op.mb, st + 1, stages));
        break;
      case OpKind::backward:
      case OpKind::backward_input: {
        watchdog::set_phase("pipeline backward");
        const int64_t slot = P.slot_of[ch].at(op.mb);
        if (st < stages - 1) wait_msg(1, op.mb, op.chunk, T.grad_output(slot));
        t1 = now_seconds();
        if (P.recompute) {  // the forward again, from the saved stage input (it leaves grad_output alone)
          if (st > 0) P.copy(T.input(slot), P.saved_in[ch].at(op.mb).data(), N * C);
          T.forward(slot, live_params(), live_bias(), in, tg, true, scale);
        }
        // backward_input: the weight-gradient GEMMs wait in this slot's queue for backward_weight.
        T.backward(slot, live_params(), live_grads(), {},
                   op.kind == OpKind::backward_input ? &P.defer[ch][static_cast<size_t>(slot)] : nullptr);
        P.sum_b[ch] += now_seconds() - t1, ++P.n_b[ch];
        if (op.kind == OpKind::backward && st == 0) free_slot(op.chunk, op.mb);
        break;
      }
      case OpKind::send_grad: {
        const int64_t slot = P.slot_of[ch].at(op.mb);
        send(T.grad_input(slot), op.peer, tag_of(1, op.mb, st - 1, stages));
        if (!S.split_backward) free_slot(op.chunk, op.mb);
        break;
      }
      case OpKind::backward_weight: {
        watchdog::set_phase("pipeline weight gradient");
        P.defer[ch][static_cast<size_t>(P.slot_of[ch].at(op.mb))].run(*ops_.be, ops_.stream);
        P.sum_w[ch] += now_seconds() - t1, ++P.n_w[ch];
        free_slot(op.chunk, op.mb);
        break;
      }
    }
    if (pipe::is_compute(op.kind)) {
      double t2 = now_seconds();
      if (P.first_start < 0) P.first_start = t1;
      P.last_end = t2;
      P.busy += t2 - t1;
    }
    P.reap();
  }
  watchdog::set_phase("pipeline sends");
  P.finish_sends();
  SY_CHECK(P.recvs.empty() && P.held == 0, "pipeline rank {}: {} receives and {} micro-batches left after the schedule",
           r, P.recvs.size(), P.held);

  // Gradients: the tied embedding's two copies summed, then every bucket over
  // its group, where the gradients are (a device run's groups move device buffers).
  watchdog::set_phase("gradient reduction");
  reduce_tied_embedding(live_grads());
  int64_t last_key = -2;
  for (const Bucket& b : layout_->buckets())
    if (b.ready != last_key) sync_->ready(last_key = b.ready, live_grads());
  // Every stage's share of the statistics: loads and router terms by MoE layer.
  pp.allreduce_sum(sums, 5);
  pp.allreduce_sum(load.data(), load.size());
  pp.allreduce_sum(router.data(), router.size());
  s.load.assign(static_cast<size_t>(moe_layers), {});
  s.router.assign(static_cast<size_t>(moe_layers), {});
  s.router_margin = margin;  // this stage's layers (+inf for the others): the step's all-reduce takes the minimum
  for (int64_t l = 0; l < moe_layers; ++l) {
    s.load[static_cast<size_t>(l)].resize(static_cast<size_t>(cfg_.model.experts_at(cfg_.model.dense_layers + l)));
    for (int64_t e = 0; e < cfg_.model.experts_at(cfg_.model.dense_layers + l); ++e) s.load[static_cast<size_t>(l)][static_cast<size_t>(e)] = static_cast<int64_t>(std::llround(load[static_cast<size_t>(l * E + e)]));
    s.router[static_cast<size_t>(l)].aux = router[static_cast<size_t>(3 * l)];
    s.router[static_cast<size_t>(l)].z = router[static_cast<size_t>(3 * l + 1)];
    s.router[static_cast<size_t>(l)].entropy = router[static_cast<size_t>(3 * l + 2)];
  }
}

// Per pipeline rank of data-parallel rank 0: bubble measured from op
// timestamps and simulated on the measured op costs, peak micro-batches and
// activation memory held.
void Trainer::reduce_tied_embedding(float* grads) {
  if (!pipelined()) return;
  PipeState& P = *pipe_;
  if (P.tied && layout_->stage().embed != layout_->stage().head && !P.emb.solo()) {
    const int64_t n = cfg_.model.vocab_size * cfg_.model.d_model;
    Request req = P.emb.iallreduce_sum(grads + layout_->embed(), n, "tied embedding gradient");
    req.wait();
  }
}

void Trainer::pipeline_stats(StepStats& s) {
  PipeState& P = *pipe_;
  const PipelinePlan& pl = P.plan;
  const int v = static_cast<int>(pl.v);
  const size_t W = static_cast<size_t>(5 + 3 * v);
  std::vector<double> mine(W), all(W * static_cast<size_t>(pl.pp));
  double act = 0;
  for (const auto& c : chunks_) act += static_cast<double>(c->activation_bytes());
  if (P.recompute && grid_.pp_rank() > 0) act += static_cast<double>(P.peak * P.N * P.C) * sizeof(float);  // saved inputs
  mine[0] = P.first_start, mine[1] = P.last_end, mine[2] = P.busy, mine[3] = static_cast<double>(P.peak);
  mine[4] = act / (1 << 20);
  for (int c = 0; c < v; ++c) {
    const size_t k = static_cast<size_t>(c);
    mine[5 + 3 * k] = P.n_f[k] ? P.sum_f[k] / static_cast<double>(P.n_f[k]) : 0;
    mine[6 + 3 * k] = P.n_b[k] ? P.sum_b[k] / static_cast<double>(P.n_b[k]) : 0;
    mine[7 + 3 * k] = P.n_w[k] ? P.sum_w[k] / static_cast<double>(P.n_w[k]) : 0;
  }
  grid_.pp().allgather(mine.data(), W, all.data());
  if (grid_.world().rank() != 0) return;
  double start = all[0], end = all[1];
  for (int64_t q = 0; q < pl.pp; ++q) start = std::min(start, all[q * W]), end = std::max(end, all[q * W + 1]);
  pipe::Costs costs = pipe::Costs::uniform(static_cast<int>(pl.pp), v, 0, 0, 0);
  double f = 0, b = 0, w = 0;
  for (int64_t q = 0; q < pl.pp; ++q) {
    const double* a = &all[static_cast<size_t>(q) * W];
    s.pp_bubble.push_back(end > start ? 1.0 - a[2] / (end - start) : 0.0);
    s.pp_peak_in_flight.push_back(static_cast<int64_t>(a[3]));
    s.pp_act_mib.push_back(a[4]);
    for (int c = 0; c < v; ++c) {
      costs.f[static_cast<size_t>(q)][static_cast<size_t>(c)] = a[5 + 3 * c];
      costs.b[static_cast<size_t>(q)][static_cast<size_t>(c)] = a[6 + 3 * c];
      costs.w[static_cast<size_t>(q)][static_cast<size_t>(c)] = a[7 + 3 * c];
      f += a[5 + 3 * c], b += a[6 + 3 * c], w += a[7 + 3 * c];
    }
  }
  pipe::Simulation sim = pipe::simulate(pl.schedule, costs);
  s.pp_bubble_sim = sim.bubble;
  s.pp_bubble_analytic = pipe::analytic_bubble(pl.schedule, f, b, w);
}

double Trainer::validate_pipeline() {
  PipeState& P = *pipe_;
  const pipe::Schedule& S = P.eval;
  const int r = static_cast<int>(grid_.pp_rank());
  const int stages = S.stages();
  const int64_t N = P.N;
  const Comm& pp = dgrid_.pp();  // activations and their gradients, where the stages keep them
  double sums[2] = {0, 0};
  std::vector<int32_t> in(static_cast<size_t>(N)), tg(static_cast<size_t>(N));
  for (const Op& op : S.ranks[static_cast<size_t>(r)]) {
    const int st = S.stage(r, op.chunk);
    Transformer& T = *chunks_[static_cast<size_t>(op.chunk)];
    switch (op.kind) {
      case OpKind::recv_act:
        P.post(pp, 0, op.mb, op.chunk, op.peer, tag_of(0, op.mb, st, stages));
        break;
      case OpKind::forward: {
        if (st > 0) P.receive(0, op.mb, op.chunk, T.input(0), r);
        if (st == 0 || st == stages - 1) batcher_->val_batch(op.mb, grid_.dp_rank(), in.data(), tg.data());
        MicroBatchStats mb = T.evaluate(0, live_params(), live_bias(), in.data(), tg.data());
        sums[0] += mb.loss_sum;
        sums[1] += static_cast<double>(mb.tokens);
        break;
      }
      case OpKind::send_act:
        P.send(pp, T.output(0), op.peer, tag_of(0, op.mb, st + 1, stages));
        break;
      default:
        SY_FAIL("validation schedule has a {} op", pipe::op_name(op.kind));
    }
    P.reap();
  }
  P.finish_sends();
  grid_.world().allreduce_sum(sums, 2);
  return sums[0] / sums[1];
}

}  // namespace sy
