// A run's pipeline: which layers each stage holds (parallel.split, or
// balanced by estimated forward FLOPs), the schedule for (pp, micro-batches,
// virtual) and its validation. The trainer, checkpoint writer assignment,
// moe-launch's dry run and moe-plan all use this one plan.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/layout.h"
#include "config/run.h"
#include "pipeline/schedule.h"

namespace sy {

struct PipelinePlan {
  int64_t pp = 1, v = 1, m = 1;
  std::vector<int64_t> counts;       // layers per virtual stage (pp x v, stage order)
  std::vector<int64_t> bounds;       // first layer of each stage, then n_layers
  std::vector<double> stage_flops;   // estimated forward FLOPs per token of each stage
  bool balanced = true;              // from the cost estimate (false: parallel.split)
  pipe::Schedule schedule;
  pipe::Validation validation;

  int64_t stages() const { return pp * v; }
  int64_t stage_of_layer(int64_t l) const;
  int64_t rank_of_layer(int64_t l) const { return stage_of_layer(l) % pp; }
  // The parameters pipeline rank r holds.
  StageSpec stage_spec(int64_t rank) const;
  // The pipeline rank that saves a tensor of block `layer` (-1: the
  // embedding, final norm or head; the embedding goes to the first stage).
  int64_t home_rank(int64_t layer, bool embedding) const;
  // One line per stage: rank, chunk, layers, estimated share of the FLOPs.
  std::string describe() const;
};

// Throws ConfigError naming cfg.source and the key at fault. `pp` is the
// resolved number of stages; micro-batches come from cfg (resolve_batch has run
// or train.grad_accum is final).
PipelinePlan plan_pipeline(const RunConfig& cfg, int64_t pp);

}  // namespace sy
