#include "comm/grid.h"

#include <numeric>
#include <vector>

#include "core/check.h"

namespace sy {

namespace {
std::string divisors_of_both(int64_t a, int64_t b) {
  std::vector<int64_t> d;
  for (int64_t x = 1; x <= a; ++x)
    if (a % x == 0 && (b == 0 || b % x == 0)) d.push_back(x);
  return fmt::format("{}", fmt::join(d, ", "));
}
}  // namespace

GridShape Grid::resolve(int64_t world, GridShape s, int64_t experts, const std::string& source) {
  SY_CONFIG_CHECK(s.pp >= 1, "{}: parallel.pp = {} must be at least 1", source, s.pp);
  SY_CONFIG_CHECK(world % s.pp == 0, "{}: the job has {} ranks, not a multiple of parallel.pp = {}; with {} ranks "
                  "parallel.pp can be {}", source, world, s.pp, world, divisors_of_both(world, 0));
  if (s.dp == 0) s.dp = world / s.pp;
  SY_CONFIG_CHECK(s.pp * s.dp == world,
                  "{}: parallel.pp x parallel.dp = {} x {} = {} ranks, but the job has {} rank{}; run with {} "
                  "rank{}, or set parallel.dp = {} (or 0 to take it from the job)",
                  source, s.pp, s.dp, s.pp * s.dp, world, world == 1 ? "" : "s", s.pp * s.dp,
                  s.pp * s.dp == 1 ? "" : "s", world / s.pp);
  if (s.ep == 0) s.ep = experts > 0 ? std::gcd(s.dp, experts) : 1;
  SY_CONFIG_CHECK(s.dp % s.ep == 0, "{}: parallel.ep = {} must divide parallel.dp = {} (experts are sharded within "
                  "the data-parallel group); it can be {}", source, s.ep, s.dp, divisors_of_both(s.dp, experts));
  SY_CONFIG_CHECK(experts == 0 || experts % s.ep == 0, "{}: moe.experts = {} cannot be split evenly over "
                  "parallel.ep = {} ranks; parallel.ep can be {}", source, experts, s.ep,
                  divisors_of_both(s.dp, experts));
  return s;
}

Grid::Grid(const Comm& world, GridShape shape, int64_t experts, const std::string& source) : world_(world) {
  shape_ = resolve(world.size(), shape, experts, source);
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

std::string Grid::describe(int64_t experts) const {
  return fmt::format("world {} = pp {} x dp {}; ep {} ({} expert{} per rank), expert-dp {}", world_.size(),
                     shape_.pp, shape_.dp, shape_.ep, experts / shape_.ep, experts / shape_.ep == 1 ? "" : "s",
                     edp_size());
}

}  // namespace sy
