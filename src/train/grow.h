// moe-ckpt grow: adds routed experts to chosen MoE layers of a trained
// checkpoint and writes a new consolidated checkpoint that moe-train resumes
// (at any layout: resharding is reading) and moe-generate runs.
//
// Per grown layer of E experts, new expert E + j takes source expert j % E
// (round robin) and gets
//   copy:  the source's weights;
//   noise: the source's weights + noise * std(source tensor) * N(0, 1);
//   fresh: a fresh draw of the model's init (init_std; w2 scaled as at init);
// its router row: the source's row (copy, noise), or a fresh init draw (fresh);
// its balancing bias: the source's (copy, noise) or 0 (fresh), unless --new-bias.
// AdamW moments of new rows and experts are zero; every old tensor, row and
// moment is copied bit for bit; the step, tokens, seed and data position stay.
// The checkpoint gets a new run identity (it is another model).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/reader.h"

namespace sy {

enum class GrowInit { copy, noise, fresh };

struct GrowOptions {
  std::vector<int64_t> layers;  // block indices (model.n_layers numbering); empty = every MoE layer
  int64_t add = 0;              // experts added to each chosen layer
  GrowInit init = GrowInit::copy;
  uint64_t seed = 0;            // noise / fresh draws
  double noise = 0.01;          // relative standard deviation (init = noise)
  int64_t ep = 0;               // > 0: every layer's new count must be a multiple of it
  std::optional<float> new_bias;  // balancing bias of the new experts (default: source's / 0)
};

struct GrowResult {
  std::vector<int64_t> before, after;  // experts per MoE layer
  std::string config_experts;          // the new moe.experts line
};

// Throws ConfigError (exit 2) naming the option or key at fault; writes
// `out` (a consolidated file, must not exist) through out + ".tmp".
GrowResult grow_experts(ckpt::Reader& src, const std::string& out, const GrowOptions& o);

}  // namespace sy
