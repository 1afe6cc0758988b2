// The step engine and the training loop: one optimizer step (micro-batches
// or the pipeline, gradient reduction, norm and clipping, AdamW, balancing
// bias, statistics), validation, samples, and train() tying them to the
// metrics, checkpoint cadence and signals.
#include "train/trainer.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "ckpt/files.h"
#include "comm/watchdog.h"
#include "core/check.h"
#include "core/timer.h"
#include "core/version.h"
#include "moe/balance.h"
#include "train/cadence.h"
#include "train/pipeline_state.h"
#include "train/signals.h"

namespace sy {

namespace fs = std::filesystem;

StepStats Trainer::step(int64_t step) {
  const double t0 = now_seconds();
  ops_.b().reset_counters();
  watchdog::set_step(step);
  const int64_t A = cfg_.train.grad_accum;
  const ParamLayout& layout = model_->layout();
  if (on_device())
    ops_.b().zero(dgrads_.data(), grads_.size() * sizeof(float), ops_.stream);
  else
    grads_.zero();

  StepStats s;
  s.step = step;
  const MoeTimers moe0 = moe_timers_;
  double t_fwd = 0, t_bwd = 0;
  // Summed over ranks at the end: CE sum, tokens, dropped, picks, flops.
  double sums[5] = {0, 0, 0, 0, 0};
  double groups[2] = {0, 0};  // (token, group) pairs summed, most groups of one token (moe.expert_groups > 1)
  if (pipelined()) run_pipeline(step, s, sums);
  for (int64_t a = 0; a < A && !pipelined(); ++a) {
    batcher_->train_batch(step, a, grid_.dp_rank(), inputs_.data(), targets_.data());
    watchdog::set_phase("forward");
    const double tf = now_seconds();
    MicroBatchStats mb = model_->forward(live_params(), live_bias(), inputs_.data(), targets_.data(), true,
                                         1.0 / static_cast<double>(A));
    SY_CHECK(std::isfinite(mb.loss_sum), "the loss is {} at step {} (micro-batch {}, rank {}): training diverged; "
             "lower train.lr or check the data", mb.loss_sum, step, a, grid_.world().rank());
    watchdog::set_phase("backward");
    bool last = a + 1 == A;
    const double tb = now_seconds();
    t_fwd += tb - tf;
    model_->backward(live_params(), live_grads(), [&](int64_t key) {
      if (last) sync_->ready(key, live_grads());
    });
    t_bwd += now_seconds() - tb;
    sums[0] += mb.loss_sum;
    sums[1] += static_cast<double>(mb.tokens);
    sums[2] += static_cast<double>(mb.dropped);
    sums[3] += static_cast<double>(mb.picks);
    sums[4] += mb.flops;
    groups[0] += static_cast<double>(mb.group_pairs);
    groups[1] = std::max(groups[1], static_cast<double>(mb.group_max));
    if (s.load.empty()) {
      s.load = mb.load;
      s.router = mb.router;
      s.router_margin = mb.margin;
    } else {
      for (size_t l = 0; l < mb.load.size(); ++l) {
        for (size_t e = 0; e < mb.load[l].size(); ++e) s.load[l][e] += mb.load[l][e];
        s.router_margin[l] = std::min(s.router_margin[l], mb.margin[l]);
        s.router[l].aux += mb.router[l].aux;
        s.router[l].z += mb.router[l].z;
        s.router[l].entropy += mb.router[l].entropy;
      }
    }
  }
  for (RouterLosses& r : s.router) r.aux /= A, r.z /= A, r.entropy /= A;
  // The closest top-k call anywhere (a minimum: the same on any layout).
  if (!s.router_margin.empty()) grid_.world().allreduce_min(s.router_margin.data(), s.router_margin.size());
  watchdog::set_phase("optimizer");
  const double tw = now_seconds();
  sync_->finish();
  const double to = now_seconds();

  // The reduced gradients the update reads, where the ops run (with ZeRO-1,
  // this rank's shard, in the same memory).
  const float* reduced = sync_->reduced(live_grads());
  // Global gradient norm: every rank's owned share, summed; each tensor's
  // squares summed where the gradients are (Backend::sum_squares).
  GradNormPart gn = grad_norm_part(ops_.b(), ops_.stream, reduced, sync_->owned(), layout);
  double norm_in[2] = {gn.sumsq, 0}, bad = gn.nonfinite < 0 ? 1e300 : static_cast<double>(gn.nonfinite);
  grid_.world().allreduce_sum(norm_in, 1);
  grid_.world().allreduce_min(&bad, 1);
  SY_CHECK(bad >= 1e300, "the gradient of '{}' is not finite at step {}: training diverged; lower train.lr or "
           "enable train.grad_clip", full_layout_->params()[static_cast<size_t>(bad)].name, step);
  s.grad_norm = std::sqrt(norm_in[0]);
  s.lr = lr_at(cfg_.train, step);
  ckpt_->wait_staged();  // a background save may still be copying the weights and moments
  opt_->update(live_params(), reduced, step, s.lr, clip_coef(s.grad_norm, cfg_.train.grad_clip));
  sync_->gather_params(live_params());  // ZeRO-1: the updated parts, to every member
  const double t_opt = now_seconds() - to;
  update_bias(s.load);

  const bool grouped = cfg_.model.moe.expert_groups > 1 && cfg_.model.moe_layers() > 0 && !pipelined();
  if (grouped) {
    grid_.dp().allreduce_sum(groups, 1);
    grid_.dp().allreduce_max(groups + 1, 1);
  }
  grid_.dp().allreduce_sum(sums, 5);
  if (grouped) {
    s.group_pairs = groups[0];
    s.groups_per_token = groups[0] / (sums[1] * static_cast<double>(cfg_.model.moe_layers()));
    s.groups_max = groups[1];
  }
  s.loss = sums[0] / sums[1];
  s.dropped_frac = sums[3] > 0 ? sums[2] / sums[3] : 0.0;
  for (const auto& l : s.load) {
    int64_t mx = 0, sum = 0;
    for (int64_t c : l) mx = std::max(mx, c), sum += c;
    s.imbalance.push_back(sum > 0 ? static_cast<double>(mx) * static_cast<double>(l.size()) / static_cast<double>(sum) : 1.0);
  }
  // Slowest rank's step time and largest activation memory, in one all-reduce.
  Transformer::ActivationMemory am;
  for (const auto& c : chunks_) {
    Transformer::ActivationMemory a = c->activation_memory();
    am.arena += a.arena, am.expert_rows += a.expert_rows, am.fp8 += a.fp8;
  }
  const size_t amb[4] = {am.arena, am.expert_rows, am.fp8, am.total()};
  const MoeTimers& mt = moe_timers_;
  double mx[12] = {now_seconds() - t0};
  for (int i = 0; i < 4; ++i) mx[i + 1] = static_cast<double>(amb[i]) / (1 << 20);
  const double times[7] = {t_fwd, t_bwd, to - tw, t_opt, mt.wait - moe0.wait, mt.plan - moe0.plan,
                           mt.permute - moe0.permute};
  std::copy(times, times + 7, mx + 5);
  grid_.world().allreduce_max(mx, 12);
  s.seconds = mx[0];
  std::copy(mx + 1, mx + 5, s.act_mib);
  s.times = {mx[5], mx[6], mx[7], mx[8], mx[9], mx[10], mx[11]};
  s.tokens_per_s = sums[1] / s.seconds;
  s.gflops = 3.0 * sums[4] / s.seconds / 1e9;
  const OpCounters gc = ops_.b().counters();
  s.gemm_seconds = gc.gemm_seconds;
  s.gemm_gflops = gc.gemm_seconds > 0 ? gc.gemm_flops / gc.gemm_seconds / 1e9 : 0;
  if (fp8_) {
    s.fp8 = fp8_->take_stats([&](float* v, size_t n) { grid_.world().allreduce_max(v, n); });
    std::vector<float> amax;
    std::vector<int64_t> sat;
    for (const Fp8GroupStats& g : s.fp8) amax.insert(amax.end(), {g.amax_act, g.amax_weight, g.amax_grad}), sat.push_back(g.saturated);
    grid_.world().allreduce_max(amax.data(), amax.size());
    grid_.world().allreduce_sum(sat.data(), sat.size());
    for (size_t i = 0; i < s.fp8.size(); ++i)
      s.fp8[i] = {amax[3 * i], amax[3 * i + 1], amax[3 * i + 2], sat[i]};
  }
  if (pipelined()) pipeline_stats(s);
  return s;
}

void Trainer::update_bias(const std::vector<std::vector<int64_t>>& load) {
  update_expert_bias(expert_bias_, load, cfg_.model.moe.experts, cfg_.model.moe.bias_update_rate);
  bias_to_device();  // updated on the host, bit for bit the CPU's
}

double Trainer::validate() {
  watchdog::set_phase("validation");
  if (pipelined()) return validate_pipeline();
  double sums[2] = {0, 0};
  for (int64_t a = 0; a < cfg_.train.val_batches; ++a) {
    batcher_->val_batch(a, grid_.dp_rank(), inputs_.data(), targets_.data());
    MicroBatchStats mb = model_->evaluate(0, live_params(), live_bias(), inputs_.data(), targets_.data());
    sums[0] += mb.loss_sum;
    sums[1] += static_cast<double>(mb.tokens);
  }
  grid_.dp().allreduce_sum(sums, 2);
  return sums[0] / sums[1];
}

std::string Trainer::sample(int64_t steps_done) {
  const Comm& ep = grid_.ep();
  const std::vector<int>& members = ep.world_ranks();
  if (std::find(members.begin(), members.end(), 0) == members.end() && !ep.solo()) return "";
  watchdog::set_phase("sample");
  const ModelConfig& m = cfg_.model;
  const ParamLayout& local = model_->layout();
  const ParamLayout& full = *full_layout_;
  params_to_host();  // a device run's weights, for the host sampler
  std::vector<float> whole;
  if (rank0_) whole.resize(static_cast<size_t>(full.total()));
  // Dense tensors are on every rank; each layer's routed experts are one
  // contiguous range, spread over the expert-parallel group in rank order.
  for (const ParamInfo& p : full.params())
    if (p.expert < 0 && rank0_)
      std::copy_n(params_.data() + local.find(p.name).offset, p.numel(), whole.data() + p.offset);
  if (m.moe_layers() > 0) {
    std::vector<float> recv;
    for (int64_t l = m.dense_layers; l < m.n_layers; ++l) {
      const BlockOffsets& lo = local.block(l);
      const BlockOffsets& fo = full.block(l);
      const int64_t n = static_cast<int64_t>(lo.expert_w13.size()) * 3 * m.moe.expert_hidden * m.d_model;
      SY_CHECK(lo.expert_w2.back() + m.moe.expert_hidden * m.d_model - lo.expert_w13[0] == n,
               "layer {}: routed experts are not one contiguous range of the parameter buffer", l);
      if (ep.size() == 1) {
        if (rank0_) std::copy_n(params_.data() + lo.expert_w13[0], n, whole.data() + fo.expert_w13[0]);
        continue;
      }
      std::vector<int64_t> counts(static_cast<size_t>(ep.size()), n), displs(counts.size());
      for (size_t r = 0; r < counts.size(); ++r) displs[r] = static_cast<int64_t>(r) * n;
      recv.resize(static_cast<size_t>(n * ep.size()));
      ep.allgatherv(params_.data() + lo.expert_w13[0], n, recv.data(), counts, displs);
      if (rank0_) std::copy(recv.begin(), recv.end(), whole.data() + fo.expert_w13[0]);
    }
  }
  if (!rank0_) return "";
  SampleRequest req;
  req.bytes = byte_level(cfg_);
  if (req.bytes) {
    req.prompt = encode_bytes(cfg_.train.sample_prompt);
  } else {  // no tokenizer: the first tokens of the first validation (or training) window
    const TokenDataset& set = data_->val().windows(m.seq_len) > 0 ? data_->val() : data_->train();
    req.prompt.resize(static_cast<size_t>(std::min<int64_t>(8, m.seq_len)));
    std::vector<int32_t> win(static_cast<size_t>(m.seq_len));
    set.window(0, m.seq_len, win.data(), m.vocab_size);
    std::copy_n(win.begin(), req.prompt.size(), req.prompt.begin());
  }
  req.tokens = cfg_.train.sample_tokens;
  req.opt.temperature = cfg_.train.sample_temperature;
  req.opt.seed = static_cast<uint64_t>(cfg_.train.seed) * 1000003u + static_cast<uint64_t>(steps_done);
  const SamplingOptions opt = req.opt;
  std::string text = sampler_.sample(m, std::move(whole), expert_bias_, std::move(req));
  record_sample((fs::path(cfg_.run_dir()) / "samples.txt").string(), steps_done, opt, text);
  return text;
}

int Trainer::train() {
  const fs::path dir = cfg_.run_dir();
  if (rank0_) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    SY_CHECK(!ec, "cannot create run directory '{}': {}", dir.string(), ec.message());
    ckpt::write_file_durably((dir / "config.toml").string(), "# resolved configuration of this run (from " +
                                                                 cfg_.source + ")\n" + to_toml(cfg_));
    std::cout << fmt::format("switchyard {} | config {} | run dir {}\n{}\n", version(), cfg_.source, dir.string(),
                             describe())
              << std::flush;
  }
  watchdog::start({(dir / "heartbeat").string(), grid_.world().rank(), cfg_.parallel.timeout, 1.0});
  SignalScope signals;
  const int64_t steps = cfg_.train.steps;
  const int64_t start = resume();
  state_to_device();  // what the checkpoint (or initialisation) put in the host copies
  if (rank0_) {
    // Recorded metrics are never dropped: append, after a line that marks
    // this start (a resume repeats the steps after its checkpoint; readers
    // keep the last record of each step).
    metrics_.open((dir / "metrics.jsonl").string());
    nlohmann::json ev = {{"event", start > 0 ? "resume" : "start"}, {"from_step", start},
                         {"run_id", ckpt_->run_id()}, {"time", now_iso()}, {"world", grid_.world().size()},
                         {"software_version", version()}};
    if (!resumed_from_.empty()) ev["checkpoint"] = resumed_from_;
    if (!init_from_.empty())
      ev["init_from"] = {{"checkpoint", init_from_}, {"run_id", init_from_run_}, {"step", init_from_step_}};
    metrics_.write_line(ev.dump());
    std::cout << fmt::format("run {}: {} at step {}\n", ckpt_->run_id(), start > 0 ? "resuming" : "starting", start);
    if (start >= steps) std::cout << fmt::format("nothing to do: already at step {} of {}\n", start, steps);
  }
  double avg = 0;
  int exit_code = 0;
  for (int64_t i = start; i < steps; ++i) {
    StepStats s = step(i);
    tokens_seen_ += cfg_.train.global_batch * cfg_.model.seq_len;
    bool last = i + 1 == steps;
    if (cfg_.train.val_every > 0 && ((i + 1) % cfg_.train.val_every == 0 || last)) {
      s.val_loss = validate();
      s.val_capacity_factor = cfg_.model.moe.eval_capacity_factor;
    }
    if (cfg_.train.sample_every > 0 && ((i + 1) % cfg_.train.sample_every == 0 || last)) sample(i + 1);
    avg = i == start ? s.seconds : 0.9 * avg + 0.1 * s.seconds;
    if (rank0_) {
      metrics_.write(s);
      if ((i + 1) % cfg_.train.log_every == 0 || i == start || last || s.val_loss >= 0)
        std::cout << step_line(s, steps, avg * static_cast<double>(steps - i - 1)) << std::endl;
    }
    ckpt_->poll();
    const SignalFlags mine = take_signal_flags();
    int flags[2] = {mine.save, mine.stop};
    grid_.world().allreduce_max(flags, 2);
    const StepEnd end = step_end(cfg_, i, last, {flags[0], flags[1]});
    if (end.save) save_checkpoint(i + 1, s);
    if (end.stop) {
      ckpt_->finish();
      if (rank0_)
        std::cout << (end.planned_stop
                          ? fmt::format("stopping after step {} as train.stop_after asks; run again to resume\n", i + 1)
                          : fmt::format("stopped by a signal after step {}; the checkpoint is saved\n", i + 1));
      exit_code = end.planned_stop ? 0 : kInterruptedExitCode;
      break;
    }
  }
  ckpt_->finish();
  watchdog::set_phase("done");
  grid_.world().barrier();
  watchdog::stop();
  return exit_code;
}

}  // namespace sy
