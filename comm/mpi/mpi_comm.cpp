#include "comm/mpi/mpi_comm.h"

#include <climits>
#include <exception>
#include <cstdlib>
#include <map>
#include <mutex>

#include "comm/watchdog.h"
#include "core/check.h"

namespace sy {

namespace {

bool g_thread_multiple = false;

int as_count(int64_t n, const char* what) {
  SY_CHECK(n >= 0 && n <= INT_MAX, "{}: count {} exceeds MPI's int range", what, n);
  return static_cast<int>(n);
}

std::vector<int> as_counts(const std::vector<int64_t>& v, const char* what) {
  std::vector<int> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = as_count(v[i], what);
  return out;
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::u8: return MPI_UINT8_T;
    default: break;  // the storage-only types (bf16, fp8, u16) are not communicated
  }
  SY_FAIL("unknown element type {}", static_cast<int>(t));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return MPI_SUM;
    case ReduceOp::max: return MPI_MAX;
    case ReduceOp::min: return MPI_MIN;
  }
  SY_FAIL("unknown reduction {}", static_cast<int>(op));
}

// A contiguous datatype of `row` floats, created once per row length.
MPI_Datatype row_type(int64_t row) {
  static std::mutex mu;
  static std::map<int64_t, MPI_Datatype> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(row);
  if (it != cache.end()) return it->second;
  MPI_Datatype t;
  SY_MPI_CHECK(MPI_Type_contiguous(as_count(row, "row length"), MPI_FLOAT, &t));
  SY_MPI_CHECK(MPI_Type_commit(&t));
  cache.emplace(row, t);
  return t;
}

// An MPI request and the count / displacement arrays MPI reads until it completes.
class MpiRequest final : public RequestImpl {
 public:
  MpiRequest(MPI_Request r, std::vector<std::vector<int>> counts) : req_(r), counts_(std::move(counts)) {}
  ~MpiRequest() override {
    if (req_ != MPI_REQUEST_NULL) MPI_Wait(&req_, MPI_STATUS_IGNORE);
  }
  bool test() override {
    if (req_ == MPI_REQUEST_NULL) return true;
    int flag = 0;
    SY_MPI_CHECK(MPI_Test(&req_, &flag, MPI_STATUS_IGNORE));
    return flag != 0;
  }
  void wait() override {
    if (req_ != MPI_REQUEST_NULL) SY_MPI_CHECK(MPI_Wait(&req_, MPI_STATUS_IGNORE));
  }

 private:
  MPI_Request req_;
  std::vector<std::vector<int>> counts_;
};

std::unique_ptr<RequestImpl> request(MPI_Request r, std::vector<std::vector<int>> counts = {}) {
  return std::make_unique<MpiRequest>(r, std::move(counts));
}

// An MPI-3 shared-memory window, locked for passive access for its life.
class MpiSharedSegments final : public SharedSegmentsImpl {
 public:
  MpiSharedSegments(MPI_Comm comm, int64_t floats) {
    int size = 0;
    MPI_Comm_size(comm, &size);
    float* mine = nullptr;
    SY_MPI_CHECK(MPI_Win_allocate_shared(static_cast<MPI_Aint>(std::max<int64_t>(floats, 1) * 4), sizeof(float),
                                         MPI_INFO_NULL, comm, &mine, &win_));
    peers_.assign(static_cast<size_t>(size), nullptr);
    for (int r = 0; r < size; ++r) {
      MPI_Aint bytes = 0;
      int unit = 0;
      void* base = nullptr;
      SY_MPI_CHECK(MPI_Win_shared_query(win_, r, &bytes, &unit, &base));
      peers_[static_cast<size_t>(r)] = static_cast<float*>(base);
    }
    SY_MPI_CHECK(MPI_Win_lock_all(MPI_MODE_NOCHECK, win_));
  }
  ~MpiSharedSegments() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    // MPI_Win_free is collective: while an exception unwinds this rank (its
    // error is about to abort the job), the other ranks are not freeing the
    // window with it, and waiting for them would hang until the watchdog.
    if (!finalized && std::uncaught_exceptions() == 0) {
      MPI_Win_unlock_all(win_);
      MPI_Win_free(&win_);
    }
  }
  const std::vector<float*>& peers() const override { return peers_; }
  void sync() override { MPI_Win_sync(win_); }

 private:
  MPI_Win win_ = MPI_WIN_NULL;
  std::vector<float*> peers_;
};

}  // namespace

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return fmt::format("MPI error {}", code);
  return std::string(buf, static_cast<size_t>(len));
}

