// The MoE FFN: router -> top-k (+ balancing bias) -> global capacity
// decision -> expert-parallel dispatch -> grouped expert GEMMs (SwiGLU) on
// each received segment -> back -> gate-weighted combine, plus always-active
// shared experts (computed while the dispatch is in flight when overlapping).
//
// Router statistics (loads, probability sums, z and entropy sums) are summed
// over the data-parallel group, so the balance terms, the capacity and the
// bias update see the whole micro-batch, as one rank would.
#pragma once

#include "comm/comm.h"
#include "comm/shm.h"
#include "core/arena.h"
#include "kernels/types.h"
#include "model/blocks.h"
#include "model/ops.h"
#include "moe/ep_dispatch.h"

namespace sy {

// Seconds spent in each part of the MoE layers (forward and backward), when
// a MoeContext carries a pointer to one.
struct MoeTimers {
  double router = 0;    // router GEMM, scores, top-k, statistics all-reduce, capacity, router backward
  double plan = 0;      // dispatch plan and the all-to-all of counts
  double permute = 0;   // gather rows to send order, combine back to tokens (and their backward)
  double wait = 0;      // waiting for row all-to-alls to finish
  double experts = 0;   // grouped expert GEMMs and SwiGLU
  double shared = 0;    // shared experts
  double total() const { return router + plan + permute + wait + experts + shared; }
};

// How MoE layers reach other ranks. The default is one rank.
struct MoeContext {
  Comm dp;                  // data-parallel group: router statistics, capacity
  Comm ep;                  // expert-parallel group: token all-to-all
  int64_t token_offset = 0; // global index of this rank's first token in a micro-batch
  int chunks = 1;           // dispatch chunks
  bool overlap = false;     // post all chunks at once and compute while they fly
  bool shm = false;         // ep group on one node: rows move through shared memory
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
  GrowBuffer<float> x_recv;  // (M_recv, C) expert inputs (MPI transport)
  SharedWindow x_win;        // (M_recv, C) expert inputs (shared-memory transport)
  SharedWindow y_win;        // (M_recv, C) expert outputs, read in place by the senders (shared-memory transport)
  GrowBuffer<float> up;      // (M_recv, 2F)
  GrowBuffer<float> act;     // (M_recv, F) (unused with FP8 storage: MoeScratch::act)
  GrowBuffer<float> y_send;  // (M_send, C) expert outputs back at their tokens (MPI transport)

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
  GrowBuffer<float> send, recv;        // (M, C) rows in flight
  GrowBuffer<float> send2, recv2;      // (M, C) the second direction in backward
  GrowBuffer<float> dact, dup;         // (M_recv, F), (M_recv, 2F)
  GrowBuffer<float> act;               // (M_recv, F) experts' act before FP8 storage
  GrowBuffer<float> x_recv;            // (M_recv, C) experts' inputs before FP8 storage (MPI transport)
  SharedWindow x_win;                  // (M_recv, C) the same (shared-memory transport)
  SharedWindow dy_win, dx_win;         // expert-side backward rows other ranks write or read (shared memory)
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
