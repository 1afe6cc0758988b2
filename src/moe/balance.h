// Expert load balancing without an auxiliary loss (DeepSeek-V3): a per-expert
// bias added to the router's scores when choosing (not when weighting) is
// raised for under-loaded experts and lowered for over-loaded ones by a fixed
// step after every optimizer step.
#pragma once

#include <cstdint>
#include <vector>

namespace sy {

// bias: (moe layers, experts), row-major (experts: the largest layer's count;
// a smaller layer uses the first load[l].size() of its row); load[l][e]: tokens expert e of MoE
// layer l received in the step, summed over the whole job, so every rank
// makes the same update. rate = 0 leaves the bias alone.
void update_expert_bias(std::vector<float>& bias, const std::vector<std::vector<int64_t>>& load, int64_t experts,
                        double rate);

}  // namespace sy
