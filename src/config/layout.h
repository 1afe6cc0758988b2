// The layout of a job's ranks, as the config asks for it: pipeline stages,
// data-parallel and expert-parallel sizes (comm/grid.h builds the groups);
// and which part of the model one rank holds (the parameter layout, the
// estimates and the pipeline plan all speak of it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sy {

// Which routed experts this rank holds: [begin, begin + count) of every MoE
// layer; or, with parts > 0 (expert parallelism, per-layer counts allowed),
// part `part` of `parts` equal contiguous parts of each layer's experts.
struct ExpertSlice {
  int64_t begin = 0;
  int64_t count = -1;  // -1: all
  int64_t part = 0, parts = 0;
  // [first, first + n) of a layer of E experts, as {first, n}.
  struct Range { int64_t first, n; };
  Range in(int64_t E) const {
    if (parts > 0) return {part * (E / parts), E / parts};
    return {begin, count < 0 ? E : count};
  }
  static ExpertSlice of_part(int64_t part, int64_t parts) { return {0, -1, part, parts}; }
};

struct ModelConfig;
// The experts expert-parallel rank `ep_rank` of `ep` holds: [r E / ep, (r + 1) E / ep)
// of each MoE layer (E: the layer's count).
ExpertSlice rank_experts(const ModelConfig& m, int64_t ep_rank, int64_t ep);
// "4" or, with per-layer counts, "2/4/4": experts per rank by MoE layer.
std::string experts_per_rank_text(const ModelConfig& m, int64_t ep);

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
// no MoE layers; with per-layer counts, their gcd, and experts_text names
// them, as ModelConfig::experts_text), without MPI. Throws ConfigError
// naming `source` and the key, saying what would fit.
GridShape resolve_layout(int64_t world, GridShape shape, int64_t experts, const std::string& source,
                         const std::string& experts_text = "");

}  // namespace sy
