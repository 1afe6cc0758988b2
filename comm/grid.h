// The process grid: world = pp x dp ranks (pipeline outermost); within each
// data-parallel group, expert-parallel groups of ep consecutive ranks, and
// expert-data-parallel groups of the dp / ep ranks that hold the same
// experts (Megatron-Core / DeepSpeed-MoE's arrangement).
//   world rank w: pp_rank = w / dp, dp_rank = w % dp,
//                 ep_rank = dp_rank % ep, edp_rank = dp_rank / ep
#pragma once

#include <cstdint>
#include <string>

#include "comm/comm.h"
#include "config/layout.h"

namespace sy {

class Grid {
 public:
  // A grid of one rank, without MPI.
  Grid() = default;
  // Validates the shape against the world size and the expert count
  // (experts = 0: no MoE layers) and splits the groups. Throws ConfigError,
  // on every rank alike, saying what would fit. `source` names the config.
  Grid(const Comm& world, GridShape shape, int64_t experts, const std::string& source,
       const std::string& experts_text = "");

  const Comm& world() const { return world_; }
  const Comm& dp() const { return dp_; }    // same pipeline stage: dense gradients
  const Comm& ep() const { return ep_; }    // expert parallel: token all-to-all
  const Comm& edp() const { return edp_; }  // same experts: expert gradients
  const Comm& pp() const { return pp_; }    // same data-parallel rank across stages

  int64_t pp_size() const { return shape_.pp; }
  int64_t dp_size() const { return shape_.dp; }
  int64_t ep_size() const { return shape_.ep; }
  int64_t edp_size() const { return shape_.dp / shape_.ep; }
  int64_t pp_rank() const { return pp_rank_; }
  int64_t dp_rank() const { return dp_rank_; }
  int64_t ep_rank() const { return dp_rank_ % shape_.ep; }
  int64_t edp_rank() const { return dp_rank_ / shape_.ep; }
  std::string describe(int64_t experts) const;
  // The same grid, every group over a transport made from its own
  // (Comm::over): a device run's groups for device buffers.
  Grid over(const Comm::Remake& make) const;

 private:
  GridShape shape_{1, 1, 1};
  int64_t pp_rank_ = 0, dp_rank_ = 0;
  Comm world_, dp_, ep_, edp_, pp_;
};

}  // namespace sy
