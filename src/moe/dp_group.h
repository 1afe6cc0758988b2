// The data-parallel group as the MoE block sees it: router statistics are
// summed over it and capacity is decided over it, so every layout drops and
// balances exactly what one rank would. A default DpGroup is a group of one.
// It keeps comm/ out of the model's headers (model/moe_block.h holds one).
#pragma once

#include <cstddef>
#include <memory>

namespace sy {

class Comm;

class DpGroup {
 public:
  DpGroup();  // a group of one
  explicit DpGroup(const Comm& dp);

  int size() const;
  int rank() const;
  // In-place sum over the group.
  void allreduce_sum(double* data, size_t n) const;
  const Comm& comm() const { return *comm_; }  // for collectives of moe/ (decide_keep)

 private:
  std::shared_ptr<const Comm> comm_;
};

}  // namespace sy
