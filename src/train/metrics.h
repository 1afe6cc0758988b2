// What a run reports: <run dir>/metrics.jsonl (one JSON line per step, and
// a line marking each start or resume) and the step line on stdout. Rank 0
// writes both.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace sy {

struct StepStats;  // train/trainer.h

// "1.23M", "4.5k": counts for humans.
std::string human_count(double x);
// "1h02m", "3m04s", "5s"; "?" for a negative or non-finite time.
std::string human_time(double seconds);
// Now, UTC, ISO 8601 ("2026-01-02T03:04:05Z").
std::string now_iso();

// The step's line on stdout: loss, lr, norm, throughput, imbalance,
// dropped share, ETA, and validation loss and FP8 amax when there are.
std::string step_line(const StepStats& s, int64_t steps, double eta_seconds);

// Appends to metrics.jsonl. Recorded metrics are never dropped: a new run or
// a resume appends after what is there (readers keep the last record of
// each step), and a line cut short (a full disk, a kill) is ended first so
// it cannot join the next. Every write is checked: a full disk is an error
// naming the file.
class MetricsWriter {
 public:
  void open(const std::string& path);
  void write_line(const std::string& line);
  void write(const StepStats& s);  // the step's JSON record

 private:
  std::ofstream out_;
  std::string path_;
};

}  // namespace sy
