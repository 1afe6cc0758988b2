// A communicator for device buffers over a host transport: the staged
// device communicator. Its float traffic (the calls NCCL makes on device
// memory: expert rows, gradient all-reduce, ZeRO-1's reduce-scatter and
// all-gather, pipeline send/recv) takes device buffers, as the NCCL backend
// (comm/nccl/) does; it copies them to host memory, lets the host backend
// (MPI) move them, and copies the results back when the request finishes.
// Host values (statistics, counts, broadcasts, barriers, shared memory) pass
// straight through, as with NCCL.
//
// So a device run hands the same device pointers to either: NCCL where the
// CUDA module provides it, this one elsewhere (a device without NCCL, and
// the CUDA device emulated on the CPU, where CI proves that every buffer a
// device run gives the communicator is device memory: a host buffer is
// refused by name, as NCCL refuses it).
//
// A group of one moves nothing between ranks: its all-reduce and all-gather
// leave the buffer as it is, its reduce-scatter and all-to-all copy within
// the device, so a one-rank device run pays no host copies for them.
//
// A request owns its host copies: the data is copied down when the
// operation is posted (after the device's work on it: DeviceAccess orders
// that), and up when test() first sees it finished or wait() returns.
#pragma once

#include <cstddef>
#include <memory>

#include "comm/backend.h"

namespace sy {

// What a staged communicator needs of a device: blocking copies that follow
// the device's queued work, and which memory is the device's.
class DeviceAccess {
 public:
  virtual ~DeviceAccess() = default;
  virtual void to_host(void* host, const void* device, size_t bytes) const = 0;
  virtual void to_device(void* device, const void* host, size_t bytes) const = 0;
  // Device to device, queued after the device's work (a group of one's
  // reduce-scatter and all-to-all: nothing leaves the device).
  virtual void within(void* dst, const void* src, size_t bytes) const = 0;
  // Whether p is this device's memory (a staged call refuses other memory).
  virtual bool holds(const void* p) const = 0;
  virtual const char* device_name() const = 0;
};

namespace staged {

// The staged device communicator over `host` (a backend of host buffers,
// e.g. MPI), reaching device memory through `device`.
std::shared_ptr<const CommBackend> create(std::shared_ptr<const CommBackend> host,
                                          std::shared_ptr<const DeviceAccess> device);

}  // namespace staged
}  // namespace sy
