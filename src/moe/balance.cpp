#include "moe/balance.h"

#include "core/check.h"

namespace sy {

void update_expert_bias(std::vector<float>& bias, const std::vector<std::vector<int64_t>>& load, int64_t E,
                        double rate) {
  if (rate == 0) return;
  SY_CHECK(bias.size() >= load.size() * static_cast<size_t>(E), "expert bias holds {} values for {} layers of {} experts",
           bias.size(), load.size(), E);
  for (size_t l = 0; l < load.size(); ++l) {
    const int64_t El = static_cast<int64_t>(load[l].size());  // this layer's experts (per-layer counts: <= E)
    SY_CHECK(El <= E, "layer {} reports loads of {} experts, more than the bias rows' {}", l, El, E);
    double mean = 0;
    for (int64_t c : load[l]) mean += static_cast<double>(c);
    mean /= static_cast<double>(El);
    for (int64_t e = 0; e < El; ++e) {
      double err = mean - static_cast<double>(load[l][static_cast<size_t>(e)]);
      float sign = err > 0 ? 1.f : (err < 0 ? -1.f : 0.f);
      bias[l * static_cast<size_t>(E) + static_cast<size_t>(e)] += static_cast<float>(rate) * sign;
    }
  }
}

}  // namespace sy
