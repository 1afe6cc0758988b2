// The layout of a job's ranks, as the config asks for it: pipeline stages,
// data-parallel and expert-parallel sizes (comm/grid.h builds the groups).
#pragma once

#include <cstdint>
#include <string>

namespace sy {

struct GridShape {
  int64_t pp = 1, dp = 0, ep = 0;  // dp, ep = 0: choose automatically
};

// Resolves automatic values (dp = world / pp; ep = gcd(dp, experts)) and
// checks the shape against the world size and the expert count (experts = 0:
// no MoE layers), without MPI. Throws ConfigError naming `source` and the
// key, saying what would fit.
GridShape resolve_layout(int64_t world, GridShape shape, int64_t experts, const std::string& source);

}  // namespace sy
