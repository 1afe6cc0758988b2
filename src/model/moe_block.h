// The MoE FFN: router -> top-k (+ balancing bias) -> global capacity
// decision -> expert-parallel dispatch -> grouped expert GEMMs (SwiGLU) on
// each received segment -> back -> gate-weighted combine, plus always-active
// shared experts (computed while the dispatch is in flight). How rows move
// (shared memory, MPI, MPI overlapped) is the context's Dispatcher
// (moe/dispatcher.h), chosen once by the trainer; this block has one path.
//
// Router statistics (loads, probability sums, z and entropy sums) are summed
// over the data-parallel group, so the balance terms, the capacity and the
// bias update see the whole micro-batch, as one rank would.
#pragma once

#include <memory>
#include <vector>

#include "core/arena.h"
#include "kernels/types.h"
#include "model/blocks.h"
#include "model/ops.h"
#include "moe/dispatcher.h"
#include "moe/dp_group.h"
#include "moe/ep_dispatch.h"
#include "moe/timers.h"

namespace sy {

// How MoE layers reach other ranks. The default is one rank.
struct MoeContext {
  DpGroup dp;  // data-parallel group: router statistics, capacity
  // The expert-parallel group and how rows move over it (moe/dispatcher.h),
  // chosen once from the config (make_dispatcher).
  std::shared_ptr<const Dispatcher> dispatch = make_local_dispatcher();
  int64_t token_offset = 0;  // global index of this rank's first token in a micro-batch
  MoeTimers* timers = nullptr;
};

struct MoeActs {
  float* logits;   // (N, E) router logits
  float* scores;   // (N, E) softmax / sigmoid scores
  float* probs;    // (N, E) scores normalised per token
  int32_t* idx;    // (N, K) chosen experts
  float* gates;    // (N, K) gate weights
  uint8_t* keep;   // (N, K) pick survives capacity
  float* s_up;     // (N, 2S) shared experts
  float* s_act;    // (N, S) (with FP8 storage: staging, s_act_q is kept)
  bool fp8 = false;          // FP8 storage of the down-projections' inputs
  Fp8Saved s_act_q, act_q;   // FP8 storage: s_act and the experts' act
  Fp8Saved x_q;              // FP8 storage: the experts' inputs (x_recv / x_win unused)
  EpDispatch plan;
  RouterSums sums;  // over the data-parallel group
  int64_t Ntot = 0, dropped = 0;
  double margin = 0;  // router_margin of this rank's tokens (how near the top-k choice came to a tie)
  // With moe.expert_groups > 1: distinct (token, group) pairs of this rank's
  // picks (before capacity), what a dispatch that sends a token once per
  // group (node) moves, and the most groups one token's picks span.
  int64_t group_pairs = 0, group_max = 0;
  // The transport's rows kept for backward: expert inputs (M_recv, C) and
  // outputs (made by the dispatcher at the first forward).
  std::unique_ptr<DispatchLayer> rows;
  GrowBuffer<float> up;      // (M_recv, 2F)
  GrowBuffer<float> act;     // (M_recv, F) (unused with FP8 storage: MoeScratch::act)
  // On a device backend: the router's choices copied to the host, where the
  // capacity decision and the dispatch plan are made (keep lives there), and
  // the plan's row indices copied to the device, where the permutation
  // kernels read them. On the CPU the block uses idx, scores, keep and the
  // plan's vectors in place.
  std::vector<int32_t> idx_host;
  std::vector<float> scores_host;
  std::vector<uint8_t> keep_host;
  GrowBuffer<int32_t> send_token_dev, send_pos_dev;

  template <class A>
  void bind(A& a, const Dims& d, const Fp8Staging& st = {}) {
    fp8 = st.on();
    logits = a.template alloc<float>(d.N * d.E);
    scores = a.template alloc<float>(d.N * d.E);
    probs = a.template alloc<float>(d.N * d.E);
    idx = a.template alloc<int32_t>(d.N * d.K);
    gates = a.template alloc<float>(d.N * d.K);
    keep = a.template alloc<uint8_t>(d.N * d.K);
    s_up = a.template alloc<float>(d.N * 2 * d.S);
    s_act = fp8 ? st.act : a.template alloc<float>(d.N * d.S);
  }
  size_t row_bytes() const;  // FP32 buffers of the rows this rank's experts receive and send back
  size_t fp8_bytes() const { return s_act_q.bytes() + act_q.bytes() + x_q.bytes(); }
};

// One block's activations: what backward needs (training) and what a
// forward pass writes (generation). Dense blocks bind `dense`, MoE blocks `moe`.
struct BlockActs {
  AttnActs attn;
  float* x_mid;   // (N, C)
  float* h2;      // (N, C) ffn_norm(x_mid)
  float* rstd2;   // (N)
  DenseActs dense;
  MoeActs moe;
  // st: FP8 activation storage (the router reads a MoE block's h2 in FP32).
  template <class A>
  void bind(A& a, const Dims& d, bool moe_layer, const Fp8Staging& st = {}) {
    attn.bind(a, d, st);
    x_mid = a.template alloc<float>(d.N * d.C);
    h2 = st.on() && !moe_layer ? st.h : a.template alloc<float>(d.N * d.C);
    rstd2 = a.template alloc<float>(d.N);
    if (moe_layer)
      moe.bind(a, d, st);
    else
      dense.bind(a, d, st);
  }
};

// Transfer and backward buffers shared by all MoE layers of a model.
struct MoeScratch {
  GrowBuffer<float> dact, dup;         // (M_recv, F), (M_recv, 2F)
  GrowBuffer<float> act;               // (M_recv, F) experts' act before FP8 storage
  // The transport's rows in flight, and the experts' inputs before FP8
  // storage (made by the dispatcher at the first forward).
  std::unique_ptr<DispatchScratch> rows;
  size_t transfer_bytes() const;  // rows in flight and the experts' backward buffers
  size_t input_bytes() const;     // act and the shared expert inputs
};

// out (N, C) = shared(h) + sum_k gate_k * expert_k(h)   (overwritten).
// bias (E) shifts expert choice only; may be null. `experts` weights of this
// rank's local experts come from params at o.expert_w13 / o.expert_w2.
void moe_block_forward(const Ops& ops, MoeActs& a, float* out, const float* h, const float* params, const float* bias,
                       const BlockOffsets& o, const Dims& d, const MoeConfig& cfg, const MoeContext& ctx,
                       MoeScratch& scratch);

// dh (N, C) overwritten with dL/dh. The balance terms enter with their
// coefficients times loss_scale.
void moe_block_backward(const Ops& ops, float* dh, float* grads, MoeActs& a, const float* dout, const float* h,
                        const float* params, const BlockOffsets& o, const Dims& d, const MoeConfig& cfg,
                        double loss_scale, const MoeContext& ctx, MoeScratch& scratch, Scratch& s);

// Forward FLOPs this rank spent in the block (its local experts' rows).
double moe_block_flops(const MoeActs& a, const Dims& d);

}  // namespace sy
