// Expert capacity and token dropping, decided over the whole data-parallel
// micro-batch so every layout drops exactly what one rank would.
//
// capacity = ceil(capacity_factor * Ntot * K / E) picks per expert (Ntot:
// tokens of the micro-batch on all data-parallel ranks); capacity_factor = 0
// is dropless. An over-full expert keeps its `capacity` best picks ranked by
// (router score desc, global token index asc): the lowest-scoring picks are
// dropped, and among equal scores the later token. A dropped pick adds
// nothing; its token keeps its residual (and shared experts).
#pragma once

#include <cstdint>
#include <vector>

#include "config/model.h"  // expert_capacity(): one home, shared with the memory estimate

namespace sy {

class Comm;  // comm/comm.h

// keep (N, K): 1 if pick (t, k) survives. idx (N, K) chosen experts, scores
// (N, E); global_load (E): picks per expert summed over the dp group;
// token_offset: global index of this rank's token 0. Collective over dp
// when some expert is over capacity.
void decide_keep(uint8_t* keep, const int32_t* idx, const float* scores, int64_t N, int64_t E, int64_t K,
                 int64_t capacity, const std::vector<double>& global_load, const Comm& dp, int64_t token_offset);

}  // namespace sy
