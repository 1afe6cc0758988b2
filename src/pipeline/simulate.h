// Timing a pipeline schedule from per-op costs: when each compute op runs,
// how long each rank sits idle (the bubble), and pictures of it.
#pragma once

#include <string>
#include <vector>

#include "pipeline/schedule.h"

namespace sy::pipe {

// Seconds per op on [rank][chunk]: forward, input gradient (B), weight
// gradient (W); a backward that is not split costs b + w. `latency`: seconds
// from a send to the arrival of its message.
struct Costs {
  std::vector<std::vector<double>> f, b, w;
  double latency = 0;
  static Costs uniform(int p, int v, double f, double b, double w, double latency = 0);
  double op(const Op& o, int rank) const;
};

struct Timed {
  Op op;
  double start = 0, end = 0;
};

struct Simulation {
  std::vector<std::vector<Timed>> ops;  // compute ops per rank, in order
  double makespan = 0;                  // last op's end (all ranks start at 0)
  std::vector<double> busy;             // per rank: seconds computing
  std::vector<double> bubble;           // per rank: idle / makespan
  double mean_bubble() const;
};

// Throws if the schedule deadlocks (validate() says why).
Simulation simulate(const Schedule& s, const Costs& c);

// The textbook bubble fraction (idle / step time) for uniform costs: GPipe
// and 1F1B (p-1)/(m+p-1); interleaved (p-1)/(vm+p-1); ZB-H1
// (p-1)(f+b-w) / (m(f+b+w) + (p-1)(f+b-w)).
double analytic_bubble(const Schedule& s, double f = 1, double b = 1, double w = 1);

// One line per rank, `width` characters for the makespan: F / B / W cells
// (the micro-batch number at the start of each op; chunk > 0 in lower
// case), '.' idle.
std::string timeline_text(const Schedule& s, const Simulation& sim, int width = 100);
// The same as an SVG picture.
std::string timeline_svg(const Schedule& s, const Simulation& sim, const std::string& title);

}  // namespace sy::pipe
