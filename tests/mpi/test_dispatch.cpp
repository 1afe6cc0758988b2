// Expert-parallel dispatch and the global capacity decision on several
// ranks (run by ctest under mpiexec with 2 and 4 ranks, the hierarchical
// transport also with 3). Every rank can regenerate every rank's routing, so
// each checks what it received.
#include <gtest/gtest.h>
#include <fmt/format.h>
#include "comm/mpi/mpi_comm.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>

#include "comm/comm.h"
#include "comm/grid.h"
#include "core/rng.h"
#include "kernels/backend.h"
#include "kernels/cpu/permute.h"
#include "moe/capacity.h"
#include "moe/dispatcher.h"
#include "moe/ep_dispatch.h"
#include "moe/payload.h"
#include "moe/transport/hier.h"

namespace sy {
namespace {

constexpr int64_t K = 2, C = 6;

// Rank r's routing: N tokens, each picking K distinct experts; some picks
// dropped. Rows carry (sender rank, token, expert, k, noise...).
struct Routing {
  int64_t N, E;
  std::vector<int32_t> idx;
  std::vector<uint8_t> keep;
  std::vector<float> rows;  // (N, C)
  Routing(int rank, int64_t N_, int64_t E_, uint64_t seed) : N(N_), E(E_), idx(N_ * K), keep(N_ * K), rows(N_ * C) {
    uint64_t key = stream_key(seed, fmt::format("routing.{}", rank));
    for (int64_t t = 0; t < N; ++t) {
      int32_t a = static_cast<int32_t>(u64_at(key, t, 0) % E);
      int32_t b = static_cast<int32_t>((a + 1 + u64_at(key, t, 1) % (E - 1)) % E);
      idx[t * K] = a, idx[t * K + 1] = b;
      keep[t * K] = u64_at(key, t, 2) % 7 != 0;  // ~1/7 dropped
      keep[t * K + 1] = u64_at(key, t, 3) % 5 != 0;
      rows[t * C] = static_cast<float>(rank);
      rows[t * C + 1] = static_cast<float>(t);
      for (int64_t c = 2; c < C; ++c) rows[t * C + c] = normal_at(key, static_cast<uint64_t>(t * C + c));
    }
  }
};

struct EpCase {
  int ep;  // 0 = the whole world
  int chunks;
};

class Dispatch : public ::testing::TestWithParam<EpCase> {};

TEST_P(Dispatch, RowsReachTheRightExpertsInPlanOrderAndComeBackUnchanged) {
  Comm world = Comm::world();
  int ep_size = GetParam().ep == 0 ? world.size() : GetParam().ep;
  if (world.size() % ep_size != 0) GTEST_SKIP() << "ep " << ep_size << " does not divide " << world.size();
  Grid grid(world, {1, 0, ep_size}, 4 * ep_size, "test");
  const Comm& ep = grid.ep();
  const int P = ep.size(), me = ep.rank(), chunks = GetParam().chunks;
  const int64_t E = 4 * P, El = 4, N = 37 + 5 * world.rank();  // uneven token counts per rank
  Routing mine(world.rank(), N, E, 7);

  EpDispatch plan;
  plan.plan(ep, mine.idx.data(), mine.keep.data(), N, K, E, chunks);
  std::vector<float> send(plan.send_rows() * C), recv(plan.recv_rows() * C), back(plan.send_rows() * C);
  for (int64_t r = 0; r < plan.send_rows(); ++r)
    std::copy_n(mine.rows.begin() + plan.send_token()[r] * C, C, send.begin() + r * C);
  std::vector<Request> reqs;
  for (int c = 0; c < chunks; ++c) reqs.push_back(plan.to_experts(ep, c, send.data(), recv.data(), C, "test dispatch"));
  wait_all(reqs);

  // Every received row: from the source the segment says, a kept pick of
  // one of my experts, in the plan's order; and nothing is missing.
  int64_t checked = 0;
  for (int c = 0; c < chunks; ++c) {
    const auto& segs = plan.segments(c);
    ASSERT_EQ(static_cast<int>(segs.size()), P * El);
    for (int src = 0; src < P; ++src) {
      int src_world = ep.world_ranks()[src];
      int64_t src_N = 37 + 5 * src_world;
      Routing theirs(src_world, src_N, E, 7);
      for (int64_t le = 0; le < El; ++le) {
        const ExpertSegment& seg = segs[src * El + le];
        EXPECT_EQ(seg.expert, le);
        int64_t global_e = me * El + le;
        std::vector<int64_t> want;  // tokens of chunk c at src that kept a pick of global_e
        for (int64_t t = 0; t < src_N; ++t)
          for (int64_t k = 0; k < K; ++k)
            if (theirs.idx[t * K + k] == global_e && theirs.keep[t * K + k] && t * chunks / src_N == c) want.push_back(t);
        ASSERT_EQ(seg.rows, static_cast<int64_t>(want.size())) << "chunk " << c << " src " << src << " expert " << le;
        for (int64_t i = 0; i < seg.rows; ++i) {
          const float* row = recv.data() + (seg.offset + i) * C;
          EXPECT_EQ(row[0], static_cast<float>(src_world));
          EXPECT_EQ(row[1], static_cast<float>(want[i]));
          for (int64_t x = 2; x < C; ++x) EXPECT_EQ(row[x], theirs.rows[want[i] * C + x]);
          ++checked;
        }
      }
    }
  }
  EXPECT_EQ(checked, plan.recv_rows());

  // Round trip: the identity expert sends every row home unchanged.
  for (int c = 0; c < chunks; ++c) reqs.push_back(plan.from_experts(ep, c, recv.data(), back.data(), C, "test combine"));
  wait_all(reqs);
  EXPECT_EQ(back, send);

  // A plain MPI_Alltoallv of the same picks (no chunks) delivers the same
  // rows per (source, expert), in the same order.
  std::vector<int> sc(P, 0), sd(P, 0), rc(P), rd(P);
  std::vector<std::vector<float>> by_dst(P);
  for (int dst = 0; dst < P; ++dst)
    for (int64_t le = 0; le < El; ++le)
      for (int64_t t = 0; t < N; ++t)
        for (int64_t k = 0; k < K; ++k)
          if (mine.keep[t * K + k] && mine.idx[t * K + k] == dst * El + le) {
            by_dst[dst].insert(by_dst[dst].end(), mine.rows.begin() + t * C, mine.rows.begin() + (t + 1) * C);
            sc[dst] += C;
          }
  std::vector<float> flat;
  for (int d = 0; d < P; ++d) sd[d] = static_cast<int>(flat.size()), flat.insert(flat.end(), by_dst[d].begin(), by_dst[d].end());
  MPI_Alltoall(sc.data(), 1, MPI_INT, rc.data(), 1, MPI_INT, sy::mpi_handle(ep));
  int total = 0;
  for (int s = 0; s < P; ++s) rd[s] = total, total += rc[s];
  std::vector<float> ref(total);
  MPI_Alltoallv(flat.data(), sc.data(), sd.data(), MPI_FLOAT, ref.data(), rc.data(), rd.data(), MPI_FLOAT, sy::mpi_handle(ep));
  // Reassemble ours as (source, expert, chunk) to compare with (source, expert).
  std::vector<float> ours;
  for (int src = 0; src < P; ++src)
    for (int64_t le = 0; le < El; ++le)
      for (int c = 0; c < chunks; ++c) {
        const ExpertSegment& seg = plan.segments(c)[src * El + le];
        ours.insert(ours.end(), recv.begin() + seg.offset * C, recv.begin() + (seg.offset + seg.rows) * C);
      }
  EXPECT_EQ(ours, ref);
}

INSTANTIATE_TEST_SUITE_P(Groups, Dispatch,
                         ::testing::Values(EpCase{0, 1}, EpCase{0, 3}, EpCase{2, 1}, EpCase{2, 4}, EpCase{1, 2}),
                         [](const auto& p) {
                           return fmt::format("ep{}_chunks{}", p.param.ep == 0 ? std::string("all") : std::to_string(p.param.ep),
                                              p.param.chunks);
                         });

// The hierarchical transport (moe/transport/hier.h) on one machine with
// declared nodes, driven through the Dispatcher interface as the MoE block
// drives it. K = 3 distinct experts per token, so tokens often have several
// experts on one remote node (the rows the forward sends once); the last
// expert is never picked (zero rows); some picks dropped; uneven tokens per
// rank, and with 3 or more ranks the last has none.
constexpr int64_t HK = 3, HC = 5;

struct HierRouting {
  int64_t N, E;
  std::vector<int32_t> idx;
  std::vector<uint8_t> keep;
  std::vector<float> rows;  // (N, HC): (world rank, token, noise...)
  HierRouting(int rank, int P, int64_t E_) : N(P > 2 && rank == P - 1 ? 0 : 29 + 7 * rank), E(E_) {
    idx.resize(N * HK), keep.resize(N * HK), rows.resize(N * HC);
    uint64_t key = stream_key(23, fmt::format("hier.{}", rank));
    for (int64_t t = 0; t < N; ++t) {
      for (int64_t k = 0; k < HK; ++k) {
        int32_t e;
        uint64_t n = 0;
        do e = static_cast<int32_t>(u64_at(key, t, 8 * k + n++) % (E - 1));  // expert E - 1 never
        while (std::find(idx.begin() + t * HK, idx.begin() + t * HK + k, e) != idx.begin() + t * HK + k);
        idx[t * HK + k] = e;
        keep[t * HK + k] = u64_at(key, t, 100 + k) % 6 != 0;  // ~1/6 dropped
      }
      rows[t * HC] = static_cast<float>(rank);
      rows[t * HC + 1] = static_cast<float>(t);
      for (int64_t c = 2; c < HC; ++c) rows[t * HC + c] = normal_at(key, static_cast<uint64_t>(t * HC + c));
    }
  }
};

// Over every rank's routing: kept picks whose expert is on another node
// (the flat transport moves each one), and distinct (token, remote node)
// pairs (the rows the hierarchical forward sends once per node).
struct CrossNode {
  int64_t picks = 0, rows = 0;
};
CrossNode cross_node(const std::vector<int>& node, int P, int64_t E) {
  CrossNode c;
  const int El = static_cast<int>(E / P);
  for (int s = 0; s < P; ++s) {
    HierRouting R(s, P, E);
    for (int64_t t = 0; t < R.N; ++t) {
      std::vector<int> nodes;
      for (int64_t k = 0; k < HK; ++k) {
        const int n = node[R.idx[t * HK + k] / El];
        if (!R.keep[t * HK + k] || n == node[s]) continue;
        ++c.picks;
        if (std::find(nodes.begin(), nodes.end(), n) == nodes.end()) nodes.push_back(n), ++c.rows;
      }
    }
  }
  return c;
}

struct Layout {
  std::string name;
  std::vector<int> node;  // per ep rank (ep = world here)
};

std::vector<Layout> layouts(int P) {
  std::vector<Layout> out;
  std::vector<int> pairs, ones, one, interleaved, three_one;
  for (int r = 0; r < P; ++r) {
    pairs.push_back(r / 2), ones.push_back(r), one.push_back(0), interleaved.push_back(r % 2);
    three_one.push_back(r < 3 ? 0 : 1);
  }
  out.push_back({"nodes of 2", pairs});  // P = 4: 2 + 2, P = 3: 2 + 1, P = 2: one node
  out.push_back({"one rank per node", ones});
  out.push_back({"one node", one});
  if (P >= 4) out.push_back({"interleaved nodes", interleaved}), out.push_back({"nodes of 3 + 1", three_one});
  return out;
}

// The experts' receive buffer as the plan lays it out, against every rank's
// routing: rows of (source, local expert) blocks, in the source's order.
int64_t check_received(const EpDispatch& plan, const float* recv, const Comm& ep, int64_t E, int P) {
  const int64_t El = E / P;
  int64_t bad = 0;
  for (int src = 0; src < P; ++src) {
    HierRouting theirs(ep.world_ranks()[src], P, E);
    for (int64_t le = 0; le < El; ++le) {
      const ExpertSegment& seg = plan.segments(0)[src * El + le];
      std::vector<int64_t> want;
      for (int64_t t = 0; t < theirs.N; ++t)
        for (int64_t k = 0; k < HK; ++k)
          if (theirs.keep[t * HK + k] && theirs.idx[t * HK + k] == ep.rank() * El + le) want.push_back(t);
      if (seg.rows != static_cast<int64_t>(want.size())) return -1;
      for (int64_t i = 0; i < seg.rows; ++i)
        for (int64_t c = 0; c < HC; ++c) bad += recv[(seg.offset + i) * HC + c] != theirs.rows[want[i] * HC + c];
    }
  }
  return bad;
}

// A plain MPI_Alltoallv of every kept pick's row, grouped (destination,
// local expert, token), and ours reassembled in (source, local expert) order.
void expect_equals_alltoallv(const EpDispatch& plan, const float* recv, const HierRouting& mine, const Comm& ep,
                             int64_t E) {
  const int P = ep.size();
  const int64_t El = E / P;
  std::vector<int> sc(P, 0), sd(P, 0), rc(P), rd(P);
  std::vector<float> flat;
  for (int dst = 0; dst < P; ++dst) {
    sd[dst] = static_cast<int>(flat.size());
    for (int64_t le = 0; le < El; ++le)
      for (int64_t t = 0; t < mine.N; ++t)
        for (int64_t k = 0; k < HK; ++k)
          if (mine.keep[t * HK + k] && mine.idx[t * HK + k] == dst * El + le)
            flat.insert(flat.end(), mine.rows.begin() + t * HC, mine.rows.begin() + (t + 1) * HC);
    sc[dst] = static_cast<int>(flat.size()) - sd[dst];
  }
  MPI_Alltoall(sc.data(), 1, MPI_INT, rc.data(), 1, MPI_INT, sy::mpi_handle(ep));
  int total = 0;
  for (int s = 0; s < P; ++s) rd[s] = total, total += rc[s];
  std::vector<float> ref(total);
  MPI_Alltoallv(flat.data(), sc.data(), sd.data(), MPI_FLOAT, ref.data(), rc.data(), rd.data(), MPI_FLOAT,
                sy::mpi_handle(ep));
  std::vector<float> ours;
  for (const ExpertSegment& seg : plan.segments(0))
    ours.insert(ours.end(), recv + seg.offset * HC, recv + (seg.offset + seg.rows) * HC);
  EXPECT_EQ(ours, ref);
}

// One MoE layer's transport state, driven as moe_block drives it.
struct LayerRun {
  EpDispatch plan;
  std::unique_ptr<DispatchLayer> state;
  std::vector<float> x_recv, y_back, dy_recv, dx_back;  // copies, for comparison between transports
};

// Forward: gather, exchange with identity experts (y = x, checked against the
// routing), the outputs as combine reads them.
void forward(const Dispatcher& D, LayerRun& L, DispatchScratch& scratch, const HierRouting& mine, int64_t E,
             const Comm& ep) {
  D.plan(L.plan, mine.idx.data(), mine.keep.data(), mine.N, HK, E);
  if (!L.state) L.state = D.make_layer();
  const Rows r = D.forward_rows(L.plan, *L.state, scratch, HC, false);
  moe_gather(r.send, mine.rows.data(), L.plan.send_token().data(), L.plan.send_rows(), HC);
  std::string calls;
  ExpertSteps steps;
  steps.meanwhile = [&] { calls += "m"; };
  steps.experts = [&](int c) {
    calls += std::to_string(c);
    const int64_t Mr = L.plan.recv_rows();
    EXPECT_EQ(check_received(L.plan, r.recv, ep, E, ep.size()), 0) << D.name();
    L.x_recv.assign(r.recv, r.recv + Mr * HC);
    std::copy_n(r.recv, Mr * HC, r.reply);
  };
  D.exchange(Pass::forward, L.plan, r, *L.state, scratch, HC, steps, nullptr);
  EXPECT_EQ(calls, "m0") << D.name();
  L.y_back.clear();
  for (int64_t s = 0; s < L.plan.send_rows(); ++s) L.y_back.insert(L.y_back.end(), r.back.at(s, HC), r.back.at(s, HC) + HC);
}

// Backward: every pick's row differs (pick p of token t: the token's row
// times (k + 2), as the gate would make it); experts y = -x.
void backward(const Dispatcher& D, LayerRun& L, DispatchScratch& scratch, const HierRouting& mine) {
  const EpDispatch& plan = L.plan;
  const Rows r = D.backward_rows(plan, *L.state, scratch, HC);
  // What forward left for backward: the outputs (== the rows) and inputs.
  RowMap y = D.forward_outputs(plan, *L.state);
  int64_t bad = 0;
  for (int64_t s = 0; s < plan.send_rows(); ++s)
    for (int64_t c = 0; c < HC; ++c) bad += y.at(s, HC)[c] != mine.rows[plan.send_token()[s] * HC + c];
  EXPECT_EQ(bad, 0) << D.name() << ": forward outputs changed before backward";
  EXPECT_EQ(std::vector<float>(D.forward_inputs(*L.state), D.forward_inputs(*L.state) + L.x_recv.size()), L.x_recv);
  for (int64_t t = 0; t < mine.N; ++t)
    for (int64_t k = 0; k < HK; ++k) {
      int32_t s = plan.send_pos()[t * HK + k];
      if (s < 0) continue;
      for (int64_t c = 0; c < HC; ++c) r.send.at(s, HC)[c] = mine.rows[t * HC + c] * static_cast<float>(k + 2);
    }
  std::vector<float> sent;
  for (int64_t s = 0; s < plan.send_rows(); ++s) sent.insert(sent.end(), r.send.at(s, HC), r.send.at(s, HC) + HC);
  ExpertSteps steps;
  steps.meanwhile = [] {};
  steps.experts = [&](int) {
    const int64_t Mr = plan.recv_rows();
    L.dy_recv.assign(r.recv, r.recv + Mr * HC);
    for (int64_t i = 0; i < Mr * HC; ++i) r.reply[i] = -r.recv[i];
  };
  D.exchange(Pass::backward, plan, r, *L.state, scratch, HC, steps, nullptr);
  L.dx_back.clear();
  for (int64_t s = 0; s < plan.send_rows(); ++s) L.dx_back.insert(L.dx_back.end(), r.back.at(s, HC), r.back.at(s, HC) + HC);
  for (float& v : sent) v = -v;
  EXPECT_EQ(L.dx_back, sent) << D.name() << ": input gradients did not come home unchanged";
}

TEST(Hierarchical, RowsReachThePlannedExpertsAndComeBackAsWithFlatMpi) {
  Comm world = Comm::world();
  const int P = world.size();
  if (P < 2) GTEST_SKIP() << "needs several ranks";
  const Comm& ep = world;
  const int64_t E = 4 * P;
  HierRouting mine(world.rank(), P, E);
  for (const Layout& lay : layouts(P)) {
    SCOPED_TRACE(lay.name);
    auto flat = make_dispatcher(DispatchKind::mpi, ep);
    auto hier = make_dispatcher(DispatchKind::hierarchical, ep, 1, NodeLayout{lay.node});
    ASSERT_STREQ(hier->name(), "hierarchical");
    const auto& H = dynamic_cast<const HierDispatcher&>(*hier);
    H.reset_traffic();
    // Two layers through one scratch, forward A, B then backward B, A, as a
    // model does: each layer's outputs must survive the other's passes.
    auto fs = flat->make_scratch(), hs = hier->make_scratch();
    LayerRun fa, fb, ha, hb;
    forward(*flat, fa, *fs, mine, E, ep);
    forward(*flat, fb, *fs, mine, E, ep);
    forward(*hier, ha, *hs, mine, E, ep);
    forward(*hier, hb, *hs, mine, E, ep);
    backward(*hier, hb, *hs, mine);
    backward(*hier, ha, *hs, mine);
    backward(*flat, fb, *fs, mine);
    backward(*flat, fa, *fs, mine);
    for (LayerRun* h : {&ha, &hb}) {
      LayerRun& f = h == &ha ? fa : fb;
      EXPECT_EQ(h->x_recv, f.x_recv);
      EXPECT_EQ(h->y_back, f.y_back);
      EXPECT_EQ(h->dy_recv, f.dy_recv);
      EXPECT_EQ(h->dx_back, f.dx_back);
      expect_equals_alltoallv(h->plan, h->x_recv.data(), mine, ep, E);
    }
    // Rows between nodes, summed over ranks, from every rank's routing: the
    // flat transport moves every pick on another node out and back in both
    // passes; the hierarchical one sends a token's row once per remote node
    // forward, every pick's row otherwise.
    const auto [picks, rows] = cross_node(lay.node, P, E);
    HierTraffic got = H.traffic();
    world.allreduce_sum(&got.network_bytes, 1);
    world.allreduce_sum(&got.flat_bytes, 1);
    const int64_t row = HC * sizeof(float), layers = 2;
    EXPECT_EQ(got.flat_bytes, layers * 4 * picks * row);
    EXPECT_EQ(got.network_bytes, layers * (rows + 3 * picks) * row);
    if (H.nodes() > 1 && static_cast<int>(lay.node.size()) > H.nodes()) {
      EXPECT_LT(rows, picks) << "no token shared a node";
    }
  }
}

// A smaller payload through the hierarchical transport: every row packed as
// the mpi transport packs it (the node's rows through shared memory too), so
// what the experts receive (decoded and, FP8, packed) and what comes home
// equal the mpi transport's with the same codec bit for bit, both passes;
// network bytes are the packed rows'.
struct PayloadRun {
  EpDispatch plan;
  std::unique_ptr<DispatchLayer> state;
  std::vector<float> x_recv, y_back, dy_recv, dx_back;
  std::vector<unsigned char> x_q, dy_q;  // the packed rows as they landed (FP8)
};

void payload_pass(const Dispatcher& D, PayloadRun& L, DispatchScratch& scratch, const HierRouting& mine, int64_t E,
                  Pass pass) {
  const bool fwd = pass == Pass::forward;
  if (fwd) {
    D.plan(L.plan, mine.idx.data(), mine.keep.data(), mine.N, HK, E);
    if (!L.state) L.state = D.make_layer();
  }
  const Rows r = fwd ? D.forward_rows(L.plan, *L.state, scratch, HC, false) : D.backward_rows(L.plan, *L.state, scratch, HC);
  const int64_t Ms = L.plan.send_rows(), Mr = L.plan.recv_rows();
  for (int64_t s = 0; s < Ms; ++s)  // forward the token's row, backward times (slot + 2)
    for (int64_t c = 0; c < HC; ++c)
      r.send.at(s, HC)[c] = mine.rows[L.plan.send_token()[s] * HC + c] * (fwd ? 1.0f : static_cast<float>(s % 3 + 2));
  ExpertSteps steps;
  steps.meanwhile = [] {};
  steps.experts = [&](int) {
    (fwd ? L.x_recv : L.dy_recv).assign(r.recv, r.recv + Mr * HC);
    auto& q = fwd ? L.x_q : L.dy_q;
    q.clear();
    if (r.recv_fp8) {
      const auto* b = static_cast<const unsigned char*>(r.recv_fp8);
      q.assign(b, b + Mr * payload_row_words(Payload::fp8, HC) * 4);
    }
    for (int64_t i = 0; i < Mr * HC; ++i) r.reply[i] = fwd ? 2.0f * r.recv[i] + 1.0f : -3.0f * r.recv[i];
  };
  D.exchange(pass, L.plan, r, *L.state, scratch, HC, steps, nullptr);
  auto& back = fwd ? L.y_back : L.dx_back;
  back.clear();
  for (int64_t s = 0; s < Ms; ++s) back.insert(back.end(), r.back.at(s, HC), r.back.at(s, HC) + HC);
}

TEST(Hierarchical, PayloadRowsEqualTheMpiTransportsBitForBit) {
  Comm world = Comm::world();
  const int P = world.size();
  if (P < 2) GTEST_SKIP() << "needs several ranks";
  const Comm& ep = world;
  const int64_t E = 4 * P;
  HierRouting mine(world.rank(), P, E);
  for (const Payload payload : {Payload::bf16, Payload::fp8})
    for (const Layout& lay : layouts(P)) {
      SCOPED_TRACE(fmt::format("{}, {}", lay.name, to_string(payload)));
      const PayloadCodec codec = make_payload_codec(payload, Payload::bf16, backend(Device::cpu), Fp8Format::e5m2);
      auto flat = make_dispatcher(DispatchKind::mpi, ep, 1, {}, codec);
      auto hier = make_dispatcher(DispatchKind::hierarchical, ep, 1, NodeLayout{lay.node}, codec);
      auto plain = make_dispatcher(DispatchKind::hierarchical, ep, 1, NodeLayout{lay.node});
      EXPECT_EQ(hier->payload_out(), payload);
      EXPECT_EQ(hier->payload_back(), Payload::bf16);
      const auto& H = dynamic_cast<const HierDispatcher&>(*hier);
      H.reset_traffic();
      auto fs = flat->make_scratch(), hs = hier->make_scratch(), ps = plain->make_scratch();
      PayloadRun fa, fb, ha, hb, pa;
      payload_pass(*flat, fa, *fs, mine, E, Pass::forward);
      payload_pass(*flat, fb, *fs, mine, E, Pass::forward);
      payload_pass(*hier, ha, *hs, mine, E, Pass::forward);
      payload_pass(*hier, hb, *hs, mine, E, Pass::forward);
      payload_pass(*plain, pa, *ps, mine, E, Pass::forward);
      payload_pass(*hier, hb, *hs, mine, E, Pass::backward);
      payload_pass(*hier, ha, *hs, mine, E, Pass::backward);
      payload_pass(*flat, fb, *fs, mine, E, Pass::backward);
      payload_pass(*flat, fa, *fs, mine, E, Pass::backward);
      payload_pass(*plain, pa, *ps, mine, E, Pass::backward);
      for (PayloadRun* h : {&ha, &hb}) {
        PayloadRun& f = h == &ha ? fa : fb;
        EXPECT_EQ(h->x_recv, f.x_recv);
        EXPECT_EQ(h->y_back, f.y_back);
        EXPECT_EQ(h->dy_recv, f.dy_recv);
        EXPECT_EQ(h->dx_back, f.dx_back);
        EXPECT_EQ(h->x_q, f.x_q);
        EXPECT_EQ(h->dy_q, f.dy_q);
        EXPECT_EQ(h->x_q.empty(), payload != Payload::fp8);
      }
      // The codec did act: the fp32 hierarchical run differs (rows of
      // Gaussian noise are not exact in BF16 or FP8), on some rank.
      int differs = pa.x_recv != ha.x_recv && pa.y_back != ha.y_back && pa.dx_back != ha.dx_back;
      world.allreduce_max(&differs, 1);
      EXPECT_EQ(differs, 1);
      // Network bytes: forward a token's row once per remote node out, every
      // pick's row otherwise; the flat transport every remote pick each way.
      const auto [picks, rows] = cross_node(lay.node, P, E);
      HierTraffic got = H.traffic();
      world.allreduce_sum(&got.network_bytes, 1);
      world.allreduce_sum(&got.flat_bytes, 1);
      const int64_t wo = payload_row_words(payload, HC) * 4, wb = payload_row_words(Payload::bf16, HC) * 4;
      const int64_t layers = 2;
      EXPECT_EQ(got.flat_bytes, layers * 2 * picks * (wo + wb));
      EXPECT_EQ(got.network_bytes, layers * ((rows + picks) * wo + 2 * picks * wb));
    }
}

TEST(Hierarchical, NodeLayoutsDescribeThemselves) {
  EXPECT_EQ((NodeLayout{{0, 0, 1, 1}}).describe(), "2 nodes: 2+2 ranks");
  EXPECT_TRUE((NodeLayout{{0, 0, 1, 1}}).hierarchical_pays());
  EXPECT_TRUE((NodeLayout{{0, 0, 1}}).hierarchical_pays());
  EXPECT_FALSE((NodeLayout{{0, 1, 2}}).hierarchical_pays());  // one rank per node: nothing to share
  EXPECT_FALSE((NodeLayout{{0, 0, 0}}).hierarchical_pays());  // one node: shared memory alone
  Comm world = Comm::world();
  NodeLayout c = NodeLayout::consecutive(world, 2);
  for (int r = 0; r < world.size(); ++r) EXPECT_EQ(c.node[r], r / 2);
  NodeLayout m = NodeLayout::of(world);  // one machine: one node
  EXPECT_EQ(m.nodes(), 1);
}

// Smaller payloads (moe/payload.h) through the MPI transports, both passes:
// every row the experts receive is its sender's row encoded and decoded
// (bit for bit), the outputs come back as the expert's rows rounded to BF16,
// and the bytes this rank sent to other ranks are its remote rows times the
// packed row. The reference is the FP32 transport on the same plan.
struct PayloadCase {
  DispatchKind kind;
  int chunks;
  Payload payload;
};
class DispatchPayload : public ::testing::TestWithParam<PayloadCase> {};

TEST_P(DispatchPayload, RowsArriveEncodedAndComeBackInBf16) {
  const auto [kind, chunks, payload] = GetParam();
  Comm world = Comm::world();
  Grid grid(world, {1, 0, world.size()}, 2 * world.size(), "test");
  const Comm& ep = grid.ep();
  const int P = ep.size(), me = ep.rank();
  const int64_t Cw = 200, E = 2 * P, N = 29 + 3 * world.rank();  // Cw: two 1x128 blocks, the second partial
  Routing mine(world.rank(), N, E, 9);
  std::vector<float> x(static_cast<size_t>(N * Cw));
  for (int64_t i = 0; i < N * Cw; ++i)
    x[i] = normal_at(stream_key(3, fmt::format("x{}", world.rank())), static_cast<uint64_t>(i)) * (1 + i % 97);
  const PayloadCodec codec = make_payload_codec(payload, Payload::bf16, backend(Device::cpu), Fp8Format::e5m2);
  auto small = make_dispatcher(kind, ep, chunks, {}, codec);
  auto full = make_dispatcher(kind, ep, chunks);
  EXPECT_EQ(small->payload_out(), P == 1 ? Payload::fp32 : payload);
  EXPECT_EQ(small->payload_back(), P == 1 ? Payload::fp32 : Payload::bf16);
  for (Pass pass : {Pass::forward, Pass::backward}) {
    EpDispatch plan;
    small->plan(plan, mine.idx.data(), mine.keep.data(), N, K, E);
    const int64_t Ms = plan.send_rows(), Mr = plan.recv_rows();
    auto run = [&](const Dispatcher& D, const std::function<void(const Rows&, int64_t, int64_t)>& expert,
                   std::vector<float>& recv, std::vector<float>& back, MoeTimers* t) {
      auto layer = D.make_layer();
      auto scratch = D.make_scratch();
      const Rows r = pass == Pass::forward ? D.forward_rows(plan, *layer, *scratch, Cw, false)
                                           : D.backward_rows(plan, *layer, *scratch, Cw);
      for (int64_t i = 0; i < Ms; ++i) std::copy_n(x.data() + plan.send_token()[i] * Cw, Cw, r.send.local + i * Cw);
      ExpertSteps steps;
      steps.meanwhile = [] {};
      steps.experts = [&](int c) { expert(r, plan.recv_begin(c), plan.recv_end(c)); };
      D.exchange(pass, plan, r, *layer, *scratch, Cw, steps, t);
      EXPECT_EQ(r.recv_fp8 != nullptr, &D == small.get() && P > 1 && payload == Payload::fp8);
      recv.assign(r.recv, r.recv + Mr * Cw);
      back.assign(r.back.local, r.back.local + Ms * Cw);
    };
    // The payload run: the expert doubles its rows and adds one.
    std::vector<float> recv, back, recv32, back32;
    MoeTimers t;
    run(*small, [&](const Rows& r, int64_t b, int64_t e) {
      for (int64_t i = b * Cw; i < e * Cw; ++i) r.reply[i] = 2 * r.recv[i] + 1;
    }, recv, back, &t);
    // Reference: FP32 rows; the rows expected are those encoded and decoded,
    // and the expert's outputs (of the rows the payload run received) rounded to BF16.
    std::vector<float> want_recv, want_back;
    run(*full, [&](const Rows& r, int64_t b, int64_t e) {
      for (int64_t i = b * Cw; i < e * Cw; ++i) r.reply[i] = 2 * recv[i] + 1;
      if (P == 1) return;  // nothing crosses: nothing is encoded
      const Payload bp = Payload::bf16;
      std::vector<float> pk(static_cast<size_t>((e - b) * payload_row_words(bp, Cw)));
      payload_encode(bp, pk.data(), r.reply + b * Cw, e - b, Cw);
      payload_decode(bp, r.reply + b * Cw, pk.data(), e - b, Cw);
    }, recv32, back32, nullptr);
    want_recv = recv32;
    if (P > 1) {
      const Fp8Format f = pass == Pass::forward ? Fp8Format::e4m3 : Fp8Format::e5m2;
      std::vector<float> pk(static_cast<size_t>(Mr * payload_row_words(payload, Cw)));
      payload_encode(payload, pk.data(), recv32.data(), Mr, Cw, pass == Pass::forward ? codec.act : codec.grad, codec.be);
      payload_decode(payload, want_recv.data(), pk.data(), Mr, Cw, f);
    }
    EXPECT_EQ(0, std::memcmp(recv.data(), want_recv.data(), recv.size() * sizeof(float))) << "rows to the experts";
    EXPECT_EQ(0, std::memcmp(back.data(), back32.data(), back.size() * sizeof(float))) << "rows back";
    int64_t out_rows = 0, back_rows = 0;
    for (int c = 0; c < plan.chunks(); ++c)
      for (int r = 0; r < P; ++r)
        if (r != me) out_rows += plan.send_count(c, r), back_rows += plan.recv_count(c, r);
    const Payload po = P == 1 ? Payload::fp32 : payload, pb = P == 1 ? Payload::fp32 : Payload::bf16;
    EXPECT_EQ(t.out_rows, out_rows);
    EXPECT_EQ(t.out_bytes, out_rows * payload_row_words(po, Cw) * 4);
    EXPECT_EQ(t.back_rows, back_rows);
    EXPECT_EQ(t.back_bytes, back_rows * payload_row_words(pb, Cw) * 4);
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, DispatchPayload,
                         ::testing::Values(PayloadCase{DispatchKind::mpi, 1, Payload::bf16},
                                           PayloadCase{DispatchKind::mpi, 1, Payload::fp8},
                                           PayloadCase{DispatchKind::mpi_overlapped, 3, Payload::bf16},
                                           PayloadCase{DispatchKind::mpi_overlapped, 3, Payload::fp8}),
                         [](const auto& p) {
                           return fmt::format("{}_{}", p.param.kind == DispatchKind::mpi ? "mpi" : "overlapped",
                                              to_string(p.param.payload));
                         });

TEST(Capacity, DistributedDecisionEqualsOneRankOverAllTokens) {
  Comm world = Comm::world();
  const int P = world.size();
  const int64_t E = 5, N = 23;
  // Every rank's tokens; scores quantised so that ties happen.
  std::vector<std::vector<int32_t>> idx(P);
  std::vector<std::vector<float>> scores(P);
  for (int r = 0; r < P; ++r) {
    uint64_t key = stream_key(11, fmt::format("cap.{}", r));
    for (int64_t t = 0; t < N; ++t) {
      int32_t a = static_cast<int32_t>(u64_at(key, t, 0) % 2);  // experts 0 and 1 are popular
      idx[r].push_back(a);
      idx[r].push_back(static_cast<int32_t>(2 + u64_at(key, t, 1) % 3));
      for (int64_t e = 0; e < E; ++e) scores[r].push_back(static_cast<float>(u64_at(key, t, 2 + e) % 4) * 0.25f);
    }
  }
  std::vector<double> load(E, 0.0);
  for (int r = 0; r < P; ++r)
    for (int32_t e : idx[r]) load[e] += 1;
  const int64_t cap = expert_capacity(0.8, N * P, E, K);
  const int me = world.rank();
  std::vector<uint8_t> keep(N * K);
  decide_keep(keep.data(), idx[me].data(), scores[me].data(), N, E, K, cap, load, world, me * N);
  // One rank holding all P * N tokens.
  std::vector<int32_t> all_idx;
  std::vector<float> all_scores;
  for (int r = 0; r < P; ++r) {
    all_idx.insert(all_idx.end(), idx[r].begin(), idx[r].end());
    all_scores.insert(all_scores.end(), scores[r].begin(), scores[r].end());
  }
  std::vector<uint8_t> all_keep(P * N * K);
  decide_keep(all_keep.data(), all_idx.data(), all_scores.data(), P * N, E, K, cap, load, Comm(), 0);
  EXPECT_EQ(keep, std::vector<uint8_t>(all_keep.begin() + me * N * K, all_keep.begin() + (me + 1) * N * K));
  int64_t kept0 = 0;
  for (int64_t i = 0; i < P * N * K; ++i) kept0 += all_idx[i] == 0 && all_keep[i];
  EXPECT_EQ(kept0, std::min<int64_t>(cap, static_cast<int64_t>(load[0])));
}

TEST(Grid, GroupsFollowTheDocumentedRankMap) {
  Comm world = Comm::world();
  const int P = world.size();
  for (int ep : {1, 2, P}) {
    if (P % ep) continue;
    Grid g(world, {1, 0, ep}, 4 * P, "test");
    const int w = world.rank();
    EXPECT_EQ(g.dp_rank(), w);
    EXPECT_EQ(g.ep().size(), ep);
    EXPECT_EQ(g.ep().rank(), w % ep);
    EXPECT_EQ(g.edp().size(), P / ep);
    EXPECT_EQ(g.edp().rank(), w / ep);
    for (int i = 0; i < ep; ++i) EXPECT_EQ(g.ep().world_ranks()[i], (w / ep) * ep + i);
  }
}

}  // namespace
}  // namespace sy

int main(int argc, char** argv) {
  sy::MpiEnv mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {  // one report; any rank's failure still fails the run
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  int worst = rc;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && worst != rc) std::cerr << "a test failed on another rank\n";
  return worst;
}
