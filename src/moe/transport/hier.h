// Hierarchical transport (the ep group spans nodes; Tutel's 2DH, DeepEP's
// intranode + internode split). Two levels, node then network:
//
//  - a row for an expert on this rank's node is written straight into that
//    rank's shared-memory segment (as the shm transport does);
//  - a row for another node B goes over the network once, to one relay rank
//    on B: the member of B whose local index is (this rank's local index mod
//    |B|), so with equal nodes each rank talks to the ranks of equal local
//    index on the other nodes (the "rails" of DeepEP). Forward, a token with
//    several experts on B sends its row once and the relay copies it into
//    each expert's segment (DeepEP's dedup); in backward every pick's row
//    differs (the gate multiplies it) and travels once per pick.
//  - outputs come back by the mirror path: the relay reads the experts'
//    outputs of its senders' picks from its node's segments and sends them
//    home, one row per pick (no pre-reduction, so results equal the flat
//    transport's to the bit); a node-local sender reads them in place.
//
// The network step is one all-to-all-v over the whole ep group in which a
// rank's only non-zero counts are to and from its relay partners: with equal
// nodes, exactly an all-to-all-v over the group of equal local ranks; with
// unequal nodes (2 + 1) it still sends each node pair's rows once. The
// receive layout of the experts is the flat plan's (EpDispatch with
// destinations), so the experts cannot tell the transports apart.
//
// Fences over the node's group order the phases as in transport/shm.cpp; the
// relay writes and reads only between the same fences its node's senders do.
#pragma once

#include <vector>

#include "comm/comm.h"
#include "comm/shm.h"
#include "core/arena.h"
#include "moe/dispatcher.h"
#include "moe/payload.h"

