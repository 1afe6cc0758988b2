// Data-parallel gradient reduction in buckets, overlapped with backward,
// and the ZeRO-1 sharding of optimizer state.
//
// Each bucket (see ParamLayout::buckets) is reduced as soon as backward has
// finished it: dense buckets over the data-parallel group, expert buckets
// over the expert-data-parallel group (the ranks holding the same experts).
// Gradients are summed: the loss is already normalised by the global token
// count. Without ZeRO-1 a bucket is all-reduced and every rank updates all
// its parameters. With ZeRO-1 a bucket is reduce-scattered: member r of the
// group receives part r (a contiguous 1/G of the bucket), updates only that
// part (its AdamW moments exist only for its parts) and the parts are
// all-gathered back into the parameters.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/grid.h"
#include "core/arena.h"
#include "model/layout.h"

namespace sy {

// A run of parameters updated by this rank: params[begin, end) with AdamW
// state (and, with ZeRO-1, reduced gradients) at [state, state + end - begin).
struct OptRange {
  int64_t begin, end, state;
  bool decay;
  int64_t param;  // index into layout.params() of the tensor it lies in
};

class GradSync {
 public:
  // grid: its groups move the gradients where they are (a device run's
  // groups for device buffers, Grid::over); mem: where the ZeRO-1 shard of
  // reduced gradients lives (the gradients' memory).
  GradSync(const ParamLayout& layout, const Grid& grid, bool zero1, Allocator& mem = host_allocator());

  bool zero1() const { return zero1_; }
  // Ranges this rank updates, cut at tensor boundaries (per-tensor decay).
  const std::vector<OptRange>& ranges() const { return ranges_; }
  int64_t state_size() const { return state_size_; }
  // Where the reduced gradients of ranges() are: the gradient buffer (state
  // offsets equal parameter offsets) or, with ZeRO-1, the shard buffer.
  const float* reduced(const float* grads) const { return zero1_ ? shard_.data() : grads; }
  // Ranges whose squares make up this rank's share of the global gradient
  // norm: summed over the data-parallel group, every element counts once.
  const std::vector<OptRange>& owned() const { return owned_; }

  // Backward finished the buckets with this readiness key: start reducing them.
  void ready(int64_t key, float* grads);
  // Waits until every bucket is reduced.
  void finish();
  // ZeRO-1: all-gathers the updated parts into params (no-op otherwise).
  void gather_params(float* params);

 private:
  struct Part {
    const Bucket* bucket;
    const Comm* group;
    std::vector<int64_t> counts, displs;  // per member, relative to bucket.begin
    int64_t state;                        // where this rank's part lives in the shard
  };
  const ParamLayout& layout_;
  bool zero1_;
  std::vector<Part> parts_;  // one per bucket, in layout bucket order
  std::vector<OptRange> ranges_, owned_;
  int64_t state_size_ = 0;
  GrowBuffer<float> shard_;
  std::vector<Request> pending_;
};

}  // namespace sy
