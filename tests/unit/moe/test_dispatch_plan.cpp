// The global capacity decision (which picks an over-full expert keeps) and
// the expert-parallel dispatch plan on one rank.
#include <gtest/gtest.h>

#include <vector>

#include "comm/comm.h"
#include "moe/capacity.h"
#include "moe/ep_dispatch.h"

namespace sy {
namespace {

TEST(Capacity, DropsLowestScoresBeyondCapacity) {
  // 4 tokens, E = 2, K = 1, all to expert 0; capacity 2 keeps the two best.
  std::vector<int32_t> idx = {0, 0, 0, 0};
  std::vector<float> scores = {0.6f, 0.4f, 0.9f, 0.1f, 0.6f, 0.4f, 0.7f, 0.3f};
  std::vector<uint8_t> keep(4);
  decide_keep(keep.data(), idx.data(), scores.data(), 4, 2, 1, 2, {4.0, 0.0}, Comm(), 0);
  // token 1 (0.9) and token 3 (0.7) stay; tokens 0 and 2 tie at 0.6 below them.
  EXPECT_EQ(keep, (std::vector<uint8_t>{0, 1, 0, 1}));
  decide_keep(keep.data(), idx.data(), scores.data(), 4, 2, 1, -1, {4.0, 0.0}, Comm(), 0);
  EXPECT_EQ(keep, (std::vector<uint8_t>{1, 1, 1, 1}));  // dropless
  EXPECT_EQ(expert_capacity(1.0, 4, 2, 1), 2);
  EXPECT_EQ(expert_capacity(0.0, 4, 2, 1), -1);
}

TEST(Capacity, TiesAtCapacityDropTheLaterToken) {
  std::vector<int32_t> idx = {1, 1, 1};
  std::vector<float> scores = {0.f, 0.5f, 0.f, 0.5f, 0.f, 0.5f};
  std::vector<uint8_t> keep(3);
  decide_keep(keep.data(), idx.data(), scores.data(), 3, 2, 1, 2, {0.0, 3.0}, Comm(), 0);
  EXPECT_EQ(keep, (std::vector<uint8_t>{1, 1, 0}));
  // As the second rank of a data-parallel pair (global tokens 100..102) the
  // decision is the same: only the order of global indices matters.
  decide_keep(keep.data(), idx.data(), scores.data(), 3, 2, 1, 2, {0.0, 3.0}, Comm(), 100);
  EXPECT_EQ(keep, (std::vector<uint8_t>{1, 1, 0}));
}

TEST(EpDispatch, SingleRankPlanIsExpertMajorInTokenOrder) {
  // 4 tokens, K = 2, E = 3, pick (2, 1) dropped; two chunks of two tokens.
  std::vector<int32_t> idx = {0, 2, 2, 1, 1, 0, 2, 0};
  std::vector<uint8_t> keep = {1, 1, 1, 1, 1, 0, 1, 1};
  EpDispatch plan;
  plan.plan(Comm(), idx.data(), keep.data(), 4, 2, 3, 2);
  ASSERT_EQ(plan.chunks(), 2);
  EXPECT_EQ(plan.send_rows(), 7);
  EXPECT_EQ(plan.recv_rows(), 7);
  // chunk 0 (tokens 0, 1): e0 {0}, e1 {1}, e2 {0, 1}; chunk 1 (tokens 2, 3): e0 {3}, e1 {2}, e2 {3}
  EXPECT_EQ(plan.send_token(), (std::vector<int32_t>{0, 1, 0, 1, 3, 2, 3}));
  EXPECT_EQ(plan.send_pos(), (std::vector<int32_t>{0, 2, 3, 1, 5, -1, 6, 4}));
  EXPECT_EQ(plan.recv_begin(1), 4);
  EXPECT_EQ(plan.expert_rows(), (std::vector<int64_t>{2, 2, 3}));
  ASSERT_EQ(plan.segments(1).size(), 3u);
  EXPECT_EQ(plan.segments(1)[2].offset, 6);
  EXPECT_EQ(plan.segments(1)[2].expert, 2);
}

}  // namespace
}  // namespace sy