namespace sy {

// Where this rank's rows go and how relayed rows are placed: made by
// HierDispatcher::forward_rows for the layer's plan, used again in backward.
struct HierRoute {
  // As a sender, per send row of the plan: slot (index into a RowMap's base
  // array: a node member's segment 0..L-1, L = network staging, L + 1 = a
  // duplicate's scratch row) and row within it.
  std::vector<int32_t> fwd_slot, fwd_row;    // forward rows out (remote duplicates to L + 1)
  std::vector<int32_t> pick_slot, pick_row;  // every other direction: one row per pick
  // Network counts and offsets in rows, per ep rank: unique forward rows and
  // picks out (as a sender) and in (as a relay).
  std::vector<int64_t> uniq_out, uniq_out_at, picks_out, picks_out_at;
  std::vector<int64_t> uniq_in, uniq_in_at, picks_in, picks_in_at;
  int64_t dups = 0;  // forward rows that repeat a token already going to that node
  // As a relay, per relayed pick (in the senders' order): the unique row it
  // came in as (forward), and the node member and receive row of its expert.
  std::vector<int32_t> in_row, to_local, to_row;
  // Rows the flat transport would move between nodes from this rank, per pass
  // direction: picks out to other nodes, and expert rows back to other nodes.
  int64_t flat_out = 0, flat_back = 0;
};

struct HierLayer final : DispatchLayer {
  HierRoute route;
  SharedWindow x_win;               // (M_recv, C) expert inputs
  SharedWindow y_win;               // (M_recv, C) expert outputs, read in place by the node's senders
  SharedWindow* inputs = nullptr;   // where the last forward's inputs went (x_win or the scratch's)
  GrowBuffer<float> y_remote;       // outputs of this rank's picks on other nodes, back over the network
  std::vector<float*> send_base, back_base;  // RowMap bases (see HierRoute's slots)
  size_t bytes() const override { return x_win.bytes() + y_win.bytes() + y_remote.capacity() * sizeof(float); }
};

struct HierScratch final : DispatchScratch {
  SharedWindow x_win;           // (M_recv, C) experts' inputs when shared by the layers (FP8 storage)
  SharedWindow dy_win, dx_win;  // expert-side backward rows the node's ranks write or read
  GrowBuffer<float> out, in;    // network staging: rows this rank sends / receives as sender or relay
  GrowBuffer<float> back_out;   // as a relay: its senders' outputs on their way home
  GrowBuffer<float> dup;        // forward rows that repeat a token's row to a node (never sent)
  GrowBuffer<float> dx_remote;  // backward: input gradients of this rank's remote picks
  // A smaller payload (parallel.dispatch_dtype / combine_dtype): the packed
  // rows to the experts as they landed (Rows::recv_fp8 for FP8), the packed
  // network staging, and this rank's node-local rows while they are packed.
  SharedWindow q_win;
  GrowBuffer<float> out_q, in_q, back_q, home_q, loc, loc_q;
  std::vector<float*> send_base, back_base;
  size_t transfer_bytes() const override {
    return dy_win.bytes() + dx_win.bytes() +
           (out.capacity() + in.capacity() + back_out.capacity() + dup.capacity() + dx_remote.capacity() +
            out_q.capacity() + in_q.capacity() + back_q.capacity() + home_q.capacity() + loc.capacity() +
            loc_q.capacity()) *
               sizeof(float);
  }
  size_t input_bytes() const override { return x_win.bytes(); }
};

// Bytes this rank sent to other nodes, and what the flat transport would have
// sent for the same passes (statistics; benchmarks and tests read them).
struct HierTraffic {
  int64_t network_bytes = 0, flat_bytes = 0;
};

class HierDispatcher final : public Dispatcher {
 public:
  // node[r]: the node of ep rank r (every member passes the same layout, and
  // each node's members must share memory).
  // payload: what the rows travel as (moe/payload.h). Every row is packed and
  // unpacked, the node's rows through shared memory too, so results equal the
  // mpi transport's with the same payload bit for bit.
  HierDispatcher(const Comm& ep, std::vector<int> node, const PayloadCodec& payload = {});
  const char* name() const override { return "hierarchical"; }
  Payload payload_out() const override { return codec_.out; }
  Payload payload_back() const override { return codec_.back; }
  int ep_size() const override { return ep_.size(); }
  int ep_rank() const override { return ep_.rank(); }
  std::unique_ptr<DispatchLayer> make_layer() const override { return std::make_unique<HierLayer>(); }
  std::unique_ptr<DispatchScratch> make_scratch() const override { return std::make_unique<HierScratch>(); }
  void plan(EpDispatch& plan, const int32_t* idx, const uint8_t* keep, int64_t N, int64_t K,
            int64_t E) const override;
  Rows forward_rows(const EpDispatch& plan, DispatchLayer& layer, DispatchScratch& scratch, int64_t C,
                    bool shared_inputs) const override;
  Rows backward_rows(const EpDispatch& plan, DispatchLayer& layer, DispatchScratch& scratch,
                     int64_t C) const override;
  RowMap forward_outputs(const EpDispatch& plan, const DispatchLayer& layer) const override;
  const float* forward_inputs(const DispatchLayer& layer) const override;
  void exchange(Pass pass, const EpDispatch& plan, const Rows& rows, DispatchLayer& layer, DispatchScratch& scratch,
                int64_t C, const ExpertSteps& steps, MoeTimers* timers) const override;

  int nodes() const { return static_cast<int>(members_.size()); }
  const Comm& node_group() const { return node_; }
  HierTraffic traffic() const { return traffic_; }
  void reset_traffic() const { traffic_ = {}; }

 private:
  void route(const EpDispatch& plan, HierRoute& R) const;
  // Packs and unpacks in place this rank's rows in the node's segments
  // (slot < L of the map): rows to the experts also into q (packed).
  void packed_rows(Rows& r, Pass pass, HierScratch& S, int64_t Mr, int64_t C) const;
  QuantStats local_rows(Payload p, Pass pass, const std::vector<int32_t>& slot, const std::vector<int32_t>& row,
                        float* const* seg, float* const* q, HierScratch& S, int64_t C, bool out) const;
  Fp8Format out_format(Pass p) const { return p == Pass::forward ? codec_.act.fmt : codec_.grad.fmt; }
  Comm ep_, node_;                          // the ep group; this rank's node within it
  std::vector<int> node_of_, local_;        // per ep rank: its node, its index within the node
  std::vector<std::vector<int>> members_;   // per node: its ep ranks, ascending
  PayloadCodec codec_;
  mutable HierTraffic traffic_;
};

}  // namespace sy
