#include "comm/comm.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "comm/backend.h"
#include "comm/watchdog.h"
#include "core/check.h"

namespace sy {

namespace {
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

// ---------------------------------------------------------------- Request

Request::Request() = default;

Request::Request(std::unique_ptr<RequestImpl> impl, std::string what, const Comm* comm)
    : impl_(std::move(impl)), what_(std::move(what)), comm_(comm) {}

Request::Request(Request&& o) noexcept = default;

Request& Request::operator=(Request&& o) noexcept {
  if (this != &o) {
    if (pending()) wait();
    impl_ = std::move(o.impl_);
    what_ = std::move(o.what_);
    comm_ = o.comm_;
  }
  return *this;
}

Request::~Request() = default;  // a pending backend request finishes in its destructor

bool Request::test() {
  if (!pending()) return true;
  if (!impl_->test()) return false;
  impl_.reset();
  return true;
}

void Request::wait() {
  if (!pending()) return;
  {
    watchdog::Scope scope(what_.c_str(), comm_ ? comm_->describe() : "?",
                          comm_ ? comm_->world_ranks() : std::vector<int>{});
    impl_->wait();
  }
  impl_.reset();
}

void wait_all(std::vector<Request>& reqs) {
  for (Request& r : reqs) r.wait();
  reqs.clear();
}

// ---------------------------------------------------------------- Comm

Comm::Comm(std::shared_ptr<const CommBackend> backend, std::string name)
    : backend_(std::move(backend)), name_(std::move(name)) {
  SY_CHECK(backend_ != nullptr, "communicator '{}' has no backend", name_);
  rank_ = backend_->rank();
  size_ = backend_->size();
  world_ranks_ = backend_->world_ranks();
}

std::string Comm::describe() const {
  return fmt::format("{} (world rank{} {})", name_, world_ranks_.size() == 1 ? "" : "s", ranges(world_ranks_));
}

Comm Comm::split(int color, int key, const std::string& name) const {
  if (solo()) return Comm();
  return Comm(backend_->split(color, key), name);
}

bool Comm::device_buffers() const { return backend_ && backend_->device_buffers(); }

Comm Comm::over(const Remake& make) const {
  if (solo()) return Comm();
  return Comm(make(backend_), name_);
}

void Comm::barrier() const { barrier_as("barrier"); }

void Comm::barrier_as(const char* what) const {
  if (solo()) return;
  watchdog::Scope scope(what, describe(), world_ranks_);
  backend_->barrier();
}

void Comm::allreduce(void* data, size_t n, DType t, ReduceOp op) const {
  if (solo()) return;
  watchdog::Scope scope("allreduce", describe(), world_ranks_);
  backend_->allreduce(data, n, t, op);
}

void Comm::bcast_bytes(void* data, size_t bytes, int root) const {
  if (solo()) return;
  watchdog::Scope scope("broadcast", describe(), world_ranks_);
  backend_->bcast(data, bytes, root);
}

void Comm::allgather_bytes(const void* send, size_t bytes, void* recv) const {
  if (solo()) {
    std::memcpy(recv, send, bytes);
    return;
  }
  watchdog::Scope scope("allgather", describe(), world_ranks_);
  backend_->allgather(send, bytes, recv);
}

void Comm::allgatherv_typed(const void* send, int64_t n, void* recv, const std::vector<int64_t>& counts,
                            const std::vector<int64_t>& displs, DType t, size_t elem) const {
  if (solo()) {
    std::memcpy(static_cast<char*>(recv) + displs[0] * static_cast<int64_t>(elem), send, static_cast<size_t>(n) * elem);
    return;
  }
  watchdog::Scope scope("allgatherv", describe(), world_ranks_);
  backend_->allgatherv(send, n, recv, counts, displs, t);
}

void Comm::alltoall_bytes(const void* send, size_t bytes, void* recv) const {
  if (solo()) {
    std::memcpy(recv, send, bytes);
    return;
  }
  watchdog::Scope scope("alltoall", describe(), world_ranks_);
  backend_->alltoall(send, bytes, recv);
}

void Comm::alltoallv_typed(const void* send, const std::vector<int64_t>& scount, const std::vector<int64_t>& sdispl,
                           void* recv, const std::vector<int64_t>& rcount, const std::vector<int64_t>& rdispl, DType t,
                           size_t elem) const {
  if (solo()) {
    if (scount[0] > 0)
      std::memmove(static_cast<char*>(recv) + rdispl[0] * static_cast<int64_t>(elem),
                   static_cast<const char*>(send) + sdispl[0] * static_cast<int64_t>(elem),
                   static_cast<size_t>(scount[0]) * elem);
    return;
  }
  watchdog::Scope scope("alltoallv", describe(), world_ranks_);
  backend_->alltoallv(send, scount, sdispl, recv, rcount, rdispl, t);
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
  return Request(backend_->ialltoallv_rows(send, scount, sdispl, recv, rcount, rdispl, row, what), what, this);
}

Request Comm::isend(const float* data, int64_t n, int peer, int tag, const char* what) const {
  SY_CHECK(!solo() && peer >= 0 && peer < size_, "{}: no member {} in {}", what, peer, describe());
  return Request(backend_->isend(data, n, peer, tag, what), what, this);
}

Request Comm::irecv(float* data, int64_t n, int peer, int tag, const char* what) const {
  SY_CHECK(!solo() && peer >= 0 && peer < size_, "{}: no member {} in {}", what, peer, describe());
  return Request(backend_->irecv(data, n, peer, tag, what), what, this);
}

Request Comm::iallreduce_sum(float* data, int64_t n, const char* what) const {
  if (solo()) return {};
  return Request(backend_->iallreduce_sum(data, n, what), what, this);
}

Request Comm::ireduce_scatter_sum(const float* data, float* recv, const std::vector<int64_t>& counts,
                                  const char* what) const {
  if (solo()) {
    if (data != recv) std::memcpy(recv, data, static_cast<size_t>(counts[0]) * sizeof(float));
    return {};
  }
  return Request(backend_->ireduce_scatter_sum(data, recv, counts, what), what, this);
}

Request Comm::iallgatherv(float* data, const std::vector<int64_t>& counts, const std::vector<int64_t>& displs,
                          const char* what) const {
  if (solo()) return {};
  return Request(backend_->iallgatherv(data, counts, displs, what), what, this);
}

void Comm::abort(int code) const {
  if (backend_) backend_->abort(code);
  abort_job(code);
}

int node_ranks(const Comm& world) { return world.solo() ? 1 : world.backend()->node_size(); }

std::vector<int> node_of(const Comm& comm) {
  if (comm.solo()) return {0};
  int leader = 0;
  {
    watchdog::Scope scope("node layout", comm.describe(), comm.world_ranks());
    leader = comm.backend()->node_leader();
  }
  std::vector<int> leaders(static_cast<size_t>(comm.size()));
  comm.allgather(&leader, 1, leaders.data());
  std::vector<int> node(leaders.size()), seen;
  for (size_t r = 0; r < leaders.size(); ++r) {
    auto it = std::find(seen.begin(), seen.end(), leaders[r]);
    node[r] = static_cast<int>(it - seen.begin());
    if (it == seen.end()) seen.push_back(leaders[r]);
  }
  return node;
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
