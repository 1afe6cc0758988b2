#include "config/layout.h"

#include <numeric>
#include <vector>

#include "config/model.h"
#include "core/check.h"

#include <fmt/ranges.h>

namespace sy {

namespace {
std::string divisors_of_both(int64_t a, int64_t b) {
  std::vector<int64_t> d;
  for (int64_t x = 1; x <= a; ++x)
    if (a % x == 0 && (b == 0 || b % x == 0)) d.push_back(x);
  return fmt::format("{}", fmt::join(d, ", "));
}
}  // namespace

ExpertSlice rank_experts(const ModelConfig& m, int64_t ep_rank, int64_t ep) {
  if (m.uniform_experts()) return {ep_rank * (m.moe.experts / ep), m.moe.experts / ep};
  return ExpertSlice::of_part(ep_rank, ep);
}

std::string experts_per_rank_text(const ModelConfig& m, int64_t ep) {
  if (m.moe_layers() == 0) return "0";
  if (m.uniform_experts()) return fmt::format("{}", m.moe.experts / ep);
  std::vector<int64_t> n;
  for (int64_t l = m.dense_layers; l < m.n_layers; ++l) n.push_back(m.experts_at(l) / ep);
  return fmt::format("{}", fmt::join(n, "/"));
}

GridShape resolve_layout(int64_t world, GridShape s, int64_t experts, const std::string& source,
                         const std::string& experts_text) {
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
  SY_CONFIG_CHECK(experts == 0 || experts % s.ep == 0, "{}: {} cannot be split evenly over "
                  "parallel.ep = {} ranks{}; parallel.ep can be {}", source,
                  experts_text.empty() ? fmt::format("moe.experts = {}", experts) : experts_text, s.ep,
                  experts_text.empty() ? "" : " (every MoE layer's count must be a multiple of it)",
                  divisors_of_both(s.dp, experts));
  return s;
}

}  // namespace sy
