// MPI overlapped transport: the MPI transport's buffers and layout, with the
// rows cut into chunks (token ranges) that are all posted at once; the
// shared experts run while they fly and each chunk's experts run as soon as
// it has landed, its outputs posted back at once.
#pragma once

#include "moe/transport/mpi.h"

namespace sy {

class MpiOverlapDispatcher final : public MpiDispatcher {
 public:
  // mem, stream: as MpiDispatcher's (device rows over a device communicator).
  MpiOverlapDispatcher(const Comm& ep, int chunks, const PayloadCodec& payload = {},
                       Allocator& mem = host_allocator(), Stream stream = {})
      : MpiDispatcher(ep, payload, mem, stream), chunks_(chunks) {}
  const char* name() const override { return "mpi-overlapped"; }
  void exchange(Pass pass, const EpDispatch& plan, const Rows& rows, DispatchLayer& layer, DispatchScratch& scratch,
                int64_t C, const ExpertSteps& steps, MoeTimers* timers) const override;

 protected:
  int chunks() const override { return chunks_; }

 private:
  int chunks_;
};

}  // namespace sy
