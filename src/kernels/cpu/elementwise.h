// Elementwise arithmetic over flat float arrays (the residual stream's adds).
#pragma once

#include <cstdint>

namespace sy {

// z (n) = x + y; z may alias x or y.
void add_vectors(float* z, const float* x, const float* y, int64_t n);

}  // namespace sy
