#include "moe/transport/mpi.h"

#include <vector>

#include "moe/ep_dispatch.h"
#include "moe/transport/state.h"

namespace sy {

void MpiDispatcher::plan(EpDispatch& plan, const int32_t* idx, const uint8_t* keep, int64_t N, int64_t K,
                         int64_t E) const {
  plan.plan(ep_, idx, keep, N, K, E, chunks(), false);
}

Rows MpiDispatcher::forward_rows(const EpDispatch& plan, DispatchLayer& layer, DispatchScratch& scratch, int64_t C,
                                 bool shared_inputs) const {
  MpiLayer& L = state_as<MpiLayer>(layer, name());
  MpiScratch& S = state_as<MpiScratch>(scratch, name());
  const int64_t Ms = plan.send_rows(), Mr = plan.recv_rows();
  const bool solo = ep_.solo();  // then send and receive layouts coincide
  float* x_recv = (shared_inputs ? S.x_recv : L.x_recv).ensure(static_cast<size_t>(Mr * C));
  L.y_send.ensure(static_cast<size_t>(Ms * C));
  float* x_send = solo ? x_recv : S.send.ensure(static_cast<size_t>(Ms * C));
  float* y_recv = solo ? L.y_send.data() : S.recv.ensure(static_cast<size_t>(Mr * C));
  return {RowMap::contiguous(x_send), x_recv, y_recv, RowMap::contiguous(L.y_send.data())};
}

Rows MpiDispatcher::backward_rows(const EpDispatch& plan, DispatchLayer&, DispatchScratch& scratch,
                                  int64_t C) const {
  MpiScratch& S = state_as<MpiScratch>(scratch, name());
  const int64_t Ms = plan.send_rows(), Mr = plan.recv_rows();
  const bool solo = ep_.solo();
  float* dy_send = S.send.ensure(static_cast<size_t>(Ms * C));
  float* dy_recv = solo ? dy_send : S.recv.ensure(static_cast<size_t>(Mr * C));
  float* dx_recv = S.recv2.ensure(static_cast<size_t>(Mr * C));
  float* dx_send = solo ? dx_recv : S.send2.ensure(static_cast<size_t>(Ms * C));
  return {RowMap::contiguous(dy_send), dy_recv, dx_recv, RowMap::contiguous(dx_send)};
}

RowMap MpiDispatcher::forward_outputs(const EpDispatch&, const DispatchLayer& layer) const {
  return RowMap::contiguous(const_cast<float*>(state_as<const MpiLayer>(layer, name()).y_send.data()));
}

const float* MpiDispatcher::forward_inputs(const DispatchLayer& layer) const {
  return state_as<const MpiLayer>(layer, name()).x_recv.data();
}

// One chunk at a time: rows out (blocking), experts, outputs back (blocking).
void MpiDispatcher::exchange(Pass pass, const EpDispatch& plan, const Rows& rows, DispatchLayer&, DispatchScratch&,
                             int64_t C, const ExpertSteps& steps, MoeTimers* timers) const {
  steps.meanwhile();
  for (int c = 0; c < plan.chunks(); ++c) {
    {
      Timed t(timers, &MoeTimers::wait);
      plan.to_experts(ep_, c, rows.send.local, rows.recv, C, to_what(pass)).wait();
    }
    steps.experts(c);
    Request back = plan.from_experts(ep_, c, rows.reply, rows.back.local, C, back_what(pass));
    Timed t(timers, &MoeTimers::wait);
    back.wait();
  }
}

}  // namespace sy
