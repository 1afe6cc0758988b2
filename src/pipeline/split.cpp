#include "pipeline/split.h"

#include <algorithm>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>

namespace sy::pipe {

std::vector<int64_t> balance_layers(const std::vector<double>& layer_cost, double first_extra, double last_extra,
                                    int64_t stages) {
  const int64_t L = static_cast<int64_t>(layer_cost.size());
  if (stages < 1 || L < stages)
    throw std::invalid_argument(fmt::format("cannot split {} layers into {} pipeline stages of at least one layer "
                                            "each; lower parallel.pp x parallel.virtual or add layers", L, stages));
  std::vector<double> pre(static_cast<size_t>(L + 1), 0);
  for (int64_t l = 0; l < L; ++l) pre[static_cast<size_t>(l + 1)] = pre[static_cast<size_t>(l)] + layer_cost[static_cast<size_t>(l)];
  auto cost = [&](int64_t s, int64_t a, int64_t b) {  // stage s holds layers [a, b)
    return pre[static_cast<size_t>(b)] - pre[static_cast<size_t>(a)] + (s == 0 ? first_extra : 0) +
           (s == stages - 1 ? last_extra : 0);
  };
  const double inf = std::numeric_limits<double>::infinity();
  // best[s][l]: the smallest maximum over stages 0..s-1 holding layers [0, l).
  std::vector<std::vector<double>> best(static_cast<size_t>(stages + 1), std::vector<double>(static_cast<size_t>(L + 1), inf));
  std::vector<std::vector<int64_t>> from(best.size(), std::vector<int64_t>(static_cast<size_t>(L + 1), -1));
  best[0][0] = 0;
  for (int64_t s = 1; s <= stages; ++s)
    for (int64_t l = s; l <= L - (stages - s); ++l)
      for (int64_t a = s - 1; a < l; ++a) {
        double v = std::max(best[static_cast<size_t>(s - 1)][static_cast<size_t>(a)], cost(s - 1, a, l));
        // Ties go to the later cut, so earlier stages (which hold more micro-batches) get fewer layers.
        if (v <= best[static_cast<size_t>(s)][static_cast<size_t>(l)]) {
          best[static_cast<size_t>(s)][static_cast<size_t>(l)] = v;
          from[static_cast<size_t>(s)][static_cast<size_t>(l)] = a;
        }
      }
  std::vector<int64_t> counts(static_cast<size_t>(stages));
  for (int64_t s = stages, l = L; s > 0; --s) {
    int64_t a = from[static_cast<size_t>(s)][static_cast<size_t>(l)];
    counts[static_cast<size_t>(s - 1)] = l - a;
    l = a;
  }
  return counts;
}

std::vector<int64_t> stage_bounds(const std::vector<int64_t>& counts) {
  std::vector<int64_t> b{0};
  for (int64_t c : counts) b.push_back(b.back() + c);
  return b;
}

}  // namespace sy::pipe
