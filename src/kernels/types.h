// Device-neutral parameter types of the ops, shared by every backend and by
// the config that selects them. Each enum's names live here, once.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

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

}  // namespace sy
