// The dispatcher contract on one rank (moe/dispatcher.h): every row a
// sender writes reaches the experts in receive order, the experts run once
// per chunk after the shared work has started, and what they write comes
// back to the row it came from. Each row carries its token id and column,
// so a misplaced row shows where it came from (DeepEP's habit). The
// multi-rank transports are compared with one rank by tests/mpi.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "comm/comm.h"
#include "core/check.h"
#include "moe/dispatcher.h"
#include "moe/ep_dispatch.h"

namespace sy {
namespace {

// 6 tokens, K = 2, E = 3; pick (4, 1) dropped.
struct Routing {
  std::vector<int32_t> idx = {0, 2, 2, 1, 1, 0, 2, 0, 1, 2, 0, 1};
  std::vector<uint8_t> keep = {1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1};
  int64_t N = 6, K = 2, E = 3;
};

void check_round_trip(const Dispatcher& D, Pass pass, int want_chunks) {
  const Routing R;
  const int64_t C = 3;
  EpDispatch plan;
  D.plan(plan, R.idx.data(), R.keep.data(), R.N, R.K, R.E);
  ASSERT_EQ(plan.chunks(), want_chunks);
  auto layer = D.make_layer();
  auto scratch = D.make_scratch();
  const Rows rows = pass == Pass::forward ? D.forward_rows(plan, *layer, *scratch, C, false)
                                          : D.backward_rows(plan, *layer, *scratch, C);
  ASSERT_NE(rows.send.local, nullptr);  // the MPI transports send contiguous rows
  const int64_t Ms = plan.send_rows();
  for (int64_t r = 0; r < Ms; ++r)
    for (int64_t c = 0; c < C; ++c) rows.send.local[r * C + c] = static_cast<float>(plan.send_token()[r] * 10 + c);
  std::string calls;
  ExpertSteps steps;
  steps.meanwhile = [&] { calls += "m"; };
  steps.experts = [&](int chunk) {
    calls += std::to_string(chunk);
    for (int64_t r = plan.recv_begin(chunk); r < plan.recv_end(chunk); ++r)
      for (int64_t c = 0; c < C; ++c) rows.reply[r * C + c] = -rows.recv[r * C + c];  // an expert: y = -x
  };
  D.exchange(pass, plan, rows, *layer, *scratch, C, steps, nullptr);
  std::string want = "m";
  for (int c = 0; c < want_chunks; ++c) want += std::to_string(c);
  EXPECT_EQ(calls, want);
  int64_t wrong = 0;
  for (int64_t r = 0; r < Ms; ++r)
    for (int64_t c = 0; c < C; ++c)
      wrong += rows.back.local[r * C + c] != -static_cast<float>(plan.send_token()[r] * 10 + c);
  EXPECT_EQ(wrong, 0);
  if (pass == Pass::forward) {
    EXPECT_EQ(D.forward_outputs(plan, *layer).local, rows.back.local);
    EXPECT_EQ(D.forward_inputs(*layer), rows.recv);
    EXPECT_EQ(layer->bytes(), static_cast<size_t>(2 * Ms * C) * sizeof(float));  // inputs and outputs
  } else {
    // One rank: dy goes out and arrives in one buffer, dx in another.
    EXPECT_EQ(scratch->transfer_bytes(), static_cast<size_t>(2 * Ms * C) * sizeof(float));
  }
}

TEST(Dispatcher, MpiOnOneRankMovesEveryRowThereAndBack) {
  auto D = make_dispatcher(DispatchKind::mpi, Comm());
  EXPECT_STREQ(D->name(), "mpi");
  EXPECT_EQ(D->ep_size(), 1);
  check_round_trip(*D, Pass::forward, 1);
  check_round_trip(*D, Pass::backward, 1);
}

TEST(Dispatcher, OverlappedRunsTheExpertsOncePerChunkInOrder) {
  auto D = make_dispatcher(DispatchKind::mpi_overlapped, Comm(), 3);
  EXPECT_STREQ(D->name(), "mpi-overlapped");
  check_round_trip(*D, Pass::forward, 3);
  check_round_trip(*D, Pass::backward, 3);
}

TEST(Dispatcher, LocalIsMpiOverAGroupOfOne) {
  auto D = make_local_dispatcher();
  EXPECT_STREQ(D->name(), "mpi");
  check_round_trip(*D, Pass::forward, 1);
}

TEST(Dispatcher, SharedInputsLiveInTheScratchNotTheLayer) {
  auto D = make_local_dispatcher();
  const Routing R;
  EpDispatch plan;
  D->plan(plan, R.idx.data(), R.keep.data(), R.N, R.K, R.E);
  auto layer = D->make_layer();
  auto scratch = D->make_scratch();
  D->forward_rows(plan, *layer, *scratch, 4, true);
  const size_t row = 4 * sizeof(float);
  EXPECT_EQ(scratch->input_bytes(), static_cast<size_t>(plan.recv_rows()) * row);
  EXPECT_EQ(layer->bytes(), static_cast<size_t>(plan.send_rows()) * row);  // the outputs only
}

TEST(Dispatcher, AStateOfAnotherTransportIsRefused) {
  auto mpi = make_dispatcher(DispatchKind::mpi, Comm());
  auto shm = make_dispatcher(DispatchKind::shm, Comm());
  EXPECT_STREQ(shm->name(), "shm");
  auto layer = mpi->make_layer();
  auto scratch = mpi->make_scratch();
  EpDispatch plan;
  EXPECT_THROW(shm->forward_rows(plan, *layer, *scratch, 4, false), Error);
  EXPECT_THROW(shm->forward_inputs(*layer), Error);
}

}  // namespace
}  // namespace sy
