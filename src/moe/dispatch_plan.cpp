#include "moe/dispatch_plan.h"

#include <algorithm>
#include <cmath>

namespace sy {

int64_t expert_capacity(double capacity_factor, int64_t Ntot, int64_t E, int64_t K) {
  if (capacity_factor <= 0) return -1;
  return static_cast<int64_t>(
      std::ceil(capacity_factor * static_cast<double>(Ntot * K) / static_cast<double>(E)));
}

void build_dispatch_plan(DispatchPlan& plan, const int32_t* idx, const float* scores, int64_t N,
                         int64_t E, int64_t K, int64_t capacity) {
  const int64_t picks = N * K;
  plan.load.assign(E, 0);
  plan.pos.assign(picks, 0);
  for (int64_t i = 0; i < picks; ++i) ++plan.load[idx[i]];

  plan.dropped = 0;
  if (capacity >= 0) {
    // Rank each over-full expert's picks by (score desc, token asc); the
    // ones past capacity get pos = -1.
    std::vector<std::vector<int64_t>> over(E);
    for (int64_t i = 0; i < picks; ++i)
      if (plan.load[idx[i]] > capacity) over[idx[i]].push_back(i);
    for (int64_t e = 0; e < E; ++e) {
      std::vector<int64_t>& v = over[e];
      if (v.empty()) continue;
      auto score = [&](int64_t i) { return scores[(i / K) * E + e]; };
      std::stable_sort(v.begin(), v.end(), [&](int64_t a, int64_t b) { return score(a) > score(b); });
      for (size_t j = static_cast<size_t>(capacity); j < v.size(); ++j) plan.pos[v[j]] = -1;
      plan.dropped += static_cast<int64_t>(v.size()) - capacity;
    }
  }

  plan.offsets.assign(E + 1, 0);
  for (int64_t i = 0; i < picks; ++i)
    if (plan.pos[i] >= 0) ++plan.offsets[idx[i] + 1];
  for (int64_t e = 0; e < E; ++e) plan.offsets[e + 1] += plan.offsets[e];
  plan.row_token.resize(plan.rows());
  std::vector<int64_t> cursor(plan.offsets.begin(), plan.offsets.end() - 1);
  // Token-major walk: rows within an expert come out in ascending token order.
  for (int64_t i = 0; i < picks; ++i) {
    if (plan.pos[i] < 0) continue;
    int64_t r = cursor[idx[i]]++;
    plan.row_token[r] = static_cast<int32_t>(i / K);
    plan.pos[i] = static_cast<int32_t>(r);
  }
}

}  // namespace sy
