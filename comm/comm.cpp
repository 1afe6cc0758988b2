#include "comm/comm.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>

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

// A contiguous datatype of `row` floats, created once per row length.
MPI_Datatype row_type(int64_t row) {
  static std::map<int64_t, MPI_Datatype> cache;
  auto it = cache.find(row);
  if (it != cache.end()) return it->second;
  MPI_Datatype t;
  SY_MPI_CHECK(MPI_Type_contiguous(as_count(row, "row length"), MPI_FLOAT, &t));
  SY_MPI_CHECK(MPI_Type_commit(&t));
  cache.emplace(row, t);
  return t;
}

std::string ranges(const std::vector<int>& r) {
  if (r.empty()) return "";
  std::string out;
  size_t i = 0;
  while (i < r.size()) {
    size_t j = i;
    while (j + 1 < r.size() && r[j + 1] == r[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += j == i ? fmt::format("{}", r[i]) : fmt::format("{}-{}", r[i], r[j]);
    i = j + 1;
  }
  return out;
}
}  // namespace

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return fmt::format("MPI error {}", code);
  return std::string(buf, static_cast<size_t>(len));
}

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

// ---------------------------------------------------------------- Request

Request::Request(MPI_Request r, std::string what, const Comm* comm, Counts counts)
    : req_(r), what_(std::move(what)), comm_(comm), counts_(std::move(counts)) {}

Request::Request(Request&& o) noexcept
    : req_(o.req_), what_(std::move(o.what_)), comm_(o.comm_), counts_(std::move(o.counts_)) {
  o.req_ = MPI_REQUEST_NULL;
}

Request& Request::operator=(Request&& o) noexcept {
  if (this != &o) {
    if (pending()) wait();
    req_ = o.req_;
    what_ = std::move(o.what_);
    comm_ = o.comm_;
    counts_ = std::move(o.counts_);
    o.req_ = MPI_REQUEST_NULL;
  }
  return *this;
}

Request::~Request() {
  if (pending()) MPI_Wait(&req_, MPI_STATUS_IGNORE);
}

bool Request::test() {
  if (!pending()) return true;
  int flag = 0;
  SY_MPI_CHECK(MPI_Test(&req_, &flag, MPI_STATUS_IGNORE));
  return flag != 0;
}

void Request::wait() {
  if (!pending()) return;
  watchdog::Scope scope(what_.c_str(), comm_ ? comm_->describe() : "?", comm_ ? comm_->world_ranks() : std::vector<int>{});
  SY_MPI_CHECK(MPI_Wait(&req_, MPI_STATUS_IGNORE));
}

void wait_all(std::vector<Request>& reqs) {
  for (Request& r : reqs) r.wait();
  reqs.clear();
}

// ---------------------------------------------------------------- Comm

Comm::Comm(MPI_Comm c, std::string name) : comm_(c), name_(std::move(name)) {
  SY_MPI_CHECK(MPI_Comm_rank(c, &rank_));
  SY_MPI_CHECK(MPI_Comm_size(c, &size_));
  MPI_Group g, wg;
  MPI_Comm_group(c, &g);
  MPI_Comm_group(MPI_COMM_WORLD, &wg);
  std::vector<int> mine(static_cast<size_t>(size_));
  for (int i = 0; i < size_; ++i) mine[static_cast<size_t>(i)] = i;
  world_ranks_.assign(static_cast<size_t>(size_), 0);
  MPI_Group_translate_ranks(g, size_, mine.data(), wg, world_ranks_.data());
  MPI_Group_free(&g);
  MPI_Group_free(&wg);
}

Comm Comm::world() { return Comm(MPI_COMM_WORLD, "world"); }

std::string Comm::describe() const {
  return fmt::format("{} (world rank{} {})", name_, world_ranks_.size() == 1 ? "" : "s", ranges(world_ranks_));
}

Comm Comm::split(int color, int key, const std::string& name) const {
  if (solo()) return Comm();
  MPI_Comm c;
  SY_MPI_CHECK(MPI_Comm_split(comm_, color, key, &c));
  MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN);
  return Comm(c, name);
}

