// train.lr_groups resolved against the model: a learning-rate multiplier
// per parameter tensor. A tensor takes the scale of the first group whose
// pattern (config/name_glob.h) matches its global name (the name
// checkpoints use: experts by their global index, whichever rank, expert
// shard or pipeline stage holds them), 1 when none does. AdamW applies it to
// whole ranges (optimizer.h): a ZeRO-1 shard or expert slice of a tensor is
// a range of that tensor, so the scale follows the shards with no
// per-element buffer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/run.h"
#include "model/layout.h"

namespace sy {

struct LrGroupUse {
  int64_t tensors = 0, elements = 0;  // what the group took (after earlier groups)
};

// Scale per tensor of `full` (the whole model's table, by ParamInfo::index).
// ConfigError naming the group and its pattern (from `source`) when a
// pattern matches no parameter, or only parameters an earlier group took.
std::vector<double> resolve_lr_groups(const std::vector<LrGroup>& groups, const ParamLayout& full,
                                      const std::string& source, std::vector<LrGroupUse>* use = nullptr);

}  // namespace sy
