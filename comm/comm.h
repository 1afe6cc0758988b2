// The communicator: moves typed buffers between ranks and knows nothing of
// the model. `Comm` is the typed face every caller uses; the transport is a
// CommBackend behind it (comm/backend.h): MPI (comm/mpi/) for host buffers;
// for a device run's device buffers NCCL (comm/nccl/) or the staged device
// communicator (comm/staged.h), made from a host group by Comm::over. No MPI type
// appears here, so nothing outside comm/ sees <mpi.h>.
//
// A default-constructed Comm is a group of one (no backend at all): every
// collective is then a local copy or a no-op, so single-process code and
// tests run the same paths without MPI.
//
// Every blocking call, and Request::wait, is timed by the watchdog (see
// watchdog.h): a peer that never arrives becomes an abort naming the group,
// the operation and the silent rank, not a hang.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace sy {

// MPI_Init_thread / MPI_Finalize for the life of main().
class MpiEnv {
 public:
  MpiEnv(int* argc, char*** argv);
  ~MpiEnv();
  MpiEnv(const MpiEnv&) = delete;
  MpiEnv& operator=(const MpiEnv&) = delete;
  static bool thread_multiple();  // MPI_THREAD_MULTIPLE was granted
};

// Element types and reductions a backend moves (its own type tables map them).
enum class ReduceOp : uint8_t { sum, max, min };
template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::u8; }

class CommBackend;
class RequestImpl;

class Comm;

// A pending non-blocking operation. wait() blocks (under the watchdog);
// test() makes progress and says whether it finished. Destroying a pending
// request waits for it, so buffers are never freed under MPI's feet.
class Request {
 public:
  Request();
  // A backend's pending operation, named `what` for the watchdog.
  Request(std::unique_ptr<RequestImpl> impl, std::string what, const Comm* comm);
  Request(Request&& o) noexcept;
  Request& operator=(Request&& o) noexcept;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
  ~Request();
  bool test();
  void wait();
  bool pending() const { return impl_ != nullptr; }

 private:
  std::unique_ptr<RequestImpl> impl_;
  std::string what_;
  const Comm* comm_ = nullptr;
};

void wait_all(std::vector<Request>& reqs);

class Comm {
 public:
  Comm() = default;  // a group of one
  Comm(std::shared_ptr<const CommBackend> backend, std::string name);
  static Comm world();  // every rank of the job (MPI_COMM_WORLD)

  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& name() const { return name_; }
  // World ranks of the members, in group order (for messages).
  const std::vector<int>& world_ranks() const { return world_ranks_; }
  std::string describe() const;  // "ep[1] (world ranks 4-7)"
  bool solo() const { return backend_ == nullptr; }
  // Whether the float traffic (rows, isend/irecv, i*reduce, iallgatherv)
  // takes device buffers: a device run's twin (over()) of a host group.
  bool device_buffers() const;
  // The transport (null when solo): for code inside comm/ that needs more
  // than the typed calls below (shared windows, a backend's native handle).
  const CommBackend* backend() const { return backend_.get(); }

  // Members with the same color form a new group, ordered by key.
  Comm split(int color, int key, const std::string& name) const;
  // The same group, same name, over a transport made from this one's (a
  // group of one stays one): a device run's twin of a host group, whose
  // float traffic takes device buffers (comm/staged.h, comm/nccl/).
  using Remake = std::function<std::shared_ptr<const CommBackend>(std::shared_ptr<const CommBackend>)>;
  Comm over(const Remake& make) const;

