#include "moe/transport/mpi_overlap.h"

#include <vector>

#include "moe/ep_dispatch.h"

namespace sy {

// Every chunk posted before the shared experts run; chunk c's experts run
// as soon as it has landed and its outputs are posted back at once, while
// the later chunks are kept moving (test).
void MpiOverlapDispatcher::exchange(Pass pass, const EpDispatch& plan, const Rows& rows, DispatchLayer&,
                                    DispatchScratch& scratch, int64_t C, const ExpertSteps& steps,
                                    MoeTimers* timers) const {
  const int nc = plan.chunks();
  std::vector<Request> to(nc), back(nc);
  for (int c = 0; c < nc; ++c) to[c] = post_out(pass, plan, c, rows, scratch, C, steps, timers);
  steps.meanwhile();  // while the rows travel
  for (int c = 0; c < nc; ++c) {
    {
      Timed t(timers, &MoeTimers::wait);
      to[c].wait();
    }
    land_out(pass, plan, c, rows, scratch, C, timers);
    steps.experts(c);
    back[c] = post_back(pass, plan, c, rows, scratch, C, timers);
    Timed t(timers, &MoeTimers::wait);
    for (int q = c + 1; q < nc; ++q) to[q].test();  // progress the chunks still in flight
  }
  {
    Timed t(timers, &MoeTimers::wait);
    wait_all(back);
  }
  for (int c = 0; c < nc; ++c) land_back(plan, c, rows, scratch, C, timers);
}

}  // namespace sy
