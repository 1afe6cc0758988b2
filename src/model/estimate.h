// Sizes of the model on one rank, from the configuration alone: nothing
// big is allocated (parameter counts are sums of shapes, the activation
// arena is counted by running the Transformer's own bind code on a counter).
// train/memory.h adds the optimizer, gradients and checkpoint staging of a
// run; moe-train and moe-launch both use that one estimate.
#pragma once

#include <cstdint>

#include "config/model.h"
#include "model/layout.h"
#include "model/transformer.h"

namespace sy {

// Parameter elements of block l with `local_experts` of its routed experts:
// the part every data-parallel rank holds and the routed experts' part.
struct LayerParams {
  int64_t dense = 0, expert = 0;
};
LayerParams layer_params(const ModelConfig& m, int64_t layer, int64_t local_experts);

// What ParamLayout(m, experts, stage) holds, without building the table
// (which has one named entry per expert and layer): total() elements, the
// routed experts' share, the embedding and head's share, the largest tensor.
struct ParamCount {
  int64_t total = 0, expert = 0, embed_head = 0, largest = 0;
};
ParamCount count_params(const ModelConfig& m, ExpertSlice experts = {}, const StageSpec& stage = {});

// Parameters one token passes through: everything but the routed experts,
// plus top_k of each MoE layer's experts (`full` counts the whole model).
int64_t active_params_per_token(const ModelConfig& m, const ParamCount& full);

// How a rank runs the MoE layers, for the data-dependent row buffers.
struct RowOptions {
  int64_t ep = 1;                 // expert-parallel ranks: rows cross ranks when > 1
  int64_t dp = 1;                 // data-parallel ranks (capacity is global over them)
  bool shm = false;               // shared-memory windows instead of MPI buffers
  bool solo = false;              // no communicator at all (a default Comm, as in tests and the
                                  // decoder): send and receive buffers coincide. A trainer's
                                  // groups are MPI communicators, even of one rank.
  bool fp8_activations = false;   // experts' inputs and SwiGLU outputs kept in FP8
  bool fp8_block = false;         // FP8 block scales (1 x 128) rather than per tensor
};

// Activation memory of one Transformer (one chunk): the arena exactly as it
// reserves it; the rows its experts receive and send (per layer and slot,
// plus the transfer and backward buffers all MoE layers share) for a
// balanced load: each rank receives as many rows as it sends, N * K (fewer
// with a capacity factor); the FP8 storage of saved inputs.
struct ActivationBytes {
  double arena = 0, expert_rows = 0, moe_scratch = 0, fp8 = 0;
  double total() const { return arena + expert_rows + moe_scratch + fp8; }
};
ActivationBytes estimate_activations(const ModelConfig& m, int64_t micro_batch, const StageRun& run,
                                     const RowOptions& rows);

}  // namespace sy
