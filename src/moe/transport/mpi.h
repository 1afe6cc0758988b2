// MPI transport: rows in send order go to the expert ranks in one blocking
// all-to-all-v per chunk (EpDispatch::to_experts), outputs come back the
// same way. The expert side's rows are contiguous in receive order.
// With a group of one, send and receive layouts coincide and one buffer
// serves both.
#pragma once

#include "comm/comm.h"
#include "core/arena.h"
#include "moe/dispatcher.h"

namespace sy {

// A layer's rows kept from forward to backward.
struct MpiLayer final : DispatchLayer {
  GrowBuffer<float> x_recv;  // (M_recv, C) expert inputs
  GrowBuffer<float> y_send;  // (M_send, C) expert outputs back at their tokens
  size_t bytes() const override { return (x_recv.capacity() + y_send.capacity()) * sizeof(float); }
};

struct MpiScratch final : DispatchScratch {
  GrowBuffer<float> send, recv;    // (M, C) rows in flight
  GrowBuffer<float> send2, recv2;  // (M, C) the second direction in backward
  GrowBuffer<float> x_recv;        // (M_recv, C) experts' inputs when shared by the layers (FP8 storage)
  size_t transfer_bytes() const override {
    return (send.capacity() + recv.capacity() + send2.capacity() + recv2.capacity()) * sizeof(float);
  }
  size_t input_bytes() const override { return x_recv.capacity() * sizeof(float); }
};

class MpiDispatcher : public Dispatcher {
 public:
  explicit MpiDispatcher(const Comm& ep) : ep_(ep) {}
  const char* name() const override { return "mpi"; }
  int ep_size() const override { return ep_.size(); }
  int ep_rank() const override { return ep_.rank(); }
  std::unique_ptr<DispatchLayer> make_layer() const override { return std::make_unique<MpiLayer>(); }
  std::unique_ptr<DispatchScratch> make_scratch() const override { return std::make_unique<MpiScratch>(); }
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

 protected:
  virtual int chunks() const { return 1; }
  static const char* to_what(Pass p) { return p == Pass::forward ? "moe dispatch" : "moe dispatch (backward)"; }
  static const char* back_what(Pass p) { return p == Pass::forward ? "moe combine" : "moe combine (backward)"; }
  Comm ep_;
};

}  // namespace sy
