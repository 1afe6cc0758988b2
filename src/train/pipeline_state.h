// The pipeline executor's state on one rank (see pipeline_exec.cpp).
#pragma once

#include <deque>
#include <map>
#include <tuple>
#include <vector>

#include <algorithm>

#include "comm/comm.h"
#include "core/arena.h"
#include "core/check.h"
#include "model/ops.h"
#include "pipeline/schedule.h"
#include "estimate/pipeline_plan.h"

namespace sy {

struct PipeState {
  PipelinePlan plan;
  pipe::Schedule eval;  // forward-only schedule for validation
  Comm emb;             // tied embeddings: the first and last stage of one data-parallel rank
  bool tied = false;
  bool recompute = false;
  int64_t N = 0, C = 0;
  // Per chunk: free activation slots, the slot of each micro-batch in flight.
  std::vector<std::vector<int64_t>> free_slots;
  std::vector<std::map<int, int64_t>> slot_of;
  std::vector<std::vector<WgradQueue>> defer;  // [chunk][slot]
  // recompute: each micro-batch's stage input while it is in flight, per chunk
  std::vector<std::map<int, std::vector<float>>> saved_in;
  // Messages: receives by (is_grad, mb, chunk), sends in flight. Their
  // buffers are in the stages' memory (the backend's: a device run's pp
  // group moves device buffers, Trainer::dgrid_).
  struct Msg {
    GrowBuffer<float> buf;
    Request req;
  };
  std::map<std::tuple<int, int, int>, Msg> recvs;
  std::deque<Msg> sends;
  std::vector<GrowBuffer<float>> pool;  // spare (N, C) buffers
  // The backend whose memory the stage buffers are in.
  const Backend* be = nullptr;
  Stream stream{};
  bool on_device() const { return be && be->device() != Device::cpu; }
  // n floats from src to dst, in either memory (host or the stages'),
  // complete on return.
  void copy(float* dst, const float* src, int64_t n) const {
    if (!on_device()) return void(std::copy_n(src, n, dst));
    be->copy(dst, src, static_cast<size_t>(n) * sizeof(float), stream);
    be->synchronize(stream);
  }
  std::vector<int32_t> inputs, targets;  // (m, N) this step's batch
  int64_t held = 0, peak = 0;            // micro-batches of activations held now / at most this step
  // Timings of this step's compute ops.
  double first_start = 0, last_end = 0, busy = 0;
  std::vector<double> sum_f, sum_b, sum_w;  // per chunk
  std::vector<int64_t> n_f, n_b, n_w;

  GrowBuffer<float> take() {
    if (pool.empty()) {
      GrowBuffer<float> b(be ? be->allocator() : host_allocator());
      b.ensure(static_cast<size_t>(N * C));
      return b;
    }
    GrowBuffer<float> b = std::move(pool.back());
    pool.pop_back();
    return b;
  }
  void give(GrowBuffer<float>&& b) { pool.push_back(std::move(b)); }
  // Posts the receive of (is_grad, mb, chunk) from pipeline rank `peer`.
  void post(const Comm& pp, int is_grad, int mb, int chunk, int peer, int tag) {
    Msg msg{take(), {}};
    msg.req = pp.irecv(msg.buf.data(), N * C, peer, tag, is_grad ? "pipeline gradient receive" : "pipeline activation receive");
    recvs.emplace(std::make_tuple(is_grad, mb, chunk), std::move(msg));
  }
  // Waits for a posted receive and copies it to dst (N, C).
  void receive(int is_grad, int mb, int chunk, float* dst, int rank) {
    auto it = recvs.find({is_grad, mb, chunk});
    SY_CHECK(it != recvs.end(), "pipeline rank {}: no receive posted for the {} of micro-batch {} chunk {}", rank,
             is_grad ? "gradient" : "activation", mb, chunk);
    it->second.req.wait();
    copy(dst, it->second.buf.data(), N * C);
    give(std::move(it->second.buf));
    recvs.erase(it);
  }
  // Starts sending a copy of src (N, C), so src may change at once.
  void send(const Comm& pp, const float* src, int peer, int tag) {
    Msg msg{take(), {}};
    copy(msg.buf.data(), src, N * C);
    msg.req = pp.isend(msg.buf.data(), N * C, peer, tag, "pipeline send");
    sends.push_back(std::move(msg));
  }
  void finish_sends() {
    for (Msg& msg : sends) msg.req.wait(), give(std::move(msg.buf));
    sends.clear();
  }
  void reap() {
    while (!sends.empty() && sends.front().req.test()) {
      give(std::move(sends.front().buf));
      sends.pop_front();
    }
  }
};

}  // namespace sy
