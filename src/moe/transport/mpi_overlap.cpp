#include "moe/transport/mpi_overlap.h"

#include <vector>

#include "moe/ep_dispatch.h"

namespace sy {

// Every chunk posted before the shared experts run; chunk c's experts run
// as soon as it has landed and its outputs are posted back at once, while
// the later chunks are kept moving (test).
void MpiOverlapDispatcher::exchange(Pass pass, const EpDispatch& plan, const Rows& rows, DispatchLayer&,
                                    DispatchScratch&, int64_t C, const ExpertSteps& steps, MoeTimers* timers) const {
  const int nc = plan.chunks();
  std::vector<Request> to(nc), back(nc);
  for (int c = 0; c < nc; ++c) to[c] = plan.to_experts(ep_, c, rows.send.local, rows.recv, C, to_what(pass));
  steps.meanwhile();  // while the rows travel
  for (int c = 0; c < nc; ++c) {
    {
      Timed t(timers, &MoeTimers::wait);
      to[c].wait();
    }
    steps.experts(c);
    back[c] = plan.from_experts(ep_, c, rows.reply, rows.back.local, C, back_what(pass));
    Timed t(timers, &MoeTimers::wait);
    for (int q = c + 1; q < nc; ++q) to[q].test();  // progress the chunks still in flight
  }
  Timed t(timers, &MoeTimers::wait);
  wait_all(back);
}

}  // namespace sy
