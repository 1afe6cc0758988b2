// The CPU backend: the op interface (kernels/backend.h) over this folder's
// kernels. Every op completes before it returns; streams are ignored.
#pragma once

#include "kernels/backend.h"

namespace sy {

// The process's CPU backend (the same object backend(Device::cpu) returns).
const Backend& cpu_backend();

}  // namespace sy
