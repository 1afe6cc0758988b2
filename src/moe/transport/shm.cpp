#include "moe/transport/shm.h"

#include "moe/ep_dispatch.h"
#include "moe/transport/state.h"

namespace sy {

void ShmDispatcher::plan(EpDispatch& plan, const int32_t* idx, const uint8_t* keep, int64_t N, int64_t K,
                         int64_t E) const {
  plan.plan(ep_, idx, keep, N, K, E, 1, true);  // one chunk; learn where each row lands
}

// This layer's expert inputs and outputs stay in their windows until
// backward has used them: every sender reads its outputs there when
// combining and again for the gate gradients. The next write to them (the
// next micro-batch's forward of this layer) comes after every rank has
// passed this layer's backward fences.
// With shared inputs (FP8 storage) the input window is shared by the
// layers: the next layer's rows arrive only after every rank has passed
// this layer's combine fence, after its expert GEMMs.
Rows ShmDispatcher::forward_rows(const EpDispatch& plan, DispatchLayer& layer, DispatchScratch& scratch, int64_t C,
                                 bool shared_inputs) const {
  ShmLayer& L = state_as<ShmLayer>(layer, name());
  ShmScratch& S = state_as<ShmScratch>(scratch, name());
  const int64_t Mr = plan.recv_rows();
  SharedWindow& x_win = shared_inputs ? S.x_win : L.x_win;
  x_win.ensure(ep_, Mr * C);
  L.y_win.ensure(ep_, Mr * C);
  L.inputs = &x_win;
  return {RowMap::scattered(x_win.peers(), plan.dest_rank(), plan.dest_row()), x_win.local(), L.y_win.local(),
          RowMap::scattered(L.y_win.peers(), plan.dest_rank(), plan.dest_row())};
}

// The backward windows are shared by the layers: a layer's rows are written
// only after every rank has passed the previous layer's fences.
Rows ShmDispatcher::backward_rows(const EpDispatch& plan, DispatchLayer&, DispatchScratch& scratch, int64_t C) const {
  ShmScratch& S = state_as<ShmScratch>(scratch, name());
  const int64_t Mr = plan.recv_rows();
  S.dy_win.ensure(ep_, Mr * C);
  S.dx_win.ensure(ep_, Mr * C);
  return {RowMap::scattered(S.dy_win.peers(), plan.dest_rank(), plan.dest_row()), S.dy_win.local(),
          S.dx_win.local(), RowMap::scattered(S.dx_win.peers(), plan.dest_rank(), plan.dest_row())};
}

RowMap ShmDispatcher::forward_outputs(const EpDispatch& plan, const DispatchLayer& layer) const {
  const ShmLayer& L = state_as<const ShmLayer>(layer, name());
  return RowMap::scattered(L.y_win.peers(), plan.dest_rank(), plan.dest_row());
}

const float* ShmDispatcher::forward_inputs(const DispatchLayer& layer) const {
  return state_as<const ShmLayer>(layer, name()).x_win.local();
}

// The senders have written their rows (the block's gather) before this is
// called; the shared experts run while the others are still writing.
void ShmDispatcher::exchange(Pass pass, const EpDispatch& plan, const Rows&, DispatchLayer& layer,
                             DispatchScratch& scratch, int64_t C, const ExpertSteps& steps, MoeTimers* timers) const {
  const bool fwd = pass == Pass::forward;
  if (timers)  // rows written to and read from other ranks' segments, in FP32
    for (int r = 0; r < ep_.size(); ++r)
      if (r != ep_.rank()) {
        timers->out_rows += plan.send_count(0, r), timers->out_bytes += plan.send_count(0, r) * C * 4;
        timers->back_rows += plan.recv_count(0, r), timers->back_bytes += plan.recv_count(0, r) * C * 4;
      }
  ShmLayer& L = state_as<ShmLayer>(layer, name());
  ShmScratch& S = state_as<ShmScratch>(scratch, name());
  const SharedWindow& in = fwd ? *L.inputs : S.dy_win;
  const SharedWindow& out = fwd ? L.y_win : S.dx_win;
  steps.meanwhile();
  {
    Timed t(timers, &MoeTimers::wait);
    in.fence(ep_, fwd ? "moe dispatch (shared memory)" : "moe dispatch (backward, shared memory)");
  }
  steps.experts(0);
  Timed t(timers, &MoeTimers::wait);
  out.fence(ep_, fwd ? "moe combine (shared memory)" : "moe combine (backward, shared memory)");
}

}  // namespace sy
