// The communicator: moves typed buffers between ranks and knows nothing of
// the model. MPI backend.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace sy {

// MPI_Init_thread / MPI_Finalize for the life of main().
class MpiEnv {
 public:
  MpiEnv(int* argc, char*** argv);
  ~MpiEnv();
  MpiEnv(const MpiEnv&) = delete;
  MpiEnv& operator=(const MpiEnv&) = delete;
};

template <class T>
MPI_Datatype mpi_type();
template <> inline MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <> inline MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }
template <> inline MPI_Datatype mpi_type<int32_t>() { return MPI_INT32_T; }
template <> inline MPI_Datatype mpi_type<int64_t>() { return MPI_INT64_T; }
template <> inline MPI_Datatype mpi_type<uint8_t>() { return MPI_UINT8_T; }

class Comm {
 public:
  Comm() : comm_(MPI_COMM_NULL) {}
  explicit Comm(MPI_Comm c) : comm_(c) {}
  static Comm world() { return Comm(MPI_COMM_WORLD); }

  int rank() const;
  int size() const;
  MPI_Comm raw() const { return comm_; }

  void barrier() const;
  template <class T>
  void allreduce_sum(T* data, size_t n) const { allreduce(data, n, mpi_type<T>(), MPI_SUM); }
  template <class T>
  void allreduce_max(T* data, size_t n) const { allreduce(data, n, mpi_type<T>(), MPI_MAX); }
  template <class T>
  void bcast(T* data, size_t n, int root) const { bcast_bytes(data, n * sizeof(T), root); }
  void bcast_bytes(void* data, size_t bytes, int root) const;

  // Ends every rank of the job (a rank that throws while others wait in a
  // collective would otherwise hang them).
  [[noreturn]] void abort(int code) const;

 private:
  void allreduce(void* data, size_t n, MPI_Datatype t, MPI_Op op) const;
  MPI_Comm comm_;
};

std::string host_name();

}  // namespace sy