// ---------------------------------------------------------------- MpiEnv (declared in comm.h)

MpiEnv::MpiEnv(int* argc, char*** argv) {
  int provided = 0;
  SY_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  g_thread_multiple = provided >= MPI_THREAD_MULTIPLE;
  // Errors come back as codes and become exceptions (SY_MPI_CHECK).
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

MpiEnv::~MpiEnv() {
  watchdog::stop();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

bool MpiEnv::thread_multiple() { return g_thread_multiple; }

Comm Comm::world() { return Comm(std::make_shared<MpiBackend>(MPI_COMM_WORLD), "world"); }

// ---------------------------------------------------------------- MpiBackend

// Communicators made by split() live until MPI_Finalize, as groups do for
// the whole run (MPI_Comm_free is collective: freeing one when the last
// handle goes could deadlock ranks that drop theirs at different moments).
MpiBackend::MpiBackend(MPI_Comm c) : comm_(c) {
  SY_MPI_CHECK(MPI_Comm_rank(c, &rank_));
  SY_MPI_CHECK(MPI_Comm_size(c, &size_));
}

MpiBackend::~MpiBackend() = default;

std::vector<int> MpiBackend::world_ranks() const {
  MPI_Group g, wg;
  MPI_Comm_group(comm_, &g);
  MPI_Comm_group(MPI_COMM_WORLD, &wg);
  std::vector<int> mine(static_cast<size_t>(size_)), out(static_cast<size_t>(size_), 0);
  for (int i = 0; i < size_; ++i) mine[static_cast<size_t>(i)] = i;
  MPI_Group_translate_ranks(g, size_, mine.data(), wg, out.data());
  MPI_Group_free(&g);
  MPI_Group_free(&wg);
  return out;
}

std::shared_ptr<const CommBackend> MpiBackend::split(int color, int key) const {
  MPI_Comm c;
  SY_MPI_CHECK(MPI_Comm_split(comm_, color, key, &c));
  MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN);
  return std::make_shared<MpiBackend>(c);
}

int MpiBackend::node_size() const {
  MPI_Comm node;
  SY_MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  int n = 1;
  MPI_Comm_size(node, &n);
  MPI_Comm_free(&node);
  return n;
}

void MpiBackend::barrier() const { SY_MPI_CHECK(MPI_Barrier(comm_)); }

void MpiBackend::allreduce(void* data, size_t n, DType t, ReduceOp op) const {
  SY_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data, as_count(static_cast<int64_t>(n), "allreduce"), mpi_type(t),
                             mpi_op(op), comm_));
}

void MpiBackend::bcast(void* data, size_t bytes, int root) const {
  SY_MPI_CHECK(MPI_Bcast(data, as_count(static_cast<int64_t>(bytes), "broadcast"), MPI_BYTE, root, comm_));
}

void MpiBackend::allgather(const void* send, size_t bytes, void* recv) const {
  const int n = as_count(static_cast<int64_t>(bytes), "allgather");
  SY_MPI_CHECK(MPI_Allgather(send, n, MPI_BYTE, recv, n, MPI_BYTE, comm_));
}

