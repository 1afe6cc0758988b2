// The MPI backend of the communicator (comm/backend.h). Only comm/ and
// code that talks to MPI directly on purpose (a benchmark against raw MPI,
// the dispatch test's MPI_Alltoallv reference) include this header.
#pragma once

#include <mpi.h>

#include <string>

#include "comm/backend.h"
#include "core/check.h"

namespace sy {

std::string mpi_error_string(int code);

// SY_MPI_CHECK(MPI_Allreduce(...)): throws with the MPI error text.
#define SY_MPI_CHECK(call)                                                              \
  do {                                                                                  \
    int sy_rc_ = (call);                                                                \
    if (sy_rc_ != MPI_SUCCESS) [[unlikely]]                                             \
      ::sy::throw_error(__FILE__, __LINE__,                                             \
                        ::fmt::format("{} failed: {}", #call, ::sy::mpi_error_string(sy_rc_))); \
  } while (0)

class MpiBackend final : public CommBackend {
 public:
  // Takes ownership of `c` unless it is MPI_COMM_WORLD (freed at MPI_Finalize).
  explicit MpiBackend(MPI_Comm c);
  ~MpiBackend() override;
  MpiBackend(const MpiBackend&) = delete;
  MpiBackend& operator=(const MpiBackend&) = delete;

  MPI_Comm handle() const { return comm_; }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::vector<int> world_ranks() const override;
  std::shared_ptr<const CommBackend> split(int color, int key) const override;
  int node_size() const override;
  int node_leader() const override;

  void barrier() const override;
  void allreduce(void* data, size_t n, DType t, ReduceOp op) const override;
  void bcast(void* data, size_t bytes, int root) const override;
  void allgather(const void* send, size_t bytes, void* recv) const override;
  void allgatherv(const void* send, int64_t n, void* recv, const Counts& counts, const Counts& displs,
                  DType t) const override;
  void alltoall(const void* send, size_t bytes_per_rank, void* recv) const override;
  void alltoallv(const void* send, const Counts& scount, const Counts& sdispl, void* recv, const Counts& rcount,
                 const Counts& rdispl, DType t) const override;

  std::unique_ptr<RequestImpl> ialltoallv_rows(const float* send, const Counts& scount, const Counts& sdispl,
                                               float* recv, const Counts& rcount, const Counts& rdispl, int64_t row,
                                               const char* what) const override;
  std::unique_ptr<RequestImpl> isend(const float* data, int64_t n, int peer, int tag, const char* what) const override;
  std::unique_ptr<RequestImpl> irecv(float* data, int64_t n, int peer, int tag, const char* what) const override;
  std::unique_ptr<RequestImpl> iallreduce_sum(float* data, int64_t n, const char* what) const override;
  std::unique_ptr<RequestImpl> ireduce_scatter_sum(const float* data, float* recv, const Counts& counts,
                                                   const char* what) const override;
  std::unique_ptr<RequestImpl> iallgatherv(float* data, const Counts& counts, const Counts& displs,
                                           const char* what) const override;

  std::unique_ptr<SharedSegmentsImpl> allocate_shared(int64_t floats) const override;

  [[noreturn]] void abort(int code) const override;

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

// The MPI communicator behind `c`: MPI_COMM_NULL for a group of one or a
// group of another backend.
MPI_Comm mpi_handle(const Comm& c);

// MPI_Abort on MPI_COMM_WORLD when MPI is initialised (the watchdog's exit).
void mpi_abort_world(int code);

}  // namespace sy
