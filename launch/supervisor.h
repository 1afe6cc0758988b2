// Running the job and keeping it alive: moe-launch starts mpirun / srun in
// its own process group, splits the ranks' tagged output into per-rank logs
// (rank 0 also on the terminal, as a live progress line on a TTY), watches
// the ranks' heartbeat files, forwards stop signals, and restarts a failed
// or hung job from the latest checkpoint with backoff.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "launch/plan.h"

namespace sy::launch {

// moe-launch's exit codes.
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;        // the launcher itself failed
inline constexpr int kExitBadInput = 2;     // config, flags, preflight, or moe-train said bad input: no retry
inline constexpr int kExitExhausted = 3;    // failures beyond launch.max_restarts
inline constexpr int kExitStopped = 4;      // stopped by a signal after a checkpoint (resumable; requeued in Slurm)

// How many restarts are left and how long to wait before each.
class RestartPolicy {
 public:
  RestartPolicy(int64_t max_restarts, double backoff) : max_(max_restarts), backoff_(backoff) {}
  // Records a failure; returns the seconds to wait before restarting, or
  // nullopt when no restart is left.
  std::optional<double> on_failure(const std::string& what);
  int64_t restarts() const { return restarts_; }
  const std::vector<std::string>& failures() const { return failures_; }

 private:
  int64_t max_;
  double backoff_;
  int64_t restarts_ = 0;
  std::vector<std::string> failures_;
};

// A line of the job's output: which rank wrote it (-1: the launcher program
// itself) and the text. mpirun --tag-output: "[1,3]<stdout>:text";
// srun --label: " 3: text".
struct TaggedLine {
  int rank = -1;
  std::string text;
};
TaggedLine parse_tagged(const std::string& line, bool srun);

// "step 12/300 | loss 2.3 | ... | 12.3k tok/s | ... | eta 1m02s" -> a short progress line, or "" if not a step line.
std::string progress_line(const std::string& step_line);

// One heartbeat file's content (comm/watchdog.h writes them).
struct Heartbeat {
  int rank = -1;
  std::string host, phase, op;
  int64_t pid = 0, step = -1;
  double age = 0;  // seconds since the file was last written
};
std::optional<Heartbeat> read_heartbeat(const std::string& dir, int rank);

// Runs the plan until it succeeds, fails for good or is stopped; returns
// moe-launch's exit code.
int supervise(const Plan& plan);

// Writes <run dir>/report/ with tools/moe_report.py; returns false (after
// saying why on stderr) if it could not.
bool write_report(const std::string& run_dir);

}  // namespace sy::launch
