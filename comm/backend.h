// The transport behind a Comm: what a communicator library must provide.
// comm/mpi/ implements it over MPI; the NCCL backend (comm/nccl/) and the
// staged device communicator (comm/staged.h) implement the same calls on
// device buffers.
//
// The Comm facade (comm.h) does everything common to every backend before
// it calls in: the group of one (no backend), the watchdog scope of each
// blocking call, and argument checks. A backend only moves bytes.
//
// Counts are int64 here; a backend whose library takes int counts checks
// the range and names the operation when one does not fit.
//
// How NCCL joins (comm/nccl/): ncclGetUniqueId on rank 0 of a group,
// broadcast with that group's MPI backend, ncclCommInitRank on every member;
// split() creates the child's MPI communicator first and repeats that. Its
// requests are CUDA events recorded on the communication stream: test() is
// cudaEventQuery, wait() cudaEventSynchronize under the same watchdog scope,
// so a silent peer is named exactly as with MPI (the watchdog aborts through
// the MPI world communicator, which stays alive). A device run makes each of
// its groups' twin this way, or as the staged device communicator
// (comm/staged.h) where NCCL cannot run (train/device_comm.h).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "comm/comm.h"

namespace sy {

// A pending non-blocking operation of a backend. Its destructor must not
// return before the operation has finished with the caller's buffers.
class RequestImpl {
 public:
  virtual ~RequestImpl() = default;
  virtual bool test() = 0;  // progress; true once finished
  virtual void wait() = 0;  // blocks until finished
};

// Memory every member of a one-node group can address: each member owns a
// segment; peers()[r] is member r's segment in this process.
class SharedSegmentsImpl {
 public:
  virtual ~SharedSegmentsImpl() = default;
  virtual const std::vector<float*>& peers() const = 0;
  virtual void sync() = 0;  // a memory barrier over the segments (no group barrier)
};

using Counts = std::vector<int64_t>;

class CommBackend {
 public:
  virtual ~CommBackend() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Whether the float traffic (the i* calls below) takes device buffers
  // (NCCL, the staged device communicator) rather than host memory (MPI).
  virtual bool device_buffers() const { return false; }
  virtual std::vector<int> world_ranks() const = 0;  // members' world ranks, in group order
  // Members with the same color form a new group, ordered by key (collective).
  virtual std::shared_ptr<const CommBackend> split(int color, int key) const = 0;
  // Members sharing this node's memory (collective).
  virtual int node_size() const = 0;
  // The lowest group rank among the members sharing this node's memory
  // (collective): equal on two members exactly when they share a node.
  virtual int node_leader() const = 0;

  virtual void barrier() const = 0;
  virtual void allreduce(void* data, size_t n, DType t, ReduceOp op) const = 0;  // in place
  virtual void bcast(void* data, size_t bytes, int root) const = 0;
  virtual void allgather(const void* send, size_t bytes, void* recv) const = 0;
  virtual void allgatherv(const void* send, int64_t n, void* recv, const Counts& counts, const Counts& displs,
                          DType t) const = 0;
  virtual void alltoall(const void* send, size_t bytes_per_rank, void* recv) const = 0;
  // Variable-size all-to-all of elements of type t; counts and displacements in elements.
  virtual void alltoallv(const void* send, const Counts& scount, const Counts& sdispl, void* recv,
                         const Counts& rcount, const Counts& rdispl, DType t) const = 0;

  // Rows of `row` floats; counts and displacements in rows.
  virtual std::unique_ptr<RequestImpl> ialltoallv_rows(const float* send, const Counts& scount, const Counts& sdispl,
                                                       float* recv, const Counts& rcount, const Counts& rdispl,
                                                       int64_t row, const char* what) const = 0;
  virtual std::unique_ptr<RequestImpl> isend(const float* data, int64_t n, int peer, int tag,
                                             const char* what) const = 0;
  virtual std::unique_ptr<RequestImpl> irecv(float* data, int64_t n, int peer, int tag, const char* what) const = 0;
  virtual std::unique_ptr<RequestImpl> iallreduce_sum(float* data, int64_t n, const char* what) const = 0;
  virtual std::unique_ptr<RequestImpl> ireduce_scatter_sum(const float* data, float* recv, const Counts& counts,
                                                           const char* what) const = 0;
  virtual std::unique_ptr<RequestImpl> iallgatherv(float* data, const Counts& counts, const Counts& displs,
                                                   const char* what) const = 0;

  // Collective: every member's segment holds `floats` (each passes its own).
  virtual std::unique_ptr<SharedSegmentsImpl> allocate_shared(int64_t floats) const = 0;

  // Ends every rank of the job.
  [[noreturn]] virtual void abort(int code) const = 0;
};

}  // namespace sy
