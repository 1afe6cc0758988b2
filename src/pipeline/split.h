// Which layers each pipeline stage holds: contiguous runs, from an explicit
// list or balanced by estimated cost.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sy::pipe {

// Splits layers with costs layer_cost (L) into `stages` contiguous non-empty
// runs minimising the most expensive stage; stage 0 also pays first_extra
// (the embedding), the last stage last_extra (head and loss). Returns the
// number of layers per stage. Throws if L < stages.
std::vector<int64_t> balance_layers(const std::vector<double>& layer_cost, double first_extra, double last_extra,
                                    int64_t stages);

// First layer of each stage, plus the end: (stages + 1) entries.
std::vector<int64_t> stage_bounds(const std::vector<int64_t>& counts);

}  // namespace sy::pipe
