// Where memory lives and where ops run. The model and the optimizer hold
// only raw pointers; whether a pointer may be dereferenced on the host is a
// property of the memory's Device, and every op takes the Stream it is
// ordered on (a cudaStream_t on the CUDA backend; ignored on the CPU, where
// every op completes before it returns). This header knows no backend: an
// Allocator is handed in by whoever owns the device (kernels/backend.h).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace sy {

enum class Device : uint8_t { cpu, cuda };

inline constexpr std::array<std::string_view, 2> kDeviceNames = {"cpu", "cuda"};
constexpr std::string_view device_name(Device d) { return kDeviceNames[static_cast<size_t>(d)]; }
constexpr std::optional<Device> parse_device(std::string_view s) {
  for (size_t i = 0; i < kDeviceNames.size(); ++i)
    if (kDeviceNames[i] == s) return static_cast<Device>(i);
  return std::nullopt;
}

// An opaque queue handle. Default: the device's default (null) stream.
struct Stream {
  void* handle = nullptr;
};

// Raw memory of one device. Implementations: host_allocator() below (aligned
// operator new), the CUDA backend's cudaMalloc/cudaFree (kernels/cuda).
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual Device device() const = 0;
  virtual void* allocate(size_t bytes, size_t align) = 0;
  virtual void deallocate(void* p, size_t bytes, size_t align) = 0;
};

// Host memory, 64-byte aligned blocks (the process's one host allocator; stateless).
Allocator& host_allocator();

}  // namespace sy
