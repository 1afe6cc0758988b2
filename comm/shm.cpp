#include "comm/shm.h"

#include <algorithm>

#include "comm/backend.h"
#include "comm/watchdog.h"
#include "core/check.h"

namespace sy {

bool same_node(const Comm& comm) {
  if (comm.solo()) return true;
  int all = comm.backend()->node_size() == comm.size();
  comm.allreduce_min(&all, 1);
  return all != 0;
}

SharedWindow::SharedWindow() = default;

SharedWindow::~SharedWindow() { release(); }

SharedWindow::SharedWindow(SharedWindow&& o) noexcept
    : segments_(std::move(o.segments_)), capacity_(o.capacity_), me_(o.me_) {
  o.capacity_ = 0;
}

SharedWindow& SharedWindow::operator=(SharedWindow&& o) noexcept {
  if (this != &o) {
    release();
    segments_ = std::move(o.segments_), capacity_ = o.capacity_, me_ = o.me_;
    o.capacity_ = 0;
  }
  return *this;
}

float* SharedWindow::local() const { return segments_ ? segments_->peers()[static_cast<size_t>(me_)] : nullptr; }

float* const* SharedWindow::peers() const { return segments_ ? segments_->peers().data() : nullptr; }

void SharedWindow::release() {
  segments_.reset();
  capacity_ = 0;
}

void SharedWindow::ensure(const Comm& comm, int64_t floats) {
  SY_CHECK(!comm.solo(), "SharedWindow needs a multi-rank group");
  int grow = floats > capacity_;
  {
    watchdog::Scope scope("shared-window size check", comm.describe(), comm.world_ranks());
    comm.backend()->allreduce(&grow, 1, DType::i32, ReduceOp::max);
  }
  if (!grow) return;
  int64_t want = std::max<int64_t>(floats, capacity_ + capacity_ / 2);
  release();
  me_ = comm.rank();
  segments_ = comm.backend()->allocate_shared(want);
  capacity_ = want;
}

void SharedWindow::fence(const Comm& comm, const char* what) const {
  segments_->sync();
  comm.barrier_as(what);
  segments_->sync();
}

}  // namespace sy
