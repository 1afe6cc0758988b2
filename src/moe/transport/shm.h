// Shared-memory transport (the ep group on one node). Rows are written
// straight into the expert rank's receive segment and expert outputs read
// straight from its segment: one copy each way, no staging. Fences order
// the phases; transport/shm.cpp says why each buffer is free to reuse when
// it is.
#pragma once

#include "comm/comm.h"
#include "comm/shm.h"
#include "moe/dispatcher.h"

namespace sy {

// A layer's windows, kept from forward to backward.
struct ShmLayer final : DispatchLayer {
  SharedWindow x_win;               // (M_recv, C) expert inputs
  SharedWindow y_win;               // (M_recv, C) expert outputs, read in place by the senders
  SharedWindow* inputs = nullptr;   // where the last forward's inputs went (x_win or the scratch's)
  size_t bytes() const override { return x_win.bytes() + y_win.bytes(); }
};

struct ShmScratch final : DispatchScratch {
  SharedWindow x_win;           // (M_recv, C) experts' inputs when shared by the layers (FP8 storage)
  SharedWindow dy_win, dx_win;  // expert-side backward rows other ranks write or read
  size_t transfer_bytes() const override { return dy_win.bytes() + dx_win.bytes(); }
  size_t input_bytes() const override { return x_win.bytes(); }
};

class ShmDispatcher final : public Dispatcher {
 public:
  explicit ShmDispatcher(const Comm& ep) : ep_(ep) {}
  const char* name() const override { return "shm"; }
  int ep_size() const override { return ep_.size(); }
  int ep_rank() const override { return ep_.rank(); }
  std::unique_ptr<DispatchLayer> make_layer() const override { return std::make_unique<ShmLayer>(); }
  std::unique_ptr<DispatchScratch> make_scratch() const override { return std::make_unique<ShmScratch>(); }
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

 private:
  Comm ep_;
};

}  // namespace sy
