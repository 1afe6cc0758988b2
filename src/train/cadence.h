// When a run saves and stops (checkpoint cadence). The trainer's resume and
// save orchestration, which follows it, lives beside it in cadence.cpp.
#pragma once

#include <cstdint>

#include "config/run.h"
#include "train/signals.h"

namespace sy {

struct StepEnd {
  bool save = false;          // checkpoint after this step
  bool stop = false;          // then end the run
  bool planned_stop = false;  // the stop is train.stop_after's (exit 0), not a signal's
};

// After step index i (0-based; last: i + 1 == train.steps), with the
// signal flags every rank agreed on: save every checkpoint.interval steps,
// at the end (checkpoint.interval > 0 or checkpoint.at_end), on SIGUSR1, and
// before any stop (a stop signal or train.stop_after).
StepEnd step_end(const RunConfig& cfg, int64_t i, bool last, const SignalFlags& flags);

}  // namespace sy
