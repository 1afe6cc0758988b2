#pragma once

#include <chrono>

namespace sy {

inline double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Accumulates wall time of a region (e.g. all GEMMs of a step).
struct Stopwatch {
  double total = 0;
  double started = 0;
  void start() { started = now_seconds(); }
  void stop() { total += now_seconds() - started; }
};

}  // namespace sy
