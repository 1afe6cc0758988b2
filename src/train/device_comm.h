// How a device run's groups move device buffers between ranks: each host
// group (MPI) gets a twin for device memory (Comm::over, Grid::over) whose
// float traffic (gradients, MoE rows, pipeline messages, ZeRO-1's parts)
// takes the device pointers directly, and the callers are the same for
// either twin:
//   NCCL (comm/nccl/, loaded as lib/libswitchyard_nccl.so) on CUDA GPUs when
//     every rank can use it and no two ranks share a GPU (NCCL refuses that);
//   else the staged device communicator (comm/staged.h): each buffer copied
//     to the host, moved by MPI, copied back, after the backend's queued work
//     (a device emulated on the CPU always, its memory being host memory).
// The choice is collective over the world: every rank takes the same.
#pragma once

#include <cstdint>
#include <string>

#include "comm/comm.h"
#include "kernels/backend.h"

namespace sy {

// The twin maker for `be`'s memory, its work queued on `stream`.
// ranks_per_device: how many ranks of the node share this rank's device.
// *what says which communicator it is and, when not NCCL, why (the banner).
Comm::Remake device_comms(const Backend& be, Stream stream, const Comm& world, int64_t ranks_per_device,
                          std::string* what);

}  // namespace sy
