#include "moe/transport/hier.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/check.h"
#include "core/parallel.h"
#include "moe/ep_dispatch.h"
#include "moe/transport/state.h"

namespace sy {

namespace {

int64_t sum(const std::vector<int64_t>& v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }

std::vector<int64_t> offsets(const std::vector<int64_t>& counts) {
  std::vector<int64_t> at(counts.size(), 0);
  for (size_t i = 1; i < counts.size(); ++i) at[i] = at[i - 1] + counts[i - 1];
  return at;
}

}  // namespace

HierDispatcher::HierDispatcher(const Comm& ep, std::vector<int> node, const PayloadCodec& payload)
    : ep_(ep), node_of_(std::move(node)), codec_(payload) {
  SY_CHECK(!ep.solo(), "the hierarchical MoE dispatch needs an expert-parallel group of several ranks");
  const int P = ep.size(), me = ep.rank();
  SY_CHECK(static_cast<int>(node_of_.size()) == P, "hierarchical MoE dispatch: a node layout of {} ranks for {}",
           node_of_.size(), ep.describe());
  // Every member must hold the same layout; nodes renumbered by first member.
  std::vector<int> first(node_of_);
  ep.bcast(first.data(), first.size(), 0);
  int same = first == node_of_;
  ep.allreduce_min(&same, 1);
  SY_CHECK(same != 0, "hierarchical MoE dispatch: the members of {} were given different node layouts",
           ep.describe());
  std::vector<int> ids;
  for (int& n : node_of_) {
    auto it = std::find(ids.begin(), ids.end(), n);
    if (it == ids.end()) ids.push_back(n), it = ids.end() - 1;
    n = static_cast<int>(it - ids.begin());
  }
  members_.assign(ids.size(), {});
  local_.assign(P, 0);
  for (int r = 0; r < P; ++r) {
    local_[r] = static_cast<int>(members_[node_of_[r]].size());
    members_[node_of_[r]].push_back(r);
  }
  node_ = ep.split(node_of_[me], me, ep.name() + ".node");
  int shares = same_node(node_);  // collective over the node's group
  ep.allreduce_min(&shares, 1);
  SY_CHECK(shares != 0,
           "hierarchical MoE dispatch: {} was given a node layout in which ranks that do not share memory form "
           "one node",
           ep.describe());
}

void HierDispatcher::plan(EpDispatch& plan, const int32_t* idx, const uint8_t* keep, int64_t N, int64_t K,
                          int64_t E) const {
  plan.plan(ep_, idx, keep, N, K, E, 1, true);  // one chunk; learn where each row lands
}

// Collective over ep: tells every relay what it will receive and where each
// relayed pick goes.
void HierDispatcher::route(const EpDispatch& plan, HierRoute& R) const {
  const int P = ep_.size(), me = ep_.rank(), L = node_.size(), mine = node_of_[me];
  const int64_t Ms = plan.send_rows();
  const int32_t* dest = plan.dest_rank();
  const int32_t* drow = plan.dest_row();
  const std::vector<int32_t>& token = plan.send_token();
  const int64_t tokens = Ms == 0 ? 0 : int64_t{*std::max_element(token.begin(), token.end())} + 1;
  auto relay = [&](int n) {
    const std::vector<int>& m = members_[static_cast<size_t>(n)];
    return m[static_cast<size_t>(local_[me]) % m.size()];
  };

  R.uniq_out.assign(P, 0), R.picks_out.assign(P, 0);
  R.fwd_slot.resize(Ms), R.fwd_row.resize(Ms), R.pick_slot.resize(Ms), R.pick_row.resize(Ms);
  R.dups = 0;
  // Per relay, its picks in send-row order: (unique row, node member, receive row).
  std::vector<std::vector<int32_t>> meta(P);
  std::vector<int32_t> uniq(static_cast<size_t>(nodes() * tokens), -1);  // (node, token) -> unique row at its relay
  for (int64_t r = 0; r < Ms; ++r) {
    const int d = dest[r], n = node_of_[d];
    if (n == mine) {
      R.fwd_slot[r] = R.pick_slot[r] = local_[d];
      R.fwd_row[r] = R.pick_row[r] = drow[r];
      continue;
    }
    const int p = relay(n);
    int32_t& u = uniq[static_cast<size_t>(n * tokens + token[r])];
    if (u < 0) {
      u = static_cast<int32_t>(R.uniq_out[p]++);
      R.fwd_slot[r] = L, R.fwd_row[r] = u;  // block offset added below
    } else {
      R.fwd_slot[r] = L + 1, R.fwd_row[r] = static_cast<int32_t>(R.dups++);
    }
    R.pick_slot[r] = L, R.pick_row[r] = static_cast<int32_t>(R.picks_out[p]++);
    meta[p].insert(meta[p].end(), {u, local_[d], drow[r]});
  }
  R.uniq_out_at = offsets(R.uniq_out), R.picks_out_at = offsets(R.picks_out);
  for (int64_t r = 0; r < Ms; ++r) {
    if (R.pick_slot[r] != L) continue;
    const int p = relay(node_of_[dest[r]]);
    if (R.fwd_slot[r] == L) R.fwd_row[r] += static_cast<int32_t>(R.uniq_out_at[p]);
    R.pick_row[r] += static_cast<int32_t>(R.picks_out_at[p]);
  }

  // What each relay receives from whom.
  std::vector<int64_t> counts(2 * P), in(2 * P);
  for (int p = 0; p < P; ++p) counts[2 * p] = R.uniq_out[p], counts[2 * p + 1] = R.picks_out[p];
  ep_.alltoall(counts.data(), 2, in.data());
  R.uniq_in.assign(P, 0), R.picks_in.assign(P, 0);
  for (int s = 0; s < P; ++s) R.uniq_in[s] = in[2 * s], R.picks_in[s] = in[2 * s + 1];
  R.uniq_in_at = offsets(R.uniq_in), R.picks_in_at = offsets(R.picks_in);

  std::vector<int32_t> out;
  std::vector<int64_t> sc(P), sd(P), rc(P), rd(P);
  for (int p = 0; p < P; ++p) {
    sc[p] = static_cast<int64_t>(meta[p].size()), sd[p] = static_cast<int64_t>(out.size());
    out.insert(out.end(), meta[p].begin(), meta[p].end());
    rc[p] = 3 * R.picks_in[p], rd[p] = 3 * R.picks_in_at[p];
  }
  const int64_t J = sum(R.picks_in);
  std::vector<int32_t> got(static_cast<size_t>(3 * J));
  ep_.alltoallv(out.data(), sc, sd, got.data(), rc, rd);
  R.in_row.resize(J), R.to_local.resize(J), R.to_row.resize(J);
  for (int s = 0; s < P; ++s)
    for (int64_t j = R.picks_in_at[s]; j < R.picks_in_at[s] + R.picks_in[s]; ++j) {
      R.in_row[j] = static_cast<int32_t>(R.uniq_in_at[s]) + got[3 * j];
      R.to_local[j] = got[3 * j + 1];
      R.to_row[j] = got[3 * j + 2];
    }

  // The flat transport's traffic between nodes from this rank: its picks on
  // other nodes out, and its experts' rows for senders on other nodes back.
  R.flat_out = sum(R.picks_out);
  R.flat_back = 0;
  const std::vector<ExpertSegment>& segs = plan.segments(0);
  const size_t El = segs.size() / static_cast<size_t>(P);
  for (size_t i = 0; i < segs.size(); ++i)
    if (node_of_[i / El] != mine) R.flat_back += segs[i].rows;
  (void)L;
}

// The packed rows to the experts of a smaller payload, as they landed
// (shared memory: collective over the node like the other windows; FP8
// rows are the expert GEMM's operand, Rows::recv_fp8). The network staging
// grows inside exchange.
void HierDispatcher::packed_rows(Rows& r, Pass pass, HierScratch& S, int64_t Mr, int64_t C) const {
  const Payload out = payload_out();
  if (out == Payload::fp32) return;
  S.q_win.ensure(node_, Mr * payload_row_words(out, C));
  if (out == Payload::fp8) r.recv_fp8 = S.q_win.local(), r.fp8_format = out_format(pass);
}

// The layer's windows live from its forward to its backward exactly as in
// the shm transport (transport/shm.cpp says why each is free to reuse when
// it is); the network staging is used only inside exchange.
Rows HierDispatcher::forward_rows(const EpDispatch& plan, DispatchLayer& layer, DispatchScratch& scratch, int64_t C,
                                  bool shared_inputs) const {
  HierLayer& Ly = state_as<HierLayer>(layer, name());
  HierScratch& S = state_as<HierScratch>(scratch, name());
  route(plan, Ly.route);
  const HierRoute& R = Ly.route;
  const int64_t Mr = plan.recv_rows();
  SharedWindow& x_win = shared_inputs ? S.x_win : Ly.x_win;
  x_win.ensure(node_, Mr * C);
  Ly.y_win.ensure(node_, Mr * C);
  Ly.inputs = &x_win;
  float* out = S.out.ensure(static_cast<size_t>(sum(R.uniq_out) * C));
  S.in.ensure(static_cast<size_t>(sum(R.uniq_in) * C));
  S.back_out.ensure(static_cast<size_t>(sum(R.picks_in) * C));
  float* dup = S.dup.ensure(static_cast<size_t>(R.dups * C));
  float* home = Ly.y_remote.ensure(static_cast<size_t>(sum(R.picks_out) * C));
  const int L = node_.size();
  Ly.send_base.assign(x_win.peers(), x_win.peers() + L);
  Ly.send_base.insert(Ly.send_base.end(), {out, dup});
  Ly.back_base.assign(Ly.y_win.peers(), Ly.y_win.peers() + L);
  Ly.back_base.push_back(home);
  Rows r{RowMap::scattered(Ly.send_base.data(), R.fwd_slot.data(), R.fwd_row.data()), x_win.local(),
         Ly.y_win.local(), RowMap::scattered(Ly.back_base.data(), R.pick_slot.data(), R.pick_row.data())};
  packed_rows(r, Pass::forward, S, Mr, C);
  return r;
}

Rows HierDispatcher::backward_rows(const EpDispatch& plan, DispatchLayer& layer, DispatchScratch& scratch,
                                   int64_t C) const {
  HierLayer& Ly = state_as<HierLayer>(layer, name());
  HierScratch& S = state_as<HierScratch>(scratch, name());
  const HierRoute& R = Ly.route;
  const int64_t Mr = plan.recv_rows();
  S.dy_win.ensure(node_, Mr * C);
  S.dx_win.ensure(node_, Mr * C);
  float* out = S.out.ensure(static_cast<size_t>(sum(R.picks_out) * C));
  S.in.ensure(static_cast<size_t>(sum(R.picks_in) * C));
  S.back_out.ensure(static_cast<size_t>(sum(R.picks_in) * C));
  float* home = S.dx_remote.ensure(static_cast<size_t>(sum(R.picks_out) * C));
  const int L = node_.size();
  S.send_base.assign(S.dy_win.peers(), S.dy_win.peers() + L);
  S.send_base.push_back(out);
  S.back_base.assign(S.dx_win.peers(), S.dx_win.peers() + L);
  S.back_base.push_back(home);
  Rows r{RowMap::scattered(S.send_base.data(), R.pick_slot.data(), R.pick_row.data()), S.dy_win.local(),
         S.dx_win.local(), RowMap::scattered(S.back_base.data(), R.pick_slot.data(), R.pick_row.data())};
  packed_rows(r, Pass::backward, S, Mr, C);
  return r;
}

RowMap HierDispatcher::forward_outputs(const EpDispatch&, const DispatchLayer& layer) const {
  const HierLayer& Ly = state_as<const HierLayer>(layer, name());
  return RowMap::scattered(Ly.back_base.data(), Ly.route.pick_slot.data(), Ly.route.pick_row.data());
}

const float* HierDispatcher::forward_inputs(const DispatchLayer& layer) const {
  const HierLayer& Ly = state_as<const HierLayer>(layer, name());
  return Ly.inputs ? Ly.inputs->local() : nullptr;  // null before the layer's first forward
}

// Packs this rank's rows in its node's segments as the mpi transport packs
// every row it sends, and unpacks them in place (the values the receiver
// computes with); rows to the experts also land packed in q (Rows::recv_fp8).
// Each sender owns its rows, so the node's ranks do this side by side.
QuantStats HierDispatcher::local_rows(Payload p, Pass pass, const std::vector<int32_t>& slot,
                                      const std::vector<int32_t>& row, float* const* seg, float* const* q,
                                      HierScratch& S, int64_t C, bool out) const {
  const int L = node_.size();
  std::vector<int64_t> mine;
  for (size_t r = 0; r < slot.size(); ++r)
    if (slot[r] < L) mine.push_back(static_cast<int64_t>(r));
  const auto n = static_cast<int64_t>(mine.size());
  const int64_t W = payload_row_words(p, C);
  float* x = S.loc.ensure(static_cast<size_t>(n * C));
  float* packed = S.loc_q.ensure(static_cast<size_t>(n * W));
  const size_t row_bytes = static_cast<size_t>(C) * sizeof(float);
  parallel_for(n, [&](int64_t i) {
    std::memcpy(x + i * C, seg[slot[mine[i]]] + int64_t{row[mine[i]]} * C, row_bytes);
  });
  const bool fwd = pass == Pass::forward;
  const QuantStats st = out ? payload_encode(p, packed, x, n, C, fwd ? codec_.act : codec_.grad, codec_.be)
                            : payload_encode(p, packed, x, n, C);
  const Fp8Format fmt = out ? out_format(pass) : Fp8Format::e4m3;
  parallel_for(n, [&](int64_t i) {
    const int s = slot[mine[i]];
    const int64_t w = row[mine[i]];
    if (q) std::memcpy(q[s] + w * W, packed + i * W, static_cast<size_t>(W) * 4);
    payload_decode(p, seg[s] + w * C, packed + i * W, 1, C, fmt);
  });
  return st;
}

// The senders have written their rows (the block's gather: node-local rows
// into the experts' segments, the others into the network staging) before
// this is called. Rows cross the network while the shared experts run; the
// relays place them; a fence; the experts; a fence; the relays send their
// senders' outputs home. A smaller payload packs every row as the mpi
// transport does: the network rows before they leave (unpacked by the relay
// into the experts' segments, or at home), the node's rows in place.
void HierDispatcher::exchange(Pass pass, const EpDispatch&, const Rows&, DispatchLayer& layer,
                              DispatchScratch& scratch, int64_t C, const ExpertSteps& steps, MoeTimers* timers) const {
  const bool fwd = pass == Pass::forward;
  HierLayer& Ly = state_as<HierLayer>(layer, name());
  HierScratch& S = state_as<HierScratch>(scratch, name());
  const HierRoute& R = Ly.route;
  const SharedWindow& in_win = fwd ? *Ly.inputs : S.dy_win;
  const SharedWindow& out_win = fwd ? Ly.y_win : S.dx_win;
  const bool network = nodes() > 1;  // the same on every member
  const std::vector<int64_t>& oc = fwd ? R.uniq_out : R.picks_out;
  const std::vector<int64_t>& oa = fwd ? R.uniq_out_at : R.picks_out_at;
  const std::vector<int64_t>& ic = fwd ? R.uniq_in : R.picks_in;
  const std::vector<int64_t>& ia = fwd ? R.uniq_in_at : R.picks_in_at;
  const Payload po = payload_out(), pb = payload_back();
  const int64_t Wo = payload_row_words(po, C), Wb = payload_row_words(pb, C);
  Request net;
  QuantStats st;
  if (network) {
    const float* send = S.out.data();
    float* recv = S.in.data();
    if (po != Payload::fp32) {
      Timed t(timers, &MoeTimers::codec);
      const int64_t n = sum(oc);
      float* packed = S.out_q.ensure(static_cast<size_t>(n * Wo));
      recv = S.in_q.ensure(static_cast<size_t>(sum(ic) * Wo));
      st = payload_encode(po, packed, S.out.data(), n, C, fwd ? codec_.act : codec_.grad, codec_.be);
      send = packed;
    }
    net = ep_.ialltoallv_rows(send, oc, oa, recv, ic, ia, Wo,
                              fwd ? "moe dispatch (between nodes)" : "moe dispatch (backward, between nodes)");
  }
  if (po != Payload::fp32) {
    Timed t(timers, &MoeTimers::codec);
    const QuantStats mine = local_rows(po, pass, fwd ? R.fwd_slot : R.pick_slot, fwd ? R.fwd_row : R.pick_row,
                                       in_win.peers(), S.q_win.peers(), S, C, true);
    st.amax = std::max(st.amax, mine.amax);
    st.saturated += mine.saturated;
    if (po == Payload::fp8 && steps.encoded) steps.encoded(st);
  }
  steps.meanwhile();
  {
    Timed t(timers, &MoeTimers::wait);
    net.wait();
  }
  // Relayed rows into their experts' segments (distinct rows: no two picks
  // share a receive row).
  const int64_t J = static_cast<int64_t>(R.to_row.size());
  const size_t row_bytes = static_cast<size_t>(C) * sizeof(float);
  if (po == Payload::fp32) {
    float* const* seg = in_win.peers();
    const float* got = S.in.data();
    parallel_for(J, [&](int64_t j) {
      std::memcpy(seg[R.to_local[j]] + int64_t{R.to_row[j]} * C, got + (fwd ? int64_t{R.in_row[j]} : j) * C, row_bytes);
    });
  } else if (network) {
    Timed t(timers, &MoeTimers::codec);
    float* const* seg = in_win.peers();
    float* const* q = S.q_win.peers();
    const float* got = S.in_q.data();
    const Fp8Format fmt = out_format(pass);
    parallel_for(J, [&](int64_t j) {
      const float* src = got + (fwd ? int64_t{R.in_row[j]} : j) * Wo;
      std::memcpy(q[R.to_local[j]] + int64_t{R.to_row[j]} * Wo, src, static_cast<size_t>(Wo) * 4);
      payload_decode(po, seg[R.to_local[j]] + int64_t{R.to_row[j]} * C, src, 1, C, fmt);
    });
  }
  {
    Timed t(timers, &MoeTimers::wait);
    in_win.fence(node_, fwd ? "moe dispatch (shared memory)" : "moe dispatch (backward, shared memory)");
  }
  steps.experts(0);
  {
    Timed t(timers, &MoeTimers::wait);
    out_win.fence(node_, fwd ? "moe combine (shared memory)" : "moe combine (backward, shared memory)");
  }
  if (pb != Payload::fp32) {  // this rank's rows back through the node: packed and unpacked in place
    Timed t(timers, &MoeTimers::codec);
    local_rows(pb, pass, R.pick_slot, R.pick_row, out_win.peers(), nullptr, S, C, false);
  }
  if (!network) return;
  {
    float* const* seg = out_win.peers();
    float* back = S.back_out.data();
    parallel_for(J, [&](int64_t j) {
      std::memcpy(back + j * C, seg[R.to_local[j]] + int64_t{R.to_row[j]} * C, row_bytes);
    });
  }
  float* home = fwd ? Ly.y_remote.data() : S.dx_remote.data();
  const int64_t n_home = sum(R.picks_out);
  const float* bsend = S.back_out.data();
  float* brecv = home;
  if (pb != Payload::fp32) {
    Timed t(timers, &MoeTimers::codec);
    float* packed = S.back_q.ensure(static_cast<size_t>(J * Wb));
    brecv = S.home_q.ensure(static_cast<size_t>(n_home * Wb));
    payload_encode(pb, packed, S.back_out.data(), J, C);
    bsend = packed;
  }
  Request back = ep_.ialltoallv_rows(bsend, R.picks_in, R.picks_in_at, brecv, R.picks_out, R.picks_out_at, Wb,
                                     fwd ? "moe combine (between nodes)" : "moe combine (backward, between nodes)");
  {
    Timed t(timers, &MoeTimers::wait);
    back.wait();
  }
  if (pb != Payload::fp32) {
    Timed t(timers, &MoeTimers::codec);
    payload_decode(pb, home, S.home_q.data(), n_home, C);
  }
  // Packed bytes, and what the flat transport moves with the same payload.
  traffic_.network_bytes += (sum(oc) * Wo + J * Wb) * 4;
  traffic_.flat_bytes += (R.flat_out * Wo + R.flat_back * Wb) * 4;
}

}  // namespace sy
