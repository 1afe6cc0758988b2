#include "moe/transport/mpi.h"

#include <vector>

#include "moe/ep_dispatch.h"
#include "moe/transport/state.h"

namespace sy {

MpiDispatcher::MpiDispatcher(const Comm& ep, const PayloadCodec& payload, Allocator& mem, const Backend* staging,
                             Stream stream)
    : ep_(ep), codec_(payload), mem_(&mem), stream_(stream) {
  if (!ep_.solo() && mem.device() != Device::cpu && !ep_.device_buffers()) {
    SY_CHECK(staging && staging->device() == mem.device(),
             "the MPI MoE dispatch moves host memory: rows in {} memory across {} ranks need that device's backend "
             "to stage them through the host", device_name(mem.device()), ep_.size());
    SY_CHECK(!codec_.be || codec_.be->device() == Device::cpu,
             "staged MoE rows are packed on the host: the payload codec must run on the CPU backend");
    staging_ = staging;
  }
}

void MpiDispatcher::down(float* host, const float* dev, int64_t b, int64_t n, int64_t C) const {
  staging_->copy(host + b * C, dev + b * C, static_cast<size_t>(n * C) * sizeof(float), stream_);
  staging_->synchronize(stream_);
}

void MpiDispatcher::up(float* dev, const float* host, int64_t b, int64_t n, int64_t C) const {
  staging_->copy(dev + b * C, host + b * C, static_cast<size_t>(n * C) * sizeof(float), stream_);
  staging_->synchronize(stream_);  // the host copy is reused by the next chunk or pass
}

// The packed rows of a pass (a smaller payload; not with a group of one).
void MpiDispatcher::packed_rows(Rows& r, Pass pass, MpiScratch& S, int64_t Ms, int64_t Mr, int64_t C) const {
  if (staging_) {  // the host copies of the device rows
    S.h_send.ensure(static_cast<size_t>(Ms * C));
    S.h_back.ensure(static_cast<size_t>(Ms * C));
    S.h_recv.ensure(static_cast<size_t>(Mr * C));
    S.h_reply.ensure(static_cast<size_t>(Mr * C));
  }
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
  if (staging_) down(S.h_send.data(), send, b, n, C), send = S.h_send.data();
  if (p == Payload::fp32)
    return plan.to_experts(ep_, c, send, staging_ ? S.h_recv.data() : rows.recv, C, to_what(pass));
  {
    Timed t(timers, &MoeTimers::codec);
    const QuantStats st = payload_encode(p, S.out_send.data() + b * W, send + b * C, n, C,
                                         pass == Pass::forward ? codec_.act : codec_.grad, codec_.be);
    if (p == Payload::fp8 && steps.encoded) steps.encoded(st);
  }
  return plan.to_experts(ep_, c, S.out_send.data(), S.out_recv.data(), W, to_what(pass));
}

void MpiDispatcher::land_out(Pass pass, const EpDispatch& plan, int c, const Rows& rows, DispatchScratch& scratch,
                             int64_t C, MoeTimers* timers) const {
  const Payload p = payload_out();
  if (p == Payload::fp32 && !staging_) return;
  MpiScratch& S = state_as<MpiScratch>(scratch, name());
  const int64_t W = payload_row_words(p, C), b = plan.recv_begin(c), n = plan.recv_end(c) - b;
  if (p != Payload::fp32) {
    Timed t(timers, &MoeTimers::codec);
    payload_decode(p, (staging_ ? S.h_recv.data() : rows.recv) + b * C, S.out_recv.data() + b * W, n, C,
                   out_format(pass));
  }
  if (staging_) up(rows.recv, S.h_recv.data(), b, n, C);
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
  if (staging_) down(S.h_reply.data(), reply, b, n, C), reply = S.h_reply.data();
  if (p == Payload::fp32)
    return plan.from_experts(ep_, c, reply, staging_ ? S.h_back.data() : rows.back.local, C, back_what(pass));
  {
    Timed t(timers, &MoeTimers::codec);
    payload_encode(p, S.back_send.data() + b * W, reply + b * C, n, C);
  }
  return plan.from_experts(ep_, c, S.back_send.data(), S.back_recv.data(), W, back_what(pass));
}

void MpiDispatcher::land_back(const EpDispatch& plan, int c, const Rows& rows, DispatchScratch& scratch, int64_t C,
                              MoeTimers* timers) const {
  const Payload p = payload_back();
  if (p == Payload::fp32 && !staging_) return;
  MpiScratch& S = state_as<MpiScratch>(scratch, name());
  const int64_t W = payload_row_words(p, C), b = plan.send_begin(c), n = plan.send_end(c) - b;
  if (p != Payload::fp32) {
    Timed t(timers, &MoeTimers::codec);
    payload_decode(p, (staging_ ? S.h_back.data() : rows.back.local) + b * C, S.back_recv.data() + b * W, n, C);
  }
  if (staging_) up(rows.back.local, S.h_back.data(), b, n, C);
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
