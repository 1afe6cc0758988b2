// Expert dispatch: how a MoE layer's rows reach the ranks that own their
// experts and how the experts' outputs come back. The MoE block
// (model/moe_block.cpp) is written once against this interface; each
// transport is one implementation in moe/transport/, chosen once from the
// config by make_dispatcher (the trainer calls it when it builds the
// MoeContext):
//
//   shm             (transport/shm.h)  the ep group on one node: senders write
//                   rows straight into the expert ranks' shared-memory
//                   segments and read outputs straight from them; fences
//   mpi             (transport/mpi.h)  one blocking all-to-all-v each way
//   mpi-overlapped  (transport/mpi_overlap.h)  the rows cut into chunks, all
//                   posted at once; the experts run on each chunk as it lands
//   hierarchical    (transport/hier.h)  the ep group spans nodes: rows for a
//                   node-local expert go through shared memory as with shm;
//                   rows for another node cross the network once per node
//                   pair, to one relay rank there (forward, a token with
//                   several experts on that node once), which copies them
//                   into its node's segments; outputs return by the mirror
//                   path. One chunk: the experts run once both levels landed.
//
// One pass (forward, or backward: output gradients to the experts, input
// gradients back) of one layer, as the block drives it:
//
//   Rows r = forward_rows(...)     where the transport wants the rows:
//   gather  h -> r.send            the block writes its rows in send order
//   exchange(pass, ..., steps)     moves them; calls steps.meanwhile() once
//                                  the rows are moving (shared experts), then
//                                  steps.experts(c) as chunk c lies in r.recv
//                                  (the experts write r.reply), and moves
//                                  each chunk's outputs back as it is done
//   combine r.back -> out          the block reads its rows' outputs
//
// Buffers that belong to a transport live in its states: DispatchLayer (a
// layer's rows kept from forward to backward; MoeActs owns one) and
// DispatchScratch (rows in flight, shared by a model's layers; MoeScratch
// owns one). Neither exposes a communicator type.
//
// How the transports still to come fit:
//   nccl          Rows are device buffers (the same layout as mpi: send
//                 contiguous in send order, recv/reply in receive order).
//                 exchange enqueues ncclSend/ncclRecv groups per chunk on the
//                 communication stream, records a CUDA event per chunk and,
//                 before steps.experts(c), makes the compute stream wait on
//                 chunk c's event (no host wait); outputs go back the same
//                 way. The states hold the device buffers (from the device
//                 arena) and the events; bytes() counts them as today. The
//                 ep communicator comes from comm/nccl (see comm/backend.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"   // Allocator: where a local dispatcher's rows live
#include "kernels/types.h"  // RowMap: where a send buffer's rows live (contiguous or scattered over ranks)
#include "moe/payload.h"
#include "moe/timers.h"

namespace sy {

class Backend;
class Comm;
class EpDispatch;

enum class Pass : uint8_t { forward, backward };

// One pass's rows, as the transport lays them out. Forward: tokens' rows
// out, expert outputs back. Backward: output gradients out, input gradients back.
struct Rows {
  RowMap send;          // (M_send, C) where the sender writes its rows
  float* recv = nullptr;  // (M_recv, C) the experts' input rows, chunk c from plan.recv_begin(c)
  float* reply = nullptr; // (M_recv, C) where the experts write their outputs, same order
  RowMap back;          // (M_send, C) the outputs as the sender reads them
  // FP8 payload (moe/payload.h): the rows as they arrived, packed (M_recv,
  // payload_row_words), codes in `fp8_format`; recv holds them decoded. The
  // FP8 expert GEMM takes these codes and scales as its operand. Null otherwise.
  const void* recv_fp8 = nullptr;
  Fp8Format fp8_format = Fp8Format::e4m3;
};

// What the block does while a pass's rows move (called on the calling thread).
struct ExpertSteps {
  std::function<void()> meanwhile;     // once, after the rows have started moving (shared experts)
  std::function<void(int)> experts;    // per chunk c, once its rows are in Rows::recv; writes Rows::reply
  // Optional: the statistics of each FP8 payload encode of this rank's rows
  // to the experts (the FP8 recipe's amax, noted where the rows are quantized).
  std::function<void(const QuantStats&)> encoded;
};

// A layer's transport buffers kept from its forward to its backward.
class DispatchLayer {
 public:
  virtual ~DispatchLayer() = default;
  virtual size_t bytes() const = 0;  // this rank's share
};

// Transport buffers shared by the MoE layers of one model.
class DispatchScratch {
 public:
  virtual ~DispatchScratch() = default;
  virtual size_t transfer_bytes() const = 0;  // rows in flight (both passes)
  virtual size_t input_bytes() const = 0;     // the experts' inputs when shared by the layers (FP8 storage)
};

class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  virtual const char* name() const = 0;  // "shm", "mpi", "mpi-overlapped", "hierarchical"
  // The expert-parallel group: rank r holds experts [r * E / size, (r + 1) * E / size).
  virtual int ep_size() const = 0;
  virtual int ep_rank() const = 0;
  // What rows to the experts and back travel as (moe/payload.h); fp32 for
  // shm (one node: no network bytes) and for a group of one (nothing crosses).
  virtual Payload payload_out() const { return Payload::fp32; }
  virtual Payload payload_back() const { return Payload::fp32; }

