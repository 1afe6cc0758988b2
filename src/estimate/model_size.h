// Sizes of the model on one rank, from the configuration alone: nothing
// big is allocated and nothing of the model is linked (parameter counts are
// sums of the shapes ParamLayout lays out; the activation arena sums the
// buffers Transformer::bind asks for). estimate/memory.h adds the optimizer,
// gradients and checkpoint staging of a run; moe-train and moe-launch both
// use that one estimate. Unit tests hold both to the model's own numbers
// (ParamLayout::total(), Transformer::arena_bytes and what a Transformer
// reserves), so a change to the model's layout that is not made here fails.
#pragma once

#include <cstdint>

#include "config/layout.h"
#include "config/model.h"

namespace sy {

// Parameter elements of block l with the `experts` slice of its routed
// experts: the part every data-parallel rank holds and the routed experts' part.
struct LayerParams {
  int64_t dense = 0, expert = 0;
};
LayerParams layer_params(const ModelConfig& m, int64_t layer, ExpertSlice experts);

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
  // Bytes a value of the packed rows to the experts and back take
  // (parallel.dispatch_dtype / combine_dtype; moe/payload.h), 0 where rows
  // travel as FP32 (not packed): the packed copies live beside the rows.
  double out_packed = 0, back_packed = 0;
};

// The part of the model one Transformer runs (model/transformer.h's
// StageRun without the parameter layout): blocks [begin, end), the
// embedding if `embed`, final norm, head and loss if `head`, `slots`
// micro-batches in flight.
struct StageChunk {
  int64_t begin = 0, end = -1;  // end -1: all layers
  bool embed = true, head = true;
  int64_t slots = 1;
};

// The arena a Transformer(m, micro_batch, {}, fp8_activations, run)
// reserves, as Transformer::arena_bytes counts it: every buffer its bind()
// asks for, each rounded up to the arena's alignment; for one and two slots
// (every slot binds the same sizes) and, when a size would overflow 64 bits,
// for one and two sequences (sizes are affine in micro_batch).
double arena_bytes(const ModelConfig& m, int64_t micro_batch, bool fp8_activations, const StageChunk& run = {});

// Activation memory of one Transformer (one chunk): the arena exactly as it
// reserves it; the rows its experts receive and send (per layer and slot,
// plus the transfer and backward buffers all MoE layers share) for a
// balanced load: each rank receives as many rows as it sends, N * K (fewer
// with a capacity factor); the FP8 storage of saved inputs.
struct ActivationBytes {
  double arena = 0, expert_rows = 0, moe_scratch = 0, fp8 = 0;
  double total() const { return arena + expert_rows + moe_scratch + fp8; }
};
ActivationBytes estimate_activations(const ModelConfig& m, int64_t micro_batch, const StageChunk& run,
                                     const RowOptions& rows);

}  // namespace sy
