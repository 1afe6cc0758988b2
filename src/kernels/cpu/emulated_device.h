// A CUDA device emulated on the CPU, for tests: the CPU backend's ops behind
// the Device::cuda backend, with "device" memory the host cannot touch. Its
// allocator hands out slices of one reserved address range that is mapped
// PROT_NONE except while one of the backend's ops (or copy / zero) runs, so
// host code that reads or writes device memory directly (a missing copy to or
// from the device) faults at once, and the fault handler names it (with the
// host stack) and exits with code 86. What a GPU run would get wrong by
// touching a device pointer on the host, CI finds on the CPU.
//
// Only for tests: SY_EMULATE_CUDA=guarded makes open_backend(Device::cuda)
// (kernels/backend.h) return it; the numbers are the CPU backend's, bit for
// bit, so a run on it must equal the same run on the CPU exactly.
#pragma once

#include "kernels/backend.h"

namespace sy {

// The environment variable and the one value that turns the emulation on.
inline constexpr const char* kEmulateCudaEnv = "SY_EMULATE_CUDA";
// The emulated device's backend (created, with its fault handler, at first use).
const Backend& emulated_cuda_backend();
// Bytes of emulated device memory in use, and the most ever in use.
size_t emulated_device_bytes();
size_t emulated_device_peak_bytes();
// Bytes Backend::copy moved between host memory and the emulated device's,
// either way, since the process started (what a GPU would send over PCIe).
size_t emulated_device_host_copy_bytes();

}  // namespace sy
