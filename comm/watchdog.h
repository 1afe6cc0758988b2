// The watchdog: no rank may hang forever.
//
// A background thread writes this rank's heartbeat file
// (<dir>/rank_<r>.json: host, pid, step, current operation, time) every
// second or so, and watches the blocking MPI operation the main thread is in
// (every Comm collective and Request::wait enter it). When one has waited
// longer than the timeout, it reads the heartbeats of the group's members,
// names the ones that are silent (stale heartbeat: dead or stopped) or busy
// elsewhere, prints that, and aborts the job (exit code 3). Heartbeats also
// tell the launcher how far each rank got.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sy {

inline constexpr int kWatchdogExitCode = 3;

struct WatchdogConfig {
  std::string dir;          // heartbeat directory ("" = no files, no peer names)
  int rank = 0;
  double timeout = 300.0;   // seconds a blocking operation may take; <= 0: off
  double interval = 1.0;    // heartbeat period, seconds
};

namespace watchdog {

void start(const WatchdogConfig& cfg);
void stop();
bool running();
// Progress marks shown in heartbeats and messages.
void set_step(int64_t step);
void set_phase(const char* phase);  // e.g. "forward", "backward", "optimizer"

// RAII: the main thread is blocked in `op` on group `group` (member world
// ranks `members`) from construction to destruction.
class Scope {
 public:
  Scope(const char* op, const std::string& group, const std::vector<int>& members);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  bool active_;
};

}  // namespace watchdog
}  // namespace sy