void Comm::barrier() const { barrier_as("barrier"); }

void Comm::barrier_as(const char* what) const {
  if (solo()) return;
  watchdog::Scope scope(what, describe(), world_ranks_);
  SY_MPI_CHECK(MPI_Barrier(comm_));
}

void Comm::allreduce(void* data, size_t n, MPI_Datatype t, MPI_Op op) const {
  if (solo()) return;
  watchdog::Scope scope("allreduce", describe(), world_ranks_);
  SY_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data, as_count(static_cast<int64_t>(n), "allreduce"), t, op, comm_));
}

void Comm::bcast_bytes(void* data, size_t bytes, int root) const {
  if (solo()) return;
  watchdog::Scope scope("broadcast", describe(), world_ranks_);
  SY_MPI_CHECK(MPI_Bcast(data, as_count(static_cast<int64_t>(bytes), "broadcast"), MPI_BYTE, root, comm_));
}

void Comm::allgather_bytes(const void* send, size_t bytes, void* recv) const {
  if (solo()) {
    std::memcpy(recv, send, bytes);
    return;
  }
  watchdog::Scope scope("allgather", describe(), world_ranks_);
  int n = as_count(static_cast<int64_t>(bytes), "allgather");
  SY_MPI_CHECK(MPI_Allgather(send, n, MPI_BYTE, recv, n, MPI_BYTE, comm_));
}

void Comm::allgatherv_typed(const void* send, int64_t n, void* recv, const std::vector<int64_t>& counts,
                            const std::vector<int64_t>& displs, MPI_Datatype t, size_t elem) const {
  if (solo()) {
    std::memcpy(static_cast<char*>(recv) + displs[0] * static_cast<int64_t>(elem), send, static_cast<size_t>(n) * elem);
    return;
  }
  watchdog::Scope scope("allgatherv", describe(), world_ranks_);
  auto c = as_counts(counts, "allgatherv"), d = as_counts(displs, "allgatherv");
  SY_MPI_CHECK(MPI_Allgatherv(send, as_count(n, "allgatherv"), t, recv, c.data(), d.data(), t, comm_));
}

void Comm::alltoall_bytes(const void* send, size_t bytes, void* recv) const {
  if (solo()) {
    std::memcpy(recv, send, bytes);
    return;
  }
  watchdog::Scope scope("alltoall", describe(), world_ranks_);
  int n = as_count(static_cast<int64_t>(bytes), "alltoall");
  SY_MPI_CHECK(MPI_Alltoall(send, n, MPI_BYTE, recv, n, MPI_BYTE, comm_));
}

void Comm::alltoallv_rows(const float* send, const std::vector<int64_t>& scount, const std::vector<int64_t>& sdispl,
                          float* recv, const std::vector<int64_t>& rcount, const std::vector<int64_t>& rdispl,
                          int64_t row, const char* what) const {
  Request r = ialltoallv_rows(send, scount, sdispl, recv, rcount, rdispl, row, what);
  r.wait();
}

Request Comm::ialltoallv_rows(const float* send, const std::vector<int64_t>& scount,
                              const std::vector<int64_t>& sdispl, float* recv, const std::vector<int64_t>& rcount,
                              const std::vector<int64_t>& rdispl, int64_t row, const char* what) const {
  if (solo()) {
    if (send != recv || sdispl[0] != rdispl[0])
      std::memmove(recv + rdispl[0] * row, send + sdispl[0] * row, static_cast<size_t>(scount[0] * row) * sizeof(float));
    return {};
  }
  MPI_Datatype t = row_type(row);
  auto sc = as_counts(scount, what), sd = as_counts(sdispl, what), rc = as_counts(rcount, what),
       rd = as_counts(rdispl, what);
  MPI_Request req;
  SY_MPI_CHECK(MPI_Ialltoallv(send, sc.data(), sd.data(), t, recv, rc.data(), rd.data(), t, comm_, &req));
  return Request(req, what, this, {std::move(sc), std::move(sd), std::move(rc), std::move(rd)});
}

