#include "moe/dispatcher.h"

#include "comm/comm.h"
#include "core/check.h"
#include "moe/transport/mpi.h"
#include "moe/transport/mpi_overlap.h"
#include "moe/transport/shm.h"

namespace sy {

std::shared_ptr<const Dispatcher> make_dispatcher(DispatchKind kind, const Comm& ep, int chunks,
                                                  const PayloadCodec& payload) {
  switch (kind) {
    case DispatchKind::shm:
      return std::make_shared<ShmDispatcher>(ep);
    case DispatchKind::mpi:
      return std::make_shared<MpiDispatcher>(ep, payload);
    case DispatchKind::mpi_overlapped:
      SY_CHECK(chunks >= 1, "overlapped MoE dispatch needs at least one chunk, got {}", chunks);
      return std::make_shared<MpiOverlapDispatcher>(ep, chunks, payload);
  }
  SY_CHECK(false, "unknown MoE dispatch kind {}", static_cast<int>(kind));
  return nullptr;
}

std::shared_ptr<const Dispatcher> make_local_dispatcher() { return std::make_shared<MpiDispatcher>(Comm{}); }

}  // namespace sy
