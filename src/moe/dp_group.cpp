#include "moe/dp_group.h"

#include "comm/comm.h"

namespace sy {

DpGroup::DpGroup() : comm_(std::make_shared<const Comm>()) {}
DpGroup::DpGroup(const Comm& dp) : comm_(std::make_shared<const Comm>(dp)) {}

int DpGroup::size() const { return comm_->size(); }
int DpGroup::rank() const { return comm_->rank(); }
void DpGroup::allreduce_sum(double* data, size_t n) const { comm_->allreduce_sum(data, n); }

}  // namespace sy
