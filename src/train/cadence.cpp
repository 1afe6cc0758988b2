#include "train/cadence.h"

#include <iostream>

#include "comm/watchdog.h"
#include "core/check.h"
#include "train/trainer.h"

namespace sy {

StepEnd step_end(const RunConfig& cfg, int64_t i, bool last, const SignalFlags& flags) {
  const int64_t every = cfg.checkpoint.interval;
  StepEnd e;
  e.planned_stop = cfg.train.stop_after > 0 && i + 1 >= cfg.train.stop_after && !last;
  e.save = (every > 0 && (i + 1) % every == 0) || (last && (every > 0 || cfg.checkpoint.at_end)) || flags.save ||
           flags.stop || e.planned_stop;
  e.stop = flags.stop || e.planned_stop;
  return e;
}

int64_t Trainer::resume() {
  std::vector<std::string> candidates = ckpt_->resume_candidates();
  const std::string& init_from = cfg_.checkpoint.init_from;
  if (candidates.empty() && !init_from.empty()) {
    // Weights only: a new run (identity, step 0, schedule, data order from
    // train.seed, zero moments, fresh FP8 scales) from trained weights.
    TrainState st = ckpt_->load_weights(init_from, params_.data(), &init_from_);
    if (!st.expert_bias.empty()) expert_bias_ = st.expert_bias;  // part of the routing the weights were trained with
    init_from_run_ = st.run_id;
    init_from_step_ = st.step;
    ckpt_->set_run_id(ckpt_->new_run_id());
    if (rank0_)
      std::cout << fmt::format("initialised the weights from {} (run {}, step {}); optimizer state, step, "
                               "learning-rate schedule and data order start afresh\n", init_from_,
                               st.run_id.empty() ? "without identity" : st.run_id, st.step) << std::flush;
    return 0;
  }
  if (!candidates.empty() && !init_from.empty() && rank0_)
    std::cout << fmt::format("note: checkpoint.init_from = '{}' is not used: this run has a checkpoint to resume, "
                             "and resuming wins (a restarted job carries on)\n", init_from) << std::flush;
  for (size_t c = 0; c < candidates.size(); ++c) {
    try {
      TrainState st = ckpt_->load(candidates[c], params_.data(), *opt_);
      if (!st.expert_bias.empty()) expert_bias_ = st.expert_bias;
      if (fp8_ && fp8_->named() > 0) {
        if (st.fp8_len() > 0)
          fp8_->set_histories(st.fp8_amax_history, st.fp8_len());
        else if (rank0_)
          std::cout << "fp8: the checkpoint has no amax histories (saved without fp8-tensor-delayed); delayed "
                       "scales start from each tensor's current amax\n";
      }
      tokens_seen_ = st.tokens_seen;
      if (st.seed != cfg_.train.seed) {
        if (rank0_)
          std::cout << fmt::format("note: continuing with the checkpoint's seed {} (this config says {}) so the data "
                                   "order carries on\n", st.seed, cfg_.train.seed);
        cfg_.train.seed = st.seed;
        batcher_ = std::make_unique<Batcher>(data_->train(), data_->val(), cfg_.model.seq_len, cfg_.train.micro_batch,
                                             grid_.dp_size(), cfg_.train.val_batches,
                                             static_cast<uint64_t>(cfg_.train.seed), cfg_.model.vocab_size);
      }
      if (!st.sealed && rank0_)
        std::cout << "note: a format-1 checkpoint (no checksums over its metadata, no run identity); this run's "
                     "checkpoints are format 2 under a new run identity\n";
      ckpt_->set_run_id(st.run_id.empty() ? ckpt_->new_run_id() : st.run_id);
      resumed_from_ = candidates[c];
      if (rank0_) std::cout << fmt::format("resumed from {} (step {})\n", candidates[c], st.step) << std::flush;
      return st.step;
    } catch (const ConfigError& e) {
      if (!cfg_.checkpoint.fallback)
        throw ConfigError(fmt::format("{}; set checkpoint.fallback = true to resume from this run's newest intact "
                                      "checkpoint instead", e.what()), e.where());
      if (c + 1 == candidates.size())
        throw ConfigError(fmt::format("{}; no intact checkpoint of this run is left to fall back to", e.what()),
                          e.where());
      if (rank0_)
        std::cout << fmt::format("checkpoint {} is unusable: {}\n  falling back to the next older one\n",
                                 candidates[c], e.what()) << std::flush;
    }
  }
  ckpt_->set_run_id(ckpt_->new_run_id());
  return 0;
}

TrainState Trainer::train_state(int64_t steps_done, const StepStats& s) const {
  TrainState st;
  st.run_id = ckpt_->run_id();
  st.step = steps_done;
  st.tokens_seen = tokens_seen_;
  st.seed = cfg_.train.seed;
  const int64_t L = cfg_.model.moe_layers(), E = cfg_.model.moe.experts;
  if (L > 0) {
    st.bias_shape = {L, E};
    st.expert_bias = expert_bias_;
    st.expert_load.assign(static_cast<size_t>(L * E), 0);  // (L, E) row-major; zeros where the step recorded none
    for (size_t l = 0; l < s.load.size(); ++l)
      for (size_t e = 0; e < s.load[l].size(); ++e) st.expert_load[l * static_cast<size_t>(E) + e] = s.load[l][e];
  }
  st.metrics = {{"loss", s.loss}, {"lr", s.lr}, {"grad_norm", s.grad_norm}};
  if (s.val_loss >= 0) st.metrics["val_loss"] = s.val_loss;
  if (fp8_ && fp8_->named() > 0) {
    int64_t len = 0;
    st.fp8_amax_history = fp8_->histories(&len);
    if (len > 0) st.fp8_shape = {static_cast<int64_t>(full_layout_->params().size()), 3, len};
  }
  return st;
}

void Trainer::save_checkpoint(int64_t steps_done, const StepStats& s) {
  watchdog::set_phase("checkpoint");
  if (on_device()) {  // the device state into the host copies the writer reads: one copy per array
    params_to_host();
    opt_->to_host();
  }
  std::string where = ckpt_->save(train_state(steps_done, s), params_.data(), *opt_);
  if (rank0_)
    std::cout << fmt::format("checkpoint step {} -> {} ({}; training paused {:.2f} s)\n", steps_done, where,
                             cfg_.checkpoint.async ? "writing in the background" : "written", ckpt_->last_stall())
              << std::flush;
}

}  // namespace sy
