#include "moe/dispatcher.h"

#include <fmt/format.h>

#include <algorithm>

#include "comm/comm.h"
#include "core/check.h"
#include "moe/transport/hier.h"
#include "moe/transport/mpi.h"
#include "moe/transport/mpi_overlap.h"
#include "moe/transport/shm.h"

namespace sy {

NodeLayout NodeLayout::consecutive(const Comm& ep, int ranks_per_node) {
  SY_CHECK(ranks_per_node >= 1, "a node holds at least one rank, got {}", ranks_per_node);
  NodeLayout l;
  for (int w : ep.world_ranks()) l.node.push_back(w / ranks_per_node);
  return l;
}

NodeLayout NodeLayout::of(const Comm& ep) { return {node_of(ep)}; }

int NodeLayout::nodes() const {
  std::vector<int> ids(node);
  std::sort(ids.begin(), ids.end());
  return static_cast<int>(std::unique(ids.begin(), ids.end()) - ids.begin());
}

bool NodeLayout::hierarchical_pays() const { return nodes() > 1 && nodes() < static_cast<int>(node.size()); }

std::string NodeLayout::describe() const {
  std::vector<int> ids, sizes;
  for (int n : node) {
    auto it = std::find(ids.begin(), ids.end(), n);
    if (it == ids.end()) ids.push_back(n), sizes.push_back(1);
    else ++sizes[static_cast<size_t>(it - ids.begin())];
  }
  return fmt::format("{} node{}: {} ranks", ids.size(), ids.size() == 1 ? "" : "s", fmt::join(sizes, "+"));
}

std::shared_ptr<const Dispatcher> make_dispatcher(DispatchKind kind, const Comm& ep, int chunks,
                                                  const NodeLayout& nodes, const PayloadCodec& payload) {
  switch (kind) {
    case DispatchKind::shm:
      return std::make_shared<ShmDispatcher>(ep);
    case DispatchKind::mpi:
      return std::make_shared<MpiDispatcher>(ep, payload);
    case DispatchKind::mpi_overlapped:
      SY_CHECK(chunks >= 1, "overlapped MoE dispatch needs at least one chunk, got {}", chunks);
      return std::make_shared<MpiOverlapDispatcher>(ep, chunks, payload);
    case DispatchKind::hierarchical:
      return std::make_shared<HierDispatcher>(ep, nodes.node.empty() ? node_of(ep) : nodes.node, payload);
  }
  SY_CHECK(false, "unknown MoE dispatch kind {}", static_cast<int>(kind));
  return nullptr;
}

std::shared_ptr<const Dispatcher> make_local_dispatcher(Allocator& mem) {
  return std::make_shared<MpiDispatcher>(Comm{}, PayloadCodec{}, mem);
}

std::shared_ptr<const Dispatcher> make_device_dispatcher(const Comm& ep, const Comm& device_ep, const Backend& be,
                                                         const PayloadCodec& payload, Stream stream, int chunks) {
  if (ep.solo()) return make_local_dispatcher(be.allocator());
  SY_CHECK(device_ep.device_buffers() && device_ep.size() == ep.size(),
           "a device run's MoE rows move over the ep group's device communicator; {} is not one",
           device_ep.describe());
  SY_CHECK(!payload.any() || payload.be == &be, "a device run's MoE rows are packed on the device: the payload "
           "codec must use the device's backend");
  if (chunks > 0) return std::make_shared<MpiOverlapDispatcher>(device_ep, chunks, payload, be.allocator(), stream);
  return std::make_shared<MpiDispatcher>(device_ep, payload, be.allocator(), stream);
}

}  // namespace sy
