// The half of a device communicator that is not about device buffers: a
// CommBackend whose group, host values (statistics, counts, broadcasts,
// barriers), shared memory and abort are those of a host backend (MPI) it
// was made from. The NCCL backend (comm/nccl/) and the staged device
// communicator (comm/staged.h) add the float traffic on device buffers.
#pragma once

#include <cstdlib>
#include <memory>
#include <utility>
#include <vector>

#include "comm/backend.h"

namespace sy {

class HostValuesOf : public CommBackend {
 public:
  explicit HostValuesOf(std::shared_ptr<const CommBackend> host) : host_(std::move(host)) {}

  bool device_buffers() const override { return true; }
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  std::vector<int> world_ranks() const override { return host_->world_ranks(); }
  int node_size() const override { return host_->node_size(); }
  int node_leader() const override { return host_->node_leader(); }

  void barrier() const override { host_->barrier(); }
  void allreduce(void* data, size_t n, DType t, ReduceOp op) const override { host_->allreduce(data, n, t, op); }
  void bcast(void* data, size_t bytes, int root) const override { host_->bcast(data, bytes, root); }
  void allgather(const void* send, size_t bytes, void* recv) const override { host_->allgather(send, bytes, recv); }
  void allgatherv(const void* send, int64_t n, void* recv, const Counts& counts, const Counts& displs,
                  DType t) const override {
    host_->allgatherv(send, n, recv, counts, displs, t);
  }
  void alltoall(const void* send, size_t bytes_per_rank, void* recv) const override {
    host_->alltoall(send, bytes_per_rank, recv);
  }
  void alltoallv(const void* send, const Counts& scount, const Counts& sdispl, void* recv, const Counts& rcount,
                 const Counts& rdispl, DType t) const override {
    host_->alltoallv(send, scount, sdispl, recv, rcount, rdispl, t);
  }
  std::unique_ptr<SharedSegmentsImpl> allocate_shared(int64_t floats) const override {
    return host_->allocate_shared(floats);
  }
  [[noreturn]] void abort(int code) const override {
    host_->abort(code);
    std::abort();  // (a host backend's abort does not return)
  }

 protected:
  std::shared_ptr<const CommBackend> host_;
};

}  // namespace sy
