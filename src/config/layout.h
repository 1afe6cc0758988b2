// The layout of a job's ranks, as the config asks for it: pipeline stages,
// data-parallel and expert-parallel sizes (comm/grid.h builds the groups);
// and which part of the model one rank holds (the parameter layout, the
// estimates and the pipeline plan all speak of it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sy {

// Which routed experts this rank holds: [begin, begin + count).
struct ExpertSlice {
  int64_t begin = 0;
  int64_t count = -1;  // -1: all
};

// Which part of the model a rank holds (pipeline parallelism): a set of
// layers, and whether it has the embedding (first stage) and the final norm
// and head (last stage). With tied embeddings the last stage holds a
// replica of the embedding as its head.
struct StageSpec {
  std::vector<bool> layers;  // (L) held; empty = all
  bool embed = true, head = true;
  bool holds(int64_t l) const { return layers.empty() || layers[static_cast<size_t>(l)]; }
};

struct GridShape {
  int64_t pp = 1, dp = 0, ep = 0;  // dp, ep = 0: choose automatically
};

// Resolves automatic values (dp = world / pp; ep = gcd(dp, experts)) and
// checks the shape against the world size and the expert count (experts = 0:
// no MoE layers), without MPI. Throws ConfigError naming `source` and the
// key, saying what would fit.
GridShape resolve_layout(int64_t world, GridShape shape, int64_t experts, const std::string& source);

}  // namespace sy