Request Comm::isend(const float* data, int64_t n, int peer, int tag, const char* what) const {
  SY_CHECK(!solo() && peer >= 0 && peer < size_, "{}: no member {} in {}", what, peer, describe());
  MPI_Request req;
  SY_MPI_CHECK(MPI_Isend(data, as_count(n, what), MPI_FLOAT, peer, tag, comm_, &req));
  return Request(req, what, this);
}

Request Comm::irecv(float* data, int64_t n, int peer, int tag, const char* what) const {
  SY_CHECK(!solo() && peer >= 0 && peer < size_, "{}: no member {} in {}", what, peer, describe());
  MPI_Request req;
  SY_MPI_CHECK(MPI_Irecv(data, as_count(n, what), MPI_FLOAT, peer, tag, comm_, &req));
  return Request(req, what, this);
}

Request Comm::iallreduce_sum(float* data, int64_t n, const char* what) const {
  if (solo()) return {};
  MPI_Request req;
  SY_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data, as_count(n, what), MPI_FLOAT, MPI_SUM, comm_, &req));
  return Request(req, what, this);
}

Request Comm::ireduce_scatter_sum(const float* data, float* recv, const std::vector<int64_t>& counts,
                                  const char* what) const {
  if (solo()) {
    if (data != recv) std::memcpy(recv, data, static_cast<size_t>(counts[0]) * sizeof(float));
    return {};
  }
  auto c = as_counts(counts, what);
  MPI_Request req;
  SY_MPI_CHECK(MPI_Ireduce_scatter(data, recv, c.data(), MPI_FLOAT, MPI_SUM, comm_, &req));
  return Request(req, what, this, {std::move(c)});
}

Request Comm::iallgatherv(float* data, const std::vector<int64_t>& counts, const std::vector<int64_t>& displs,
                          const char* what) const {
  if (solo()) return {};
  auto c = as_counts(counts, what), d = as_counts(displs, what);
  MPI_Request req;
  SY_MPI_CHECK(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, c.data(), d.data(), MPI_FLOAT, comm_, &req));
  return Request(req, what, this, {std::move(c), std::move(d)});
}

void Comm::abort(int code) const {
  int init = 0;
  MPI_Initialized(&init);
  if (init) MPI_Abort(solo() ? MPI_COMM_WORLD : comm_, code);
  std::_Exit(code);
}

int node_ranks(const Comm& world) {
  if (world.solo()) return 1;
  MPI_Comm node;
  SY_MPI_CHECK(MPI_Comm_split_type(world.raw(), MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  int n = 1;
  MPI_Comm_size(node, &n);
  MPI_Comm_free(&node);
  return n;
}

ThreadCount default_thread_count(const Comm& world) {
  const int ranks = node_ranks(world);  // collective: every rank calls it, whatever its environment
  if (const char* env = std::getenv("OMP_NUM_THREADS"); env && *env) {
    // OpenMP's syntax is a list per nesting level ("4,2"): the first entry
    // is the team size of the outermost level, the one that matters here.
    std::string first(env);
    first = first.substr(0, first.find(','));
    first.erase(0, first.find_first_not_of(" \t"));
    first.erase(first.find_last_not_of(" \t") + 1);
    const bool digits = !first.empty() && first.size() <= 9 &&
                        std::all_of(first.begin(), first.end(), [](char c) { return c >= '0' && c <= '9'; });
    const int n = digits ? std::atoi(first.c_str()) : 0;
    SY_CONFIG_CHECK(n > 0, "OMP_NUM_THREADS = '{}' is not a positive integer; unset it, or set train.threads", env);
    return {n, "OMP_NUM_THREADS"};
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  int mine = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  int online = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  // Bound to a subset already (mpirun --bind-to core): use it all; else share.
  return {std::max(1, std::min(mine, online / ranks)), "affinity share"};
}

int default_threads(const Comm& world) { return default_thread_count(world).threads; }

std::string host_name() {
  char buf[256] = {};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

}  // namespace sy
