#include "moe/transport/mpi.h"

#include <vector>

#include "moe/ep_dispatch.h"
#include "moe/transport/state.h"

namespace sy {

MpiDispatcher::MpiDispatcher(const Comm& ep, const PayloadCodec& payload, Allocator& mem, Stream stream)
    : ep_(ep), codec_(payload), mem_(&mem), stream_(stream) {
  if (ep_.solo() || mem.device() == Device::cpu) return;
  SY_CHECK(ep_.device_buffers(), "the MPI MoE dispatch of rows in {} memory across {} ranks needs the ep group's "
           "communicator for device buffers (NCCL or staged: comm/staged.h), not {}", device_name(mem.device()),
           ep_.size(), ep_.describe());
  SY_CHECK(!codec_.any() || (codec_.be && codec_.be->device() == mem.device()),
           "MoE rows in {} memory are packed where they are: the payload codec must run on that device's backend",
           device_name(mem.device()));
}

// The packed rows of a pass (a smaller payload; not with a group of one).
void MpiDispatcher::packed_rows(Rows& r, Pass pass, MpiScratch& S, int64_t Ms, int64_t Mr, int64_t C) const {
  const Payload out = payload_out(), back = payload_back();
  if (out != Payload::fp32) {
    const auto Wo = static_cast<size_t>(payload_row_words(out, C));
    S.out_send.ensure(Wo * static_cast<size_t>(Ms));
    const float* recv = S.out_recv.ensure(Wo * static_cast<size_t>(Mr));
    if (out == Payload::fp8) r.recv_fp8 = recv, r.fp8_format = out_format(pass);
  }
  if (back != Payload::fp32) {
    const auto Wb = static_cast<size_t>(payload_row_words(back, C));
    S.back_send.ensure(Wb * static_cast<size_t>(Mr));
    S.back_recv.ensure(Wb * static_cast<size_t>(Ms));
  }
}

Request MpiDispatcher::post_out(Pass pass, const EpDispatch& plan, int c, const Rows& rows, DispatchScratch& scratch,
                                int64_t C, const ExpertSteps& steps, MoeTimers* timers) const {
  const Payload p = payload_out();
  const int64_t W = payload_row_words(p, C);
  if (timers)
    for (int r = 0; r < ep_.size(); ++r)
      if (r != ep_.rank()) timers->out_rows += plan.send_count(c, r), timers->out_bytes += plan.send_count(c, r) * W * 4;
  MpiScratch& S = state_as<MpiScratch>(scratch, name());
  const int64_t b = plan.send_begin(c), n = plan.send_end(c) - b;
  const float* send = rows.send.local;
  if (p == Payload::fp32) return plan.to_experts(ep_, c, send, rows.recv, C, to_what(pass));
  {
    Timed t(timers, &MoeTimers::codec);
    const QuantStats st = payload_encode(p, S.out_send.data() + b * W, send + b * C, n, C,
                                         pass == Pass::forward ? codec_.act : codec_.grad, codec_.be, stream_);
    if (p == Payload::fp8 && steps.encoded) steps.encoded(st);
  }
  return plan.to_experts(ep_, c, S.out_send.data(), S.out_recv.data(), W, to_what(pass));
}

void MpiDispatcher::land_out(Pass pass, const EpDispatch& plan, int c, const Rows& rows, DispatchScratch& scratch,
                             int64_t C, MoeTimers* timers) const {
  const Payload p = payload_out();
  if (p == Payload::fp32) return;
  MpiScratch& S = state_as<MpiScratch>(scratch, name());
  const int64_t W = payload_row_words(p, C), b = plan.recv_begin(c), n = plan.recv_end(c) - b;
  Timed t(timers, &MoeTimers::codec);
  payload_decode(p, rows.recv + b * C, S.out_recv.data() + b * W, n, C, out_format(pass), codec_.be, stream_);
}

Request MpiDispatcher::post_back(Pass pass, const EpDispatch& plan, int c, const Rows& rows, DispatchScratch& scratch,
                                 int64_t C, MoeTimers* timers) const {
  const Payload p = payload_back();
  const int64_t W = payload_row_words(p, C);
  if (timers)
    for (int r = 0; r < ep_.size(); ++r)
      if (r != ep_.rank()) timers->back_rows += plan.recv_count(c, r), timers->back_bytes += plan.recv_count(c, r) * W * 4;
  MpiScratch& S = state_as<MpiScratch>(scratch, name());
  const int64_t b = plan.recv_begin(c), n = plan.recv_end(c) - b;
  const float* reply = rows.reply;
  if (p == Payload::fp32) return plan.from_experts(ep_, c, reply, rows.back.local, C, back_what(pass));
  {
    Timed t(timers, &MoeTimers::codec);
    payload_encode(p, S.back_send.data() + b * W, reply + b * C, n, C, {}, codec_.be, stream_);
  }
  return plan.from_experts(ep_, c, S.back_send.data(), S.back_recv.data(), W, back_what(pass));
}

void MpiDispatcher::land_back(const EpDispatch& plan, int c, const Rows& rows, DispatchScratch& scratch, int64_t C,
                              MoeTimers* timers) const {
  const Payload p = payload_back();
  if (p == Payload::fp32) return;
  MpiScratch& S = state_as<MpiScratch>(scratch, name());
  const int64_t W = payload_row_words(p, C), b = plan.send_begin(c), n = plan.send_end(c) - b;
  Timed t(timers, &MoeTimers::codec);
  payload_decode(p, rows.back.local + b * C, S.back_recv.data() + b * W, n, C, Fp8Format::e4m3, codec_.be, stream_);
}

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
  Rows r{RowMap::contiguous(x_send), x_recv, y_recv, RowMap::contiguous(L.y_send.data())};
  packed_rows(r, Pass::forward, S, Ms, Mr, C);
  return r;
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
  Rows r{RowMap::contiguous(dy_send), dy_recv, dx_recv, RowMap::contiguous(dx_send)};
  packed_rows(r, Pass::backward, S, Ms, Mr, C);
  return r;
}

RowMap MpiDispatcher::forward_outputs(const EpDispatch&, const DispatchLayer& layer) const {
  return RowMap::contiguous(const_cast<float*>(state_as<const MpiLayer>(layer, name()).y_send.data()));
}

const float* MpiDispatcher::forward_inputs(const DispatchLayer& layer) const {
  return state_as<const MpiLayer>(layer, name()).x_recv.data();
}

// One chunk at a time: rows out (blocking), experts, outputs back (blocking).
void MpiDispatcher::exchange(Pass pass, const EpDispatch& plan, const Rows& rows, DispatchLayer&,
                             DispatchScratch& scratch, int64_t C, const ExpertSteps& steps, MoeTimers* timers) const {
  steps.meanwhile();
  for (int c = 0; c < plan.chunks(); ++c) {
    Request out = post_out(pass, plan, c, rows, scratch, C, steps, timers);
    {
      Timed t(timers, &MoeTimers::wait);
      out.wait();
    }
    land_out(pass, plan, c, rows, scratch, C, timers);
    steps.experts(c);
    Request back = post_back(pass, plan, c, rows, scratch, C, timers);
    {
      Timed t(timers, &MoeTimers::wait);
      back.wait();
    }
    land_back(plan, c, rows, scratch, C, timers);
  }
}

}  // namespace sy
