// Device-neutral parameter types of the ops, shared by every backend and by
// the config that selects them. Each enum's names live here, once.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace sy {

// The router's score function: softmax over experts (Mixtral) or an
// independent sigmoid per expert (DeepSeek-V3).
enum class ScoreFn : uint8_t { softmax, sigmoid };

inline constexpr std::array<std::string_view, 2> kScoreFnNames = {"softmax", "sigmoid"};

constexpr std::string_view score_name(ScoreFn f) { return kScoreFnNames[static_cast<size_t>(f)]; }

constexpr std::optional<ScoreFn> parse_score(std::string_view s) {
  for (size_t i = 0; i < kScoreFnNames.size(); ++i)
    if (kScoreFnNames[i] == s) return static_cast<ScoreFn>(i);
  return std::nullopt;
}

// Where the expert-side copy of MoE send row r lives: a contiguous buffer
// (row r at r * C), or rows scattered over other ranks' shared-memory
// segments (base[rank[r]] + row[r] * C), so a gather writes a token row
// straight into the expert's buffer and a combine reads expert outputs from it.
struct RowMap {
  float* local = nullptr;                // contiguous rows, or
  float* const* base = nullptr;          // per-rank segment bases
  const int32_t* rank = nullptr;         // per send row
  const int32_t* row = nullptr;          // per send row, within its rank's segment
  static RowMap contiguous(float* p) { return {p, nullptr, nullptr, nullptr}; }
  static RowMap scattered(float* const* b, const int32_t* rk, const int32_t* rw) { return {nullptr, b, rk, rw}; }
  float* at(int64_t r, int64_t C) const { return local ? local + r * C : base[rank[r]] + int64_t{row[r]} * C; }
};

// Group-limited routing (DeepSeek-V3's node-limited routing, n_group /
// topk_group): the E experts form `groups` contiguous groups of E / groups;
// a token's top-k experts come from at most `limit` groups. A group's score
// is the sum of its two largest selection values (score + bias; its one value
// when a group has a single expert); the `limit` best groups are kept (equal
// scores: the lower group index), then top-k among their experts (equal
// values: the lower expert index). limit == 0 or limit >= groups: no limit.
struct RouterGroups {
  int64_t groups = 1, limit = 0;
  bool on() const { return groups > 1 && limit > 0 && limit < groups; }
};

// Router balance statistics over N tokens, added into (so micro-batches and
// ranks can be summed): counts (E) of top-k picks, prob_sum (E),
// z_sum = sum_t lse_t^2, entropy_sum = sum_t H(probs_t). Host values.
struct RouterSums {
  std::vector<double> counts, prob_sum;
  double z_sum = 0, entropy_sum = 0;
  explicit RouterSums(int64_t E = 0)
      : counts(static_cast<size_t>(E), 0.0), prob_sum(static_cast<size_t>(E), 0.0) {}
};

// The balance terms' values (see kernels/cpu/router.h for their definitions).
struct RouterLosses {
  double aux = 0, z = 0, entropy = 0;
};

// Coefficients of the balance terms in the objective, already multiplied by
// the loss scale of this micro-batch.
struct RouterCoefs {
  float aux = 0, z = 0, entropy = 0;
};

// One AdamW update's hyper-parameters (see kernels/cpu/adamw.h for the math).
struct AdamWParams {
  float lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // 1-based step count, for bias correction
  float grad_scale = 1.f;
};

}  // namespace sy