void MpiBackend::allgatherv(const void* send, int64_t n, void* recv, const Counts& counts, const Counts& displs,
                            DType t) const {
  auto c = as_counts(counts, "allgatherv"), d = as_counts(displs, "allgatherv");
  SY_MPI_CHECK(MPI_Allgatherv(send, as_count(n, "allgatherv"), mpi_type(t), recv, c.data(), d.data(), mpi_type(t),
                              comm_));
}

void MpiBackend::alltoall(const void* send, size_t bytes, void* recv) const {
  const int n = as_count(static_cast<int64_t>(bytes), "alltoall");
  SY_MPI_CHECK(MPI_Alltoall(send, n, MPI_BYTE, recv, n, MPI_BYTE, comm_));
}

std::unique_ptr<RequestImpl> MpiBackend::ialltoallv_rows(const float* send, const Counts& scount,
                                                         const Counts& sdispl, float* recv, const Counts& rcount,
                                                         const Counts& rdispl, int64_t row, const char* what) const {
  MPI_Datatype t = row_type(row);
  auto sc = as_counts(scount, what), sd = as_counts(sdispl, what), rc = as_counts(rcount, what),
       rd = as_counts(rdispl, what);
  MPI_Request req;
  SY_MPI_CHECK(MPI_Ialltoallv(send, sc.data(), sd.data(), t, recv, rc.data(), rd.data(), t, comm_, &req));
  return request(req, {std::move(sc), std::move(sd), std::move(rc), std::move(rd)});
}

std::unique_ptr<RequestImpl> MpiBackend::isend(const float* data, int64_t n, int peer, int tag,
                                               const char* what) const {
  MPI_Request req;
  SY_MPI_CHECK(MPI_Isend(data, as_count(n, what), MPI_FLOAT, peer, tag, comm_, &req));
  return request(req);
}

std::unique_ptr<RequestImpl> MpiBackend::irecv(float* data, int64_t n, int peer, int tag, const char* what) const {
  MPI_Request req;
  SY_MPI_CHECK(MPI_Irecv(data, as_count(n, what), MPI_FLOAT, peer, tag, comm_, &req));
  return request(req);
}

std::unique_ptr<RequestImpl> MpiBackend::iallreduce_sum(float* data, int64_t n, const char* what) const {
  MPI_Request req;
  SY_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data, as_count(n, what), MPI_FLOAT, MPI_SUM, comm_, &req));
  return request(req);
}

std::unique_ptr<RequestImpl> MpiBackend::ireduce_scatter_sum(const float* data, float* recv, const Counts& counts,
                                                             const char* what) const {
  auto c = as_counts(counts, what);
  MPI_Request req;
  SY_MPI_CHECK(MPI_Ireduce_scatter(data, recv, c.data(), MPI_FLOAT, MPI_SUM, comm_, &req));
  return request(req, {std::move(c)});
}

std::unique_ptr<RequestImpl> MpiBackend::iallgatherv(float* data, const Counts& counts, const Counts& displs,
                                                     const char* what) const {
  auto c = as_counts(counts, what), d = as_counts(displs, what);
  MPI_Request req;
  SY_MPI_CHECK(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, c.data(), d.data(), MPI_FLOAT, comm_, &req));
  return request(req, {std::move(c), std::move(d)});
}

std::unique_ptr<SharedSegmentsImpl> MpiBackend::allocate_shared(int64_t floats) const {
  return std::make_unique<MpiSharedSegments>(comm_, floats);
}

void MpiBackend::abort(int code) const {
  int init = 0;
  MPI_Initialized(&init);
  if (init) MPI_Abort(comm_, code);
  std::_Exit(code);
}

MPI_Comm mpi_handle(const Comm& c) {
  const auto* b = dynamic_cast<const MpiBackend*>(c.backend());
  return b ? b->handle() : MPI_COMM_NULL;
}

void mpi_abort_world(int code) {
  int init = 0;
  MPI_Initialized(&init);
  if (init) MPI_Abort(MPI_COMM_WORLD, code);
}

void abort_job(int code) {
  mpi_abort_world(code);
  std::_Exit(code);
}

}  // namespace sy
