// Seconds spent in each part of the MoE layers, and a scope that adds to
// one of them. The MoE block and the dispatch transports both time into
// the same MoeTimers (the transports time their waits).
#pragma once

#include <cstdint>

#include "core/timer.h"

namespace sy {

// Seconds spent in each part of the MoE layers (forward and backward), when
// a MoeContext carries a pointer to one.
struct MoeTimers {
  double router = 0;    // router GEMM, scores, top-k, statistics all-reduce, capacity, router backward
  double plan = 0;      // dispatch plan and the all-to-all of counts
  double permute = 0;   // gather rows to send order, combine back to tokens (and their backward)
  double wait = 0;      // waiting for row all-to-alls to finish
  double experts = 0;   // grouped expert GEMMs and SwiGLU
  double shared = 0;    // shared experts
  double codec = 0;     // packing rows into and out of a smaller payload (parallel.dispatch_dtype)
  double total() const { return router + plan + permute + wait + experts + shared + codec; }
  // Rows this rank sent to other ranks and the bytes they took (rows a rank
  // sends its own experts do not count), both passes: to the experts
  // (tokens; output gradients) and back (expert outputs; input gradients).
  int64_t out_rows = 0, out_bytes = 0;
  int64_t back_rows = 0, back_bytes = 0;
};

// Adds the lifetime of the scope to timers->*field (if there are timers at all).
class Timed {
 public:
  Timed(MoeTimers* timers, double MoeTimers::*field) : slot_(timers ? &(timers->*field) : nullptr) {
    if (slot_) t0_ = now_seconds();
  }
  ~Timed() {
    if (slot_) *slot_ += now_seconds() - t0_;
  }
  Timed(const Timed&) = delete;
  Timed& operator=(const Timed&) = delete;

 private:
  double* slot_;
  double t0_ = 0;
};

}  // namespace sy