  void barrier() const;
  void barrier_as(const char* what) const;  // a barrier the watchdog names `what`
  template <class T>
  void allreduce_sum(T* data, size_t n) const { allreduce(data, n, dtype_of<T>(), ReduceOp::sum); }
  template <class T>
  void allreduce_max(T* data, size_t n) const { allreduce(data, n, dtype_of<T>(), ReduceOp::max); }
  template <class T>
  void allreduce_min(T* data, size_t n) const { allreduce(data, n, dtype_of<T>(), ReduceOp::min); }
  template <class T>
  void bcast(T* data, size_t n, int root) const { bcast_bytes(data, n * sizeof(T), root); }
  void bcast_bytes(void* data, size_t bytes, int root) const;
  // recv (size * n) = every member's n elements, in rank order.
  template <class T>
  void allgather(const T* send, size_t n, T* recv) const { allgather_bytes(send, n * sizeof(T), recv); }
  void allgather_bytes(const void* send, size_t bytes, void* recv) const;
  // Variable-size gather of elements of T: counts / displs per member.
  template <class T>
  void allgatherv(const T* send, int64_t n, T* recv, const std::vector<int64_t>& counts,
                  const std::vector<int64_t>& displs) const {
    allgatherv_typed(send, n, recv, counts, displs, dtype_of<T>(), sizeof(T));
  }
  // recv[i * n .. ] = member i's send[rank * n ..].
  template <class T>
  void alltoall(const T* send, size_t n, T* recv) const { alltoall_bytes(send, n * sizeof(T), recv); }
  void alltoall_bytes(const void* send, size_t bytes_per_rank, void* recv) const;
  // Variable-size all-to-all of elements of T; counts and displacements in elements.
  template <class T>
  void alltoallv(const T* send, const std::vector<int64_t>& scount, const std::vector<int64_t>& sdispl, T* recv,
                 const std::vector<int64_t>& rcount, const std::vector<int64_t>& rdispl) const {
    alltoallv_typed(send, scount, sdispl, recv, rcount, rdispl, dtype_of<T>(), sizeof(T));
  }

  // All-to-all of float rows of `row` floats; counts and displacements in rows.
  void alltoallv_rows(const float* send, const std::vector<int64_t>& scount, const std::vector<int64_t>& sdispl,
                      float* recv, const std::vector<int64_t>& rcount, const std::vector<int64_t>& rdispl,
                      int64_t row, const char* what) const;
  Request ialltoallv_rows(const float* send, const std::vector<int64_t>& scount,
                          const std::vector<int64_t>& sdispl, float* recv, const std::vector<int64_t>& rcount,
                          const std::vector<int64_t>& rdispl, int64_t row, const char* what) const;

  // Point-to-point (pipeline stages): n floats to / from group member `peer`.
  Request isend(const float* data, int64_t n, int peer, int tag, const char* what) const;
  Request irecv(float* data, int64_t n, int peer, int tag, const char* what) const;

  // In-place sum over the group.
  Request iallreduce_sum(float* data, int64_t n, const char* what) const;
  // data (sum of counts) is summed over the group and member i receives
  // block i (counts[i] floats) into recv.
  Request ireduce_scatter_sum(const float* data, float* recv, const std::vector<int64_t>& counts,
                              const char* what) const;
  // In place: member i's block (counts[i] floats at displs[i]) goes to all.
  Request iallgatherv(float* data, const std::vector<int64_t>& counts, const std::vector<int64_t>& displs,
                      const char* what) const;

  // Ends every rank of the job (a rank that throws while others wait in a
  // collective would otherwise hang them).
  [[noreturn]] void abort(int code) const;

 private:
  void allreduce(void* data, size_t n, DType t, ReduceOp op) const;
  void allgatherv_typed(const void* send, int64_t n, void* recv, const std::vector<int64_t>& counts,
                        const std::vector<int64_t>& displs, DType t, size_t elem) const;
  void alltoallv_typed(const void* send, const std::vector<int64_t>& scount, const std::vector<int64_t>& sdispl,
                       void* recv, const std::vector<int64_t>& rcount, const std::vector<int64_t>& rdispl, DType t,
                       size_t elem) const;
  std::shared_ptr<const CommBackend> backend_;
  int rank_ = 0, size_ = 1;
  std::string name_ = "self";
  std::vector<int> world_ranks_{0};
};

std::string host_name();

// Ends the whole job (MPI_Abort on the world when MPI runs), else this process.
[[noreturn]] void abort_job(int code);

// Ranks of this job on this node (the members of `world` sharing memory).
int node_ranks(const Comm& world);
// The node of each member of `comm` (collective): node[r] for group rank r,
// nodes numbered 0, 1, ... in the order of their lowest member. Members share
// a node when they share memory (MPI_Comm_split_type SHARED).
std::vector<int> node_of(const Comm& comm);
// CPU threads each rank should use when train.threads = 0, and where the
// number came from: OMP_NUM_THREADS when set (its first entry; anything but a
// positive integer is a ConfigError), else the CPUs this process may run on
// divided among the job's ranks on this node (at least 1). Collective over
// `world` (it counts the ranks on the node) whatever the environment says.
struct ThreadCount {
  int threads = 1;
  std::string source;  // "OMP_NUM_THREADS" or "affinity share"
};
ThreadCount default_thread_count(const Comm& world);
int default_threads(const Comm& world);  // default_thread_count(world).threads

}  // namespace sy
