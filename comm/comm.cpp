#include "comm/comm.h"

#include <unistd.h>

#include <climits>

#include "core/check.h"

namespace sy {

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return fmt::format("MPI error {}", code);
  return std::string(buf, static_cast<size_t>(len));
}

MpiEnv::MpiEnv(int* argc, char*** argv) {
  int provided = 0;
  SY_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  // Errors come back as codes and become exceptions (SY_MPI_CHECK).
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

MpiEnv::~MpiEnv() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

int Comm::rank() const {
  int r = 0;
  SY_MPI_CHECK(MPI_Comm_rank(comm_, &r));
  return r;
}

int Comm::size() const {
  int s = 0;
  SY_MPI_CHECK(MPI_Comm_size(comm_, &s));
  return s;
}

void Comm::barrier() const { SY_MPI_CHECK(MPI_Barrier(comm_)); }

void Comm::allreduce(void* data, size_t n, MPI_Datatype t, MPI_Op op) const {
  SY_CHECK(n <= INT_MAX, "allreduce of {} elements exceeds MPI's int count", n);
  SY_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), t, op, comm_));
}

void Comm::bcast_bytes(void* data, size_t bytes, int root) const {
  SY_CHECK(bytes <= INT_MAX, "broadcast of {} bytes exceeds MPI's int count", bytes);
  SY_MPI_CHECK(MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, root, comm_));
}

void Comm::abort(int code) const {
  MPI_Abort(comm_, code);
  std::_Exit(code);
}

std::string host_name() {
  char buf[256] = {};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

}  // namespace sy
