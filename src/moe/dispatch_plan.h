// Where each token's top-k picks go: capacity, dropping, and the row order
// of the expert-sorted buffer.
//
// Capacity (capacity_factor > 0): each expert takes at most
// ceil(capacity_factor * Ntot * K / E) picks; beyond that the picks with the
// lowest router score are dropped (ties: the later token is dropped). A
// dropped pick contributes nothing; the token still has its residual (and
// shared experts). capacity_factor = 0 is dropless.
// Rows: expert-major; within an expert, ascending token index.
#pragma once

#include <cstdint>
#include <vector>

namespace sy {

struct DispatchPlan {
  std::vector<int64_t> load;       // (E) picks routed to each expert, before dropping
  std::vector<int64_t> offsets;    // (E + 1) row ranges of the kept picks
  std::vector<int32_t> row_token;  // (M) token of each row
  std::vector<int32_t> pos;        // (N, K) row of each pick, -1 if dropped
  int64_t dropped = 0;
  int64_t rows() const { return offsets.empty() ? 0 : offsets.back(); }
};

// Per-expert capacity for Ntot tokens; -1 = unlimited (dropless).
int64_t expert_capacity(double capacity_factor, int64_t Ntot, int64_t E, int64_t K);

void build_dispatch_plan(DispatchPlan& plan, const int32_t* idx, const float* scores, int64_t N,
                         int64_t E, int64_t K, int64_t capacity);

}  // namespace sy
