// The NCCL backend of the communicator (comm/backend.h): the float traffic
// of training (expert dispatch all-to-all-v, gradient all-reduce,
// reduce-scatter and all-gather for ZeRO-1, pipeline send/recv) moves
// device buffers over NCCL on a communication stream; everything else
// (small host values: statistics, counts, broadcasts, barriers, group
// creation, shared memory) stays on the MPI communicator it was made from.
//
// Creation: rank 0 of the MPI group calls ncclGetUniqueId, the id is
// broadcast over MPI, every member calls ncclCommInitRank. split() splits
// the MPI communicator and repeats that for the child.
//
// Requests are CUDA events recorded on the communication stream after the
// operation: test() is cudaEventQuery, wait() cudaEventSynchronize. The
// Comm facade runs wait() under the watchdog's scope as for MPI, so a peer
// that never posts its half is named the same way; the watchdog aborts the
// job through MPI, which stays alive beside NCCL.
//
// NCCL has no tags: sends and receives between two ranks pair up in the
// order they are posted (the pipeline executor posts them in schedule
// order on both sides).
//
// Built when NCCL and CUDA are found; the tools load it as a module
// (comm/nccl_module.h). Not yet run on a GPU.
#pragma once

#include <memory>
#include <string>

#include "comm/backend.h"

namespace sy::nccl {

// A NCCL communicator over the members of `mpi` (collective over them),
// whose operations follow the work queued on the CUDA stream `after` (the
// ops' stream; null: the legacy default stream). Throws, naming the reason,
// when there is no usable GPU or NCCL fails.
std::shared_ptr<const CommBackend> create(std::shared_ptr<const CommBackend> mpi, void* after = nullptr);

// Whether this process can use NCCL at all (a CUDA device); why not in *why.
bool available(std::string* why = nullptr);

}  // namespace sy::nccl