  virtual std::unique_ptr<DispatchLayer> make_layer() const = 0;
  virtual std::unique_ptr<DispatchScratch> make_scratch() const = 0;

  // Plans a layer's dispatch (collective over the ep group): idx (N, K)
  // global expert ids, keep (N, K) 0/1.
  virtual void plan(EpDispatch& plan, const int32_t* idx, const uint8_t* keep, int64_t N, int64_t K,
                    int64_t E) const = 0;

  // Buffers of a pass (collective where the transport's memory is).
  // shared_inputs: the experts' inputs need not outlive the forward (FP8
  // storage keeps its own copy), so one buffer serves every layer.
  virtual Rows forward_rows(const EpDispatch& plan, DispatchLayer& layer, DispatchScratch& scratch, int64_t C,
                            bool shared_inputs) const = 0;
  virtual Rows backward_rows(const EpDispatch& plan, DispatchLayer& layer, DispatchScratch& scratch,
                             int64_t C) const = 0;
  // What the layer's forward kept: its expert outputs as the sender reads
  // them, and (unless shared_inputs) the experts' inputs (M_recv, C).
  virtual RowMap forward_outputs(const EpDispatch& plan, const DispatchLayer& layer) const = 0;
  virtual const float* forward_inputs(const DispatchLayer& layer) const = 0;

  // Moves a pass's rows (`rows` from forward_rows / backward_rows of the
  // same layer and scratch), running `steps` as described above. Waits are
  // timed into timers->wait.
  virtual void exchange(Pass pass, const EpDispatch& plan, const Rows& rows, DispatchLayer& layer,
                        DispatchScratch& scratch, int64_t C, const ExpertSteps& steps, MoeTimers* timers) const = 0;
};

enum class DispatchKind : uint8_t { shm, mpi, mpi_overlapped, hierarchical };

// Which node each member of an ep group is on: node[r] for ep rank r. Empty
// means as the machine says (node_of(ep): MPI_Comm_split_type SHARED).
// Tests and benchmarks may declare smaller nodes than the machine's (4 ranks
// of one machine as 2 nodes of 2) to exercise the paths between nodes; each
// declared node must lie within one real node (its ranks share memory).
struct NodeLayout {
  std::vector<int> node;
  // Every `ranks_per_node` consecutive world ranks form a node (how mpirun
  // places ranks by slot): node[r] = ep.world_ranks()[r] / ranks_per_node.
  static NodeLayout consecutive(const Comm& ep, int ranks_per_node);
  // The machine's layout (collective over ep).
  static NodeLayout of(const Comm& ep);
  int nodes() const;
  // Spans several nodes and some node holds several of its ranks: the
  // hierarchical transport has something to gain over flat MPI.
  bool hierarchical_pays() const;
  std::string describe() const;  // "2 nodes: 2+2 ranks"
};

// The transport for an ep group. chunks: rows in flight per pass are cut
// into this many chunks (mpi_overlapped only; the others move one).
// shm needs every member of ep on one node. nodes: the node layout the
// hierarchical transport uses (empty: the machine's; the others ignore it).
// payload: what the mpi transports' rows travel as (parallel.dispatch_dtype;
// shm and hierarchical keep fp32).
std::shared_ptr<const Dispatcher> make_dispatcher(DispatchKind kind, const Comm& ep, int chunks = 1,
                                                  const NodeLayout& nodes = {}, const PayloadCodec& payload = {});
// One rank, no communicator (generation, tests): mpi over a group of one,
// its rows in `mem` (a device backend's allocator for a device run).
std::shared_ptr<const Dispatcher> make_local_dispatcher(Allocator& mem = host_allocator());
// A device run's dispatcher: rows in `be`'s memory. For a group of one, as
// make_local_dispatcher. Across ranks, the mpi transport: rows go device to
// device over `device_ep`, the ep group's communicator for device buffers
// (NCCL, or the staged one: Comm::over, comm/staged.h); smaller payloads
// are packed and unpacked on the device (payload.be is `be`). chunks > 0:
// mpi_overlapped in that many chunks (every chunk posted at once, each
// chunk's experts run as it lands).
std::shared_ptr<const Dispatcher> make_device_dispatcher(const Comm& ep, const Comm& device_ep, const Backend& be,
                                                         const PayloadCodec& payload = {}, Stream stream = {},
                                                         int chunks = 0);

}  // namespace sy
