// MPI transport: rows in send order go to the expert ranks in one blocking
// all-to-all-v per chunk (EpDispatch::to_experts), outputs come back the
// same way. The expert side's rows are contiguous in receive order.
// With a group of one, send and receive layouts coincide and one buffer
// serves both.
// With a smaller payload (parallel.dispatch_dtype, moe/payload.h) each
// chunk's rows are packed before they are posted and unpacked as they land
// (every row, a rank's rows to its own experts too, so the numerics do not
// depend on how the experts are laid out over ranks); the packed rows live
// in the scratch.
#pragma once

#include "comm/comm.h"
#include "core/arena.h"
#include "kernels/backend.h"
#include "moe/dispatcher.h"

namespace sy {

// A layer's rows kept from forward to backward.
// Their buffers come from the dispatcher's allocator (device memory for a
// group of one on a device backend).
struct MpiLayer final : DispatchLayer {
  explicit MpiLayer(Allocator& mem) : x_recv(mem), y_send(mem) {}
  GrowBuffer<float> x_recv;  // (M_recv, C) expert inputs
  GrowBuffer<float> y_send;  // (M_send, C) expert outputs back at their tokens
  size_t bytes() const override { return (x_recv.capacity() + y_send.capacity()) * sizeof(float); }
};

struct MpiScratch final : DispatchScratch {
  explicit MpiScratch(Allocator& mem)
      : send(mem), recv(mem), send2(mem), recv2(mem), x_recv(mem), out_send(mem), out_recv(mem), back_send(mem),
        back_recv(mem) {}
  GrowBuffer<float> send, recv;    // (M, C) rows in flight
  GrowBuffer<float> send2, recv2;  // (M, C) the second direction in backward
  GrowBuffer<float> x_recv;        // (M_recv, C) experts' inputs when shared by the layers (FP8 storage)
  // Packed rows (moe/payload.h), payload_row_words floats a row: to the
  // experts (sent, received) and back (sent by the experts, received). In
  // the rows' memory: packed and unpacked there by the codec's backend.
  GrowBuffer<float> out_send, out_recv, back_send, back_recv;
  size_t transfer_bytes() const override {
    return (send.capacity() + recv.capacity() + send2.capacity() + recv2.capacity() + out_send.capacity() +
            out_recv.capacity() + back_send.capacity() + back_recv.capacity()) * sizeof(float);
  }
  size_t input_bytes() const override { return x_recv.capacity() * sizeof(float); }
};

class MpiDispatcher : public Dispatcher {
 public:
  // mem: where the rows live. Device memory across ranks moves over an ep
  // communicator for device buffers (Comm::device_buffers: NCCL or the
  // staged one), packed (a smaller payload) on the device by the codec's
  // backend, on `stream`, the ops' stream.
  explicit MpiDispatcher(const Comm& ep, const PayloadCodec& payload = {}, Allocator& mem = host_allocator(),
                         Stream stream = {});
  const char* name() const override { return "mpi"; }
  int ep_size() const override { return ep_.size(); }
  int ep_rank() const override { return ep_.rank(); }
  Payload payload_out() const override { return ep_.solo() ? Payload::fp32 : codec_.out; }
  Payload payload_back() const override { return ep_.solo() ? Payload::fp32 : codec_.back; }
  std::unique_ptr<DispatchLayer> make_layer() const override { return std::make_unique<MpiLayer>(*mem_); }
  std::unique_ptr<DispatchScratch> make_scratch() const override { return std::make_unique<MpiScratch>(*mem_); }
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
  // Chunk c's rows to the experts: packed (if the payload asks) and posted;
  // then, once landed, unpacked into rows.recv. Outputs back likewise.
  Request post_out(Pass pass, const EpDispatch& plan, int c, const Rows& rows, DispatchScratch& scratch, int64_t C,
                   const ExpertSteps& steps, MoeTimers* timers) const;
  void land_out(Pass pass, const EpDispatch& plan, int c, const Rows& rows, DispatchScratch& scratch, int64_t C,
                MoeTimers* timers) const;
  Request post_back(Pass pass, const EpDispatch& plan, int c, const Rows& rows, DispatchScratch& scratch, int64_t C,
                    MoeTimers* timers) const;
  void land_back(const EpDispatch& plan, int c, const Rows& rows, DispatchScratch& scratch, int64_t C,
                 MoeTimers* timers) const;
  void packed_rows(Rows& r, Pass pass, MpiScratch& S, int64_t Ms, int64_t Mr, int64_t C) const;
  Fp8Format out_format(Pass p) const { return p == Pass::forward ? codec_.act.fmt : codec_.grad.fmt; }
  Comm ep_;
  PayloadCodec codec_;
  Allocator* mem_;
  Stream stream_{};  // the ops' stream: the codec's ops run on it
};

}  // namespace sy
