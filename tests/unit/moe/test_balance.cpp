// Auxiliary-loss-free balancing: each expert's bias moves by one fixed step
// toward the mean load, per MoE layer, and not at all at rate 0.
#include <gtest/gtest.h>

#include "core/check.h"
#include "moe/balance.h"

using sy::update_expert_bias;

TEST(Balance, EachBiasStepsTowardTheMeanLoad) {
  // Two layers of four experts; layer 0's mean load is 2, layer 1's is 1.5.
  std::vector<float> bias = {0.5f, 0.f, -1.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  update_expert_bias(bias, {{3, 1, 2, 2}, {0, 6, 0, 0}}, 4, 0.25);
  const std::vector<float> want = {0.25f, 0.25f, -1.f, 0.f, 0.25f, -0.25f, 0.25f, 0.25f};
  EXPECT_EQ(bias, want);
}

TEST(Balance, RateZeroLeavesTheBiasAlone) {
  std::vector<float> bias = {1.f, 2.f};
  update_expert_bias(bias, {{5, 0}}, 2, 0.0);
  EXPECT_EQ(bias, (std::vector<float>{1.f, 2.f}));
}

TEST(Balance, ABiasTooShortForTheLoadsIsAnError) {
  std::vector<float> bias(3);
  EXPECT_THROW(update_expert_bias(bias, {{1, 1}, {1, 1}}, 2, 0.1), sy::Error);
}
