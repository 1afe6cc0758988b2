// Stop and save requests by signal, for the training loop.
//
// SIGUSR1: checkpoint after this step. SIGTERM / SIGINT / SIGUSR2: checkpoint
// and stop (mpirun forwards SIGUSR1 and SIGUSR2 to every rank: moe-launch
// stops a job with SIGUSR2). The handlers only set flags; the loop takes
// them once per step and agrees on them over the ranks.
#pragma once

#include <csignal>

namespace sy {

// Installs the handlers for its lifetime and restores the previous ones.
class SignalScope {
 public:
  SignalScope();
  ~SignalScope();
  SignalScope(const SignalScope&) = delete;
  SignalScope& operator=(const SignalScope&) = delete;

 private:
  struct sigaction old_usr1_{}, old_usr2_{}, old_term_{}, old_int_{};
};

// The requests that arrived since the last call (and clears them): ints,
// so the ranks can max-reduce them.
struct SignalFlags {
  int save = 0;  // SIGUSR1
  int stop = 0;  // SIGTERM, SIGINT, SIGUSR2
};
SignalFlags take_signal_flags();

}  // namespace sy
