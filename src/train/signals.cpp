#include "train/signals.h"

#include <atomic>

namespace sy {

namespace {

std::atomic<int> g_save_signal{0}, g_stop_signal{0};
void on_signal(int sig) { (sig == SIGUSR1 ? g_save_signal : g_stop_signal) = 1; }

}  // namespace

SignalScope::SignalScope() {
  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, &old_usr1_);
  sigaction(SIGUSR2, &sa, &old_usr2_);
  sigaction(SIGTERM, &sa, &old_term_);
  sigaction(SIGINT, &sa, &old_int_);
}

SignalScope::~SignalScope() {
  sigaction(SIGUSR1, &old_usr1_, nullptr);
  sigaction(SIGUSR2, &old_usr2_, nullptr);
  sigaction(SIGTERM, &old_term_, nullptr);
  sigaction(SIGINT, &old_int_, nullptr);
}

SignalFlags take_signal_flags() { return {g_save_signal.exchange(0), g_stop_signal.exchange(0)}; }

}  // namespace sy
