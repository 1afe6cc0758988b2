#include "comm/grid.h"

#include "core/check.h"

namespace sy {

Grid::Grid(const Comm& world, GridShape shape, int64_t experts, const std::string& source,
           const std::string& experts_text)
    : world_(world) {
  shape_ = resolve_layout(world.size(), shape, experts, source, experts_text);
  const int64_t w = world.rank(), dp = shape_.dp, ep = shape_.ep, edp = dp / ep;
  pp_rank_ = w / dp;
  dp_rank_ = w % dp;
  const int64_t ep_rank = dp_rank_ % ep, edp_rank = dp_rank_ / ep;
  auto i = [](int64_t v) { return static_cast<int>(v); };
  dp_ = world.split(i(pp_rank_), i(dp_rank_), fmt::format("dp[{}]", pp_rank_));
  ep_ = world.split(i(pp_rank_ * edp + edp_rank), i(ep_rank), fmt::format("ep[{}]", pp_rank_ * edp + edp_rank));
  edp_ = world.split(i(pp_rank_ * ep + ep_rank), i(edp_rank), fmt::format("edp[{}]", pp_rank_ * ep + ep_rank));
  pp_ = world.split(i(dp_rank_), i(pp_rank_), fmt::format("pp[{}]", dp_rank_));
}

Grid Grid::over(const Comm::Remake& make) const {
  Grid g = *this;
  g.world_ = world_.over(make), g.dp_ = dp_.over(make), g.ep_ = ep_.over(make);
  g.edp_ = edp_.over(make), g.pp_ = pp_.over(make);
  return g;
}

std::string Grid::describe(int64_t experts) const {
  const std::string per = experts <= 0 ? std::string()
                          : fmt::format(" ({} expert{} per rank)", experts / shape_.ep, experts / shape_.ep == 1 ? "" : "s");
  return fmt::format("world {} = pp {} x dp {}; ep {}{}, expert-dp {}", world_.size(), shape_.pp, shape_.dp, shape_.ep,
                     per, edp_size());
}

}  // namespace sy
