// Per-process CPU math settings.
#pragma once

namespace sy {

// Flush denormal floats to zero (x86 MXCSR FTZ + DAZ). Values below 1.2e-38
// contribute nothing to training, but arithmetic on them is ~100x slower.
// Threads inherit the setting from their creator, so call this at the top
// of main(), before any OpenMP parallel region.
void flush_denormals();

}  // namespace sy
