#include "comm/shm.h"

#include "comm/watchdog.h"
#include "core/check.h"

namespace sy {

bool same_node(const Comm& comm) {
  if (comm.solo()) return true;
  MPI_Comm node;
  SY_MPI_CHECK(MPI_Comm_split_type(comm.raw(), MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  int n = 0;
  MPI_Comm_size(node, &n);
  MPI_Comm_free(&node);
  int all = n == comm.size(), both = all;
  SY_MPI_CHECK(MPI_Allreduce(&all, &both, 1, MPI_INT, MPI_MIN, comm.raw()));
  return both != 0;
}

SharedWindow::~SharedWindow() { release(); }

SharedWindow::SharedWindow(SharedWindow&& o) noexcept
    : win_(o.win_), capacity_(o.capacity_), me_(o.me_), peers_(std::move(o.peers_)) {
  o.win_ = MPI_WIN_NULL;
  o.capacity_ = 0;
}

SharedWindow& SharedWindow::operator=(SharedWindow&& o) noexcept {
  if (this != &o) {
    release();
    win_ = o.win_, capacity_ = o.capacity_, me_ = o.me_, peers_ = std::move(o.peers_);
    o.win_ = MPI_WIN_NULL;
    o.capacity_ = 0;
  }
  return *this;
}

void SharedWindow::release() {
  if (win_ != MPI_WIN_NULL) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
      MPI_Win_unlock_all(win_);
      MPI_Win_free(&win_);
    }
    win_ = MPI_WIN_NULL;
  }
  peers_.clear();
  capacity_ = 0;
}

void SharedWindow::ensure(const Comm& comm, int64_t floats) {
  SY_CHECK(!comm.solo(), "SharedWindow needs a multi-rank group");
  int grow = floats > capacity_, any = grow;
  {
    watchdog::Scope scope("shared-window size check", comm.describe(), comm.world_ranks());
    SY_MPI_CHECK(MPI_Allreduce(&grow, &any, 1, MPI_INT, MPI_MAX, comm.raw()));
  }
  if (!any) return;
  int64_t want = std::max<int64_t>(floats, capacity_ + capacity_ / 2);
  release();
  me_ = comm.rank();
  float* mine = nullptr;
  SY_MPI_CHECK(MPI_Win_allocate_shared(static_cast<MPI_Aint>(std::max<int64_t>(want, 1) * 4), sizeof(float),
                                       MPI_INFO_NULL, comm.raw(), &mine, &win_));
  peers_.assign(static_cast<size_t>(comm.size()), nullptr);
  for (int r = 0; r < comm.size(); ++r) {
    MPI_Aint size = 0;
    int unit = 0;
    void* base = nullptr;
    SY_MPI_CHECK(MPI_Win_shared_query(win_, r, &size, &unit, &base));
    peers_[static_cast<size_t>(r)] = static_cast<float*>(base);
  }
  SY_MPI_CHECK(MPI_Win_lock_all(MPI_MODE_NOCHECK, win_));
  capacity_ = want;
}

void SharedWindow::fence(const Comm& comm, const char* what) const {
  MPI_Win_sync(win_);
  comm.barrier_as(what);
  MPI_Win_sync(win_);
}

}  // namespace sy
