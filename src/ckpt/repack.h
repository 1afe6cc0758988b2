// Choosing shard writers, and rewriting a checkpoint with another file
// arrangement (moe-ckpt consolidate / reshard).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ckpt/reader.h"

namespace sy::ckpt {

struct TensorHome {
  int64_t numel;
  int64_t expert;  // routed expert index, -1 if every data-parallel rank holds the tensor
  int64_t pp = -1;  // pipeline rank that saves it, -1: every pipeline rank holds it
  int64_t layer_experts = 0;  // routed experts of its layer (per-layer counts); 0: `experts` of assign_writers
};

// World rank that writes each tensor: among the ranks that hold it (rank r
// holds expert x when (r % dp) % ep == x / (experts / ep), experts being
// the tensor's layer_experts where set), the least
// loaded one, biggest tensors first (ties to the lower rank).
std::vector<int64_t> assign_writers(const std::vector<TensorHome>& tensors, int64_t world, int64_t dp, int64_t ep,
                                    int64_t experts);

// Writes src's tensors (weights and moments) and manifest `m` (its layout
// fields as the caller set them) to `out`. files[i] names the shard of
// m.tensors[i]; all "." makes `out` a single consolidated file. Written
// under out + ".tmp" (refused if that exists: it is not ours to delete) and
// renamed when complete; on failure what it wrote is removed.
void repack(Reader& src, const std::string& out, Manifest m, const std::vector<std::string>& files);

// Writes a new consolidated checkpoint file `out` (refused if it exists)
// holding weights only: params(i, data) fills m.tensors[i]'s values; the
// AdamW moments are zeros, as moe-train starts them. `m` describes the
// rest (config, step, bias, ...); its layout fields are set to one rank.
// Written under out + ".tmp" and renamed when complete; on failure nothing
// is left behind.
void write_weights_only(const std::string& out, Manifest m,
                        const std::function<void(size_t, std::vector<float>&)>& params);

}  // namespace sy::ckpt
